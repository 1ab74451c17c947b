//! Tests of the OpenAI backend against a fake server on 127.0.0.1.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

type Handler = dyn Fn(&str, &str, &Value) -> (u16, Value) + Send + Sync;

/// A canned-JSON HTTP server: one request per connection, stops when dropped (or after 60 s).
struct FakeServer {
    url: String,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(
        handler: impl Fn(&str, &str, &Value) -> (u16, Value) + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, flag) = (requests.clone(), stop.clone());
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &*handler, &reqs),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FakeServer {
            url,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn paths(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn bodies(&self, path: &str) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, handler: &Handler, reqs: &Mutex<Vec<(String, Value)>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    reqs.lock().unwrap().push((path.clone(), json.clone()));
    let (status, answer) = handler(&method, &path, &json);
    let text = answer.to_string();
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.flush();
}

/// The fake server's tokenizer: a space joins the word after it; other characters stand alone.
fn toy_tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        if chars[i] == ' ' && i + 1 < chars.len() && chars[i + 1].is_alphanumeric() {
            i += 1;
        }
        if chars[i].is_alphanumeric() {
            while i < chars.len() && chars[i].is_alphanumeric() {
                i += 1;
            }
        } else {
            i += 1;
        }
        out.push(chars[start..i].iter().collect());
    }
    out
}

/// A token's log-probability under the fake model: -(characters) / 10, so " yes" is -0.4.
fn toy_logprob(token: &str) -> f64 {
    -(token.chars().count() as f64) / 10.0
}

/// Token ids encode the token: characters * 1000 + first character's code.
fn toy_id(token: &str) -> u64 {
    token.chars().count() as u64 * 1000 + token.chars().next().map(|c| c as u64).unwrap_or(0)
}

fn echo_text(prompt: &str) -> Value {
    let tokens = toy_tokens(prompt);
    let mut offsets = Vec::new();
    let mut at = 0;
    let mut lps = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        offsets.push(json!(at));
        at += t.chars().count();
        lps.push(if i == 0 {
            Value::Null
        } else {
            json!(toy_logprob(t))
        });
    }
    // The one generated token (max_tokens 1), which must not be counted.
    offsets.push(json!(at));
    lps.push(json!(-9.0));
    json!({"token_logprobs": lps, "text_offset": offsets})
}

fn echo_ids(ids: &[Value]) -> Value {
    let mut lps: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            if i == 0 {
                Value::Null
            } else {
                json!(-((id.as_u64().unwrap() / 1000) as f64) / 10.0)
            }
        })
        .collect();
    lps.push(json!(-9.0));
    json!({"token_logprobs": lps})
}

/// A server with /v1/models, /v1/completions (echo or generation) and, if `tokenize`, /tokenize.
fn fake(tokenize: bool) -> FakeServer {
    FakeServer::start(move |method, path, body| match (method, path) {
        ("GET", "/v1/models") => (
            200,
            json!({"object": "list", "data": [{"id": "toy-model", "object": "model"}]}),
        ),
        ("POST", "/tokenize") if tokenize => {
            let text = body["prompt"].as_str().unwrap_or("");
            (
                200,
                json!({"tokens": toy_tokens(text).iter().map(|t| toy_id(t)).collect::<Vec<_>>()}),
            )
        }
        ("POST", "/v1/completions") => {
            let prompts = match &body["prompt"] {
                Value::Array(a) => a.clone(),
                p => vec![p.clone()],
            };
            let echo = body["echo"].as_bool().unwrap_or(false);
            let choices: Vec<Value> = prompts
                .iter()
                .enumerate()
                .rev() // out of order on purpose: the client must sort by index
                .map(|(i, p)| {
                    if echo {
                        let logprobs = match p {
                            Value::String(s) => echo_text(s),
                            Value::Array(ids) => echo_ids(ids),
                            _ => Value::Null,
                        };
                        json!({"index": i, "text": "x", "logprobs": logprobs})
                    } else {
                        // Answers the option letter B, or "yes" to PubMedQA-style prompts.
                        let text = if p.as_str().unwrap_or("").contains("yes, no, or maybe") {
                            " yes"
                        } else {
                            " B"
                        };
                        json!({"index": i, "text": text})
                    }
                })
                .collect();
            (
                200,
                json!({"object": "text_completion", "choices": choices}),
            )
        }
        _ => (404, json!({"error": "not found"})),
    })
}

