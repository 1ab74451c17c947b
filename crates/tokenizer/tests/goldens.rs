//! Golden tests against implementations we did not write: Hugging Face transformers
//! (testdata/*_goldens.json, from tools/make_goldens.py) and llama.cpp's own tokenizer test
//! vectors (testdata/ggml-vocab-llama-spm.gguf.{inp,out}). Ids must match exactly.
//!
//! The Llama SentencePiece vocabulary is committed (gzipped), so those tests always run. The
//! SmolLM2 GGUF (the default model, 98 MB) and the saved tokenizer.json directories are not:
//! tests that need them print why they skip.

mod common;

use common::*;
use serde::Deserialize;
use std::path::Path;
use tokenizer::{ChatTemplate, IncrementalDecoder, Message, Tokenizer};

#[derive(Deserialize)]
struct Fixture {
    vocab_size: usize,
    cases: Vec<Case>,
    #[serde(default)]
    templates: std::collections::HashMap<String, String>,
    #[serde(default)]
    chat: Vec<ChatCase>,
    #[serde(default)]
    eos_token: Option<String>,
    #[serde(default)]
    bos_token: Option<String>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    with_special: Vec<u32>,
    decoded: String,
    decoded_skip: String,
}

#[derive(Deserialize)]
struct ChatCase {
    template: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    text: Option<String>,
    error: Option<String>,
}

