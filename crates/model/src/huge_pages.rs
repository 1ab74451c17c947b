//! Large buffers on transparent huge pages: the packed weights (read in full for every token)
//! and the KV cache (read in full for every sequence of a step).
//!
//! With 4 KiB pages a 96 MB model is 24,000 pages, so a decode step takes as many TLB misses,
//! each a page walk (two-dimensional inside a VM). Linux's default THP mode, `madvise`, gives
//! huge pages only to mappings that ask: measured on the 2-core dev VM (benches/NOTES.md),
//! asking made single-stream decode ~1.3x faster. Best effort: where the kernel or the OS says
//! no, the buffer is the same memory on small pages.

/// A zero-filled buffer of `len` bytes, 8-byte aligned (page-aligned when mapped).
pub struct HugeBuffer {
    storage: Storage,
    len: usize,
}

enum Storage {
    /// Anonymous mapping advised for huge pages; zero pages until written.
    Mapped(memmap2::MmapMut),
    /// Fallback when a mapping cannot be made (and for empty buffers).
    Heap(Vec<u64>),
}

impl HugeBuffer {
    pub fn zeroed(len: usize) -> HugeBuffer {
        let storage = match (len > 0).then(|| memmap2::MmapMut::map_anon(len)) {
            Some(Ok(map)) => {
                #[cfg(target_os = "linux")]
                {
                    // Failure (THP disabled, old kernel) only means small pages.
                    let _ = map.advise(memmap2::Advice::HugePage);
                }
                Storage::Mapped(map)
            }
            _ => Storage::Heap(vec![0u64; len.div_ceil(8)]),
        };
        HugeBuffer { storage, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Storage::Mapped(m) => &mut m[..self.len],
            Storage::Heap(v) => &mut bytes_of_mut(v)[..self.len],
        }
    }

    /// The buffer as u16 values (`len / 2` of them).
    pub fn as_u16(&self) -> &[u16] {
        let b = self.as_ref();
        // SAFETY: the storage is at least 8-byte aligned (a page, or a Vec<u64>) and holds
        // `len` initialized bytes; every bit pattern is a valid u16.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u16, b.len() / 2) }
    }

    pub fn as_u16_mut(&mut self) -> &mut [u16] {
        let b = self.as_mut_slice();
        // SAFETY: as in `as_u16`, and the borrow of `self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut u16, b.len() / 2) }
    }
}

impl AsRef<[u8]> for HugeBuffer {
    fn as_ref(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped(m) => &m[..self.len],
            Storage::Heap(v) => &bytes_of(v)[..self.len],
        }
    }
}

fn bytes_of(v: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 8) }
}

fn bytes_of_mut(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: as in `bytes_of`; any byte pattern is a valid u64.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 8) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_start_zeroed_and_keep_what_is_written() {
        for len in [0usize, 1, 7, 4096, 3 << 20] {
            let mut b = HugeBuffer::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.as_ref().iter().all(|&x| x == 0), "len {len}");
            if len >= 2 {
                b.as_u16_mut()[len / 2 - 1] = 0xBEEF;
                assert_eq!(b.as_u16()[len / 2 - 1], 0xBEEF);
                assert_eq!(b.as_u16().len(), len / 2);
                b.as_mut_slice()[0] = 7;
                assert_eq!(b.as_ref()[0], 7);
            }
        }
    }
}