fn reqs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(c, k)| (c.to_string(), k.to_string()))
        .collect()
}

#[test]
fn loglik_over_text_offsets_without_tokenize() {
    let server = fake(false);
    let mut b = OpenAiBackend::connect(&format!("{}/v1/", server.url), None)
        .unwrap()
        .with_batch_size(2);
    assert_eq!(b.model_id(), format!("toy-model @ {}", server.url));
    let lls = b
        .loglik(&reqs(&[
            ("Question: Q?\nAnswer:", " yes"),
            ("Question: Q?\nAnswer:", " maybe"),
            ("Answer: ", "no"),
        ]))
        .unwrap();
    let want = [-0.4, -0.6, -0.3];
    for (got, want) in lls.iter().zip(want) {
        assert!((got - want).abs() < 1e-9, "{lls:?}");
    }
    let bodies = server.bodies("/v1/completions");
    assert_eq!(bodies.len(), 2, "3 requests in batches of 2");
    assert_eq!(bodies[0]["model"], "toy-model");
    assert_eq!(bodies[0]["echo"], true);
    assert_eq!(bodies[0]["logprobs"], 1);
    assert_eq!(bodies[0]["max_tokens"], 1);
    assert_eq!(bodies[0]["prompt"][1], "Question: Q?\nAnswer: maybe");
    // The context's trailing space moved to the continuation, as lm-eval does.
    assert_eq!(bodies[1]["prompt"][0], "Answer: no");
    assert_eq!(
        server.paths().iter().filter(|p| *p == "/tokenize").count(),
        1,
        "probed once"
    );
}

