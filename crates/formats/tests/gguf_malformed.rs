//! Malformed GGUF files, one per test: each must be refused with a message that names the
//! problem (and never panic). Files are built byte by byte with `Raw`, which, unlike the
//! crate's writer, writes whatever it is told.

use formats::gguf::write::{encode_string, encode_value, GgufWriter};
use formats::gguf::{ArrayValue, GgufFile, Value};
use formats::{FormatError, GgmlType};

// ---------------------------------------------------------------------------------------------
// A raw GGUF builder

const T_U32: u32 = 4;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;

#[derive(Clone)]
struct Raw {
    magic: [u8; 4],
    version: u32,
    /// Overrides of the counts in the header (default: the number actually added).
    tensor_count: Option<u64>,
    kv_count: Option<u64>,
    kvs: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    alignment: usize,
    data: Vec<u8>,
}

impl Raw {
    fn new() -> Raw {
        Raw {
            magic: *b"GGUF",
            version: 3,
            tensor_count: None,
            kv_count: None,
            kvs: Vec::new(),
            n_kv: 0,
            infos: Vec::new(),
            n_tensors: 0,
            alignment: 32,
            data: Vec::new(),
        }
    }

    /// A key/value with raw key bytes, type id and value bytes.
    fn kv_raw(mut self, key: &[u8], ty: u32, value: &[u8]) -> Raw {
        self.kvs.extend((key.len() as u64).to_le_bytes());
        self.kvs.extend(key);
        self.kvs.extend(ty.to_le_bytes());
        self.kvs.extend(value);
        self.n_kv += 1;
        self
    }

    fn kv(self, key: &str, value: impl Into<Value>) -> Raw {
        let value = value.into();
        let mut bytes = Vec::new();
        encode_value(&mut bytes, &value);
        self.kv_raw(key.as_bytes(), value.value_type().id(), &bytes)
    }

