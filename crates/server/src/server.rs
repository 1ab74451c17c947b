//! Putting it together: load the model, start the engine, route requests (with the API key
//! check and the body limit), and serve until SIGTERM, then drain in-flight requests and exit.

use crate::args::{Limits, ServeArgs};
use crate::engine::EngineHandle;
use crate::error::{ApiError, OpenAiError};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::{info, openai, tgi, web};
use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// `--model`, or the default model where `scripts/fetch-default-model` installs it.
fn resolve_model(model: Option<&str>) -> Result<PathBuf> {
    if let Some(m) = model {
        let path = PathBuf::from(m);
        anyhow::ensure!(
            path.exists(),
            "model '{m}' not found: pass a .gguf file or a Hugging Face model directory"
        );
        return Ok(path);
    }
    let path = model::load::default_model_path();
    anyhow::ensure!(
        path.is_file(),
        "the default model is not installed (looked for {}); fetch it with `scripts/fetch-default-model` or pass --model",
        path.display()
    );
    Ok(path)
}

/// A loaded model with its engine running, ready to serve.
pub struct Server {
    pub state: Arc<AppState>,
    engine: EngineHandle,
    drain_timeout: Duration,
}

impl Server {
    /// Loads the model, resolves the limits against it and starts the engine thread.
    pub fn start(args: &ServeArgs) -> Result<Server> {
        let path = resolve_model(args.model.as_deref())?;
        match args.device.as_str() {
            "cpu" => {}
            "cuda" | "cuda:0" => return Self::start_gpu(args, &path),
            d => anyhow::bail!("--device {d}: expected cpu or cuda"),
        }
        let loaded = model::load::load(&path)
            .with_context(|| format!("loading model {}", path.display()))?;
        tracing::info!("loaded {} ({})", path.display(), loaded.describe());
        let c = &loaded.model.config;
        // f16 keys and values of every layer.
        let kv_bytes_per_token = c.n_layers * 2 * c.kv_dim() * 2;
        let limits = Limits::resolve(args, c.max_context, kv_bytes_per_token)?;
        tracing::info!(?limits, "limits");
        let metrics = Arc::new(Metrics::default());
        let model_id = args.model.clone().unwrap_or_else(|| loaded.name.clone());
        let eos_ids = loaded.tokenizer.eos_ids().to_vec();
        let engine = EngineHandle::start(
            loaded.model,
            eos_ids,
            limits.clone(),
            args.threads,
            metrics.clone(),
        )?;
        let state = Arc::new(AppState::new(
            engine.client(),
            loaded.tokenizer,
            loaded.template,
            limits,
            metrics,
            model_id,
            args.api_key.clone().filter(|k| !k.is_empty()),
            args.payload_limit,
        ));
        Ok(Server {
            state,
            engine,
            drain_timeout: Duration::from_secs(args.shutdown_timeout),
        })
    }

    /// `--device cuda`: the model on GPU 0, the tokenizer and template from its directory.
    fn start_gpu(args: &ServeArgs, path: &std::path::Path) -> Result<Server> {
        let g = crate::gpu::load(path, args)?;
        tracing::info!(limits = ?g.limits, "limits");
        let metrics = Arc::new(Metrics::default());
        let model_id = args.model.clone().unwrap_or_else(|| g.name.clone());
        let eos_ids = g.tokenizer.eos_ids().to_vec();
        let engine = EngineHandle::start(
            g.model,
            eos_ids,
            g.limits.clone(),
            args.threads,
            metrics.clone(),
        )?;
        let mut state = AppState::new(
            engine.client(),
            g.tokenizer,
            g.template,
            g.limits,
            metrics,
            model_id,
            args.api_key.clone().filter(|k| !k.is_empty()),
            args.payload_limit,
        );
        state.device = "cuda";
        let state = Arc::new(state);
        Ok(Server {
            state,
            engine,
            drain_timeout: Duration::from_secs(args.shutdown_timeout),
        })
    }

    /// Serves on `listener` until `shutdown` resolves; then refuses new requests, waits for
    /// in-flight ones (at most the drain timeout) and stops the engine.
    pub async fn serve(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let app = router(self.state.clone());
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let state = self.state.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new requests, finishing those in flight");
            state.shutting_down.store(true, Ordering::SeqCst);
            let _ = draining_tx.send(());
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(signal);
        let drain_timeout = self.drain_timeout;
        let deadline = async move {
            if draining_rx.await.is_ok() {
                tokio::time::sleep(drain_timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = server => r.context("serving HTTP")?,
            _ = deadline => tracing::warn!("requests still running after {drain_timeout:?}; exiting anyway"),
        }
        self.engine.shutdown();
        Ok(())
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn termination() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// `meditron serve`: loads the model, serves until SIGTERM or Ctrl-C, drains, returns.
pub fn run_serve(args: ServeArgs) -> Result<()> {
    let server = Server::start(&args)?;
    // The compute pool wants every core; HTTP work per token is small, so a quarter of the cores
    // (one on a small machine) serve it without preempting the pool's threads mid-step.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads((cores / 4).max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", args.hostname, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!("listening on http://{addr}");
        eprintln!("meditron serve: listening on http://{addr}");
        server.serve(listener, termination()).await
    })
}

/// Every route, behind the API key check and the body size limit.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", post(tgi::compat).get(web::index))
        .route("/assets/{name}", get(web::asset))
        .route("/generate", post(tgi::generate))
        .route("/generate_stream", post(tgi::generate_stream))
        .route("/health", get(info::health))
        .route("/ping", get(info::health))
        .route("/info", get(info::info))
        .route("/metrics", get(info::metrics))
        .route("/tokenize", post(info::tokenize))
        .route("/detokenize", post(info::detokenize))
        .route("/tokenizer_info", get(info::tokenizer_info))
        .route("/v1/models", get(info::models))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .layer(DefaultBodyLimit::max(state.payload_limit))
        .with_state(state)
}

async fn not_found(request: Request) -> Response {
    let e = ApiError::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ));
    if request.uri().path().starts_with("/v1/") {
        OpenAiError(e).into_response()
    } else {
        e.into_response()
    }
}

/// Routes open without the key: TGI leaves health, info and metrics open for probes; the chat
/// page and its assets load before the user can type the key in.
fn is_open(method: &Method, path: &str) -> bool {
    method == Method::GET
        && (matches!(path, "/" | "/health" | "/ping" | "/info" | "/metrics")
            || path.starts_with("/assets/"))
}

/// Equal in time that does not depend on where the two differ (only on their lengths).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &state.api_key else {
        return next.run(request).await;
    };
    if is_open(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if constant_time_eq(given, key.as_bytes()) {
        return next.run(request).await;
    }
    state.metrics.request_done("unauthorized");
    if request.uri().path().starts_with("/v1/") {
        OpenAiError(ApiError::Unauthorized).into_response()
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
