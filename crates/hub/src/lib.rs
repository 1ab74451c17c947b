//! Fetches Llama-family models from the Hugging Face Hub (any branch) into the cache huggingface-cli and transformers share, resumably and verified.
//!
//! - [`RepoSpec`] parses `org/name[:branch]`; [`HubConfig`] reads `HF_HOME`, `HF_HUB_CACHE`,
//!   `HF_TOKEN`, `HF_HUB_OFFLINE`, `HF_ENDPOINT`.
//! - [`resolve_model`] answers `--model org/name[:branch]` from the cache without any request
//!   when it can, and downloads only what is missing when it cannot.
//! - [`download`] is `meditron download`: parallel ranged transfers that resume after a kill,
//!   sha256 checks against the LFS metadata, a free-space check, progress bars.
//! - [`DownloadArgs`] and [`run_download`] are the clap front end.

mod api;
mod cache;
mod cli;
mod config;
mod download;
mod error;
mod fetch;
mod filter;
mod progress;
mod spec;

pub use cli::{run_download, run_download_with, DownloadArgs};
pub use config::{HubConfig, DEFAULT_ENDPOINT};
pub use download::{
    download, resolve_model, DownloadOptions, DownloadReport, FileReport, FileStatus,
};
pub use error::{HubError, Result};
pub use spec::{is_commit_sha, RepoSpec, DEFAULT_REVISION};