    /// A tensor info with raw name bytes and an explicit n_dims (which may disagree with
    /// `dims.len()`).
    fn tensor_raw(mut self, name: &[u8], n_dims: u32, dims: &[u64], ty: u32, offset: u64) -> Raw {
        self.infos.extend((name.len() as u64).to_le_bytes());
        self.infos.extend(name);
        self.infos.extend(n_dims.to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    fn tensor(self, name: &str, dims: &[u64], ty: GgmlType, offset: u64) -> Raw {
        self.tensor_raw(name.as_bytes(), dims.len() as u32, dims, ty.id(), offset)
    }

    fn data(mut self, bytes: &[u8]) -> Raw {
        self.data.extend(bytes);
        self
    }

    /// Header, key/values and tensor infos, without padding.
    fn head(&self) -> Vec<u8> {
        let mut out = self.magic.to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.tensor_count.unwrap_or(self.n_tensors).to_le_bytes());
        out.extend(self.kv_count.unwrap_or(self.n_kv).to_le_bytes());
        out.extend(&self.kvs);
        out.extend(&self.infos);
        out
    }

    fn build(&self) -> Vec<u8> {
        let mut out = self.head();
        out.resize(out.len().next_multiple_of(self.alignment), 0);
        out.extend(&self.data);
        out
    }
}

/// A small valid file: two metadata keys, an F32 tensor of 8 elements at offset 0 and a
/// Q4_0 tensor of 2 rows of 32 at offset 32.
fn valid() -> Raw {
    Raw::new()
        .kv("general.architecture", "llama")
        .kv("llama.block_count", 1u32)
        .tensor("output_norm.weight", &[8], GgmlType::F32, 0)
        .tensor("blk.0.attn_q.weight", &[32, 2], GgmlType::Q4_0, 32)
        .data(&[0u8; 32 + 36])
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, FormatError> {
    GgufFile::from_vec(bytes)
}

/// Parses `bytes`, expects an error, checks its message contains every needle.
#[track_caller]
fn refused(bytes: Vec<u8>, needles: &[&str]) -> String {
    let msg = match parse(bytes) {
        Ok(_) => panic!("malformed file was accepted (wanted {needles:?})"),
        Err(e) => e.to_string(),
    };
    for needle in needles {
        assert!(
            msg.contains(needle),
            "error {msg:?} does not mention {needle:?}"
        );
    }
    msg
}

#[test]
fn the_base_file_is_valid() {
    let f = parse(valid().build()).unwrap();
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().n_bytes, 36);
}

// ---------------------------------------------------------------------------------------------
// Header

#[test]
fn empty_file() {
    refused(Vec::new(), &["magic", "truncated"]);
}

#[test]
fn bad_magic() {
    let mut raw = valid();
    raw.magic = *b"GGUX";
    refused(raw.build(), &["bad magic", "GGUX", "not a GGUF file"]);
}

#[test]
fn legacy_ggjt_magic_gets_a_hint() {
    let mut raw = valid();
    raw.magic = *b"tjgg";
    refused(raw.build(), &["bad magic", "GGML/GGJT"]);
}

#[test]
fn version_1_is_refused() {
    let mut raw = valid();
    raw.version = 1;
    refused(raw.build(), &["version 1", "not supported"]);
}

#[test]
fn version_4_is_refused() {
    let mut raw = valid();
    raw.version = 4;
    refused(raw.build(), &["version 4", "not supported"]);
}

#[test]
fn big_endian_version_is_recognized() {
    let mut raw = valid();
    raw.version = 3u32.swap_bytes();
    refused(raw.build(), &["big-endian"]);
}

#[test]
fn version_2_is_accepted() {
    let mut raw = valid();
    raw.version = 2;
    assert_eq!(parse(raw.build()).unwrap().version(), 2);
}

#[test]
fn truncated_in_the_header() {
    let bytes = valid().build();
    refused(
        bytes[..10].to_vec(),
        &["header: tensor_count", "at byte 8", "truncated"],
    );
    refused(bytes[..6].to_vec(), &["header: version", "truncated"]);
    refused(bytes[..20].to_vec(), &["header: kv_count", "truncated"]);
}

#[test]
fn kv_count_huge() {
    let mut raw = valid();
    raw.kv_count = Some(u64::MAX);
    refused(
        raw.build(),
        &["kv_count 18446744073709551615", "impossible"],
    );
}

#[test]
fn tensor_count_huge() {
    let mut raw = valid();
    raw.tensor_count = Some(1 << 60);
    refused(
        raw.build(),
        &["tensor_count 1152921504606846976", "impossible"],
    );
}

#[test]
fn tensor_count_larger_than_what_follows_the_metadata() {
    // The header check passes (a long string follows), the check after the key/values not.
    let mut raw = Raw::new().kv("general.name", "x".repeat(2000));
    raw.tensor_count = Some(40);
    refused(raw.build(), &["tensor_count 40", "follow the metadata"]);
}

// ---------------------------------------------------------------------------------------------
// Key/values

#[test]
fn truncated_in_a_kv_key() {
    let bytes = Raw::new().kv("general.architecture", "llama").build();
    // Header is 24 bytes, then the key length (8) and the key (20 bytes).
    refused(
        bytes[..24 + 8 + 5].to_vec(),
        &["metadata key #0", "string length 20", "truncated"],
    );
    refused(
        bytes[..24 + 4].to_vec(),
        &["header: kv_count 1", "truncated"],
    );
}

#[test]
fn truncated_in_a_kv_value() {
    let bytes = Raw::new().kv("general.architecture", "llama").build();
    // key (8 + 20), type (4), then the string value's length (8) and "llama".
    let value_start = 24 + 8 + 20 + 4;
    refused(
        bytes[..value_start + 8 + 2].to_vec(),
        &[
            "metadata key 'general.architecture'",
            "string length 5",
            "truncated",
        ],
    );
    refused(
        bytes[..value_start + 3].to_vec(),
        &["metadata key 'general.architecture'", "truncated"],
    );
}

#[test]
fn truncation_that_leaves_too_few_bytes_for_the_counts() {
    let bytes = valid().build();
    refused(
        bytes[..24 + 30].to_vec(),
        &["header: tensor_count 2", "truncated"],
    );
}

#[test]
fn key_longer_than_the_file() {
    let mut raw = Raw::new();
    raw.kvs.extend((1u64 << 40).to_le_bytes());
    raw.kvs.extend(b"general.name");
    raw.n_kv = 1;
    refused(
        raw.build(),
        &["metadata key #0", "string length 1099511627776"],
    );
}

#[test]
fn string_value_longer_than_the_file() {
    let mut value = u64::MAX.to_le_bytes().to_vec();
    value.extend(b"llama");
    let raw = Raw::new().kv_raw(b"general.architecture", T_STRING, &value);
    refused(
        raw.build(),
        &[
            "metadata key 'general.architecture'",
            "string length 18446744073709551615",
            "past the end",
        ],
    );
}

#[test]
fn invalid_utf8_key() {
    let raw = Raw::new().kv_raw(b"general.\xffname", T_U32, &1u32.to_le_bytes());
    refused(
        raw.build(),
        &["metadata key #0", "not valid UTF-8", "general.\\xffname"],
    );
}

#[test]
fn invalid_utf8_string_value_names_the_key() {
    let mut value = 4u64.to_le_bytes().to_vec();
    value.extend(b"ll\xc3m");
    let raw = Raw::new().kv_raw(b"general.architecture", T_STRING, &value);
    refused(raw.build(), &["'general.architecture'", "not valid UTF-8"]);
}

#[test]
fn invalid_utf8_in_a_string_array_names_the_key_and_element() {
    let mut value = T_STRING.to_le_bytes().to_vec();
    value.extend(2u64.to_le_bytes());
    encode_string(&mut value, "ok");
    value.extend(1u64.to_le_bytes());
    value.push(0x80);
    let raw = Raw::new().kv_raw(b"tokenizer.ggml.tokens", T_ARRAY, &value);
    refused(
        raw.build(),
        &[
            "'tokenizer.ggml.tokens'",
            "string element #1",
            "not valid UTF-8",
        ],
    );
}

#[test]
fn unknown_value_type() {
    let raw = Raw::new().kv_raw(b"general.name", 13, &[0; 8]);
    refused(raw.build(), &["'general.name'", "unknown value type 13"]);
}

#[test]
fn unknown_array_element_type() {
    let mut value = 99u32.to_le_bytes().to_vec();
    value.extend(1u64.to_le_bytes());
    value.extend([0; 8]);
    let raw = Raw::new().kv_raw(b"tokenizer.ggml.scores", T_ARRAY, &value);
    refused(
        raw.build(),
        &["'tokenizer.ggml.scores'", "unknown array element type 99"],
    );
}

#[test]
fn array_count_larger_than_the_file() {
    let mut value = T_U32.to_le_bytes().to_vec();
    value.extend((1u64 << 40).to_le_bytes());
    value.extend([0; 16]);
    let raw = Raw::new().kv_raw(b"tokenizer.ggml.token_type", T_ARRAY, &value);
    refused(
        raw.build(),
        &[
            "'tokenizer.ggml.token_type'",
            "array count 1099511627776",
            "larger than the file",
        ],
    );
}

#[test]
fn array_count_whose_byte_size_overflows() {
    // u64::MAX elements of 8 bytes: count * size overflows 64 bits.
    let mut value = T_U64.to_le_bytes().to_vec();
    value.extend(u64::MAX.to_le_bytes());
    let raw = Raw::new().kv_raw(b"x", T_ARRAY, &value);
    refused(raw.build(), &["'x'", "array count 18446744073709551615"]);
}

#[test]
fn string_array_count_larger_than_the_file() {
    let mut value = T_STRING.to_le_bytes().to_vec();
    value.extend((u64::MAX / 8).to_le_bytes());
    let raw = Raw::new().kv_raw(b"tokenizer.ggml.merges", T_ARRAY, &value);
    refused(raw.build(), &["'tokenizer.ggml.merges'", "array count"]);
}

#[test]
fn arrays_nested_too_deep() {
    // 20 levels of array-of-array, each with one element, ending in an empty u8 array.
    let mut value = Vec::new();
    for _ in 0..20 {
        value.extend(T_ARRAY.to_le_bytes());
        value.extend(1u64.to_le_bytes());
    }
    value.extend(0u32.to_le_bytes());
    value.extend(0u64.to_le_bytes());
    let raw = Raw::new().kv_raw(b"deep", T_ARRAY, &value);
    refused(raw.build(), &["'deep'", "nested more than 8 deep"]);
}

#[test]
fn nested_arrays_within_the_limit_are_read() {
    let inner = ArrayValue::Array(vec![
        ArrayValue::U32(vec![1, 2]),
        ArrayValue::String(vec![]),
    ]);
    let raw = valid().kv("nested", inner.clone());
    let f = parse(raw.build()).unwrap();
    assert_eq!(f.get("nested"), Some(&Value::Array(inner)));
}

#[test]
fn bool_that_is_neither_0_nor_1() {
    let raw = Raw::new().kv_raw(b"tokenizer.ggml.add_bos_token", 7, &[2]);
    refused(
        raw.build(),
        &["'tokenizer.ggml.add_bos_token'", "bool value 2"],
    );
}

#[test]
fn duplicate_metadata_key() {
    let raw = valid().kv("general.architecture", "mistral");
    refused(raw.build(), &["'general.architecture'", "duplicate key"]);
}

// ---------------------------------------------------------------------------------------------
// Alignment

#[test]
fn alignment_zero() {
    let raw = valid().kv("general.alignment", 0u32);
    refused(
        raw.build(),
        &["general.alignment", "0 is not a nonzero power of two"],
    );
}

#[test]
fn alignment_three() {
    let raw = valid().kv("general.alignment", 3u32);
    refused(
        raw.build(),
        &["general.alignment", "3 is not a nonzero power of two"],
    );
}

#[test]
fn alignment_of_the_wrong_type() {
    let raw = valid().kv("general.alignment", 32u64);
    refused(
        raw.build(),
        &["general.alignment", "must be a u32", "u64 32"],
    );
    let raw = valid().kv("general.alignment", "32");
    refused(
        raw.build(),
        &["general.alignment", "must be a u32", "string"],
    );
}

#[test]
fn other_alignments_are_honoured() {
    let mut raw = Raw::new()
        .kv("general.alignment", 64u32)
        .tensor("a", &[4], GgmlType::F32, 0)
        .tensor("b", &[4], GgmlType::F32, 64)
        .data(&[0; 80]);
    raw.alignment = 64;
    let f = parse(raw.build()).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    // With 64, an offset of 32 is misaligned.
    let mut raw = Raw::new()
        .kv("general.alignment", 64u32)
        .tensor("a", &[4], GgmlType::F32, 32)
        .data(&[0; 64]);
    raw.alignment = 64;
    refused(
        raw.build(),
        &["tensor 'a'", "not a multiple of the alignment 64"],
    );
}

// ---------------------------------------------------------------------------------------------
// Tensor infos

#[test]
fn truncated_in_a_tensor_info() {
    let raw = Raw::new()
        .tensor("output_norm.weight", &[8], GgmlType::F32, 0)
        .data(&[0; 32]);
    let head = raw.head();
    assert_eq!(head.len(), 24 + raw.infos.len());
    // Inside dims[0].
    refused(
        head[..24 + 8 + 18 + 4 + 3].to_vec(),
        &["tensor 'output_norm.weight': dims[0]", "truncated"],
    );
    // Tensor infos complete, data section missing entirely.
    refused(head, &["'output_norm.weight'", "past the end of the file"]);
    // Inside a (long) name.
    let long = "blk.0.attn_output.weight.with.a.long.suffix.xyz";
    let head = Raw::new().tensor(long, &[8], GgmlType::F32, 0).head();
    refused(
        head[..24 + 8 + 30].to_vec(),
        &["tensor info #0: name", "string length 47", "truncated"],
    );
    // Too short for even one tensor info.
    refused(
        raw.build()[..24 + 20].to_vec(),
        &["tensor_count 1", "truncated"],
    );
}

#[test]
fn truncated_in_the_data() {
    let bytes = valid().build();
    refused(
        bytes[..bytes.len() - 1].to_vec(),
        &[
            "tensor 'blk.0.attn_q.weight'",
            "data range",
            "past the end of the file",
        ],
    );
}

#[test]
fn n_dims_5() {
    let raw = Raw::new().tensor_raw(b"t", 5, &[1; 5], 0, 0).data(&[0; 4]);
    refused(raw.build(), &["tensor 't'", "n_dims 5", "out of range"]);
}

#[test]
fn n_dims_0() {
    let raw = Raw::new().tensor_raw(b"t", 0, &[], 0, 0).data(&[0; 4]);
    refused(raw.build(), &["tensor 't'", "n_dims 0"]);
}

#[test]
fn zero_dimension() {
    let raw = Raw::new()
        .tensor("t", &[4, 0], GgmlType::F32, 0)
        .data(&[0; 16]);
    refused(raw.build(), &["tensor 't'", "dims[1]", "is 0"]);
}

#[test]
fn huge_dimension() {
    let raw = Raw::new().tensor("t", &[1 << 63], GgmlType::F32, 0);
    refused(
        raw.build(),
        &["tensor 't'", "dims[0] = 9223372036854775808", "too large"],
    );
}

#[test]
fn overflowing_element_count() {
    let raw = Raw::new().tensor("t", &[1 << 32, 1 << 32], GgmlType::F32, 0);
    refused(raw.build(), &["tensor 't'", "element count", "overflows"]);
    // 2^63 elements fit in u64 but not in ggml's int64_t.
    let raw = Raw::new().tensor("t", &[1 << 32, 1 << 31], GgmlType::I8, 0);
    refused(raw.build(), &["tensor 't'", "element count", "overflows"]);
}

#[test]
fn byte_size_beyond_the_file() {
    // 2^62 F64 elements: the element count fits, the byte range does not.
    let raw = Raw::new().tensor("t", &[1 << 31, 1 << 31], GgmlType::F64, 0);
    refused(raw.build(), &["tensor 't'"]);
}

#[test]
fn row_not_a_multiple_of_the_block_size() {
    let raw = Raw::new()
        .tensor("t", &[33, 2], GgmlType::Q4_0, 0)
        .data(&[0; 64]);
    refused(
        raw.build(),
        &[
            "tensor 't'",
            "dims[0] = 33",
            "not a multiple of the Q4_0 block size 32",
        ],
    );
    let raw = Raw::new()
        .tensor("t", &[128], GgmlType::Q6_K, 0)
        .data(&[0; 210]);
    refused(raw.build(), &["tensor 't'", "Q6_K block size 256"]);
}

#[test]
fn unknown_tensor_type() {
    // 4 (the removed Q4_2), 31 (removed Q4_0_4_4) and an id past the end.
    for id in [4u32, 31, 9999] {
        let raw = Raw::new().tensor_raw(b"t", 1, &[32], id, 0).data(&[0; 128]);
        refused(
            raw.build(),
            &["tensor 't'", &format!("unknown ggml type id {id}")],
        );
    }
}

#[test]
fn invalid_utf8_tensor_name() {
    let raw = Raw::new()
        .tensor_raw(b"blk.\xfe", 1, &[4], 0, 0)
        .data(&[0; 16]);
    refused(raw.build(), &["tensor info #0", "not valid UTF-8"]);
}

#[test]
fn duplicate_tensor_name() {
    let raw = Raw::new()
        .tensor("t", &[8], GgmlType::F32, 0)
        .tensor("t", &[8], GgmlType::F32, 32)
        .data(&[0; 64]);
    refused(raw.build(), &["tensor 't'", "duplicate tensor name"]);
}

#[test]
fn offset_not_aligned() {
    let raw = Raw::new()
        .tensor("t", &[4], GgmlType::F32, 4)
        .data(&[0; 32]);
    refused(
        raw.build(),
        &[
            "tensor 't'",
            "data offset 4",
            "not a multiple of the alignment 32",
        ],
    );
}

#[test]
fn offset_past_the_end() {
    let raw = Raw::new()
        .tensor("t", &[4], GgmlType::F32, 1 << 20)
        .data(&[0; 32]);
    refused(
        raw.build(),
        &["tensor 't'", "data range", "past the end of the file"],
    );
}

#[test]
fn offset_that_overflows() {
    let raw = Raw::new()
        .tensor("t", &[4], GgmlType::F32, u64::MAX - 31)
        .data(&[0; 32]);
    refused(raw.build(), &["tensor 't'", "overflows"]);
}

#[test]
fn overlapping_tensors() {
    // a: 16 F32 = 64 bytes at 0; b starts at 32, inside a.
    let raw = Raw::new()
        .tensor("a", &[16], GgmlType::F32, 0)
        .tensor("b", &[8], GgmlType::F32, 32)
        .data(&[0; 64]);
    refused(raw.build(), &["'a'", "'b'", "overlap"]);
}

// ---------------------------------------------------------------------------------------------
// Typed getters

#[test]
fn known_key_with_the_wrong_type() {
    let raw = Raw::new()
        .kv("llama.block_count", "30")
        .kv("llama.rope.freq_base", 10000u32)
        .kv("tokenizer.ggml.tokens", vec![1u32, 2]);
    let f = parse(raw.build()).unwrap();
    let e = f.get_u64("llama.block_count").unwrap_err().to_string();
    assert!(
        e.contains("'llama.block_count'") && e.contains("string \"30\""),
        "{e}"
    );
    let e = f.get_f32("llama.rope.freq_base").unwrap_err().to_string();
    assert!(
        e.contains("'llama.rope.freq_base'") && e.contains("u32 10000"),
        "{e}"
    );
    let e = f
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'tokenizer.ggml.tokens'") && e.contains("array of 2 u32"),
        "{e}"
    );
    // The same key is fine for a getter that accepts its type.
    assert_eq!(
        &*f.get_i32_array("tokenizer.ggml.tokens").unwrap().unwrap(),
        &[1, 2]
    );
}

