//! Writing GPTQ checkpoint directories that AutoGPTQ, GPTQModel and transformers load: the
//! quantized layers, everything else in fp16, `config.json` with `quantization_config`,
//! `quantize_config.json`, the tokenizer files, one file or shards with an index.
//!
//! [`write_checkpoint`] takes the quantizer as a closure (the GPTQ algorithm of `meditron
//! quantize`, or [`rtn`] here); [`write_rtn`] is the round-to-nearest writer the tests use to
//! make checkpoints whose exact values are known.

use super::config::GptqConfig;
use super::linear::{GptqLinear, RtnParams};
use super::LLAMA_QUANTIZED;
use crate::safetensors::{write_safetensors, Dtype, ModelWeights, TensorToWrite};
use crate::FormatError;
use half::f16;
use serde_json::Value;
use std::path::Path;

/// Files copied unchanged from the source model directory when present.
pub const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
];

/// Where and how to write.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// The weights' base name: `{base}.safetensors`, or `{base}-0000i-of-0000n.safetensors`
    /// plus `{base}.safetensors.index.json` when sharded.
    pub base_name: String,
    /// 1 for a single file.
    pub shards: usize,
    /// Keep only the first this many decoder layers (small models for tests).
    pub max_layers: Option<usize>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            base_name: "model".into(),
            shards: 1,
            max_layers: None,
        }
    }
}

/// The decoder layer and module of a quantizable weight name
/// (`model.layers.3.mlp.up_proj.weight` -> (3, "mlp.up_proj")).
pub fn quantizable(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let module = module.strip_suffix(".weight")?;
    let layer = layer.parse().ok()?;
    LLAMA_QUANTIZED.contains(&module).then_some((layer, module))
}

fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?
        .split_once('.')?
        .0
        .parse()
        .ok()
}

fn err(path: &Path, msg: String) -> FormatError {
    FormatError::Config {
        path: path.to_owned(),
        msg,
    }
}

/// Writes the model in `src` (a Hugging Face directory with f32/f16/bf16 safetensors) to `out`
/// as a GPTQ checkpoint described by `cfg`. `quantize(name, w, n, k)` quantizes each Llama
/// projection (`w` is its nn.Linear weight, `[n, k]` row-major); every other tensor is written
/// as fp16.
pub fn write_checkpoint(
    src: &Path,
    out: &Path,
    cfg: &GptqConfig,
    opts: &WriteOptions,
    mut quantize: impl FnMut(&str, &[f32], usize, usize) -> Result<GptqLinear, String>,
) -> Result<(), FormatError> {
    let weights = ModelWeights::open_dir(src)?;
    let cfg_path = src.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| FormatError::io(&cfg_path, e))?;
    let mut config: Value =
        serde_json::from_str(&text).map_err(|e| err(&cfg_path, format!("not valid JSON: {e}")))?;
    if config
        .get("quantization_config")
        .is_some_and(|q| !q.is_null())
    {
        return Err(err(
            &cfg_path,
            "the source model is already quantized".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| FormatError::io(out, e))?;

    // (name, dtype, shape, bytes) in source order, layers past max_layers dropped.
    let mut tensors: Vec<Owned> = Vec::new();
    for name in weights.names() {
        if name.ends_with("rotary_emb.inv_freq") {
            continue;
        }
        if let (Some(max), Some(l)) = (opts.max_layers, layer_of(name)) {
            if l >= max {
                continue;
            }
        }
        let t = weights.tensor(name).expect("listed by names()");
        let quantized = quantizable(name).is_some() && t.shape.len() == 2;
        if !quantized && t.dtype == Dtype::F16 {
            tensors.push((
                name.to_owned(),
                Dtype::F16,
                t.shape.to_vec(),
                t.bytes.to_vec(),
            ));
            continue;
        }
        let values = t.to_f32_vec()?;
        if let (true, [n, k]) = (quantized, t.shape) {
            let prefix = name
                .strip_suffix(".weight")
                .expect("checked by quantizable");
            let layer = quantize(name, &values, *n, *k)
                .map_err(|e| err(t.file, format!("quantizing tensor '{name}': {e}")))?;
            for (suffix, dtype, shape, bytes) in layer.tensors() {
                tensors.push((format!("{prefix}.{suffix}"), dtype, shape, bytes));
            }
        } else {
            let bytes = values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect();
            tensors.push((name.to_owned(), Dtype::F16, t.shape.to_vec(), bytes));
        }
    }

    write_weights(out, &opts.base_name, opts.shards.max(1), &tensors)?;

    let mut qc = cfg.clone();
    qc.model_file_base_name = Some(opts.base_name.clone());
    let qjson = qc.to_json();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("quantization_config".into(), qjson.clone());
        obj.insert("torch_dtype".into(), "float16".into());
        if let Some(max) = opts.max_layers {
            let n = obj
                .get("num_hidden_layers")
                .and_then(Value::as_u64)
                .unwrap_or(0) as usize;
            obj.insert("num_hidden_layers".into(), n.min(max).into());
        }
    }
    write_json(&out.join("config.json"), &config)?;
    write_json(&out.join(super::QUANTIZE_CONFIG_FILE), &qjson)?;
    for f in TOKENIZER_FILES {
        let from = src.join(f);
        if from.is_file() {
            std::fs::copy(&from, out.join(f)).map_err(|e| FormatError::io(&from, e))?;
        }
    }
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<(), FormatError> {
    let text = serde_json::to_string_pretty(v).expect("a JSON value serializes");
    std::fs::write(path, text + "\n").map_err(|e| FormatError::io(path, e))
}

/// A tensor to write, owning its bytes: (name, dtype, shape, bytes).
type Owned = (String, Dtype, Vec<usize>, Vec<u8>);

fn view(ts: &[Owned]) -> Vec<TensorToWrite<'_>> {
    ts.iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
        .collect()
}

