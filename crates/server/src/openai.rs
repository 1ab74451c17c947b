//! The OpenAI routes: `/v1/chat/completions` and `/v1/completions` (streaming, `n`, `echo`,
//! `logprobs` on text or token-id prompts as lm-eval sends them), in OpenAI's shapes.

use crate::body::JsonBody;
use crate::error::{ApiError, OpenAiError};
use crate::generation::{self, GenRequest, Generation, Item, TokenOut, TokenText};
use crate::state::{AppState, RequestGuard};
use crate::validate;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use model::generate::FinishReason;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tokenizer::Message;
use tokio::sync::mpsc::UnboundedReceiver;

/// `"stop"`: one string or a list of them.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Default)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// Message content: a string, or a list of parts of which the text ones are kept.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

/// Knobs both OpenAI routes take, plus TGI's extras that TGI accepts there too.
#[derive(Deserialize, Debug, Default)]
pub struct CommonParams {
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    pub n: Option<usize>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub response_format: Option<Value>,
    /// Not OpenAI's: generate `max_tokens` whatever the model says (vLLM's), for benchmarks.
    pub ignore_eos: Option<bool>,
}

#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    #[serde(flatten)]
    pub common: CommonParams,
}

/// `"prompt"`: text, texts, token ids, or lists of token ids.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Batch(Vec<Vec<u32>>),
    Texts(Vec<String>),
}

#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub max_tokens: Option<u32>,
    pub echo: Option<bool>,
    pub logprobs: Option<u32>,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub common: CommonParams,
}

/// OpenAI's `created`: seconds since the epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

/// A request checked and split into the generations it asks for (prompts times `n`).
struct Plan {
    gens: Vec<GenRequest>,
    /// For each generation: the prompt's text (for `echo`), when one was given.
    prompt_texts: Vec<String>,
    stream: bool,
    include_usage: bool,
    model: String,
}

/// What a route asks of each generation beyond the shared knobs.
struct Want {
    max_tokens: Option<usize>,
    /// Completions with `echo` may generate nothing and only score the prompt.
    allow_zero_tokens: bool,
    logprobs: bool,
    prompt_logprobs: bool,
    top_n: Option<u32>,
}

/// Validates the knobs the two routes share; `prompts` are token ids with their text.
fn plan(
    state: &AppState,
    c: CommonParams,
    prompts: Vec<(Vec<u32>, String)>,
    want: Want,
    arrived: Instant,
) -> Result<Plan, ApiError> {
    let Want {
        max_tokens,
        allow_zero_tokens,
        logprobs,
        prompt_logprobs,
        top_n,
    } = want;
    let limits = &state.limits;
    let n = c.n.unwrap_or(1);
    if n == 0 || n > limits.max_best_of {
        return Err(ApiError::Validation(format!(
            "`n` must be > 0 and <= {} (--max-best-of). Given: {n}",
            limits.max_best_of
        )));
    }
    let stream = c.stream.unwrap_or(false);
    if stream && n > 1 {
        return Err(ApiError::Validation(
            "`n` > 1 is not supported when streaming".into(),
        ));
    }
    let schema = c
        .response_format
        .as_ref()
        .map(crate::grammar::openai)
        .transpose()?
        .flatten()
        .map(Arc::new);
    // OpenAI's temperature 0 means greedy, and top_p 1 means no nucleus filter; TGI's
    // validation refuses both values, so they are mapped before it, as TGI's own chat route does.
    let greedy = c.temperature == Some(0.0);
    let knobs = validate::Knobs {
        do_sample: !greedy,
        temperature: if greedy { None } else { c.temperature },
        top_k: c.top_k,
        top_p: c.top_p.filter(|&p| p < 1.0),
        typical_p: None,
        repetition_penalty: c.repetition_penalty,
        frequency_penalty: c.frequency_penalty,
        presence_penalty: c.presence_penalty,
        seed: c.seed,
    };
    let sampling = validate::sampling(&knobs, 1, || state.random_seed())?;
    let stop = c.stop.map(Stop::into_vec).unwrap_or_default();
    validate::stop_sequences(limits, &stop)?;
    let top_n = validate::top_n_tokens(limits, top_n)?;
    let mut gens = Vec::new();
    let mut prompt_texts = Vec::new();
    for (prompt, text) in prompts {
        if prompt.is_empty() {
            return Err(ApiError::Validation("`inputs` cannot be empty".into()));
        }
        if let Some(bad) = prompt
            .iter()
            .find(|&&t| t as usize >= state.tokenizer.vocab_size())
        {
            return Err(ApiError::Validation(format!(
                "token id {bad} is not in the vocabulary"
            )));
        }
        let max_new = if allow_zero_tokens {
            validate::lengths_allow_zero(limits, prompt.len(), max_tokens)?
        } else {
            validate::lengths(limits, prompt.len(), max_tokens)?
        };
        for i in 0..n {
            let mut s = sampling.params.clone();
            // Each of the n choices draws its own sample, reproducibly from the seed.
            s.seed = s.seed.wrapping_add(i as u64);
            gens.push(GenRequest {
                prompt: prompt.clone(),
                max_new_tokens: max_new,
                sampling: s,
                stop: stop.clone(),
                stop_at_eos: !c.ignore_eos.unwrap_or(false),
                logprobs,
                prompt_logprobs,
                top_n,
                arrived,
                constraint: schema.clone().map(|s| state.json_constraint(s)),
            });
            prompt_texts.push(text.clone());
        }
    }
    Ok(Plan {
        gens,
        prompt_texts,
        stream,
        include_usage: c
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        model: c.model.unwrap_or_else(|| state.model_id.clone()),
    })
}

