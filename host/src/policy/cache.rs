//! Native code for policies, so a policy is compiled once and not at every
//! start or CLI call.
//!
//! - With the feature `precompiled-policy`, the bundled policy is
//!   precompiled by host/build.rs for the engine the daemon builds (both use
//!   `engine_config.rs`) and embedded in the binary.
//! - Any other policy (and the bundled one without that feature) is
//!   compiled on first load and kept in a cache
//!   directory as `<policy sha256>-<engine hash>.cwasm`. The engine hash
//!   covers the compiler, its target and every setting that changes the code,
//!   so a daemon with other settings never picks up an entry that does not
//!   fit it.
//!
//! - Replicas share native code through the database: the replica that
//!   accepts a policy stores its code per engine beside the component (see
//!   `handle.rs`), and the others load it instead of compiling it.
//!
//! Loading native code runs it, so an entry is never trusted blindly: it
//! carries a header with the sha256 of its code, checked before wasmtime sees
//! a byte, in a directory only the daemon's user may write. An entry that is
//! truncated, corrupt or made for another engine is compiled again and
//! replaced, with a warning in the log. Anyone who may write the database
//! may write its code, so code from there must carry an HMAC-SHA256 over
//! the engine hash, the policy's sha256 and the code, under a key derived
//! from the replicas' shared secret key ([`crate::secrets::CodeKey`]); code
//! that does not is never deserialized: the policy is compiled instead.

use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::handle::write_atomic;
use super::{BUNDLED_POLICY, Policy, PolicyError, PolicyRuntime};
use crate::secrets::CodeKey;
use crate::store::NativeCode;

/// The bundled policy compiled by host/build.rs; empty when the daemon was
/// built for another machine than the one that built it.
#[cfg(feature = "precompiled-policy")]
const BUNDLED_PRECOMPILED: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/default-policy.cwasm"));
#[cfg(not(feature = "precompiled-policy"))]
const BUNDLED_PRECOMPILED: &[u8] = &[];

/// The first bytes of every cache entry (and the format's version).
const MAGIC: &[u8; 8] = b"ADCWASM1";
/// Magic, engine hash, policy sha256, code length, code sha256.
const HEADER_LEN: usize = 8 + 32 + 32 + 8 + 32;
/// Far above any policy's native code; a length field beyond it is corrupt.
const MAX_CODE_LEN: u64 = 1 << 30;

/// Where a loaded policy's native code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSource {
    /// Embedded in the binary at build time (the bundled policy).
    Precompiled,
    /// A valid entry of the cache directory.
    Cache,
    /// Authenticated native code from the database, made by the replica
    /// that accepted the policy.
    Shared,
    /// Compiled now.
    Compiled,
}

/// How policies got their code since the runtime started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompiledStats {
    pub precompiled: u64,
    pub cache_hits: u64,
    /// Loaded from the database's authenticated native code.
    pub shared: u64,
    pub compiled: u64,
    /// Entries found truncated, corrupt or unfit for this engine, and replaced.
    pub rejected: u64,
    /// Native code from the database refused (its MAC, engine or policy did
    /// not check out, or wasmtime refused it); the policy was compiled.
    pub shared_rejected: u64,
}

/// Why a cache entry could not be used. Never returned to a caller: the
/// policy is compiled instead, and this goes to the log.
/// Why native code from the database was refused. Never returned to a
/// caller: the policy is compiled instead, and this goes to the log. It says
/// what failed, never a key or a tag.
#[derive(Debug, thiserror::Error)]
pub enum SharedCodeError {
    #[error("made by another engine")]
    Engine,
    #[error(
        "its MAC does not check out: altered in the database, or made under another secret key"
    )]
    Mac,
    #[error("wasmtime refused it: {0}")]
    Deserialize(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} bytes is too short for an entry")]
    Truncated(usize),
    #[error("not a compiled policy entry (bad magic)")]
    Magic,
    #[error("made by another engine")]
    Engine,
    #[error("made for another policy")]
    Policy,
    #[error("says {declared} bytes of code but holds {actual}")]
    Length { declared: u64, actual: usize },
    #[error("the code does not match its checksum")]
    Checksum,
    #[error("wasmtime refused it: {0}")]
    Deserialize(String),
}

