//! `meditron quantize` end to end on the default model: 4-bit g128 act-order GPTQ with the
//! rotation and full-precision targets, calibrated on PubMedQA abstracts outside the
//! benchmark's test list and scored by `meditron perplexity` on the test-list abstracts (the
//! split of tools/gptq_calibration_split.py), against the fp16 model.
//!
//! Needs the default model (scripts/fetch-default-model) and ../shared/data/pubmedqa; without
//! the model the test says so and passes, except under CI.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn meditron(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_meditron"))
        .args(args)
        .output()
        .expect("running meditron");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "meditron {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn perplexity(model: &Path, file: &Path) -> f64 {
    let out = meditron(&[
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--ctx",
        "512",
        "--chunks",
        "16",
    ]);
    let last = out.lines().last().expect("perplexity output");
    last.strip_prefix("PPL = ")
        .expect("a PPL = line")
        .parse()
        .expect("a number")
}

/// Calibration (JSONL, the 500 labeled items outside the test list) and held-out (plain text,
/// the 500 test-list items) files: question, abstract sections and long answer per item.
fn pubmedqa_split(dir: &Path) -> (PathBuf, PathBuf) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/pubmedqa");
    let read = |f: &str| -> Value {
        let p = data.join(f);
        serde_json::from_str(&std::fs::read_to_string(&p).expect("PubMedQA data")).unwrap()
    };
    let items = read("ori_pqal.json");
    let test = read("test_ground_truth.json");
    let doc = |item: &Value| -> String {
        let mut parts = vec![item["QUESTION"].as_str().unwrap().trim().to_owned()];
        for c in item["CONTEXTS"].as_array().unwrap() {
            parts.push(c.as_str().unwrap().trim().to_owned());
        }
        parts.push(item["LONG_ANSWER"].as_str().unwrap().trim().to_owned());
        parts.retain(|p| !p.is_empty());
        parts.join("\n")
    };
    let (mut calib, mut heldout) = (String::new(), Vec::new());
    for (pmid, item) in items.as_object().unwrap() {
        if test.get(pmid).is_some() {
            heldout.push(doc(item));
        } else {
            calib.push_str(&serde_json::json!({ "text": doc(item) }).to_string());
            calib.push('\n');
        }
    }
    assert_eq!(
        heldout.len(),
        500,
        "the test list holds 500 of the labeled items"
    );
    let (c, h) = (dir.join("calib.jsonl"), dir.join("heldout.txt"));
    std::fs::write(&c, calib).unwrap();
    std::fs::write(&h, heldout.join("\n\n") + "\n").unwrap();
    (c, h)
}

/// The full recipe (128 or 256 windows) is within 4-6% of fp16 (benches/QUANTIZE_NOTES.md);
/// this run uses 32 windows to stay short (measured +7% on 32 chunks) and guards against a
/// regression of the rotation or the targets (plain `--mse` GPTQ is +13%, AutoGPTQ +23%).
#[test]
fn rotated_gptq_4bit_g128_act_order_stays_close_to_fp16() {
    let Some(_) = model::load::default_model_for_tests() else {
        return;
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("quantize-quality");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (calib, heldout) = pubmedqa_split(&dir);
    let f16 = dir.join("f16");
    let gptq = dir.join("gptq");
    meditron(&["convert", "--out", f16.to_str().unwrap(), "--dtype", "f16"]);
    meditron(&[
        "quantize",
        "--model",
        f16.to_str().unwrap(),
        "--out",
        gptq.to_str().unwrap(),
        "--bits",
        "4",
        "--group-size",
        "128",
        "--act-order",
        "--mse",
        "--damp",
        "0.01",
        "--rotate",
        "--fp-targets",
        "--dataset",
        calib.to_str().unwrap(),
        "--samples",
        "32",
        "--seq-len",
        "512",
    ]);
    let (base, quant) = (perplexity(&f16, &heldout), perplexity(&gptq, &heldout));
    eprintln!(
        "fp16 {base:.4}, GPTQ 4-bit g128 act-order {quant:.4} ({:.4}x)",
        quant / base
    );
    assert!(quant / base < 1.10, "GPTQ {quant} vs fp16 {base}");
    let _ = std::fs::remove_dir_all(&dir);
}
