//! End-to-end tests of downloads against a fake Hub on 127.0.0.1: cache layout, branches, resume, ranges, checksums, errors, offline mode, globs, local dirs, a killed process.

#[path = "support/fake_hub.rs"]
mod fake_hub;

use fake_hub::{
    FakeHub, BROKEN_REPO, GATED_REPO, GGUF_REPO, GPTQ_BRANCH, HUGE_REPO, MULTI_FORMAT_REPO,
    RENAMED_REPO, REPO, VALID_TOKEN,
};
use hub::{
    download, resolve_model, run_download_with, DownloadArgs, DownloadOptions, FileStatus,
    HubConfig, HubError, RepoSpec,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENDPOINT: &str = "HUB_TEST_CHILD_ENDPOINT";
const CHILD_CACHE: &str = "HUB_TEST_CHILD_CACHE";

struct Setup {
    hub: FakeHub,
    _dir: tempfile::TempDir,
    cfg: HubConfig,
}

fn setup() -> Setup {
    let hub = FakeHub::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = HubConfig::new(&hub.endpoint(), dir.path().join("hub"));
    Setup {
        hub,
        _dir: dir,
        cfg,
    }
}

/// Small parts so the few-MB fake weights are split four ways, as a 40 GB file would be.
fn opts() -> DownloadOptions {
    DownloadOptions {
        connections: 4,
        min_part_bytes: 256 * 1024,
        read_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

fn spec(s: &str) -> RepoSpec {
    RepoSpec::parse(s, None).unwrap()
}

fn gptq() -> RepoSpec {
    spec(&format!("{REPO}:{GPTQ_BRANCH}"))
}

fn sha256_of(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn repo_dir(cfg: &HubConfig, repo: &str) -> PathBuf {
    cfg.cache_dir
        .join(format!("models--{}", repo.replace('/', "--")))
}

/// Bytes of an unfinished blob on disk: its `.incomplete` file and parallel parts.
fn partial_bytes(blobs: &Path, etag: &str) -> u64 {
    let prefix = format!("{etag}.incomplete");
    std::fs::read_dir(blobs)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn leftovers(blobs: &Path) -> Vec<String> {
    std::fs::read_dir(blobs)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".incomplete"))
                .collect()
        })
        .unwrap_or_default()
}

fn status_of(report: &hub::DownloadReport, path: &str) -> FileStatus {
    report
        .files
        .iter()
        .find(|f| f.repo_path == path)
        .map(|f| f.status)
        .expect("file in report")
}

#[test]
fn downloads_a_branch_into_the_hf_cache_layout() {
    let Setup { hub, cfg, .. } = setup();
    let report = download(&spec(REPO), &cfg, &opts()).unwrap();
    let commit = hub.commit(REPO, "main");
    let root = repo_dir(&cfg, REPO);
    assert_eq!(report.commit, commit);
    assert_eq!(report.path, root.join("snapshots").join(&commit));
    assert_eq!(
        std::fs::read_to_string(root.join("refs/main")).unwrap(),
        commit
    );
    for file in hub.files(REPO, "main") {
        let pointer = report.path.join(&file.path);
        assert_eq!(
            std::fs::read_link(&pointer).unwrap(),
            PathBuf::from(format!("../../blobs/{}", file.etag())),
            "{}",
            file.path
        );
        assert_eq!(
            std::fs::read(&pointer).unwrap(),
            *file.content,
            "{}",
            file.path
        );
        assert!(root.join("blobs").join(file.etag()).is_file());
        assert_eq!(status_of(&report, &file.path), FileStatus::Downloaded);
    }
    // LFS blobs are named by sha256, the others by git sha1, as huggingface_hub names them.
    let model = hub.file(REPO, "main", "model.safetensors");
    assert_eq!(
        sha256_of(&root.join("blobs").join(model.sha256())),
        model.sha256()
    );
    assert_eq!(hub.file(REPO, "main", "config.json").etag().len(), 40);
    assert!(leftovers(&root.join("blobs")).is_empty());
    assert_eq!(
        report.downloaded_bytes(),
        hub.files(REPO, "main")
            .iter()
            .map(|f| f.size())
            .sum::<u64>()
    );
}

#[test]
fn two_branches_have_their_own_commits_and_share_blobs() {
    let Setup { hub, cfg, .. } = setup();
    let main = download(&spec(REPO), &cfg, &opts()).unwrap();
    let mark = hub.request_count();
    let quant = download(&gptq(), &cfg, &opts()).unwrap();
    assert_ne!(main.commit, quant.commit);
    let root = repo_dir(&cfg, REPO);
    assert_eq!(
        std::fs::read_to_string(root.join("refs").join(GPTQ_BRANCH)).unwrap(),
        hub.commit(REPO, GPTQ_BRANCH)
    );
    assert_eq!(
        std::fs::read_to_string(root.join("refs/main")).unwrap(),
        hub.commit(REPO, "main")
    );
    // Same bytes on both branches: one blob, no request for it the second time.
    assert_eq!(status_of(&quant, "tokenizer.json"), FileStatus::Cached);
    assert_eq!(status_of(&quant, "README.md"), FileStatus::Cached);
    assert!(!hub.requests()[mark..]
        .iter()
        .any(|r| r.path.contains("tokenizer.json")));
    assert_eq!(
        std::fs::read(quant.path.join("quantize_config.json")).unwrap(),
        *hub.file(REPO, GPTQ_BRANCH, "quantize_config.json").content
    );
    assert_ne!(
        std::fs::read(quant.path.join("model.safetensors")).unwrap(),
        std::fs::read(main.path.join("model.safetensors")).unwrap()
    );
}

#[test]
fn resolve_model_hits_the_cache_without_any_request() {
    let Setup { hub, cfg, .. } = setup();
    let first = resolve_model(&gptq(), &cfg, &opts()).unwrap();
    assert_eq!(
        first,
        repo_dir(&cfg, REPO)
            .join("snapshots")
            .join(hub.commit(REPO, GPTQ_BRANCH))
    );
    let before = hub.request_count();
    assert!(before > 0);
    let second = resolve_model(&gptq(), &cfg, &opts()).unwrap();
    assert_eq!(second, first);
    assert_eq!(
        hub.request_count(),
        before,
        "a cached model must not touch the network"
    );
}

#[test]
fn large_files_come_in_parallel_ranged_parts() {
    let Setup { hub, cfg, .. } = setup();
    let report = download(&gptq(), &cfg, &opts()).unwrap();
    let model = hub.file(REPO, GPTQ_BRANCH, "model.safetensors");
    let mut ranges: Vec<(u64, u64)> = hub
        .cdn_gets(&model.sha256(), 0)
        .iter()
        .map(|r| (r.range.unwrap().0, r.range.unwrap().1.unwrap()))
        .collect();
    ranges.sort();
    assert_eq!(ranges.len(), 4, "{ranges:?}");
    assert_eq!(ranges[0].0, 0);
    assert_eq!(ranges[3].1, model.size() - 1);
    for pair in ranges.windows(2) {
        assert_eq!(
            pair[0].1 + 1,
            pair[1].0,
            "parts must tile the file: {ranges:?}"
        );
    }
    assert_eq!(
        sha256_of(&report.path.join("model.safetensors")),
        model.sha256()
    );
}

#[test]
fn an_interrupted_transfer_resumes_with_a_range_request() {
    let Setup { hub, cfg, .. } = setup();
    hub.behave(|b| b.cut_after = Some((300 * 1024, 2)));
    let report = download(
        &spec(REPO),
        &cfg,
        &DownloadOptions {
            connections: 1,
            ..opts()
        },
    )
    .unwrap();
    let model = hub.file(REPO, "main", "model.safetensors");
    let starts: Vec<u64> = hub
        .cdn_gets(&model.sha256(), 0)
        .iter()
        .map(|r| r.range.unwrap().0)
        .collect();
    assert_eq!(starts, vec![0, 300 * 1024, 600 * 1024]);
    assert_eq!(
        sha256_of(&report.path.join("model.safetensors")),
        model.sha256()
    );
}

#[test]
fn a_wrong_checksum_is_fetched_again() {
    let Setup { hub, cfg, .. } = setup();
    hub.behave(|b| b.corrupt_once = true);
    let report = download(&gptq(), &cfg, &opts()).unwrap();
    let model = hub.file(REPO, GPTQ_BRANCH, "model.safetensors");
    assert_eq!(
        hub.cdn_gets(&model.sha256(), 0).len(),
        8,
        "two rounds of four parts"
    );
    assert_eq!(
        sha256_of(&report.path.join("model.safetensors")),
        model.sha256()
    );
}

#[test]
fn a_persistently_wrong_checksum_fails_and_leaves_nothing_corrupt() {
    let Setup { hub, cfg, .. } = setup();
    hub.behave(|b| b.corrupt_always = true);
    let err = download(&gptq(), &cfg, &opts()).unwrap_err();
    let model = hub.file(REPO, GPTQ_BRANCH, "model.safetensors");
    assert!(
        matches!(err, HubError::ChecksumMismatch { attempts: 2, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "checksum mismatch for 'model.safetensors': expected sha256 {}, got ",
            model.sha256()
        )),
        "{message}"
    );
    assert!(
        message.ends_with(
            "(downloaded 2 times; the corrupt data was deleted, nothing was written to the cache)"
        ),
        "{message}"
    );
    let root = repo_dir(&cfg, REPO);
    let snapshot = root.join("snapshots").join(hub.commit(REPO, GPTQ_BRANCH));
    assert!(
        snapshot
            .join("model.safetensors")
            .symlink_metadata()
            .is_err(),
        "no corrupt file may be linked"
    );
    assert!(!root.join("blobs").join(model.sha256()).exists());
    assert!(
        leftovers(&root.join("blobs")).is_empty(),
        "{:?}",
        leftovers(&root.join("blobs"))
    );
    // And the model is not mistaken for a cached one afterwards.
    hub.behave(|b| b.corrupt_always = false);
    let path = resolve_model(&gptq(), &cfg, &opts()).unwrap();
    assert_eq!(sha256_of(&path.join("model.safetensors")), model.sha256());
}

#[test]
fn missing_repo_branch_file_and_gated_repo_have_precise_messages() {
    let Setup { hub, cfg, .. } = setup();
    let endpoint = hub.endpoint();
    let msg =
        |spec: &RepoSpec, cfg: &HubConfig| download(spec, cfg, &opts()).unwrap_err().to_string();
    let with_token = |token: &str| HubConfig {
        token: Some(token.to_string()),
        ..cfg.clone()
    };

    assert_eq!(
        msg(&spec("test-org/nope"), &cfg),
        format!("repository 'test-org/nope' was not found on {endpoint}: check the spelling; if it is private, pass --token or set HF_TOKEN")
    );
    assert_eq!(
        msg(&spec("test-org/nope"), &with_token("hf_x")),
        format!("repository 'test-org/nope' was not found on {endpoint}: check the spelling, or the token has no access to it")
    );
    assert_eq!(
        msg(&spec(&format!("{REPO}:gptq-8bit")), &cfg),
        "branch or revision 'gptq-8bit' was not found in 'test-org/tiny-model': check the branch name (the repo page lists its branches under 'Files and versions')"
    );
    assert_eq!(
        msg(&spec(GATED_REPO), &cfg),
        "access to 'test-org/gated-model' was refused (HTTP 401): the repository is gated or private. Pass --token or set HF_TOKEN (or run `huggingface-cli login`) with a token that has access."
    );
    assert_eq!(
        msg(&spec(GATED_REPO), &with_token("hf_wrong")),
        format!("access to 'test-org/gated-model' was refused (HTTP 403): the repository is gated or private. A token was sent but has no access: accept the model's conditions at {endpoint}/test-org/gated-model with the account that owns the token, or use another token.")
    );
    let commit = hub.commit(BROKEN_REPO, "main");
    assert_eq!(
        msg(&spec(BROKEN_REPO), &cfg),
        format!("file 'model.safetensors' was not found in 'test-org/broken-model' at revision '{commit}'")
    );

    let mark = hub.request_count();
    download(&spec(GATED_REPO), &with_token(VALID_TOKEN), &opts()).unwrap();
    let requests = hub.requests();
    let hub_requests: Vec<_> = requests[mark..]
        .iter()
        .filter(|r| !r.path.starts_with("/cdn/"))
        .collect();
    assert!(
        hub_requests
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer hf_valid_token")),
        "{hub_requests:?}"
    );
    let cdn_requests: Vec<_> = requests[mark..]
        .iter()
        .filter(|r| r.path.starts_with("/cdn/"))
        .collect();
    assert!(!cdn_requests.is_empty());
    assert!(
        cdn_requests.iter().all(|r| r.authorization.is_none()),
        "the token must not leave the Hub: {cdn_requests:?}"
    );
}

#[test]
fn offline_mode_uses_only_the_cache() {
    let Setup { hub, cfg, .. } = setup();
    let offline = HubConfig {
        offline: true,
        ..cfg.clone()
    };
    let err = resolve_model(&spec(REPO), &offline, &opts()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "offline mode (HF_HUB_OFFLINE=1): 'test-org/tiny-model' at revision 'main' is not in the cache at {}; unset HF_HUB_OFFLINE to download it",
            cfg.cache_dir.display()
        )
    );
    assert_eq!(hub.request_count(), 0);

    let online = download(&spec(REPO), &cfg, &opts()).unwrap();
    let before = hub.request_count();
    assert_eq!(
        resolve_model(&spec(REPO), &offline, &opts()).unwrap(),
        online.path
    );
    let report = download(&spec(REPO), &offline, &opts()).unwrap();
    assert_eq!(report.commit, online.commit);
    assert!(report.files.iter().all(|f| f.status == FileStatus::Cached));
    assert_eq!(report.files.len(), hub.files(REPO, "main").len());
    assert_eq!(
        hub.request_count(),
        before,
        "offline mode must not touch the network"
    );
    assert!(matches!(
        resolve_model(&gptq(), &offline, &opts()),
        Err(HubError::Offline { .. })
    ));
}

