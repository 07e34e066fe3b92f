//! End to end on the real Docker Engine: pushes and image changes end with
//! the new version running in a container, through the agent. Without a
//! Docker Engine that answers, these tests fail saying so: never a silent pass.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::agent::RemoveRepos;
use common::daemon::{Daemon, temp_dir};
use common::git::{free_port, git};
use common::registry::TestRegistry;
use common::wait_until;
use reqwest::Method;
use serde_json::{Value, json};

/// Deploys pull and start containers: generous, it only bounds a hang.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);

/// Panics unless the Docker Engine answers: these are the only tests of
/// `autodeploy agent`, so passing without Docker would prove nothing.
fn require_docker() {
    match Command::new("docker").arg("info").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Docker Engine does not answer (`docker info` exited with {}): {}\n\
             these end-to-end tests need a running Docker Engine; start it and run them again",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run `docker info` ({e}): these end-to-end tests need the docker CLI and a running Docker Engine"
        ),
    }
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Builds `FROM scratch` + busybox serving `page` on :8080, pushes it.
fn build_and_push(dir: &Path, image: &str, page: &str) {
    let ctx = dir.join(format!("img-{}", page.len()));
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(ctx.join("www")).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("/bin/busybox (busybox-static)");
    std::fs::write(ctx.join("www/index.html"), page).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        common::agent::own_layers(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
            image,
        ),
    )
    .unwrap();
    sh(Command::new("docker")
        .args(["build", "-q", "-t", image])
        .arg(&ctx));
    sh(Command::new("docker").args(["push", "-q", image]));
}

/// Ended with its process group (the compose runs it started) when
/// dropped.
struct Agent(common::reap::Proc);

impl Agent {
    /// Its log goes to `dir` with the extension `log`, appended across restarts.
    fn start(d: &Daemon, token: &str, dir: &Path) -> Agent {
        let child = common::reap::spawn(
            Command::new(env!("CARGO_BIN_EXE_autodeploy"))
                .args([
                    "agent",
                    "--control-plane",
                    &d.url,
                    "--token",
                    token,
                    "--heartbeat-seconds",
                    "1",
                ])
                .arg("--work-dir")
                .arg(dir)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.with_extension("log"))
                        .unwrap(),
                ),
        )
        .unwrap();
        Agent(child)
    }
}

impl Agent {
    /// `kill -9`: the agent gets no chance to clean up or report.
    fn kill_9(mut self) {
        self.0.kill().expect("SIGKILL the agent");
        let status = self.0.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "the agent died of SIGKILL");
    }
}

/// Removes every container, volume and network of the test's compose projects.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for project in &self.0 {
            let ids = Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=com.docker.compose.project={project}"),
                ])
                .output();
            if let Ok(out) = ids {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
                }
            }
            let _ = Command::new("docker")
                .args(["volume", "rm", &format!("{project}_data")])
                .output();
            // Networks too: docker has only ~30 default address pools.
            let _ = Command::new("docker")
                .args(["network", "rm", &format!("{project}_default")])
                .output();
        }
    }
}

async fn create(d: &Daemon, name: &str) -> (i64, String) {
    let p = d.ok(Method::POST, "/api/projects", Some(json!({"name": name, "project_type": "compose", "expose_service": "web", "expose_port": 8080, "auto_deploy_enabled": true}))).await;
    (
        p["id"].as_i64().unwrap(),
        p["push_token"].as_str().unwrap().to_string(),
    )
}

fn push_compose(d: &Daemon, work: &Path, id: i64, token: &str, compose: &str) {
    if !work.join(".git").exists() {
        std::fs::create_dir_all(work).unwrap();
        git(work, &["init", "-q", "-b", "main"]);
    }
    std::fs::write(work.join("docker-compose.yml"), compose).unwrap();
    git(work, &["add", "."]);
    git(work, &["commit", "-q", "-m", "deploy"]);
    git(
        work,
        &[
            "push",
            "-q",
            &format!(
                "http://x:{token}@{}/git/{id}.git",
                d.url.trim_start_matches("http://")
            ),
            "main",
        ],
    );
}

