//! The dense f32 products the calibration forward and the Hessians need, on row-major buffers,
//! through faer's GEMM (multithreaded over rayon's global pool).

use faer::linalg::matmul::{matmul, triangular};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Row ranges for the worker threads: each runs a sequential GEMM on its rows. This avoids
/// faer's fine-grained thread barriers, which cost ~10% of all cycles here (perf) and much more
/// when the cores are shared with other work.
fn row_split(rows: usize) -> Vec<(usize, usize)> {
    let t = rayon::current_num_threads().max(1);
    let per = rows.div_ceil(t).max(64);
    (0..rows)
        .step_by(per)
        .map(|r| (r, (r + per).min(rows)))
        .collect()
}

/// `y[rows, out] = x[rows, inp] * w[out, inp]^T` (an nn.Linear without bias), or `+=` when
/// `add` is set.
pub fn linear(y: &mut [f32], x: &[f32], w: &[f32], rows: usize, inp: usize, out: usize, add: bool) {
    assert_eq!(x.len(), rows * inp, "linear: input size");
    assert_eq!(w.len(), out * inp, "linear: weight size");
    assert_eq!(y.len(), rows * out, "linear: output size");
    let accum = if add { Accum::Add } else { Accum::Replace };
    let wt = MatRef::from_row_major_slice(w, out, inp).transpose();
    let parts = row_split(rows);
    let mut ys: Vec<&mut [f32]> = Vec::new();
    let mut rest = y;
    for &(r0, r1) in &parts {
        let (a, b) = rest.split_at_mut((r1 - r0) * out);
        ys.push(a);
        rest = b;
    }
    ys.into_par_iter()
        .zip(parts.par_iter())
        .for_each(|(yp, &(r0, r1))| {
            matmul(
                MatMut::from_row_major_slice_mut(yp, r1 - r0, out),
                accum,
                MatRef::from_row_major_slice(&x[r0 * inp..r1 * inp], r1 - r0, inp),
                wt,
                1.0f32,
                Par::Seq,
            );
        });
}

/// Lower triangle (diagonal included) of `h[k, k] += x^T x` for `x[rows, k]`: half the work of
/// a full product; [`symmetrize_lower`] fills the rest once at the end.
pub fn syrk_lower(h: &mut [f32], x: &[f32], rows: usize, k: usize) {
    assert_eq!(x.len(), rows * k, "syrk: input size");
    assert_eq!(h.len(), k * k, "syrk: output size");
    let one = |dst: &mut [f32], r0: usize, r1: usize| {
        let xr = MatRef::from_row_major_slice(&x[r0 * k..r1 * k], r1 - r0, k);
        triangular::matmul(
            MatMut::from_row_major_slice_mut(dst, k, k),
            triangular::BlockStructure::TriangularLower,
            Accum::Add,
            xr.transpose(),
            triangular::BlockStructure::Rectangular,
            xr,
            triangular::BlockStructure::Rectangular,
            1.0f32,
            Par::Seq,
        );
    };
    let parts = row_split(rows);
    if parts.len() <= 1 {
        one(h, 0, rows);
        return;
    }
    // One partial sum per thread, added at the end (k*k floats each).
    let partial: Vec<Vec<f32>> = parts
        .par_iter()
        .map(|&(r0, r1)| {
            let mut p = vec![0f32; k * k];
            one(&mut p, r0, r1);
            p
        })
        .collect();
    for p in partial {
        h.par_chunks_mut(k).zip(p.par_chunks(k)).for_each(|(a, b)| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        });
    }
}

/// `c[k, k] += a^T b` for `a, b` both `[rows, k]` (split over the worker threads by rows).
pub fn cross(c: &mut [f32], a: &[f32], b: &[f32], rows: usize, k: usize) {
    assert_eq!(a.len(), rows * k, "cross: first input size");
    assert_eq!(b.len(), rows * k, "cross: second input size");
    assert_eq!(c.len(), k * k, "cross: output size");
    let partial: Vec<Vec<f32>> = row_split(rows)
        .par_iter()
        .map(|&(r0, r1)| {
            let mut p = vec![0f32; k * k];
            matmul(
                MatMut::from_row_major_slice_mut(&mut p, k, k),
                Accum::Replace,
                MatRef::from_row_major_slice(&a[r0 * k..r1 * k], r1 - r0, k).transpose(),
                MatRef::from_row_major_slice(&b[r0 * k..r1 * k], r1 - r0, k),
                1.0f32,
                Par::Seq,
            );
            p
        })
        .collect();
    for p in partial {
        c.par_chunks_mut(k).zip(p.par_chunks(k)).for_each(|(x, y)| {
            x.iter_mut().zip(y).for_each(|(u, v)| *u += v);
        });
    }
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
        let mut c = vec![0.0; inp * inp];
        let x2: Vec<f32> = x.iter().map(|v| v * 2.0 - 0.5).collect();
        cross(&mut c, &x, &x2, rows, inp);
        for i in 0..inp {
            for j in 0..inp {
                let s: f32 = (0..rows).map(|r| x[r * inp + i] * x2[r * inp + j]).sum();
                assert!((c[i * inp + j] - s).abs() < 1e-5, "c[{i},{j}]");
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
