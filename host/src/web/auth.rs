//! Sign-in, sessions, CSRF and the sign-in throttle.
//!
//! The admin token is exchanged once for a session: a random token in an
//! `HttpOnly; SameSite=Strict` cookie (`Secure` when the daemon's public
//! URL is https), kept server-side by its sha256 with an expiry (see
//! `service::sessions`). Every POST carries the session's CSRF token in a
//! hidden field; the sign-in form, before any session, a double-submit
//! token (a cookie and the same value in the form). Failed sign-ins are
//! counted per client address and in all: past the limit, sign-in answers
//! 429 until the window moves on.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Form, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, RequestPartsExt};
use maud::html;
use tokio_util::sync::CancellationToken;

use super::layout::{self, WebError};
use crate::app::App;
use crate::secrets::{Secret, new_token, token_hash};
use crate::service;

pub const SESSION_COOKIE: &str = "autodeploy_session";
pub const LOGIN_CSRF_COOKIE: &str = "autodeploy_login_csrf";

/// Failed sign-ins one client address may make within [`WINDOW`].
pub const PER_CLIENT_FAILURES: usize = 5;
/// Failed sign-ins from all addresses together within [`WINDOW`]: a cap
/// for guessing spread over many addresses.
pub const ALL_FAILURES: usize = 100;
pub const WINDOW: Duration = Duration::from_secs(300);

/// The web UI's own state beside the [`App`].
pub struct Web {
    throttle: Throttle,
    /// Cookies get `Secure`: the daemon is reached over https (through a
    /// proxy; it serves plain HTTP itself).
    pub secure_cookies: bool,
    /// `AUTODEPLOY_PUBLIC_URL`, without a trailing slash: how the push URL
    /// is shown. Else the request's own host.
    pub public_url: Option<String>,
    /// What the next page of a session shows once (a notice after a
    /// redirect, a new push token), by the session's token hash. Kept in
    /// this replica's memory: the redirect comes straight back to it.
    flashes: Mutex<HashMap<String, Flash>>,
    /// Cancelled when the daemon stops: live streams end then, so they do
    /// not hold its shutdown.
    pub shutdown: CancellationToken,
}

/// Shown once, on a session's next page.
#[derive(Default)]
pub struct Flash {
    pub notice: Option<String>,
    /// A project's push token, shown on that project's page only.
    pub push_token: Option<(i64, Secret)>,
}

impl Web {
    pub fn from_env(shutdown: CancellationToken) -> Web {
        let public_url = std::env::var("AUTODEPLOY_PUBLIC_URL")
            .ok()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty());
        Web::new(public_url, shutdown)
    }

    pub fn new(public_url: Option<String>, shutdown: CancellationToken) -> Web {
        Web {
            throttle: Throttle::default(),
            secure_cookies: public_url
                .as_deref()
                .is_some_and(|u| u.to_ascii_lowercase().starts_with("https://")),
            public_url,
            flashes: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    pub fn set_flash(&self, session: &Signed, flash: Flash) {
        let mut all = self.flashes.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: a flash nobody came back for is dropped with the oldest.
        if all.len() >= 10_000 {
            all.clear();
        }
        all.insert(session.id_hash.clone(), flash);
    }

    pub fn take_flash(&self, session: &Signed) -> Flash {
        self.flashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session.id_hash)
            .unwrap_or_default()
    }

    /// Sets a notice for the session's next page.
    pub fn notice(&self, session: &Signed, text: impl Into<String>) {
        self.set_flash(
            session,
            Flash {
                notice: Some(text.into()),
                push_token: None,
            },
        );
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: i64) -> HeaderValue {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{name}={value}; HttpOnly; SameSite=Strict; Path={path}; Max-Age={max_age}{secure}"
        ))
        .expect("cookie values are plain ASCII")
    }
}

/// A signed-in request: its session's CSRF token and the hash of its
/// cookie's token (never the token itself).
pub struct Signed {
    pub csrf: String,
    pub id_hash: String,
    cookie_token: String,
}

