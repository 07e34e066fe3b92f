//! One deploy: bring the target state up (checkout, compose files, pull or
//! build, `up`), record what runs, pass the health gate; on failure or
//! cancel, bring the previous successful state back as the project's
//! rollback setting says.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::checkout::checkout;
use super::claim::{Claimed, Rollback, Target};
use super::compose::{self, StepError};
use super::docker;
use super::files::{self, APP_SERVICE};
use super::health::{Gate, Probe};
use super::link::{Link, Report, Status};
use super::logs::Log;
use crate::store::ProjectType;

/// What runs after `up`, as Docker reports it.
#[derive(Debug, Clone, Default)]
pub struct Ran {
    pub commit: Option<String>,
    /// The image as the project names it → `sha256:…` (a repository digest
    /// for a pulled image; the image id for one built here).
    pub digests: BTreeMap<String, String>,
}

pub struct Deploy<'a> {
    pub link: &'a Link,
    pub claim: &'a Claimed,
    /// The project's directory (checkout and generated files).
    pub dir: PathBuf,
    pub log: Log,
    /// Bounds bringing the target up and its health gate.
    pub timeout: Duration,
}

/// A state written out and ready for compose.
struct Prepared {
    commit: Option<String>,
    files: Vec<String>,
    /// Pinned `repo@digest` → the reference the project names.
    originals: BTreeMap<String, String>,
    /// A deployment project whose image is built (not pulled).
    build: bool,
    /// Its image is here already (a restore or redeploy): no build.
    reuse: bool,
}

