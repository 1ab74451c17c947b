//! Calibration data: documents from plain text, JSONL (`text` field) or a directory of such
//! files, tokenized and joined, then `samples` windows of `seq_len` tokens at seeded random
//! offsets.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The documents of `path`: a `.jsonl` file gives one per line (its `text` field), any other
/// file one document, a directory the documents of its files (sorted by name, not recursive,
/// hidden files skipped).
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let meta = std::fs::metadata(path).with_context(|| format!("dataset {}", path.display()))?;
    let files: Vec<PathBuf> = if meta.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        v.sort();
        if v.is_empty() {
            bail!("dataset directory {} holds no files", path.display());
        }
        v
    } else {
        vec![path.to_owned()]
    };
    let mut docs = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).with_context(|| {
            format!("reading dataset file {} (UTF-8 text expected)", f.display())
        })?;
        if f.extension().is_some_and(|e| e == "jsonl") {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{} line {}: not JSON", f.display(), i + 1))?;
                match v.get("text").and_then(|t| t.as_str()) {
                    Some(t) => docs.push(t.to_owned()),
                    None => bail!("{} line {}: no string field \"text\"", f.display(), i + 1),
                }
            }
        } else {
            docs.push(text);
        }
    }
    docs.retain(|d| !d.trim().is_empty());
    if docs.is_empty() {
        bail!("dataset {} holds no text", path.display());
    }
    Ok(docs)
}

/// splitmix64: a small, well-mixed generator; the same seed gives the same windows.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection so that no value is favoured.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
}

/// Joins tokenized documents, each followed by `sep` (the end-of-text token) when given.
pub fn join_tokens(docs: Vec<Vec<u32>>, sep: Option<u32>) -> Vec<u32> {
    let mut all = Vec::with_capacity(docs.iter().map(|d| d.len() + 1).sum());
    for d in docs {
        all.extend(d);
        all.extend(sep);
    }
    all
}

/// `samples` windows of `seq_len` consecutive tokens at uniform random offsets of `tokens`.
pub fn windows(tokens: &[u32], samples: usize, seq_len: usize, seed: u64) -> Result<Vec<Vec<u32>>> {
    if samples == 0 || seq_len == 0 {
        bail!("--samples and --seq-len must be at least 1");
    }
    if tokens.len() < seq_len {
        bail!(
            "the dataset has {} tokens, fewer than one window of --seq-len {seq_len}",
            tokens.len()
        );
    }
    let mut rng = SplitMix(seed);
    let starts = (tokens.len() - seq_len + 1) as u64;
    Ok((0..samples)
        .map(|_| {
            let s = rng.below(starts) as usize;
            tokens[s..s + seq_len].to_vec()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_text_jsonl_and_directories() {
        let dir = std::env::temp_dir().join(format!("quantize-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.txt"), "plain document").unwrap();
        std::fs::write(
            dir.join("b.jsonl"),
            "{\"text\": \"one\"}\n\n{\"text\": \"two\", \"id\": 3}\n",
        )
        .unwrap();
        std::fs::write(dir.join(".hidden"), "skipped").unwrap();
        let docs = read_documents(&dir).unwrap();
        assert_eq!(docs, ["plain document", "one", "two"]);
        assert_eq!(
            read_documents(&dir.join("b.jsonl")).unwrap(),
            ["one", "two"]
        );
        std::fs::write(dir.join("bad.jsonl"), "{\"body\": 1}\n").unwrap();
        let e = read_documents(&dir.join("bad.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("\"text\""), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_documents(&dir).is_err());
    }

    #[test]
    fn windows_are_seeded_and_in_range() {
        let toks: Vec<u32> = (0..1000).collect();
        let a = windows(&toks, 16, 100, 7).unwrap();
        assert_eq!(a, windows(&toks, 16, 100, 7).unwrap());
        assert_ne!(a, windows(&toks, 16, 100, 8).unwrap());
        for w in &a {
            assert_eq!(w.len(), 100);
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
        }
        assert!(windows(&toks, 1, 1001, 0)
            .unwrap_err()
            .to_string()
            .contains("1000 tokens"));
        assert_eq!(
            join_tokens(vec![vec![1, 2], vec![3]], Some(0)),
            [1, 2, 0, 3, 0]
        );
    }
}
