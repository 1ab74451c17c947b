//! `meditron bench --device cuda ...`: the GPU side of `bench` (kept apart from the CPU bench):
//! synthetic 70B-shaped GPTQ weights made on the GPU, kernel checks against CPU references, and
//! greedy/logit agreement of a loaded model with the CPU backend.

use crate::args::ModelArgs;
use anyhow::{bail, Context, Result};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct CudaArgs {
    /// Where to run: cpu (default) or cuda
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// With --device cuda: random weights of this shape made on the GPU instead of a model file (70b)
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Bits of the synthetic GPTQ weights (3, 4 or 8)
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    /// Rows per scale group of the synthetic weights (-1: one group per column)
    #[arg(long, default_value_t = 128, allow_hyphen_values = true)]
    pub group_size: i64,
    /// Synthetic weights with act-order (rows permuted by group at load, activations gathered)
    #[arg(long)]
    pub act_order: bool,
    /// Layers of the synthetic model (default: the shape's own)
    #[arg(long)]
    pub layers: Option<usize>,
    /// Decode batch sizes to time (comma-separated; 1 is always measured)
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// With --device cuda: run every kernel against its CPU reference and time the GEMVs
    #[arg(long)]
    pub check_kernels: bool,
    /// With --device cuda and --model: greedy-decode this many tokens on the GPU and the CPU
    /// backend and compare tokens and logits
    #[arg(long)]
    pub compare_cpu: Option<usize>,
    /// With --compare-cpu: the CPU backend runs this model directory instead of --model (e.g.
    /// a GPTQ model dequantized to fp16 by tools/gptq_dequant.py: an f32-activation reference
    /// for the GPU's GPTQ kernels, where the CPU's own GPTQ kernels use 8-bit activations)
    #[arg(long)]
    pub reference: Option<std::path::PathBuf>,
    /// With --compare-cpu: write the prompt, both backends' tokens and logits into this folder
    /// (meta.json, cpu.f32, gpu.f32) for tools/torch_reference.py to compare with transformers
    #[arg(long)]
    pub dump_logits: Option<std::path::PathBuf>,
}

/// Runs the GPU bench when `--device cuda`; returns false for the CPU bench to run instead.
pub fn run_if_cuda(
    c: &CudaArgs,
    model: &ModelArgs,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
    json: bool,
) -> Result<bool> {
    match c.device.as_str() {
        "cpu" => {
            if c.synthetic.is_some() || c.check_kernels || c.compare_cpu.is_some() {
                bail!("--synthetic, --check-kernels and --compare-cpu need --device cuda");
            }
            return Ok(false);
        }
        "cuda" => {}
        d => bail!("--device {d}: expected cpu or cuda"),
    }
    let gpu = cuda::Gpu::new()?;
    let mut failed = 0;
    if c.check_kernels {
        let r = cuda::check::check_all(&gpu)?;
        for l in &r.lines {
            println!("{l}");
        }
        println!(
            "kernel checks: {} passed, {} failed",
            r.lines.len() - r.failed,
            r.failed
        );
        failed += r.failed;
        let bw = cuda::check::copy_bandwidth(&gpu)?;
        println!("device-to-device copy: {bw:.0} GB/s (read + write)");
        for l in cuda::check::time_kernels(&gpu, bw)? {
            println!("{l}");
        }
    }
    if let Some(steps) = c.compare_cpu {
        failed += compare_cpu(
            &gpu,
            model,
            c.reference.as_deref(),
            steps,
            c.dump_logits.as_deref(),
        )?;
    }
    let kv_tokens = model.ctx_size.unwrap_or(4096);
    let opts = cuda::bench::Opts {
        n_prompt,
        n_gen,
        repetitions: reps.max(1),
        max_ctx: kv_tokens,
        batches: c.batch.clone(),
        echo: !json,
    };
    let (free0, total) = gpu.mem_info()?;
    let mem_before = total - free0;
    let result = if let Some(shape) = &c.synthetic {
        let mut cfg = match shape.as_str() {
            "70b" => cuda::llama::Config::llama_70b(),
            s => bail!("--synthetic {s}: only 70b is known"),
        };
        if let Some(l) = c.layers {
            cfg.n_layers = l;
        }
        let group = match c.group_size {
            -1 => None,
            g if g > 0 => Some(g as usize),
            g => bail!("--group-size {g}: expected a positive size or -1"),
        };
        let t = Instant::now();
        let m = cuda::llama::synthetic(&gpu, &cfg, c.bits, group, c.act_order)?;
        let label = format!(
            "synthetic {shape} ({} layers), {}-bit, group {}, act-order {}",
            cfg.n_layers,
            c.bits,
            group.map_or("none".into(), |g| g.to_string()),
            c.act_order
        );
        Some(cuda::bench::run(
            &gpu,
            &m,
            &label,
            t.elapsed().as_secs_f64(),
            mem_before,
            &opts,
        )?)
    } else if c.compare_cpu.is_none() && !c.check_kernels {
        let path = crate::model_path::resolve(model.model.as_deref())?;
        let t = Instant::now();
        let m = cuda::llama::load_hf(&gpu, &path)?;
        let label = path.display().to_string();
        Some(cuda::bench::run(
            &gpu,
            &m,
            &label,
            t.elapsed().as_secs_f64(),
            mem_before,
            &opts,
        )?)
    } else {
        None
    };
    if let Some(r) = result {
        if json {
            println!("{}", r.json);
        }
    }
    if failed > 0 {
        bail!("{failed} GPU check(s) failed");
    }
    Ok(true)
}

