//! A repository revision to files on disk: cache first, then list, plan, check disk space, fetch what is missing and link it into the snapshot.

use crate::api::{Api, ErrorContext, RemoteFile};
use crate::cache::{
    checked_relative, read_tree_cache, snapshot_complete, write_tree_cache, FileLock, LocalDir,
    RepoCache, INCOMPLETE,
};
use crate::config::HubConfig;
use crate::error::{HubError, IoContext, Result};
use crate::fetch::{self, Checksum, Settings, Transfer};
use crate::filter::{select, FileFilter, Selection};
use crate::progress::Progress;
use crate::spec::RepoSpec;
use indicatif::HumanBytes;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// How to download; `Default` is what `meditron download REPO` does.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Put real files in this folder instead of the shared cache (huggingface-cli's `--local-dir`).
    pub local_dir: Option<PathBuf>,
    /// Only repo paths matching one of these globs (fnmatch: `*` crosses '/'); all when empty.
    pub include: Vec<String>,
    /// Leave out repo paths matching any of these globs.
    pub exclude: Vec<String>,
    /// Parallel ranged connections per large file.
    pub connections: usize,
    /// A file is split only into parts of at least this many bytes.
    pub min_part_bytes: u64,
    /// Progress bars on stderr (drawn only when it is a terminal).
    pub progress: bool,
    /// Stalled-connection limit: the longest wait for a response or for the next bytes.
    pub read_timeout: Duration,
    /// Set it to stop the download cleanly; what was fetched stays for the next run.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            local_dir: None,
            include: Vec::new(),
            exclude: Vec::new(),
            connections: 8,
            min_part_bytes: 16 << 20,
            progress: false,
            read_timeout: Duration::from_secs(30),
            cancel: None,
        }
    }
}

/// How a file got to disk in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// Its blob (or its current local-dir copy) was already there.
    Cached,
    Downloaded,
    /// Continued from this many bytes left by an interrupted run.
    Resumed {
        from_bytes: u64,
    },
}

/// One file of the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// Path inside the repository.
    pub repo_path: String,
    /// Where it is on disk (a snapshot symlink, or a real file in the local dir).
    pub local_path: PathBuf,
    pub size: u64,
    pub status: FileStatus,
}

/// What a download produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadReport {
    pub repo_id: String,
    pub revision: String,
    /// The commit the revision pointed to.
    pub commit: String,
    /// The model folder: `snapshots/<commit>` in the cache, or the `--local-dir`.
    pub path: PathBuf,
    pub files: Vec<FileReport>,
}

impl DownloadReport {
    /// Bytes moved over the network in this run (resumed files count only their remainder).
    pub fn downloaded_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| match f.status {
                FileStatus::Cached => 0,
                FileStatus::Downloaded => f.size,
                FileStatus::Resumed { from_bytes } => f.size - from_bytes.min(f.size),
            })
            .sum()
    }

    /// One line for a terminal: what was fetched, resumed and found cached.
    pub fn summary(&self) -> String {
        let count =
            |pred: fn(&FileStatus) -> bool| self.files.iter().filter(|f| pred(&f.status)).count();
        let cached = count(|s| matches!(s, FileStatus::Cached));
        let resumed = count(|s| matches!(s, FileStatus::Resumed { .. }));
        let total: u64 = self.files.iter().map(|f| f.size).sum();
        let short = &self.commit[..self.commit.len().min(10)];
        let mut line = format!(
            "{}:{} (commit {short}): {} file{}, {}; downloaded {}",
            self.repo_id,
            self.revision,
            self.files.len(),
            if self.files.len() == 1 { "" } else { "s" },
            HumanBytes(total),
            HumanBytes(self.downloaded_bytes()),
        );
        if resumed > 0 {
            line.push_str(&format!(", {resumed} resumed"));
        }
        if cached > 0 {
            line.push_str(&format!(", {cached} already cached"));
        }
        line
    }
}

