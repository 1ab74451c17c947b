//! Routes that describe the server, the model and its tokenizer: `/health`, `/info`,
//! `/metrics`, `/v1/models`, and the tokenizer helpers of TGI (`/tokenize`) and of lm-eval's
//! remote tokenizer (`/tokenizer_info`, `/tokenize`, `/detokenize`).

use crate::body::{parse, JsonBody};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokenizer::IncrementalDecoder;

/// `GET /health`: 200 while the engine runs.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.engine.is_alive() && !state.shutting_down.load(Ordering::SeqCst) {
        StatusCode::OK.into_response()
    } else {
        ApiError::Unhealthy.into_response()
    }
}

/// `GET /info`: TGI's model and limits description.
pub async fn info(State(state): State<Arc<AppState>>) -> Json<Value> {
    let l = &state.limits;
    Json(json!({
        "model_id": state.model_id,
        "model_sha": null,
        "model_dtype": "gguf",
        "model_device_type": state.device,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": l.max_concurrent_requests,
        "max_best_of": l.max_best_of,
        "max_stop_sequences": l.max_stop_sequences,
        "max_input_tokens": l.max_input_tokens,
        "max_input_length": l.max_input_tokens,
        "max_total_tokens": l.max_total_tokens,
        "max_batch_prefill_tokens": l.max_batch_prefill_tokens,
        "max_batch_total_tokens": l.max_batch_total_tokens,
        "max_top_n_tokens": l.max_top_n_tokens,
        "validation_workers": 1,
        "max_client_batch_size": 1,
        "router": "meditron",
        "version": env!("CARGO_PKG_VERSION"),
        "sha": null,
        "docker_label": null,
    }))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

fn created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `GET /v1/models`: the one model served.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": created(),
            "owned_by": "meditron",
            "max_model_len": state.limits.max_total_tokens,
        }]
    }))
}

/// `GET /tokenizer_info`: what lm-eval's remote tokenizer reads (vLLM's shape).
pub async fn tokenizer_info(State(state): State<Arc<AppState>>) -> Json<Value> {
    let t = &state.tokenizer;
    Json(json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": t.eos_token(),
        "bos_token": t.bos_token(),
        "pad_token": null,
        "add_bos_token": t.add_bos(),
        "chat_template": state.template.source(),
        "model_max_length": state.limits.max_total_tokens,
        "vocab_size": t.vocab_size(),
    }))
}

/// `POST /tokenize`. TGI's form `{"inputs"}` answers a list of `{id, text, start, stop}`;
/// vLLM's form `{"prompt", "add_special_tokens"}` (lm-eval) answers `{"tokens", "count"}`.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<Value>, ApiError>,
) -> Response {
    match tokenize_inner(&state, body) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct VllmTokenize {
    prompt: String,
    add_special_tokens: Option<bool>,
}

fn tokenize_inner(
    state: &AppState,
    body: Result<JsonBody<Value>, ApiError>,
) -> Result<Value, ApiError> {
    let JsonBody(body) = body?;
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if body.get("inputs").is_some() {
        let req: crate::tgi::GenerateRequest = parse(&bytes)?;
        if req.inputs.is_empty() {
            return Err(ApiError::Validation("`inputs` cannot be empty".into()));
        }
        let ids = state.encode(&req.inputs, true)?;
        return Ok(Value::Array(tgi_tokens(state, &req.inputs, &ids)));
    }
    if body.get("prompt").is_some() {
        let req: VllmTokenize = parse(&bytes)?;
        let ids = state.encode(&req.prompt, req.add_special_tokens.unwrap_or(true))?;
        return Ok(
            json!({ "count": ids.len(), "max_model_len": state.limits.max_total_tokens, "tokens": ids }),
        );
    }
    Err(ApiError::Unprocessable(
        "expected `inputs` (TGI) or `prompt` (vLLM) in the body".into(),
    ))
}

/// TGI's token list: each token's text and its byte span in `inputs`.
fn tgi_tokens(state: &AppState, inputs: &str, ids: &[u32]) -> Vec<Value> {
    let mut decoder = IncrementalDecoder::new(&state.tokenizer, false);
    let mut offset = 0;
    ids.iter()
        .enumerate()
        .map(|(i, &id)| {
            let added_bos =
                i == 0 && state.tokenizer.add_bos() && Some(id) == state.tokenizer.bos_id();
            let piece = if added_bos {
                String::new()
            } else {
                decoder.push(id).unwrap_or_default()
            };
            // The decoded text equals the input for the tokenizers served here; clamp anyway.
            let start = offset.min(inputs.len());
            let stop = (offset + piece.len()).min(inputs.len());
            offset += piece.len();
            json!({ "id": id, "text": piece, "start": start, "stop": stop })
        })
        .collect()
}

#[derive(Deserialize)]
pub struct Detokenize {
    tokens: Vec<u32>,
}

/// `POST /detokenize`: `{"tokens": [ids]}` to `{"prompt": text}` (vLLM's shape).
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<Detokenize>, ApiError>,
) -> Response {
    let result = body.and_then(|JsonBody(d)| {
        if let Some(bad) = d
            .tokens
            .iter()
            .find(|&&t| t as usize >= state.tokenizer.vocab_size())
        {
            return Err(ApiError::Validation(format!(
                "token id {bad} is not in the vocabulary"
            )));
        }
        state
            .tokenizer
            .decode(&d.tokens, false)
            .map_err(|e| ApiError::Validation(e.to_string()))
    });
    match result {
        Ok(text) => Json(json!({ "prompt": text })).into_response(),
        Err(e) => e.into_response(),
    }
}
