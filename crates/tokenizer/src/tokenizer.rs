//! [`Tokenizer`]: a `tokenizers` pipeline plus what transformers and llama.cpp keep beside it
//! (BOS/EOS and whether to add them, the ids that end generation, the chat template).

use crate::gguf::{self, GgufVocab};
use crate::TokenizerError;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;

/// Token texts that end generation when the vocabulary has them as whole (added/control)
/// tokens: llama.cpp's end-of-generation names, plus SentencePiece's `</s>`.
pub(crate) const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
    "</s>",
];

/// Text <-> token ids for one model, from a `tokenizer.json` directory or GGUF metadata.
///
/// Special tokens written in the text (`<|im_start|>`) always become their id, as in
/// transformers' `encode` and llama.cpp with `parse_special`.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos_id: Option<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos: bool,
    add_eos: bool,
    /// Primary EOS first (when known), then the rest of the end-of-generation set, sorted.
    eos_ids: Vec<u32>,
    special_ids: HashSet<u32>,
    chat_template: Option<String>,
    warnings: Vec<String>,
}

/// What a loader knows before the [`Tokenizer`] is assembled.
pub(crate) struct Parts {
    pub inner: tokenizers::Tokenizer,
    pub vocab_size: usize,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// End-of-generation ids named outside the vocabulary (generation_config.json).
    pub extra_eos: Vec<u32>,
    pub chat_template: Option<String>,
    pub warnings: Vec<String>,
}

impl Parts {
    pub fn new(inner: tokenizers::Tokenizer, add_bos: bool) -> Self {
        Parts {
            vocab_size: inner.get_vocab_size(true),
            inner,
            bos_id: None,
            eos_id: None,
            bos_token: None,
            eos_token: None,
            add_bos,
            add_eos: false,
            extra_eos: Vec::new(),
            chat_template: None,
            warnings: Vec::new(),
        }
    }
}

impl Tokenizer {
    /// From a Hugging Face model directory: `tokenizer.json`, plus (all optional)
    /// `tokenizer_config.json` (add_bos_token/add_eos_token, bos/eos token strings,
    /// chat_template as a string or a list of `{name, template}`), `chat_template.jinja`
    /// (newer transformers save the template there) and `generation_config.json`
    /// (`eos_token_id`, an id or a list).
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let tj = dir.join("tokenizer.json");
        if !tj.exists() && dir.join("tokenizer.model").exists() {
            return Err(TokenizerError::Parse {
                path: tj,
                message: "missing; only a SentencePiece tokenizer.model is there, which is not supported \
                          (transformers writes tokenizer.json with AutoTokenizer.save_pretrained)"
                    .into(),
            });
        }
        let text = read_text(&tj)?;
        let inner = tokenizers::Tokenizer::from_str(&text).map_err(|e| TokenizerError::Parse {
            path: tj.clone(),
            message: e.to_string(),
        })?;
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let gen = read_json_opt(&dir.join("generation_config.json"))?;
        let cfg = |key: &str| config.as_ref().and_then(|c| c.get(key));

        let mut parts = Parts::new(inner, false);
        parts.bos_token = cfg("bos_token").and_then(token_content);
        parts.eos_token = cfg("eos_token").and_then(token_content);
        let gen_ids = |key: &str| {
            gen.as_ref()
                .and_then(|g| g.get(key))
                .map(ids_of)
                .unwrap_or_default()
        };
        parts.bos_id = parts
            .bos_token
            .as_deref()
            .and_then(|t| parts.inner.token_to_id(t))
            .or_else(|| gen_ids("bos_token_id").first().copied());
        parts.extra_eos = gen_ids("eos_token_id");
        parts.eos_id = parts
            .eos_token
            .as_deref()
            .and_then(|t| parts.inner.token_to_id(t))
            .or_else(|| parts.extra_eos.first().copied());
        if parts.bos_token.is_none() {
            parts.bos_token = parts.bos_id.and_then(|id| parts.inner.id_to_token(id));
        }
        if parts.eos_token.is_none() {
            parts.eos_token = parts.eos_id.and_then(|id| parts.inner.id_to_token(id));
        }

