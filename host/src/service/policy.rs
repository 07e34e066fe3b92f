//! The policy actions: swap the active policy (compiled, checked against
//! the contract and self-tested before anything changes, then stored by
//! sha256 for every replica, which hear of it by notification), set its
//! config, roll back. Each is logged as an event. The API only translates
//! HTTP to these calls.

use serde::Serialize;
use sha2::Digest;

use crate::app::App;
use crate::policy::{MAX_CONFIG_BYTES, PolicyInfo, SwapError};
use crate::store::{EventKind, StoreError};

/// Why a policy action was not done.
#[derive(Debug, thiserror::Error)]
pub enum PolicyActionError {
    /// The upload itself is wrong (empty, not base64, not UTF-8...).
    #[error("{0}")]
    Invalid(String),
    #[error("the policy config is {0} bytes; at most {MAX_CONFIG_BYTES} are allowed")]
    ConfigTooLarge(usize),
    /// The policy was refused, or the swap failed; the running one stays.
    #[error(transparent)]
    Swap(#[from] SwapError),
    /// The change was made but its event could not be logged.
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, PolicyActionError>;

/// The active policy and the operator's config for it. The config is not
/// secret by contract (it reaches every decision and the decision log), so
/// it is shown.
#[derive(Debug, Serialize)]
pub struct ActivePolicy {
    #[serde(flatten)]
    pub info: PolicyInfo,
    /// `null` when none is set.
    pub config: Option<String>,
    pub config_sha256: Option<String>,
    /// Where this replica got the policy's native code: `shared` when from
    /// the database, as made by the replica that accepted it.
    pub code: crate::policy::CodeSource,
}

/// What runs on this replica now.
pub fn current(app: &App) -> ActivePolicy {
    let (policy, config) = app.policy.current_with_config();
    let set = !config.is_empty();
    ActivePolicy {
        info: policy.info().clone(),
        config_sha256: set.then(|| crate::secrets::hex(&sha2::Sha256::digest(config.as_bytes()))),
        config: set.then(|| config.to_string()),
        code: policy.code_source(),
    }
}

/// Makes `wasm` the active policy of every replica once it passes its
/// checks. `Some(config)` replaces the config stored for it ("" removes
/// it); `None` keeps the one stored for this component before, if any.
pub async fn install(app: &App, wasm: Vec<u8>, config: Option<String>) -> Result<ActivePolicy> {
    if wasm.is_empty() {
        return Err(PolicyActionError::Invalid(
            "the request body must be a WebAssembly component".into(),
        ));
    }
    let with_config = config.is_some();
    let info = app.policy.install_with_config(wasm, "api", config).await?;
    let answer = current(app);
    let config_note = match &answer.config_sha256 {
        Some(sha) if with_config => format!(", config {sha}"),
        Some(sha) => format!(", its stored config {sha}"),
        None => ", no config".to_string(),
    };
    app.store
        .log_event(
            None,
            EventKind::PolicySwitched,
            &format!(
                "{} {} ({}){config_note}",
                info.name, info.version, info.sha256
            ),
        )
        .await?;
    Ok(answer)
}

/// Gives the active policy the config `body` (UTF-8 text, at most
/// [`MAX_CONFIG_BYTES`]; empty removes it).
pub async fn set_config(app: &App, body: &[u8]) -> Result<ActivePolicy> {
    if body.len() > MAX_CONFIG_BYTES {
        return Err(PolicyActionError::ConfigTooLarge(body.len()));
    }
    let config = std::str::from_utf8(body)
        .map_err(|_| PolicyActionError::Invalid("the policy config must be UTF-8 text".into()))?;
    let info = app.policy.set_config(config).await?;
    let answer = current(app);
    let what = match &answer.config_sha256 {
        Some(sha) => format!("config {sha} ({} bytes)", config.len()),
        None => "config removed".to_string(),
    };
    app.store
        .log_event(
            None,
            EventKind::PolicyConfigChanged,
            &format!("{} {} ({}): {what}", info.name, info.version, info.sha256),
        )
        .await?;
    Ok(answer)
}

/// Switches every replica back to the policy active before the last swap,
/// with the config it had.
pub async fn rollback(app: &App) -> Result<ActivePolicy> {
    let info = app.policy.rollback().await?;
    app.store
        .log_event(
            None,
            EventKind::PolicyRolledBack,
            &format!("{} {} ({})", info.name, info.version, info.sha256),
        )
        .await?;
    Ok(current(app))
}
