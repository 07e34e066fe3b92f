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

/// A test CA and a certificate for 127.0.0.1 signed by it.
pub fn make_tls(dir: &Path) -> Tls {
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
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
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
        Self::start_inner(dir, tls, user, false)
    }

    /// An anonymous registry that logs every request to `dir/access.log`.
    pub fn start_logged(dir: &Path) -> TestRegistry {
        Self::start_inner(dir, None, None, true)
    }

    fn start_inner(
        dir: &Path,
        tls: Option<&Tls>,
        user: Option<(&str, &str)>,
        access_log: bool,
    ) -> TestRegistry {
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let port = free_port();
        let log = if access_log {
            "  level: info\n  accesslog:\n    disabled: false\n"
        } else {
            "  level: error\n"
        };
        let mut config = format!(
            "version: 0.1\nlog:\n{log}storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
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
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = access_log.then(|| dir.join("access.log"));
        let server = spawn(&config_path, port, log.as_deref());
        TestRegistry {
            _server: server,
            port,
            addr: format!("127.0.0.1:{port}"),
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

    /// Stops the registry; `restart` brings it back with the same storage.
    pub fn stop(&mut self) {
        self._server = Server::dead(self.port);
    }

    pub fn restart(&mut self) {
        self._server = spawn(&self.config, self.port, self.log.as_deref());
    }

    /// Pushes an image whose single layer holds `content`; returns the
    /// manifest digest the tag now points at.
    pub fn push(&self, name: &str, tag: &str, content: &str) -> String {
        let layout =
            std::env::temp_dir().join(format!("oci-{}-{}", std::process::id(), rand_u64()));
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
        let layout =
            std::env::temp_dir().join(format!("oci-{}-{}", std::process::id(), rand_u64()));
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
        run(&mut cmd);
        let digest = std::fs::read_to_string(&digest_file)
            .unwrap()
            .trim()
            .to_string();
        std::fs::remove_dir_all(layout).unwrap();
        digest
    }
}

fn spawn(config: &Path, port: u16, log: Option<&Path>) -> Server {
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
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(config)
        .stdout(sink())
        .stderr(sink())
        .spawn()
        .expect("docker-registry is missing: the test command installs it");
    Server::wrap(child, port)
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
