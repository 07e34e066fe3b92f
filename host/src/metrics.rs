//! The daemon's Prometheus metrics: one registry, made once with the `App`,
//! and the typed labels the seams count with (no metric or label name is
//! spelled outside this module). Gauges that mirror the store (queue depth,
//! nodes online) are read at scrape time, so they cannot drift.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::{DecisionCall, DeploySource, DeployStatus, TargetKind};

/// A label enum with the text each variant is exported as (the derive
/// would export the variant's Rust name).
macro_rules! label_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
    };
}

label_enum! {
    /// What a remote git lookup came to.
    pub enum GitResult {
        Ok = "ok",
        Error = "error",
    }
}

label_enum! {
    /// What one registry digest lookup came to.
    pub enum RegistryResult {
        Ok = "ok",
        NotFound = "not_found",
        Auth = "auth",
        /// The registry answered 429 or 503, or the host is still backed off
        /// from such an answer.
        BackedOff = "backed_off",
        Timeout = "timeout",
        Error = "error",
    }
}

label_enum! {
    /// What a trigger that reached the pipeline came to.
    pub enum TriggerOutcome {
        /// A deployment was queued (or the trigger joined a queued one).
        Queued = "queued",
        /// The policy refused it, or it could not decide: recorded as failed.
        Refused = "refused",
        /// Nothing was written (a store error).
        Error = "error",
    }
}

label_enum! {
    /// The sender of a webhook delivery.
    pub enum WebhookProvider {
        Github = "github",
        Gitea = "gitea",
        Gitlab = "gitlab",
        Bitbucket = "bitbucket",
        Generic = "generic",
        Registry = "registry",
    }
}

label_enum! {
    /// What one attempt to send a notification came to.
    pub enum NotifyResult {
        Sent = "sent",
        /// It failed and will be tried again.
        Retry = "retry",
        /// It failed its last attempt.
        Dead = "dead",
    }
}

label_enum! {
    /// What the daemon made of a webhook delivery.
    pub enum WebhookVerdict {
        Accepted = "accepted",
        Replayed = "replayed",
        Rejected = "rejected",
    }
}

// The store's enums as label values: their stored text.
macro_rules! text_label {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
                std::fmt::Write::write_str(e, self.as_str())
            }
        }
    )*};
}
text_label!(
    DecisionCall,
    DeploySource,
    DeployStatus,
    GitResult,
    NotifyResult,
    RegistryResult,
    TargetKind,
    TriggerOutcome,
    WebhookProvider,
    WebhookVerdict
);

/// A host name only: never a URL, a user or a path.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GitLabels {
    pub host: String,
    pub result: GitResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub host: String,
    pub result: RegistryResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub call: DecisionCall,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub source: DeploySource,
    pub outcome: TriggerOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub status: DeployStatus,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoopLabels {
    pub r#loop: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub provider: WebhookProvider,
    pub verdict: WebhookVerdict,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabels {
    pub kind: TargetKind,
    pub result: NotifyResult,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn decision_buckets() -> Histogram {
    // 50 µs to ~3 s: a small decision takes well under a millisecond, a
    // policy at its fuel limit seconds.
    Histogram::new(exponential_buckets(0.00005, 4.0, 9))
}

fn tick_buckets() -> Histogram {
    // 1 ms to ~4.5 min: an idle tick to one over 10,000 projects.
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    pub git_lookups: Family<GitLabels, Counter>,
    pub registry_requests: Family<RegistryLabels, Counter>,
    pub registry_backoffs: Family<HostLabels, Counter>,
    pub policy_decision_seconds: Histograms<CallLabels>,
    pub policy_failures: Family<CallLabels, Counter>,
    pub triggers: Family<TriggerLabels, Counter>,
    pub deployments: Family<DeploymentLabels, Counter>,
    pub tick_seconds: Histograms<LoopLabels>,
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
    pub notifications: Family<NotifyLabels, Counter>,
    queue_depth: Gauge,
    nodes_online: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("autodeploy"),
            git_lookups: Default::default(),
            registry_requests: Default::default(),
            registry_backoffs: Default::default(),
            policy_decision_seconds: Family::new_with_constructor(decision_buckets),
            policy_failures: Default::default(),
            triggers: Default::default(),
            deployments: Default::default(),
            tick_seconds: Family::new_with_constructor(tick_buckets),
            webhook_deliveries: Default::default(),
            notifications: Default::default(),
            queue_depth: Default::default(),
            nodes_online: Default::default(),
        };
        let r = &mut m.registry;
        r.register(
            "git_lookups",
            "Remote git head lookups by host and result",
            m.git_lookups.clone(),
        );
        r.register(
            "registry_requests",
            "Image digest lookups by registry host and result",
            m.registry_requests.clone(),
        );
        r.register(
            "registry_backoffs",
            "Backoffs started because a registry answered 429 or 503",
            m.registry_backoffs.clone(),
        );
        r.register(
            "policy_decision_seconds",
            "Time one policy call took, by call",
            m.policy_decision_seconds.clone(),
        );
        r.register(
            "policy_failures",
            "Policy calls that trapped, ran out of budget or answered wrongly",
            m.policy_failures.clone(),
        );
        r.register(
            "triggers",
            "Triggers that reached the deploy pipeline, by source and outcome",
            m.triggers.clone(),
        );
        r.register(
            "deployments",
            "Deployments entering a status (queued when recorded, the rest when a node reports)",
            m.deployments.clone(),
        );
        r.register(
            "tick_duration_seconds",
            "Duration of a loop's own ticks",
            m.tick_seconds.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhook deliveries by provider and verdict (counted by the webhook endpoints)",
            m.webhook_deliveries.clone(),
        );
        r.register(
            "notifications",
            "Attempts to send a notification, by target kind and result",
            m.notifications.clone(),
        );
        r.register(
            "queue_depth",
            "Deployments queued and not yet claimed by a node",
            m.queue_depth.clone(),
        );
        r.register(
            "nodes_online",
            "Deploy nodes seen within node_offline_after_seconds",
            m.nodes_online.clone(),
        );
        m
    }
}

