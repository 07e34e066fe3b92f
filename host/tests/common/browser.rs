//! A real headless chromium, driven through Debian's `chromedriver` with
//! fantoccini: one chromedriver and one browser session per test binary,
//! shared by its cases one at a time (they share cookies, so a case holds
//! the session for its whole run).
//!
//! A browser session lives on the runtime that made it, so the cases run on
//! one runtime of this binary ([`run`]) rather than one `#[tokio::test]`
//! runtime each. Statics are never dropped: chromedriver runs in a process
//! group of its own (chromium is started inside it) that the binary's
//! reaper kills when the binary ends, however it ends (`reap`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::sync::{Mutex as AsyncMutex, MutexGuard, OnceCell};

use super::wait_until;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Page loads and live updates on a loaded 2-core machine: bounds a hang
/// only.
pub const UI_TIMEOUT: Duration = Duration::from_secs(30);

/// The one runtime every browser case runs on.
static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
});

/// Runs a case on the binary's shared runtime.
pub fn run<F: Future>(f: F) -> F::Output {
    RT.block_on(f)
}

/// Panics naming the Debian package when chromium or chromedriver is
/// missing: a browser test that passes without a browser proves nothing.
pub fn require_chromium() {
    require_binaries(&[(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")]);
}

/// Panics naming the package of the first `(binary, package)` whose binary
/// is missing.
pub fn require_binaries(binaries: &[(&str, &str)]) {
    for (binary, package) in binaries {
        assert!(
            Path::new(binary).exists(),
            "{binary} is missing: the browser tests need Debian's `{package}` package \
             (apt-get install chromium chromium-driver, or run scripts/test.sh, which installs it)"
        );
    }
}

/// The running chromedriver: its port and process group.
struct Driver {
    port: u16,
}

/// Starts chromedriver on a free loopback port in a process group of its
/// own.
fn start_driver() -> Driver {
    require_chromium();
    let port = super::git::free_port();
    let log = super::reap::root().join("chromedriver.log");
    // Kept for good: statics are never dropped, so the reaper ends its
    // group (chromium is started inside it) when the binary ends.
    static DRIVER: std::sync::OnceLock<super::reap::Proc> = std::sync::OnceLock::new();
    let child = super::reap::spawn(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            // chromium's own scratch directories go under the root too.
            .env("TMPDIR", super::reap::root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
    assert!(DRIVER.set(child).is_ok(), "chromedriver starts once");
    // chromedriver answers /status once it listens.
    super::wait_until_blocking("chromedriver listens", UI_TIMEOUT, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Driver { port }
}

/// A chromedriver command outside the W3C set: Chrome DevTools Protocol
/// `cmd` with `params`, through chromedriver's `goog/cdp/execute`.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"cmd": self.cmd, "params": self.params}).to_string()),
        )
    }
}

/// The shared browser session, pointed at one daemon.
pub struct Browser {
    pub client: Client,
    /// The daemon's base URL, `http://127.0.0.1:PORT`.
    pub base: String,
}

static BROWSER: OnceCell<AsyncMutex<Browser>> = OnceCell::const_new();

/// The binary's browser session for the daemon at `base` (the first call
/// starts chromedriver and chromium), held until the guard drops.
pub async fn browser(base: &str) -> MutexGuard<'static, Browser> {
    let cell = BROWSER
        .get_or_init(|| async {
            let driver = start_driver();
            let profile = super::reap::root().join("chromium-profile");
            let _ = std::fs::remove_dir_all(&profile);
            std::fs::create_dir_all(&profile).unwrap();
            let mut caps = serde_json::Map::new();
            caps.insert(
                "goog:chromeOptions".into(),
                json!({
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--no-first-run",
                        "--window-size=1280,900",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                }),
            );
            let client = ClientBuilder::native()
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{}", driver.port))
                .await
                .unwrap_or_else(|e| {
                    panic!("chromedriver did not start a headless {CHROMIUM} session: {e}")
                });
            AsyncMutex::new(Browser {
                client,
                base: base.trim_end_matches('/').to_string(),
            })
        })
        .await;
    let guard = cell.lock().await;
    assert_eq!(
        guard.base,
        base.trim_end_matches('/'),
        "one daemon per browser"
    );
    guard
}

/// The workspace's `target/ui-screenshots/`, found from this test binary's
/// path (`target/<profile>/deps/NAME`) so it follows `CARGO_TARGET_DIR`.
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary sits in target/<profile>/deps");
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Opens `path` on the daemon.
    pub async fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The path (and query) of the page shown now.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("current url");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    /// The HTTP status the page shown now was answered with.
    pub async fn status(&self) -> u16 {
        let v = self
            .js("return performance.getEntriesByType('navigation')[0].responseStatus;")
            .await;
        v.as_u64()
            .unwrap_or_else(|| panic!("no response status: {v}")) as u16
    }

    /// Runs `script` in the page (a returned promise is awaited).
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The element with id `id`; panics naming it and the page when absent.
    pub async fn id(&self, id: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Id(id)).await {
            Ok(e) => e,
            Err(e) => panic!(
                "no #{id} on {}: {e}\n{}",
                self.path().await,
                self.body_text().await
            ),
        }
    }

    /// Whether an element matches `css` now.
    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_default()
            .is_empty()
    }

    /// The text of the first element matching `css`, if any.
    pub async fn text_of(&self, css: &str) -> Option<String> {
        let found = self.client.find(Locator::Css(css)).await.ok()?;
        found.text().await.ok()
    }

    /// The text of `#id`.
    pub async fn text(&self, id: &str) -> String {
        self.id(id).await.text().await.expect("element text")
    }

    /// The whole page's visible text (for failure messages).
    pub async fn body_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(b) => b.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the first element matching `css` shows text containing
    /// `expected`; panics with what it shows instead.
    pub async fn wait_for_text(&self, css: &str, expected: &str) {
        let what = format!("{css} shows {expected:?}");
        let result = tokio::time::timeout(
            UI_TIMEOUT,
            wait_until(&what, UI_TIMEOUT + Duration::from_secs(1), || async {
                self.text_of(css)
                    .await
                    .is_some_and(|t| t.contains(expected))
            }),
        )
        .await;
        if result.is_err() {
            panic!(
                "timed out waiting until {what}; it shows {:?} on {}\n{}",
                self.text_of(css).await,
                self.path().await,
                self.body_text().await
            );
        }
    }

    /// Waits until the page shown is `path`.
    pub async fn wait_for_path(&self, path: &str) {
        let what = format!("the browser is on {path}");
        let result = tokio::time::timeout(
            UI_TIMEOUT,
            wait_until(&what, UI_TIMEOUT + Duration::from_secs(1), || async {
                self.path().await == path
            }),
        )
        .await;
        if result.is_err() {
            panic!(
                "timed out waiting until {what}; it is on {}\n{}",
                self.path().await,
                self.body_text().await
            );
        }
    }

    /// Replaces the value of the input `#id` with `value`.
    pub async fn fill(&self, id: &str, value: &str) {
        let input = self.id(id).await;
        input.clear().await.expect("clear input");
        if !value.is_empty() {
            input.send_keys(value).await.expect("type into input");
        }
    }

    /// Fills the field named `name` inside form `#form` (a select by value).
    pub async fn fill_named(&self, form: &str, name: &str, value: &str) {
        let css = format!("#{form} [name=\"{name}\"]");
        let field = match self.client.find(Locator::Css(&css)).await {
            Ok(f) => f,
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        };
        if field.tag_name().await.expect("tag name") == "select" {
            field
                .select_by_value(value)
                .await
                .unwrap_or_else(|e| panic!("{css}: no option {value:?}: {e}"));
        } else {
            field.clear().await.expect("clear input");
            if !value.is_empty() {
                field.send_keys(value).await.expect("type into input");
            }
        }
    }

    /// Clicks `#id`.
    pub async fn click(&self, id: &str) {
        self.id(id)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click #{id}: {e}"));
    }

    /// Clicks the submit button `#id`, answering OK to its form's
    /// confirmation (`data-confirm`) when it has one; returns the question.
    pub async fn submit_with(&self, id: &str) -> Option<String> {
        let asks = self
            .js(&format!(
                "return document.getElementById('{id}').closest('form')?.hasAttribute('data-confirm') ?? false;"
            ))
            .await;
        if asks == json!(true) {
            Some(self.click_and_confirm(id).await)
        } else {
            self.click(id).await;
            None
        }
    }

    /// Clicks `#id`, which asks for a confirmation (`data-confirm`), and
    /// answers OK once the dialog shows; returns the dialog's text.
    pub async fn click_and_confirm(&self, id: &str) -> String {
        self.click(id).await;
        let text = std::sync::Mutex::new(String::new());
        wait_until(
            &format!("#{id} asks for a confirmation"),
            UI_TIMEOUT,
            || async {
                match self.client.get_alert_text().await {
                    Ok(t) => {
                        *text.lock().unwrap() = t;
                        true
                    }
                    Err(_) => false,
                }
            },
        )
        .await;
        self.client.accept_alert().await.expect("accept the dialog");
        text.into_inner().unwrap()
    }

    /// Forgets every cookie: the next page is seen signed out.
    pub async fn sign_out_locally(&self) {
        self.goto("/login").await;
        self.client
            .delete_all_cookies()
            .await
            .expect("delete cookies");
    }

    /// Signs in with `token` through the login form; lands on /projects.
    pub async fn sign_in(&self, token: &str) {
        self.sign_out_locally().await;
        self.goto("/login").await;
        self.fill("token", token).await;
        self.click("sign-in").await;
        self.wait_for_path("/projects").await;
    }

    /// Sends a DevTools Protocol command to the page.
    pub async fn cdp(&self, cmd: &'static str, params: Value) -> Value {
        self.client
            .issue_cmd(Cdp { cmd, params })
            .await
            .unwrap_or_else(|e| panic!("CDP {cmd}: {e}"))
    }

    /// Makes the page see `prefers-color-scheme: scheme` ("light" or "dark").
    pub async fn color_scheme(&self, scheme: &str) {
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        )
        .await;
    }

    /// A PNG of the whole page (beyond the viewport) to
    /// `target/ui-screenshots/<file>.png`; returns its path.
    pub async fn screenshot_png(&self, file: &str) -> PathBuf {
        let shot = self
            .cdp(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let data = shot["data"]
            .as_str()
            .unwrap_or_else(|| panic!("no screenshot data: {shot}"));
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let path = screenshot_dir().join(format!("{file}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// `<name>-light.png` and `<name>-dark.png` of the page shown now.
    pub async fn screenshots(&self, name: &str) -> [PathBuf; 2] {
        self.color_scheme("light").await;
        let light = self.screenshot_png(&format!("{name}-light")).await;
        self.color_scheme("dark").await;
        let dark = self.screenshot_png(&format!("{name}-dark")).await;
        self.color_scheme("light").await;
        [light, dark]
    }

    /// `<name>-390px.png`: the page as a 390-px-wide phone shows it.
    pub async fn phone_screenshot(&self, name: &str) -> PathBuf {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": true}),
        )
        .await;
        let path = self.screenshot_png(&format!("{name}-390px")).await;
        let width = self
            .js("return document.documentElement.scrollWidth;")
            .await;
        self.cdp("Emulation.clearDeviceMetricsOverride", json!({}))
            .await;
        assert!(
            width.as_u64().is_some_and(|w| w <= 390),
            "{name} scrolls sideways at 390 px: its content is {width} px wide"
        );
        path
    }
}
