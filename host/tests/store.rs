//! The store on a real SQLite file, or a real PostgreSQL database with
//! `AUTODEPLOY_TEST_DATABASE=postgres`: a trigger's deployment and the
//! project's tracked state are written together, a queued deployment moves to
//! the newest target, a failure before the node leaves the tracked state
//! alone and folds into one row, history keeps every source, and every
//! column type reads back the same on both backends.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use autodeploy::store::{
    DecisionCall, DecisionQuery, DecisionRecord, DeploySource, DeployStatus, EventKind, GitSource,
    ProjectFields, ProjectType, SqlStore, Store, StoreError, TriggerWrite,
};

fn fields(name: &str) -> ProjectFields {
    ProjectFields {
        name: name.into(),
        project_type: ProjectType::Compose,
        git_source: GitSource::Hosted,
        git_url: None,
        git_branch: "main".into(),
        compose_file_path: "docker-compose.yml".into(),
        expose_service: Some("web".into()),
        expose_port: Some(80),
        auto_deploy_enabled: true,
        image_ref: None,
        container_port: None,
        labels: Default::default(),
        deploy: Default::default(),
    }
}

fn push(project_id: i64, sha: &str) -> TriggerWrite {
    TriggerWrite {
        project_id,
        source: DeploySource::AutoPush,
        target_commit: Some(sha.into()),
        target_digests: None,
        reason: format!("main moved to {sha}"),
        failure: None,
        node_id: None,
        policy_name: "p".into(),
        policy_version: "1".into(),
        policy_sha256: "0".repeat(64),
        track_commit: Some(sha.into()),
        track_digests: None,
        decided_on_commit: None,
        decided_with_auto_deploy: None,
        decisions: Vec::new(),
        from_deployment: None,
    }
}

fn failing(project_id: i64, sha: &str, error: &str) -> TriggerWrite {
    TriggerWrite {
        failure: Some(error.into()),
        ..push(project_id, sha)
    }
}

async fn connect(name: &str) -> Arc<SqlStore> {
    let url = common::db::database_url(name);
    Arc::new(SqlStore::connect(&url).await.unwrap())
}

async fn open(name: &str) -> (Arc<SqlStore>, i64) {
    let store = connect(name).await;
    let p = store
        .create_project(&fields("web"), None, None)
        .await
        .unwrap();
    (store, p.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tracked_state_and_deployments_move_together() {
    let store = connect("store").await;
    let p = store
        .create_project(&fields("web"), None, None)
        .await
        .unwrap();

    // 40 concurrent pushes: one queued deployment, aimed at whichever push
    // committed last, and the tracked SHA is that same commit.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .record_trigger(&push(p.id, &format!("{i:040x}")))
                .await
                .unwrap()
        });
    }
    while tasks.join_next().await.is_some() {}
    let deps = store.deployments(p.id, 100).await.unwrap();
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].trigger_count, 40);
    let project = store.project(p.id).await.unwrap();
    assert_eq!(
        deps[0].target_commit.as_deref(),
        Some(project.last_tracked_commit_sha.as_str())
    );

    // A trigger that fails before the node is its own deployment and leaves
    // the tracked state where it was, so the next tick tries that commit again.
    let tracked = store.project(p.id).await.unwrap().last_tracked_commit_sha;
    let failed = store
        .record_trigger(&failing(p.id, &"f".repeat(40), "refused"))
        .await
        .unwrap();
    assert_eq!(failed.error.as_deref(), Some("refused"));
    assert_eq!(failed.status, DeployStatus::Failed);
    assert_eq!(
        store.project(p.id).await.unwrap().last_tracked_commit_sha,
        tracked,
        "a failure before the node does not advance the tracked commit"
    );
    assert_eq!(store.deployments(p.id, 100).await.unwrap().len(), 2);

    // Image digests are recorded the same way.
    let mut image = push(p.id, &"f".repeat(40));
    image.source = DeploySource::AutoImage;
    image.target_commit = None;
    image.track_commit = None;
    let map = BTreeMap::from([("redis:7".to_string(), format!("sha256:{}", "a".repeat(64)))]);
    image.target_digests = Some(map.clone());
    image.track_digests = Some(map.clone());
    let d = store.record_trigger(&image).await.unwrap();
    assert_eq!(d.trigger_count, 41, "coalesced into the queued deployment");
    assert_eq!(d.target_digests.as_ref(), Some(&map));
    assert_eq!(
        store
            .project(p.id)
            .await
            .unwrap()
            .last_tracked_image_digests,
        map
    );

    // A failed image trigger leaves the recorded digests alone too.
    let mut image = failing(p.id, &"f".repeat(40), "node n1 is offline");
    image.source = DeploySource::AutoImage;
    image.target_commit = None;
    image.track_commit = None;
    let moved = BTreeMap::from([("redis:7".to_string(), format!("sha256:{}", "b".repeat(64)))]);
    image.target_digests = Some(moved.clone());
    image.track_digests = Some(moved);
    store.record_trigger(&image).await.unwrap();
    assert_eq!(
        store
            .project(p.id)
            .await
            .unwrap()
            .last_tracked_image_digests,
        map
    );
}