fn fixture(name: &str) -> Fixture {
    let text = std::fs::read_to_string(testdata(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every case: ids with and without specials, both decodes, and streaming equals decoding.
/// Returns the failures, so one run reports them all.
fn check_cases(tok: &Tokenizer, fx: &Fixture, what: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for c in &fx.cases {
        let ids = tok.encode(&c.text, false).unwrap();
        if ids != c.ids {
            bad.push(format!(
                "{what}: encode {:?}: got {ids:?}, transformers {:?}",
                c.text, c.ids
            ));
        }
        let with = tok.encode(&c.text, true).unwrap();
        if with != c.with_special {
            bad.push(format!(
                "{what}: encode+special {:?}: got {with:?}, transformers {:?}",
                c.text, c.with_special
            ));
        }
        for (skip, want) in [(false, &c.decoded), (true, &c.decoded_skip)] {
            let got = tok.decode(&c.ids, skip).unwrap();
            if &got != want {
                bad.push(format!(
                    "{what}: decode(skip={skip}) {:?}: got {got:?}, transformers {want:?}",
                    c.text
                ));
            }
            let mut d = IncrementalDecoder::new(tok, skip);
            let mut streamed: String = c.ids.iter().map(|&id| d.push(id).unwrap()).collect();
            streamed.push_str(&d.finish().unwrap());
            if &streamed != want {
                bad.push(format!(
                    "{what}: stream(skip={skip}) {:?}: got {streamed:?}, want {want:?}",
                    c.text
                ));
            }
        }
    }
    bad
}

fn assert_none(bad: Vec<String>, total: usize) {
    assert!(
        bad.is_empty(),
        "{} of {total} golden checks failed:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

fn llama_spm() -> Tokenizer {
    let v = vocab_from_gguf(&testdata("ggml-vocab-llama-spm.gguf.gz"));
    Tokenizer::from_gguf(&v).unwrap()
}

#[test]
fn llama_spm_gguf_matches_transformers() {
    let tok = llama_spm();
    let fx = fixture("llama_spm_goldens.json");
    assert_eq!(tok.vocab_size(), fx.vocab_size);
    assert_eq!(
        (tok.bos_id(), tok.add_bos(), tok.eos_ids()),
        (Some(1), true, &[2][..])
    );
    assert!(tok.warnings().is_empty(), "{:?}", tok.warnings());
    assert_none(check_cases(&tok, &fx, "llama-spm gguf"), fx.cases.len());
}

#[test]
fn llama_spm_gguf_matches_llama_cpp_vectors() {
    let tok = llama_spm();
    let vectors = llama_cpp_vectors(&testdata("ggml-vocab-llama-spm.gguf"));
    let bad: Vec<String> = vectors
        .iter()
        .filter_map(|(text, want)| {
            let got = tok.encode(text, false).unwrap();
            (&got != want).then(|| format!("{text:?}: got {got:?}, llama.cpp {want:?}"))
        })
        .collect();
    assert_none(bad, vectors.len());
}

#[test]
fn llama_spm_hf_dir_matches_transformers() {
    let Some(dir) = hf_dir("llama-spm") else {
        eprintln!(
            "skipped: run tools/make_goldens.py to save /tmp/meditron-tokenizer-hf/llama-spm"
        );
        return;
    };
    let tok = Tokenizer::from_hf_dir(&dir).unwrap();
    let fx = fixture("llama_spm_goldens.json");
    assert_eq!(tok.vocab_size(), fx.vocab_size);
    assert_none(
        check_cases(&tok, &fx, "llama-spm tokenizer.json"),
        fx.cases.len(),
    );
}

fn smollm2_checks(tok: &Tokenizer, what: &str) {
    let fx = fixture("smollm2_goldens.json");
    assert_eq!(tok.vocab_size(), fx.vocab_size);
    assert_eq!(tok.bos_token(), fx.bos_token);
    assert_eq!(tok.eos_token(), fx.eos_token);
    assert!(!tok.add_bos());
    // <|im_end|> is the EOS; <|endoftext|> also ends generation (llama.cpp's EOG set).
    assert_eq!(tok.eos_ids(), &[2, 0]);
    assert!(tok.is_special(1) && tok.is_special(2) && !tok.is_special(17));
    assert_eq!(tok.id_to_token(28).as_deref(), Some(","));
    assert_eq!(tok.token_to_id("Ġthe"), Some(260));
    assert_none(check_cases(tok, &fx, what), fx.cases.len());
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let Some(path) = default_gguf() else {
        eprintln!("skipped: SmolLM2 GGUF not found (set MEDITRON_DEFAULT_GGUF)");
        return;
    };
    let v = vocab_from_gguf(&path);
    assert_eq!(v.pre.as_deref(), Some("smollm"));
    let tok = Tokenizer::from_gguf(&v).unwrap();
    assert!(tok.warnings().is_empty(), "{:?}", tok.warnings());
    assert_eq!(
        tok.chat_template(),
        fixture("smollm2_goldens.json")
            .templates
            .get("model")
            .map(String::as_str)
    );
    smollm2_checks(&tok, "smollm2 gguf");
}

#[test]
fn smollm2_hf_dir_matches_transformers() {
    let Some(dir) = hf_dir("smollm2") else {
        eprintln!("skipped: run tools/make_goldens.py to save /tmp/meditron-tokenizer-hf/smollm2");
        return;
    };
    let tok = Tokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(
        tok.chat_template(),
        fixture("smollm2_goldens.json")
            .templates
            .get("model")
            .map(String::as_str)
    );
    smollm2_checks(&tok, "smollm2 tokenizer.json");
}

#[test]
fn chat_templates_render_like_transformers() {
    let fx = fixture("smollm2_goldens.json");
    let (bos, eos) = (
        fx.bos_token.unwrap_or_default(),
        fx.eos_token.unwrap_or_default(),
    );
    let mut bad = Vec::new();
    for c in &fx.chat {
        let t = ChatTemplate::new(&fx.templates[&c.template]).unwrap();
        match (
            t.render(&c.messages, c.add_generation_prompt, &bos, &eos),
            &c.text,
            &c.error,
        ) {
            (Ok(got), Some(want), _) if &got == want => {}
            (Err(e), None, Some(want)) if e.to_string().contains(want.as_str()) => {}
            (got, want, err) => bad.push(format!(
                "{} gen={}: got {got:?}, transformers {want:?} / {err:?}",
                c.template, c.add_generation_prompt
            )),
        }
    }
    assert_none(bad, fx.chat.len());
}

/// The ChatML fallback and the model's own template agree once a system message is given, and
/// the rendered prompt tokenizes with the markers as single special tokens.
#[test]
fn smollm2_chat_prompt_tokenizes_with_special_markers() {
    let Some(path) = default_gguf() else {
        eprintln!("skipped: SmolLM2 GGUF not found (set MEDITRON_DEFAULT_GGUF)");
        return;
    };
    let tok = Tokenizer::from_gguf(&vocab_from_gguf(&path)).unwrap();
    let own = ChatTemplate::new(tok.chat_template().unwrap()).unwrap();
    let msgs = [
        Message::new("system", "Be brief."),
        Message::new("user", "What is 2+2?"),
    ];
    let a = own.render(&msgs, true, "", "").unwrap();
    let b = ChatTemplate::chatml().render(&msgs, true, "", "").unwrap();
    assert_eq!(a, b);
    let ids = tok.encode(&a, true).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
    assert_eq!(tok.decode(&ids, false).unwrap(), a);
}

/// Optional: every llama.cpp test vocabulary we can build (tools/fetch_llama_cpp_vocabs.sh puts
/// them in /tmp/meditron-llama-vocabs, or MEDITRON_LLAMA_VOCABS).
#[test]
fn llama_cpp_vocab_vectors() {
    let dir = std::env::var_os("MEDITRON_LLAMA_VOCABS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new("/tmp/meditron-llama-vocabs").to_path_buf());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: no llama.cpp vocabularies in {}", dir.display());
        return;
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let mut report = Vec::new();
    let mut bad = Vec::new();
    for vocab in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
    {
        let out = vocab.with_extension("gguf.out");
        if !out.exists() {
            continue;
        }
        let v = vocab_from_gguf(vocab);
        let name = vocab.file_name().unwrap().to_string_lossy().into_owned();
        if v.model != "gpt2" && v.model != "llama" {
            report.push(format!("{name}: model {} not supported", v.model));
            continue;
        }
        let tok = match Tokenizer::from_gguf(&v) {
            Ok(t) => t,
            Err(e) => {
                bad.push(format!("{name}: {e}"));
                continue;
            }
        };
        let vectors = llama_cpp_vectors(vocab);
        let mut fails = 0;
        for (text, want) in &vectors {
            let got = tok.encode(text, false).unwrap();
            if &got != want {
                fails += 1;
                if tok.warnings().is_empty() {
                    bad.push(format!("{name} {text:?}: got {got:?}, llama.cpp {want:?}"));
                }
            }
        }
        report.push(format!(
            "{name} (pre {:?}): {}/{} match{}",
            v.pre,
            vectors.len() - fails,
            vectors.len(),
            if tok.warnings().is_empty() {
                String::new()
            } else {
                format!(" [{}]", tok.warnings().join("; "))
            }
        ));
    }
    eprintln!("{}", report.join("\n"));
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Offsets: the same ids as `encode`, and token ends that walk through the text's bytes.
#[test]
fn offsets_cover_the_text_in_order() {
    let tok = llama_spm();
    for text in [
        "Hello world",
        " The patient\u{2019}s BP was 120/80 \u{2014} stable.\n\nNext",
        "\u{1F600} a",
    ] {
        let (ids, ends) = tok.encode_with_offsets(text, true).unwrap();
        assert_eq!(ids, tok.encode(text, true).unwrap(), "{text:?}");
        assert_eq!(ids.len(), ends.len());
        assert!(ends.windows(2).all(|w| w[0] <= w[1]), "{text:?}: {ends:?}");
        assert_eq!(*ends.last().unwrap(), text.len(), "{text:?}: {ends:?}");
    }
}

/// Token bytes concatenate to the text's bytes (SentencePiece: after the prefix space).
#[test]
fn token_bytes_spell_the_text() {
    let tok = llama_spm();
    let table = tok.token_bytes();
    assert_eq!(table.len(), tok.vocab_size());
    for text in ["Hello world", "caf\u{e9} \u{1F600}\n\t{\"a\": 1}"] {
        let ids = tok.encode(text, false).unwrap();
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| table[i as usize].clone())
            .collect();
        assert_eq!(
            bytes,
            format!(" {text}").into_bytes(),
            "{text:?} as {ids:?}"
        );
    }
}
