//! GPTQ checkpoints end to end: the default model converted to fp16, quantized round-to-nearest
//! by `formats::gptq::write` in every layout (2/3/4/8 bits, no group / 128 / 32, act-order,
//! v1/v2 zeros, sym/asym, sharded), loaded through the Hugging Face loader and run.
//!
//! The reference for each layout is the same model with every projection replaced by the
//! plain dequantization of the checkpoint's tensors (`GptqLinear::dequantize`, itself checked
//! against numpy in `formats`' golden test), run in f32.

use formats::gptq::write::{write_rtn, RtnOptions, WriteOptions};
use formats::gptq::{CheckpointFormat, GptqConfig, GptqLinear, RtnParams};
use formats::safetensors::ModelWeights;
use kernels::cpu::matmul::WeightFormat;
use kernels::cpu::packed::PackedKind;
use kernels::cpu::ThreadPool;
use model::convert::{gguf_to_hf, OutDtype};
use model::load::{load, LoadedModel};
use model::weights::{Bytes, Matrix};
use model::{BatchToken, Llama};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("meditron-gptq-{}-{name}", std::process::id()))
}

/// The default model as an fp16 Hugging Face directory (the GPTQ source), made once.
fn fp16_source() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let gguf = model::load::default_model_for_tests()?;
        // Kept in the target directory and reused by later runs (259 MB): converted into a
        // private folder first, so an interrupted run never leaves a half-written source.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gptq-fp16-source");
        if !dir.join("config.json").is_file() {
            let part = dir.with_extension(format!("part-{}", std::process::id()));
            gguf_to_hf(&gguf, &part, OutDtype::F16).expect("converting the default model to fp16");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&part, &dir).expect("moving the fp16 source into place");
        }
        Some(dir)
    })
    .as_deref()
}

#[derive(Clone, Copy, Debug)]
struct Layout {
    bits: u32,
    group_size: Option<usize>,
    desc_act: bool,
    sym: bool,
    format: CheckpointFormat,
    shards: usize,
}

fn write(src: &Path, l: Layout, max_layers: Option<usize>, name: &str) -> PathBuf {
    let out = tmp(name);
    let _ = std::fs::remove_dir_all(&out);
    let rtn = RtnOptions {
        params: RtnParams {
            bits: l.bits,
            group_size: l.group_size,
            sym: l.sym,
            format: l.format,
        },
        desc_act: l.desc_act,
    };
    let opts = WriteOptions {
        base_name: "model".into(),
        shards: l.shards,
        max_layers,
    };
    write_rtn(src, &out, &rtn, &opts).unwrap_or_else(|e| panic!("writing {l:?}: {e}"));
    out
}

/// Every projection of `m` replaced by the f32 dequantization of the checkpoint in `dir`.
fn dequantized_reference(dir: &Path, m: &mut Llama) {
    let cfg = GptqConfig::from_dir(dir).unwrap().unwrap();
    let w = ModelWeights::open_dir(dir).unwrap();
    for (i, layer) in m.layers.iter_mut().enumerate() {
        let projs = [
            ("self_attn.q_proj", &mut layer.q_proj),
            ("self_attn.k_proj", &mut layer.k_proj),
            ("self_attn.v_proj", &mut layer.v_proj),
            ("self_attn.o_proj", &mut layer.o_proj),
            ("mlp.gate_proj", &mut layer.gate_proj),
            ("mlp.up_proj", &mut layer.up_proj),
            ("mlp.down_proj", &mut layer.down_proj),
        ];
        for (name, mat) in projs {
            let prefix = format!("model.layers.{i}.{name}");
            let l = GptqLinear::read(&w, &prefix, &cfg, mat.cols, mat.rows).unwrap();
            let bytes = l
                .dequantize()
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            *mat =
                Matrix::new(&prefix, WeightFormat::F32, Bytes::from_vec(bytes), l.n, l.k).unwrap();
        }
    }
}

