//! What the server's engine needs from a model, whichever device runs it: its shape, a paged KV
//! cache to admit requests against, and one forward pass over a batch of sequences' tokens.

use crate::{BatchToken, ForwardError, KvCache, Llama, ModelConfig};
use kernels::cpu::ThreadPool;

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
    /// How a step mixes prompts with decode rows: None keeps the engine's policy for the CPU
    /// (a step costs about the same per token, so prompts go in small chunks every step);
    /// Some((chunk, hold)) lets a step take up to `chunk` prompt tokens while others decode and
    /// holds waiting prompts back for up to `hold` decode steps until `chunk` tokens wait, so
    /// that a GPU, which reads every weight once per step whatever its rows, prefills them
    /// together instead of slowing every step.
    fn prefill_batching(&self) -> Option<(usize, usize)> {
        None
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
}