/// The model folder for `spec`: straight from the cache when `refs/<branch>` points at a
/// snapshot holding every file the model needs (no network at all), otherwise downloaded,
/// fetching only what is missing. In offline mode only the cache is looked at.
///
/// Without `opts.include` "what the model needs" is what transformers' `from_pretrained`
/// fetches: every small file plus the safetensors weights (not the same weights again as
/// `.bin`), or the repo's one GGUF file; a repo with several GGUF files needs an include
/// pattern choosing one. A set `opts.local_dir` means the model lives there: that is a
/// download into it.
pub fn resolve_model(spec: &RepoSpec, cfg: &HubConfig, opts: &DownloadOptions) -> Result<PathBuf> {
    if opts.local_dir.is_some() {
        return download_selection(spec, cfg, opts, Selection::Model).map(|report| report.path);
    }
    let filter = FileFilter::new(&opts.include, &opts.exclude)?;
    let cache = RepoCache::new(&cfg.cache_dir, &spec.repo_id);
    if let Some((_, dir)) = cache.cached_snapshot(&spec.revision, &filter, Selection::Model)? {
        return Ok(dir);
    }
    if cfg.offline {
        return Err(offline_error(
            spec,
            cfg,
            &cache,
            &filter,
            opts,
            Selection::Model,
        ));
    }
    download_selection(spec, cfg, opts, Selection::Model).map(|report| report.path)
}

/// Downloads the files of `spec` selected by `opts` (all of them by default, as
/// huggingface-cli does) into the cache (or `opts.local_dir`), resuming interrupted
/// transfers, verifying checksums, and reports what it did.
pub fn download(
    spec: &RepoSpec,
    cfg: &HubConfig,
    opts: &DownloadOptions,
) -> Result<DownloadReport> {
    download_selection(spec, cfg, opts, Selection::All)
}

