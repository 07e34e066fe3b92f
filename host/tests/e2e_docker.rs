//! End to end on the real Docker Engine: pushes and image changes end with
//! the new version running in a container, through the agent. Skipped, with
//! a loud message, only where `docker info` fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::daemon::{Daemon, temp_dir};
use common::git::{free_port, git};
use common::registry::TestRegistry;
use reqwest::Method;
use serde_json::{Value, json};

fn docker_ok() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    )
    .unwrap();
    sh(Command::new("docker")
        .args(["build", "-q", "-t", image])
        .arg(&ctx));
    sh(Command::new("docker").args(["push", "-q", image]));
}

struct Agent(Child);

impl Agent {
    fn start(d: &Daemon, token: &str, dir: &Path) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
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
            .stderr(std::fs::File::create(dir.with_extension("log")).unwrap())
            .spawn()
            .unwrap();
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// Waits for the newest deployment of `id` to finish; returns it.
async fn finished(d: &Daemon, id: i64, after: i64) -> Value {
    for _ in 0..240 {
        let deps = d
            .ok(
                Method::GET,
                &format!("/api/projects/{id}/deployments"),
                None,
            )
            .await;
        if let Some(dep) = deps
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"].as_i64().unwrap() > after)
            && matches!(dep["status"].as_str(), Some("succeeded" | "failed"))
        {
            return dep.clone();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("deployment of project {id} did not finish within 60 s");
}

async fn get(url: &str) -> String {
    for _ in 0..40 {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return r.text().await.unwrap().trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{url} did not answer");
}

fn compose_file(image: &str, port: u16) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    ports: [\"127.0.0.1:{port}:8080\"]\n    volumes: [\"data:/www/data\"]\nvolumes:\n  data: {{}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_image_changes_end_with_the_new_version_running() {
    if !docker_ok() {
        eprintln!(
            "\n!!! SKIPPED: `docker info` failed; the end-to-end docker test did not run !!!\n"
        );
        return;
    }
    let dir = temp_dir("e2e");
    let reg = TestRegistry::start(&dir.join("registry"), None, None);
    let tag = format!("{}/e2e-web-{}:1", reg.addr, std::process::id());
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
    let n1 = d
        .ok(Method::POST, "/api/nodes", Some(json!({"name": "n1"})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let n2 = d
        .ok(Method::POST, "/api/nodes", Some(json!({"name": "n2"})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
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
    let agent2 = Agent::start(&d, &n2, &dir.join("agent2"));
    tokio::time::sleep(Duration::from_secs(7)).await;
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
    let build = d
        .create_project(json!({"name": format!("build{suffix}"), "project_type": "deployment"}))
        .await;
    d.ok(
        Method::POST,
        &format!("/api/projects/{build}/deployments"),
        None,
    )
    .await;
    let dep_build = finished(&d, build, 0).await;
    assert_eq!(dep_build["status"], "failed");
    assert!(
        dep_build["error"]
            .as_str()
            .unwrap()
            .contains("deployment project is not deployed"),
        "{}",
        dep_build["error"]
    );

    // An agent that restarts mid-deploy reports the deploy it lost as failed.
    drop(agent2);
    let queued = d
        .ok(
            Method::POST,
            &format!("/api/projects/{other}/deployments"),
            None,
        )
        .await;
    let (status, claim) = d
        .call(Method::POST, "/api/agent/claim", Some(&n2), None)
        .await;
    assert_eq!(status.as_u16(), 200, "{claim}");
    assert_eq!(claim["deployment"]["id"], queued["id"]);
    let work: PathBuf = dir.join("agent2");
    std::fs::write(work.join("inflight").join(queued["id"].to_string()), b"").unwrap();
    let _agent2 = Agent::start(&d, &n2, &work);
    let dep = finished(&d, other, dep["id"].as_i64().unwrap()).await;
    assert_eq!(dep["id"], queued["id"]);
    assert!(
        dep["error"].as_str().unwrap().contains("agent restarted"),
        "{}",
        dep["error"]
    );
    d.stop();
}

/// Relays TCP connections to `target`, each after `delay`: a slow registry.
fn slow_proxy(target: u16, delay: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Bounded: one pull makes a handful of connections.
        for inbound in listener.incoming().take(64).flatten() {
            std::thread::spawn(move || {
                std::thread::sleep(delay);
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
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_survives_the_control_plane_going_down() {
    if !docker_ok() {
        eprintln!(
            "\n!!! SKIPPED: `docker info` failed; the end-to-end docker test did not run !!!\n"
        );
        return;
    }
    let dir = temp_dir("e2e-cp-down");
    let reg = TestRegistry::start(&dir.join("registry"), None, None);
    // Pulled through a proxy that answers each connection after 1 s, so the
    // deploy is still running when the control plane goes away.
    let slow = slow_proxy(reg.port, Duration::from_secs(1));
    let name = format!("slow-{}", std::process::id());
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
    let token = d
        .ok(Method::POST, "/api/nodes", Some(json!({"name": "n1"})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
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
    let mut running = false;
    for _ in 0..40 {
        let deps = d
            .ok(
                Method::GET,
                &format!("/api/projects/{project}/deployments"),
                None,
            )
            .await;
        if deps[0]["status"] == "running" {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running, "the agent claimed the deployment");
    assert!(d.stop().success());
    // Longer than the slow pull: the agent finishes while nobody listens.
    tokio::time::sleep(Duration::from_secs(20)).await;

    // Back on the same address: the agent's report arrives after all.
    let d = Daemon::start_with(&cp, &[], &[("AUTODEPLOY_LISTEN", listen.as_str())]);
    let dep = finished(&d, project, queued["id"].as_i64().unwrap() - 1).await;
    assert_eq!(dep["status"], "succeeded", "{}", dep["log_tail"]);
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/")).await,
        "served through a slow registry"
    );
    let agent_log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    assert!(
        agent_log.contains("report failed; retrying"),
        "the report really was retried: {dep}\n{agent_log}"
    );
    d.stop();
}
