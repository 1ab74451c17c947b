//! The ggml tensor types: ids, block sizes, byte layouts of the quantized blocks (as in
//! llama.cpp's `ggml.h` / `ggml-common.h`) and reference dequantizers.
//!
//! A quantized row is a run of blocks; each block holds `block_size()` elements in
//! `type_size()` bytes and can be decoded on its own. The `Block*` structs below mirror
//! ggml's C structs field for field (`#[repr(C)]`, same sizes, asserted at compile time) so
//! that kernels working on the same bytes can name the fields; `from_bytes` decodes one block
//! from any (unaligned) byte slice. All multi-byte fields are little-endian.
//!
//! The dequantizers are the plain reference: one element at a time, the same float operations
//! in the same order as ggml's `dequantize_row_*`, so they give the same values.

use crate::FormatError;
use half::{bf16, f16};

// ---------------------------------------------------------------------------------------------
// Type ids

/// A ggml tensor type, with the id it has in GGUF files (`enum ggml_type` in `ggml.h`).
///
/// Ids 4, 5 (Q4_2, Q4_3), 31..=33 (Q4_0_4_4 ...) and 36..=38 (IQ4_NL_4_4 ...) were removed
/// from ggml and are rejected like any unknown id.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
}

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 34] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
    ];

    /// The type with this GGUF id, or `None` for an unknown or removed id.
    pub fn from_u32(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| *t as u32 == id)
    }

    /// The GGUF id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// The name as llama.cpp's tools print it in upper case (`Q4_K`, `BF16`, `IQ2_XXS`).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
            NVFP4 => "NVFP4",
            Q1_0 => "Q1_0",
        }
    }

    /// Elements per block (`ggml_blck_size`): 1 for the plain types.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | F64 | I8 | I16 | I32 | I64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            NVFP4 => QK_NVFP4,
            Q1_0 => QK1_0,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S
            | IQ3_S | IQ2_S | IQ4_XS | IQ1_M | TQ1_0 | TQ2_0 => QK_K,
        }
    }

    /// Bytes per block (`ggml_type_size`, i.e. `sizeof(block_*)` in `ggml-common.h`).
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            F64 | I64 => 8,
            I8 => 1,
            I16 => 2,
            I32 => 4,
            Q4_0 => size_of::<BlockQ4_0>(),
            Q4_1 => size_of::<BlockQ4_1>(),
            Q5_0 => size_of::<BlockQ5_0>(),
            Q5_1 => size_of::<BlockQ5_1>(),
            Q8_0 => size_of::<BlockQ8_0>(),
            Q8_1 => size_of::<BlockQ8_1>(),
            Q2_K => size_of::<BlockQ2_K>(),
            Q3_K => size_of::<BlockQ3_K>(),
            Q4_K => size_of::<BlockQ4_K>(),
            Q5_K => size_of::<BlockQ5_K>(),
            Q6_K => size_of::<BlockQ6_K>(),
            Q8_K => size_of::<BlockQ8_K>(),
            // The i-quants and newer types: sizes of their ggml-common.h structs, which this
            // crate does not decode.
            IQ2_XXS => 2 + QK_K / 4,            // d, u16 qs[QK_K/8]
            IQ2_XS => 2 + QK_K / 4 + QK_K / 32, // d, u16 qs[QK_K/8], scales
            IQ3_XXS => 2 + 3 * QK_K / 8,        // d, qs[3*QK_K/8]
            IQ1_S => 2 + QK_K / 8 + QK_K / 16,  // d, qs[QK_K/8], u16 qh[QK_K/32]
            IQ4_NL => 2 + 16,                   // d, qs[16]
            IQ3_S => 2 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64, // d, qs, qh, signs, scales
            IQ2_S => 2 + QK_K / 4 + QK_K / 32 + QK_K / 32, // d, qs, qh, scales
            IQ4_XS => 2 + 2 + QK_K / 64 + QK_K / 2, // d, scales_h, scales_l, qs
            IQ1_M => QK_K / 8 + QK_K / 16 + QK_K / 32, // qs, qh, scales (d inside scales)
            TQ1_0 => (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2, // qs, qh, d
            TQ2_0 => QK_K / 4 + 2,              // qs, d
            MXFP4 => 1 + 16,                    // e8m0 scale, qs[16]
            NVFP4 => QK_NVFP4 / 16 + QK_NVFP4 / 2, // 4 ue4m3 scales, qs[32]
            Q1_0 => 2 + QK1_0 / 8,              // d, qs[16]
        }
    }

    /// Whether the type is stored in blocks of several elements.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of a row of `n_elements` elements, or `None` when `n_elements` is not a whole
    /// number of blocks (or the size overflows).
    pub fn row_bytes(self, n_elements: usize) -> Option<usize> {
        if !n_elements.is_multiple_of(self.block_size()) {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// Block layouts (ggml-common.h)

/// Elements per super-block of the k-quants.
pub const QK_K: usize = 256;
/// Bytes of the packed 6-bit scales and mins of Q4_K and Q5_K.
pub const K_SCALE_SIZE: usize = 12;
pub const QK4_0: usize = 32;
pub const QK4_1: usize = 32;
pub const QK5_0: usize = 32;
pub const QK5_1: usize = 32;
pub const QK8_0: usize = 32;
pub const QK8_1: usize = 32;
pub const QK_NVFP4: usize = 64;
pub const QK1_0: usize = 128;

/// Q4_0 (18 bytes, 32 elements): `[0..2]` f16 `d`; `[2..18]` `qs`, byte j holding element j
/// in its low nibble and element j+16 in its high nibble. Value: `(q - 8) * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK4_0 / 2],
}

/// Q4_1 (20 bytes, 32 elements): `[0..2]` f16 `d`, `[2..4]` f16 `m`; `[4..20]` `qs` with
/// element j in the low nibble of byte j and element j+16 in its high nibble. Value: `q * d + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK4_1 / 2],
}

