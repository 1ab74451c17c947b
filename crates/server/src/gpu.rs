//! `meditron serve --device cuda`: the engine's model on the GPU. The engine keeps its own block
//! allocator (a `KvCache` without data); the keys and values live on the GPU at the same block
//! indices, so admission, prefix reuse and eviction work as on the CPU. Each step's rows go to
//! `cuda::serve::ServeModel`; rows the engine lets the GPU sample (`forward_sampled`) come back
//! as token ids, the others as logits for sampling on the CPU.

use crate::args::{Limits, ServeArgs};
use anyhow::{bail, Context, Result};
use kernels::cpu::ThreadPool;
use model::{BatchToken, ForwardError, KvCache, Llama, ModelConfig, SampleRow, Sampled, SeqId};
use std::path::Path;
use tokenizer::{ChatTemplate, Tokenizer};

pub struct GpuModel {
    inner: cuda::serve::ServeModel,
    config: ModelConfig,
    kv_tokens: usize,
}

/// What `Server::start` needs from a model loaded on the GPU.
pub struct GpuLoaded {
    pub model: GpuModel,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub name: String,
    pub limits: Limits,
}

pub fn load(path: &Path, args: &ServeArgs) -> Result<GpuLoaded> {
    if !path.is_dir() {
        bail!(
            "--device cuda takes a Hugging Face model directory (GPTQ or fp16 safetensors), not {}; `meditron convert` makes one from a GGUF file",
            path.display()
        );
    }
    let hf = formats::LlamaConfig::from_file(&path.join("config.json"))
        .with_context(|| format!("reading {}/config.json", path.display()))?;
    hf.validate()?;
    let config = ModelConfig::from_hf(&hf, hf.vocab_size);
    let kv_bytes_per_token = config.n_layers * 2 * config.kv_dim() * 2;
    let limits = Limits::resolve(args, config.max_context, kv_bytes_per_token)?;
    let tokenizer = model::load::load_tokenizer(path)
        .with_context(|| format!("loading the tokenizer of {}", path.display()))?;
    let template = match tokenizer.chat_template() {
        Some(s) => ChatTemplate::new(s).context("parsing the model's chat template")?,
        None => ChatTemplate::chatml(),
    };
    let gpu = cuda::Gpu::new()?;
    let t = std::time::Instant::now();
    let weights = cuda::load::load(&gpu, path)
        .with_context(|| format!("loading {} onto the GPU", path.display()))?;
    let mut inner = cuda::serve::ServeModel::new(
        gpu,
        weights,
        limits.max_batch_total_tokens,
        limits.max_total_tokens,
        args.max_concurrent_requests,
    )?;
    inner
        .warm_up()
        .context("capturing the decode step graphs")?;
    let (used, kv) = inner.memory()?;
    tracing::info!(
        "loaded {} on {} in {:.1} s: {:.2} GiB of GPU memory in use ({:.2} GiB KV cache)",
        path.display(),
        inner.gpu.name,
        t.elapsed().as_secs_f64(),
        used as f64 / (1u64 << 30) as f64,
        kv as f64 / (1u64 << 30) as f64
    );
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(GpuLoaded {
        model: GpuModel {
            inner,
            kv_tokens: limits.max_batch_total_tokens,
            config,
        },
        tokenizer,
        template,
        name,
        limits,
    })
}

impl model::Forward for GpuModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn new_cache(&self, max_tokens: usize) -> KvCache {
        // The GPU holds pages for kv_tokens slots; the engine asks for the same number.
        KvCache::pages_only(max_tokens.min(self.kv_tokens))
    }

    fn prefill_batching(&self) -> Option<(usize, usize)> {
        // One forward chunk holds MAX_ROWS (1024) rows: up to 32 decode rows, the rest prompts.
        Some((cuda::serve::MAX_ROWS - cuda::kernels::TC_MAX_ROWS, 16))
    }

    fn device_top_n(&self) -> Option<usize> {
        gpu_sampling().then_some(cuda::sample::TOP_N_MAX)
    }

    fn forward(
        &mut self,
        batch: &[BatchToken],
        cache: &mut KvCache,
        _pool: &ThreadPool,
    ) -> Result<Vec<f32>, ForwardError> {
        let (rows, tables) = self.rows(batch, cache)?;
        self.inner
            .forward(&rows, &tables)
            .map_err(|e| ForwardError::Device(format!("GPU forward pass: {e:#}")))
    }

    fn forward_sampled(
        &mut self,
        batch: &[BatchToken],
        cache: &mut KvCache,
        _pool: &ThreadPool,
        specs: &[Option<SampleRow>],
    ) -> Result<(Vec<f32>, Vec<Sampled>), ForwardError> {
        let (rows, tables) = self.rows(batch, cache)?;
        self.inner
            .forward_sampled(&rows, &tables, specs)
            .map_err(|e| ForwardError::Device(format!("GPU forward pass: {e:#}")))
    }
}

impl GpuModel {
    /// The step's rows with their sequence slots, and each slot's pages.
    fn rows<'c>(
        &self,
        batch: &[BatchToken],
        cache: &'c mut KvCache,
    ) -> Result<(Vec<cuda::serve::Row>, Vec<&'c [u32]>), ForwardError> {
        Llama::check_and_reserve(&self.config, batch, cache)?;
        let cache: &'c KvCache = cache;
        let mut seqs: Vec<SeqId> = Vec::new();
        let rows: Vec<cuda::serve::Row> = batch
            .iter()
            .map(|t| {
                let slot = match seqs.iter().position(|&s| s == t.seq) {
                    Some(i) => i,
                    None => {
                        seqs.push(t.seq);
                        seqs.len() - 1
                    }
                };
                cuda::serve::Row {
                    token: t.token,
                    pos: t.pos,
                    slot,
                    logits: t.logits,
                }
            })
            .collect();
        let tables = seqs
            .iter()
            .map(|&s| cache.blocks(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, tables))
    }
}

/// Whether decode rows are sampled on the GPU: on unless MEDITRON_GPU_SAMPLING=0 (which sends
/// every row's logits to the host, as before, for comparisons).
fn gpu_sampling() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("MEDITRON_GPU_SAMPLING").map_or(true, |v| v != "0"))
}
