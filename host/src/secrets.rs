//! Tokens and sealed credentials.
//!
//! Tokens (admin, node, push) are 256-bit random strings; only their SHA-256
//! is stored. Git credentials are sealed with XChaCha20-Poly1305 under a key
//! from `AUTODEPLOY_SECRET_KEY` or a 0600 key file made on first start.
//! Native policy code shared through the database is authenticated under a
//! separate key derived from the same secret ([`CodeKey`]).

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("AUTODEPLOY_SECRET_KEY must be 64 hex characters (32 bytes)")]
    BadKey,
    #[error("secret key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("secret key file {0} does not hold 64 hex characters")]
    BadKeyFile(String),
    #[error(
        "a stored credential could not be unsealed: wrong AUTODEPLOY_SECRET_KEY, or the database was altered"
    )]
    Unseal,
}

/// A secret string that never prints: `Debug` and `Display` show a
/// placeholder, so it cannot leak through a log line or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The value, for the one place that must hand it on (a credential
    /// callback, a token shown once).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A new random token with a prefix that says what it is for.
pub fn new_token(prefix: &str) -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret(format!("{prefix}_{}", hex(&bytes)))
}

/// What is stored in place of a token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

pub struct SecretKey {
    sealing: XChaCha20Poly1305,
    code: CodeKey,
}

/// What the code key is derived for (HKDF's `info`): a key made for one
/// purpose is never the key of another.
const CODE_KEY_LABEL: &[u8] = b"autodeploy/policy-native-code/hmac-sha256/v1";

/// Authenticates native policy code kept in the database: HMAC-SHA256 under
/// a key HKDF-SHA256 derives from the secret key with its own label, so it
/// is never the sealing key and a MAC tells nothing about that one. Every
/// replica with the same secret key derives the same code key. It never
/// prints (`Debug` shows a placeholder).
#[derive(Clone)]
pub struct CodeKey([u8; 32]);

type HmacSha256 = hmac::Hmac<sha2_mac::Sha256>;

impl CodeKey {
    fn derive(secret: &[u8; 32]) -> CodeKey {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<sha2_mac::Sha256>::new(None, secret)
            .expand(CODE_KEY_LABEL, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        CodeKey(key)
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        use hmac::{KeyInit, Mac};
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        for part in parts {
            // Each part with its length first, so no two lists of parts
            // feed the same bytes.
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac
    }

    /// The tag of `parts`, in order.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        use hmac::Mac;
        self.mac(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        use hmac::Mac;
        self.mac(parts).verify_slice(tag).is_ok()
    }
}

impl fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeKey(***)")
    }
}

impl SecretKey {
    /// The key from `env_value` if given, else from `data_dir/secret.key`,
    /// created (mode 0600) when missing.
    pub fn load(env_value: Option<&str>, data_dir: &Path) -> Result<Self, SecretError> {
        if let Some(v) = env_value {
            return parse_key(v.trim()).ok_or(SecretError::BadKey);
        }
        let path = data_dir.join("secret.key");
        let io = |source| SecretError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_key(text.trim())
                .ok_or_else(|| SecretError::BadKeyFile(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                write_private(&path, hex(&bytes).as_bytes()).map_err(io)?;
                Ok(SecretKey::from_bytes(&bytes))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_bytes(bytes: &[u8; 32]) -> SecretKey {
        SecretKey {
            sealing: XChaCha20Poly1305::new(&(*bytes).into()),
            code: CodeKey::derive(bytes),
        }
    }

    /// The key that authenticates native policy code in the database.
    pub fn code_key(&self) -> CodeKey {
        self.code.clone()
    }

    pub fn seal(&self, plain: &Secret) -> String {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .sealing
            .encrypt(XNonce::from_slice(&nonce), plain.expose().as_bytes())
            .expect("XChaCha20-Poly1305 encryption of a short secret cannot fail");
        format!("{}{}", hex(&nonce), hex(&sealed))
    }

    pub fn unseal(&self, sealed: &str) -> Result<Secret, SecretError> {
        let bytes = unhex(sealed).ok_or(SecretError::Unseal)?;
        if bytes.len() < 24 {
            return Err(SecretError::Unseal);
        }
        let (nonce, body) = bytes.split_at(24);
        let plain = self
            .sealing
            .decrypt(XNonce::from_slice(nonce), body)
            .map_err(|_| SecretError::Unseal)?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| SecretError::Unseal)
    }
}

fn parse_key(s: &str) -> Option<SecretKey> {
    let bytes: [u8; 32] = unhex(s)?.try_into().ok()?;
    Some(SecretKey::from_bytes(&bytes))
}

/// Writes a file only its owner can read, created with that mode so it is
/// never readable by others even for a moment.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_credentials_round_trip_and_hide_the_plaintext() {
        /// Removed even when an assertion below fails.
        struct Dir(std::path::PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let guard =
            Dir(std::env::temp_dir().join(format!("autodeploy-secret-{}", std::process::id())));
        let dir = guard.0.as_path();
        std::fs::create_dir_all(dir).unwrap();
        let key = SecretKey::load(None, dir).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("secret.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let sealed = key.seal(&Secret::new("planted-token"));
        assert!(!sealed.contains("planted"));
        assert_eq!(key.unseal(&sealed).unwrap().expose(), "planted-token");
        // The same key file is read back on the next start.
        let again = SecretKey::load(None, dir).unwrap();
        assert_eq!(again.unseal(&sealed).unwrap().expose(), "planted-token");
        let other = SecretKey::load(Some(&"ab".repeat(32)), dir).unwrap();
        assert!(matches!(other.unseal(&sealed), Err(SecretError::Unseal)));
        assert!(matches!(
            SecretKey::load(Some("short"), dir),
            Err(SecretError::BadKey)
        ));
        assert_eq!(
            format!("{:?} {}", Secret::new("x"), Secret::new("x")),
            "Secret(***) ***"
        );
    }

    #[test]
    fn the_code_key_is_derived_apart_and_its_tags_bind_every_part() {
        let secret = [7u8; 32];
        let key = SecretKey::from_bytes(&secret).code_key();
        assert_ne!(key.0, secret, "never the secret key itself");
        let tag = key.sign(&[b"engine", b"policy", b"code"]);
        assert!(key.verify(&[b"engine", b"policy", b"code"], &tag));
        assert!(!key.verify(&[b"engine", b"policy", b"codf"], &tag));
        // Moving bytes between parts changes the tag.
        assert!(!key.verify(&[b"engin", b"epolicy", b"code"], &tag));
        assert!(!key.verify(&[b"engine", b"policy", b"code"], &tag[..31]));
        let other = SecretKey::from_bytes(&[8u8; 32]).code_key();
        assert!(!other.verify(&[b"engine", b"policy", b"code"], &tag));
        // The same secret gives the same key (every replica).
        let again = SecretKey::from_bytes(&secret).code_key();
        assert_eq!(again.sign(&[b"x"]), key.sign(&[b"x"]));
        assert_eq!(format!("{key:?}"), "CodeKey(***)");
    }
}
