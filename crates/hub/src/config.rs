//! Where the Hub is and where its cache lives, read from the same environment variables as huggingface_hub.

use crate::error::{HubError, IoContext, Result};
use std::path::{Path, PathBuf};

/// The public Hub; `HF_ENDPOINT` points elsewhere (a mirror, or the tests' fake Hub).
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Everything the downloader needs to know about its surroundings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Base URL without a trailing '/', e.g. `https://huggingface.co`.
    pub endpoint: String,
    /// The hub cache: the folder holding `models--org--name/` (`$HF_HUB_CACHE`).
    pub cache_dir: PathBuf,
    /// Sent as `Authorization: Bearer` to the endpoint (never to the CDN it redirects to).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: use the cache only, never the network.
    pub offline: bool,
}

impl HubConfig {
    /// An online configuration against `endpoint` with the cache at `cache_dir`, no token.
    pub fn new(endpoint: &str, cache_dir: impl Into<PathBuf>) -> Self {
        HubConfig {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache_dir: cache_dir.into(),
            token: None,
            offline: false,
        }
    }

    /// Reads `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN` (or the token file), `HF_HUB_OFFLINE` and
    /// `HF_ENDPOINT` from the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`HubConfig::from_env`] over any variable lookup, so tests need not touch the process
    /// environment (which is shared by every test thread).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let hf_home = match var("HF_HOME") {
            Some(home) => PathBuf::from(home),
            None => {
                let cache = match (var("XDG_CACHE_HOME"), var("HOME")) {
                    (Some(xdg), _) => PathBuf::from(xdg),
                    (None, Some(home)) => Path::new(&home).join(".cache"),
                    (None, None) => {
                        return Err(HubError::Io {
                            context: "cannot locate the Hugging Face cache".into(),
                            cause: std::io::Error::other(
                                "none of HF_HOME, XDG_CACHE_HOME, HOME is set; set HF_HOME",
                            ),
                        })
                    }
                };
                cache.join("huggingface")
            }
        };
        // HUGGINGFACE_HUB_CACHE and HUGGING_FACE_HUB_TOKEN are the older names huggingface_hub
        // still honours; people have them in their shell profiles.
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = match var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")) {
            Some(token) => Some(token.trim().to_string()),
            None => {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home.join("token"));
                read_token_file(&path)?
            }
        };
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Ok(HubConfig {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache_dir,
            token,
            offline,
        })
    }
}

/// `huggingface-cli login` writes the token to this file; a missing file just means "no token".
fn read_token_file(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            Err(e).io_context(|| format!("reading the Hugging Face token file {}", path.display()))
        }
    }
}

/// huggingface_hub's truth table for boolean environment variables.
fn is_true(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> HubConfig {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubConfig::from_vars(|name| vars.get(name).cloned()).unwrap()
    }

    #[test]
    fn defaults_follow_huggingface_hub() {
        let cfg = config(&[("HOME", "/home/u")]);
        assert_eq!(
            cfg.cache_dir,
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert_eq!(cfg.endpoint, "https://huggingface.co");
        assert!(!cfg.offline);
        let cfg = config(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
        assert_eq!(cfg.cache_dir, PathBuf::from("/xdg/huggingface/hub"));
    }

    #[test]
    fn hf_home_hub_cache_endpoint_offline() {
        let cfg = config(&[
            ("HF_HOME", "/hf"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "yes"),
        ]);
        assert_eq!(cfg.cache_dir, PathBuf::from("/hf/hub"));
        assert_eq!(cfg.endpoint, "http://127.0.0.1:9");
        assert!(cfg.offline);
        let cfg = config(&[
            ("HF_HOME", "/hf"),
            ("HF_HUB_CACHE", "/elsewhere"),
            ("HF_HUB_OFFLINE", "0"),
        ]);
        assert_eq!(cfg.cache_dir, PathBuf::from("/elsewhere"));
        assert!(!cfg.offline);
    }

    #[test]
    fn token_from_variable_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(config(&[("HF_HOME", home)]).token, None);
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        assert_eq!(
            config(&[("HF_HOME", home)]).token.as_deref(),
            Some("hf_file")
        );
        assert_eq!(
            config(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")])
                .token
                .as_deref(),
            Some("hf_env")
        );
    }
}
