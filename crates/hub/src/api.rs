//! The Hub's HTTP API as huggingface_hub speaks it: repo listing, per-file metadata from `resolve`, ranged GETs, error codes.

use crate::error::{HubError, Result};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{
    HeaderMap, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_LENGTH, ETAG, LOCATION, RANGE,
};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use std::time::Duration;

/// Renamed repos answer with redirects within the Hub; more hops than this is a loop.
const MAX_REDIRECTS: usize = 10;
/// Tries of a listing or metadata request that meets a transient failure.
const API_ATTEMPTS: u32 = 3;

/// One file of a repository at one commit, as the listing describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteFile {
    /// Path inside the repo, '/'-separated.
    pub path: String,
    pub size: Option<u64>,
    /// Git blob sha1: the cache's blob name for files not stored in LFS.
    pub blob_id: Option<String>,
    /// sha256 of the content for LFS files: their blob name and their checksum.
    pub lfs_sha256: Option<String>,
}

impl RemoteFile {
    /// The name its blob will have in the cache, if the listing tells (it does on the Hub).
    pub fn etag_hint(&self) -> Option<&str> {
        self.lfs_sha256.as_deref().or(self.blob_id.as_deref())
    }
}

/// A repository at a revision: the commit the revision points to and the files of that commit.
#[derive(Debug, Clone)]
pub(crate) struct RepoInfo {
    pub commit: String,
    pub files: Vec<RemoteFile>,
}

/// What `HEAD .../resolve/...` says about one file.
#[derive(Debug, Clone)]
pub(crate) struct FileMeta {
    /// sha256 for LFS files, git sha1 otherwise, without quotes.
    pub etag: String,
    pub size: u64,
    /// True when the etag came from `X-Linked-Etag`, i.e. the file lives in LFS.
    pub is_lfs: bool,
    /// The commit-pinned resolve URL (after any rename redirects). Every ranged GET goes
    /// through it rather than straight to the CDN location, because the CDN's signed URLs
    /// expire and a 40 GB transfer, or its resume tomorrow, outlives them.
    pub download_url: Url,
    /// Whether `download_url` is on the endpoint's origin, i.e. may see the token (reqwest
    /// drops it when a redirect leaves that origin, so the CDN never gets it).
    pub send_auth: bool,
}

/// Which request failed, so an error code can become a precise message.
pub(crate) struct ErrorContext<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    pub path: Option<&'a str>,
}

#[derive(Deserialize)]
struct ApiModelInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<ApiSibling>,
}

#[derive(Deserialize)]
struct ApiSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<ApiLfs>,
}

#[derive(Deserialize)]
struct ApiLfs {
    sha256: String,
}

/// A blocking client for one endpoint and token.
pub(crate) struct Api {
    endpoint: Url,
    token: Option<String>,
    /// Follows redirects itself (reqwest drops the token when a redirect changes host).
    follow: Client,
    /// Leaves redirects to us: the metadata of an LFS file is on the 302 itself.
    manual: Client,
}

