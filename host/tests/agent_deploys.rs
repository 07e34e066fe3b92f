//! The agent deploys what was decided: the deployment's target commit, not
//! whatever the branch points at when the agent gets to it; an external
//! repository through the credentials that come with the claim, which then
//! stay out of the agent's work dir, log and process arguments. On the real
//! Docker Engine: without one these tests fail saying so.

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use common::agent::{
    Agent, Cleanup, Gate, RemoveImages, build_and_push, compose_file, files_containing,
    process_tree, processes, require_docker,
};
use common::daemon::{Daemon, temp_dir};
use common::git::{free_port, git, nginx_git_tls, test_ca};
use common::registry::TestRegistry;
use common::wait_until;
use reqwest::Method;
use serde_json::{Value, json};

/// Deploys pull and start containers: generous, it only bounds a hang.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);

const USER: &str = "deploy";
const TOKEN: &str = "CLAIM-SECRET-TOKEN-9d27c4e1";

/// Commits `compose` as docker-compose.yml in `work` (a clone made on first
/// use) and pushes it to `remote`'s main; returns the commit.
fn commit_and_push(work: &Path, remote: &str, compose: &str) -> String {
    if !work.join(".git").exists() {
        std::fs::create_dir_all(work).unwrap();
        git(work, &["init", "-q", "-b", "main"]);
    }
    std::fs::write(work.join("docker-compose.yml"), compose).unwrap();
    git(work, &["add", "."]);
    git(work, &["commit", "-q", "-m", "deploy"]);
    git(work, &["push", "-q", remote, "main"]);
    git(work, &["rev-parse", "HEAD"])
}

/// The single deployment of `project`.
async fn only_deployment(d: &Daemon, project: i64) -> Value {
    let list = d.deployments(project).await;
    assert_eq!(list.len(), 1, "one deployment: {list:?}");
    list[0].clone()
}

/// Waits for deployment `id` of `project` to finish; returns it.
async fn finished(d: &Daemon, project: i64, id: &Value) -> Value {
    let found = Mutex::new(None);
    wait_until(
        &format!("deployment {id} of project {project} finished"),
        DEPLOY_TIMEOUT,
        || async {
            let dep = d
                .deployments(project)
                .await
                .into_iter()
                .find(|x| &x["id"] == id);
            match dep {
                Some(dep) if matches!(dep["status"].as_str(), Some("succeeded" | "failed")) => {
                    *found.lock().unwrap() = Some(dep);
                    true
                }
                _ => false,
            }
        },
    )
    .await;
    found.into_inner().unwrap().unwrap()
}

/// The body of the first successful answer from `url`.
async fn get(url: &str) -> String {
    let body = Mutex::new(String::new());
    wait_until(&format!("{url} answered"), DEPLOY_TIMEOUT, || async {
        match reqwest::get(url).await {
            Ok(r) if r.status().is_success() => {
                *body.lock().unwrap() = r.text().await.unwrap().trim().to_string();
                true
            }
            _ => false,
        }
    })
    .await;
    body.into_inner().unwrap()
}

