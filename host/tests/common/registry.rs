//! Debian's `docker-registry` on loopback, and images built by hand as OCI
//! layouts and pushed with skopeo: single-platform and multi-arch.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::git::{Server, free_port};

pub struct TestRegistry {
    _server: Server,
    pub port: u16,
    pub addr: String,
    ip: String,
    config: PathBuf,
    /// For `--dest-creds` when the registry wants them.
    pub creds: Option<String>,
    pub tls: bool,
    log: Option<PathBuf>,
}

pub struct Tls {
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `TestRegistry::start_with` sets up; the default is an anonymous
/// plain-HTTP registry on 127.0.0.1.
#[derive(Default)]
pub struct Options<'a> {
    /// The IP to listen on (default 127.0.0.1).
    pub ip: Option<&'a str>,
    pub tls: Option<&'a Tls>,
    /// htpasswd basic auth with this user and password.
    pub user: Option<(&'a str, &'a str)>,
    /// `auth: token` against this issuer; pushes use `push_creds`.
    pub token: Option<TokenAuth<'a>>,
    /// Log every request to `dir/access.log`.
    pub access_log: bool,
    /// Send notifications to this endpoint.
    pub notify: Option<Notify<'a>>,
}

/// A `notifications.endpoints` entry: the registry posts its event
/// envelopes to `url` with `Authorization: Bearer <bearer>`.
pub struct Notify<'a> {
    pub url: &'a str,
    pub bearer: &'a str,
}

pub struct TokenAuth<'a> {
    pub issuer: &'a super::token_issuer::TokenIssuer,
    /// `user:password` of an account the issuer lets push.
    pub push_creds: &'a str,
}

/// A test CA and a certificate for 127.0.0.1 signed by it.
pub fn make_tls(dir: &Path) -> Tls {
    make_tls_for(dir, &[])
}

/// As `make_tls`, the certificate also naming the IPs in `extra_ips`.
pub fn make_tls_for(dir: &Path, extra_ips: &[&str]) -> Tls {
    std::fs::create_dir_all(dir).unwrap();
    let (ca, ca_key, cert, key, csr) = (
        dir.join("ca.pem"),
        dir.join("ca.key"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("req.csr"),
    );
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=autodeploy test CA",
            "-keyout",
        ])
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    let ext = dir.join("ext.cnf");
    let extra: String = extra_ips.iter().map(|ip| format!(",IP:{ip}")).collect();
    std::fs::write(
        &ext,
        format!("subjectAltName=IP:127.0.0.1,DNS:localhost{extra}\n"),
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-out")
        .arg(&cert)
        .arg("-extfile")
        .arg(&ext));
    Tls { ca, cert, key }
}

impl TestRegistry {
    /// A registry storing in `dir`; with `tls`, over HTTPS; with `user`, behind
    /// htpasswd basic auth.
    pub fn start(dir: &Path, tls: Option<&Tls>, user: Option<(&str, &str)>) -> TestRegistry {
        Self::start_with(
            dir,
            Options {
                tls,
                user,
                ..Options::default()
            },
        )
    }

    /// An anonymous registry that logs every request to `dir/access.log`.
    pub fn start_logged(dir: &Path) -> TestRegistry {
        Self::start_with(
            dir,
            Options {
                access_log: true,
                ..Options::default()
            },
        )
    }

