//! The Hugging Face `config.json` of a Llama-architecture model (Llama, Mistral-style GQA),
//! read leniently (unknown keys ignored) and validated strictly (errors name the field).

use crate::FormatError;
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};

/// Model types and architectures this program runs: Llama and Mistral share the forward pass
/// (Mistral is Llama with grouped-query attention and an optional sliding window).
const MODEL_TYPES: [&str; 2] = ["llama", "mistral"];
const ARCHITECTURES: [&str; 2] = ["LlamaForCausalLM", "MistralForCausalLM"];

/// The fields of `config.json` the Llama forward pass needs. Field names and defaults are
/// those of transformers' `LlamaConfig`; call [`LlamaConfig::validate`] before using them.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct LlamaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Absent in configs without grouped-query attention: see [`LlamaConfig::kv_heads`].
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Absent in most configs: see [`LlamaConfig::head_dim`].
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Passed through as is (`{"rope_type": "llama3", ...}`, linear, dynamic, ...).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers >= 5 writes `rope_parameters` (`{"rope_theta": ..., "rope_type": ...}`)
    /// instead of `rope_theta` and `rope_scaling`: folded into those two when read.
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// One id or a list of ids in the file; empty when absent.
    #[serde(default, deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
    /// `torch_dtype`, or `dtype` as newer transformers write it.
    #[serde(default)]
    pub torch_dtype: Option<String>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral's sliding attention window; this program attends over the whole context.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// GPTQ and other quantizers' settings, passed through as is.
    #[serde(default)]
    pub quantization_config: Option<serde_json::Value>,

    #[serde(default, rename = "dtype")]
    dtype_alias: Option<String>,
    /// Where the config was read from (for error messages).
    #[serde(skip)]
    path: PathBuf,
}

fn default_hidden_act() -> String {
    "silu".into()
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_rope_theta() -> f64 {
    10000.0
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(id)) => vec![id],
        Some(OneOrMany::Many(ids)) => ids,
    })
}

