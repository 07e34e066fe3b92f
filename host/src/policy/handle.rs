//! The active policy, swappable at runtime. Decisions take an `Arc` of the
//! current policy, so a swap never interrupts one: the next decision simply
//! gets the new policy.
//!
//! Each policy has the operator's config: an opaque string passed to every
//! call in the facts. It belongs to the policy file (kept beside it as
//! `<sha256>.config`), so a swap brings its own config and a restart keeps it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::{Policy, PolicyCacheStats, PolicyError, PolicyInfo, PolicyRuntime, memo, selftest};

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    #[error("policy failed its self-test ({} of the conformance vectors): {}", .0.len(), .0.iter().take(3).cloned().collect::<Vec<_>>().join("; "))]
    SelfTest(Vec<String>),
    #[error("no previous policy to roll back to")]
    NoPrevious,
    #[error("{0}")]
    Config(String),
    #[error("store policy {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub struct PolicyHandle {
    runtime: Arc<PolicyRuntime>,
    /// Accepted policies are kept here as `<sha256>.wasm`, and `active` names
    /// the one to start with.
    dir: Option<PathBuf>,
    state: RwLock<Slots>,
    /// parse-compose answers of the active policy; emptied on every switch.
    memo: Arc<memo::ParseMemo>,
}

struct Slots {
    current: Arc<Policy>,
    config: Arc<str>,
    previous: Option<(Arc<Policy>, Arc<str>)>,
}

/// The largest operator config a policy may be given.
pub const MAX_CONFIG_BYTES: usize = 64 << 10;

fn check_config(config: &str) -> Result<(), SwapError> {
    if config.len() > MAX_CONFIG_BYTES {
        return Err(SwapError::Config(format!(
            "the policy config is {} bytes; at most {MAX_CONFIG_BYTES} are allowed",
            config.len()
        )));
    }
    Ok(())
}

impl PolicyHandle {
    pub fn new(runtime: Arc<PolicyRuntime>, initial: Policy, dir: Option<PathBuf>) -> Self {
        PolicyHandle {
            runtime,
            dir,
            state: RwLock::new(Slots {
                current: Arc::new(initial),
                config: Arc::from(""),
                previous: None,
            }),
            memo: Default::default(),
        }
    }

    /// The memo of the active policy's parse-compose answers.
    pub fn memo(&self) -> Arc<memo::ParseMemo> {
        self.memo.clone()
    }

    pub fn cache_stats(&self) -> PolicyCacheStats {
        PolicyCacheStats {
            parse_compose: self.memo.stats(),
            compiled: self.runtime.compiled_stats(),
        }
    }

    /// Starts the initial policy with `config` (what [`Self::stored_config`]
    /// read for it).
    pub fn with_config(self, config: String) -> Self {
        self.state.write().expect("policy lock").config = Arc::from(config);
        self
    }

