//! End-to-end tests of the `meditron` binary on the default model: the stable script
//! interfaces (generate, tokenize, perplexity) against llama.cpp's recorded outputs, and clear
//! errors for bad models and flags.
//!
//! Needs the default model (scripts/fetch-default-model); without it the tests say so and
//! pass, except under CI (CI=true), where a missing model is a failure.

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn default_model() -> Option<PathBuf> {
    model::load::default_model_for_tests()
}

fn meditron(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meditron"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting meditron");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    child.wait_with_output().expect("running meditron")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fixture(name: &str) -> Value {
    let p = root().join("fixtures/smollm2").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).expect("fixture")).expect("fixture JSON")
}

#[test]
fn generate_raw_greedy_prints_only_llama_cpp_s_completion() {
    let Some(model) = default_model() else { return };
    let fx = fixture("llamacpp/greedy.json");
    // A prompt whose greedy path has no near-tie in 32 tokens (llama.cpp and transformers agree).
    let case = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "paragraph")
        .expect("case");
    let prompt = case["prompt"].as_str().unwrap();
    let out = meditron(
        &[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--raw",
            "--temperature",
            "0",
            "--max-new-tokens",
            "12",
            prompt,
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = text(&out.stdout);
    let want = case["text"].as_str().unwrap();
    let got = got.strip_suffix('\n').unwrap_or(&got);
    assert!(
        !got.is_empty() && want.starts_with(got),
        "ours {got:?}\nllama.cpp {want:?}"
    );
}

#[test]
fn tokenize_prints_the_ids_as_json() {
    let Some(model) = default_model() else { return };
    let fx = fixture("llamacpp/tokenize.json");
    for case in fx["cases"].as_array().unwrap().iter().take(12) {
        let out = meditron(
            &["tokenize", "--model", model.to_str().unwrap()],
            case["text"].as_str().unwrap(),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let got: Value = serde_json::from_str(text(&out.stdout).trim()).expect("a JSON array");
        assert_eq!(got, case["ids"], "{:?}", case["name"]);
    }
}

/// Within 1% of llama-perplexity on the same text (the protocols are the same; activations
/// are rounded alike but not identically).
#[test]
fn perplexity_is_within_one_percent_of_llama_cpp() {
    let Some(model) = default_model() else { return };
    let fx = fixture("llamacpp/perplexity.json");
    let file = root().join("fixtures/text/medical.txt");
    let mut checked = 0;
    for run in fx["runs"].as_array().expect("runs") {
        let ctx = run["n_ctx"].as_u64().expect("n_ctx").to_string();
        let want = run["ppl"].as_f64().expect("ppl");
        let out = meditron(
            &[
                "perplexity",
                "--model",
                model.to_str().unwrap(),
                "--file",
                file.to_str().unwrap(),
                "--ctx",
                &ctx,
            ],
            "",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let last = stdout.lines().last().expect("output");
        let got: f64 = last
            .strip_prefix("PPL = ")
            .expect("PPL = line")
            .parse()
            .expect("a number");
        assert!(
            (got / want - 1.0).abs() < 0.01,
            "ctx {ctx}: ours {got}, llama.cpp {want}"
        );
        checked += 1;
    }
    assert!(checked >= 2);
}

fn assert_fails_with(args: &[&str], needle: &str) {
    let out = meditron(args, "");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_models_and_flags_get_clear_errors() {
    let dir = std::env::temp_dir().join(format!("meditron-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_fails_with(
        &["generate", "--model", "/nonexistent/model.gguf", "hi"],
        "not found",
    );
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00\xff\xff").unwrap();
    assert_fails_with(
        &["generate", "--model", junk.to_str().unwrap(), "hi"],
        "GGUF",
    );
    let not_gguf = dir.join("notes.txt");
    std::fs::write(&not_gguf, b"hello").unwrap();
    assert_fails_with(
        &["inspect", "--model", not_gguf.to_str().unwrap()],
        "not a GGUF file",
    );
    assert_fails_with(
        &["generate", "--model", dir.to_str().unwrap(), "hi"],
        "without config.json",
    );
    if let Some(model) = default_model() {
        let m = model.to_str().unwrap();
        assert_fails_with(
            &["generate", "--model", m, "--temperature=-1", "hi"],
            "--temperature",
        );
        assert_fails_with(&["generate", "--model", m, "--top-p", "0", "hi"], "--top-p");
        assert_fails_with(
            &["generate", "--model", m, "--ctx-size", "999999", "hi"],
            "--ctx-size",
        );
        assert_fails_with(
            &[
                "generate",
                "--model",
                m,
                "--ctx-size",
                "8",
                "a long prompt that does not fit in eight tokens of context",
            ],
            "context",
        );
        // A truncated copy of the real model.
        let cut = dir.join("cut.gguf");
        let bytes = std::fs::read(&model).unwrap();
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert_fails_with(
            &["generate", "--model", cut.to_str().unwrap(), "hi"],
            "past the end",
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_keeps_history_and_streams_answers() {
    let Some(model) = default_model() else { return };
    let out = meditron(
        &[
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-new-tokens",
            "16",
        ],
        "What is the heart?\nAnd the lungs?\n/exit\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let answers: Vec<&str> = stdout
        .split('\n')
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(answers.len() >= 2, "two answers expected: {stdout:?}");
}
