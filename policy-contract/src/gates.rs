//! The gates every policy of this project starts from: the master switch and
//! the per-project toggle, and which triggers watch which projects. The
//! default policy decides with them (0.2.0), and the host applies them
//! around a 0.1.0 component, which has no say in them.

use crate::model::{Facts, GitSource, Project, ProjectKind, WatchPlan};

/// Why automatic deploys of `project` are held right now, if they are: the
/// operator's master switch, then the project's own toggle.
pub fn paused(project: &Project, facts: &Facts) -> Option<&'static str> {
    if !facts.auto_deploy_master_enabled {
        Some("auto-deploy is paused (master switch off)")
    } else if !project.auto_deploy_enabled {
        Some("auto-deploy is off for this project")
    } else {
        None
    }
}

/// Which automatic triggers look at the project: its repository (polled when
/// external, reconciled after pushes when hosted) and, for compose projects,
/// the digests of the compose file's images. Nothing while auto-deploy is
/// paused or off, and nothing for kinds with nothing to deploy.
pub fn watch_plan(project: &Project, facts: &Facts) -> WatchPlan {
    let nothing = |reason: String| WatchPlan {
        poll_commits: false,
        reconcile_pushes: false,
        watch_images: false,
        reason,
    };
    if let Some(why) = paused(project, facts) {
        return nothing(format!("{why}: no trigger watches this project"));
    }
    if matches!(project.kind, ProjectKind::Tunnel | ProjectKind::DomainOnly) {
        return nothing(format!(
            "{} projects have nothing to deploy: no trigger watches them",
            project.kind.name()
        ));
    }
    let poll_commits = project.git_source == GitSource::External;
    let reconcile_pushes = project.git_source == GitSource::Hosted;
    let watch_images = project.kind == ProjectKind::Compose;
    let mut watched = vec![if poll_commits {
        "polling the remote branch"
    } else {
        "pushes to the hosted branch"
    }];
    if watch_images {
        watched.push("the compose file's image digests");
    }
    WatchPlan {
        poll_commits,
        reconcile_pushes,
        watch_images,
        reason: format!("watching {}", watched.join(" and ")),
    }
}