#[test]
fn include_and_exclude_select_files() {
    let Setup { hub, cfg, .. } = setup();
    let only_json = DownloadOptions {
        include: vec!["*.json".into()],
        exclude: vec!["tokenizer*".into()],
        ..opts()
    };
    let report = download(&gptq(), &cfg, &only_json).unwrap();
    let names: Vec<&str> = report.files.iter().map(|f| f.repo_path.as_str()).collect();
    assert_eq!(names, vec!["config.json", "quantize_config.json"]);
    assert!(hub
        .cdn_gets(
            &hub.file(REPO, GPTQ_BRANCH, "model.safetensors").sha256(),
            0
        )
        .is_empty());

    // The same selection is complete in the cache; a whole model is not, so it is completed,
    // fetching only what is missing.
    let before = hub.request_count();
    resolve_model(&gptq(), &cfg, &only_json).unwrap();
    assert_eq!(hub.request_count(), before);
    let offline = HubConfig {
        offline: true,
        ..cfg.clone()
    };
    let err = resolve_model(&gptq(), &offline, &opts())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is incomplete: 3 of 5 needed files are not cached (README.md, model.safetensors, tokenizer.json))"),
        "{err}"
    );
    let full = download(&gptq(), &cfg, &opts()).unwrap();
    assert_eq!(status_of(&full, "config.json"), FileStatus::Cached);
    assert_eq!(
        status_of(&full, "model.safetensors"),
        FileStatus::Downloaded
    );

    let none = DownloadOptions {
        include: vec!["*.gguf".into()],
        ..opts()
    };
    assert_eq!(
        download(&gptq(), &cfg, &none).unwrap_err().to_string(),
        "no file of 'test-org/tiny-model' at 'gptq-4bit-128g' matches --include [\"*.gguf\"] / --exclude []; the repository has: config.json, quantize_config.json, tokenizer.json, README.md, model.safetensors"
    );
}