/// Waits for the newest deployment of `id` newer than `after` to finish;
/// returns it.
async fn finished(d: &Daemon, id: i64, after: i64) -> Value {
    let found = Mutex::new(None);
    wait_until(
        &format!("a deployment of project {id} after {after} finished"),
        DEPLOY_TIMEOUT,
        || async {
            let newest = d
                .deployments(id)
                .await
                .into_iter()
                .find(|x| x["id"].as_i64().unwrap() > after);
            match newest {
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

/// The status of deployment `dep` of project `project`.
async fn status_of(d: &Daemon, project: i64, dep: &Value) -> Value {
    d.deployments(project)
        .await
        .into_iter()
        .find(|x| x["id"] == dep["id"])
        .map(|x| x["status"].clone())
        .unwrap_or(Value::Null)
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

/// Whether node `name` shows as online.
async fn online(d: &Daemon, name: &str) -> bool {
    let nodes = d.ok(Method::GET, "/api/nodes", None).await;
    nodes
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == name && n["online"] == true)
}

fn compose_file(image: &str, port: u16) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    ports: [\"127.0.0.1:{port}:8080\"]\n    volumes: [\"data:/www/data\"]\nvolumes:\n  data: {{}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_image_changes_end_with_the_new_version_running() {
    require_docker();
    let dir = temp_dir("e2e");
    let reg = TestRegistry::start(&dir.join("registry"), None, None);
    let repo = format!("{}/e2e-web-{}", reg.addr, std::process::id());
    // Declared before the compose projects' cleanup: dropped after it, once
    // no container uses the images.
    let _images = RemoveRepos(vec![repo.clone()]);
    let tag = format!("{repo}:1");
    build_and_push(&dir, &tag, "version one");

    let d = Daemon::start_with(
        &dir.join("cp"),
        &[],
        &[("REGISTRY_ADDR", reg.addr.as_str())],
    );
    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"node_offline_after_seconds": 5})),
    )
    .await;
    let n1 = d.add_node("n1").await;
    let n2 = d.add_node("n2").await;
    let agent1 = Agent::start(&d, &n1, &dir.join("agent1"));

    let suffix = std::process::id();
    let (web, web_token) = create(&d, &format!("web{suffix}")).await;
    let (broken, broken_token) = create(&d, &format!("broken{suffix}")).await;
    let (other, other_token) = create(&d, &format!("other{suffix}")).await;
    let names = [web, broken, other].map(|id| {
        let name = if id == web {
            "web"
        } else if id == broken {
            "broken"
        } else {
            "other"
        };
        format!("autodeploy-{name}{suffix}-{id}")
    });
    let _cleanup = Cleanup(names.to_vec());

    // A push: auto-push deployment, the agent brings the service up.
    let port = free_port();
    push_compose(
        &d,
        &dir.join("web"),
        web,
        &web_token,
        &compose_file(&tag, port),
    );
    let dep = finished(&d, web, 0).await;
    assert_eq!(
        (dep["source"].as_str(), dep["status"].as_str()),
        (Some("auto-push"), Some("succeeded")),
        "{}",
        dep["log_tail"]
    );
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/")).await,
        "version one"
    );
    let container = sh(Command::new("docker").args([
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={}", names[0]),
    ]));
    sh(Command::new("docker").args([
        "exec",
        &container,
        "/bin/busybox",
        "sh",
        "-c",
        "echo kept > /www/data/note.txt",
    ]));

    // The tag moves upstream: one auto-image deployment, the new image runs,
    // the named volume's data is still there.
    d.ok(Method::POST, "/api/ticks/image-watch", None).await;
    build_and_push(&dir, &tag, "version two, longer");
    let tick = d.ok(Method::POST, "/api/ticks/image-watch", None).await;
    assert_eq!(tick["triggered"], 1, "{tick}");
    let dep = finished(&d, web, dep["id"].as_i64().unwrap()).await;
    assert_eq!(
        (dep["source"].as_str(), dep["status"].as_str()),
        (Some("auto-image"), Some("succeeded")),
        "{}",
        dep["log_tail"]
    );
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/")).await,
        "version two, longer"
    );
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/data/note.txt")).await,
        "kept"
    );

    // A compose file that cannot come up: failed, with the error in the tail.
    push_compose(
        &d,
        &dir.join("broken"),
        broken,
        &broken_token,
        &compose_file(&format!("{}/no-such-image:1", reg.addr), free_port()),
    );
    let dep = finished(&d, broken, 0).await;
    assert_eq!(dep["status"], "failed");
    assert!(
        dep["error"].as_str().unwrap().contains("exited with"),
        "{}",
        dep["error"]
    );
    assert!(
        dep["log_tail"].as_str().unwrap().contains("no-such-image"),
        "{}",
        dep["log_tail"]
    );

    // The agent stops: web is pinned to n1 and refuses to migrate; another
    // project still deploys on the live node n2.
    drop(agent1);
    let _agent2 = Agent::start(&d, &n2, &dir.join("agent2"));
    wait_until(
        "node n1 shows as offline",
        Duration::from_secs(60),
        || async { !online(&d, "n1").await },
    )
    .await;
    let refused = d
        .ok(
            Method::POST,
            &format!("/api/projects/{web}/deployments"),
            None,
        )
        .await;
    assert_eq!(refused["status"], "failed");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("refusing to migrate"),
        "{}",
        refused["error"]
    );
    let other_port = free_port();
    push_compose(
        &d,
        &dir.join("other"),
        other,
        &other_token,
        &compose_file(&tag, other_port),
    );
    let dep = finished(&d, other, 0).await;
    assert_eq!(dep["status"], "succeeded", "{}", dep["log_tail"]);
    assert_eq!(
        get(&format!("http://127.0.0.1:{other_port}/")).await,
        "version two, longer"
    );

    // An image project runs its image; a build project is refused, saying why.
    let image_port = free_port();
    let img = d.create_project(json!({"name": format!("img{suffix}"), "project_type": "image", "image_ref": tag, "container_port": 8080, "expose_port": image_port})).await;
    let _cleanup_img = Cleanup(vec![format!("autodeploy-img{suffix}-{img}")]);
    d.ok(
        Method::POST,
        &format!("/api/projects/{img}/deployments"),
        None,
    )
    .await;
    let dep_img = finished(&d, img, 0).await;
    assert_eq!(dep_img["status"], "succeeded", "{}", dep_img["log_tail"]);
    assert_eq!(
        get(&format!("http://127.0.0.1:{image_port}/")).await,
        "version two, longer"
    );
    d.stop();
}

