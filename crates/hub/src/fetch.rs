//! One file's transfer: ranged parts in parallel threads that survive a kill, retries that resume where a connection dropped, checksum, atomic rename.
//!
//! On disk a transfer is `X.incomplete` (bytes `0..` of the file, so huggingface-cli can
//! resume it from its length as it always does) plus, while parallel, `X.incomplete.part-S`
//! files holding bytes `S..` of later ranges. Every byte read from the network is written
//! straight through to these files and a file's length is its progress, so a kill loses only
//! what was still in flight; the next run plans from the lengths it finds.

use crate::api::{Api, ErrorContext};
use crate::error::{HubError, IoContext, Result};
use crate::progress::FileBar;
use reqwest::{StatusCode, Url};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Read size from the socket and for hashing.
const BUF_BYTES: usize = 256 * 1024;
/// Consecutive failures of one range without any progress before giving up.
const MAX_RETRIES: u32 = 5;
/// How many times a file is fetched from scratch when its checksum does not match.
const CHECKSUM_ATTEMPTS: u32 = 2;
const PART_MARK: &str = ".part-";

/// What the bytes of a finished file must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Checksum {
    /// LFS files: the sha256 of the content, from the listing (and the `X-Linked-Etag`).
    Sha256(String),
    /// Other files: git's blob sha1, `sha1("blob {len}\0" + content)`, which is their etag.
    GitSha1(String),
}

/// Everything needed to bring one remote file to `dest`.
pub(crate) struct Transfer<'a> {
    pub api: &'a Api,
    pub ctx: ErrorContext<'a>,
    pub url: &'a Url,
    pub send_auth: bool,
    pub size: u64,
    pub checksum: Option<Checksum>,
    /// `blobs/{etag}.incomplete` in the cache, or the local-dir equivalent.
    pub incomplete: PathBuf,
    /// Where the verified file is renamed to.
    pub dest: PathBuf,
}

/// Knobs shared by all files of a download.
pub(crate) struct Settings {
    pub connections: usize,
    pub min_part_bytes: u64,
    pub cancel: Option<Arc<AtomicBool>>,
}

/// One contiguous range of the file and the file on disk that holds it.
#[derive(Debug, Clone)]
struct Segment {
    start: u64,
    end: u64,
    path: PathBuf,
    /// Bytes of `start..end` already on disk.
    have: u64,
}

/// Bytes of this transfer already on disk from an earlier, interrupted run.
pub(crate) fn partial_bytes(incomplete: &Path) -> u64 {
    let head = std::fs::metadata(incomplete).map(|m| m.len()).unwrap_or(0);
    head + part_files(incomplete)
        .map(|parts| parts.iter().map(|(_, _, len)| len).sum())
        .unwrap_or(0)
}

/// Downloads, verifies and renames into place; returns how many bytes were already there.
pub(crate) fn fetch(t: &Transfer<'_>, settings: &Settings, bar: &FileBar) -> Result<u64> {
    let resumed = partial_bytes(&t.incomplete).min(t.size);
    let mut attempt = 1;
    loop {
        let segments = plan(t, settings)?;
        run_segments(t, settings, &segments, bar)?;
        let Some((algorithm, expected, actual)) = assemble(t, &segments)? else {
            return Ok(resumed);
        };
        remove_partials(&t.incomplete)?;
        bar.rewind(t.size);
        if attempt == CHECKSUM_ATTEMPTS {
            return Err(HubError::ChecksumMismatch {
                path: t.ctx.path.unwrap_or_default().to_string(),
                algorithm,
                expected,
                actual,
                attempts: attempt,
            });
        }
        attempt += 1;
    }
}

