//! A test binary leaves nothing behind, however its tests end: each case
//! here runs one of the `child_*` cases below as a separate test process
//! (this same binary), lets it start real servers and then fail, or kills
//! it outright, and checks that every process it started is gone and its
//! temporary directory removed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use common::daemon::{Daemon, temp_dir};
use common::git::{Server, bare_with_commit, git_daemon, nginx_git, sshd};
use common::reap::KEEP_ENV;
use common::registry::TestRegistry;

/// Where a child case writes what it started.
const REPORT_ENV: &str = "LEFTOVERS_TEST_REPORT";
/// Bounds a hang only.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A process as the child saw it: its start time tells it apart from a
/// later process that reuses the pid.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    pid: u32,
    start: u64,
    cmdline: String,
}

/// `(process group, start time)` from /proc/PID/stat, unless it has gone
/// (or is a zombie: it has exited and only waits to be reaped).
fn stat(pid: u32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ..." where comm may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some((fields.get(2)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// Every live process in group `pgid`.
fn group(pgid: i32) -> Vec<Seen> {
    common::agent::processes()
        .into_iter()
        .filter_map(|p| {
            let (g, start) = stat(p.pid)?;
            (g == pgid).then_some(Seen {
                pid: p.pid,
                start,
                cmdline: p.cmdline,
            })
        })
        .collect()
}

fn alive(p: &Seen) -> bool {
    stat(p.pid).is_some_and(|(_, start)| start == p.start)
}

/// A server every case of a binary shares: kept in a static, so it is
/// never dropped.
static SHARED: LazyLock<Server> = LazyLock::new(|| {
    let dir = temp_dir("shared-git");
    bare_with_commit(&dir.join("r.git"));
    git_daemon(&dir)
});

/// Starts the daemon, `git daemon` (holding a connection open, so it has
/// forked a child for it), nginx with fcgiwrap, sshd, the registry and a
/// shared server; writes what runs (and the binary's temporary root) to
/// the report file; returns the guards.
fn start_everything() -> impl Sized {
    let report = PathBuf::from(std::env::var(REPORT_ENV).expect("run by the cases above"));
    let dir = temp_dir("child");
    let repos = dir.join("repos");
    bare_with_commit(&repos.join("r.git"));
    let daemon = Daemon::start(&dir.join("daemon"));
    let git = git_daemon(&repos);
    let held = std::net::TcpStream::connect(("127.0.0.1", git.port)).unwrap();
    let nginx = nginx_git(&dir.join("nginx"), &repos, "u", "p");
    let (ssh, _key) = sshd(&dir.join("sshd"));
    let registry = TestRegistry::start(&dir.join("registry"), None, None);
    let mut groups = vec![
        daemon.child.pgid(),
        git.pid().unwrap() as i32,
        ssh.pid().unwrap() as i32,
        SHARED.pid().unwrap() as i32,
    ];
    groups.extend(nginx.pids().iter().map(|p| *p as i32));
    // `git daemon` forks its per-connection child once it accepts.
    common::wait_until_blocking("git daemon forked for the held connection", TIMEOUT, || {
        group(groups[1]).len() >= 3
    });
    let mut seen: Vec<Seen> = groups.iter().flat_map(|g| group(*g)).collect();
    // The registry: found by its config file in the root.
    let root = common::reap::root();
    let root_text = root.display().to_string();
    let known: Vec<u32> = seen.iter().map(|s| s.pid).collect();
    seen.extend(
        common::agent::processes()
            .into_iter()
            .filter(|p| p.cmdline.contains(&root_text) && !known.contains(&p.pid))
            .filter(|p| !p.cmdline.contains(common::reap::REAPER_NAME))
            .filter_map(|p| {
                let (_, start) = stat(p.pid)?;
                Some(Seen {
                    pid: p.pid,
                    start,
                    cmdline: p.cmdline,
                })
            }),
    );
    let mut text = format!("root {}\n", root.display());
    for s in &seen {
        text.push_str(&format!("pid {} {} {}\n", s.pid, s.start, s.cmdline));
    }
    std::fs::write(&report, text).unwrap();
    (daemon, git, held, nginx, ssh, registry)
}

#[test]
#[ignore = "a child process of the cases above, which run it"]
fn child_starts_servers_then_fails() {
    let _servers = start_everything();
    panic!("a planted failure, after starting servers");
}

#[test]
#[ignore = "a child process of the cases above, which run it"]
fn child_starts_servers_then_hangs() {
    let _servers = start_everything();
    // Until the parent kills this process; bounded all the same.
    std::thread::sleep(TIMEOUT * 2);
    panic!("not killed within {:?}", TIMEOUT * 2);
}

/// What a child case reported: its temporary root and its processes.
struct Report {
    root: PathBuf,
    processes: Vec<Seen>,
}

fn read_report(path: &Path) -> Option<Report> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut root = None;
    let mut processes = Vec::new();
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("root ") {
            root = Some(PathBuf::from(r));
        } else if let Some(rest) = line.strip_prefix("pid ") {
            let mut parts = rest.splitn(3, ' ');
            processes.push(Seen {
                pid: parts.next()?.parse().ok()?,
                start: parts.next()?.parse().ok()?,
                cmdline: parts.next().unwrap_or_default().to_string(),
            });
        }
    }
    Some(Report {
        root: root?,
        processes,
    })
}