/// The cache directory (if any) and what happened so far.
#[derive(Default)]
pub struct CompiledCache {
    dir: OnceLock<PathBuf>,
    /// Set on a daemon: signs and checks native code shared through the
    /// database. Without it, none is used or made.
    code_key: OnceLock<CodeKey>,
    engine_hash: OnceLock<[u8; 32]>,
    precompiled: AtomicU64,
    cache_hits: AtomicU64,
    shared: AtomicU64,
    compiled: AtomicU64,
    rejected: AtomicU64,
    shared_rejected: AtomicU64,
}

impl CompiledCache {
    pub fn stats(&self) -> CompiledStats {
        CompiledStats {
            precompiled: self.precompiled.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            shared: self.shared.load(Ordering::Relaxed),
            compiled: self.compiled.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            shared_rejected: self.shared_rejected.load(Ordering::Relaxed),
        }
    }

    fn count(&self, source: CodeSource) {
        match source {
            CodeSource::Precompiled => &self.precompiled,
            CodeSource::Cache => &self.cache_hits,
            CodeSource::Shared => &self.shared,
            CodeSource::Compiled => &self.compiled,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    fn engine_hash(&self, engine: &Engine) -> [u8; 32] {
        *self.engine_hash.get_or_init(|| {
            let mut hasher = ShaHasher(Sha256::new());
            engine.precompile_compatibility_hash().hash(&mut hasher);
            hasher.0.finalize().into()
        })
    }
}

/// Feeds wasmtime's compatibility hash into sha256: a digest that is the same
/// in every process, unlike `DefaultHasher`'s.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the sha256 digest is read")
    }
}

/// The per-user cache directory the CLI uses: `$XDG_CACHE_HOME/autodeploy`
/// or `~/.cache/autodeploy`, with `policies` under it.
pub fn user_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| Path::new(v).is_absolute())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| Path::new(v).is_absolute())
                .map(|home| PathBuf::from(home).join(".cache"))
        })?;
    Some(base.join("autodeploy").join("policies"))
}

impl PolicyRuntime {
    /// Keeps compiled policies in `dir` from now on (created if missing,
    /// private to this user). Has no effect once set.
    pub fn use_cache_dir(&self, dir: PathBuf) {
        let _ = self.compiled.dir.set(dir);
    }

    /// How policies got their native code since this runtime started.
    pub fn compiled_stats(&self) -> CompiledStats {
        self.compiled.stats()
    }

    /// Uses and makes native code shared through the database from now on,
    /// authenticated with `key`. Has no effect once set.
    pub fn share_code_with(&self, key: CodeKey) {
        let _ = self.compiled.code_key.set(key);
    }

    /// Whether native code is shared through the database.
    pub fn shares_code(&self) -> bool {
        self.compiled.code_key.get().is_some()
    }

    /// The engine's hash as the database keys native code by (hex).
    pub fn engine_hash_hex(&self) -> String {
        crate::secrets::hex(&self.compiled.engine_hash(&self.engine))
    }

