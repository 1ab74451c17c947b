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
    /// Built at load time into a heap buffer of its own (see [`gather_on_huge_pages`]).
    own_buffer: bool,
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
        Ok(Bytes {
            owner,
            range,
            own_buffer: false,
        })
    }

    pub fn from_vec(v: Vec<u8>) -> Bytes {
        let len = v.len();
        Bytes {
            owner: Arc::new(v),
            range: 0..len,
            own_buffer: true,
        }
    }

    /// Bytes held in a heap buffer of their own (0 when borrowed from a file or shared).
    pub fn own_heap_bytes(&self) -> usize {
        if self.own_buffer {
            self.range.len()
        } else {
            0
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }
}

/// Moves the matrices built at load time into heap buffers of their own (repacked GPTQ layers,
/// a rounded head) into one buffer on huge pages ([`crate::huge_pages`]), one matrix at a time
/// so that each heap copy is freed as soon as it is moved. Matrices borrowed from a file
/// mapping stay where they are.
pub fn gather_on_huge_pages(matrices: &mut [&mut Matrix]) {
    let mut total = 0;
    let ranges: Vec<Option<std::ops::Range<usize>>> = matrices
        .iter()
        .map(|m| {
            m.bytes.own_buffer.then(|| {
                let len = m.bytes.range.len();
                let range = total..total + len;
                total = (total + len).next_multiple_of(64);
                range
            })
        })
        .collect();
    if total == 0 {
        return;
    }
    let mut buffer = crate::huge_pages::HugeBuffer::zeroed(total);
    for (m, range) in matrices.iter_mut().zip(&ranges) {
        if let Some(range) = range {
            buffer.as_mut_slice()[range.clone()].copy_from_slice(m.bytes.as_slice());
            // The heap copy goes now; the matrix points into `buffer` once it is shared.
            m.bytes = Bytes::from_vec(Vec::new());
        }
    }
    let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(buffer);
    for (m, range) in matrices.iter_mut().zip(ranges) {
        if let Some(range) = range {
            m.bytes = Bytes {
                owner: owner.clone(),
                range,
                own_buffer: false,
            };
        }
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
