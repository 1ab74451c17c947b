//! One GPTQ-quantized linear layer: its four tensors validated against the config and the
//! layer's dimensions, the plain dequantizer (the reference for every kernel), and
//! round-to-nearest quantization into the same form.

use super::config::{CheckpointFormat, GptqConfig};
use super::pack::{
    pack_qweight, pack_qzeros, packed_len, unpack_qweight, unpack_qzeros, PackError,
};
use crate::safetensors::{Dtype, ModelWeights};
use crate::FormatError;
use half::f16;

/// A quantized linear layer with `k` inputs and `n` outputs, decoded from its tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqLinear {
    pub bits: u32,
    pub k: usize,
    pub n: usize,
    /// Number of groups (rows of `scales`).
    pub groups: usize,
    pub format: CheckpointFormat,
    pub qweight: Vec<i32>, // (packed_len(k, bits), n)
    pub qzeros: Vec<i32>,  // (groups, packed_len(n, bits))
    pub scales: Vec<f16>,  // (groups, n)
    pub g_idx: Vec<i32>,   // (k)
}

/// The four tensors of a layer as safetensors entries: (name suffix, dtype, shape, bytes).
pub type LinearTensors = Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)>;

fn le_i32(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl GptqLinear {
    /// Reads `{prefix}.qweight`, `.qzeros`, `.scales` and `.g_idx` for a layer of `k` inputs
    /// and `n` outputs, checking every dtype, shape and g_idx value. Errors name the tensor
    /// and say what was expected.
    pub fn read(
        weights: &ModelWeights,
        prefix: &str,
        cfg: &GptqConfig,
        k: usize,
        n: usize,
    ) -> Result<GptqLinear, FormatError> {
        let bits = cfg.bits;
        let groups = cfg.n_groups(k);
        let fail =
            |name: &str, file: Option<&std::path::Path>, msg: String| FormatError::Safetensors {
                path: file
                    .map(|f| f.to_owned())
                    .unwrap_or_else(|| cfg.source.clone()),
                msg: format!("tensor '{prefix}.{name}': {msg}"),
            };
        let get = |name: &str, dtype: Dtype, shape: [usize; 2]| -> Result<Vec<u8>, FormatError> {
            let full = format!("{prefix}.{name}");
            let t = weights.tensor(&full).ok_or_else(|| {
                fail(name, None, format!("missing from the checkpoint (a {bits}-bit GPTQ layer needs qweight, qzeros, scales and g_idx)"))
            })?;
            let want: Vec<usize> = if shape[0] == usize::MAX {
                vec![shape[1]]
            } else {
                shape.to_vec()
            };
            if t.dtype != dtype || t.shape != want.as_slice() {
                return Err(fail(
                    name,
                    Some(t.file),
                    format!(
                        "expected {dtype} {want:?} ({bits} bits, group size {}, {k} inputs, {n} outputs), found {} {:?}",
                        cfg.group_size.map_or("none".to_string(), |g| g.to_string()),
                        t.dtype,
                        t.shape
                    ),
                ));
            }
            Ok(t.bytes.to_vec())
        };
        let qweight = le_i32(&get("qweight", Dtype::I32, [packed_len(k, bits), n])?);
        let qzeros = le_i32(&get("qzeros", Dtype::I32, [groups, packed_len(n, bits)])?);
        let scales: Vec<f16> = get("scales", Dtype::F16, [groups, n])?
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect();
        // Files quantized without act-order by some writers carry no g_idx; it is then the
        // plain `i / group_size` (with act-order it cannot be guessed).
        let g_idx = match weights.tensor(&format!("{prefix}.g_idx")) {
            None if !cfg.desc_act => (0..k)
                .map(|i| cfg.group_size.map_or(0, |g| i / g) as i32)
                .collect(),
            _ => le_i32(&get("g_idx", Dtype::I32, [usize::MAX, k])?),
        };
        if let Some(i) = g_idx.iter().position(|&g| g < 0 || g as usize >= groups) {
            return Err(fail(
                "g_idx",
                None,
                format!("g_idx[{i}] = {} is outside 0..{groups}", g_idx[i]),
            ));
        }
        if let Some((i, s)) = scales.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            return Err(fail(
                "scales",
                None,
                format!("scales[{}, {}] = {s} is not finite", i / n, i % n),
            ));
        }
        Ok(GptqLinear {
            bits,
            k,
            n,
            groups,
            format: cfg.format,
            qweight,
            qzeros,
            scales,
            g_idx,
        })
    }

    /// The integer codes, `[k, n]` row-major.
    pub fn codes(&self) -> Result<Vec<u8>, PackError> {
        unpack_qweight(&self.qweight, self.k, self.n, self.bits)
    }

    /// The real zero points (stored + 1 for v1), `[groups, n]` row-major.
    pub fn zeros(&self) -> Result<Vec<i32>, PackError> {
        let stored = unpack_qzeros(&self.qzeros, self.groups, self.n, self.bits)?;
        Ok(stored
            .into_iter()
            .map(|s| self.format.zero_from_stored(s))
            .collect())
    }

    /// The plain dequantizer: `w[j, i] = scales[g, j] * (q[i, j] - z[g, j])` with
    /// `g = g_idx[i]`, as an nn.Linear weight `[n, k]` row-major.
    pub fn dequantize(&self) -> Result<Vec<f32>, PackError> {
        let (codes, zeros) = (self.codes()?, self.zeros()?);
        let mut w = vec![0f32; self.n * self.k];
        for i in 0..self.k {
            let g = self.g_idx[i] as usize;
            for j in 0..self.n {
                let q = codes[i * self.n + j] as i32 - zeros[g * self.n + j];
                w[j * self.k + i] = self.scales[g * self.n + j].to_f32() * q as f32;
            }
        }
        Ok(w)
    }

    /// The tensors to write for this layer (suffixes `qweight`, `qzeros`, `scales`, `g_idx`).
    pub fn tensors(&self) -> LinearTensors {
        let i32s = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        vec![
            (
                "qweight",
                Dtype::I32,
                vec![packed_len(self.k, self.bits), self.n],
                i32s(&self.qweight),
            ),
            (
                "qzeros",
                Dtype::I32,
                vec![self.groups, packed_len(self.n, self.bits)],
                i32s(&self.qzeros),
            ),
            (
                "scales",
                Dtype::F16,
                vec![self.groups, self.n],
                self.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ),
            ("g_idx", Dtype::I32, vec![self.k], i32s(&self.g_idx)),
        ]
    }

    /// Builds a layer from integer codes `[k, n]`, real zero points `[groups, n]`, scales
    /// `[groups, n]` and `g_idx` `[k]`: the packing step of any quantizer (GPTQ or RTN).
    /// Fails when a zero cannot be stored in `format` (v1 cannot hold a zero of 0).
    #[allow(clippy::too_many_arguments)]
    pub fn from_codes(
        bits: u32,
        k: usize,
        n: usize,
        format: CheckpointFormat,
        codes: &[u8],
        zeros: &[i32],
        scales: Vec<f16>,
        g_idx: Vec<i32>,
    ) -> Result<GptqLinear, PackError> {
        let groups = scales.len() / n.max(1);
        if scales.len() != groups * n || zeros.len() != groups * n || g_idx.len() != k {
            return Err(PackError(format!(
                "inconsistent layer: {} scales, {} zeros for {n} outputs, {} g_idx for {k} inputs",
                scales.len(),
                zeros.len(),
                g_idx.len()
            )));
        }
        if let Some(i) = g_idx.iter().position(|&g| g < 0 || g as usize >= groups) {
            return Err(PackError(format!(
                "g_idx[{i}] = {} is outside 0..{groups}",
                g_idx[i]
            )));
        }
        let stored = zeros
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                format.stored_from_zero(z, bits).ok_or_else(|| {
                    PackError(format!(
                        "zero point {z} at [{}, {}] cannot be stored in a {bits}-bit {} checkpoint",
                        i / n,
                        i % n,
                        format.name()
                    ))
                })
            })
            .collect::<Result<Vec<u8>, _>>()?;
        Ok(GptqLinear {
            bits,
            k,
            n,
            groups,
            format,
            qweight: pack_qweight(codes, k, n, bits)?,
            qzeros: pack_qzeros(&stored, groups, n, bits)?,
            scales,
            g_idx,
        })
    }

    /// Round-to-nearest quantization of an nn.Linear weight `w` (`[n, k]` row-major) with
    /// AutoGPTQ's per-group scale and zero rule, but without GPTQ's error feedback.
    ///
    /// `order` (act-order) lists the input columns in quantization order: groups are
    /// consecutive runs of `group_size` in that order, so `g_idx[order[r]] = r / group_size`.
    /// Without it groups are consecutive input columns.
    pub fn quantize_rtn(
        w: &[f32],
        n: usize,
        k: usize,
        cfg: &RtnParams,
        order: Option<&[usize]>,
    ) -> Result<GptqLinear, PackError> {
        super::pack::check_bits(cfg.bits)?;
        if w.len() != n * k {
            return Err(PackError(format!(
                "{} weights for a {n} x {k} layer",
                w.len()
            )));
        }
        let identity: Vec<usize>;
        let order = match order {
            Some(o) => {
                let mut seen = vec![false; k];
                if o.len() != k
                    || o.iter()
                        .any(|&c| c >= k || std::mem::replace(&mut seen[c], true))
                {
                    return Err(PackError(format!("order is not a permutation of 0..{k}")));
                }
                o
            }
            None => {
                identity = (0..k).collect();
                &identity
            }
        };
        let gs = cfg.group_size.unwrap_or(k).max(1);
        let groups = k.div_ceil(gs);
        let maxq = (1i32 << cfg.bits) - 1;
        let mut g_idx = vec![0i32; k];
        for (r, &c) in order.iter().enumerate() {
            g_idx[c] = (r / gs) as i32;
        }
        let mut scales = vec![f16::ZERO; groups * n];
        let mut zeros = vec![0i32; groups * n];
        let mut codes = vec![0u8; k * n];
        for g in 0..groups {
            let cols = &order[g * gs..((g + 1) * gs).min(k)];
            for j in 0..n {
                let row = &w[j * k..(j + 1) * k];
                let mut xmin = cols.iter().fold(0f32, |m, &c| m.min(row[c]));
                let mut xmax = cols.iter().fold(0f32, |m, &c| m.max(row[c]));
                if cfg.sym {
                    xmax = xmax.max(xmin.abs());
                    if xmin < 0.0 {
                        xmin = -xmax;
                    }
                }
                if xmin == 0.0 && xmax == 0.0 {
                    (xmin, xmax) = (-1.0, 1.0);
                }
                let scale = f16::from_f32((xmax - xmin) / maxq as f32);
                // A scale that rounds to 0 in f16 would divide by zero below.
                let scale = if scale.to_f32() > 0.0 {
                    scale
                } else {
                    f16::MIN_POSITIVE_SUBNORMAL
                };
                let s = scale.to_f32();
                let zero = if cfg.sym {
                    (maxq + 1) / 2
                } else {
                    (-xmin / s).round().clamp(0.0, maxq as f32) as i32
                };
                scales[g * n + j] = scale;
                zeros[g * n + j] = zero;
                for &c in cols {
                    let q = ((row[c] / s).round() as i32 + zero).clamp(0, maxq);
                    codes[c * n + j] = q as u8;
                }
            }
        }
        GptqLinear::from_codes(cfg.bits, k, n, cfg.format, &codes, &zeros, scales, g_idx)
    }
}

