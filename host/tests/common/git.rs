//! Real git servers on loopback for the tests: bare repositories, `git
//! daemon`, sshd, and a server that accepts connections and never answers.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::reap::{self, Proc};
use std::time::Duration;

/// Runs git in `dir`; panics with its stderr on failure; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository at `path` with one commit on `main`; returns its SHA.
pub fn bare_with_commit(path: &Path) -> String {
    std::fs::create_dir_all(path).unwrap();
    git(path, &["init", "-q", "--bare", "-b", "main"]);
    commit_to(path, "main", "first")
}

/// Adds a commit to `branch` of the bare repository (through a scratch
/// clone) and returns the new SHA.
pub fn commit_to(bare: &Path, branch: &str, message: &str) -> String {
    let work = bare.with_extension(format!("work-{}", rand_suffix()));
    let _ = std::fs::remove_dir_all(&work);
    git(
        bare.parent().unwrap(),
        &[
            "clone",
            "-q",
            bare.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    let _ = Command::new("git")
        .args(["checkout", "-q", "-B", branch])
        .current_dir(&work)
        .output();
    if git(&work, &["branch", "-r"]).contains(&format!("origin/{branch}")) {
        git(
            &work,
            &["reset", "-q", "--hard", &format!("origin/{branch}")],
        );
    }
    std::fs::write(work.join("file.txt"), message).unwrap();
    git(&work, &["add", "file.txt"]);
    git(&work, &["commit", "-q", "--allow-empty", "-m", message]);
    git(
        &work,
        &["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")],
    );
    let sha = git(&work, &["rev-parse", "HEAD"]);
    std::fs::remove_dir_all(&work).unwrap();
    sha
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    wait_for_addr("127.0.0.1", port);
}

fn wait_for_addr(ip: &str, port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect((ip, port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {ip}:{port}");
}

/// A process killed with its process group when dropped.
pub struct Server {
    child: Option<Proc>,
    pub port: u16,
}

impl Server {
    /// Wraps a started process, waiting until it listens on `port`.
    pub fn wrap(child: Proc, port: u16) -> Server {
        wait_for_port(port);
        Server {
            child: Some(child),
            port,
        }
    }

    /// As `wrap`, for a process listening on `ip` rather than 127.0.0.1.
    pub fn wrap_at(child: Proc, ip: &str, port: u16) -> Server {
        wait_for_addr(ip, port);
        Server {
            child: Some(child),
            port,
        }
    }

    /// A stand-in for a stopped server.
    pub fn dead(port: u16) -> Server {
        Server { child: None, port }
    }

    /// Its process id (and process group), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// `git daemon` exporting every repository under `base`.
pub fn git_daemon(base: &Path) -> Server {
    let port = free_port();
    // `git` runs `git-daemon` as a child, which forks one per connection:
    // the guard ends the whole group.
    let child = reap::spawn(git_daemon_command(base, port, &[]).stderr(Stdio::null()))
        .expect("run git daemon");
    Server::wrap(child, port)
}

/// `extra` options go before the directory (git daemon takes every
/// argument after the first directory as another directory).
fn git_daemon_command(base: &Path, port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.args([
        "daemon",
        "--reuseaddr",
        "--export-all",
        "--listen=127.0.0.1",
    ])
    .args(extra)
    .arg(format!("--port={port}"))
    .arg(format!("--base-path={}", base.display()))
    .arg(base)
    .stdout(Stdio::null());
    cmd
}

/// One `upload-pack` request `git daemon --verbose` logged: which
/// repository (its path under the base, e.g. `/r001.git`) and when the
/// line reached the test (milliseconds since the Unix epoch).
#[derive(Debug, Clone)]
pub struct UploadPack {
    pub at_ms: u64,
    pub repo: String,
}

/// `git daemon --verbose`, each upload-pack request (a head lookup or a
/// fetch) recorded as it is logged. The daemon's log has no time of its
/// own: a thread stamps each line as it reads it.
pub struct LoggedGitDaemon {
    server: Server,
    pub port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<UploadPack>>>,
}

impl LoggedGitDaemon {
    pub fn start(base: &Path) -> LoggedGitDaemon {
        use std::io::BufRead;
        let port = free_port();
        // A group of its own (`reap::spawn`): `git` runs `git-daemon` as a
        // child, which killing `git` alone would leave running.
        let mut child = reap::spawn(
            git_daemon_command(base, port, &["--verbose", "--max-connections=256"])
                .stderr(Stdio::piped()),
        )
        .expect("run git daemon");
        let stderr = child.stderr.take().unwrap();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = requests.clone();
        // Ends when the daemon (and every child it forked) has exited.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(repo) = line
                    .split_once("Request upload-pack for '")
                    .and_then(|(_, rest)| rest.strip_suffix('\''))
                {
                    sink.lock().unwrap().push(UploadPack {
                        at_ms: epoch_ms(),
                        repo: repo.to_string(),
                    });
                }
            }
        });
        LoggedGitDaemon {
            server: Server::wrap(child, port),
            port,
            requests,
        }
    }

    /// Every upload-pack request so far, in the order they were logged.
    pub fn requests(&self) -> Vec<UploadPack> {
        self.requests.lock().unwrap().clone()
    }

    /// The URL of the repository at `path` under the base.
    pub fn url(&self, path: &str) -> String {
        format!(
            "git://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    pub fn stop(self) {}
}

pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A bare repository `{name}.git` under `dir` whose `main` holds one
/// commit with `docker-compose.yml` = `compose`; returns its file:// URL.
pub fn bare_compose_repo(dir: &Path, name: &str, compose: &str) -> String {
    let bare = dir.join(format!("{name}.git"));
    let work = dir.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("docker-compose.yml"), compose).unwrap();
    git(&work, &["add", "docker-compose.yml"]);
    git(&work, &["commit", "-q", "-m", "compose"]);
    let (work, bare) = (work.to_str().unwrap(), bare.to_str().unwrap());
    git(dir, &["clone", "-q", "--bare", work, bare]);
    format!("file://{bare}")
}

/// A bare repository at `path` whose `main` holds one commit with `file.txt`
/// = `content`, written in-process (hundreds of repositories in seconds);
/// returns the commit's SHA.
pub fn bare_with_file(path: &Path, content: &str) -> String {
    // No template: git's sample hooks would be most of the files written.
    let repo = git2::Repository::init_opts(
        path,
        git2::RepositoryInitOptions::new()
            .bare(true)
            .external_template(false),
    )
    .unwrap();
    repo.set_head("refs/heads/main").unwrap();
    commit_file(&repo, content)
}

/// Adds a commit on top of `main` of the bare repository at `path`, with
/// `file.txt` = `content`; returns its SHA.
pub fn advance(path: &Path, content: &str) -> String {
    commit_file(&git2::Repository::open_bare(path).unwrap(), content)
}

fn commit_file(repo: &git2::Repository, content: &str) -> String {
    let blob = repo.blob(content.as_bytes()).unwrap();
    let mut tree = repo.treebuilder(None).unwrap();
    tree.insert("file.txt", blob, 0o100644).unwrap();
    let tree = repo.find_tree(tree.write().unwrap()).unwrap();
    let parent = repo
        .find_reference("refs/heads/main")
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let sig = git2::Signature::now("test", "test@example.com").unwrap();
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        content,
        &tree,
        &parents,
    )
    .unwrap()
    .to_string()
}

/// sshd on loopback that lets in one freshly made key (as the current
/// user); returns the server and the private key (PEM).
pub fn sshd(dir: &Path) -> (Server, String) {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sshd is missing: the test command installs openssh-server");
    std::fs::create_dir_all(dir).unwrap();
    let keygen = |path: &PathBuf, kind: &[&str]| {
        let _ = std::fs::remove_file(path);
        let ok = Command::new("ssh-keygen")
            .args(kind)
            .args(["-q", "-N", "", "-f"])
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let host_key = dir.join("host_key");
    let client_key = dir.join("client_key");
    keygen(&host_key, &["-t", "ed25519"]);
    keygen(&client_key, &["-t", "rsa", "-b", "2048", "-m", "PEM"]);
    std::fs::copy(
        client_key.with_extension("pub"),
        dir.join("authorized_keys"),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").ok();
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             StrictModes no\nUsePAM no\n",
            host_key.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let child = reap::spawn(
        Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("run sshd");
    (
        Server::wrap(child, port),
        std::fs::read_to_string(&client_key).unwrap(),
    )
}

/// Accepts TCP connections and never answers.
pub struct Silent {
    pub port: u16,
    _listener: TcpListener,
}

pub fn silent_server() -> Silent {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = listener.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        // Bounded: the test makes a handful of connections.
        for stream in accept.incoming().take(64) {
            match stream {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
    });
    Silent {
        port,
        _listener: listener,
    }
}

pub fn whoami() -> String {
    String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// nginx + fcgiwrap + `git http-backend`, the usual self-hosted smart-HTTP
/// setup, serving every repository under `repos` at `/git/...` behind HTTP
/// basic auth for `user`:`password`.
pub struct Nginx {
    nginx: Server,
    /// Its workers outlive it when only the parent dies: the guard ends
    /// the whole group.
    fcgiwrap: Proc,
    pub port: u16,
    /// One line per request: `"GET /git/..." 200 user=NAME` (the basic-auth
    /// user, `-` when the request carried none).
    pub access_log: PathBuf,
}

impl Nginx {
    /// nginx's and fcgiwrap's process ids (each its own process group).
    pub fn pids(&self) -> [u32; 2] {
        [self.nginx.pid().unwrap(), self.fcgiwrap.id()]
    }

    /// The requests nginx has logged so far.
    pub fn requests(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }
}

/// A throw-away certificate authority and a server certificate it signed
/// for `localhost` and 127.0.0.1 (only: 127.0.0.2 is deliberately left
/// out), made with the `openssl` command.
pub struct TestCa {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

pub fn test_ca(dir: &Path) -> TestCa {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is missing: the test command installs it");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(
        &[
            &["req", "-x509", "-nodes", "-days", "2"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=autodeploy test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-nodes"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    TestCa {
        ca_pem: dir.join("ca.pem"),
        cert_pem: dir.join("server.pem"),
        key_pem: dir.join("server.key"),
    }
}

pub fn nginx_git(dir: &Path, repos: &Path, user: &str, password: &str) -> Nginx {
    nginx_git_with(dir, repos, user, password, None)
}

/// The same over HTTPS with `tls`'s server certificate, listening on
/// 127.0.0.1 and 127.0.0.2 (a name the certificate does not hold).
pub fn nginx_git_tls(dir: &Path, repos: &Path, user: &str, password: &str, tls: &TestCa) -> Nginx {
    nginx_git_with(dir, repos, user, password, Some(tls))
}

fn nginx_git_with(
    dir: &Path,
    repos: &Path,
    user: &str,
    password: &str,
    tls: Option<&TestCa>,
) -> Nginx {
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let hash = Command::new("openssl")
        .args(["passwd", "-apr1", password])
        .output()
        .unwrap();
    assert!(hash.status.success());
    std::fs::write(
        dir.join("htpasswd"),
        format!("{user}:{}", String::from_utf8_lossy(&hash.stdout).trim()),
    )
    .unwrap();
    let socket = dir.join("fcgi.sock");
    let _ = std::fs::remove_file(&socket);
    let fcgiwrap = reap::spawn(
        Command::new("fcgiwrap")
            .args(["-c", "2", "-s"])
            .arg(format!("unix:{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("fcgiwrap is missing: the test command installs it");
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = free_port();
    let backend = [
        "/usr/lib/git-core/git-http-backend",
        "/usr/libexec/git-core/git-http-backend",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("git-http-backend");
    let d = dir.display();
    let listen = match tls {
        None => format!("listen 127.0.0.1:{port};"),
        Some(ca) => format!(
            "listen 127.0.0.1:{port} ssl;\n    listen 127.0.0.2:{port} ssl;\n    \
             ssl_certificate {};\n    ssl_certificate_key {};",
            ca.cert_pem.display(),
            ca.key_pem.display()
        ),
    };
    let config = format!(
        r#"daemon off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
  log_format requests '"$request" $status user=$remote_user';
  access_log {d}/access.log requests;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  server {{
    {listen}
    location ~ ^/git(/.*)$ {{
      auth_basic "git";
      auth_basic_user_file {d}/htpasswd;
      client_max_body_size 0;
      fastcgi_pass unix:{sock};
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {backend};
      fastcgi_param GIT_PROJECT_ROOT {repos};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO $1;
      fastcgi_param REMOTE_USER $remote_user;
    }}
  }}
}}
"#,
        sock = socket.display(),
        repos = repos.display(),
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let child = reap::spawn(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("nginx is missing: the test command installs it");
    Nginx {
        nginx: Server::wrap(child, port),
        fcgiwrap,
        port,
        access_log: dir.join("access.log"),
    }
}

/// Commits `compose` as docker-compose.yml in the work tree `work` (made on
/// first use) and pushes it to hosted project `id` on the daemon at
/// `daemon_url` with its push token; returns the pushed commit.
pub fn push_compose(work: &Path, daemon_url: &str, id: i64, token: &str, compose: &str) -> String {
    if !work.join(".git").exists() {
        std::fs::create_dir_all(work).unwrap();
        git(work, &["init", "-q", "-b", "main"]);
    }
    std::fs::write(work.join("docker-compose.yml"), compose).unwrap();
    git(work, &["add", "docker-compose.yml"]);
    git(work, &["commit", "-q", "-m", "compose"]);
    let remote = format!(
        "http://x:{token}@{}/git/{id}.git",
        daemon_url.trim_start_matches("http://")
    );
    git(work, &["push", "-q", &remote, "main"]);
    git(work, &["rev-parse", "HEAD"])
}
