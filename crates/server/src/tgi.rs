//! The text-generation-inference routes: `/generate`, `/generate_stream` (server-sent events),
//! and `/` (either, by its `stream` field), with TGI's request and response shapes and headers.

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::generation::{self, GenRequest, Generation, Item, TokenOut, TokenText};
use crate::state::{AppState, RequestGuard};
use crate::validate;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Deserialize, Debug)]
pub struct GenerateRequest {
    pub inputs: String,
    /// Absent: TGI's defaults, which sample.
    #[serde(default)]
    pub parameters: Option<GenerateParameters>,
    /// Only read by `/`.
    #[serde(default)]
    pub stream: Option<bool>,
}

fn default_max_new_tokens() -> Option<u32> {
    Some(100)
}

/// TGI's `parameters`. Every field may be absent or null; unknown ones (`watermark`,
/// `adapter_id`) are ignored.
#[derive(Deserialize, Debug, Default)]
pub struct GenerateParameters {
    pub best_of: Option<usize>,
    pub temperature: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub do_sample: Option<bool>,
    /// Absent: 100, as TGI; null: whatever room `max_total_tokens` leaves.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: Option<u32>,
    pub return_full_text: Option<bool>,
    pub stop: Option<Vec<String>>,
    pub truncate: Option<usize>,
    pub details: Option<bool>,
    pub decoder_input_details: Option<bool>,
    pub seed: Option<u64>,
    pub top_n_tokens: Option<u32>,
    pub grammar: Option<serde_json::Value>,
    /// Not TGI's: generate `max_new_tokens` whatever the model says (as vLLM's `ignore_eos`),
    /// for benchmarks.
    pub ignore_eos: Option<bool>,
}

/// A TGI request after validation.
pub struct ValidRequest {
    pub gen: GenRequest,
    pub inputs: String,
    pub best_of: usize,
    pub details: bool,
    pub decoder_input_details: bool,
    pub return_full_text: bool,
    pub seed: Option<u64>,
    pub validation_time: Duration,
}

/// Checks a TGI request against the limits, with TGI's rules, and tokenizes it.
pub fn validate(
    state: &AppState,
    req: GenerateRequest,
    stream: bool,
    arrived: Instant,
) -> Result<ValidRequest, ApiError> {
    let sampling_by_default = req.parameters.is_none();
    let p = req.parameters.unwrap_or(GenerateParameters {
        max_new_tokens: default_max_new_tokens(),
        ..Default::default()
    });
    let limits = &state.limits;
    let best_of = validate::best_of(limits, p.best_of)?;
    let decoder_input_details = p.decoder_input_details.unwrap_or(false);
    if stream {
        if best_of > 1 {
            return Err(ApiError::Validation(
                "`best_of` != 1 is not supported when streaming tokens".into(),
            ));
        }
        if decoder_input_details {
            return Err(ApiError::Validation(
                "`decoder_input_details` == true is not supported when streaming tokens".into(),
            ));
        }
    }
    let knobs = validate::Knobs {
        do_sample: p.do_sample.unwrap_or(sampling_by_default),
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        typical_p: p.typical_p,
        repetition_penalty: p.repetition_penalty,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: None,
        seed: p.seed,
    };
    let sampling = validate::sampling(&knobs, best_of, || state.random_seed())?;
    let stop = p.stop.unwrap_or_default();
    validate::stop_sequences(limits, &stop)?;
    let top_n = validate::top_n_tokens(limits, p.top_n_tokens)?;
    if req.inputs.is_empty() {
        return Err(ApiError::Validation("`inputs` cannot be empty".into()));
    }
    let truncate = validate::truncate(limits, p.truncate)?;
    let schema = p
        .grammar
        .as_ref()
        .map(crate::grammar::tgi)
        .transpose()?
        .map(Arc::new);
    let mut prompt = state.encode(&req.inputs, true)?;
    if let Some(t) = truncate {
        // TGI keeps the end of the prompt: the part closest to what is generated.
        let cut = prompt.len().saturating_sub(t);
        prompt.drain(..cut);
    }
    let max_new_tokens =
        validate::lengths(limits, prompt.len(), p.max_new_tokens.map(|n| n as usize))?;
    Ok(ValidRequest {
        gen: GenRequest {
            prompt,
            max_new_tokens,
            sampling: sampling.params,
            stop,
            stop_at_eos: !p.ignore_eos.unwrap_or(false),
            logprobs: true,
            prompt_logprobs: decoder_input_details,
            top_n,
            arrived,
            constraint: schema.map(|s| state.json_constraint(s)),
        },
        inputs: req.inputs,
        best_of,
        details: p.details.unwrap_or(false),
        decoder_input_details,
        return_full_text: p.return_full_text.unwrap_or(false),
        seed: sampling.seed,
        validation_time: arrived.elapsed(),
    })
}