impl Metrics {
    pub fn git_lookup(&self, url: &str, result: GitResult) {
        self.git_lookups
            .get_or_create(&GitLabels {
                host: host_of(url),
                result,
            })
            .inc();
    }

    pub fn registry_request(&self, host: &str, result: RegistryResult) {
        self.registry_requests
            .get_or_create(&RegistryLabels {
                host: host.to_string(),
                result,
            })
            .inc();
    }

    /// A registry answered 429 or 503: a backoff starts.
    pub fn registry_backoff(&self, host: &str) {
        self.registry_backoffs
            .get_or_create(&HostLabels {
                host: host.to_string(),
            })
            .inc();
    }

    pub fn decision(&self, call: DecisionCall, took: Duration, failed: bool) {
        let labels = CallLabels { call };
        self.policy_decision_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if failed {
            self.policy_failures.get_or_create(&labels).inc();
        }
    }

    pub fn trigger(&self, source: DeploySource, outcome: TriggerOutcome) {
        self.triggers
            .get_or_create(&TriggerLabels { source, outcome })
            .inc();
    }

    pub fn deployment(&self, status: DeployStatus) {
        self.deployments
            .get_or_create(&DeploymentLabels { status })
            .inc();
    }

    pub fn notification(&self, kind: TargetKind, result: NotifyResult) {
        self.notifications
            .get_or_create(&NotifyLabels { kind, result })
            .inc();
    }

    pub fn tick(&self, r#loop: &'static str, took: Duration) {
        self.tick_seconds
            .get_or_create(&LoopLabels { r#loop })
            .observe(took.as_secs_f64());
    }

    /// The OpenMetrics exposition, with the store-read gauges set to `read`.
    pub fn encode(&self, read: Option<crate::store::Observed>) -> String {
        if let Some(o) = read {
            self.queue_depth.set(o.queued);
            self.nodes_online.set(o.nodes_online);
        }
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4, for a scraper
/// that does not ask for OpenMetrics (promtool, curl, older agents): a
/// counter's HELP and TYPE name its `_total` series, and the `# EOF` and
/// `# UNIT` lines go.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|r| r.strip_suffix(" counter"))
        {
            counters.insert(name.to_string());
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let name = rest.split(' ').next().unwrap_or_default();
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&rest[name.len()..]);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The host name of a git remote (`https://user:pw@host:port/path`,
/// `ssh://git@host/path` or scp-like `git@host:path`), without user, port or
/// path: a label must never carry a credential or a repository name.
pub fn host_of(url: &str) -> String {
    if let Ok(u) = url::Url::parse(url)
        && let Some(h) = u.host_str()
    {
        return h.to_string();
    }
    if url.starts_with('/') || url.starts_with("file:") {
        return "local".into();
    }
    // scp-like: [user@]host:path
    let before_colon = url.split(':').next().unwrap_or("");
    let host = before_colon.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.contains('/') {
        "unknown".into()
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_drops_credentials_and_paths() {
        assert_eq!(
            host_of("https://u:secret@git.example:8443/a/b.git"),
            "git.example"
        );
        assert_eq!(host_of("ssh://git@example.org/x.git"), "example.org");
        assert_eq!(host_of("git@example.org:team/x.git"), "example.org");
        assert_eq!(host_of("/srv/repo.git"), "local");
    }

    #[test]
    fn exposition_names_every_family() {
        let m = Metrics::default();
        m.git_lookup("https://u:p@h.example/r.git", GitResult::Ok);
        m.tick("git-poll", Duration::from_millis(3));
        let text = m.encode(None);
        assert!(text.contains("autodeploy_git_lookups_total{host=\"h.example\",result=\"ok\"} 1"));
        assert!(text.contains("autodeploy_tick_duration_seconds_count{loop=\"git-poll\"} 1"));
        assert!(!text.contains("u:p"));
    }

    #[test]
    fn the_text_format_names_counters_by_their_series() {
        let m = Metrics::default();
        m.trigger(DeploySource::AutoPoll, TriggerOutcome::Queued);
        let text = to_text_format(&m.encode(None));
        assert!(
            text.contains("# TYPE autodeploy_triggers_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP autodeploy_triggers_total "), "{text}");
        assert!(
            text.contains("autodeploy_triggers_total{source=\"auto-poll\",outcome=\"queued\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE autodeploy_queue_depth gauge\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}