#[test]
fn local_dir_gets_real_files_and_huggingface_hub_metadata() {
    let Setup { hub, cfg, _dir } = setup();
    let local = _dir.path().join("meditron-gptq");
    let with_dir = DownloadOptions {
        local_dir: Some(local.clone()),
        ..opts()
    };
    let report = download(&gptq(), &cfg, &with_dir).unwrap();
    assert_eq!(report.path, local);
    let commit = hub.commit(REPO, GPTQ_BRANCH);
    for file in hub.files(REPO, GPTQ_BRANCH) {
        let path = local.join(&file.path);
        assert!(
            path.symlink_metadata().unwrap().file_type().is_file(),
            "{} must be a real file",
            file.path
        );
        assert_eq!(std::fs::read(&path).unwrap(), *file.content);
        let meta = std::fs::read_to_string(
            local
                .join(".cache/huggingface/download")
                .join(format!("{}.metadata", file.path)),
        )
        .unwrap();
        let lines: Vec<&str> = meta.lines().collect();
        assert_eq!(&lines[..2], &[commit.as_str(), file.etag().as_str()]);
        assert!(lines[2].parse::<f64>().is_ok());
    }
    assert_eq!(
        std::fs::read_to_string(local.join(".cache/huggingface/.gitignore")).unwrap(),
        "*"
    );
    assert!(
        !repo_dir(&cfg, REPO).join("blobs").exists(),
        "--local-dir must not fill the cache"
    );

    let mark = hub.request_count();
    let again = download(&gptq(), &cfg, &with_dir).unwrap();
    assert!(again.files.iter().all(|f| f.status == FileStatus::Cached));
    assert_eq!(
        hub.request_count(),
        mark + 1,
        "only the listing is asked for again"
    );
}

