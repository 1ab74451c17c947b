//! A Llama model from a Hugging Face directory: config.json, safetensors (single or sharded,
//! f32/f16/bf16, mapped in place; GPTQ layers repacked by `gptq`) and tokenizer.json.

use super::{gptq, template_or_chatml, LoadedModel};
use crate::config::ModelConfig;
use crate::llama::{Layer, Llama};
use crate::weights::{gather_on_huge_pages, Bytes, Matrix};
use anyhow::{anyhow, bail, Context, Result};
use formats::gptq::GptqConfig;
use formats::{Dtype, LlamaConfig, ModelWeights};
use kernels::cpu::matmul::WeightFormat;
use std::path::Path;
use tokenizer::Tokenizer;

/// See the layer loop of [`load`].
const GATHER_BYTES: usize = 16 << 20;

pub fn load(dir: &Path) -> Result<LoadedModel> {
    let hf = LlamaConfig::from_file(&dir.join("config.json"))?;
    hf.validate()?;
    // quantize_config.json and/or config.json's quantization_config (anything but GPTQ is
    // refused there, naming the field).
    let gptq = GptqConfig::from_dir(dir)?;
    if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        bail!(
            "{}: rope_scaling is not supported yet",
            dir.join("config.json").display()
        );
    }
    let weights = match gptq
        .as_ref()
        .and_then(|g| g.model_file_base_name.as_deref())
    {
        // AutoGPTQ names the file after model_file_base_name; a re-save may have renamed it.
        Some(base)
            if dir.join(format!("{base}.safetensors")).is_file()
                || dir.join(format!("{base}.safetensors.index.json")).is_file() =>
        {
            ModelWeights::open_dir_with_base(dir, base)?
        }
        _ => ModelWeights::open_dir(dir)?,
    };
    let matrix = |name: &str| hf_matrix(&weights, name);
    // A projection (`prefix.weight`, or GPTQ's `prefix.qweight` and company) of n x k.
    let proj = |prefix: &str, n: usize, k: usize| match &gptq {
        Some(g) if !weights.contains(&format!("{prefix}.weight")) => {
            gptq::matrix(&weights, g, prefix, n, k)
        }
        _ => matrix(&format!("{prefix}.weight")),
    };
    let vector = |name: &str| hf_vector(&weights, name);
    let embed_tokens = matrix("model.embed_tokens.weight")?;
    let config = ModelConfig::from_hf(&hf, embed_tokens.rows);
    let (hidden, inter) = (config.hidden, config.intermediate);
    let (q_dim, kv_dim) = (config.q_dim(), config.kv_dim());
    let mut layers: Vec<Layer> = Vec::with_capacity(config.n_layers);
    // Repacked layers move to huge pages every GATHER_BYTES, so that the heap copies (which
    // the allocator keeps for the next layers) add at most that much to the peak memory.
    let (mut gathered, mut pending) = (0, 0);
    for i in 0..config.n_layers {
        if pending >= GATHER_BYTES {
            let mut batch: Vec<&mut Matrix> = layers[gathered..]
                .iter_mut()
                .flat_map(|l| l.matrices_mut())
                .collect();
            gather_on_huge_pages(&mut batch);
            (gathered, pending) = (layers.len(), 0);
        }
        let p = format!("model.layers.{i}");
        let attn = format!("{p}.self_attn");
        layers.push(Layer {
            attn_norm: vector(&format!("{p}.input_layernorm.weight"))?,
            q_proj: proj(&format!("{attn}.q_proj"), q_dim, hidden)?,
            k_proj: proj(&format!("{attn}.k_proj"), kv_dim, hidden)?,
            v_proj: proj(&format!("{attn}.v_proj"), kv_dim, hidden)?,
            o_proj: proj(&format!("{attn}.o_proj"), hidden, q_dim)?,
            qkv_bias: if weights.tensor(&format!("{attn}.q_proj.bias")).is_some() {
                Some([
                    vector(&format!("{attn}.q_proj.bias"))?,
                    vector(&format!("{attn}.k_proj.bias"))?,
                    vector(&format!("{attn}.v_proj.bias"))?,
                ])
            } else {
                None
            },
            ffn_norm: vector(&format!("{p}.post_attention_layernorm.weight"))?,
            gate_proj: proj(&format!("{p}.mlp.gate_proj"), inter, hidden)?,
            up_proj: proj(&format!("{p}.mlp.up_proj"), inter, hidden)?,
            down_proj: proj(&format!("{p}.mlp.down_proj"), hidden, inter)?,
        });
        let last = layers.last_mut().expect("just pushed");
        pending += last
            .matrices_mut()
            .iter()
            .map(|m| m.bytes.own_heap_bytes())
            .sum::<usize>();
    }
    let norm = vector("model.norm.weight")?;
    let lm_head = match (
        weights.tensor("lm_head.weight").is_some(),
        config.tie_embeddings,
    ) {
        (true, _) => Some(matrix("lm_head.weight")?),
        (false, true) => None,
        (false, false) => bail!(
            "{}: lm_head.weight is missing and tie_word_embeddings is false",
            dir.display()
        ),
    };
    let lm_head = match &gptq {
        Some(g) => gptq::decode_head(g, lm_head.as_ref().unwrap_or(&embed_tokens)).or(lm_head),
        None => lm_head,
    };
    let (mut embed_tokens, mut layers, mut lm_head) = (embed_tokens, layers, lm_head);
    let mut matrices: Vec<&mut Matrix> = layers[gathered..]
        .iter_mut()
        .flat_map(|l| l.matrices_mut())
        .chain([&mut embed_tokens])
        .chain(lm_head.as_mut())
        .collect();
    gather_on_huge_pages(&mut matrices);
    let model = Llama::new(config, embed_tokens, layers, norm, lm_head).map_err(|e| anyhow!(e))?;
    let tokenizer = Tokenizer::from_hf_dir(dir)
        .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
    let template = template_or_chatml(tokenizer.chat_template())?;
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
        path: dir.to_path_buf(),
        format: if gptq.is_some() {
            "gptq"
        } else {
            "safetensors"
        },
        name,
    })
}

fn hf_matrix(weights: &ModelWeights, name: &str) -> Result<Matrix> {
    let t = weights
        .tensor(name)
        .ok_or_else(|| anyhow!("tensor '{name}' is missing from the safetensors files"))?;
    let format = match t.dtype {
        Dtype::F32 => WeightFormat::F32,
        Dtype::F16 => WeightFormat::F16,
        Dtype::BF16 => WeightFormat::BF16,
        other => bail!("tensor '{name}' has dtype {other:?}; expected F32, F16 or BF16"),
    };
    if t.shape.len() != 2 {
        bail!(
            "tensor '{name}' has shape {:?}, expected 2 dimensions",
            t.shape
        );
    }
    let (owner, range) = weights
        .tensor_storage(name)
        .ok_or_else(|| anyhow!("tensor '{name}' is missing"))?;
    let bytes = Bytes::new(owner, range).map_err(|e| anyhow!("tensor '{name}': {e}"))?;
    Matrix::new(name, format, bytes, t.shape[0], t.shape[1]).map_err(|e| anyhow!(e))
}

fn hf_vector(weights: &ModelWeights, name: &str) -> Result<Vec<f32>> {
    let t = weights
        .tensor(name)
        .ok_or_else(|| anyhow!("tensor '{name}' is missing from the safetensors files"))?;
    if t.shape.len() != 1 {
        bail!(
            "tensor '{name}' has shape {:?}, expected 1 dimension",
            t.shape
        );
    }
    t.to_f32_vec().with_context(|| format!("tensor '{name}'"))
}
