//! GPTQ tensors (AutoGPTQ layout, see ../shared/specs/gptq.md) turned into the layout the
//! decode GEMV streams: rows sorted by group (act-order permutation kept for the activation
//! gather), 32-row slabs of `bits` words per column (3-bit in our own shift-friendly order), the
//! zero points unpacked to bytes or dropped when symmetric. Also the plain reference dequantizer
//! of that layout that the GPU checks compare against.

use anyhow::{bail, Result};

/// Where sorted input row `k` sits in a GEMV's activation vector for `bits`-bit weights (the
/// fp16 pair order the dequantizer produces; `xpos` in common.cuh); 16 = plain order.
pub fn xpos(k: usize, bits: u32) -> usize {
    let (j, base) = (k % 32, k - k % 32);
    base + match bits {
        4 => (j & !7) + 2 * (j & 3) + ((j >> 2) & 1),
        8 => (j & !3) + 2 * (j & 1) + ((j >> 1) & 1),
        3 if j < 16 => 2 * j,
        3 => 2 * (j - 16) + 1,
        _ => j,
    }
}

/// A linear layer in the kernel layout, on the host.
#[derive(Clone, Debug)]
pub struct Packed {
    pub bits: u32,
    pub k: usize,
    pub n: usize,
    pub group_size: usize,
    pub words: Vec<u32>,        // [K / 32 * bits][N]
    pub scales: Vec<u16>,       // [G][N] fp16 bits
    pub zeros: Option<Vec<u8>>, // [G][N]
    pub perm: Option<Vec<i32>>, // [K]: sorted row k reads input row perm[k]
}

/// Bit position of slab position `k` (0..31) in the 3-bit layout: (word, bit) for each of the
/// value's 3 bits, low bit first.
fn q3_bits(k: usize) -> [(usize, u32); 3] {
    let hi = k >= 16;
    let p = if hi { k - 16 } else { k };
    let base = if hi { 16 } else { 0 };
    if p < 15 {
        let (w, i) = (p / 5, (p % 5) as u32 * 3 + base);
        [(w, i), (w, i + 1), (w, i + 2)]
    } else {
        [(0, 15 + base), (1, 15 + base), (2, 15 + base)]
    }
}

/// The code of sorted row `k`, column `col` in the kernel layout.
pub fn code(words: &[u32], bits: u32, n: usize, k: usize, col: usize) -> u32 {
    let (slab, j) = (k / 32, k % 32);
    let w = |i: usize| words[(slab * bits as usize + i) * n + col];
    match bits {
        4 => (w(j / 8) >> (4 * (j % 8))) & 15,
        8 => (w(j / 4) >> (8 * (j % 4))) & 255,
        _ => q3_bits(j)
            .iter()
            .enumerate()
            .fold(0, |acc, (b, &(wi, bit))| acc | (((w(wi) >> bit) & 1) << b)),
    }
}

fn set_code(words: &mut [u32], bits: u32, n: usize, k: usize, col: usize, v: u32) {
    let (slab, j) = (k / 32, k % 32);
    let idx = |i: usize| (slab * bits as usize + i) * n + col;
    match bits {
        4 => words[idx(j / 8)] |= (v & 15) << (4 * (j % 8)),
        8 => words[idx(j / 4)] |= (v & 255) << (8 * (j % 4)),
        _ => {
            for (b, &(wi, bit)) in q3_bits(j).iter().enumerate() {
                words[idx(wi)] |= ((v >> b) & 1) << bit;
            }
        }
    }
}

impl Packed {
    pub fn groups(&self) -> usize {
        self.k.div_ceil(self.group_size)
    }
    /// W[k][n] in f32, rows in the sorted order: scale * (code - zero).
    pub fn dequant_ref(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for k in 0..self.k {
            let g = k / self.group_size;
            for c in 0..self.n {
                let z = self
                    .zeros
                    .as_ref()
                    .map_or(1u32 << (self.bits - 1), |z| z[g * self.n + c] as u32);
                let s = half::f16::from_bits(self.scales[g * self.n + c]).to_f32();
                out[k * self.n + c] =
                    s * (code(&self.words, self.bits, self.n, k, c) as f32 - z as f32);
            }
        }
        out
    }
}