    /// The config kept in `dir` for the policy with this sha256; empty when
    /// none was given.
    pub fn stored_config(dir: &Path, sha256: &str) -> std::io::Result<String> {
        match std::fs::read_to_string(config_path(dir, sha256)) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        }
    }

    /// The policy stored as active in `dir` by an earlier run, if any.
    pub fn load_active(
        runtime: &Arc<PolicyRuntime>,
        dir: &Path,
    ) -> Option<Result<Policy, PolicyError>> {
        remove_stale_temp_files(dir);
        let sha = std::fs::read_to_string(dir.join("active")).ok()?;
        let path = dir.join(format!("{}.wasm", sha.trim()));
        Some(runtime.load_file(&path))
    }

    pub fn current(&self) -> Arc<Policy> {
        self.state.read().expect("policy lock").current.clone()
    }

    /// Loads `bytes` as a candidate with the active policy's runtime and
    /// limits, without switching to it or keeping it (dry runs, shadows).
    pub fn load_candidate(&self, bytes: &[u8], source: &str) -> Result<Policy, PolicyError> {
        self.runtime.load(bytes, source)
    }

    /// The active policy's config (empty when none was given).
    pub fn config(&self) -> Arc<str> {
        self.state.read().expect("policy lock").config.clone()
    }

    /// The active policy and its config, read together: a swap between two
    /// reads would pair one policy with the other's config.
    pub fn current_with_config(&self) -> (Arc<Policy>, Arc<str>) {
        let slots = self.state.read().expect("policy lock");
        (slots.current.clone(), slots.config.clone())
    }

    /// Validates `bytes` (loads, implements the contract, passes the
    /// vectors within the limits), keeps them by sha256 and switches to them,
    /// with the config stored for them before, if any.
    /// On any failure the running policy stays.
    pub fn install(&self, bytes: &[u8], source: &str) -> Result<PolicyInfo, SwapError> {
        self.install_with_config(bytes, source, None)
    }

    /// As [`Self::install`]; `Some(config)` replaces the policy's stored
    /// config (an empty one removes it).
    pub fn install_with_config(
        &self,
        bytes: &[u8],
        source: &str,
        config: Option<&str>,
    ) -> Result<PolicyInfo, SwapError> {
        if let Some(config) = config {
            check_config(config)?;
        }
        let policy = self.runtime.load(bytes, source)?;
        let failures = selftest::self_test(&policy);
        if !failures.is_empty() {
            return Err(SwapError::SelfTest(failures));
        }
        let sha = policy.info().sha256.clone();
        let config = match (&self.dir, config) {
            (_, Some(c)) => c.to_string(),
            (Some(dir), None) => {
                Self::stored_config(dir, &sha).map_err(|source| SwapError::Io {
                    path: config_path(dir, &sha).display().to_string(),
                    source,
                })?
            }
            (None, None) => String::new(),
        };
        if let Some(dir) = &self.dir {
            let io = |source| SwapError::Io {
                path: dir.display().to_string(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(io)?;
            write_atomic(&dir.join(format!("{sha}.wasm")), bytes).map_err(io)?;
            store_config(dir, &sha, &config).map_err(io)?;
            write_atomic(&dir.join("active"), sha.as_bytes()).map_err(io)?;
        }
        let info = policy.info().clone();
        let mut slots = self.state.write().expect("policy lock");
        let old = std::mem::replace(&mut slots.current, Arc::new(policy));
        let old_config = std::mem::replace(&mut slots.config, Arc::from(config));
        slots.previous = Some((old, old_config));
        self.memo.clear();
        tracing::info!(policy = %info.name, version = %info.version, sha256 = %info.sha256, "policy switched");
        Ok(info)
    }

    /// Gives the active policy a new config (empty: none), kept beside it
    /// so a restart or a later swap back to it finds it.
    pub fn set_config(&self, config: &str) -> Result<PolicyInfo, SwapError> {
        check_config(config)?;
        // Held while the file is written: a swap meanwhile would store this
        // config for the wrong policy.
        let mut slots = self.state.write().expect("policy lock");
        let info = slots.current.info().clone();
        if let Some(dir) = &self.dir {
            let io = |source| SwapError::Io {
                path: dir.display().to_string(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(io)?;
            store_config(dir, &info.sha256, config).map_err(io)?;
        }
        slots.config = Arc::from(config);
        tracing::info!(policy = %info.name, sha256 = %info.sha256, bytes = config.len(), "policy config changed");
        Ok(info)
    }

    /// Switches back to the policy that was active before the last swap,
    /// with the config it had.
    pub fn rollback(&self) -> Result<PolicyInfo, SwapError> {
        let mut slots = self.state.write().expect("policy lock");
        let (previous, previous_config) = slots.previous.take().ok_or(SwapError::NoPrevious)?;
        let replaced = std::mem::replace(&mut slots.current, previous);
        let replaced_config = std::mem::replace(&mut slots.config, previous_config);
        slots.previous = Some((replaced, replaced_config));
        self.memo.clear();
        let info = slots.current.info().clone();
        if let Some(dir) = &self.dir {
            // The same policy may have been given another config since.
            if let Err(e) = store_config(dir, &info.sha256, &slots.config) {
                tracing::warn!(error = %e, "cannot store the restored policy's config");
            }
            // The bundled policy has no file: starting from it needs no marker.
            let marker = dir.join("active");
            let _ = if dir.join(format!("{}.wasm", info.sha256)).exists() {
                write_atomic(&marker, info.sha256.as_bytes())
            } else {
                std::fs::remove_file(&marker)
            };
        }
        tracing::info!(policy = %info.name, sha256 = %info.sha256, "policy rolled back");
        Ok(info)
    }
}

fn config_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.config"))
}

/// Writes a policy's config beside it, or removes the file for an empty one.
fn store_config(dir: &Path, sha256: &str, config: &str) -> std::io::Result<()> {
    let path = config_path(dir, sha256);
    if !config.is_empty() {
        return write_atomic(&path, config.as_bytes());
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const TEMP_MARK: &str = ".tmp-";

/// Replaces `path` with `contents` so that a crash at any point leaves the
/// old file or the new one, never a part of one: the bytes go to a temporary
/// file beside it, are synced, and the temporary file is renamed over
/// `path`; then the directory is synced so the rename itself is durable.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}{TEMP_MARK}{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Temporary files a crash left behind in `dir` (they were never renamed, so
/// nothing reads them).
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(TEMP_MARK) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
