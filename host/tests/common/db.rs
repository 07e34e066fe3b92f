//! The database a test's daemon uses: a SQLite file unless
//! `AUTODEPLOY_TEST_DATABASE=postgres`. (Stand-in until the PostgreSQL
//! backend's helper lands: it only knows SQLite.)

/// A fresh database for the test `name`; its URL.
pub fn database_url(name: &str) -> String {
    if std::env::var("AUTODEPLOY_TEST_DATABASE").as_deref() == Ok("postgres") {
        panic!("AUTODEPLOY_TEST_DATABASE=postgres: this build has no PostgreSQL test helper yet");
    }
    let dir = super::daemon::temp_dir(&format!("db-{name}"));
    format!("sqlite://{}", dir.join("autodeploy.db").display())
}
