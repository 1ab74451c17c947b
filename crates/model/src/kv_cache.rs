//! A paged key/value cache: fixed-size blocks of token slots handed out to sequences on demand,
//! so that many sequences share one bounded pool and a finished one frees its blocks at once.

use crate::huge_pages::HugeBuffer;
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// Token slots per block.
pub const BLOCK_TOKENS: usize = 16;

/// Identifies one sequence in the cache.
pub type SeqId = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheError {
    /// Not enough free blocks for the tokens asked for.
    Full {
        needed_blocks: usize,
        free_blocks: usize,
    },
    UnknownSequence(SeqId),
    /// Positions must be written in order: the next one is `expected`.
    Gap {
        seq: SeqId,
        expected: usize,
        got: usize,
    },
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::Full { needed_blocks, free_blocks } => write!(
                f,
                "KV cache full: {needed_blocks} more blocks of {BLOCK_TOKENS} tokens needed, {free_blocks} free"
            ),
            CacheError::UnknownSequence(s) => write!(f, "KV cache: no sequence {s}"),
            CacheError::Gap { seq, expected, got } => {
                write!(f, "KV cache: sequence {seq} is at position {expected}, cannot write position {got}")
            }
        }
    }
}

impl std::error::Error for CacheError {}

struct Sequence {
    blocks: Vec<u32>,
    len: usize,
}

/// Keys and values of every layer, stored as f16 (what llama.cpp keeps by default: half the
/// memory of f32 at no visible cost in accuracy).
pub struct KvCache {
    n_layers: usize,
    kv_dim: usize,
    // (n_blocks, n_layers, 2 (k, v), BLOCK_TOKENS, kv_dim) f16 bit patterns, on huge pages
    // where the OS allows. Untouched zero pages: memory becomes resident only as blocks are
    // used.
    data: HugeBuffer,
    n_blocks: usize,
    free: Vec<u32>,
    seqs: Vec<Option<Sequence>>,
}

impl KvCache {
    /// Room for `max_tokens` tokens in all (rounded up to whole blocks).
    pub fn new(n_layers: usize, kv_dim: usize, max_tokens: usize) -> KvCache {
        let n_blocks = max_tokens.div_ceil(BLOCK_TOKENS).max(1);
        let len = n_blocks * n_layers * 2 * BLOCK_TOKENS * kv_dim;
        KvCache {
            n_layers,
            kv_dim,
            data: HugeBuffer::zeroed(len * 2),
            n_blocks,
            free: (0..n_blocks as u32).rev().collect(),
            seqs: Vec::new(),
        }
    }

    /// Block bookkeeping only, for a backend that keeps the keys and values elsewhere (the GPU)
    /// at the block indices this cache hands out (`blocks`); `write` and `view` are unusable.
    pub fn pages_only(max_tokens: usize) -> KvCache {
        KvCache::new(0, 0, max_tokens)
    }

    /// The blocks holding a sequence's positions, in order (position p is in block
    /// `blocks[p / BLOCK_TOKENS]`).
    pub fn blocks(&self, id: SeqId) -> Result<&[u32], CacheError> {
        Ok(&self.seq(id)?.blocks)
    }

    pub fn add_sequence(&mut self) -> SeqId {
        let seq = Sequence {
            blocks: Vec::new(),
            len: 0,
        };
        match self.seqs.iter().position(Option::is_none) {
            Some(i) => {
                self.seqs[i] = Some(seq);
                i
            }
            None => {
                self.seqs.push(Some(seq));
                self.seqs.len() - 1
            }
        }
    }

    /// Frees the sequence and all its blocks.
    pub fn remove_sequence(&mut self, id: SeqId) {
        if let Some(seq) = self.seqs.get_mut(id).and_then(Option::take) {
            self.free.extend(seq.blocks);
        }
    }

    /// Forgets positions `len..`, keeping the first `len` (e.g. a shared prompt prefix).
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<(), CacheError> {
        let seq = self.seq_mut(id)?;
        if len < seq.len {
            seq.len = len;
            let keep = len.div_ceil(BLOCK_TOKENS);
            let freed: Vec<u32> = seq.blocks.drain(keep..).collect();
            self.free.extend(freed);
        }
        Ok(())
    }

    pub fn seq_len(&self, id: SeqId) -> Result<usize, CacheError> {
        Ok(self.seq(id)?.len)
    }

    pub fn free_tokens(&self) -> usize {
        self.free.len() * BLOCK_TOKENS
    }