    /// `policy`'s native code, authenticated for the database; `None` when
    /// code is not shared (no key) or cannot be serialized.
    pub fn shared_code(&self, policy: &Policy) -> Option<NativeCode> {
        let key = self.compiled.code_key.get()?;
        let code = match policy.component.serialize() {
            Ok(code) => code,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot serialize the compiled policy to share it");
                return None;
            }
        };
        let engine_hash = self.compiled.engine_hash(&self.engine);
        let mac = key.sign(&shared_parts(&engine_hash, &policy.info().sha256, &code));
        Some(NativeCode {
            engine_hash: crate::secrets::hex(&engine_hash),
            code,
            mac: mac.to_vec(),
        })
    }

    /// `run` (the self-test of `policy`), unless this policy passed it before
    /// with the same vectors (`vectors`, their digest), the same instruction
    /// budget and memory limit, on the same engine and daemon version. With
    /// the budget counting instructions, not time, the outcome would be the
    /// same. A pass is remembered in the cache directory; a failure never is.
    pub fn self_test_remembered(
        &self,
        policy: &Policy,
        vectors: &[u8; 32],
        run: impl FnOnce() -> Vec<String>,
    ) -> Vec<String> {
        let Some(dir) = self.compiled.dir.get().filter(|dir| usable_dir(dir)) else {
            return run();
        };
        let sha256 = &policy.info().sha256;
        let mut key = Sha256::new();
        key.update(b"self-test\0");
        key.update(sha256.as_bytes());
        key.update(self.compiled.engine_hash(&self.engine));
        key.update(self.config.fuel.unwrap_or(0).to_le_bytes());
        key.update((self.config.memory_limit as u64).to_le_bytes());
        key.update(vectors);
        key.update(env!("CARGO_PKG_VERSION").as_bytes());
        let key = crate::secrets::hex(&key.finalize());
        let path = dir.join(format!("{sha256}-{}.passed", &key[..16]));
        if std::fs::read(&path).is_ok_and(|held| held == key.as_bytes()) {
            tracing::info!(
                sha256,
                "policy passed this self-test before (same vectors, limits and engine); not run again"
            );
            return Vec::new();
        }
        let failures = run();
        if failures.is_empty()
            && let Err(e) = write_atomic(&path, key.as_bytes())
        {
            tracing::debug!(path = %path.display(), error = %e, "cannot remember the self-test pass");
        }
        failures
    }

    /// The component for `bytes` (whose sha256 is `sha256`, hex): the
    /// embedded precompiled code for the bundled policy, else a valid cache
    /// entry, else `shared` code from the database once it checks out, else
    /// compiled now (and cached).
    pub(super) fn component(
        &self,
        bytes: &[u8],
        sha256: &str,
        shared: Option<&NativeCode>,
    ) -> Result<(Component, CodeSource), PolicyError> {
        let (component, source) = self.component_from(bytes, sha256, shared)?;
        self.compiled.count(source);
        tracing::debug!(sha256, ?source, "policy code ready");
        Ok((component, source))
    }

    /// `shared`'s code as a component, once its engine and MAC check out.
    fn load_shared(
        &self,
        shared: &NativeCode,
        key: &CodeKey,
        sha256: &str,
    ) -> Result<Component, SharedCodeError> {
        let engine_hash = self.compiled.engine_hash(&self.engine);
        if shared.engine_hash != crate::secrets::hex(&engine_hash) {
            return Err(SharedCodeError::Engine);
        }
        if !key.verify(
            &shared_parts(&engine_hash, sha256, &shared.code),
            &shared.mac,
        ) {
            return Err(SharedCodeError::Mac);
        }
        // SAFETY: these bytes are, byte for byte, what `Component::serialize`
        // wrote for this engine and this policy on a replica holding the
        // secret key: the MAC under the key derived from it covers the
        // engine hash, the policy's sha256 and the code. `deserialize` still
        // checks that the code fits this engine.
        unsafe { Component::deserialize(&self.engine, &shared.code) }
            .map_err(|e| SharedCodeError::Deserialize(format!("{e:#}")))
    }

    fn component_from(
        &self,
        bytes: &[u8],
        sha256: &str,
        shared: Option<&NativeCode>,
    ) -> Result<(Component, CodeSource), PolicyError> {
        if !BUNDLED_PRECOMPILED.is_empty() && sha256 == bundled_sha256() {
            // SAFETY: these bytes are wasmtime's own output for this very
            // component, made by this binary's build script and embedded in
            // it: not arbitrary bytes. Whether they fit this engine (fuel on
            // or off, CPU features) `deserialize` checks before using them.
            match unsafe { Component::deserialize(&self.engine, BUNDLED_PRECOMPILED) } {
                Ok(component) => return Ok((component, CodeSource::Precompiled)),
                Err(e) => tracing::debug!(
                    error = %format!("{e:#}"),
                    "the precompiled bundled policy does not fit this engine; compiling it"
                ),
            }
        }
        let dir = self.compiled.dir.get().filter(|dir| usable_dir(dir));
        let engine_hash = self.compiled.engine_hash(&self.engine);
        let path = dir.map(|dir| dir.join(entry_name(sha256, &engine_hash)));
        if let Some(path) = &path {
            match read_entry(&self.engine, path, &engine_hash, sha256) {
                Ok(Some(component)) => return Ok((component, CodeSource::Cache)),
                Ok(None) => {}
                Err(problem) => {
                    self.compiled.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(path = %path.display(), %problem, "compiled policy entry unusable; compiling the policy again and replacing it");
                }
            }
        }
        if let (Some(shared), Some(key)) = (shared, self.compiled.code_key.get()) {
            match self.load_shared(shared, key, sha256) {
                Ok(component) => {
                    // Checked: kept locally as if compiled here, so the
                    // next start of this replica reads it from disk.
                    if let (Some(dir), Some(path)) = (dir, &path) {
                        cache_entry(dir, path, &engine_hash, sha256, &shared.code);
                    }
                    return Ok((component, CodeSource::Shared));
                }
                Err(problem) => {
                    self.compiled
                        .shared_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        sha256,
                        engine = %shared.engine_hash,
                        %problem,
                        "native policy code in the database refused, never loaded; compiling the policy here"
                    );
                }
            }
        }
        let component = compile(&self.engine, bytes)?;
        let (Some(dir), Some(path)) = (dir, path) else {
            return Ok((component, CodeSource::Compiled));
        };
        match component.serialize() {
            Ok(code) => cache_entry(dir, &path, &engine_hash, sha256, &code),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot serialize the compiled policy")
            }
        }
        Ok((component, CodeSource::Compiled))
    }
}