impl Signed {
    /// Looks up the session of the request's cookie; `None` when it has
    /// none, or one that ended.
    pub async fn of(app: &App, headers: &HeaderMap) -> Result<Option<Signed>, WebError> {
        let Some(token) = cookie(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        let found = service::sessions::find(app, token).await?;
        Ok(found.map(|s| Signed {
            csrf: s.csrf,
            id_hash: token_hash(token),
            cookie_token: token.to_string(),
        }))
    }
}

impl FromRequestParts<Arc<App>> for Signed {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        match Signed::of(app, &parts.headers).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(Redirect::to("/login").into_response()),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A signed-in POST of a form that carried the session's CSRF token.
pub struct Posted {
    pub signed: Signed,
    pub fields: Fields,
}

impl FromRequest<Arc<App>> for Posted {
    type Rejection = Response;
    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let signed: Signed = parts.extract_with_state(app).await?;
        let req = Request::from_parts(parts, body);
        let fields = match Form::<Vec<(String, String)>>::from_request(req, app).await {
            Ok(Form(pairs)) => Fields(pairs),
            Err(_) => return Err(csrf_refused()),
        };
        if !csrf_matches(fields.get("csrf"), &signed.csrf) {
            return Err(csrf_refused());
        }
        Ok(Posted { signed, fields })
    }
}

/// The 403 of a POST without the right CSRF token.
pub fn csrf_refused() -> Response {
    WebError::new(StatusCode::FORBIDDEN, "CSRF token missing or wrong").into_response()
}

/// Whether a form's token is the expected one, compared in constant time.
pub fn csrf_matches(given: Option<&str>, expected: &str) -> bool {
    let Some(given) = given else { return false };
    given.len() == expected.len()
        && !expected.is_empty()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A form's fields in the order sent.
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    /// The first value of `name`, as sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The trimmed value of `name`; `None` when absent or blank.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The client's address, as the connection gave it (a proxy's own
/// address when behind one).
fn client(parts: Option<&ConnectInfo<SocketAddr>>) -> Option<IpAddr> {
    parts.map(|c| c.0.ip())
}

pub async fn login_page(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
) -> Response {
    if let Ok(Some(_)) = Signed::of(&app, &headers).await {
        return Redirect::to("/projects").into_response();
    }
    login_form(&web, &headers, StatusCode::OK, None)
}

/// The sign-in page, with a fresh double-submit token unless the request
/// carries one already.
fn login_form(web: &Web, headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    let existing = cookie(headers, LOGIN_CSRF_COOKIE).map(str::to_string);
    let token = existing
        .clone()
        .unwrap_or_else(|| new_token("login").expose().to_string());
    let body = html! {
        section.login {
            h1 { "Sign in to autodeploy" }
            @if let Some(e) = error {
                p #error .error role="alert" { (e) }
            }
            form #login method="post" action="/login" {
                input type="hidden" name="csrf" value=(token);
                label for="token" { "Admin token" }
                input #token type="password" name="token" required autocomplete="current-password"
                    autofocus aria-describedby="token-hint";
                p #token-hint .hint { "The daemon's " code { "AUTODEPLOY_ADMIN_TOKEN" }
                    ", or the " code { "ada_…" } " token its first start printed." }
                button #sign-in type="submit" { "Sign in" }
            }
        }
    };
    let mut res = (status, layout::bare("Sign in", body)).into_response();
    if existing.is_none() {
        res.headers_mut().append(
            header::SET_COOKIE,
            web.cookie(LOGIN_CSRF_COOKIE, &token, "/login", 3600),
        );
    }
    res
}