// ---- response shapes ----

#[derive(Serialize, Debug, Clone)]
pub struct Token {
    pub id: u32,
    pub text: String,
    pub logprob: Option<f32>,
    pub special: bool,
}

impl Token {
    fn from_text(t: &TokenText) -> Token {
        Token {
            id: t.id,
            text: t.text.clone(),
            logprob: t.logprob,
            special: t.special,
        }
    }

    /// A generated token as TGI streams it: its text is the piece it adds to the output.
    fn generated(t: &TokenOut) -> Token {
        Token {
            id: t.token.id,
            text: t.piece.clone(),
            logprob: t.token.logprob,
            special: t.token.special,
        }
    }
}

#[derive(Serialize, Debug)]
pub struct PrefillToken {
    pub id: u32,
    pub text: String,
    pub logprob: Option<f32>,
}

#[derive(Serialize, Debug)]
struct BestOfSequence {
    generated_text: String,
    finish_reason: &'static str,
    generated_tokens: usize,
    seed: Option<u64>,
    prefill: Vec<PrefillToken>,
    tokens: Vec<Token>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top_tokens: Vec<Vec<Token>>,
}

#[derive(Serialize, Debug)]
struct Details {
    finish_reason: &'static str,
    generated_tokens: usize,
    seed: Option<u64>,
    prefill: Vec<PrefillToken>,
    tokens: Vec<Token>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top_tokens: Vec<Vec<Token>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    best_of_sequences: Option<Vec<BestOfSequence>>,
}

#[derive(Serialize, Debug)]
struct GenerateResponse {
    generated_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
}

#[derive(Serialize, Debug)]
struct StreamDetails {
    finish_reason: &'static str,
    generated_tokens: usize,
    seed: Option<u64>,
    input_length: usize,
}

#[derive(Serialize, Debug)]
struct StreamResponse {
    index: u32,
    token: Token,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top_tokens: Vec<Token>,
    generated_text: Option<String>,
    details: Option<StreamDetails>,
}

fn output_text(v: &ValidRequest, g: &Generation) -> String {
    if v.return_full_text {
        format!("{}{}", v.inputs, g.text)
    } else {
        g.text.clone()
    }
}

fn sequence_parts(
    v: &ValidRequest,
    g: &Generation,
) -> (Vec<PrefillToken>, Vec<Token>, Vec<Vec<Token>>) {
    let prefill = if v.decoder_input_details {
        g.prompt
            .iter()
            .map(|(t, _)| PrefillToken {
                id: t.id,
                text: t.text.clone(),
                logprob: t.logprob,
            })
            .collect()
    } else {
        Vec::new()
    };
    let tokens = g.tokens.iter().map(Token::generated).collect();
    let top_tokens = if v.gen.top_n > 0 {
        g.tokens
            .iter()
            .map(|t| t.top.iter().map(Token::from_text).collect())
            .collect()
    } else {
        Vec::new()
    };
    (prefill, tokens, top_tokens)
}

/// TGI's `x-*` timing headers of a finished generation.
fn timing_headers(request_id: u64, v: &ValidRequest, g: &Generation) -> HeaderMap {
    let t = &g.timings;
    let n = g.tokens.len();
    let ms = |d: Duration| d.as_millis().to_string();
    let pairs = [
        ("x-compute-type", "cpu".to_string()),
        ("x-compute-time", t.total.as_secs_f64().to_string()),
        ("x-compute-characters", v.inputs.chars().count().to_string()),
        ("x-total-time", ms(t.total)),
        ("x-validation-time", ms(v.validation_time)),
        ("x-queue-time", ms(t.queue)),
        ("x-inference-time", ms(t.inference)),
        ("x-time-per-token", ms(t.per_token(n))),
        ("x-prompt-tokens", g.prompt_tokens.to_string()),
        ("x-generated-tokens", n.to_string()),
        ("x-request-id", request_id.to_string()),
    ];
    let mut h = HeaderMap::new();
    for (k, val) in pairs {
        if let Ok(val) = HeaderValue::from_str(&val) {
            h.insert(HeaderName::from_static(k), val);
        }
    }
    h
}

