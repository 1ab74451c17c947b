//! What every route shares: the engine's queue, the tokenizer and chat template, the limits,
//! the metrics, and the per-request bookkeeping (concurrency permit, outcome, request id).

use crate::args::Limits;
use crate::engine::EngineClient;
use crate::error::ApiError;
use crate::metrics::Metrics;
use model::grammar::{JsonConstraint, Schema, TokenTable};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokenizer::{ChatTemplate, Message, Tokenizer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct AppState {
    pub engine: EngineClient,
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// The name `/info` and the OpenAI routes report.
    pub model_id: String,
    pub api_key: Option<String>,
    pub payload_limit: usize,
    /// Where the model runs, as `/info` reports it ("cpu" or "cuda").
    pub device: &'static str,
    pub shutting_down: AtomicBool,
    /// The vocabulary as bytes, for JSON-constrained requests; built at the first one.
    token_table: std::sync::OnceLock<Arc<TokenTable>>,
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
    seeds: std::collections::hash_map::RandomState,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: EngineClient,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        limits: Limits,
        metrics: Arc<Metrics>,
        model_id: String,
        api_key: Option<String>,
        payload_limit: usize,
    ) -> AppState {
        AppState {
            engine,
            tokenizer: Arc::new(tokenizer),
            template,
            permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            limits,
            metrics,
            model_id,
            api_key,
            payload_limit,
            device: "cpu",
            shutting_down: AtomicBool::new(false),
            token_table: Default::default(),
            next_id: AtomicU64::new(1),
            seeds: Default::default(),
        }
    }

    /// A fresh constraint for one generation that must follow `schema`.
    pub fn json_constraint(&self, schema: Arc<Schema>) -> JsonConstraint {
        let table = self
            .token_table
            .get_or_init(|| Arc::new(TokenTable::new(&self.tokenizer)));
        JsonConstraint::new(schema, table.clone())
    }

    /// Starts the bookkeeping of one request: refuses it while shutting down or when
    /// `max_concurrent_requests` are already in flight (TGI's 429).
    pub fn begin(self: &Arc<Self>) -> Result<RequestGuard, ApiError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let arrived = Instant::now();
        if self.shutting_down.load(Ordering::SeqCst) {
            self.metrics.request_done("shutting_down");
            return Err(ApiError::ShuttingDown);
        }
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            self.metrics.request_done("overloaded");
            tracing::warn!(request_id = id, "refused: max_concurrent_requests reached");
            ApiError::Overloaded
        })?;
        Ok(RequestGuard {
            id,
            arrived,
            metrics: self.metrics.clone(),
            permit: Some(permit),
            outcome: None,
        })
    }

    /// A fresh random seed, for sampling requests that bring none.
    pub fn random_seed(&self) -> u64 {
        let mut h = self.seeds.build_hasher();
        h.write_u64(self.next_id.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.finish()
    }

    /// Token ids of `text` (BOS added when the model adds it).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, ApiError> {
        self.tokenizer
            .encode(text, add_special)
            .map_err(|e| ApiError::Validation(format!("tokenizer error {e}")))
    }

    /// The conversation rendered with the model's chat template, ready for the assistant.
    pub fn render_chat(&self, messages: &[Message]) -> Result<String, ApiError> {
        let bos = self.tokenizer.bos_token().unwrap_or_default();
        let eos = self.tokenizer.eos_token().unwrap_or_default();
        self.template
            .render(messages, true, &bos, &eos)
            .map_err(|e| ApiError::Validation(format!("Template error: {e}")))
    }
}

/// One request in flight: holds its concurrency permit and counts its outcome once, as
/// `cancelled` if it is dropped before one is set (the client went away).
pub struct RequestGuard {
    pub id: u64,
    pub arrived: Instant,
    metrics: Arc<Metrics>,
    permit: Option<OwnedSemaphorePermit>,
    outcome: Option<&'static str>,
}

impl RequestGuard {
    pub fn success(&mut self) {
        self.outcome = Some("success");
    }

    pub fn failed(&mut self, e: &ApiError) {
        self.outcome = Some(e.error_type());
        tracing::warn!(request_id = self.id, error = %e, error_type = e.error_type(), "request failed");
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or("cancelled");
        self.metrics.request_done(outcome);
        tracing::info!(
            request_id = self.id,
            outcome,
            ms = self.arrived.elapsed().as_secs_f64() * 1e3,
            "request done"
        );
        self.permit.take();
    }
}