#[tokio::test]
async fn identical_failures_fold_into_one_row() {
    let (store, id) = open("store-fold").await;
    let sha = "a".repeat(40);
    let first = store
        .record_trigger(&failing(id, &sha, "compose projects need expose_service"))
        .await
        .unwrap();
    assert_eq!((first.repeat_count, first.trigger_count), (1, 1));
    for _ in 0..4 {
        store
            .record_trigger(&failing(id, &sha, "compose projects need expose_service"))
            .await
            .unwrap();
    }
    let mut manual = failing(id, &sha, "compose projects need expose_service");
    manual.source = DeploySource::Manual;
    let folded = store.record_trigger(&manual).await.unwrap();
    assert_eq!(
        folded.id, first.id,
        "folded into the newest failed deployment"
    );
    assert_eq!(folded.repeat_count, 6);
    assert!(folded.last_seen_at >= first.last_seen_at);
    assert_eq!(
        folded.sources,
        vec![DeploySource::AutoPush, DeploySource::Manual]
    );
    assert_eq!(store.deployments(id, 100).await.unwrap().len(), 1);
    let triggered = store
        .events(Some(id), 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::DeployTriggered)
        .count();
    assert_eq!(triggered, 1, "a folded repeat adds no event");

    // Another error, or another target, is a new row.
    let other_error = store
        .record_trigger(&failing(id, &sha, "node n1 is offline"))
        .await
        .unwrap();
    assert_ne!(other_error.id, first.id);
    let other_target = store
        .record_trigger(&failing(id, &"b".repeat(40), "node n1 is offline"))
        .await
        .unwrap();
    assert_ne!(other_target.id, other_error.id);
    // Two causes taking turns (a push and an image watch, say) each fold
    // into their own row.
    let again = store
        .record_trigger(&failing(id, &sha, "compose projects need expose_service"))
        .await
        .unwrap();
    assert_eq!((again.id, again.repeat_count), (first.id, 7));
    let again = store
        .record_trigger(&failing(id, &"b".repeat(40), "node n1 is offline"))
        .await
        .unwrap();
    assert_eq!((again.id, again.repeat_count), (other_target.id, 2));
    // Only consecutive failures fold: a deployment in between breaks the run.
    let queued = store
        .record_trigger(&push(id, &"c".repeat(40)))
        .await
        .unwrap();
    let after = store
        .record_trigger(&failing(id, &"b".repeat(40), "node n1 is offline"))
        .await
        .unwrap();
    assert!(after.id > queued.id && after.repeat_count == 1);
    assert_eq!(store.deployments(id, 100).await.unwrap().len(), 5);
}

#[tokio::test]
async fn coalescing_keeps_the_first_source_and_reason_and_lists_every_source() {
    let (store, id) = open("store-sources").await;
    let first = store
        .record_trigger(&push(id, &"1".repeat(40)))
        .await
        .unwrap();
    assert_eq!(first.sources, vec![DeploySource::AutoPush]);
    let mut manual = push(id, &"2".repeat(40));
    manual.source = DeploySource::Manual;
    manual.reason = "manual deploy".into();
    manual.target_commit = None;
    manual.track_commit = None;
    store.record_trigger(&manual).await.unwrap();
    let d = store
        .record_trigger(&push(id, &"3".repeat(40)))
        .await
        .unwrap();
    assert_eq!(d.id, first.id);
    assert_eq!(d.trigger_count, 3);
    assert_eq!(
        d.source,
        DeploySource::AutoPush,
        "source stays the first one"
    );
    assert_eq!(
        d.sources,
        vec![DeploySource::AutoPush, DeploySource::Manual],
        "every source once, in order"
    );
    assert_eq!(d.reason, format!("main moved to {}", "1".repeat(40)));
    assert_eq!(d.target_commit.as_deref(), Some("3".repeat(40).as_str()));
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["sources"], serde_json::json!(["auto-push", "manual"]));
    assert_eq!(json["source"], "auto-push");
}

