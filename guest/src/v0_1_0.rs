//! The decisions as `autodeploy:policy@0.1.0` asks them: when a commit or an
//! image digest deploys, and which projects may be auto-deployed at all,
//! with no facts. Under 0.1.0 the host applies the master switch, the toggle,
//! refuse-to-migrate and the agents' kinds itself; under 0.2.0 the functions
//! of `decide` apply them and call these for the rest.

use std::collections::BTreeMap;

use crate::model::{
    CommitDecision, DigestChange, ImageDecision, Lookup, Project, ProjectKind, Verdict,
};

/// Compares the tracked branch's remote head with the last deployed commit.
///
/// No tracked commit yet deploys once, so the project is aligned with its
/// branch; a branch that is gone is an error, never a deploy.
pub fn decide_commit(
    project: &Project,
    remote_head: Option<&str>,
) -> Result<CommitDecision, String> {
    let branch = &project.git_branch;
    let head = remote_head.ok_or_else(|| {
        format!("branch {branch:?} does not exist on the remote; nothing to deploy")
    })?;
    let head = normalize_sha(head)
        .ok_or_else(|| format!("remote head {head:?} of branch {branch:?} is not a commit SHA"))?;
    let last = project.last_tracked_commit.trim().to_ascii_lowercase();

    Ok(if last.is_empty() {
        CommitDecision {
            trigger: true,
            reason: format!(
                "no commit tracked yet: deploying {branch} at {} to align",
                short(&head)
            ),
            record: Some(head),
        }
    } else if last == head {
        CommitDecision {
            trigger: false,
            record: None,
            reason: format!("{branch} is still at {}", short(&head)),
        }
    } else {
        CommitDecision {
            trigger: true,
            reason: format!("{branch} moved from {} to {}", short(&last), short(&head)),
            record: Some(head),
        }
    })
}

/// Compares fresh registry lookups with the digests recorded on the last tick.
///
/// `lookups` has one entry per image the compose file uses now. The first
/// tick (nothing recorded) only seeds; an image seen for the first time is
/// recorded without deploying (adding it was a commit: the git trigger's job);
/// a failed lookup keeps the previous digest so a registry hiccup never causes
/// a false redeploy; an image gone from the file drops out; any moved digest
/// deploys.
pub fn decide_images(
    project: &Project,
    prior: &BTreeMap<String, String>,
    lookups: &BTreeMap<String, Lookup>,
) -> ImageDecision {
    if project.kind != ProjectKind::Compose {
        return ImageDecision {
            trigger: false,
            record: prior.clone(),
            moved: vec![],
            added: vec![],
            reason: "only compose projects watch image digests".into(),
        };
    }
    let seeding = prior.is_empty();
    let mut record = BTreeMap::new();
    let mut moved = Vec::new();
    let mut added = Vec::new();
    let mut failed = Vec::new();

    for (image, lookup) in lookups {
        let fresh = match lookup {
            Lookup::Digest(d) if is_digest(d) => Ok(d),
            Lookup::Digest(d) => Err(format!("registry returned a malformed digest {d:?}")),
            Lookup::Failed(e) => Err(e.clone()),
        };
        match (fresh, prior.get(image)) {
            (Ok(now), Some(before)) => {
                if now != before {
                    moved.push(DigestChange {
                        image: image.clone(),
                        previous: before.clone(),
                        current: now.clone(),
                    });
                }
                record.insert(image.clone(), now.clone());
            }
            (Ok(now), None) => {
                added.push(image.clone());
                record.insert(image.clone(), now.clone());
            }
            (Err(e), before) => {
                if let Some(before) = before {
                    record.insert(image.clone(), before.clone());
                }
                failed.push(format!("{image} ({e})"));
            }
        }
    }
    let dropped: Vec<&str> = prior
        .keys()
        .filter(|image| !lookups.contains_key(*image))
        .map(String::as_str)
        .collect();

    let mut parts = Vec::new();
    if seeding {
        parts.push(format!(
            "first watch: recorded {} image digest(s) without deploying",
            record.len()
        ));
    } else if moved.is_empty() {
        parts.push("no image digest moved".to_string());
    } else {
        let list: Vec<String> = moved
            .iter()
            .map(|m| {
                format!(
                    "{} {} -> {}",
                    m.image,
                    short_digest(&m.previous),
                    short_digest(&m.current)
                )
            })
            .collect();
        parts.push(format!("image digest moved upstream: {}", list.join(", ")));
    }
    if !seeding && !added.is_empty() {
        parts.push(format!(
            "new in the compose file, recorded without deploying: {}",
            added.join(", ")
        ));
    }
    if !failed.is_empty() {
        parts.push(format!(
            "lookup failed, previous digest kept: {}",
            failed.join(", ")
        ));
    }
    if !dropped.is_empty() {
        parts.push(format!(
            "no longer in the compose file: {}",
            dropped.join(", ")
        ));
    }

    ImageDecision {
        trigger: !moved.is_empty(),
        record,
        moved,
        added,
        reason: parts.join("; "),
    }
}

