//! The command-line client: `autodeploy project|settings|node ...` and
//! `autodeploy policy load|rollback` talk to a running daemon's API, so a
//! person never needs curl. Answers are printed as JSON.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The daemon's address.
    #[arg(
        long,
        global = true,
        env = "AUTODEPLOY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// The admin token (printed by the daemon's first start).
    #[arg(
        long,
        global = true,
        env = "AUTODEPLOY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

impl ClientArgs {
    /// For commands nested under `policy`, which take the daemon's address
    /// and token from the environment only.
    pub fn from_env() -> ClientArgs {
        ClientArgs {
            url: std::env::var("AUTODEPLOY_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into()),
            token: std::env::var("AUTODEPLOY_ADMIN_TOKEN").ok(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project; prints it (with its push token, once, if hosted).
    Create {
        #[arg(long)]
        name: String,
        /// deployment, compose, image, tunnel or domain_only
        #[arg(long = "type")]
        project_type: String,
        /// hosted (served by autodeploy) or external (polled)
        #[arg(long, default_value = "hosted")]
        source: String,
        #[arg(long)]
        git_url: Option<String>,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long)]
        compose_file: Option<String>,
        #[arg(long)]
        expose_service: Option<String>,
        #[arg(long)]
        expose_port: Option<u16>,
        #[arg(long)]
        auto_deploy: bool,
        /// A label KEY=VALUE the policy can read (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    List,
    Show {
        id: i64,
    },
    /// Change fields: KEY=VALUE, VALUE as JSON when it parses (true, 8080, null), else a string.
    Set {
        id: i64,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Queue a manual deployment.
    Deploy {
        id: i64,
    },
    /// The project's newest deployments (a page of the API's default size), newest first.
    Deployments {
        id: i64,
    },
    Delete {
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    Get,
    /// KEY=VALUE pairs, e.g. auto_deploy_master_enabled=false.
    Set {
        #[arg(required = true)]
        changes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Add a deploy node; prints its token once.
    Add {
        name: String,
        /// A label KEY=VALUE, matched against projects' node_selector (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    List,
    /// Delete a node; --force unpins the compose projects pinned to it.
    Delete {
        id: i64,
        #[arg(long)]
        force: bool,
    },
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Client> {
        let token = args
            .token
            .clone()
            .context("no admin token: set AUTODEPLOY_ADMIN_TOKEN or pass --token")?;
        Ok(Client {
            http: reqwest::Client::new(),
            base: args.url.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        answer(req).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Every page of a paged list (see the API's paging), as one array.
    async fn get_all(&self, path: &str) -> Result<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}{path}?limit=1000", self.base);
            if let Some(c) = &cursor {
                url = format!("{url}&cursor={c}");
            }
            let resp = self
                .http
                .get(url)
                .bearer_auth(&self.token)
                .send()
                .await
                .context("reach the autodeploy daemon")?;
            cursor = resp
                .headers()
                .get("x-next-cursor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match body(resp).await? {
                Value::Array(page) => items.extend(page),
                other => bail!("expected a list, got {other}"),
            }
            if cursor.is_none() {
                return Ok(Value::Array(items));
            }
        }
    }
}

async fn answer(req: reqwest::RequestBuilder) -> Result<Value> {
    body(req.send().await.context("reach the autodeploy daemon")?).await
}

/// The answer's JSON, or its error as an `Err`.
async fn body(resp: reqwest::Response) -> Result<Value> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if !status.is_success() {
        let msg = body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        bail!("{status}: {msg}");
    }
    Ok(body)
}

/// `key=value` pairs into a JSON object; values are JSON when they parse.
fn changes(pairs: &[String]) -> Result<Value> {
    let mut map = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?} is not KEY=VALUE"))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(Value::Object(map))
}

/// `--label KEY=VALUE` flags into a JSON map; values stay strings.
fn label_map(pairs: &[String]) -> Result<Value> {
    let mut map = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("label {pair:?} is not KEY=VALUE"))?;
        map.insert(k.to_string(), Value::from(v));
    }
    Ok(Value::Object(map))
}

fn print(v: &Value) {
    if !v.is_null() {
        println!("{}", serde_json::to_string_pretty(v).expect("JSON prints"));
    }
}

pub async fn project(args: &ClientArgs, cmd: &ProjectCommand) -> Result<()> {
    let c = Client::new(args)?;
    use reqwest::Method;
    let out = match cmd {
        ProjectCommand::Create {
            name,
            project_type,
            source,
            git_url,
            branch,
            compose_file,
            expose_service,
            expose_port,
            auto_deploy,
            labels,
        } => {
            let mut body = json!({
                "name": name, "project_type": project_type, "git_source": source,
                "auto_deploy_enabled": auto_deploy, "labels": label_map(labels)?,
            });
            for (k, v) in [
                ("git_url", git_url.clone().map(Value::from)),
                ("git_branch", branch.clone().map(Value::from)),
                ("compose_file_path", compose_file.clone().map(Value::from)),
                ("expose_service", expose_service.clone().map(Value::from)),
                ("expose_port", expose_port.map(Value::from)),
            ] {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            c.send(Method::POST, "/api/projects", Some(body)).await?
        }
        ProjectCommand::List => c.get_all("/api/projects").await?,
        ProjectCommand::Show { id } => c.get(&format!("/api/projects/{id}")).await?,
        ProjectCommand::Set { id, changes: pairs } => {
            c.send(
                Method::PATCH,
                &format!("/api/projects/{id}"),
                Some(changes(pairs)?),
            )
            .await?
        }
        ProjectCommand::Deploy { id } => {
            c.send(
                Method::POST,
                &format!("/api/projects/{id}/deployments"),
                None,
            )
            .await?
        }
        ProjectCommand::Deployments { id } => {
            c.get(&format!("/api/projects/{id}/deployments")).await?
        }
        ProjectCommand::Delete { id } => {
            c.send(Method::DELETE, &format!("/api/projects/{id}"), None)
                .await?
        }
    };
    print(&out);
    Ok(())
}

pub async fn settings(args: &ClientArgs, cmd: &SettingsCommand) -> Result<()> {
    let c = Client::new(args)?;
    let out = match cmd {
        SettingsCommand::Get => c.get("/api/settings").await?,
        SettingsCommand::Set { changes: pairs } => {
            c.send(reqwest::Method::PUT, "/api/settings", Some(changes(pairs)?))
                .await?
        }
    };
    print(&out);
    Ok(())
}

pub async fn node(args: &ClientArgs, cmd: &NodeCommand) -> Result<()> {
    let c = Client::new(args)?;
    let out = match cmd {
        NodeCommand::Add { name, labels } => {
            c.send(
                reqwest::Method::POST,
                "/api/nodes",
                Some(json!({ "name": name, "labels": label_map(labels)? })),
            )
            .await?
        }
        NodeCommand::List => c.get_all("/api/nodes").await?,
        NodeCommand::Delete { id, force } => {
            c.send(
                reqwest::Method::DELETE,
                &format!("/api/nodes/{id}?force={force}"),
                None,
            )
            .await?
        }
    };
    print(&out);
    Ok(())
}

/// `autodeploy policy load FILE [--config CFG]`: send a component (and its
/// config) to the daemon.
pub async fn load_policy(
    args: &ClientArgs,
    file: &PathBuf,
    config: Option<&std::path::Path>,
) -> Result<()> {
    let c = Client::new(args)?;
    let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
    let req = c
        .http
        .put(format!("{}/api/policy", c.base))
        .bearer_auth(&c.token);
    let req = match config {
        // One request, so the policy never runs a moment without its config.
        Some(path) => {
            use base64::Engine;
            let config = read_text(path)?;
            req.json(&json!({
                "wasm_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
                "config": config,
            }))
        }
        None => req.body(bytes),
    };
    print(&answer(req).await?);
    Ok(())
}

/// `autodeploy policy set-config FILE`: the running policy's new config.
pub async fn set_policy_config(args: &ClientArgs, file: &std::path::Path) -> Result<()> {
    let c = Client::new(args)?;
    let config = read_text(file)?;
    let req = c
        .http
        .put(format!("{}/api/policy/config", c.base))
        .bearer_auth(&c.token)
        .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(config);
    print(&answer(req).await?);
    Ok(())
}

/// A text file, or stdin for `-`.
fn read_text(path: &std::path::Path) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("read stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

pub async fn rollback_policy(args: &ClientArgs) -> Result<()> {
    let c = Client::new(args)?;
    print(
        &c.send(reqwest::Method::POST, "/api/policy/rollback", None)
            .await?,
    );
    Ok(())
}
