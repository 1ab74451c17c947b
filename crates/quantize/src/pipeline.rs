//! The whole-model driver: calibration windows through the layers one at a time, each layer's
//! projections quantized in AutoGPTQ's true-sequential subsets, the next layer calibrated on
//! the outputs of the quantized one, and the checkpoint written as layers finish.

use crate::data;
use crate::gptq::{self, GptqStats, QuantParams, QuantizedLinear};
use crate::layer::{
    self, CrossCovariance, Dims, Hessian, LayerWeights, DOWN, GATE, K, MODULES, O, Q, UP, V,
};
use crate::rotate::Rotation;
use crate::store::Store;
use crate::writer::Writer;
use anyhow::{bail, Context, Result};
use formats::gptq::{CheckpointFormat, GptqConfig, GptqLinear};
use formats::{LlamaConfig, ModelWeights};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Gptq,
    /// Round-to-nearest on the same grid (no calibration): the baseline GPTQ must beat.
    Rtn,
}

/// Where the calibration tokens come from.
#[derive(Clone, Debug)]
pub enum Calibration {
    /// A text/JSONL file or a directory of them, tokenized with the model's tokenizer.
    Dataset {
        path: PathBuf,
        samples: usize,
        seq_len: usize,
        seed: u64,
    },
    /// Token windows given directly (all the same length).
    Tokens(Vec<Vec<u32>>),
}

#[derive(Clone, Debug)]
pub struct Options {
    pub model: PathBuf,
    pub out: PathBuf,
    pub params: QuantParams,
    pub true_sequential: bool,
    pub format: CheckpointFormat,
    pub method: Method,
    pub calibration: Option<Calibration>,
    /// Bytes of calibration activations kept in memory before they spill to disk.
    pub max_memory: u64,
    /// Largest safetensors shard, in bytes.
    pub max_shard: u64,
    pub progress: bool,
    /// Without a progress bar, print one line per finished layer instead.
    pub progress_lines: bool,
    /// Keep every module's Hessian and source weight in the report (tests).
    pub keep_hessians: bool,
    /// Seed of the orthogonal rotations folded into the weights first ([`crate::rotate`]);
    /// `None` quantizes the weights as they are.
    pub rotate: Option<u64>,
    /// Fit each projection to the full-precision model's outputs (GPTAQ's asymmetric
    /// calibration, [`gptq::fp_target`]) rather than to its own outputs on the quantized
    /// model's inputs; needs `true_sequential`.
    pub fp_targets: bool,
}

#[derive(Clone, Debug)]
pub struct ModuleReport {
    pub layer: usize,
    pub module: &'static str,
    pub stats: GptqStats,
    /// `tr(dW H dW^T)/2` on the calibration inputs (undamped H), for GPTQ and for
    /// round-to-nearest on the same grid.
    pub err: f64,
    pub rtn_err: f64,
    pub seconds: f64,
    /// With `keep_hessians`: the Hessian and the weight GPTQ fitted (the source weight, or its
    /// full-precision target with `fp_targets`).
    pub hessian: Option<Vec<f64>>,
    pub weight: Option<Vec<f32>>,
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub modules: Vec<ModuleReport>,
    pub layer_seconds: Vec<f64>,
    pub seconds: f64,
    pub tokens: usize,
    pub spilled: bool,
    pub files: Vec<PathBuf>,
}

fn check_options(o: &Options, cfg: &LlamaConfig) -> Result<()> {
    if cfg.quantization_config.is_some() {
        bail!(
            "{} is already quantized (config.json has quantization_config); quantize an fp16/bf16/f32 model",
            o.model.display()
        );
    }
    formats::gptq::check_bits(o.params.bits).map_err(anyhow::Error::msg)?;
    if !(0.0..=1.0).contains(&o.params.damp) {
        bail!("damping {} is outside [0, 1]", o.params.damp);
    }
    if o.format == CheckpointFormat::V1 && !o.params.sym {
        bail!(
            "--asym needs --format gptq_v2: v1 (gptq) checkpoints cannot store a zero point of 0"
        );
    }
    if let Some(g) = o.params.group_size {
        // What the GPTQ loaders (ours, ExLlama, Marlin, transformers) accept.
        if g == 0 || g % 32 != 0 {
            bail!("group size {g} is not supported: use -1 or a positive multiple of 32");
        }
    }
    if o.fp_targets && !(o.true_sequential && o.method == Method::Gptq) {
        bail!("fitting to the full-precision outputs needs GPTQ with true-sequential");
    }
    if cfg.attention_bias || cfg.mlp_bias {
        bail!("models with attention or MLP biases are not supported by the quantizer");
    }
    if cfg.hidden_act != "silu" {
        bail!(
            "hidden_act '{}' is not supported (silu only)",
            cfg.hidden_act
        );
    }
    Ok(())
}

