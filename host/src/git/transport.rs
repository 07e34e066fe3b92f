//! How remote git repositories are reached safely: which certificates are
//! trusted, which hosts are exempt from TLS verification, which `git_url`
//! values may carry a credential, and SSH host key pins in known_hosts form.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::RwLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::Digest;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("git_url is not a valid URL ({0})")]
    BadUrl(String),
    #[error(
        "git_url must not contain a password: give it as credentials {{\"kind\": \"https\", \"username\": ..., \"token\": ...}}"
    )]
    PasswordInUrl,
    #[error(
        "a credential is only sent over http:// to loopback hosts or hosts listed in AUTODEPLOY_INSECURE_GIT_HOSTS: use https://"
    )]
    PlainHttpCredential,
    #[error("AUTODEPLOY_GIT_CA {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("AUTODEPLOY_INSECURE_GIT_HOSTS entry {0:?} is not a host name or IP address")]
    BadInsecureHost(String),
    #[error("ssh_known_hosts line {line}: {message}")]
    KnownHosts { line: usize, message: String },
}

/// What the operator decided about remote git transports.
#[derive(Debug, Clone, Default)]
pub struct TransportConfig {
    /// A PEM file of CA certificates trusted beside the system roots.
    pub ca_file: Option<PathBuf>,
    /// Hosts whose HTTPS certificate is not verified and that may receive
    /// credentials over plain http://. Lower-case, no brackets, no port.
    pub insecure_hosts: Vec<String>,
}

static CONFIG: RwLock<TransportConfig> = RwLock::new(TransportConfig {
    ca_file: None,
    insecure_hosts: Vec::new(),
});

impl TransportConfig {
    /// From `AUTODEPLOY_GIT_CA` and `AUTODEPLOY_INSECURE_GIT_HOSTS`
    /// (comma-separated), for processes without clap arguments (the agent).
    pub fn from_env() -> Result<TransportConfig, TransportError> {
        let ca_file = std::env::var_os("AUTODEPLOY_GIT_CA")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let hosts = std::env::var("AUTODEPLOY_INSECURE_GIT_HOSTS").unwrap_or_default();
        TransportConfig::new(ca_file, hosts.split(','))
    }

    /// Checks and normalises the insecure host list.
    pub fn new<'a>(
        ca_file: Option<PathBuf>,
        insecure: impl IntoIterator<Item = &'a str>,
    ) -> Result<TransportConfig, TransportError> {
        let mut insecure_hosts = Vec::new();
        for entry in insecure {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let host = normalize_host(entry);
            let ok = !host.is_empty()
                && (host.parse::<IpAddr>().is_ok()
                    || host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')));
            if !ok {
                return Err(TransportError::BadInsecureHost(entry.to_string()));
            }
            if !insecure_hosts.contains(&host) {
                insecure_hosts.push(host);
            }
        }
        Ok(TransportConfig {
            ca_file,
            insecure_hosts,
        })
    }
}

/// Makes `config` the process's transport policy. The CA file is added to
/// libgit2's trust store (beside the system roots); it is read now, so a
/// missing or empty file stops the start with a clear message.
pub fn configure(config: TransportConfig) -> Result<(), TransportError> {
    if let Some(path) = &config.ca_file {
        let fail = |message: String| TransportError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            return Err(fail("holds no PEM certificate".into()));
        }
        // SAFETY: sets a libgit2 global option; lookups read it under
        // libgit2's own lock.
        unsafe { git2::opts::set_ssl_cert_file(path) }.map_err(|e| fail(e.message().into()))?;
    }
    *CONFIG.write().unwrap_or_else(|e| e.into_inner()) = config;
    Ok(())
}

/// The hosts exempt from verification, for the log and the status API.
pub fn insecure_hosts() -> Vec<String> {
    CONFIG
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .insecure_hosts
        .clone()
}

pub fn ca_file() -> Option<PathBuf> {
    CONFIG
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .ca_file
        .clone()
}

/// Whether `host` (as libgit2 or the URL names it) is listed as insecure.
pub fn is_insecure(host: &str) -> bool {
    let host = normalize_host(host);
    CONFIG
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .insecure_hosts
        .contains(&host)
}

fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// 127.0.0.0/8, ::1 and `localhost`.
pub fn is_loopback(host: &str) -> bool {
    let host = normalize_host(host);
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The parts of a `git_url` the checks need.
#[derive(Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    /// `https`, `http`, `ssh`, `git`, `file`…; `ssh` for `user@host:path`.
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
}

