//! Malformed safetensors files and checkpoint indexes, one per test: each must be refused
//! with a message naming the problem and the file, never a panic. Also the happy paths of
//! single-file, sharded and base-named checkpoints on disk.

use formats::safetensors::{serialize_safetensors, write_safetensors, Dtype, ModelWeights};
use formats::{FormatError, SafeTensorsFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file with this raw header text and data section.
fn file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn parse(bytes: Vec<u8>) -> Result<SafeTensorsFile, FormatError> {
    SafeTensorsFile::from_bytes("weights/model.safetensors", Arc::new(bytes))
}

/// Expects `bytes` to be refused with a message naming the file and every needle.
#[track_caller]
fn refused(bytes: Vec<u8>, needles: &[&str]) {
    let msg = match parse(bytes) {
        Ok(_) => panic!("malformed file was accepted (wanted {needles:?})"),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains("weights/model.safetensors"),
        "no file name in {msg:?}"
    );
    for needle in needles {
        assert!(
            msg.contains(needle),
            "error {msg:?} does not mention {needle:?}"
        );
    }
}

#[test]
fn a_valid_file_parses() {
    let f = parse(file(
        r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        &[0; 8],
    ))
    .unwrap();
    assert_eq!(f.tensor("w").unwrap().shape, [2]);
}

#[test]
fn shorter_than_the_length_prefix() {
    refused(vec![1, 2, 3, 4, 5], &["5 bytes", "too short"]);
}

#[test]
fn header_length_past_the_end_of_the_file() {
    let mut bytes = file("{}", &[]);
    bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
    refused(bytes, &["header length 1000", "past the end of the file"]);
}

#[test]
fn header_length_over_the_limit() {
    let mut bytes = file("{}", &[]);
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    refused(bytes, &["header length 18446744073709551615", "limit"]);
}

#[test]
fn header_not_utf8() {
    let mut bytes = (4u64).to_le_bytes().to_vec();
    bytes.extend(b"{\xff}\x20");
    refused(bytes, &["not valid UTF-8"]);
}

#[test]
fn header_not_json() {
    refused(file("{\"w\": nope}", &[]), &["not valid JSON"]);
    refused(file("{} trailing", &[]), &["not valid JSON"]);
}

#[test]
fn header_not_an_object() {
    refused(file("[1, 2, 3]", &[]), &["does not start with '{'"]);
}

#[test]
fn unknown_dtype() {
    let h = r#"{"w":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#;
    refused(
        file(h, &[0; 16]),
        &["tensor 'w'", "unknown or unsupported dtype 'F128'"],
    );
}

#[test]
fn reversed_data_offsets() {
    let h = r#"{"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#;
    refused(file(h, &[0; 4]), &["tensor 'w'", "[4, 0]", "reversed"]);
}

#[test]
fn data_offsets_past_the_end() {
    let h = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    refused(
        file(h, &[0; 12]),
        &["tensor 'w'", "past the end of the data section (12 bytes)"],
    );
}

#[test]
fn size_does_not_match_the_shape() {
    let h = r#"{"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,8]}}"#;
    refused(
        file(h, &[0; 8]),
        &["tensor 'w'", "F16 of shape [2, 3] is 12 bytes", "span 8"],
    );
}

#[test]
fn shape_product_overflows() {
    let h = r#"{"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}}"#;
    refused(file(h, &[0; 4]), &["tensor 'w'", "overflows"]);
}

#[test]
fn negative_or_fractional_dimension() {
    let h = r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#;
    refused(file(h, &[0; 4]), &["tensor 'w'", "bad header entry"]);
    let h = r#"{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#;
    refused(file(h, &[0; 4]), &["tensor 'w'", "bad header entry"]);
}

#[test]
fn missing_field() {
    let h = r#"{"w":{"dtype":"F32","shape":[1]}}"#;
    refused(file(h, &[0; 4]), &["tensor 'w'", "data_offsets"]);
}

#[test]
fn overlapping_tensors() {
    let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
               "b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    refused(file(h, &[0; 16]), &["'a'", "'b'", "overlap"]);
}

#[test]
fn duplicate_tensor_name() {
    let h = r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},
               "w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
    refused(file(h, &[0; 2]), &["duplicate key 'w'"]);
}

