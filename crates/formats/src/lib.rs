//! Reading (and writing) model files — GGUF, safetensors and Hugging Face `config.json` — with
//! every size, count and offset checked before it is trusted.
//!
//! - [`ggml`]: the ggml tensor types, their block layouts and dequantizers.
//! - [`gguf`]: a hardened GGUF v2/v3 reader over a memory map, and a small writer.
//! - [`safetensors`]: a hardened safetensors reader (single file or sharded) and a writer.
//! - [`hf_config`]: `config.json` of Llama-architecture models, validated.

mod error;
pub mod ggml;
pub mod gguf;
pub mod gptq;
pub mod hf_config;
pub mod safetensors;

pub use error::FormatError;
pub use ggml::{dequantize, GgmlType};
pub use gguf::{ArrayValue, GgufFile, TensorInfo, Value, ValueType};
pub use hf_config::LlamaConfig;
pub use safetensors::{Dtype, ModelWeights, SafeTensorsFile, TensorView};
