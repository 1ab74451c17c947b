//! Test helpers: start a server on the default model on an ephemeral port, and a small HTTP
//! client (plain requests, server-sent events, raw connections).

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// The default model, when `scripts/fetch-default-model` has installed it (under CI it must be).
pub fn default_model() -> Option<PathBuf> {
    model::load::default_model_for_tests()
}

/// The tests' own runtime: servers started on it outlive each `#[tokio::test]`'s runtime.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// Starts a server with `configure`d flags; returns its base URL and a trigger for SIGTERM-like
/// shutdown. None when the default model is not installed.
pub fn start_server(
    configure: impl FnOnce(&mut server::ServeArgs),
) -> Option<(String, tokio::sync::oneshot::Sender<()>)> {
    let model = default_model()?;
    let mut args = server::ServeArgs::with_model(Some(model));
    args.shutdown_timeout = 10;
    // Several test servers share the machine (2 cores in CI): one compute thread each keeps
    // their pools from spinning against one another.
    args.threads = Some(1);
    // The KV cache is allocated (and written) up front: 8k tokens (190 MB) is plenty here.
    args.max_batch_total_tokens = Some(8192);
    configure(&mut args);
    let srv = server::Server::start(&args).expect("server starts");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    // Spawned, not blocked on: this may run inside a test's own runtime.
    runtime().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let _ = srv
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await;
    });
    Some((url, tx))
}

/// The server most tests share, started once with the default flags.
pub fn shared() -> Option<&'static str> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        start_server(|_| {}).map(|(url, stop)| {
            // Dropping the trigger would shut the server down; it serves until the process ends.
            std::mem::forget(stop);
            url
        })
    })
    .as_deref()
}

/// Skips the test (with a note) when the default model is not installed.
#[macro_export]
macro_rules! server_or_skip {
    () => {
        match common::shared() {
            Some(u) => u.to_string(),
            None => {
                eprintln!(
                    "skipped: the default model is not installed (scripts/fetch-default-model)"
                );
                return;
            }
        }
    };
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of a server-sent-event body.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| {
                e.lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.trim().to_string())
            })
            .collect()
    }
}

pub async fn request(
    method: &str,
    url: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut b = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body.into())).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(120), client().request(req))
        .await
        .expect("response within 120 s")
        .expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn post(url: &str, body: &Value) -> Reply {
    request(
        "POST",
        url,
        body.to_string(),
        &[("content-type", "application/json")],
    )
    .await
}

pub async fn get(url: &str) -> Reply {
    request("GET", url, Bytes::new(), &[]).await
}

/// The value of a Prometheus sample line `name` (with labels, exactly as written).
pub async fn metric(base: &str, name: &str) -> f64 {
    let text = get(&format!("{base}/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}