/// Runs `best_of` candidates (different seeds) and returns the one with the highest mean
/// log-probability per token with its seed, and the others.
async fn run_best_of(
    state: &Arc<AppState>,
    v: &ValidRequest,
) -> Result<(Generation, Option<u64>, Vec<(Generation, u64)>), ApiError> {
    if v.best_of == 1 {
        return Ok((
            generation::run(state, v.gen.clone()).await?,
            v.seed,
            Vec::new(),
        ));
    }
    let mut pending = Vec::new();
    for _ in 0..v.best_of {
        let mut gen = v.gen.clone();
        gen.sampling.seed = state.random_seed();
        let seed = gen.sampling.seed;
        pending.push((seed, generation::start(state, gen)?));
    }
    let mut done = Vec::new();
    for (seed, mut rx) in pending {
        let g = loop {
            match rx.recv().await {
                Some(Item::End(g)) => break *g,
                Some(Item::Token(_)) => {}
                Some(Item::Error(e)) => return Err(e),
                None => return Err(ApiError::IncompleteGeneration),
            }
        };
        done.push((g, seed));
    }
    done.sort_by(|a, b| b.0.mean_logprob().total_cmp(&a.0.mean_logprob()));
    let (best, seed) = done.remove(0);
    Ok((best, Some(seed), done))
}

async fn generate_response(
    state: &Arc<AppState>,
    guard: &RequestGuard,
    body: Result<JsonBody<GenerateRequest>, ApiError>,
    as_list: bool,
) -> Result<Response, ApiError> {
    let JsonBody(req) = body?;
    let v = validate(state, req, false, guard.arrived)?;
    let (g, seed, others) = run_best_of(state, &v).await?;
    let details = v.details.then(|| {
        let (prefill, tokens, top_tokens) = sequence_parts(&v, &g);
        let best_of_sequences = (v.best_of > 1).then(|| {
            others
                .iter()
                .map(|(o, seed)| {
                    let (prefill, tokens, top_tokens) = sequence_parts(&v, o);
                    BestOfSequence {
                        generated_text: output_text(&v, o),
                        finish_reason: o.finish.as_str(),
                        generated_tokens: o.tokens.len(),
                        seed: Some(*seed),
                        prefill,
                        tokens,
                        top_tokens,
                    }
                })
                .collect()
        });
        Details {
            finish_reason: g.finish.as_str(),
            generated_tokens: g.tokens.len(),
            seed,
            prefill,
            tokens,
            top_tokens,
            best_of_sequences,
        }
    });
    let headers = timing_headers(guard.id, &v, &g);
    tracing::info!(
        request_id = guard.id,
        prompt_tokens = g.prompt_tokens,
        generated_tokens = g.tokens.len(),
        finish = g.finish.as_str(),
        queue_ms = g.timings.queue.as_millis() as u64,
        "generated"
    );
    let response = GenerateResponse {
        generated_text: output_text(&v, &g),
        details,
    };
    Ok(if as_list {
        (headers, Json(vec![response])).into_response()
    } else {
        (headers, Json(response)).into_response()
    })
}

/// `POST /generate`
pub async fn generate(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<GenerateRequest>, ApiError>,
) -> Response {
    finish_request(&state, body, false, false).await
}

/// `POST /generate_stream`
pub async fn generate_stream(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<GenerateRequest>, ApiError>,
) -> Response {
    finish_request(&state, body, true, false).await
}

/// `POST /`: `/generate` (answered as a one-element list, as TGI does) or, with
/// `"stream": true`, `/generate_stream`.
pub async fn compat(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<GenerateRequest>, ApiError>,
) -> Response {
    let stream = matches!(&body, Ok(JsonBody(r)) if r.stream == Some(true));
    finish_request(&state, body, stream, true).await
}

