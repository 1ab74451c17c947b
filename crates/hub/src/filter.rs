//! `--include` / `--exclude` globs over repo paths, with huggingface_hub's fnmatch semantics.

use crate::error::{HubError, Result};
use globset::{Glob, GlobBuilder, GlobMatcher};

/// Which repo files to fetch: all when no include is given, minus the excluded ones.
#[derive(Debug, Clone)]
pub(crate) struct FileFilter {
    include: Vec<(String, GlobMatcher)>,
    exclude: Vec<GlobMatcher>,
}

impl FileFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        let include = include
            .iter()
            .map(|p| Ok((p.clone(), compile(p)?)))
            .collect::<Result<Vec<_>>>()?;
        let exclude = exclude
            .iter()
            .map(|p| compile(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(FileFilter { include, exclude })
    }

    pub fn has_includes(&self) -> bool {
        !self.include.is_empty()
    }

    pub fn matches(&self, path: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|(_, m)| m.is_match(path)))
            && !self.exclude.iter().any(|m| m.is_match(path))
    }

    /// The first include pattern that none of `paths` matches.
    pub fn unmatched_include<S: AsRef<str>>(&self, paths: &[S]) -> Option<&str> {
        self.include
            .iter()
            .find(|(_, m)| !paths.iter().any(|p| m.is_match(p.as_ref())))
            .map(|(p, _)| p.as_str())
    }
}

/// fnmatch, as huggingface_hub uses it: `*` also crosses '/', and `dir/` means everything in it.
fn compile(pattern: &str) -> Result<GlobMatcher> {
    let pattern_text = if pattern.ends_with('/') {
        format!("{pattern}*")
    } else {
        pattern.to_string()
    };
    let glob: Glob = GlobBuilder::new(&pattern_text)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map_err(|e| HubError::InvalidGlob {
            pattern: pattern.to_string(),
            reason: e.kind().to_string(),
        })?;
    Ok(glob.compile_matcher())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> FileFilter {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        FileFilter::new(&s(include), &s(exclude)).unwrap()
    }

    #[test]
    fn star_crosses_folders_like_fnmatch() {
        let f = filter(&["*.json"], &[]);
        assert!(f.matches("config.json"));
        assert!(f.matches("sub/tokenizer.json"));
        assert!(!f.matches("model.safetensors"));
        assert!(filter(&["onnx/"], &[]).matches("onnx/model.onnx"));
    }

    #[test]
    fn exclude_wins_and_empty_include_means_all() {
        let f = filter(&[], &["*.bin", "README*"]);
        assert!(f.matches("model.safetensors"));
        assert!(!f.matches("pytorch_model.bin"));
        assert!(!f.matches("README.md"));
        let f = filter(&["*.safetensors", "*.gguf"], &[]);
        assert_eq!(f.unmatched_include(&["model.safetensors"]), Some("*.gguf"));
        assert!(FileFilter::new(&["[".to_string()], &[])
            .unwrap_err()
            .to_string()
            .starts_with("invalid glob '['"));
    }
}
