//! The active policy, swappable at runtime. Decisions take an `Arc` of the
//! current policy, so a swap never interrupts one: the next decision simply
//! gets the new policy.
//!
//! The database holds which policy is active, its bytes, the operator's
//! config for it and the one before it (for rollback), so every replica runs
//! the same sha256. A change is written there first, in one transaction, and
//! then followed here; other replicas follow it when told (see
//! `crate::changes`). The replica that accepts a policy stores its native
//! code beside it in the same transaction, authenticated under a key derived
//! from the secret key the replicas share: the others load that code (once
//! it checks out) instead of compiling the policy, so a swap reaches them in
//! milliseconds, not the seconds a compile takes.
//!
//! The config is an opaque string passed to every call in the facts. It
//! belongs to the policy: a swap brings the config last given to that policy.

use std::path::Path;
use std::sync::{Arc, RwLock};

use super::{
    CodeSource, Policy, PolicyCacheStats, PolicyError, PolicyInfo, PolicyRuntime, memo, selftest,
};
use crate::store::{ActivePolicy, NativeCode, NewPolicy, Store, StoreError};

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
    #[error("storing the policy: {0}")]
    Store(#[from] StoreError),
    #[error("the policy check stopped: {0}")]
    Task(String),
}

pub struct PolicyHandle {
    runtime: Arc<PolicyRuntime>,
    store: Arc<dyn Store>,
    state: RwLock<Slots>,
    /// parse-compose answers of the active policy; emptied on every switch.
    memo: Arc<memo::ParseMemo>,
    /// One change at a time in this process, so what runs here follows the
    /// database in the order it changed.
    changing: tokio::sync::Mutex<()>,
}

struct Slots {
    current: Arc<Policy>,
    config: Arc<str>,
    /// The policy switched away from last, kept compiled for a rollback.
    previous: Option<Arc<Policy>>,
}