/// Greedy decoding of a fixed prompt on both backends; returns the number of failed checks.
fn compare_cpu(
    gpu: &cuda::Gpu,
    args: &ModelArgs,
    reference: Option<&std::path::Path>,
    steps: usize,
    dump: Option<&std::path::Path>,
) -> Result<usize> {
    let path = crate::model_path::resolve(args.model.as_deref())?;
    let loaded = match reference {
        Some(r) => model::load::load(r)
            .with_context(|| format!("loading the reference model {}", r.display()))?,
        None => args.load()?,
    };
    let pool = args.pool()?;
    let cpu = &loaded.model;
    let prompt = loaded
        .tokenizer
        .encode("The main causes of high blood pressure in adults are", true)
        .context("tokenizing the comparison prompt")?;
    let vocab = cpu.config.n_vocab;
    // CPU: greedy, keeping each step's logits.
    let argmax = |l: &[f32]| {
        l.iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > l[b] { i } else { b })
    };
    let mut cache = cpu.new_cache(prompt.len() + steps + 1);
    let seq = cache.add_sequence();
    let batch: Vec<model::BatchToken> = prompt
        .iter()
        .enumerate()
        .map(|(pos, &token)| model::BatchToken {
            token,
            seq,
            pos,
            logits: pos + 1 == prompt.len(),
        })
        .collect();
    let mut logits = cpu.forward(&batch, &mut cache, &pool)?;
    let mut cpu_tokens = Vec::new();
    let mut cpu_logits = Vec::new();
    for s in 0..steps {
        let t = argmax(&logits) as u32;
        cpu_tokens.push(t);
        cpu_logits.push(logits.clone());
        if s + 1 < steps {
            let b = [model::BatchToken {
                token: t,
                seq,
                pos: prompt.len() + s,
                logits: true,
            }];
            logits = cpu.forward(&b, &mut cache, &pool)?;
        }
    }
    // GPU: prefill through cuBLAS, then one eager decode step per token.
    let m = cuda::llama::load_hf(gpu, &path)?;
    let runner = cuda::llama::Runner::new(gpu, &m);
    let st = cuda::llama::State::new(gpu, &m, 1, prompt.len(), prompt.len() + steps + 8)?;
    runner.prefill(&st, &prompt, 0)?;
    let mut gpu_tokens = Vec::new();
    let mut gpu_logits = Vec::new();
    let mut max_diff = 0f32;
    let mut max_rel = 0f64;
    for s in 0..steps {
        let l: Vec<f32> = gpu.read(&st.logits, 0, vocab)?;
        let t: Vec<i32> = gpu.read(&st.dec_tok, 0, 1)?;
        gpu_tokens.push(t[0] as u32);
        let c = &cpu_logits[s.min(cpu_logits.len() - 1)];
        let d = l
            .iter()
            .zip(c)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let num: f64 = l.iter().zip(c).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = c.iter().map(|&b| (b as f64).powi(2)).sum();
        max_diff = max_diff.max(d);
        max_rel = max_rel.max((num / den).sqrt());
        if dump.is_some() {
            gpu_logits.push(l);
        }
        // Feed the CPU's token so both see the same sequence even after a divergence.
        if s + 1 < steps {
            gpu.write(&st.dec_tok, 0, &[cpu_tokens[s] as i32])?;
            runner.decode_step(&st)?;
        }
    }
    if let Some(dir) = dump {
        dump_logits(
            dir,
            &prompt,
            &cpu_tokens,
            &gpu_tokens,
            &cpu_logits,
            &gpu_logits,
        )?;
    }
    let same = gpu_tokens
        .iter()
        .zip(&cpu_tokens)
        .take_while(|(a, b)| a == b)
        .count();
    println!(
        "compare {} on GPU vs CPU{}, prompt {} tokens, {steps} greedy steps:",
        path.display(),
        reference.map_or(String::new(), |r| format!(" running {}", r.display())),
        prompt.len()
    );
    println!("  tokens identical for {same}/{steps} steps; max |logit diff| {max_diff:.4}; max relative L2 {max_rel:.2e}");
    println!("  cpu: {:?}", &cpu_tokens[..steps.min(16)]);
    println!("  gpu: {:?}", &gpu_tokens[..steps.min(16)]);
    // fp16 activations into every matmul (the CPU keeps f32): ~1e-3 relative on the logits.
    let ok = same == steps && max_rel < 1e-2;
    println!(
        "{} GPU vs CPU backend (bound: all tokens equal, relative L2 < 1e-2)",
        if ok { "PASS" } else { "FAIL" }
    );
    Ok(usize::from(!ok))
}

/// The comparison's inputs and outputs for an outside check (tools/torch_reference.py):
/// meta.json (prompt ids, each side's greedy tokens, vocab, steps) and each side's logits,
/// [steps][vocab] little-endian f32.
fn dump_logits(
    dir: &std::path::Path,
    prompt: &[u32],
    cpu_tokens: &[u32],
    gpu_tokens: &[u32],
    cpu_logits: &[Vec<f32>],
    gpu_logits: &[Vec<f32>],
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let meta = serde_json::json!({
        "prompt": prompt,
        "cpu_tokens": cpu_tokens,
        "gpu_tokens": gpu_tokens,
        "steps": cpu_logits.len(),
        "vocab": cpu_logits.first().map_or(0, Vec::len),
    });
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    write("meta.json", meta.to_string().as_bytes())?;
    for (name, rows) in [("cpu.f32", cpu_logits), ("gpu.f32", gpu_logits)] {
        let bytes: Vec<u8> = rows
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        write(name, &bytes)?;
    }
    Ok(())
}
