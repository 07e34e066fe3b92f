//! The wit-bindgen layer of `autodeploy:policy/decisions@0.2.0`, as a macro
//! so that every policy crate shares it: it converts the WIT types to the
//! contract's plain types and back, and makes no decision.

/// Exports `autodeploy:policy/decisions@0.2.0` from a wasm32 build, answering
/// every call with a [`Decisions`](crate::Decisions) implementation.
///
/// `$wit` is the folder of the 0.2.0 WIT package, relative to the invoking
/// crate's manifest (as `wit_bindgen::generate!` reads it); `$policy` is the
/// type implementing `Decisions`, as a path valid where the macro is invoked.
/// The invoking crate needs `wit-bindgen` as a wasm32 dependency. Invoke it
/// once, inside a module of its own: it defines `exports`, `wit` and
/// `Exported` there.
///
/// ```ignore
/// #[cfg(target_arch = "wasm32")]
/// mod component {
///     autodeploy_guest::export_policy_v0_2_0!(
///         "../../policy-contract/wit/policy@0.2.0",
///         crate::SyncWindows
///     );
/// }
/// ```
#[macro_export]
macro_rules! export_policy_v0_2_0 {
    ($wit:literal, $policy:ty $(,)?) => {
        ::wit_bindgen::generate!({
            path: $wit,
            world: "policy",
        });

        use self::exports::autodeploy::policy::decisions as wit;

        struct Exported;

        impl wit::Guest for Exported {
            fn policy_info() -> wit::PolicyMeta {
                let meta = <$policy as $crate::Decisions>::policy_info();
                wit::PolicyMeta {
                    name: meta.name,
                    version: meta.version,
                }
            }

            fn parse_compose(yaml: String) -> Result<wit::ComposeImages, String> {
                <$policy as $crate::Decisions>::parse_compose(&yaml).map(|c| wit::ComposeImages {
                    images: c.images,
                    skipped: c.skipped,
                })
            }

            fn watch_plan(project: wit::Project, facts: wit::Facts) -> wit::WatchedTriggers {
                let p = <$policy as $crate::Decisions>::watch_plan(&project.into(), &facts.into());
                wit::WatchedTriggers {
                    poll_commits: p.poll_commits,
                    reconcile_pushes: p.reconcile_pushes,
                    watch_images: p.watch_images,
                    reason: p.reason,
                }
            }

            fn decide_commit(
                project: wit::Project,
                facts: wit::Facts,
                source: wit::TriggerSource,
                remote_head: Option<String>,
            ) -> Result<wit::CommitDecision, String> {
                <$policy as $crate::Decisions>::decide_commit(
                    &project.into(),
                    &facts.into(),
                    source.into(),
                    remote_head.as_deref(),
                )
                .map(|d| wit::CommitDecision {
                    trigger: d.trigger,
                    record: d.record,
                    reason: d.reason,
                })
            }

            fn decide_images(
                project: wit::Project,
                facts: wit::Facts,
                prior: Vec<wit::ImageDigest>,
                lookups: Vec<wit::ImageLookup>,
            ) -> wit::ImageDecision {
                let prior: ::std::collections::BTreeMap<String, String> =
                    prior.into_iter().map(|d| (d.image, d.digest)).collect();
                let lookups: ::std::collections::BTreeMap<String, $crate::model::Lookup> = lookups
                    .into_iter()
                    .map(|l| {
                        let result = match l.result {
                            wit::LookupResult::Digest(d) => $crate::model::Lookup::Digest(d),
                            wit::LookupResult::Failed(e) => $crate::model::Lookup::Failed(e),
                        };
                        (l.image, result)
                    })
                    .collect();
                let d = <$policy as $crate::Decisions>::decide_images(&project.into(), &facts.into(), &prior, &lookups);
                wit::ImageDecision {
                    trigger: d.trigger,
                    record: d
                        .record
                        .into_iter()
                        .map(|(image, digest)| wit::ImageDigest { image, digest })
                        .collect(),
                    moved: d
                        .moved
                        .into_iter()
                        .map(|m| wit::DigestChange {
                            image: m.image,
                            previous: m.previous,
                            current: m.current,
                        })
                        .collect(),
                    added: d.added,
                    reason: d.reason,
                }
            }

            fn check_auto_deploy(project: wit::Project, facts: wit::Facts, enable: bool) -> wit::Verdict {
                <$policy as $crate::Decisions>::check_auto_deploy(&project.into(), &facts.into(), enable).into()
            }

            fn check_deployable(
                project: wit::Project,
                facts: wit::Facts,
                source: wit::TriggerSource,
            ) -> wit::Verdict {
                <$policy as $crate::Decisions>::check_deployable(&project.into(), &facts.into(), source.into()).into()
            }
        }

        impl From<wit::ProjectKind> for $crate::model::ProjectKind {
            fn from(k: wit::ProjectKind) -> Self {
                match k {
                    wit::ProjectKind::Deployment => $crate::model::ProjectKind::Deployment,
                    wit::ProjectKind::Compose => $crate::model::ProjectKind::Compose,
                    wit::ProjectKind::Image => $crate::model::ProjectKind::Image,
                    wit::ProjectKind::Tunnel => $crate::model::ProjectKind::Tunnel,
                    wit::ProjectKind::DomainOnly => $crate::model::ProjectKind::DomainOnly,
                }
            }
        }

        impl From<wit::Project> for $crate::model::Project {
            fn from(p: wit::Project) -> Self {
                $crate::model::Project {
                    id: p.id,
                    name: p.name,
                    kind: p.kind.into(),
                    git_source: match p.git_source {
                        wit::GitSource::Hosted => $crate::model::GitSource::Hosted,
                        wit::GitSource::External => $crate::model::GitSource::External,
                    },
                    git_branch: p.git_branch,
                    auto_deploy_enabled: p.auto_deploy_enabled,
                    last_tracked_commit: p.last_tracked_commit,
                    expose_service: p.expose_service,
                    expose_port: p.expose_port,
                    labels: p.labels.into_iter().map(|l| (l.key, l.value)).collect(),
                }
            }
        }

        impl From<wit::Facts> for $crate::model::Facts {
            fn from(f: wit::Facts) -> Self {
                $crate::model::Facts {
                    auto_deploy_master_enabled: f.auto_deploy_master_enabled,
                    now_unix_seconds: f.now_unix_seconds,
                    config: f.config,
                    pinned_node: f.pinned_node.map(|n| $crate::model::PinnedNode {
                        name: n.name,
                        state: match n.state {
                            wit::NodeState::Online => $crate::model::NodeState::Online,
                            wit::NodeState::Offline => $crate::model::NodeState::Offline,
                        },
                    }),
                    agent_kinds: f.agent_kinds.into_iter().map(Into::into).collect(),
                }
            }
        }

        impl From<wit::TriggerSource> for $crate::model::TriggerSource {
            fn from(s: wit::TriggerSource) -> Self {
                match s {
                    wit::TriggerSource::Manual => $crate::model::TriggerSource::Manual,
                    wit::TriggerSource::AutoPoll => $crate::model::TriggerSource::AutoPoll,
                    wit::TriggerSource::AutoPush => $crate::model::TriggerSource::AutoPush,
                    wit::TriggerSource::AutoImage => $crate::model::TriggerSource::AutoImage,
                }
            }
        }

        impl From<$crate::model::Verdict> for wit::Verdict {
            fn from(v: $crate::model::Verdict) -> Self {
                match v {
                    $crate::model::Verdict::Allowed(r) => wit::Verdict::Allowed(r),
                    $crate::model::Verdict::Refused(r) => wit::Verdict::Refused(r),
                }
            }
        }

        export!(Exported);
    };
}
