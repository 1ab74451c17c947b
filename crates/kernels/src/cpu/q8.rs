//! Activations quantized to 8 bits in blocks of 32, so that dot products with 4- and 8-bit
//! weights run on integer SIMD (as llama.cpp's Q8_0/Q8_1 activations do).

/// Elements per activation block; equal to the block size of Q4_0, Q4_1 and Q8_0 weights.
pub const QK: usize = 32;

/// 32 activations as `d * qs[i]`, with `isum = sum(qs)` kept for weight formats with offsets.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub isum: i32,
    pub qs: [i8; QK],
}

/// Quantizes `x` (length a multiple of 32) into `out` (length `x.len() / 32`).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xb, ob) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        let mut isum = 0i32;
        for (q, v) in ob.qs.iter_mut().zip(xb) {
            // round() is to nearest, ties away from zero, like llama.cpp's roundf.
            let r = (v * inv).round() as i32;
            *q = r as i8;
            isum += r;
        }
        ob.d = d;
        ob.isum = isum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.173)
            .collect();
        let mut q = vec![BlockQ8::default(); 2];
        quantize_row(&x, &mut q);
        for (b, xb) in q.iter().zip(x.chunks(32)) {
            assert_eq!(b.isum, b.qs.iter().map(|&v| v as i32).sum::<i32>());
            for (qi, xi) in b.qs.iter().zip(xb) {
                assert!((*qi as f32 * b.d - xi).abs() <= b.d * 0.5 + 1e-6);
            }
        }
    }

    #[test]
    fn zeros_stay_zero() {
        let mut q = vec![BlockQ8::default(); 1];
        quantize_row(&[0.0; 32], &mut q);
        assert_eq!(q[0].d, 0.0);
        assert!(q[0].qs.iter().all(|&v| v == 0));
    }
}