/// Reads one value of a GPTQ-packed matrix: `packed` is [rows * bits / 32][cols] when `along_rows`
/// (qweight: values packed along K), else [rows][cols * bits / 32] (qzeros: along N).
fn gptq_value(packed: &[u32], bits: u32, cols: usize, r: usize, c: usize, along_rows: bool) -> u32 {
    let (major, minor) = if along_rows { (r, c) } else { (c, r) };
    // `major` is the packed index, `minor` the other one.
    let word = |i: usize| -> u32 {
        if along_rows {
            packed[i * cols + minor]
        } else {
            packed[minor * (cols * bits as usize / 32) + i]
        }
    };
    if bits == 3 {
        let (block, j) = (major / 32, major % 32);
        let v = word(block * 3) as u128
            | (word(block * 3 + 1) as u128) << 32
            | (word(block * 3 + 2) as u128) << 64;
        ((v >> (3 * j)) & 7) as u32
    } else {
        let per = 32 / bits as usize;
        (word(major / per) >> (bits as usize * (major % per))) & ((1 << bits) - 1)
    }
}

/// GPTQ tensors of one linear layer as stored in a checkpoint.
pub struct GptqTensors<'a> {
    pub bits: u32,
    pub k: usize,
    pub n: usize,
    pub group_size: usize,  // K when the checkpoint says -1
    pub qweight: &'a [u32], // [K * bits / 32][N]
    pub qzeros: &'a [u32],  // [G][N * bits / 32]
    pub scales: &'a [u16],  // [G][N] fp16 bits
    pub g_idx: &'a [i32],   // [K]
    /// 1 for `checkpoint_format` "gptq" (v1: stored zero + 1), 0 for "gptq_v2".
    pub zero_offset: u32,
}

/// Sorts rows by g_idx and repacks into the kernel layout.
pub fn repack(t: &GptqTensors) -> Result<Packed> {
    let (k, n, bits) = (t.k, t.n, t.bits);
    if ![3, 4, 8].contains(&bits) {
        bail!("GPTQ {bits}-bit weights are not supported on the GPU (3, 4, 8)");
    }
    if k % 32 != 0 || n % 32 != 0 {
        bail!("GPTQ layer {k}x{n}: both dimensions must be multiples of 32");
    }
    let groups = k.div_ceil(t.group_size);
    let want = [
        ("qweight", t.qweight.len(), k * bits as usize / 32 * n),
        ("qzeros", t.qzeros.len(), groups * n * bits as usize / 32),
        ("scales", t.scales.len(), groups * n),
        ("g_idx", t.g_idx.len(), k),
    ];
    for (name, got, exp) in want {
        if got != exp {
            bail!("GPTQ {name} has {got} elements, expected {exp} for K={k}, N={n}, {bits}-bit, group {}", t.group_size);
        }
    }
    let mut perm: Vec<i32> = (0..k as i32).collect();
    perm.sort_by_key(|&i| t.g_idx[i as usize]);
    for (sorted, &orig) in perm.iter().enumerate() {
        let g = t.g_idx[orig as usize];
        if g < 0 || g as usize >= groups || g as usize != sorted / t.group_size {
            bail!("GPTQ g_idx does not form groups of {} rows (row {orig} has group {g}): static or uneven groups are not supported", t.group_size);
        }
    }
    let identity = perm.iter().enumerate().all(|(i, &p)| i as i32 == p);
    let mut words = vec![0u32; k / 32 * bits as usize * n];
    for (sorted, &orig) in perm.iter().enumerate() {
        for c in 0..n {
            let v = gptq_value(t.qweight, bits, n, orig as usize, c, true);
            set_code(&mut words, bits, n, sorted, c, v);
        }
    }
    let mut zeros = vec![0u8; groups * n];
    let mut symmetric = true;
    for g in 0..groups {
        for c in 0..n {
            let z = gptq_value(t.qzeros, bits, n, g, c, false) + t.zero_offset;
            if z > 255 {
                bail!("GPTQ zero point {z} (group {g}, column {c}) does not fit the kernel's byte zeros");
            }
            symmetric &= z == 1 << (bits - 1);
            zeros[g * n + c] = z as u8;
        }
    }
    Ok(Packed {
        bits,
        k,
        n,
        group_size: t.group_size,
        words,
        scales: t.scales.to_vec(),
        zeros: (!symmetric).then_some(zeros),
        perm: (!identity).then_some(perm),
    })
}

/// Packs codes [K][N] (original row order) the way AutoGPTQ does, for tests and checks.
pub fn gptq_pack_rows(codes: &[u32], bits: u32, k: usize, n: usize) -> Vec<u32> {
    let mut out = vec![0u32; k * bits as usize / 32 * n];
    for r in 0..k {
        for c in 0..n {
            let v = codes[r * n + c] as u128;
            if bits == 3 {
                let (block, j) = (r / 32, r % 32);
                let sh = 3 * j;
                for w in 0..3 {
                    let part = ((v << sh) >> (32 * w)) as u32;
                    out[(block * 3 + w) * n + c] |= part;
                }
            } else {
                let per = 32 / bits as usize;
                out[(r / per) * n + c] |= (v as u32) << (bits as usize * (r % per));
            }
        }
    }
    out
}

