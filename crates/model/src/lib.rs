//! Llama-family models on the CPU: configuration, weights, the forward pass, the KV cache,
//! sampling and the generation loop.

pub mod backend;
pub mod config;
pub mod convert;
pub mod generate;
pub mod grammar;
pub mod huge_pages;
pub mod kv_cache;
pub mod llama;
pub mod load;
pub mod sampler;
pub mod weights;

pub use backend::{Forward, SampleRow, Sampled};
pub use config::ModelConfig;
pub use kv_cache::{KvCache, SeqId};
pub use llama::{BatchToken, ForwardError, Llama};
pub use sampler::{Sampler, SamplingParams};
