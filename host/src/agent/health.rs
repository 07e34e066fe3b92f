//! The health gate after `up`: `up -d` succeeds even when a container exits
//! at once, so the deploy waits until every service container is running,
//! has not restarted, is healthy where it has a healthcheck, and the
//! project's probe path answers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::compose::StepError;
use super::docker::{self, Container};
use super::logs::Log;

/// Between looks at the containers.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How long everything must stay ready: a container that dies right after
/// starting is seen running by the first look.
const SETTLE: Duration = Duration::from_secs(2);
/// Log lines of a failed service put in the error.
const LOG_LINES: usize = 20;

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Ready,
    /// Not yet: why, and which container (if one is to blame).
    Waiting {
        container: Option<usize>,
        reason: String,
    },
    Failed {
        container: usize,
        reason: String,
    },
}

/// Judges `containers` once; `baseline` holds each container's restart
/// count when the gate first saw it.
pub fn evaluate(containers: &[Container], baseline: &BTreeMap<String, i64>) -> Verdict {
    if containers.is_empty() {
        return Verdict::Waiting {
            container: None,
            reason: "no service container exists".into(),
        };
    }
    let mut waiting = None;
    for (i, c) in containers.iter().enumerate() {
        let failed = |reason: String| Verdict::Failed {
            container: i,
            reason: format!("service {} {reason}", c.service),
        };
        let before = baseline.get(&c.id).copied().unwrap_or(c.restart_count);
        if c.status == "restarting" {
            return failed(format!(
                "is restart-looping (last exit code {})",
                c.exit_code
            ));
        }
        if c.restart_count > before {
            return failed(format!(
                "restarted {} time(s) during the health gate",
                c.restart_count - before
            ));
        }
        match c.status.as_str() {
            "running" => {}
            "exited" | "dead" => {
                return failed(format!("exited with code {}", c.exit_code));
            }
            other => {
                waiting.get_or_insert(Verdict::Waiting {
                    container: Some(i),
                    reason: format!("service {} is {other}", c.service),
                });
                continue;
            }
        }
        match c.health.as_deref() {
            Some("unhealthy") => return failed("is unhealthy".into()),
            Some("healthy") | None => {}
            Some(other) => {
                waiting.get_or_insert(Verdict::Waiting {
                    container: Some(i),
                    reason: format!("service {} is {other} (healthcheck)", c.service),
                });
            }
        }
    }
    waiting.unwrap_or(Verdict::Ready)
}

/// The HTTP probe: `path` on the host port where `service` publishes
/// `container_port` (else `port` itself) on 127.0.0.1.
pub struct Probe {
    pub service: String,
    pub container_port: i64,
    pub port: i64,
    pub path: String,
}

impl Probe {
    pub fn url(&self, containers: &[Container]) -> String {
        let published = containers
            .iter()
            .find(|c| c.service == self.service)
            .and_then(|c| c.published.get(&format!("{}/tcp", self.container_port)))
            .and_then(|ports| ports.first().copied());
        let port = published.map_or(self.port, i64::from);
        format!("http://127.0.0.1:{port}{}", self.path)
    }
}

pub struct Gate {
    pub project: String,
    pub probe: Option<Probe>,
    pub timeout: Duration,
}

