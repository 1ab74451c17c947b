//! The Llama forward pass on the CPU, read top to bottom like the paper: embed, then per layer
//! attention and a SwiGLU MLP around RMSNorms with residual adds, then the final norm and the
//! output projection. Batches hold tokens of any number of sequences at any positions.

use crate::config::ModelConfig;
use crate::kv_cache::{KvCache, SeqId};
use crate::weights::Matrix;
use kernels::cpu::ahead::Ahead;
use kernels::cpu::attention::{attend, attend_causal, CausalScratch};
use kernels::cpu::matmul::matmul_many;
use kernels::cpu::ops::{rms_norm, rope_angles, rope_inv_freq, rope_rotate, swiglu};
use kernels::cpu::{matmul, ThreadPool};

pub struct Layer {
    pub attn_norm: Vec<f32>, // (hidden)
    pub q_proj: Matrix,      // (n_heads * head_dim, hidden)
    pub k_proj: Matrix,      // (n_kv_heads * head_dim, hidden)
    pub v_proj: Matrix,      // (n_kv_heads * head_dim, hidden)
    pub o_proj: Matrix,      // (hidden, n_heads * head_dim)
    /// Present in some Llama-family checkpoints (attention_bias = true).
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    pub ffn_norm: Vec<f32>, // (hidden)
    pub gate_proj: Matrix,  // (intermediate, hidden)
    pub up_proj: Matrix,    // (intermediate, hidden)
    pub down_proj: Matrix,  // (hidden, intermediate)
}

impl Layer {
    pub fn matrices_mut(&mut self) -> [&mut Matrix; 7] {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ]
    }
}

pub struct Llama {
    pub config: ModelConfig,
    pub embed_tokens: Matrix, // (n_vocab, hidden)
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>, // (hidden)
    /// None when tied to `embed_tokens`.
    pub lm_head: Option<Matrix>, // (n_vocab, hidden)
    inv_freq: Vec<f32>, // (rope_dims / 2)
    /// A logits buffer handed back by [`Llama::recycle_logits`], written over by the next
    /// forward pass instead of a new one that would be zeroed first (3 MB a serving step).
    spare_logits: std::sync::Mutex<Vec<f32>>,
}

/// Recycled logits buffers larger than this many floats are dropped (a prompt scored for
/// log-probabilities returns logits for every position).
const MAX_SPARE_LOGITS: usize = 1 << 22;

/// One token of a batch: which sequence, at which position, and whether to return its logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchToken {
    pub token: u32,
    pub seq: SeqId,
    pub pos: usize,
    pub logits: bool,
}

