//! The whole pipeline on a tiny random Llama: the written checkpoint decodes (through the
//! formats crate's reader) to weights whose Hessian-weighted error equals the loss reported
//! while quantizing, GPTQ beats round-to-nearest on every module, sharding and spilling
//! change nothing, and bad requests are refused.

use formats::gptq::{CheckpointFormat, GptqConfig, GptqLinear};
use formats::safetensors::{write_safetensors, Dtype};
use formats::ModelWeights;
use half::f16;
use quantize::gptq::{quadratic_error, QuantParams};
use quantize::{quantize_model, Calibration, Method, Options, Summary};
use std::path::{Path, PathBuf};

const HIDDEN: usize = 64;
const INTER: usize = 128;
const LAYERS: usize = 2;
const VOCAB: usize = 100;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("quantize-pipe-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A random fp16 Llama with 4 heads of 16, 2 KV heads, tied embeddings.
fn tiny_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 256, "vocab_size": VOCAB,
        "tie_word_embeddings": true, "torch_dtype": "float16"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("generation_config.json"), "{\"eos_token_id\": 2}").unwrap();
    let mut seed = 12345u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let bytes = (0..n)
            .flat_map(|_| f16::from_f32(offset + scale * rnd()).to_le_bytes())
            .collect();
        tensors.push((name, shape, bytes));
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        1.0,
        0.0,
    );
    add("model.norm.weight".into(), vec![HIDDEN], 0.1, 1.0);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        add(
            format!("{p}.input_layernorm.weight"),
            vec![HIDDEN],
            0.1,
            1.0,
        );
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            0.1,
            1.0,
        );
        for (m, out, inp) in [
            ("self_attn.q_proj", 64, HIDDEN),
            ("self_attn.k_proj", 32, HIDDEN),
            ("self_attn.v_proj", 32, HIDDEN),
            ("self_attn.o_proj", HIDDEN, 64),
            ("mlp.gate_proj", INTER, HIDDEN),
            ("mlp.up_proj", INTER, HIDDEN),
            ("mlp.down_proj", HIDDEN, INTER),
        ] {
            add(format!("{p}.{m}.weight"), vec![out, inp], 0.15, 0.0);
        }
    }
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, s, b)| (n.as_str(), Dtype::F16, s.as_slice(), b.as_slice()))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &views, &[]).unwrap();
}

fn windows() -> Vec<Vec<u32>> {
    (0..6u32)
        .map(|s| {
            (0..32u32)
                .map(|t| (s * 37 + t * t * 7 + t) % VOCAB as u32)
                .collect()
        })
        .collect()
}

fn options(src: &Path, out: &Path, params: QuantParams) -> Options {
    Options {
        model: src.to_owned(),
        out: out.to_owned(),
        params,
        true_sequential: true,
        format: CheckpointFormat::V1,
        method: Method::Gptq,
        calibration: Some(Calibration::Tokens(windows())),
        max_memory: 1 << 30,
        max_shard: 1 << 30,
        progress: false,
        progress_lines: false,
        keep_hessians: true,
        rotate: None,
        fp_targets: false,
    }
}

fn params(bits: u32, group: Option<usize>, act: bool) -> QuantParams {
    QuantParams {
        bits,
        group_size: group,
        sym: true,
        act_order: act,
        static_groups: false,
        damp: 0.1,
        mse: false,
    }
}

