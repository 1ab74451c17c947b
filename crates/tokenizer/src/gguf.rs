//! Rebuilding a `tokenizers` pipeline from the `tokenizer.ggml.*` keys of a GGUF file.
//!
//! A GGUF stores the vocabulary, merges or scores, token types and special ids, but not the
//! normalizer, pre-tokenizer or decoder: llama.cpp hard-codes those per `tokenizer.ggml.model`
//! and `tokenizer.ggml.pre`. We build the same pipeline the original `tokenizer.json` had, so the
//! ids equal llama.cpp's and transformers' on the original model:
//!
//! - `gpt2`: byte-level BPE from `tokens` (id = index) and `merges`; the pre-tokenizer is the
//!   list of split regexes llama.cpp uses for `pre`, then the GPT-2 byte mapping.
//! - `llama`: SentencePiece BPE with byte fallback. SentencePiece has no merge list; merges are
//!   derived from the scores the way transformers' converters do. A "▁" is prepended to each
//!   stretch of text (also after a special token, as llama.cpp and the original Llama
//!   `tokenizer.json` do) when `add_space_prefix` is on, and spaces become "▁".

use crate::tokenizer::{Parts, Tokenizer};
use crate::TokenizerError;
use ahash::AHashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{NormalizerWrapper, Sequence as NormalizerSequence};
use tokenizers::normalizers::{Prepend, Replace, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// The tokenizer metadata of a GGUF file, as plain data (the caller reads the file).
///
/// Field names follow the GGUF keys: `model` is `tokenizer.ggml.model`, `tokens` is
/// `tokenizer.ggml.tokens`, `token_types` is `tokenizer.ggml.token_type`, and so on;
/// `chat_template` is `tokenizer.chat_template`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// llama.cpp's pre-tokenizer name, e.g. "smollm", "llama-bpe", "qwen2".
    pub pre: Option<String>,
    /// (n_vocab) token pieces; a token's id is its index.
    pub tokens: Vec<String>,
    /// (n_vocab) SentencePiece scores; required for "llama".
    pub scores: Option<Vec<f32>>,
    /// (n_vocab) 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// (n_merges) "left right" pairs, best first; required for "gpt2".
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// GPT-2's split, as written in Hugging Face's `ByteLevel` pre-tokenizer. llama.cpp's copy lacks
/// the final `|\s+`, which only changes trailing whitespace that both handle the same way.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Written with escapes: several characters in these classes have NFC equivalents, and an editor
/// that normalizes them would turn a range such as U+1FD0-U+1FD3 into an invalid one.
const DEEPSEEK_LLM_SPLITS: &[&str] = &[
    r"[\r\n]",
    r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+",
    r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+",
    r"\s+$",
    r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+",
    r"\p{N}+",
];

const DEEPSEEK_CODER_SPLITS: &[&str] = &[
    r"[\r\n]",
    r"\s?\p{L}+",
    r"\s?\p{P}+",
    r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+",
    r"\p{N}",
];

const FALCON_SPLITS: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_SPLIT, r"[0-9][0-9][0-9]"];

/// How one `tokenizer.ggml.pre` value splits text before byte-level BPE.
struct PreSplit {
    /// Applied in order, each splitting the pieces of the one before (llama.cpp's `regex_exprs`).
    regexes: &'static [&'static str],
    /// The original `tokenizer.json` normalizes to NFC first (Qwen2).
    nfc: bool,
    /// Whole words found in the vocabulary are taken as is, before any merge (Llama 3).
    ignore_merges: bool,
    /// llama.cpp's default for `add_bos_token` when the file does not say.
    add_bos: bool,
}