impl Api {
    pub fn new(endpoint: &str, token: Option<String>, read_timeout: Duration) -> Result<Self> {
        let endpoint =
            Url::parse(&format!("{}/", endpoint.trim_end_matches('/'))).map_err(|e| {
                HubError::Protocol {
                    url: endpoint.to_string(),
                    message: format!("HF_ENDPOINT is not a valid URL: {e}"),
                }
            })?;
        let build = |policy: reqwest::redirect::Policy| {
            Client::builder()
                .user_agent(concat!("meditron-hub/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(10))
                // In the blocking client this bounds the wait for headers and every body read,
                // not the whole transfer, so a stalled connection fails and a slow one does not.
                .timeout(read_timeout)
                .redirect(policy)
                .build()
                .map_err(|e| HubError::network(endpoint.to_string(), &e))
        };
        Ok(Api {
            follow: build(reqwest::redirect::Policy::limited(MAX_REDIRECTS))?,
            manual: build(reqwest::redirect::Policy::none())?,
            endpoint,
            token,
        })
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `GET /api/models/{repo}/revision/{rev}?blobs=true`: the commit and every file with its
    /// size, git blob id and LFS sha256.
    pub fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo> {
        let url = self.url(&format!(
            "api/models/{repo}/revision/{}?blobs=true",
            encode(revision, false)
        ))?;
        let response = self.send_retrying(self.follow.get(url.clone()), &url, true)?;
        let ctx = ErrorContext {
            repo,
            revision,
            path: None,
        };
        let response = self.check(response, &url, &ctx)?;
        let body = response
            .text()
            .map_err(|e| HubError::network(url.to_string(), &e))?;
        let info: ApiModelInfo = serde_json::from_str(&body).map_err(|e| HubError::Protocol {
            url: url.to_string(),
            message: format!("bad repo listing JSON: {e}"),
        })?;
        let commit = info.sha.ok_or_else(|| HubError::Protocol {
            url: url.to_string(),
            message: "the listing has no commit 'sha'".into(),
        })?;
        let files = info
            .siblings
            .into_iter()
            .map(|s| RemoteFile {
                path: s.rfilename,
                size: s.size,
                blob_id: s.blob_id,
                lfs_sha256: s.lfs.map(|l| l.sha256.to_ascii_lowercase()),
            })
            .collect();
        Ok(RepoInfo { commit, files })
    }

    /// `HEAD /{repo}/resolve/{commit}/{path}`, following redirects within the Hub (renamed
    /// repos) and stopping at the one to the CDN, whose headers carry the LFS metadata
    /// (its target is not kept, see [`FileMeta::download_url`]).
    pub fn file_meta(&self, repo: &str, revision: &str, path: &str) -> Result<FileMeta> {
        let mut url = self.url(&format!(
            "{repo}/resolve/{}/{}",
            encode(revision, false),
            encode(path, true)
        ))?;
        let ctx = ErrorContext {
            repo,
            revision,
            path: Some(path),
        };
        for _ in 0..MAX_REDIRECTS {
            let send_auth = self.same_origin(&url);
            let request = self
                .manual
                .head(url.clone())
                .header(ACCEPT_ENCODING, "identity");
            let response = self.send_retrying(request, &url, send_auth)?;
            if response.status().is_redirection() {
                let location = header(response.headers(), LOCATION.as_str()).ok_or_else(|| {
                    HubError::Protocol {
                        url: url.to_string(),
                        message: format!(
                            "HTTP {} without a Location header",
                            response.status().as_u16()
                        ),
                    }
                })?;
                let target = url.join(&location).map_err(|e| HubError::Protocol {
                    url: url.to_string(),
                    message: format!("bad redirect Location '{location}': {e}"),
                })?;
                // Like huggingface_hub: hops within the Hub (renamed repos) are followed; the
                // hop to another host (the CDN) ends the walk, its response has the metadata.
                if self.same_origin(&target) {
                    url = target;
                    continue;
                }
                return meta_from_headers(response.headers(), &url, url.clone(), send_auth);
            }
            let response = self.check(response, &url, &ctx)?;
            return meta_from_headers(response.headers(), &url, url.clone(), send_auth);
        }
        Err(HubError::Protocol {
            url: url.to_string(),
            message: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// `GET` of bytes `start..end` (end exclusive) of a file; the caller checks the status,
    /// since a retry policy needs the raw answer.
    pub fn get_range(&self, url: &Url, send_auth: bool, start: u64, end: u64) -> Result<Response> {
        let request = self
            .follow
            .get(url.clone())
            .header(ACCEPT_ENCODING, "identity")
            .header(RANGE, format!("bytes={start}-{}", end.saturating_sub(1)));
        self.send(request, url, send_auth)
    }

    /// Listing and metadata requests are cheap and idempotent, so a dropped connection or a
    /// 5xx/429 from a busy Hub is tried again a few times before it fails the download. A
    /// refused connection or a timeout is not: waiting again only makes the user wait longer.
    fn send_retrying(
        &self,
        request: RequestBuilder,
        url: &Url,
        send_auth: bool,
    ) -> Result<Response> {
        let mut delay = Duration::from_millis(250);
        for _ in 1..API_ATTEMPTS {
            let Some(attempt) = request.try_clone() else {
                break;
            };
            let transient = match self.authorize(attempt, send_auth).send() {
                Ok(response) => {
                    let status = response.status();
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        return Ok(response);
                    }
                    true
                }
                Err(e) => !(e.is_connect() || e.is_timeout() || e.is_builder()),
            };
            if !transient {
                break;
            }
            std::thread::sleep(delay);
            delay *= 2;
        }
        self.send(request, url, send_auth)
    }

    fn authorize(&self, request: RequestBuilder, send_auth: bool) -> RequestBuilder {
        match (&self.token, send_auth) {
            (Some(token), true) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            _ => request,
        }
    }

    fn send(&self, request: RequestBuilder, url: &Url, send_auth: bool) -> Result<Response> {
        self.authorize(request, send_auth)
            .send()
            .map_err(|e| HubError::network(url.to_string(), &e))
    }

    /// Turns a non-success answer into the most precise error its status and the Hub's
    /// `X-Error-Code` header allow.
    pub fn check(&self, response: Response, url: &Url, ctx: &ErrorContext<'_>) -> Result<Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let code = header(response.headers(), "x-error-code").unwrap_or_default();
        let hub_message = header(response.headers(), "x-error-message");
        Err(self.error_for(status, &code, hub_message, url, ctx, response))
    }

    fn error_for(
        &self,
        status: StatusCode,
        code: &str,
        hub_message: Option<String>,
        url: &Url,
        ctx: &ErrorContext<'_>,
        response: Response,
    ) -> HubError {
        let repo = ctx.repo.to_string();
        let token_hint = if self.has_token() {
            format!(
                "A token was sent but has no access: accept the model's conditions at {}{} with the account that owns the token, or use another token.",
                self.endpoint, ctx.repo
            )
        } else {
            "Pass --token or set HF_TOKEN (or run `huggingface-cli login`) with a token that has access.".to_string()
        };
        match code {
            "RepoNotFound" => HubError::RepoNotFound {
                repo,
                endpoint: self.endpoint.as_str().trim_end_matches('/').to_string(),
                hint: if self.has_token() {
                    ", or the token has no access to it".into()
                } else {
                    "; if it is private, pass --token or set HF_TOKEN".into()
                },
            },
            "RevisionNotFound" => HubError::RevisionNotFound {
                repo,
                revision: ctx.revision.to_string(),
            },
            "EntryNotFound" => HubError::EntryNotFound {
                repo,
                revision: ctx.revision.to_string(),
                path: ctx.path.unwrap_or_default().to_string(),
            },
            _ if code == "GatedRepo"
                || status == StatusCode::UNAUTHORIZED
                || status == StatusCode::FORBIDDEN =>
            {
                HubError::AccessDenied {
                    repo,
                    status: status.as_u16(),
                    hint: token_hint,
                }
            }
            _ => {
                // Without an error code the body is the only explanation; keep it short.
                let detail = hub_message.or_else(|| {
                    response
                        .text()
                        .ok()
                        .map(|t| t.chars().take(300).collect::<String>())
                        .filter(|t| !t.trim().is_empty())
                });
                HubError::Http {
                    url: url.to_string(),
                    status: status.as_u16(),
                    detail: detail
                        .map(|d| format!(": {}", d.trim()))
                        .unwrap_or_default(),
                }
            }
        }
    }

    fn url(&self, relative: &str) -> Result<Url> {
        self.endpoint
            .join(relative)
            .map_err(|e| HubError::Protocol {
                url: format!("{}{relative}", self.endpoint),
                message: format!("cannot build the URL: {e}"),
            })
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.endpoint.scheme()
            && url.host_str() == self.endpoint.host_str()
            && url.port_or_known_default() == self.endpoint.port_or_known_default()
    }
}

/// The Hub puts the LFS metadata in `X-Linked-*` headers of the redirect, the git metadata in
/// the plain ones; either way the commit is `X-Repo-Commit`.
fn meta_from_headers(
    headers: &HeaderMap,
    url: &Url,
    download_url: Url,
    send_auth: bool,
) -> Result<FileMeta> {
    let protocol = |message: &str| HubError::Protocol {
        url: url.to_string(),
        message: message.to_string(),
    };
    // Every answer of the Hub's resolve endpoint names its commit; its absence means the
    // endpoint is something else (a proxy's login page, a misspelt HF_ENDPOINT).
    if header(headers, "x-repo-commit").is_none() {
        return Err(protocol("no X-Repo-Commit header: HF_ENDPOINT does not look like a Hugging Face Hub (check the variable)"));
    }
    let linked_etag = header(headers, "x-linked-etag");
    let is_lfs = linked_etag.is_some();
    let etag = linked_etag
        .or_else(|| header(headers, ETAG.as_str()))
        .map(|e| normalize_etag(&e))
        .filter(|e| !e.is_empty())
        .ok_or_else(|| protocol("no ETag header"))?;
    let size = header(headers, "x-linked-size")
        .or_else(|| header(headers, CONTENT_LENGTH.as_str()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| protocol("no file size (X-Linked-Size / Content-Length)"))?;
    Ok(FileMeta {
        etag,
        size,
        is_lfs,
        download_url,
        send_auth,
    })
}

/// `W/"abc"` and `"abc"` both mean `abc`.
fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

pub(crate) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}

/// Percent-encodes a revision (where '/' must become %2F, as in `refs%2Fpr%2F1`) or a file
/// path (where '/' separates folders).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_revisions_and_paths_like_huggingface_hub() {
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(
            encode("gptq-4bit-128g-actorder_True", false),
            "gptq-4bit-128g-actorder_True"
        );
        assert_eq!(
            encode("sub dir/model.safetensors", true),
            "sub%20dir/model.safetensors"
        );
    }

    #[test]
    fn strips_weak_and_quoted_etags() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("abc"), "abc");
    }
}