fn download_selection(
    spec: &RepoSpec,
    cfg: &HubConfig,
    opts: &DownloadOptions,
    selection: Selection,
) -> Result<DownloadReport> {
    let filter = FileFilter::new(&opts.include, &opts.exclude)?;
    let cache = RepoCache::new(&cfg.cache_dir, &spec.repo_id);
    if cfg.offline {
        return offline_report(spec, cfg, &cache, &filter, opts, selection);
    }
    let api = Api::new(&cfg.endpoint, cfg.token.clone(), opts.read_timeout)?;
    let info = api.repo_info(&spec.repo_id, &spec.revision)?;
    let commit = info.commit.clone();
    let selected: Vec<RemoteFile> = select(&info.files, &filter, selection)
        .map_err(|ggufs| HubError::ChooseGguf {
            repo: spec.repo_id.clone(),
            revision: spec.revision.clone(),
            files: ggufs.join(", "),
        })?
        .into_iter()
        .cloned()
        .collect();
    if selected.is_empty() {
        let mut available: Vec<&str> = info
            .files
            .iter()
            .map(|f| f.path.as_str())
            .take(30)
            .collect();
        if info.files.len() > available.len() {
            available.push("...");
        }
        return Err(HubError::NoFilesMatched {
            repo: spec.repo_id.clone(),
            revision: spec.revision.clone(),
            include: opts.include.clone(),
            exclude: opts.exclude.clone(),
            available: available.join(", "),
        });
    }
    for file in &selected {
        checked_relative(&file.path)?;
    }

    let target = match &opts.local_dir {
        Some(dir) => {
            let local = LocalDir { root: dir.clone() };
            local.prepare()?;
            Target::Local(local)
        }
        None => {
            // Written first, as huggingface_hub does: the ref records what the branch means.
            cache.write_ref(&spec.revision, &commit)?;
            let blobs = cache.blobs_dir();
            std::fs::create_dir_all(&blobs)
                .io_context(|| format!("creating {}", blobs.display()))?;
            Target::Cache(&cache)
        }
    };
    // The commit's listing, so later runs (ours, and huggingface_hub's offline mode) know
    // exactly which files a complete snapshot has.
    write_tree_cache(&target.tree_path(&commit), &info.files)?;

    // Files already in place need no request at all; the rest are planned.
    let mut reports = Vec::new();
    let mut missing = Vec::new();
    for file in selected {
        match file.etag_hint() {
            Some(etag) if target.has(&file.path, etag)? => {
                let local_path = target.place(&commit, &file.path, etag)?;
                let size = file.size.unwrap_or(0);
                reports.push(FileReport {
                    repo_path: file.path.clone(),
                    local_path,
                    size,
                    status: FileStatus::Cached,
                });
            }
            _ => missing.push(file),
        }
    }

    let partial: Vec<u64> = missing
        .iter()
        .map(|f| {
            f.etag_hint()
                .and_then(|e| target.incomplete(&f.path, e).ok())
                .map(|p| fetch::partial_bytes(&p))
                .unwrap_or(0)
        })
        .collect();
    let needed: u64 = missing
        .iter()
        .zip(&partial)
        .map(|(f, p)| f.size.unwrap_or(0).saturating_sub(*p))
        .sum();
    // Assembling parts copies all but the first part once; deleting each part after its copy
    // bounds the extra space by one part of the largest file.
    let largest = missing.iter().filter_map(|f| f.size).max().unwrap_or(0);
    let connections = opts.connections.max(1) as u64;
    check_free_space(&target.space_dir(), needed + largest / connections)?;

    let cached_bytes: u64 = reports.iter().map(|r| r.size).sum();
    let total_bytes = cached_bytes + missing.iter().map(|f| f.size.unwrap_or(0)).sum::<u64>();
    let progress = Progress::new(
        opts.progress,
        total_bytes,
        cached_bytes + partial.iter().sum::<u64>(),
        &spec.to_string(),
    );
    let settings = Settings {
        connections: opts.connections.max(1),
        min_part_bytes: opts.min_part_bytes,
        cancel: opts.cancel.clone(),
    };
    for (file, partial) in missing.iter().zip(partial) {
        let meta = api.file_meta(&spec.repo_id, &commit, &file.path)?;
        let _lock = FileLock::acquire(&target.lock_path(&file.path, &meta.etag)?, || {
            eprintln!(
                "waiting for another process that is downloading {}",
                file.path
            );
        })?;
        // Another process may have finished it while we waited for the lock.
        if target.has(&file.path, &meta.etag)? {
            progress.skip(meta.size.saturating_sub(partial));
            let local_path = target.place(&commit, &file.path, &meta.etag)?;
            reports.push(FileReport {
                repo_path: file.path.clone(),
                local_path,
                size: meta.size,
                status: FileStatus::Cached,
            });
            continue;
        }
        let checksum = match (&file.lfs_sha256, &file.blob_id) {
            (Some(sha256), _) => Some(Checksum::Sha256(sha256.clone())),
            _ if meta.is_lfs && is_hex(&meta.etag, 64) => Some(Checksum::Sha256(meta.etag.clone())),
            // Only when the listing agrees the etag is the git blob id (mirrors may differ).
            (None, Some(blob_id)) if *blob_id == meta.etag && is_hex(&meta.etag, 40) => {
                Some(Checksum::GitSha1(meta.etag.clone()))
            }
            _ => None,
        };
        let transfer = Transfer {
            api: &api,
            ctx: ErrorContext {
                repo: &spec.repo_id,
                revision: &commit,
                path: Some(&file.path),
            },
            url: &meta.download_url,
            send_auth: meta.send_auth,
            size: meta.size,
            checksum,
            incomplete: target.incomplete(&file.path, &meta.etag)?,
            dest: target.final_path(&file.path, &meta.etag)?,
        };
        let already = fetch::partial_bytes(&transfer.incomplete).min(meta.size);
        let bar = progress.file(&file.path, meta.size, already);
        let resumed = fetch::fetch(&transfer, &settings, &bar);
        bar.finish();
        let resumed = resumed?;
        let local_path = target.place(&commit, &file.path, &meta.etag)?;
        let status = if resumed > 0 {
            FileStatus::Resumed {
                from_bytes: resumed,
            }
        } else {
            FileStatus::Downloaded
        };
        reports.push(FileReport {
            repo_path: file.path.clone(),
            local_path,
            size: meta.size,
            status,
        });
    }
    progress.finish();
    reports.sort_by(|a, b| a.repo_path.cmp(&b.repo_path));
    Ok(DownloadReport {
        repo_id: spec.repo_id.clone(),
        revision: spec.revision.clone(),
        path: target.root(&commit),
        commit,
        files: reports,
    })
}

/// Where files go: the shared cache (blobs + snapshot links) or a plain folder.
enum Target<'a> {
    Cache(&'a RepoCache),
    Local(LocalDir),
}

