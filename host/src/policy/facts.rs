//! The facts a policy decides on, gathered by the host: the master switch,
//! the time, the operator's config for the active policy, the node a project
//! is pinned to and whether it is online, and what the agents can deploy.
//!
//! The host reads the world; the policy judges it. A tick over many projects
//! reads the settings and the nodes once ([`FactBase`]); a single decision
//! (a push, a manual deploy, a toggle) reads them for its project
//! ([`gather`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use super::{Facts, NodeState, PinnedNode, ProjectKind};

use crate::app::App;
use crate::store::{Node, ProjectRecord, Settings, StoreError};

/// Names a file holding Unix seconds that replaces the system clock for the
/// policy's `now` (and for nothing else: leases, timeouts and event times
/// keep the real clock). For tests of time-dependent policies only.
pub const TEST_ONLY_CLOCK_FILE: &str = "AUTODEPLOY_TEST_ONLY_CLOCK_FILE";

/// The clock file in force, if any (read once); the daemon warns at start
/// when it is.
pub fn test_only_clock() -> Option<&'static PathBuf> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| std::env::var_os(TEST_ONLY_CLOCK_FILE).map(PathBuf::from))
        .as_ref()
}

/// Now, as the policy sees it: whole seconds since the Unix epoch, UTC. The
/// one source of the `now` fact.
pub fn policy_now() -> i64 {
    let Some(path) = test_only_clock() else {
        return crate::store::now();
    };
    // Read on every call, so a test moves time by rewriting the file.
    let read = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            text.trim()
                .parse::<i64>()
                .map_err(|_| "it does not hold a whole number of seconds".to_string())
        });
    match read {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "{TEST_ONLY_CLOCK_FILE}: cannot read the clock; using the system clock");
            crate::store::now()
        }
    }
}

/// The project types the agents deploy, as the policy names them.
pub fn agent_kinds() -> Vec<ProjectKind> {
    crate::agent::KINDS.iter().map(|&k| k.into()).collect()
}

/// What every project of one tick shares: read once per tick.
pub struct FactBase {
    settings: Settings,
    master: bool,
    now: i64,
    config: Arc<str>,
    /// Node id to (name, online).
    nodes: HashMap<i64, (String, bool)>,
    agent_kinds: Vec<ProjectKind>,
}

impl FactBase {
    /// Reads the settings and every node. The config is the active policy's
    /// at this moment.
    pub async fn read(app: &App) -> Result<FactBase, StoreError> {
        let settings = app.store.settings().await?;
        let nodes = app.store.nodes().await?;
        Ok(Self::from_parts(&settings, &nodes, app.policy.config()))
    }

    /// Facts from what was read. A node's online state uses the real clock
    /// (heartbeats are stamped with it), never the test clock.
    pub fn from_parts(settings: &Settings, nodes: &[Node], config: Arc<str>) -> FactBase {
        let t = crate::store::now();
        let offline_after = settings.node_offline_after_seconds as i64;
        FactBase {
            settings: settings.clone(),
            master: settings.auto_deploy_master_enabled,
            now: policy_now(),
            config,
            nodes: nodes
                .iter()
                .map(|n| (n.id, (n.name.clone(), n.online(t, offline_after))))
                .collect(),
            agent_kinds: agent_kinds(),
        }
    }

    /// The master switch as read for this tick.
    pub fn master_enabled(&self) -> bool {
        self.master
    }

    /// The settings as read for this tick.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Reads the settings and only the node `pinned` names: for a single
    /// decision.
    pub async fn read_for(app: &App, pinned: Option<i64>) -> Result<FactBase, StoreError> {
        let settings = app.store.settings().await?;
        let nodes = match pinned {
            Some(id) => match app.store.node(id).await {
                Ok(node) => vec![node],
                // Deleted meanwhile: that unpinned the project.
                Err(StoreError::NotFound(_)) => vec![],
                Err(e) => return Err(e),
            },
            None => vec![],
        };
        Ok(Self::from_parts(&settings, &nodes, app.policy.config()))
    }

    /// Whether this base read the node `project` is pinned to (a project
    /// read after the base may have been pinned since).
    pub fn knows(&self, project: &ProjectRecord) -> bool {
        project
            .pinned_node_id
            .is_none_or(|id| self.nodes.contains_key(&id))
    }

    /// The facts for one project.
    pub fn facts(&self, project: &ProjectRecord) -> Facts {
        self.facts_pinned(project.pinned_node_id)
    }

    /// The facts for a project pinned to `pinned` (a project being created
    /// is pinned nowhere).
    pub fn facts_pinned(&self, pinned: Option<i64>) -> Facts {
        Facts {
            auto_deploy_master_enabled: self.master,
            now_unix_seconds: self.now,
            config: self.config.to_string(),
            pinned_node: pinned
                // A node deleted since the project was read unpinned it
                // (the schema sets the column to NULL).
                .and_then(|id| self.nodes.get(&id))
                .map(|(name, online)| PinnedNode {
                    name: name.clone(),
                    state: if *online {
                        NodeState::Online
                    } else {
                        NodeState::Offline
                    },
                }),
            agent_kinds: self.agent_kinds.clone(),
        }
    }
}

/// The facts for one decision about `project`: the settings and only the
/// node it is pinned to are read.
pub async fn gather(app: &App, project: &ProjectRecord) -> Result<Facts, StoreError> {
    Ok(FactBase::read_for(app, project.pinned_node_id)
        .await?
        .facts(project))
}

/// The facts for `project` from a tick's `base` when it has them, else
/// read afresh.
pub async fn from_base(
    app: &App,
    base: &FactBase,
    project: &ProjectRecord,
) -> Result<Facts, StoreError> {
    if base.knows(project) {
        Ok(base.facts(project))
    } else {
        gather(app, project).await
    }
}