/// Q5_0 (22 bytes, 32 elements): `[0..2]` f16 `d`; `[2..6]` `qh`, a little-endian u32 whose
/// bit j is the fifth bit of element j; `[6..22]` `qs` low nibbles as Q4_0.
/// Value: `(q - 16) * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK5_0 / 2],
}

/// Q5_1 (24 bytes, 32 elements): `[0..2]` f16 `d`, `[2..4]` f16 `m`, `[4..8]` `qh`,
/// `[8..24]` `qs`, as Q5_0. Value: `q * d + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK5_1 / 2],
}

/// Q8_0 (34 bytes, 32 elements): `[0..2]` f16 `d`, `[2..34]` i8 `qs`. Value: `q * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8_0],
}

/// Q8_1 (36 bytes, 32 elements): `[0..2]` f16 `d`, `[2..4]` f16 `s` = `d * sum(qs)`,
/// `[4..36]` i8 `qs`. Value: `q * d`. (ggml uses it for activations, not weights.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; QK8_1],
}

/// Q2_K (84 bytes, 256 elements in 16 groups of 16): `[0..16]` `scales`, one byte per group
/// (low nibble scale, high nibble min); `[16..80]` `qs`, 2-bit quants; `[80..82]` f16 `d`
/// (super-scale of the scales); `[82..84]` f16 `dmin` (super-scale of the mins).
/// Value: `d * scale * q - dmin * min`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ2_K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

/// Q3_K (110 bytes, 256 elements in 16 groups of 16): `[0..32]` `hmask`, the high bit of each
/// quant; `[32..96]` `qs`, the low 2 bits; `[96..108]` 16 6-bit `scales` packed in 12 bytes;
/// `[108..110]` f16 `d`. Value: `d * (scale - 32) * (q - 4 * !high_bit)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ3_K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

/// Q4_K (144 bytes, 256 elements in 8 groups of 32): `[0..2]` f16 `d`, `[2..4]` f16 `dmin`;
/// `[4..16]` 8 6-bit scales and 8 6-bit mins packed in 12 bytes (see [`scale_min_k4`]);
/// `[16..144]` `qs`: each 32-byte chunk c holds group 2c in its low nibbles and group 2c+1
/// in its high nibbles. Value: `d * scale * q - dmin * min`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}

/// Q5_K (176 bytes, 256 elements in 8 groups of 32): as Q4_K plus `[16..48]` `qh`, where bit
/// g of byte l is the fifth bit of element l of group g; `[48..176]` `qs`.
/// Value: `d * scale * q - dmin * min`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// Q6_K (210 bytes, 256 elements in 16 groups of 16): `[0..128]` `ql`, low 4 bits;
/// `[128..192]` `qh`, high 2 bits; `[192..208]` i8 `scales`, one per group; `[208..210]` f16
/// `d`. Value: `d * scale * (q - 32)`. See [`dequantize_block_q6_k`] for the bit positions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6_K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// Q8_K (292 bytes, 256 elements): `[0..4]` f32 `d`, `[4..260]` i8 `qs`, `[260..292]` i16
/// `bsums`, the sums of each group of 16 quants. Value: `q * d`. (Activations only.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

// The structs must be byte-for-byte ggml's: no padding anywhere.
const _: () = {
    assert!(size_of::<BlockQ4_0>() == 18);
    assert!(size_of::<BlockQ4_1>() == 20);
    assert!(size_of::<BlockQ5_0>() == 22);
    assert!(size_of::<BlockQ5_1>() == 24);
    assert!(size_of::<BlockQ8_0>() == 34);
    assert!(size_of::<BlockQ8_1>() == 36);
    assert!(size_of::<BlockQ2_K>() == 84);
    assert!(size_of::<BlockQ3_K>() == 110);
    assert!(size_of::<BlockQ4_K>() == 144);
    assert!(size_of::<BlockQ5_K>() == 176);
    assert!(size_of::<BlockQ6_K>() == 210);
    assert!(size_of::<BlockQ8_K>() == 292);
};

// Helpers that copy fields out of a fixed-size block; indices are constants or bounded by
// the array lengths, so none of them can go out of range.
fn f16_at<const N: usize>(b: &[u8; N], at: usize) -> f16 {
    f16::from_le_bytes([b[at], b[at + 1]])
}

fn bytes_at<const N: usize, const L: usize>(b: &[u8; N], at: usize) -> [u8; L] {
    std::array::from_fn(|i| b[at + i])
}