/// Parses a `git_url` with the `url` crate (`user@host:path` as SSH) and
/// refuses any password in it. Errors never repeat the URL.
pub fn parse_remote(url: &str) -> Result<RemoteUrl, TransportError> {
    if !url.contains("://") {
        // scp-like `user@host:path`: everything before the first ':' is
        // `[user@]host`; a ':' in the user part would be a password.
        let Some((authority, _path)) = url.split_once(':') else {
            return Err(TransportError::BadUrl(
                "expected scheme://… or user@host:path".into(),
            ));
        };
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if url
            .split_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
        {
            return Err(TransportError::PasswordInUrl);
        }
        if host.is_empty() || host.contains('/') {
            return Err(TransportError::BadUrl("no host".into()));
        }
        return Ok(RemoteUrl {
            scheme: "ssh".into(),
            host: normalize_host(host),
            port: None,
        });
    }
    let parsed = match url::Url::parse(url) {
        Ok(u) => u,
        Err(e) => {
            // A URL the parser refuses may still hold a password; say so
            // rather than hint at its contents.
            if let Some((_, rest)) = url.split_once("://")
                && rest
                    .rsplit_once('@')
                    .is_some_and(|(userinfo, _)| userinfo.contains(':'))
            {
                return Err(TransportError::PasswordInUrl);
            }
            return Err(TransportError::BadUrl(e.to_string()));
        }
    };
    if parsed.password().is_some() {
        return Err(TransportError::PasswordInUrl);
    }
    let scheme = parsed.scheme().to_string();
    let host = parsed.host_str().map(normalize_host).unwrap_or_default();
    if host.is_empty() && scheme != "file" {
        return Err(TransportError::BadUrl("no host".into()));
    }
    Ok(RemoteUrl {
        scheme,
        host,
        port: parsed.port(),
    })
}

/// Refuses what must never go on the wire: a password in the URL, and a
/// credential over plain http:// to a host that is neither loopback nor
/// listed in `AUTODEPLOY_INSECURE_GIT_HOSTS`.
pub fn check_remote(url: &str, has_credential: bool) -> Result<RemoteUrl, TransportError> {
    let remote = parse_remote(url)?;
    if has_credential
        && remote.scheme == "http"
        && !is_loopback(&remote.host)
        && !is_insecure(&remote.host)
    {
        return Err(TransportError::PlainHttpCredential);
    }
    Ok(remote)
}

/// A URL fit for messages and logs: any password replaced by `***`.
pub fn shown_url(url: &str) -> String {
    if url.contains("://")
        && let Ok(mut parsed) = url::Url::parse(url)
    {
        if parsed.password().is_some() {
            let _ = parsed.set_password(Some("***"));
        }
        return parsed.to_string();
    }
    // Not parseable: hide every userinfo rather than guess.
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => match url.split_once('@') {
            Some((user, rest)) if user.contains(':') => format!("***@{rest}"),
            _ => url.to_string(),
        },
    }
}

/// SSH host keys a project pins, in OpenSSH known_hosts form: plain or
/// hashed (`|1|salt|hash`) host patterns with `*`, `?` and `!`, and
/// `@revoked` lines. `@cert-authority` is not supported.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    entries: Vec<KnownHost>,
}

#[derive(Debug, Clone)]
struct KnownHost {
    hosts: HostPatterns,
    key_type: String,
    key: Vec<u8>,
    revoked: bool,
}

