//! The Hugging Face directory path end to end: the default GGUF converted to safetensors
//! (f32, Q/K permutation undone, tokenizer.json written) loads through the HF loader,
//! tokenizes like the GGUF, and its float32 logits match transformers' to float precision.

use kernels::cpu::ThreadPool;
use model::convert::{gguf_to_hf, OutDtype};
use model::load::load;
use serde_json::Value;
use std::path::PathBuf;

fn default_gguf() -> Option<PathBuf> {
    model::load::default_model_for_tests()
}

#[test]
fn converted_directory_loads_and_matches_transformers() {
    let Some(gguf) = default_gguf() else { return };
    let dir = std::env::temp_dir().join(format!("meditron-hf-{}", std::process::id()));
    gguf_to_hf(&gguf, &dir, OutDtype::F32).expect("convert");
    let hf = load(&dir).expect("loading the converted directory");
    let gg = load(&gguf).expect("loading the GGUF");
    assert_eq!(hf.format, "safetensors");
    assert_eq!(hf.model.config.n_vocab, gg.model.config.n_vocab);
    assert_eq!(hf.tokenizer.eos_ids(), gg.tokenizer.eos_ids());
    assert_eq!(hf.tokenizer.chat_template(), gg.tokenizer.chat_template());

    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/smollm2/logits.json"),
        )
        .expect("fixture"),
    )
    .expect("fixture JSON");
    let pool = ThreadPool::new(2);
    let vocab = hf.model.config.n_vocab;
    let mut max_diff = 0f32;
    for case in fx["cases"].as_array().expect("cases").iter().take(4) {
        let prompt = case["prompt"].as_str().expect("prompt");
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            hf.tokenizer.encode(prompt, false).expect("encode"),
            ids,
            "{:?}",
            case["name"]
        );
        let logits = hf
            .model
            .forward_sequence(&ids, &pool, |_| true)
            .expect("forward");
        for (pos, p) in case["positions"]
            .as_array()
            .expect("positions")
            .iter()
            .enumerate()
        {
            for pair in p["top"].as_array().expect("top") {
                let id = pair[0].as_u64().unwrap() as usize;
                let want = pair[1].as_f64().unwrap() as f32;
                max_diff = max_diff.max((logits[pos * vocab + id] - want).abs());
            }
        }
    }
    eprintln!("float32 safetensors vs transformers: max |logit diff| {max_diff:.5}");
    // Same weights, same float32 arithmetic up to summation order and the f16 KV cache.
    assert!(max_diff < 0.05, "max logit difference {max_diff}");
    let _ = std::fs::remove_dir_all(&dir);
}
