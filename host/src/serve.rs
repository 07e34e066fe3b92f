//! `autodeploy serve`: opens the store, loads the policy, starts the API and
//! the background loops, and stops them all cleanly on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::loops::{ImageWatcher, Loops, ReplicaId};
use crate::policy::cli::PolicyArgs;
use crate::policy::{PolicyHandle, PolicyRuntime, Seed, SwapError};
use crate::registry::{Registry, RegistryConfig};
use crate::secrets::{Secret, SecretKey, new_token, token_hash};
use crate::store::{SqlStore, Store};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the API and git endpoints listen on.
    #[arg(long, env = "AUTODEPLOY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where this replica's own files live: the SQLite database, the secret
    /// key, compiled policies.
    #[arg(long, env = "AUTODEPLOY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Where hosted repositories live (default DATA_DIR/repos). Replicas
    /// share one, on a filesystem with working `flock`.
    #[arg(long, env = "AUTODEPLOY_REPO_DIR")]
    pub repo_dir: Option<PathBuf>,
    /// Another database than DATA_DIR/autodeploy.db (sqlite://PATH).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Cap on one remote git lookup, in seconds.
    #[arg(long, env = "AUTODEPLOY_GIT_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub git_timeout_seconds: u64,
    /// A second address serving `/metrics` without a token (for a scraper
    /// on a private network); on the main listener it takes the admin token.
    #[arg(long, env = "AUTODEPLOY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub git_transport: GitTransportArgs,
}

/// Limits of the HTTP listener and of pushes.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Seconds a client has to send a request's head, from connecting or
    /// from the end of the previous answer (so also the keep-alive idle time).
    #[arg(long, env = "AUTODEPLOY_HEADER_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_seconds: u64,
    /// Seconds a client may stall while sending a body or reading an answer.
    #[arg(long, env = "AUTODEPLOY_IDLE_TIMEOUT_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout_seconds: u64,
    /// Connections served at once; one more is answered 503.
    #[arg(long, env = "AUTODEPLOY_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Largest push (the receive-pack request body), in bytes.
    #[arg(long, env = "AUTODEPLOY_MAX_PUSH_BYTES", default_value_t = 100 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_push_bytes: u64,
}

impl Default for HttpArgs {
    fn default() -> Self {
        let limits = crate::http_server::Limits::default();
        HttpArgs {
            header_timeout_seconds: limits.header_timeout.as_secs(),
            idle_timeout_seconds: limits.idle_timeout.as_secs(),
            max_connections: limits.max_connections as u64,
            max_push_bytes: 100 << 20,
        }
    }
}

/// How remote git repositories are reached.
#[derive(Debug, Default, Args)]
pub struct GitTransportArgs {
    /// A PEM file of CA certificates trusted for HTTPS git remotes, beside
    /// the system roots.
    #[arg(long, env = "AUTODEPLOY_GIT_CA")]
    pub git_ca: Option<PathBuf>,
    /// Comma-separated git hosts whose HTTPS certificate is not verified and
    /// that may receive credentials over plain http:// (loopback always may).
    #[arg(long, env = "AUTODEPLOY_INSECURE_GIT_HOSTS", value_delimiter = ',')]
    pub insecure_git_hosts: Vec<String>,
}

impl GitTransportArgs {
    /// Checks the settings and makes them this process's transport policy.
    pub fn apply(&self) -> Result<()> {
        let config = crate::git::transport::TransportConfig::new(
            self.git_ca.clone(),
            self.insecure_git_hosts.iter().map(String::as_str),
        )?;
        let insecure = config.insecure_hosts.clone();
        crate::git::transport::configure(config)?;
        if !insecure.is_empty() {
            tracing::warn!(
                hosts = %insecure.join(","),
                "AUTODEPLOY_INSECURE_GIT_HOSTS: these git hosts may receive credentials over plain http://"
            );
        }
        if let Some(ca) = &self.git_ca {
            tracing::info!(ca = %ca.display(), "HTTPS git remotes also trust AUTODEPLOY_GIT_CA");
        }
        Ok(())
    }
}

