//! The stylesheet and the script, compiled into the binary and served with
//! a long cache life: their URLs carry a hash of their content, so a new
//! daemon's pages ask for the new files.

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

fn versioned(path: &str, content: &str) -> String {
    let hash = crate::secrets::hex(&sha2::Sha256::digest(content.as_bytes()));
    format!("{path}?v={}", &hash[..12])
}

static CSS_URL: LazyLock<String> = LazyLock::new(|| versioned("/assets/app.css", CSS));
static JS_URL: LazyLock<String> = LazyLock::new(|| versioned("/assets/app.js", JS));

pub fn css_url() -> &'static str {
    &CSS_URL
}

pub fn js_url() -> &'static str {
    &JS_URL
}

fn asset(content: &'static str, kind: &'static str) -> Response {
    let mut res = content.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    res
}

pub async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

pub async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}
