//! `meditron eval` flags (clap), checked and turned into `EvalOptions`, and a one-call runner for the CLI.

use crate::backend::Backend;
use crate::dataset::{CopBase, LoadOptions, Task};
use crate::openai::OpenAiBackend;
use crate::prompts::Template;
use crate::report::Report;
use crate::run::{run_eval, EvalOptions, Mode, PartialFile, TextProgress};
use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Which benchmark(s) to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskArg {
    Pubmedqa,
    Medmcqa,
    Medqa,
    Medqa4,
    MmluMedical,
    All,
}

/// How generation prompts are wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TemplateArg {
    /// Plain text for base models.
    Plain,
    /// `<|im_start|>question ... <|im_start|>answer`, for the fine-tuned Meditron models.
    ImStart,
}

/// `meditron eval`: the Meditron paper's medical benchmarks.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct EvalArgs {
    /// Benchmark to run (`all`: every task that has files under --data)
    #[arg(long, value_enum, default_value = "all")]
    pub task: TaskArg,
    /// loglik: lm-eval's option likelihoods; generate: Meditron's prompts; cot; sc-cot
    #[arg(long, value_enum, default_value = "loglik")]
    pub mode: Mode,
    /// A benchmark file or a folder holding them (found by content and name)
    #[arg(long)]
    pub data: PathBuf,
    /// Few-shot demonstrations per question
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// Seeds for the few-shot draw and sampling; results are pooled over seeds
    #[arg(long, value_delimiter = ',', default_value = "1234,432,32")]
    pub seeds: Vec<u64>,
    /// Evaluate only the first N questions of each task (of each MMLU subject)
    #[arg(long)]
    pub limit: Option<usize>,
    /// Evaluate an OpenAI-compatible server (its /v1/completions) instead of the local model
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Model name to send to --endpoint (default: the server's first /v1/models entry)
    #[arg(long, requires = "endpoint")]
    pub endpoint_model: Option<String>,
    /// Write the JSON report here (and keep partial results in OUT.partial.jsonl)
    #[arg(long, value_name = "OUT")]
    pub json: Option<PathBuf>,
    /// Sampling temperature (default 0.8 for sc-cot, greedy otherwise)
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Chains of thought sampled per question in sc-cot
    #[arg(long)]
    pub samples: Option<usize>,
    /// Generation budget (default 16, or 512 with chain of thought)
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Resume from (and append to) this partial-results file
    #[arg(long, value_name = "FILE")]
    pub resume: Option<PathBuf>,
    /// Prompt wrapping for generate/cot/sc-cot
    #[arg(long, value_enum, default_value = "plain")]
    pub template: TemplateArg,
    /// MedMCQA `cop` base when the file cannot tell (0: Hugging Face copy, 1: raw release)
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub cop_base: Option<u8>,
    /// Questions per model call
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

impl EvalArgs {
    /// Checks flag combinations and builds the run's options.
    pub fn to_options(&self) -> anyhow::Result<EvalOptions> {
        let cot = matches!(self.mode, Mode::Cot | Mode::ScCot);
        if self.mode == Mode::Loglik {
            if self.template != TemplateArg::Plain {
                bail!("--template im-start applies to generate, cot and sc-cot; loglik uses lm-eval's prompts");
            }
            if self.temperature.is_some() || self.max_new_tokens.is_some() {
                bail!("--temperature and --max-new-tokens apply to generate, cot and sc-cot, not loglik");
            }
        }
        if self.samples.is_some() && self.mode != Mode::ScCot {
            bail!("--samples applies to --mode sc-cot");
        }
        let temperature =
            self.temperature
                .unwrap_or(if self.mode == Mode::ScCot { 0.8 } else { 0.0 });
        if !(0.0..=5.0).contains(&temperature) {
            bail!("--temperature {temperature}: expected 0 to 5");
        }
        if self.mode == Mode::ScCot && temperature == 0.0 {
            bail!(
                "sc-cot samples several chains: --temperature must be above 0 (the paper uses 0.8)"
            );
        }
        let samples = self.samples.unwrap_or(5);
        if samples == 0 {
            bail!("--samples must be at least 1");
        }
        if self.seeds.is_empty() {
            bail!("--seeds needs at least one seed");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.limit == Some(0) {
            bail!("--limit must be at least 1");
        }
        let max_new_tokens = self.max_new_tokens.unwrap_or(if cot { 512 } else { 16 });
        if max_new_tokens == 0 {
            bail!("--max-new-tokens must be at least 1");
        }
        let tasks = match self.task {
            TaskArg::All => Task::ALL.to_vec(),
            TaskArg::Pubmedqa => vec![Task::Pubmedqa],
            TaskArg::Medmcqa => vec![Task::Medmcqa],
            TaskArg::Medqa => vec![Task::Medqa],
            TaskArg::Medqa4 => vec![Task::Medqa4],
            TaskArg::MmluMedical => vec![Task::MmluMedical],
        };
        let partial = match (&self.resume, &self.json) {
            (Some(p), _) => Some(PartialFile {
                path: p.clone(),
                explicit: true,
            }),
            (None, Some(out)) => {
                let mut name = out.as_os_str().to_owned();
                name.push(".partial.jsonl");
                Some(PartialFile {
                    path: PathBuf::from(name),
                    explicit: false,
                })
            }
            (None, None) => None,
        };
        Ok(EvalOptions {
            tasks,
            skip_missing: self.task == TaskArg::All,
            mode: self.mode,
            template: match self.template {
                TemplateArg::Plain => Template::Plain,
                TemplateArg::ImStart => Template::ImStart,
            },
            data: self.data.clone(),
            shots: self.shots,
            seeds: self.seeds.clone(),
            limit: self.limit,
            temperature,
            samples,
            max_new_tokens,
            batch_size: self.batch_size,
            load: LoadOptions {
                cop_base: self
                    .cop_base
                    .map(|b| if b == 0 { CopBase::Zero } else { CopBase::One }),
                skip_pool: self.shots == 0,
            },
            partial,
            model_file_hash: None,
            endpoint: self.endpoint.clone(),
        })
    }
}

/// `meditron eval` in one call: evaluates `--endpoint` if given, else the backend `local`
/// builds (called only then, so no model is loaded for a remote run); shows progress on
/// stderr, writes `--json`, prints the markdown table on stdout and returns the report.
pub fn run_from_args(
    args: &EvalArgs,
    local: impl FnOnce() -> anyhow::Result<(Box<dyn Backend>, Option<String>)>,
) -> anyhow::Result<Report> {
    let mut opts = args.to_options()?;
    let mut backend: Box<dyn Backend> = match &args.endpoint {
        Some(url) => Box::new(
            OpenAiBackend::connect(url, args.endpoint_model.clone())?
                .with_batch_size(args.batch_size),
        ),
        None => {
            let (backend, hash) = local()?;
            opts.model_file_hash = hash;
            backend
        }
    };
    let report = run_eval(backend.as_mut(), &opts, &mut TextProgress::default())?;
    if let Some(out) = &args.json {
        report.write_json(out)?;
    }
    println!("{}", report.to_markdown());
    Ok(report)
}

/// SHA-256 of a model: of the file itself, or, for several files (shards, a folder's
/// safetensors), of the lines `"<sha256>  <file name>\n"` in the order given.
pub fn hash_files(paths: &[PathBuf]) -> anyhow::Result<String> {
    let one = |p: &Path| -> anyhow::Result<String> {
        let mut f = std::fs::File::open(p).with_context(|| format!("hashing {}", p.display()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("hashing {}", p.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex(&h.finalize()))
    };
    match paths {
        [] => bail!("no model file to hash"),
        [p] => one(p),
        many => {
            let mut h = Sha256::new();
            for p in many {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                h.update(format!("{}  {name}\n", one(p)?).as_bytes());
            }
            Ok(hex(&h.finalize()))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        eval: EvalArgs,
    }

    fn parse(args: &[&str]) -> Result<EvalArgs, clap::Error> {
        let mut full = vec!["meditron"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| c.eval)
    }

    #[test]
    fn defaults_and_flags() {
        let a = parse(&["--data", "d"]).unwrap();
        let o = a.to_options().unwrap();
        assert_eq!(o.tasks, Task::ALL.to_vec());
        assert!(o.skip_missing);
        assert_eq!(o.mode, Mode::Loglik);
        assert_eq!(o.seeds, [1234, 432, 32]);
        assert!(o.partial.is_none());

        let a = parse(&[
            "--data",
            "d",
            "--task",
            "mmlu-medical",
            "--mode",
            "sc-cot",
            "--shots",
            "3",
            "--seeds",
            "7,8",
            "--limit",
            "20",
            "--json",
            "out.json",
            "--samples",
            "4",
            "--template",
            "im-start",
            "--cop-base",
            "1",
        ])
        .unwrap();
        let o = a.to_options().unwrap();
        assert_eq!(o.tasks, [Task::MmluMedical]);
        assert!(!o.skip_missing);
        assert_eq!((o.temperature, o.samples, o.max_new_tokens), (0.8, 4, 512));
        assert_eq!(o.seeds, [7, 8]);
        assert_eq!(o.template, Template::ImStart);
        assert_eq!(o.load.cop_base, Some(CopBase::One));
        assert_eq!(
            o.partial,
            Some(PartialFile {
                path: "out.json.partial.jsonl".into(),
                explicit: false
            })
        );

        let o = parse(&["--data", "d", "--resume", "p.jsonl", "--json", "o.json"])
            .unwrap()
            .to_options()
            .unwrap();
        assert_eq!(
            o.partial,
            Some(PartialFile {
                path: "p.jsonl".into(),
                explicit: true
            })
        );
    }

    #[test]
    fn rejects_contradictions() {
        let bad = |args: &[&str]| {
            parse(args)
                .map_err(|e| e.to_string())
                .and_then(|a| a.to_options().map_err(|e| e.to_string()))
        };
        assert!(bad(&["--data", "d", "--template", "im-start"])
            .unwrap_err()
            .contains("loglik"));
        assert!(bad(&["--data", "d", "--temperature", "0.5"])
            .unwrap_err()
            .contains("not loglik"));
        assert!(
            bad(&["--data", "d", "--mode", "sc-cot", "--temperature", "0"])
                .unwrap_err()
                .contains("above 0")
        );
        assert!(
            bad(&["--data", "d", "--mode", "generate", "--samples", "3"])
                .unwrap_err()
                .contains("sc-cot")
        );
        assert!(bad(&["--data", "d", "--cop-base", "2"]).is_err());
        assert!(bad(&["--data", "d", "--task", "pubmed"]).is_err());
        assert!(bad(&["--task", "pubmedqa"]).is_err());
        assert!(bad(&["--data", "d", "--endpoint-model", "m"]).is_err());
        assert!(bad(&["--data", "d", "--limit", "0"])
            .unwrap_err()
            .contains("limit"));
    }

    #[test]
    fn hashes_one_and_many_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.bin");
        std::fs::write(&a, b"abc").unwrap();
        // SHA-256("abc")
        assert_eq!(
            hash_files(std::slice::from_ref(&a)).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let b = dir.path().join("b.bin");
        std::fs::write(&b, b"").unwrap();
        let two = hash_files(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(two.len(), 64);
        assert_ne!(two, hash_files(&[b, a]).unwrap());
        assert!(hash_files(&[dir.path().join("missing")])
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }
}
