//! The GPTQ layers of a Hugging Face checkpoint: each quantized projection's four tensors read
//! and checked against the config and the model's dimensions, then repacked for the CPU
//! kernels (`kernels::cpu::gptq`).

use crate::weights::Matrix;
use anyhow::{anyhow, Result};
use formats::gptq::{GptqConfig, GptqLinear};
use formats::ModelWeights;

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
    let packed =
        kernels::cpu::gptq::repack(&layer).map_err(|e| anyhow!("tensor '{prefix}.g_idx': {e}"))?;
    Matrix::gptq(&format!("{prefix}.qweight"), packed, n, k).map_err(|e| anyhow!(e))
}