// ---------------------------------------------------------------------------------------------
// Fuzz-like: no input may panic

/// xorshift64*: a fixed-seed generator, enough to pick positions and bits.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A writer-made file with every value type, a string array, a nested array and tensors of
/// several types.
fn rich_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_metadata("general.alignment", 32u32).unwrap();
    w.add_metadata("u8", 1u8).unwrap();
    w.add_metadata("i8", -1i8).unwrap();
    w.add_metadata("u16", 2u16).unwrap();
    w.add_metadata("i16", -2i16).unwrap();
    w.add_metadata("i32", -3i32).unwrap();
    w.add_metadata("f32", 0.5f32).unwrap();
    w.add_metadata("bool", true).unwrap();
    w.add_metadata("u64", 4u64).unwrap();
    w.add_metadata("i64", -4i64).unwrap();
    w.add_metadata("f64", 0.25f64).unwrap();
    w.add_metadata("tokens", vec!["<|endoftext|>", "a", "bc", "Ġthe"])
        .unwrap();
    w.add_metadata("scores", vec![0.0f32, -1.0, -2.0, -3.0])
        .unwrap();
    w.add_metadata("flags", vec![true, false]).unwrap();
    w.add_metadata(
        "nested",
        ArrayValue::Array(vec![
            ArrayValue::I64(vec![7]),
            ArrayValue::String(vec!["x".into()]),
        ]),
    )
    .unwrap();
    w.add_tensor("f32", &[4], GgmlType::F32, vec![0u8; 16])
        .unwrap();
    w.add_tensor("q4_1", &[32, 2], GgmlType::Q4_1, vec![0u8; 40])
        .unwrap();
    w.add_tensor("q6_k", &[256], GgmlType::Q6_K, vec![0u8; 210])
        .unwrap();
    w.add_tensor("f16", &[2, 2, 2], GgmlType::F16, vec![0u8; 16])
        .unwrap();
    w.to_bytes().unwrap()
}

