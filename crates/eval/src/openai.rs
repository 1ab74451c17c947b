//! A `Backend` for any OpenAI-compatible server (`/v1/completions`), as lm-eval's `local-completions` talks to it.
//!
//! Log-likelihoods use `echo: true, logprobs: 1, max_tokens: 1` and read the prompt's own token
//! log-probabilities back. Where the server offers vLLM's `POST /tokenize` (as lm-eval's
//! "remote" tokenizer backend does), requests go as token ids split exactly like lm-eval
//! (see `backend`): the continuation is `tokens[ctxlen..]`, so numbers match lm-eval's
//! `local-completions` on the same server. Otherwise the text `context + continuation` is sent
//! and the continuation is every token whose `text_offset` lies at or after the context's end;
//! that equals lm-eval's split whenever no token straddles the boundary, which holds for these
//! tasks' contexts (ending in "Answer:") with BPE and SentencePiece tokenizers alike.

use crate::backend::{
    encode_pair, lm_eval_window, split_trailing_space, Backend, GenParams, LM_EVAL_MAX_LENGTH,
};
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// How log-likelihood requests are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoglikMode {
    /// Token ids when the server has `/tokenize`, else text (decided at the first call).
    Auto,
    Tokens,
    Text,
}

/// An OpenAI-compatible completions server as a `Backend`.
pub struct OpenAiBackend {
    /// `http://host:port` (any path prefix kept), without `/v1`.
    base: String,
    model: Option<String>,
    api_key: Option<String>,
    client: reqwest::blocking::Client,
    /// Prompts per HTTP request.
    batch_size: usize,
    /// lm-eval's token budget for a log-likelihood request.
    max_length: usize,
    mode: LoglikMode,
    /// Token ids of texts already tokenized by the server (contexts repeat once per option).
    token_cache: HashMap<String, Vec<u32>>,
}

impl OpenAiBackend {
    /// Connects to `endpoint` (`http://host:port`, optionally ending in `/v1` or
    /// `/v1/completions`). Without `model`, the server's first `/v1/models` entry is used, if any.
    /// `OPENAI_API_KEY`, when set, is sent as a bearer token (as lm-eval does).
    pub fn connect(endpoint: &str, model: Option<String>) -> anyhow::Result<OpenAiBackend> {
        let base = normalise_base(endpoint)?;
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .context("building the HTTP client")?;
        let mut backend = OpenAiBackend {
            base,
            model,
            api_key: std::env::var("OPENAI_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            client,
            batch_size: 16,
            max_length: LM_EVAL_MAX_LENGTH,
            mode: LoglikMode::Auto,
            token_cache: HashMap::new(),
        };
        if backend.model.is_none() {
            // Servers without /v1/models (TGI's OpenAI layer, some proxies) take any model name.
            backend.model = backend
                .get("/v1/models")
                .ok()
                .and_then(|v| v["data"][0]["id"].as_str().map(str::to_string));
        }
        Ok(backend)
    }

    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    pub fn with_loglik_mode(mut self, mode: LoglikMode) -> Self {
        self.mode = mode;
        self
    }

    /// The server's base URL, as requests are sent to it.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = self.url(path);
        let mut req = self.client.get(&url);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().with_context(|| format!("GET {url}"))?;
        read_json(resp, "GET", &url)
    }

