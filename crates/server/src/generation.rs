//! One generation from the HTTP layer's side: hands token ids to the engine and turns the
//! tokens it streams back into text (UTF-8-safe, stop sequences found), timings and metrics.

use crate::engine::{Event, Scored};
use crate::error::ApiError;
use crate::state::AppState;
use model::generate::{FinishReason, StopMatcher};
use model::grammar::JsonConstraint;
use model::SamplingParams;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenizer::IncrementalDecoder;
use tokio::sync::mpsc;

/// A validated generation, ready for the engine.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stop_at_eos: bool,
    pub logprobs: bool,
    pub prompt_logprobs: bool,
    pub top_n: usize,
    pub arrived: Instant,
    /// Output kept to a JSON document (TGI's `grammar`, OpenAI's `response_format`).
    pub constraint: Option<JsonConstraint>,
}

/// A token id with its text as one token (special tokens included) and log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenText {
    pub id: u32,
    pub text: String,
    /// None where not computed (the first prompt token; logprobs not asked for).
    pub logprob: Option<f32>,
    pub special: bool,
}

/// One generated token as the routes stream it.
#[derive(Clone, Debug)]
pub struct TokenOut {
    pub token: TokenText,
    /// The text this token adds to the output as TGI streams it: decoded with special tokens,
    /// empty while a character is incomplete.
    pub piece: String,
    /// The text this token releases to a reader: special tokens left out, and text that may be
    /// the start of a stop sequence held back until it is clear (what OpenAI streams).
    pub visible: String,
    pub top: Vec<TokenText>,
}

/// A finished generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// TGI's `generated_text`: every generated token decoded without special tokens (a stop
    /// sequence that ended it included, as TGI does).
    pub text: String,
    /// The text cut right before the stop sequence (what OpenAI returns).
    pub visible_text: String,
    /// Visible text released only at the end (held back for a possible stop sequence).
    pub visible_tail: String,
    pub tokens: Vec<TokenOut>,
    /// Prompt tokens with their scores, when asked for; the first has no logprob.
    pub prompt: Vec<(TokenText, Vec<TokenText>)>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub timings: Timings,
}

