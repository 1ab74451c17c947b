//! Memory that a later, memory-bound phase will read, asked for in L2 by the jobs of an
//! earlier, compute-bound one.
//!
//! In a batched decode step every sequence's key/value cache comes from memory, and the
//! attention that reads it waits on memory while the cores have nothing else to do; the
//! matrix products before it are bound by arithmetic and leave the memory bus half idle.
//! The matrix products' jobs therefore each ask for a slice of the next attention's cache
//! lines as they go ([`AheadWindow::fetch`]), so that the attention finds them in L2 or L3.

/// Byte ranges to prefetch, counted in 64-byte lines.
#[derive(Default)]
pub struct Ahead<'a> {
    ranges: Vec<&'a [u8]>,
    /// Lines before each range.
    starts: Vec<usize>,
    lines: usize,
}

impl<'a> Ahead<'a> {
    pub fn push(&mut self, bytes: &'a [u8]) {
        if bytes.is_empty() {
            return;
        }
        self.starts.push(self.lines);
        self.lines += bytes.len().div_ceil(64);
        self.ranges.push(bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The share `from..to` (in `of` equal parts) of the lines, for one phase of several.
    pub fn window(&self, from: usize, to: usize, of: usize) -> AheadWindow<'_> {
        let at = |k: usize| (k * self.lines).checked_div(of).unwrap_or(0);
        AheadWindow {
            ahead: self,
            lo: at(from),
            hi: at(to),
        }
    }
}

/// Lines `lo..hi` of an [`Ahead`].
#[derive(Clone, Copy)]
pub struct AheadWindow<'a> {
    ahead: &'a Ahead<'a>,
    lo: usize,
    hi: usize,
}

impl AheadWindow<'_> {
    /// Prefetches the `i`-th of `parts` nearly equal pieces of the window into L2. Jobs that
    /// call it with distinct `i` cover the window once between them, whichever thread runs
    /// which.
    pub fn fetch(&self, i: usize, parts: usize) {
        self.visit(i, parts, prefetch_l2);
    }

    /// Calls `f` with the address of each line of the `i`-th of `parts` pieces.
    fn visit(&self, i: usize, parts: usize, mut f: impl FnMut(*const u8)) {
        let len = self.hi - self.lo;
        let (mut k, end) = (
            self.lo + i * len / parts.max(1),
            self.lo + (i + 1) * len / parts.max(1),
        );
        let a = self.ahead;
        let mut r = a.starts.partition_point(|&s| s <= k).saturating_sub(1);
        while k < end && r < a.ranges.len() {
            let range = a.ranges[r];
            let first = k - a.starts[r];
            let last = range.len().div_ceil(64).min(first + end - k);
            for line in first..last {
                f(range.as_ptr().wrapping_add(line * 64));
            }
            k += last - first;
            r += 1;
        }
    }
}

#[inline(always)]
fn prefetch_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T1)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_parts_cover_every_line_once() {
        let data = vec![0u8; 10_000];
        let mut a = Ahead::default();
        for (s, e) in [(0, 100), (200, 200), (300, 4000), (5000, 5065)] {
            a.push(&data[s..e]);
        }
        // 2 + 0 + 58 + 2 lines
        assert_eq!(a.lines, 62);
        let mut all = Vec::new();
        for (from, to, parts) in [(0, 1, 7), (1, 6, 3), (6, 9, 40)] {
            let w = a.window(from, to, 9);
            for i in 0..parts {
                w.visit(i, parts, |p| all.push(p as usize - data.as_ptr() as usize));
            }
        }
        let want: Vec<usize> = [(0, 2), (300, 58), (5000, 2)]
            .iter()
            .flat_map(|&(s, n)| (0..n).map(move |l| s + 64 * l))
            .collect();
        assert_eq!(all, want);
    }

    #[test]
    fn an_empty_ahead_fetches_nothing() {
        let a = Ahead::default();
        assert!(a.is_empty());
        a.window(0, 1, 1).fetch(0, 4);
    }
}
