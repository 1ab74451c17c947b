//! What the server's engine needs from a model, whichever device runs it: its shape, a paged KV
//! cache to admit requests against, and one forward pass over a batch of sequences' tokens
//! (returning logits, or, on a backend that samples on its device, the chosen tokens).

use crate::{BatchToken, ForwardError, KvCache, Llama, ModelConfig, SamplingParams};
use kernels::cpu::ThreadPool;

/// A row of logits the backend is to sample itself, as `Sampler::sample_with` would: the
/// request's penalties applied to the logits, then greedy argmax or the filtered draw.
pub struct SampleRow<'a> {
    pub params: &'a SamplingParams,
    /// The request's next `Sampler::next_uniform` (unused when greedy).
    pub uniform: f32,
    /// Every token of the sequence so far (prompt and generated), for the repetition penalty.
    pub context: &'a [u32],
    /// The generated tokens, for the frequency and presence penalties.
    pub generated: &'a [u32],
    /// Alternatives to return, at most `Forward::device_top_n`.
    pub top_n: usize,
}

/// What a device sampled for a row: the token, its log-probability under the penalized logits
/// (log-softmax, no temperature: what the engine's `score` computes on the host) and the
/// `top_n` most likely tokens with theirs, most likely first, ties by lower id.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

pub trait Forward {
    fn config(&self) -> &ModelConfig;
    /// A cache of `max_tokens` token slots (block bookkeeping for a device backend).
    fn new_cache(&self, max_tokens: usize) -> KvCache;
    /// Logits of the tokens marked `logits`, in batch order: (n_marked, n_vocab). See
    /// [`Llama::forward`] for the rules on positions.
    fn forward(
        &mut self,
        batch: &[BatchToken],
        cache: &mut KvCache,
        pool: &ThreadPool,
    ) -> Result<Vec<f32>, ForwardError>;
    /// Hands back logits returned by `forward` once read, so that the next pass can reuse the
    /// buffer; the default drops them.
    fn recycle_logits(&mut self, logits: Vec<f32>) {
        drop(logits);
    }
    /// How a step mixes prompts with decode rows: None keeps the engine's policy for the CPU
    /// (a step costs about the same per token, so prompts go in small chunks every step);
    /// Some((chunk, hold)) lets a step take up to `chunk` prompt tokens while others decode and
    /// holds waiting prompts back for up to `hold` decode steps until `chunk` tokens wait, so
    /// that a GPU, which reads every weight once per step whatever its rows, prefills them
    /// together instead of slowing every step.
    fn prefill_batching(&self) -> Option<(usize, usize)> {
        None
    }
    /// Some(most alternatives per row) when the backend samples on its device
    /// (`forward_sampled`); None (the default) when only logits come back.
    fn device_top_n(&self) -> Option<usize> {
        None
    }
    /// As `forward`, for a backend with `device_top_n`: `rows` has one entry per token marked
    /// `logits`, in batch order; a `Some` row is sampled on the device and only its `Sampled`
    /// comes back (in order), a `None` row returns its logits as `forward` does (in order).
    fn forward_sampled(
        &mut self,
        batch: &[BatchToken],
        cache: &mut KvCache,
        pool: &ThreadPool,
        rows: &[Option<SampleRow>],
    ) -> Result<(Vec<f32>, Vec<Sampled>), ForwardError> {
        let _ = (batch, cache, pool, rows);
        Err(ForwardError::Device(
            "this backend does not sample on its device".into(),
        ))
    }
}

impl Forward for Llama {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn new_cache(&self, max_tokens: usize) -> KvCache {
        Llama::new_cache(self, max_tokens)
    }
    fn forward(
        &mut self,
        batch: &[BatchToken],
        cache: &mut KvCache,
        pool: &ThreadPool,
    ) -> Result<Vec<f32>, ForwardError> {
        Llama::forward(self, batch, cache, pool)
    }
    fn recycle_logits(&mut self, logits: Vec<f32>) {
        Llama::recycle_logits(self, logits)
    }
}