    /// POST with up to 3 attempts on connection errors, 429 and 5xx (servers under load).
    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = self.url(path);
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << attempt));
            }
            let mut req = self
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            if let Some(k) = &self.api_key {
                req = req.bearer_auth(k);
            }
            match req.send() {
                Ok(resp) if resp.status().is_server_error() || resp.status().as_u16() == 429 => {
                    last = Some(
                        read_json(resp, "POST", &url)
                            .err()
                            .unwrap_or_else(|| anyhow!("POST {url}: retryable status")),
                    );
                }
                Ok(resp) => return read_json(resp, "POST", &url),
                Err(e) if e.is_connect() || e.is_timeout() => {
                    last = Some(anyhow!(e).context(format!("POST {url}")))
                }
                Err(e) => return Err(anyhow!(e).context(format!("POST {url}"))),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("POST {url} failed")))
    }

    fn completions(&self, mut body: Value) -> anyhow::Result<Vec<Value>> {
        if let Some(m) = &self.model {
            body["model"] = json!(m);
        }
        let v = self.post("/v1/completions", &body)?;
        let mut choices = v["choices"]
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow!("/v1/completions answered without `choices`: {}", short(&v)))?;
        choices.sort_by_key(|c| c["index"].as_u64().unwrap_or(0));
        Ok(choices)
    }

    /// Token ids of `text` from the server's `/tokenize`, without special tokens.
    fn tokenize(&mut self, text: &str) -> anyhow::Result<Vec<u32>> {
        if let Some(t) = self.token_cache.get(text) {
            return Ok(t.clone());
        }
        let v = self.post(
            "/tokenize",
            &json!({"prompt": text, "add_special_tokens": false}),
        )?;
        let tokens: Vec<u32> = v["tokens"]
            .as_array()
            .and_then(|a| a.iter().map(|t| t.as_u64().map(|x| x as u32)).collect())
            .ok_or_else(|| {
                anyhow!(
                    "/tokenize answered without a `tokens` list of ids: {}",
                    short(&v)
                )
            })?;
        if self.token_cache.len() > 4096 {
            self.token_cache.clear();
        }
        self.token_cache.insert(text.to_string(), tokens.clone());
        Ok(tokens)
    }

    fn resolve_mode(&mut self) -> anyhow::Result<LoglikMode> {
        if self.mode == LoglikMode::Auto {
            let probe = self.post(
                "/tokenize",
                &json!({"prompt": "test", "add_special_tokens": false}),
            );
            self.mode = match probe {
                Ok(v) if v["tokens"].is_array() => LoglikMode::Tokens,
                _ => LoglikMode::Text,
            };
        }
        Ok(self.mode)
    }

    fn loglik_tokens(&mut self, requests: &[(String, String)]) -> anyhow::Result<Vec<f64>> {
        let mut windows = Vec::with_capacity(requests.len());
        for (ctx, cont) in requests {
            let (c, k) = encode_pair(ctx, cont, |s| self.tokenize(s))?;
            if k.is_empty() {
                bail!("the continuation {cont:?} has no tokens of its own after the context");
            }
            windows.push(lm_eval_window(&c, &k, self.max_length));
        }
        let mut out = Vec::with_capacity(requests.len());
        for chunk in windows.chunks(self.batch_size) {
            let prompts: Vec<&Vec<u32>> = chunk.iter().map(|(input, _)| input).collect();
            let choices = self.completions(json!({
                "prompt": prompts, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": true, "seed": 1234,
            }))?;
            if choices.len() != chunk.len() {
                bail!(
                    "/v1/completions returned {} choices for {} prompts",
                    choices.len(),
                    chunk.len()
                );
            }
            for (choice, (input, ctxlen)) in choices.iter().zip(chunk) {
                let lps = token_logprobs(choice)?;
                if lps.len() < input.len() {
                    bail!(
                        "/v1/completions echoed {} prompt log-probabilities for a prompt of {} tokens (does the server support echo?)",
                        lps.len(),
                        input.len()
                    );
                }
                out.push(sum_logprobs(&lps[*ctxlen..input.len()])?);
            }
        }
        Ok(out)
    }

    fn loglik_text(&mut self, requests: &[(String, String)]) -> anyhow::Result<Vec<f64>> {
        let mut out = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(self.batch_size) {
            let split: Vec<(usize, usize, String)> = chunk
                .iter()
                .map(|(ctx, cont)| {
                    let (c, k) = split_trailing_space(ctx, cont);
                    let text = format!("{c}{k}");
                    (c.chars().count(), text.chars().count(), text)
                })
                .collect();
            let prompts: Vec<&str> = split.iter().map(|(_, _, t)| t.as_str()).collect();
            let choices = self.completions(json!({
                "prompt": prompts, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": true, "seed": 1234,
            }))?;
            if choices.len() != chunk.len() {
                bail!(
                    "/v1/completions returned {} choices for {} prompts",
                    choices.len(),
                    chunk.len()
                );
            }
            for (choice, (boundary, end, _)) in choices.iter().zip(&split) {
                let lps = token_logprobs(choice)?;
                let offsets: Vec<usize> = choice["logprobs"]["text_offset"]
                    .as_array()
                    .and_then(|a| a.iter().map(|o| o.as_u64().map(|x| x as usize)).collect())
                    .ok_or_else(|| {
                        anyhow!(
                            "/v1/completions answered without logprobs.text_offset: {}",
                            short(choice)
                        )
                    })?;
                let mine: Vec<Option<f64>> = lps
                    .iter()
                    .zip(&offsets)
                    .filter(|(_, &o)| o >= *boundary && o < *end)
                    .map(|(lp, _)| *lp)
                    .collect();
                if mine.is_empty() {
                    bail!("no echoed token starts inside the continuation (text offsets {boundary}..{end})");
                }
                out.push(sum_logprobs(&mine)?);
            }
        }
        Ok(out)
    }
}

