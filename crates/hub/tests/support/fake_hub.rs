//! A fake Hugging Face Hub on 127.0.0.1 for the tests and the `fake_hub` example: the listing, resolve and CDN endpoints for a few small repos, with knobs for throttling, cut connections and corrupt bytes.
//!
//! One thread per connection, one request per connection (`Connection: close`), every socket
//! with a timeout, so a test can never hang on it.

#![allow(dead_code)] // each test binary uses a different part of it

use serde_json::json;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub const REPO: &str = "test-org/tiny-model";
pub const GATED_REPO: &str = "test-org/gated-model";
pub const RENAMED_REPO: &str = "test-org/old-name";
pub const HUGE_REPO: &str = "test-org/huge-model";
pub const BROKEN_REPO: &str = "test-org/broken-model";
pub const MULTI_FORMAT_REPO: &str = "test-org/multi-format";
pub const GGUF_REPO: &str = "test-org/tiny-gguf";
pub const VALID_TOKEN: &str = "hf_valid_token";
pub const GPTQ_BRANCH: &str = "gptq-4bit-128g";
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// One file of a commit.
#[derive(Clone)]
pub struct FakeFile {
    pub path: String,
    pub content: Arc<Vec<u8>>,
    pub lfs: bool,
    /// Size announced in the listing when it differs from the content (the "huge" repo).
    pub declared_size: Option<u64>,
    /// Listed but answered with 404 EntryNotFound by `resolve` (the "broken" repo).
    pub unresolvable: bool,
}

impl FakeFile {
    fn new(path: &str, content: Vec<u8>, lfs: bool) -> Self {
        FakeFile {
            path: path.to_string(),
            content: Arc::new(content),
            lfs,
            declared_size: None,
            unresolvable: false,
        }
    }

    pub fn sha256(&self) -> String {
        hex(&Sha256::digest(self.content.as_slice()))
    }

    pub fn git_sha1(&self) -> String {
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", self.content.len()).as_bytes());
        h.update(self.content.as_slice());
        hex(&h.finalize())
    }

    /// The cache's blob name: sha256 for LFS files, git sha1 otherwise.
    pub fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.git_sha1()
        }
    }

    pub fn size(&self) -> u64 {
        self.declared_size.unwrap_or(self.content.len() as u64)
    }
}

pub struct FakeRepo {
    pub branches: BTreeMap<String, String>,
    pub commits: BTreeMap<String, Vec<FakeFile>>,
    pub gated: bool,
}

/// How the CDN misbehaves.
#[derive(Default)]
pub struct Behaviour {
    /// Bytes per second per connection.
    pub throttle: Option<u64>,
    /// Close the next `.1` CDN bodies after `.0` bytes.
    pub cut_after: Option<(u64, u32)>,
    /// Flip the middle byte of every CDN body (`true`) or of the first one that holds it.
    pub corrupt_always: bool,
    pub corrupt_once: bool,
}

/// What the server saw of one request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// `(start, end inclusive)` of a `Range: bytes=` header.
    pub range: Option<(u64, Option<u64>)>,
    pub authorization: Option<String>,
}

struct State {
    addr: SocketAddr,
    repos: BTreeMap<String, FakeRepo>,
    behaviour: Mutex<Behaviour>,
    log: Mutex<Vec<Request>>,
    cdn_bytes: AtomicU64,
}

