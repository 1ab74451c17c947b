//! `meditron quantize`: GPTQ (spec: ../shared/specs/gptq.md) of a Hugging Face Llama model,
//! one decoder layer at a time, written as an AutoGPTQ-layout checkpoint.
//!
//! - [`gptq`]: the algorithm on one matrix (and round-to-nearest on the same grid).
//! - [`layer`]: one decoder layer's f32 forward for calibration, and Hessian accumulation.
//! - [`pipeline`]: the whole model, layer by layer, true-sequential; the loss table.
//! - [`rotate`]: orthogonal rotations folded into the weights before quantizing (`--rotate`).
//! - [`eval`]: perplexity of f16 or GPTQ directories with the same forward (quality table).
//! - [`data`]: calibration text (plain, JSONL, directories) and seeded token windows.
//! - [`store`]: calibration activations in memory or spilled to disk.
//! - [`writer`]: sharded safetensors, configs, tokenizer files.
//! - [`linalg`]: the f32 GEMMs (faer) of the calibration forward and the Hessians.

pub mod data;
pub mod eval;
pub mod gptq;
pub mod layer;
pub mod linalg;
pub mod pipeline;
pub mod rotate;
pub mod store;
pub mod writer;

pub use pipeline::{loss_table, quantize_model, Calibration, Method, Options, Summary};
