//! The service layer: one function per user action (create a project, turn
//! its auto-deploy on, add a node...). A service function checks the input,
//! asks the policy where the action needs it, seals secrets, and writes the
//! whole action in one store transaction: nothing is written unless all of
//! it is. The REST API (and the CLI through it) only translates HTTP to
//! these calls and their errors to status codes.

pub mod checks;
pub mod deployments;
pub mod events;
pub mod nodes;
pub mod notifications;
pub mod page;
pub mod policy;
pub mod projects;
pub mod registry_creds;
pub mod registry_hooks;
pub mod sessions;
pub mod settings;
pub mod webhooks;

use crate::store::StoreError;

/// Why a user action was not done. Each variant is one kind of answer the
/// caller can act on; messages never carry a secret.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input is wrong; the message names the field and the problem.
    #[error("{0}")]
    Invalid(String),
    /// The policy refused the action; the message is its reason.
    #[error("{0}")]
    Refused(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The action clashes with the current state (a name taken, a pinned
    /// node that does not match).
    #[error("{0}")]
    Conflict(String),
    /// The policy could not decide, so the action cannot be judged now.
    #[error("{0}")]
    PolicyUnavailable(String),
    /// The daemon's own failure; details go to the log, not to the caller.
    #[error("{what}: {detail}")]
    Internal { what: &'static str, detail: String },
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ServiceError::NotFound(what),
            StoreError::Conflict(why) => ServiceError::Conflict(why),
            other => ServiceError::Store(other),
        }
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

fn invalid<T>(message: impl Into<String>) -> Result<T> {
    Err(ServiceError::Invalid(message.into()))
}
