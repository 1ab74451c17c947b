//! Hardened safetensors reading (one file, or a checkpoint sharded by
//! `model.safetensors.index.json`) over memory maps, and a writer.
//!
//! Layout: u64 little-endian header length N; N bytes of JSON header (an object mapping each
//! tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}`, plus an optional
//! `"__metadata__"` string-to-string map), padded with spaces; then the data section, with
//! offsets relative to its start. Everything the header claims is checked against the file:
//! sizes against shapes (with overflow checks), ranges against the data section, tensors
//! against each other (no overlaps), names against each other (no duplicates).

use crate::FormatError;
use half::{bf16, f16};
use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes a [`SafeTensorsFile`] reads from: a memory map or an in-memory buffer.
pub type Bytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Largest JSON header accepted (the limit of the reference `safetensors` implementation).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// The single-file checkpoint name in a Hugging Face model directory.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint in a Hugging Face model directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Key of the free-form string map in the header.
const METADATA_KEY: &str = "__metadata__";

// ---------------------------------------------------------------------------------------------
// Element types

/// Element type of a safetensors tensor, named as in the header.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    BOOL,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    F8_E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
}

impl Dtype {
    const ALL: [Dtype; 17] = [
        Dtype::BOOL,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8_E5M2,
        Dtype::F8_E4M3,
        Dtype::F8_E8M0,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The dtype with this header name (`"F16"`, `"BF16"`, `"I32"`, ...). The sub-byte types
    /// (F4, F6_*) are not supported and give `None`.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.iter().copied().find(|d| d.name() == name)
    }

    /// The header name.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::BOOL => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8_E5M2 => "F8_E5M2",
            Dtype::F8_E4M3 => "F8_E4M3",
            Dtype::F8_E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::BOOL | Dtype::U8 | Dtype::I8 => 1,
            Dtype::F8_E5M2 | Dtype::F8_E4M3 | Dtype::F8_E8M0 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// One file

/// One tensor of a file, borrowed from its bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    /// Shape in PyTorch order (outermost first): a linear weight is `[out, in]`.
    pub shape: &'a [usize],
    /// Row-major little-endian data; not necessarily aligned for its dtype.
    pub bytes: &'a [u8],
    /// The file the tensor comes from (for error messages).
    pub file: &'a Path,
}

impl TensorView<'_> {
    pub fn n_elements(&self) -> usize {
        // Validated at open: the product fits.
        self.shape.iter().product()
    }

    /// The elements as f32, from F32, F16 or BF16 data.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, FormatError> {
        let b = self.bytes;
        Ok(match self.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(FormatError::Safetensors {
                    path: self.file.to_owned(),
                    msg: format!(
                        "tensor '{}': cannot convert {other} to f32 (only F32, F16 and BF16)",
                        self.name
                    ),
                })
            }
        })
    }
}