/// Registry access for the image watcher.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// The registry deploys push to; probed at start.
    #[arg(long, env = "REGISTRY_ADDR")]
    pub registry_addr: Option<String>,
    #[arg(long, env = "REGISTRY_USER")]
    pub registry_user: Option<String>,
    #[arg(long, env = "REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<String>,
    /// A docker config.json: its `credHelpers`, `credsStore` and `auths`
    /// give credentials for other registries.
    #[arg(long, env = "AUTODEPLOY_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
    /// Comma-separated hosts reached over plain HTTP (loopback ones always may be).
    #[arg(long, env = "AUTODEPLOY_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// A PEM CA file to trust for registries.
    #[arg(long, env = "AUTODEPLOY_REGISTRY_CA")]
    pub registry_ca: Option<PathBuf>,
    /// Cap on one registry request, in seconds.
    #[arg(long, env = "AUTODEPLOY_REGISTRY_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub registry_timeout_seconds: u64,
    /// Cap on one whole image lookup (all its requests), in seconds.
    #[arg(long, env = "AUTODEPLOY_IMAGE_LOOKUP_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub image_lookup_timeout_seconds: u64,
    /// Cap on one docker credential helper run, in seconds.
    #[arg(long, env = "AUTODEPLOY_REGISTRY_HELPER_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=120))]
    pub registry_helper_timeout_seconds: u64,
    /// How long a credential helper's answer is reused, in seconds.
    #[arg(long, env = "AUTODEPLOY_REGISTRY_HELPER_TTL_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub registry_helper_ttl_seconds: u64,
    /// The secret registry notifications (`POST /hooks/registry`) must
    /// carry; unset, that endpoint answers 404.
    #[arg(long, env = "AUTODEPLOY_REGISTRY_HOOK_SECRET", hide_env_values = true)]
    pub registry_hook_secret: Option<String>,
    /// A header that may carry the bare secret, besides `Authorization:
    /// Bearer`.
    #[arg(long, env = "AUTODEPLOY_REGISTRY_HOOK_HEADER")]
    pub registry_hook_header: Option<String>,
}

impl Default for RegistryArgs {
    /// No `REGISTRY_ADDR`, public registries only, 30 s per request.
    fn default() -> Self {
        RegistryArgs {
            registry_addr: None,
            registry_user: None,
            registry_password: None,
            docker_config: None,
            insecure_registries: vec![],
            registry_ca: None,
            registry_timeout_seconds: 30,
            image_lookup_timeout_seconds: 30,
            registry_helper_timeout_seconds: 10,
            registry_helper_ttl_seconds: 300,
            registry_hook_secret: None,
            registry_hook_header: None,
        }
    }
}

impl RegistryArgs {
    pub fn config(&self) -> RegistryConfig {
        RegistryConfig {
            addr: self.registry_addr.clone(),
            user: self.registry_user.clone(),
            password: self.registry_password.clone().map(Secret::new),
            docker_config: self.docker_config.clone(),
            insecure: self
                .insecure_registries
                .iter()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect(),
            ca_file: self.registry_ca.clone(),
            timeout: Duration::from_secs(self.registry_timeout_seconds),
            lookup_timeout: Duration::from_secs(self.image_lookup_timeout_seconds),
            helper_timeout: Duration::from_secs(self.registry_helper_timeout_seconds),
            helper_ttl: Duration::from_secs(self.registry_helper_ttl_seconds),
        }
    }

    /// How registry notifications are authenticated; an empty secret is
    /// none.
    pub fn hook_auth(&self) -> crate::service::registry_hooks::HookAuth {
        crate::service::registry_hooks::HookAuth {
            secret: self
                .registry_hook_secret
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Secret::new(s.to_string())),
            header: self
                .registry_hook_header
                .as_deref()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty()),
        }
    }
}