impl Target<'_> {
    fn has(&self, repo_path: &str, etag: &str) -> Result<bool> {
        match self {
            Target::Cache(cache) => Ok(cache.blob_path(etag).is_file()),
            Target::Local(local) => local.is_current(repo_path, etag),
        }
    }

    fn incomplete(&self, repo_path: &str, etag: &str) -> Result<PathBuf> {
        match self {
            Target::Cache(cache) => Ok(cache.blobs_dir().join(format!("{etag}{INCOMPLETE}"))),
            Target::Local(local) => local.incomplete_path(repo_path, etag),
        }
    }

    fn final_path(&self, repo_path: &str, etag: &str) -> Result<PathBuf> {
        match self {
            Target::Cache(cache) => Ok(cache.blob_path(etag)),
            Target::Local(local) => local.file_path(repo_path),
        }
    }

    fn lock_path(&self, repo_path: &str, etag: &str) -> Result<PathBuf> {
        match self {
            Target::Cache(cache) => Ok(cache.lock_path(etag)),
            Target::Local(local) => local.lock_path(repo_path),
        }
    }

    /// Makes a finished file visible: a snapshot link, or the local-dir metadata.
    fn place(&self, commit: &str, repo_path: &str, etag: &str) -> Result<PathBuf> {
        match self {
            Target::Cache(cache) => cache.link(commit, repo_path, etag),
            Target::Local(local) => {
                local.write_metadata(repo_path, commit, etag)?;
                local.file_path(repo_path)
            }
        }
    }

    fn root(&self, commit: &str) -> PathBuf {
        match self {
            Target::Cache(cache) => cache.snapshot_dir(commit),
            Target::Local(local) => local.root.clone(),
        }
    }

    fn tree_path(&self, commit: &str) -> PathBuf {
        match self {
            Target::Cache(cache) => cache.tree_path(commit),
            Target::Local(local) => local.tree_path(commit),
        }
    }

    fn space_dir(&self) -> PathBuf {
        match self {
            Target::Cache(cache) => cache.blobs_dir(),
            Target::Local(local) => local.root.clone(),
        }
    }
}

fn check_free_space(dir: &Path, needed: u64) -> Result<()> {
    if needed == 0 {
        return Ok(());
    }
    let available = fs4::available_space(dir)
        .io_context(|| format!("checking free space in {}", dir.display()))?;
    if needed > available {
        return Err(HubError::NotEnoughSpace {
            dir: dir.to_path_buf(),
            needed: HumanBytes(needed).to_string(),
            available: HumanBytes(available).to_string(),
        });
    }
    Ok(())
}

/// Offline `download`: the cached snapshot if it is usable, else a clear error.
fn offline_report(
    spec: &RepoSpec,
    cfg: &HubConfig,
    cache: &RepoCache,
    filter: &FileFilter,
    opts: &DownloadOptions,
    selection: Selection,
) -> Result<DownloadReport> {
    let found = if opts.local_dir.is_some() {
        None
    } else {
        cache.cached_snapshot(&spec.revision, filter, selection)?
    };
    let Some((commit, dir)) = found else {
        return Err(offline_error(spec, cfg, cache, filter, opts, selection));
    };
    let mut files = Vec::new();
    let mut stack = vec![(dir.clone(), String::new())];
    while let Some((path, prefix)) = stack.pop() {
        for entry in
            std::fs::read_dir(&path).io_context(|| format!("listing {}", path.display()))?
        {
            let entry = entry.io_context(|| format!("listing {}", path.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let repo_path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let local_path = entry.path();
            if local_path.is_dir() {
                stack.push((local_path, repo_path));
            } else if filter.matches(&repo_path) {
                let size = std::fs::metadata(&local_path).map(|m| m.len()).unwrap_or(0);
                files.push(FileReport {
                    repo_path,
                    local_path,
                    size,
                    status: FileStatus::Cached,
                });
            }
        }
    }
    files.sort_by(|a, b| a.repo_path.cmp(&b.repo_path));
    Ok(DownloadReport {
        repo_id: spec.repo_id.clone(),
        revision: spec.revision.clone(),
        commit,
        path: dir,
        files,
    })
}

fn offline_error(
    spec: &RepoSpec,
    cfg: &HubConfig,
    cache: &RepoCache,
    filter: &FileFilter,
    opts: &DownloadOptions,
    selection: Selection,
) -> HubError {
    let detail = if opts.local_dir.is_some() {
        " (filling --local-dir needs the network)".to_string()
    } else {
        match cache.resolve_ref(&spec.revision) {
            Ok(None) => String::new(),
            Ok(Some(commit)) => match snapshot_complete(
                &cache.snapshot_dir(&commit),
                read_tree_cache(&cache.tree_path(&commit)).as_deref(),
                filter,
                selection,
            ) {
                Ok(()) => String::new(),
                Err(why) => format!(
                    " (its snapshot {} is incomplete: {why})",
                    &commit[..commit.len().min(10)]
                ),
            },
            Err(e) => format!(" ({e})"),
        }
    };
    HubError::Offline {
        repo: spec.repo_id.clone(),
        revision: spec.revision.clone(),
        cache: cfg.cache_dir.clone(),
        detail,
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}
