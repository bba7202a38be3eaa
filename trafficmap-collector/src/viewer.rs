//! The viewer, embedded in the binary (`viewer/dist`, built and committed by the viewer's
//! tooling), served at `/` with proper content types. Paths without a file extension that are
//! not API routes get `index.html`, so the single-page app's own URLs can be reloaded.

use axum::{
    extract::Request,
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use include_dir::{Dir, include_dir};

static DIST: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../viewer/dist");

pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("wasm") => "application/wasm",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

pub async fn serve(req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
    }
    let path = req.uri().path().trim_start_matches('/');
    if path.starts_with("api/") {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": format!("no such API route: /{path}") }).to_string(),
        )
            .into_response();
    }
    let (name, file) = match DIST.get_file(path) {
        Some(f) if !path.is_empty() => (path, f),
        _ if path.is_empty() || !path.rsplit('/').next().unwrap_or_default().contains('.') => {
            match DIST.get_file("index.html") {
                Some(f) => ("index.html", f),
                None => return (StatusCode::NOT_FOUND, "viewer not built\n").into_response(),
            }
        }
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    // Hashed asset names never change content; index.html must be re-read to pick them up.
    let cache = if name == "index.html" {
        "no-cache"
    } else if name.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut r = (StatusCode::OK, file.contents()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_embedded() {
        let index = DIST.get_file("index.html").expect("viewer/dist/index.html");
        assert!(String::from_utf8_lossy(index.contents()).contains("trafficmap"));
        assert_eq!(
            content_type("assets/app-1.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
    }
}
