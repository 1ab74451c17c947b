//! The GPTQ quantization settings, from `quantize_config.json` and/or the
//! `quantization_config` block of `config.json`, in every spelling the writers use.

use crate::FormatError;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The stand-alone settings file of AutoGPTQ-style checkpoints.
pub const QUANTIZE_CONFIG_FILE: &str = "quantize_config.json";

/// How `qzeros` relates to the real zero points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `"gptq"` (AutoGPTQ's original, TheBloke's files): zero = stored + 1.
    V1,
    /// `"gptq_v2"` (GPTQModel): zero = stored.
    V2,
}

impl CheckpointFormat {
    /// The real zero point of a stored code.
    pub fn zero_from_stored(self, stored: u8) -> i32 {
        match self {
            CheckpointFormat::V1 => stored as i32 + 1,
            CheckpointFormat::V2 => stored as i32,
        }
    }

    /// The code to store for a real zero point of `bits` bits, or None when this format cannot
    /// hold it (v1 cannot store a zero of 0: stored would be -1, which corrupts the word).
    pub fn stored_from_zero(self, zero: i32, bits: u32) -> Option<u8> {
        let stored = match self {
            CheckpointFormat::V1 => zero - 1,
            CheckpointFormat::V2 => zero,
        };
        (0..(1 << bits)).contains(&stored).then_some(stored as u8)
    }

    /// The name written in `checkpoint_format`.
    pub fn name(self) -> &'static str {
        match self {
            CheckpointFormat::V1 => "gptq",
            CheckpointFormat::V2 => "gptq_v2",
        }
    }
}

/// Validated GPTQ settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqConfig {
    pub bits: u32,
    /// None for `group_size: -1` (one group spanning all input columns).
    pub group_size: Option<usize>,
    /// Act-order: columns quantized by decreasing Hessian diagonal; g_idx is not monotonic.
    pub desc_act: bool,
    pub static_groups: bool,
    pub sym: bool,
    pub format: CheckpointFormat,
    pub damp_percent: Option<f64>,
    pub true_sequential: Option<bool>,
    /// The weights' file name without `.safetensors` (TheBloke: `model`; older:
    /// `gptq_model-4bit-128g`).
    pub model_file_base_name: Option<String>,
    pub model_name_or_path: Option<String>,
    /// Where the settings were read from, for error messages.
    pub source: PathBuf,
}

impl GptqConfig {
    /// Groups for `k` input columns: `ceil(k / group_size)`, or 1 without groups.
    pub fn n_groups(&self, k: usize) -> usize {
        match self.group_size {
            Some(gs) => k.div_ceil(gs),
            None => 1,
        }
    }

