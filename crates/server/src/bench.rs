//! `meditron bench-serve`: a vLLM-style serving benchmark against a running server: streams
//! requests at fixed concurrency levels (or Poisson request rates) through `/generate_stream`
//! and reports TTFT, TPOT, ITL and end-to-end latency (mean, p50, p99) and throughput.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchServeArgs {
    /// Base URL of the server
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// Concurrency levels to sweep, comma-separated (closed loop: a new request as one ends)
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Request rates to sweep instead, in requests/s, comma-separated (Poisson arrivals)
    #[arg(long, value_delimiter = ',')]
    pub request_rate: Vec<f64>,
    /// Requests per level (default: 4 x concurrency, at least 8)
    #[arg(long)]
    pub num_prompts: Option<usize>,
    /// Prompt length, in words of a fixed vocabulary (about one token each)
    #[arg(long, default_value_t = 64)]
    pub input_len: usize,
    /// Tokens to generate per request (EOS ignored, so every request generates exactly this)
    #[arg(long, default_value_t = 64)]
    pub output_len: usize,
    /// Seed of the prompts and arrival times
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the results as JSON to this file
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Timings of one streamed request.
#[derive(Clone, Debug, Default)]
struct Sample {
    ttft: f64,
    /// Gaps between consecutive tokens.
    itl: Vec<f64>,
    e2e: f64,
    output_tokens: usize,
    ok: bool,
}

/// mean, p50, p99 in milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    if v.is_empty() {
        return Stats::default();
    }
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] * 1e3;
    Stats {
        mean: v.iter().sum::<f64>() / v.len() as f64 * 1e3,
        p50: pct(0.5),
        p99: pct(0.99),
    }
}

/// The results of one level of the sweep.
#[derive(Clone, Debug)]
pub struct LevelResult {
    pub label: String,
    pub completed: usize,
    pub failed: usize,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    pub ttft: Stats,
    pub tpot: Stats,
    pub itl: Stats,
    pub e2e: Stats,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A tiny deterministic generator for prompts and arrival gaps.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const WORDS: &[&str] = &[
    "the",
    "patient",
    "was",
    "given",
    "a",
    "dose",
    "of",
    "and",
    "after",
    "two",
    "days",
    "her",
    "fever",
    "fell",
    "blood",
    "pressure",
    "heart",
    "rate",
    "normal",
    "treatment",
    "with",
    "for",
    "is",
    "in",
    "to",
    "doctor",
    "said",
    "study",
    "trial",
    "results",
    "showed",
    "risk",
    "disease",
    "cells",
    "care",
    "hospital",
];

fn prompt(rng: &mut SplitMix, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[(rng.next() % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Streams one request and times its tokens.
async fn one(client: &HttpClient, url: &str, inputs: String, output_len: usize) -> Sample {
    let body = json!({
        "inputs": inputs,
        "parameters": { "max_new_tokens": output_len, "ignore_eos": true, "details": true }
    });
    let start = Instant::now();
    let request = hyper::Request::post(format!("{url}/generate_stream"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())));
    let Ok(request) = request else {
        return Sample::default();
    };
    let Ok(response) = client.request(request).await else {
        return Sample::default();
    };
    if !response.status().is_success() {
        return Sample::default();
    }
    let mut body = response.into_body();
    let mut buf = Vec::new();
    let mut s = Sample::default();
    let mut last = start;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Sample::default();
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let Some(payload) = text.trim().strip_prefix("data:") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(payload.trim()) else {
                continue;
            };
            if v.get("error").is_some() {
                return Sample::default();
            }
            let now = Instant::now();
            if s.output_tokens == 0 {
                s.ttft = (now - start).as_secs_f64();
            } else {
                s.itl.push((now - last).as_secs_f64());
            }
            last = now;
            s.output_tokens += 1;
            if v.get("generated_text").is_some_and(|t| !t.is_null()) {
                s.ok = true;
            }
        }
    }
    s.e2e = start.elapsed().as_secs_f64();
    s
}

fn summarize(label: String, samples: &[Sample], duration: f64) -> LevelResult {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
    let out_tokens: usize = ok.iter().map(|s| s.output_tokens).sum();
    LevelResult {
        label,
        completed: ok.len(),
        failed: samples.len() - ok.len(),
        duration_s: duration,
        requests_per_s: ok.len() as f64 / duration,
        output_tokens_per_s: out_tokens as f64 / duration,
        ttft: stats(ok.iter().map(|s| s.ttft).collect()),
        tpot: stats(
            ok.iter()
                .filter(|s| s.output_tokens > 1)
                .map(|s| (s.e2e - s.ttft) / (s.output_tokens - 1) as f64)
                .collect(),
        ),
        itl: stats(ok.iter().flat_map(|s| s.itl.iter().copied()).collect()),
        e2e: stats(ok.iter().map(|s| s.e2e).collect()),
    }
}

/// Runs `n` requests with at most `concurrency` in flight.
async fn closed_loop(
    client: &HttpClient,
    args: &BenchServeArgs,
    concurrency: usize,
    n: usize,
) -> LevelResult {
    let mut rng = SplitMix(args.seed);
    let prompts: Vec<String> = (0..n).map(|_| prompt(&mut rng, args.input_len)).collect();
    let queue = Arc::new(std::sync::Mutex::new(prompts));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, queue, url, out) = (
            client.clone(),
            queue.clone(),
            args.url.clone(),
            args.output_len,
        );
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some(p) = next else { break };
                samples.push(one(&client, &url, p, out).await);
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap_or_default());
    }
    summarize(
        format!("concurrency {concurrency}"),
        &samples,
        start.elapsed().as_secs_f64(),
    )
}

