//! `meditron quantize`: GPTQ (spec: ../shared/specs/gptq.md) of a Hugging Face Llama model,
//! one decoder layer at a time, written as an AutoGPTQ-layout checkpoint.
//!
//! - [`gptq`]: the algorithm on one matrix (and round-to-nearest on the same grid).
//! - [`linalg`]: the f32 GEMMs (faer) of the calibration forward and the Hessians.

pub mod gptq;
pub mod linalg;