        // tokenizer_config.json's flags win (transformers rebuilds the post-processor from them);
        // otherwise whatever tokenizer.json's post-processor adds around an empty text. A
        // special token it puts first is the BOS even when no config file names one.
        let around = parts
            .inner
            .encode_fast("", true)
            .map_err(|e| TokenizerError::Parse {
                path: tj.clone(),
                message: e.to_string(),
            })?;
        let around = around.get_ids();
        if parts.bos_id.is_none() {
            let added = parts.inner.get_added_tokens_decoder();
            parts.bos_id = around
                .first()
                .copied()
                .filter(|id| added.get(id).is_some_and(|t| t.special));
            parts.bos_token = parts.bos_id.and_then(|id| parts.inner.id_to_token(id));
        }
        let post_bos = parts.bos_id.is_some() && around.first().copied() == parts.bos_id;
        let body_start = usize::from(post_bos);
        let post_eos = parts.eos_id.is_some()
            && around.len() > body_start
            && around.last().copied() == parts.eos_id;
        parts.add_bos = cfg("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(post_bos);
        parts.add_eos = cfg("add_eos_token")
            .and_then(Value::as_bool)
            .unwrap_or(post_eos);

        parts.chat_template = hf_chat_template(dir, cfg("chat_template"))?;
        Tokenizer::from_parts(parts)
    }

    /// Rebuilt from GGUF tokenizer metadata (see [`GgufVocab`]).
    pub fn from_gguf(v: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
        gguf::build(v)
    }

    pub(crate) fn from_parts(p: Parts) -> Result<Tokenizer, TokenizerError> {
        let added = p.inner.get_added_tokens_decoder();
        let special_ids: HashSet<u32> = added
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let mut eog: Vec<u32> = added
            .iter()
            .filter(|(_, t)| {
                EOG_NAMES.contains(&t.content.as_str()) && (t.special || t.content != "</s>")
            })
            .map(|(&id, _)| id)
            .collect();
        // gpt-oss (harmony) ends turns with <|return|> and <|call|>; its <|end|> only ends a
        // message, so llama.cpp drops it from the set when both others exist.
        let has = |name: &str| {
            eog.iter()
                .any(|&id| p.inner.id_to_token(id).as_deref() == Some(name))
        };
        if has("<|return|>") && has("<|call|>") {
            eog.retain(|&id| p.inner.id_to_token(id).as_deref() != Some("<|end|>"));
        }
        eog.extend(p.extra_eos.iter().copied());
        eog.sort_unstable();
        eog.dedup();
        let mut eos_ids = Vec::with_capacity(eog.len() + 1);
        if let Some(e) = p.eos_id {
            eos_ids.push(e);
        }
        eos_ids.extend(eog.into_iter().filter(|&id| Some(id) != p.eos_id));

        let bos_token = p
            .bos_token
            .or_else(|| p.bos_id.and_then(|id| p.inner.id_to_token(id)));
        let eos_token = p
            .eos_token
            .or_else(|| p.eos_id.and_then(|id| p.inner.id_to_token(id)));
        let mut warnings = p.warnings;
        let add_bos = p.add_bos && p.bos_id.is_some();
        if p.add_bos && !add_bos {
            warnings.push("the model asks for a BOS token but names none; none is added".into());
        }
        Ok(Tokenizer {
            vocab_size: p.vocab_size.max(p.inner.get_vocab_size(true)),
            inner: p.inner,
            bos_id: p.bos_id,
            bos_token,
            eos_token,
            add_bos,
            add_eos: p.add_eos && p.eos_id.is_some(),
            eos_ids,
            special_ids,
            chat_template: p.chat_template,
            warnings,
        })
    }