/// Parses and, when the parse succeeds, touches everything a caller would.
fn exercise(bytes: Vec<u8>) {
    if let Ok(f) = GgufFile::from_vec(bytes) {
        for (key, _) in f.metadata() {
            let _ = f.get_u64(key);
            let _ = f.get_f32(key);
            let _ = f.get_str(key);
            let _ = f.get_i32_array(key);
            let _ = f.get_str_array(key);
        }
        for t in f.tensors() {
            assert_eq!(f.tensor_bytes(t).len(), t.n_bytes);
            let _ = f.tensor_to_f32(t);
        }
    }
}

#[test]
fn rich_file_round_trips() {
    let f = GgufFile::from_vec(rich_file()).unwrap();
    assert_eq!(f.metadata().len(), 16);
    assert_eq!(f.get("i8"), Some(&Value::I8(-1)));
    assert_eq!(f.get_f32("f64").unwrap(), Some(0.25));
    assert_eq!(f.get_str_array("tokens").unwrap().unwrap()[3], "Ġthe");
    assert_eq!(f.tensors().len(), 4);
    for t in f.tensors() {
        assert_eq!(t.offset % 32, 0);
        assert!(f.tensor_to_f32(t).unwrap().iter().all(|&v| v == 0.0));
    }
}

#[test]
fn truncation_at_every_byte_never_panics() {
    let bytes = rich_file();
    for len in 0..bytes.len() {
        let result = GgufFile::from_vec(bytes[..len].to_vec());
        // Only the trailing padding of the last tensor may go.
        assert!(
            result.is_err() || len >= bytes.len() - 32,
            "accepted truncation to {len}"
        );
    }
}