impl Deploy<'_> {
    fn name(&self) -> String {
        compose_project_name(&self.claim.project.name, self.claim.project.id)
    }

    /// Runs the deploy; the report to send.
    pub async fn run(&self, cancel: &CancellationToken) -> Report {
        let mut ran = None;
        let target = self.claim.target();
        let outcome =
            match tokio::time::timeout(self.timeout, self.apply(&target, cancel, &mut ran)).await {
                Ok(r) => r,
                Err(_) => Err(StepError::Failed(format!(
                    "the deploy did not finish within {:?}",
                    self.timeout
                ))),
            };
        let mut report = Report::status(Status::Succeeded);
        if let Some(ran) = ran {
            report.ran_commit = ran.commit;
            report.ran_digests = Some(ran.digests);
        }
        let error = match outcome {
            Ok(()) => {
                report.log_tail = Some(self.log.tail());
                return report;
            }
            Err(e) => e,
        };
        let rollback = self.claim.project.rollback;
        let restore = self.claim.restore.as_ref();
        let tried = match restore {
            Some(r) if restores(&error, rollback) => Some(self.restore(r).await),
            _ => None,
        };
        let (status, message) = verdict(
            &error,
            rollback,
            self.claim.project.id,
            restore.map(|r| (r.deployment, tried.as_ref())),
        );
        self.log.push(&format!("{message}\n"));
        report.status = status;
        report.error = Some(message);
        report.log_tail = Some(self.log.tail());
        report
    }

    /// Brings the deployment `r` recorded back; it must pass the gate too.
    async fn restore(&self, r: &super::claim::Restore) -> Result<(), StepError> {
        self.log.push(&format!(
            "restoring deployment {} (commit {}, digests {:?})\n",
            r.deployment,
            r.commit.as_deref().unwrap_or("none"),
            r.digests.as_ref().map(|d| d.values().collect::<Vec<_>>())
        ));
        // A restore is not cancellable: it is what a cancel ends with.
        let never = CancellationToken::new();
        let mut ran = None;
        self.apply(&r.target(), &never, &mut ran).await
    }

    /// Brings `target` up and through the gate; `ran` gets what ran after `up`.
    async fn apply(
        &self,
        target: &Target,
        cancel: &CancellationToken,
        ran: &mut Option<Ran>,
    ) -> Result<(), StepError> {
        let prepared = self.prepare(target).await?;
        let name = self.name();
        let project = compose::Project {
            dir: &self.dir,
            name: &name,
            files: &prepared.files,
        };
        let fetch: &[&str] = match (prepared.build, prepared.reuse) {
            (true, true) => &[],
            (true, false) => &["build"],
            (false, _) => &["pull"],
        };
        for step in [fetch, &["up", "-d", "--remove-orphans"][..]] {
            if !step.is_empty() {
                compose::run(&project, step, &self.log, cancel).await?;
            }
        }
        let now = self.ran(&prepared).await;
        self.log.push(&format!(
            "running: commit {}, images {:?}\n",
            now.commit.as_deref().unwrap_or("none"),
            now.digests
        ));
        *ran = Some(now);
        self.gate().wait(&self.log, cancel).await
    }

    async fn prepare(&self, target: &Target) -> Result<Prepared, StepError> {
        let p = &self.claim.project;
        let fail = |e: String| {
            self.log.push(&format!("{e}\n"));
            StepError::Failed(e)
        };
        let mut prepared = Prepared {
            commit: None,
            files: Vec::new(),
            originals: BTreeMap::new(),
            build: false,
            reuse: false,
        };
        match p.project_type {
            ProjectType::Compose => {
                let commit = self.checkout(target).await?;
                prepared.commit = Some(commit);
                prepared.files.push(p.compose_file_path.clone());
            }
            ProjectType::Image => {
                let (Some(image), Some(port)) = (&p.image_ref, p.container_port) else {
                    return Err(fail(
                        "image projects need image_ref and container_port".into(),
                    ));
                };
                let text = files::image_compose(image, p.expose_port.unwrap_or(port), port);
                files::write(&self.dir, files::IMAGE_FILE, &text)
                    .map_err(|e| fail(e.to_string()))?;
                prepared.files.push(files::IMAGE_FILE.into());
            }
            ProjectType::Deployment => {
                check_dockerfile_path(&p.dockerfile_path).map_err(fail)?;
                let commit = self.checkout(target).await?;
                let tag = format!("{}:{}", self.name(), &commit[..commit.len().min(12)]);
                // No port: a worker that serves nothing.
                let ports = p
                    .container_port
                    .or(p.expose_port)
                    .map(|container| (p.expose_port.unwrap_or(container), container));
                let text = files::build_compose(&p.dockerfile_path, &tag, ports);
                files::write(&self.dir, files::BUILD_FILE, &text)
                    .map_err(|e| fail(e.to_string()))?;
                prepared.files.push(files::BUILD_FILE.into());
                prepared.build = true;
                // The exact image recorded for this commit, when it is still
                // here: a rebuild could differ.
                if let Some(id) = target.digests.as_ref().and_then(|d| d.get(&tag))
                    && docker::has_image(id).await
                {
                    docker::tag(id, &tag).await.map_err(fail)?;
                    self.log
                        .push(&format!("using image {id} built before as {tag}\n"));
                    prepared.reuse = true;
                }
                prepared.commit = Some(commit);
                return Ok(prepared);
            }
            other => {
                return Err(fail(format!(
                    "this agent deploys deployment, compose and image projects; a {} project is not deployed",
                    crate::store::enum_str(&other)
                )));
            }
        }
        if let Some(digests) = target.digests.as_ref().filter(|d| !d.is_empty()) {
            let main = &prepared.files[0];
            let text = files::read(&self.dir, main).map_err(|e| fail(e.to_string()))?;
            match files::pins_override(main, &text, digests).map_err(|e| fail(e.to_string()))? {
                Some(files::Pins {
                    text: pins,
                    originals,
                }) => {
                    files::write(&self.dir, files::PINS_FILE, &pins)
                        .map_err(|e| fail(e.to_string()))?;
                    self.log
                        .push(&format!("pinned by digest ({}):\n{pins}", files::PINS_FILE));
                    prepared.files.push(files::PINS_FILE.into());
                    prepared.originals = originals;
                }
                None => self.log.push(&format!(
                    "no service of {main} runs a decided image; nothing pinned\n"
                )),
            }
        }
        Ok(prepared)
    }

    async fn checkout(&self, target: &Target) -> Result<String, StepError> {
        match checkout(self.link, self.claim, target.commit.as_deref(), &self.dir).await {
            Ok(commit) => {
                self.log.push(&format!("checked out {commit}\n"));
                Ok(commit)
            }
            Err(e) => {
                self.log.push(&format!("{e}\n"));
                Err(StepError::Failed(e))
            }
        }
    }

    /// Each service's image as Docker reports it now.
    async fn ran(&self, prepared: &Prepared) -> Ran {
        let mut digests = BTreeMap::new();
        match docker::containers(&self.name()).await {
            Ok(containers) => {
                for c in containers {
                    let named = prepared
                        .originals
                        .get(&c.image_ref)
                        .cloned()
                        .unwrap_or_else(|| c.image_ref.clone());
                    let digest = if prepared.build {
                        c.image_id.clone()
                    } else {
                        let repo = files::repository(&named).to_string();
                        docker::repo_digests(&c.image_id)
                            .await
                            .into_iter()
                            .find_map(|d| {
                                let (r, digest) = d.split_once('@')?;
                                (r == repo).then(|| digest.to_string())
                            })
                            .unwrap_or_else(|| c.image_id.clone())
                    };
                    digests.insert(named, digest);
                }
            }
            Err(e) => self.log.push(&format!("cannot read what runs: {e}\n")),
        }
        Ran {
            commit: prepared.commit.clone(),
            digests,
        }
    }

    fn gate(&self) -> Gate {
        let p = &self.claim.project;
        let probe = p.health_probe_path.as_ref().and_then(|path| {
            let (service, container_port, port) = match p.project_type {
                ProjectType::Compose => (p.expose_service.clone()?, p.expose_port?, p.expose_port?),
                _ => {
                    let c = p.container_port.or(p.expose_port)?;
                    (APP_SERVICE.to_string(), c, p.expose_port.unwrap_or(c))
                }
            };
            Some(Probe {
                service,
                container_port,
                port,
                path: path.clone(),
            })
        });
        Gate {
            project: self.name(),
            probe,
            timeout: Duration::from_secs(p.health_timeout_seconds.max(1)),
        }
    }
}