impl Backend for OpenAiBackend {
    fn loglik(&mut self, requests: &[(String, String)]) -> anyhow::Result<Vec<f64>> {
        match self.resolve_mode()? {
            LoglikMode::Tokens => self.loglik_tokens(requests),
            _ => self.loglik_text(requests),
        }
    }

    fn generate(&mut self, prompts: &[String], params: &GenParams) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::with_capacity(prompts.len());
        // OpenAI's API takes at most 4 stop strings.
        let stop: Vec<&String> = params.stop.iter().take(4).collect();
        for chunk in prompts.chunks(self.batch_size) {
            let choices = self.completions(json!({
                "prompt": chunk,
                "max_tokens": params.max_new_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "seed": params.seed,
                "stop": stop,
            }))?;
            if choices.len() != chunk.len() {
                bail!(
                    "/v1/completions returned {} choices for {} prompts",
                    choices.len(),
                    chunk.len()
                );
            }
            for c in &choices {
                let text = c["text"]
                    .as_str()
                    .ok_or_else(|| anyhow!("a choice without `text`: {}", short(c)))?;
                out.push(text.to_string());
            }
        }
        Ok(out)
    }

    fn model_id(&self) -> String {
        match &self.model {
            Some(m) => format!("{m} @ {}", self.base),
            None => self.base.clone(),
        }
    }
}

fn normalise_base(endpoint: &str) -> anyhow::Result<String> {
    let e = endpoint.trim().trim_end_matches('/');
    if !(e.starts_with("http://") || e.starts_with("https://")) {
        bail!("--endpoint {endpoint:?}: expected an http:// or https:// URL");
    }
    let e = e.strip_suffix("/completions").unwrap_or(e);
    let e = e.strip_suffix("/v1").unwrap_or(e);
    Ok(e.to_string())
}

fn read_json(resp: reqwest::blocking::Response, method: &str, url: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let text = resp
        .text()
        .with_context(|| format!("{method} {url}: reading the answer"))?;
    if !status.is_success() {
        let body: String = text.chars().take(500).collect();
        bail!("{method} {url}: HTTP {status}: {body}");
    }
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{method} {url}: the answer is not JSON: {}",
            text.chars().take(200).collect::<String>()
        )
    })
}

fn token_logprobs(choice: &Value) -> anyhow::Result<Vec<Option<f64>>> {
    choice["logprobs"]["token_logprobs"]
        .as_array()
        .map(|a| a.iter().map(Value::as_f64).collect())
        .ok_or_else(|| anyhow!("/v1/completions answered without logprobs.token_logprobs (does the server support echo with logprobs?): {}", short(choice)))
}

fn sum_logprobs(lps: &[Option<f64>]) -> anyhow::Result<f64> {
    lps.iter()
        .map(|lp| lp.ok_or_else(|| anyhow!("a continuation token has a null log-probability")))
        .sum()
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!("{}...", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests;