/// Runs `n` requests arriving as a Poisson process of `rate` per second.
async fn open_loop(client: &HttpClient, args: &BenchServeArgs, rate: f64, n: usize) -> LevelResult {
    let mut rng = SplitMix(args.seed);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let p = prompt(&mut rng, args.input_len);
        let (client, url, out) = (client.clone(), args.url.clone(), args.output_len);
        tasks.push(tokio::spawn(
            async move { one(&client, &url, p, out).await },
        ));
        let gap = -(1.0 - rng.unit()).ln() / rate;
        tokio::time::sleep(Duration::from_secs_f64(gap)).await;
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.push(t.await.unwrap_or_default());
    }
    summarize(
        format!("rate {rate}/s"),
        &samples,
        start.elapsed().as_secs_f64(),
    )
}

fn table(results: &[LevelResult]) -> String {
    let mut out = String::from(
        "| level | ok | failed | req/s | out tok/s | TTFT mean / p50 / p99 (ms) | TPOT mean / p50 / p99 (ms) | ITL mean / p50 / p99 (ms) | E2E mean / p50 / p99 (ms) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let s = |x: &Stats| format!("{:.1} / {:.1} / {:.1}", x.mean, x.p50, x.p99);
    for r in results {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.1} | {} | {} | {} | {} |\n",
            r.label,
            r.completed,
            r.failed,
            r.requests_per_s,
            r.output_tokens_per_s,
            s(&r.ttft),
            s(&r.tpot),
            s(&r.itl),
            s(&r.e2e)
        ));
    }
    out
}

fn to_json(r: &LevelResult) -> Value {
    let s = |x: &Stats| json!({ "mean_ms": x.mean, "p50_ms": x.p50, "p99_ms": x.p99 });
    json!({
        "level": r.label, "completed": r.completed, "failed": r.failed, "duration_s": r.duration_s,
        "requests_per_s": r.requests_per_s, "output_tokens_per_s": r.output_tokens_per_s,
        "ttft": s(&r.ttft), "tpot": s(&r.tpot), "itl": s(&r.itl), "e2e": s(&r.e2e),
    })
}

/// Runs the sweep and returns one result per level (printing a Markdown table as it goes).
pub async fn bench_serve(args: &BenchServeArgs) -> Result<Vec<LevelResult>> {
    if args.output_len == 0 || args.input_len == 0 {
        bail!("--input-len and --output-len must be at least 1");
    }
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
    let health =
        hyper::Request::get(format!("{}/health", args.url)).body(Full::new(Bytes::new()))?;
    let response = client
        .request(health)
        .await
        .with_context(|| format!("no server at {}", args.url))?;
    if !response.status().is_success() {
        bail!("{} is not healthy: {}", args.url, response.status());
    }
    // One request first so the first level does not pay for cold caches.
    one(&client, &args.url, "warm up".into(), 4).await;
    let mut results = Vec::new();
    if args.request_rate.is_empty() {
        for &c in &args.concurrency {
            let c = c.max(1);
            let n = args.num_prompts.unwrap_or((4 * c).max(8));
            results.push(closed_loop(&client, args, c, n).await);
            eprint!(
                "{}",
                table(std::slice::from_ref(&results[results.len() - 1]))
            );
        }
    } else {
        for &rate in &args.request_rate {
            if rate.is_nan() || rate <= 0.0 {
                bail!("--request-rate values must be positive, got {rate}");
            }
            let n = args.num_prompts.unwrap_or(32);
            results.push(open_loop(&client, args, rate, n).await);
        }
    }
    Ok(results)
}

/// `meditron bench-serve`: runs the sweep, prints the table, writes JSON when asked.
pub fn run_bench_serve(args: BenchServeArgs) -> Result<()> {
    // One thread: the client usually shares the machine with the server it measures.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(bench_serve(&args))?;
    println!(
        "input {} words, output {} tokens per request\n\n{}",
        args.input_len,
        args.output_len,
        table(&results)
    );
    if let Some(path) = &args.json {
        let v = Value::Array(results.iter().map(to_json).collect());
        std::fs::write(path, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds() {
        let s = stats((1..=100).map(|i| i as f64 / 1000.0).collect());
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert!((s.p50 - 51.0).abs() < 1e-9 || (s.p50 - 50.0).abs() < 1e-9);
        assert!((s.p99 - 99.0).abs() < 1.01);
    }
}