/// Reads every module back from `out` and checks it against the report.
fn check_written(out: &Path, s: &Summary) {
    let cfg = GptqConfig::from_dir(out).unwrap().expect("a GPTQ config");
    let weights = ModelWeights::open_dir(out).unwrap();
    assert_eq!(s.modules.len(), LAYERS * 7);
    for m in &s.modules {
        let w = m.weight.as_ref().unwrap();
        let h = m.hessian.as_ref().unwrap();
        let k = (h.len() as f64).sqrt() as usize;
        let n = w.len() / k;
        let prefix = format!("model.layers.{}.{}", m.layer, m.module);
        let lin = GptqLinear::read(&weights, &prefix, &cfg, k, n).unwrap();
        let deq = lin.dequantize().unwrap();
        // The loss reported while quantizing is the damped-Hessian error of the written file.
        let mean = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
        let mut hd = h.clone();
        for i in 0..k {
            hd[i * k + i] += m.stats.damp_used * mean;
        }
        let from_file = quadratic_error(w, &deq, n, k, &hd);
        let rel = (from_file - m.stats.loss).abs() / from_file;
        assert!(
            rel < 1e-3,
            "{prefix}: reported {} vs file {from_file}",
            m.stats.loss
        );
        // ... and on the calibration inputs GPTQ's output error is below round-to-nearest's.
        let err = quadratic_error(w, &deq, n, k, h);
        assert!(
            (err - m.err).abs() <= 1e-3 * err,
            "{prefix}: {err} vs {}",
            m.err
        );
        assert!(
            m.err < m.rtn_err,
            "{prefix}: gptq {} >= rtn {}",
            m.err,
            m.rtn_err
        );
    }
    for t in ["model.embed_tokens.weight", "model.norm.weight"] {
        assert_eq!(weights.tensor(t).unwrap().dtype, Dtype::F16, "{t}");
    }
}

#[test]
fn written_checkpoint_round_trips_with_the_reported_losses() {
    let src = tmp("src");
    tiny_model(&src);
    for (i, (p, seq)) in [
        (params(4, Some(32), true), true),
        (params(3, None, false), true),
        (params(4, Some(32), false), false),
    ]
    .into_iter()
    .enumerate()
    {
        let out = tmp(&format!("out{i}"));
        let mut o = options(&src, &out, p);
        o.true_sequential = seq;
        let s = quantize_model(&o).unwrap();
        check_written(&out, &s);
        let qc: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("quantize_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(qc["bits"], p.bits);
        assert_eq!(qc["desc_act"], p.act_order);
        assert_eq!(qc["true_sequential"], seq);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["quantization_config"], qc);
        assert!(out.join("generation_config.json").is_file());
        std::fs::remove_dir_all(&out).unwrap();
    }
    std::fs::remove_dir_all(&src).unwrap();
}