async fn run_all(state: &Arc<AppState>, gens: &[GenRequest]) -> Result<Vec<Generation>, ApiError> {
    let receivers: Vec<_> = gens
        .iter()
        .map(|g| generation::start(state, g.clone()))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for mut rx in receivers {
        let g = loop {
            match rx.recv().await {
                Some(Item::End(g)) => break *g,
                Some(Item::Token(_)) => {}
                Some(Item::Error(e)) => return Err(e),
                None => return Err(ApiError::IncompleteGeneration),
            }
        };
        out.push(g);
    }
    Ok(out)
}

fn usage(gens: &[Generation]) -> Value {
    let prompt: usize = gens.iter().map(|g| g.prompt_tokens).sum();
    let completion: usize = gens.iter().map(|g| g.tokens.len()).sum();
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

// ---- chat ----

fn chat_logprob(t: &TokenText, top: &[TokenText]) -> Value {
    json!({
        "token": t.text,
        "logprob": t.logprob,
        "bytes": t.text.as_bytes(),
        "top_logprobs": top.iter().map(|e| json!({
            "token": e.text, "logprob": e.logprob, "bytes": e.text.as_bytes()
        })).collect::<Vec<_>>(),
    })
}

/// `POST /v1/chat/completions`
pub async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<ChatRequest>, ApiError>,
) -> Response {
    let mut guard = match state.begin() {
        Ok(g) => g,
        Err(e) => return OpenAiError(e).into_response(),
    };
    let plan = body.and_then(|JsonBody(req)| plan_chat(&state, req, guard.arrived));
    respond(&state, guard_result(&mut guard, plan), guard, Route::Chat).await
}

fn plan_chat(
    state: &AppState,
    req: ChatRequest,
    arrived: Instant,
) -> Result<(Plan, bool), ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::Validation("`messages` cannot be empty".into()));
    }
    let messages: Vec<Message> = req
        .messages
        .into_iter()
        .map(|m| {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(s)) => s,
                Some(Content::Parts(parts)) => parts
                    .into_iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text)
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            Message {
                role: m.role,
                content,
            }
        })
        .collect();
    let text = state.render_chat(&messages)?;
    // The template writes any BOS itself.
    let prompt = state.encode(&text, false)?;
    let logprobs = req.logprobs.unwrap_or(false);
    let top_n = if logprobs { req.top_logprobs } else { None };
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .map(|n| n as usize);
    let want = Want {
        max_tokens,
        allow_zero_tokens: false,
        logprobs,
        prompt_logprobs: false,
        top_n,
    };
    let plan = plan(state, req.common, vec![(prompt, text)], want, arrived)?;
    Ok((plan, logprobs))
}

fn guard_result<T>(guard: &mut RequestGuard, r: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(e) = &r {
        guard.failed(e);
    }
    r
}

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Chat,
    Completions,
}

/// Per-route options of a completion: `echo` and how many `logprobs` to show.
#[derive(Clone, Copy)]
struct CompletionOpts {
    echo: bool,
    logprobs: Option<usize>,
}

