//! Faults for the chaos test, each a small loopback server or a bounded
//! load: an HTTP proxy that flaps between passing, 5xx, 429 with
//! `Retry-After` and a hang (in front of a real registry), a node link that
//! can hold back an agent's claims, a TCP relay that trickles a git
//! server's answers byte by byte, CPU burners, the real `autodeploy agent`
//! as a node, and a seeded RNG so a failing run can be replayed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// splitmix64: small, seedable, the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What a proxy does with one HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Relay it to the upstream server.
    Pass,
    /// Answer this status at once, with `Retry-After` seconds if given.
    Status(u16, Option<u64>),
    /// Read the request and never answer (until the client gives up).
    Hang,
}

type Decide = dyn Fn(&str, &str) -> Fault + Send + Sync;

/// Connections one proxy accepts in its life: a bound, far above what a
/// test run makes.
const MAX_CONNECTIONS: usize = 20_000;
/// A hung request is released after this long even if the client waits.
const MAX_HANG: Duration = Duration::from_secs(60);

/// A loopback HTTP/1.1 proxy that handles one request per connection (it
/// asks the upstream to close after answering, and closes too), deciding
/// each request's fate from its method and path.
struct HttpProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl HttpProxy {
    fn start(upstream: u16, decide: Arc<Decide>) -> HttpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_accept = stop.clone();
        let accept = std::thread::spawn(move || {
            let mut accepted = 0;
            while !stop_accept.load(Ordering::SeqCst) && accepted < MAX_CONNECTIONS {
                match listener.accept() {
                    Ok((client, _)) => {
                        accepted += 1;
                        let (decide, stop) = (decide.clone(), stop_accept.clone());
                        std::thread::spawn(move || {
                            let _ = client.set_nonblocking(false);
                            relay_one(client, upstream, &*decide, &stop);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HttpProxy {
            port,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn relay_one(mut client: TcpStream, upstream: u16, decide: &Decide, stop: &AtomicBool) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        head.extend_from_slice(&buf[..n]);
        // Not HTTP (a TLS hello, say): close, as a plain server would fail it.
        if !head[0].is_ascii_uppercase() || head.len() > 64 * 1024 {
            return;
        }
        if let Some(i) = find(&head, b"\r\n\r\n") {
            break i + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_string();
    let rest = head[end..].to_vec();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    match decide(method, path) {
        Fault::Pass => {
            let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                let _ = client.write_all(
                    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                return;
            };
            let mut out = format!("{request_line}\r\n");
            for h in &headers {
                let lower = h.to_ascii_lowercase();
                if !lower.starts_with("connection:") && !lower.starts_with("keep-alive:") {
                    out.push_str(h);
                    out.push_str("\r\n");
                }
            }
            out.push_str("Connection: close\r\n\r\n");
            if up.write_all(out.as_bytes()).is_err() || up.write_all(&rest).is_err() {
                return;
            }
            let _ = client.set_read_timeout(None);
            let (Ok(mut from_client), Ok(mut to_up)) = (client.try_clone(), up.try_clone()) else {
                return;
            };
            // The rest of the request body, whatever its framing; no
            // half-close towards the upstream (Go's server reads a FIN as
            // the client giving up).
            let body = std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_client, &mut to_up);
            });
            let _ = std::io::copy(&mut up, &mut client);
            let _ = client.shutdown(Shutdown::Both);
            let _ = up.shutdown(Shutdown::Both);
            let _ = body.join();
        }
        Fault::Status(code, retry_after) => {
            drain_body(&mut client, &headers, rest.len());
            let retry = retry_after
                .map(|s| format!("retry-after: {s}\r\n"))
                .unwrap_or_default();
            let reason = match code {
                204 => "No Content",
                429 => "Too Many Requests",
                500 => "Internal Server Error",
                502 => "Bad Gateway",
                503 => "Service Unavailable",
                _ => "Chaos",
            };
            let length = if code == 204 {
                ""
            } else {
                "content-length: 0\r\n"
            };
            let _ = client.write_all(
                format!("HTTP/1.1 {code} {reason}\r\n{length}{retry}connection: close\r\n\r\n")
                    .as_bytes(),
            );
            let _ = client.shutdown(Shutdown::Both);
        }
        Fault::Hang => {
            let _ = client.set_read_timeout(Some(Duration::from_millis(100)));
            let start = Instant::now();
            while !stop.load(Ordering::SeqCst) && start.elapsed() < MAX_HANG {
                match client.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// Reads what is left of a `content-length` body, so closing does not reset
/// the connection under the client before it reads the answer.
fn drain_body(client: &mut TcpStream, headers: &[&str], already: usize) {
    let length = headers
        .iter()
        .find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut left = length.saturating_sub(already);
    let mut buf = [0u8; 8192];
    while left > 0 {
        match client.read(&mut buf[..left.min(8192)]) {
            Ok(0) | Err(_) => return,
            Ok(n) => left -= n,
        }
    }
}

/// A registry proxy: passes everything while healthy; while flapping, each
/// request but the base endpoint's gets (seeded) a pass, a 500/502, a 429
/// with `Retry-After: 1`, or a hang.
pub struct FlappingRegistry {
    _proxy: HttpProxy,
    pub port: u16,
    pub addr: String,
    flapping: Arc<AtomicBool>,
    /// Requests met while flapping: (passed, 5xx, 429, hung).
    pub counts: Arc<Mutex<[usize; 4]>>,
}

impl FlappingRegistry {
    pub fn start(registry_port: u16, seed: u64) -> FlappingRegistry {
        let flapping = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new([0usize; 4]));
        let rng = Mutex::new(Rng::new(seed));
        let (f, c) = (flapping.clone(), counts.clone());
        let proxy = HttpProxy::start(
            registry_port,
            Arc::new(move |_method: &str, path: &str| {
                // The base endpoint answers: the daemon probes it once at
                // start and turns the image trigger off for its whole life
                // if it fails, and then no lookup would ever meet a fault.
                let fault = if !f.load(Ordering::SeqCst) || path == "/v2/" {
                    Fault::Pass
                } else {
                    let mut rng = rng.lock().unwrap();
                    match rng.below(100) {
                        0..40 => Fault::Pass,
                        40..60 => Fault::Status(if rng.chance(50) { 500 } else { 502 }, None),
                        60..80 => Fault::Status(429, Some(1)),
                        _ => Fault::Hang,
                    }
                };
                if f.load(Ordering::SeqCst) {
                    let slot = match fault {
                        Fault::Pass => 0,
                        Fault::Status(429, _) => 2,
                        Fault::Status(..) => 1,
                        Fault::Hang => 3,
                    };
                    c.lock().unwrap()[slot] += 1;
                }
                fault
            }),
        );
        let port = proxy.port;
        FlappingRegistry {
            _proxy: proxy,
            port,
            addr: format!("127.0.0.1:{port}"),
            flapping,
            counts,
        }
    }

    pub fn set_flapping(&self, on: bool) {
        self.flapping.store(on, Ordering::SeqCst);
    }
}

/// How the node link treats the agent's requests.
const LINK_PASS: u8 = 0;
const LINK_HOLD_CLAIMS: u8 = 1;

/// Sits between a deploy agent and the control plane: normally passes
/// everything; can answer the agent's claims with 204 ("nothing for you")
/// while heartbeats and reports still pass, so the test can take a node
/// offline only once it holds no deploy.
pub struct NodeLink {
    _proxy: HttpProxy,
    pub url: String,
    mode: Arc<AtomicU8>,
}

impl NodeLink {
    pub fn start(control_plane_port: u16) -> NodeLink {
        let mode = Arc::new(AtomicU8::new(LINK_PASS));
        let m = mode.clone();
        let proxy = HttpProxy::start(
            control_plane_port,
            Arc::new(move |_method: &str, path: &str| {
                if m.load(Ordering::SeqCst) == LINK_HOLD_CLAIMS && path == "/api/agent/claim" {
                    Fault::Status(204, None)
                } else {
                    Fault::Pass
                }
            }),
        );
        NodeLink {
            url: format!("http://127.0.0.1:{}", proxy.port),
            _proxy: proxy,
            mode,
        }
    }

    pub fn hold_claims(&self, hold: bool) {
        self.mode.store(
            if hold { LINK_HOLD_CLAIMS } else { LINK_PASS },
            Ordering::SeqCst,
        );
    }
}

/// A TCP relay in front of a git server that, while trickling, passes the
/// server's answers on one byte every 400 ms (requests pass at full speed).
/// Healing speeds up connections already open, too.
pub struct Trickle {
    pub port: u16,
    trickling: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Trickle {
    pub fn start(upstream: u16) -> Trickle {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let trickling = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (trickling.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            let mut accepted = 0;
            while !s.load(Ordering::SeqCst) && accepted < MAX_CONNECTIONS {
                match listener.accept() {
                    Ok((client, _)) => {
                        accepted += 1;
                        let (t, s) = (t.clone(), s.clone());
                        std::thread::spawn(move || {
                            let _ = client.set_nonblocking(false);
                            trickle_one(client, upstream, &t, &s);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Trickle {
            port,
            trickling,
            stop,
            accept: Some(accept),
        }
    }

    pub fn set_trickling(&self, on: bool) {
        self.trickling.store(on, Ordering::SeqCst);
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn trickle_one(mut client: TcpStream, upstream: u16, trickling: &AtomicBool, stop: &AtomicBool) {
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(mut from_client), Ok(mut to_up)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let requests = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_up);
        let _ = to_up.shutdown(Shutdown::Write);
    });
    let mut buf = [0u8; 8192];
    'relay: loop {
        let n = match up.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut i = 0;
        while i < n {
            if stop.load(Ordering::SeqCst) {
                break 'relay;
            }
            let step = if trickling.load(Ordering::SeqCst) {
                1
            } else {
                n - i
            };
            if client.write_all(&buf[i..i + step]).is_err() {
                break 'relay;
            }
            i += step;
            if step == 1 && i < n {
                std::thread::sleep(Duration::from_millis(400));
            }
        }
        if trickling.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(400));
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
    let _ = requests.join();
}

/// Busy threads that keep `threads` cores saturated until dropped, and
/// stop by themselves after `max` in any case.
pub struct CpuBurn {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

pub fn burn_cpu(threads: usize, max: Duration) -> CpuBurn {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..threads)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut x = i as u64 + 1;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) ^ 1);
                    }
                }
                x
            })
        })
        .collect();
    CpuBurn { stop, threads }
}

impl Drop for CpuBurn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Stand-ins for `docker` and `docker-compose` on the chaos node. `docker`
/// fails (so the agent picks `docker-compose`); `docker-compose pull`
/// resolves each image of the compose file to the digest its tag has in the
/// registry right now (as a pull would) and prints `pulled IMAGE@DIGEST`;
/// `up` prints `up PROJECT`. The output lands in the deployment's log tail:
/// what the node really ran.
///
/// `via` is the registry address the compose files name, `direct` where the
/// registry really listens (the node has a healthy path to it); `authfile`
/// holds its credentials, so they never reach an argument or an output.
/// Stand-in for docker on the chaos node: no compose v2 (so the agent runs
/// the docker-compose stand-in), and one running, never-restarted service
/// container per project for the agent's health gate.
const DOCKER_STAND_IN: &str = r#"#!/bin/sh
case "$1" in
  ps)
    for a in "$@"; do
      case "$a" in label=com.docker.compose.project=*) echo "chaos-${a#*=}" ;; esac
    done ;;
  inspect)
    printf '[{"Id":"%s","Config":{"Labels":{"com.docker.compose.service":"app"},"Image":"app"},"State":{"Status":"running","ExitCode":0},"RestartCount":0,"Image":"sha256:0000000000000000000000000000000000000000000000000000000000000000","NetworkSettings":{"Ports":{}}}]\n' "$2" ;;
  image) echo '[{"RepoDigests":[]}]' ;;
  *) exit 1 ;;
esac
"#;

pub fn node_tools(dir: &Path, via: &str, direct: &str, authfile: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("node-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let compose = format!(
        r#"#!/bin/sh
# Stand-in for docker-compose on the chaos node (see tests/common/chaos.rs).
files=""
while [ $# -gt 0 ]; do
  case "$1" in
    -p) name=$2; shift 2 ;;
    -f) files="$files $2"; shift 2 ;;
    *) break ;;
  esac
done
file=${{files# }}; file=${{file%% *}}
pins=${{files#* $file}}; pins=${{pins# }}
case "$1" in
  pull)
    for image in $(sed -n 's/^ *image: *//p' "$file" | tr -d '"'); do
      repo=${{image%:*}}
      pinned=""
      [ -n "$pins" ] && pinned=$(sed -n 's/^ *image: *//p' $pins | tr -d '"' | grep -F "$repo@" | head -n 1)
      if [ -n "$pinned" ]; then
        digest=${{pinned#*@}}
      else
        real=$(printf '%s' "$image" | sed 's#^{via}/#{direct}/#')
        digest=$(skopeo inspect --tls-verify=false --authfile {authfile} --format '{{{{.Digest}}}}' "docker://$real") || {{ echo "cannot resolve $image"; exit 1; }}
      fi
      echo "pulled $image@$digest"
    done ;;
  up) echo "up $name" ;;
esac
"#,
        authfile = authfile.display()
    );
    for (name, body) in [
        ("docker", DOCKER_STAND_IN.to_string()),
        ("docker-compose", compose),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

/// A skopeo/containers auth file for `addr`.
pub fn authfile(path: &Path, addr: &str, user: &str, password: &str) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        path,
        format!(r#"{{"auths":{{"{addr}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
}

/// The real `autodeploy agent` as a deploy node, with `tools` first on its
/// PATH; its stderr is appended to `log` across restarts. Killed (SIGKILL)
/// when dropped.
/// Ended with its process group when dropped.
pub struct NodeAgent {
    _child: super::reap::Proc,
}

impl NodeAgent {
    pub fn start(
        control_plane: &str,
        token: &str,
        work_dir: &Path,
        tools: &Path,
        log: &Path,
    ) -> NodeAgent {
        let path = format!(
            "{}:{}",
            tools.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = super::reap::spawn(
            Command::new(env!("CARGO_BIN_EXE_autodeploy"))
                .args([
                    "agent",
                    "--control-plane",
                    control_plane,
                    "--heartbeat-seconds",
                    "1",
                    "--parallel",
                    "4",
                    "--deploy-timeout-seconds",
                    "600",
                ])
                .arg("--work-dir")
                .arg(work_dir)
                // The token through the environment, as a careful operator
                // would pass it (never in `ps`).
                .env("AUTODEPLOY_NODE_TOKEN", token)
                .env("PATH", path)
                .env("RUST_LOG", "debug")
                .stdout(Stdio::null())
                .stderr(stderr),
        )
        .expect("start autodeploy agent");
        NodeAgent { _child: child }
    }
}
