//! GGUF v2/v3 reader over a memory map: metadata, tensor infos and tensor bytes, with every
//! count, length, dimension and offset checked against the file before it is used.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor_count, u64 kv_count; then
//! kv_count key/values (u64-length UTF-8 key, u32 value type, value); then tensor_count tensor
//! infos (name, u32 n_dims, u64 `dims[n_dims]`, u32 ggml type, u64 offset relative to the data
//! section); then padding up to `general.alignment` (default 32) and the data section.
//!
//! GGUF readers have a history of memory-safety bugs from trusting these numbers, so this one
//! bounds every count by the bytes that remain before allocating for it, and refuses files
//! whose tensors lie outside the file, overlap, or are misaligned.

pub mod write;

use crate::ggml::{self, GgmlType};
use crate::FormatError;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The bytes a [`GgufFile`] reads from: a memory map, or any in-memory buffer.
pub type Bytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// The metadata key that sets the alignment (a u32, nonzero power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays inside arrays this reader accepts (no real file nests at all;
/// the bound keeps recursion finite).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Smallest encoded key/value: 8-byte key length (empty key), 4-byte type, 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest encoded tensor info: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;
/// Upper bound on capacity reserved from a count in the file before the elements are read;
/// beyond it the vectors grow with the data actually parsed.
const MAX_PREALLOC: usize = 1 << 16;

// ---------------------------------------------------------------------------------------------
// Metadata values

/// The type of a metadata value, with its id in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_u32(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Encoded size of a scalar of this type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// Fewest bytes one value of this type takes in the file (a string its u64 length, an
    /// array its u32 element type and u64 count).
    fn min_encoded_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 4 + 8,
            _ => self.fixed_size().unwrap_or(1) as u64,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ArrayValue),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: all elements share one type, so they are stored as one typed vector
/// (a 49152-entry vocabulary is one `Vec<String>`, not 49152 tagged values). Arrays of arrays
/// hold inner arrays that each carry their own element type, as in the file.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayValue {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<ArrayValue>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The value as an unsigned integer, from any integer type whose value is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, from any integer type whose value fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an f32, from f32 or (rounded) f64.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&ArrayValue> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short description for error messages: the type, and the value when it is short
    /// (`u32 7`, `string "llama"`, `array of 49152 string`).
    pub fn describe(&self) -> String {
        match self {
            Value::String(s) if s.chars().count() <= 40 => format!("string {s:?}"),
            Value::String(s) => format!("string of {} bytes", s.len()),
            Value::Array(a) => format!("array of {} {}", a.len(), a.elem_type()),
            Value::U8(v) => format!("u8 {v}"),
            Value::I8(v) => format!("i8 {v}"),
            Value::U16(v) => format!("u16 {v}"),
            Value::I16(v) => format!("i16 {v}"),
            Value::U32(v) => format!("u32 {v}"),
            Value::I32(v) => format!("i32 {v}"),
            Value::F32(v) => format!("f32 {v}"),
            Value::Bool(v) => format!("bool {v}"),
            Value::U64(v) => format!("u64 {v}"),
            Value::I64(v) => format!("i64 {v}"),
            Value::F64(v) => format!("f64 {v}"),
        }
    }
}