#[tokio::test]
async fn a_trigger_decided_on_a_stale_tracked_commit_writes_nothing() {
    let (store, id) = open("store-stale").await;
    store
        .record_trigger(&push(id, &"1".repeat(40)))
        .await
        .unwrap();
    let mut late = push(id, &"2".repeat(40));
    late.decided_on_commit = Some(String::new());
    let err = store.record_trigger(&late).await.unwrap_err();
    assert!(matches!(err, StoreError::Stale(p) if p == id), "{err}");
    assert_eq!(
        store.project(id).await.unwrap().last_tracked_commit_sha,
        "1".repeat(40)
    );
    late.decided_on_commit = Some("1".repeat(40));
    let d = store.record_trigger(&late).await.unwrap();
    assert_eq!(d.trigger_count, 2);
}

#[tokio::test]
async fn a_trigger_decided_before_auto_deploy_was_switched_off_writes_nothing() {
    let (store, id) = open("store-toggled").await;
    let enabled = store.project(id).await.unwrap().fields.auto_deploy_enabled;
    let mut late = push(id, &"3".repeat(40));
    late.decided_with_auto_deploy = Some(!enabled);
    let err = store.record_trigger(&late).await.unwrap_err();
    assert!(matches!(err, StoreError::Stale(p) if p == id), "{err}");
    assert!(store.deployments(id, 10).await.unwrap().is_empty());
    assert_eq!(store.project(id).await.unwrap().last_tracked_commit_sha, "");
    late.decided_with_auto_deploy = Some(enabled);
    let d = store.record_trigger(&late).await.unwrap();
    assert_eq!(d.target_commit.as_deref(), Some("3".repeat(40).as_str()));
}

#[tokio::test]
async fn event_kinds_are_a_typed_set() {
    for kind in EventKind::ALL {
        let text = kind.to_string();
        assert_eq!(text.parse::<EventKind>().unwrap(), *kind);
        assert_eq!(serde_json::to_value(kind).unwrap(), text.as_str());
        assert_eq!(
            serde_json::from_value::<EventKind>(serde_json::Value::String(text.clone())).unwrap(),
            *kind
        );
    }
    assert!("deploy.exploded".parse::<EventKind>().is_err());
    let (store, id) = open("store-events").await;
    store
        .log_event(Some(id), EventKind::PollFailed, "unreachable")
        .await
        .unwrap();
    let events = store.events(Some(id), 10).await.unwrap();
    assert_eq!(events[0].kind, EventKind::PollFailed);
    assert_eq!(events[1].kind, EventKind::ProjectCreated);
}

#[tokio::test]
async fn a_queued_deployment_failed_by_an_offline_node_gives_its_change_back() {
    let (store, id) = open("store-offline").await;
    store
        .record_trigger(&push(id, &"1".repeat(40)))
        .await
        .unwrap();
    // The first deployment ran (claimed, succeeded) on n1.
    let node = store
        .add_node("n1", "hash", &Default::default())
        .await
        .unwrap();
    let claim = store.claim(node.id).await.unwrap().expect("a claim");
    store
        .report(
            node.id,
            claim.deployment.id,
            DeployStatus::Succeeded,
            None,
            None,
        )
        .await
        .unwrap();
    // The next push is queued for the pinned node, which then goes silent.
    let mut next = push(id, &"2".repeat(40));
    next.node_id = Some(node.id);
    let queued = store.record_trigger(&next).await.unwrap();
    assert_eq!(
        store.project(id).await.unwrap().last_tracked_commit_sha,
        "2".repeat(40)
    );
    let failed = store
        .fail_deployments_of_offline_nodes(autodeploy::store::now() + 1000)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, queued.id);
    assert!(
        failed[0]
            .error
            .as_deref()
            .unwrap()
            .contains("refusing to migrate")
    );
    assert_eq!(
        store.project(id).await.unwrap().last_tracked_commit_sha,
        "1".repeat(40),
        "the change that never reached its node is tried again"
    );
}