#[test]
fn metadata_that_is_not_a_string_map() {
    refused(
        file(r#"{"__metadata__":{"bits":4}}"#, &[]),
        &["__metadata__", "strings"],
    );
    refused(file(r#"{"__metadata__":[1]}"#, &[]), &["__metadata__"]);
}

#[test]
fn empty_tensors_may_share_an_offset() {
    let h = r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},
               "b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
               "c":{"dtype":"I32","shape":[3,0],"data_offsets":[4,4]}}"#;
    let f = parse(file(h, &[0; 4])).unwrap();
    assert_eq!(f.tensor("c").unwrap().n_elements(), 0);
}

// ---------------------------------------------------------------------------------------------
// Fuzz-like

#[test]
fn truncations_and_bit_flips_never_panic() {
    let w: Vec<u8> = (0..24).collect();
    let bytes = serialize_safetensors(
        &[
            (
                "model.layers.0.self_attn.q_proj.weight",
                Dtype::F16,
                &[3, 4],
                &w,
            ),
            ("model.norm.weight", Dtype::F32, &[2], &w[..8]),
        ],
        &[("format", "pt")],
    )
    .unwrap();
    for len in 0..bytes.len() {
        let _ = parse(bytes[..len].to_vec());
    }
    let mut state = 0x1234_5678_9ABC_DEF1u64;
    for _ in 0..20_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut b = bytes.clone();
        let pos = (state % b.len() as u64) as usize;
        b[pos] ^= 1 << (state >> 61);
        if let Ok(f) = parse(b) {
            for t in f.tensors() {
                let _ = t.to_f32_vec();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints on disk

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("formats-st-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_shard(path: &Path, tensors: &[(&str, &[f32])]) {
    let shapes: Vec<[usize; 1]> = tensors.iter().map(|(_, v)| [v.len()]).collect();
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, v)| f32s(v)).collect();
    let list: Vec<_> = tensors
        .iter()
        .zip(&shapes)
        .zip(&bytes)
        .map(|(((name, _), shape), b)| (*name, Dtype::F32, &shape[..], b.as_slice()))
        .collect();
    write_safetensors(path, &list, &[("format", "pt")]).unwrap();
}

fn write_index(dir: &TempDir, weight_map: &str) -> PathBuf {
    let path = dir.path("model.safetensors.index.json");
    let text = format!(r#"{{"metadata": {{"total_size": 24}}, "weight_map": {weight_map}}}"#);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn single_file_checkpoint() {
    let dir = TempDir::new("single");
    write_shard(
        &dir.path("model.safetensors"),
        &[("a", &[1.0, 2.0]), ("b", &[3.0])],
    );
    let w = ModelWeights::open_dir(&dir.0).unwrap();
    assert_eq!(w.names().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(w.tensor("b").unwrap().to_f32_vec().unwrap(), [3.0]);
    assert_eq!(w.files()[0].metadata()["format"], "pt");
    assert!(!w.contains("c"));
}

#[test]
fn sharded_checkpoint() {
    let dir = TempDir::new("sharded");
    write_shard(
        &dir.path("model-00001-of-00002.safetensors"),
        &[("a", &[1.0]), ("b", &[2.0])],
    );
    write_shard(
        &dir.path("model-00002-of-00002.safetensors"),
        &[("c", &[3.0, 4.0])],
    );
    write_index(
        &dir,
        r#"{"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors"}"#,
    );
    let w = ModelWeights::open_dir(&dir.0).unwrap();
    assert_eq!(w.files().len(), 2);
    assert_eq!(w.names().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(w.tensor("c").unwrap().to_f32_vec().unwrap(), [3.0, 4.0]);
    assert!(w
        .tensor("c")
        .unwrap()
        .file
        .ends_with("model-00002-of-00002.safetensors"));
    // Zero-copy access: the shard's bytes and the tensor's range in them.
    let (owner, range) = w.tensor_storage("c").unwrap();
    assert_eq!(&(*owner).as_ref()[range], w.tensor("c").unwrap().bytes);
    assert!(w.tensor_storage("d").is_none());
}

#[test]
fn gptq_base_name() {
    let dir = TempDir::new("base");
    write_shard(
        &dir.path("gptq_model-4bit-128g.safetensors"),
        &[("qweight", &[0.0])],
    );
    let w = ModelWeights::open_dir_with_base(&dir.0, "gptq_model-4bit-128g").unwrap();
    assert!(w.contains("qweight"));
    // The only *.safetensors file in a directory is found without the base name too.
    assert!(ModelWeights::open_dir(&dir.0).unwrap().contains("qweight"));
    let e = ModelWeights::open_dir_with_base(&dir.0, "model")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("neither model.safetensors nor model.safetensors.index.json"),
        "{e}"
    );
}

#[test]
fn directory_without_weights_or_with_several_candidates() {
    let dir = TempDir::new("none");
    let e = ModelWeights::open_dir(&dir.0).unwrap_err().to_string();
    assert!(e.contains("no model.safetensors"), "{e}");
    write_shard(&dir.path("one.safetensors"), &[("a", &[1.0])]);
    write_shard(&dir.path("two.safetensors"), &[("a", &[1.0])]);
    let e = ModelWeights::open_dir(&dir.0).unwrap_err().to_string();
    assert!(e.contains("one.safetensors, two.safetensors"), "{e}");
}

#[test]
fn index_names_a_missing_shard() {
    let dir = TempDir::new("missing");
    write_shard(
        &dir.path("model-00001-of-00002.safetensors"),
        &[("a", &[1.0])],
    );
    write_index(
        &dir,
        r#"{"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}"#,
    );
    let e = ModelWeights::open_dir(&dir.0).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains("'b'")
            && e.contains("model-00002-of-00002.safetensors")
            && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn index_puts_a_tensor_in_the_wrong_shard() {
    let dir = TempDir::new("wrong");
    write_shard(
        &dir.path("model-00001-of-00002.safetensors"),
        &[("a", &[1.0])],
    );
    write_shard(
        &dir.path("model-00002-of-00002.safetensors"),
        &[("b", &[2.0])],
    );
    write_index(
        &dir,
        r#"{"a": "model-00002-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}"#,
    );
    let e = ModelWeights::open_dir(&dir.0).unwrap_err().to_string();
    assert!(
        e.contains("'a'") && e.contains("does not contain it"),
        "{e}"
    );
}

#[test]
fn index_shard_outside_the_directory() {
    let dir = TempDir::new("escape");
    for shard in [
        "../model.safetensors",
        "/etc/passwd",
        "sub/model.safetensors",
        "..",
    ] {
        write_index(&dir, &format!(r#"{{"a": "{shard}"}}"#));
        let e = ModelWeights::open_dir(&dir.0).unwrap_err().to_string();
        assert!(e.contains("not a plain file name"), "{shard}: {e}");
    }
}

#[test]
fn index_that_is_not_an_index() {
    let dir = TempDir::new("badindex");
    write_index(&dir, r#"{"a": "x.safetensors", "a": "y.safetensors"}"#);
    let e = ModelWeights::open_dir(&dir.0).unwrap_err().to_string();
    assert!(e.contains("duplicate key 'a'"), "{e}");
    std::fs::write(
        dir.path("model.safetensors.index.json"),
        "{\"metadata\": {}}",
    )
    .unwrap();
    let e = ModelWeights::open_dir(&dir.0).unwrap_err().to_string();
    assert!(e.contains("weight_map"), "{e}");
}

#[test]
fn corrupt_shard_error_names_the_shard() {
    let dir = TempDir::new("corrupt");
    std::fs::write(dir.path("model-00001-of-00001.safetensors"), [0xFF; 16]).unwrap();
    write_index(&dir, r#"{"a": "model-00001-of-00001.safetensors"}"#);
    let e = ModelWeights::open_dir(&dir.0).unwrap_err().to_string();
    assert!(
        e.contains("model-00001-of-00001.safetensors") && e.contains("limit"),
        "{e}"
    );
}

#[test]
fn empty_file_on_disk() {
    let dir = TempDir::new("empty");
    let path = dir.path("model.safetensors");
    std::fs::write(&path, b"").unwrap();
    let e = SafeTensorsFile::open(&path).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("too short"),
        "{e}"
    );
    let e = ModelWeights::open_dir(&dir.0).unwrap_err().to_string();
    assert!(e.contains("too short"), "{e}");
}

#[test]
fn weights_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ModelWeights>();
}