/// The pre-tokenizer for a llama.cpp `pre` name, or None when we don't know it.
fn pre_split(pre: &str) -> Option<PreSplit> {
    let plain = |regexes| PreSplit {
        regexes,
        nfc: false,
        ignore_merges: false,
        add_bos: false,
    };
    let llama3 = PreSplit {
        regexes: &[LLAMA3_SPLIT],
        nfc: false,
        ignore_merges: true,
        add_bos: true,
    };
    Some(match pre {
        "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "roberta-bpe"
        | "jina-es" | "jina-de" | "jina-v1-en" | "jina-v2-es" | "jina-v2-de" | "jina-v2-code"
        | "gigachat" | "a.x-4.0" | "mellum" | "exaone4" => plain(&[GPT2_SPLIT]),
        // Digits one by one, then GPT-2's split (StarCoder's tokenizer.json: Digits + ByteLevel).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            plain(&[r"\p{N}", GPT2_SPLIT])
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => llama3,
        "dbrx" | "smaug-bpe" | "chatglm-bpe" | "glm4" => plain(&[LLAMA3_SPLIT]),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => PreSplit {
            regexes: &[QWEN2_SPLIT],
            nfc: true,
            ignore_merges: false,
            add_bos: false,
        },
        "stablelm2" | "hunyuan" => plain(&[QWEN2_SPLIT]),
        "tekken" => PreSplit {
            regexes: &[TEKKEN_SPLIT],
            nfc: false,
            ignore_merges: true,
            add_bos: true,
        },
        "gpt-4o" | "llama4" => plain(&[GPT4O_SPLIT]),
        "deepseek-llm" => plain(DEEPSEEK_LLM_SPLITS),
        "deepseek-coder" => plain(DEEPSEEK_CODER_SPLITS),
        "falcon" => plain(FALCON_SPLITS),
        _ => return None,
    })
}

/// Builds the tokenizer a GGUF file's metadata describes.
pub(crate) fn build(v: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
    let n = v.tokens.len();
    if n == 0 {
        return Err(TokenizerError::Vocab(
            "tokenizer.ggml.tokens is empty".into(),
        ));
    }
    if u32::try_from(n).is_err() {
        return Err(TokenizerError::Vocab(format!(
            "{n} tokens do not fit 32-bit ids"
        )));
    }
    let types = match &v.token_types {
        Some(t) if t.len() != n => {
            return Err(TokenizerError::Vocab(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                t.len()
            )))
        }
        Some(t) => t.clone(),
        None => vec![1; n],
    };
    let mut warnings = Vec::new();
    let tokens = unique_tokens(&v.tokens, &mut warnings);

    // Special ids out of range are dropped, as llama.cpp does ("bad special token").
    let mut checked = |name: &str, id: Option<u32>| match id {
        Some(i) if (i as usize) < n => Some(i),
        Some(i) => {
            warnings.push(format!(
                "tokenizer.ggml.{name}_token_id {i} is out of range; ignored"
            ));
            None
        }
        None => None,
    };
    let is_spm = v.model == "llama";
    // llama.cpp's defaults for SentencePiece files that name no special ids: <unk> 0, <s> 1, </s> 2.
    let spm_default = |id: u32| (is_spm && (id as usize) < n).then_some(id);
    let bos_id = checked("bos", v.bos_id).or_else(|| spm_default(1));
    let eos_id = checked("eos", v.eos_id).or_else(|| spm_default(2));
    let unk_id = checked("unknown", v.unk_id).or_else(|| spm_default(0));
    let _ = checked("padding", v.pad_id);

    let mut parts = match v.model.as_str() {
        "gpt2" => byte_level_bpe(v, &tokens, &mut warnings)?,
        "llama" => sentencepiece_bpe(v, &tokens, unk_id.map(|u| tokens[u as usize].clone()))?,
        other => {
            return Err(TokenizerError::Vocab(format!(
                "tokenizer.ggml.model '{other}' is not supported (expected \"gpt2\" or \"llama\")"
            )))
        }
    };
    parts.bos_id = bos_id;
    parts.eos_id = eos_id;
    if let Some(add_bos) = v.add_bos {
        parts.add_bos = add_bos;
    }
    parts.add_eos = v.add_eos.unwrap_or(false);

    // Control and unknown tokens are matched whole in text and hidden by skip_special;
    // user-defined ones are matched whole but are ordinary text (llama.cpp's parse_special).
    // Names llama.cpp treats as end of generation are control whatever the file says.
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (tok, &ty) in tokens.iter().zip(&types) {
        // ("</s>" is not among llama.cpp's names: in a byte-level vocabulary it can be text.)
        let named_eog = tok != "</s>" && crate::tokenizer::EOG_NAMES.contains(&tok.as_str());
        if ty == TYPE_CONTROL || ty == TYPE_UNKNOWN || named_eog {
            special.push(AddedToken::from(tok.clone(), true).normalized(false));
        } else if ty == TYPE_USER_DEFINED {
            user.push(AddedToken::from(tok.clone(), false).normalized(false));
        }
    }
    parts.inner.add_special_tokens(&special);
    parts.inner.add_tokens(&user);
    parts.vocab_size = n;
    parts.chat_template = v.chat_template.clone();
    parts.warnings.extend(warnings);
    Tokenizer::from_parts(parts)
}