fn i8s_at<const N: usize, const L: usize>(b: &[u8; N], at: usize) -> [i8; L] {
    std::array::from_fn(|i| b[at + i] as i8)
}

impl BlockQ4_0 {
    pub fn from_bytes(b: &[u8; 18]) -> Self {
        BlockQ4_0 {
            d: f16_at(b, 0),
            qs: bytes_at(b, 2),
        }
    }
}

impl BlockQ4_1 {
    pub fn from_bytes(b: &[u8; 20]) -> Self {
        BlockQ4_1 {
            d: f16_at(b, 0),
            m: f16_at(b, 2),
            qs: bytes_at(b, 4),
        }
    }
}

impl BlockQ5_0 {
    pub fn from_bytes(b: &[u8; 22]) -> Self {
        BlockQ5_0 {
            d: f16_at(b, 0),
            qh: bytes_at(b, 2),
            qs: bytes_at(b, 6),
        }
    }
}

impl BlockQ5_1 {
    pub fn from_bytes(b: &[u8; 24]) -> Self {
        BlockQ5_1 {
            d: f16_at(b, 0),
            m: f16_at(b, 2),
            qh: bytes_at(b, 4),
            qs: bytes_at(b, 8),
        }
    }
}

impl BlockQ8_0 {
    pub fn from_bytes(b: &[u8; 34]) -> Self {
        BlockQ8_0 {
            d: f16_at(b, 0),
            qs: i8s_at(b, 2),
        }
    }
}

impl BlockQ8_1 {
    pub fn from_bytes(b: &[u8; 36]) -> Self {
        BlockQ8_1 {
            d: f16_at(b, 0),
            s: f16_at(b, 2),
            qs: i8s_at(b, 4),
        }
    }
}

impl BlockQ2_K {
    pub fn from_bytes(b: &[u8; 84]) -> Self {
        BlockQ2_K {
            scales: bytes_at(b, 0),
            qs: bytes_at(b, 16),
            d: f16_at(b, 80),
            dmin: f16_at(b, 82),
        }
    }
}

impl BlockQ3_K {
    pub fn from_bytes(b: &[u8; 110]) -> Self {
        BlockQ3_K {
            hmask: bytes_at(b, 0),
            qs: bytes_at(b, 32),
            scales: bytes_at(b, 96),
            d: f16_at(b, 108),
        }
    }
}

impl BlockQ4_K {
    pub fn from_bytes(b: &[u8; 144]) -> Self {
        BlockQ4_K {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales: bytes_at(b, 4),
            qs: bytes_at(b, 16),
        }
    }
}

impl BlockQ5_K {
    pub fn from_bytes(b: &[u8; 176]) -> Self {
        BlockQ5_K {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales: bytes_at(b, 4),
            qh: bytes_at(b, 16),
            qs: bytes_at(b, 48),
        }
    }
}

impl BlockQ6_K {
    pub fn from_bytes(b: &[u8; 210]) -> Self {
        BlockQ6_K {
            ql: bytes_at(b, 0),
            qh: bytes_at(b, 128),
            scales: i8s_at(b, 192),
            d: f16_at(b, 208),
        }
    }
}

impl BlockQ8_K {
    pub fn from_bytes(b: &[u8; 292]) -> Self {
        BlockQ8_K {
            d: f32::from_le_bytes(bytes_at(b, 0)),
            qs: i8s_at(b, 4),
            bsums: std::array::from_fn(|i| i16::from_le_bytes([b[260 + 2 * i], b[261 + 2 * i]])),
        }
    }
}

/// The 6-bit scale and min of group `j` (0..8) of a Q4_K / Q5_K block, unpacked from the 12
/// `scales` bytes exactly as ggml's `get_scale_min_k4`: groups 0..4 sit in the low 6 bits of
/// bytes j and j+4; groups 4..8 keep their low 4 bits in byte j+4 and their top 2 bits in the
/// spare top bits of bytes j-4 (scale) and j (min).
pub fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (d, m)
    }
}

/// The 16 signed 6-bit scales of a Q3_K block (each still offset by 32), unpacked from the 12
/// `scales` bytes as ggml's `dequantize_row_q3_K`: bytes 0..8 hold the low 4 bits of scales
/// 0..16 (low nibbles first 0..8, then high nibbles 8..16), bytes 8..12 hold the top 2 bits.
pub fn q3_k_scales(scales: &[u8; 12]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let word = |i: usize| u32::from_le_bytes(bytes_at(scales, 4 * i));
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    std::array::from_fn(|i| aux[i / 4].to_le_bytes()[i % 4] as i8)
}

// ---------------------------------------------------------------------------------------------
// Dequantization, one block at a time

pub fn dequantize_block_q4_0(b: &BlockQ4_0, y: &mut [f32; QK4_0]) {
    let d = b.d.to_f32();
    for j in 0..QK4_0 / 2 {
        let x0 = (b.qs[j] & 0x0F) as i32 - 8;
        let x1 = (b.qs[j] >> 4) as i32 - 8;
        y[j] = x0 as f32 * d;
        y[j + QK4_0 / 2] = x1 as f32 * d;
    }
}

