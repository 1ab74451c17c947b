//! The browser chat page of `meditron serve`: `GET /` and its few static assets, embedded in
//! the binary so the page works offline with no separate install, served with their content
//! types, an ETag for revalidation and headers that keep the page's own scripts the only ones.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// FNV-1a of the body, computed at compile time: the ETag.
    hash: u64,
}

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../web/", $name)),
            hash: fnv1a(include_bytes!(concat!("../web/", $name))),
        }
    };
}

const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// What `/assets/{name}` serves.
const ASSETS: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("md.js", "text/javascript; charset=utf-8"),
];

/// Scripts, styles and fetches from this origin only, and nothing inline: even if the
/// markdown renderer let markup through, the browser would not run it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the chat page.
pub async fn index(headers: HeaderMap) -> Response {
    respond(&INDEX, &headers)
}

/// `GET /assets/{name}`: the page's stylesheet and scripts.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => respond(a, &headers),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no asset named '{name}'"),
        )
            .into_response(),
    }
}

fn etag(a: &Asset) -> String {
    format!("\"{:016x}\"", a.hash)
}

/// True when `If-None-Match` lists the asset's ETag (weak or strong) or `*`.
fn not_modified(a: &Asset, headers: &HeaderMap) -> bool {
    let tag = etag(a);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag)
}

fn respond(a: &Asset, headers: &HeaderMap) -> Response {
    let mut r = if not_modified(a, headers) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag(a)) {
        h.insert(header::ETAG, v);
    }
    // Revalidate every time (a 304 when unchanged): after an upgrade the page and its
    // scripts change together, never a new page with a stale cached script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if a.content_type.starts_with("text/html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response) -> Vec<u8> {
        r.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference test suite (Fowler, Noll, Vo).
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn page_has_its_type_security_headers_and_etag() {
        rt().block_on(async {
            let r = index(HeaderMap::new()).await;
            assert_eq!(r.status(), StatusCode::OK);
            let h = r.headers().clone();
            assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache");
            assert!(h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'"));
            assert_eq!(h[header::ETAG].to_str().unwrap(), etag(&INDEX));
            let html = String::from_utf8(body(r).await).unwrap();
            assert!(html.starts_with("<!doctype html>"));
        });
    }

    #[test]
    fn matching_etag_gets_304_without_body() {
        rt().block_on(async {
            for tag in [etag(&INDEX), format!("W/{}", etag(&INDEX)), "*".into()] {
                let mut h = HeaderMap::new();
                h.insert(
                    header::IF_NONE_MATCH,
                    HeaderValue::from_str(&format!("\"other\", {tag}")).unwrap(),
                );
                let r = index(h).await;
                assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{tag}");
                assert!(body(r).await.is_empty());
            }
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"stale\""));
            assert_eq!(index(h).await.status(), StatusCode::OK);
        });
    }

    #[test]
    fn every_asset_the_page_links_is_served_with_its_type() {
        rt().block_on(async {
            let html = std::str::from_utf8(INDEX.body).unwrap();
            let linked: Vec<&str> = html
                .split("/assets/")
                .skip(1)
                .map(|s| s.split('"').next().unwrap())
                .collect();
            assert_eq!(linked.len(), ASSETS.len(), "{linked:?}");
            for name in linked {
                let r = asset(Path(name.to_string()), HeaderMap::new()).await;
                assert_eq!(r.status(), StatusCode::OK, "{name}");
                let want = if name.ends_with(".css") {
                    "text/css; charset=utf-8"
                } else {
                    "text/javascript; charset=utf-8"
                };
                assert_eq!(r.headers()[header::CONTENT_TYPE], want, "{name}");
                assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
                assert!(!body(r).await.is_empty());
            }
            let missing = asset(Path("../Cargo.toml".into()), HeaderMap::new()).await;
            assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        });
    }

    #[test]
    fn page_has_nothing_inline_that_the_csp_would_block() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        for script in html.split("<script").skip(1) {
            let tag = script.split('>').next().unwrap();
            assert!(
                tag.contains(" src=\"/assets/"),
                "inline script: <script{tag}>"
            );
        }
        for banned in ["<style", " style=", " onclick=", " onload=", "javascript:"] {
            assert!(!html.contains(banned), "{banned}");
        }
    }

    #[test]
    fn assets_stay_small() {
        // The issue asks for a small page: no framework. Keep the whole page under 100 KB.
        let total: usize = INDEX.body.len() + ASSETS.iter().map(|a| a.body.len()).sum::<usize>();
        assert!(total < 100_000, "{total} bytes");
    }
}
