//! The `meditron download` flags (clap) and the command that runs them and says where the files are.

use crate::config::HubConfig;
use crate::download::{download, DownloadOptions, DownloadReport};
use crate::spec::RepoSpec;
use anyhow::Context;
use std::io::IsTerminal;
use std::path::PathBuf;

/// `meditron download REPO[:BRANCH]`: fetch a model repository (any branch) from the Hugging
/// Face Hub into the shared cache (HF_HOME / HF_HUB_CACHE) or a folder, resumably.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct DownloadArgs {
    /// Repository, as ORG/NAME or ORG/NAME:BRANCH (e.g. TheBloke/meditron-70B-GPTQ:gptq-4bit-128g-actorder_True).
    #[arg(value_name = "REPO[:BRANCH]")]
    pub repo: String,
    /// Branch, tag or commit to fetch; overrides a `:BRANCH` suffix.
    #[arg(long, value_name = "REVISION")]
    pub revision: Option<String>,
    /// Write real files into this folder instead of the shared cache.
    #[arg(long, value_name = "DIR")]
    pub local_dir: Option<PathBuf>,
    /// Only files matching this glob (`*` also matches '/'); repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Skip files matching this glob; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Hugging Face access token for gated or private repos (default: HF_TOKEN, then $HF_HOME/token).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Parallel connections per large file.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: u16,
}

impl DownloadArgs {
    /// The library options these flags mean (progress bars when stderr is a terminal).
    pub fn options(&self) -> DownloadOptions {
        DownloadOptions {
            local_dir: self.local_dir.clone(),
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            connections: usize::from(self.connections),
            progress: std::io::stderr().is_terminal(),
            ..DownloadOptions::default()
        }
    }
}

/// Runs `meditron download` with the environment's Hub settings; prints a summary on stderr
/// and the model folder on stdout (as `huggingface-cli download` does), for scripts.
pub fn run_download(args: &DownloadArgs) -> anyhow::Result<()> {
    let cfg = HubConfig::from_env()
        .context("reading the Hugging Face settings (HF_HOME, HF_TOKEN, ...)")?;
    let report = run_download_with(args, cfg)?;
    eprintln!("{}", report.summary());
    println!("{}", report.path.display());
    Ok(())
}

/// [`run_download`] with an explicit configuration and nothing printed; `--token` wins over it.
pub fn run_download_with(
    args: &DownloadArgs,
    mut cfg: HubConfig,
) -> anyhow::Result<DownloadReport> {
    if let Some(token) = &args.token {
        cfg.token = Some(token.clone());
    }
    let spec = RepoSpec::parse(&args.repo, args.revision.as_deref())?;
    let report =
        download(&spec, &cfg, &args.options()).with_context(|| format!("downloading {spec}"))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        download: DownloadArgs,
    }

    #[test]
    fn parses_huggingface_cli_style_flags() {
        let cli = Cli::try_parse_from([
            "meditron",
            "TheBloke/meditron-70B-GPTQ",
            "--revision",
            "gptq-4bit-128g-actorder_True",
            "--local-dir",
            "/models/m",
            "--include",
            "*.json",
            "--include",
            "*.safetensors",
            "--exclude",
            "*.bin",
            "--connections",
            "4",
        ])
        .unwrap();
        let args = cli.download;
        assert_eq!(args.repo, "TheBloke/meditron-70B-GPTQ");
        assert_eq!(args.include, vec!["*.json", "*.safetensors"]);
        let opts = args.options();
        assert_eq!(opts.connections, 4);
        assert_eq!(opts.local_dir, Some(PathBuf::from("/models/m")));
        assert_eq!(opts.exclude, vec!["*.bin"]);
        assert!(Cli::try_parse_from(["meditron", "a/b", "--connections", "0"]).is_err());
    }
}