#[derive(Debug)]
pub enum ForwardError {
    TokenOutOfRange {
        token: u32,
        n_vocab: usize,
    },
    ContextExceeded {
        pos: usize,
        max_context: usize,
    },
    Cache(crate::kv_cache::CacheError),
    /// A batch holding one position of a sequence twice.
    RepeatedPosition {
        seq: SeqId,
        pos: usize,
    },
    /// A failure of the device a backend runs on (the GPU), as its message.
    Device(String),
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::TokenOutOfRange { token, n_vocab } => write!(
                f,
                "token id {token} has no embedding (the model has {n_vocab} rows); the tokenizer knows tokens the model was not trained on"
            ),
            ForwardError::ContextExceeded { pos, max_context } => write!(
                f,
                "position {pos} is past the model's context length of {max_context} tokens"
            ),
            ForwardError::Cache(e) => write!(f, "{e}"),
            ForwardError::RepeatedPosition { seq, pos } => write!(
                f,
                "the batch holds position {pos} of sequence {seq} twice"
            ),
            ForwardError::Device(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ForwardError {}

impl From<crate::kv_cache::CacheError> for ForwardError {
    fn from(e: crate::kv_cache::CacheError) -> Self {
        ForwardError::Cache(e)
    }
}

/// Per-call activations, (n_tokens, width) each.
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    out: Vec<f32>,
}

impl Llama {
    /// Assembles a model from loaded weights, checking every shape against the config.
    pub fn new(
        config: ModelConfig,
        embed_tokens: Matrix,
        layers: Vec<Layer>,
        norm: Vec<f32>,
        lm_head: Option<Matrix>,
    ) -> Result<Llama, String> {
        config.validate()?;
        let c = &config;
        embed_tokens.expect_shape(c.n_vocab, c.hidden)?;
        if let Some(h) = &lm_head {
            h.expect_shape(c.n_vocab, c.hidden)?;
        }
        if layers.len() != c.n_layers {
            return Err(format!(
                "model has {} layers, the config says {}",
                layers.len(),
                c.n_layers
            ));
        }
        let vec_len = |name: &str, v: &[f32], n: usize| {
            if v.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "tensor '{name}' has {} values, expected {n}",
                    v.len()
                ))
            }
        };
        vec_len("norm", &norm, c.hidden)?;
        for (i, l) in layers.iter().enumerate() {
            vec_len(&format!("layer {i} attention norm"), &l.attn_norm, c.hidden)?;
            vec_len(&format!("layer {i} ffn norm"), &l.ffn_norm, c.hidden)?;
            l.q_proj.expect_shape(c.q_dim(), c.hidden)?;
            l.k_proj.expect_shape(c.kv_dim(), c.hidden)?;
            l.v_proj.expect_shape(c.kv_dim(), c.hidden)?;
            l.o_proj.expect_shape(c.hidden, c.q_dim())?;
            l.gate_proj.expect_shape(c.intermediate, c.hidden)?;
            l.up_proj.expect_shape(c.intermediate, c.hidden)?;
            l.down_proj.expect_shape(c.hidden, c.intermediate)?;
            if let Some([bq, bk, bv]) = &l.qkv_bias {
                vec_len(&format!("layer {i} q bias"), bq, c.q_dim())?;
                vec_len(&format!("layer {i} k bias"), bk, c.kv_dim())?;
                vec_len(&format!("layer {i} v bias"), bv, c.kv_dim())?;
            }
        }
        let inv_freq = rope_inv_freq(c.rope_theta, c.rope_dims);
        Ok(Llama {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            spare_logits: Default::default(),
        })
    }

    /// Takes back logits returned by [`Llama::forward`] once read, for the next pass to fill.
    pub fn recycle_logits(&self, logits: Vec<f32>) {
        if logits.capacity() <= MAX_SPARE_LOGITS {
            *self.spare_logits.lock().unwrap_or_else(|p| p.into_inner()) = logits;
        }
    }

    pub fn new_cache(&self, max_tokens: usize) -> KvCache {
        KvCache::new(self.config.n_layers, self.config.kv_dim(), max_tokens)
    }

    /// Bytes of weights read to decode one token (every matrix once, one embedding row).
    pub fn weight_bytes_per_token(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [
                    &l.q_proj,
                    &l.k_proj,
                    &l.v_proj,
                    &l.o_proj,
                    &l.gate_proj,
                    &l.up_proj,
                    &l.down_proj,
                ]
                .iter()
                .map(|m| m.size_bytes())
                .sum::<usize>()
            })
            .sum();
        let head = self
            .lm_head
            .as_ref()
            .unwrap_or(&self.embed_tokens)
            .size_bytes();
        layers + head + self.embed_tokens.size_bytes() / self.config.n_vocab
    }

    /// Runs the batch, storing its keys and values in `cache`, and returns the logits of the
    /// tokens marked `logits`, in batch order: (n_marked, n_vocab).
    ///
    /// Each sequence's positions must continue where its cache ends (or rewrite from a
    /// position the caller truncated to), in increasing order within the batch.
    pub fn forward(
        &self,
        batch: &[BatchToken],
        cache: &mut KvCache,
        pool: &ThreadPool,
    ) -> Result<Vec<f32>, ForwardError> {
        Self::check_and_reserve(&self.config, batch, cache)?;
        // Long batches run in pieces: the same results (each piece's tokens see the cache the
        // earlier pieces wrote), with activation scratch bounded by the piece.
        if batch.len() <= FORWARD_PIECE {
            return self.forward_piece(batch, cache, pool);
        }
        let mut logits = Vec::new();
        for piece in batch.chunks(FORWARD_PIECE) {
            logits.extend(self.forward_piece(piece, cache, pool)?);
        }
        Ok(logits)
    }

    /// Refuses tokens outside the vocabulary and positions past the context, then makes room
    /// for the batch's positions in `cache` ([`Llama::reserve_positions`]): what every
    /// forward pass (CPU or GPU) does before touching a layer.
    pub fn check_and_reserve(
        c: &ModelConfig,
        batch: &[BatchToken],
        cache: &mut KvCache,
    ) -> Result<(), ForwardError> {
        for t in batch {
            if t.token as usize >= c.n_vocab {
                return Err(ForwardError::TokenOutOfRange {
                    token: t.token,
                    n_vocab: c.n_vocab,
                });
            }
            if t.pos >= c.max_context {
                return Err(ForwardError::ContextExceeded {
                    pos: t.pos,
                    max_context: c.max_context,
                });
            }
        }
        // Each token's keys and values are written by its own thread: no two may share a slot.
        let mut at: Vec<(SeqId, usize)> = batch.iter().map(|t| (t.seq, t.pos)).collect();
        at.sort_unstable();
        if let Some(w) = at.windows(2).find(|w| w[0] == w[1]) {
            let (seq, pos) = w[0];
            return Err(ForwardError::RepeatedPosition { seq, pos });
        }
        Self::reserve_positions(batch, cache)
    }

    /// [`Llama::forward`] on positions already reserved.
    fn forward_piece(
        &self,
        batch: &[BatchToken],
        cache: &mut KvCache,
        pool: &ThreadPool,
    ) -> Result<Vec<f32>, ForwardError> {
        let c = &self.config;
        let n = batch.len();
        let mut s = Scratch {
            x: vec![0.0; n * c.hidden],
            h: vec![0.0; n * c.hidden],
            q: vec![0.0; n * c.q_dim()],
            k: vec![0.0; n * c.kv_dim()],
            v: vec![0.0; n * c.kv_dim()],
            attn: vec![0.0; n * c.q_dim()],
            gate: vec![0.0; n * c.intermediate],
            up: vec![0.0; n * c.intermediate],
            out: vec![0.0; n * c.hidden],
        };
        let embed = self.embed_tokens.view();
        for (t, x) in batch.iter().zip(s.x.chunks_exact_mut(c.hidden)) {
            embed.dequantize_row(t.token as usize, x);
        }
        // Each token's RoPE angles, once for every layer and for both q and k.
        let half = self.inv_freq.len();
        let mut angles = vec![(0f32, 0f32); n * half];
        for (t, a) in batch.iter().zip(angles.chunks_exact_mut(half.max(1))) {
            rope_angles(t.pos, &self.inv_freq, a);
        }

        // The batch's decode tokens (tiles of one), whose caches the layers prefetch.
        let decode: Vec<usize> = prefill_tiles(batch)
            .into_iter()
            .filter_map(|(i, t)| (t == 1).then_some(i))
            .collect();

        for (li, layer) in self.layers.iter().enumerate() {
            // ---- attention ----
            // The previous layer's MLP output joins the residual here, with the norm.
            let pending = (li > 0).then_some(&s.out[..]);
            residual_norm(
                pool,
                &mut s.x,
                pending,
                &layer.attn_norm,
                c.rms_eps,
                &mut s.h,
            );
            // One pool job for the three projections of the same input.
            matmul_many(
                pool,
                &mut [
                    (layer.q_proj.view(), &mut s.q[..]),
                    (layer.k_proj.view(), &mut s.k[..]),
                    (layer.v_proj.view(), &mut s.v[..]),
                ],
                &s.h,
                n,
                None,
            );
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                add_bias(&mut s.q, bq);
                add_bias(&mut s.k, bk);
                add_bias(&mut s.v, bv);
            }
            // RoPE and the cache writes, token by token, split over the pool.
            let slots = batch
                .iter()
                .map(|t| cache.slot(t.seq, li, t.pos))
                .collect::<Result<Vec<_>, _>>()?;
            let writer = cache.slot_writer();
            let (qs, ks) = (SharedSlice(s.q.as_mut_ptr()), SharedSlice(s.k.as_mut_ptr()));
            pool.for_ranges(n, 1, |rows| {
                for i in rows {
                    // SAFETY: token i's rows of q and k, and its slot (distinct positions of
                    // the batch), belong to this task alone.
                    let (q, k) = unsafe { (qs.row(i, c.q_dim()), ks.row(i, c.kv_dim())) };
                    let a = &angles[i * half..(i + 1) * half];
                    self.rope_heads(q, a);
                    self.rope_heads(k, a);
                    let v = &s.v[i * c.kv_dim()..(i + 1) * c.kv_dim()];
                    // SAFETY: the slot came from this cache, and the batch's positions are
                    // distinct (`check_and_reserve`).
                    unsafe { writer.write(slots[i], k, v) };
                }
            });
            self.attention(li, batch, cache, &s.q, &mut s.attn, pool)?;
            // The next layer's caches, asked for by this layer's matrix products, in shares
            // proportional to their weights.
            let ahead = self.next_layer_cache(li + 1, batch, &decode, cache)?;
            let (wo, wgu, wd) = (c.q_dim(), 2 * c.intermediate, c.intermediate);
            let share = |from: usize, to: usize| {
                (!ahead.is_empty()).then(|| ahead.window(from, to, wo + wgu + wd))
            };
            matmul_many(
                pool,
                &mut [(layer.o_proj.view(), &mut s.out[..])],
                &s.attn,
                n,
                share(0, wo),
            );

            // ---- MLP ----
            residual_norm(
                pool,
                &mut s.x,
                Some(&s.out),
                &layer.ffn_norm,
                c.rms_eps,
                &mut s.h,
            );
            matmul_many(
                pool,
                &mut [
                    (layer.gate_proj.view(), &mut s.gate[..]),
                    (layer.up_proj.view(), &mut s.up[..]),
                ],
                &s.h,
                n,
                share(wo, wo + wgu),
            );
            pooled_swiglu(pool, &mut s.gate, &s.up, c.intermediate);
            matmul_many(
                pool,
                &mut [(layer.down_proj.view(), &mut s.out[..])],
                &s.gate,
                n,
                share(wo + wgu, wo + wgu + wd),
            );
        }
        if !self.layers.is_empty() {
            add_in_place(&mut s.x, &s.out);
        }

        // ---- output ----
        let marked: Vec<usize> = (0..n).filter(|&i| batch[i].logits).collect();
        let mut h = vec![0f32; marked.len() * c.hidden];
        for (&i, out) in marked.iter().zip(h.chunks_exact_mut(c.hidden)) {
            rms_norm(
                &s.x[i * c.hidden..(i + 1) * c.hidden],
                &self.norm,
                c.rms_eps,
                out,
            );
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        // Every element is written by the matmul: a recycled buffer is not zeroed again.
        let mut logits =
            std::mem::take(&mut *self.spare_logits.lock().unwrap_or_else(|p| p.into_inner()));
        logits.resize(marked.len() * c.n_vocab, 0.0);
        matmul(pool, &head.view(), &h, marked.len(), &mut logits);
        Ok(logits)
    }

    /// Runs `tokens` as one new sequence (positions from 0, in a cache of its own) and returns
    /// the logits of the positions `want_logits` selects, in order: (n_selected, n_vocab).
    pub fn forward_sequence(
        &self,
        tokens: &[u32],
        pool: &ThreadPool,
        want_logits: impl Fn(usize) -> bool,
    ) -> Result<Vec<f32>, ForwardError> {
        let mut cache = self.new_cache(tokens.len());
        let seq = cache.add_sequence();
        let batch: Vec<BatchToken> = tokens
            .iter()
            .enumerate()
            .map(|(pos, &token)| BatchToken {
                token,
                seq,
                pos,
                logits: want_logits(pos),
            })
            .collect();
        self.forward(&batch, &mut cache, pool)
    }

    /// Grows each sequence's cache to cover the batch's positions before any layer runs, so a
    /// full cache fails the whole batch up front instead of half-way through.
    /// Makes room in `cache` for the batch's positions: each sequence continues where its cache
    /// ends, or is truncated to its first position in the batch (a rewrite).
    pub fn reserve_positions(
        batch: &[BatchToken],
        cache: &mut KvCache,
    ) -> Result<(), ForwardError> {
        let mut seqs: Vec<(SeqId, usize)> = Vec::new();
        for t in batch {
            match seqs.iter_mut().find(|(s, _)| *s == t.seq) {
                Some(e) => e.1 = e.1.max(t.pos + 1),
                None => seqs.push((t.seq, t.pos + 1)),
            }
        }
        for (seq, end) in seqs {
            let len = cache.seq_len(seq)?;
            let first = batch
                .iter()
                .filter(|t| t.seq == seq)
                .map(|t| t.pos)
                .min()
                .unwrap_or(len);
            if first > len {
                return Err(crate::kv_cache::CacheError::Gap {
                    seq,
                    expected: len,
                    got: first,
                }
                .into());
            }
            if first < len {
                cache.truncate(seq, first)?;
            }
            cache.append(seq, end - first)?;
        }
        Ok(())
    }

    /// RoPE of every head of `x` by one position's angles ([`rope_angles`]).
    fn rope_heads(&self, x: &mut [f32], angles: &[(f32, f32)]) {
        let c = &self.config;
        if c.rope_dims == c.head_dim {
            rope_rotate(x, c.head_dim, angles, c.rope_style);
        } else {
            for head in x.chunks_exact_mut(c.head_dim) {
                rope_rotate(&mut head[..c.rope_dims], c.rope_dims, angles, c.rope_style);
            }
        }
    }

    /// The cache rows that `layer`'s attention will read for the decode tokens `decode` (indices
    /// into `batch`), when there are enough of them for the attention to wait on memory (none
    /// otherwise).
    fn next_layer_cache<'c>(
        &self,
        layer: usize,
        batch: &[BatchToken],
        decode: &[usize],
        cache: &'c KvCache,
    ) -> Result<Ahead<'c>, ForwardError> {
        let mut ahead = Ahead::default();
        if layer >= self.layers.len() || decode.len() < AHEAD_FROM_DECODE_TOKENS {
            return Ok(ahead);
        }
        for &i in decode {
            let t = &batch[i];
            for run in cache.view(t.seq)?.runs(layer, t.pos + 1) {
                for half in [run.keys, run.values] {
                    // SAFETY: f16 is two plain bytes.
                    ahead.push(unsafe {
                        std::slice::from_raw_parts(half.as_ptr() as *const u8, half.len() * 2)
                    });
                }
            }
        }
        Ok(ahead)
    }

    /// Causal grouped-query attention of every (token, head) over its sequence's cache.
    fn attention(
        &self,
        layer: usize,
        batch: &[BatchToken],
        cache: &KvCache,
        q: &[f32],       // (n, n_heads * head_dim)
        out: &mut [f32], // (n, n_heads * head_dim)
        pool: &ThreadPool,
    ) -> Result<(), ForwardError> {
        let c = &self.config;
        let hd = c.head_dim;
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let views = batch
            .iter()
            .map(|t| cache.view(t.seq))
            .collect::<Result<Vec<_>, _>>()?;
        let out_ptr = SharedSlice(out.as_mut_ptr());
        let group_len = group * hd;
        // A decode token is one job for all its key/value heads (one walk over its cache); a
        // prefill tile is one job per key/value head (the tile kernel converts that head's
        // cache once for all its tokens). Longest contexts first, so that the last jobs to be
        // claimed are short and the threads finish together: one task per job, so that the
        // threads' last tasks differ by at most one short job.
        let mut jobs: Vec<(usize, usize, Option<usize>)> = Vec::new();
        for (i, t) in prefill_tiles(batch) {
            if t == 1 {
                jobs.push((i, t, None));
            } else {
                jobs.extend((0..c.n_kv_heads).map(|h| (i, t, Some(h))));
            }
        }
        jobs.sort_by_key(|&(i, t, _)| std::cmp::Reverse(batch[i].pos + t));
        pool.parallel_for(jobs.len(), |job| {
            ATTENTION_SCRATCH.with_borrow_mut(|(scores, scratch, acc)| {
                let (i, t, kvh) = jobs[job];
                let runs = views[i].runs(layer, batch[i].pos + t);
                match kvh {
                    None => {
                        let q0 = i * c.q_dim();
                        acc.resize(c.q_dim(), 0.0);
                        attend(
                            &q[q0..q0 + c.q_dim()],
                            &runs,
                            0,
                            c.kv_dim(),
                            hd,
                            c.n_kv_heads,
                            scale,
                            scores,
                            acc,
                        );
                        // SAFETY: job i owns token i's stretch of `out`.
                        unsafe { out_ptr.write(q0, acc) };
                    }
                    Some(kvh) => {
                        let q0 = i * c.q_dim() + kvh * group_len;
                        acc.resize(t * group_len, 0.0);
                        attend_causal(
                            &q[q0..],
                            c.q_dim(),
                            t,
                            &runs,
                            kvh * hd,
                            c.kv_dim(),
                            hd,
                            scale,
                            batch[i].pos,
                            scratch,
                            acc,
                        );
                        for (k, a) in acc.chunks_exact(group_len).enumerate() {
                            // SAFETY: job (tile, kvh) owns these disjoint stretches of `out`.
                            unsafe { out_ptr.write((i + k) * c.q_dim() + kvh * group_len, a) };
                        }
                    }
                }
            });
        });
        Ok(())
    }
}

