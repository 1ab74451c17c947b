//! `meditron bench --device cuda`: prefill and decode speed of a model on the GPU (the 70B shape
//! with random GPTQ weights made on the device, or a loaded model), memory used, and the
//! bandwidth roofline the decode speed is held to.

use crate::driver::Gpu;
use crate::llama::{Model, Runner, State};
use anyhow::Result;
use std::time::Instant;

pub struct Opts {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub repetitions: usize,
    pub max_ctx: usize,
    pub batches: Vec<usize>,
    /// Print each line as it is measured (off for --json).
    pub echo: bool,
}

pub struct Result_ {
    pub lines: Vec<String>,
    pub json: serde_json::Value,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Measures `model` (already on the GPU; `load_s` is how long that took).
pub fn run(
    gpu: &Gpu,
    model: &Model,
    label: &str,
    load_s: f64,
    mem_before: usize,
    o: &Opts,
) -> Result<Result_> {
    let mut lines = Vec::new();
    let mut say = |l: String| {
        if o.echo {
            println!("{l}");
        }
        lines.push(l);
    };
    let bw = crate::check::copy_bandwidth(gpu)?;
    let wbytes = model.weight_bytes_per_token();
    let floor_ms = wbytes as f64 / bw / 1e6;
    say(format!(
        "device: {} (sm_{}{}, {} SMs); copy bandwidth {:.0} GB/s",
        gpu.name, gpu.cc.0, gpu.cc.1, gpu.sm_count, bw
    ));
    say(format!(
        "model: {label}; weights read per token {:.2} GB -> floor {:.2} ms/token = {:.1} tok/s",
        wbytes as f64 / 1e9,
        floor_ms,
        1e3 / floor_ms
    ));
    let runner = Runner::new(gpu, model);
    let st = State::new(gpu, model, 1, o.n_prompt.max(1), o.max_ctx)?;
    gpu.sync()?;
    let (free, total) = gpu.mem_info()?;
    let used = total - free;
    say(format!(
        "memory: {:.2} GiB used on the device ({:.2} GiB by this process incl. {:.2} GiB KV cache for {} tokens); load {:.1} s",
        used as f64 / (1u64 << 30) as f64,
        (used.saturating_sub(mem_before)) as f64 / (1u64 << 30) as f64,
        st.kv_bytes() as f64 / (1u64 << 30) as f64,
        o.max_ctx,
        load_s
    ));
    let vocab = model.cfg.vocab as u64;
    let mut seed = 42u64;
    let tokens: Vec<u32> = (0..o.n_prompt.max(1))
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % vocab) as u32
        })
        .collect();

    // Prefill: warm-up (compiles kernels, creates cuBLAS), then timed repetitions.
    let mut pp = None;
    if o.n_prompt > 0 {
        runner.prefill(&st, &tokens, 0)?;
        gpu.sync()?;
        let mut t = Vec::new();
        for _ in 0..o.repetitions {
            t.push(gpu.time(|| runner.prefill(&st, &tokens, 0))?);
        }
        let ms = median(t);
        pp = Some(o.n_prompt as f64 / ms * 1e3);
        runner.only_matmuls.set(true);
        let mm = gpu.time(|| runner.prefill(&st, &tokens, 0));
        runner.only_matmuls.set(false);
        let mm = mm?;
        say(format!(
            "prefill {}: {:.1} ms -> {:.0} tok/s (matrix products alone: {:.1} ms)",
            o.n_prompt,
            ms,
            o.n_prompt as f64 / ms * 1e3,
            mm
        ));
    }

    // Decode after the prompt, batch 1: eager launches once, then the captured graph.
    let mut tg = None;
    let mut tg_eager = None;
    if o.n_gen > 0 {
        let start = o.n_prompt.max(1);
        let n_gen = o.n_gen.min(o.max_ctx - start - 1);
        let reset = |p: usize| gpu.write(&st.dec_pos, 0, &[p as i32]);
        if o.n_prompt == 0 {
            gpu.write(&st.dec_tok, 0, &[tokens[0] as i32])?;
        }
        reset(start)?;
        runner.decode_step(&st)?; // warm-up, compiles
        gpu.sync()?;
        reset(start)?;
        let ms = gpu.time(|| (0..n_gen.min(16)).try_for_each(|_| runner.decode_step(&st)))?
            / n_gen.min(16) as f64;
        tg_eager = Some(1e3 / ms);
        say(format!(
            "decode batch 1, no graph: {:.2} ms/token -> {:.2} tok/s",
            ms,
            1e3 / ms
        ));
        let graph = runner.capture_decode(&st)?;
        let mut per = Vec::new();
        for _ in 0..o.repetitions {
            reset(start)?;
            let ms = gpu.time(|| (0..n_gen).try_for_each(|_| gpu.replay(&graph)))?;
            per.push(ms / n_gen as f64);
        }
        let ms = median(per);
        tg = Some(1e3 / ms);
        say(format!(
            "decode batch 1 after {start} tokens, CUDA graph: {:.2} ms/token -> {:.2} tok/s ({:.0}% of the {:.2} ms floor)",
            ms,
            1e3 / ms,
            100.0 * floor_ms / ms,
            floor_ms
        ));
        // Where the step's time goes: a graph of the matrix products alone.
        runner.only_matmuls.set(true);
        let mm_graph = runner.capture_decode(&st);
        runner.only_matmuls.set(false);
        let mm_graph = mm_graph?;
        reset(start)?;
        let mm_ms = gpu.time(|| (0..n_gen).try_for_each(|_| gpu.replay(&mm_graph)))? / n_gen as f64;
        say(format!(
            "  of which matrix products (GEMVs + lm_head + argmax) {:.2} ms ({:.0}% of their {:.2} ms floor), everything else {:.2} ms",
            mm_ms,
            100.0 * floor_ms / mm_ms,
            floor_ms,
            ms - mm_ms
        ));
        reset(start)?;
        runner.decode_step(&st)?;
        let hist: Vec<i32> = gpu.read(&st.history, 0, (start + 4).min(o.max_ctx + 1))?;
        say(format!("first generated ids: {:?}", &hist[start..]));
    }
    drop(st);

    let mut batch_rates = Vec::new();
    for &b in o.batches.iter().filter(|&&b| b > 1) {
        let ctx = 1024.min(o.max_ctx);
        let st = State::new(gpu, model, b, 1, ctx)?;
        let t0 = Instant::now();
        gpu.write(
            &st.dec_tok,
            0,
            &tokens[..b.min(tokens.len())]
                .iter()
                .map(|&t| t as i32)
                .collect::<Vec<_>>(),
        )?;
        gpu.write(&st.dec_pos, 0, &vec![128i32; b])?;
        runner.decode_step(&st)?;
        let graph = runner.capture_decode(&st)?;
        gpu.write(&st.dec_pos, 0, &vec![128i32; b])?;
        let steps = 64;
        let ms = gpu.time(|| (0..steps).try_for_each(|_| gpu.replay(&graph)))? / steps as f64;
        let _ = t0;
        say(format!(
            "decode batch {b} (after 128 tokens): {:.2} ms/step -> {:.1} tok/s aggregate",
            ms,
            b as f64 * 1e3 / ms
        ));
        batch_rates
            .push(serde_json::json!({"batch": b, "ms_per_step": ms, "tok_s": b as f64 * 1e3 / ms}));
    }

    let json = serde_json::json!({
        "device": gpu.name, "model": label, "copy_gbs": bw, "weight_bytes_per_token": wbytes,
        "floor_ms": floor_ms, "load_s": load_s, "mem_used_bytes": used, "prefill_tok_s": pp,
        "n_prompt": o.n_prompt, "decode_tok_s": tg, "decode_eager_tok_s": tg_eager, "batches": batch_rates,
    });
    Ok(Result_ { lines, json })
}