fn decision(project_id: i64, at: i64) -> DecisionRecord {
    DecisionRecord {
        at,
        call: DecisionCall::DecideCommit,
        project_id: Some(project_id),
        input: r#"{"call":"decide-commit","input":{}}"#.into(),
        output: r#"{"ok":{"trigger":true,"record":null,"reason":"r"}}"#.into(),
        policy_name: "p".into(),
        policy_version: "1".into(),
        policy_sha256: "0".repeat(64),
        policy_wit_version: "0.2.0".into(),
    }
}

#[tokio::test]
async fn a_trigger_writes_the_decisions_that_made_it_in_its_transaction() {
    let (store, id) = open("store-decisions").await;
    let mut w = push(id, &"1".repeat(40));
    w.decisions = vec![decision(id, 100), decision(id, 101)];
    let d = store.record_trigger(&w).await.unwrap();
    let all = DecisionQuery {
        limit: 100,
        ..DecisionQuery::default()
    };
    let listed = store.decisions(&all).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|x| x.deployment_id == Some(d.id)));
    let mut ids: Vec<i64> = listed.iter().map(|x| x.id).collect();
    ids.reverse();
    assert_eq!(d.decision_ids, ids, "oldest first");
    assert_eq!(
        store.deployments(id, 10).await.unwrap()[0].decision_ids,
        ids
    );

    // A write refused as stale writes none of its decisions either.
    let mut late = push(id, &"2".repeat(40));
    late.decided_on_commit = Some(String::new());
    late.decisions = vec![decision(id, 102)];
    assert!(store.record_trigger(&late).await.is_err());
    assert_eq!(store.decisions(&all).await.unwrap().len(), 2);

    // Retention: by age first, then by count, the newest kept.
    let rest: Vec<DecisionRecord> = (200..210).map(|at| decision(id, at)).collect();
    store.record_decisions(&rest).await.unwrap();
    let pruned = store.prune_decisions(4, 201).await.unwrap();
    assert_eq!((pruned.by_age, pruned.by_count), (3, 5));
    let left = store.decisions(&all).await.unwrap();
    let times: Vec<i64> = left.iter().map(|x| x.at).collect();
    assert_eq!(times, [209, 208, 207, 206]);
    assert!(left.iter().all(|x| x.deployment_id.is_none()));
    assert!(
        store
            .deployment(d.id)
            .await
            .unwrap()
            .decision_ids
            .is_empty()
    );
}

