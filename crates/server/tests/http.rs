//! End-to-end tests over HTTP against a server on the default model: routes, shapes, greedy
//! equality with the single-sequence generation loop, batching determinism, validation and
//! malformed requests, disconnects, overload, API keys and draining on shutdown.

mod common;

use common::{get, metric, post, request};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
async fn health_info_metrics_and_models() {
    let url = server_or_skip!();
    assert_eq!(get(&format!("{url}/health")).await.status, 200);
    let info = get(&format!("{url}/info")).await.json();
    assert_eq!(info["max_total_tokens"], 4096);
    assert_eq!(info["max_best_of"], 2);
    assert_eq!(info["max_stop_sequences"], 4);
    assert_eq!(info["model_device_type"], "cpu");
    let models = get(&format!("{url}/v1/models")).await.json();
    assert_eq!(models["data"][0]["object"], "model");
    let m = get(&format!("{url}/metrics")).await;
    assert_eq!(m.status, 200);
    for name in [
        "meditron_requests_total",
        "meditron_time_to_first_token_seconds",
        "meditron_kv_pages_used",
        "meditron_batch_size",
    ] {
        assert!(m.text().contains(name), "{name} missing");
    }
}

/// The engine's batched, paged path must produce exactly what the plain generation loop of the
/// model crate produces for one sequence.
#[tokio::test]
async fn greedy_generate_equals_the_single_sequence_loop() {
    let url = server_or_skip!();
    let prompt = "The capital of France is";
    let r = post(
        &format!("{url}/generate"),
        &json!({"inputs": prompt, "parameters": {"max_new_tokens": 24}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let served = r.json()["generated_text"].as_str().unwrap().to_string();
    let generated: usize = r.headers["x-generated-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(generated > 0);

    let path = common::default_model().unwrap();
    let loaded = model::load::load(&path).unwrap();
    let pool = kernels::cpu::ThreadPool::new(1);
    let ids = loaded.tokenizer.encode(prompt, true).unwrap();
    let params = model::generate::GenerationParams {
        max_new_tokens: 24,
        sampling: model::SamplingParams::default(),
        stop: vec![],
        stop_tokens: loaded.tokenizer.eos_ids().to_vec(),
    };
    let mut session = model::generate::Session::new(&loaded.model, 256);
    let reference = model::generate::generate(
        &loaded.model,
        &pool,
        &loaded.tokenizer,
        &mut session,
        &ids,
        &params,
        |_| true,
    )
    .unwrap();
    assert_eq!(served, reference.text);
}

#[tokio::test]
async fn identical_greedy_requests_in_one_batch_give_identical_text() {
    let url = server_or_skip!();
    let body =
        json!({"inputs": "Symptoms of the flu include", "parameters": {"max_new_tokens": 16}});
    let futures: Vec<_> = (0..12)
        .map(|i| {
            let (url, body) = (url.clone(), body.clone());
            // Mix streaming and plain requests so that they join the batch at different steps.
            tokio::spawn(async move {
                if i % 2 == 0 {
                    post(&format!("{url}/generate"), &body).await.json()["generated_text"]
                        .as_str()
                        .unwrap()
                        .to_string()
                } else {
                    let r = post(&format!("{url}/generate_stream"), &body).await;
                    let last: Value = serde_json::from_str(r.events().last().unwrap()).unwrap();
                    last["generated_text"].as_str().unwrap().to_string()
                }
            })
        })
        .collect();
    let mut texts = Vec::new();
    for f in futures {
        texts.push(f.await.unwrap());
    }
    assert!(!texts[0].is_empty());
    assert!(texts.iter().all(|t| t == &texts[0]), "{texts:#?}");
}

#[tokio::test]
async fn stream_tokens_add_up_to_the_generated_text() {
    let url = server_or_skip!();
    let body = json!({"inputs": "Once upon a time", "parameters": {"max_new_tokens": 12, "details": true, "top_n_tokens": 2}});
    let r = post(&format!("{url}/generate_stream"), &body).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events: Vec<Value> = r
        .events()
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let last = events.last().unwrap();
    let text: String = events
        .iter()
        .filter(|e| !e["token"]["special"].as_bool().unwrap())
        .map(|e| e["token"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(last["generated_text"].as_str().unwrap(), text);
    assert_eq!(last["details"]["generated_tokens"], events.len());
    assert!(events[..events.len() - 1]
        .iter()
        .all(|e| e["generated_text"].is_null()));
    assert!(events
        .iter()
        .all(|e| e["top_tokens"].as_array().unwrap().len() == 2));
    assert!(events
        .iter()
        .all(|e| e["token"]["logprob"].as_f64().unwrap() <= 0.0));
    let indexes: Vec<u64> = events
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (1..=events.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn details_prefill_best_of_and_full_text() {
    let url = server_or_skip!();
    let inputs = "Aspirin is used to";
    let body = json!({"inputs": inputs, "parameters": {
        "max_new_tokens": 6, "details": true, "decoder_input_details": true, "return_full_text": true, "seed": 3,
        "do_sample": true, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "typical_p": 0.95, "repetition_penalty": 1.1
    }});
    let r = post(&format!("{url}/generate"), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for h in [
        "x-compute-time",
        "x-total-time",
        "x-validation-time",
        "x-queue-time",
        "x-inference-time",
        "x-time-per-token",
        "x-prompt-tokens",
        "x-generated-tokens",
    ] {
        assert!(r.headers.contains_key(h), "{h}");
    }
    let v = r.json();
    let d = &v["details"];
    assert!(v["generated_text"].as_str().unwrap().starts_with(inputs));
    assert_eq!(d["seed"], 3);
    let prefill = d["prefill"].as_array().unwrap();
    assert_eq!(
        prefill.len(),
        r.headers["x-prompt-tokens"]
            .to_str()
            .unwrap()
            .parse::<usize>()
            .unwrap()
    );
    assert!(prefill[0]["logprob"].is_null());
    assert!(prefill[1..]
        .iter()
        .all(|t| t["logprob"].as_f64().unwrap() <= 0.0));
    // Same seed, same text.
    let again = post(&format!("{url}/generate"), &body).await.json();
    assert_eq!(again["generated_text"], v["generated_text"]);

    let best = json!({"inputs": inputs, "parameters": {"max_new_tokens": 4, "best_of": 2, "do_sample": true, "details": true}});
    let v = post(&format!("{url}/generate"), &best).await.json();
    assert_eq!(
        v["details"]["best_of_sequences"].as_array().unwrap().len(),
        1,
        "{v}"
    );
}

#[tokio::test]
async fn stop_sequences_end_generation_as_tgi_and_openai_do() {
    let url = server_or_skip!();
    let greedy = post(
        &format!("{url}/generate"),
        &json!({"inputs": "1, 2, 3, 4,", "parameters": {"max_new_tokens": 12}}),
    )
    .await
    .json();
    let text = greedy["generated_text"].as_str().unwrap().to_string();
    // Stop at the third character of the greedy continuation, whatever it is.
    let stop: String = text.chars().skip(2).take(2).collect();
    assert!(!stop.trim().is_empty(), "{text:?}");
    let body = json!({"inputs": "1, 2, 3, 4,", "parameters": {"max_new_tokens": 12, "stop": [stop], "details": true}});
    let v = post(&format!("{url}/generate"), &body).await.json();
    assert_eq!(v["details"]["finish_reason"], "stop_sequence");
    // TGI keeps the stop sequence in the text; OpenAI cuts it.
    assert!(v["generated_text"].as_str().unwrap().contains(&stop));
    let c = post(
        &format!("{url}/v1/completions"),
        &json!({"prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0, "stop": stop}),
    )
    .await
    .json();
    let cut = c["choices"][0]["text"].as_str().unwrap();
    assert!(
        !cut.contains(&stop) && text.starts_with(cut),
        "{cut:?} {text:?}"
    );
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn validation_errors_have_tgis_codes_and_messages() {
    let url = server_or_skip!();
    let cases = [
        (json!({"temperature": 0.0}), "`temperature` must be strictly positive"),
        (json!({"repetition_penalty": 0.0}), "`repetition_penalty` must be strictly positive"),
        (json!({"frequency_penalty": 3.0}), "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        (json!({"top_p": 1.0}), "`top_p` must be > 0.0 and < 1.0"),
        (json!({"typical_p": 1.5}), "`typical_p` must be > 0.0 and < 1.0"),
        (json!({"top_k": 0}), "`top_k` must be strictly positive"),
        (json!({"max_new_tokens": 0}), "`max_new_tokens` must be strictly positive"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "`stop` supports up to 4 stop sequences. Given: 5"),
        (json!({"best_of": 3, "do_sample": true}), "`best_of` must be > 0 and <= 2. Given: 3"),
        (json!({"best_of": 2}), "you must use sampling when `best_of` is > 1"),
        (json!({"best_of": 2, "do_sample": true, "seed": 1}), "`seed` must not be set when `best_of` > 1"),
        (json!({"top_n_tokens": 6}), "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
        (json!({"truncate": 0}), "`truncate` must be strictly positive and less than 4095. Given: 0"),
        (json!({"max_new_tokens": 5000}), "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 2 `inputs` tokens and 5000 `max_new_tokens`"),
    ];
    for (params, message) in cases {
        let r = post(
            &format!("{url}/generate"),
            &json!({"inputs": "Hi there", "parameters": params}),
        )
        .await;
        assert_eq!(r.status, 422, "{params}");
        let v = r.json();
        assert_eq!(v["error_type"], "validation", "{params}");
        assert_eq!(v["error"], message, "{params}");
    }
    let r = post(&format!("{url}/generate"), &json!({"inputs": ""})).await;
    assert_eq!(r.json()["error"], "`inputs` cannot be empty");
    let long = "hello ".repeat(5000);
    let r = post(
        &format!("{url}/generate"),
        &json!({"inputs": long, "parameters": {"max_new_tokens": 1}}),
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"].as_str().unwrap().starts_with("`inputs`"),
        "{}",
        r.text()
    );
    let r = post(
        &format!("{url}/generate_stream"),
        &json!({"inputs": "a", "parameters": {"best_of": 2, "do_sample": true}}),
    )
    .await;
    assert_eq!(
        r.json()["error"],
        "`best_of` != 1 is not supported when streaming tokens"
    );
    // OpenAI routes answer in OpenAI's shape.
    let r = post(&format!("{url}/v1/chat/completions"), &json!({"model": "x", "messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 9})).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn malformed_requests_get_4xx_never_a_crash() {
    let url = server_or_skip!();
    let gen = format!("{url}/generate");
    let json_ct = [("content-type", "application/json")];
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"{\"inputs\": ".to_vec(), 400),
        (b"not json at all".to_vec(), 400),
        (b"{\"inputs\": 42}".to_vec(), 422),
        (
            b"{\"inputs\": \"x\", \"parameters\": {\"max_new_tokens\": -1}}".to_vec(),
            422,
        ),
        (
            b"{\"inputs\": \"x\", \"parameters\": {\"stop\": \"not a list\"}}".to_vec(),
            422,
        ),
        (b"{\"inputs\": \"\xff\xfe bad utf8\"}".to_vec(), 400),
        (b"[]".to_vec(), 422),
        (Vec::new(), 400),
    ];
    for (body, status) in cases {
        let r = request("POST", &gen, body.clone(), &json_ct).await;
        assert_eq!(
            r.status,
            status,
            "{:?} -> {}",
            String::from_utf8_lossy(&body),
            r.text()
        );
        assert!(r.json()["error"].is_string());
    }
    let huge = vec![b'a'; 3_000_000];
    let r = request("POST", &gen, huge, &json_ct).await;
    assert_eq!(r.status, 413);
    let r = request(
        "POST",
        &format!("{url}/v1/completions"),
        b"{\"prompt\": [[1, 2], \"x\"]}".to_vec(),
        &json_ct,
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(r.json()["error"]["message"].is_string());
    let r = post(
        &format!("{url}/v1/completions"),
        &json!({"prompt": [[99999999]], "max_tokens": 1}),
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(get(&format!("{url}/nope")).await.status, 404);
    // Still serving.
    assert_eq!(get(&format!("{url}/health")).await.status, 200);
}

#[tokio::test]
async fn chat_completions_plain_and_streamed() {
    let url = server_or_skip!();
    let body = json!({"model": "anything", "messages": [
        {"role": "system", "content": "You are a medical assistant."},
        {"role": "user", "content": "What is a fever?"}], "max_tokens": 12, "temperature": 0, "logprobs": true, "top_logprobs": 2});
    let v = post(&format!("{url}/v1/chat/completions"), &body)
        .await
        .json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "anything");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!content.is_empty());
    assert_eq!(
        v["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        v["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .len()
    );

    let mut body = body;
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(&format!("{url}/v1/chat/completions"), &body).await;
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, content);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"].is_string()));
    assert!(
        chunks.last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
}

/// lm-eval's log-likelihood request: token ids, echo, logprobs, one generated token.
#[tokio::test]
async fn completions_echo_logprobs_on_token_ids_as_lm_eval_sends_them() {
    let url = server_or_skip!();
    let ids = post(
        &format!("{url}/tokenize"),
        &json!({"prompt": "The heart pumps blood", "add_special_tokens": false}),
    )
    .await
    .json();
    let ids: Vec<u64> = ids["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let body = json!({"model": "m", "prompt": [ids.clone(), ids[..2].to_vec()], "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": true, "seed": 1234});
    let v = post(&format!("{url}/v1/completions"), &body).await.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    let lp = &choices[0]["logprobs"];
    let token_logprobs = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(token_logprobs.len(), ids.len() + 1);
    assert!(token_logprobs[0].is_null() && lp["top_logprobs"][0].is_null());
    for (t, top) in token_logprobs[1..]
        .iter()
        .zip(lp["top_logprobs"].as_array().unwrap()[1..].iter())
    {
        let t = t.as_f64().unwrap();
        let best = top
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(t <= best + 1e-6);
    }
    // The prompt scores equal TGI's decoder_input_details for the same ids.
    let text = post(&format!("{url}/detokenize"), &json!({"tokens": ids}))
        .await
        .json()["prompt"]
        .as_str()
        .unwrap()
        .to_string();
    let tgi = post(&format!("{url}/generate"), &json!({"inputs": text, "parameters": {"max_new_tokens": 1, "details": true, "decoder_input_details": true}})).await.json();
    let prefill = tgi["details"]["prefill"].as_array().unwrap();
    if prefill.len() == ids.len() {
        for (a, b) in prefill[1..].iter().zip(&token_logprobs[1..ids.len()]) {
            assert!((a["logprob"].as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4);
        }
    }
    // max_tokens 0 with echo scores the prompt alone.
    let v = post(
        &format!("{url}/v1/completions"),
        &json!({"prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 0}),
    )
    .await
    .json();
    assert_eq!(
        v["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        ids.len()
    );
}

#[tokio::test]
async fn tokenizer_routes() {
    let url = server_or_skip!();
    let info = get(&format!("{url}/tokenizer_info")).await.json();
    assert!(info["eos_token"].is_string());
    let text = "Paracetamol 500 mg";
    let v = post(
        &format!("{url}/tokenize"),
        &json!({"prompt": text, "add_special_tokens": false}),
    )
    .await
    .json();
    let back = post(
        &format!("{url}/detokenize"),
        &json!({"tokens": v["tokens"]}),
    )
    .await
    .json();
    assert_eq!(back["prompt"], text);
    assert_eq!(v["count"], v["tokens"].as_array().unwrap().len());
    let tgi = post(&format!("{url}/tokenize"), &json!({"inputs": text}))
        .await
        .json();
    let spans: String = tgi
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &text[t["start"].as_u64().unwrap() as usize..t["stop"].as_u64().unwrap() as usize])
        .collect();
    assert_eq!(spans, text);
}

#[tokio::test]
async fn a_client_that_disconnects_frees_its_sequence() {
    let Some((url, _stop)) = common::start_server(|_| {}) else {
        return;
    };
    common::runtime()
        .spawn(async move {
            let body = json!({"inputs": "Tell me a long story", "parameters": {"max_new_tokens": 2000, "ignore_eos": true}});
            let req = hyper::Request::post(format!("{url}/generate_stream"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
                .unwrap();
            let response = common::client().request(req).await.unwrap();
            let mut b = response.into_body();
            use http_body_util::BodyExt;
            let _first = b.frame().await;
            // The gauges are published at the end of the step that sent the token.
            let start = Instant::now();
            while metric(&url, "meditron_kv_pages_used").await == 0.0 {
                assert!(start.elapsed() < Duration::from_secs(20), "no KV pages in use while generating");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            drop(b);
            let start = Instant::now();
            while metric(&url, "meditron_requests_total{outcome=\"cancelled\"}").await < 1.0 || metric(&url, "meditron_kv_pages_used").await > 0.0 {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "the sequence was not freed: {}",
                    get(&format!("{url}/metrics")).await.text()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(metric(&url, "meditron_requests_running").await, 0.0);
            assert!(metric(&url, "meditron_generated_tokens_total").await < 1000.0);
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn over_max_concurrent_requests_gets_429() {
    let Some((url, _stop)) = common::start_server(|a| a.max_concurrent_requests = 2) else {
        return;
    };
    common::runtime()
        .spawn(async move {
            let long = json!({"inputs": "Count to a thousand", "parameters": {"max_new_tokens": 120, "ignore_eos": true}});
            let running: Vec<_> = (0..2).map(|_| {
                let (url, long) = (url.clone(), long.clone());
                tokio::spawn(async move { post(&format!("{url}/generate"), &long).await.status })
            }).collect();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = post(&format!("{url}/generate"), &json!({"inputs": "hi"})).await;
            assert_eq!(r.status, 429);
            assert_eq!(r.json(), json!({"error": "Model is overloaded", "error_type": "overloaded"}));
            let r = post(&format!("{url}/v1/completions"), &json!({"prompt": "hi"})).await;
            assert_eq!(r.status, 429);
            assert_eq!(r.json()["error"]["message"], "Model is overloaded");
            for r in running {
                assert_eq!(r.await.unwrap(), 200);
            }
            assert_eq!(post(&format!("{url}/generate"), &json!({"inputs": "hi", "parameters": {"max_new_tokens": 2}})).await.status, 200);
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn api_key_is_required_on_generation_routes() {
    let Some((url, _stop)) = common::start_server(|a| a.api_key = Some("s3cret".into())) else {
        return;
    };
    common::runtime()
        .spawn(async move {
            let body = json!({"inputs": "hi", "parameters": {"max_new_tokens": 2}}).to_string();
            let ct = ("content-type", "application/json");
            let r = request("POST", &format!("{url}/generate"), body.clone(), &[ct]).await;
            assert_eq!(r.status, 401);
            let r = request(
                "POST",
                &format!("{url}/generate"),
                body.clone(),
                &[ct, ("authorization", "Bearer wrong")],
            )
            .await;
            assert_eq!(r.status, 401);
            let r = request("POST", &format!("{url}/v1/completions"), "{}", &[ct]).await;
            assert_eq!(r.json()["error"]["code"], "invalid_api_key");
            let r = request(
                "POST",
                &format!("{url}/generate"),
                body,
                &[ct, ("authorization", "Bearer s3cret")],
            )
            .await;
            assert_eq!(r.status, 200);
            assert_eq!(get(&format!("{url}/health")).await.status, 200);
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn shutdown_finishes_streams_in_flight_and_refuses_new_requests() {
    let Some((url, stop)) = common::start_server(|_| {}) else {
        return;
    };
    common::runtime()
        .spawn(async move {
            let body = json!({"inputs": "Write a poem", "parameters": {"max_new_tokens": 40, "ignore_eos": true}});
            let req = hyper::Request::post(format!("{url}/generate_stream"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
                .unwrap();
            let response = common::client().request(req).await.unwrap();
            let mut b = response.into_body();
            use http_body_util::BodyExt;
            let _first = b.frame().await;
            let _ = stop.send(());
            tokio::time::sleep(Duration::from_millis(200)).await;
            let refused = common::client().request(hyper::Request::get(format!("{url}/health")).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap()).await;
            assert!(refused.is_err(), "a new connection was accepted while draining");
            let rest = b.collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&rest);
            assert!(text.contains("\"generated_text\":\""), "the stream did not finish: {text}");
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_repeated_prefix_is_reused_with_the_same_results() {
    let url = server_or_skip!();
    let prompt = "Patient history: a 54-year-old man with chest pain radiating to the left arm, \
                  sweating and nausea for two hours. Most likely diagnosis:";
    let body = json!({"inputs": prompt, "parameters": {"max_new_tokens": 6, "details": true, "decoder_input_details": true}});
    let first = post(&format!("{url}/generate"), &body).await.json();
    let before = metric(&url, "meditron_prompt_tokens_cached_total").await;
    let second = post(&format!("{url}/generate"), &body).await.json();
    let after = metric(&url, "meditron_prompt_tokens_cached_total").await;
    assert!(
        after > before,
        "the second request recomputed its whole prompt"
    );
    assert_eq!(first["generated_text"], second["generated_text"]);
    let (a, b) = (
        first["details"]["prefill"].as_array().unwrap(),
        second["details"]["prefill"].as_array().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b).skip(1) {
        let (x, y) = (
            x["logprob"].as_f64().unwrap(),
            y["logprob"].as_f64().unwrap(),
        );
        assert!((x - y).abs() < 1e-4, "prefill logprob {x} vs {y}");
    }
    // A longer prompt that starts the same way (the next turn of a chat) reuses it too.
    let longer = json!({"inputs": format!("{prompt} myocardial infarction. Next step:"), "parameters": {"max_new_tokens": 4}});
    let r = post(&format!("{url}/generate"), &longer).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(metric(&url, "meditron_prompt_tokens_cached_total").await > after);
}

#[tokio::test]
async fn prompt_log_probabilities_after_a_shared_prefix_are_those_of_the_new_prompt() {
    let url = server_or_skip!();
    // lm-eval's pattern: one context, then each answer option scored after it.
    let context = "Question: does aspirin lower the risk of a second heart attack in adults \
                   with known coronary disease?\nAnswer:";
    let details = |option: &str, top_n: u32| {
        json!({"inputs": format!("{context}{option}"), "parameters": {
            "max_new_tokens": 1, "details": true, "decoder_input_details": true,
            "top_n_tokens": top_n}})
    };
    let logprobs = |v: &Value| -> Vec<f64> {
        v["details"]["prefill"].as_array().unwrap()[1..]
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect()
    };
    // The reference: nothing idle shares this context with the same top_n_tokens.
    let reference = post(&format!("{url}/generate"), &details(" no", 2))
        .await
        .json();
    post(&format!("{url}/generate"), &details(" yes", 0))
        .await
        .json();
    let before = metric(&url, "meditron_prompt_tokens_cached_total").await;
    let reused = post(&format!("{url}/generate"), &details(" no", 0))
        .await
        .json();
    assert!(
        metric(&url, "meditron_prompt_tokens_cached_total").await > before,
        "the context was not reused"
    );
    let (want, got) = (logprobs(&reference), logprobs(&reused));
    assert_eq!(want.len(), got.len());
    for (k, (x, y)) in want.iter().zip(&got).enumerate() {
        assert!(
            (x - y).abs() < 1e-3,
            "prompt token {}: logprob {y}, fresh {x}",
            k + 1
        );
    }
}
