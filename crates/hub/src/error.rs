//! The hub crate's one error type, with a message a user can act on for every way a download fails.

use std::path::PathBuf;

/// Everything that can go wrong between a `REPO[:BRANCH]` string and files on disk.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "invalid repo id '{input}': {reason} (expected ORG/NAME, e.g. TheBloke/meditron-70B-GPTQ)"
    )]
    InvalidRepoId { input: String, reason: String },

    #[error("invalid revision '{input}': {reason}")]
    InvalidRevision { input: String, reason: String },

    #[error("repository '{repo}' was not found on {endpoint}: check the spelling{hint}")]
    RepoNotFound {
        repo: String,
        endpoint: String,
        hint: String,
    },

    #[error("branch or revision '{revision}' was not found in '{repo}': check the branch name (the repo page lists its branches under 'Files and versions')")]
    RevisionNotFound { repo: String, revision: String },

    #[error("file '{path}' was not found in '{repo}' at revision '{revision}'")]
    EntryNotFound {
        repo: String,
        revision: String,
        path: String,
    },

    #[error("access to '{repo}' was refused (HTTP {status}): the repository is gated or private. {hint}")]
    AccessDenied {
        repo: String,
        status: u16,
        hint: String,
    },

    #[error("offline mode (HF_HUB_OFFLINE=1): '{repo}' at revision '{revision}' is not in the cache at {cache}{detail}; unset HF_HUB_OFFLINE to download it")]
    Offline {
        repo: String,
        revision: String,
        cache: PathBuf,
        detail: String,
    },

    #[error("no file of '{repo}' at '{revision}' matches --include {include:?} / --exclude {exclude:?}; the repository has: {available}")]
    NoFilesMatched {
        repo: String,
        revision: String,
        include: Vec<String>,
        exclude: Vec<String>,
        available: String,
    },

    #[error("'{repo}' at '{revision}' has several GGUF files ({files}); choose one with --include (e.g. --include '*Q4_K_M.gguf')")]
    ChooseGguf {
        repo: String,
        revision: String,
        files: String,
    },

    #[error("invalid glob '{pattern}': {reason}")]
    InvalidGlob { pattern: String, reason: String },

    #[error("checksum mismatch for '{path}': expected {algorithm} {expected}, got {actual} (downloaded {attempts} times; the corrupt data was deleted, nothing was written to the cache)")]
    ChecksumMismatch {
        path: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
        attempts: u32,
    },

    #[error("not enough free disk space in {dir}: this download needs {needed} more but only {available} is available; free some space or point HF_HUB_CACHE / --local-dir at a larger disk")]
    NotEnoughSpace {
        dir: PathBuf,
        needed: String,
        available: String,
    },

    #[error("download cancelled; run the same command again to resume where it stopped")]
    Cancelled,

    #[error("HTTP {status} from {url}{detail}")]
    Http {
        url: String,
        status: u16,
        detail: String,
    },

    #[error("network error talking to {url}: {detail}; check the connection and HF_ENDPOINT (transfers resume where they stopped; HF_HUB_OFFLINE=1 uses only the cache)")]
    Network { url: String, detail: String },

    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },

    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
}

impl HubError {
    /// A reqwest error with its whole cause chain spelt out ("connection refused" sits three
    /// levels down), since the top level only says "error sending request".
    pub(crate) fn network(url: impl ToString, error: &reqwest::Error) -> Self {
        let mut parts: Vec<String> = Vec::new();
        let mut cause: Option<&dyn std::error::Error> = Some(error);
        while let Some(e) = cause {
            let text = e.to_string();
            if !parts.contains(&text) {
                parts.push(text);
            }
            cause = e.source();
        }
        // The top level repeats the URL the message already names.
        if parts.len() > 1 {
            parts.remove(0);
        }
        HubError::Network {
            url: url.to_string(),
            detail: parts.join(": "),
        }
    }
}

pub type Result<T, E = HubError> = std::result::Result<T, E>;

/// Attaches "what we were doing, on which path" to an I/O error.
pub(crate) trait IoContext<T> {
    fn io_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|cause| HubError::Io {
            context: what(),
            cause,
        })
    }
}
