//! Paged list answers. The body stays the JSON array these lists always
//! were, so every client that reads one page keeps working; the next page
//! is announced in headers: `X-Next-Cursor: <cursor>` and
//! `Link: </api/...?...&cursor=<cursor>>; rel="next"`. No header: last page.

use axum::Json;
use axum::extract::OriginalUri;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::page::Page;

pub const NEXT_CURSOR: HeaderName = HeaderName::from_static("x-next-cursor");

/// A page and the request it answers (for the `Link` to the next one).
pub struct Paged<T>(pub Page<T>, pub OriginalUri);

impl<T: Serialize> IntoResponse for Paged<T> {
    fn into_response(self) -> Response {
        let Paged(page, OriginalUri(uri)) = self;
        let mut response = Json(page.items).into_response();
        if let Some(cursor) = page.next_cursor {
            // Cursors are URL-safe base64, so they go in as they are.
            let mut query: Vec<&str> = uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
                .collect();
            let next = format!("cursor={cursor}");
            query.push(&next);
            let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.join("&"));
            let headers = response.headers_mut();
            if let (Ok(c), Ok(l)) = (HeaderValue::from_str(&cursor), HeaderValue::from_str(&link)) {
                headers.insert(NEXT_CURSOR, c);
                headers.insert(header::LINK, l);
            }
        }
        response
    }
}