#[test]
fn resumes_an_incomplete_blob_left_by_huggingface_cli() {
    let Setup { hub, cfg, .. } = setup();
    let model = hub.file(REPO, "main", "model.safetensors");
    let blobs = repo_dir(&cfg, REPO).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let done = 1024 * 1024 + 5;
    std::fs::write(
        blobs.join(format!("{}.incomplete", model.sha256())),
        &model.content[..done],
    )
    .unwrap();
    let report = download(&spec(REPO), &cfg, &opts()).unwrap();
    assert_eq!(
        status_of(&report, "model.safetensors"),
        FileStatus::Resumed {
            from_bytes: done as u64
        }
    );
    let gets = hub.cdn_gets(&model.sha256(), 0);
    let mut starts: Vec<u64> = gets.iter().map(|r| r.range.unwrap().0).collect();
    starts.sort();
    assert_eq!(starts[0], done as u64, "the head continues from its length");
    assert_eq!(
        starts.len(),
        4,
        "the rest is still split four ways: {starts:?}"
    );
    assert_eq!(
        sha256_of(&report.path.join("model.safetensors")),
        model.sha256()
    );
}

/// The body of [`a_killed_download_resumes_where_it_stopped`]'s child process; a no-op when
/// the test runner calls it directly.
#[test]
fn child_process_download() {
    let (Ok(endpoint), Ok(cache)) = (std::env::var(CHILD_ENDPOINT), std::env::var(CHILD_CACHE))
    else {
        return;
    };
    let _ = download(&gptq(), &HubConfig::new(&endpoint, cache), &opts());
}