impl Gate {
    /// Waits until the project is ready, or fails with the bad service's
    /// last log lines.
    pub async fn wait(&self, log: &Log, cancel: &CancellationToken) -> Result<(), StepError> {
        log.push(&format!(
            "health gate: waiting up to {}s for every service to be up{}\n",
            self.timeout.as_secs(),
            self.probe
                .as_ref()
                .map(|p| format!(" and {} to answer", p.path))
                .unwrap_or_default()
        ));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| StepError::Failed(format!("health probe client: {e}")))?;
        let start = Instant::now();
        let mut baseline = BTreeMap::new();
        let mut ready_since: Option<Instant> = None;
        let mut last = (String::from("not looked at yet"), None::<String>);
        loop {
            let looked = docker::containers(&self.project).await;
            match looked {
                Ok(containers) => {
                    for c in &containers {
                        baseline.entry(c.id.clone()).or_insert(c.restart_count);
                    }
                    match evaluate(&containers, &baseline) {
                        Verdict::Failed { container, reason } => {
                            log.push(&format!(
                                "health gate: failed after {:.1}s\n",
                                start.elapsed().as_secs_f64()
                            ));
                            return Err(self.failure(&reason, &containers[container].id).await);
                        }
                        Verdict::Waiting { container, reason } => {
                            ready_since = None;
                            last = (reason, container.map(|i| containers[i].id.clone()));
                        }
                        Verdict::Ready => match self.probe(&http, &containers).await {
                            Ok(()) => {
                                let since = *ready_since.get_or_insert_with(Instant::now);
                                if since.elapsed() >= SETTLE {
                                    log.push(&format!(
                                        "health gate: passed after {:.1}s\n",
                                        start.elapsed().as_secs_f64()
                                    ));
                                    return Ok(());
                                }
                            }
                            Err(reason) => {
                                ready_since = None;
                                let blamed = self.probe.as_ref().and_then(|p| {
                                    containers.iter().find(|c| c.service == p.service)
                                });
                                last = (reason, blamed.map(|c| c.id.clone()));
                            }
                        },
                    }
                }
                Err(e) => last = (e, None),
            }
            if start.elapsed() >= self.timeout {
                let reason = format!(
                    "the health gate timed out after {}s: {}",
                    self.timeout.as_secs(),
                    last.0
                );
                return Err(match &last.1 {
                    Some(id) => self.failure(&reason, id).await,
                    None => StepError::Failed(reason),
                });
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(StepError::Cancelled),
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }

    async fn probe(&self, http: &reqwest::Client, containers: &[Container]) -> Result<(), String> {
        let Some(probe) = &self.probe else {
            return Ok(());
        };
        let url = probe.url(containers);
        match http.get(&url).send().await {
            Ok(r) if r.status().is_success() || r.status().is_redirection() => Ok(()),
            Ok(r) => Err(format!("GET {url} answered {}", r.status())),
            Err(e) => Err(format!("GET {url} failed: {e}")),
        }
    }

    async fn failure(&self, reason: &str, container: &str) -> StepError {
        let lines = docker::last_logs(container, LOG_LINES).await;
        StepError::Failed(format!(
            "{reason}; its last log lines:\n{}",
            lines.trim_end()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::docker::parse_inspect;
    use crate::agent::docker::tests::inspect_entry;
    use serde_json::Value;

    fn look(entries: Vec<Value>) -> Vec<Container> {
        parse_inspect(&Value::Array(entries))
    }

    fn first_seen(c: &[Container]) -> BTreeMap<String, i64> {
        c.iter().map(|c| (c.id.clone(), c.restart_count)).collect()
    }

    #[test]
    fn running_services_with_or_without_a_healthcheck_are_ready() {
        let c = look(vec![
            inspect_entry("web", "running", 0, Some("healthy")),
            inspect_entry("db", "running", 3, None),
        ]);
        assert_eq!(evaluate(&c, &first_seen(&c)), Verdict::Ready);
    }

    #[test]
    fn a_starting_healthcheck_or_a_created_container_is_waited_for() {
        let c = look(vec![
            inspect_entry("web", "running", 0, Some("starting")),
            inspect_entry("db", "created", 0, None),
        ]);
        let v = evaluate(&c, &first_seen(&c));
        assert!(
            matches!(&v, Verdict::Waiting { container: Some(0), reason } if reason.contains("web is starting")),
            "{v:?}"
        );
        assert!(matches!(
            evaluate(&[], &BTreeMap::new()),
            Verdict::Waiting {
                container: None,
                ..
            }
        ));
    }

    #[test]
    fn an_exited_unhealthy_or_restarting_service_fails_naming_it() {
        for (entry, says) in [
            (
                inspect_entry("db", "exited", 0, None),
                "db exited with code 1",
            ),
            (
                inspect_entry("db", "running", 0, Some("unhealthy")),
                "db is unhealthy",
            ),
            (
                inspect_entry("db", "restarting", 4, None),
                "db is restart-looping",
            ),
        ] {
            let c = look(vec![inspect_entry("web", "running", 0, None), entry]);
            let v = evaluate(&c, &first_seen(&c));
            assert!(
                matches!(&v, Verdict::Failed { container: 1, reason } if reason.contains(says)),
                "{says}: {v:?}"
            );
        }
    }

    #[test]
    fn a_restart_during_the_gate_fails_though_the_container_runs_again() {
        let before = look(vec![inspect_entry("web", "running", 1, None)]);
        let baseline = first_seen(&before);
        let after = look(vec![inspect_entry("web", "running", 2, None)]);
        let v = evaluate(&after, &baseline);
        assert!(
            matches!(&v, Verdict::Failed { reason, .. } if reason.contains("restarted 1 time")),
            "{v:?}"
        );
        // Restarts from before the gate do not count.
        assert_eq!(evaluate(&before, &baseline), Verdict::Ready);
    }

    #[test]
    fn the_probe_goes_to_the_port_the_service_publishes_else_the_exposed_port() {
        let c = look(vec![inspect_entry("web", "running", 0, None)]);
        let probe = |service: &str, container_port| Probe {
            service: service.into(),
            container_port,
            port: 9000,
            path: "/up".into(),
        };
        assert_eq!(probe("web", 8080).url(&c), "http://127.0.0.1:32768/up");
        assert_eq!(probe("web", 9000).url(&c), "http://127.0.0.1:9000/up");
        assert_eq!(probe("other", 8080).url(&c), "http://127.0.0.1:9000/up");
    }
}
