//! Weight tensors as the forward pass sees them: matrices in their file format (borrowed from a
//! memory map, never expanded to f32) and small f32 vectors (norms, biases).

use kernels::cpu::matmul::{WeightFormat, WeightView};
use std::sync::Arc;

/// Bytes owned by something that lives as long as the model: a memory-mapped file, or a
/// buffer built at load time.
#[derive(Clone)]
pub struct Bytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: std::ops::Range<usize>,
}

impl Bytes {
    /// The sub-range `range` of `owner`; fails when it is out of bounds.
    pub fn new(
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: std::ops::Range<usize>,
    ) -> Result<Bytes, String> {
        let len = (*owner).as_ref().len();
        if range.start > range.end || range.end > len {
            return Err(format!(
                "byte range {range:?} is outside a buffer of {len} bytes"
            ));
        }
        Ok(Bytes { owner, range })
    }

    pub fn from_vec(v: Vec<u8>) -> Bytes {
        let len = v.len();
        Bytes {
            owner: Arc::new(v),
            range: 0..len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }
}

/// A weight matrix of `rows` outputs by `cols` inputs in its storage format.
#[derive(Clone)]
pub struct Matrix {
    pub name: String,
    pub format: WeightFormat,
    pub bytes: Bytes, // (rows, row_bytes)
    pub rows: usize,
    pub cols: usize,
    /// GPTQ act-order: stored column c holds input `perm[c]` (see `kernels::cpu::gptq`).
    pub perm: Option<Arc<[u32]>>,
}

impl Matrix {
    /// Checks the byte count against the shape and format, naming the tensor on failure.
    pub fn new(
        name: &str,
        format: WeightFormat,
        bytes: Bytes,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix, String> {
        WeightView::new(format, bytes.as_slice(), rows, cols)
            .map_err(|e| format!("tensor '{name}': {e}"))?;
        Ok(Matrix {
            name: name.to_string(),
            format,
            bytes,
            rows,
            cols,
            perm: None,
        })
    }

    /// A matrix whose stored column c holds input `perm[c]` (GPTQ's act-order), or in order.
    pub fn permuted(
        name: &str,
        format: WeightFormat,
        data: Vec<u8>,
        perm: Option<Vec<u32>>,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix, String> {
        let mut m = Matrix::new(name, format, Bytes::from_vec(data), rows, cols)?;
        if let Some(p) = perm {
            if p.len() != cols {
                return Err(format!(
                    "tensor '{name}': permutation of {} inputs for {cols} columns",
                    p.len()
                ));
            }
            m.perm = Some(p.into());
        }
        Ok(m)
    }

    pub fn view(&self) -> WeightView<'_> {
        WeightView {
            format: self.format,
            data: self.bytes.as_slice(),
            rows: self.rows,
            cols: self.cols,
            perm: self.perm.as_deref(),
        }
    }

    /// Fails unless the matrix is `rows` x `cols`.
    pub fn expect_shape(&self, rows: usize, cols: usize) -> Result<(), String> {
        if self.rows == rows && self.cols == cols {
            Ok(())
        } else {
            Err(format!(
                "tensor '{}' is {} x {} (out x in), expected {rows} x {cols}",
                self.name, self.rows, self.cols
            ))
        }
    }

    pub fn size_bytes(&self) -> usize {
        self.bytes.as_slice().len()
    }
}