/// May the project's auto-deploy toggle be set to `enable`? Turning it off is
/// always allowed.
pub fn check_auto_deploy(project: &Project, enable: bool) -> Verdict {
    if !enable {
        return Verdict::Allowed("auto-deploy turned off".into());
    }
    match project.kind {
        ProjectKind::Tunnel => Verdict::Refused(
            "tunnel projects have no auto-deploy: they route to a service that runs elsewhere"
                .into(),
        ),
        ProjectKind::DomainOnly => Verdict::Refused(
            "domain_only projects have nothing to deploy, so auto-deploy cannot be enabled".into(),
        ),
        kind => {
            let mut reason = String::from("auto-deploy enabled");
            if project.last_tracked_commit.trim().is_empty() {
                reason.push_str(
                    "; no commit is tracked yet, so the next push or poll deploys once to align",
                );
            }
            if kind == ProjectKind::Compose {
                reason
                    .push_str("; the image watcher's first tick records digests without deploying");
            }
            Verdict::Allowed(reason)
        }
    }
}

/// Can a deploy task be produced for the project? Compose deploys need to
/// know which service and port to expose.
pub fn check_deployable(project: &Project) -> Verdict {
    match project.kind {
        ProjectKind::Tunnel | ProjectKind::DomainOnly => {
            return Verdict::Refused(format!(
                "{} projects have nothing to deploy",
                kind_name(project.kind)
            ));
        }
        ProjectKind::Compose => {
            let service = project
                .expose_service
                .as_deref()
                .map(str::trim)
                .unwrap_or("");
            let mut missing = Vec::new();
            if service.is_empty() {
                missing.push("expose_service is not set".to_string());
            }
            match project.expose_port {
                None => missing.push("expose_port is not set".to_string()),
                Some(p) if p == 0 || p > 65535 => {
                    missing.push(format!("expose_port {p} is not a TCP port (1-65535)"))
                }
                Some(_) => {}
            }
            if !missing.is_empty() {
                return Verdict::Refused(format!(
                    "compose projects need expose_service and expose_port before they can deploy: {}",
                    missing.join(", ")
                ));
            }
        }
        ProjectKind::Deployment | ProjectKind::Image => {}
    }
    Verdict::Allowed(format!(
        "{} project can be deployed",
        kind_name(project.kind)
    ))
}

pub fn kind_name(kind: ProjectKind) -> &'static str {
    kind.name()
}

