//! Files written by gguf-py's `GGUFWriter` (llama.cpp's Python package, a writer we did not
//! write) read back: `fixtures/gguf_py_written.gguf`, made by `fixtures/make_gguf_fixture.py`.

use formats::gguf::GgufFile;
use formats::GgmlType;
use std::path::Path;

fn fixture() -> GgufFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_py_written.gguf");
    GgufFile::open(&path).unwrap()
}

#[test]
fn metadata_written_by_gguf_py() {
    let f = fixture();
    assert_eq!(f.version(), 3);
    assert_eq!(f.metadata().len(), 14);
    assert_eq!(f.get_str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(f.get_u64("llama.block_count").unwrap(), Some(2));
    assert_eq!(f.get_u64("llama.attention.head_count_kv").unwrap(), Some(2));
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), Some(100000.0));
    assert_eq!(
        f.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        Some(1e-5)
    );
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap(),
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "Ġhello"]
    );
    assert_eq!(
        &*f.get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .unwrap(),
        [3, 3, 3, 1]
    );
    assert_eq!(
        f.get_f32_array("tokenizer.ggml.scores").unwrap().unwrap(),
        [0.0, -1.0, -2.0, -3.5]
    );
    assert_eq!(
        f.get_bool("tokenizer.ggml.add_bos_token").unwrap(),
        Some(false)
    );
    assert_eq!(f.get_u64("tokenizer.ggml.eos_token_id").unwrap(), Some(2));
    assert_eq!(
        f.get_str("tokenizer.chat_template").unwrap(),
        Some("{{ messages }}")
    );
}

#[test]
fn tensors_written_by_gguf_py() {
    let f = fixture();
    // Names, dims (innermost first), types and absolute offsets as gguf-py's reader reports.
    let expected = [
        ("output_norm.weight", vec![4], GgmlType::F32, 992, 16),
        ("blk.0.ffn_norm.weight", vec![4, 2], GgmlType::F16, 1024, 16),
        (
            "blk.0.attn_q.weight",
            vec![64, 2],
            GgmlType::Q8_0,
            1056,
            136,
        ),
        ("blk.0.attn_k.weight", vec![64, 2], GgmlType::Q4_0, 1216, 72),
    ];
    assert_eq!(f.tensors().len(), expected.len());
    for (t, (name, dims, ty, offset, n_bytes)) in f.tensors().iter().zip(expected) {
        assert_eq!((t.name.as_str(), &t.dims, t.ty), (name, &dims, ty));
        assert_eq!((t.offset, t.n_bytes), (offset, n_bytes), "{name}");
    }
    let values = |name: &str| f.tensor_to_f32(f.tensor(name).unwrap()).unwrap();
    assert_eq!(values("output_norm.weight"), [1.0, 2.0, 3.0, -4.5]);
    assert_eq!(
        values("blk.0.ffn_norm.weight"),
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    );
    // gguf-py's dequantization of its own quantization (printed by the fixture script).
    let q8 = values("blk.0.attn_q.weight");
    assert_eq!(
        &q8[..4],
        [-3.999_755_9, -3.873_779_3, -3.747_802_7, -3.621_826_2]
    );
    assert_eq!(q8[127], 11.875_244);
    let q4 = values("blk.0.attn_k.weight");
    assert_eq!(&q4[..4], [-4.0, -4.0, -3.5, -3.5]);
    assert_eq!(q4[127], 11.875);
}