#[derive(Debug, Clone)]
enum HostPatterns {
    Plain(Vec<String>),
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

/// Bounds what a project may store: a few keys per host, not a file dump.
pub const MAX_KNOWN_HOSTS_BYTES: usize = 64 * 1024;

impl KnownHosts {
    pub fn parse(text: &str) -> Result<KnownHosts, TransportError> {
        let err = |line: usize, message: &str| TransportError::KnownHosts {
            line,
            message: message.into(),
        };
        if text.len() > MAX_KNOWN_HOSTS_BYTES {
            return Err(err(0, "the pins are longer than 64 KiB"));
        }
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace().peekable();
            let mut revoked = false;
            if let Some(marker) = fields.peek().filter(|f| f.starts_with('@')) {
                match *marker {
                    "@revoked" => revoked = true,
                    "@cert-authority" => {
                        return Err(err(n, "@cert-authority lines are not supported"));
                    }
                    _ => return Err(err(n, "unknown marker (only @revoked is supported)")),
                }
                fields.next();
            }
            let (Some(hosts), Some(key_type), Some(key)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(err(n, "expected: host[,host…] key-type base64-key"));
            };
            let hosts = if let Some(hashed) = hosts.strip_prefix("|1|") {
                let (salt, hash) = hashed
                    .split_once('|')
                    .ok_or_else(|| err(n, "hashed host is not |1|salt|hash"))?;
                let salt = BASE64
                    .decode(salt)
                    .map_err(|_| err(n, "hashed host salt is not base64"))?;
                let hash = BASE64
                    .decode(hash)
                    .map_err(|_| err(n, "hashed host hash is not base64"))?;
                HostPatterns::Hashed { salt, hash }
            } else {
                let patterns: Vec<String> = hosts
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_ascii_lowercase)
                    .collect();
                if patterns.is_empty() {
                    return Err(err(n, "no host pattern"));
                }
                HostPatterns::Plain(patterns)
            };
            let key = BASE64
                .decode(key)
                .map_err(|_| err(n, "the key is not base64"))?;
            // The key blob starts with its own type name: a cheap check
            // that the line was not mangled.
            if blob_type(&key) != Some(key_type) {
                return Err(err(
                    n,
                    "the key does not match its key type (a mangled line?)",
                ));
            }
            entries.push(KnownHost {
                hosts,
                key_type: key_type.to_string(),
                key,
                revoked,
            });
        }
        if entries.is_empty() {
            return Err(err(
                0,
                "no host key lines (set null to accept any host key)",
            ));
        }
        Ok(KnownHosts { entries })
    }

    /// Whether some (not revoked) line names this host.
    pub fn covers(&self, host: &str, port: Option<u16>) -> bool {
        let name = known_hosts_name(host, port);
        self.entries
            .iter()
            .any(|e| !e.revoked && e.hosts.matches(&name))
    }

    /// Checks the key `host` presented against the pins; `port` is the
    /// URL's (22 when absent), matched as OpenSSH does (`[host]:port`).
    pub fn check(&self, host: &str, port: Option<u16>, key: &[u8]) -> Result<(), String> {
        let name = known_hosts_name(host, port);
        let matching: Vec<&KnownHost> = self
            .entries
            .iter()
            .filter(|e| e.hosts.matches(&name))
            .collect();
        let fingerprint = fingerprint(key);
        if matching.iter().any(|e| e.revoked && e.key == key) {
            return Err(format!(
                "the host key of {name} ({fingerprint}) is revoked in ssh_known_hosts"
            ));
        }
        let pinned: Vec<&&KnownHost> = matching.iter().filter(|e| !e.revoked).collect();
        if pinned.is_empty() {
            return Err(format!(
                "ssh_known_hosts has no line for {name}; the host presented {fingerprint}"
            ));
        }
        if pinned.iter().any(|e| e.key == key) {
            return Ok(());
        }
        let types: Vec<&str> = pinned.iter().map(|e| e.key_type.as_str()).collect();
        Err(format!(
            "host key mismatch for {name}: it presented {fingerprint}, which is not pinned in ssh_known_hosts (pinned: {})",
            types.join(", ")
        ))
    }
}

impl HostPatterns {
    fn matches(&self, name: &str) -> bool {
        match self {
            HostPatterns::Hashed { salt, hash } => {
                use hmac::{KeyInit, Mac};
                let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            HostPatterns::Plain(patterns) => {
                let mut hit = false;
                for p in patterns {
                    if let Some(negated) = p.strip_prefix('!') {
                        if glob(negated, name) {
                            return false;
                        }
                    } else if glob(p, name) {
                        hit = true;
                    }
                }
                hit
            }
        }
    }
}

/// How known_hosts names a host: `host` on port 22, `[host]:port` otherwise.
pub fn known_hosts_name(host: &str, port: Option<u16>) -> String {
    let host = normalize_host(host);
    match port {
        None | Some(22) => host,
        Some(p) => format!("[{host}]:{p}"),
    }
}

/// OpenSSH's pattern language: `*` any run, `?` any one character.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The type name an SSH key blob starts with (a length-prefixed string).
fn blob_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4usize.checked_add(len)?)?).ok()
}

