//! Perplexity and bits per byte of text files, over llama.cpp's chunks or a Hugging Face-style sliding window.
//!
//! Two protocols, so figures compare with the tool people check against:
//! - no `--stride`: llama.cpp's `llama-perplexity` (what `meditron perplexity` did so far):
//!   disjoint chunks of `ctx` tokens, the first token of each replaced by BOS when the model
//!   adds one, only the second half of each chunk scored;
//! - `--stride S`: the sliding window of Hugging Face's perplexity guide: windows of `ctx`
//!   tokens starting every `S` tokens, each scoring only the tokens no earlier window scored
//!   (every token of the text but the first, when `S <= ctx`).
//!
//! Bits per byte divide the scored tokens' negative log-likelihood, in bits, by the UTF-8
//! bytes those tokens cover, so it compares across tokenizers.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::PathBuf;

/// What perplexity needs from a model.
pub trait TokenScorer {
    /// Token ids of `text` (with BOS first if the model adds one) and, for each token, the byte
    /// offset in `text` where it ends (0 for BOS and other special tokens).
    fn tokenize(&mut self, text: &str) -> anyhow::Result<(Vec<u32>, Vec<usize>)>;
    /// The BOS id when the model adds one (llama.cpp's protocol puts it at each chunk start).
    fn bos(&self) -> Option<u32>;
    /// For each window (tokens, first scored position), the log-probability of `tokens[i]`
    /// given `tokens[..i]`, for `i` in `first..tokens.len()`. Windows are independent
    /// sequences (each starts from an empty cache).
    fn score(&mut self, windows: &[(Vec<u32>, usize)]) -> anyhow::Result<Vec<Vec<f64>>>;
    fn model_id(&self) -> String;
}

/// One window of the plan: the token ids fed to the model and the positions scored.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub tokens: Vec<u32>,
    /// Position in `tokens` of the first scored token.
    pub first: usize,
    /// Index in the text's token list of `tokens[0]`.
    pub offset: usize,
}

/// The windows for `ids`: llama.cpp chunks without `stride`, sliding windows with it.
pub fn plan_windows(
    ids: &[u32],
    ctx: usize,
    stride: Option<usize>,
    bos: Option<u32>,
) -> anyhow::Result<Vec<Window>> {
    if ctx < 4 {
        bail!("--ctx must be at least 4 tokens");
    }
    let n = ids.len();
    let mut out = Vec::new();
    match stride {
        None => {
            for c in 0..n / ctx {
                let mut tokens = ids[c * ctx..(c + 1) * ctx].to_vec();
                if let Some(b) = bos {
                    tokens[0] = b;
                }
                out.push(Window {
                    tokens,
                    first: ctx / 2 + 1,
                    offset: c * ctx,
                });
            }
        }
        Some(s) => {
            if s == 0 || s > ctx {
                bail!("--stride must be between 1 and --ctx ({ctx})");
            }
            let (mut begin, mut prev_end) = (0, 0);
            while begin < n {
                let end = (begin + ctx).min(n);
                let first = prev_end.max(begin + 1) - begin;
                if first < end - begin {
                    out.push(Window {
                        tokens: ids[begin..end].to_vec(),
                        first,
                        offset: begin,
                    });
                }
                prev_end = end;
                if end == n {
                    break;
                }
                begin += s;
            }
        }
    }
    Ok(out)
}

/// Perplexity of one file (or of all files together).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerplexityScore {
    pub name: String,
    pub tokens: usize,
    pub scored_tokens: usize,
    pub scored_bytes: usize,
    /// Summed negative log-likelihood in nats.
    pub nll: f64,
    pub ppl: f64,
    pub bits_per_byte: f64,
}

impl PerplexityScore {
    fn new(
        name: String,
        tokens: usize,
        scored_tokens: usize,
        scored_bytes: usize,
        nll: f64,
    ) -> Self {
        PerplexityScore {
            name,
            tokens,
            scored_tokens,
            scored_bytes,
            nll,
            ppl: if scored_tokens > 0 {
                (nll / scored_tokens as f64).exp()
            } else {
                f64::NAN
            },
            bits_per_byte: if scored_bytes > 0 {
                nll / std::f64::consts::LN_2 / scored_bytes as f64
            } else {
                f64::NAN
            },
        }
    }
}

/// The perplexity report: per file and over all files (token-weighted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerplexityReport {
    pub model_id: String,
    pub ctx: usize,
    /// `None`: llama.cpp's protocol.
    pub stride: Option<usize>,
    pub files: Vec<PerplexityScore>,
    pub total: PerplexityScore,
}