/// Packs zero points [G][N] along N (qzeros layout).
pub fn gptq_pack_cols(z: &[u32], bits: u32, g: usize, n: usize) -> Vec<u32> {
    // Packing along columns is packing the transpose along rows.
    let mut t = vec![0u32; g * n];
    for i in 0..g {
        for c in 0..n {
            t[c * g + i] = z[i * n + c];
        }
    }
    let p = gptq_pack_rows(&t, bits, n, g); // [N * bits / 32][G]
    let wpr = n * bits as usize / 32;
    let mut out = vec![0u32; g * wpr];
    for w in 0..wpr {
        for i in 0..g {
            out[i * wpr + w] = p[w * g + i];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
    }

    /// The repacked layout dequantizes to the spec's w[i][j] = s[g_idx[i]][j] (q[i][j] - z[g_idx[i]][j])
    /// read in the permuted row order, for every bit width, act-order and asymmetric zeros.
    #[test]
    fn repack_matches_spec_dequantization() {
        let mut rng = Rng(7);
        for bits in [3u32, 4, 8] {
            for (gs, act, sym) in [(32, true, false), (64, false, true), (128, true, true)] {
                let (k, n) = (256usize, 64usize);
                let groups = k / gs;
                let codes: Vec<u32> = (0..k * n).map(|_| rng.next() % (1 << bits)).collect();
                let zeros: Vec<u32> = (0..groups * n)
                    .map(|_| {
                        if sym {
                            (1 << (bits - 1)) - 1
                        } else {
                            rng.next() % ((1 << bits) - 1)
                        }
                    })
                    .collect();
                let scales: Vec<u16> = (0..groups * n)
                    .map(|i| half::f16::from_f32(0.01 + i as f32 * 1e-4).to_bits())
                    .collect();
                let mut order: Vec<usize> = (0..k).collect();
                if act {
                    for i in (1..k).rev() {
                        order.swap(i, rng.next() as usize % (i + 1));
                    }
                }
                let mut g_idx = vec![0i32; k];
                for (rank, &row) in order.iter().enumerate() {
                    g_idx[row] = (rank / gs) as i32;
                }
                let qweight = gptq_pack_rows(&codes, bits, k, n);
                let qzeros = gptq_pack_cols(&zeros, bits, groups, n);
                let t = GptqTensors {
                    bits,
                    k,
                    n,
                    group_size: gs,
                    qweight: &qweight,
                    qzeros: &qzeros,
                    scales: &scales,
                    g_idx: &g_idx,
                    zero_offset: 1,
                };
                let p = repack(&t).unwrap();
                assert_eq!(p.zeros.is_none(), sym, "bits {bits}");
                assert_eq!(p.perm.is_some(), act, "bits {bits} gs {gs}");
                let w = p.dequant_ref();
                for sorted in 0..k {
                    let orig = p.perm.as_ref().map_or(sorted, |pm| pm[sorted] as usize);
                    let g = g_idx[orig] as usize;
                    for c in 0..n {
                        let s = half::f16::from_bits(scales[g * n + c]).to_f32();
                        let want = s * (codes[orig * n + c] as f32 - (zeros[g * n + c] + 1) as f32);
                        assert_eq!(
                            w[sorted * n + c],
                            want,
                            "bits {bits} gs {gs} row {orig} col {c}"
                        );
                    }
                }
            }
        }
    }

    /// The activation layout is a permutation within each slab, for every bit width.
    #[test]
    fn xpos_is_a_permutation() {
        for bits in [3, 4, 8, 16] {
            let mut seen = [false; 64];
            for k in 0..64 {
                let p = xpos(k, bits);
                assert!(p / 32 == k / 32 && !seen[p], "bits {bits} k {k}");
                seen[p] = true;
            }
        }
        // 4-bit: the pair (k, k + 4) of each 8 rows is one fp16x2.
        assert_eq!((xpos(0, 4), xpos(4, 4), xpos(1, 4)), (0, 1, 2));
    }

    #[test]
    fn uneven_groups_are_refused() {
        let (k, n) = (64, 32);
        let qweight = vec![0u32; k * 4 / 32 * n];
        let qzeros = vec![0u32; 2 * n * 4 / 32];
        let scales = vec![0u16; 2 * n];
        let mut g_idx: Vec<i32> = (0..k as i32).map(|i| i / 32).collect();
        g_idx[0] = 1;
        let t = GptqTensors {
            bits: 4,
            k,
            n,
            group_size: 32,
            qweight: &qweight,
            qzeros: &qzeros,
            scales: &scales,
            g_idx: &g_idx,
            zero_offset: 1,
        };
        let e = repack(&t).unwrap_err().to_string();
        assert!(e.contains("groups of 32"), "{e}");
    }
}