    /// Reads the settings of the checkpoint in `dir`: `quantize_config.json` and/or
    /// `config.json`'s `quantization_config`. When both exist they must agree on every setting
    /// that changes how weights decode. Ok(None) when neither exists (not a GPTQ checkpoint).
    pub fn from_dir(dir: &Path) -> Result<Option<GptqConfig>, FormatError> {
        let qc_path = dir.join(QUANTIZE_CONFIG_FILE);
        let standalone = if qc_path.is_file() {
            let text =
                std::fs::read_to_string(&qc_path).map_err(|e| FormatError::io(&qc_path, e))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| config_err(&qc_path, format!("not valid JSON: {e}")))?;
            Some(GptqConfig::from_json(&v, &qc_path)?)
        } else {
            None
        };
        let cfg_path = dir.join("config.json");
        let embedded = if cfg_path.is_file() {
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| FormatError::io(&cfg_path, e))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| config_err(&cfg_path, format!("not valid JSON: {e}")))?;
            match v.get("quantization_config") {
                Some(q) if !q.is_null() => {
                    let src = cfg_path.join("quantization_config");
                    Some((GptqConfig::from_json(q, &src)?, q.clone()))
                }
                _ => None,
            }
        } else {
            None
        };
        match (standalone, embedded) {
            (None, None) => Ok(None),
            (Some(s), None) => Ok(Some(s)),
            (None, Some((e, _))) => Ok(Some(e)),
            (Some(s), Some((e, raw))) => {
                let obj = raw.as_object().cloned().unwrap_or_default();
                let given = |keys: &[&str]| keys.iter().any(|k| obj.contains_key(*k));
                let mut diffs = Vec::new();
                if s.bits != e.bits {
                    diffs.push(format!("bits {} vs {}", s.bits, e.bits));
                }
                if s.group_size != e.group_size {
                    diffs.push(format!(
                        "group_size {:?} vs {:?}",
                        s.group_size, e.group_size
                    ));
                }
                if given(&["desc_act", "act_order"]) && s.desc_act != e.desc_act {
                    diffs.push(format!("desc_act {} vs {}", s.desc_act, e.desc_act));
                }
                if given(&["sym"]) && s.sym != e.sym {
                    diffs.push(format!("sym {} vs {}", s.sym, e.sym));
                }
                if given(&["checkpoint_format", "format"]) && s.format != e.format {
                    diffs.push(format!(
                        "checkpoint format {} vs {}",
                        s.format.name(),
                        e.format.name()
                    ));
                }
                if diffs.is_empty() {
                    Ok(Some(s))
                } else {
                    Err(config_err(
                        &qc_path,
                        format!(
                            "disagrees with config.json's quantization_config: {}",
                            diffs.join(", ")
                        ),
                    ))
                }
            }
        }
    }

    /// Parses one settings object; `source` names it in errors.
    pub fn from_json(v: &Value, source: &Path) -> Result<GptqConfig, FormatError> {
        let err = |msg: String| config_err(source, msg);
        let obj: &Map<String, Value> = v
            .as_object()
            .ok_or_else(|| err("is not a JSON object".into()))?;
        // `quant_method` is absent in older files; when present it must be GPTQ.
        if let Some(m) = obj.get("quant_method") {
            let m = m
                .as_str()
                .ok_or_else(|| err(format!("field 'quant_method': {m} is not a string")))?;
            if !m.eq_ignore_ascii_case("gptq") {
                return Err(err(format!(
                    "field 'quant_method': '{m}' is not supported (only 'gptq')"
                )));
            }
        }
        let int = |key: &str| -> Result<Option<i64>, FormatError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| err(format!("field '{key}': {x} is not an integer"))),
            }
        };
        let boolean = |key: &str| -> Result<Option<bool>, FormatError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| err(format!("field '{key}': {x} is not true or false"))),
            }
        };
        let string = |key: &str| -> Result<Option<String>, FormatError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_str()
                    .map(|s| Some(s.to_owned()))
                    .ok_or_else(|| err(format!("field '{key}': {x} is not a string"))),
            }
        };
        let bits = int("bits")?.ok_or_else(|| err("field 'bits' is missing".into()))?;
        if !super::SUPPORTED_BITS.iter().any(|&b| b as i64 == bits) {
            return Err(err(format!(
                "field 'bits': {bits} is not supported (GPTQ checkpoints with {:?} bits are)",
                super::SUPPORTED_BITS
            )));
        }
        let group_size = match int("group_size")? {
            None | Some(-1) => None,
            Some(g) if g > 0 && g % 32 == 0 => Some(g as usize),
            Some(g) => {
                return Err(err(format!(
                    "field 'group_size': {g} is not supported (-1 or a positive multiple of 32)"
                )))
            }
        };
        let desc_act = match (boolean("desc_act")?, boolean("act_order")?) {
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => false,
        };
        let fmt_key = if obj.contains_key("checkpoint_format") {
            "checkpoint_format"
        } else {
            "format"
        };
        let format = match string(fmt_key)?.as_deref() {
            None | Some("gptq") => CheckpointFormat::V1,
            Some("gptq_v2") => CheckpointFormat::V2,
            Some(other) => {
                return Err(err(format!(
                    "field '{fmt_key}': '{other}' is not supported (only 'gptq' and 'gptq_v2')"
                )))
            }
        };
        if boolean("lm_head")? == Some(true) {
            return Err(err(
                "field 'lm_head': a quantized lm_head is not supported".into()
            ));
        }
        let damp_percent = match obj.get("damp_percent") {
            None | Some(Value::Null) => None,
            Some(x) => Some(
                x.as_f64()
                    .ok_or_else(|| err(format!("field 'damp_percent': {x} is not a number")))?,
            ),
        };
        Ok(GptqConfig {
            bits: bits as u32,
            group_size,
            desc_act,
            static_groups: boolean("static_groups")?.unwrap_or(false),
            sym: boolean("sym")?.unwrap_or(true),
            format,
            damp_percent,
            true_sequential: boolean("true_sequential")?,
            model_file_base_name: string("model_file_base_name")?,
            model_name_or_path: string("model_name_or_path")?,
            source: source.to_owned(),
        })
    }

    /// The settings as `quantize_config.json` (and `quantization_config`) hold them, with both
    /// spellings of the format key so that AutoGPTQ, GPTQModel and transformers all read it.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("bits".into(), self.bits.into());
        m.insert(
            "group_size".into(),
            self.group_size.map_or(-1i64, |g| g as i64).into(),
        );
        m.insert(
            "damp_percent".into(),
            self.damp_percent.unwrap_or(0.01).into(),
        );
        m.insert("desc_act".into(), self.desc_act.into());
        m.insert("static_groups".into(), self.static_groups.into());
        m.insert("sym".into(), self.sym.into());
        m.insert(
            "true_sequential".into(),
            self.true_sequential.unwrap_or(true).into(),
        );
        if let Some(p) = &self.model_name_or_path {
            m.insert("model_name_or_path".into(), p.clone().into());
        }
        if let Some(b) = &self.model_file_base_name {
            m.insert("model_file_base_name".into(), b.clone().into());
        }
        m.insert("quant_method".into(), "gptq".into());
        m.insert("checkpoint_format".into(), self.format.name().into());
        Value::Object(m)
    }
}