impl PerplexityReport {
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let protocol = match self.stride {
            None => "llama.cpp chunks (second half scored)".to_string(),
            Some(s) => format!("sliding window, stride {s}"),
        };
        let _ = writeln!(
            md,
            "perplexity of {}: ctx {}, {protocol}\n",
            self.model_id, self.ctx
        );
        let _ = writeln!(md, "| file | tokens | scored | PPL | bits/byte |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for f in self
            .files
            .iter()
            .chain(std::iter::once(&self.total).filter(|_| self.files.len() > 1))
        {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.4} | {:.4} |",
                f.name, f.tokens, f.scored_tokens, f.ppl, f.bits_per_byte
            );
        }
        md
    }
}

/// Flags of `meditron perplexity` beyond the model's.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct PerplexityArgs {
    /// Text files to score
    pub files: Vec<PathBuf>,
    /// A text file to score (as llama-perplexity's -f; may be repeated)
    #[arg(long = "file", short = 'f', value_name = "FILE")]
    pub file: Vec<PathBuf>,
    /// Tokens per window
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Slide windows by this many tokens (default: llama.cpp's disjoint chunks, second half scored)
    #[arg(long)]
    pub stride: Option<usize>,
    /// Score at most this many windows of each file
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Windows per model call
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Write the JSON report here
    #[arg(long, value_name = "OUT")]
    pub json: Option<PathBuf>,
}