#[test]
fn loglik_over_token_ids_with_tokenize() {
    let server = fake(true);
    let mut b = OpenAiBackend::connect(&server.url, Some("named".into())).unwrap();
    let lls = b
        .loglik(&reqs(&[
            ("Abstract: x\nAnswer:", " yes"),
            ("Abstract: x\nAnswer:", " maybe"),
        ]))
        .unwrap();
    assert!(
        (lls[0] + 0.4).abs() < 1e-9 && (lls[1] + 0.6).abs() < 1e-9,
        "{lls:?}"
    );
    let body = &server.bodies("/v1/completions")[0];
    assert_eq!(body["model"], "named");
    // Token-id prompts: context ids then the continuation's.
    let first: Vec<u64> = body["prompt"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = toy_tokens("Abstract: x\nAnswer: yes")
        .iter()
        .map(|t| toy_id(t))
        .collect();
    assert_eq!(first, expected);
    // No /v1/models lookup when the model is named; contexts tokenized once.
    assert!(!server.paths().contains(&"/v1/models".to_string()));
    let tokenized: Vec<Value> = server
        .bodies("/tokenize")
        .iter()
        .map(|b| b["prompt"].clone())
        .collect();
    assert_eq!(
        tokenized
            .iter()
            .filter(|p| *p == "Abstract: x\nAnswer:")
            .count(),
        1
    );
    assert!(server
        .bodies("/tokenize")
        .iter()
        .all(|b| b["add_special_tokens"] == false));
}

#[test]
fn generate_sends_sampling_parameters() {
    let server = fake(false);
    let mut b = OpenAiBackend::connect(&format!("{}/v1/completions", server.url), None).unwrap();
    let params = GenParams {
        max_new_tokens: 7,
        temperature: 0.8,
        top_p: 1.0,
        seed: 42,
        stop: vec![
            "###".into(),
            "$$$".into(),
            "\n\nQuestion:".into(),
            "a".into(),
            "b".into(),
        ],
    };
    let out = b
        .generate(&["Q1".into(), "Answer yes, no, or maybe.".into()], &params)
        .unwrap();
    assert_eq!(out, [" B", " yes"]);
    let body = &server.bodies("/v1/completions")[0];
    assert_eq!(body["max_tokens"], 7);
    assert_eq!(body["seed"], 42);
    assert!((body["temperature"].as_f64().unwrap() - 0.8).abs() < 1e-6);
    assert_eq!(
        body["stop"].as_array().unwrap().len(),
        4,
        "OpenAI accepts at most 4 stop strings"
    );
    assert!(body.get("echo").is_none());
}

#[test]
fn server_errors_are_reported_with_the_body() {
    let server = FakeServer::start(|_, path, _| match path {
        "/v1/completions" => (400, json!({"error": {"message": "prompt too long"}})),
        _ => (404, json!({})),
    });
    let mut b = OpenAiBackend::connect(&server.url, None).unwrap();
    assert_eq!(
        b.model_id(),
        server.url,
        "no /v1/models: the URL names the model"
    );
    let e = format!(
        "{:#}",
        b.generate(
            &["x".into()],
            &GenParams {
                max_new_tokens: 1,
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
                stop: vec![],
            }
        )
        .unwrap_err()
    );
    assert!(
        e.contains("HTTP 400") && e.contains("prompt too long"),
        "{e}"
    );

    // An answer without echoed log-probabilities is named, not summed as zero.
    let server = FakeServer::start(|_, path, _| match path {
        "/v1/completions" => (
            200,
            json!({"choices": [{"index": 0, "text": "x", "logprobs": null}]}),
        ),
        _ => (404, json!({})),
    });
    let mut b = OpenAiBackend::connect(&server.url, None).unwrap();
    let e = format!("{:#}", b.loglik(&reqs(&[("Answer:", " yes")])).unwrap_err());
    assert!(e.contains("without logprobs.token_logprobs"), "{e}");
    // Fewer choices than prompts.
    let server = FakeServer::start(|_, _, _| (200, json!({"choices": []})));
    let mut b = OpenAiBackend::connect(&server.url, Some("m".into()))
        .unwrap()
        .with_loglik_mode(LoglikMode::Text);
    let e = format!("{:#}", b.loglik(&reqs(&[("Answer:", " yes")])).unwrap_err());
    assert!(e.contains("returned 0 choices for 1 prompts"), "{e}");
}

#[test]
fn endpoint_urls_are_checked_and_normalised() {
    assert_eq!(
        normalise_base("http://h:1/v1/completions").unwrap(),
        "http://h:1"
    );
    assert_eq!(normalise_base("http://h:1/v1/").unwrap(), "http://h:1");
    assert_eq!(
        normalise_base("https://h/proxy").unwrap(),
        "https://h/proxy"
    );
    assert!(normalise_base("h:1")
        .unwrap_err()
        .to_string()
        .contains("http://"));
}

#[test]
fn run_eval_through_the_server() {
    use crate::dataset::Task;
    use crate::run::{run_eval, EvalOptions, Mode, NoProgress};
    let server = fake(false);
    let mut b = OpenAiBackend::connect(&server.url, None).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/pubmedqa_mini");
    // The toy model prefers the shortest continuation: " no" (-0.3) -> acc 0 on yes/maybe gold;
    // acc_norm divides by 3, 2, 5 characters: -0.4/3, -0.3/2, -0.6/5 -> "maybe" wins.
    let opts = EvalOptions {
        tasks: vec![Task::Pubmedqa],
        data,
        ..EvalOptions::default()
    };
    let report = run_eval(&mut b, &opts, &mut NoProgress).unwrap();
    let t = &report.tasks[0];
    assert_eq!(t.n_items, 2);
    assert_eq!(t.acc.acc, 0.0);
    assert_eq!(t.acc_norm.as_ref().unwrap().acc, 0.5);
    // generate mode: the fake answers "yes" to PubMedQA prompts; gold is yes then maybe.
    let opts = EvalOptions {
        mode: Mode::Generate,
        ..opts
    };
    let report = run_eval(&mut b, &opts, &mut NoProgress).unwrap();
    assert_eq!(report.tasks[0].acc.acc, 0.5);
    assert_eq!(report.tasks[0].unparsed, 0);
}

use std::path::Path;
