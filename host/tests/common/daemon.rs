//! Starts the real `autodeploy serve` on a loopback port with a data dir of
//! its own, and talks to it over HTTP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub struct Daemon {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub stderr_log: PathBuf,
    http: reqwest::Client,
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("autodeploy-{name}-{}", std::process::id()));
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

    /// `args` go before `serve` (e.g. `--policy FILE`); `env` is added.
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
            .args(args)
            .arg("serve")
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
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
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
                .timeout(Duration::from_secs(30))
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

    /// Creates a project; returns its id.
    pub async fn create_project(&self, body: Value) -> i64 {
        self.ok(Method::POST, "/api/projects", Some(body)).await["id"]
            .as_i64()
            .expect("an id")
    }

    /// A project's deployments, newest first.
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

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
