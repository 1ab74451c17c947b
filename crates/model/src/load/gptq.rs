//! The GPTQ layers of a Hugging Face checkpoint: each quantized projection's four tensors read
//! and checked against the config and the model's dimensions, then repacked for the CPU
//! kernels (`kernels::cpu::gptq`).

use crate::weights::Matrix;
use anyhow::{anyhow, Result};
use formats::gptq::{GptqConfig, GptqLinear};
use formats::ModelWeights;
use kernels::cpu::matmul::WeightFormat;
use kernels::cpu::packed::{self, PackedKind};
use kernels::cpu::Features;

/// The projection at `prefix` (e.g. `model.layers.0.self_attn.q_proj`), `n` outputs by `k`
/// inputs, from its `qweight`/`qzeros`/`scales`/`g_idx`.
pub fn matrix(
    weights: &ModelWeights,
    cfg: &GptqConfig,
    prefix: &str,
    n: usize,
    k: usize,
) -> Result<Matrix> {
    let layer = GptqLinear::read(weights, prefix, cfg, k, n)?;
    if layer.scales.iter().all(|s| s.to_f32() == 0.0) {
        // What a zero-filled (unfinished) download looks like.
        return Err(anyhow!(
            "tensor '{prefix}.scales': every scale is 0 (a corrupted or unfinished checkpoint?)"
        ));
    }
    let mut packed =
        kernels::cpu::gptq::repack(&layer).map_err(|e| anyhow!("tensor '{prefix}.g_idx': {e}"))?;
    let name = format!("{prefix}.qweight");
    // 4 bits: the 16-row interleaved layout of the GGUF Q4 kernels (4x fewer instructions
    // per weight than the row kernels), where the CPU has them.
    if packed.format.bits == 4 && packed::worth_packing(Features::get()) {
        if let Some((kind, data)) = packed::pack_gptq4(&packed.data, n, k) {
            packed.data = data;
            let format = WeightFormat::Packed(kind);
            return Matrix::permuted(&name, format, packed.data, packed.perm, n, k)
                .map_err(|e| anyhow!(e));
        }
    }
    let format = WeightFormat::Gptq(packed.format);
    Matrix::permuted(&name, format, packed.data, packed.perm, n, k).map_err(|e| anyhow!(e))
}

/// The output projection of a GPTQ model of at most 4 bits, as the CPU decodes with it: the
/// checkpoint's fp16 `lm_head` (or tied embedding) rounded to 8 bits and packed, as the GGUF
/// files of the same models store it. For a small model the fp16 head is half of the bytes
/// read per decoded token (SmolLM2-135M: 56 of 112 MB) and the 8-bit copy halves that; for a
/// 70B it is 2%. None keeps the file's head: 8-bit checkpoints (whose users asked for 8 bits),
/// CPUs without the packed kernels, and `MEDITRON_HEAD=file`.
pub fn decode_head(cfg: &GptqConfig, head: &Matrix) -> Option<Matrix> {
    let keep = std::env::var("MEDITRON_HEAD").is_ok_and(|v| v == "file");
    if keep || cfg.bits > 4 || !packed::worth_packing(Features::get()) {
        return None;
    }
    let data = packed::pack_as_q8(&head.view())?;
    let format = WeightFormat::Packed(PackedKind::Q8);
    Matrix::permuted(&head.name, format, data, None, head.rows, head.cols).ok()
}