async fn respond(
    state: &Arc<AppState>,
    plan: Result<(Plan, impl Into<RouteOpts>), ApiError>,
    mut guard: RequestGuard,
    route: Route,
) -> Response {
    let (plan, opts) = match plan {
        Ok((p, o)) => (p, o.into()),
        Err(e) => return OpenAiError(e).into_response(),
    };
    if plan.stream {
        let Some(gen) = plan.gens.first().cloned() else {
            let e = ApiError::Validation("nothing to generate".into());
            guard.failed(&e);
            return OpenAiError(e).into_response();
        };
        let rx = match generation::start(state, gen) {
            Ok(rx) => rx,
            Err(e) => {
                guard.failed(&e);
                return OpenAiError(e).into_response();
            }
        };
        return stream_response(guard, plan, opts, route, rx);
    }
    match run_all(state, &plan.gens).await {
        Ok(gens) => {
            guard.success();
            let id = guard.id;
            let body = match route {
                Route::Chat => chat_body(id, &plan, &gens, opts.chat_logprobs),
                Route::Completions => completion_body(id, &plan, &gens, opts.completion),
            };
            let mut r = Json(body).into_response();
            if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
                r.headers_mut().insert("x-request-id", v);
            }
            r
        }
        Err(e) => {
            guard.failed(&e);
            OpenAiError(e).into_response()
        }
    }
}

/// What a route asked for beyond the plan.
#[derive(Clone, Copy)]
struct RouteOpts {
    chat_logprobs: bool,
    completion: CompletionOpts,
}

impl From<bool> for RouteOpts {
    fn from(chat_logprobs: bool) -> Self {
        RouteOpts {
            chat_logprobs,
            completion: CompletionOpts {
                echo: false,
                logprobs: None,
            },
        }
    }
}

impl From<CompletionOpts> for RouteOpts {
    fn from(completion: CompletionOpts) -> Self {
        RouteOpts {
            chat_logprobs: false,
            completion,
        }
    }
}

fn chat_body(id: u64, plan: &Plan, gens: &[Generation], logprobs: bool) -> Value {
    let choices: Vec<Value> = gens
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let lp = logprobs.then(|| {
                json!({ "content": g.tokens.iter().map(|t| chat_logprob(&t.token, &t.top)).collect::<Vec<_>>() })
            });
            json!({
                "index": i,
                "message": { "role": "assistant", "content": g.visible_text },
                "logprobs": lp,
                "finish_reason": finish_reason(g.finish),
            })
        })
        .collect();
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": now_secs(),
        "model": plan.model,
        "system_fingerprint": concat!("meditron-", env!("CARGO_PKG_VERSION")),
        "choices": choices,
        "usage": usage(gens),
    })
}

// ---- completions ----

/// `POST /v1/completions`
pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<CompletionRequest>, ApiError>,
) -> Response {
    let mut guard = match state.begin() {
        Ok(g) => g,
        Err(e) => return OpenAiError(e).into_response(),
    };
    let plan = body.and_then(|JsonBody(req)| plan_completion(&state, req, guard.arrived));
    respond(
        &state,
        guard_result(&mut guard, plan),
        guard,
        Route::Completions,
    )
    .await
}

fn plan_completion(
    state: &AppState,
    req: CompletionRequest,
    arrived: Instant,
) -> Result<(Plan, CompletionOpts), ApiError> {
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::Validation("`suffix` is not supported".into()));
    }
    let decode = |ids: &[u32]| state.tokenizer.decode(ids, false).unwrap_or_default();
    // Token-id prompts are taken as they are: no BOS added (lm-eval relies on that).
    let prompts: Vec<(Vec<u32>, String)> = match req.prompt {
        Prompt::Text(t) => vec![(state.encode(&t, true)?, t)],
        Prompt::Texts(ts) => ts
            .into_iter()
            .map(|t| Ok((state.encode(&t, true)?, t)))
            .collect::<Result<_, ApiError>>()?,
        Prompt::Ids(ids) => {
            let text = decode(&ids);
            vec![(ids, text)]
        }
        Prompt::Batch(batch) => batch
            .into_iter()
            .map(|ids| {
                let text = decode(&ids);
                (ids, text)
            })
            .collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::Validation("`prompt` cannot be empty".into()));
    }
    let echo = req.echo.unwrap_or(false);
    let logprobs = req.logprobs.map(|n| n as usize);
    // OpenAI's default is 16 tokens; 0 is allowed, with echo, to score the prompt only.
    let max_tokens = Some(req.max_tokens.unwrap_or(16) as usize);
    let want = Want {
        max_tokens,
        allow_zero_tokens: echo,
        logprobs: logprobs.is_some(),
        prompt_logprobs: echo && logprobs.is_some(),
        top_n: req.logprobs,
    };
    let plan = plan(state, req.common, prompts, want, arrived)?;
    Ok((plan, CompletionOpts { echo, logprobs }))
}

