//! The web UI's server side over plain HTTP (no browser): sign-in and its
//! throttle, the session cookie's attributes and reach, CSRF on every
//! POST, sign-out, tokens shown once, secrets never in a page, and the
//! live event stream. Against the real `autodeploy serve`.
//!
//! `projects_page_with_10000_projects` is a benchmark, not a test: ignored
//! unless asked for (`cargo test -p autodeploy --release --test web_http --
//! --ignored --nocapture`); its figures are in bench/README.md.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{ADMIN, Daemon, temp_dir};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A client that keeps cookies by hand and never follows redirects, so each
/// answer is seen as the daemon gave it.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
}

struct Page {
    status: StatusCode,
    location: Option<String>,
    set_cookies: Vec<String>,
    text: String,
}

impl Browser {
    fn new(d: &Daemon) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(60))
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            base: d.url.clone(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let req = if self.cookies.is_empty() {
            req
        } else {
            req.header(COOKIE, self.cookie_header())
        };
        let resp = req.send().await.expect("the daemon answers");
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        let set_cookies: Vec<String> = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for c in &set_cookies {
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") || value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.into(), value.into());
            }
        }
        let text = resp.text().await.unwrap();
        Page {
            status,
            location,
            set_cookies,
            text,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    /// Opens the sign-in page and sends `token` with its CSRF token.
    async fn sign_in(&mut self, token: &str) -> Page {
        let page = self.get("/login").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let csrf = csrf_of(&page.text);
        self.post("/login", &[("csrf", &csrf), ("token", token)])
            .await
    }

    /// Signs in with the admin token; the session's CSRF token.
    async fn signed_in(d: &Daemon) -> (Browser, String) {
        let mut b = Browser::new(d);
        let done = b.sign_in(ADMIN).await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
        let page = b.get("/projects").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let csrf = csrf_of(&page.text);
        (b, csrf)
    }
}

/// The value of the page's first hidden `csrf` field.
fn csrf_of(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let at = html.find(marker).expect("a csrf field") + marker.len();
    html[at..].split('"').next().unwrap().to_string()
}