impl LlamaConfig {
    /// Reads `config.json` (or any path). Does not validate.
    pub fn from_file(path: &Path) -> Result<LlamaConfig, FormatError> {
        let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses config JSON held in memory (errors call it `config.json`). Does not validate.
    pub fn from_json(text: &str) -> Result<LlamaConfig, FormatError> {
        Self::parse(text, Path::new("config.json"))
    }

    fn parse(text: &str, path: &Path) -> Result<LlamaConfig, FormatError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let mut config: LlamaConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let msg = match field.as_str() {
                "." => e.inner().to_string(),
                _ => format!("field '{field}': {}", e.inner()),
            };
            FormatError::Config {
                path: path.to_owned(),
                msg,
            }
        })?;
        config.path = path.to_owned();
        if config.torch_dtype.is_none() {
            config.torch_dtype = config.dtype_alias.take();
        }
        if let Some(rp) = config.rope_parameters.take() {
            let bad = |msg: String| FormatError::Config {
                path: path.to_owned(),
                msg: format!("field 'rope_parameters': {msg}"),
            };
            let obj = rp
                .as_object()
                .ok_or_else(|| bad(format!("expected an object, found {rp}")))?;
            if let Some(t) = obj.get("rope_theta") {
                config.rope_theta = t
                    .as_f64()
                    .ok_or_else(|| bad(format!("rope_theta {t} is not a number")))?;
            }
            // Anything but plain RoPE is a scaling, handled (or refused) as rope_scaling is.
            let kind = obj
                .get("rope_type")
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            if kind != "default" && config.rope_scaling.as_ref().is_none_or(|v| v.is_null()) {
                config.rope_scaling = Some(rp);
            }
        }
        Ok(config)
    }

    /// Number of key/value heads (`num_key_value_heads`, defaulting to
    /// `num_attention_heads` when there is no grouped-query attention).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Dimension of one attention head (`head_dim`, defaulting to
    /// `hidden_size / num_attention_heads`).
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or_else(|| {
            self.hidden_size
                .checked_div(self.num_attention_heads)
                .unwrap_or(0)
        })
    }

    fn field_err(&self, field: &str, msg: String) -> FormatError {
        FormatError::Config {
            path: self.path.clone(),
            msg: format!("field '{field}': {msg}"),
        }
    }

    /// Checks that this is a Llama-family model whose sizes fit together.
    pub fn validate(&self) -> Result<(), FormatError> {
        let known_type = MODEL_TYPES.contains(&self.model_type.as_str());
        let known_arch = self
            .architectures
            .iter()
            .any(|a| ARCHITECTURES.contains(&a.as_str()));
        if !known_type && !known_arch {
            return Err(self.field_err(
                "model_type",
                format!(
                    "'{}' (architectures {:?}) is not a Llama-family model; supported: \
                     model_type {MODEL_TYPES:?} or architectures {ARCHITECTURES:?}",
                    self.model_type, self.architectures
                ),
            ));
        }

        let sizes = [
            ("hidden_size", Some(self.hidden_size)),
            ("intermediate_size", Some(self.intermediate_size)),
            ("num_hidden_layers", Some(self.num_hidden_layers)),
            ("num_attention_heads", Some(self.num_attention_heads)),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            (
                "max_position_embeddings",
                Some(self.max_position_embeddings),
            ),
            ("vocab_size", Some(self.vocab_size)),
        ];
        for (field, value) in sizes {
            if value == Some(0) {
                return Err(self.field_err(field, "must not be 0".into()));
            }
        }

        let heads = self.num_attention_heads;
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(heads) {
            return Err(self.field_err(
                "num_attention_heads",
                format!(
                    "{heads} heads do not divide hidden_size {} (and no head_dim is given)",
                    self.hidden_size
                ),
            ));
        }
        if !heads.is_multiple_of(self.kv_heads()) {
            return Err(self.field_err(
                "num_key_value_heads",
                format!(
                    "{} key/value heads do not divide num_attention_heads {heads}",
                    self.kv_heads()
                ),
            ));
        }
        // RoPE rotates pairs of dimensions.
        if !self.head_dim().is_multiple_of(2) {
            return Err(self.field_err(
                "head_dim",
                format!("head dimension {} must be even for RoPE", self.head_dim()),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(self.field_err(
                "rms_norm_eps",
                format!("{} must be a positive number", self.rms_norm_eps),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(self.field_err(
                "rope_theta",
                format!("{} must be a positive number", self.rope_theta),
            ));
        }
        if self.hidden_act != "silu" {
            return Err(self.field_err(
                "hidden_act",
                format!(
                    "'{}' is not supported (Llama models use 'silu')",
                    self.hidden_act
                ),
            ));
        }
        Ok(())
    }

    /// Things in the config that are accepted but not honoured, for the caller to log.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(window) = self.sliding_window {
            notes.push(format!(
                "sliding_window {window} is ignored: attention covers the whole context, \
                 which gives the same results for sequences up to {window} tokens"
            ));
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA2_70B: &str = r#"{
        "_name_or_path": "epfl-llm/meditron-70b",
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 8192,
        "initializer_range": 0.02,
        "intermediate_size": 28672,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": 64,
        "num_hidden_layers": 80,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": null,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "float16",
        "transformers_version": "4.35.0",
        "use_cache": true,
        "vocab_size": 32017,
        "quantization_config": {
            "bits": 4, "group_size": -1, "damp_percent": 0.1, "desc_act": true,
            "sym": true, "true_sequential": true, "model_file_base_name": "model",
            "quant_method": "gptq"
        }
    }"#;

    const SMOLLM2: &str = r#"{
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 576,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": 1536,
        "is_llama_config": true,
        "max_position_embeddings": 8192,
        "mlp_bias": false,
        "model_type": "llama",
        "num_attention_heads": 9,
        "num_hidden_layers": 30,
        "num_key_value_heads": 3,
        "pad_token_id": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_interleaved": false,
        "rope_scaling": null,
        "rope_theta": 100000,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.42.3",
        "use_cache": true,
        "vocab_size": 49152
    }"#;

    const MISTRAL_7B: &str = r#"{
        "architectures": ["MistralForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mistral",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": false,
        "dtype": "bfloat16",
        "use_cache": true,
        "vocab_size": 32000
    }"#;

    /// `base` with `key` set to the raw JSON `value` (or removed when `value` is None).
    fn with(base: &str, key: &str, value: Option<&str>) -> String {
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        let obj = v.as_object_mut().unwrap();
        match value {
            Some(raw) => obj.insert(key.into(), serde_json::from_str(raw).unwrap()),
            None => obj.remove(key),
        };
        v.to_string()
    }

    fn invalid(text: &str) -> String {
        LlamaConfig::from_json(text)
            .and_then(|c| c.validate())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn llama2_70b() {
        let c = LlamaConfig::from_json(LLAMA2_70B).unwrap();
        c.validate().unwrap();
        assert_eq!(c.hidden_size, 8192);
        assert_eq!(c.intermediate_size, 28672);
        assert_eq!(c.num_hidden_layers, 80);
        assert_eq!(
            (c.num_attention_heads, c.kv_heads(), c.head_dim()),
            (64, 8, 128)
        );
        assert_eq!(c.vocab_size, 32017);
        assert_eq!(c.max_position_embeddings, 4096);
        assert_eq!((c.rope_theta, c.rms_norm_eps), (10000.0, 1e-5));
        assert!(!c.tie_word_embeddings);
        assert_eq!(
            (c.bos_token_id, c.eos_token_id.as_slice()),
            (Some(1), &[2][..])
        );
        assert_eq!(c.torch_dtype.as_deref(), Some("float16"));
        assert_eq!(c.rope_scaling, None);
        let q = c.quantization_config.as_ref().unwrap();
        assert_eq!(
            (q["bits"].as_u64(), q["desc_act"].as_bool()),
            (Some(4), Some(true))
        );
        assert!(c.notes().is_empty());
    }

    #[test]
    fn smollm2_135m() {
        let c = LlamaConfig::from_json(SMOLLM2).unwrap();
        c.validate().unwrap();
        assert_eq!(
            (c.num_hidden_layers, c.hidden_size, c.intermediate_size),
            (30, 576, 1536)
        );
        assert_eq!(
            (c.num_attention_heads, c.kv_heads(), c.head_dim()),
            (9, 3, 64)
        );
        assert_eq!(c.rope_theta, 100000.0);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.vocab_size, 49152);
        assert!(!c.mlp_bias && !c.attention_bias);
    }

    /// transformers 5 writes `rope_parameters` instead of `rope_theta` / `rope_scaling`
    /// (SmolLM2 saved by `save_pretrained` of transformers 5.24).
    #[test]
    fn rope_parameters_of_transformers_5() {
        let v5 = |params: &str| {
            SMOLLM2.replace("\"rope_scaling\": null,", "").replace(
                "\"rope_theta\": 100000,",
                &format!("\"rope_parameters\": {params},"),
            )
        };
        let c = LlamaConfig::from_json(&v5(r#"{"rope_theta": 100000.0, "rope_type": "default"}"#))
            .unwrap();
        c.validate().unwrap();
        assert_eq!(c.rope_theta, 100000.0);
        assert!(c.rope_scaling.is_none());
        let scaled = r#"{"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}"#;
        let c = LlamaConfig::from_json(&v5(scaled)).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.rope_scaling.unwrap()["rope_type"], "llama3");
        let e = LlamaConfig::from_json(&v5(r#"{"rope_theta": "big"}"#)).unwrap_err();
        assert!(e.to_string().contains("rope_parameters"), "{e}");
    }

    #[test]
    fn mistral_7b_with_a_note_for_the_sliding_window() {
        let c = LlamaConfig::from_json(MISTRAL_7B).unwrap();
        c.validate().unwrap();
        assert_eq!(
            (c.num_attention_heads, c.kv_heads(), c.head_dim()),
            (32, 8, 128)
        );
        assert_eq!(c.sliding_window, Some(4096));
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16")); // from "dtype"
        let notes = c.notes();
        assert!(
            notes.len() == 1 && notes[0].contains("sliding_window 4096"),
            "{notes:?}"
        );
    }

    #[test]
    fn defaults_and_lenient_forms() {
        let minimal = r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256,
            "vocab_size": 100, "eos_token_id": [128001, 128008, 128009],
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}"#;
        let c = LlamaConfig::from_json(minimal).unwrap();
        c.validate().unwrap();
        assert_eq!((c.kv_heads(), c.head_dim()), (4, 16));
        assert_eq!((c.rope_theta, c.rms_norm_eps), (10000.0, 1e-6));
        assert!(!c.tie_word_embeddings && !c.attention_bias);
        assert_eq!(c.eos_token_id, [128001, 128008, 128009]);
        assert_eq!(c.rope_scaling.unwrap()["rope_type"], "llama3");
        // An explicit head_dim lets the heads not divide the hidden size.
        let c = LlamaConfig::from_json(&with(minimal, "head_dim", Some("24"))).unwrap();
        let c = LlamaConfig {
            hidden_size: 90,
            ..c
        };
        c.validate().unwrap();
        assert_eq!(c.head_dim(), 24);
        // Architectures alone are enough to recognize the family.
        let no_type = with(SMOLLM2, "model_type", None);
        LlamaConfig::from_json(&no_type)
            .unwrap()
            .validate()
            .unwrap();
        let null_eos = with(SMOLLM2, "eos_token_id", Some("null"));
        assert!(LlamaConfig::from_json(&null_eos)
            .unwrap()
            .eos_token_id
            .is_empty());
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (
                with(SMOLLM2, "num_attention_heads", Some("7")),
                "num_attention_heads",
            ),
            (
                with(LLAMA2_70B, "num_key_value_heads", Some("7")),
                "num_key_value_heads",
            ),
            (
                with(SMOLLM2, "num_hidden_layers", Some("0")),
                "num_hidden_layers",
            ),
            (with(SMOLLM2, "vocab_size", Some("0")), "vocab_size"),
            (
                with(SMOLLM2, "num_key_value_heads", Some("0")),
                "num_key_value_heads",
            ),
            (with(SMOLLM2, "head_dim", Some("63")), "head_dim"),
            (with(SMOLLM2, "rms_norm_eps", Some("-1.0")), "rms_norm_eps"),
            (with(SMOLLM2, "rope_theta", Some("0")), "rope_theta"),
            (with(SMOLLM2, "hidden_act", Some("\"gelu\"")), "hidden_act"),
            (
                with(
                    &with(SMOLLM2, "model_type", Some("\"gpt2\"")),
                    "architectures",
                    Some("[\"GPT2LMHeadModel\"]"),
                ),
                "model_type",
            ),
            // Type errors and missing fields come from serde, which names the field too.
            (with(SMOLLM2, "hidden_size", Some("\"576\"")), "hidden_size"),
            (with(SMOLLM2, "hidden_size", None), "hidden_size"),
            (
                with(SMOLLM2, "eos_token_id", Some("\"</s>\"")),
                "eos_token_id",
            ),
        ];
        for (text, field) in cases {
            let e = invalid(&text);
            assert!(
                e.contains(field) && e.contains("config.json"),
                "{field}: {e}"
            );
        }
        assert!(invalid("not json").contains("config.json"));
    }
}
