//! Starts the real `autodeploy serve` on a loopback port with a data dir of
//! its own, and talks to it over HTTP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub struct Daemon {
    /// In a process group of its own: dropping it also ends the git and
    /// lookup processes the daemon started.
    pub child: super::reap::Proc,
    pub url: String,
    pub data_dir: PathBuf,
    pub stderr_log: PathBuf,
    http: reqwest::Client,
}

/// The `autodeploy` executable the tests start: this build's, or the one
/// `AUTODEPLOY_BIN` names (the benchmarks point it at a release build while
/// the test itself stays a debug build).
pub fn daemon_bin() -> PathBuf {
    std::env::var_os("AUTODEPLOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_autodeploy")))
}

/// A fresh, empty directory under this binary's temporary root, which is
/// removed when the binary exits (see `reap`).
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = super::reap::root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// With `AUTODEPLOY_TEST_DATABASE=postgres`, the daemon of `data_dir` gets
/// a PostgreSQL database of its own (the same one when it restarts);
/// otherwise it keeps its SQLite file in the data dir.
fn database_env(data_dir: &Path) -> Option<(&'static str, String)> {
    super::db::postgres().then(|| {
        let name = data_dir.to_string_lossy().replace(['/', '.'], "_");
        ("DATABASE_URL", super::db::database_url(&name))
    })
}

impl Daemon {
    pub fn start(data_dir: &Path) -> Daemon {
        Self::start_with(data_dir, &[], &[])
    }

    /// `args` go after `serve` (e.g. `--policy FILE`); `env` is added.
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::try_start_with(data_dir, args, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `start_with`, but a daemon that exits before listening is an
    /// `Err` with its log, not a panic.
    pub fn try_start_with(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon, String> {
        std::fs::create_dir_all(data_dir).unwrap();
        let stderr_log = data_dir.join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = super::reap::spawn(
            Command::new(daemon_bin())
                .arg("serve")
                .args(args)
                .env("AUTODEPLOY_LISTEN", "127.0.0.1:0")
                .env("AUTODEPLOY_DATA_DIR", data_dir)
                .env("AUTODEPLOY_ADMIN_TOKEN", ADMIN)
                .env("RUST_LOG", "debug")
                .env_remove("DATABASE_URL")
                .env_remove("AUTODEPLOY_POLICY")
                .env_remove("AUTODEPLOY_SECRET_KEY")
                .envs(database_env(data_dir))
                .envs(env.iter().copied())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&stderr_log).unwrap()),
        )
        .expect("start autodeploy serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("autodeploy listening on ") {
                        break addr.to_string();
                    }
                }
                _ => {
                    let _ = child.wait();
                    return Err(format!(
                        "daemon exited before listening: {}",
                        std::fs::read_to_string(&stderr_log).unwrap_or_default()
                    ));
                }
            }
        };
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Daemon {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            stderr_log,
            http: reqwest::Client::builder()
                // A bound on a hung daemon, not on its speed: a policy
                // upload compiles the component, which takes long on a
                // loaded machine in a debug build.
                .timeout(Duration::from_secs(120))
                // Below the daemon's keep-alive idle time: a request never
                // reuses a connection the daemon is just closing.
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("daemon answers");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            },
        )
    }

    /// Adds a deploy node named `name`; its token.
    pub async fn add_node(&self, name: &str) -> String {
        let node = self
            .ok(
                Method::POST,
                "/api/nodes",
                Some(serde_json::json!({ "name": name })),
            )
            .await;
        node["token"].as_str().expect("a node token").to_string()
    }

    /// `POST /api/agent/claim` as the node holding `token`.
    pub async fn agent_claim(&self, token: &str) -> (StatusCode, Value) {
        self.call(Method::POST, "/api/agent/claim", Some(token), None)
            .await
    }

    /// The node holding `token` reports `body` on deployment `id`.
    pub async fn agent_report(&self, token: &str, id: i64, body: Value) -> (StatusCode, Value) {
        let path = format!("/api/agent/deployments/{id}/report");
        self.call(Method::POST, &path, Some(token), Some(body))
            .await
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("daemon answers");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, path, Some(ADMIN), body).await
    }

    /// Admin call that must succeed; returns the body.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.admin(method.clone(), path, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    /// An external compose project (its repository a bare one under `dir`)
    /// whose services `s0`, `s1`, … run `images`, auto-deploy on; its id.
    pub async fn watch_images(&self, dir: &Path, name: &str, images: &[String]) -> i64 {
        let services: String = images
            .iter()
            .enumerate()
            .map(|(i, image)| format!("  s{i}:\n    image: {image}\n"))
            .collect();
        let url = super::git::bare_compose_repo(dir, name, &format!("services:\n{services}"));
        self.create_project(serde_json::json!({
            "name": name, "project_type": "compose", "git_source": "external", "git_url": url,
            "expose_service": "s0", "expose_port": 80, "auto_deploy_enabled": true,
        }))
        .await
    }

    /// Creates a project; returns its id.
    pub async fn create_project(&self, body: Value) -> i64 {
        self.ok(Method::POST, "/api/projects", Some(body)).await["id"]
            .as_i64()
            .expect("an id")
    }

    /// A project's deployments, newest first.
    /// A hosted compose project "shop" exposing `web` on port 80: its id
    /// and push token.
    pub async fn shop(&self) -> (i64, String) {
        let p = self
            .ok(
                Method::POST,
                "/api/projects",
                Some(serde_json::json!({"name": "shop", "project_type": "compose", "expose_service": "web", "expose_port": 80})),
            )
            .await;
        let id = p["id"].as_i64().expect("a project id");
        let token = p["push_token"].as_str().expect("a push token");
        (id, token.to_string())
    }

    pub async fn deployments(&self, project: i64) -> Vec<Value> {
        let list = self
            .ok(
                Method::GET,
                &format!("/api/projects/{project}/deployments"),
                None,
            )
            .await;
        list.as_array().expect("a list").clone()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, and wait for a clean exit; what it left running ends with
    /// its process group.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.child.wait().unwrap()
    }

    /// SIGKILL the daemon alone, as a crash would; what it left running
    /// ends with its process group when this is dropped, here.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

/// The command line against a daemon, as its admin.
impl Daemon {
    /// `autodeploy ARGS` against this daemon with the admin token, stdout
    /// and stderr piped: to run, spawn or give a stdin.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(daemon_bin());
        c.args(args)
            .env("AUTODEPLOY_URL", &self.url)
            .env("AUTODEPLOY_ADMIN_TOKEN", ADMIN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs `autodeploy ARGS` with `stdin` and asserts it succeeds; its
    /// stdout.
    pub fn cli_ok(&self, args: &[&str], stdin: &str) -> String {
        let out = super::output_with_stdin(&mut self.cli(args), stdin);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}