    pub fn start_with(dir: &Path, options: Options) -> TestRegistry {
        let Options {
            ip,
            tls,
            user,
            token,
            access_log,
            notify,
        } = options;
        let ip = ip.unwrap_or("127.0.0.1");
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let port = free_port_on(ip);
        let log = if access_log {
            "  level: info\n  accesslog:\n    disabled: false\n"
        } else {
            "  level: error\n"
        };
        let mut config = format!(
            "version: 0.1\nlog:\n{log}storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {ip}:{port}\n",
            dir.join("storage").display()
        );
        if let Some(t) = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert.display(),
                t.key.display()
            ));
        }
        let mut creds = None;
        if let Some((u, p)) = user {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (apache2-utils)");
            std::fs::write(dir.join("htpasswd"), out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
            creds = Some(format!("{u}:{p}"));
        }
        if let Some(t) = token {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.issuer.realm,
                t.issuer.service,
                t.issuer.issuer,
                t.issuer.cert.display()
            ));
            creds = Some(t.push_creds.to_string());
        }
        if let Some(n) = notify {
            config.push_str(&format!(
                "notifications:\n  endpoints:\n    - name: autodeploy\n      url: {}\n      headers:\n        Authorization: [\"Bearer {}\"]\n      timeout: 1s\n      threshold: 3\n      backoff: 1s\n",
                n.url, n.bearer
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = access_log.then(|| dir.join("access.log"));
        let server = spawn(&config_path, ip, port, log.as_deref());
        TestRegistry {
            _server: server,
            port,
            addr: format!("{ip}:{port}"),
            ip: ip.to_string(),
            config: config_path,
            creds,
            tls: tls.is_some(),
            log,
        }
    }

    /// (HEAD, GET) requests for manifests so far, from the access log.
    pub fn manifest_requests(&self) -> (usize, usize) {
        let text = std::fs::read_to_string(self.log.as_ref().expect("started with start_logged"))
            .unwrap_or_default();
        let count = |method: &str| {
            text.lines()
                .filter(|l| l.contains(&format!("\"{method} /v2/")) && l.contains("/manifests/"))
                .count()
        };
        (count("HEAD"), count("GET"))
    }

    /// Every manifest HEAD the registry answered so far, from its own
    /// (logfmt) log lines, which carry nanosecond times; the access log's
    /// lines carry whole seconds only.
    pub fn manifest_heads(&self) -> Vec<ManifestHead> {
        let text = std::fs::read_to_string(self.log.as_ref().expect("started with an access log"))
            .unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.contains("msg=\"response completed")
                    && logfmt(l, "http.request.method") == Some("HEAD")
            })
            .filter_map(|l| {
                let uri = logfmt(l, "http.request.uri")?;
                let (name, reference) = uri.strip_prefix("/v2/")?.split_once("/manifests/")?;
                Some(ManifestHead {
                    at_ms: rfc3339_ms(logfmt(l, "time")?)?,
                    name: name.to_string(),
                    reference: reference.to_string(),
                    user_agent: logfmt(l, "http.request.useragent")
                        .unwrap_or_default()
                        .to_string(),
                })
            })
            .collect()
    }

    /// Every request line in the access log (`METHOD PATH`), in order.
    pub fn requests(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.log.as_ref().expect("started with an access log"))
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let quoted = l.split('"').nth(1)?;
                let mut parts = quoted.split(' ');
                let (method, path) = (parts.next()?, parts.next()?);
                (path.starts_with('/') && method.bytes().all(|b| b.is_ascii_uppercase()))
                    .then(|| format!("{method} {path}"))
            })
            .collect()
    }

    /// Stops the registry; `restart` brings it back with the same storage.
    pub fn stop(&mut self) {
        self._server = Server::dead(self.port);
    }

    pub fn restart(&mut self) {
        self._server = spawn(&self.config, &self.ip, self.port, self.log.as_deref());
    }

    /// Pushes an image whose single layer holds `content`; returns the
    /// manifest digest the tag now points at.
    pub fn push(&self, name: &str, tag: &str, content: &str) -> String {
        let layout = super::reap::root().join(format!("oci-{}", rand_u64()));
        let manifest = image(&layout, content, "amd64");
        write_index(
            &layout,
            &[(manifest, "application/vnd.oci.image.manifest.v1+json", None)],
            tag,
        );
        self.copy(&layout, name, tag)
    }

    /// Pushes a two-platform image index; returns the index digest.
    pub fn push_multi_arch(&self, name: &str, tag: &str, content: &str) -> String {
        let layout = super::reap::root().join(format!("oci-{}", rand_u64()));
        let amd = image(&layout, &format!("{content}-amd64"), "amd64");
        let arm = image(&layout, &format!("{content}-arm64"), "arm64");
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd.0, "size": amd.1, "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm.0, "size": arm.1, "platform": {"architecture": "arm64", "os": "linux"}},
            ],
        });
        let index = blob(&layout, serde_json::to_vec(&index).unwrap());
        write_index(
            &layout,
            &[(index, "application/vnd.oci.image.index.v1+json", None)],
            tag,
        );
        self.copy(&layout, name, tag)
    }

    fn copy(&self, layout: &Path, name: &str, tag: &str) -> String {
        let digest_file = layout.join("digest");
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--digestfile",
        ])
        .arg(&digest_file)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{name}:{tag}", self.addr));
        if let Some(c) = &self.creds {
            cmd.arg(format!("--dest-creds={c}"));
        }
        // The registry logs a request after answering it: wait for the
        // manifest's PUT so later counts see none of the push's requests.
        let stored = format!("\"PUT /v2/{name}/manifests/{tag} HTTP/1.1\" 201");
        let logged = |r: &TestRegistry| {
            r.log.as_ref().map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .matches(&stored)
                    .count()
            })
        };
        let before = logged(self);
        run(&mut cmd);
        if let Some(before) = before {
            super::wait_until_blocking(
                "the registry logged the pushed manifest",
                std::time::Duration::from_secs(30),
                || logged(self).is_some_and(|n| n > before),
            );
        }
        let digest = std::fs::read_to_string(&digest_file)
            .unwrap()
            .trim()
            .to_string();
        std::fs::remove_dir_all(layout).unwrap();
        digest
    }
}