fn config_err(path: &Path, msg: String) -> FormatError {
    FormatError::Config {
        path: path.to_owned(),
        msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<GptqConfig, FormatError> {
        GptqConfig::from_json(&v, Path::new("quantize_config.json"))
    }

    #[test]
    fn thebloke_style_file_defaults_to_v1_sym() {
        // TheBloke/meditron-70B-GPTQ main branch: no quant_method, no checkpoint_format.
        let c = parse(
            json!({"bits": 4, "group_size": -1, "damp_percent": 0.1, "desc_act": true,
            "static_groups": false, "sym": true, "true_sequential": true,
            "model_name_or_path": null, "model_file_base_name": "model"}),
        )
        .unwrap();
        assert_eq!(
            (c.bits, c.group_size, c.desc_act, c.sym),
            (4, None, true, true)
        );
        assert_eq!(c.format, CheckpointFormat::V1);
        assert_eq!(c.model_file_base_name.as_deref(), Some("model"));
        assert_eq!(c.n_groups(8192), 1);
        let c = parse(json!({"bits": 3, "group_size": 128})).unwrap();
        assert!(c.sym && !c.desc_act);
        assert_eq!(c.n_groups(576), 5);
    }

    #[test]
    fn every_format_spelling() {
        let v2 = parse(json!({"bits": 4, "group_size": 128, "quant_method": "gptq", "checkpoint_format": "gptq_v2"})).unwrap();
        assert_eq!(v2.format, CheckpointFormat::V2);
        let v2 = parse(json!({"bits": 4, "group_size": 128, "format": "gptq_v2", "act_order": true, "sym": false})).unwrap();
        assert_eq!(
            (v2.format, v2.desc_act, v2.sym),
            (CheckpointFormat::V2, true, false)
        );
        let v1 =
            parse(json!({"bits": 8, "group_size": 32, "quant_method": "GPTQ", "format": "gptq"}))
                .unwrap();
        assert_eq!(v1.format, CheckpointFormat::V1);
        let back = parse(v2.to_json()).unwrap();
        assert_eq!(
            (
                back.bits,
                back.group_size,
                back.desc_act,
                back.sym,
                back.format
            ),
            (4, Some(128), true, false, CheckpointFormat::V2)
        );
    }

    #[test]
    fn unsupported_settings_are_named() {
        let e = |v| parse(v).unwrap_err().to_string();
        assert!(e(json!({"bits": 5, "group_size": 128})).contains("'bits': 5"));
        assert!(e(json!({"group_size": 128})).contains("'bits' is missing"));
        assert!(e(json!({"bits": 4, "group_size": 100})).contains("'group_size': 100"));
        assert!(e(json!({"bits": 4, "quant_method": "awq"})).contains("'awq'"));
        assert!(e(json!({"bits": 4, "checkpoint_format": "marlin"})).contains("'marlin'"));
        assert!(e(json!({"bits": "4"})).contains("not an integer"));
        assert!(e(json!({"bits": 4, "sym": "yes"})).contains("'sym'"));
        assert!(e(json!({"bits": 4, "lm_head": true})).contains("lm_head"));
    }

    #[test]
    fn zero_formats() {
        assert_eq!(CheckpointFormat::V1.zero_from_stored(7), 8);
        assert_eq!(CheckpointFormat::V2.zero_from_stored(7), 7);
        assert_eq!(CheckpointFormat::V1.stored_from_zero(0, 4), None);
        assert_eq!(CheckpointFormat::V1.stored_from_zero(16, 4), Some(15));
        assert_eq!(CheckpointFormat::V2.stored_from_zero(16, 4), None);
        assert_eq!(CheckpointFormat::V2.stored_from_zero(0, 4), Some(0));
    }

    #[test]
    fn both_files_must_agree() {
        let dir = std::env::temp_dir().join(format!("gptq-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(QUANTIZE_CONFIG_FILE),
            r#"{"bits": 4, "group_size": 128, "desc_act": true}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"quantization_config": {"bits": 4, "group_size": 32, "quant_method": "gptq"}}"#,
        )
        .unwrap();
        let e = GptqConfig::from_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("group_size Some(128) vs Some(32)"), "{e}");
        std::fs::write(
            dir.join("config.json"),
            r#"{"quantization_config": {"bits": 4, "group_size": 128, "quant_method": "gptq"}}"#,
        )
        .unwrap();
        let c = GptqConfig::from_dir(&dir).unwrap().unwrap();
        assert!(c.desc_act);
        std::fs::remove_file(dir.join(QUANTIZE_CONFIG_FILE)).unwrap();
        assert!(!GptqConfig::from_dir(&dir).unwrap().unwrap().desc_act);
        std::fs::write(dir.join("config.json"), r#"{"hidden_size": 8}"#).unwrap();
        assert!(GptqConfig::from_dir(&dir).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