/// OpenAI's legacy `logprobs` object for a list of scored tokens, offsets counted from `start`.
fn completion_logprobs(tokens: &[(TokenText, Vec<TokenText>)], start: usize) -> Value {
    let mut offset = start;
    let mut texts = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offsets = Vec::new();
    for (t, top) in tokens {
        texts.push(t.text.clone());
        lps.push(t.logprob);
        tops.push(match t.logprob {
            None => Value::Null,
            Some(_) => {
                let mut m = serde_json::Map::new();
                for e in top {
                    m.entry(e.text.clone()).or_insert_with(|| json!(e.logprob));
                }
                Value::Object(m)
            }
        });
        offsets.push(offset);
        offset += t.text.chars().count();
    }
    json!({ "tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets })
}

fn generated_scores(tokens: &[TokenOut]) -> Vec<(TokenText, Vec<TokenText>)> {
    tokens
        .iter()
        .map(|t| (t.token.clone(), t.top.clone()))
        .collect()
}

fn completion_body(id: u64, plan: &Plan, gens: &[Generation], opts: CompletionOpts) -> Value {
    let choices: Vec<Value> = gens
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let prompt_text = plan.prompt_texts.get(i).map(String::as_str).unwrap_or("");
            let text = if opts.echo {
                format!("{prompt_text}{}", g.visible_text)
            } else {
                g.visible_text.clone()
            };
            let logprobs = opts.logprobs.map(|_| {
                let mut scored = if opts.echo {
                    g.prompt.clone()
                } else {
                    Vec::new()
                };
                scored.extend(generated_scores(&g.tokens));
                completion_logprobs(&scored, 0)
            });
            json!({
                "index": i,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish_reason(g.finish),
            })
        })
        .collect();
    json!({
        "id": format!("cmpl-{id}"),
        "object": "text_completion",
        "created": now_secs(),
        "model": plan.model,
        "system_fingerprint": concat!("meditron-", env!("CARGO_PKG_VERSION")),
        "choices": choices,
        "usage": usage(gens),
    })
}

// ---- streaming ----

struct StreamState {
    rx: UnboundedReceiver<Item>,
    guard: RequestGuard,
    plan: Plan,
    opts: RouteOpts,
    route: Route,
    created: u64,
    /// Events ready to go out, oldest first.
    queue: std::collections::VecDeque<Event>,
    started: bool,
    done: bool,
}

impl StreamState {
    fn chunk(&self, choice: Value, usage: Option<Value>) -> Event {
        let (object, prefix) = match self.route {
            Route::Chat => ("chat.completion.chunk", "chatcmpl"),
            Route::Completions => ("text_completion", "cmpl"),
        };
        let mut v = json!({
            "id": format!("{prefix}-{}", self.guard.id),
            "object": object,
            "created": self.created,
            "model": self.plan.model,
            "system_fingerprint": concat!("meditron-", env!("CARGO_PKG_VERSION")),
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) },
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        Event::default().data(v.to_string())
    }

    /// The choice of one chunk carrying `text` (and the tokens' scores when asked).
    fn text_choice(&self, text: &str, tokens: &[&TokenOut], finish: Option<FinishReason>) -> Value {
        let finish = finish.map(finish_reason);
        match self.route {
            Route::Chat => {
                let lp = self.opts.chat_logprobs.then(|| {
                    json!({ "content": tokens.iter().map(|t| chat_logprob(&t.token, &t.top)).collect::<Vec<_>>() })
                });
                json!({ "index": 0, "delta": { "content": text }, "logprobs": lp, "finish_reason": finish })
            }
            Route::Completions => {
                let lp = self.opts.completion.logprobs.map(|_| {
                    let scored: Vec<_> = tokens
                        .iter()
                        .map(|t| (t.token.clone(), t.top.clone()))
                        .collect();
                    completion_logprobs(&scored, 0)
                });
                json!({ "index": 0, "text": text, "logprobs": lp, "finish_reason": finish })
            }
        }
    }

