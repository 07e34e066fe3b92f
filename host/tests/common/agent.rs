//! The real `autodeploy agent` on this machine, and what its deploys need:
//! images built with the Docker Engine and pushed to a loopback registry, a
//! relay that holds pulls mid-way, and cleanup of the compose projects.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::reap::Proc;
use std::sync::{Arc, Condvar, Mutex};

/// Runs `cmd`; panics with its stderr on failure; returns stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Panics unless the Docker Engine answers: a deploy test that passes
/// without Docker would prove nothing.
pub fn require_docker() {
    match Command::new("docker").arg("info").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Docker Engine does not answer (`docker info` exited with {}): {}\n\
             these tests need a running Docker Engine; start it and run them again",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "cannot run `docker info` ({e}): these tests need the docker CLI and a running Docker Engine"
        ),
    }
}

/// `dockerfile` with a label naming `owner` right after its `FROM` line, so
/// none of its layers is another build's: tests build in parallel and each
/// removes its images when done, and a build that took a cached layer of
/// another test's image fails when that test removes it ("unknown parent
/// image ID").
pub fn own_layers(dockerfile: &str, owner: &str) -> String {
    let (from, rest) = dockerfile.split_once('\n').unwrap_or((dockerfile, ""));
    format!("{from}\nLABEL autodeploy.test.owner=\"{owner}\"\n{rest}")
}

/// Builds `FROM scratch` + busybox with one directory per `(dir, page)`
/// under /www (each with that `index.html`), pushes it as `image`, and
/// removes the local copy so a deploy has to pull it.
pub fn build_and_push(work: &Path, image: &str, pages: &[(&str, &str)]) {
    let ctx = work.join("image");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("/bin/busybox (busybox-static)");
    for (dir, page) in pages {
        std::fs::create_dir_all(ctx.join("www").join(dir)).unwrap();
        std::fs::write(ctx.join("www").join(dir).join("index.html"), page).unwrap();
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        own_layers(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n",
            image,
        ),
    )
    .unwrap();
    sh(Command::new("docker")
        .args(["build", "-q", "-t", image])
        .arg(&ctx));
    sh(Command::new("docker").args(["push", "-q", image]));
    let _ = Command::new("docker").args(["rmi", image]).output();
}

/// A compose file whose one service serves `/www/{page}` of `image`.
pub fn compose_file(image: &str, page: &str, port: u16) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    command: [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www/{page}\"]\n    ports: [\"127.0.0.1:{port}:8080\"]\n"
    )
}

/// A running `autodeploy agent`, killed when dropped.
pub struct Agent {
    /// Ended with its process group (the compose runs it started) when
    /// dropped.
    child: Proc,
    pub work_dir: PathBuf,
    /// Its stderr, appended across restarts.
    pub log: PathBuf,
}

impl Agent {
    /// The node token goes in the environment, not the arguments: anyone on
    /// the node can read process arguments. `env` is added.
    pub fn start(control_plane: &str, token: &str, work_dir: &Path, env: &[(&str, &str)]) -> Agent {
        std::fs::create_dir_all(work_dir).unwrap();
        let log = work_dir.with_extension("log");
        let child = super::reap::spawn(
            Command::new(env!("CARGO_BIN_EXE_autodeploy"))
                .args([
                    "agent",
                    "--control-plane",
                    control_plane,
                    "--heartbeat-seconds",
                    "1",
                ])
                .arg("--work-dir")
                .arg(work_dir)
                .env("AUTODEPLOY_NODE_TOKEN", token)
                .env("RUST_LOG", "debug")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .unwrap(),
                ),
        )
        .expect("start autodeploy agent");
        Agent {
            child,
            work_dir: work_dir.to_path_buf(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Removes every container, volume and network of the named compose projects.
pub struct Cleanup(pub Vec<String>);

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
            // Networks too: docker has only ~30 default address pools.
            let _ = Command::new("docker")
                .args(["network", "rm", &format!("{project}_default")])
                .output();
            let volumes = Command::new("docker")
                .args([
                    "volume",
                    "ls",
                    "-q",
                    "--filter",
                    &format!("label=com.docker.compose.project={project}"),
                ])
                .output();
            if let Ok(out) = volumes {
                for v in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("docker").args(["volume", "rm", v]).output();
                }
            }
        }
    }
}

/// Removes every local image of the named repositories: each tag, and
/// those pulled by digest only. By reference, not id: an image another
/// test also tagged (the same build, from the cache) stays for that test.
pub struct RemoveRepos(pub Vec<String>);