    pub fn capacity_tokens(&self) -> usize {
        self.n_blocks * BLOCK_TOKENS
    }

    /// Makes positions `seq_len .. seq_len + n` writable (allocating blocks) and counts them in
    /// the sequence's length. Nothing is allocated if the whole request does not fit.
    pub fn append(&mut self, id: SeqId, n: usize) -> Result<std::ops::Range<usize>, CacheError> {
        let free_blocks = self.free.len();
        let seq = self.seq(id)?;
        let new_len = seq.len + n;
        let needed = new_len
            .div_ceil(BLOCK_TOKENS)
            .saturating_sub(seq.blocks.len());
        if needed > free_blocks {
            return Err(CacheError::Full {
                needed_blocks: needed,
                free_blocks,
            });
        }
        let grabbed: Vec<u32> = (0..needed).filter_map(|_| self.free.pop()).collect();
        let seq = self.seq_mut(id)?;
        seq.blocks.extend(grabbed);
        let start = seq.len;
        seq.len = new_len;
        Ok(start..new_len)
    }

    fn seq(&self, id: SeqId) -> Result<&Sequence, CacheError> {
        self.seqs
            .get(id)
            .and_then(Option::as_ref)
            .ok_or(CacheError::UnknownSequence(id))
    }

    fn seq_mut(&mut self, id: SeqId) -> Result<&mut Sequence, CacheError> {
        self.seqs
            .get_mut(id)
            .and_then(Option::as_mut)
            .ok_or(CacheError::UnknownSequence(id))
    }

    fn block_stride(&self) -> usize {
        self.n_layers * 2 * BLOCK_TOKENS * self.kv_dim
    }

    /// Offset of (layer, k or v, position) of a sequence whose block table is `blocks`.
    #[inline]
    fn offset(&self, blocks: &[u32], layer: usize, value: bool, pos: usize) -> usize {
        let block = blocks[pos / BLOCK_TOKENS] as usize;
        block * self.block_stride()
            + (layer * 2 + usize::from(value)) * BLOCK_TOKENS * self.kv_dim
            + (pos % BLOCK_TOKENS) * self.kv_dim
    }

    /// Stores one token's keys and values (each `kv_dim` long) at an appended position.
    pub fn write(
        &mut self,
        id: SeqId,
        layer: usize,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), CacheError> {
        let slot = self.slot(id, layer, pos)?;
        let kv = self.kv_dim;
        let data = self.data.as_u16_mut();
        store_f16(&mut data[slot.keys..slot.keys + kv], k);
        store_f16(&mut data[slot.values..slot.values + kv], v);
        Ok(())
    }

    /// Where [`KvCache::write`] stores (sequence, layer, appended position).
    pub fn slot(&self, id: SeqId, layer: usize, pos: usize) -> Result<Slot, CacheError> {
        let seq = self.seq(id)?;
        if pos >= seq.len {
            return Err(CacheError::Gap {
                seq: id,
                expected: seq.len,
                got: pos,
            });
        }
        Ok(Slot {
            keys: self.offset(&seq.blocks, layer, false, pos),
            values: self.offset(&seq.blocks, layer, true, pos),
        })
    }

    /// A handle that stores rows at [`Slot`]s from several threads at once (a batch's tokens
    /// write their keys and values in parallel).
    pub fn slot_writer(&mut self) -> SlotWriter<'_> {
        let data = self.data.as_u16_mut();
        SlotWriter {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            kv_dim: self.kv_dim,
            _cache: std::marker::PhantomData,
        }
    }

    /// A read-only view of one sequence for the attention kernel.
    pub fn view(&self, id: SeqId) -> Result<SeqView<'_>, CacheError> {
        let seq = self.seq(id)?;
        Ok(SeqView {
            cache: self,
            blocks: &seq.blocks,
            len: seq.len,
        })
    }
}

/// Offsets (in halves) of one position's keys and values in the cache.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    keys: usize,
    values: usize,
}

/// See [`KvCache::slot_writer`].
pub struct SlotWriter<'a> {
    ptr: *mut u16,
    len: usize,
    kv_dim: usize,
    _cache: std::marker::PhantomData<&'a mut KvCache>,
}

// SAFETY: writes go through `write`, whose callers keep threads on distinct slots.
unsafe impl Sync for SlotWriter<'_> {}