/// Runs child case `name` of this binary with `env`.
fn child(name: &str, report: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([name, "--exact", "--include-ignored", "--test-threads=1"])
        .env(REPORT_ENV, report)
        .env_remove(KEEP_ENV)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits until none of `report`'s processes runs and asserts which servers
/// it saw (so the check below cannot pass on an empty report).
fn assert_all_ended(report: &Report) {
    for server in [
        "autodeploy serve",
        "git-daemon",
        "nginx: master",
        "nginx: worker",
        "fcgiwrap",
        "sshd",
        "docker-registry",
    ] {
        assert!(
            report.processes.iter().any(|p| p.cmdline.contains(server)),
            "the child reported a {server} process: {:?}",
            report.processes
        );
    }
    let forked = report
        .processes
        .iter()
        .filter(|p| p.cmdline.contains("git-daemon"))
        .count();
    assert!(
        forked >= 2,
        "git daemon forked a child for the held connection"
    );
    let left = || -> Vec<Seen> {
        report
            .processes
            .iter()
            .filter(|p| alive(p))
            .cloned()
            .collect()
    };
    common::wait_until_blocking("every process the child started has ended", TIMEOUT, || {
        left().is_empty()
    });
}

#[test]
fn a_failing_test_ends_every_process_it_started_and_removes_its_directory() {
    let report_path = temp_dir("failing").join("report");
    let out = child("child_starts_servers_then_fails", &report_path, &[])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && stdout.contains("a planted failure"),
        "the child case failed as planted: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = read_report(&report_path).expect("the child reported what it started");
    assert_all_ended(&report);
    common::wait_until_blocking("the child's temporary root is removed", TIMEOUT, || {
        !report.root.exists()
    });
}

#[test]
fn a_test_binary_killed_with_sigkill_leaves_nothing_behind() {
    let report_path = temp_dir("killed").join("report");
    let mut proc = child("child_starts_servers_then_hangs", &report_path, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until_blocking("the child reported what it started", TIMEOUT, || {
        read_report(&report_path).is_some()
    });
    proc.kill().unwrap();
    let status = proc.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let report = read_report(&report_path).unwrap();
    assert_all_ended(&report);
    common::wait_until_blocking("the child's temporary root is removed", TIMEOUT, || {
        !report.root.exists()
    });
}

#[test]
fn keep_test_dirs_keeps_the_directory_and_still_ends_the_processes() {
    let report_path = temp_dir("kept").join("report");
    let out = child(
        "child_starts_servers_then_fails",
        &report_path,
        &[(KEEP_ENV, "1")],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let report = read_report(&report_path).expect("the child reported what it started");
    assert_all_ended(&report);
    // The reaper shares the child's stderr: `output()` returned once it was
    // done, and it said where the directory is.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "kept the test directories in {}",
            report.root.display()
        )),
        "{stderr}"
    );
    assert!(
        report.root.join("child/daemon").is_dir(),
        "the daemon's data dir is kept"
    );
    std::fs::remove_dir_all(&report.root).unwrap();
}