fn calibration_tokens(o: &Options) -> Result<Vec<Vec<u32>>> {
    match &o.calibration {
        None => bail!("GPTQ needs calibration data (--dataset)"),
        Some(Calibration::Tokens(t)) => {
            let len = t.first().map_or(0, |w| w.len());
            if len == 0 || t.iter().any(|w| w.len() != len) {
                bail!("calibration windows must be non-empty and of one length");
            }
            Ok(t.clone())
        }
        Some(Calibration::Dataset {
            path,
            samples,
            seq_len,
            seed,
        }) => {
            let tok = tokenizer::Tokenizer::from_hf_dir(&o.model)
                .with_context(|| format!("loading the tokenizer of {}", o.model.display()))?;
            let docs = data::read_documents(path)?;
            let ids = docs
                .iter()
                .map(|d| tok.encode(d, false))
                .collect::<Result<Vec<_>, _>>()
                .context("tokenizing the dataset")?;
            let all = data::join_tokens(ids, tok.eos_ids().first().copied());
            if all.len() < samples * seq_len {
                tracing::warn!(
                    "the dataset has {} tokens, fewer than {samples} x {seq_len}: windows overlap",
                    all.len()
                );
            }
            data::windows(&all, *samples, *seq_len, *seed)
        }
    }
}

fn gptq_config(o: &Options) -> GptqConfig {
    GptqConfig {
        bits: o.params.bits,
        group_size: o.params.group_size,
        desc_act: o.params.act_order,
        static_groups: o.params.static_groups,
        sym: o.params.sym,
        format: o.format,
        damp_percent: Some(o.params.damp),
        true_sequential: Some(o.true_sequential),
        model_file_base_name: Some("model".into()),
        model_name_or_path: Some(o.model.to_string_lossy().into_owned()),
        source: o.out.join(formats::gptq::QUANTIZE_CONFIG_FILE),
    }
}

/// Packs one quantized projection into the writer.
fn write_linear(w: &mut Writer, o: &Options, name: &str, q: &QuantizedLinear) -> Result<()> {
    let zeros: Vec<i32> = q.zeros.iter().map(|&z| z as i32).collect();
    let lin = GptqLinear::from_codes(
        o.params.bits,
        q.k,
        q.n,
        o.format,
        &q.codes,
        &zeros,
        q.scales.clone(),
        q.g_idx.clone(),
    )
    .map_err(|e| anyhow::anyhow!("packing {name}: {e}"))?;
    for (suffix, dtype, shape, bytes) in lin.tensors() {
        w.add(format!("{name}.{suffix}"), dtype, shape, bytes)?;
    }
    Ok(())
}

/// The calibration state of one layer while its subsets are quantized.
struct LayerRun<'a> {
    o: &'a Options,
    d: &'a Dims,
    layer: usize,
    lw: LayerWeights,
    reports: Vec<ModuleReport>,
    quantized: Vec<Option<QuantizedLinear>>,
}