/// Turns what is on disk into the list of ranges to finish. The first run of a large file
/// splits it into `connections` parts; later runs keep whatever split they find, so a resume
/// with another `--connections` still continues every part.
fn plan(t: &Transfer<'_>, settings: &Settings) -> Result<Vec<Segment>> {
    let head_len = match std::fs::metadata(&t.incomplete) {
        Ok(m) => m.len(),
        Err(_) => {
            if let Some(dir) = t.incomplete.parent() {
                std::fs::create_dir_all(dir)
                    .io_context(|| format!("creating {}", dir.display()))?;
            }
            File::create(&t.incomplete)
                .io_context(|| format!("creating {}", t.incomplete.display()))?;
            0
        }
    };
    if head_len > t.size {
        // Longer than the file: not ours or the file changed; start over.
        remove_partials(&t.incomplete)?;
        File::create(&t.incomplete)
            .io_context(|| format!("creating {}", t.incomplete.display()))?;
        return plan(t, settings);
    }
    let mut segments = vec![Segment {
        start: 0,
        end: t.size,
        path: t.incomplete.clone(),
        have: head_len,
    }];
    for (start, path, len) in part_files(&t.incomplete)? {
        let Some(prev) = segments.last() else { break };
        // A part that starts inside data an earlier range already holds (huggingface-cli
        // extended the head, or we were killed while appending it) adds nothing.
        if start == 0 || start >= t.size || prev.start + prev.have > start {
            std::fs::remove_file(&path)
                .io_context(|| format!("removing stale part {}", path.display()))?;
            continue;
        }
        segments.push(Segment {
            start,
            end: t.size,
            path,
            have: len,
        });
    }
    if segments.len() == 1 {
        let remaining = t.size - head_len;
        let parts =
            (remaining / settings.min_part_bytes.max(1)).min(settings.connections.max(1) as u64);
        for k in 1..parts {
            let start = head_len + k * (remaining / parts);
            let path = part_path(&t.incomplete, start);
            File::create(&path).io_context(|| format!("creating {}", path.display()))?;
            segments.push(Segment {
                start,
                end: t.size,
                path,
                have: 0,
            });
        }
    }
    let starts: Vec<u64> = segments
        .iter()
        .skip(1)
        .map(|s| s.start)
        .chain([t.size])
        .collect();
    for (segment, end) in segments.iter_mut().zip(starts) {
        segment.end = end;
        if segment.have > end - segment.start {
            let file = OpenOptions::new()
                .write(true)
                .open(&segment.path)
                .io_context(|| format!("opening {}", segment.path.display()))?;
            file.set_len(end - segment.start)
                .io_context(|| format!("trimming {}", segment.path.display()))?;
            segment.have = end - segment.start;
        }
    }
    Ok(segments)
}

