//! The database a test uses: a SQLite file in the test's temp dir, or, with
//! `AUTODEPLOY_TEST_DATABASE=postgres`, a fresh PostgreSQL database named
//! after the test on the server PGHOST, PGPORT, PGUSER and PGPASSWORD name
//! (defaults localhost, 5432, postgres), as `pg_virtualenv` sets them.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;

/// Whether this run's tests use PostgreSQL.
pub fn postgres() -> bool {
    std::env::var("AUTODEPLOY_TEST_DATABASE").as_deref() == Ok("postgres")
}

/// The URL of the database of test `name`. The first call in this process
/// makes it fresh; later calls (a restarted daemon) return the same one.
pub fn database_url(name: &str) -> String {
    static MADE: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    made.entry(name.to_string())
        .or_insert_with(|| {
            if postgres() {
                create_postgres(name)
            } else {
                let dir = super::daemon::temp_dir(&format!("db-{name}"));
                format!("sqlite://{}", dir.join("autodeploy.db").display())
            }
        })
        .clone()
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// A database name PostgreSQL takes (at most 63 bytes), unique to this test
/// process: test binaries of one run share the server.
fn database_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    let suffix = format!("_{}", std::process::id());
    let keep = 63 - 2 - suffix.len();
    let hash = clean
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    let body = if clean.len() > keep {
        format!("{}{hash:08x}", &clean[..keep - 8])
    } else {
        clean
    };
    format!("t_{body}{suffix}")
}

fn create_postgres(name: &str) -> String {
    let (host, port) = (env_or("PGHOST", "localhost"), env_or("PGPORT", "5432"));
    let (user, password) = (env_or("PGUSER", "postgres"), env_or("PGPASSWORD", ""));
    let db = database_name(name);
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"])
        .args(["-h", &host, "-p", &port, "-U", &user])
        .args(["-c", &format!("DROP DATABASE IF EXISTS {db}")])
        .args(["-c", &format!("CREATE DATABASE {db}")])
        .env("PGPASSWORD", &password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap_or_else(|e| {
            panic!("AUTODEPLOY_TEST_DATABASE=postgres needs psql (Debian postgresql-client): {e}")
        });
    assert!(
        out.status.success(),
        "AUTODEPLOY_TEST_DATABASE=postgres, but no PostgreSQL server answers at {host}:{port} as {user} \
         (run the tests inside `pg_virtualenv`, or set PGHOST/PGPORT/PGUSER/PGPASSWORD): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    format!(
        "postgres://{}:{}@{host}:{port}/{db}",
        encode(&user),
        encode(&password)
    )
}

/// Percent-encodes a URL's user or password.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