impl ArrayValue {
    pub fn elem_type(&self) -> ValueType {
        match self {
            ArrayValue::U8(_) => ValueType::U8,
            ArrayValue::I8(_) => ValueType::I8,
            ArrayValue::U16(_) => ValueType::U16,
            ArrayValue::I16(_) => ValueType::I16,
            ArrayValue::U32(_) => ValueType::U32,
            ArrayValue::I32(_) => ValueType::I32,
            ArrayValue::F32(_) => ValueType::F32,
            ArrayValue::Bool(_) => ValueType::Bool,
            ArrayValue::String(_) => ValueType::String,
            ArrayValue::Array(_) => ValueType::Array,
            ArrayValue::U64(_) => ValueType::U64,
            ArrayValue::I64(_) => ValueType::I64,
            ArrayValue::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ArrayValue::U8(v) => v.len(),
            ArrayValue::I8(v) => v.len(),
            ArrayValue::U16(v) => v.len(),
            ArrayValue::I16(v) => v.len(),
            ArrayValue::U32(v) => v.len(),
            ArrayValue::I32(v) => v.len(),
            ArrayValue::F32(v) => v.len(),
            ArrayValue::Bool(v) => v.len(),
            ArrayValue::String(v) => v.len(),
            ArrayValue::Array(v) => v.len(),
            ArrayValue::U64(v) => v.len(),
            ArrayValue::I64(v) => v.len(),
            ArrayValue::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as i32, from any integer element type whose values all fit; borrowed
    /// when the array already holds i32.
    pub fn to_i32s(&self) -> Option<Cow<'_, [i32]>> {
        fn conv<T: Copy>(v: &[T]) -> Option<Cow<'static, [i32]>>
        where
            i32: TryFrom<T>,
        {
            v.iter()
                .map(|&x| i32::try_from(x).ok())
                .collect::<Option<Vec<_>>>()
                .map(Cow::Owned)
        }
        match self {
            ArrayValue::I32(v) => Some(Cow::Borrowed(v)),
            ArrayValue::U8(v) => conv(v),
            ArrayValue::I8(v) => conv(v),
            ArrayValue::U16(v) => conv(v),
            ArrayValue::I16(v) => conv(v),
            ArrayValue::U32(v) => conv(v),
            ArrayValue::U64(v) => conv(v),
            ArrayValue::I64(v) => conv(v),
            _ => None,
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value { Value::$variant(v) }
        }
        impl From<Vec<$t>> for ArrayValue {
            fn from(v: Vec<$t>) -> ArrayValue { ArrayValue::$variant(v) }
        }
        impl From<Vec<$t>> for Value {
            fn from(v: Vec<$t>) -> Value { Value::Array(ArrayValue::$variant(v)) }
        }
    )*};
}

value_from!(
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64,
);

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_owned())
    }
}

impl From<ArrayValue> for Value {
    fn from(v: ArrayValue) -> Value {
        Value::Array(v)
    }
}