/// Writes `code` as the cache entry at `path` in `dir`.
fn cache_entry(dir: &Path, path: &Path, engine_hash: &[u8; 32], sha256: &str, code: &[u8]) {
    let entry = encode_entry(engine_hash, sha256, code);
    match write_atomic(path, &entry) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "compiled policy cached");
            remove_other_engines(dir, sha256, path);
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache the compiled policy")
        }
    }
}

/// What the MAC of shared native code covers: a format tag, the engine, the
/// policy and the code (the key binds it to the replicas' secret).
fn shared_parts<'a>(engine_hash: &'a [u8; 32], sha256: &'a str, code: &'a [u8]) -> [&'a [u8]; 4] {
    [b"native-code-v1", engine_hash, sha256.as_bytes(), code]
}

fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, PolicyError> {
    Component::new(engine, bytes).map_err(|e| PolicyError::Invalid(format!("{e:#}")))
}

fn bundled_sha256() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| crate::secrets::hex(&Sha256::digest(BUNDLED_POLICY)))
}

fn entry_name(sha256: &str, engine_hash: &[u8; 32]) -> String {
    // 64 bits of the engine hash tell engines apart in a file name; the
    // header holds all of it.
    format!("{sha256}-{}.cwasm", crate::secrets::hex(&engine_hash[..8]))
}

/// Creates `dir` private to this user if missing, and refuses one that
/// others may write: whoever can write an entry can run code in the daemon.
fn usable_dir(dir: &Path) -> bool {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the compiled policy cache; compiling without it");
        return false;
    }
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        tracing::warn!(dir = %dir.display(), "the compiled policy cache is not private to this user; compiling without it");
        return false;
    }
    true
}