#[test]
fn a_killed_download_resumes_where_it_stopped() {
    let Setup { hub, cfg, .. } = setup();
    hub.behave(|b| b.throttle = Some(512 * 1024));
    let model = hub.file(REPO, GPTQ_BRANCH, "model.safetensors");
    let blobs = repo_dir(&cfg, REPO).join("blobs");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_download", "--test-threads", "1"])
        .env(CHILD_ENDPOINT, hub.endpoint())
        .env(CHILD_CACHE, &cfg.cache_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let head = blobs.join(format!("{}.incomplete", model.sha256()));
    while std::fs::metadata(&head).map(|m| m.len()).unwrap_or(0) < 128 * 1024
        || partial_bytes(&blobs, &model.sha256()) < 1024 * 1024
    {
        assert!(Instant::now() < deadline, "the child never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let on_disk = partial_bytes(&blobs, &model.sha256());
    assert!(on_disk < model.size(), "killed too late to test anything");
    assert!(!blobs.join(model.sha256()).exists());
    assert_eq!(
        leftovers(&blobs).len(),
        4,
        "head + three parts: {:?}",
        leftovers(&blobs)
    );

    hub.behave(|b| b.throttle = None);
    let mark = hub.request_count();
    let report = download(&gptq(), &cfg, &opts()).unwrap();
    assert_eq!(
        status_of(&report, "model.safetensors"),
        FileStatus::Resumed {
            from_bytes: on_disk
        }
    );
    let gets = hub.cdn_gets(&model.sha256(), mark);
    assert_eq!(gets.len(), 4);
    assert!(
        gets.iter().all(|r| r.range.unwrap().0 > 0),
        "every part continues past its start: {gets:?}"
    );
    let refetched: u64 = gets
        .iter()
        .map(|r| r.range.unwrap().1.unwrap() + 1 - r.range.unwrap().0)
        .sum();
    assert_eq!(
        refetched,
        model.size() - on_disk,
        "only the missing bytes are fetched again"
    );
    assert_eq!(
        sha256_of(&report.path.join("model.safetensors")),
        model.sha256()
    );
    assert!(leftovers(&blobs).is_empty());
}

#[test]
fn cancelling_keeps_the_partial_download_for_the_next_run() {
    let Setup { hub, cfg, .. } = setup();
    hub.behave(|b| b.throttle = Some(512 * 1024));
    let model = hub.file(REPO, GPTQ_BRANCH, "model.safetensors");
    let blobs = repo_dir(&cfg, REPO).join("blobs");
    let cancel = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (cancel, blobs, sha) = (cancel.clone(), blobs.clone(), model.sha256());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while partial_bytes(&blobs, &sha) < 512 * 1024 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            cancel.store(true, Ordering::Relaxed);
        })
    };
    let err = download(
        &gptq(),
        &cfg,
        &DownloadOptions {
            cancel: Some(cancel),
            ..opts()
        },
    )
    .unwrap_err();
    watcher.join().unwrap();
    assert_eq!(
        err.to_string(),
        "download cancelled; run the same command again to resume where it stopped"
    );
    let on_disk = partial_bytes(&blobs, &model.sha256());
    assert!(on_disk >= 512 * 1024 && on_disk < model.size(), "{on_disk}");
    hub.behave(|b| b.throttle = None);
    let report = download(&gptq(), &cfg, &opts()).unwrap();
    assert_eq!(
        status_of(&report, "model.safetensors"),
        FileStatus::Resumed {
            from_bytes: on_disk
        }
    );
    assert_eq!(
        sha256_of(&report.path.join("model.safetensors")),
        model.sha256()
    );
}