/// Copies `inbound` to `target` and back until both sides are done.
fn relay(inbound: std::net::TcpStream, target: u16) {
    let Ok(outbound) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    let (mut a, mut b) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a, &mut b);
        let _ = b.shutdown(std::net::Shutdown::Write);
    });
    let (mut c, mut e) = (outbound, inbound);
    let _ = std::io::copy(&mut c, &mut e);
    let _ = e.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// Relays TCP connections to `target`, each after `delay`: a slow registry.
/// Returns its port and the count of connections it accepted.
fn slow_proxy(target: u16, delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        // Bounded: one pull makes a handful of connections.
        for inbound in listener.incoming().take(64).flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                relay(inbound, target);
            });
        }
    });
    (port, accepted)
}

#[derive(Default)]
struct GateState {
    open: bool,
    closed: bool,
    /// Connections accepted and waiting for the gate to open.
    held: usize,
}

/// A relay to a registry that holds every connection until `open()`: a pull
/// through it hangs, for as long as the test wants, at a point the test can
/// see (`held()`). Dropping it closes what it holds, so a pull left waiting
/// fails instead of hanging on.
struct Gate {
    port: u16,
    state: Arc<(Mutex<GateState>, Condvar)>,
}

impl Gate {
    fn start(target: u16) -> Gate {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new((Mutex::new(GateState::default()), Condvar::new()));
        let shared = state.clone();
        std::thread::spawn(move || {
            // Bounded: a few pulls make a few dozen connections.
            for inbound in listener.incoming().take(256).flatten() {
                if shared.0.lock().unwrap().closed {
                    break;
                }
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let (lock, cvar) = &*shared;
                    let mut s = lock.lock().unwrap();
                    s.held += 1;
                    cvar.notify_all();
                    while !s.open && !s.closed {
                        s = cvar.wait(s).unwrap();
                    }
                    s.held -= 1;
                    if s.closed {
                        return;
                    }
                    drop(s);
                    relay(inbound, target);
                });
            }
        });
        Gate { port, state }
    }

    fn held(&self) -> usize {
        self.state.0.lock().unwrap().held
    }

    fn open(&self) {
        self.state.0.lock().unwrap().open = true;
        self.state.1.notify_all();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.state.0.lock().unwrap().closed = true;
        self.state.1.notify_all();
        // Wakes the accept loop so it sees `closed` and stops.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_survives_the_control_plane_going_down() {
    require_docker();
    let dir = temp_dir("e2e-cp-down");
    let reg = TestRegistry::start(&dir.join("registry"), None, None);
    // Pulled through a proxy that answers each connection after 1 s, so the
    // deploy is still running when the control plane goes away.
    let (slow, pulls) = slow_proxy(reg.port, Duration::from_secs(1));
    let name = format!("slow-{}", std::process::id());
    let _images = RemoveRepos(vec![
        format!("{}/{name}", reg.addr),
        format!("127.0.0.1:{slow}/{name}"),
    ]);
    build_and_push(
        &dir,
        &format!("{}/{name}:1", reg.addr),
        "served through a slow registry",
    );
    let _ = Command::new("docker")
        .args(["rmi", &format!("{}/{name}:1", reg.addr)])
        .output();
    let listen = format!("127.0.0.1:{}", free_port());
    let cp = dir.join("cp");
    let d = Daemon::start_with(&cp, &[], &[("AUTODEPLOY_LISTEN", listen.as_str())]);
    let token = d.add_node("n1").await;
    let port = free_port();
    let project = d.create_project(json!({"name": name, "project_type": "image", "image_ref": format!("127.0.0.1:{slow}/{name}:1"), "container_port": 8080, "expose_port": port})).await;
    let _cleanup = Cleanup(vec![format!("autodeploy-{name}-{project}")]);
    let _agent = Agent::start(&d, &token, &dir.join("agent"));
    let queued = d
        .ok(
            Method::POST,
            &format!("/api/projects/{project}/deployments"),
            None,
        )
        .await;
    // The pull reaching the registry means the agent's "running" report was
    // accepted (it is sent first); the claim alone already shows "running".
    wait_until(
        "the agent's pull reached the registry",
        DEPLOY_TIMEOUT,
        || async { pulls.load(Ordering::SeqCst) > 0 },
    )
    .await;
    assert_eq!(status_of(&d, project, &queued).await, "running");
    assert!(d.stop().success());
    // The agent finishes while nobody listens: its one report left, the
    // outcome, fails at least once.
    let agent_log = dir.join("agent.log");
    wait_until(
        "the agent tried to report to the stopped control plane",
        DEPLOY_TIMEOUT,
        || async {
            std::fs::read_to_string(&agent_log)
                .unwrap_or_default()
                .contains("report failed; retrying")
        },
    )
    .await;

    // Back on the same address: the agent's report arrives after all.
    let d = Daemon::start_with(&cp, &[], &[("AUTODEPLOY_LISTEN", listen.as_str())]);
    let dep = finished(&d, project, queued["id"].as_i64().unwrap() - 1).await;
    assert_eq!(dep["status"], "succeeded", "{}", dep["log_tail"]);
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/")).await,
        "served through a slow registry"
    );
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_deploy_reports_the_lost_deploy_after_a_restart_and_runs_the_next() {
    require_docker();
    let dir = temp_dir("e2e-kill");
    let reg = TestRegistry::start(&dir.join("registry"), None, None);
    let name = format!("gated-{}", std::process::id());
    build_and_push(
        &dir,
        &format!("{}/{name}:1", reg.addr),
        "deployed after the crash",
    );
    let _ = Command::new("docker")
        .args(["rmi", &format!("{}/{name}:1", reg.addr)])
        .output();
    // The image is pulled through a gate that holds the pull until the test
    // opens it: the deploy is mid-way for as long as the test needs.
    let gate = Gate::start(reg.port);
    let _images = RemoveRepos(vec![
        format!("{}/{name}", reg.addr),
        format!("127.0.0.1:{}/{name}", gate.port),
    ]);
    let d = Daemon::start(&dir.join("cp"));
    let token = d.add_node("n1").await;
    let port = free_port();
    let project = d.create_project(json!({"name": name, "project_type": "image", "image_ref": format!("127.0.0.1:{}/{name}:1", gate.port), "container_port": 8080, "expose_port": port})).await;
    let _cleanup = Cleanup(vec![format!("autodeploy-{name}-{project}")]);
    let work = dir.join("agent");
    let agent = Agent::start(&d, &token, &work);
    let lost = d
        .ok(
            Method::POST,
            &format!("/api/projects/{project}/deployments"),
            None,
        )
        .await;
    let marker = work.join("inflight").join(lost["id"].to_string());

    // Mid-deploy, by condition: the agent wrote its marker, reported
    // running, and its pull is waiting at the registry.
    wait_until(
        "the agent is mid-deploy (marker on disk, deployment running, pull held at the gate)",
        DEPLOY_TIMEOUT,
        || async {
            marker.is_file() && gate.held() > 0 && status_of(&d, project, &lost).await == "running"
        },
    )
    .await;
    agent.kill_9();
    assert_eq!(
        status_of(&d, project, &lost).await,
        "running",
        "nobody has reported the killed deploy yet"
    );
    assert!(marker.is_file(), "the marker outlives the killed agent");

    // Restarted, the agent reports the deploy it lost, and drops the marker.
    let _agent = Agent::start(&d, &token, &work);
    let dep = finished(&d, project, lost["id"].as_i64().unwrap() - 1).await;
    assert_eq!(dep["id"], lost["id"]);
    assert_eq!(dep["status"], "failed");
    assert!(
        dep["error"].as_str().unwrap().contains("agent restarted"),
        "{}",
        dep["error"]
    );
    wait_until(
        "the restarted agent removed the marker",
        Duration::from_secs(60),
        || async { !marker.exists() },
    )
    .await;

    // The next deployment runs to the end.
    gate.open();
    let next = d
        .ok(
            Method::POST,
            &format!("/api/projects/{project}/deployments"),
            None,
        )
        .await;
    let dep = finished(&d, project, lost["id"].as_i64().unwrap()).await;
    assert_eq!(dep["id"], next["id"]);
    assert_eq!(dep["status"], "succeeded", "{}", dep["log_tail"]);
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/")).await,
        "deployed after the crash"
    );
    d.stop();
}

