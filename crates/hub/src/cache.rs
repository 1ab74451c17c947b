//! The on-disk layouts shared with huggingface-cli and transformers: the hub cache (blobs, snapshots, refs) and `--local-dir` folders.
//!
//! hf-hub 1.0 keeps its cache-path helpers crate-private and pulls in hf-xet and tokio, so we
//! use 0.4's public `Repo::folder_name` and `CacheRepo::create_ref` for the parts it covers
//! (folder naming, refs) and write the rest (blobs, relative snapshot links, locks, `.incomplete`
//! files, the `trees/` listing cache, the local-dir metadata) here.

use crate::api::RemoteFile;
use crate::error::{HubError, IoContext, Result};
use crate::filter::{is_weight_file, select, FileFilter, Selection};
use crate::spec::is_commit_sha;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// File name suffix of a blob being downloaded, as huggingface_hub names it.
pub(crate) const INCOMPLETE: &str = ".incomplete";

/// huggingface_hub's `TREE_CACHE_FORMAT_VERSION`.
const TREE_CACHE_FORMAT: u64 = 1;

/// One model repository inside the hub cache: `models--{org}--{name}/`.
pub(crate) struct RepoCache {
    cache_dir: PathBuf,
    repo_id: String,
    /// `{cache}/models--org--name`.
    pub root: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo_id: &str) -> Self {
        let folder = hf_hub::Repo::model(repo_id.to_string()).folder_name();
        RepoCache {
            cache_dir: cache_dir.to_path_buf(),
            repo_id: repo_id.to_string(),
            root: cache_dir.join(folder),
        }
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.blobs_dir().join(etag)
    }

    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    /// `{cache}/.locks/models--org--name/{etag}.lock`, the lock huggingface_hub takes too, so
    /// two programs never write the same blob at once.
    pub fn lock_path(&self, etag: &str) -> PathBuf {
        let folder = self.root.file_name().map(PathBuf::from).unwrap_or_default();
        self.cache_dir
            .join(".locks")
            .join(folder)
            .join(format!("{etag}.lock"))
    }

    /// The commit a branch pointed to when it was last fetched; a commit sha is its own answer.
    pub fn resolve_ref(&self, revision: &str) -> Result<Option<String>> {
        if is_commit_sha(revision) {
            return Ok(Some(revision.to_string()));
        }
        let path = self.root.join("refs").join(revision);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_string()).filter(|c| !c.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).io_context(|| format!("reading the cache ref {}", path.display())),
        }
    }

    /// Points `refs/{revision}` at `commit` (nothing to do when the revision is the commit).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let repo = hf_hub::Repo::with_revision(
            self.repo_id.clone(),
            hf_hub::RepoType::Model,
            revision.to_string(),
        );
        hf_hub::Cache::new(self.cache_dir.clone())
            .repo(repo)
            .create_ref(commit)
            .io_context(|| {
                format!(
                    "writing the cache ref {}",
                    self.root.join("refs").join(revision).display()
                )
            })
    }

    /// Makes `snapshots/{commit}/{path}` a relative symlink to `../../blobs/{etag}` (one more
    /// `..` per folder in `path`), exactly as huggingface_hub does, replacing whatever was there.
    pub fn link(&self, commit: &str, repo_path: &str, etag: &str) -> Result<PathBuf> {
        let pointer = self.snapshot_dir(commit).join(checked_relative(repo_path)?);
        let parent = pointer.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).io_context(|| format!("creating {}", parent.display()))?;
        let depth = repo_path.split('/').count() + 1;
        let target = Path::new(&"../".repeat(depth)).join("blobs").join(etag);
        if pointer.symlink_metadata().is_ok() {
            std::fs::remove_file(&pointer)
                .io_context(|| format!("replacing {}", pointer.display()))?;
        }
        symlink(&target, &pointer)?;
        Ok(pointer)
    }

    /// The snapshot folder for `revision` if the cache has one holding every file the
    /// selection needs.
    pub fn cached_snapshot(
        &self,
        revision: &str,
        filter: &FileFilter,
        selection: Selection,
    ) -> Result<Option<(String, PathBuf)>> {
        let Some(commit) = self.resolve_ref(revision)? else {
            return Ok(None);
        };
        let dir = self.snapshot_dir(&commit);
        let listing = read_tree_cache(&self.tree_path(&commit));
        Ok(
            snapshot_complete(&dir, listing.as_deref(), filter, selection)
                .is_ok()
                .then_some((commit, dir)),
        )
    }

    /// huggingface_hub's listing cache for a commit, `trees/{commit}.json`.
    pub fn tree_path(&self, commit: &str) -> PathBuf {
        self.root.join("trees").join(format!("{commit}.json"))
    }
}

