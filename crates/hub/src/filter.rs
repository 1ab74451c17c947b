//! Which repo files to fetch: `--include` / `--exclude` globs (huggingface_hub's fnmatch semantics) and, for `--model`, the files a model needs.

use crate::api::RemoteFile;
use crate::error::{HubError, Result};
use globset::{Glob, GlobBuilder, GlobMatcher};

/// Weight files of any framework; a repo often carries the same weights in several of them.
const WEIGHT_EXTENSIONS: &[&str] = &[
    ".safetensors",
    ".gguf",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".onnx_data",
    ".ot",
];

/// What a download without `--include` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Every file, as `huggingface-cli download` (and `meditron download`) does.
    All,
    /// What loading the model needs, as transformers' `from_pretrained` fetches it: every
    /// small file, and of the weights only the safetensors (not the same weights again as
    /// `.bin`), or the single GGUF file.
    Model,
}

pub(crate) fn is_weight_file(path: &str) -> bool {
    WEIGHT_EXTENSIONS.iter().any(|ext| path.ends_with(ext))
}

/// The files of `listing` that `filter` and `selection` pick. `Err` holds the GGUF files to
/// choose from when a model selection cannot pick one by itself.
pub(crate) fn select<'a>(
    listing: &'a [RemoteFile],
    filter: &FileFilter,
    selection: Selection,
) -> std::result::Result<Vec<&'a RemoteFile>, Vec<String>> {
    let filtered: Vec<&RemoteFile> = listing.iter().filter(|f| filter.matches(&f.path)).collect();
    if selection == Selection::All || filter.has_includes() {
        return Ok(filtered);
    }
    let has = |ext: &str| filtered.iter().any(|f| f.path.ends_with(ext));
    let weights: Vec<&RemoteFile> = if has(".safetensors") {
        filtered
            .iter()
            .copied()
            .filter(|f| f.path.ends_with(".safetensors"))
            .collect()
    } else if has(".gguf") {
        let ggufs: Vec<&RemoteFile> = filtered
            .iter()
            .copied()
            .filter(|f| f.path.ends_with(".gguf"))
            .collect();
        if ggufs.len() > 1 {
            return Err(ggufs.iter().map(|f| f.path.clone()).collect());
        }
        ggufs
    } else {
        filtered
            .iter()
            .copied()
            .filter(|f| is_weight_file(&f.path))
            .collect()
    };
    let mut chosen: Vec<&RemoteFile> = filtered
        .iter()
        .copied()
        .filter(|f| !is_weight_file(&f.path))
        .collect();
    chosen.extend(weights);
    chosen.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(chosen)
}

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

    fn listing(paths: &[&str]) -> Vec<RemoteFile> {
        paths
            .iter()
            .map(|p| RemoteFile {
                path: p.to_string(),
                size: Some(1),
                blob_id: None,
                lfs_sha256: None,
            })
            .collect()
    }

    fn picked(
        files: &[&str],
        selection: Selection,
        include: &[&str],
    ) -> std::result::Result<Vec<String>, Vec<String>> {
        let listing = listing(files);
        let include: Vec<String> = include.iter().map(|s| s.to_string()).collect();
        let filter = FileFilter::new(&include, &[]).unwrap();
        select(&listing, &filter, selection)
            .map(|v| v.into_iter().map(|f| f.path.clone()).collect())
    }

    #[test]
    fn a_model_takes_safetensors_over_the_same_weights_as_bin() {
        let repo = [
            "config.json",
            "model-1.safetensors",
            "model-2.safetensors",
            "pytorch_model.bin",
            "tf_model.h5",
        ];
        assert_eq!(
            picked(&repo, Selection::Model, &[]).unwrap(),
            vec!["config.json", "model-1.safetensors", "model-2.safetensors"]
        );
        assert_eq!(picked(&repo, Selection::All, &[]).unwrap().len(), 5);
        assert_eq!(
            picked(&["config.json", "pytorch_model.bin"], Selection::Model, &[])
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_model_needs_one_gguf_chosen() {
        let repo = ["README.md", "m.Q4_0.gguf", "m.Q8_0.gguf"];
        assert_eq!(
            picked(&repo, Selection::Model, &[]).unwrap_err(),
            vec!["m.Q4_0.gguf", "m.Q8_0.gguf"]
        );
        assert_eq!(
            picked(&repo, Selection::Model, &["*Q8_0.gguf"]).unwrap(),
            vec!["m.Q8_0.gguf"]
        );
        assert_eq!(
            picked(&repo[..2], Selection::Model, &[]).unwrap(),
            vec!["README.md", "m.Q4_0.gguf"]
        );
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