impl LayerRun<'_> {
    /// Quantizes projections `ms` (sharing the inputs whose Hessian is `h`), replacing their
    /// weights by the dequantized result.
    /// With `c` (the cross-covariance of the full-precision and quantized inputs), each is
    /// fitted to the full-precision model's outputs.
    fn quantize(&mut self, ms: &[usize], h: Option<&[f64]>, c: Option<&[f64]>) -> Result<()> {
        for &m in ms {
            let t = Instant::now();
            let (n, k) = self.d.shape(m);
            let w = &self.lw.lin[m];
            let name = format!("model.layers.{}.{}", self.layer, MODULES[m]);
            let r = gptq::rtn(w, n, k, &self.o.params).with_context(|| name.clone())?;
            // What GPTQ fits: the weight, or with `c` the full-precision target. Both errors
            // of the loss table are measured against it.
            let target = match (h, c) {
                (Some(h), Some(c)) => gptq::fp_target(w, n, k, h, c, self.o.params.damp)
                    .with_context(|| name.clone())?,
                _ => w.clone(),
            };
            let (q, stats) = match h {
                Some(h) => {
                    gptq::gptq(&target, n, k, h, &self.o.params).with_context(|| name.clone())?
                }
                None => (r.clone(), GptqStats::default()),
            };
            if stats.retries > 0 {
                tracing::warn!(
                    "{name}: Cholesky failed {} time(s); damping raised to {:.3}",
                    stats.retries,
                    stats.damp_used
                );
            }
            let (err, rtn_err) = match h {
                Some(h) => (
                    gptq::quadratic_error_estimate(&target, &q.dequant, n, k, h),
                    gptq::quadratic_error_estimate(&target, &r.dequant, n, k, h),
                ),
                None => (0.0, 0.0),
            };
            let keep = self.o.keep_hessians;
            self.reports.push(ModuleReport {
                layer: self.layer,
                module: MODULES[m],
                stats,
                err,
                rtn_err,
                seconds: t.elapsed().as_secs_f64(),
                hessian: h.filter(|_| keep).map(|h| h.to_vec()),
                weight: keep.then_some(target),
            });
            self.lw.lin[m] = q.dequant.clone();
            self.quantized[m] = Some(q);
        }
        Ok(())
    }
}