impl From<Vec<&str>> for Value {
    fn from(v: Vec<&str>) -> Value {
        Value::Array(ArrayValue::String(
            v.into_iter().map(str::to_owned).collect(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor infos

/// Where one tensor lives in the file and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as in the file: `dims[0]` is the innermost (contiguous) one, so a PyTorch
    /// `[out, in]` weight has `dims == [in, out]`.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute offset of the first byte in the file (data section start + relative offset).
    pub offset: u64,
    /// Bytes of data: `n_elements / block_size * type_size`.
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Number of elements (the product of the dimensions; saturates instead of overflowing,
    /// which a parsed tensor never needs).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// Number of rows of `dims[0]` elements each.
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |n, &d| n.saturating_mul(d))
    }
}

// ---------------------------------------------------------------------------------------------
// The file

/// A parsed GGUF file. Metadata is copied out; tensor data stays in the (memory-mapped)
/// bytes and is handed out as slices.
pub struct GgufFile {
    bytes: Bytes,
    version: u32,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("len", &self.file_bytes().len())
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`. Errors name the path.
    pub fn open(path: &Path) -> Result<GgufFile, FormatError> {
        let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
        // SAFETY: the map is read-only; as with every memory-mapped model loader, another
        // process truncating or rewriting the file while it is mapped is outside what we can
        // defend against (it would show up as SIGBUS or changed weights, not as UB in safe
        // code that only reads bytes).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        GgufFile::from_bytes(Arc::new(map)).map_err(|e| e.in_file(path))
    }

    /// Parses GGUF bytes already in memory (a map, a `Vec<u8>`, ...).
    pub fn from_bytes(bytes: Bytes) -> Result<GgufFile, FormatError> {
        let parsed = parse((*bytes).as_ref())?;
        let key_index = parsed
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            bytes,
            version: parsed.version,
            metadata: parsed.metadata,
            key_index,
            tensors: parsed.tensors,
            tensor_index,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
        })
    }

    /// Parses a GGUF file held in a vector.
    pub fn from_vec(bytes: Vec<u8>) -> Result<GgufFile, FormatError> {
        GgufFile::from_bytes(Arc::new(bytes))
    }

    /// The whole file.
    pub fn file_bytes(&self) -> &[u8] {
        (*self.bytes).as_ref()
    }

    /// The shared bytes, for callers that keep tensor data alive beyond this struct.
    pub fn shared_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// All key/values, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor of this file (empty for a `TensorInfo` that does not lie inside
    /// this file, which only a hand-made or foreign `TensorInfo` can be).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = usize::try_from(info.offset).unwrap_or(usize::MAX);
        start
            .checked_add(info.n_bytes)
            .and_then(|end| self.file_bytes().get(start..end))
            .unwrap_or(&[])
    }

    /// The tensor's elements as f32 (see [`ggml::dequantize`] for the supported types).
    pub fn tensor_to_f32(&self, info: &TensorInfo) -> Result<Vec<f32>, FormatError> {
        let n = usize::try_from(info.n_elements())
            .map_err(|_| FormatError::Gguf(format!("tensor '{}': too many elements", info.name)))?;
        ggml::dequantize_to_vec(info.ty, self.tensor_bytes(info), n)
    }

    /// Alignment of the data section and of every tensor offset.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    // ---- typed getters: Ok(None) when the key is absent, an error naming the key when the
    // ---- value has another type.

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, FormatError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match convert(value) {
            Some(v) => Ok(Some(v)),
            None => Err(FormatError::GgufMetadata {
                key: key.to_owned(),
                msg: format!("expected {expected}, found {}", value.describe()),
            }),
        }
    }

    /// An unsigned integer of any integer type (a negative value is an error).
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, FormatError> {
        self.typed(key, "an unsigned integer", Value::as_u64)
    }

    /// An unsigned integer of any integer type that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, FormatError> {
        self.typed(key, "an unsigned integer that fits in u32", |v| {
            v.as_u64().and_then(|v| u32::try_from(v).ok())
        })
    }

    /// A float (f32, or f64 rounded to f32).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, FormatError> {
        self.typed(key, "a float", Value::as_f32)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, FormatError> {
        self.typed(key, "a string", Value::as_str)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, FormatError> {
        self.typed(key, "a bool", Value::as_bool)
    }

    pub fn get_str_array(&self, key: &str) -> Result<Option<&[String]>, FormatError> {
        self.typed(key, "an array of strings", |v| match v {
            Value::Array(ArrayValue::String(s)) => Some(s.as_slice()),
            _ => None,
        })
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Option<&[f32]>, FormatError> {
        self.typed(key, "an array of f32", |v| match v {
            Value::Array(ArrayValue::F32(s)) => Some(s.as_slice()),
            _ => None,
        })
    }

    /// An array of any integer type whose values all fit in i32 (borrowed when it is i32).
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Cow<'_, [i32]>>, FormatError> {
        self.typed(key, "an array of integers that fit in i32", |v| {
            v.as_array().and_then(ArrayValue::to_i32s)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

struct Parsed {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

fn err(msg: String) -> FormatError {
    FormatError::Gguf(msg)
}

/// A bounds-checked reader over the file. Every read says what it reads (built lazily, only
/// for the error message) so that a truncated file names the field it ends in.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], FormatError> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| Some(self.pos..self.pos.checked_add(n)?))
            .and_then(|range| self.buf.get(range));
        match slice {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(err(format!(
                "{} at byte {}: needs {n} bytes but only {} remain in the file ({} bytes); \
                 the file is truncated or the field is corrupt",
                what(),
                self.pos,
                self.remaining(),
                self.buf.len()
            ))),
        }
    }

    fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], FormatError> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, FormatError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, FormatError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A u64 length and that many bytes. The length is checked against the remaining bytes
    /// before anything is sliced or copied.
    fn string_bytes(&mut self, what: impl Fn() -> String) -> Result<&'a [u8], FormatError> {
        let len_pos = self.pos;
        let len = self.u64(|| format!("{} (length)", what()))?;
        if len > self.remaining() as u64 {
            return Err(err(format!(
                "{} at byte {len_pos}: string length {len} runs past the end of the file \
                 ({} bytes, {} remain); the file is truncated or the length is corrupt",
                what(),
                self.buf.len(),
                self.remaining()
            )));
        }
        self.take(len, what)
    }

    /// A string that must be UTF-8 (lossy decoding would silently change keys and tokens).
    fn string(&mut self, what: impl Fn() -> String) -> Result<&'a str, FormatError> {
        let start = self.pos + 8;
        let bytes = self.string_bytes(&what)?;
        std::str::from_utf8(bytes).map_err(|e| {
            err(format!(
                "{} at byte {start}: not valid UTF-8 ({e}): {}",
                what(),
                preview(bytes)
            ))
        })
    }
}

/// The first bytes of a bad string, escaped, for error messages.
fn preview(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(32)];
    let mut s = format!("\"{}\"", shown.escape_ascii());
    if bytes.len() > shown.len() {
        s.push_str("...");
    }
    s
}

fn parse(buf: &[u8]) -> Result<Parsed, FormatError> {
    let mut c = Cursor { buf, pos: 0 };

    // ---- header
    let magic: [u8; 4] = c.array(|| "header: magic".into())?;
    if magic != GGUF_MAGIC {
        let hint = match &magic {
            b"lmgg" | b"fmgg" | b"tjgg" => {
                " (this is a pre-GGUF GGML/GGJT model: convert it to GGUF with llama.cpp)"
            }
            b"FUGG" => " (byte-swapped magic: a big-endian GGUF, which is not supported)",
            _ => "",
        };
        return Err(err(format!(
            "header: bad magic \"{}\" at byte 0, expected \"GGUF\": not a GGUF file{hint}",
            magic.escape_ascii()
        )));
    }
    let version = c.u32(|| "header: version".into())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(err(
                "header: version 1 at byte 4 is not supported: GGUF v1 (2023) used 32-bit \
                 counts and lengths; re-convert the model with a current llama.cpp"
                    .into(),
            ))
        }
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(err(format!(
                "header: version {v:#010x} at byte 4 looks byte-swapped: big-endian GGUF \
                 files are not supported"
            )))
        }
        v => {
            return Err(err(format!(
                "header: version {v} at byte 4 is not supported (this reader knows versions \
                 2 and 3)"
            )))
        }
    }
    let tensor_count_pos = c.pos;
    let tensor_count = c.u64(|| "header: tensor_count".into())?;
    let kv_count_pos = c.pos;
    let kv_count = c.u64(|| "header: kv_count".into())?;

    // Counts that could not fit in the rest of the file are refused before any allocation.
    let rest = c.remaining() as u64;
    if kv_count > rest / MIN_KV_BYTES {
        return Err(err(format!(
            "header: kv_count {kv_count} at byte {kv_count_pos} is impossible: each key/value \
             takes at least {MIN_KV_BYTES} bytes and only {rest} bytes follow the header \
             (the file is truncated or the count is corrupt)"
        )));
    }
    if tensor_count > (rest - kv_count * MIN_KV_BYTES) / MIN_TENSOR_INFO_BYTES {
        return Err(err(format!(
            "header: tensor_count {tensor_count} at byte {tensor_count_pos} is impossible: \
             each tensor info takes at least {MIN_TENSOR_INFO_BYTES} bytes and only {rest} \
             bytes follow the header (the file is truncated or the count is corrupt)"
        )));
    }

    // ---- key/values
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(bounded(kv_count));
    let mut seen_keys: HashMap<&str, usize> = HashMap::new();
    for i in 0..kv_count {
        let key_pos = c.pos;
        let key = c.string(|| format!("metadata key #{i}"))?;
        if let Some(first) = seen_keys.insert(key, metadata.len()) {
            return Err(err(format!(
                "metadata key '{key}' (key #{i} at byte {key_pos}): duplicate key, first \
                 defined as key #{first}"
            )));
        }
        let type_pos = c.pos;
        let type_id = c.u32(|| format!("metadata key '{key}': value type"))?;
        let ty = ValueType::from_u32(type_id).ok_or_else(|| {
            err(format!(
                "metadata key '{key}': unknown value type {type_id} at byte {type_pos} \
                 (known types are 0..=12)"
            ))
        })?;
        let value = read_value(&mut c, ty, key, 0)?;
        metadata.push((key.to_owned(), value));
    }

    let alignment = match seen_keys.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => *a,
        Some(Value::U32(a)) => {
            return Err(err(format!(
                "metadata key '{ALIGNMENT_KEY}': alignment {a} is not a nonzero power of two"
            )))
        }
        Some(other) => {
            return Err(err(format!(
                "metadata key '{ALIGNMENT_KEY}': must be a u32, found {}",
                other.describe()
            )))
        }
    } as u64;

    // ---- tensor infos
    let rest = c.remaining() as u64;
    if tensor_count > rest / MIN_TENSOR_INFO_BYTES {
        return Err(err(format!(
            "header: tensor_count {tensor_count} at byte {tensor_count_pos} is impossible: \
             each tensor info takes at least {MIN_TENSOR_INFO_BYTES} bytes and only {rest} \
             bytes follow the metadata (at byte {}); the file is truncated or the count is \
             corrupt",
            c.pos
        )));
    }
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(bounded(tensor_count));
    // Relative offset and the file position of its field, for messages after the data
    // section start is known.
    let mut rel_offsets: Vec<(u64, usize)> = Vec::with_capacity(bounded(tensor_count));
    let mut seen_names: HashMap<&str, usize> = HashMap::new();
    for i in 0..tensor_count {
        let info_pos = c.pos;
        let name = c.string(|| format!("tensor info #{i}: name"))?;
        if let Some(first) = seen_names.insert(name, tensors.len()) {
            return Err(err(format!(
                "tensor '{name}' (info #{i} at byte {info_pos}): duplicate tensor name, first \
                 defined by info #{first}"
            )));
        }
        let (info, rel_offset, offset_pos) = read_tensor_info(&mut c, name)?;
        tensors.push(info);
        rel_offsets.push((rel_offset, offset_pos));
    }

    // ---- data section and tensor ranges
    let data_offset = (c.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| err("data section offset overflows".into()))?;
    let file_len = buf.len() as u64;
    for (t, &(rel, field_pos)) in tensors.iter_mut().zip(&rel_offsets) {
        if rel % alignment != 0 {
            return Err(err(format!(
                "tensor '{}': data offset {rel} (field at byte {field_pos}) is not a multiple \
                 of the alignment {alignment}",
                t.name
            )));
        }
        let range = data_offset
            .checked_add(rel)
            .and_then(|start| Some((start, start.checked_add(t.n_bytes as u64)?)));
        let Some((start, end)) = range else {
            return Err(err(format!(
                "tensor '{}': data offset {rel} (field at byte {field_pos}) plus {} bytes \
                 overflows",
                t.name, t.n_bytes
            )));
        };
        if end > file_len {
            return Err(err(format!(
                "tensor '{}': data range {start}..{end} is past the end of the file ({file_len} \
                 bytes; offset field at byte {field_pos})",
                t.name
            )));
        }
        t.offset = start;
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let a_end = a.offset + a.n_bytes as u64;
        if b.offset < a_end {
            return Err(err(format!(
                "tensors '{}' (bytes {}..{a_end}) and '{}' (bytes {}..{}) overlap",
                a.name,
                a.offset,
                b.name,
                b.offset,
                b.offset + b.n_bytes as u64
            )));
        }
    }

    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Capacity to reserve for `count` items announced by the file (already bounded by the
/// remaining bytes): at most `MAX_PREALLOC`, the rest grows with the data actually read.
fn bounded(count: u64) -> usize {
    usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(MAX_PREALLOC)
}

/// Reads n_dims, dims, type and relative offset of tensor `name`; returns the info (with a
/// placeholder absolute offset), the relative offset and the position of its field.
fn read_tensor_info(
    c: &mut Cursor<'_>,
    name: &str,
) -> Result<(TensorInfo, u64, usize), FormatError> {
    let what = |field: &str| format!("tensor '{name}': {field}");

    let n_dims_pos = c.pos;
    let n_dims = c.u32(|| what("n_dims"))?;
    if !(1..=MAX_DIMS as u32).contains(&n_dims) {
        return Err(err(format!(
            "tensor '{name}': n_dims {n_dims} at byte {n_dims_pos} is out of range \
             (1..={MAX_DIMS})"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims as usize {
        let dim_pos = c.pos;
        let dim = c.u64(|| what(&format!("dims[{d}]")))?;
        if dim == 0 {
            return Err(err(format!(
                "tensor '{name}': dims[{d}] at byte {dim_pos} is 0 (every dimension must be \
                 at least 1)"
            )));
        }
        // ggml keeps dimensions in int64_t.
        if dim > i64::MAX as u64 {
            return Err(err(format!(
                "tensor '{name}': dims[{d}] = {dim} at byte {dim_pos} is too large (more than \
                 2^63 - 1)"
            )));
        }
        dims.push(dim);
    }
    let type_pos = c.pos;
    let type_id = c.u32(|| what("ggml type"))?;
    let ty = GgmlType::from_u32(type_id).ok_or_else(|| {
        err(format!(
            "tensor '{name}': unknown ggml type id {type_id} at byte {type_pos}"
        ))
    })?;
    let offset_pos = c.pos;
    let rel_offset = c.u64(|| what("data offset"))?;

    let n_elements = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| {
            err(format!(
                "tensor '{name}': element count of dims {dims:?} overflows 64 bits"
            ))
        })?;
    let block = ty.block_size() as u64;
    if dims[0] % block != 0 {
        return Err(err(format!(
            "tensor '{name}': row length dims[0] = {} is not a multiple of the {ty} block \
             size {block}",
            dims[0]
        )));
    }
    let n_bytes = (n_elements / block)
        .checked_mul(ty.type_size() as u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            err(format!(
                "tensor '{name}': byte size of {n_elements} {ty} elements overflows"
            ))
        })?;

    let info = TensorInfo {
        name: name.to_owned(),
        dims,
        ty,
        offset: 0,
        n_bytes,
    };
    Ok((info, rel_offset, offset_pos))
}

fn read_value(
    c: &mut Cursor<'_>,
    ty: ValueType,
    key: &str,
    depth: usize,
) -> Result<Value, FormatError> {
    let what = || format!("metadata key '{key}': {ty} value");
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(c.array(what)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(c.array(what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(what)?)),
        ValueType::Bool => {
            let pos = c.pos;
            let [b] = c.array(what)?;
            Value::Bool(to_bool(b).ok_or_else(|| bad_bool(key, b, pos))?)
        }
        ValueType::String => Value::String(c.string(what)?.to_owned()),
        ValueType::Array => Value::Array(read_array(c, key, depth)?),
    })
}

fn to_bool(b: u8) -> Option<bool> {
    match b {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

fn bad_bool(key: &str, b: u8, pos: usize) -> FormatError {
    err(format!(
        "metadata key '{key}': bool value {b} at byte {pos} is neither 0 nor 1"
    ))
}

/// Reads `count` fixed-size little-endian elements, converting each with `conv`.
fn fixed_array<T, const N: usize>(
    c: &mut Cursor<'_>,
    count: u64,
    what: impl FnOnce() -> String,
    conv: fn([u8; N]) -> T,
) -> Result<Vec<T>, FormatError> {
    // count * N cannot overflow: the caller bounded count by the remaining bytes.
    let bytes = c.take(count * N as u64, what)?;
    Ok(bytes
        .chunks_exact(N)
        .map(|b| {
            let mut a = [0u8; N];
            a.copy_from_slice(b);
            conv(a)
        })
        .collect())
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<ArrayValue, FormatError> {
    let type_pos = c.pos;
    let type_id = c.u32(|| format!("metadata key '{key}': array element type"))?;
    let elem = ValueType::from_u32(type_id).ok_or_else(|| {
        err(format!(
            "metadata key '{key}': unknown array element type {type_id} at byte {type_pos} \
             (known types are 0..=12)"
        ))
    })?;
    let count_pos = c.pos;
    let count = c.u64(|| format!("metadata key '{key}': array count"))?;
    let min = elem.min_encoded_size();
    if count > c.remaining() as u64 / min {
        return Err(err(format!(
            "metadata key '{key}': array count {count} at byte {count_pos} is larger than the \
             file allows: {count} {elem} elements take at least {} bytes but only {} remain",
            count.saturating_mul(min),
            c.remaining()
        )));
    }
    if elem == ValueType::Array && depth + 1 >= MAX_ARRAY_DEPTH {
        return Err(err(format!(
            "metadata key '{key}': arrays nested more than {MAX_ARRAY_DEPTH} deep at byte \
             {type_pos}"
        )));
    }
    let what = || format!("metadata key '{key}': array of {count} {elem}");
    Ok(match elem {
        ValueType::U8 => ArrayValue::U8(fixed_array(c, count, what, u8::from_le_bytes)?),
        ValueType::I8 => ArrayValue::I8(fixed_array(c, count, what, i8::from_le_bytes)?),
        ValueType::U16 => ArrayValue::U16(fixed_array(c, count, what, u16::from_le_bytes)?),
        ValueType::I16 => ArrayValue::I16(fixed_array(c, count, what, i16::from_le_bytes)?),
        ValueType::U32 => ArrayValue::U32(fixed_array(c, count, what, u32::from_le_bytes)?),
        ValueType::I32 => ArrayValue::I32(fixed_array(c, count, what, i32::from_le_bytes)?),
        ValueType::F32 => ArrayValue::F32(fixed_array(c, count, what, f32::from_le_bytes)?),
        ValueType::U64 => ArrayValue::U64(fixed_array(c, count, what, u64::from_le_bytes)?),
        ValueType::I64 => ArrayValue::I64(fixed_array(c, count, what, i64::from_le_bytes)?),
        ValueType::F64 => ArrayValue::F64(fixed_array(c, count, what, f64::from_le_bytes)?),
        ValueType::Bool => {
            let start = c.pos;
            let bytes = c.take(count, what)?;
            let bools = bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| to_bool(b).ok_or_else(|| bad_bool(key, b, start + i)))
                .collect::<Result<Vec<_>, _>>()?;
            ArrayValue::Bool(bools)
        }
        ValueType::String => {
            let mut out = Vec::with_capacity(bounded(count));
            for i in 0..count {
                let s = c.string(|| format!("metadata key '{key}': string element #{i}"))?;
                out.push(s.to_owned());
            }
            ArrayValue::String(out)
        }
        ValueType::Array => {
            let mut out = Vec::with_capacity(bounded(count));
            for _ in 0..count {
                out.push(read_array(c, key, depth + 1)?);
            }
            ArrayValue::Array(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::write::GgufWriter;
    use super::*;

    #[test]
    fn round_trip_through_the_writer() {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", "llama").unwrap();
        w.add_metadata("llama.block_count", 30u32).unwrap();
        w.add_metadata("llama.rope.freq_base", 100000f32).unwrap();
        w.add_metadata("tokenizer.ggml.tokens", vec!["a", "b", "<|im_end|>"])
            .unwrap();
        w.add_metadata("tokenizer.ggml.token_type", vec![1i32, 1, 3])
            .unwrap();
        w.add_metadata(
            "nested",
            ArrayValue::Array(vec![ArrayValue::U8(vec![1, 2])]),
        )
        .unwrap();
        let norm: Vec<u8> = [1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        w.add_tensor("output_norm.weight", &[3], GgmlType::F32, norm)
            .unwrap();
        w.add_tensor(
            "blk.0.attn_q.weight",
            &[32, 2],
            GgmlType::Q8_0,
            vec![0u8; 68],
        )
        .unwrap();
        let f = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();

        assert_eq!(f.version(), 3);
        assert_eq!(f.get_str("general.architecture").unwrap(), Some("llama"));
        assert_eq!(f.get_u64("llama.block_count").unwrap(), Some(30));
        assert_eq!(f.get_u32("llama.block_count").unwrap(), Some(30));
        assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), Some(100000.0));
        assert_eq!(
            f.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap()[2],
            "<|im_end|>"
        );
        assert_eq!(
            &*f.get_i32_array("tokenizer.ggml.token_type")
                .unwrap()
                .unwrap(),
            &[1, 1, 3]
        );
        assert_eq!(f.get_u64("absent").unwrap(), None);
        assert_eq!(f.metadata()[0].0, "general.architecture");

        let norm = f.tensor("output_norm.weight").unwrap();
        assert_eq!(f.tensor_to_f32(norm).unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(norm.offset % 32, 0);
        let q = f.tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!((q.n_elements(), q.n_rows(), q.n_bytes), (64, 2, 68));
        assert_eq!(q.offset, f.data_offset() + 32);
        assert_eq!(f.tensor_bytes(q).len(), 68);
    }

    #[test]
    fn typed_getters_name_the_key() {
        let mut w = GgufWriter::new();
        w.add_metadata("llama.block_count", "thirty").unwrap();
        w.add_metadata("neg", -3i32).unwrap();
        w.add_metadata("big", u64::MAX).unwrap();
        let f = GgufFile::from_vec(w.to_bytes().unwrap()).unwrap();
        let e = f.get_u64("llama.block_count").unwrap_err().to_string();
        assert!(
            e.contains("'llama.block_count'") && e.contains("string"),
            "{e}"
        );
        assert!(f.get_u64("neg").is_err());
        assert!(f.get_u32("big").is_err());
        assert_eq!(f.get_u64("big").unwrap(), Some(u64::MAX));
        assert!(f.get_f32("neg").is_err());
        assert!(f.get_bool("neg").is_err());
        assert!(f.get_str_array("neg").is_err());
        assert!(f.get_f32_array("neg").is_err());
        assert!(f.get_i32_array("neg").is_err());
    }

    #[test]
    fn integer_arrays_convert_when_they_fit() {
        let a = ArrayValue::U32(vec![1, 2, 3]);
        assert_eq!(&*a.to_i32s().unwrap(), &[1, 2, 3]);
        assert!(ArrayValue::U32(vec![u32::MAX]).to_i32s().is_none());
        assert!(ArrayValue::F32(vec![1.0]).to_i32s().is_none());
    }
}
