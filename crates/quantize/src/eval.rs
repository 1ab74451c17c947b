//! Perplexity of an fp16/bf16/f32 or GPTQ model directory with the calibration forward (f32,
//! layer by layer, GPTQ weights dequantized by the formats crate's reference dequantizer), in
//! llama.cpp's protocol as `meditron perplexity` runs it: disjoint chunks of `ctx` tokens, the
//! second half of each scored (`ppl`, tokens scored). Used for the quality table, where dozens
//! of checkpoints are scored on a shared 2-core machine; `meditron perplexity` gives the same
//! figure (README, "GPTQ").

use crate::layer::{self, Dims, LayerWeights, DOWN, MODULES, O};
use crate::linalg::linear;
use anyhow::{bail, Context, Result};
use formats::gptq::{GptqConfig, GptqLinear};
use formats::{LlamaConfig, ModelWeights};
use rayon::prelude::*;
use std::path::Path;

fn read_layer(
    w: &ModelWeights,
    gptq: Option<&GptqConfig>,
    l: usize,
    d: &Dims,
) -> Result<LayerWeights> {
    let p = format!("model.layers.{l}");
    let mut lin = Vec::with_capacity(7);
    for (m, name) in MODULES.iter().enumerate() {
        let (n, k) = d.shape(m);
        let prefix = format!("{p}.{name}");
        lin.push(match gptq {
            Some(cfg) if w.contains(&format!("{prefix}.qweight")) => {
                GptqLinear::read(w, &prefix, cfg, k, n)?
                    .dequantize()
                    .map_err(|e| anyhow::anyhow!("{prefix}: {e}"))?
            }
            _ => layer::tensor_f32(w, &format!("{prefix}.weight"), &[n, k])?,
        });
    }
    Ok(LayerWeights {
        attn_norm: layer::tensor_f32(w, &format!("{p}.input_layernorm.weight"), &[d.hidden])?,
        mlp_norm: layer::tensor_f32(
            w,
            &format!("{p}.post_attention_layernorm.weight"),
            &[d.hidden],
        )?,
        lin,
    })
}

/// Perplexity of `text` under the model in `dir` over at most `max_chunks` chunks of `ctx`.
pub fn perplexity(dir: &Path, text: &str, ctx: usize, max_chunks: usize) -> Result<(f64, usize)> {
    let tok = tokenizer::Tokenizer::from_hf_dir(dir)
        .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
    let ids = tok.encode(text, true).context("tokenizing")?;
    let chunks = (ids.len() / ctx).min(max_chunks);
    if ctx < 4 || chunks == 0 {
        bail!("the text has {} tokens: not one chunk of {ctx}", ids.len());
    }
    let mut toks: Vec<u32> = ids[..chunks * ctx].to_vec();
    if let (true, Some(b)) = (tok.add_bos(), tok.bos_id()) {
        for c in 0..chunks {
            toks[c * ctx] = b;
        }
    }
    let (nll, count) = mean_nll(dir, &toks, ctx)?;
    Ok((nll.exp(), count))
}

/// Mean negative log-likelihood of `toks` (whole chunks of `ctx`, each already starting with
/// BOS where the model wants one) under the model in `dir`, the second half of every chunk
/// scored; and the number of tokens scored.
pub fn mean_nll(dir: &Path, toks: &[u32], ctx: usize) -> Result<(f64, usize)> {
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    cfg.validate()?;
    let gptq = GptqConfig::from_dir(dir)?;
    let w = ModelWeights::open_dir(dir)?;
    let d = Dims::from_config(&cfg);
    if ctx < 4 || toks.is_empty() || !toks.len().is_multiple_of(ctx) {
        bail!("{} tokens are not whole chunks of {ctx}", toks.len());
    }
    let chunks = toks.len() / ctx;
    let embed = w
        .tensor("model.embed_tokens.weight")
        .context("tensor 'model.embed_tokens.weight' is missing")?;
    let mut x = Vec::with_capacity(toks.len() * d.hidden);
    for &t in toks {
        x.extend(layer::row_f32(&embed, t as usize)?);
    }
    // Batches of chunks, as in calibration, so that the GEMMs are large.
    let per = (4096 / ctx).max(1);
    let rows_per = per * ctx;
    for l in 0..cfg.num_hidden_layers {
        let lw = read_layer(&w, gptq.as_ref(), l, &d)?;
        for xb in x.chunks_mut(rows_per * d.hidden) {
            let att = layer::attention(&layer::norm(xb, &lw.attn_norm, d.eps), &lw, &d, ctx);
            layer::residual(xb, &att, &lw, &d, O);
            let act = layer::mlp_act(&layer::norm(xb, &lw.mlp_norm, d.eps), &lw, &d);
            layer::residual(xb, &act, &lw, &d, DOWN);
        }
    }
    let norm = layer::tensor_f32(&w, "model.norm.weight", &[d.hidden])?;
    let head_name = if w.contains("lm_head.weight") {
        "lm_head.weight"
    } else {
        "model.embed_tokens.weight"
    };
    let head = layer::tensor_f32(&w, head_name, &[cfg.vocab_size, d.hidden])?;
    let first = ctx / 2;
    let mut nll = 0f64;
    let mut count = 0usize;
    for c in 0..chunks {
        // Rows first..ctx-1 of the chunk predict tokens first+1..ctx.
        let rows = ctx - 1 - first;
        let start = (c * ctx + first) * d.hidden;
        let h = layer::norm(&x[start..start + rows * d.hidden], &norm, d.eps);
        let mut logits = vec![0f32; rows * cfg.vocab_size];
        linear(
            &mut logits,
            &h,
            &head,
            rows,
            d.hidden,
            cfg.vocab_size,
            false,
        );
        let s: f64 = logits
            .par_chunks(cfg.vocab_size)
            .enumerate()
            .map(|(r, row)| {
                let target = toks[c * ctx + first + r + 1] as usize;
                let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                let lse = row
                    .iter()
                    .map(|v| ((v - max) as f64).exp())
                    .sum::<f64>()
                    .ln()
                    + max as f64;
                lse - row[target] as f64
            })
            .sum();
        nll += s;
        count += rows;
    }
    Ok((nll / count as f64, count))
}