/// Quantizes the model in `o.model` into `o.out`.
pub fn quantize_model(o: &Options) -> Result<Summary> {
    let start = Instant::now();
    let cfg = LlamaConfig::from_file(&o.model.join("config.json"))?;
    cfg.validate()?;
    check_options(o, &cfg)?;
    if cfg.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
        tracing::warn!("rope_scaling is ignored by the calibration forward (plain RoPE)");
    }
    let weights = ModelWeights::open_dir(&o.model)?;
    let d = Dims::from_config(&cfg);
    let windows = match o.method {
        Method::Gptq => calibration_tokens(o)?,
        Method::Rtn => Vec::new(),
    };
    let seq = windows.first().map_or(1, |w| w.len());
    let per_batch = (4096 / seq).max(1);
    let batches: Vec<&[Vec<u32>]> = windows.chunks(per_batch).collect();
    let tokens = windows.len() * seq;
    let mut widths =
        d.hidden + d.hidden.max(d.inter) + if o.true_sequential { 0 } else { d.hidden };
    if o.fp_targets {
        widths += d.hidden + d.hidden.max(d.inter);
    }
    let spilled = (tokens * widths * 4) as u64 > o.max_memory;
    let spill_dir = o.out.join(".calibration-spill");
    let mk = |tag: &str| -> Result<Store> {
        if spilled {
            std::fs::create_dir_all(&spill_dir)
                .with_context(|| format!("creating {}", spill_dir.display()))?;
            Ok(Store::disk(spill_dir.clone(), tag, batches.len()))
        } else {
            Ok(Store::memory(batches.len()))
        }
    };
    let gcfg = gptq_config(o);
    let meta = vec![
        ("format".to_owned(), "pt".to_owned()),
        (
            "quantizer".to_owned(),
            format!("meditron {}", env!("CARGO_PKG_VERSION")),
        ),
        ("gptq_bits".to_owned(), o.params.bits.to_string()),
        (
            "gptq_group_size".to_owned(),
            o.params.group_size.map_or(-1, |g| g as i64).to_string(),
        ),
        ("gptq_desc_act".to_owned(), o.params.act_order.to_string()),
        (
            "gptq_static_groups".to_owned(),
            o.params.static_groups.to_string(),
        ),
        ("gptq_sym".to_owned(), o.params.sym.to_string()),
        ("gptq_damp_percent".to_owned(), o.params.damp.to_string()),
        ("gptq_mse".to_owned(), o.params.mse.to_string()),
        (
            "gptq_true_sequential".to_owned(),
            o.true_sequential.to_string(),
        ),
        (
            "gptq_checkpoint_format".to_owned(),
            o.format.name().to_owned(),
        ),
        (
            "gptq_method".to_owned(),
            match o.method {
                Method::Gptq => "gptq",
                Method::Rtn => "rtn",
            }
            .to_owned(),
        ),
        (
            "gptq_rotation".to_owned(),
            o.rotate.map_or("none".to_owned(), |seed| {
                format!("random orthogonal, seed {seed}")
            }),
        ),
        ("gptq_fp_targets".to_owned(), o.fp_targets.to_string()),
        (
            "gptq_calibration_tokens".to_owned(),
            format!("{} x {seq}", windows.len()),
        ),
    ];
    let rot = o.rotate.map(|seed| Rotation::new(d.hidden, seed));
    let mut writer = Writer::new(&o.out, o.max_shard, meta)?;
    let mut x = mk("x")?;
    let mut a = mk("a")?;
    let mut x0 = mk("x0")?;
    // The full-precision model's residual stream and stage outputs, for `fp_targets`.
    let mut fp = if o.fp_targets {
        Some((mk("xf")?, mk("af")?))
    } else {
        None
    };

    // Embeddings of the calibration tokens: the first layer's inputs.
    let embed_name = "model.embed_tokens.weight";
    let embed = weights
        .tensor(embed_name)
        .with_context(|| format!("tensor '{embed_name}' is missing from the source model"))?;
    if embed.shape != [cfg.vocab_size, d.hidden] {
        bail!(
            "tensor '{embed_name}' has shape {:?}, expected [{}, {}]",
            embed.shape,
            cfg.vocab_size,
            d.hidden
        );
    }
    for (b, ws) in batches.iter().enumerate() {
        let mut buf = Vec::with_capacity(ws.len() * seq * d.hidden);
        for &t in ws.iter().flatten() {
            if t as usize >= cfg.vocab_size {
                bail!(
                    "calibration token id {t} is outside the vocabulary ({})",
                    cfg.vocab_size
                );
            }
            buf.extend(layer::row_f32(&embed, t as usize)?);
        }
        if let Some(r) = &rot {
            buf = r.rotate_rows(&buf);
        }
        if let Some((xf, _)) = &mut fp {
            xf.put(b, buf.clone())?;
        }
        x.put(b, buf)?;
    }

    let n_layers = cfg.num_hidden_layers;
    let bar = progress_bar(o.progress, n_layers);
    let mut summary = Summary {
        tokens,
        spilled,
        ..Default::default()
    };
    for l in 0..n_layers {
        let t0 = Instant::now();
        bar.set_message(format!("layer {l}: reading weights"));
        let mut lw = LayerWeights::read(&weights, l, &d)?;
        if let Some(r) = &rot {
            r.apply(&mut lw, &d, l);
        }
        let mut run = LayerRun {
            o,
            d: &d,
            layer: l,
            lw,
            reports: Vec::new(),
            quantized: vec![None; 7],
        };
        if o.method == Method::Rtn {
            for m in [K, V, Q, O, UP, GATE, DOWN] {
                run.quantize(&[m], None, None)?;
            }
        } else {
            match &mut fp {
                Some((xf, af)) => {
                    let orig = run.lw.clone();
                    calibrate_layer_fp(&mut run, &orig, &mut x, &mut a, xf, af, seq, &bar)?;
                }
                None => calibrate_layer(&mut run, &mut x, &mut a, &mut x0, seq, &bar)?,
            }
        }
        let p = format!("model.layers.{l}");
        for (slot, name) in run.quantized.iter_mut().zip(MODULES) {
            let q = slot.take().expect("every module quantized");
            write_linear(&mut writer, o, &format!("{p}.{name}"), &q)?;
        }
        writer.add_f16(
            format!("{p}.input_layernorm.weight"),
            vec![d.hidden],
            &run.lw.attn_norm,
        )?;
        writer.add_f16(
            format!("{p}.post_attention_layernorm.weight"),
            vec![d.hidden],
            &run.lw.mlp_norm,
        )?;
        let secs = t0.elapsed().as_secs_f64();
        let line = run
            .reports
            .iter()
            .map(|r| {
                let short = r.module.rsplit('.').next().unwrap_or(r.module);
                format!("{short} {:.3e}", r.stats.loss)
            })
            .collect::<Vec<_>>()
            .join("  ");
        let qsecs: f64 = run.reports.iter().map(|r| r.seconds).sum();
        let line = format!("layer {l:>3} {secs:6.1}s (solve {qsecs:4.1}s)  {line}");
        if bar.is_hidden() {
            if o.progress_lines {
                eprintln!("{line}");
            }
        } else {
            bar.println(line);
        }
        bar.inc(1);
        summary.layer_seconds.push(secs);
        summary.modules.extend(run.reports);
    }
    bar.finish_and_clear();

    if let Some(r) = &rot {
        write_rotated_ends(&mut writer, &weights, &cfg, r)?;
    }
    for name in [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    .into_iter()
    .filter(|_| rot.is_none())
    {
        if let Some(t) = weights.tensor(name) {
            let v = t.to_f32_vec()?;
            writer.add_f16(name.to_owned(), t.shape.to_vec(), &v)?;
        } else if name != "lm_head.weight" || !cfg.tie_word_embeddings {
            bail!("tensor '{name}' is missing from the source model");
        }
    }
    summary.files = writer.finish(&o.model, &gcfg)?;
    if spilled {
        let _ = std::fs::remove_dir_all(&spill_dir);
    }
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// The rotated model's embedding `E Q`, its head `H diag(g) Q` (untied: the embedding no
/// longer serves as the head) and a final norm of ones.
fn write_rotated_ends(
    writer: &mut Writer,
    weights: &ModelWeights,
    cfg: &LlamaConfig,
    r: &Rotation,
) -> Result<()> {
    let h = cfg.hidden_size;
    let embed = layer::tensor_f32(weights, "model.embed_tokens.weight", &[cfg.vocab_size, h])?;
    let g = layer::tensor_f32(weights, "model.norm.weight", &[h])?;
    let head = if weights.contains("lm_head.weight") {
        layer::tensor_f32(weights, "lm_head.weight", &[cfg.vocab_size, h])?
    } else {
        embed.clone()
    };
    let shape = vec![cfg.vocab_size, h];
    writer.add_f16(
        "model.embed_tokens.weight".into(),
        shape.clone(),
        &r.rotate_rows(&embed),
    )?;
    writer.add_f16("lm_head.weight".into(), shape, &r.reader(&head, &g))?;
    writer.add_f16("model.norm.weight".into(), vec![h], &vec![1.0; h])?;
    writer.set_config("tie_word_embeddings", serde_json::Value::Bool(false));
    Ok(())
}

/// Runs one layer's calibration: Hessians of each subset's inputs, produced by the already
/// quantized subsets (true-sequential) or all by the original layer, then the layer's outputs
/// with its quantized weights, written back to `x` for the next layer.
fn calibrate_layer(
    run: &mut LayerRun<'_>,
    x: &mut Store,
    a: &mut Store,
    x0: &mut Store,
    seq: usize,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let d = run.d;
    let nb = x.len();
    let l = run.layer;
    let msg = |s: &str| bar.set_message(format!("layer {l}: {s}"));

    if !run.o.true_sequential {
        for b in 0..nb {
            x0.put(b, x.get(b)?)?;
        }
    }
    // Stage 1: inputs of q/k/v.
    msg("q/k/v inputs");
    let mut h = Hessian::new(d.hidden);
    for b in 0..nb {
        let xb = x.get(b)?;
        h.add(&layer::norm(&xb, &run.lw.attn_norm, d.eps));
    }
    let h_qkv = h.finish();
    let seqtl = run.o.true_sequential;
    if seqtl {
        msg("quantizing q/k/v");
        run.quantize(&[K, V, Q], Some(&h_qkv), None)?;
    }
    // Stage 2: attention outputs (inputs of o_proj).
    msg("o inputs");
    let mut h = Hessian::new(d.heads * d.head_dim);
    for b in 0..nb {
        let xb = x.get(b)?;
        let att = layer::attention(&layer::norm(&xb, &run.lw.attn_norm, d.eps), &run.lw, d, seq);
        h.add(&att);
        a.put(b, att)?;
    }
    let h_o = h.finish();
    if seqtl {
        msg("quantizing o");
        run.quantize(&[O], Some(&h_o), None)?;
    }
    // Stage 3: residual, then the inputs of gate/up.
    msg("gate/up inputs");
    let mut h = Hessian::new(d.hidden);
    for b in 0..nb {
        let mut xb = x.take(b)?;
        let att = a.take(b)?;
        layer::residual(&mut xb, &att, &run.lw, d, O);
        h.add(&layer::norm(&xb, &run.lw.mlp_norm, d.eps));
        x.put(b, xb)?;
    }
    let h_mlp = h.finish();
    if seqtl {
        msg("quantizing gate/up");
        run.quantize(&[UP, GATE], Some(&h_mlp), None)?;
    }
    // Stage 4: the inputs of down_proj.
    msg("down inputs");
    let mut h = Hessian::new(d.inter);
    for b in 0..nb {
        let xb = x.get(b)?;
        let act = layer::mlp_act(&layer::norm(&xb, &run.lw.mlp_norm, d.eps), &run.lw, d);
        h.add(&act);
        a.put(b, act)?;
    }
    let h_down = h.finish();
    msg("quantizing down");
    if seqtl {
        run.quantize(&[DOWN], Some(&h_down), None)?;
    } else {
        run.quantize(&[K, V, Q], Some(&h_qkv), None)?;
        run.quantize(&[O], Some(&h_o), None)?;
        run.quantize(&[UP, GATE], Some(&h_mlp), None)?;
        run.quantize(&[DOWN], Some(&h_down), None)?;
        // The layer's outputs come from its quantized weights, from the original inputs.
        for b in 0..nb {
            let mut xb = x0.take(b)?;
            let att =
                layer::attention(&layer::norm(&xb, &run.lw.attn_norm, d.eps), &run.lw, d, seq);
            layer::residual(&mut xb, &att, &run.lw, d, O);
            let act = layer::mlp_act(&layer::norm(&xb, &run.lw.mlp_norm, d.eps), &run.lw, d);
            layer::residual(&mut xb, &act, &run.lw, d, DOWN);
            x.put(b, xb)?;
        }
        return Ok(());
    }
    // Stage 5: the layer's outputs, the next layer's inputs.
    msg("outputs");
    for b in 0..nb {
        let mut xb = x.take(b)?;
        let act = a.take(b)?;
        layer::residual(&mut xb, &act, &run.lw, d, DOWN);
        x.put(b, xb)?;
    }
    Ok(())
}

/// [`calibrate_layer`]'s true-sequential stages with a second stream, the full-precision
/// model's (`xf` residual, `af` stage outputs, through the layer's unquantized weights
/// `orig`): each subset is fitted to the full-precision outputs (the Hessian from the
/// quantized stream, the cross-covariance from both).
#[allow(clippy::too_many_arguments)]
fn calibrate_layer_fp(
    run: &mut LayerRun<'_>,
    orig: &LayerWeights,
    x: &mut Store,
    a: &mut Store,
    xf: &mut Store,
    af: &mut Store,
    seq: usize,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let d = run.d;
    let nb = x.len();
    let l = run.layer;
    let msg = |s: &str| bar.set_message(format!("layer {l}: {s}"));
    // Stage 1: inputs of q/k/v (the norms are not quantized: the same in both streams).
    msg("q/k/v inputs");
    let mut h = Hessian::new(d.hidden);
    let mut c = CrossCovariance::new(d.hidden);
    for b in 0..nb {
        let xn = layer::norm(&x.get(b)?, &run.lw.attn_norm, d.eps);
        h.add(&xn);
        c.add(&layer::norm(&xf.get(b)?, &orig.attn_norm, d.eps), &xn);
    }
    msg("quantizing q/k/v");
    run.quantize(&[K, V, Q], Some(&h.finish()), Some(&c.finish()))?;
    // Stage 2: attention outputs (inputs of o_proj).
    msg("o inputs");
    let mut h = Hessian::new(d.heads * d.head_dim);
    let mut c = CrossCovariance::new(d.heads * d.head_dim);
    for b in 0..nb {
        let att = layer::attention(
            &layer::norm(&x.get(b)?, &run.lw.attn_norm, d.eps),
            &run.lw,
            d,
            seq,
        );
        let att_f = layer::attention(
            &layer::norm(&xf.get(b)?, &orig.attn_norm, d.eps),
            orig,
            d,
            seq,
        );
        h.add(&att);
        c.add(&att_f, &att);
        a.put(b, att)?;
        af.put(b, att_f)?;
    }
    msg("quantizing o");
    run.quantize(&[O], Some(&h.finish()), Some(&c.finish()))?;
    // Stage 3: residual, then the inputs of gate/up.
    msg("gate/up inputs");
    let mut h = Hessian::new(d.hidden);
    let mut c = CrossCovariance::new(d.hidden);
    for b in 0..nb {
        let mut xb = x.take(b)?;
        layer::residual(&mut xb, &a.take(b)?, &run.lw, d, O);
        let mut xfb = xf.take(b)?;
        layer::residual(&mut xfb, &af.take(b)?, orig, d, O);
        let xn = layer::norm(&xb, &run.lw.mlp_norm, d.eps);
        h.add(&xn);
        c.add(&layer::norm(&xfb, &orig.mlp_norm, d.eps), &xn);
        x.put(b, xb)?;
        xf.put(b, xfb)?;
    }
    msg("quantizing gate/up");
    run.quantize(&[UP, GATE], Some(&h.finish()), Some(&c.finish()))?;
    // Stage 4: the inputs of down_proj.
    msg("down inputs");
    let mut h = Hessian::new(d.inter);
    let mut c = CrossCovariance::new(d.inter);
    for b in 0..nb {
        let act = layer::mlp_act(
            &layer::norm(&x.get(b)?, &run.lw.mlp_norm, d.eps),
            &run.lw,
            d,
        );
        let act_f = layer::mlp_act(&layer::norm(&xf.get(b)?, &orig.mlp_norm, d.eps), orig, d);
        h.add(&act);
        c.add(&act_f, &act);
        a.put(b, act)?;
        af.put(b, act_f)?;
    }
    msg("quantizing down");
    run.quantize(&[DOWN], Some(&h.finish()), Some(&c.finish()))?;
    // Stage 5: both streams' layer outputs.
    msg("outputs");
    for b in 0..nb {
        let mut xb = x.take(b)?;
        layer::residual(&mut xb, &a.take(b)?, &run.lw, d, DOWN);
        x.put(b, xb)?;
        let mut xfb = xf.take(b)?;
        layer::residual(&mut xfb, &af.take(b)?, orig, d, DOWN);
        xf.put(b, xfb)?;
    }
    Ok(())
}

fn progress_bar(show: bool, layers: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(layers as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} layers [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(500));
    bar
}

/// The final table: one row per layer, the GPTQ loss of each projection, and the ratio of
/// GPTQ's to round-to-nearest's error on the calibration inputs.
pub fn loss_table(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let short: Vec<&str> = MODULES
        .iter()
        .map(|m| m.rsplit('.').next().unwrap_or(m))
        .collect();
    let _ = write!(out, "{:>5}", "layer");
    for m in &short {
        let _ = write!(out, " {m:>10}");
    }
    let _ = writeln!(out, " {:>9} {:>7}", "gptq/rtn", "secs");
    let layers = s.layer_seconds.len();
    for l in 0..layers {
        let _ = write!(out, "{l:>5}");
        let (mut e, mut r) = (0.0, 0.0);
        for m in MODULES {
            match s.modules.iter().find(|x| x.layer == l && x.module == m) {
                Some(x) => {
                    let _ = write!(out, " {:>10.4e}", x.stats.loss);
                    e += x.err;
                    r += x.rtn_err;
                }
                None => {
                    let _ = write!(out, " {:>10}", "-");
                }
            }
        }
        let ratio = if r > 0.0 { e / r } else { f64::NAN };
        let _ = writeln!(out, " {ratio:>9.3} {:>7.1}", s.layer_seconds[l]);
    }
    out
}

/// Output directory helper for callers: `true` when `dir` already holds a model.
pub fn holds_model(dir: &Path) -> bool {
    dir.join("config.json").exists()
}