#[test]
fn random_bit_flips_never_panic() {
    let bytes = rich_file();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let mut b = bytes.clone();
        // One to four flipped bits, mostly in the header/metadata where counts live.
        for _ in 0..1 + rng.below(4) {
            let pos = if rng.below(4) == 0 {
                rng.below(b.len())
            } else {
                rng.below(600)
            };
            b[pos] ^= 1 << rng.below(8);
        }
        exercise(b);
    }
}

#[test]
fn random_overwrites_of_counts_never_panic() {
    // Whole 8-byte little-endian words replaced by extreme values, at any position: this is
    // how lengths and counts become huge, zero or off by one.
    let bytes = rich_file();
    let mut rng = XorShift(42);
    let extremes = [
        0u64,
        1,
        2,
        31,
        32,
        255,
        u32::MAX as u64,
        i64::MAX as u64,
        u64::MAX,
    ];
    for _ in 0..20_000 {
        let mut b = bytes.clone();
        let pos = rng.below(b.len() - 8);
        let v = if rng.below(2) == 0 {
            extremes[rng.below(extremes.len())]
        } else {
            rng.next()
        };
        let width = [1, 2, 4, 8][rng.below(4)];
        b[pos..pos + width].copy_from_slice(&v.to_le_bytes()[..width]);
        exercise(b);
    }
}

// ---------------------------------------------------------------------------------------------
// On disk

#[test]
fn empty_missing_and_directory_paths_give_errors_naming_the_path() {
    let dir = std::env::temp_dir().join(format!("formats-gguf-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let cases = [
        (empty.clone(), "magic"),
        (dir.join("missing.gguf"), "missing.gguf"),
        (dir.clone(), "formats-gguf-disk"),
    ];
    for (path, needle) in cases {
        let e = GgufFile::open(&path).unwrap_err().to_string();
        assert!(
            e.contains(&*path.to_string_lossy()) && e.contains(needle),
            "{e}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn files_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GgufFile>();
}
