//! The command-line client: `autodeploy project|settings|node|events ...`
//! and `autodeploy policy load|rollback` talk to a running daemon's API, so
//! a person never needs curl. Lists print as tables; `-o json` and
//! `-o yaml` print the API's answer for scripts.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

pub mod output;

pub use output::Format;

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
    /// How to print answers: a table for people, or the API's JSON or YAML
    /// for scripts.
    #[arg(
        short = 'o',
        long,
        global = true,
        env = "AUTODEPLOY_OUTPUT",
        value_enum,
        default_value_t = Format::Table
    )]
    pub output: Format,
}

impl ClientArgs {
    /// For commands nested under `policy`, which take the daemon's address
    /// and token from the environment only.
    pub fn from_env() -> ClientArgs {
        ClientArgs {
            url: std::env::var("AUTODEPLOY_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into()),
            token: std::env::var("AUTODEPLOY_ADMIN_TOKEN").ok(),
            output: Format::Json,
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
    /// Every project, as a table (or -o json / -o yaml).
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
    /// Queue a redeploy of deployment N's recorded state (a manual rollback).
    Redeploy {
        id: i64,
        /// The succeeded deployment whose commit and image digests to deploy again.
        #[arg(long = "from")]
        from: i64,
    },
    /// Cancel a queued deployment, or ask the node to stop a running one.
    Cancel {
        id: i64,
        deployment: i64,
    },
    /// Print a deployment's log; --follow prints it as it grows until the deployment is over.
    Log {
        id: i64,
        deployment: i64,
        #[arg(long)]
        follow: bool,
    },
    /// The project's deployments, newest first: the newest page (the API's
    /// default size), the newest --limit N (following the pages), or --all;
    /// --watch then prints a line per new deployment or status change until
    /// Ctrl-C.
    Deployments {
        id: i64,
        #[command(flatten)]
        pages: Pages,
        /// Keep following: a line per new deployment or status change
        /// (with -o json, one JSON object per line), until Ctrl-C.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    Delete {
        id: i64,
    },
    /// Create or rotate an external project's git host webhook secret;
    /// prints it once (the old one stops working).
    WebhookSecret {
        id: i64,
    },
    /// Set the project's own credential for a registry host, used by the
    /// image watcher for its images there; the password is read from stdin
    /// (never an argument) and never shown again.
    RegistryLogin {
        id: i64,
        /// The registry host, as in image references (ghcr.io, host:5000).
        registry: String,
        #[arg(long, short)]
        username: String,
    },
    /// The project's registry credentials: host and username only.
    RegistryCredentials {
        id: i64,
    },
    /// Remove the project's credential for a registry host.
    RegistryLogout {
        id: i64,
        registry: String,
    },
}

/// How much of a list shown newest first to print.
#[derive(Debug, Args)]
pub struct Pages {
    /// At most this many, newest first, over as many pages as it takes.
    #[arg(long, conflicts_with = "all", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Every one, over every page.
    #[arg(long)]
    pub all: bool,
}

/// `autodeploy events`: the event log, newest first.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this project's events.
    #[arg(long)]
    pub project: Option<i64>,
    #[command(flatten)]
    pub pages: Pages,
}

#[derive(Debug, Subcommand)]
pub enum SettingsCommand {
    /// Every setting with its value, default and minimum.
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
    /// Every node: online or not, when it was last seen, its labels.
    List,
    /// Delete a node; --force unpins the compose projects pinned to it.
    Delete {
        id: i64,
        #[arg(long)]
        force: bool,
    },
}

/// Items asked for per page when following a whole list: the API's
/// largest page.
const PAGE: u64 = 1000;
/// The API's default page, which `project deployments` shows alone and
/// follows with `--limit` or `--all`.
const DEFAULT_PAGE: u64 = 100;

/// Why a call to the daemon failed, in a line a person reads, with a hint
/// for the mistakes a person makes (a daemon not started, a wrong token).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no admin token")]
    NoToken,
    #[error("cannot reach the autodeploy daemon at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The daemon answered with an error: its own message and the status.
    #[error("{message} (HTTP {status})")]
    Refused { status: u16, message: String },
    #[error("the daemon's answer is not what this client expects: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// What to try next, where there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::NoToken => Some(
                "set AUTODEPLOY_ADMIN_TOKEN (or pass --token) to the admin token the daemon printed at its first start".into(),
            ),
            ClientError::Unreachable { url, .. } => Some(format!(
                "is `autodeploy serve` running at {url}? Set AUTODEPLOY_URL (or --url) to its address"
            )),
            ClientError::Refused { status: 401, .. } => Some(
                "check AUTODEPLOY_ADMIN_TOKEN (or --token): the daemon does not know this token".into(),
            ),
            ClientError::Refused { status: 502..=504, .. } => Some(
                "a proxy answered for the daemon: is `autodeploy serve` running behind it?".into(),
            ),
            _ => None,
        }
    }

    /// A transport failure in a line: what failed, not the chain of
    /// wrappers around it.
    fn unreachable(url: &str, e: &reqwest::Error) -> ClientError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut innermost = e.to_string();
        while let Some(err) = source {
            innermost = err.to_string();
            source = err.source();
        }
        let reason = if e.is_timeout() {
            "timed out".to_string()
        } else {
            innermost
        };
        ClientError::Unreachable {
            url: shown_url(url),
            reason,
        }
    }
}

