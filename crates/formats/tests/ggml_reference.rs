//! Our dequantizers against gguf-py's (llama.cpp's Python package, an implementation we did
//! not write), on random blocks: `fixtures/ggml_dequant.bin`, made by
//! `fixtures/make_ggml_fixture.py`.

use formats::ggml::{dequantize, GgmlType};

const FIXTURE: &[u8] = include_bytes!("fixtures/ggml_dequant.bin");

struct Record {
    ty: GgmlType,
    data: &'static [u8],
    expected: Vec<f32>,
}

fn records() -> Vec<Record> {
    let mut rest = FIXTURE;
    let mut out = Vec::new();
    let u32_at = |rest: &mut &'static [u8]| {
        let (head, tail) = rest.split_at(4);
        *rest = tail;
        u32::from_le_bytes(head.try_into().unwrap())
    };
    while !rest.is_empty() {
        let ty = GgmlType::from_u32(u32_at(&mut rest)).unwrap();
        let n = u32_at(&mut rest) as usize;
        let n_bytes = u32_at(&mut rest) as usize;
        let (data, tail) = rest.split_at(n_bytes);
        let (values, tail) = tail.split_at(4 * n);
        rest = tail;
        let expected = values
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        out.push(Record { ty, data, expected });
    }
    out
}

#[test]
fn dequantizers_match_gguf_py() {
    let records = records();
    let types: Vec<GgmlType> = records.iter().map(|r| r.ty).collect();
    assert_eq!(types.len(), 13, "{types:?}");
    for r in records {
        let mut got = vec![f32::NAN; r.expected.len()];
        dequantize(r.ty, r.data, &mut got).unwrap();
        // Both sides do the same f32 operations in the same order: equal bit for bit.
        for (i, (&g, &e)) in got.iter().zip(&r.expected).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{} element {i}: got {g}, gguf-py {e}",
                r.ty
            );
        }
    }
}