/// `secret` is nowhere in the agent's work dir (names or contents), its
/// log, or the arguments of any process on the machine.
fn assert_nowhere(agent: &Agent, what: &str, secret: &str) {
    let files = files_containing(&agent.work_dir, secret.as_bytes());
    assert!(
        files.is_empty(),
        "{what} is in the agent's files: {files:?}"
    );
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(!log.contains(secret), "{what} is in the agent's log");
    let shown: Vec<_> = processes()
        .into_iter()
        .filter(|p| p.cmdline.contains(secret))
        .map(|p| p.cmdline)
        .collect();
    assert!(
        shown.is_empty(),
        "{what} is in process arguments: {shown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_deploys_the_target_commit_after_the_branch_moved_on() {
    require_docker();
    let dir = temp_dir("agent-target");
    let reg = TestRegistry::start(&dir.join("registry"), None, None);
    let image = format!("{}/target-{}:1", reg.addr, std::process::id());
    build_and_push(&dir, &image, &[("a", "commit A"), ("b", "commit B")]);
    let _pulled = RemoveImages(vec![image.clone()]);
    let d = Daemon::start(&dir.join("cp"));
    let token = d.add_node("n1").await;
    let name = format!("target{}", std::process::id());
    let project = d.ok(Method::POST, "/api/projects", Some(json!({"name": name, "project_type": "compose", "expose_service": "web", "expose_port": 8080, "auto_deploy_enabled": true}))).await;
    let id = project["id"].as_i64().unwrap();
    let _cleanup = Cleanup(vec![format!("autodeploy-{name}-{id}")]);
    let remote = format!(
        "http://x:{}@{}/git/{id}.git",
        project["push_token"].as_str().unwrap(),
        d.url.trim_start_matches("http://")
    );

    // Commit A is pushed and decided: one deployment, queued (no agent yet).
    let port = free_port();
    let work = dir.join("work");
    let a = commit_and_push(&work, &remote, &compose_file(&image, "a", port));
    wait_until(
        "the push of commit A made a deployment",
        Duration::from_secs(60),
        || async { !d.deployments(id).await.is_empty() },
    )
    .await;
    let decided = only_deployment(&d, id).await;
    assert_eq!(decided["target_commit"], a.as_str(), "{decided}");
    assert_eq!(decided["status"], "queued", "{decided}");

    // The branch moves on without a new decision (auto-deploy off), so the
    // deployment still targets A while the branch tip is B.
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": false})),
    )
    .await;
    let b = commit_and_push(&work, &remote, &compose_file(&image, "b", port));
    assert_ne!(a, b);
    let still = only_deployment(&d, id).await;
    assert_eq!(still["target_commit"], a.as_str(), "{still}");

    // The agent fetches the branch (tip B) and deploys A.
    let agent = Agent::start(&d.url, &token, &dir.join("agent"), &[]);
    let dep = finished(&d, id, &decided["id"]).await;
    assert_eq!(dep["status"], "succeeded", "{}", dep["log_tail"]);
    let log_tail = dep["log_tail"].as_str().unwrap();
    assert!(
        log_tail.contains(&format!("checked out {a}")),
        "the agent reports the target commit: {log_tail}"
    );
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/")).await,
        "commit A",
        "the running service is the one commit A describes"
    );
    let checkout = agent.work_dir.join("projects").join(id.to_string());
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), a);
    // Hosted checkouts authenticate with the node token: it stays out too.
    assert_nowhere(&agent, "the node token", &token);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_https_repository_is_checked_out_with_the_claims_credentials_and_they_stay_out_of_the_work_dir_log_and_arguments()
 {
    require_docker();
    let dir = temp_dir("agent-creds");
    let reg = TestRegistry::start(&dir.join("registry"), None, None);
    let image_name = format!("creds-{}:1", std::process::id());
    build_and_push(
        &dir,
        &format!("{}/{image_name}", reg.addr),
        &[("a", "commit A"), ("b", "commit B")],
    );
    // The deploy pulls through a gate: it stays mid-way until the test has
    // looked at the agent's processes.
    let gate = Gate::start(reg.port);
    let image = format!("127.0.0.1:{}/{image_name}", gate.port);
    let _pulled = RemoveImages(vec![image.clone()]);

    // An external repository over HTTPS (a test CA), behind basic auth.
    let ca = test_ca(&dir.join("ca"));
    let repos = dir.join("repos");
    let bare = repos.join("app.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let port = free_port();
    let work = dir.join("work");
    let bare_path = bare.to_str().unwrap();
    let a = commit_and_push(&work, bare_path, &compose_file(&image, "a", port));
    let nginx = nginx_git_tls(&dir.join("nginx"), &repos, USER, TOKEN, &ca);
    let url = format!("https://127.0.0.1:{}/git/app.git", nginx.port);
    let ca_env = ("AUTODEPLOY_GIT_CA", ca.ca_pem.to_str().unwrap());

    let d = Daemon::start_with(&dir.join("cp"), &[], &[ca_env]);
    // Only the ticks this test asks for.
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 86_400, "auto_deploy_image_watch_interval_seconds": 86_400})),
    )
    .await;
    let token = d.add_node("n1").await;
    let name = format!("creds{}", std::process::id());
    let id = d.create_project(json!({"name": name, "project_type": "compose", "git_source": "external", "git_url": url, "expose_service": "web", "expose_port": 8080, "auto_deploy_enabled": true, "credentials": {"kind": "https", "username": USER, "token": TOKEN}})).await;
    let _cleanup = Cleanup(vec![format!("autodeploy-{name}-{id}")]);
    let tick = d.ok(Method::POST, "/api/ticks/git-poll", None).await;
    let decided = only_deployment(&d, id).await;
    assert_eq!(decided["target_commit"], a.as_str(), "{tick} {decided}");
    // The branch moves on without a new decision.
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": false})),
    )
    .await;
    let b = commit_and_push(&work, bare_path, &compose_file(&image, "b", port));
    assert_ne!(a, b);
    let requests_before = nginx.requests().lines().count();

    let agent = Agent::start(&d.url, &token, &dir.join("agent"), &[ca_env]);
    // Mid-deploy: running, checked out, and docker compose pulling (held
    // at the gate) as a child of the agent. A deploy that ends first (say,
    // the fetch was refused) stops the wait and is shown below.
    let seen = Mutex::new(Value::Null);
    wait_until(
        "the agent's docker compose pull is under way, or the deployment finished",
        DEPLOY_TIMEOUT,
        || async {
            let dep = d.deployments(id).await[0].clone();
            let ended = matches!(dep["status"].as_str(), Some("succeeded" | "failed"));
            let running = dep["status"] == "running";
            *seen.lock().unwrap() = dep;
            ended
                || (running
                    && gate.held() > 0
                    && process_tree(agent.pid())
                        .iter()
                        .any(|p| p.pid != agent.pid() && p.cmdline.contains(" pull")))
        },
    )
    .await;
    let seen = seen.into_inner().unwrap();
    assert_eq!(
        seen["status"], "running",
        "the deploy is mid-way, pulling: {seen}"
    );
    let everyone = processes();
    for p in &everyone {
        assert!(
            !p.cmdline.contains(TOKEN),
            "the claim's token is in the arguments of {}: {}",
            p.pid,
            p.cmdline
        );
        assert!(
            !p.cmdline.contains(&token),
            "the node token is in the arguments of {}: {}",
            p.pid,
            p.cmdline
        );
    }
    for p in process_tree(agent.pid()) {
        assert!(
            !p.environ.contains(TOKEN),
            "the claim's token is in the environment of {}",
            p.cmdline
        );
        // Compose interpolates its environment into the project: a
        // compose file must not be able to read the node's token.
        if p.pid != agent.pid() {
            assert!(
                !p.environ.contains(&token),
                "the node token is in the environment of {}",
                p.cmdline
            );
        }
    }

    gate.open();
    let dep = finished(&d, id, &decided["id"]).await;
    assert_eq!(dep["status"], "succeeded", "{}", dep["log_tail"]);
    let log_tail = dep["log_tail"].as_str().unwrap();
    assert!(
        log_tail.contains(&format!("checked out {a}")),
        "the agent checked out the target commit, not the tip {b}: {log_tail}"
    );
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await, "commit A");
    // The agent's fetch went through nginx's basic auth with the claim's
    // credentials.
    let requests = nginx.requests();
    let agent_requests: Vec<_> = requests.lines().skip(requests_before).collect();
    assert!(
        agent_requests
            .iter()
            .any(|l| l.contains("git-upload-pack") && l.contains(" 200 user=deploy")),
        "an authenticated fetch by the agent: {agent_requests:?}"
    );

    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{TOKEN}"));
    assert_nowhere(&agent, "the claim's token", TOKEN);
    assert_nowhere(&agent, "the claim's basic-auth header", &basic);
    assert_nowhere(&agent, "the node token", &token);
    assert!(
        !d.log().contains(TOKEN),
        "the claim's token is in the control plane's log"
    );
    drop(agent);
    d.stop();
}
