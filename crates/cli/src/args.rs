//! Flags shared by several commands: which model, how many threads, how to sample.

use crate::model_path;
use anyhow::{bail, Context, Result};
use kernels::cpu::ThreadPool;
use model::load::LoadedModel;
use model::SamplingParams;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A .gguf file or a Hugging Face model directory; the built-in default model if absent
    #[arg(long, short = 'm', alias = "model-id")]
    pub model: Option<String>,
    /// Worker threads (default: all cores)
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Tokens of context to allocate (default: the model's context length, at most 4096)
    #[arg(long, short = 'c')]
    pub ctx_size: Option<usize>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        let path = model_path::resolve(self.model.as_deref())?;
        let loaded = model::load::load(&path)
            .with_context(|| format!("loading model {}", path.display()))?;
        tracing::info!("loaded {} ({})", path.display(), loaded.describe());
        Ok(loaded)
    }

    pub fn pool(&self) -> Result<ThreadPool> {
        match self.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(n) => Ok(ThreadPool::new(n)),
            None => Ok(ThreadPool::with_default_threads()),
        }
    }

    pub fn context(&self, model: &LoadedModel) -> Result<usize> {
        let max = model.model.config.max_context;
        match self.ctx_size {
            Some(0) => bail!("--ctx-size must be at least 1"),
            Some(n) if n > max => {
                bail!("--ctx-size {n} is larger than the model's context length {max}")
            }
            Some(n) => Ok(n),
            None => Ok(max.min(4096)),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 means greedy decoding
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (1: off)
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Locally typical sampling mass (1: off)
    #[arg(long, default_value_t = 1.0)]
    pub typical_p: f32,
    /// Penalty for tokens already in the context, as Hugging Face's (1: off)
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Random seed (default: from the clock); the same seed gives the same text
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the text contains this (repeatable)
    #[arg(long)]
    pub stop: Vec<String>,
    /// Most tokens to generate
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_new_tokens: usize,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplingParams> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            bail!("--temperature must be 0 (greedy) or positive, got {t}");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        if !(self.typical_p > 0.0 && self.typical_p <= 1.0) {
            bail!("--typical-p must be in (0, 1], got {}", self.typical_p);
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            bail!(
                "--repetition-penalty must be positive, got {}",
                self.repetition_penalty
            );
        }
        if self.max_new_tokens == 0 {
            bail!("--max-new-tokens must be at least 1");
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        tracing::info!("sampling seed {seed}");
        Ok(SamplingParams {
            do_sample: t > 0.0,
            temperature: if t > 0.0 { t } else { 1.0 },
            top_k: self.top_k,
            top_p: self.top_p,
            typical_p: self.typical_p,
            repetition_penalty: self.repetition_penalty,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed,
        })
    }
}