#[test]
fn not_enough_disk_space_is_reported_before_downloading() {
    let Setup { hub, cfg, .. } = setup();
    let err = download(&spec(HUGE_REPO), &cfg, &opts())
        .unwrap_err()
        .to_string();
    let blobs = repo_dir(&cfg, HUGE_REPO).join("blobs");
    assert!(
        err.starts_with(&format!(
            "not enough free disk space in {}: this download needs 1.",
            blobs.display()
        )),
        "{err}"
    );
    assert!(err.contains("EiB more but only"), "{err}");
    assert!(
        err.ends_with("free some space or point HF_HUB_CACHE / --local-dir at a larger disk"),
        "{err}"
    );
    assert!(hub
        .requests()
        .iter()
        .all(|r| !r.path.contains("/resolve/") && !r.path.starts_with("/cdn/")));
}

#[test]
fn renamed_repos_follow_relative_redirects() {
    let Setup { hub, cfg, .. } = setup();
    let report = download(&spec(RENAMED_REPO), &cfg, &opts()).unwrap();
    assert_eq!(report.commit, hub.commit(REPO, "main"));
    let model = hub.file(REPO, "main", "model.safetensors");
    assert_eq!(
        sha256_of(&report.path.join("model.safetensors")),
        model.sha256()
    );
}

#[test]
fn run_download_takes_the_cli_flags() {
    let Setup { hub, cfg, .. } = setup();
    let args = DownloadArgs {
        repo: format!("{GATED_REPO}:main"),
        revision: None,
        local_dir: None,
        include: vec!["*.json".into()],
        exclude: vec![],
        token: Some(VALID_TOKEN.into()),
        connections: 2,
    };
    let report = run_download_with(&args, cfg.clone()).unwrap();
    assert_eq!(report.files.len(), 1);
    assert_eq!(report.commit, hub.commit(GATED_REPO, "main"));
    assert!(report.summary().starts_with(&format!(
        "test-org/gated-model:main (commit {}): 1 file,",
        &report.commit[..10]
    )));
    let bad = DownloadArgs {
        repo: "not a repo".into(),
        ..args
    };
    assert!(run_download_with(&bad, cfg)
        .unwrap_err()
        .to_string()
        .starts_with("invalid repo id 'not a repo'"));
}

