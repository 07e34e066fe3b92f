//! Deploys people can trust, on the real Docker Engine: a Dockerfile
//! project is built on the node and served; an image deploys by the digest
//! that was decided even when its tag moves again; a broken release is
//! rolled back on its own; a person rolls back to an older deployment or
//! cancels a long one. Images are `FROM scratch` plus static busybox, built
//! here or pushed to a loopback registry. Every test leaves nothing of its
//! own in Docker, and checks that it does not.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::agent::{
    Agent, Cleanup, RemoveRepos, build_and_push, compose_file, leftovers, process_tree,
    require_docker, sh,
};
use common::daemon::{Daemon, temp_dir};
use common::git::{free_port, git};
use common::registry::TestRegistry;
use common::wait_until;
use reqwest::Method;
use serde_json::{Value, json};

/// Builds and deploys of these tiny images take seconds; this only bounds a hang.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);

/// Serves /www on 8080.
const GOOD: &str = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
/// Exits at once (and again on every restart).
const EXITS: &str = "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"sh\", \"-c\", \"echo broken release; exit 3\"]\n";
/// Serves, but its healthcheck never passes.
const UNHEALTHY: &str = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nHEALTHCHECK --interval=1s --timeout=1s --retries=2 CMD [\"/bin/busybox\", \"false\"]\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";
/// A build step that takes ten minutes.
const SLOW: &str = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sleep\", \"600\"]\nCOPY www /www\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n";

/// One project of these tests: the control plane, an agent, a hosted
/// repository to push to, and what to clean up.
struct Scenario {
    d: Daemon,
    agent: Option<Agent>,
    id: i64,
    /// Its compose project (and built image repository).
    compose_project: String,
    remote: String,
    work: PathBuf,
    port: u16,
    cleanup: Option<(Cleanup, RemoveRepos)>,
    repos: Vec<String>,
}

impl Scenario {
    /// A project created with `fields` (plus a name and auto-deploy); the
    /// agent starts unless `agent` is false.
    async fn start(dir: &Path, fields: Value, repos: &[String], agent: bool) -> Scenario {
        require_docker();
        let d = Daemon::start(&dir.join("cp"));
        // Only the ticks a test asks for.
        d.ok(
            Method::PUT,
            "/api/settings",
            Some(json!({"auto_deploy_poll_interval_seconds": 86_400, "auto_deploy_image_watch_interval_seconds": 86_400})),
        )
        .await;
        let token = d.add_node("n1").await;
        let name = format!(
            "i13t{}{}",
            std::process::id(),
            dir.file_name()
                .unwrap()
                .to_string_lossy()
                .replace(['-', '.'], "")
        );
        let mut body = fields;
        body["name"] = json!(name);
        let project = d.ok(Method::POST, "/api/projects", Some(body)).await;
        let id = project["id"].as_i64().unwrap();
        let compose_project = format!("autodeploy-{name}-{id}");
        let mut repos = repos.to_vec();
        repos.push(compose_project.clone());
        let cleanup = Some((
            Cleanup(vec![compose_project.clone()]),
            RemoveRepos(repos.clone()),
        ));
        let remote = format!(
            "http://x:{}@{}/git/{id}.git",
            project["push_token"].as_str().unwrap(),
            d.url.trim_start_matches("http://")
        );
        let agent = agent.then(|| Agent::start(&d.url, &token, &dir.join("agent"), &[]));
        Scenario {
            agent,
            id,
            compose_project,
            remote,
            work: dir.join("work"),
            port: 0,
            cleanup,
            repos,
            d,
        }
    }

    /// A `deployment` project serving on a free port, probed on `/`.
    async fn dockerfile_project(dir: &Path) -> Scenario {
        let port = free_port();
        let mut s = Scenario::start(
            dir,
            json!({"project_type": "deployment", "container_port": 8080, "expose_port": port, "health_probe_path": "/", "health_timeout_seconds": 30, "auto_deploy_enabled": true}),
            &[],
            true,
        )
        .await;
        s.port = port;
        s
    }

    /// Commits `files` (path, content) and pushes them to main; returns the commit.
    fn push(&self, files: &[(&str, &[u8])]) -> String {
        let work = &self.work;
        if !work.join(".git").exists() {
            std::fs::create_dir_all(work).unwrap();
            git(work, &["init", "-q", "-b", "main"]);
        }
        for (path, content) in files {
            let path = work.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
            if content.starts_with(b"\x7fELF") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        git(work, &["add", "-A"]);
        git(work, &["commit", "-q", "-m", "release"]);
        git(work, &["push", "-q", &self.remote, "main"]);
        git(work, &["rev-parse", "HEAD"])
    }

    /// Pushes an app built by `dockerfile` whose page says `page`.
    fn push_app(&self, dockerfile: &str, page: &str) -> String {
        let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
        let dockerfile = common::agent::own_layers(dockerfile, &self.compose_project);
        self.push(&[
            ("Dockerfile", dockerfile.as_bytes()),
            ("busybox", &busybox),
            ("www/index.html", page.as_bytes()),
        ])
    }

    /// The deployment that targets `commit`, once the push made it.
    async fn deployment_of(&self, commit: &str) -> Value {
        let found = Mutex::new(Value::Null);
        wait_until(
            &format!("a deployment of {commit}"),
            Duration::from_secs(60),
            || async {
                let dep = self
                    .d
                    .deployments(self.id)
                    .await
                    .into_iter()
                    .find(|d| d["target_commit"] == commit);
                let seen = dep.is_some();
                *found.lock().unwrap() = dep.unwrap_or_default();
                seen
            },
        )
        .await;
        found.into_inner().unwrap()
    }

    /// Deployment `dep` once it has ended.
    async fn finished(&self, dep: &Value) -> Value {
        let found = Mutex::new(Value::Null);
        wait_until(
            &format!("deployment {} finished", dep["id"]),
            DEPLOY_TIMEOUT,
            || async {
                let now = self.deployment(dep).await;
                let done = matches!(
                    now["status"].as_str(),
                    Some("succeeded" | "failed" | "rolled_back" | "cancelled")
                );
                *found.lock().unwrap() = now;
                done
            },
        )
        .await;
        found.into_inner().unwrap()
    }

    async fn deployment(&self, dep: &Value) -> Value {
        self.d
            .deployments(self.id)
            .await
            .into_iter()
            .find(|d| d["id"] == dep["id"])
            .unwrap_or_default()
    }

    /// Pushes, and waits for the deployment of the push to succeed.
    async fn deployed(&self, dockerfile: &str, page: &str) -> Value {
        let commit = self.push_app(dockerfile, page);
        let dep = self.finished(&self.deployment_of(&commit).await).await;
        assert_eq!(dep["status"], "succeeded", "{}", log_of(&dep));
        dep
    }

    /// The deploy's log as the API serves it.
    async fn log(&self, dep: &Value) -> Value {
        self.d
            .ok(
                Method::GET,
                &format!("/api/projects/{}/deployments/{}/log", self.id, dep["id"]),
                None,
            )
            .await
    }

    /// The page served on the project's port now.
    async fn page(&self) -> String {
        page(self.port).await
    }

    /// Stops the agent and control plane, cleans up, and checks that Docker
    /// holds nothing of this test any more.
    fn finish(mut self) {
        self.agent.take();
        self.cleanup.take();
        let left = leftovers(&self.compose_project, &self.repos);
        assert!(left.is_empty(), "left in Docker: {left:?}");
    }
}

/// The first successful answer on `port`'s `/`.
async fn page(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/");
    let body = Mutex::new(String::new());
    wait_until(&format!("{url} answered"), DEPLOY_TIMEOUT, || async {
        match reqwest::get(&url).await {
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

fn log_of(dep: &Value) -> String {
    format!(
        "{dep}\nerror: {}\nlog:\n{}",
        dep["error"].as_str().unwrap_or_default(),
        dep["log_tail"].as_str().unwrap_or_default()
    )
}

/// The id Docker gives the image tagged `image`.
fn image_id(image: &str) -> String {
    sh(std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_project_is_built_on_the_node_and_serves() {
    let dir = temp_dir("deploys-build");
    let s = Scenario::dockerfile_project(&dir).await;
    let commit = s.push_app(GOOD, "built from a Dockerfile");
    let dep = s.finished(&s.deployment_of(&commit).await).await;
    assert_eq!(dep["status"], "succeeded", "{}", log_of(&dep));
    assert_eq!(s.page().await, "built from a Dockerfile");

    // What ran: the commit, and the image built from it, as Docker has it.
    let tag = format!("{}:{}", s.compose_project, &commit[..12]);
    assert_eq!(dep["ran_commit"], commit.as_str(), "{dep}");
    assert_eq!(
        dep["ran_digests"],
        json!({tag.clone(): image_id(&tag)}),
        "{dep}"
    );
    // The build's output is in the log the API serves.
    let log = s.log(&dep).await;
    let text = log["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("checked out {commit}")) && text.contains("COPY www /www"),
        "{log}"
    );
    assert_eq!(log["done"], true, "{log}");
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_moved_again_between_the_decision_and_the_pull_deploys_the_decided_digest() {
    let dir = temp_dir("deploys-moved");
    let reg = TestRegistry::start(&dir.join("registry"), None, None);
    let repo = format!("{}/moved-{}", reg.addr, std::process::id());
    let image = format!("{repo}:1");
    build_and_push(&dir, &image, &[("p", "v1")]);
    let s = Scenario::start(
        &dir,
        json!({"project_type": "compose", "expose_service": "web", "expose_port": 8080, "health_probe_path": "/"}),
        &[repo],
        false,
    )
    .await;
    let port = free_port();
    s.push(&[(
        "docker-compose.yml",
        compose_file(&image, "p", port).as_bytes(),
    )]);
    s.d.ok(
        Method::PATCH,
        &format!("/api/projects/{}", s.id),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;
    let tick = || s.d.ok(Method::POST, "/api/ticks/image-watch", None);
    tick().await;
    assert!(
        s.d.deployments(s.id).await.is_empty(),
        "the first look only records"
    );

    // v2 is pushed and decided; then the tag moves on to v3 before any
    // agent pulls.
    build_and_push(&dir, &image, &[("p", "v2")]);
    let t = tick().await;
    assert_eq!(t["triggered"], 1, "{t}");
    let decided = s.d.deployments(s.id).await[0].clone();
    let digest = decided["target_digests"][&image]
        .as_str()
        .unwrap()
        .to_string();
    build_and_push(&dir, &image, &[("p", "v3")]);

    let token = s.d.add_node("n2").await;
    let agent = Agent::start(&s.d.url, &token, &dir.join("agent"), &[]);
    let dep = s.finished(&decided).await;
    assert_eq!(dep["status"], "succeeded", "{}", log_of(&dep));
    assert_eq!(
        page(port).await,
        "v2",
        "the decided image runs, not the tag's newest"
    );
    assert_eq!(dep["ran_digests"], json!({image.clone(): digest}), "{dep}");
    drop(agent);
    s.finish();
}

/// A release that fails its health gate is rolled back to the previous
/// one: the old page is served again and the error says why.
async fn broken_release_is_rolled_back(name: &str, broken: &str, says: &str) {
    let dir = temp_dir(name);
    let s = Scenario::dockerfile_project(&dir).await;
    let good = s.deployed(GOOD, "the good release").await;
    assert_eq!(s.page().await, "the good release");

    let bad_commit = s.push_app(broken, "the broken release");
    let started = Instant::now();
    let bad = s.finished(&s.deployment_of(&bad_commit).await).await;
    let took = started.elapsed();
    assert_eq!(bad["status"], "rolled_back", "{}", log_of(&bad));
    let error = bad["error"].as_str().unwrap();
    assert!(error.contains(says), "the error says why: {error}");
    assert!(
        error.contains(&format!("deployment {} was restored", good["id"])),
        "the error names what was restored: {error}"
    );
    assert_eq!(s.page().await, "the good release");
    // Exactly the old state: the image the good deployment ran.
    let tag = format!(
        "{}:{}",
        s.compose_project,
        &good["ran_commit"].as_str().unwrap()[..12]
    );
    let running = sh(std::process::Command::new("docker").args([
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.compose.project={}", s.compose_project),
    ]));
    let image = sh(std::process::Command::new("docker").args([
        "inspect",
        "--format",
        "{{.Image}}",
        &running,
    ]));
    assert_eq!(image, good["ran_digests"][&tag].as_str().unwrap());
    eprintln!("{name}: the broken release was rolled back {took:?} after its push");
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_exits_at_once_is_rolled_back_and_the_old_page_is_served_again() {
    broken_release_is_rolled_back("deploys-exits", EXITS, "broken release").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_healthcheck_fails_is_rolled_back_and_the_old_page_is_served_again() {
    broken_release_is_rolled_back("deploys-unhealthy", UNHEALTHY, "is unhealthy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_rollback_redeploys_an_older_deployments_exact_state() {
    let dir = temp_dir("deploys-manual");
    let s = Scenario::dockerfile_project(&dir).await;
    let first = s.deployed(GOOD, "first").await;
    s.deployed(GOOD, "second").await;
    assert_eq!(s.page().await, "second");

    let again =
        s.d.ok(
            Method::POST,
            &format!("/api/projects/{}/deployments", s.id),
            Some(json!({"from_deployment": first["id"]})),
        )
        .await;
    assert_eq!(again["from_deployment"], first["id"], "{again}");
    let again = s.finished(&again).await;
    assert_eq!(again["status"], "succeeded", "{}", log_of(&again));
    assert_eq!(s.page().await, "first");
    assert_eq!(again["ran_commit"], first["ran_commit"]);
    assert_eq!(
        again["ran_digests"], first["ran_digests"],
        "the very image, not a rebuild"
    );
    s.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_long_deploy_stops_compose_and_keeps_the_old_release() {
    let dir = temp_dir("deploys-cancel");
    let s = Scenario::dockerfile_project(&dir).await;
    let good = s.deployed(GOOD, "still here").await;

    let slow = s.push_app(SLOW, "never");
    let slow = s.deployment_of(&slow).await;
    // Mid-build: the streamed log shows the long step running.
    wait_until("the long build step runs", DEPLOY_TIMEOUT, || async {
        s.log(&slow).await["text"]
            .as_str()
            .unwrap_or_default()
            .contains("sleep")
    })
    .await;
    let (code, body) =
        s.d.admin(
            Method::POST,
            &format!("/api/projects/{}/deployments/{}/cancel", s.id, slow["id"]),
            None,
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let asked = Instant::now();
    let cancelled = s.finished(&slow).await;
    let took = asked.elapsed();
    assert_eq!(cancelled["status"], "cancelled", "{}", log_of(&cancelled));
    let error = cancelled["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("deployment {} was restored", good["id"])),
        "{error}"
    );
    assert_eq!(s.page().await, "still here");
    let agent = s.agent.as_ref().unwrap();
    let children: Vec<_> = process_tree(agent.pid())
        .into_iter()
        .filter(|p| p.pid != agent.pid())
        .map(|p| p.cmdline)
        .collect();
    assert!(children.is_empty(), "compose was stopped: {children:?}");
    eprintln!("cancel: reported {took:?} after it was asked");
    s.finish();
}