pub fn dequantize_block_q4_1(b: &BlockQ4_1, y: &mut [f32; QK4_1]) {
    let (d, m) = (b.d.to_f32(), b.m.to_f32());
    for j in 0..QK4_1 / 2 {
        y[j] = (b.qs[j] & 0x0F) as f32 * d + m;
        y[j + QK4_1 / 2] = (b.qs[j] >> 4) as f32 * d + m;
    }
}

pub fn dequantize_block_q5_0(b: &BlockQ5_0, y: &mut [f32; QK5_0]) {
    let d = b.d.to_f32();
    let qh = u32::from_le_bytes(b.qh);
    for j in 0..QK5_0 / 2 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        let x0 = ((b.qs[j] & 0x0F) as u32 | h0) as i32 - 16;
        let x1 = ((b.qs[j] >> 4) as u32 | h1) as i32 - 16;
        y[j] = x0 as f32 * d;
        y[j + QK5_0 / 2] = x1 as f32 * d;
    }
}

pub fn dequantize_block_q5_1(b: &BlockQ5_1, y: &mut [f32; QK5_1]) {
    let (d, m) = (b.d.to_f32(), b.m.to_f32());
    let qh = u32::from_le_bytes(b.qh);
    for j in 0..QK5_1 / 2 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        let x0 = (b.qs[j] & 0x0F) as u32 | h0;
        let x1 = (b.qs[j] >> 4) as u32 | h1;
        y[j] = x0 as f32 * d + m;
        y[j + QK5_1 / 2] = x1 as f32 * d + m;
    }
}

pub fn dequantize_block_q8_0(b: &BlockQ8_0, y: &mut [f32; QK8_0]) {
    let d = b.d.to_f32();
    for (y, &q) in y.iter_mut().zip(&b.qs) {
        *y = q as f32 * d;
    }
}