pub struct FakeHub {
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeHub {
    /// Serves the standard fake repos on an ephemeral port.
    pub fn start() -> Self {
        Self::start_on(0).expect("binding 127.0.0.1:0")
    }

    pub fn start_on(port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            addr,
            repos: standard_repos(),
            behaviour: Mutex::new(Behaviour::default()),
            log: Mutex::new(Vec::new()),
            cdn_bytes: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || handle(stream, &state));
                }
            })
        };
        Ok(FakeHub {
            state,
            stop,
            accept: Some(accept),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    pub fn repo(&self, id: &str) -> &FakeRepo {
        &self.state.repos[id]
    }

    pub fn commit(&self, repo: &str, branch: &str) -> String {
        self.repo(repo).branches[branch].clone()
    }

    pub fn files(&self, repo: &str, branch: &str) -> Vec<FakeFile> {
        let r = self.repo(repo);
        r.commits[&r.branches[branch]].clone()
    }

    pub fn file(&self, repo: &str, branch: &str, path: &str) -> FakeFile {
        self.files(repo, branch)
            .into_iter()
            .find(|f| f.path == path)
            .expect("no such fake file")
    }

    pub fn behave(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.state.behaviour.lock().unwrap());
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.log.lock().unwrap().len()
    }

    /// Body bytes the CDN has written so far.
    pub fn cdn_bytes(&self) -> u64 {
        self.state.cdn_bytes.load(Ordering::Relaxed)
    }

    /// CDN GETs for one blob, from request number `since` on.
    pub fn cdn_gets(&self, sha256: &str, since: usize) -> Vec<Request> {
        let path = format!("/cdn/{sha256}");
        self.requests()
            .into_iter()
            .skip(since)
            .filter(|r| r.method == "GET" && r.path.starts_with(&path))
            .collect()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept so its thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.state.addr, SOCKET_TIMEOUT);
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

/// `test-org/tiny-model` with branches `main` and `gptq-4bit-128g` (different commits, a shared
/// tokenizer blob, LFS weights of a few MB), a gated repo, a renamed one, one too big for any
/// disk, one that lists a file it cannot serve, one with the same weights as safetensors and
/// as `.bin`, and one with two GGUF quantizations.
fn standard_repos() -> BTreeMap<String, FakeRepo> {
    let tokenizer = FakeFile::new(
        "tokenizer.json",
        br#"{"version":"1.0","model":{"type":"BPE"}}"#.to_vec(),
        false,
    );
    let readme = FakeFile::new(
        "README.md",
        b"# tiny-model\nA fake model for tests.\n".to_vec(),
        false,
    );
    let main_files = vec![
        FakeFile::new(
            "config.json",
            br#"{"architectures":["LlamaForCausalLM"],"hidden_size":64}"#.to_vec(),
            false,
        ),
        tokenizer.clone(),
        readme.clone(),
        FakeFile::new(
            "model.safetensors",
            pseudo_random(1, 3 * 1024 * 1024 + 123),
            true,
        ),
    ];
    let gptq_files = vec![
        FakeFile::new(
            "config.json",
            br#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"quantization_config":{"bits":4,"group_size":128}}"#.to_vec(),
            false,
        ),
        FakeFile::new("quantize_config.json", br#"{"bits":4,"group_size":128,"desc_act":true}"#.to_vec(), false),
        tokenizer,
        readme,
        FakeFile::new("model.safetensors", pseudo_random(2, 4 * 1024 * 1024 + 77), true),
    ];
    let mut repos = BTreeMap::new();
    repos.insert(
        REPO.to_string(),
        repo(&[("main", main_files), (GPTQ_BRANCH, gptq_files)], false),
    );
    let gated = vec![
        FakeFile::new(
            "config.json",
            br#"{"architectures":["LlamaForCausalLM"]}"#.to_vec(),
            false,
        ),
        FakeFile::new("model.safetensors", pseudo_random(3, 64 * 1024), true),
    ];
    repos.insert(GATED_REPO.to_string(), repo(&[("main", gated)], true));
    let mut huge = FakeFile::new("model.safetensors", pseudo_random(4, 16), true);
    huge.declared_size = Some(1 << 60);
    let huge_files = vec![FakeFile::new("config.json", b"{}".to_vec(), false), huge];
    repos.insert(HUGE_REPO.to_string(), repo(&[("main", huge_files)], false));
    let mut ghost = FakeFile::new("model.safetensors", pseudo_random(5, 16), true);
    ghost.unresolvable = true;
    let broken_files = vec![FakeFile::new("config.json", b"{}".to_vec(), false), ghost];
    repos.insert(
        BROKEN_REPO.to_string(),
        repo(&[("main", broken_files)], false),
    );
    let multi = vec![
        FakeFile::new(
            "config.json",
            br#"{"architectures":["LlamaForCausalLM"]}"#.to_vec(),
            false,
        ),
        FakeFile::new("tokenizer.json", br#"{"model":{}}"#.to_vec(), false),
        FakeFile::new("model.safetensors", pseudo_random(6, 128 * 1024), true),
        FakeFile::new("pytorch_model.bin", pseudo_random(7, 128 * 1024), true),
    ];
    repos.insert(
        MULTI_FORMAT_REPO.to_string(),
        repo(&[("main", multi)], false),
    );
    let ggufs = vec![
        FakeFile::new("README.md", b"# tiny gguf\n".to_vec(), false),
        FakeFile::new("tiny.Q4_0.gguf", pseudo_random(8, 96 * 1024), true),
        FakeFile::new("tiny.Q8_0.gguf", pseudo_random(9, 160 * 1024), true),
    ];
    repos.insert(GGUF_REPO.to_string(), repo(&[("main", ggufs)], false));
    repos
}

fn repo(branches: &[(&str, Vec<FakeFile>)], gated: bool) -> FakeRepo {
    let mut out = FakeRepo {
        branches: BTreeMap::new(),
        commits: BTreeMap::new(),
        gated,
    };
    for (name, files) in branches {
        let mut h = Sha1::new();
        for f in files {
            h.update(f.path.as_bytes());
            h.update(f.etag().as_bytes());
        }
        let commit = hex(&h.finalize());
        out.branches.insert(name.to_string(), commit.clone());
        out.commits.insert(commit, files.clone());
    }
    out
}

/// Deterministic incompressible bytes (xorshift64*).
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ----------------------------------------------------------------------------------------
// HTTP

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    fn error(status: u16, code: &str, message: &str) -> Self {
        Response::new(status)
            .header("X-Error-Code", code)
            .header("X-Error-Message", message)
            .header("Content-Type", "application/json")
            .body(json!({ "error": message }).to_string().into_bytes())
    }
}

fn handle(mut stream: TcpStream, state: &State) {
    let _ = stream.set_read_timeout(Some(SOCKET_TIMEOUT));
    let _ = stream.set_write_timeout(Some(SOCKET_TIMEOUT));
    let Some((method, target, headers)) = read_request(&stream) else {
        return;
    };
    let range = headers.get("range").and_then(|r| parse_range(r));
    state.log.lock().unwrap().push(Request {
        method: method.clone(),
        path: target.clone(),
        range,
        authorization: headers.get("authorization").cloned(),
    });
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let auth = headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_string);
    if let Some(sha) = path.strip_prefix("/cdn/") {
        serve_cdn(&mut stream, state, &method, sha, range);
        return;
    }
    let response = route(state, &method, path, query, auth.as_deref(), range);
    write_response(&mut stream, &method, response);
}

fn read_request(stream: &TcpStream) -> Option<(String, String, BTreeMap<String, String>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some((method, target, headers))
}

fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()))
}