/// Whether a deploy that ended with `error` brings the previous state back.
fn restores(error: &StepError, rollback: Rollback) -> bool {
    matches!(error, StepError::Cancelled) || rollback == Rollback::Auto
}

/// What a deploy that ended with `error` reports: `restore` is the
/// deployment there is to restore and, when that was tried, how it went.
fn verdict(
    error: &StepError,
    rollback: Rollback,
    project: i64,
    restore: Option<(i64, Option<&Result<(), StepError>>)>,
) -> (Status, String) {
    match (error, restore) {
        (StepError::Cancelled, None) => (
            Status::Cancelled,
            "the deploy was cancelled; there is no earlier successful deployment to restore".into(),
        ),
        (StepError::Cancelled, Some((n, Some(Ok(()))))) => (
            Status::Cancelled,
            format!("the deploy was cancelled; deployment {n} was restored"),
        ),
        (StepError::Cancelled, Some((n, tried))) => (
            Status::Cancelled,
            format!(
                "the deploy was cancelled; restoring deployment {n} failed: {}",
                tried
                    .and_then(|t| t.as_ref().err())
                    .map_or_else(|| "it was not tried".to_string(), |e| e.to_string())
            ),
        ),
        (StepError::Failed(why), Some((n, Some(Ok(()))))) => (
            Status::RolledBack,
            format!("{why}\nrolled back: deployment {n} was restored"),
        ),
        (StepError::Failed(why), Some((n, Some(Err(e))))) => (
            Status::Failed,
            format!("{why}\nrolling back to deployment {n} failed too: {e}"),
        ),
        (StepError::Failed(why), Some((n, None))) if rollback == Rollback::Notify => (
            Status::Failed,
            format!(
                "{why}\na rollback to deployment {n} is suggested: autodeploy project redeploy {project} --from {n}"
            ),
        ),
        (StepError::Failed(why), _) => (Status::Failed, why.clone()),
    }
}

/// The compose project name: the same on every deploy, so named volumes
/// and containers are reused; lower-case letters, digits, `-` and `_` only.
pub fn compose_project_name(name: &str, id: i64) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("autodeploy-{clean}-{id}")
}

/// A Dockerfile path is relative and stays inside the repository.
fn check_dockerfile_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty()
        || p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "dockerfile_path {path:?} must be a relative path inside the repository"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_paths_stay_inside_the_repository() {
        assert!(check_dockerfile_path("Dockerfile").is_ok());
        assert!(check_dockerfile_path("./docker/app.Dockerfile").is_ok());
        for bad in ["", "/etc/passwd", "../Dockerfile", "a/../../b"] {
            assert!(check_dockerfile_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_rollback_setting_restores_or_reports_as_it_says() {
        let failed = StepError::Failed("service web exited with code 1".into());
        // auto restores; notify and off do not; a cancel always does.
        assert!(restores(&failed, Rollback::Auto));
        assert!(!restores(&failed, Rollback::Notify));
        assert!(!restores(&failed, Rollback::Off));
        assert!(restores(&StepError::Cancelled, Rollback::Off));

        let ok = Ok(());
        let (status, error) = verdict(&failed, Rollback::Auto, 3, Some((7, Some(&ok))));
        assert_eq!(status, Status::RolledBack);
        assert!(
            error.starts_with("service web exited") && error.ends_with("deployment 7 was restored")
        );
        let bad = Err(StepError::Failed("pull failed".into()));
        let (status, error) = verdict(&failed, Rollback::Auto, 3, Some((7, Some(&bad))));
        assert_eq!(status, Status::Failed);
        assert!(
            error.ends_with("rolling back to deployment 7 failed too: pull failed"),
            "{error}"
        );
        let (status, error) = verdict(&failed, Rollback::Notify, 3, Some((7, None)));
        assert_eq!(status, Status::Failed);
        assert!(
            error.ends_with("autodeploy project redeploy 3 --from 7"),
            "{error}"
        );
        let (status, error) = verdict(&failed, Rollback::Off, 3, Some((7, None)));
        assert_eq!(
            (status, error.as_str()),
            (Status::Failed, "service web exited with code 1")
        );
        // Nothing succeeded before: nothing to restore, whatever the setting.
        let (status, _) = verdict(&failed, Rollback::Auto, 3, None);
        assert_eq!(status, Status::Failed);

        let (status, error) = verdict(
            &StepError::Cancelled,
            Rollback::Off,
            3,
            Some((7, Some(&ok))),
        );
        assert_eq!(status, Status::Cancelled);
        assert!(error.ends_with("deployment 7 was restored"), "{error}");
        let (status, _) = verdict(&StepError::Cancelled, Rollback::Auto, 3, None);
        assert_eq!(status, Status::Cancelled);
    }

    #[test]
    fn project_names_are_what_compose_accepts() {
        assert_eq!(
            compose_project_name("My App.v2", 7),
            "autodeploy-my-app-v2-7"
        );
    }
}