#[test]
fn resolve_model_fetches_what_the_model_needs() {
    let Setup { hub, cfg, .. } = setup();
    let dir = resolve_model(&spec(MULTI_FORMAT_REPO), &cfg, &opts()).unwrap();
    assert!(dir.join("model.safetensors").is_file());
    assert!(dir.join("tokenizer.json").is_file());
    let bin = hub.file(MULTI_FORMAT_REPO, "main", "pytorch_model.bin");
    assert!(
        !dir.join("pytorch_model.bin").exists(),
        "the same weights as .bin are not needed"
    );
    assert!(hub.cdn_gets(&bin.sha256(), 0).is_empty());
    let before = hub.request_count();
    assert_eq!(
        resolve_model(&spec(MULTI_FORMAT_REPO), &cfg, &opts()).unwrap(),
        dir
    );
    assert_eq!(hub.request_count(), before);
    // `meditron download` takes everything, as huggingface-cli does.
    let all = download(&spec(MULTI_FORMAT_REPO), &cfg, &opts()).unwrap();
    assert_eq!(status_of(&all, "pytorch_model.bin"), FileStatus::Downloaded);
    assert_eq!(status_of(&all, "model.safetensors"), FileStatus::Cached);
}

#[test]
fn several_gguf_files_need_a_choice() {
    let Setup { hub, cfg, .. } = setup();
    assert_eq!(
        resolve_model(&spec(GGUF_REPO), &cfg, &opts()).unwrap_err().to_string(),
        "'test-org/tiny-gguf' at 'main' has several GGUF files (tiny.Q4_0.gguf, tiny.Q8_0.gguf); choose one with --include (e.g. --include '*Q4_K_M.gguf')"
    );
    let q8 = DownloadOptions {
        include: vec!["*Q8_0.gguf".into()],
        ..opts()
    };
    let dir = resolve_model(&spec(GGUF_REPO), &cfg, &q8).unwrap();
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["tiny.Q8_0.gguf"]);
    let before = hub.request_count();
    assert_eq!(resolve_model(&spec(GGUF_REPO), &cfg, &q8).unwrap(), dir);
    assert_eq!(hub.request_count(), before);
}

#[test]
fn the_listing_is_cached_in_huggingface_hub_format() {
    let Setup { hub, cfg, _dir } = setup();
    let report = download(&gptq(), &cfg, &opts()).unwrap();
    let tree_file = repo_dir(&cfg, REPO)
        .join("trees")
        .join(format!("{}.json", report.commit));
    let tree: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tree_file).unwrap()).unwrap();
    assert_eq!(tree["format_version"], 1);
    for file in hub.files(REPO, GPTQ_BRANCH) {
        let entry = &tree["files"][&file.path];
        assert_eq!(entry["size"], file.size(), "{}", file.path);
        assert_eq!(entry["blob_id"], file.git_sha1().as_str(), "{}", file.path);
        if file.lfs {
            assert_eq!(entry["lfs_sha256"], file.sha256().as_str());
            assert_eq!(entry["lfs_size"], file.size());
        } else {
            assert!(entry.get("lfs_sha256").is_none());
        }
    }
    let local = _dir.path().join("local");
    let in_dir = download(
        &gptq(),
        &cfg,
        &DownloadOptions {
            local_dir: Some(local.clone()),
            ..opts()
        },
    )
    .unwrap();
    assert!(local
        .join(".cache/huggingface/trees")
        .join(format!("{}.json", in_dir.commit))
        .is_file());

    // A cache written by an older tool has no listing: the snapshot is judged by its content.
    std::fs::remove_dir_all(repo_dir(&cfg, REPO).join("trees")).unwrap();
    let before = hub.request_count();
    assert_eq!(resolve_model(&gptq(), &cfg, &opts()).unwrap(), report.path);
    assert_eq!(hub.request_count(), before);
}

#[test]
fn an_unreachable_endpoint_says_so() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = HubConfig::new(&format!("http://127.0.0.1:{port}"), dir.path());
    let started = Instant::now();
    let err = download(&spec(REPO), &cfg, &opts())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(&format!("network error talking to http://127.0.0.1:{port}/api/models/test-org/tiny-model/revision/main?blobs=true: ")), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert!(err.ends_with("check the connection and HF_ENDPOINT (transfers resume where they stopped; HF_HUB_OFFLINE=1 uses only the cache)"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refused connection is not retried"
    );
}