/// Opens everything the daemon needs: data dir, store, secret key, admin
/// token, policy. Used by `run` and by the benchmarks.
pub async fn open(args: &ServeArgs, policy_args: &PolicyArgs) -> Result<Arc<App>> {
    args.git_transport.apply()?;
    create_private_dir(&args.data_dir)?;
    let url = database_url(args);
    let repo_dir = args
        .repo_dir
        .clone()
        .unwrap_or_else(|| crate::git::default_repo_dir(&args.data_dir));
    create_repo_dir(&repo_dir)?;
    let db_file = sqlite_file(&url);
    if let Some(db) = &db_file {
        private_database(db)?;
    }
    let store = SqlStore::connect(&url).await.context("open the database")?;
    if let Some(db) = &db_file {
        // -wal and -shm exist now; one left from an older run keeps its mode.
        private_database(db)?;
    }
    let key = SecretKey::load(
        std::env::var("AUTODEPLOY_SECRET_KEY").ok().as_deref(),
        &args.data_dir,
    )?;
    let admin_env_hash = admin_token(&store).await?;

    let store: Arc<dyn Store> = Arc::new(store);
    let policy_dir = args.data_dir.join("policies");
    let runtime = PolicyRuntime::new(policy_args.config())?;
    runtime.use_cache_dir(policy_dir.join("compiled"));
    // Replicas share one secret key, and through it authenticated native
    // code: only the replica that accepts a policy compiles it.
    runtime.share_code_with(key.code_key());
    let seed = policy_seed(policy_args, &policy_dir)?;
    let seed_source = seed.source.clone();
    let (policy, switched) = PolicyHandle::open(runtime.clone(), store.clone(), seed)
        .await
        .map_err(|e| match e {
            SwapError::SelfTest(failures) => anyhow::anyhow!(
                "policy {seed_source} fails its self-test: {}",
                failures.join("; ")
            ),
            other => anyhow::Error::new(other).context("start the policy"),
        })?;
    let initial = policy.current();
    // Remembered per policy, vectors, limits and engine: the budget makes the
    // outcome the same every time, so a pass need not be run at every start.
    // A policy another replica stored must pass here too, under this
    // replica's limits.
    let failures = runtime.self_test_remembered(
        &initial,
        &crate::policy::selftest::vectors_digest(&initial),
        || crate::policy::selftest::self_test(&initial),
    );
    anyhow::ensure!(
        failures.is_empty(),
        "policy {} fails its self-test: {}",
        initial.info().source,
        failures.join("; ")
    );
    let info = initial.info().clone();
    tracing::info!(policy = %info.name, version = %info.version, sha256 = %info.sha256, source = %info.source, "policy loaded");
    if let Some(new) = switched {
        store
            .log_event(
                None,
                crate::store::EventKind::PolicySwitched,
                &format!(
                    "{} {} ({}) from {} at start",
                    new.name, new.version, new.sha256, new.source
                ),
            )
            .await?;
    }
    if let Some(clock) = crate::policy::facts::test_only_clock() {
        tracing::warn!(
            file = %clock.display(),
            "{} is set: the policy's clock is read from this file, not the system clock; \
             this is for tests only",
            crate::policy::facts::TEST_ONLY_CLOCK_FILE
        );
    }

    let git_timeout = Duration::from_secs(args.git_timeout_seconds);
    // The cap itself is a tokio timeout around each lookup (one clear error);
    // libgit2's own, a little longer, frees the thread a hung lookup holds.
    // On a thread of its own: the first libgit2 call initializes OpenSSL and
    // loads the system's CA certificates, which start-up need not wait for.
    // Network lookups run in child processes that set their own timeouts.
    let set_timeout = move || crate::git::set_network_timeout(git_timeout + Duration::from_secs(5));
    if std::thread::Builder::new()
        .name("git-init".into())
        .spawn(set_timeout)
        .is_err()
    {
        set_timeout();
    }
    crate::git::http::set_limits(
        args.http.max_push_bytes,
        Duration::from_secs(args.http.idle_timeout_seconds),
    );
    crate::api::set_body_idle_timeout(Duration::from_secs(args.http.idle_timeout_seconds));
    let replica = ReplicaId::new();
    tracing::info!(replica = %replica, "replica id");
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let registry = Registry::new(args.registry.config())
        .context("set up registry access")?
        .with_metrics(metrics.clone());
    let app = Arc::new(App {
        store,
        data_dir: args.data_dir.clone(),
        repo_dir,
        policy,
        key,
        admin_env_hash,
        loops: Loops {
            git_poll: Default::default(),
            image_watch: ImageWatcher::new(registry, args.registry.registry_addr.clone())
                .with_hook_auth(args.registry.hook_auth()),
            node_watch: Default::default(),
        },
        replica,
        git_timeout,
        decisions: Default::default(),
        settings_changed: tokio::sync::watch::channel(()).0,
        image_watch_min_seconds: test_only_image_watch_min()?,
        decision_log: Default::default(),
        shadow: Default::default(),
        metrics,
        notifier: Default::default(),
    });
    Ok(app)
}

/// `DATABASE_URL`, or the SQLite file in the data dir.
fn database_url(args: &ServeArgs) -> String {
    match &args.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", args.data_dir.join("autodeploy.db").display()),
    }
}

