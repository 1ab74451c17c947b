//! Writing a Hugging Face model directory (config.json, safetensors, tokenizer files) from a
//! GGUF file: every tensor expanded to f32, f16 or bf16 under its Hugging Face name, with
//! llama.cpp's Q/K row permutation undone, so transformers and every HF loader read it.

use anyhow::{anyhow, bail, Context, Result};
use formats::safetensors::write_safetensors;
use formats::{Dtype, GgufFile};
use half::{bf16, f16};
use std::path::Path;

/// The element type of the written weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutDtype {
    F32,
    F16,
    Bf16,
}

impl OutDtype {
    fn dtype(self) -> Dtype {
        match self {
            OutDtype::F32 => Dtype::F32,
            OutDtype::F16 => Dtype::F16,
            OutDtype::Bf16 => Dtype::BF16,
        }
    }

    fn torch_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "float32",
            OutDtype::F16 => "float16",
            OutDtype::Bf16 => "bfloat16",
        }
    }

    fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            OutDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutDtype::F16 => v
                .iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect(),
            OutDtype::Bf16 => v
                .iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
        }
    }
}

/// The Hugging Face name of a GGUF tensor, and whether its rows carry llama.cpp's RoPE
/// permutation (Q and K projections).
fn hf_name(gguf: &str) -> Option<(String, bool)> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f.to_string(), false));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (hf, permuted) = match name {
        "attn_norm.weight" => ("input_layernorm.weight", false),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", false),
        "attn_q.weight" => ("self_attn.q_proj.weight", true),
        "attn_k.weight" => ("self_attn.k_proj.weight", true),
        "attn_v.weight" => ("self_attn.v_proj.weight", false),
        "attn_output.weight" => ("self_attn.o_proj.weight", false),
        "attn_q.bias" => ("self_attn.q_proj.bias", true),
        "attn_k.bias" => ("self_attn.k_proj.bias", true),
        "attn_v.bias" => ("self_attn.v_proj.bias", false),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", false),
        "ffn_up.weight" => ("mlp.up_proj.weight", false),
        "ffn_down.weight" => ("mlp.down_proj.weight", false),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}"), permuted))
}

/// Undoes llama.cpp's permutation of Q/K rows: HF row h*d + i is GGUF row h*d + 2i, and HF row
/// h*d + d/2 + i is GGUF row h*d + 2i + 1 (i < d/2). `v` is (rows, cols).
fn unpermute_rows(v: &[f32], cols: usize, head_dim: usize) -> Vec<f32> {
    let rows = v.len() / cols;
    let half = head_dim / 2;
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        let (h, j) = (r / head_dim, r % head_dim);
        let src = if j < half {
            h * head_dim + 2 * j
        } else {
            h * head_dim + 2 * (j - half) + 1
        };
        out[r * cols..(r + 1) * cols].copy_from_slice(&v[src * cols..(src + 1) * cols]);
    }
    out
}

/// Converts `gguf_path` into a Hugging Face model directory `out` (created if needed; files
/// are written whole, each through a temporary name, so a failure leaves no torn file).
pub fn gguf_to_hf(gguf_path: &Path, out: &Path, dtype: OutDtype) -> Result<()> {
    let file = GgufFile::open(gguf_path)?;
    let loaded = crate::load::load(gguf_path)?;
    let c = &loaded.model.config;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for info in file.tensors() {
        let Some((name, permuted)) = hf_name(&info.name) else {
            bail!(
                "GGUF tensor '{}' has no Hugging Face Llama counterpart",
                info.name
            );
        };
        let values = file
            .tensor_to_f32(info)
            .with_context(|| format!("GGUF tensor '{}'", info.name))?;
        // GGUF dims are innermost first; PyTorch shapes outermost first.
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let cols = *shape
            .last()
            .ok_or_else(|| anyhow!("GGUF tensor '{}' has no dimensions", info.name))?;
        let values = if permuted {
            let cols = if shape.len() == 1 { 1 } else { cols };
            unpermute_rows(&values, cols, c.head_dim)
        } else {
            values
        };
        tensors.push((name, shape, dtype.encode(&values)));
    }
    let views: Vec<(&str, Dtype, &[usize], &[u8])> = tensors
        .iter()
        .map(|(n, s, b)| (n.as_str(), dtype.dtype(), s.as_slice(), b.as_slice()))
        .collect();
    write_safetensors(&out.join("model.safetensors"), &views, &[("format", "pt")])?;

    let tok = &loaded.tokenizer;
    let eos: Vec<u32> = tok.eos_ids().first().copied().into_iter().collect();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden,
        "intermediate_size": c.intermediate,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_context,
        "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_theta,
        "vocab_size": c.n_vocab,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": tok.bos_id(),
        "eos_token_id": eos.first(),
        "torch_dtype": dtype.torch_name(),
        "attention_bias": file.tensor("blk.0.attn_q.bias").is_some(),
        "mlp_bias": false,
    });
    write_json(&out.join("config.json"), &config)?;
    let generation =
        serde_json::json!({ "bos_token_id": tok.bos_id(), "eos_token_id": tok.eos_ids() });
    write_json(&out.join("generation_config.json"), &generation)?;
    tok.save_hf(out)?;
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(v)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_s_permutation() {
        // Two heads of dim 4, one column: GGUF row order (0, 2, 1, 3) within each head.
        let gguf = [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0];
        assert_eq!(
            unpermute_rows(&gguf, 1, 4),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        );
    }

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.3.attn_k.weight"),
            Some(("model.layers.3.self_attn.k_proj.weight".into(), true))
        );
        assert_eq!(
            hf_name("token_embd.weight"),
            Some(("model.embed_tokens.weight".into(), false))
        );
        assert_eq!(hf_name("blk.x.attn_k.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