/// The daemon's address as an error shows it: without a password.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string().trim_end_matches('/').to_string()
        }
        _ => url.to_string(),
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// Some items of a list, and whether more follow them.
pub struct Listed {
    pub items: Vec<Value>,
    pub more: bool,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Client> {
        let token = args.token.clone().ok_or(ClientError::NoToken)?;
        Ok(Client {
            // Bounded: a daemon that accepts and never answers is an error,
            // not a hung shell.
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .timeout(std::time::Duration::from_secs(120))
                // Below the daemon's keep-alive idle time (its header
                // timeout): `--watch` never reuses a connection being closed.
                .pool_idle_timeout(std::time::Duration::from_secs(5))
                .build()
                .context("set up the HTTP client")?,
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
        answer(&self.base, req).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Every page of a paged list (see the API's paging), as one array.
    async fn get_all(&self, path: &str) -> Result<Vec<Value>> {
        Ok(self.get_pages(path, None, PAGE).await?.items)
    }

    /// The first `most` items of a paged list (all with `None`), in pages of
    /// up to `page`. `path` may carry a query of its own.
    async fn get_pages(&self, path: &str, most: Option<u64>, page: u64) -> Result<Listed> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let left = most.map_or(page, |m| (m - items.len() as u64).min(page));
            let mut url = format!("{}{path}{sep}limit={left}", self.base);
            if let Some(c) = &cursor {
                url = format!("{url}&cursor={c}");
            }
            let resp = self
                .http
                .get(url)
                .bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| ClientError::unreachable(&self.base, &e))?;
            cursor = resp
                .headers()
                .get("x-next-cursor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match body(resp).await? {
                Value::Array(page) => items.extend(page),
                _ => return Err(ClientError::Unexpected("a list was not a list".into()).into()),
            }
            let enough = most.is_some_and(|m| items.len() as u64 >= m);
            if cursor.is_none() || enough {
                return Ok(Listed {
                    items,
                    more: cursor.is_some(),
                });
            }
        }
    }

    /// A list shown newest first: its newest page, or as much as `pages`
    /// asks for.
    async fn newest(&self, path: &str, pages: &Pages) -> Result<Listed> {
        match (pages.limit, pages.all) {
            (Some(n), _) => self.get_pages(path, Some(n), DEFAULT_PAGE).await,
            (None, true) => self.get_pages(path, None, DEFAULT_PAGE).await,
            (None, false) => self.get_pages(path, Some(DEFAULT_PAGE), DEFAULT_PAGE).await,
        }
    }

    /// Node names by id, for tables that show a deployment's node.
    async fn node_names(&self) -> Result<HashMap<i64, String>> {
        Ok(names(&self.get_all("/api/nodes").await?))
    }
}

/// `id` to `name` of a list of projects or nodes.
fn names(list: &[Value]) -> HashMap<i64, String> {
    list.iter()
        .filter_map(|v| Some((v["id"].as_i64()?, v["name"].as_str()?.to_string())))
        .collect()
}

async fn answer(base: &str, req: reqwest::RequestBuilder) -> Result<Value> {
    let resp = req
        .send()
        .await
        .map_err(|e| ClientError::unreachable(base, &e))?;
    body(resp).await
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
        let message = match body.get("error").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            // Not the daemon's JSON (a proxy's page): its first line, short.
            None => match &body {
                Value::String(s) => s
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect(),
                Value::Null => status.canonical_reason().unwrap_or("failed").to_string(),
                other => other.to_string().chars().take(200).collect(),
            },
        };
        return Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        }
        .into());
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
    print_as(v, Format::Json)
}