pub async fn run(args: &ServeArgs, policy_args: &PolicyArgs) -> Result<()> {
    let app = open(args, policy_args).await?;
    let cancel = CancellationToken::new();
    let mut loops = tokio::task::JoinSet::new();
    loops.spawn(crate::decisions::run_writer(app.clone(), cancel.clone()));
    loops.spawn(crate::decisions::run_retention(app.clone(), cancel.clone()));
    loops.spawn(crate::notifications::run(app.clone(), cancel.clone()));
    Loops::spawn(&app, &mut loops, &cancel);
    loops.spawn(crate::changes::follow(
        app.clone(),
        database_url(args),
        cancel.clone(),
    ));
    loops.spawn(handle_signals(
        app.clone(),
        policy_args.policy.clone(),
        cancel.clone(),
    ));

    let nofile = match crate::http_server::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            1024
        }
    };
    let limits = crate::http_server::Limits {
        header_timeout: Duration::from_secs(args.http.header_timeout_seconds),
        idle_timeout: Duration::from_secs(args.http.idle_timeout_seconds),
        max_connections: crate::http_server::fit_cap(
            usize::try_from(args.http.max_connections).unwrap_or(usize::MAX),
            nofile,
        ),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if let Some(metrics_addr) = args.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("listen on {metrics_addr} (AUTODEPLOY_METRICS_LISTEN)"))?;
        let bound = metrics.local_addr()?;
        println!("autodeploy metrics on http://{bound}/metrics");
        tracing::info!(addr = %bound, "metrics listening without a token");
        loops.spawn(crate::http_server::serve(
            metrics,
            crate::observe::metrics_router(app.clone()),
            limits,
            cancel.clone(),
        ));
    }
    println!("autodeploy listening on http://{addr}");
    tracing::info!(%addr, max_connections = limits.max_connections, open_files = nofile,
        header_timeout = ?limits.header_timeout, idle_timeout = ?limits.idle_timeout, "listening");
    crate::http_server::serve(
        listener,
        crate::web::daemon_router(app.clone(), cancel.clone()),
        limits,
        cancel.clone(),
    )
    .await;
    cancel.cancel();
    while loops.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}

/// Caps glibc's malloc at two arenas, unless `MALLOC_ARENA_MAX` says
/// otherwise. Each thread that allocates may otherwise get an arena of its
/// own, and a poll tick's lookups run on a dozen blocking threads: their
/// arenas keep what the tick freed, tens of MiB at 10,000 projects. Call it
/// before any thread starts.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: sets one allocator tunable; no other thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Hands the memory a tick freed back to the system: glibc keeps freed
/// blocks in its heaps for reuse, so a daemon idle between ticks would hold
/// its largest tick's memory.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: no arguments to get wrong; glibc locks its own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The policy this replica offers at start: `--policy`, else the one a data
/// dir from before the database held policies ran, else the bundled one.
fn policy_seed(policy_args: &PolicyArgs, policy_dir: &Path) -> Result<Seed> {
    if let Some(path) = &policy_args.policy {
        let bytes =
            std::fs::read(path).with_context(|| format!("read the policy {}", path.display()))?;
        return Ok(Seed {
            bytes,
            source: path.display().to_string(),
            config: None,
            explicit: true,
        });
    }
    let legacy = crate::policy::legacy_active(policy_dir)
        .with_context(|| format!("read the policy stored in {}", policy_dir.display()))?;
    Ok(match legacy {
        Some((bytes, source, config)) => Seed {
            bytes,
            source,
            config: Some(config),
            explicit: false,
        },
        None => Seed {
            bytes: crate::policy::BUNDLED_POLICY.to_vec(),
            source: "bundled".into(),
            config: None,
            explicit: false,
        },
    })
}

/// The test-only variable that lowers the image watch interval's minimum.
pub const TEST_ONLY_IMAGE_WATCH_MIN: &str = "AUTODEPLOY_TEST_ONLY_MIN_IMAGE_WATCH_INTERVAL_SECONDS";