thread_local! {
    /// Each thread's attention scratch (scores, tile buffers, outputs), kept between jobs and
    /// steps: allocating it per job zero-filled ~15 MB per 16-sequence decode step.
    static ATTENTION_SCRATCH: std::cell::RefCell<(Vec<f32>, CausalScratch, Vec<f32>)> =
        std::cell::RefCell::new((Vec::new(), CausalScratch::default(), Vec::new()));
}

/// Decode tokens in a step from which each layer's matrix products prefetch the next layer's
/// caches: one sequence's cache is small next to the weights the products read anyway.
const AHEAD_FROM_DECODE_TOKENS: usize = 4;

/// Tokens per forward pass piece: 256 tokens of activations are ~6 MB for SmolLM2 (~60 MB
/// for a 70B), and a piece that long already reuses each weight block for many tokens.
const FORWARD_PIECE: usize = 256;

/// Tokens per attention tile of a prefill: enough to amortize converting the cache, small
/// enough that a few hundred prompt tokens still make several jobs per thread.
const ATTENTION_TILE: usize = 16;

/// The batch cut into (first index, length) runs of one sequence at consecutive positions, at
/// most [`ATTENTION_TILE`] long; a decode token is a run of one.
fn prefill_tiles(batch: &[BatchToken]) -> Vec<(usize, usize)> {
    let mut tiles = Vec::new();
    let mut i = 0;
    while i < batch.len() {
        let mut j = i + 1;
        while j < batch.len()
            && j - i < ATTENTION_TILE
            && batch[j].seq == batch[i].seq
            && batch[j].pos == batch[j - 1].pos + 1
        {
            j += 1;
        }
        tiles.push((i, j - i));
        i = j;
    }
    tiles
}