/// Scores every file of `args` and returns the report (progress: one `start` per file).
pub fn run_perplexity(
    scorer: &mut dyn TokenScorer,
    args: &PerplexityArgs,
    progress: &mut dyn crate::run::ProgressSink,
) -> anyhow::Result<PerplexityReport> {
    let paths: Vec<&PathBuf> = args.files.iter().chain(&args.file).collect();
    if paths.is_empty() {
        bail!("no text to score: name files as arguments or with --file");
    }
    let mut files = Vec::new();
    let (mut all_tokens, mut all_scored, mut all_bytes, mut all_nll) = (0, 0, 0, 0.0);
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let (ids, ends) = scorer
            .tokenize(&text)
            .with_context(|| format!("tokenizing {}", path.display()))?;
        if ids.len() != ends.len() {
            bail!(
                "the tokenizer gave {} offsets for {} tokens",
                ends.len(),
                ids.len()
            );
        }
        let mut windows = plan_windows(&ids, args.ctx, args.stride, scorer.bos())?;
        windows.truncate(args.chunks.unwrap_or(usize::MAX));
        if windows.is_empty() {
            bail!(
                "{} has {} tokens: too few for --ctx {}",
                path.display(),
                ids.len(),
                args.ctx
            );
        }
        progress.start(&path.display().to_string(), windows.len(), 0);
        let (mut nll, mut scored, mut bytes) = (0.0, 0, 0);
        for chunk in windows.chunks(args.batch_size.max(1)) {
            let req: Vec<(Vec<u32>, usize)> =
                chunk.iter().map(|w| (w.tokens.clone(), w.first)).collect();
            let lps = scorer.score(&req)?;
            if lps.len() != chunk.len() {
                bail!("the model scored {} windows of {}", lps.len(), chunk.len());
            }
            for (w, lp) in chunk.iter().zip(&lps) {
                if lp.len() != w.tokens.len() - w.first {
                    bail!(
                        "the model gave {} log-probabilities for {} scored positions",
                        lp.len(),
                        w.tokens.len() - w.first
                    );
                }
                nll -= lp.iter().sum::<f64>();
                scored += lp.len();
                for i in w.offset + w.first..w.offset + w.tokens.len() {
                    let start = if i == 0 { 0 } else { ends[i - 1] };
                    bytes += ends[i].saturating_sub(start);
                }
            }
            progress.advance(chunk.len());
        }
        progress.finish();
        let name = path.display().to_string();
        files.push(PerplexityScore::new(name, ids.len(), scored, bytes, nll));
        (all_tokens, all_scored, all_bytes, all_nll) = (
            all_tokens + ids.len(),
            all_scored + scored,
            all_bytes + bytes,
            all_nll + nll,
        );
    }
    let report = PerplexityReport {
        model_id: scorer.model_id(),
        ctx: args.ctx,
        stride: args.stride,
        files,
        total: PerplexityScore::new(
            "all files".into(),
            all_tokens,
            all_scored,
            all_bytes,
            all_nll,
        ),
    };
    if let Some(out) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(out, text + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::NoProgress;

    #[test]
    fn llama_cpp_chunks_score_second_halves() {
        let ids: Vec<u32> = (10..30).collect();
        let w = plan_windows(&ids, 8, None, Some(1)).unwrap();
        assert_eq!(w.len(), 2, "20 tokens make two whole chunks of 8");
        assert_eq!(w[0].tokens, [1, 11, 12, 13, 14, 15, 16, 17]);
        assert_eq!((w[0].first, w[1].offset), (5, 8));
        assert_eq!(plan_windows(&ids, 8, None, None).unwrap()[1].tokens[0], 18);
    }

    #[test]
    fn sliding_windows_score_each_token_once() {
        let ids: Vec<u32> = (0..10).collect();
        for (ctx, stride) in [(4, 2), (5, 3), (10, 10), (16, 1), (4, 1)] {
            let w = plan_windows(&ids, ctx, Some(stride), None).unwrap();
            let mut scored: Vec<usize> = w
                .iter()
                .flat_map(|w| w.offset + w.first..w.offset + w.tokens.len())
                .collect();
            scored.sort();
            let expected: Vec<usize> = (1..10).collect();
            assert_eq!(scored, expected, "ctx {ctx} stride {stride}");
            assert!(w.iter().all(|w| w.tokens.len() <= ctx && w.first >= 1));
        }
        // stride == ctx: disjoint windows, whose first tokens have no context (as in HF's guide).
        let w = plan_windows(&ids, 4, Some(4), None).unwrap();
        let scored: Vec<usize> = w
            .iter()
            .flat_map(|w| w.offset + w.first..w.offset + w.tokens.len())
            .collect();
        assert_eq!(scored, [1, 2, 3, 5, 6, 7, 9]);
        assert!(plan_windows(&ids, 4, Some(5), None).is_err());
        assert!(plan_windows(&ids, 4, Some(0), None).is_err());
    }

    /// Every token has probability 1/2 and is 2 bytes long: PPL 2, 0.5 bits per byte.
    struct Halves;

    impl TokenScorer for Halves {
        fn tokenize(&mut self, text: &str) -> anyhow::Result<(Vec<u32>, Vec<usize>)> {
            let n = text.len() / 2;
            Ok(((0..n as u32).collect(), (1..=n).map(|i| 2 * i).collect()))
        }
        fn bos(&self) -> Option<u32> {
            None
        }
        fn score(&mut self, windows: &[(Vec<u32>, usize)]) -> anyhow::Result<Vec<Vec<f64>>> {
            Ok(windows
                .iter()
                .map(|(t, f)| vec![-std::f64::consts::LN_2; t.len() - f])
                .collect())
        }
        fn model_id(&self) -> String {
            "halves".into()
        }
    }

    #[test]
    fn ppl_and_bits_per_byte_over_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.txt");
        std::fs::write(&a, "x".repeat(40)).unwrap();
        std::fs::write(&b, "y".repeat(64)).unwrap();
        let out = dir.path().join("ppl.json");
        let args = PerplexityArgs {
            files: vec![a],
            file: vec![b],
            ctx: 8,
            stride: Some(4),
            chunks: None,
            batch_size: 3,
            json: Some(out.clone()),
        };
        let r = run_perplexity(&mut Halves, &args, &mut NoProgress).unwrap();
        assert_eq!(r.files[0].tokens, 20);
        assert_eq!(r.files[0].scored_tokens, 19);
        assert_eq!(r.files[0].scored_bytes, 38);
        assert!((r.files[0].ppl - 2.0).abs() < 1e-12);
        assert!((r.total.bits_per_byte - 0.5).abs() < 1e-12);
        assert_eq!(r.total.scored_tokens, 19 + 31);
        assert!(r
            .to_markdown()
            .contains("| all files | 52 | 50 | 2.0000 | 0.5000 |"));
        assert!(std::fs::read_to_string(out)
            .unwrap()
            .contains("\"bits_per_byte\": 0.5"));
        let short = PerplexityArgs {
            ctx: 64,
            stride: None,
            json: None,
            ..args
        };
        assert!(run_perplexity(&mut Halves, &short, &mut NoProgress)
            .unwrap_err()
            .to_string()
            .contains("too few for --ctx 64"));
        let two = PerplexityArgs {
            ctx: 8,
            chunks: Some(2),
            ..short.clone()
        };
        let r = run_perplexity(&mut Halves, &two, &mut NoProgress).unwrap();
        assert_eq!(
            r.files[1].scored_tokens,
            2 * 3,
            "two llama.cpp chunks of 8 score 3 each"
        );
        let none = PerplexityArgs {
            files: vec![],
            file: vec![],
            ..two
        };
        assert!(run_perplexity(&mut Halves, &none, &mut NoProgress)
            .unwrap_err()
            .to_string()
            .contains("no text to score"));
    }
}