pub async fn login(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    connect: Result<
        Extension<ConnectInfo<SocketAddr>>,
        axum::extract::rejection::ExtensionRejection,
    >,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let ip = client(connect.as_ref().ok().map(|c| &c.0));
    if let Some(wait) = web.throttle.blocked(ip) {
        let message = format!(
            "Too many failed sign-ins; try again in {} s",
            wait.as_secs().max(1)
        );
        let mut res = login_form(
            &web,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&message),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    let fields = Fields(form.map(|Form(f)| f).unwrap_or_default());
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if !csrf_matches(fields.get("csrf"), expected) {
        return csrf_refused();
    }
    let token = fields.get("token").unwrap_or("").trim();
    match service::sessions::sign_in(&app, token).await {
        Ok(Some(signed_in)) => {
            tracing::info!(client = ?ip, "web sign-in");
            let mut res = Redirect::to("/projects").into_response();
            let h = res.headers_mut();
            h.append(
                header::SET_COOKIE,
                web.cookie(
                    SESSION_COOKIE,
                    signed_in.token.expose(),
                    "/",
                    service::sessions::LIFETIME_SECONDS,
                ),
            );
            h.append(
                header::SET_COOKIE,
                web.cookie(LOGIN_CSRF_COOKIE, "", "/login", 0),
            );
            res
        }
        Ok(None) => {
            web.throttle.fail(ip);
            // A security event; the token tried is never logged.
            tracing::warn!(client = ?ip, "failed web sign-in: wrong admin token");
            login_form(
                &web,
                &headers,
                StatusCode::UNAUTHORIZED,
                Some("Wrong admin token"),
            )
        }
        Err(e) => WebError::from(e).into_response(),
    }
}

pub async fn logout(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    posted: Posted,
) -> Response {
    if let Err(e) = service::sessions::sign_out(&app, &posted.signed.cookie_token).await {
        return WebError::from(e).into_response();
    }
    web.take_flash(&posted.signed);
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut()
        .append(header::SET_COOKIE, web.cookie(SESSION_COOKIE, "", "/", 0));
    res
}

/// Failed sign-ins within the last [`WINDOW`], per client and in all.
#[derive(Default)]
struct Throttle {
    state: Mutex<ThrottleState>,
}

#[derive(Default)]
struct ThrottleState {
    /// `None`: the address is unknown (a connection without one).
    per_client: HashMap<Option<IpAddr>, VecDeque<Instant>>,
    all: VecDeque<Instant>,
}

impl Throttle {
    /// How long `client` must wait, when it must.
    fn blocked(&self, client: Option<IpAddr>) -> Option<Duration> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.prune(now);
        let wait = |q: &VecDeque<Instant>, limit: usize| {
            (q.len() >= limit).then(|| {
                // Until enough of the failures have left the window.
                let oldest_that_counts = q[q.len() - limit];
                (oldest_that_counts + WINDOW).saturating_duration_since(now)
            })
        };
        let mine = s
            .per_client
            .get(&client)
            .and_then(|q| wait(q, PER_CLIENT_FAILURES));
        mine.or_else(|| wait(&s.all, ALL_FAILURES))
    }

    fn fail(&self, client: Option<IpAddr>) {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.prune(now);
        s.per_client.entry(client).or_default().push_back(now);
        s.all.push_back(now);
    }
}

impl ThrottleState {
    fn prune(&mut self, now: Instant) {
        let old = |t: &Instant| now.duration_since(*t) >= WINDOW;
        while self.all.front().is_some_and(old) {
            self.all.pop_front();
        }
        self.per_client.retain(|_, q| {
            while q.front().is_some_and(old) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_block_that_client_only() {
        let t = Throttle::default();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..PER_CLIENT_FAILURES {
            assert!(t.blocked(a).is_none());
            t.fail(a);
        }
        let wait = t.blocked(a).expect("blocked after five failures");
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(5));
        assert!(t.blocked(b).is_none());
    }

    #[test]
    fn csrf_tokens_compare_whole() {
        assert!(csrf_matches(Some("abc"), "abc"));
        assert!(!csrf_matches(Some("abd"), "abc"));
        assert!(!csrf_matches(Some("ab"), "abc"));
        assert!(!csrf_matches(None, "abc"));
        assert!(!csrf_matches(Some(""), ""));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; autodeploy_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