/// Why a snapshot folder cannot serve the selection, or Ok.
///
/// With the commit's listing (`trees/{commit}.json`, which we and huggingface_hub >= 1.x
/// write) the answer is exact: every selected file must be there. Caches written by older
/// tools have no listing; then it is judged from what a model needs: weights, config.json
/// (unless GGUF), every shard an index names, a file for every `--include`.
pub(crate) fn snapshot_complete(
    dir: &Path,
    listing: Option<&[RemoteFile]>,
    filter: &FileFilter,
    selection: Selection,
) -> std::result::Result<(), String> {
    if let Some(listing) = listing {
        let needed = select(listing, filter, selection)
            .map_err(|ggufs| format!("it has several GGUF files ({})", ggufs.join(", ")))?;
        if needed.is_empty() {
            return Err("no file of the commit matches --include/--exclude".into());
        }
        let missing: Vec<&str> = needed
            .iter()
            .map(|f| f.path.as_str())
            .filter(|path| !dir.join(path).is_file())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let shown = missing
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!(
            "{} of {} needed files are not cached ({shown}{})",
            missing.len(),
            needed.len(),
            if missing.len() > 5 { ", ..." } else { "" }
        ));
    }
    let files = list_files(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if files.is_empty() {
        return Err(format!("{} has no files", dir.display()));
    }
    for file in &files {
        if !dir.join(file).is_file() {
            return Err(format!("{file} is a dangling link (its blob is missing)"));
        }
    }
    for index in files.iter().filter(|f| f.ends_with(".index.json")) {
        for shard in index_shards(&dir.join(index))? {
            if !dir.join(&shard).is_file() {
                return Err(format!("shard {shard} named in {index} is missing"));
            }
        }
    }
    let selected: Vec<&String> = files.iter().filter(|f| filter.matches(f)).collect();
    if filter.has_includes() {
        if let Some(pattern) = filter.unmatched_include(&selected) {
            return Err(format!("no cached file matches --include '{pattern}'"));
        }
    } else {
        if !selected.iter().any(|f| is_weight_file(f)) {
            return Err("no weight file (.safetensors, .gguf, .bin) is cached".into());
        }
        let has_gguf = selected.iter().any(|f| f.ends_with(".gguf"));
        if !has_gguf && !selected.iter().any(|f| f.as_str() == "config.json") {
            return Err("config.json is not cached".into());
        }
    }
    Ok(())
}

/// Reads a `trees/{commit}.json` listing; anything unreadable or of another format version is
/// treated as absent, as huggingface_hub does.
pub(crate) fn read_tree_cache(path: &Path) -> Option<Vec<RemoteFile>> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    if json.get("format_version")?.as_u64()? != TREE_CACHE_FORMAT {
        return None;
    }
    json.get("files")?
        .as_object()?
        .iter()
        .map(|(path, info)| {
            Some(RemoteFile {
                path: path.clone(),
                size: Some(info.get("size")?.as_u64()?),
                blob_id: Some(info.get("blob_id")?.as_str()?.to_string()),
                lfs_sha256: info
                    .get("lfs_sha256")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            })
        })
        .collect()
}

/// Writes the listing of a commit in huggingface_hub's tree-cache format, once: a commit
/// never changes. Skipped when the listing lacks sizes or blob ids (older mirrors).
pub(crate) fn write_tree_cache(path: &Path, listing: &[RemoteFile]) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut files = serde_json::Map::new();
    for file in listing {
        let (Some(size), Some(blob_id)) = (file.size, &file.blob_id) else {
            return Ok(());
        };
        let mut info = serde_json::json!({ "size": size, "blob_id": blob_id });
        if let Some(sha256) = &file.lfs_sha256 {
            info["lfs_sha256"] = sha256.clone().into();
            info["lfs_size"] = size.into();
        }
        files.insert(file.path.clone(), info);
    }
    let json = serde_json::json!({ "format_version": TREE_CACHE_FORMAT, "files": files });
    let text = serde_json::to_string_pretty(&json).map_err(|e| HubError::Io {
        context: format!("encoding {}", path.display()),
        cause: std::io::Error::other(e),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).io_context(|| format!("creating {}", dir.display()))?;
    // Written aside and renamed, so a reader never sees half a listing.
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text).io_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).io_context(|| format!("writing {}", path.display()))
}