/// A manifest HEAD as the registry logged it.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub name: String,
    pub reference: String,
    pub user_agent: String,
}

/// The value of `key` in a logfmt line (`key=value` or `key="a value"`).
fn logfmt<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line
        .match_indices(&format!("{key}="))
        .find(|(i, _)| *i == 0 || line.as_bytes()[i - 1] == b' ')?
        .0
        + key.len()
        + 1;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split(' ').next(),
    }
}

/// `2026-11-26T17:35:46.684304979Z` in milliseconds since the Unix epoch.
fn rfc3339_ms(time: &str) -> Option<u64> {
    let (date, clock) = time.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60 + sec)
        .ok()
        .map(|s| s * 1000 + ms as u64)
}

fn spawn(config: &Path, ip: &str, port: u16, log: Option<&Path>) -> Server {
    let sink = || match log {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        ),
        None => Stdio::null(),
    };
    let child = super::reap::spawn(
        Command::new("docker-registry")
            .arg("serve")
            .arg(config)
            .stdout(sink())
            .stderr(sink()),
    )
    .expect("docker-registry is missing: the test command installs it");
    Server::wrap_at(child, ip, port)
}

fn free_port_on(ip: &str) -> u16 {
    if ip == "127.0.0.1" {
        return free_port();
    }
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Writes a blob into the layout; returns (digest, size).
fn blob(layout: &Path, bytes: Vec<u8>) -> (String, usize) {
    let hex: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), &bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// A one-layer image for `arch`; returns its manifest's (digest, size).
fn image(layout: &Path, content: &str, arch: &str) -> (String, usize) {
    let scratch = layout.join(format!("layer-{arch}"));
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::write(scratch.join("content.txt"), content).unwrap();
    let tar = layout.join(format!("layer-{arch}.tar"));
    run(Command::new("tar")
        .args(["--mtime=@0", "--owner=0", "--group=0", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&scratch)
        .arg("content.txt"));
    let layer = blob(layout, std::fs::read(&tar).unwrap());
    std::fs::remove_file(&tar).unwrap();
    std::fs::remove_dir_all(&scratch).unwrap();
    let config = json!({"architecture": arch, "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": [layer.0]}});
    let config = blob(layout, serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
    });
    blob(layout, serde_json::to_vec(&manifest).unwrap())
}

fn write_index(layout: &Path, entries: &[((String, usize), &str, Option<()>)], tag: &str) {
    let manifests: Vec<_> = entries
        .iter()
        .map(|((digest, size), media, _)| json!({"mediaType": media, "digest": digest, "size": size, "annotations": {"org.opencontainers.image.ref.name": tag}}))
        .collect();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
}