/// Downloads every unfinished range, one thread each; the first failure stops the others.
fn run_segments(
    t: &Transfer<'_>,
    settings: &Settings,
    segments: &[Segment],
    bar: &FileBar,
) -> Result<()> {
    let stop = AtomicBool::new(false);
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = segments
            .iter()
            .filter(|s| s.start + s.have < s.end)
            .map(|segment| {
                let stop = &stop;
                scope.spawn(move || {
                    let result = download_segment(t, settings, segment, bar, stop);
                    if result.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(HubError::Protocol {
                        url: t.url.to_string(),
                        message: "a download thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let user_cancelled = settings
        .cancel
        .as_ref()
        .is_some_and(|c| c.load(Ordering::Relaxed));
    let mut errors = results.into_iter().filter_map(|r| r.err());
    let first = errors.next();
    match first {
        None => Ok(()),
        // Threads stopped because a sibling failed report Cancelled; report the real cause.
        Some(HubError::Cancelled) if !user_cancelled => Err(errors
            .find(|e| !matches!(e, HubError::Cancelled))
            .unwrap_or(HubError::Cancelled)),
        Some(e) => Err(e),
    }
}

/// How one request for a range ended.
enum Attempt {
    Done,
    Retry(HubError),
    Fatal(HubError),
}

fn download_segment(
    t: &Transfer<'_>,
    settings: &Settings,
    segment: &Segment,
    bar: &FileBar,
    stop: &AtomicBool,
) -> Result<()> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&segment.path)
        .io_context(|| format!("opening {}", segment.path.display()))?;
    let mut have = segment.have;
    let mut failures = 0u32;
    loop {
        let before = have;
        let outcome = stream_range(t, settings, segment, &mut file, &mut have, bar, stop);
        if have > before {
            failures = 0;
        }
        match outcome {
            Attempt::Done if segment.start + have >= segment.end => return Ok(()),
            Attempt::Done => {}
            Attempt::Fatal(e) => return Err(e),
            Attempt::Retry(e) => {
                failures += 1;
                if failures > MAX_RETRIES {
                    return Err(e);
                }
                // Backoff, still answering a cancel within a tenth of a second.
                let wait = Duration::from_millis(250 << (failures - 1).min(4));
                let mut waited = Duration::ZERO;
                while waited < wait {
                    if cancelled(settings, stop) {
                        return Err(HubError::Cancelled);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    waited += Duration::from_millis(100);
                }
            }
        }
    }
}

/// One GET for the rest of a range, appended to its file as it arrives.
fn stream_range(
    t: &Transfer<'_>,
    settings: &Settings,
    segment: &Segment,
    file: &mut File,
    have: &mut u64,
    bar: &FileBar,
    stop: &AtomicBool,
) -> Attempt {
    let pos = segment.start + *have;
    if cancelled(settings, stop) {
        return Attempt::Fatal(HubError::Cancelled);
    }
    let mut response = match t.api.get_range(t.url, t.send_auth, pos, segment.end) {
        Ok(r) => r,
        Err(e) => return Attempt::Retry(e),
    };
    let status = response.status();
    let mut skip = match status {
        StatusCode::PARTIAL_CONTENT => {
            let range = crate::api::header(response.headers(), "content-range").unwrap_or_default();
            match content_range_start(&range) {
                Some(start) if start == pos => 0,
                _ => {
                    return Attempt::Fatal(HubError::Protocol {
                        url: t.url.to_string(),
                        message: format!("asked for bytes from {pos}, got Content-Range '{range}'"),
                    })
                }
            }
        }
        // A server that ignores Range sends the whole file: skip to where we are.
        StatusCode::OK => pos,
        s if s.is_server_error()
            || s == StatusCode::TOO_MANY_REQUESTS
            || s == StatusCode::REQUEST_TIMEOUT =>
        {
            return Attempt::Retry(HubError::Http {
                url: t.url.to_string(),
                status: s.as_u16(),
                detail: String::new(),
            })
        }
        _ => {
            return Attempt::Fatal(match t.api.check(response, t.url, &t.ctx) {
                Err(e) => e,
                Ok(_) => HubError::Http {
                    url: t.url.to_string(),
                    status: status.as_u16(),
                    detail: String::new(),
                },
            })
        }
    };
    let mut buf = vec![0u8; BUF_BYTES];
    loop {
        if cancelled(settings, stop) {
            return Attempt::Fatal(HubError::Cancelled);
        }
        let n = match response.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                return Attempt::Retry(HubError::Io {
                    context: format!("reading {}", t.url),
                    cause: e,
                })
            }
        };
        if n == 0 {
            let at = segment.start + *have;
            return if at >= segment.end {
                Attempt::Done
            } else {
                Attempt::Retry(HubError::Protocol {
                    url: t.url.to_string(),
                    message: format!("connection closed at byte {at} of {}", t.size),
                })
            };
        }
        let mut data = &buf[..n];
        if skip > 0 {
            let s = skip.min(data.len() as u64) as usize;
            skip -= s as u64;
            data = &data[s..];
        }
        let room = (segment.end - segment.start - *have).min(data.len() as u64) as usize;
        if let Err(e) = file.write_all(&data[..room]) {
            return Attempt::Fatal(HubError::Io {
                context: format!("writing {}", segment.path.display()),
                cause: e,
            });
        }
        *have += room as u64;
        bar.inc(room as u64);
        if segment.start + *have >= segment.end {
            return Attempt::Done;
        }
    }
}

fn cancelled(settings: &Settings, stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed)
        || settings
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
}

/// `bytes 100-199/1000` -> 100.
fn content_range_start(value: &str) -> Option<u64> {
    value
        .trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Appends the parts to the head file while hashing everything, then renames the result into
/// place if it verifies. Returns the mismatch (algorithm, expected, actual) if it does not.
fn assemble(
    t: &Transfer<'_>,
    segments: &[Segment],
) -> Result<Option<(&'static str, String, String)>> {
    let mut hasher = Hasher::new(t.checksum.as_ref(), t.size);
    let head_end = segments.first().map(|s| s.end).unwrap_or(t.size);
    let mut reader =
        File::open(&t.incomplete).io_context(|| format!("opening {}", t.incomplete.display()))?;
    hash_from(&mut reader, head_end, &mut hasher, None)
        .io_context(|| format!("reading {}", t.incomplete.display()))?;
    let mut head = OpenOptions::new()
        .append(true)
        .open(&t.incomplete)
        .io_context(|| format!("opening {}", t.incomplete.display()))?;
    for part in segments.iter().skip(1) {
        let mut reader =
            File::open(&part.path).io_context(|| format!("opening {}", part.path.display()))?;
        hash_from(
            &mut reader,
            part.end - part.start,
            &mut hasher,
            Some(&mut head),
        )
        .io_context(|| {
            format!(
                "appending {} to {}",
                part.path.display(),
                t.incomplete.display()
            )
        })?;
        std::fs::remove_file(&part.path)
            .io_context(|| format!("removing {}", part.path.display()))?;
    }
    let len = head
        .metadata()
        .io_context(|| format!("reading {}", t.incomplete.display()))?
        .len();
    if len != t.size {
        return Err(HubError::Protocol {
            url: t.url.to_string(),
            message: format!("assembled {len} bytes, expected {}", t.size),
        });
    }
    if let Some((algorithm, expected, actual)) = hasher.mismatch(t.checksum.as_ref()) {
        return Ok(Some((algorithm, expected, actual)));
    }
    // Durable before it gets its final name, so a crash never leaves a short "complete" blob.
    head.sync_all()
        .io_context(|| format!("syncing {}", t.incomplete.display()))?;
    drop(head);
    if let Some(dir) = t.dest.parent() {
        std::fs::create_dir_all(dir).io_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::rename(&t.incomplete, &t.dest)
        .io_context(|| format!("moving {} to {}", t.incomplete.display(), t.dest.display()))?;
    Ok(None)
}

/// Reads exactly `len` bytes into the hasher, copying them to `out` when given.
fn hash_from(
    reader: &mut File,
    len: u64,
    hasher: &mut Hasher,
    mut out: Option<&mut File>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF_BYTES];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        reader.read_exact(&mut buf[..want])?;
        hasher.update(&buf[..want]);
        if let Some(out) = out.as_mut() {
            out.write_all(&buf[..want])?;
        }
        left -= want as u64;
    }
    Ok(())
}

enum Hasher {
    None,
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Hasher {
    fn new(checksum: Option<&Checksum>, size: u64) -> Self {
        match checksum {
            None => Hasher::None,
            Some(Checksum::Sha256(_)) => Hasher::Sha256(Sha256::new()),
            Some(Checksum::GitSha1(_)) => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Hasher::GitSha1(h)
            }
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Sha256(h) => h.update(data),
            Hasher::GitSha1(h) => h.update(data),
        }
    }

    fn mismatch(self, checksum: Option<&Checksum>) -> Option<(&'static str, String, String)> {
        let (algorithm, expected, actual) = match (self, checksum) {
            (Hasher::Sha256(h), Some(Checksum::Sha256(e))) => ("sha256", e, hex(&h.finalize())),
            (Hasher::GitSha1(h), Some(Checksum::GitSha1(e))) => ("git-sha1", e, hex(&h.finalize())),
            _ => return None,
        };
        (actual != expected.to_ascii_lowercase()).then(|| (algorithm, expected.clone(), actual))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn part_path(incomplete: &Path, start: u64) -> PathBuf {
    let mut name = incomplete.as_os_str().to_owned();
    name.push(format!("{PART_MARK}{start}"));
    PathBuf::from(name)
}

/// `(start, path, length)` of every `X.incomplete.part-S` beside `X.incomplete`, by start.
fn part_files(incomplete: &Path) -> Result<Vec<(u64, PathBuf, u64)>> {
    let (Some(dir), Some(name)) = (incomplete.parent(), incomplete.file_name()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}{PART_MARK}", name.to_string_lossy());
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).io_context(|| format!("listing {}", dir.display())),
    };
    let mut parts = Vec::new();
    for entry in entries {
        let entry = entry.io_context(|| format!("listing {}", dir.display()))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(start) = file_name
            .strip_prefix(&prefix)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        parts.push((start, entry.path(), len));
    }
    parts.sort_by_key(|(start, _, _)| *start);
    Ok(parts)
}

/// Deletes the head file and all parts of a transfer.
pub(crate) fn remove_partials(incomplete: &Path) -> Result<()> {
    for (_, path, _) in part_files(incomplete)? {
        std::fs::remove_file(&path).io_context(|| format!("removing {}", path.display()))?;
    }
    match std::fs::remove_file(incomplete) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).io_context(|| format!("removing {}", incomplete.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(content_range_start("bytes 100-199/1000"), Some(100));
        assert_eq!(content_range_start("bytes */1000"), None);
    }

    #[test]
    fn git_blob_sha1_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut h = Hasher::new(Some(&Checksum::GitSha1(String::new())), 6);
        h.update(b"hello\n");
        let expected = "ce013625030ba8dba906f756967f9e9ca394464a".to_string();
        assert_eq!(h.mismatch(Some(&Checksum::GitSha1(expected))), None);
    }

    #[test]
    fn finds_parts_by_start_offset() {
        let dir = tempfile::tempdir().unwrap();
        let head = dir.path().join("abc.incomplete");
        std::fs::write(&head, b"0123").unwrap();
        std::fs::write(part_path(&head, 300), b"xy").unwrap();
        std::fs::write(part_path(&head, 20), b"z").unwrap();
        std::fs::write(dir.path().join("abd.incomplete.part-5"), b"other file").unwrap();
        let parts: Vec<(u64, u64)> = part_files(&head)
            .unwrap()
            .into_iter()
            .map(|(s, _, l)| (s, l))
            .collect();
        assert_eq!(parts, vec![(20, 1), (300, 2)]);
        assert_eq!(partial_bytes(&head), 7);
        remove_partials(&head).unwrap();
        assert_eq!(partial_bytes(&head), 0);
        assert!(dir.path().join("abd.incomplete.part-5").exists());
    }
}