/// A full SHA-1 (40) or SHA-256 (64) object name, lower-cased.
fn normalize_sha(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    ((s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
}

/// An OCI content digest as registries return it for manifests.
fn is_digest(s: &str) -> bool {
    let hex_len = |h: &str, n: usize| {
        h.len() == n && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    match s.split_once(':') {
        Some(("sha256", h)) => hex_len(h, 64),
        Some(("sha512", h)) => hex_len(h, 128),
        _ => false,
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn short_digest(d: &str) -> &str {
    // "sha256:" plus 12 hex digits is enough to tell digests apart in a reason.
    &d[..d.len().min(19)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn compose() -> Project {
        Project {
            kind: ProjectKind::Compose,
            ..Project::default()
        }
    }

    #[test]
    fn empty_tracked_commit_deploys_once_to_align() {
        let d = decide_commit(&Project::default(), Some(A)).unwrap();
        assert!(d.trigger);
        assert_eq!(d.record.as_deref(), Some(A));
        assert!(d.reason.contains("align"));
    }

    #[test]
    fn unchanged_head_does_not_deploy_and_records_nothing() {
        let p = Project {
            last_tracked_commit: A.to_uppercase(),
            ..Project::default()
        };
        let d = decide_commit(&p, Some(A)).unwrap();
        assert!(!d.trigger);
        assert_eq!(d.record, None);
    }

    #[test]
    fn moved_head_deploys_and_missing_branch_is_an_error() {
        let p = Project {
            last_tracked_commit: A.into(),
            ..Project::default()
        };
        let d = decide_commit(&p, Some(B)).unwrap();
        assert!(d.trigger && d.record.as_deref() == Some(B));
        assert!(
            decide_commit(&p, None)
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            decide_commit(&p, Some("HEAD"))
                .unwrap_err()
                .contains("not a commit SHA")
        );
    }

    #[test]
    fn first_image_tick_seeds_without_deploying() {
        let lookups = BTreeMap::from([("redis:7".to_string(), Lookup::Digest(digest('a')))]);
        let d = decide_images(&compose(), &BTreeMap::new(), &lookups);
        assert!(!d.trigger);
        assert_eq!(d.record["redis:7"], digest('a'));
    }

    #[test]
    fn moved_digest_deploys_failed_lookup_keeps_previous_and_gone_images_drop() {
        let prior = BTreeMap::from([
            ("a:1".to_string(), digest('a')),
            ("b:1".to_string(), digest('b')),
            ("gone:1".to_string(), digest('c')),
        ]);
        let lookups = BTreeMap::from([
            ("a:1".to_string(), Lookup::Digest(digest('d'))),
            ("b:1".to_string(), Lookup::Failed("timeout".into())),
            ("new:1".to_string(), Lookup::Digest(digest('e'))),
        ]);
        let d = decide_images(&compose(), &prior, &lookups);
        assert!(d.trigger);
        assert_eq!(d.moved.len(), 1);
        assert_eq!(d.record.len(), 3);
        assert_eq!(d.record["b:1"], digest('b'));
        assert_eq!(d.added, ["new:1"]);
        assert!(!d.record.contains_key("gone:1"));
    }

    #[test]
    fn malformed_digest_counts_as_a_failed_lookup() {
        let prior = BTreeMap::from([("a:1".to_string(), digest('a'))]);
        let lookups = BTreeMap::from([("a:1".to_string(), Lookup::Digest("latest".into()))]);
        let d = decide_images(&compose(), &prior, &lookups);
        assert!(!d.trigger);
        assert_eq!(d.record, prior);
        assert!(d.reason.contains("malformed"));
    }

    #[test]
    fn toggle_and_deployability_rules() {
        let tunnel = Project {
            kind: ProjectKind::Tunnel,
            ..Project::default()
        };
        let domain = Project {
            kind: ProjectKind::DomainOnly,
            ..Project::default()
        };
        assert!(matches!(
            check_auto_deploy(&tunnel, true),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            check_auto_deploy(&domain, true),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            check_auto_deploy(&domain, false),
            Verdict::Allowed(_)
        ));
        assert!(
            matches!(check_deployable(&compose()), Verdict::Refused(r) if r.contains("expose_service"))
        );
        let ready = Project {
            expose_service: Some("web".into()),
            expose_port: Some(80),
            ..compose()
        };
        assert!(matches!(check_deployable(&ready), Verdict::Allowed(_)));
    }
}
