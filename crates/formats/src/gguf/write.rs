//! A small GGUF v3 writer: metadata plus tensors, each tensor's data aligned to
//! `general.alignment` (default 32), in the layout llama.cpp writes.
//!
//! It refuses to write what the reader would refuse (duplicate keys or names, bad dimensions,
//! data of the wrong size, a bad alignment), so a file it writes always reads back.

use super::{
    ArrayValue, Value, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS,
};
use crate::ggml::GgmlType;
use crate::FormatError;
use std::io::Write;
use std::path::Path;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then writes them as one GGUF v3 file.
///
/// ```
/// use formats::gguf::{write::GgufWriter, GgufFile};
/// use formats::GgmlType;
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", "llama")?;
/// w.add_tensor("output_norm.weight", &[2], GgmlType::F32, vec![0u8; 8])?;
/// let file = GgufFile::from_vec(w.to_bytes()?)?;
/// assert_eq!(file.tensors().len(), 1);
/// # Ok::<(), formats::FormatError>(())
/// ```
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

fn invalid(msg: String) -> FormatError {
    FormatError::Gguf(format!("writer: {msg}"))
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Adds a key/value. `general.alignment` must be a u32 power of two; it sets the
    /// alignment the tensors are written with.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<&mut GgufWriter, FormatError> {
        let (key, value) = (key.into(), value.into());
        if self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(invalid(format!("duplicate metadata key '{key}'")));
        }
        if let Value::Array(a) = &value {
            if array_depth(a) > MAX_ARRAY_DEPTH {
                return Err(invalid(format!(
                    "metadata key '{key}': arrays nested more than {MAX_ARRAY_DEPTH} deep"
                )));
            }
        }
        if key == ALIGNMENT_KEY && !matches!(value, Value::U32(a) if a.is_power_of_two()) {
            return Err(invalid(format!(
                "'{ALIGNMENT_KEY}' must be a u32 power of two, got {}",
                value.describe()
            )));
        }
        self.metadata.push((key, value));
        Ok(self)
    }

    /// Adds a tensor: `dims[0]` innermost (a PyTorch `[out, in]` weight is `[in, out]`),
    /// `data` exactly the bytes of that many `ty` elements.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut GgufWriter, FormatError> {
        let (name, data) = (name.into(), data.into());
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid(format!("duplicate tensor name '{name}'")));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS || dims.contains(&0) {
            return Err(invalid(format!(
                "tensor '{name}': dims {dims:?} must be 1 to {MAX_DIMS} nonzero dimensions"
            )));
        }
        if !dims[0].is_multiple_of(ty.block_size() as u64) {
            return Err(invalid(format!(
                "tensor '{name}': dims[0] = {} is not a multiple of the {ty} block size {}",
                dims[0],
                ty.block_size()
            )));
        }
        let n_bytes = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .and_then(|n| (n / ty.block_size() as u64).checked_mul(ty.type_size() as u64));
        if n_bytes != Some(data.len() as u64) {
            return Err(invalid(format!(
                "tensor '{name}': {ty} dims {dims:?} need {n_bytes:?} bytes, got {}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(self)
    }

    fn alignment(&self) -> u64 {
        let set = self.metadata.iter().find_map(|(k, v)| match v {
            Value::U32(a) if k == ALIGNMENT_KEY => Some(*a),
            _ => None,
        });
        set.unwrap_or(DEFAULT_ALIGNMENT) as u64
    }

    /// Writes the whole file to `out`.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let align = self.alignment();
        let mut head = Vec::new();
        head.extend(GGUF_MAGIC);
        head.extend(3u32.to_le_bytes());
        head.extend((self.tensors.len() as u64).to_le_bytes());
        head.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            encode_string(&mut head, key);
            head.extend(value.value_type().id().to_le_bytes());
            encode_value(&mut head, value);
        }
        // Each tensor starts at the next aligned offset after the previous one.
        let mut offset = 0u64;
        for t in &self.tensors {
            encode_string(&mut head, &t.name);
            head.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend(d.to_le_bytes());
            }
            head.extend(t.ty.id().to_le_bytes());
            head.extend(offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(align);
        }
        pad(&mut head, align);
        out.write_all(&head)?;
        for t in &self.tensors {
            out.write_all(&t.data)?;
            let padding = (t.data.len() as u64).next_multiple_of(align) - t.data.len() as u64;
            out.write_all(&vec![0u8; padding as usize])?;
        }
        Ok(())
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .map_err(|e| FormatError::io("<memory>", e))?;
        Ok(out)
    }

    /// Writes the file at `path` (through a temporary file next to it, renamed at the end, so
    /// that an interrupted write leaves no half-written model behind).
    pub fn write_file(&self, path: &Path) -> Result<(), FormatError> {
        let tmp = path.with_extension("gguf.partial");
        let io = |e| FormatError::io(path, e);
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut out = std::io::BufWriter::new(file);
        self.write_to(&mut out).map_err(io)?;
        out.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// How many arrays deep `a` goes (1 for an array of scalars).
fn array_depth(a: &ArrayValue) -> usize {
    match a {
        ArrayValue::Array(inner) => 1 + inner.iter().map(array_depth).max().unwrap_or(0),
        _ => 1,
    }
}

fn pad(buf: &mut Vec<u8>, align: u64) {
    let len = (buf.len() as u64).next_multiple_of(align);
    buf.resize(len as usize, 0);
}

/// Appends a GGUF string: u64 length, then the UTF-8 bytes.
pub fn encode_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Appends a value's encoding (without its type id, which precedes it in a key/value).
pub fn encode_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.extend(v.to_le_bytes()),
        Value::I8(v) => out.extend(v.to_le_bytes()),
        Value::U16(v) => out.extend(v.to_le_bytes()),
        Value::I16(v) => out.extend(v.to_le_bytes()),
        Value::U32(v) => out.extend(v.to_le_bytes()),
        Value::I32(v) => out.extend(v.to_le_bytes()),
        Value::F32(v) => out.extend(v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => encode_string(out, s),
        Value::Array(a) => encode_array(out, a),
        Value::U64(v) => out.extend(v.to_le_bytes()),
        Value::I64(v) => out.extend(v.to_le_bytes()),
        Value::F64(v) => out.extend(v.to_le_bytes()),
    }
}

/// Appends an array: u32 element type, u64 count, elements.
pub fn encode_array(out: &mut Vec<u8>, a: &ArrayValue) {
    out.extend(a.elem_type().id().to_le_bytes());
    out.extend((a.len() as u64).to_le_bytes());
    match a {
        ArrayValue::U8(v) => out.extend(v),
        ArrayValue::I8(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        ArrayValue::U16(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        ArrayValue::I16(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        ArrayValue::U32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        ArrayValue::I32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        ArrayValue::F32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        ArrayValue::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        ArrayValue::String(v) => v.iter().for_each(|s| encode_string(out, s)),
        ArrayValue::Array(v) => v.iter().for_each(|a| encode_array(out, a)),
        ArrayValue::U64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        ArrayValue::I64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        ArrayValue::F64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
    }
}