impl SlotWriter<'_> {
    /// Stores keys and values (each `kv_dim` long) at `slot`.
    /// # Safety
    /// `slot` came from [`KvCache::slot`] on this cache, and no other thread writes it
    /// meanwhile.
    pub unsafe fn write(&self, slot: Slot, k: &[f32], v: &[f32]) {
        for (at, src) in [(slot.keys, k), (slot.values, v)] {
            assert!(at + self.kv_dim <= self.len && src.len() == self.kv_dim);
            store_f16(
                std::slice::from_raw_parts_mut(self.ptr.add(at), self.kv_dim),
                src,
            );
        }
    }
}

/// `dst = src` as f16 bit patterns (vectorized where the CPU has F16C).
fn store_f16(dst: &mut [u16], src: &[f32]) {
    dst.reinterpret_cast_mut::<f16>()
        .convert_from_f32_slice(src);
}

/// One sequence's keys and values, read position by position.
pub struct SeqView<'a> {
    cache: &'a KvCache,
    blocks: &'a [u32],
    pub len: usize,
}

impl<'a> SeqView<'a> {
    /// Positions `0..n` of `layer` as runs of consecutive rows, one per block.
    pub fn runs(&self, layer: usize, n: usize) -> Vec<kernels::cpu::attention::KvRun<'a>> {
        let kv = self.cache.kv_dim;
        (0..n.div_ceil(BLOCK_TOKENS))
            .map(|b| {
                let len = (n - b * BLOCK_TOKENS).min(BLOCK_TOKENS);
                let ko = self
                    .cache
                    .offset(self.blocks, layer, false, b * BLOCK_TOKENS);
                let vo = self
                    .cache
                    .offset(self.blocks, layer, true, b * BLOCK_TOKENS);
                kernels::cpu::attention::KvRun {
                    keys: self.cache.data.as_u16()[ko..ko + len * kv].reinterpret_cast(),
                    values: self.cache.data.as_u16()[vo..vo + len * kv].reinterpret_cast(),
                    n: len,
                }
            })
            .collect()
    }

    /// Keys of `layer` at `pos`: `kv_dim` values, head after head.
    #[inline]
    pub fn key(&self, layer: usize, pos: usize) -> &[f16] {
        let o = self.cache.offset(self.blocks, layer, false, pos);
        self.cache.data.as_u16()[o..o + self.cache.kv_dim].reinterpret_cast()
    }

    #[inline]
    pub fn value(&self, layer: usize, pos: usize) -> &[f16] {
        let o = self.cache.offset(self.blocks, layer, true, pos);
        self.cache.data.as_u16()[o..o + self.cache.kv_dim].reinterpret_cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_keep_their_own_values_across_blocks() {
        let mut c = KvCache::new(2, 4, 96);
        let a = c.add_sequence();
        let b = c.add_sequence();
        for pos in 0..40 {
            for (id, base) in [(a, 0.0), (b, 1000.0)] {
                c.append(id, 1).unwrap();
                for layer in 0..2 {
                    let k = [base + pos as f32, layer as f32, 0.5, -1.0];
                    let v = [-(base + pos as f32), 0.0, 0.0, layer as f32];
                    c.write(id, layer, pos, &k, &v).unwrap();
                }
            }
        }
        let view = c.view(b).unwrap();
        assert_eq!(view.len, 40);
        assert_eq!(view.key(1, 33)[0].to_f32(), 1033.0);
        assert_eq!(view.key(1, 33)[1].to_f32(), 1.0);
        assert_eq!(view.value(0, 17)[0].to_f32(), -1017.0);
        assert_eq!(c.view(a).unwrap().key(0, 39)[0].to_f32(), 39.0);
    }

    #[test]
    fn full_cache_refuses_without_leaking_and_frees_on_remove() {
        let mut c = KvCache::new(1, 2, 32);
        let a = c.add_sequence();
        let b = c.add_sequence();
        c.append(a, 20).unwrap();
        assert_eq!(
            c.append(b, 20),
            Err(CacheError::Full {
                needed_blocks: 2,
                free_blocks: 0
            })
        );
        assert_eq!(c.seq_len(b), Ok(0));
        c.remove_sequence(a);
        assert_eq!(c.free_tokens(), 32);
        c.append(b, 32).unwrap();
        c.truncate(b, 5).unwrap();
        assert_eq!(c.free_tokens(), 16);
        assert!(matches!(
            c.write(b, 0, 5, &[0.0; 2], &[0.0; 2]),
            Err(CacheError::Gap { .. })
        ));
    }
}