/// Greedy continuation of `prompt` by `n` tokens through the KV cache.
fn greedy(m: &Llama, pool: &ThreadPool, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = m.new_cache(prompt.len() + n);
    let seq = cache.add_sequence();
    let mut batch: Vec<BatchToken> = prompt
        .iter()
        .enumerate()
        .map(|(pos, &token)| BatchToken {
            token,
            seq,
            pos,
            logits: pos + 1 == prompt.len(),
        })
        .collect();
    let mut out = Vec::new();
    for step in 0..n {
        let logits = m.forward(&batch, &mut cache, pool).expect("forward");
        let next = argmax(&logits) as u32;
        out.push(next);
        batch = vec![BatchToken {
            token: next,
            seq,
            pos: prompt.len() + step,
            logits: true,
        }];
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

fn is_gptq(m: &LoadedModel, bits: u32, act_order: bool) {
    assert_eq!(m.format, "gptq");
    // The fp16 head of files of at most 4 bits runs at 8 bits where the packed kernels exist.
    let head = m.model.lm_head.as_ref().map(|h| h.format);
    if bits <= 4 && kernels::cpu::packed::worth_packing(kernels::cpu::Features::get()) {
        assert!(
            matches!(head, Some(WeightFormat::Packed(PackedKind::Q8))),
            "{bits} bits: {head:?}"
        );
    } else {
        assert!(
            matches!(head, None | Some(WeightFormat::F16)),
            "{bits} bits: {head:?}"
        );
    }
    for layer in &m.model.layers {
        for mat in [
            &layer.q_proj,
            &layer.k_proj,
            &layer.v_proj,
            &layer.o_proj,
            &layer.gate_proj,
            &layer.up_proj,
            &layer.down_proj,
        ] {
            assert!(
                matches!(
                    mat.format,
                    WeightFormat::Gptq(_) | WeightFormat::Packed(PackedKind::Q4Z | PackedKind::Q4G)
                ),
                "{}",
                mat.name
            );
            assert_eq!(mat.perm.is_some(), act_order, "{}", mat.name);
        }
    }
}

#[test]
fn every_layout_loads_runs_and_matches_its_dequantized_weights() {
    let Some(src) = fp16_source() else { return };
    let pool = ThreadPool::new(2);
    let (v1, v2) = (CheckpointFormat::V1, CheckpointFormat::V2);
    let mut layouts = Vec::new();
    for (i, bits) in [2, 3, 4, 8].into_iter().enumerate() {
        for (j, group_size) in [None, Some(128), Some(32)].into_iter().enumerate() {
            for desc_act in [false, true] {
                let k = i + j + desc_act as usize;
                // v1 needs sym; v2 alternates sym and asym; every third is sharded.
                let (format, sym) = match k % 3 {
                    0 => (v1, true),
                    1 => (v2, false),
                    _ => (v2, true),
                };
                layouts.push(Layout {
                    bits,
                    group_size,
                    desc_act,
                    sym,
                    format,
                    shards: 1 + (k % 2) * 2,
                });
            }
        }
    }
    let prompt: Vec<u32> = vec![
        504, 3287, 314, 260, 1789, 28, 1202, 2114, 314, 4160, 30, 378,
    ];
    for (i, l) in layouts.into_iter().enumerate() {
        let dir = write(src, l, Some(2), &format!("layout{i}"));
        let m = load(&dir).unwrap_or_else(|e| panic!("loading {l:?}: {e:#}"));
        // Without groups g_idx is all zeros and act-order needs no permutation.
        is_gptq(&m, l.bits, l.desc_act && l.group_size.is_some());
        assert_eq!(m.model.config.n_layers, 2);
        let got = m
            .model
            .forward_sequence(&prompt, &pool, |_| true)
            .expect("forward");
        let mut reference = load(&dir).unwrap();
        dequantized_reference(&dir, &mut reference.model);
        let want = reference
            .model
            .forward_sequence(&prompt, &pool, |_| true)
            .expect("forward");
        let vocab = m.model.config.n_vocab;
        let mut worst = 0f32;
        for (g, w) in got.chunks_exact(vocab).zip(want.chunks_exact(vocab)) {
            let spread = w.iter().fold(0f32, |a, &x| a.max(x.abs()));
            let diff = g.iter().zip(w).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            worst = worst.max(diff / spread);
        }
        eprintln!("{l:?}: max |logit diff| / max |logit| = {worst:.4}");
        // The kernels quantize activations to 8 bits per block of 32 (the reference does not):
        // a few tenths of a percent per matmul, compounded over two layers.
        assert!(
            worst < 0.03,
            "{l:?}: logits differ by {worst} of their range"
        );
        let text = greedy(&m.model, &pool, &prompt, 6);
        assert!(text.iter().all(|&t| (t as usize) < vocab));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Perplexity by llama.cpp's protocol (chunks of `ctx` from an empty cache, the second half
/// of each scored) over the first `chunks` chunks of `tokens`.
fn perplexity(m: &Llama, pool: &ThreadPool, tokens: &[u32], ctx: usize, chunks: usize) -> f64 {
    let vocab = m.config.n_vocab;
    let (mut nll, mut count) = (0f64, 0usize);
    for chunk in tokens.chunks_exact(ctx).take(chunks) {
        let logits = m
            .forward_sequence(chunk, pool, |p| p >= ctx / 2 && p + 1 < ctx)
            .expect("forward");
        for (row, pos) in logits.chunks_exact(vocab).zip(ctx / 2..ctx - 1) {
            let max = row.iter().fold(f32::MIN, |a, &x| a.max(x)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - row[chunk[pos + 1] as usize] as f64;
            count += 1;
        }
    }
    (nll / count as f64).exp()
}

/// Quality on the whole default model, 2 chunks of 512 tokens of the medical text: 8-bit g32
/// within 1% of fp16's perplexity. Round-to-nearest 4-bit g128 act-order is
/// far from the issue's "few percent" (measured 1.76: the fp16 source is itself the Q4_1 GGUF,
/// re-rounded onto a coarser grid, and RTN has no error feedback); that bar is for GPTQ
/// proper (`meditron quantize`), so here it only guards against a broken layout (a wrong
/// permutation or zero gives perplexities in the hundreds).
#[test]
fn perplexity_stays_close_to_fp16() {
    let Some(src) = fp16_source() else { return };
    let pool = ThreadPool::new(2);
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/text/medical.txt"),
    )
    .expect("fixture text");
    let fp16 = load(src).expect("fp16 model");
    let tokens = fp16.tokenizer.encode(&text, false).expect("encode");
    let (ctx, chunks) = (512, 2);
    let base = perplexity(&fp16.model, &pool, &tokens, ctx, chunks);
    drop(fp16);
    let v1 = CheckpointFormat::V1;
    let cases = [
        (
            "8-bit g32",
            Layout {
                bits: 8,
                group_size: Some(32),
                desc_act: false,
                sym: true,
                format: v1,
                shards: 1,
            },
            // The issue asks for 1%: measured 1.0061 with f32 activations for 8-bit weights
            // (1.0121 when they were rounded to 8 bits too).
            1.01,
        ),
        (
            "4-bit g128 act-order",
            Layout {
                bits: 4,
                group_size: Some(128),
                desc_act: true,
                sym: true,
                format: v1,
                shards: 2,
            },
            2.0,
        ),
    ];
    for (name, layout, bound) in cases {
        let dir = write(src, layout, None, "ppl");
        let m = load(&dir).expect("GPTQ model");
        let ppl = perplexity(&m.model, &pool, &tokens, ctx, chunks);
        eprintln!(
            "perplexity: fp16 {base:.4}, {name} {ppl:.4} (ratio {:.4})",
            ppl / base
        );
        assert!(ppl / base < bound, "{name}: {ppl} vs fp16 {base}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

type Owned = (String, formats::Dtype, Vec<usize>, Vec<u8>);

/// A copy of checkpoint `dir` with its tensors and config.json edited.
fn corrupt(
    dir: &Path,
    name: &str,
    edit_tensors: impl Fn(&mut Vec<Owned>),
    edit_config: impl Fn(&mut serde_json::Value),
) -> PathBuf {
    let out = tmp(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, out.join(f.file_name().unwrap())).unwrap();
    }
    let w = ModelWeights::open_file(&dir.join("model.safetensors")).unwrap();
    let mut tensors: Vec<Owned> = w
        .names()
        .map(|n| {
            let t = w.tensor(n).unwrap();
            (n.to_owned(), t.dtype, t.shape.to_vec(), t.bytes.to_vec())
        })
        .collect();
    edit_tensors(&mut tensors);
    let view: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
        .collect();
    formats::safetensors::write_safetensors(&out.join("model.safetensors"), &view, &[]).unwrap();
    let path = out.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit_config(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    out
}

/// An edit of the tensor called `name`.
fn edit<'a>(name: &'a str, f: &'a dyn Fn(&mut Owned)) -> impl Fn(&mut Vec<Owned>) + 'a {
    move |ts: &mut Vec<Owned>| f(ts.iter_mut().find(|t| t.0 == name).unwrap())
}

fn load_err(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn wrong_or_corrupted_checkpoints_get_precise_errors() {
    let Some(src) = fp16_source() else { return };
    let layout = Layout {
        bits: 4,
        group_size: Some(128),
        desc_act: true,
        sym: true,
        format: CheckpointFormat::V1,
        shards: 1,
    };
    let good = write(src, layout, Some(1), "good");
    let q = "model.layers.0.self_attn.q_proj";
    let none = |_: &mut serde_json::Value| {};
    let keep = |_: &mut Vec<Owned>| {};
    let cases: Vec<(PathBuf, Vec<String>)> = vec![
        (
            // Both config files say 5 bits.
            {
                let d = corrupt(&good, "bits5", keep, |c| {
                    c["quantization_config"]["bits"] = 5.into()
                });
                std::fs::write(
                    d.join("quantize_config.json"),
                    r#"{"bits": 5, "group_size": 128}"#,
                )
                .unwrap();
                d
            },
            vec!["'bits': 5 is not supported".into()],
        ),
        (
            corrupt(&good, "disagree", keep, |c| {
                c["quantization_config"]["group_size"] = 32.into()
            }),
            vec![
                "disagrees".into(),
                "group_size Some(128) vs Some(32)".into(),
            ],
        ),
        (
            corrupt(&good, "awq", keep, |c| {
                c["quantization_config"]["quant_method"] = "awq".into()
            }),
            vec!["'awq'".into()],
        ),
        (
            corrupt(
                &good,
                "shape",
                edit(&format!("{q}.qweight"), &|t| {
                    t.2[0] -= 1;
                    t.3.truncate(t.3.len() - 576 * 4);
                }),
                none,
            ),
            vec![
                format!("{q}.qweight"),
                "expected I32 [72, 576]".into(),
                "found I32 [71, 576]".into(),
            ],
        ),
        (
            corrupt(
                &good,
                "dtype",
                edit(&format!("{q}.scales"), &|t| {
                    t.1 = formats::Dtype::BF16;
                }),
                none,
            ),
            vec![
                format!("{q}.scales"),
                "expected F16 [5, 576]".into(),
                "found BF16".into(),
            ],
        ),
        (
            corrupt(
                &good,
                "missing",
                |ts| ts.retain(|t| t.0 != format!("{q}.g_idx")),
                none,
            ),
            vec![format!("{q}.g_idx"), "missing".into()],
        ),
        (
            corrupt(
                &good,
                "gidx",
                edit(&format!("{q}.g_idx"), &|t| {
                    t.3[40..44].copy_from_slice(&99i32.to_le_bytes())
                }),
                none,
            ),
            vec![
                format!("{q}.g_idx"),
                "g_idx[10] = 99 is outside 0..5".into(),
            ],
        ),
        (
            corrupt(
                &good,
                "zeroscales",
                edit(&format!("{q}.scales"), &|t| t.3.fill(0)),
                none,
            ),
            vec![format!("{q}.scales"), "every scale is 0".into()],
        ),
    ];
    for (dir, wants) in cases {
        let e = load_err(&dir);
        for want in wants {
            assert!(
                e.contains(&want),
                "{}: '{e}' does not say '{want}'",
                dir.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    // A truncated file is caught by the safetensors reader, naming the file.
    let weights = good.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    let cut = tmp("cut");
    let _ = std::fs::remove_dir_all(&cut);
    std::fs::create_dir_all(&cut).unwrap();
    for f in std::fs::read_dir(&good).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, cut.join(f.file_name().unwrap())).unwrap();
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(cut.join("model.safetensors"))
        .unwrap();
    f.set_len(len / 2).unwrap();
    let e = load_err(&cut);
    assert!(e.contains("model.safetensors"), "{e}");
    let _ = std::fs::remove_dir_all(&cut);

    // Token ids the tokenizer knows but the embedding lacks (meditron-70B's <|im_start|> =
    // 32017 of 32017 rows) are refused, not a crash.
    let m = load(&good).unwrap();
    let pool = ThreadPool::new(1);
    let vocab = m.model.config.n_vocab as u32;
    let e = m
        .model
        .forward_sequence(&[1, vocab], &pool, |_| true)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("token id {vocab} has no embedding")),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&good);
}

/// Writes round-to-nearest checkpoints of the whole default model for `meditron bench` and
/// `meditron perplexity` by hand:
/// `MEDITRON_GPTQ_OUT=DIR cargo test -p model --test gptq -- --ignored write_checkpoints`
/// makes DIR/fp16, DIR/gptq-4bit-128g-actorder and DIR/gptq-8bit-32g.
#[test]
#[ignore]
fn write_checkpoints() {
    let out = PathBuf::from(std::env::var_os("MEDITRON_GPTQ_OUT").expect("MEDITRON_GPTQ_OUT"));
    let gguf = model::load::default_model_path();
    gguf_to_hf(&gguf, &out.join("fp16"), OutDtype::F16).unwrap();
    let v1 = CheckpointFormat::V1;
    for (name, bits, group_size, desc_act) in [
        ("gptq-4bit-128g-actorder", 4, Some(128), true),
        ("gptq-8bit-32g", 8, Some(32), false),
    ] {
        let l = Layout {
            bits,
            group_size,
            desc_act,
            sym: true,
            format: v1,
            shards: 1,
        };
        let dir = write(&out.join("fp16"), l, None, name);
        let _ = std::fs::remove_dir_all(out.join(name));
        std::fs::rename(&dir, out.join(name))
            .or_else(|_| {
                std::process::Command::new("mv")
                    .arg(&dir)
                    .arg(out.join(name))
                    .status()
                    .map(|_| ())
            })
            .unwrap();
    }
}

/// Without act-order some writers leave g_idx out; it is then `i / group_size`, and the model
/// must compute exactly what the same file with g_idx computes.
#[test]
fn a_file_without_g_idx_loads_when_there_is_no_act_order() {
    let Some(src) = fp16_source() else { return };
    let layout = Layout {
        bits: 4,
        group_size: Some(128),
        desc_act: false,
        sym: true,
        format: CheckpointFormat::V1,
        shards: 1,
    };
    let with = write(src, layout, Some(1), "with-gidx");
    let without = corrupt(
        &with,
        "no-gidx",
        |ts| ts.retain(|t| !t.0.ends_with(".g_idx")),
        |_| {},
    );
    let pool = ThreadPool::new(2);
    let prompt = [504u32, 3287, 314, 260, 1789];
    let run = |dir: &Path| {
        let m = load(dir).unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
        m.model
            .forward_sequence(&prompt, &pool, |_| true)
            .expect("forward")
    };
    assert_eq!(run(&with), run(&without));
    let _ = std::fs::remove_dir_all(&with);
    let _ = std::fs::remove_dir_all(&without);
}
