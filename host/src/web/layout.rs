//! The page shell (head, navigation, sign-out, notices and errors), the
//! error page, and small formatting helpers shared by the pages.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::assets;
use super::auth::Signed;
use crate::service::ServiceError;
use crate::service::policy::PolicyActionError;

/// Which navigation link is the current page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Projects,
    Nodes,
    Settings,
    Policy,
    Events,
}

const LINKS: [(Nav, &str, &str, &str); 5] = [
    (Nav::Projects, "nav-projects", "/projects", "Projects"),
    (Nav::Nodes, "nav-nodes", "/nodes", "Nodes"),
    (Nav::Settings, "nav-settings", "/settings", "Settings"),
    (Nav::Policy, "nav-policy", "/policy", "Policy"),
    (Nav::Events, "nav-events", "/events", "Events"),
];

/// A notice (success) or an error shown at the top of a page.
#[derive(Debug, Default)]
pub struct Banner {
    pub notice: Option<String>,
    pub error: Option<String>,
}

impl Banner {
    pub fn notice(text: Option<String>) -> Banner {
        Banner {
            notice: text,
            error: None,
        }
    }
    pub fn error(text: impl Into<String>) -> Banner {
        Banner {
            notice: None,
            error: Some(text.into()),
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) " · autodeploy" }
            link rel="stylesheet" href=(assets::css_url());
            script src=(assets::js_url()) defer {}
        }
    }
}

/// A signed-in page: navigation, sign-out, the banner, then `body`.
pub fn page(signed: &Signed, nav: Nav, title: &str, banner: &Banner, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/projects" { "autodeploy" }
                    nav #nav aria-label="Main" {
                        ul {
                            @for (item, id, href, text) in LINKS {
                                li {
                                    @if item == nav {
                                        a id=(id) href=(href) aria-current="page" { (text) }
                                    } @else {
                                        a id=(id) href=(href) { (text) }
                                    }
                                }
                            }
                        }
                    }
                    form #sign-out method="post" action="/logout" {
                        input type="hidden" name="csrf" value=(signed.csrf);
                        button #sign-out-button .secondary type="submit" { "Sign out" }
                    }
                }
                main #main tabindex="-1" {
                    (banner_markup(banner))
                    (body)
                }
            }
        }
    }
}

pub fn banner_markup(banner: &Banner) -> Markup {
    html! {
        @if let Some(e) = &banner.error {
            p #error .error role="alert" { (e) }
        }
        @if let Some(n) = &banner.notice {
            p #notice .notice role="status" { (n) }
        }
    }
}

/// A page without navigation: sign-in and errors outside a session.
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top { a.brand href="/projects" { "autodeploy" } }
                main #main { (body) }
            }
        }
    }
}

/// A page that could not be shown, or an action refused outright: its
/// status and a message for the person. Messages come from the service
/// layer, which never puts a secret in one.
#[derive(Debug)]
pub struct WebError {
    pub status: StatusCode,
    pub message: String,
}

impl WebError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> WebError {
        WebError {
            status,
            message: message.into(),
        }
    }
    pub fn not_found(what: &str) -> WebError {
        WebError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

impl From<ServiceError> for WebError {
    fn from(e: ServiceError) -> WebError {
        let (status, message) = match e {
            ServiceError::Invalid(m) | ServiceError::Refused(m) => {
                (StatusCode::UNPROCESSABLE_ENTITY, m)
            }
            ServiceError::NotFound(what) => (StatusCode::NOT_FOUND, format!("{what} not found")),
            ServiceError::Conflict(m) => (StatusCode::CONFLICT, m),
            ServiceError::PolicyUnavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ServiceError::Internal { what, detail } => {
                tracing::error!(error = %detail, "{what}");
                (StatusCode::INTERNAL_SERVER_ERROR, what.to_string())
            }
            ServiceError::Store(e) => {
                tracing::error!(error = %e, "store failure");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the daemon's log".to_string(),
                )
            }
        };
        WebError { status, message }
    }
}

impl From<PolicyActionError> for WebError {
    fn from(e: PolicyActionError) -> WebError {
        use crate::policy::SwapError;
        let status = match &e {
            PolicyActionError::Swap(SwapError::Store(_) | SwapError::Task(_))
            | PolicyActionError::Store(_) => {
                tracing::error!(error = %e, "a policy action failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            PolicyActionError::Swap(SwapError::NoPrevious) => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        WebError::new(status, e.to_string())
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = html! {
            h1 { (title) }
            p #error .error role="alert" { (self.message) }
            p { a href="/projects" { "Back to the projects" } }
        };
        (self.status, bare(title, body)).into_response()
    }
}

pub type PageResult = Result<Response, WebError>;

/// Seconds since the epoch as `2026-11-27 00:11:33 UTC`.
pub fn datetime(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `secs` as an ISO 8601 instant, for `<time datetime>`.
pub fn iso(secs: i64) -> String {
    datetime(secs).replacen(' ', "T", 1).replace(" UTC", "Z")
}

/// Days since 1970-01-01 as (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// How long ago `secs` was, in words: "12 s ago", "3 min ago", "2 h ago".
pub fn age(secs: i64, now: i64) -> String {
    let d = (now - secs).max(0);
    match d {
        0..60 => format!("{d} s ago"),
        60..3600 => format!("{} min ago", d / 60),
        3600..86_400 => format!("{} h ago", d / 3600),
        _ => format!("{} d ago", d / 86_400),
    }
}

/// `<time>` with the age as text and the instant as its title.
pub fn time_ago(secs: i64, now: i64) -> Markup {
    html! { time datetime=(iso(secs)) title=(datetime(secs)) { (age(secs, now)) } }
}

/// The first 12 hex digits of a sha.
pub fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(datetime(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(datetime(1_795_738_293), "2026-11-27 00:11:33 UTC");
        assert_eq!(iso(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(age(100, 130), "30 s ago");
        assert_eq!(age(0, 7200), "2 h ago");
    }
}
