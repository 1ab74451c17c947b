//! `meditron quantize`: GPTQ of a Hugging Face Llama model (fp16/bf16/f32 safetensors) into an
//! AutoGPTQ-layout checkpoint (spec: ../shared/specs/gptq.md).

use anyhow::{bail, Context, Result};
use formats::gptq::CheckpointFormat;
use quantize::gptq::QuantParams;
use quantize::{Calibration, Method, Options};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// v1 zeros (AutoGPTQ, TheBloke): symmetric only
    Gptq,
    /// v2 zeros (GPTQModel): holds asymmetric zeros
    #[value(name = "gptq_v2")]
    GptqV2,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMethod {
    Gptq,
    /// Round-to-nearest on the same grid, without calibration (a baseline)
    Rtn,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Source model: a Hugging Face directory (config.json + fp16/bf16/f32 safetensors)
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Directory to write (created; must not hold a model already)
    #[arg(long)]
    pub out: PathBuf,
    /// Bits per weight: 2, 3, 4 or 8
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    /// Inputs per quantization group: -1 (one group per row), 32, 64, 128, ...
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub group_size: i64,
    /// Quantize inputs in order of decreasing Hessian diagonal (desc_act)
    #[arg(long)]
    pub act_order: bool,
    /// Group grids fixed up front in the original input order (with --act-order)
    #[arg(long)]
    pub static_groups: bool,
    /// Symmetric grid, zero point 2^(bits-1) (the default)
    #[arg(long, conflicts_with = "asym")]
    pub sym: bool,
    /// Asymmetric grid (needs --format gptq_v2)
    #[arg(long)]
    pub asym: bool,
    /// Damping: fraction of the mean Hessian diagonal added to the diagonal
    #[arg(long, default_value_t = 0.1)]
    pub damp: f64,
    /// Shrink each group's range to the grid with the least squared rounding error (AutoGPTQ's
    /// `mse`; better perplexity at 4 bits and fewer, quantizing slower)
    #[arg(long)]
    pub mse: bool,
    /// Quantize each layer's projections in AutoGPTQ's subsets, each calibrated on the
    /// outputs of the already quantized ones (`--true-sequential false` to turn off)
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub true_sequential: bool,
    /// Fold random orthogonal rotations into the weights first (QuaRot/SpinQuant's
    /// computational invariance): the same model, easier to quantize. The checkpoint has norm
    /// weights of one and an untied lm_head
    #[arg(long)]
    pub rotate: bool,
    /// Fit each projection to the full-precision model's outputs rather than to its own
    /// outputs on the quantized model's inputs (GPTAQ's asymmetric calibration): undoes the
    /// drift of the earlier quantized layers. Calibration costs about twice as much
    #[arg(long)]
    pub fp_targets: bool,
    /// Calibration text: a text file, a JSONL file (`text` field) or a directory of them
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Calibration windows
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Tokens per calibration window
    #[arg(long, default_value_t = 4096)]
    pub seq_len: usize,
    /// Seed of the window offsets
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint format
    #[arg(long, value_enum, default_value_t = Format::Gptq)]
    pub format: Format,
    /// gptq, or rtn (round-to-nearest baseline, no dataset needed)
    #[arg(long, value_enum, default_value_t = QuantMethod::Gptq)]
    pub method: QuantMethod,
    /// Calibration activations kept in memory before they spill to disk, in GiB
    #[arg(long, default_value_t = 16.0)]
    pub max_memory: f64,
    /// Largest safetensors shard, in GiB (an index is written above one shard)
    #[arg(long, default_value_t = 4.0)]
    pub max_shard_size: f64,
    /// Worker threads (default: all cores)
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
}

fn gib(v: f64, flag: &str) -> Result<u64> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{flag} must be a positive number of GiB, got {v}");
    }
    Ok((v * (1u64 << 30) as f64) as u64)
}

pub fn run(args: Args) -> Result<()> {
    if let Some(t) = args.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("starting the worker threads")?;
    }
    let group_size = match args.group_size {
        -1 => None,
        g if g > 0 => Some(g as usize),
        g => bail!("--group-size must be -1 or positive, got {g}"),
    };
    if !(0.0..=1.0).contains(&args.damp) {
        bail!("--damp must be in [0, 1], got {}", args.damp);
    }
    if args.static_groups && group_size.is_none() {
        bail!("--static-groups needs a --group-size");
    }
    let method = match args.method {
        QuantMethod::Gptq => Method::Gptq,
        QuantMethod::Rtn => Method::Rtn,
    };
    let calibration = match (&args.dataset, method) {
        (Some(path), _) => Some(Calibration::Dataset {
            path: path.clone(),
            samples: args.samples,
            seq_len: args.seq_len,
            seed: args.seed,
        }),
        (None, Method::Gptq) => bail!("GPTQ needs calibration text: pass --dataset FILE|DIR"),
        (None, Method::Rtn) => None,
    };
    let opts = Options {
        model: args.model.clone(),
        out: args.out.clone(),
        params: QuantParams {
            bits: args.bits,
            group_size,
            sym: !args.asym,
            act_order: args.act_order,
            static_groups: args.static_groups,
            damp: args.damp,
            mse: args.mse,
        },
        true_sequential: args.true_sequential,
        format: match args.format {
            Format::Gptq => CheckpointFormat::V1,
            Format::GptqV2 => CheckpointFormat::V2,
        },
        method,
        calibration,
        max_memory: gib(args.max_memory, "--max-memory")?,
        max_shard: gib(args.max_shard_size, "--max-shard-size")?,
        progress: std::io::stderr().is_terminal(),
        progress_lines: true,
        keep_hessians: false,
        rotate: args.rotate.then_some(args.seed),
        fp_targets: args.fp_targets,
    };
    let s = quantize::quantize_model(&opts)?;
    if method == Method::Gptq {
        eprint!("{}", quantize::loss_table(&s));
    }
    let (e, r): (f64, f64) = s
        .modules
        .iter()
        .fold((0.0, 0.0), |(e, r), m| (e + m.err, r + m.rtn_err));
    let per_layer = s.layer_seconds.iter().sum::<f64>() / s.layer_seconds.len().max(1) as f64;
    eprintln!(
        "quantized {} layers in {:.1} s ({per_layer:.2} s/layer, {} calibration tokens{}){}",
        s.layer_seconds.len(),
        s.seconds,
        s.tokens,
        if s.spilled {
            ", activations spilled to disk"
        } else {
            ""
        },
        if r > 0.0 {
            format!("; output error GPTQ/RTN = {:.3}", e / r)
        } else {
            String::new()
        }
    );
    for f in &s.files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}