/// The text of the element with `id` (up to its first tag end).
fn text_of(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!(r#"id="{id}""#))?;
    let rest = &html[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')?;
    Some(rest[start..start + end].to_string())
}

fn start(name: &str) -> Daemon {
    Daemon::start(&temp_dir(name))
}

const PAGES: [&str; 6] = [
    "/projects",
    "/projects/new",
    "/settings",
    "/nodes",
    "/policy",
    "/events",
];

#[tokio::test]
async fn pages_without_a_session_send_to_sign_in_and_the_stream_is_closed() {
    let d = start("web-no-session");
    let mut b = Browser::new(&d);
    for path in PAGES.iter().chain(&["/", "/projects/1"]) {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "GET {path}");
        let to = page.location.unwrap();
        let to_login = to == "/login" || (*path == "/" && to == "/projects");
        assert!(to_login, "GET {path} went to {to}");
    }
    let stream = b.get("/events/stream").await;
    assert_eq!(stream.status, StatusCode::UNAUTHORIZED);
    // A forged cookie is no session either.
    b.cookies
        .insert("autodeploy_session".into(), "ads_forged".into());
    assert_eq!(b.get("/projects").await.status, StatusCode::SEE_OTHER);
    assert_eq!(
        b.get("/events/stream").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn sign_in_sets_a_strict_httponly_session_cookie_that_opens_every_page() {
    let d = start("web-sign-in");
    let mut b = Browser::new(&d);
    let done = b.sign_in(ADMIN).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    assert_eq!(done.location.as_deref(), Some("/projects"));
    let cookie = done
        .set_cookies
        .iter()
        .find(|c| c.starts_with("autodeploy_session="))
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    // Plain HTTP and no https public URL: no Secure.
    assert!(!cookie.contains("Secure"), "{cookie}");
    // The cookie holds a random token, not the admin token.
    assert!(!cookie.contains(ADMIN));
    for path in PAGES {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "GET {path}: {}", page.text);
        assert!(page.text.contains(r#"id="nav""#), "GET {path} has the nav");
        assert!(page.text.contains(r#"id="sign-out""#));
    }
    // Signed in already: the sign-in page sends on.
    assert_eq!(b.get("/login").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn behind_an_https_public_url_the_cookie_is_secure_and_push_urls_use_it() {
    let d = Daemon::start_with(
        &temp_dir("web-https"),
        &[],
        &[("AUTODEPLOY_PUBLIC_URL", "https://deploy.example.com/")],
    );
    let mut b = Browser::new(&d);
    let login = b.get("/login").await;
    assert!(
        login.set_cookies.iter().all(|c| c.ends_with("; Secure")),
        "{:?}",
        login.set_cookies
    );
    let csrf = csrf_of(&login.text);
    let done = b.post("/login", &[("csrf", &csrf), ("token", ADMIN)]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    let cookie = done
        .set_cookies
        .iter()
        .find(|c| c.starts_with("autodeploy_session="))
        .unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    let id = d
        .create_project(json!({"name": "shop", "project_type": "compose"}))
        .await;
    let page = b.get(&format!("/projects/{id}")).await;
    assert_eq!(
        text_of(&page.text, "push-url").as_deref(),
        Some(format!("https://deploy.example.com/git/{id}.git").as_str())
    );
}

#[tokio::test]
async fn wrong_tokens_are_401_then_throttled_to_429() {
    let d = start("web-throttle");
    let mut b = Browser::new(&d);
    for i in 0..5 {
        let page = b.sign_in("not-the-admin-token").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "attempt {}", i + 1);
        assert!(page.text.contains("Wrong admin token"));
        assert!(page.text.contains(r#"role="alert""#));
        assert!(!page.text.contains("not-the-admin-token"));
        assert!(
            !page
                .set_cookies
                .iter()
                .any(|c| c.starts_with("autodeploy_session="))
        );
    }
    let page = b.sign_in("not-the-admin-token").await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        page.text
            .contains("Too many failed sign-ins; try again in "),
        "{}",
        page.text
    );
    // For the rest of the window even the right token waits.
    let page = b.sign_in(ADMIN).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(d.log().contains("failed web sign-in"));
    assert!(!d.log().contains("not-the-admin-token"));
}

#[tokio::test]
async fn posts_without_the_csrf_token_are_refused() {
    let d = start("web-csrf");
    // Sign-in itself: without the pre-session cookie, or a wrong field.
    let mut b = Browser::new(&d);
    let page = b
        .post("/login", &[("csrf", "guess"), ("token", ADMIN)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.text.contains("CSRF token missing or wrong"));
    b.get("/login").await;
    let page = b
        .post("/login", &[("csrf", "guess"), ("token", ADMIN)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);

    let (mut b, csrf) = Browser::signed_in(&d).await;
    let before = d.ok(Method::GET, "/api/settings", None).await;
    let posts: [(&str, Vec<(&str, &str)>); 5] = [
        (
            "/settings",
            vec![("auto_deploy_poll_interval_seconds", "3600")],
        ),
        ("/nodes", vec![("name", "sneaky")]),
        (
            "/projects",
            vec![("name", "sneaky"), ("project_type", "compose")],
        ),
        ("/policy/rollback", vec![]),
        ("/logout", vec![]),
    ];
    for (path, form) in &posts {
        let page = b.post(path, form).await;
        assert_eq!(
            page.status,
            StatusCode::FORBIDDEN,
            "POST {path} without csrf"
        );
        assert!(page.text.contains("CSRF token missing or wrong"));
        let mut wrong = form.clone();
        wrong.push(("csrf", "0000"));
        let page = b.post(path, &wrong).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "POST {path} wrong csrf");
    }
    assert_eq!(d.ok(Method::GET, "/api/settings", None).await, before);
    assert_eq!(
        d.ok(Method::GET, "/api/nodes", None).await,
        json!([]),
        "no node was added"
    );
    assert_eq!(d.ok(Method::GET, "/api/projects", None).await, json!([]));
    // The session still works, with the token.
    let page = b
        .post(
            "/settings",
            &[
                ("csrf", &csrf),
                ("auto_deploy_enabled", "true"),
                ("auto_deploy_poll_interval_seconds", "3600"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
    let after = d.ok(Method::GET, "/api/settings", None).await;
    assert_eq!(after["auto_deploy_poll_interval_seconds"], 3600);
}

#[tokio::test]
async fn the_session_cookie_does_not_open_the_api_and_sign_out_ends_it() {
    let d = start("web-sign-out");
    let (mut b, csrf) = Browser::signed_in(&d).await;
    for path in ["/api/projects", "/api/settings", "/api/status"] {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "GET {path}");
    }
    // A live stream open at sign-out ends with its session.
    let mut stream = b
        .http
        .get(format!("{}/events/stream", d.url))
        .header(COOKIE, b.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    stream
        .chunk()
        .await
        .unwrap()
        .expect("the stream's first bytes");
    let old = b.cookies.clone();
    let page = b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/login"));
    assert!(
        page.set_cookies
            .iter()
            .any(|c| c.starts_with("autodeploy_session=;") && c.contains("Max-Age=0"))
    );
    // The old cookie, sent again, is no session: the row is gone.
    b.cookies = old;
    for path in PAGES {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "GET {path}");
        assert_eq!(page.location.as_deref(), Some("/login"));
    }
    assert_eq!(
        b.get("/events/stream").await.status,
        StatusCode::UNAUTHORIZED
    );
    let page = b
        .post(
            "/settings",
            &[("csrf", &csrf), ("auto_deploy_enabled", "true")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/login"));
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut rest = String::new();
        while let Some(chunk) = stream.chunk().await.unwrap() {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        rest
    })
    .await
    .expect("the open stream ends within 30 s of signing out");
    assert!(ended.contains("event: end"), "{ended}");
}

#[tokio::test]
async fn the_project_list_searches_filters_and_shows_the_last_deployment() {
    let d = start("web-list");
    let shop = d
        .create_project(json!({"name": "shop-web", "project_type": "compose"}))
        .await;
    let tunnel = d
        .create_project(json!({"name": "shop-tunnel", "project_type": "tunnel"}))
        .await;
    let blog = d
        .create_project(json!({"name": "Blog_1", "project_type": "compose"}))
        .await;
    d.ok(
        Method::POST,
        &format!("/api/projects/{shop}/deployments"),
        None,
    )
    .await;
    let status = d.deployments(shop).await[0]["status"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut b, _) = Browser::signed_in(&d).await;
    let rows = |html: &str| -> Vec<i64> {
        html.split(r#"data-project-id=""#)
            .skip(1)
            .map(|r| r.split('"').next().unwrap().parse().unwrap())
            .collect()
    };
    let all = b.get("/projects").await.text;
    assert_eq!(rows(&all), vec![shop, tunnel, blog]);
    let shop_row = &all[all.find(&format!(r#"data-project-id="{shop}""#)).unwrap()..];
    let shop_row = &shop_row[..shop_row.find("</tr>").unwrap()];
    assert!(shop_row.contains(&format!(">{status}</td>")), "{shop_row}");
    assert!(shop_row.contains(" s ago") || shop_row.contains(" min ago"));
    assert_eq!(
        rows(&b.get("/projects?q=SHOP").await.text),
        vec![shop, tunnel]
    );
    // LIKE's wildcard is a plain character in a search.
    assert_eq!(rows(&b.get("/projects?q=g_").await.text), vec![blog]);
    assert_eq!(
        rows(&b.get("/projects?type=tunnel").await.text),
        vec![tunnel]
    );
    assert!(rows(&b.get("/projects?auto=on").await.text).is_empty());
    assert_eq!(
        rows(&b.get("/projects?q=shop&type=compose&auto=off").await.text),
        vec![shop]
    );
    let page = b.get("/projects").await.text;
    assert!(!page.contains(r#"id="next-page""#));
}

#[tokio::test]
async fn secrets_never_appear_and_tokens_are_shown_once() {
    let d = start("web-secrets");
    let planted = "planted-secret-token-0123456789abcdef";
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nplanted-private-key-material-42\n-----END OPENSSH PRIVATE KEY-----";
    let external = d
        .create_project(json!({
            "name": "external-app",
            "project_type": "compose",
            "git_source": "external",
            "git_url": "https://git.example.com/app.git",
            "credentials": {"kind": "https", "username": "deployer", "token": planted},
        }))
        .await;
    let (mut b, csrf) = Browser::signed_in(&d).await;

    // A hosted project made in the form: its push token once.
    let page = b
        .post(
            "/projects",
            &[
                ("csrf", &csrf),
                ("name", "hosted-app"),
                ("project_type", "compose"),
                ("git_source", "hosted"),
                ("git_url", ""),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);
    let at = page.location.unwrap();
    let first = b.get(&at).await;
    assert_eq!(first.status, StatusCode::OK);
    let push_token = text_of(&first.text, "push-token").expect("the push token once");
    assert!(push_token.starts_with("adp_"), "{push_token}");
    let again = b.get(&at).await;
    assert!(!again.text.contains(&push_token));
    assert!(!again.text.contains(r#"id="push-token""#));
    // Regenerated: the new one in that answer only.
    let csrf_now = csrf_of(&again.text);
    let page = b
        .post(&format!("{at}/push-token"), &[("csrf", &csrf_now)])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let rotated = text_of(&page.text, "push-token").expect("the new push token");
    assert_ne!(rotated, push_token);
    assert!(!b.get(&at).await.text.contains(&rotated));

    // A key set through the write-only form.
    let page = b
        .post(
            &format!("/projects/{external}/credentials"),
            &[
                ("csrf", &csrf),
                ("credential_kind", "ssh"),
                ("credentials", key),
            ],
        )
        .await;
    // An https remote with an ssh key is refused; the refusal repeats
    // neither the key nor anything of it.
    assert!(!page.text.contains("planted-private-key-material"));
    let page = b
        .post(
            &format!("/projects/{external}/credentials"),
            &[
                ("csrf", &csrf),
                ("credential_kind", "https"),
                ("credential_username", "deployer"),
                ("credentials", "second-planted-secret-987654321"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.text);

    // A node: its token once.
    let page = b
        .post("/nodes", &[("csrf", &csrf), ("name", "node-1")])
        .await;
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.text);
    let node_token = text_of(&page.text, "node-token").expect("the node token once");
    assert!(node_token.starts_with("adn_"));

    let mut pages: Vec<String> = PAGES.iter().map(|p| p.to_string()).collect();
    pages.push(format!("/projects/{external}"));
    pages.push(at.clone());
    pages.push(format!("/events?project={external}"));
    for path in &pages {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "GET {path}");
        for secret in [
            planted,
            "planted-private-key-material",
            "second-planted-secret-987654321",
            ADMIN,
            &push_token,
            &rotated,
            &node_token,
        ] {
            assert!(!page.text.contains(secret), "GET {path} shows a secret");
        }
    }
    let detail = b.get(&format!("/projects/{external}")).await.text;
    assert!(detail.contains("Stored: https, user deployer"));
    assert!(detail.contains(r#"<textarea id="credentials-secret" name="credentials""#));
    assert!(detail.contains("></textarea>"), "never pre-filled");
}

#[tokio::test]
async fn forms_show_the_services_errors_beside_their_fields() {
    let d = start("web-errors");
    let (mut b, csrf) = Browser::signed_in(&d).await;
    let page = b
        .post(
            "/settings",
            &[
                ("csrf", &csrf),
                ("auto_deploy_enabled", "true"),
                ("auto_deploy_poll_interval_seconds", "1"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = text_of(&page.text, "auto_deploy_poll_interval_seconds-error").unwrap();
    assert_eq!(
        error,
        "auto_deploy_poll_interval_seconds must be at least 10, got 1"
    );
    // Nothing saved, and the value entered is shown again.
    let settings = d.ok(Method::GET, "/api/settings", None).await;
    assert_eq!(settings["auto_deploy_poll_interval_seconds"], 60);
    assert!(page.text.contains(r#"value="1""#));

    // A project form with a bad name keeps what was entered.
    let page = b
        .post(
            "/projects",
            &[
                ("csrf", &csrf),
                ("name", "bad name"),
                ("project_type", "compose"),
                ("git_source", "hosted"),
                ("git_branch", "release"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(text_of(&page.text, "error").unwrap().contains("name"));
    assert!(page.text.contains(r#"value="release""#));
    // A password typed into a git URL is not shown back with the form.
    let page = b
        .post(
            "/projects",
            &[
                ("csrf", &csrf),
                ("name", "ext"),
                ("project_type", "compose"),
                ("git_source", "external"),
                (
                    "git_url",
                    "https://me:hunter2-typed-password@git.example.com/x.git",
                ),
                ("expose_port", "not a number"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!page.text.contains("hunter2-typed-password"));
    assert!(page.text.contains("git.example.com/x.git"));

    // The toggle: absent on a tunnel, refused with the reason on
    // domain_only.
    let tunnel = d
        .create_project(json!({"name": "t", "project_type": "tunnel"}))
        .await;
    let domain = d
        .create_project(json!({"name": "dom", "project_type": "domain_only"}))
        .await;
    let page = b.get(&format!("/projects/{tunnel}")).await;
    assert!(!page.text.contains(r#"id="auto-deploy""#));
    let page = b.get(&format!("/projects/{domain}")).await;
    assert!(page.text.contains(r#"id="auto-deploy-toggle""#));
    assert!(page.text.contains(r#"aria-pressed="false""#));
    let page = b
        .post(
            &format!("/projects/{domain}/auto-deploy"),
            &[("csrf", &csrf), ("enable", "true")],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    let reason = text_of(&page.text, "auto-deploy-error").expect("the refusal");
    assert!(!reason.is_empty());
    let p = d
        .ok(Method::GET, &format!("/api/projects/{domain}"), None)
        .await;
    assert_eq!(p["auto_deploy_enabled"], false);
    // An unknown project is a 404 page.
    assert_eq!(
        b.get("/projects/999999").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_event_stream_sends_deployment_changes() {
    let d = start("web-stream");
    let (b, _) = Browser::signed_in(&d).await;
    let project = d
        .create_project(json!({"name": "live", "project_type": "compose"}))
        .await;
    let mut resp = b
        .http
        .get(format!("{}/events/stream", d.url))
        .header(COOKIE, b.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // The stream is open (its first bytes came) before the deploy.
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("retry:"));
    d.ok(
        Method::POST,
        &format!("/api/projects/{project}/deployments"),
        None,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    let want = format!("\"project_id\":{project}");
    while !(seen.contains("event: deployment") && seen.contains(&want)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, resp.chunk())
            .await
            .expect("a deployment event within 30 s")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("\"status\":"), "{seen}");
}

/// A multipart/form-data body of `fields` and one file `policy`.
fn multipart(fields: &[(&str, &str)], file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "autodeploy-test-boundary-7f3a";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"policy\"; filename=\"p.wasm\"\r\nContent-Type: application/wasm\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn a_bad_policy_upload_is_refused_and_the_active_one_stays() {
    let d = start("web-policy");
    let (mut b, csrf) = Browser::signed_in(&d).await;
    let before = d.ok(Method::GET, "/api/policy", None).await["sha256"].clone();
    let page = b.get("/policy").await;
    assert_eq!(
        text_of(&page.text, "policy-sha256").as_deref(),
        before.as_str()
    );
    let upload = |fields: Vec<(&'static str, String)>, file: &'static [u8]| {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        multipart(&fields, file)
    };
    // Without the CSRF token nothing of the upload is used.
    let (kind, body) = upload(vec![], b"\0asm not really");
    let req = b
        .http
        .post(format!("{}/policy", d.url))
        .header("content-type", kind)
        .body(body);
    let page = b.send(req).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let (kind, body) = upload(
        vec![("csrf", csrf.clone())],
        b"\0asm\x0d\0\x01\0 not a component",
    );
    let req = b
        .http
        .post(format!("{}/policy", d.url))
        .header("content-type", kind)
        .body(body);
    let page = b.send(req).await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.text
    );
    let error = text_of(&page.text, "error").expect("the refusal");
    assert!(
        error.starts_with("The policy was refused; the active one stays"),
        "{error}"
    );
    assert_eq!(
        text_of(&page.text, "policy-sha256").as_deref(),
        before.as_str()
    );
    assert_eq!(
        d.ok(Method::GET, "/api/policy", None).await["sha256"],
        before
    );
}

/// Fills a database with `n` projects, each with one deployment.
async fn fill(url: &str, n: usize) {
    use autodeploy::store::{
        DeploySource, GitSource, ProjectFields, ProjectType, SqlStore, Store, TriggerWrite,
    };
    let store = SqlStore::connect(url).await.expect("open the database");
    for i in 0..n {
        let fields = ProjectFields {
            name: format!("p{i:06}"),
            project_type: [
                ProjectType::Compose,
                ProjectType::Image,
                ProjectType::Tunnel,
            ][i % 3],
            git_source: GitSource::External,
            git_url: Some(format!("https://git.example.com/r{i}.git")),
            git_branch: "main".into(),
            compose_file_path: "docker-compose.yml".into(),
            expose_service: None,
            expose_port: None,
            auto_deploy_enabled: i % 2 == 0,
            image_ref: Some("example.com/app:1".into()),
            container_port: Some(80),
            labels: Default::default(),
            deploy: Default::default(),
        };
        let p = store.create_project(&fields, None, None).await.unwrap();
        store
            .record_trigger(&TriggerWrite {
                project_id: p.id,
                source: DeploySource::Manual,
                target_commit: None,
                target_digests: None,
                reason: "bench".into(),
                failure: (i % 4 == 0).then(|| "bench failure".to_string()),
                node_id: None,
                policy_name: "bench".into(),
                policy_version: "0".into(),
                policy_sha256: "0".repeat(64),
                track_commit: None,
                track_digests: None,
                decided_on_commit: None,
                decided_with_auto_deploy: None,
                decisions: Vec::new(),
                from_deployment: None,
            })
            .await
            .unwrap();
    }
    let off = [
        (
            "auto_deploy_master_enabled".to_string(),
            "false".to_string(),
        ),
        (
            "auto_deploy_poll_interval_seconds".to_string(),
            "86400".to_string(),
        ),
    ]
    .into();
    store.put_settings(&off).await.unwrap();
}

fn database_url(dir: &Path) -> String {
    if common::db::postgres() {
        common::db::database_url(&dir.to_string_lossy().replace(['/', '.'], "_"))
    } else {
        format!("sqlite://{}", dir.join("autodeploy.db").display())
    }
}

#[tokio::test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
async fn projects_page_with_10000_projects() {
    let n: usize = std::env::var("WEB_BENCH_PROJECTS")
        .ok()
        .map(|v| v.parse().expect("WEB_BENCH_PROJECTS is a number"))
        .unwrap_or(10_000);
    let dir = temp_dir("web-bench");
    let started = Instant::now();
    fill(&database_url(&dir), n).await;
    println!(
        "web bench: {n} projects with a deployment each stored in {:.1?}",
        started.elapsed()
    );
    let d = Daemon::start(&dir);
    let (mut b, _) = Browser::signed_in(&d).await;
    for (what, path) in [
        ("first page", "/projects"),
        ("search (matches 10)", "/projects?q=p00999"),
        ("type and auto filter", "/projects?type=image&auto=on"),
    ] {
        let mut server = Vec::new();
        let mut wall = Vec::new();
        let mut rows = 0;
        for _ in 0..30 {
            let t = Instant::now();
            let resp = b
                .http
                .get(format!("{}{path}", d.url))
                .header(COOKIE, b.cookie_header())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let timing = resp.headers()["server-timing"]
                .to_str()
                .unwrap()
                .to_string();
            let text = resp.text().await.unwrap();
            wall.push(t.elapsed());
            let ms: f64 = timing.strip_prefix("render;dur=").unwrap().parse().unwrap();
            server.push(ms);
            rows = text.matches("data-project-id=").count();
        }
        server.sort_by(f64::total_cmp);
        wall.sort();
        println!(
            "web bench: {what} ({path}): server {:.2} ms median, {:.2} ms max; client wall {:.2?} median; {rows} rows",
            server[server.len() / 2],
            server[server.len() - 1],
            wall[wall.len() / 2],
        );
    }
    let _ = b.get("/projects").await;
}