fn encode_entry(engine_hash: &[u8; 32], sha256: &str, code: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(HEADER_LEN + code.len());
    entry.extend_from_slice(MAGIC);
    entry.extend_from_slice(engine_hash);
    entry.extend_from_slice(&Sha256::digest(sha256.as_bytes()));
    entry.extend_from_slice(&(code.len() as u64).to_le_bytes());
    entry.extend_from_slice(&Sha256::digest(code));
    entry.extend_from_slice(code);
    entry
}

/// The entry at `path` if it is there and valid; `Ok(None)` when there is
/// none.
fn read_entry(
    engine: &Engine,
    path: &Path,
    engine_hash: &[u8; 32],
    sha256: &str,
) -> Result<Option<Component>, EntryError> {
    let read_err = |source| EntryError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut entry = Vec::new();
    file.read_to_end(&mut entry).map_err(read_err)?;
    let code = check_entry(&entry, engine_hash, sha256)?;
    // SAFETY: `code` is, byte for byte, what `Component::serialize` wrote
    // for this engine and policy: its sha256 matches the header, and the
    // directory is writable only by this user (see `usable_dir`).
    // `deserialize` still checks that the code fits this engine.
    unsafe { Component::deserialize(engine, code) }
        .map(Some)
        .map_err(|e| EntryError::Deserialize(format!("{e:#}")))
}

/// The code inside `entry`, once its header checks out.
fn check_entry<'a>(
    entry: &'a [u8],
    engine_hash: &[u8; 32],
    sha256: &str,
) -> Result<&'a [u8], EntryError> {
    if entry.len() < HEADER_LEN {
        return Err(EntryError::Truncated(entry.len()));
    }
    let (header, code) = entry.split_at(HEADER_LEN);
    if &header[..8] != MAGIC {
        return Err(EntryError::Magic);
    }
    if &header[8..40] != engine_hash {
        return Err(EntryError::Engine);
    }
    if header[40..72] != Sha256::digest(sha256.as_bytes())[..] {
        return Err(EntryError::Policy);
    }
    let declared = u64::from_le_bytes(header[72..80].try_into().expect("8 bytes"));
    if declared > MAX_CODE_LEN || declared != code.len() as u64 {
        return Err(EntryError::Length {
            declared,
            actual: code.len(),
        });
    }
    if header[80..112] != Sha256::digest(code)[..] {
        return Err(EntryError::Checksum);
    }
    Ok(code)
}

/// Entries of the same policy made for other engines (an upgrade, other
/// settings) are stale once this one is written.
fn remove_other_engines(dir: &Path, sha256: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{sha256}-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".cwasm") && entry.path() != keep {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed a compiled policy made for another engine")
                }
                Err(e) => {
                    tracing::debug!(path = %entry.path().display(), error = %e, "cannot remove a stale compiled policy")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> (Vec<u8>, [u8; 32]) {
        let engine = [7u8; 32];
        (encode_entry(&engine, "abc", b"native code"), engine)
    }

    #[test]
    fn a_valid_entry_gives_back_its_code() {
        let (e, engine) = entry();
        assert_eq!(check_entry(&e, &engine, "abc").unwrap(), b"native code");
    }

    #[test]
    fn a_truncated_entry_is_refused() {
        let (e, engine) = entry();
        assert!(matches!(
            check_entry(&e[..e.len() - 1], &engine, "abc"),
            Err(EntryError::Length { .. })
        ));
        assert!(matches!(
            check_entry(&e[..50], &engine, "abc"),
            Err(EntryError::Truncated(50))
        ));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let (e, engine) = entry();
        for i in 0..e.len() {
            let mut bad = e.clone();
            bad[i] ^= 0x01;
            assert!(check_entry(&bad, &engine, "abc").is_err(), "byte {i}");
        }
    }

    #[test]
    fn another_engine_or_policy_is_refused() {
        let (e, engine) = entry();
        assert!(matches!(
            check_entry(&e, &[8u8; 32], "abc"),
            Err(EntryError::Engine)
        ));
        assert!(matches!(
            check_entry(&e, &engine, "abd"),
            Err(EntryError::Policy)
        ));
    }
}