/// The tokens with llama.cpp's fixes: an empty token becomes "[EMPTY_i]" and a repeated one
/// gets a placeholder, because `tokenizers` needs one piece per id.
fn unique_tokens(tokens: &[String], warnings: &mut Vec<String>) -> Vec<String> {
    let mut seen = AHashMap::with_capacity(tokens.len());
    let mut out = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let mut t = if t.is_empty() {
            format!("[EMPTY_{i}]")
        } else {
            t.clone()
        };
        if seen.insert(t.clone(), i).is_some() {
            warnings.push(format!(
                "token {i} {t:?} repeats an earlier token; it can only be decoded"
            ));
            t = format!("[DUPLICATE_{i}]");
        }
        out.push(t);
    }
    out
}

fn vocab_map(tokens: &[String]) -> AHashMap<String, u32> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

fn byte_level_bpe(
    v: &GgufVocab,
    tokens: &[String],
    warnings: &mut Vec<String>,
) -> Result<Parts, TokenizerError> {
    let merges = v.merges.as_ref().ok_or_else(|| {
        TokenizerError::Vocab("a \"gpt2\" vocabulary needs tokenizer.ggml.merges".into())
    })?;
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        // Split at the first space after the first byte, as llama.cpp does: a piece may start
        // with a space but never contain one in the middle.
        let cut = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
        match cut {
            Some(p) => pairs.push((m[..p].to_string(), m[p + 1..].to_string())),
            None => {
                return Err(TokenizerError::Vocab(format!(
                    "merge {i} {m:?} is not \"left right\""
                )))
            }
        }
    }
    let pre_name = v.pre.as_deref().unwrap_or("");
    let split = pre_split(pre_name).unwrap_or_else(|| {
        warnings.push(if pre_name.is_empty() || pre_name == "default" {
            "GGUF names no pre-tokenizer (tokenizer.ggml.pre); using GPT-2's split".to_string()
        } else {
            format!("unknown GGUF pre-tokenizer '{pre_name}'; using GPT-2's split, ids may differ from the original")
        });
        PreSplit { regexes: &[GPT2_SPLIT], nfc: false, ignore_merges: false, add_bos: false }
    });

    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(tokens), pairs)
        .ignore_merges(split.ignore_merges)
        .build()
        .map_err(|e| TokenizerError::Vocab(format!("building the BPE model: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let mut pre: Vec<PreTokenizerWrapper> = Vec::with_capacity(split.regexes.len() + 1);
    for r in split.regexes {
        let s = Split::new(
            SplitPattern::Regex((*r).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Vocab(format!("pre-tokenizer regex {r:?}: {e}")))?;
        pre.push(s.into());
    }
    // The splits above already did GPT-2's job, so the byte mapping runs without its own regex.
    pre.push(ByteLevel::new(false, true, false).into());
    inner.with_pre_tokenizer(Some(PreSequence::new(pre)));
    if split.nfc {
        inner.with_normalizer(Some(NFC));
    }
    inner.with_decoder(Some(ByteLevel::default()));
    Ok(Parts::new(inner, split.add_bos))
}

fn sentencepiece_bpe(
    v: &GgufVocab,
    tokens: &[String],
    unk: Option<String>,
) -> Result<Parts, TokenizerError> {
    let scores = v.scores.as_ref().ok_or_else(|| {
        TokenizerError::Vocab("a \"llama\" vocabulary needs tokenizer.ggml.scores".into())
    })?;
    if scores.len() != tokens.len() {
        return Err(TokenizerError::Vocab(format!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let merges = merges_from_scores(tokens, scores);
    let mut builder = BPE::builder().vocab_and_merges(vocab_map(tokens), merges);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| TokenizerError::Vocab(format!("building the BPE model: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);

    let space_prefix = v.add_space_prefix.unwrap_or(true);
    let replace = |from: &str, to: &str| {
        Replace::new(from, to)
            .map_err(|e| TokenizerError::Vocab(format!("replace normalizer: {e}")))
    };
    // A normalizer (not the Metaspace pre-tokenizer) so the prefix goes on every stretch of text
    // between special tokens, like llama.cpp's "space after a special token".
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if space_prefix {
        norm.push(Prepend::new("▁".to_string()).into());
    }
    norm.push(replace(" ", "▁")?.into());
    inner.with_normalizer(Some(NormalizerSequence::new(norm)));

    let mut dec: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(replace("▁", " ")?),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    inner.with_decoder(Some(DecoderSequence::new(dec)));
    Ok(Parts::new(inner, true))
}

/// BPE merges that reproduce SentencePiece's "merge the best-scoring pair first".
///
/// Every way of cutting a token into two tokens is a merge, ranked by the score of the token
/// it makes (ties: longer left piece, then longer right piece, then vocabulary order), exactly
/// as transformers' `generate_merges` ranks them for GGUF and `tokenizer.model` files.
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: AHashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // (score, left chars, right chars, left, right), in the order transformers produces them.
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    let mut local = Vec::new();
    for (token, &score) in tokens.iter().zip(scores) {
        local.clear();
        for (cut, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(cut);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                local.push((li, ri, l, r));
            }
        }
        local.sort_by_key(|&(li, ri, _, _)| (li, ri));
        merges.extend(
            local
                .iter()
                .map(|&(_, _, l, r)| (score, l.chars().count(), r.chars().count(), l, r)),
        );
    }
    // Stable, descending on (score, left length, right length) like Python's sorted(reverse=True).
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A hand-made SentencePiece vocabulary: control tokens, byte tokens and a few merges.
    pub(crate) fn tiny_spm() -> GgufVocab {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        let pieces = [
            "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "he", "ll", "llo", "hello", "▁hello",
            "or", "wor", "ld", "world", "▁world",
        ];
        let mut scores = vec![0.0f32; tokens.len()];
        for (i, p) in pieces.iter().enumerate() {
            tokens.push((*p).to_string());
            types.push(1);
            // Longer pieces score higher, as in a trained model.
            scores.push(-(pieces.len() as f32) + p.chars().count() as f32 * 2.0 + i as f32 * 0.01);
        }
        tokens.push("<|im_start|>".into());
        types.push(4);
        scores.push(0.0);
        GgufVocab {
            model: "llama".into(),
            tokens,
            scores: Some(scores),
            token_types: Some(types),
            bos_id: Some(1),
            eos_id: Some(2),
            unk_id: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn merges_rank_by_score_then_length() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5];
        let m = merges_from_scores(&tokens, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(m, vec![("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]);
    }

    #[test]
    fn tiny_spm_encodes_with_prefix_space_bytes_and_specials() {
        let tok = Tokenizer::from_gguf(&tiny_spm()).unwrap();
        let id = |s: &str| tok.token_to_id(s).unwrap();
        assert!(tok.add_bos());
        assert_eq!(
            tok.encode("hello world", true).unwrap(),
            vec![1, id("▁hello"), id("▁world")]
        );
        // "é" is not in the vocabulary: its UTF-8 bytes come out as byte tokens.
        assert_eq!(
            tok.encode("hé", false).unwrap(),
            vec![id("▁h"), id("<0xC3>"), id("<0xA9>")]
        );
        assert_eq!(
            tok.decode(&tok.encode("hé world", false).unwrap(), false)
                .unwrap(),
            "hé world"
        );
        // Text after a special token gets its own "▁", as in llama.cpp.
        assert_eq!(
            tok.encode("</s>hello", false).unwrap(),
            vec![2, id("▁hello")]
        );
        // User-defined tokens are matched whole but are not special.
        let ims = id("<|im_start|>");
        assert_eq!(
            tok.encode("<|im_start|>hello", false).unwrap(),
            vec![ims, id("▁hello")]
        );
        assert!(!tok.is_special(ims));
        assert!(tok.is_special(2));
        assert_eq!(tok.decode(&[1, id("▁hello"), 2], true).unwrap(), "hello");
        assert_eq!(tok.eos_ids(), &[2]);
    }

    #[test]
    fn no_space_prefix_when_the_file_says_so() {
        let mut v = tiny_spm();
        v.add_space_prefix = Some(false);
        let tok = Tokenizer::from_gguf(&v).unwrap();
        let id = |s: &str| tok.token_to_id(s).unwrap();
        assert_eq!(
            tok.encode("hello world", false).unwrap(),
            vec![id("hello"), id("▁world")]
        );
        assert_eq!(tok.decode(&[id("▁world")], false).unwrap(), " world");
    }

    #[test]
    fn bad_metadata_is_a_clear_error() {
        let mut v = tiny_spm();
        v.scores = Some(vec![0.0; 3]);
        let e = Tokenizer::from_gguf(&v).unwrap_err().to_string();
        assert!(e.contains("scores has 3 entries"), "{e}");
        let mut v = tiny_spm();
        v.model = "rwkv".into();
        assert!(Tokenizer::from_gguf(&v)
            .unwrap_err()
            .to_string()
            .contains("'rwkv' is not supported"));
        let v = GgufVocab {
            model: "gpt2".into(),
            tokens: vec!["a".into()],
            ..Default::default()
        };
        assert!(Tokenizer::from_gguf(&v)
            .unwrap_err()
            .to_string()
            .contains("needs tokenizer.ggml.merges"));
        let v = GgufVocab {
            model: "gpt2".into(),
            tokens: vec!["a".into(), "b".into(), "ab".into()],
            merges: Some(vec!["ab".into()]),
            ..Default::default()
        };
        assert!(Tokenizer::from_gguf(&v)
            .unwrap_err()
            .to_string()
            .contains("merge 0"));
    }

    #[test]
    fn unknown_pre_falls_back_with_a_warning() {
        let v = GgufVocab {
            model: "gpt2".into(),
            pre: Some("no-such-pre".into()),
            tokens: vec!["a".into(), "b".into(), "ab".into(), "Ġ".into()],
            merges: Some(vec!["a b".into()]),
            ..Default::default()
        };
        let tok = Tokenizer::from_gguf(&v).unwrap();
        assert!(
            tok.warnings()[0].contains("no-such-pre"),
            "{:?}",
            tok.warnings()
        );
        assert_eq!(tok.encode("ab a", false).unwrap(), vec![2, 3, 0]);
    }

    /// Every pre-tokenizer we name compiles (a DeepSeek regex once didn't, after an editor
    /// normalized characters in its ranges).
    #[test]
    fn every_named_pre_tokenizer_builds() {
        let names = [
            "gpt2",
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "roberta-bpe",
            "jina-es",
            "jina-de",
            "jina-v1-en",
            "jina-v2-es",
            "jina-v2-de",
            "jina-v2-code",
            "gigachat",
            "a.x-4.0",
            "mellum",
            "exaone4",
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "dbrx",
            "smaug-bpe",
            "chatglm-bpe",
            "glm4",
            "qwen2",
            "deepseek-r1-qwen",
            "megrez",
            "stablelm2",
            "hunyuan",
            "tekken",
            "gpt-4o",
            "llama4",
            "deepseek-llm",
            "deepseek-coder",
            "falcon",
        ];
        for name in names {
            let v = GgufVocab {
                model: "gpt2".into(),
                pre: Some(name.into()),
                tokens: vec!["1".into(), "2".into(), "12".into()],
                merges: Some(vec!["1 2".into()]),
                bos_id: Some(0),
                ..Default::default()
            };
            let tok = Tokenizer::from_gguf(&v).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(tok.warnings().is_empty(), "{name}: {:?}", tok.warnings());
            // Digits split one by one for some, merge for others; either way the text survives.
            let ids = tok.encode("12", false).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), "12", "{name}");
        }
    }

    /// Regression: merges were cut at a byte offset inside "Ġ" (two bytes in UTF-8).
    #[test]
    fn merge_whose_left_piece_is_multibyte() {
        let v = GgufVocab {
            model: "gpt2".into(),
            pre: Some("gpt-2".into()),
            tokens: vec!["Ġ".into(), "t".into(), "Ġt".into()],
            merges: Some(vec!["Ġ t".into()]),
            ..Default::default()
        };
        let tok = Tokenizer::from_gguf(&v).unwrap();
        assert_eq!(tok.encode(" t", false).unwrap(), vec![2]);
    }
}