/// An answer that has no table of its own: JSON, or YAML when asked.
fn print_as(v: &Value, format: Format) {
    if !v.is_null() {
        print!("{}", output::data(v, format));
    }
}

/// Tells on stderr (stdout is the table) that a list goes on.
fn more_hint(listed: &Listed, what: &str) {
    if listed.more {
        eprintln!(
            "showing the newest {} {what}; --limit N or --all for more",
            listed.items.len()
        );
    }
}

pub async fn project(args: &ClientArgs, cmd: &ProjectCommand) -> Result<()> {
    let c = Client::new(args)?;
    let format = args.output;
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
        ProjectCommand::List => {
            if format == Format::Table {
                // One line per project with its newest deployment, a page
                // per request: no request per project.
                let lines = c.get_all("/api/projects/summaries").await?;
                print!("{}", output::projects(&lines, output::now()));
            } else {
                print_as(&Value::Array(c.get_all("/api/projects").await?), format);
            }
            return Ok(());
        }
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
        ProjectCommand::Redeploy { id, from } => {
            c.send(
                Method::POST,
                &format!("/api/projects/{id}/deployments"),
                Some(json!({ "from_deployment": from })),
            )
            .await?
        }
        ProjectCommand::Cancel { id, deployment } => {
            c.send(
                Method::POST,
                &format!("/api/projects/{id}/deployments/{deployment}/cancel"),
                None,
            )
            .await?
        }
        ProjectCommand::Log {
            id,
            deployment,
            follow,
        } => {
            return print_log(&c, *id, *deployment, *follow).await;
        }
        ProjectCommand::Deployments { id, pages, watch } => {
            let path = format!("/api/projects/{id}/deployments");
            let listed = c.newest(&path, pages).await?;
            if *watch {
                return watch_deployments(&c, &path, listed, format).await;
            }
            if format != Format::Table {
                print_as(&Value::Array(listed.items), format);
                return Ok(());
            }
            let nodes = if listed.items.iter().any(|d| d["node_id"].is_i64()) {
                c.node_names().await?
            } else {
                HashMap::new()
            };
            print!(
                "{}",
                output::deployments(&listed.items, &nodes, output::now())
            );
            more_hint(&listed, "deployments");
            return Ok(());
        }
        ProjectCommand::Delete { id } => {
            c.send(Method::DELETE, &format!("/api/projects/{id}"), None)
                .await?
        }
        ProjectCommand::RegistryLogin {
            id,
            registry,
            username,
        } => {
            let mut password = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut password)
                .context("read the password from stdin")?;
            let password = password.trim_end_matches(['\n', '\r']);
            c.send(
                Method::PUT,
                &format!("/api/projects/{id}/registry-credentials"),
                Some(json!({ "registry": registry, "username": username, "password": password })),
            )
            .await?
        }
        ProjectCommand::RegistryCredentials { id } => {
            c.get(&format!("/api/projects/{id}/registry-credentials"))
                .await?
        }
        ProjectCommand::RegistryLogout { id, registry } => {
            c.send(
                Method::DELETE,
                &format!("/api/projects/{id}/registry-credentials/{registry}"),
                None,
            )
            .await?
        }
        ProjectCommand::WebhookSecret { id } => {
            c.send(
                Method::POST,
                &format!("/api/projects/{id}/webhook-secret"),
                None,
            )
            .await?
        }
    };
    print_as(&out, format);
    Ok(())
}