/// The image watch interval's minimum: 60 s, unless the test-only variable
/// lowers it so tests can watch the loop tick on its own without waiting
/// minutes. It is loud about it: every tick of a short interval costs pull
/// budget at public registries.
fn test_only_image_watch_min() -> Result<u64> {
    let min = crate::store::IMAGE_WATCH_MIN_SECONDS;
    let Ok(value) = std::env::var(TEST_ONLY_IMAGE_WATCH_MIN) else {
        return Ok(min);
    };
    let lowered = value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=min).contains(n))
        .with_context(|| {
            format!("{TEST_ONLY_IMAGE_WATCH_MIN} must be a whole number of seconds from 1 to {min}")
        })?;
    crate::store::set_image_watch_min(lowered);
    tracing::warn!(
        minimum = lowered,
        "{TEST_ONLY_IMAGE_WATCH_MIN} is set: the image watch interval may go down to {lowered} s; \
         this is for tests only and spends registry pull limits fast"
    );
    Ok(lowered)
}

/// Uses `AUTODEPLOY_ADMIN_TOKEN` when set (returning its hash); otherwise
/// makes a token on the first start, prints it once and keeps its hash.
async fn admin_token(store: &SqlStore) -> Result<Option<String>> {
    if let Ok(token) = std::env::var("AUTODEPLOY_ADMIN_TOKEN") {
        anyhow::ensure!(
            token.trim().len() >= 16,
            "AUTODEPLOY_ADMIN_TOKEN must be at least 16 characters"
        );
        return Ok(Some(token_hash(token.trim())));
    }
    if store.admin_token_count().await? == 0 {
        let token: Secret = new_token("ada");
        store.add_admin_token(&token_hash(token.expose())).await?;
        println!("admin token (shown once, keep it): {}", token.expose());
    }
    Ok(None)
}

async fn handle_signals(app: Arc<App>, policy_file: Option<PathBuf>, cancel: CancellationToken) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload_policy(&app, policy_file.as_deref()).await,
        }
    }
    tracing::info!("shutting down");
    cancel.cancel();
}

/// SIGHUP: reload the `--policy` file; a policy that fails validation is
/// refused and the running one stays.
async fn reload_policy(app: &Arc<App>, file: Option<&Path>) {
    let Some(path) = file.map(Path::to_path_buf) else {
        tracing::warn!("SIGHUP: no --policy file to reload");
        return;
    };
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return tracing::error!(error = %format!("read {}: {e}", path.display()),
                "SIGHUP: policy refused, the running one stays");
        }
    };
    match app
        .policy
        .install_with_config(bytes, &path.display().to_string(), None)
        .await
    {
        Ok(info) => tracing::info!(sha256 = %info.sha256, "SIGHUP: policy reloaded"),
        Err(e) => tracing::error!(error = %e, "SIGHUP: policy refused, the running one stays"),
    }
}

/// Creates the data dir only its owner may enter (0700). One that exists
/// and lets others in (say 0755, made by hand or by an older version) is
/// tightened, with a log line; if that is not allowed, the daemon refuses to
/// start rather than keep its secrets there.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create data dir {}", dir.display()))?;
    }
    let meta =
        std::fs::metadata(dir).with_context(|| format!("read data dir {}", dir.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "data dir {} is not a directory",
        dir.display()
    );
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "data dir {} is open to other users (mode {mode:04o}) and could not be \
                     tightened; make it private (chmod 700) or choose another AUTODEPLOY_DATA_DIR",
                    dir.display()
                )
            },
        )?;
        tracing::warn!(
            dir = %dir.display(),
            was = %format!("{mode:04o}"),
            "data dir was open to other users; tightened to 0700"
        );
    }
    Ok(())
}

/// Creates the repo dir (0700) when missing. One that exists is left as it
/// is: replicas share it, and its owner may set it up for them.
fn create_repo_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "create the repo dir {} (AUTODEPLOY_REPO_DIR)",
                dir.display()
            )
        })?;
    anyhow::ensure!(
        dir.is_dir(),
        "the repo dir {} (AUTODEPLOY_REPO_DIR) is not a directory",
        dir.display()
    );
    Ok(())
}

/// The file behind a `sqlite:` URL, if it is one on disk.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

/// Makes the database private before SQLite opens it: a new file is created
/// 0600 (SQLite gives its -wal and -shm files the database's mode), and an
/// existing database, -wal or -shm file that others may read is tightened.
fn private_database(db: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| format!("create the database {}", db.display()));
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", db.display()));
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_file() && mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).with_context(
                || {
                    format!(
                        "{} is open to other users (mode {mode:04o}) and could not be tightened",
                        file.display()
                    )
                },
            )?;
            tracing::warn!(
                file = %file.display(),
                was = %format!("{mode:04o}"),
                "database file was open to other users; tightened to 0600"
            );
        }
    }
    Ok(())
}