async fn finish_request(
    state: &Arc<AppState>,
    body: Result<JsonBody<GenerateRequest>, ApiError>,
    stream: bool,
    as_list: bool,
) -> Response {
    let mut guard = match state.begin() {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    if stream {
        return match start_stream(state, body, guard.arrived) {
            Ok((v, rx)) => sse_response(state.clone(), guard, v, rx),
            Err(e) => {
                guard.failed(&e);
                e.into_response()
            }
        };
    }
    match generate_response(state, &guard, body, as_list).await {
        Ok(r) => {
            guard.success();
            r
        }
        Err(e) => {
            guard.failed(&e);
            let mut r = e.into_response();
            if let Ok(id) = HeaderValue::from_str(&guard.id.to_string()) {
                r.headers_mut().insert("x-request-id", id);
            }
            r
        }
    }
}

type Started = (ValidRequest, tokio::sync::mpsc::UnboundedReceiver<Item>);

fn start_stream(
    state: &Arc<AppState>,
    body: Result<JsonBody<GenerateRequest>, ApiError>,
    arrived: Instant,
) -> Result<Started, ApiError> {
    let JsonBody(req) = body?;
    let v = validate(state, req, true, arrived)?;
    let rx = generation::start(state, v.gen.clone())?;
    Ok((v, rx))
}

struct StreamState {
    rx: tokio::sync::mpsc::UnboundedReceiver<Item>,
    guard: RequestGuard,
    v: ValidRequest,
    index: u32,
    done: bool,
}

fn sse_response(
    _state: Arc<AppState>,
    guard: RequestGuard,
    v: ValidRequest,
    rx: tokio::sync::mpsc::UnboundedReceiver<Item>,
) -> Response {
    let id = guard.id;
    let s = StreamState {
        rx,
        guard,
        v,
        index: 0,
        done: false,
    };
    let mut r = Sse::new(events(s))
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r.headers_mut()
        .insert("x-compute-type", HeaderValue::from_static("cpu"));
    if let Ok(id) = HeaderValue::from_str(&id.to_string()) {
        r.headers_mut().insert("x-request-id", id);
    }
    r
}

fn json_event<T: Serialize>(value: &T) -> Event {
    Event::default()
        .data(serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")))
}

/// The events of one stream: a `StreamResponse` per token, the last one with the generated
/// text (and details when asked), or an error event. Dropping it cancels the generation.
fn events(s: StreamState) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(s, |mut s| async move {
        if s.done {
            return None;
        }
        let event = match s.rx.recv().await {
            Some(Item::Token(t)) => {
                s.index += 1;
                let top_tokens = t.top.iter().map(Token::from_text).collect();
                json_event(&StreamResponse {
                    index: s.index,
                    token: Token::generated(&t),
                    top_tokens,
                    generated_text: None,
                    details: None,
                })
            }
            Some(Item::End(g)) => {
                s.done = true;
                s.index += 1;
                let last = g.tokens.last();
                let token = last.map(Token::generated).unwrap_or(Token {
                    id: 0,
                    text: String::new(),
                    logprob: None,
                    special: true,
                });
                let top_tokens = last
                    .map(|t| t.top.iter().map(Token::from_text).collect())
                    .unwrap_or_default();
                let details = s.v.details.then(|| StreamDetails {
                    finish_reason: g.finish.as_str(),
                    generated_tokens: g.tokens.len(),
                    seed: s.v.seed,
                    input_length: g.prompt_tokens,
                });
                s.guard.success();
                tracing::info!(
                    request_id = s.guard.id,
                    prompt_tokens = g.prompt_tokens,
                    generated_tokens = g.tokens.len(),
                    finish = g.finish.as_str(),
                    "streamed"
                );
                json_event(&StreamResponse {
                    index: s.index,
                    token,
                    top_tokens,
                    generated_text: Some(output_text(&s.v, &g)),
                    details,
                })
            }
            Some(Item::Error(e)) => {
                s.done = true;
                s.guard.failed(&e);
                json_event(&e.tgi_body())
            }
            None => {
                s.done = true;
                let e = ApiError::IncompleteGeneration;
                s.guard.failed(&e);
                json_event(&e.tgi_body())
            }
        };
        Some((Ok(event), s))
    })
}