fn route(
    state: &State,
    method: &str,
    path: &str,
    query: &str,
    token: Option<&str>,
    range: Option<(u64, Option<u64>)>,
) -> Response {
    let path = percent_decode(path);
    // /api/models/{org}/{name}/revision/{rev}
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        // /api/models/{org}/{name}/tree/{rev}: what huggingface_hub >= 0.2x lists files with.
        if parts.len() == 4 && parts[2] == "tree" {
            let repo_id = format!("{}/{}", parts[0], parts[1]);
            return match lookup(state, &repo_id, parts[3], token, false) {
                Ok((_, files)) => tree(&files),
                Err(r) => r,
            };
        }
        if parts.len() == 4 && parts[2] == "revision" {
            let repo_id = format!("{}/{}", parts[0], parts[1]);
            if repo_id == RENAMED_REPO {
                let q = if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                };
                return Response::new(307).header(
                    "Location",
                    format!("/api/models/{REPO}/revision/{}{q}", parts[3]),
                );
            }
            return match lookup(state, &repo_id, parts[3], token, false) {
                Ok((commit, files)) => {
                    listing(&repo_id, &commit, &files, query.contains("blobs=true"))
                }
                Err(r) => r,
            };
        }
    }
    // /{org}/{name}/resolve/{rev}/{path}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() == 5 && parts[2] == "resolve" {
        let repo_id = format!("{}/{}", parts[0], parts[1]);
        if repo_id == RENAMED_REPO {
            return Response::new(307).header(
                "Location",
                format!("/{REPO}/resolve/{}/{}", parts[3], parts[4]),
            );
        }
        let (commit, files) = match lookup(state, &repo_id, parts[3], token, true) {
            Ok(found) => found,
            Err(r) => return r,
        };
        let Some(file) = files.iter().find(|f| f.path == parts[4] && !f.unresolvable) else {
            return Response::error(404, "EntryNotFound", "Entry not found");
        };
        if file.lfs {
            // Another host name for the same socket: the CDN is another origin, so clients
            // must stop following there and must not send it the token.
            let sha = file.sha256();
            return Response::new(302)
                .header(
                    "Location",
                    format!(
                        "http://localhost:{}/cdn/{sha}?signature=fake",
                        state.addr.port()
                    ),
                )
                .header("X-Repo-Commit", commit)
                .header("X-Linked-Etag", format!("\"{sha}\""))
                .header("X-Linked-Size", file.size().to_string())
                .header("ETag", format!("\"{}\"", file.git_sha1()))
                .header("Content-Length", "0");
        }
        let (status, body, content_range) = slice(&file.content, range);
        let mut r = Response::new(status)
            .header("X-Repo-Commit", commit)
            .header("ETag", format!("\"{}\"", file.git_sha1()))
            .body(if method == "HEAD" {
                Vec::new()
            } else {
                body.clone()
            });
        if let Some(cr) = content_range {
            r = r.header("Content-Range", cr);
        }
        // HEAD answers carry the length of the body a GET would send.
        return r.header("Content-Length", body.len().to_string());
    }
    Response::error(404, "", "Not found")
}

