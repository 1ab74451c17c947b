//! The output checkpoint: AutoGPTQ layout (spec: ../shared/specs/gptq.md, "Files in a
//! checkpoint directory"), written shard by shard as layers finish, so that at most one shard
//! is held in memory.

use anyhow::{bail, Context, Result};
use formats::gptq::GptqConfig;
use formats::safetensors::{write_safetensors, Dtype, INDEX_FILE, SINGLE_FILE};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files copied unchanged from the source model when present.
pub const COPIED_FILES: [&str; 8] = [
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

struct Pending {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

pub struct Writer {
    dir: PathBuf,
    max_shard: u64,
    metadata: Vec<(String, String)>,
    pending: Vec<Pending>,
    pending_bytes: u64,
    /// Shards written so far: temporary file and the tensors it holds.
    shards: Vec<(PathBuf, Vec<String>)>,
    total: u64,
    /// config.json keys that differ from the source model's.
    config_changes: Vec<(String, serde_json::Value)>,
}

impl Writer {
    /// Creates `dir` (it must not hold a model already).
    pub fn new(dir: &Path, max_shard: u64, metadata: Vec<(String, String)>) -> Result<Writer> {
        if dir.join("config.json").exists() {
            bail!(
                "{} already holds a model (config.json); choose another --out",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Writer {
            dir: dir.to_owned(),
            max_shard: max_shard.max(1),
            metadata,
            pending: Vec::new(),
            pending_bytes: 0,
            shards: Vec::new(),
            total: 0,
            config_changes: Vec::new(),
        })
    }

    pub fn add(
        &mut self,
        name: String,
        dtype: Dtype,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let len = bytes.len() as u64;
        if !self.pending.is_empty() && self.pending_bytes + len > self.max_shard {
            self.flush()?;
        }
        self.pending_bytes += len;
        self.total += len;
        self.pending.push(Pending {
            name,
            dtype,
            shape,
            bytes,
        });
        Ok(())
    }

    /// Adds an f32 tensor stored as f16 (what AutoGPTQ keeps unquantized).
    pub fn add_f16(&mut self, name: String, shape: Vec<usize>, v: &[f32]) -> Result<()> {
        let bytes = v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        self.add(name, Dtype::F16, shape, bytes)
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self
            .dir
            .join(format!("shard-{}.tmp.safetensors", self.shards.len()));
        let meta: Vec<(&str, &str)> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let tensors: Vec<_> = self
            .pending
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.dtype,
                    p.shape.as_slice(),
                    p.bytes.as_slice(),
                )
            })
            .collect();
        write_safetensors(&path, &tensors, &meta)
            .with_context(|| format!("writing {}", path.display()))?;
        let names = self.pending.drain(..).map(|p| p.name).collect();
        self.shards.push((path, names));
        self.pending_bytes = 0;
        Ok(())
    }

    /// Sets `key` in the written config.json (the rest comes from the source model's).
    pub fn set_config(&mut self, key: &str, value: serde_json::Value) {
        self.config_changes.push((key.to_owned(), value));
    }

    /// Writes the last shard, names the shards (`model.safetensors`, or
    /// `model-0000i-of-0000n.safetensors` with an index), `config.json` with
    /// `quantization_config`, `quantize_config.json`, and copies the tokenizer and generation
    /// files from `src`. Returns the weight files written.
    pub fn finish(mut self, src: &Path, gptq: &GptqConfig) -> Result<Vec<PathBuf>> {
        self.flush()?;
        let n = self.shards.len();
        let mut files = Vec::new();
        let mut weight_map = BTreeMap::new();
        for (i, (tmp, names)) in self.shards.iter().enumerate() {
            let name = if n == 1 {
                SINGLE_FILE.to_owned()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", i + 1)
            };
            let dst = self.dir.join(&name);
            std::fs::rename(tmp, &dst).with_context(|| format!("renaming to {}", dst.display()))?;
            for t in names {
                weight_map.insert(t.clone(), name.clone());
            }
            files.push(dst);
        }
        if n > 1 {
            let index = serde_json::json!({
                "metadata": {"total_size": self.total},
                "weight_map": weight_map,
            });
            write_json(&self.dir.join(INDEX_FILE), &index)?;
        }
        let cfg_path = src.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?;
        let mut cfg: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", cfg_path.display()))?;
        let q = gptq.to_json();
        let obj = cfg
            .as_object_mut()
            .with_context(|| format!("{}: not a JSON object", cfg_path.display()))?;
        obj.insert("quantization_config".into(), q.clone());
        for (k, v) in std::mem::take(&mut self.config_changes) {
            obj.insert(k, v);
        }
        obj.insert("torch_dtype".into(), "float16".into());
        obj.remove("dtype");
        write_json(&self.dir.join("config.json"), &cfg)?;
        write_json(&self.dir.join(formats::gptq::QUANTIZE_CONFIG_FILE), &q)?;
        for f in COPIED_FILES {
            let from = src.join(f);
            if from.is_file() {
                std::fs::copy(&from, self.dir.join(f))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
        }
        Ok(files)
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