/// How often `deployments --watch` asks for the newest deployments, and
/// how many it asks for: those that change status are the newest ones.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const WATCH_PAGE: u64 = 20;

/// `project deployments ID --watch`: what `listed` shows, then a line per
/// new deployment or status change, until Ctrl-C. With `-o json` every
/// deployment (those listed first, oldest first) is one JSON line; with
/// `-o yaml` one YAML document.
async fn watch_deployments(c: &Client, path: &str, listed: Listed, format: Format) -> Result<()> {
    use std::io::Write;
    // Listening from the start: a Ctrl-C at any moment ends the watch
    // cleanly (exit 0), not by the default handler.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listen for Ctrl-C")?;
    let mut nodes = c.node_names().await?;
    let mut seen: HashMap<i64, String> = HashMap::new();
    let emit = |d: &Value, was: Option<&str>, nodes: &HashMap<i64, String>| {
        let text = match format {
            Format::Table => output::watch_line(d, was, nodes, output::now()) + "\n",
            Format::Json => serde_json::to_string(d).expect("JSON prints") + "\n",
            Format::Yaml => format!("---\n{}", output::data(d, Format::Yaml)),
        };
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the watch like Ctrl-C.
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    };
    for d in &listed.items {
        if let (Some(id), Some(st)) = (d["id"].as_i64(), d["status"].as_str()) {
            seen.insert(id, st.to_string());
        }
    }
    if format == Format::Table {
        print!(
            "{}",
            output::deployments(&listed.items, &nodes, output::now())
        );
    } else {
        for d in listed.items.iter().rev() {
            if !emit(d, None, &nodes) {
                return Ok(());
            }
        }
    }
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let page = c.get_pages(path, Some(WATCH_PAGE), WATCH_PAGE).await?.items;
        for d in page.iter().rev() {
            let (Some(id), Some(st)) = (d["id"].as_i64(), d["status"].as_str()) else {
                continue;
            };
            let was = seen.get(&id).cloned();
            if was.as_deref() == Some(st) {
                continue;
            }
            if let Some(node) = d["node_id"].as_i64()
                && !nodes.contains_key(&node)
            {
                nodes = c.node_names().await?;
            }
            if !emit(d, was.as_deref(), &nodes) {
                return Ok(());
            }
            seen.insert(id, st.to_string());
        }
    }
}

/// `autodeploy events`: the newest page, or as much as asked for.
pub async fn events(args: &ClientArgs, cmd: &EventsArgs) -> Result<()> {
    let c = Client::new(args)?;
    let path = match cmd.project {
        Some(id) => format!("/api/events?project_id={id}"),
        None => "/api/events".to_string(),
    };
    let listed = c.newest(&path, &cmd.pages).await?;
    if args.output != Format::Table {
        print_as(&Value::Array(listed.items), args.output);
        return Ok(());
    }
    let projects = if listed.items.iter().any(|e| e["project_id"].is_i64()) {
        names(&c.get_all("/api/projects").await?)
    } else {
        HashMap::new()
    };
    print!(
        "{}",
        output::events(&listed.items, &projects, output::now())
    );
    more_hint(&listed, "events");
    Ok(())
}

