//! The built-in default model (SmolLM2-135M-Instruct, Q4_1 GGUF), when it is on this machine:
//! found through `MEDITRON_DEFAULT_GGUF` or `~/.cache/meditron/`. Skipped (with a message)
//! when absent, so the suite never needs the network.

use formats::gguf::GgufFile;
use formats::{ggml, FormatError, GgmlType};
use std::path::PathBuf;
use std::sync::Arc;

const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn model_path() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("MEDITRON_DEFAULT_GGUF").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/meditron").join(FILE_NAME)),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.is_file());
    if found.is_none() {
        eprintln!(
            "skipping: {FILE_NAME} not found (set MEDITRON_DEFAULT_GGUF or put it in \
             ~/.cache/meditron/)"
        );
    }
    found
}

/// A scratch directory for this test process, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("formats-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn smollm2_opens_with_the_expected_contents() {
    let Some(path) = model_path() else { return };
    let f = GgufFile::open(&path).unwrap();

    assert!(matches!(f.version(), 2 | 3));
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.get_str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(f.get_u64("llama.block_count").unwrap(), Some(30));
    assert_eq!(f.get_u64("llama.embedding_length").unwrap(), Some(576));
    assert_eq!(f.get_u64("llama.feed_forward_length").unwrap(), Some(1536));
    assert_eq!(f.get_u64("llama.attention.head_count").unwrap(), Some(9));
    assert_eq!(f.get_u64("llama.attention.head_count_kv").unwrap(), Some(3));
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), Some(100000.0));
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), Some("gpt2"));
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(
        &tokens[..3],
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    );
    let types = f
        .get_i32_array("tokenizer.ggml.token_type")
        .unwrap()
        .unwrap();
    assert_eq!(types.len(), 49152);
    assert!(
        f.get_str_array("tokenizer.ggml.merges")
            .unwrap()
            .unwrap()
            .len()
            > 40_000
    );
    assert!(f
        .get_str("tokenizer.chat_template")
        .unwrap()
        .unwrap()
        .contains("<|im_start|>"));

    // Tied embeddings: no output.weight. Embedding is [hidden, vocab] innermost first.
    assert!(f.tensor("output.weight").is_none());
    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [576, 49152]);
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.dims.as_slice(), q.ty), (&[576, 576][..], GgmlType::Q4_1));
    let k = f.tensor("blk.29.attn_k.weight").unwrap();
    assert_eq!(k.dims, [576, 192]);
    assert_eq!(f.tensor("output_norm.weight").unwrap().ty, GgmlType::F32);

    // Every tensor lies inside the file and decodes to finite numbers (layer 0 and the
    // un-layered tensors, to keep the test quick).
    let mut end = 0;
    for t in f.tensors() {
        assert_eq!(f.tensor_bytes(t).len(), t.n_bytes);
        assert_eq!(t.offset % f.alignment(), 0);
        end = end.max(t.offset + t.n_bytes as u64);
        if (t.name.starts_with("blk.0.") || !t.name.starts_with("blk."))
            && ggml::can_dequantize(t.ty)
        {
            let values = f.tensor_to_f32(t).unwrap();
            assert!(values.iter().all(|v| v.is_finite()), "{}", t.name);
        }
    }
    assert!(end <= f.file_bytes().len() as u64);
    let norm = f
        .tensor_to_f32(f.tensor("output_norm.weight").unwrap())
        .unwrap();
    assert!(norm.iter().any(|&v| v != 0.0));
}

#[test]
fn truncated_copy_gives_a_clean_error_naming_the_file() {
    let Some(path) = model_path() else { return };
    let bytes = std::fs::read(&path).unwrap();
    let f = GgufFile::from_vec(bytes.clone()).unwrap();
    let dir = TempDir::new("truncated");

    // Cut in the data section: the last tensors run past the end.
    let cut = dir.0.join("cut-data.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = GgufFile::open(&cut).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FormatError::InFile { .. }), "{msg}");
    assert!(
        msg.contains("cut-data.gguf") && msg.contains("past the end of the file"),
        "{msg}"
    );

    // Cut in the metadata (inside the vocabulary) and in the tensor infos.
    let data_offset = f.data_offset() as usize;
    for (name, len) in [
        ("cut-meta.gguf", 100_000),
        ("cut-infos.gguf", data_offset - 50),
    ] {
        let p = dir.0.join(name);
        std::fs::write(&p, &bytes[..len]).unwrap();
        let msg = GgufFile::open(&p).unwrap_err().to_string();
        assert!(msg.contains(name) && msg.contains("truncated"), "{msg}");
    }
}

#[test]
fn bit_flipped_copies_never_panic() {
    let Some(path) = model_path() else { return };
    // One buffer, flipped in place between parses (copying 98 MB per trial would dominate).
    let mut shared = Arc::new(std::fs::read(&path).unwrap());
    let header_end = GgufFile::from_bytes(shared.clone()).unwrap().data_offset() as usize;

    // Flip bits in the metadata and tensor infos (flips in the data section change weights,
    // not structure); restore each before the next.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut rejected = 0;
    let trials = 300;
    for _ in 0..trials {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let pos = (state % header_end as u64) as usize;
        let bit = 1u8 << (state >> 60 & 7);
        Arc::get_mut(&mut shared).unwrap()[pos] ^= bit;
        if GgufFile::from_bytes(shared.clone()).is_err() {
            rejected += 1;
        }
        Arc::get_mut(&mut shared).unwrap()[pos] ^= bit;
    }
    eprintln!("{rejected} of {trials} single-bit flips in the header were rejected");
    let mut bytes = Arc::try_unwrap(shared).unwrap();

    // And a copy on disk with a corrupted tensor_count, opened through the map.
    let dir = TempDir::new("flipped");
    let p = dir.0.join("flipped.gguf");
    bytes[8 + 7] ^= 0x40; // top byte of tensor_count
    std::fs::write(&p, &bytes).unwrap();
    let msg = GgufFile::open(&p).unwrap_err().to_string();
    assert!(
        msg.contains("flipped.gguf") && msg.contains("tensor_count"),
        "{msg}"
    );
}