impl Generation {
    /// Sum of the generated tokens' log-probabilities divided by their number.
    pub fn mean_logprob(&self) -> f32 {
        let n = self.tokens.len().max(1) as f32;
        self.tokens
            .iter()
            .filter_map(|t| t.token.logprob)
            .sum::<f32>()
            / n
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Arrival to admission into the batch.
    pub queue: Duration,
    /// Admission to the end.
    pub inference: Duration,
    /// Arrival to the end.
    pub total: Duration,
    pub first_token: Option<Duration>,
}

impl Timings {
    /// Mean time between tokens after the first, or the inference time for one token.
    pub fn per_token(&self, n_tokens: usize) -> Duration {
        if n_tokens == 0 {
            return Duration::ZERO;
        }
        self.inference / n_tokens as u32
    }
}

/// What a running generation yields: every token but the last, then the whole generation
/// (whose last token is the final one), or an error.
#[derive(Debug)]
pub enum Item {
    Token(Box<TokenOut>),
    End(Box<Generation>),
    Error(ApiError),
}

/// Starts a generation; its items arrive on the returned receiver. Dropping the receiver stops
/// the generation within one engine step.
pub fn start(
    state: &Arc<AppState>,
    req: GenRequest,
) -> Result<mpsc::UnboundedReceiver<Item>, ApiError> {
    let (engine_tx, engine_rx) = mpsc::unbounded_channel();
    let (tx, rx) = mpsc::unbounded_channel();
    let engine_req = crate::engine::EngineRequest {
        prompt: req.prompt.clone(),
        max_new_tokens: req.max_new_tokens,
        sampling: req.sampling.clone(),
        stop_at_eos: req.stop_at_eos,
        logprobs: req.logprobs,
        prompt_logprobs: req.prompt_logprobs,
        top_n: req.top_n,
        events: engine_tx,
        arrived: req.arrived,
        constraint: req.constraint.clone(),
    };
    if !state.engine.submit(engine_req) {
        return Err(ApiError::Generation("the engine is not running".into()));
    }
    let state = state.clone();
    tokio::spawn(async move { follow(state, req, engine_rx, tx).await });
    Ok(rx)
}

/// Runs [`start`] to the end and returns the whole generation.
pub async fn run(state: &Arc<AppState>, req: GenRequest) -> Result<Generation, ApiError> {
    let mut rx = start(state, req)?;
    while let Some(item) = rx.recv().await {
        match item {
            Item::Token(_) => {}
            Item::End(g) => return Ok(*g),
            Item::Error(e) => return Err(e),
        }
    }
    Err(ApiError::IncompleteGeneration)
}

/// The text of one token on its own, special tokens spelled out.
pub fn token_text(state: &AppState, id: u32) -> TokenText {
    TokenText {
        id,
        text: state.tokenizer.decode(&[id], false).unwrap_or_default(),
        logprob: None,
        special: state.tokenizer.is_special(id),
    }
}

fn scored_text(state: &AppState, s: &Scored) -> (TokenText, Vec<TokenText>) {
    let mut t = token_text(state, s.id);
    t.logprob = finite(s.logprob);
    let top = s
        .top
        .iter()
        .map(|e| TokenText {
            logprob: finite(e.logprob),
            ..token_text(state, e.id)
        })
        .collect();
    (t, top)
}

fn finite(x: f32) -> Option<f32> {
    (!x.is_nan()).then_some(x)
}

/// Follows one generation's engine events, decoding and checking stop sequences, and forwards
/// them to the route. Returning drops the engine's channel, which cancels the generation.
async fn follow(
    state: Arc<AppState>,
    req: GenRequest,
    mut events: mpsc::UnboundedReceiver<Event>,
    out: mpsc::UnboundedSender<Item>,
) {
    let tok = state.tokenizer.clone();
    let mut raw = IncrementalDecoder::new(&tok, false);
    let mut stops = StopMatcher::new(&req.stop);
    let mut tokens: Vec<TokenOut> = Vec::new();
    let mut prompt = Vec::new();
    let mut timings = Timings::default();
    let mut admitted = None;
    let fail = |out: &mpsc::UnboundedSender<Item>, e: ApiError| {
        let _ = out.send(Item::Error(e));
    };
    loop {
        let Some(event) = events.recv().await else {
            fail(&out, ApiError::IncompleteGeneration);
            return;
        };
        let finish = match event {
            Event::Admitted { queue_time } => {
                timings.queue = queue_time;
                admitted = Some(Instant::now());
                continue;
            }
            Event::Prompt(scores) => {
                let mut first = token_text(&state, req.prompt.first().copied().unwrap_or(0));
                first.logprob = None;
                prompt.push((first, Vec::new()));
                prompt.extend(scores.iter().map(|s| scored_text(&state, s)));
                continue;
            }
            Event::Error(message) => {
                tracing::error!(%message, "generation failed");
                fail(&out, ApiError::Generation(message));
                return;
            }
            Event::Finished(reason) => reason,
            Event::Token { token, finish } => {
                if timings.first_token.is_none() {
                    timings.first_token = Some(req.arrived.elapsed());
                }
                let Ok(piece) = raw.push(token.id) else {
                    fail(
                        &out,
                        ApiError::Generation("detokenizing the generated tokens failed".into()),
                    );
                    return;
                };
                // One decoder serves both views: a special token adds nothing to the visible
                // text. Decoding is per token on a 2-core machine shared with the forward pass,
                // so each decode saved here is time the engine gets back.
                let special = tok.is_special(token.id);
                let (shown, stopped) = stops.push(if special { "" } else { &piece });
                let text = TokenText {
                    id: token.id,
                    text: piece.clone(),
                    logprob: finite(token.logprob),
                    special,
                };
                let top = token
                    .top
                    .iter()
                    .map(|e| TokenText {
                        logprob: finite(e.logprob),
                        ..token_text(&state, e.id)
                    })
                    .collect();
                let t = TokenOut {
                    token: text,
                    piece,
                    visible: shown,
                    top,
                };
                tokens.push(t.clone());
                match (stopped, finish) {
                    (true, _) => FinishReason::StopSequence,
                    (false, Some(f)) => f,
                    (false, None) => {
                        if out.send(Item::Token(Box::new(t))).is_err() {
                            // The route is gone (client disconnected): returning cancels.
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let mut tail = String::new();
        if finish != FinishReason::StopSequence {
            let rest = raw.finish().unwrap_or_default();
            let (shown, stopped) = stops.push(&rest);
            tail.push_str(&shown);
            if !stopped {
                tail.push_str(&stops.flush());
            }
        }
        let ids: Vec<u32> = tokens.iter().map(|t| t.token.id).collect();
        let text = tok.decode(&ids, true).unwrap_or_default();
        let now = Instant::now();
        timings.total = req.arrived.elapsed();
        timings.inference = admitted.map(|a| now - a).unwrap_or_default();
        record(&state, &timings, tokens.len());
        let g = Generation {
            text,
            visible_text: stops.text().to_string(),
            visible_tail: tail,
            tokens,
            prompt,
            finish,
            prompt_tokens: req.prompt.len(),
            timings,
        };
        let _ = out.send(Item::End(Box::new(g)));
        return;
    }
}

fn record(state: &AppState, t: &Timings, n_tokens: usize) {
    let m = &state.metrics;
    if let Some(ttft) = t.first_token {
        m.time_to_first_token_seconds.observe(ttft.as_secs_f64());
        if n_tokens > 1 {
            let after_first = t.total.saturating_sub(ttft);
            m.time_per_output_token_seconds
                .observe(after_first.as_secs_f64() / (n_tokens - 1) as f64);
        }
    }
    m.request_seconds.observe(t.total.as_secs_f64());
}
