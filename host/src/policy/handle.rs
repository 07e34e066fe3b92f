//! The active policy, swappable at runtime. Decisions take an `Arc` of the
//! current policy, so a swap never interrupts one: the next decision simply
//! gets the new policy.

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
    previous: Option<Arc<Policy>>,
}

impl PolicyHandle {
    pub fn new(runtime: Arc<PolicyRuntime>, initial: Policy, dir: Option<PathBuf>) -> Self {
        PolicyHandle {
            runtime,
            dir,
            state: RwLock::new(Slots {
                current: Arc::new(initial),
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

    /// Validates `bytes` (loads, implements the contract, passes the
    /// vectors within the limits), keeps them by sha256 and switches to them.
    /// On any failure the running policy stays.
    pub fn install(&self, bytes: &[u8], source: &str) -> Result<PolicyInfo, SwapError> {
        let policy = self.runtime.load(bytes, source)?;
        let failures = selftest::self_test(&policy);
        if !failures.is_empty() {
            return Err(SwapError::SelfTest(failures));
        }
        if let Some(dir) = &self.dir {
            let io = |source| SwapError::Io {
                path: dir.display().to_string(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(io)?;
            write_atomic(&dir.join(format!("{}.wasm", policy.info().sha256)), bytes).map_err(io)?;
            write_atomic(&dir.join("active"), policy.info().sha256.as_bytes()).map_err(io)?;
        }
        let info = policy.info().clone();
        let mut slots = self.state.write().expect("policy lock");
        let old = std::mem::replace(&mut slots.current, Arc::new(policy));
        slots.previous = Some(old);
        self.memo.clear();
        tracing::info!(policy = %info.name, version = %info.version, sha256 = %info.sha256, "policy switched");
        Ok(info)
    }

    /// Switches back to the policy that was active before the last swap.
    pub fn rollback(&self) -> Result<PolicyInfo, SwapError> {
        let mut slots = self.state.write().expect("policy lock");
        let previous = slots.previous.take().ok_or(SwapError::NoPrevious)?;
        let replaced = std::mem::replace(&mut slots.current, previous);
        slots.previous = Some(replaced);
        self.memo.clear();
        let info = slots.current.info().clone();
        if let Some(dir) = &self.dir {
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