/// Shard file names from a `*.index.json` weight map (safetensors or PyTorch).
fn index_shards(path: &Path) -> std::result::Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let mut shards: Vec<String> = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// Every non-folder entry under `dir`, as '/'-separated paths relative to it.
fn list_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = stack.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if entry.file_type()?.is_dir() {
                stack.push((entry.path(), rel));
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A '/'-separated repo path from the server, refused if it could escape the target folder.
pub(crate) fn checked_relative(repo_path: &str) -> Result<PathBuf> {
    let bad = || HubError::Protocol {
        url: repo_path.to_string(),
        message: "the repository lists a file path that is absolute or climbs out of its folder"
            .into(),
    };
    if repo_path.contains('\\')
        || repo_path.contains('\0')
        || repo_path.split('/').any(|c| matches!(c, "" | "." | ".."))
    {
        return Err(bad());
    }
    let path = PathBuf::from(repo_path);
    if path.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(path)
    } else {
        Err(bad())
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .io_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// Windows without developer mode cannot symlink; huggingface_hub copies the blob then.
#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> Result<()> {
    let source = link.parent().unwrap_or(Path::new(".")).join(target);
    std::fs::copy(&source, link)
        .map(|_| ())
        .io_context(|| format!("copying {} to {}", source.display(), link.display()))
}

/// A `--local-dir` folder: real files, plus huggingface_hub's
/// `.cache/huggingface/download/{path}.metadata` (commit, etag, timestamp) so either program
/// knows which files are already current.
pub(crate) struct LocalDir {
    pub root: PathBuf,
}

impl LocalDir {
    /// huggingface_hub keeps a local dir's listing cache under its hidden folder.
    pub fn tree_path(&self, commit: &str) -> PathBuf {
        self.root
            .join(".cache")
            .join("huggingface")
            .join("trees")
            .join(format!("{commit}.json"))
    }

    fn download_dir(&self) -> PathBuf {
        self.root
            .join(".cache")
            .join("huggingface")
            .join("download")
    }

    pub fn file_path(&self, repo_path: &str) -> Result<PathBuf> {
        Ok(self.root.join(checked_relative(repo_path)?))
    }

    pub fn metadata_path(&self, repo_path: &str) -> Result<PathBuf> {
        Ok(self.download_dir().join(format!(
            "{}.metadata",
            checked_relative(repo_path)?.display()
        )))
    }

    pub fn lock_path(&self, repo_path: &str) -> Result<PathBuf> {
        Ok(self
            .download_dir()
            .join(format!("{}.lock", checked_relative(repo_path)?.display())))
    }

    /// huggingface_hub's `metadata_path.with_suffix(f".{etag}.incomplete")`.
    pub fn incomplete_path(&self, repo_path: &str, etag: &str) -> Result<PathBuf> {
        Ok(self.download_dir().join(format!(
            "{}.{etag}{INCOMPLETE}",
            checked_relative(repo_path)?.display()
        )))
    }

    /// Creates the hidden folder with the `.gitignore` huggingface_hub puts there.
    pub fn prepare(&self) -> Result<()> {
        let hidden = self.root.join(".cache").join("huggingface");
        std::fs::create_dir_all(self.download_dir())
            .io_context(|| format!("creating {}", hidden.display()))?;
        let gitignore = hidden.join(".gitignore");
        if !gitignore.exists() {
            std::fs::write(&gitignore, "*")
                .io_context(|| format!("writing {}", gitignore.display()))?;
        }
        Ok(())
    }

    /// True when the file exists unmodified since a download of the same content (etag).
    pub fn is_current(&self, repo_path: &str, etag: &str) -> Result<bool> {
        let Ok(text) = std::fs::read_to_string(self.metadata_path(repo_path)?) else {
            return Ok(false);
        };
        let mut lines = text.lines();
        let (_commit, meta_etag, timestamp) = (lines.next(), lines.next(), lines.next());
        let Some(timestamp) = timestamp.and_then(|t| t.trim().parse::<f64>().ok()) else {
            return Ok(false);
        };
        let Ok(modified) = std::fs::metadata(self.file_path(repo_path)?).and_then(|m| m.modified())
        else {
            return Ok(false);
        };
        let mtime = modified
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // huggingface_hub allows one second of slack: mtimes are not always precise.
        Ok(meta_etag.map(str::trim) == Some(etag) && mtime - 1.0 <= timestamp)
    }

    pub fn write_metadata(&self, repo_path: &str, commit: &str, etag: &str) -> Result<()> {
        let path = self.metadata_path(repo_path)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .io_context(|| format!("creating {}", parent.display()))?;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        std::fs::write(&path, format!("{commit}\n{etag}\n{now}\n"))
            .io_context(|| format!("writing {}", path.display()))
    }
}

/// An exclusive lock on a lock file, released on drop; blocks while another process (this
/// one or huggingface-cli) is writing the same file.
pub(crate) struct FileLock {
    _file: File,
}

impl FileLock {
    pub fn acquire(path: &Path, on_wait: impl FnOnce()) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .io_context(|| format!("creating {}", parent.display()))?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .io_context(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock()
                    .io_context(|| format!("locking {}", path.display()))?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).io_context(|| format!("locking {}", path.display()));
            }
        }
        Ok(FileLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_and_relative_links_match_huggingface_hub() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "TheBloke/meditron-70B-GPTQ");
        assert!(cache.root.ends_with("models--TheBloke--meditron-70B-GPTQ"));
        std::fs::create_dir_all(cache.blobs_dir()).unwrap();
        std::fs::write(cache.blob_path("abc"), b"x").unwrap();
        let link = cache.link("c0ffee", "sub/dir/file.bin", "abc").unwrap();
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("../../../../blobs/abc")
        );
        assert_eq!(std::fs::read(&link).unwrap(), b"x");
        assert!(cache
            .lock_path("abc")
            .ends_with(".locks/models--TheBloke--meditron-70B-GPTQ/abc.lock"));
    }

    #[test]
    fn refuses_paths_that_escape() {
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "a\\b",
            "",
            "a//b",
            "./a",
        ] {
            assert!(checked_relative(bad).is_err(), "{bad:?}");
        }
        assert!(checked_relative("a/b.safetensors").is_ok());
    }

    #[test]
    fn snapshot_needs_weights_config_and_every_indexed_shard() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path();
        let all = FileFilter::new(&[], &[]).unwrap();
        assert!(snapshot_complete(snap, None, &all, Selection::Model).is_err());
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        assert!(snapshot_complete(snap, None, &all, Selection::Model)
            .unwrap_err()
            .contains("no weight file"));
        std::fs::write(
            snap.join("model.safetensors.index.json"),
            r#"{"weight_map":{"a":"m-1.safetensors","b":"m-2.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(snap.join("m-1.safetensors"), "").unwrap();
        assert!(snapshot_complete(snap, None, &all, Selection::Model)
            .unwrap_err()
            .contains("m-2.safetensors"));
        std::fs::write(snap.join("m-2.safetensors"), "").unwrap();
        assert_eq!(
            snapshot_complete(snap, None, &all, Selection::Model),
            Ok(())
        );
        let json_only = FileFilter::new(&["*.json".into()], &[]).unwrap();
        assert_eq!(
            snapshot_complete(snap, None, &json_only, Selection::Model),
            Ok(())
        );
        let missing = FileFilter::new(&["*.gguf".into()], &[]).unwrap();
        assert!(snapshot_complete(snap, None, &missing, Selection::Model)
            .unwrap_err()
            .contains("*.gguf"));
    }

    #[test]
    fn with_a_listing_every_selected_file_must_be_there() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snap");
        std::fs::create_dir_all(&snap).unwrap();
        let file = |path: &str, lfs: bool| RemoteFile {
            path: path.into(),
            size: Some(3),
            blob_id: Some("b".repeat(40)),
            lfs_sha256: lfs.then(|| "s".repeat(64)),
        };
        let listing = vec![
            file("config.json", false),
            file("model.safetensors", true),
            file("tokenizer.json", false),
        ];
        let trees = dir.path().join("trees/c0ffee.json");
        write_tree_cache(&trees, &listing).unwrap();
        assert_eq!(read_tree_cache(&trees).unwrap(), listing, "round trip");
        let all = FileFilter::new(&[], &[]).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(snap.join("model.safetensors"), "").unwrap();
        assert_eq!(
            snapshot_complete(&snap, Some(&listing), &all, Selection::Model),
            Err("1 of 3 needed files are not cached (tokenizer.json)".into())
        );
        std::fs::write(snap.join("tokenizer.json"), "{}").unwrap();
        assert_eq!(
            snapshot_complete(&snap, Some(&listing), &all, Selection::Model),
            Ok(())
        );
    }
}