#[derive(Clone, Copy)]
struct SharedSlice(*mut f32);
unsafe impl Send for SharedSlice {}
unsafe impl Sync for SharedSlice {}

impl SharedSlice {
    /// # Safety
    /// `at..at + v.len()` is in bounds and written by no other thread during the job.
    unsafe fn write(&self, at: usize, v: &[f32]) {
        std::ptr::copy_nonoverlapping(v.as_ptr(), self.0.add(at), v.len());
    }

    /// # Safety
    /// Row `r` of `width` is in bounds and used by no other thread during the job.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, r: usize, width: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(r * width), width)
    }
}

/// For every row of width `weight.len()`: `x += add` (when given), then `h = rms_norm(x)`;
/// rows split over the pool (serial per-row work left the other thread idle in batched
/// decode).
fn residual_norm(
    pool: &ThreadPool,
    x: &mut [f32],
    add: Option<&[f32]>,
    weight: &[f32],
    eps: f32,
    h: &mut [f32],
) {
    let width = weight.len();
    let (xs, hs) = (SharedSlice(x.as_mut_ptr()), SharedSlice(h.as_mut_ptr()));
    pool.for_ranges(x.len() / width, 1, |rows| {
        for r in rows {
            // SAFETY: row r of x and h belongs to this task alone; both hold whole rows.
            let (x, h) = unsafe { (xs.row(r, width), hs.row(r, width)) };
            if let Some(add) = add {
                add_in_place(x, &add[r * width..(r + 1) * width]);
            }
            rms_norm(x, weight, eps, h);
        }
    });
}