#[test]
fn shards_and_spilled_activations_give_the_same_result() {
    let src = tmp("src2");
    tiny_model(&src);
    let (a, b) = (tmp("mem"), tmp("disk"));
    let sa = quantize_model(&options(&src, &a, params(4, Some(32), true))).unwrap();
    let mut o = options(&src, &b, params(4, Some(32), true));
    o.max_memory = 0;
    o.max_shard = 20_000;
    let sb = quantize_model(&o).unwrap();
    assert!(sb.spilled && !sa.spilled);
    assert!(sb.files.len() > 2, "{:?}", sb.files);
    assert!(b.join("model.safetensors.index.json").is_file());
    assert!(!b.join(".calibration-spill").exists());
    check_written(&b, &sb);
    for (x, y) in sa.modules.iter().zip(&sb.modules) {
        assert!((x.stats.loss - y.stats.loss).abs() <= 1e-6 * x.stats.loss.max(1e-30));
    }
    // The same tensors, byte for byte.
    let (wa, wb) = (
        ModelWeights::open_dir(&a).unwrap(),
        ModelWeights::open_dir(&b).unwrap(),
    );
    let names: Vec<&str> = wa.names().collect();
    assert_eq!(names, wb.names().collect::<Vec<_>>());
    for n in names {
        assert_eq!(
            wa.tensor(n).unwrap().bytes,
            wb.tensor(n).unwrap().bytes,
            "{n}"
        );
    }
    for d in [&a, &b, &src] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn asymmetric_v2_rtn_and_refusals() {
    let src = tmp("src3");
    tiny_model(&src);
    let out = tmp("asym");
    let mut p = params(4, Some(32), true);
    p.sym = false;
    let mut o = options(&src, &out, p);
    let e = quantize_model(&o).unwrap_err().to_string();
    assert!(e.contains("gptq_v2"), "{e}");
    o.format = CheckpointFormat::V2;
    let s = quantize_model(&o).unwrap();
    check_written(&out, &s);
    let bad = tmp("bad");
    let e = quantize_model(&options(&src, &bad, params(4, Some(16), false)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 32"), "{e}");
    // Refused before any calibration work (and before the output directory is made).
    let e = quantize_model(&options(&src, &bad, params(5, None, false)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bits = 5"), "{e}");
    assert!(!bad.exists());
    // The output directory now holds a model: refused.
    let e = quantize_model(&o).unwrap_err().to_string();
    assert!(e.contains("already holds a model"), "{e}");
    // A quantized model is not a source.
    let again = tmp("again");
    let e = quantize_model(&options(&out, &again, params(4, None, false)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("already quantized"), "{e}");
    // Round-to-nearest needs no calibration and writes the same layout.
    let rtn = tmp("rtn");
    let mut o = options(&src, &rtn, params(4, Some(32), false));
    o.method = Method::Rtn;
    o.calibration = None;
    quantize_model(&o).unwrap();
    let cfg = GptqConfig::from_dir(&rtn).unwrap().unwrap();
    let w = ModelWeights::open_dir(&rtn).unwrap();
    GptqLinear::read(&w, "model.layers.1.mlp.down_proj", &cfg, INTER, HIDDEN).unwrap();
    for d in [&out, &rtn, &src] {
        std::fs::remove_dir_all(d).unwrap();
    }
    let _ = std::fs::remove_dir_all(&again);
}

/// `rotate`: the written checkpoint is the same model in a rotated basis (norm weights of one,
/// an untied head): at 8 bits it scores what the source scores, as the unrotated 8-bit file
/// does. `fp_targets` (with the rotation) writes consistent losses and a close model, and is
/// refused without true-sequential.
#[test]
fn rotated_and_fp_targeted_checkpoints_are_the_same_model() {
    let src = tmp("src4");
    tiny_model(&src);
    let toks: Vec<u32> = windows().concat();
    let nll = |dir: &Path| quantize::eval::mean_nll(dir, &toks, 32).unwrap().0;
    let base = nll(&src);
    let mut gap = Vec::new();
    for rotate in [None, Some(3)] {
        let out = tmp(&format!("rot8-{}", rotate.is_some()));
        let mut o = options(&src, &out, params(8, Some(32), false));
        o.method = Method::Rtn;
        o.calibration = None;
        o.rotate = rotate;
        quantize_model(&o).unwrap();
        gap.push((nll(&out) - base).abs());
        let w = ModelWeights::open_dir(&out).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let norm = w.tensor("model.layers.1.input_layernorm.weight").unwrap();
        let ones = norm.to_f32_vec().unwrap().iter().all(|&g| g == 1.0);
        if rotate.is_some() {
            assert_eq!(cfg["tie_word_embeddings"], false);
            assert!(w.contains("lm_head.weight") && ones);
        } else {
            assert_eq!(cfg["tie_word_embeddings"], true);
            assert!(!w.contains("lm_head.weight") && !ones);
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
    // (The random model's logits are large: its nll is ~27 nats a token.)
    assert!(
        gap[0] < 1e-3 * base && gap[1] < 1e-3 * base,
        "8-bit nll gaps {gap:?} (source {base})"
    );

    let out = tmp("fp4");
    let mut o = options(&src, &out, params(4, Some(32), true));
    o.rotate = Some(3);
    o.fp_targets = true;
    let s = quantize_model(&o).unwrap();
    check_written(&out, &s);
    let e = (nll(&out) - base).abs();
    assert!(e < 5e-3 * base, "4-bit nll gap {e} (source {base})");
    let again = tmp("fp4-again");
    o.out = again.clone();
    o.true_sequential = false;
    let e = quantize_model(&o).unwrap_err().to_string();
    assert!(e.contains("true-sequential"), "{e}");
    for d in [&out, &src] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