/// One file, or `shards` files of about equal size (tensors in order) plus the index.
fn write_weights(
    out: &Path,
    base: &str,
    shards: usize,
    tensors: &[Owned],
) -> Result<(), FormatError> {
    let meta = [("format", "pt")];
    if shards == 1 {
        return write_safetensors(
            &out.join(format!("{base}.safetensors")),
            &view(tensors),
            &meta,
        );
    }
    let total: usize = tensors.iter().map(|t| t.3.len()).sum();
    let per = total.div_ceil(shards).max(1);
    let mut parts: Vec<&[Owned]> = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, t) in tensors.iter().enumerate() {
        size += t.3.len();
        if size >= per && parts.len() + 1 < shards {
            parts.push(&tensors[start..=i]);
            (start, size) = (i + 1, 0);
        }
    }
    parts.push(&tensors[start..]);
    let n = parts.len();
    let mut map = serde_json::Map::new();
    for (i, part) in parts.iter().enumerate() {
        let file = format!("{base}-{:05}-of-{n:05}.safetensors", i + 1);
        write_safetensors(&out.join(&file), &view(part), &meta)?;
        for t in part.iter() {
            map.insert(t.0.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
    write_json(&out.join(format!("{base}.safetensors.index.json")), &index)
}

/// Round-to-nearest settings for [`write_rtn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtnOptions {
    pub params: RtnParams,
    /// Act-order: quantize columns by decreasing squared norm of the weight column (a stand-in
    /// for the Hessian diagonal that RTN does not have), so g_idx is a non-trivial permutation.
    pub desc_act: bool,
}

/// Round-to-nearest quantization of one layer as [`write_checkpoint`] wants it.
pub fn rtn(w: &[f32], n: usize, k: usize, opts: &RtnOptions) -> Result<GptqLinear, String> {
    let order: Option<Vec<usize>> = opts.desc_act.then(|| {
        let mut norm = vec![0f64; k];
        for row in w.chunks_exact(k) {
            for (s, &v) in norm.iter_mut().zip(row) {
                *s += (v as f64) * (v as f64);
            }
        }
        let mut order: Vec<usize> = (0..k).collect();
        // Ties keep index order, so the result is deterministic.
        order.sort_by(|&a, &b| norm[b].total_cmp(&norm[a]));
        order
    });
    GptqLinear::quantize_rtn(w, n, k, &opts.params, order.as_deref()).map_err(|e| e.0)
}

/// Writes a round-to-nearest GPTQ checkpoint of the model in `src` to `out`.
pub fn write_rtn(
    src: &Path,
    out: &Path,
    rtn_opts: &RtnOptions,
    opts: &WriteOptions,
) -> Result<(), FormatError> {
    let p = rtn_opts.params;
    let cfg = GptqConfig {
        bits: p.bits,
        group_size: p.group_size,
        desc_act: rtn_opts.desc_act,
        static_groups: false,
        sym: p.sym,
        format: p.format,
        damp_percent: None,
        true_sequential: None,
        model_file_base_name: Some(opts.base_name.clone()),
        model_name_or_path: None,
        source: out.join(super::QUANTIZE_CONFIG_FILE),
    };
    write_checkpoint(src, out, &cfg, opts, |_, w, n, k| rtn(w, n, k, rtn_opts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gptq::CheckpointFormat;

    #[test]
    fn quantizable_names() {
        assert_eq!(
            quantizable("model.layers.12.self_attn.k_proj.weight"),
            Some((12, "self_attn.k_proj"))
        );
        assert_eq!(quantizable("model.layers.0.input_layernorm.weight"), None);
        assert_eq!(quantizable("model.embed_tokens.weight"), None);
        assert_eq!(quantizable("lm_head.weight"), None);
    }

    /// A two-layer toy model written, quantized sharded, and read back.
    #[test]
    fn writes_a_sharded_checkpoint_that_reads_back() {
        let dir = std::env::temp_dir().join(format!("gptq-write-{}", std::process::id()));
        let (src, out) = (dir.join("src"), dir.join("out"));
        std::fs::create_dir_all(&src).unwrap();
        let (h, i) = (64usize, 96usize);
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let f16s = |n: usize, seed: usize| -> Vec<u8> {
            (0..n)
                .flat_map(|j| {
                    f16::from_f32(((j * 31 + seed * 7) % 23) as f32 / 23.0 - 0.5).to_le_bytes()
                })
                .collect()
        };
        tensors.push((
            "model.embed_tokens.weight".into(),
            vec![10, h],
            f16s(10 * h, 1),
        ));
        for l in 0..2 {
            for (m, n, k) in [
                ("self_attn.q_proj", h, h),
                ("self_attn.k_proj", h, h),
                ("self_attn.v_proj", h, h),
                ("self_attn.o_proj", h, h),
                ("mlp.gate_proj", i, h),
                ("mlp.up_proj", i, h),
                ("mlp.down_proj", h, i),
            ] {
                tensors.push((
                    format!("model.layers.{l}.{m}.weight"),
                    vec![n, k],
                    f16s(n * k, l + n),
                ));
            }
            tensors.push((
                format!("model.layers.{l}.input_layernorm.weight"),
                vec![h],
                f16s(h, 3),
            ));
        }
        let view: Vec<TensorToWrite<'_>> = tensors
            .iter()
            .map(|(n, s, b)| (n.as_str(), Dtype::F16, s.as_slice(), b.as_slice()))
            .collect();
        write_safetensors(&src.join("model.safetensors"), &view, &[]).unwrap();
        std::fs::write(
            src.join("config.json"),
            r#"{"num_hidden_layers": 2, "hidden_size": 64}"#,
        )
        .unwrap();
        std::fs::write(src.join("tokenizer.json"), "{}").unwrap();
        let rtn_opts = RtnOptions {
            params: RtnParams {
                bits: 3,
                group_size: Some(32),
                sym: false,
                format: CheckpointFormat::V2,
            },
            desc_act: true,
        };
        let opts = WriteOptions {
            base_name: "model".into(),
            shards: 3,
            max_layers: Some(1),
        };
        write_rtn(&src, &out, &rtn_opts, &opts).unwrap();
        assert!(out.join("tokenizer.json").is_file());
        assert!(out.join("model-00003-of-00003.safetensors").is_file());
        let cfg = GptqConfig::from_dir(&out).unwrap().unwrap();
        assert_eq!(
            (cfg.bits, cfg.group_size, cfg.desc_act, cfg.sym, cfg.format),
            (3, Some(32), true, false, CheckpointFormat::V2)
        );
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["num_hidden_layers"], 1);
        let w = ModelWeights::open_dir(&out).unwrap();
        assert_eq!(w.files().len(), 3);
        assert!(!w.contains("model.layers.1.mlp.up_proj.qweight"));
        let l = GptqLinear::read(&w, "model.layers.0.mlp.down_proj", &cfg, i, h).unwrap();
        assert!(
            l.g_idx.windows(2).any(|p| p[0] > p[1]),
            "act-order g_idx is not monotonic"
        );
        // Dequantized values are within a step of the source weights.
        let src_w = ModelWeights::open_dir(&src).unwrap();
        let orig = src_w
            .tensor("model.layers.0.mlp.down_proj.weight")
            .unwrap()
            .to_f32_vec()
            .unwrap();
        let deq = l.dequantize().unwrap();
        let max_scale = l.scales.iter().map(|s| s.to_f32()).fold(0f32, f32::max);
        for (a, b) in deq.iter().zip(&orig) {
            assert!((a - b).abs() <= max_scale * 0.51, "{a} vs {b}");
        }
        // Wrong shapes are named.
        let e = GptqLinear::read(&w, "model.layers.0.mlp.down_proj", &cfg, h, h)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.layers.0.mlp.down_proj.qweight")
                && e.contains("expected I32 [6, 64]")
                && e.contains("found I32 [9, 64]"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