#[tokio::test]
async fn times_booleans_json_and_ids_read_back_as_written() {
    let store = connect("store-types").await;
    let mut f = fields("types");
    f.auto_deploy_enabled = false;
    f.labels = BTreeMap::from([("team".into(), "ünïcode \"quoted\"".into())]);
    let a = store.create_project(&f, None, None).await.unwrap();
    f.name = "types-2".into();
    f.auto_deploy_enabled = true;
    let b = store.create_project(&f, None, None).await.unwrap();
    assert!(b.id > a.id, "ids grow: {} then {}", a.id, b.id);
    let (a, b) = (
        store.project(a.id).await.unwrap(),
        store.project(b.id).await.unwrap(),
    );
    assert!(!a.fields.auto_deploy_enabled);
    assert!(b.fields.auto_deploy_enabled);
    assert_eq!(a.fields.labels, f.labels);
    assert_eq!(a.fields.project_type, ProjectType::Compose);
    assert_eq!(a.fields.git_source, GitSource::Hosted);
    assert!(a.created_at > 1_600_000_000, "{}", a.created_at);

    let digests = BTreeMap::from([(
        "reg/app:1".to_string(),
        format!("sha256:{}", "a".repeat(64)),
    )]);
    store.set_image_digests(a.id, &digests).await.unwrap();
    assert_eq!(
        store
            .project(a.id)
            .await
            .unwrap()
            .last_tracked_image_digests,
        digests
    );
    let mut image = push(a.id, &"3".repeat(40));
    image.source = DeploySource::AutoImage;
    image.target_digests = Some(digests.clone());
    let d = store.record_trigger(&image).await.unwrap();
    assert_eq!(d.target_digests, Some(digests));
    assert_eq!(d.status, DeployStatus::Queued);
    assert_eq!(d.finished_at, None);

    // Past 2^31 seconds: a time column holds 64 bits on both backends.
    let node = store
        .add_node(
            "n-types",
            "hash-types",
            &BTreeMap::from([("zone".into(), "a".into())]),
        )
        .await
        .unwrap();
    let late = 4_102_444_800;
    store.heartbeat(node.id, late).await.unwrap();
    let node = store.node(node.id).await.unwrap();
    assert_eq!(node.last_seen_at, Some(late));
    assert_eq!(node.labels["zone"], "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_hand_a_deployment_to_one_node() {
    let (store, id) = open("store-claims").await;
    store
        .record_trigger(&push(id, &"4".repeat(40)))
        .await
        .unwrap();
    let mut nodes = Vec::new();
    for i in 0..8 {
        let n = store
            .add_node(&format!("n{i}"), &format!("h{i}"), &Default::default())
            .await
            .unwrap();
        nodes.push(n.id);
    }
    let claims = futures::future::join_all(nodes.iter().map(|&n| {
        let store = store.clone();
        tokio::spawn(async move { store.claim(n).await })
    }))
    .await;
    let won: Vec<_> = claims
        .into_iter()
        .filter_map(|c| c.unwrap().unwrap())
        .collect();
    assert_eq!(won.len(), 1, "one node runs the deployment");
    let project = store.project(id).await.unwrap();
    assert_eq!(
        project.pinned_node_id, won[0].deployment.node_id,
        "the compose project is pinned to the node that won"
    );
}

#[tokio::test]
async fn a_database_url_password_never_shows_in_errors() {
    let e = SqlStore::connect("postgres://deploy:s3cret-pw@127.0.0.1:1/autodeploy")
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = format!("{e} {e:?}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    let e = SqlStore::connect("mysql://deploy:s3cret-pw@127.0.0.1/autodeploy")
        .await
        .err()
        .expect("not a supported database");
    assert!(!format!("{e} {e:?}").contains("s3cret-pw"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_opening_one_new_database_together_apply_each_migration_once() {
    // As replicas starting at once do.
    let url = common::db::database_url("store-migrate");
    let opened = futures::future::join_all((0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { SqlStore::connect(&url).await })
    }))
    .await;
    for store in opened {
        let store = store.unwrap().expect("every store opens");
        assert!(store.projects_page(None, 1).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn web_sessions_are_kept_by_hash_and_expired_ones_go_with_the_next_sign_in() {
    use autodeploy::store::WebSession;
    let store = connect("web-sessions").await;
    let t = autodeploy::store::now();
    let old = WebSession {
        csrf: "csrf-old".into(),
        created_at: t - 100,
        expires_at: t - 10,
    };
    store.create_web_session("hash-old", &old).await.unwrap();
    assert_eq!(store.web_session("hash-old").await.unwrap(), Some(old));
    let live = WebSession {
        csrf: "csrf-live".into(),
        created_at: t,
        expires_at: t + 3600,
    };
    store.create_web_session("hash-live", &live).await.unwrap();
    assert_eq!(
        store.web_session("hash-old").await.unwrap(),
        None,
        "an expired session goes when a new one is made"
    );
    assert_eq!(store.web_session("hash-live").await.unwrap(), Some(live));
    store.delete_web_session("hash-live").await.unwrap();
    assert_eq!(store.web_session("hash-live").await.unwrap(), None);
    // Deleting one that is gone is not an error (a second sign-out).
    store.delete_web_session("hash-live").await.unwrap();
}

#[tokio::test]
async fn deployment_changes_are_told_after_they_are_written() {
    let (store, id) = open("deployment-changes").await;
    let mut changes = store.deployment_changes();
    let d = store
        .record_trigger(&push(id, &"a".repeat(40)))
        .await
        .unwrap();
    let told = changes.try_recv().expect("a change was told");
    assert_eq!(told.deployment_id, d.id);
    assert_eq!(told.project_id, id);
    assert_eq!(told.status, DeployStatus::Queued);
    let node = store
        .add_node("n1", "node-hash", &BTreeMap::new())
        .await
        .unwrap();
    let claimed = store.claim(node.id).await.unwrap().expect("a claim");
    assert_eq!(claimed.deployment.id, d.id);
    assert_eq!(changes.try_recv().unwrap().status, DeployStatus::Running);
    store
        .report(node.id, d.id, DeployStatus::Succeeded, None, None)
        .await
        .unwrap();
    assert_eq!(changes.try_recv().unwrap().status, DeployStatus::Succeeded);
    assert!(changes.try_recv().is_err(), "one change each");
}