    /// Token ids of `text`. Special tokens written in the text are parsed as such; BOS (and EOS,
    /// for the rare model that asks for it) is added when `add_special` and the model adds it.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        // The pipeline's own post-processor is bypassed: BOS/EOS follow add_bos/add_eos only,
        // which is how transformers treats tokenizer_config.json's flags.
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let body = enc.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(body);
        if add_special && self.add_eos {
            ids.extend(self.eos_ids.first().copied());
        }
        Ok(ids)
    }

    /// Like [`Tokenizer::encode`], with each token's end as a byte offset into `text` (0 for
    /// the added BOS/EOS), for measures per byte such as bits per byte.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special: bool,
    ) -> Result<(Vec<u32>, Vec<usize>), TokenizerError> {
        // `encode` (unlike `encode_fast`) tracks offsets, in bytes of the original text.
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let bos = (add_special && self.add_bos)
            .then_some(self.bos_id)
            .flatten();
        let eos = (add_special && self.add_eos)
            .then(|| self.eos_ids.first().copied())
            .flatten();
        let mut ids = Vec::with_capacity(enc.len() + 2);
        let mut ends = Vec::with_capacity(enc.len() + 2);
        if let Some(b) = bos {
            ids.push(b);
            ends.push(0);
        }
        ids.extend_from_slice(enc.get_ids());
        ends.extend(
            enc.get_offsets()
                .iter()
                .map(|&(_, end)| end.min(text.len())),
        );
        if let Some(e) = eos {
            ids.push(e);
            ends.push(0);
        }
        Ok((ids, ends))
    }

    /// The bytes each id stands for, indexed by id (empty for ids without a token), for
    /// constrained decoding, which must see tokens that are only part of a UTF-8 character.
    /// Byte-level vocabularies (GPT-2 style) map each character back to its byte; SentencePiece
    /// ones turn `▁` into a space and `<0xNN>` byte-fallback pieces into the byte.
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let byte_level = self
            .inner
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|d| d.contains("ByteLevel"));
        let unicode_to_byte = byte_level_alphabet();
        (0..self.vocab_size() as u32)
            .map(|id| {
                let Some(piece) = self.inner.id_to_token(id) else {
                    return Vec::new();
                };
                if self.is_special(id) {
                    return piece.into_bytes();
                }
                if byte_level {
                    let bytes: Option<Vec<u8>> = piece
                        .chars()
                        .map(|c| unicode_to_byte.get(&c).copied())
                        .collect();
                    // Added (non-special) tokens are stored as plain text.
                    return bytes.unwrap_or_else(|| piece.into_bytes());
                }
                if let Some(hex) = piece.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
                    if let Ok(b) = u8::from_str_radix(hex, 16) {
                        return vec![b];
                    }
                }
                piece.replace('\u{2581}', " ").into_bytes()
            })
            .collect()
    }

    /// Text of `ids`; special tokens are left out when `skip_special`. Ids outside the
    /// vocabulary (a padded embedding can produce them) decode to nothing, as in `tokenizers`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Number of ids the tokenizer knows, added tokens included.
    /// Writes a Hugging Face `tokenizer.json` and `tokenizer_config.json` (special tokens,
    /// BOS/EOS flags, chat template) into `dir`, as `save_pretrained` would.
    pub fn save_hf(&self, dir: &Path) -> Result<(), TokenizerError> {
        let json_path = dir.join("tokenizer.json");
        self.inner
            .save(&json_path, false)
            .map_err(|e| TokenizerError::Parse {
                path: json_path.clone(),
                message: format!("writing: {e}"),
            })?;
        let mut config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 1_000_000_000_000_000_000u64,
        });
        if let Some(t) = &self.bos_token {
            config["bos_token"] = t.clone().into();
        }
        if let Some(t) = &self.eos_token {
            config["eos_token"] = t.clone().into();
        }
        if let Some(t) = &self.chat_template {
            config["chat_template"] = t.clone().into();
        }
        let config_path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&config).unwrap_or_default();
        std::fs::write(&config_path, text).map_err(|source| TokenizerError::Io {
            path: config_path,
            source,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of a raw vocabulary piece (`"Ġthe"`, `"▁the"`) or added token (`"<|im_end|>"`).
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// The raw vocabulary piece of an id, as stored in the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a special (control) token: hidden by `decode(.., skip_special=true)`.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether `encode(.., add_special=true)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Every id that ends generation: the EOS id first, then end-of-turn tokens the vocabulary
    /// has as whole tokens (`<|im_end|>`, `<|eot_id|>`, `<|end|>`, `</s>`, ...; llama.cpp's EOG
    /// set) and the ids `generation_config.json` lists.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The model's own Jinja chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn bos_token(&self) -> Option<String> {
        self.bos_token.clone()
    }

    pub fn eos_token(&self) -> Option<String> {
        self.eos_token.clone()
    }

    /// Things the loader worked around (an unknown GGUF pre-tokenizer, a repeated token, ...),
    /// for the caller to show.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

fn read_text(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A JSON file that may be absent.
fn read_json_opt(path: &Path) -> Result<Option<Value>, TokenizerError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_text(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TokenizerError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// A special token in tokenizer_config.json: a string, or an AddedToken object `{content, ..}`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// An id or a list of ids (generation_config.json's `eos_token_id`).
fn ids_of(v: &Value) -> Vec<u32> {
    let one = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match v {
        Value::Array(a) => a.iter().filter_map(one).collect(),
        v => one(v).into_iter().collect(),
    }
}

/// The chat template the way transformers finds it: `chat_template.jinja`, then
/// `chat_template.json`, then tokenizer_config.json's `chat_template` (a string, or a list of
/// named templates of which "default" is the chat one).
fn hf_chat_template(
    dir: &Path,
    in_config: Option<&Value>,
) -> Result<Option<String>, TokenizerError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return read_text(&jinja).map(Some);
    }
    if let Some(v) = read_json_opt(&dir.join("chat_template.json"))? {
        if let Some(t) = v.get("chat_template").and_then(Value::as_str) {
            return Ok(Some(t.to_string()));
        }
    }
    Ok(match in_config {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => {
            let template = |e: &Value| {
                e.get("template")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            let named = list
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some("default"));
            named.or(list.first()).and_then(template)
        }
        _ => None,
    })
}

/// GPT-2's byte-level alphabet, reversed: printable bytes stand for themselves, the other 68
/// bytes (controls, space, ...) are shifted to U+0100 and up, in byte order.
fn byte_level_alphabet() -> std::collections::HashMap<char, u8> {
    let mut map = std::collections::HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("U+0100..U+0143 are chars")
        };
        map.insert(c, b);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A tiny byte-level tokenizer.json with a Llama-style post-processor that adds `<s>`.
    const TINY_TOKENIZER_JSON: &str = r#"{
      "version": "1.0",
      "added_tokens": [
        {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 2, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
      ],
      "normalizer": null,
      "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
      "post_processor": {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}
      },
      "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
      "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
        "vocab": {"<s>": 0, "</s>": 1, "<|im_end|>": 2, "h": 3, "i": 4, "Ġ": 5, "hi": 6, "Ġhi": 7},
        "merges": ["h i", "Ġ hi"]}
    }"#;

    fn tiny_dir(name: &str, config: Option<&str>, generation: Option<&str>) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("meditron-tokenizer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("tokenizer.json"), TINY_TOKENIZER_JSON).unwrap();
        if let Some(c) = config {
            fs::write(dir.join("tokenizer_config.json"), c).unwrap();
        }
        if let Some(g) = generation {
            fs::write(dir.join("generation_config.json"), g).unwrap();
        }
        dir
    }

    #[test]
    fn hf_dir_post_processor_bos_and_eos_set() {
        let dir = tiny_dir("pp", None, Some(r#"{"eos_token_id": [1, 2]}"#));
        let tok = Tokenizer::from_hf_dir(&dir).unwrap();
        // No config names a BOS: the special token the post-processor puts first is it.
        assert!(tok.add_bos());
        assert_eq!(tok.bos_id(), Some(0));
        assert_eq!(tok.bos_token().as_deref(), Some("<s>"));
        assert_eq!(tok.encode("hi hi", false).unwrap(), vec![6, 7]);
        assert_eq!(tok.encode("hi hi", true).unwrap(), vec![0, 6, 7]);
        assert_eq!(tok.eos_ids(), &[1, 2]);
        assert_eq!(tok.decode(&[6, 2, 7, 1], true).unwrap(), "hi<|im_end|> hi");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn hf_dir_config_flags_tokens_and_template_list() {
        let config = r#"{"add_bos_token": true, "bos_token": {"content": "<s>", "__type": "AddedToken"},
            "eos_token": "</s>", "chat_template": [{"name": "tool_use", "template": "T"},
            {"name": "default", "template": "{{ bos_token }}"}]}"#;
        let dir = tiny_dir("cfg", Some(config), None);
        let tok = Tokenizer::from_hf_dir(&dir).unwrap();
        assert_eq!(tok.bos_id(), Some(0));
        assert_eq!(tok.bos_token().as_deref(), Some("<s>"));
        assert_eq!(tok.eos_token().as_deref(), Some("</s>"));
        assert_eq!(tok.encode("hi", true).unwrap(), vec![0, 6]);
        assert_eq!(tok.encode("<s>hi</s>", false).unwrap(), vec![0, 6, 1]);
        assert_eq!(tok.chat_template(), Some("{{ bos_token }}"));
        // </s> (the EOS) and <|im_end|> (an added token with an EOG name) end generation.
        assert_eq!(tok.eos_ids(), &[1, 2]);
        assert!(tok.is_special(1) && !tok.is_special(2));
        fs::write(dir.join("chat_template.jinja"), "J").unwrap();
        assert_eq!(
            Tokenizer::from_hf_dir(&dir).unwrap().chat_template(),
            Some("J")
        );
        fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"add_bos_token": false, "bos_token": "<s>"}"#,
        )
        .unwrap();
        assert_eq!(
            Tokenizer::from_hf_dir(&dir)
                .unwrap()
                .encode("hi", true)
                .unwrap(),
            vec![6]
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn hf_dir_errors_name_the_file() {
        let dir = tiny_dir("err", Some("{not json"), None);
        let e = Tokenizer::from_hf_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("tokenizer_config.json"), "{e}");
        let e = Tokenizer::from_hf_dir(&dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tokenizer_and_template_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + Clone>() {}
        shared::<Tokenizer>();
        shared::<crate::ChatTemplate>();
    }
}