impl Drop for RemoveRepos {
    fn drop(&mut self) {
        for repo in &self.0 {
            let Ok(out) = Command::new("docker")
                .args([
                    "images",
                    "--digests",
                    "--format",
                    "{{.Repository}} {{.Tag}} {{.Digest}}",
                    repo,
                ])
                .output()
            else {
                continue;
            };
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let refs: Vec<String> = match line.split_whitespace().collect::<Vec<_>>()[..] {
                    [r, tag, digest] => [
                        (tag != "<none>").then(|| format!("{r}:{tag}")),
                        (digest != "<none>").then(|| format!("{r}@{digest}")),
                    ]
                    .into_iter()
                    .flatten()
                    .collect(),
                    _ => continue,
                };
                for r in refs {
                    let _ = Command::new("docker").args(["rmi", &r]).output();
                }
            }
        }
    }
}

/// What Docker still holds of compose project `project` (containers,
/// networks, volumes) and of the image repositories `repos`.
pub fn leftovers(project: &str, repos: &[String]) -> Vec<String> {
    let label = format!("label=com.docker.compose.project={project}");
    let name = format!("name={project}");
    let mut found = Vec::new();
    let mut list = |what: &str, args: &[&str]| {
        let out = sh(Command::new("docker").args(args));
        found.extend(out.split_whitespace().map(|x| format!("{what} {x}")));
    };
    list("container", &["ps", "-aq", "--filter", &label]);
    list("network", &["network", "ls", "-q", "--filter", &name]);
    list("volume", &["volume", "ls", "-q", "--filter", &label]);
    for repo in repos {
        list("image", &["images", "-q", repo]);
    }
    found
}

/// Removes the named local images (those a deploy pulled).
pub struct RemoveImages(pub Vec<String>);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = Command::new("docker").args(["rmi", image]).output();
        }
    }
}

/// A process on this machine, as /proc shows it.
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// Arguments joined with spaces.
    pub cmdline: String,
    /// `NAME=value` entries joined with newlines (empty when unreadable).
    pub environ: String,
}

/// Every process /proc lists now (those that exit while being read are skipped).
pub fn processes() -> Vec<Process> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let read = |f: &str| std::fs::read(entry.path().join(f)).ok();
        let (Some(cmdline), Some(stat)) = (read("cmdline"), read("stat")) else {
            continue;
        };
        // stat is "pid (comm) state ppid ...": comm may hold spaces, so
        // count from the last ')'.
        let stat = String::from_utf8_lossy(&stat).to_string();
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        let join = |bytes: Vec<u8>, sep: &str| {
            bytes
                .split(|b| *b == 0)
                .map(|s| String::from_utf8_lossy(s).to_string())
                .collect::<Vec<_>>()
                .join(sep)
        };
        all.push(Process {
            pid,
            ppid,
            cmdline: join(cmdline, " "),
            environ: read("environ").map(|e| join(e, "\n")).unwrap_or_default(),
        });
    }
    all
}

/// `root` and every process below it.
pub fn process_tree(root: u32) -> Vec<Process> {
    let all = processes();
    let mut pids = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for p in &all {
            if pids.contains(&p.ppid) && !pids.contains(&p.pid) {
                pids.push(p.pid);
                grew = true;
            }
        }
    }
    all.into_iter().filter(|p| pids.contains(&p.pid)).collect()
}

/// Every file under `dir` whose name or content holds `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name_holds = entry
                .file_name()
                .as_encoded_bytes()
                .windows(needle.len())
                .any(|w| w == needle);
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path.clone());
            }
            let content_holds = kind.is_file()
                && std::fs::read(&path).is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle));
            if name_holds || content_holds {
                found.push(path);
            }
        }
    }
    found
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

#[derive(Default)]
struct GateState {
    open: bool,
    closed: bool,
    /// Connections accepted and waiting for the gate to open.
    held: usize,
}

/// A relay to a registry that holds every connection until `open()`: a pull
/// through it waits, for as long as the test wants, at a point the test can
/// see (`held()`). Dropping it closes what it holds.
pub struct Gate {
    pub port: u16,
    state: Arc<(Mutex<GateState>, Condvar)>,
}

impl Gate {
    pub fn start(target: u16) -> Gate {
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

    pub fn held(&self) -> usize {
        self.state.0.lock().unwrap().held
    }

    pub fn open(&self) {
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
