//! Sampling on the GPU (kernels/sample.cu): each row's request settings packed into words for
//! the kernel, its penalty list, the launch, and the results read back as token ids,
//! log-probabilities and top-n alternatives.

use crate::driver::{Buf, Gpu};
use anyhow::{bail, Result};
use model::{SampleRow, Sampled};

const SAMPLE_CU: &str = include_str!("kernels/sample.cu");

/// Most alternatives (`top_n_tokens`, OpenAI `top_logprobs`) per row the kernel returns.
pub const TOP_N_MAX: usize = 32;
/// Words per row of parameters and of results (as in sample.cu).
pub const PARAM_WORDS: usize = 16;
pub const OUT_WORDS: usize = 2 + 2 * TOP_N_MAX;

/// The kernel's source as NVRTC sees it.
pub fn source() -> String {
    format!("{}\n{SAMPLE_CU}", crate::kernels::COMMON)
}

/// Packs a row's settings (its logits at `row` of the step) and appends its penalty pairs
/// (token, times generated) to `pen`, each distinct token once: every context token when the
/// repetition penalty is on, else the generated ones when a frequency or presence penalty is.
pub fn pack(spec: &SampleRow, row: usize, pen: &mut Vec<i32>) -> [u32; PARAM_WORDS] {
    let p = spec.params;
    let off = pen.len() / 2;
    let rep = p.repetition_penalty != 1.0;
    let sub = p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
    if rep || sub {
        let mut toks: Vec<(u32, bool)> = Vec::with_capacity(spec.context.len());
        if rep {
            toks.extend(spec.context.iter().map(|&t| (t, false)));
        }
        if sub {
            toks.extend(spec.generated.iter().map(|&t| (t, true)));
        }
        toks.sort_unstable();
        let mut i = 0;
        while i < toks.len() {
            let t = toks[i].0;
            let mut count = 0;
            while i < toks.len() && toks[i].0 == t {
                count += toks[i].1 as i32;
                i += 1;
            }
            pen.extend([t as i32, count]);
        }
    }
    let mut w = [0u32; PARAM_WORDS];
    w[0] = row as u32;
    w[1] = p.do_sample as u32;
    w[2] = (1.0 / p.temperature.max(1e-6)).to_bits();
    w[3] = p.top_k.min(u32::MAX as usize) as u32;
    w[4] = p.top_p.to_bits();
    w[5] = p.typical_p.to_bits();
    w[6] = p.repetition_penalty.to_bits();
    w[7] = p.frequency_penalty.to_bits();
    w[8] = p.presence_penalty.to_bits();
    w[9] = spec.uniform.to_bits();
    w[10] = spec.top_n.min(TOP_N_MAX) as u32;
    w[11] = off as u32;
    w[12] = (pen.len() / 2 - off) as u32;
    w
}

/// One row's result words as a `Sampled` with `top_n` alternatives.
pub fn unpack(words: &[u32], top_n: usize) -> Sampled {
    let top_n = top_n.min(TOP_N_MAX);
    let top = (0..top_n)
        .filter(|&a| words[2 + a] != u32::MAX)
        .map(|a| (words[2 + a], f32::from_bits(words[2 + TOP_N_MAX + a])))
        .collect();
    Sampled {
        id: words[0],
        logprob: f32::from_bits(words[1]),
        top,
    }
}

/// Samples `rows` rows: `params` [rows][PARAM_WORDS] (row indices into `logits` [*][vocab] f32,
/// whose sampled rows are penalized in place), `pen` their pairs, results in `out`
/// [rows][OUT_WORDS].
pub fn launch(
    gpu: &Gpu,
    logits: u64,
    vocab: usize,
    params: &Buf,
    pen: &Buf,
    out: &Buf,
    rows: usize,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    if params.bytes < rows * PARAM_WORDS * 4 || out.bytes < rows * OUT_WORDS * 4 {
        bail!("sampling buffers hold fewer than {rows} rows");
    }
    let m = gpu.module("sample", &source(), &[("TOPN", TOP_N_MAX as i64)])?;
    let f = m.func("sample_rows")?;
    gpu.launch(
        &f,
        (rows as u32, 1, 1),
        1024,
        0,
        &[&logits, &(vocab as i32), &params.ptr, &pen.ptr, &out.ptr],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::SamplingParams;

    #[test]
    fn penalty_pairs_hold_each_token_once_with_its_generated_count() {
        let params = SamplingParams {
            repetition_penalty: 1.3,
            frequency_penalty: 0.5,
            ..Default::default()
        };
        let context = [5, 9, 5, 7, 9, 9];
        let spec = SampleRow {
            params: &params,
            uniform: 0.25,
            context: &context,
            generated: &context[3..],
            top_n: 40,
        };
        let mut pen = vec![1, 1];
        let w = pack(&spec, 3, &mut pen);
        assert_eq!(pen, [1, 1, 5, 0, 7, 1, 9, 2]);
        assert_eq!((w[0], w[10], w[11], w[12]), (3, TOP_N_MAX as u32, 1, 3));
        assert_eq!(f32::from_bits(w[9]), 0.25);
        // Only the generated tokens when there is no repetition penalty; none with no penalty.
        let params = SamplingParams {
            presence_penalty: 0.2,
            ..Default::default()
        };
        let mut pen = Vec::new();
        pack(
            &SampleRow {
                params: &params,
                ..spec
            },
            0,
            &mut pen,
        );
        assert_eq!(pen, [7, 1, 9, 2]);
        let params = SamplingParams::default();
        let mut pen = Vec::new();
        let w = pack(
            &SampleRow {
                params: &params,
                ..spec
            },
            0,
            &mut pen,
        );
        assert!(pen.is_empty());
        assert_eq!((w[1], f32::from_bits(w[2])), (0, 1.0));
    }

    #[test]
    fn results_unpack_up_to_the_alternatives_found() {
        let mut w = vec![0u32; OUT_WORDS];
        w[0] = 17;
        w[1] = (-0.5f32).to_bits();
        for a in 0..TOP_N_MAX {
            w[2 + a] = if a < 2 { a as u32 + 3 } else { u32::MAX };
            w[2 + TOP_N_MAX + a] = (-(a as f32)).to_bits();
        }
        let s = unpack(&w, 5);
        assert_eq!((s.id, s.logprob), (17, -0.5));
        assert_eq!(s.top, [(3, 0.0), (4, -1.0)]);
    }
}