#[derive(Debug)]
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// A parsed safetensors file; tensor data stays in the (memory-mapped) bytes.
pub struct SafeTensorsFile {
    path: PathBuf,
    bytes: Bytes,
    metadata: BTreeMap<String, String>,
    /// In data order.
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

impl fmt::Debug for SafeTensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafeTensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl SafeTensorsFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: &Path) -> Result<SafeTensorsFile, FormatError> {
        let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
        // SAFETY: a read-only map; another process truncating or rewriting the file while
        // it is mapped is outside what any memory-mapped loader can defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        SafeTensorsFile::from_bytes(path, Arc::new(map))
    }

    /// Parses bytes already in memory; `path` only names them in errors.
    pub fn from_bytes(
        path: impl Into<PathBuf>,
        bytes: Bytes,
    ) -> Result<SafeTensorsFile, FormatError> {
        let path = path.into();
        let (metadata, entries) =
            parse((*bytes).as_ref()).map_err(|msg| FormatError::Safetensors {
                path: path.clone(),
                msg,
            })?;
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(SafeTensorsFile {
            path,
            bytes,
            metadata,
            entries,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` map (empty when absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Tensor names, in data order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let e = &self.entries[*self.index.get(name)?];
        Some(TensorView {
            name: &e.name,
            dtype: e.dtype,
            shape: &e.shape,
            bytes: (*self.bytes).as_ref().get(e.start..e.end)?,
            file: &self.path,
        })
    }

    /// The shared bytes of the whole file.
    pub fn shared_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The file's shared bytes and the tensor's absolute byte range in them, for callers that
    /// keep tensor data alive beyond this struct (weights borrowed from the memory map).
    pub fn tensor_storage(&self, name: &str) -> Option<(Bytes, std::ops::Range<usize>)> {
        let e = &self.entries[*self.index.get(name)?];
        Some((self.bytes.clone(), e.start..e.end))
    }

    /// All tensors, in data order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.names().filter_map(|n| self.tensor(n))
    }
}

/// A JSON object read in file order that refuses duplicate keys (plain maps would silently
/// keep the last one, hiding a corrupt or malicious header).
struct UniqueMap<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for UniqueMap<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = UniqueMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueMap<T>, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(A::Error::custom(format!("duplicate key '{key}'")));
                    }
                    let value = map.next_value()?;
                    out.push((key, value));
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

type Parsed = (BTreeMap<String, String>, Vec<Entry>);

/// Parses and validates the header; the error is the message, the caller adds the path.
fn parse(buf: &[u8]) -> Result<Parsed, String> {
    let file_len = buf.len() as u64;
    let Some((len_bytes, rest)) = buf.split_first_chunk::<8>() else {
        return Err(format!(
            "file is {file_len} bytes, too short for the 8-byte header length"
        ));
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "header length {header_len} is larger than the {MAX_HEADER_BYTES}-byte limit \
             (corrupt file, or not a safetensors file)"
        ));
    }
    if header_len > rest.len() as u64 {
        return Err(format!(
            "header length {header_len} runs past the end of the file ({file_len} bytes)"
        ));
    }
    let (header, data) = rest.split_at(header_len as usize);
    let header =
        std::str::from_utf8(header).map_err(|e| format!("header is not valid UTF-8: {e}"))?;
    if !header.starts_with('{') {
        return Err("header does not start with '{': not a safetensors file".into());
    }
    let entries: UniqueMap<serde_json::Value> =
        serde_json::from_str(header).map_err(|e| format!("header is not valid JSON: {e}"))?;

    let data_start = 8 + header_len as usize;
    let data_len = data.len() as u64;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.0.len());
    for (name, value) in entries.0 {
        if name == METADATA_KEY {
            metadata = serde_json::from_value(value)
                .map_err(|e| format!("'{METADATA_KEY}' must map strings to strings: {e}"))?;
            continue;
        }
        let raw: RawTensor = serde_json::from_value(value)
            .map_err(|e| format!("tensor '{name}': bad header entry: {e}"))?;
        let dtype = Dtype::from_name(&raw.dtype).ok_or_else(|| {
            format!(
                "tensor '{name}': unknown or unsupported dtype '{}'",
                raw.dtype
            )
        })?;
        let overflow = || format!("tensor '{name}': shape {:?} overflows", raw.shape);
        let shape = raw
            .shape
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(overflow)?;
        let n_bytes = shape
            .iter()
            .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
            .ok_or_else(overflow)? as u64;
        let [begin, end] = raw.data_offsets;
        if begin > end {
            return Err(format!(
                "tensor '{name}': data_offsets [{begin}, {end}] are reversed (begin > end)"
            ));
        }
        if end > data_len {
            return Err(format!(
                "tensor '{name}': data_offsets [{begin}, {end}] run past the end of the data \
                 section ({data_len} bytes)"
            ));
        }
        if end - begin != n_bytes {
            return Err(format!(
                "tensor '{name}': {dtype} of shape {shape:?} is {n_bytes} bytes, but \
                 data_offsets [{begin}, {end}] span {} bytes",
                end - begin
            ));
        }
        // Both offsets are at most the data length, itself inside the buffer.
        tensors.push(Entry {
            name,
            dtype,
            shape,
            start: data_start + begin as usize,
            end: data_start + end as usize,
        });
    }

    tensors.sort_by_key(|e| (e.start, e.end));
    let mut last: Option<&Entry> = None;
    for e in tensors.iter().filter(|e| e.end > e.start) {
        if let Some(prev) = last.filter(|p| e.start < p.end) {
            return Err(format!(
                "tensors '{}' (data bytes {}..{}) and '{}' (data bytes {}..{}) overlap",
                prev.name,
                prev.start - data_start,
                prev.end - data_start,
                e.name,
                e.start - data_start,
                e.end - data_start
            ));
        }
        last = Some(e);
    }
    Ok((metadata, tensors))
}

// ---------------------------------------------------------------------------------------------
// A whole checkpoint

/// The safetensors weights of one model, from one file or several shards, looked up by name.
#[derive(Debug)]
pub struct ModelWeights {
    files: Vec<SafeTensorsFile>,
    /// Tensor name -> index into `files`.
    shard_of: HashMap<String, usize>,
    /// Sorted.
    names: Vec<String>,
}

#[derive(Deserialize)]
struct RawIndex {
    weight_map: UniqueMap<String>,
}

impl ModelWeights {
    /// Opens the checkpoint of a Hugging Face model directory: `model.safetensors`, else the
    /// shards listed by `model.safetensors.index.json`, else the only `*.safetensors` file in
    /// the directory (older GPTQ repositories name it after the quantization, e.g.
    /// `gptq_model-4bit-128g.safetensors`).
    pub fn open_dir(dir: &Path) -> Result<ModelWeights, FormatError> {
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return ModelWeights::open_file(&single);
        }
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return ModelWeights::open_index(&index);
        }
        let listing = std::fs::read_dir(dir).map_err(|e| FormatError::io(dir, e))?;
        let mut found: Vec<PathBuf> = listing
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        found.sort();
        match found.as_slice() {
            [only] => ModelWeights::open_file(only),
            [] => Err(FormatError::Safetensors {
                path: dir.to_owned(),
                msg: format!("no {SINGLE_FILE}, {INDEX_FILE} or other *.safetensors file"),
            }),
            several => Err(FormatError::Safetensors {
                path: dir.to_owned(),
                msg: format!(
                    "no {SINGLE_FILE} or {INDEX_FILE}, and several *.safetensors files ({}): \
                     name the checkpoint's base name",
                    several
                        .iter()
                        .filter_map(|p| p.file_name()?.to_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// Opens `<base>.safetensors` or, failing that, `<base>.safetensors.index.json` in `dir`
    /// (e.g. `base = "gptq_model-4bit-128g"`).
    pub fn open_dir_with_base(dir: &Path, base: &str) -> Result<ModelWeights, FormatError> {
        let single = dir.join(format!("{base}.safetensors"));
        if single.is_file() {
            return ModelWeights::open_file(&single);
        }
        let index = dir.join(format!("{base}.safetensors.index.json"));
        if index.is_file() {
            return ModelWeights::open_index(&index);
        }
        Err(FormatError::Safetensors {
            path: dir.to_owned(),
            msg: format!("neither {base}.safetensors nor {base}.safetensors.index.json exists"),
        })
    }

    /// One safetensors file holding every tensor.
    pub fn open_file(path: &Path) -> Result<ModelWeights, FormatError> {
        let file = SafeTensorsFile::open(path)?;
        let mut names: Vec<String> = file.names().map(str::to_owned).collect();
        names.sort();
        let shard_of = names.iter().map(|n| (n.clone(), 0)).collect();
        Ok(ModelWeights {
            files: vec![file],
            shard_of,
            names,
        })
    }

    /// A sharded checkpoint: the index's `weight_map` says which file (in the index's
    /// directory) holds each tensor. Every listed file must exist and hold the tensors the
    /// index puts in it.
    pub fn open_index(index_path: &Path) -> Result<ModelWeights, FormatError> {
        let index_err = |msg: String| FormatError::Safetensors {
            path: index_path.to_owned(),
            msg,
        };
        let text =
            std::fs::read_to_string(index_path).map_err(|e| FormatError::io(index_path, e))?;
        let raw: RawIndex = serde_json::from_str(&text)
            .map_err(|e| index_err(format!("not a valid checkpoint index: {e}")))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));

        let mut files: Vec<SafeTensorsFile> = Vec::new();
        let mut file_index: HashMap<String, usize> = HashMap::new();
        let mut shard_of = HashMap::new();
        for (tensor, shard) in raw.weight_map.0 {
            // Shards are plain file names next to the index: a path could point anywhere.
            let plain = Path::new(&shard).file_name().is_some_and(|f| *f == *shard)
                && shard != ".."
                && !shard.contains(['/', '\\']);
            if !plain {
                return Err(index_err(format!(
                    "weight_map puts tensor '{tensor}' in '{shard}', which is not a plain \
                     file name in the model directory"
                )));
            }
            let i = match file_index.get(&shard) {
                Some(&i) => i,
                None => {
                    let path = dir.join(&shard);
                    if !path.is_file() {
                        return Err(index_err(format!(
                            "weight_map puts tensor '{tensor}' in '{shard}', but {} does not \
                             exist",
                            path.display()
                        )));
                    }
                    files.push(SafeTensorsFile::open(&path)?);
                    file_index.insert(shard.clone(), files.len() - 1);
                    files.len() - 1
                }
            };
            if files[i].tensor(&tensor).is_none() {
                return Err(index_err(format!(
                    "weight_map puts tensor '{tensor}' in '{shard}', but that file does not \
                     contain it"
                )));
            }
            shard_of.insert(tensor, i);
        }
        let mut names: Vec<String> = shard_of.keys().cloned().collect();
        names.sort();
        Ok(ModelWeights {
            files,
            shard_of,
            names,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.files[*self.shard_of.get(name)?].tensor(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.shard_of.contains_key(name)
    }

    /// See [`SafeTensorsFile::tensor_storage`].
    pub fn tensor_storage(&self, name: &str) -> Option<(Bytes, std::ops::Range<usize>)> {
        self.files[*self.shard_of.get(name)?].tensor_storage(name)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// The opened files (one, or the shards in the order the index first names them).
    pub fn files(&self) -> &[SafeTensorsFile] {
        &self.files
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// One tensor to write: name, dtype, shape (PyTorch order), little-endian row-major bytes.
pub type TensorToWrite<'a> = (&'a str, Dtype, &'a [usize], &'a [u8]);

/// The header (length prefix included) for `tensors` laid out back to back in the given order.
fn build_header(
    tensors: &[TensorToWrite<'_>],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|&(k, v)| (k.to_owned(), serde_json::Value::from(v)))
            .collect();
        if map.len() != metadata.len() {
            return Err("duplicate metadata key".into());
        }
        header.insert(METADATA_KEY.into(), map.into());
    }
    let mut offset = 0u64;
    for &(name, dtype, shape, bytes) in tensors {
        if name == METADATA_KEY {
            return Err(format!("a tensor cannot be named '{METADATA_KEY}'"));
        }
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |n, &d| n.checked_mul(d));
        if expected != Some(bytes.len()) {
            return Err(format!(
                "tensor '{name}': {dtype} of shape {shape:?} needs {expected:?} bytes, got {}",
                bytes.len()
            ));
        }
        let end = offset + bytes.len() as u64;
        let entry = serde_json::json!({
            "dtype": dtype.name(),
            "shape": shape,
            "data_offsets": [offset, end],
        });
        if header.insert(name.to_owned(), entry).is_some() {
            return Err(format!("duplicate tensor name '{name}'"));
        }
        offset = end;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    Ok(out)
}

/// A whole safetensors file in memory.
pub fn serialize_safetensors(
    tensors: &[TensorToWrite<'_>],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>, FormatError> {
    let mut out = build_header(tensors, metadata).map_err(|msg| FormatError::Safetensors {
        path: "<memory>".into(),
        msg,
    })?;
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// Writes a safetensors file at `path`, through a temporary file renamed at the end (an
/// interrupted write leaves no truncated checkpoint behind).
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorToWrite<'_>],
    metadata: &[(&str, &str)],
) -> Result<(), FormatError> {
    use std::io::Write;
    let header = build_header(tensors, metadata).map_err(|msg| FormatError::Safetensors {
        path: path.to_owned(),
        msg,
    })?;
    let io = |e| FormatError::io(path, e);
    let tmp = path.with_extension("safetensors.partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    out.write_all(&header).map_err(io)?;
    for (_, _, _, bytes) in tensors {
        out.write_all(bytes).map_err(io)?;
    }
    out.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn round_trip_in_memory() {
        let w = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let h: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        let b: Vec<u8> = [0.5f32, 8.0]
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect();
        let bytes = serialize_safetensors(
            &[
                ("w", Dtype::F32, &[2, 3], &w),
                ("h", Dtype::F16, &[2], &h),
                ("b", Dtype::BF16, &[2], &b),
                ("empty", Dtype::I32, &[0, 4], &[]),
                ("scalar", Dtype::U8, &[], &[7]),
            ],
            &[("format", "pt")],
        )
        .unwrap();
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()) % 8, 0);
        let f = SafeTensorsFile::from_bytes("mem", Arc::new(bytes)).unwrap();
        assert_eq!(f.metadata()["format"], "pt");
        assert_eq!(f.len(), 5);
        assert_eq!(
            f.names().collect::<Vec<_>>(),
            ["w", "h", "b", "empty", "scalar"]
        );
        let t = f.tensor("w").unwrap();
        assert_eq!(
            (t.dtype, t.shape, t.n_elements()),
            (Dtype::F32, &[2, 3][..], 6)
        );
        assert_eq!(t.to_f32_vec().unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(f.tensor("h").unwrap().to_f32_vec().unwrap(), [1.5, -2.0]);
        assert_eq!(f.tensor("b").unwrap().to_f32_vec().unwrap(), [0.5, 8.0]);
        assert_eq!(f.tensor("scalar").unwrap().bytes, [7]);
        let e = f.tensor("empty").unwrap().to_f32_vec().unwrap_err();
        assert!(
            e.to_string().contains("'empty'") && e.to_string().contains("I32"),
            "{e}"
        );
        assert!(f.tensor("missing").is_none());
    }

    #[test]
    fn writer_refuses_inconsistent_input() {
        let e = serialize_safetensors(&[("w", Dtype::F32, &[3], &[0; 8])], &[]).unwrap_err();
        assert!(e.to_string().contains("'w'"), "{e}");
        let e = serialize_safetensors(
            &[("w", Dtype::U8, &[1], &[0]), ("w", Dtype::U8, &[1], &[0])],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        assert!(serialize_safetensors(&[("__metadata__", Dtype::U8, &[1], &[0])], &[]).is_err());
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_name(d.name()), Some(d));
        }
        assert_eq!(Dtype::from_name("F4"), None);
        assert_eq!(Dtype::BF16.size(), 2);
    }
}
