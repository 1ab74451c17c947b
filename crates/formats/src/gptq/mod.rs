//! GPTQ checkpoints (AutoGPTQ, GPTQModel, transformers/optimum, TheBloke's repositories):
//! the quantization config in every spelling, the bit packing of `qweight`/`qzeros`, zero
//! points in both checkpoint formats, `g_idx`, a plain dequantizer that is the reference for
//! everything else, and a round-to-nearest checkpoint writer for tests.
//!
//! Spec: ../shared/specs/gptq.md. One quantized linear layer with K inputs, N outputs, b bits
//! and G groups is stored as
//!
//! | tensor    | dtype | shape            |
//! |-----------|-------|------------------|
//! | `qweight` | I32   | `[K*b/32, N]`    |
//! | `qzeros`  | I32   | `[G, N*b/32]`    |
//! | `scales`  | F16   | `[G, N]`         |
//! | `g_idx`   | I32   | `[K]`            |
//!
//! and `w[j, i] = scales[g_idx[i], j] * (q[i, j] - z[g_idx[i], j])` (nn.Linear layout: row `j`
//! is output `j`), with `z = stored + 1` in v1 (`checkpoint_format: "gptq"`) files.

mod config;
mod linear;
mod pack;
pub mod write;

pub use config::{CheckpointFormat, GptqConfig, QUANTIZE_CONFIG_FILE};
pub use linear::{GptqLinear, LinearTensors, RtnParams};
pub use pack::{
    check_bits, pack_qweight, pack_qzeros, packed_len, unpack_qweight, unpack_qzeros, PackError,
    SUPPORTED_BITS,
};

/// The seven projections of a Llama decoder layer that GPTQ quantizes, with their module paths
/// relative to `model.layers.{i}`.
pub const LLAMA_QUANTIZED: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];