/// The real Hub answers 401 for an unknown repo without a token (it might be private) and 404
/// with one. A gated repo's listing is public; its files (`gate`) answer 401 without a token
/// and 403 with a wrong one.
fn lookup(
    state: &State,
    repo_id: &str,
    rev: &str,
    token: Option<&str>,
    gate: bool,
) -> Result<(String, Vec<FakeFile>), Response> {
    let Some(repo) = state.repos.get(repo_id) else {
        let status = if token.is_some() { 404 } else { 401 };
        return Err(Response::error(
            status,
            "RepoNotFound",
            "Repository not found",
        ));
    };
    if gate && repo.gated && token != Some(VALID_TOKEN) {
        let status = if token.is_some() { 403 } else { 401 };
        let message = format!("Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.");
        return Err(Response::error(status, "GatedRepo", &message));
    }
    let commit = repo
        .branches
        .get(rev)
        .cloned()
        .unwrap_or_else(|| rev.to_string());
    match repo.commits.get(&commit) {
        Some(files) => Ok((commit, files.clone())),
        None => Err(Response::error(
            404,
            "RevisionNotFound",
            &format!("Invalid rev id: {rev}"),
        )),
    }
}

fn listing(repo_id: &str, commit: &str, files: &[FakeFile], blobs: bool) -> Response {
    let siblings: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            if !blobs {
                return json!({ "rfilename": f.path });
            }
            let mut s = json!({ "rfilename": f.path, "size": f.size(), "blobId": f.git_sha1() });
            if f.lfs {
                s["lfs"] = json!({ "sha256": f.sha256(), "size": f.size(), "pointerSize": 134 });
            }
            s
        })
        .collect();
    let body = json!({ "_id": "fake", "id": repo_id, "modelId": repo_id, "sha": commit, "private": false, "siblings": siblings });
    Response::new(200)
        .header("Content-Type", "application/json")
        .body(body.to_string().into_bytes())
}

fn tree(files: &[FakeFile]) -> Response {
    let entries: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            let mut e =
                json!({ "type": "file", "oid": f.git_sha1(), "size": f.size(), "path": f.path });
            if f.lfs {
                e["lfs"] = json!({ "oid": f.sha256(), "size": f.size(), "pointerSize": 134 });
            }
            e
        })
        .collect();
    Response::new(200)
        .header("Content-Type", "application/json")
        .body(serde_json::Value::Array(entries).to_string().into_bytes())
}

