//! The store on a real SQLite file: a trigger's deployment and the project's
//! tracked state are written together, and a queued deployment moves to the
//! newest target.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use autodeploy::store::{
    DeploySource, GitSource, ProjectFields, ProjectKind, SqlStore, Store, TriggerWrite,
};

fn fields(name: &str) -> ProjectFields {
    ProjectFields {
        name: name.into(),
        project_type: ProjectKind::Compose,
        git_source: GitSource::Hosted,
        git_url: None,
        git_branch: "main".into(),
        compose_file_path: "docker-compose.yml".into(),
        expose_service: Some("web".into()),
        expose_port: Some(80),
        auto_deploy_enabled: true,
        image_ref: None,
        container_port: None,
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
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tracked_state_and_deployments_move_together() {
    let dir = common::daemon::temp_dir("store");
    let url = format!("sqlite://{}", dir.join("t.db").display());
    let store = Arc::new(SqlStore::connect(&url).await.unwrap());
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

    // A failed trigger is its own deployment and still records the state,
    // so the same commit does not fail again on every tick.
    let mut failing = push(p.id, &"f".repeat(40));
    failing.failure = Some("refused".into());
    let failed = store.record_trigger(&failing).await.unwrap();
    assert_eq!(failed.error.as_deref(), Some("refused"));
    assert_eq!(
        store.project(p.id).await.unwrap().last_tracked_commit_sha,
        "f".repeat(40)
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
}
