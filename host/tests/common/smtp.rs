//! A loopback SMTP sink that requires STARTTLS and AUTH: Debian's
//! python3-aiosmtpd running host/tests/smtp_sink.py with a certificate made
//! here for 127.0.0.1. The daemon trusts it through the target's `ca_file`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509Builder, X509NameBuilder};

/// The system Python, where Debian's package installs aiosmtpd (a Python of
/// the user's own on PATH may not have it).
const PYTHON: &str = "/usr/bin/python3";
pub const USER: &str = "notify";

pub struct SmtpSink {
    pub port: u16,
    /// The certificate to trust (self-signed, for 127.0.0.1).
    pub ca_file: PathBuf,
    pub dir: PathBuf,
    child: Child,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "127.0.0.1").unwrap();
    let name = name.build();
    let mut cert = X509Builder::new().unwrap();
    cert.set_version(2).unwrap();
    cert.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .build(&cert.x509v3_context(None, None))
        .unwrap();
    cert.append_extension(san).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = cert.build();
    let (cert_path, key_path) = (dir.join("smtp-cert.pem"), dir.join("smtp-key.pem"));
    std::fs::write(&cert_path, cert.to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (cert_path, key_path)
}

impl SmtpSink {
    /// Starts the sink under `dir` accepting `USER` with `password`.
    pub fn start(dir: &Path, password: &str) -> SmtpSink {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new(PYTHON)
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{PYTHON} cannot import aiosmtpd: install Debian's python3-aiosmtpd"
        );
        let (cert, key) = self_signed(dir);
        let mail = dir.join("mail");
        std::fs::create_dir_all(&mail).unwrap();
        // A free port, asked of the kernel: the sink needs a fixed one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_sink.py");
        let mut child = Command::new(PYTHON)
            .arg(script)
            .args(["--port", &port.to_string()])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--dir")
            .arg(&mail)
            .args(["--user", USER, "--password", password])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("smtp-sink.log")).unwrap())
            .spawn()
            .expect("start the SMTP sink");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        match lines.next() {
            Some(Ok(l)) if l == "ready" => {}
            other => {
                let _ = child.kill();
                panic!(
                    "the SMTP sink did not start ({other:?}): {}",
                    std::fs::read_to_string(dir.join("smtp-sink.log")).unwrap_or_default()
                );
            }
        }
        SmtpSink {
            port,
            ca_file: cert,
            dir: mail,
            child,
        }
    }

    /// Every complete message received so far, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}