/// Needs no Docker: the deploy must stop before it reaches docker compose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_whose_in_flight_marker_cannot_be_written_fails_saying_so_and_does_not_start() {
    let dir = temp_dir("e2e-marker");
    let d = Daemon::start(&dir.join("cp"));
    let token = d.add_node("n1").await;
    let work = dir.join("agent");
    let _agent = Agent::start(&d, &token, &work);
    // Once it heartbeats, the agent has made its inflight/ directory and
    // looked through it.
    wait_until("the agent heartbeats", Duration::from_secs(60), || async {
        online(&d, "n1").await
    })
    .await;
    // A file where the directory was: the marker cannot be written, even by root.
    std::fs::remove_dir_all(work.join("inflight")).unwrap();
    std::fs::write(work.join("inflight"), b"not a directory").unwrap();

    let name = format!("nomarker-{}", std::process::id());
    let project = d.create_project(json!({"name": name, "project_type": "image", "image_ref": "127.0.0.1:9/never-pulled:1", "container_port": 8080})).await;
    let queued = d
        .ok(
            Method::POST,
            &format!("/api/projects/{project}/deployments"),
            None,
        )
        .await;
    let dep = finished(&d, project, queued["id"].as_i64().unwrap() - 1).await;
    assert_eq!(dep["status"], "failed");
    let error = dep["error"].as_str().unwrap();
    assert!(
        error.contains("cannot record it as in flight") && error.contains("not started"),
        "{error}"
    );
    assert!(
        !dep["log_tail"].as_str().unwrap_or("").contains("compose"),
        "docker compose never ran: {}",
        dep["log_tail"]
    );
    d.stop();
}