/// Settings of [`GptqLinear::quantize_rtn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtnParams {
    pub bits: u32,
    pub group_size: Option<usize>,
    pub sym: bool,
    pub format: CheckpointFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(n: usize, k: usize, seed: u32) -> Vec<f32> {
        (0..n * k)
            .map(|i| {
                let h = (i as u32 ^ seed)
                    .wrapping_mul(2654435761)
                    .rotate_left(13)
                    .wrapping_mul(40503);
                (h as f32 / u32::MAX as f32 - 0.5) * 0.2
            })
            .collect()
    }

    #[test]
    fn rtn_error_is_within_half_a_step_for_every_layout() {
        let (n, k) = (8, 192);
        let w = weights(n, k, 3);
        let reversed: Vec<usize> = (0..k).rev().collect();
        let shuffled: Vec<usize> = (0..k).map(|i| (i * 77) % k).collect();
        for bits in [2, 3, 4, 8] {
            for gs in [None, Some(32), Some(128)] {
                for sym in [true, false] {
                    for format in [CheckpointFormat::V1, CheckpointFormat::V2] {
                        if format == CheckpointFormat::V1 && !sym {
                            continue;
                        }
                        for order in [None, Some(&reversed[..]), Some(&shuffled[..])] {
                            let p = RtnParams {
                                bits,
                                group_size: gs,
                                sym,
                                format,
                            };
                            let l = GptqLinear::quantize_rtn(&w, n, k, &p, order).unwrap();
                            assert_eq!(l.groups, k.div_ceil(gs.unwrap_or(k)));
                            let d = l.dequantize().unwrap();
                            let codes = l.codes().unwrap();
                            for j in 0..n {
                                for i in 0..k {
                                    let g = l.g_idx[i] as usize;
                                    let s = l.scales[g * n + j].to_f32();
                                    let q = codes[i * n + j] as i32;
                                    let (got, want) = (d[j * k + i], w[j * k + i]);
                                    // Clamped codes sit at the range ends; others round.
                                    let clamped = q == 0 || q == (1 << bits) - 1;
                                    assert!(
                                        clamped || (got - want).abs() <= s * 0.5001,
                                        "{bits}b {gs:?} sym {sym} {format:?}: [{j},{i}] {got} vs {want} (scale {s})"
                                    );
                                    // And even clamped values stay within one step of the range.
                                    assert!((got - want).abs() <= s * 1.0001 + 1e-6 || !sym);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn act_order_groups_follow_the_order() {
        let (n, k) = (2, 64);
        let order: Vec<usize> = (0..k).rev().collect();
        let p = RtnParams {
            bits: 4,
            group_size: Some(32),
            sym: true,
            format: CheckpointFormat::V1,
        };
        let l = GptqLinear::quantize_rtn(&weights(n, k, 1), n, k, &p, Some(&order)).unwrap();
        assert_eq!(l.g_idx[63], 0);
        assert_eq!(l.g_idx[0], 1);
        // Symmetric v1 4-bit: every stored zero is 7.
        assert!(l.qzeros.iter().all(|&z| z == 0x7777_7777 || z == 0x77));
        assert!(GptqLinear::quantize_rtn(&[0.0; 4], 2, 2, &p, Some(&[0, 0])).is_err());
    }

    #[test]
    fn v1_refuses_a_zero_of_zero() {
        let e = GptqLinear::from_codes(
            4,
            32,
            1,
            CheckpointFormat::V1,
            &[0; 32],
            &[0],
            vec![f16::ONE],
            vec![0; 32],
        )
        .unwrap_err();
        assert!(e.0.contains("zero point 0"), "{e}");
        assert!(GptqLinear::from_codes(
            4,
            32,
            1,
            CheckpointFormat::V2,
            &[0; 32],
            &[0],
            vec![f16::ONE],
            vec![0; 32]
        )
        .is_ok());
    }

    /// Layers packed and dequantized by numpy from the spec (tools/gptq_golden.py), in every
    /// layout: reading and dequantizing them here must give the same f32 weights exactly.
    #[test]
    fn numpy_golden_layers_dequantize_bit_for_bit() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gptq");
        let layers = ModelWeights::open_file(&dir.join("layers.safetensors")).unwrap();
        let golden = ModelWeights::open_file(&dir.join("golden.safetensors")).unwrap();
        let layouts: serde_json::Value =
            serde_json::from_str(&layers.files()[0].metadata()["layouts"]).unwrap();
        let layouts = layouts.as_object().unwrap();
        assert_eq!(layouts.len(), 16);
        for (name, l) in layouts {
            let cfg = GptqConfig::from_json(l, std::path::Path::new(name)).unwrap();
            let (k, n) = (
                l["k"].as_u64().unwrap() as usize,
                l["n"].as_u64().unwrap() as usize,
            );
            let layer = GptqLinear::read(&layers, name, &cfg, k, n).unwrap();
            let want = golden
                .tensor(&format!("{name}.weight"))
                .unwrap()
                .to_f32_vec()
                .unwrap();
            assert_eq!(layer.dequantize().unwrap(), want, "{name}");
            // Packing our own codes again gives numpy's words back.
            let again = GptqLinear::from_codes(
                cfg.bits,
                k,
                n,
                cfg.format,
                &layer.codes().unwrap(),
                &layer.zeros().unwrap(),
                layer.scales.clone(),
                layer.g_idx.clone(),
            )
            .unwrap();
            assert_eq!(again, layer, "{name}");
        }
    }
}
