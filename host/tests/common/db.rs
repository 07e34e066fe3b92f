//! The database a test's daemons use: a SQLite file in the test's dir, or
//! with `AUTODEPLOY_TEST_DATABASE=postgres` a fresh PostgreSQL database on
//! the server PGHOST/PGPORT/PGUSER/PGPASSWORD name (as `pg_virtualenv` sets).

use std::path::Path;

/// Whether the tests run against PostgreSQL.
pub fn postgres() -> bool {
    std::env::var("AUTODEPLOY_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

/// A database URL for the test `name`: SQLite under `dir`, or a new
/// PostgreSQL database named after the test.
pub fn database_url(dir: &Path, name: &str) -> String {
    if !postgres() {
        return format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    }
    let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_string());
    let (host, port) = (var("PGHOST", "localhost"), var("PGPORT", "5432"));
    let (user, password) = (var("PGUSER", "postgres"), var("PGPASSWORD", ""));
    let db = format!("t_{}_{}", name.replace('-', "_"), std::process::id());
    let out = std::process::Command::new("psql")
        .args(["-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
        .arg(format!(
            "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}"
        ))
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "AUTODEPLOY_TEST_DATABASE=postgres but no PostgreSQL server answers at {host}:{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_virtualenv's host is a socket directory; the URL takes it as a query.
    if host.starts_with('/') {
        format!("postgres://{user}:{password}@localhost:{port}/{db}?host={host}")
    } else {
        format!("postgres://{user}:{password}@{host}:{port}/{db}")
    }
}