pub fn dequantize_block_q2_k(b: &BlockQ2_K, y: &mut [f32; QK_K]) {
    let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
    let mut out = 0;
    let mut is = 0;
    // Two halves of 128 elements, each reading 32 bytes of qs four times (2 bits at a time);
    // each pass covers two groups of 16: bytes 0..16 and bytes 16..32.
    for half in 0..2 {
        let q = &b.qs[32 * half..32 * half + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let sc = b.scales[is];
                is += 1;
                let dl = d * (sc & 0xF) as f32;
                let ml = min * (sc >> 4) as f32;
                for &ql in &q[16 * part..16 * part + 16] {
                    y[out] = dl * ((ql >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

pub fn dequantize_block_q3_k(b: &BlockQ3_K, y: &mut [f32; QK_K]) {
    let d_all = b.d.to_f32();
    let scales = q3_k_scales(&b.scales);
    let mut out = 0;
    let mut is = 0;
    let mut m: u8 = 1;
    for half in 0..2 {
        let q = &b.qs[32 * half..32 * half + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let dl = d_all * (scales[is] as i32 - 32) as f32;
                is += 1;
                // The high bit of element l of this run is bit `m` of hmask[l].
                let run = 16 * part..16 * part + 16;
                for (&ql, &hm) in q[run.clone()].iter().zip(&b.hmask[run]) {
                    let low = ((ql >> shift) & 3) as i32;
                    let high = if hm & m != 0 { 0 } else { 4 };
                    y[out] = dl * (low - high) as f32;
                    out += 1;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

pub fn dequantize_block_q4_k(b: &BlockQ4_K, y: &mut [f32; QK_K]) {
    let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
    // Four 64-element chunks; chunk c reads qs[32c..32c+32]: low nibbles are group 2c,
    // high nibbles group 2c+1.
    for c in 0..QK_K / 64 {
        let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let q = &b.qs[32 * c..32 * c + 32];
        for l in 0..32 {
            y[64 * c + l] = d1 * (q[l] & 0xF) as f32 - m1;
            y[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

pub fn dequantize_block_q5_k(b: &BlockQ5_K, y: &mut [f32; QK_K]) {
    let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
    for c in 0..QK_K / 64 {
        let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        // The fifth bits of groups 2c and 2c+1 are bits 2c and 2c+1 of qh[l].
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let ql = &b.qs[32 * c..32 * c + 32];
        for l in 0..32 {
            let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
            y[64 * c + l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
            y[64 * c + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// Q6_K, as ggml: each 128-element half n uses `ql[64n..64n+64]`, `qh[32n..32n+32]` and
/// `scales[8n..8n+8]`; for l in 0..32, element l takes the low nibble of `ql[l]` and bits 0-1
/// of `qh[l]`, element l+32 the low nibble of `ql[l+32]` and bits 2-3, element l+64 the high
/// nibble of `ql[l]` and bits 4-5, element l+96 the high nibble of `ql[l+32]` and bits 6-7.
pub fn dequantize_block_q6_k(b: &BlockQ6_K, y: &mut [f32; QK_K]) {
    let d = b.d.to_f32();
    for n in 0..2 {
        let ql = &b.ql[64 * n..64 * n + 64];
        let qh = &b.qh[32 * n..32 * n + 32];
        let sc = &b.scales[8 * n..8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * sc[is] as f32 * q1 as f32;
            y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
            y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
            y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantization of whole buffers

/// Whether [`dequantize`] implements this type.
pub fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
    )
}

/// Decodes `src`, a whole number of `ty` blocks, into `dst` (one f32 per element).
///
/// `dst.len()` must be a multiple of `ty.block_size()` and `src.len()` must be exactly the
/// bytes of that many elements. Types without a dequantizer (the i-quants, the integer types,
/// the activation-only Q8_1/Q8_K, ...) give an error naming the type.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), FormatError> {
    let err = |msg: String| FormatError::Dequantize { ty: ty.name(), msg };
    let unsupported = || {
        err(format!(
            "no dequantizer for ggml type {ty} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, \
             Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"
        ))
    };
    if !can_dequantize(ty) {
        return Err(unsupported());
    }
    let Some(expected) = ty.row_bytes(dst.len()) else {
        return Err(err(format!(
            "{} output elements are not a whole number of {}-element blocks",
            dst.len(),
            ty.block_size()
        )));
    };
    if src.len() != expected {
        return Err(err(format!(
            "{} output elements need {expected} bytes of input, got {}",
            dst.len(),
            src.len()
        )));
    }

    use GgmlType::*;
    match ty {
        F32 => {
            for (y, b) in dst.iter_mut().zip(array_chunks::<4>(src)) {
                *y = f32::from_le_bytes(*b);
            }
        }
        F16 => {
            for (y, b) in dst.iter_mut().zip(array_chunks::<2>(src)) {
                *y = f16::from_le_bytes(*b).to_f32();
            }
        }
        BF16 => {
            for (y, b) in dst.iter_mut().zip(array_chunks::<2>(src)) {
                *y = bf16::from_le_bytes(*b).to_f32();
            }
        }
        Q4_0 => blocks(src, dst, BlockQ4_0::from_bytes, dequantize_block_q4_0),
        Q4_1 => blocks(src, dst, BlockQ4_1::from_bytes, dequantize_block_q4_1),
        Q5_0 => blocks(src, dst, BlockQ5_0::from_bytes, dequantize_block_q5_0),
        Q5_1 => blocks(src, dst, BlockQ5_1::from_bytes, dequantize_block_q5_1),
        Q8_0 => blocks(src, dst, BlockQ8_0::from_bytes, dequantize_block_q8_0),
        Q2_K => blocks(src, dst, BlockQ2_K::from_bytes, dequantize_block_q2_k),
        Q3_K => blocks(src, dst, BlockQ3_K::from_bytes, dequantize_block_q3_k),
        Q4_K => blocks(src, dst, BlockQ4_K::from_bytes, dequantize_block_q4_k),
        Q5_K => blocks(src, dst, BlockQ5_K::from_bytes, dequantize_block_q5_k),
        Q6_K => blocks(src, dst, BlockQ6_K::from_bytes, dequantize_block_q6_k),
        _ => return Err(unsupported()),
    }
    Ok(())
}

/// `dequantize` into a new vector of `n_elements`.
pub fn dequantize_to_vec(
    ty: GgmlType,
    src: &[u8],
    n_elements: usize,
) -> Result<Vec<f32>, FormatError> {
    // Check the size before allocating: n_elements may come from a file.
    if ty.row_bytes(n_elements) != Some(src.len()) {
        return Err(FormatError::Dequantize {
            ty: ty.name(),
            msg: format!(
                "{n_elements} elements do not match {} bytes of input",
                src.len()
            ),
        });
    }
    let mut out = vec![0f32; n_elements];
    dequantize(ty, src, &mut out)?;
    Ok(out)
}

/// Fixed-size views of consecutive `N`-byte chunks (a trailing partial chunk is skipped;
/// callers check lengths first).
fn array_chunks<const N: usize>(src: &[u8]) -> impl Iterator<Item = &[u8; N]> {
    src.chunks_exact(N).filter_map(|c| c.try_into().ok())
}

/// Decodes consecutive blocks of `src` into consecutive `QK`-element runs of `dst`.
fn blocks<const N: usize, const QK: usize, B>(
    src: &[u8],
    dst: &mut [f32],
    parse: fn(&[u8; N]) -> B,
    decode: fn(&B, &mut [f32; QK]),
) {
    let outs = dst
        .chunks_exact_mut(QK)
        .filter_map(|c| <&mut [f32; QK]>::try_from(c).ok());
    for (y, b) in outs.zip(array_chunks::<N>(src)) {
        decode(&parse(b), y);
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn deq(ty: GgmlType, src: &[u8]) -> Vec<f32> {
        let n = src.len() / ty.type_size() * ty.block_size();
        let mut out = vec![f32::NAN; n];
        dequantize(ty, src, &mut out).unwrap();
        out
    }

    #[test]
    fn ids_names_and_sizes_match_ggml() {
        // (type, id, block size, bytes) as in ggml.h / ggml-common.h.
        let table = [
            (GgmlType::F32, 0, 1, 4),
            (GgmlType::F16, 1, 1, 2),
            (GgmlType::Q4_0, 2, 32, 18),
            (GgmlType::Q4_1, 3, 32, 20),
            (GgmlType::Q5_0, 6, 32, 22),
            (GgmlType::Q5_1, 7, 32, 24),
            (GgmlType::Q8_0, 8, 32, 34),
            (GgmlType::Q8_1, 9, 32, 36),
            (GgmlType::Q2_K, 10, 256, 84),
            (GgmlType::Q3_K, 11, 256, 110),
            (GgmlType::Q4_K, 12, 256, 144),
            (GgmlType::Q5_K, 13, 256, 176),
            (GgmlType::Q6_K, 14, 256, 210),
            (GgmlType::Q8_K, 15, 256, 292),
            (GgmlType::IQ2_XXS, 16, 256, 66),
            (GgmlType::IQ2_XS, 17, 256, 74),
            (GgmlType::IQ3_XXS, 18, 256, 98),
            (GgmlType::IQ1_S, 19, 256, 50),
            (GgmlType::IQ4_NL, 20, 32, 18),
            (GgmlType::IQ3_S, 21, 256, 110),
            (GgmlType::IQ2_S, 22, 256, 82),
            (GgmlType::IQ4_XS, 23, 256, 136),
            (GgmlType::I8, 24, 1, 1),
            (GgmlType::I16, 25, 1, 2),
            (GgmlType::I32, 26, 1, 4),
            (GgmlType::I64, 27, 1, 8),
            (GgmlType::F64, 28, 1, 8),
            (GgmlType::IQ1_M, 29, 256, 56),
            (GgmlType::BF16, 30, 1, 2),
            (GgmlType::TQ1_0, 34, 256, 54),
            (GgmlType::TQ2_0, 35, 256, 66),
            (GgmlType::MXFP4, 39, 32, 17),
            (GgmlType::NVFP4, 40, 64, 36),
            (GgmlType::Q1_0, 41, 128, 18),
        ];
        assert_eq!(table.len(), GgmlType::ALL.len());
        for (ty, id, blck, size) in table {
            assert_eq!(GgmlType::from_u32(id), Some(ty), "{ty}");
            assert_eq!(ty.id(), id);
            assert_eq!(ty.block_size(), blck, "{ty}");
            assert_eq!(ty.type_size(), size, "{ty}");
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 42, u32::MAX] {
            assert_eq!(GgmlType::from_u32(removed), None, "{removed}");
        }
        assert_eq!(GgmlType::Q4_K.name(), "Q4_K");
        assert_eq!(GgmlType::IQ2_XXS.to_string(), "IQ2_XXS");
    }

    #[test]
    fn row_bytes_needs_whole_blocks() {
        assert_eq!(GgmlType::Q4_1.row_bytes(576), Some(18 * 20));
        assert_eq!(GgmlType::Q4_1.row_bytes(33), None);
        assert_eq!(GgmlType::Q6_K.row_bytes(512), Some(420));
        assert_eq!(GgmlType::F32.row_bytes(3), Some(12));
        assert_eq!(GgmlType::F32.row_bytes(usize::MAX), None);
    }

    #[test]
    fn plain_floats() {
        let mut src = Vec::new();
        src.extend(1.5f32.to_le_bytes());
        src.extend((-2.25f32).to_le_bytes());
        assert_eq!(deq(GgmlType::F32, &src), [1.5, -2.25]);
        // f16 0x3C00 = 1.0, 0xC500 = -5.0; bf16 0x3FC0 = 1.5, 0xC040 = -3.0.
        assert_eq!(deq(GgmlType::F16, &[0x00, 0x3C, 0x00, 0xC5]), [1.0, -5.0]);
        assert_eq!(deq(GgmlType::BF16, &[0xC0, 0x3F, 0x40, 0xC0]), [1.5, -3.0]);
    }

    #[test]
    fn q4_0_block() {
        // d = 0.5; byte j = (15 - j) << 4 | j: element j = (j - 8) * 0.5,
        // element j + 16 = (15 - j - 8) * 0.5.
        let mut b = h(0.5).to_vec();
        b.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
        let y = deq(GgmlType::Q4_0, &b);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
        }
        assert_eq!(y[0], -4.0);
        assert_eq!(y[16], 3.5);
    }

    #[test]
    fn q4_1_block() {
        // d = 2, m = -1; byte j = 0x3 << 4 | (j % 16): element j = 2j - 1, elements 16.. = 5.
        let mut b = h(2.0).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| 0x30 | j));
        let y = deq(GgmlType::Q4_1, &b);
        assert_eq!(y[0], -1.0);
        assert_eq!(y[1], 1.0);
        assert_eq!(y[15], 29.0);
        assert!(y[16..].iter().all(|&v| v == 5.0));
    }

    #[test]
    fn q5_0_block() {
        // d = 1; qs all 0x21 (low 1, high 2); qh sets bit 0 (element 0) and bit 16
        // (element 16): element 0 = (1 + 16) - 16 = 1, element 1 = 1 - 16 = -15,
        // element 16 = (2 + 16) - 16 = 2, element 17 = 2 - 16 = -14.
        let mut b = h(1.0).to_vec();
        b.extend(0x0001_0001u32.to_le_bytes());
        b.extend([0x21; 16]);
        let y = deq(GgmlType::Q5_0, &b);
        assert_eq!(&y[..2], &[1.0, -15.0]);
        assert_eq!(&y[16..18], &[2.0, -14.0]);
        assert_eq!(y[31], -14.0);
    }

    #[test]
    fn q5_1_block() {
        // d = 0.25, m = 10; qs = 0xF0 (low 0, high 15); qh = bit 31 only (element 31):
        // element 0 = 0 * 0.25 + 10 = 10, element 16 = 15 * 0.25 + 10 = 13.75,
        // element 31 = (15 + 16) * 0.25 + 10 = 17.75.
        let mut b = h(0.25).to_vec();
        b.extend(h(10.0));
        b.extend(0x8000_0000u32.to_le_bytes());
        b.extend([0xF0; 16]);
        let y = deq(GgmlType::Q5_1, &b);
        assert_eq!(y[0], 10.0);
        assert_eq!(y[16], 13.75);
        assert_eq!(y[31], 17.75);
    }

    #[test]
    fn q8_0_blocks() {
        // Two blocks: d = 0.5 with q = j - 16, then d = -1 with q = 127.
        let mut b = h(0.5).to_vec();
        b.extend((0..32i32).map(|j| (j - 16) as i8 as u8));
        b.extend(h(-1.0));
        b.extend([127u8; 32]);
        let y = deq(GgmlType::Q8_0, &b);
        assert_eq!(y.len(), 64);
        assert_eq!(y[0], -8.0);
        assert_eq!(y[31], 7.5);
        assert!(y[32..].iter().all(|&v| v == -127.0));
    }

    #[test]
    fn q4_k_scales_unpack_as_ggml() {
        // Groups 0..4: low 6 bits of bytes 0..4 (scales) and 4..8 (mins).
        // Groups 4..8: byte j+4 holds low nibble scale / high nibble min, the 2 top bits come
        // from bits 6-7 of bytes j-4 and j.
        let mut s = [0u8; 12];
        s[0] = 0b11_000101; // group 0 scale 5; top bits 3 go to group 4's scale
        s[4] = 0b10_000111; // group 0 min 7; top bits 2 go to group 4's min
        s[8] = 0x9A; // group 4: scale low nibble 0xA, min low nibble 0x9
        assert_eq!(scale_min_k4(0, &s), (5, 7));
        assert_eq!(scale_min_k4(4, &s), (0xA | (3 << 4), 0x9 | (2 << 4)));
    }

    #[test]
    fn q4_k_block() {
        // d = 1, dmin = 0.5; group g scale g+1, min 2g (groups 4..8 through the packed form).
        let (sc, mn): (Vec<u8>, Vec<u8>) = (0..8u8).map(|g| (g + 1, 2 * g)).unzip();
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
        }
        for g in 0..8 {
            assert_eq!(scale_min_k4(g, &s), (sc[g], mn[g]));
        }
        // qs: low nibble 3, high nibble 12 everywhere.
        let mut b = h(1.0).to_vec();
        b.extend(h(0.5));
        b.extend(s);
        b.extend([0xC3; 128]);
        let y = deq(GgmlType::Q4_K, &b);
        // Chunk c: elements 64c..64c+32 are group 2c (q = 3), 64c+32.. group 2c+1 (q = 12).
        for (i, &v) in y.iter().enumerate() {
            let g = i / 32;
            let q = if g % 2 == 0 { 3.0 } else { 12.0 };
            assert_eq!(v, (g + 1) as f32 * q - 0.5 * (2 * g) as f32, "element {i}");
        }
        assert_eq!(y[0], 3.0); // 1 * 1 * 3 - 0
        assert_eq!(y[255], 8.0 * 12.0 - 7.0); // group 7: scale 8, min 14 * 0.5
    }

    #[test]
    fn q5_k_block() {
        // d = 2, dmin = 1; all scales 1 and mins 3 (groups 0..4 only need bytes 0..8,
        // groups 4..8 get low nibbles from bytes 8..12); qs = 0x21; qh = 0b0000_0110:
        // fifth bit set for groups 1 and 2.
        let mut s = [0u8; 12];
        s[..4].fill(1);
        s[4..8].fill(3);
        s[8..].fill(0x31);
        let mut b = h(2.0).to_vec();
        b.extend(h(1.0));
        b.extend(s);
        b.extend([0b0000_0110; 32]);
        b.extend([0x21; 128]);
        let y = deq(GgmlType::Q5_K, &b);
        // group 0 (low nibble 1): 2 * 1 - 3 = -1; group 1 (high nibble 2 + 16): 2 * 18 - 3 = 33;
        // group 2 (low 1 + 16): 2 * 17 - 3 = 31; group 3 (high 2): 2 * 2 - 3 = 1.
        assert_eq!(y[0], -1.0);
        assert_eq!(y[32], 33.0);
        assert_eq!(y[64], 31.0);
        assert_eq!(y[96], 1.0);
        assert_eq!(y[128], -1.0);
        assert_eq!(y[255], 1.0);
    }

    #[test]
    fn q6_k_block() {
        // d = 0.5; scales[i] = i - 8 (i8); ql = 0x5A (low 10, high 5); qh = 0b11_10_01_00:
        // elements l (bits 0-1 = 0): q = 10 - 32 = -22;
        // l+32 (bits 2-3 = 1): q = 10 + 16 - 32 = -6; l+64 (bits 4-5 = 2): 5 + 32 - 32 = 5;
        // l+96 (bits 6-7 = 3): 5 + 48 - 32 = 21.
        let mut b = vec![0x5A; 128];
        b.extend([0b11_10_01_00; 64]);
        b.extend((0..16i32).map(|i| (i - 8) as i8 as u8));
        b.extend(h(0.5));
        let y = deq(GgmlType::Q6_K, &b);
        let scale = |i: usize| i as f32 - 8.0;
        // Half 0 uses scales 0..8: element 0 -> scales[0], 16 -> scales[1], 32 -> scales[2],
        // 64 -> scales[4], 96 -> scales[6], 112 -> scales[7]; half 1 adds 8.
        assert_eq!(y[0], 0.5 * scale(0) * -22.0);
        assert_eq!(y[16], 0.5 * scale(1) * -22.0);
        assert_eq!(y[32], 0.5 * scale(2) * -6.0);
        assert_eq!(y[64], 0.5 * scale(4) * 5.0);
        assert_eq!(y[96], 0.5 * scale(6) * 21.0);
        assert_eq!(y[127], 0.5 * scale(7) * 21.0);
        assert_eq!(y[128], 0.5 * scale(8) * -22.0);
        assert_eq!(y[255], 0.5 * scale(15) * 21.0);
    }

    #[test]
    fn q2_k_block() {
        // d = 1, dmin = 0.5; scales[i] = (min i) << 4 | (scale 1); qs byte = 0b11_10_01_00,
        // so pass `shift` 0, 2, 4, 6 reads q = 0, 1, 2, 3.
        // Element order: half h (128), shift s, part p (16 elements each): group 8h + 2s' + p
        // where s' = shift / 2.
        let mut b: Vec<u8> = (0..16u8).map(|i| (i << 4) | 1).collect();
        b.extend([0b11_10_01_00; 64]);
        b.extend(h(1.0));
        b.extend(h(0.5));
        let y = deq(GgmlType::Q2_K, &b);
        for (i, &v) in y.iter().enumerate() {
            let group = i / 16;
            let q = ((group % 8) / 2) as f32;
            assert_eq!(v, q - 0.5 * group as f32, "element {i}");
        }
    }

    #[test]
    fn q3_k_scales_unpack_as_ggml() {
        // Scale i (6 bits): low 4 bits in byte i % 8 (low nibble for i < 8, high for i >= 8),
        // top 2 bits in byte 8 + i % 4, at bit 2 * (i / 4).
        let want: Vec<u8> = (0..16u8).map(|i| (i * 4 + 1) & 63).collect();
        let mut s = [0u8; 12];
        for (i, &v) in want.iter().enumerate() {
            let low = v & 0xF;
            s[i % 8] |= if i < 8 { low } else { low << 4 };
            s[8 + i % 4] |= (v >> 4) << (2 * (i / 4));
        }
        let got = q3_k_scales(&s);
        assert_eq!(got.map(|v| v as u8).to_vec(), want);
    }

    #[test]
    fn q3_k_block() {
        // All scales 34 (so scale - 32 = 2), d = 0.5; qs bytes 0b11_10_01_00 (q = shift / 2);
        // hmask bit set only for the first 16 bytes' bit 0: elements of the first pass,
        // part 0, keep their high bit (subtract 0), all others subtract 4.
        let mut s = [0u8; 12];
        for i in 0..16 {
            s[i % 8] |= if i < 8 { 2 } else { 2 << 4 };
            s[8 + i % 4] |= 2 << (2 * (i / 4)); // 34 = 0b10_0010
        }
        assert!(q3_k_scales(&s).iter().all(|&v| v == 34));
        let mut hmask = [0u8; 32];
        hmask[..16].fill(1);
        let mut b = hmask.to_vec();
        b.extend([0b11_10_01_00; 64]);
        b.extend(s);
        b.extend(h(0.5));
        let y = deq(GgmlType::Q3_K, &b);
        assert!(y[..16].iter().all(|&v| v == 0.0)); // 0.5 * 2 * (0 - 0)
        assert!(y[16..32].iter().all(|&v| v == -4.0)); // part 1 of pass 0: 0 - 4
        assert!(y[32..48].iter().all(|&v| v == -3.0)); // shift 2: q = 1, 1 - 4
        assert!(y[240..].iter().all(|&v| v == -1.0)); // last: q = 3, 3 - 4
    }

    #[test]
    fn unsupported_and_mismatched_buffers_are_errors() {
        let mut out = [0f32; 256];
        let e = dequantize(GgmlType::IQ2_XXS, &[0; 66], &mut out).unwrap_err();
        assert!(e.to_string().contains("IQ2_XXS"), "{e}");
        let e = dequantize(GgmlType::Q4_1, &[0; 19], &mut out[..32]).unwrap_err();
        assert!(e.to_string().contains("Q4_1"), "{e}");
        let e = dequantize(GgmlType::Q4_1, &[0; 20], &mut out[..31]).unwrap_err();
        assert!(e.to_string().contains("block"), "{e}");
        assert!(dequantize_to_vec(GgmlType::Q8_0, &[0; 34], usize::MAX).is_err());
    }
}
