//! Several `autodeploy serve` replicas on one database, set up as the
//! README's "Running several replicas" says: one `DATABASE_URL`, one
//! `AUTODEPLOY_REPO_DIR`, one `AUTODEPLOY_SECRET_KEY` and one admin token
//! for all; a data dir and a listen address of its own for each. A replica
//! can be killed with SIGKILL and restarted on the same data dir and port,
//! so clients keep one URL per replica.

use std::path::{Path, PathBuf};

use super::daemon::Daemon;
use super::git::{epoch_ms, free_port};

/// What every replica shares.
pub struct Shared {
    pub database_url: String,
    pub repo_dir: PathBuf,
    /// 32 bytes, hex.
    pub secret_key: String,
    /// Any other variables every replica gets (test-only knobs).
    pub extra_env: Vec<(String, String)>,
}

impl Shared {
    pub fn new(database_url: String, dir: &Path) -> Shared {
        let repo_dir = dir.join("shared-repos");
        std::fs::create_dir_all(&repo_dir).unwrap();
        let secret_key: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        Shared {
            database_url,
            repo_dir,
            secret_key,
            extra_env: Vec::new(),
        }
    }
}

pub struct Replica {
    pub index: usize,
    pub port: u16,
    pub url: String,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    daemon: Option<Daemon>,
    /// When it was killed (milliseconds since the Unix epoch), each time.
    pub kills: Vec<u64>,
    /// Its stderr logs, one per start, oldest first.
    pub logs: Vec<PathBuf>,
}

impl Replica {
    /// Starts replica `index` with a data dir of its own under `dir`.
    pub fn start(index: usize, dir: &Path, shared: &Shared) -> Replica {
        let port = free_port();
        let data_dir = dir.join(format!("replica-{index}"));
        let mut env = vec![
            ("DATABASE_URL".to_string(), shared.database_url.clone()),
            (
                "AUTODEPLOY_REPO_DIR".to_string(),
                shared.repo_dir.display().to_string(),
            ),
            (
                "AUTODEPLOY_SECRET_KEY".to_string(),
                shared.secret_key.clone(),
            ),
            ("AUTODEPLOY_LISTEN".to_string(), format!("127.0.0.1:{port}")),
        ];
        env.extend(shared.extra_env.iter().cloned());
        let mut replica = Replica {
            index,
            port,
            url: format!("http://127.0.0.1:{port}"),
            data_dir,
            env,
            daemon: None,
            kills: Vec::new(),
            logs: Vec::new(),
        };
        replica.restart();
        replica
    }

    /// Starts it again (after a kill) on the same data dir and port.
    pub fn restart(&mut self) {
        assert!(self.daemon.is_none(), "replica {} is running", self.index);
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let d = Daemon::try_start_with(&self.data_dir, &[], &env)
            .unwrap_or_else(|e| panic!("replica {} did not start: {e}", self.index));
        assert_eq!(
            d.url, self.url,
            "replica {} listens where asked",
            self.index
        );
        self.logs.push(d.stderr_log.clone());
        self.daemon = Some(d);
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon
            .as_ref()
            .unwrap_or_else(|| panic!("replica {} is down", self.index))
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.child.id())
    }

    /// SIGKILL; returns when it was sent.
    pub fn kill9(&mut self) -> u64 {
        let d = self.daemon.take().expect("a running replica");
        let at = epoch_ms();
        d.kill();
        self.kills.push(at);
        at
    }

    /// Head lookups it is running now: the daemon runs each in a child
    /// process (`autodeploy git-lookup`), so a replica with such a child
    /// is in the middle of a poll tick.
    pub fn lookups_in_flight(&self) -> usize {
        let Some(pid) = self.pid() else { return 0 };
        super::agent::processes()
            .iter()
            .filter(|p| p.ppid == pid && p.cmdline.contains(autodeploy::git::isolated::SUBCOMMAND))
            .count()
    }

    /// Everything it logged, over every start.
    pub fn log(&self) -> String {
        self.logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// SIGTERM, and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
    }
}
