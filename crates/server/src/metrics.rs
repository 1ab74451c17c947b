//! Prometheus metrics of the server and the engine, kept in atomics and written out in the
//! Prometheus text format by `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations counted into fixed buckets (upper bounds), with their sum.
pub struct Histogram {
    bounds: &'static [f64],
    // A mutex, not atomics: observations come a few thousand times a second at most, and the
    // sum and the buckets then stay consistent with each other in every scrape.
    state: Mutex<HistogramState>,
}

struct HistogramState {
    counts: Vec<u64>, // (bounds.len() + 1): the last one is +Inf
    sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len() + 1],
                sum: 0.0,
            }),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.counts[i] += 1;
        s.sum += v;
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts
            .iter()
            .sum()
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&s.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += s.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", s.sum);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Outcomes a request ends with, the `outcome` label of `meditron_requests_total`.
pub const OUTCOMES: &[&str] = &[
    "success",
    "validation",
    "overloaded",
    "generation",
    "incomplete_generation",
    "cancelled",
    "unauthorized",
    "shutting_down",
    "healthcheck",
];

/// Every metric the server exports.
pub struct Metrics {
    requests: Vec<Counter>, // (OUTCOMES.len())
    pub prompt_tokens: Counter,
    /// Prompt tokens whose keys and values were reused from a finished sequence.
    pub prompt_tokens_cached: Counter,
    pub generated_tokens: Counter,
    pub queue_seconds: Histogram,
    pub time_to_first_token_seconds: Histogram,
    pub time_per_output_token_seconds: Histogram,
    pub request_seconds: Histogram,
    pub batch_size: Histogram,
    pub batch_tokens: Histogram,
    pub step_seconds: Histogram,
    pub requests_running: Gauge,
    pub requests_waiting: Gauge,
    pub kv_pages_used: Gauge,
    /// Pages of finished sequences kept for prefix reuse (free for any request to take).
    pub kv_pages_cached: Gauge,
    pub kv_pages_total: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: OUTCOMES.iter().map(|_| Counter::default()).collect(),
            prompt_tokens: Counter::default(),
            prompt_tokens_cached: Counter::default(),
            generated_tokens: Counter::default(),
            queue_seconds: Histogram::new(SECONDS),
            time_to_first_token_seconds: Histogram::new(SECONDS),
            time_per_output_token_seconds: Histogram::new(SECONDS),
            request_seconds: Histogram::new(SECONDS),
            batch_size: Histogram::new(SIZES),
            batch_tokens: Histogram::new(SIZES),
            step_seconds: Histogram::new(SECONDS),
            requests_running: Gauge::default(),
            requests_waiting: Gauge::default(),
            kv_pages_used: Gauge::default(),
            kv_pages_cached: Gauge::default(),
            kv_pages_total: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Counts one finished request under `outcome` (one of [`OUTCOMES`]).
    pub fn request_done(&self, outcome: &str) {
        let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.requests[i].add(1);
    }

    pub fn requests(&self, outcome: &str) -> u64 {
        OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map(|i| self.requests[i].get())
            .unwrap_or(0)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP meditron_requests_total Requests finished, by outcome\n# TYPE meditron_requests_total counter"
        );
        for (o, c) in OUTCOMES.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "meditron_requests_total{{outcome=\"{o}\"}} {}",
                c.get()
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "meditron_prompt_tokens_total",
            "Prompt tokens of admitted requests",
            self.prompt_tokens.get(),
        );
        counter(
            &mut out,
            "meditron_prompt_tokens_cached_total",
            "Prompt tokens reused from the cache of a finished sequence (not recomputed)",
            self.prompt_tokens_cached.get(),
        );
        counter(
            &mut out,
            "meditron_generated_tokens_total",
            "Tokens generated",
            self.generated_tokens.get(),
        );
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "meditron_requests_running",
            "Sequences in the running batch",
            self.requests_running.get(),
        );
        gauge(
            &mut out,
            "meditron_requests_waiting",
            "Requests queued for KV cache room",
            self.requests_waiting.get(),
        );
        gauge(
            &mut out,
            "meditron_kv_pages_used",
            "KV cache pages (16 tokens each) in use by running requests",
            self.kv_pages_used.get(),
        );
        gauge(
            &mut out,
            "meditron_kv_pages_cached",
            "KV cache pages of finished requests kept for prefix reuse (evicted when needed)",
            self.kv_pages_cached.get(),
        );
        gauge(
            &mut out,
            "meditron_kv_pages_total",
            "KV cache pages in all",
            self.kv_pages_total.get(),
        );
        self.queue_seconds.write(
            &mut out,
            "meditron_queue_seconds",
            "Time from arrival to admission into the batch",
        );
        self.time_to_first_token_seconds.write(
            &mut out,
            "meditron_time_to_first_token_seconds",
            "Time from arrival to the first generated token",
        );
        self.time_per_output_token_seconds.write(
            &mut out,
            "meditron_time_per_output_token_seconds",
            "Mean time between generated tokens of a request, after the first",
        );
        self.request_seconds.write(
            &mut out,
            "meditron_request_duration_seconds",
            "Time from arrival to the last token",
        );
        self.batch_size.write(
            &mut out,
            "meditron_batch_size",
            "Sequences in one engine step",
        );
        self.batch_tokens.write(
            &mut out,
            "meditron_batch_tokens",
            "Tokens (prefill and decode) in one engine step",
        );
        self.step_seconds.write(
            &mut out,
            "meditron_step_seconds",
            "Duration of one engine step (forward and sampling)",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.queue_seconds.observe(0.002);
        m.queue_seconds.observe(0.3);
        m.queue_seconds.observe(1000.0);
        m.request_done("overloaded");
        let text = m.render();
        assert!(
            text.contains("meditron_queue_seconds_bucket{le=\"0.0025\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("meditron_queue_seconds_bucket{le=\"0.5\"} 2\n"));
        assert!(text.contains("meditron_queue_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("meditron_queue_seconds_count 3\n"));
        assert!(text.contains("meditron_requests_total{outcome=\"overloaded\"} 1\n"));
    }
}