/// The policy a replica offers when it starts.
pub struct Seed {
    pub bytes: Vec<u8>,
    pub source: String,
    /// Its config; `None` keeps the one stored for it.
    pub config: Option<String>,
    /// Given by the operator (`--policy`): it becomes the active policy even
    /// when the database names another. Otherwise it is stored only when
    /// the database has none yet.
    pub explicit: bool,
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

/// Loads `bytes` and runs the conformance vectors, off the async threads.
/// At start a pass may be `remembered` (as for the policy the database
/// names); a swap always runs them. Gives its native code to share too,
/// when the runtime shares code.
async fn validate(
    runtime: &Arc<PolicyRuntime>,
    bytes: Arc<[u8]>,
    source: String,
    remembered: bool,
) -> Result<(Policy, Option<NativeCode>), SwapError> {
    let runtime = runtime.clone();
    tokio::task::spawn_blocking(move || {
        let policy = runtime.load(&bytes, &source)?;
        let failures = if remembered {
            let vectors = selftest::vectors_digest(&policy);
            runtime.self_test_remembered(&policy, &vectors, || selftest::self_test(&policy))
        } else {
            selftest::self_test(&policy)
        };
        if !failures.is_empty() {
            return Err(SwapError::SelfTest(failures));
        }
        let native = runtime.shared_code(&policy);
        Ok((policy, native))
    })
    .await
    .map_err(|e| SwapError::Task(e.to_string()))?
}

impl PolicyHandle {
    /// Starts with the policy the database names as active, after storing
    /// `seed` there when it is explicit or the database has none yet. The
    /// seed must pass the self-test before it is stored.
    pub async fn open(
        runtime: Arc<PolicyRuntime>,
        store: Arc<dyn Store>,
        seed: Seed,
    ) -> Result<(PolicyHandle, Option<PolicyInfo>), SwapError> {
        if let Some(config) = &seed.config {
            check_config(config)?;
        }
        let stored = store.active_policy().await?;
        let sha = crate::secrets::hex(&<sha2::Sha256 as sha2::Digest>::digest(&seed.bytes));
        let wanted = seed.explicit && stored.as_ref().is_none_or(|a| a.sha256 != sha);
        let (active, seeded, switched) = match stored {
            Some(active) if !wanted => (active, None, None),
            _ => {
                let bytes: Arc<[u8]> = seed.bytes.into();
                let (policy, native) =
                    validate(&runtime, bytes.clone(), seed.source.clone(), true).await?;
                let new = NewPolicy {
                    sha256: sha,
                    wasm: bytes.to_vec(),
                    source: seed.source,
                    config: seed.config,
                    native,
                };
                let active = if wanted {
                    store.switch_policy(&new).await?
                } else {
                    store.seed_policy(&new).await?
                };
                // Another replica may have seeded first: its policy wins.
                let switched = wanted.then(|| policy.info().clone());
                (active, Some(policy), switched)
            }
        };
        let current = match seeded {
            Some(p) if p.info().sha256 == active.sha256 => p,
            _ => load_stored(&runtime, &*store, &active.sha256).await?,
        };
        let handle = PolicyHandle {
            runtime,
            store,
            state: RwLock::new(Slots {
                current: Arc::new(current),
                config: Arc::from(active.config),
                previous: None,
            }),
            memo: Default::default(),
            changing: Default::default(),
        };
        Ok((handle, switched))
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
    /// vectors within the limits), stores them by sha256 and makes them the
    /// active policy of every replica. `Some(config)` replaces the config
    /// stored for them (an empty one removes it); `None` keeps it. On any
    /// failure the running policy stays.
    pub async fn install_with_config(
        &self,
        bytes: Vec<u8>,
        source: &str,
        config: Option<String>,
    ) -> Result<PolicyInfo, SwapError> {
        if let Some(config) = &config {
            check_config(config)?;
        }
        let bytes: Arc<[u8]> = bytes.into();
        let (policy, native) =
            validate(&self.runtime, bytes.clone(), source.to_string(), false).await?;
        let _changing = self.changing.lock().await;
        // The code goes in the transaction that switches: a replica told of
        // the switch finds it.
        let active = self
            .store
            .switch_policy(&NewPolicy {
                sha256: policy.info().sha256.clone(),
                wasm: bytes.to_vec(),
                source: source.to_string(),
                config,
                native,
            })
            .await?;
        let info = policy.info().clone();
        self.switch(Arc::new(policy), active.config);
        tracing::info!(policy = %info.name, version = %info.version, sha256 = %info.sha256, "policy switched");
        Ok(info)
    }

    /// Gives the active policy a new config (empty: none), kept with it so a
    /// restart or a later swap back to it finds it.
    pub async fn set_config(&self, config: &str) -> Result<PolicyInfo, SwapError> {
        check_config(config)?;
        let _changing = self.changing.lock().await;
        let info = self.current().info().clone();
        // Refused when another replica switched policy meanwhile: this
        // config was meant for the one shown here.
        let active = self.store.set_policy_config(&info.sha256, config).await?;
        self.follow(active).await?;
        tracing::info!(policy = %info.name, sha256 = %info.sha256, bytes = config.len(), "policy config changed");
        Ok(info)
    }

    /// Switches every replica back to the policy that was active before the
    /// last swap, with the config it had.
    pub async fn rollback(&self) -> Result<PolicyInfo, SwapError> {
        let _changing = self.changing.lock().await;
        let active = self
            .store
            .rollback_policy()
            .await?
            .ok_or(SwapError::NoPrevious)?;
        self.follow(active).await?;
        let info = self.current().info().clone();
        tracing::info!(policy = %info.name, sha256 = %info.sha256, "policy rolled back");
        Ok(info)
    }

    /// Reads the active policy from the database and runs it, if it is not
    /// what runs here already (another replica changed it). True when
    /// something changed.
    pub async fn refresh(&self) -> Result<bool, SwapError> {
        let _changing = self.changing.lock().await;
        let Some(active) = self.store.active_policy().await? else {
            return Ok(false);
        };
        let changed = self.follow(active).await?;
        if changed {
            let info = self.current().info().clone();
            tracing::info!(policy = %info.name, sha256 = %info.sha256, "policy changed by another replica");
        }
        Ok(changed)
    }

    /// Runs `active` here; the caller holds `changing`.
    async fn follow(&self, active: ActivePolicy) -> Result<bool, SwapError> {
        let (current, previous, config) = {
            let slots = self.state.read().expect("policy lock");
            (
                slots.current.clone(),
                slots.previous.clone(),
                slots.config.clone(),
            )
        };
        if current.info().sha256 == active.sha256 {
            if *config == *active.config {
                return Ok(false);
            }
            self.state.write().expect("policy lock").config = Arc::from(active.config);
            return Ok(true);
        }
        let policy = match previous.filter(|p| p.info().sha256 == active.sha256) {
            Some(p) => p,
            None => Arc::new(load_stored(&self.runtime, &*self.store, &active.sha256).await?),
        };
        self.switch(policy, active.config);
        Ok(true)
    }

    fn switch(&self, policy: Arc<Policy>, config: String) {
        let mut slots = self.state.write().expect("policy lock");
        let old = std::mem::replace(&mut slots.current, policy);
        slots.config = Arc::from(config);
        slots.previous = Some(old);
        self.memo.clear();
    }
}

/// Loads the stored policy with this sha256. Its native code comes from
/// the local cache when it has it, else from the database once that checks
/// out; compiled here only when neither does, and then stored for the other
/// replicas (replacing code that did not check out).
async fn load_stored(
    runtime: &Arc<PolicyRuntime>,
    store: &dyn Store,
    sha256: &str,
) -> Result<Policy, SwapError> {
    let stored = store.stored_policy(sha256).await?.ok_or_else(|| {
        SwapError::Store(StoreError::Corrupt(format!(
            "the active policy {sha256} has no stored component"
        )))
    })?;
    let shared = if runtime.shares_code() {
        store
            .native_code(sha256, &runtime.engine_hash_hex())
            .await?
    } else {
        None
    };
    let (policy, native) = {
        let runtime = runtime.clone();
        tokio::task::spawn_blocking(move || {
            let policy = runtime.load_with(&stored.wasm, &stored.source, shared.as_ref())?;
            let native = (policy.code_source() == CodeSource::Compiled)
                .then(|| runtime.shared_code(&policy))
                .flatten();
            Ok::<_, PolicyError>((policy, native))
        })
        .await
        .map_err(|e| SwapError::Task(e.to_string()))??
    };
    if let Some(native) = native {
        // Only a missed chance for the next replica: never a failed load.
        match store.put_native_code(sha256, &native).await {
            Ok(()) => tracing::info!(sha256, "native policy code stored for the other replicas"),
            Err(e) => {
                tracing::warn!(sha256, error = %e, "cannot store the native policy code for the other replicas")
            }
        }
    }
    Ok(policy)
}

/// The policy a data dir from before the database held policies ran, and
/// its config: `policies/active` names `<sha256>.wasm` beside it, its config
/// in `<sha256>.config`. Read once, to seed an empty database.
pub fn legacy_active(dir: &Path) -> std::io::Result<Option<(Vec<u8>, String, String)>> {
    let sha = match std::fs::read_to_string(dir.join("active")) {
        Ok(sha) => sha.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let wasm_path = dir.join(format!("{sha}.wasm"));
    let wasm = std::fs::read(&wasm_path)?;
    let config = match std::fs::read_to_string(dir.join(format!("{sha}.config"))) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    Ok(Some((wasm, wasm_path.display().to_string(), config)))
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