/// `(status, bytes, Content-Range)` for an optional range request.
fn slice(content: &[u8], range: Option<(u64, Option<u64>)>) -> (u16, Vec<u8>, Option<String>) {
    let len = content.len() as u64;
    match range {
        None => (200, content.to_vec(), None),
        Some((start, _)) if start >= len => (416, Vec::new(), Some(format!("bytes */{len}"))),
        Some((start, end)) => {
            let end = end.unwrap_or(len - 1).min(len - 1);
            (
                206,
                content[start as usize..=end as usize].to_vec(),
                Some(format!("bytes {start}-{end}/{len}")),
            )
        }
    }
}

fn serve_cdn(
    stream: &mut TcpStream,
    state: &State,
    method: &str,
    sha: &str,
    range: Option<(u64, Option<u64>)>,
) {
    let sha = sha.split('?').next().unwrap_or_default();
    let file = state
        .repos
        .values()
        .flat_map(|r| r.commits.values().flatten())
        .find(|f| f.lfs && f.sha256() == sha)
        .cloned();
    let Some(file) = file else {
        write_response(stream, method, Response::new(404));
        return;
    };
    let len = file.content.len() as u64;
    let (start, end) = match range {
        None => (0, len.saturating_sub(1)),
        Some((start, _)) if start >= len => {
            write_response(
                stream,
                method,
                Response::new(416).header("Content-Range", format!("bytes */{len}")),
            );
            return;
        }
        Some((start, end)) => (start, end.unwrap_or(len - 1).min(len - 1)),
    };
    let (throttle, cut, corrupt) = {
        let mut b = state.behaviour.lock().unwrap();
        let cut = match &mut b.cut_after {
            Some((bytes, times)) if *times > 0 && method == "GET" => {
                *times -= 1;
                Some(*bytes)
            }
            _ => None,
        };
        let middle = len / 2;
        let holds_middle = (start..=end).contains(&middle);
        let corrupt = b.corrupt_always || (b.corrupt_once && holds_middle);
        if b.corrupt_once && holds_middle {
            b.corrupt_once = false;
        }
        (b.throttle, cut, corrupt)
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nETag: \"{sha}\"\r\nConnection: close\r\n",
        if range.is_some() { 206 } else { 200 },
        if range.is_some() { "Partial Content" } else { "OK" },
        end + 1 - start
    );
    if range.is_some() {
        head.push_str(&format!("Content-Range: bytes {start}-{end}/{len}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).is_err() || method == "HEAD" {
        return;
    }
    let mut body = file.content[start as usize..=end as usize].to_vec();
    if corrupt {
        let middle = (len / 2).saturating_sub(start) as usize;
        if let Some(b) = body.get_mut(middle) {
            *b ^= 0xff;
        } else if let Some(b) = body.first_mut() {
            *b ^= 0xff;
        }
    }
    let chunk = 16 * 1024;
    let mut sent = 0u64;
    for piece in body.chunks(chunk) {
        let piece = match cut {
            Some(limit) if sent + piece.len() as u64 > limit => &piece[..(limit - sent) as usize],
            _ => piece,
        };
        if stream.write_all(piece).is_err() {
            return;
        }
        sent += piece.len() as u64;
        state
            .cdn_bytes
            .fetch_add(piece.len() as u64, Ordering::Relaxed);
        if cut.is_some_and(|limit| sent >= limit) {
            // An interrupted transfer: the peer sees the body end early.
            let _ = stream.flush();
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        if let Some(rate) = throttle {
            std::thread::sleep(Duration::from_secs_f64(piece.len() as f64 / rate as f64));
        }
    }
}

fn write_response(stream: &mut TcpStream, method: &str, r: Response) {
    let reason = match r.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    };
    let mut out = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", r.status);
    let has_length = r
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    for (k, v) in &r.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_length {
        out.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if method != "HEAD" {
        bytes.extend_from_slice(&r.body);
    }
    let _ = stream.write_all(&bytes);
    let _ = stream.flush();
    // Let the client read everything before the close.
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 64];
    let _ = stream.read(&mut sink);
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
