//! The dense f32 products the calibration forward and the Hessians need, on row-major buffers,
//! through faer's GEMM (multithreaded over rayon's global pool).

use faer::linalg::matmul::{matmul, triangular};
use faer::{Accum, MatMut, MatRef, Par};

fn par() -> Par {
    match rayon::current_num_threads() {
        1 => Par::Seq,
        n => Par::rayon(n),
    }
}

/// `y[rows, out] = x[rows, inp] * w[out, inp]^T` (an nn.Linear without bias), or `+=` when
/// `add` is set.
pub fn linear(y: &mut [f32], x: &[f32], w: &[f32], rows: usize, inp: usize, out: usize, add: bool) {
    assert_eq!(x.len(), rows * inp, "linear: input size");
    assert_eq!(w.len(), out * inp, "linear: weight size");
    assert_eq!(y.len(), rows * out, "linear: output size");
    let accum = if add { Accum::Add } else { Accum::Replace };
    matmul(
        MatMut::from_row_major_slice_mut(y, rows, out),
        accum,
        MatRef::from_row_major_slice(x, rows, inp),
        MatRef::from_row_major_slice(w, out, inp).transpose(),
        1.0f32,
        par(),
    );
}

/// Lower triangle (diagonal included) of `h[k, k] += x^T x` for `x[rows, k]`: half the work of
/// a full product; [`symmetrize_lower`] fills the rest once at the end.
pub fn syrk_lower(h: &mut [f32], x: &[f32], rows: usize, k: usize) {
    assert_eq!(x.len(), rows * k, "syrk: input size");
    assert_eq!(h.len(), k * k, "syrk: output size");
    let xr = MatRef::from_row_major_slice(x, rows, k);
    triangular::matmul(
        MatMut::from_row_major_slice_mut(h, k, k),
        triangular::BlockStructure::TriangularLower,
        Accum::Add,
        xr.transpose(),
        triangular::BlockStructure::Rectangular,
        xr,
        triangular::BlockStructure::Rectangular,
        1.0f32,
        par(),
    );
}

/// Copies the lower triangle of a row-major `[k, k]` matrix onto its upper triangle.
pub fn symmetrize_lower<T: Copy>(h: &mut [T], k: usize) {
    for i in 0..k {
        for j in 0..i {
            h[j * k + i] = h[i * k + j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_syrk_match_naive_sums() {
        let (rows, inp, out) = (7, 5, 3);
        let x: Vec<f32> = (0..rows * inp).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..out * inp).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut y = vec![1.0; rows * out];
        linear(&mut y, &x, &w, rows, inp, out, true);
        for r in 0..rows {
            for o in 0..out {
                let s: f32 = (0..inp).map(|i| x[r * inp + i] * w[o * inp + i]).sum();
                assert!((y[r * out + o] - 1.0 - s).abs() < 1e-5);
            }
        }
        let mut h = vec![0.0; inp * inp];
        syrk_lower(&mut h, &x, rows, inp);
        symmetrize_lower(&mut h, inp);
        for i in 0..inp {
            for j in 0..inp {
                let s: f32 = (0..rows).map(|r| x[r * inp + i] * x[r * inp + j]).sum();
                assert!((h[i * inp + j] - s).abs() < 1e-5, "h[{i},{j}]");
            }
        }
    }
}