/// `ssh-ed25519 SHA256:…`, as `ssh-keygen -lf` shows it.
pub fn fingerprint(key: &[u8]) -> String {
    let digest = sha2::Sha256::digest(key);
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest);
    format!("{} SHA256:{b64}", blob_type(key).unwrap_or("unknown-type"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_refused_in_every_form() {
        for url in [
            "https://u:PW@host/r.git",
            "https://u@x:PW@host/r.git",
            "http://:PW@host/r.git",
            "ssh://git:PW@host/r.git",
            "u:PW@host:r.git",
            "https://u:PW@host:notaport/r.git",
        ] {
            assert!(
                matches!(parse_remote(url), Err(TransportError::PasswordInUrl)),
                "{url}: {:?}",
                parse_remote(url)
            );
            assert!(!shown_url(url).contains("PW"), "{}", shown_url(url));
        }
        for url in [
            "https://u@host/r.git",
            "git@host:r.git",
            "ssh://git@host:2222/r.git",
            "file:///srv/r.git",
            "git://host/r.git",
        ] {
            assert!(parse_remote(url).is_ok(), "{url}");
        }
        assert_eq!(
            parse_remote("ssh://git@Host.Example:2222/r.git").unwrap(),
            RemoteUrl {
                scheme: "ssh".into(),
                host: "host.example".into(),
                port: Some(2222)
            }
        );
    }

    #[test]
    fn http_credentials_only_go_to_loopback_or_listed_hosts() {
        for ok in [
            "http://127.0.0.1:8080/r.git",
            "http://127.9.9.9/r.git",
            "http://[::1]/r.git",
            "http://localhost/r.git",
            "https://example.com/r.git",
        ] {
            assert!(check_remote(ok, true).is_ok(), "{ok}");
        }
        let refused = check_remote("http://example.com/r.git", true);
        assert!(
            matches!(refused, Err(TransportError::PlainHttpCredential)),
            "{refused:?}"
        );
        assert!(check_remote("http://example.com/r.git", false).is_ok());
    }

    #[test]
    fn insecure_host_entries_are_checked() {
        let c = TransportConfig::new(None, [" Git.Example ", "", "[::1]", "10.0.0.2"]).unwrap();
        assert_eq!(c.insecure_hosts, ["git.example", "::1", "10.0.0.2"]);
        assert!(TransportConfig::new(None, ["http://x/"]).is_err());
    }

    fn blob(kind: &str, body: &[u8]) -> Vec<u8> {
        let mut b = (kind.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn known_hosts_pins_match_by_host_and_key() {
        let good = blob("ssh-ed25519", b"good-key-bytes");
        let other = blob("ssh-ed25519", b"other-key-bytes");
        let text = format!(
            "# pins\n[127.0.0.1]:2222,git.example ssh-ed25519 {}\n@revoked * ssh-ed25519 {}\n",
            BASE64.encode(&good),
            BASE64.encode(&other)
        );
        let pins = KnownHosts::parse(&text).unwrap();
        assert!(pins.check("127.0.0.1", Some(2222), &good).is_ok());
        assert!(pins.check("git.example", None, &good).is_ok());
        assert!(pins.check("GIT.example", Some(22), &good).is_ok());
        let e = pins.check("127.0.0.1", Some(2222), &other).unwrap_err();
        assert!(e.contains("revoked"), "{e}");
        let e = pins
            .check("127.0.0.1", Some(2222), &blob("ssh-ed25519", b"x"))
            .unwrap_err();
        assert!(e.contains("mismatch"), "{e}");
        let e = pins.check("127.0.0.1", None, &good).unwrap_err();
        assert!(e.contains("no line for 127.0.0.1"), "{e}");
    }

    #[test]
    fn hashed_and_wildcard_hosts_match() {
        use hmac::{KeyInit, Mac};
        let key = blob("ssh-rsa", b"k");
        let salt = b"0123456789abcdef0123";
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(b"hashed.example");
        let hash = mac.finalize().into_bytes();
        let text = format!(
            "|1|{}|{} ssh-rsa {k}\n*.wild.example,!bad.wild.example ssh-rsa {k}\n",
            BASE64.encode(salt),
            BASE64.encode(hash),
            k = BASE64.encode(&key)
        );
        let pins = KnownHosts::parse(&text).unwrap();
        assert!(pins.check("hashed.example", None, &key).is_ok());
        assert!(pins.check("a.wild.example", None, &key).is_ok());
        assert!(pins.check("bad.wild.example", None, &key).is_err());
        assert!(pins.check("other.example", None, &key).is_err());
    }

    #[test]
    fn bad_known_hosts_lines_are_named() {
        for (text, line) in [
            ("host ssh-ed25519", 1),
            ("# c\nhost ssh-ed25519 !!!notbase64", 2),
            ("@cert-authority * ssh-ed25519 AAAA", 1),
            ("", 0),
        ] {
            match KnownHosts::parse(text) {
                Err(TransportError::KnownHosts { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let mismatched = format!("h ssh-rsa {}", BASE64.encode(blob("ssh-ed25519", b"k")));
        assert!(KnownHosts::parse(&mismatched).is_err());
    }
}