/// [`swiglu`] on rows of `width`, split over the pool.
fn pooled_swiglu(pool: &ThreadPool, gate: &mut [f32], up: &[f32], width: usize) {
    let gs = SharedSlice(gate.as_mut_ptr());
    pool.for_ranges(gate.len() / width, 1, |rows| {
        for r in rows {
            // SAFETY: row r of `gate` belongs to this task alone.
            swiglu(unsafe { gs.row(r, width) }, &up[r * width..(r + 1) * width]);
        }
    });
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_with_a_position_twice_is_refused() {
        let c = ModelConfig {
            architecture: "llama".into(),
            n_layers: 1,
            hidden: 64,
            intermediate: 128,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 32,
            n_vocab: 10,
            max_context: 64,
            rope_theta: 10000.0,
            rope_dims: 32,
            rope_style: kernels::cpu::ops::RopeStyle::Halves,
            rms_eps: 1e-5,
            tie_embeddings: true,
        };
        let mut cache = KvCache::new(1, c.kv_dim(), 64);
        let (a, b) = (cache.add_sequence(), cache.add_sequence());
        let tok = |seq, pos| BatchToken {
            token: 1,
            seq,
            pos,
            logits: false,
        };
        let ok = [tok(a, 0), tok(b, 0), tok(a, 1)];
        assert!(Llama::check_and_reserve(&c, &ok, &mut cache).is_ok());
        let twice = [tok(b, 1), tok(a, 2), tok(b, 1)];
        let err = Llama::check_and_reserve(&c, &twice, &mut cache).unwrap_err();
        assert!(
            matches!(err, ForwardError::RepeatedPosition { seq, pos: 1 } if seq == b),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("the batch holds position 1 of sequence {b} twice")
        );
    }
}