/// How often `log --follow` asks for more, and for how long at most.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const FOLLOW_FOR: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Prints a deployment's log as text; with `follow`, asks for what comes
/// next until the deployment is over (or `FOLLOW_FOR` passed).
async fn print_log(c: &Client, project: i64, deployment: i64, follow: bool) -> Result<()> {
    use std::io::Write;
    let started = std::time::Instant::now();
    let mut after = 0;
    loop {
        let page = c
            .get(&format!(
                "/api/projects/{project}/deployments/{deployment}/log?after={after}"
            ))
            .await?;
        let text = page["text"].as_str().unwrap_or_default();
        let next = page["next"]
            .as_i64()
            .context("the log answer has no next offset")?;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        drop(out);
        let done = page["done"].as_bool().unwrap_or(true);
        if next > after {
            // More may be there already: ask at once.
            after = next;
            continue;
        }
        if !follow || done {
            return Ok(());
        }
        if started.elapsed() > FOLLOW_FOR {
            bail!(
                "stopped following after {} hours",
                FOLLOW_FOR.as_secs() / 3600
            );
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

pub async fn settings(args: &ClientArgs, cmd: &SettingsCommand) -> Result<()> {
    let c = Client::new(args)?;
    let out = match cmd {
        SettingsCommand::Get => {
            let v = c.get("/api/settings").await?;
            match args.output {
                Format::Table => print!("{}", output::settings(&v)),
                format => print_as(&v, format),
            }
            return Ok(());
        }
        SettingsCommand::Set { changes: pairs } => {
            c.send(reqwest::Method::PUT, "/api/settings", Some(changes(pairs)?))
                .await?
        }
    };
    print_as(&out, args.output);
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
        NodeCommand::List => {
            let list = c.get_all("/api/nodes").await?;
            match args.output {
                Format::Table => print!("{}", output::nodes(&list, output::now())),
                format => print_as(&Value::Array(list), format),
            }
            return Ok(());
        }
        NodeCommand::Delete { id, force } => {
            c.send(
                reqwest::Method::DELETE,
                &format!("/api/nodes/{id}?force={force}"),
                None,
            )
            .await?
        }
    };
    print_as(&out, args.output);
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
    print(&answer(&c.base, req).await?);
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
    print(&answer(&c.base, req).await?);
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

#[derive(Debug, Subcommand)]
pub enum NotificationCommand {
    /// Add a target: KIND is webhook, slack, discord, matrix or email; its
    /// fields as KEY=VALUE (e.g. url=https://... or to='["ops@example.org"]').
    /// Prints a webhook secret the daemon made, once.
    Add {
        kind: String,
        name: String,
        /// Only this project's events (default: every project's).
        #[arg(long)]
        project: Option<i64>,
        /// An event to send (repeatable; default: all).
        #[arg(long = "event")]
        events: Vec<String>,
        fields: Vec<String>,
    },
    List,
    Show {
        id: i64,
    },
    Delete {
        id: i64,
    },
    /// The target's newest messages and how their delivery went.
    Deliveries {
        id: i64,
    },
}

pub async fn notification(args: &ClientArgs, cmd: &NotificationCommand) -> Result<()> {
    let c = Client::new(args)?;
    let out = match cmd {
        NotificationCommand::Add {
            kind,
            name,
            project,
            events,
            fields,
        } => {
            let mut body = changes(fields)?;
            body["kind"] = json!(kind);
            body["name"] = json!(name);
            if let Some(p) = project {
                body["project_id"] = json!(p);
            }
            if !events.is_empty() {
                body["events"] = json!(events);
            }
            c.send(reqwest::Method::POST, "/api/notifications", Some(body))
                .await?
        }
        NotificationCommand::List => c.get("/api/notifications").await?,
        NotificationCommand::Show { id } => c.get(&format!("/api/notifications/{id}")).await?,
        NotificationCommand::Delete { id } => {
            c.send(
                reqwest::Method::DELETE,
                &format!("/api/notifications/{id}"),
                None,
            )
            .await?
        }
        NotificationCommand::Deliveries { id } => {
            c.get(&format!("/api/notifications/{id}/deliveries"))
                .await?
        }
    };
    print(&out);
    Ok(())
}