    fn on_item(&mut self, item: Option<Item>) {
        match item {
            Some(Item::Token(t)) => {
                if !t.visible.is_empty() || self.wants_logprobs() {
                    let c = self.text_choice(&t.visible, &[&t], None);
                    let e = self.chunk(c, None);
                    self.queue.push_back(e);
                }
            }
            Some(Item::End(g)) => {
                let last: Vec<&TokenOut> = g.tokens.last().into_iter().collect();
                let text = format!(
                    "{}{}",
                    last.first().map(|t| t.visible.as_str()).unwrap_or(""),
                    g.visible_tail
                );
                let c = self.text_choice(&text, &last, Some(g.finish));
                let e = self.chunk(c, None);
                self.queue.push_back(e);
                if self.plan.include_usage {
                    let e = self.chunk(Value::Null, Some(usage(std::slice::from_ref(&g))));
                    self.queue.push_back(e);
                }
                self.queue.push_back(Event::default().data("[DONE]"));
                self.guard.success();
                self.done = true;
            }
            Some(Item::Error(e)) => self.fail(e),
            None => self.fail(ApiError::IncompleteGeneration),
        }
    }

    fn fail(&mut self, e: ApiError) {
        self.guard.failed(&e);
        self.queue
            .push_back(Event::default().data(e.openai_body().to_string()));
        self.done = true;
    }

    fn wants_logprobs(&self) -> bool {
        self.opts.chat_logprobs || self.opts.completion.logprobs.is_some()
    }

    /// The first chunk: the assistant role (chat) or the echoed prompt (completions).
    fn opening(&mut self) {
        let first = match self.route {
            Route::Chat => Some(json!({
                "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null
            })),
            Route::Completions if self.opts.completion.echo => {
                let text = self.plan.prompt_texts.first().cloned().unwrap_or_default();
                Some(json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": null }))
            }
            Route::Completions => None,
        };
        if let Some(c) = first {
            let e = self.chunk(c, None);
            self.queue.push_back(e);
        }
    }
}

fn stream_response(
    guard: RequestGuard,
    plan: Plan,
    opts: RouteOpts,
    route: Route,
    rx: UnboundedReceiver<Item>,
) -> Response {
    let id = guard.id;
    let s = StreamState {
        rx,
        guard,
        plan,
        opts,
        route,
        created: now_secs(),
        queue: Default::default(),
        started: false,
        done: false,
    };
    let mut r = Sse::new(events(s))
        .keep_alive(KeepAlive::default())
        .into_response();
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

/// The chunks of one streamed choice, then `[DONE]`. Dropping it cancels the generation.
fn events(s: StreamState) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(s, |mut s| async move {
        if !s.started {
            s.started = true;
            s.opening();
        }
        while s.queue.is_empty() && !s.done {
            let item = s.rx.recv().await;
            s.on_item(item);
        }
        let e = s.queue.pop_front()?;
        Some((Ok(e), s))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_of_every_shape_parse() {
        let p = |s: &str| serde_json::from_str::<Prompt>(s).unwrap();
        assert!(matches!(p("\"hi\""), Prompt::Text(_)));
        assert!(matches!(p("[1, 2]"), Prompt::Ids(_)));
        assert!(matches!(p("[[1, 2], [3]]"), Prompt::Batch(_)));
        assert!(matches!(p("[\"a\", \"b\"]"), Prompt::Texts(_)));
    }

    #[test]
    fn legacy_logprobs_have_null_first_and_offsets() {
        let t = |id, text: &str, lp| TokenText {
            id,
            text: text.into(),
            logprob: lp,
            special: false,
        };
        let scored = vec![
            (t(1, "Hello", None), vec![]),
            (t(2, " world", Some(-1.5)), vec![t(2, " world", Some(-1.5))]),
        ];
        let v = completion_logprobs(&scored, 0);
        assert_eq!(v["tokens"], json!(["Hello", " world"]));
        assert_eq!(v["token_logprobs"], json!([null, -1.5]));
        assert_eq!(v["top_logprobs"], json!([null, {" world": -1.5}]));
        assert_eq!(v["text_offset"], json!([0, 5]));
    }
}
