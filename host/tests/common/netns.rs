//! A private network namespace for one test thread: its own loopback, with
//! an address outside 127.0.0.0/8 bound to it. A server there looks remote
//! to the daemon (not loopback, so not allowed plain HTTP) while every
//! packet stays on this machine.

/// TEST-NET-3: documentation-only, routed nowhere. Exists only inside the
/// namespace, on its loopback interface.
pub const OUTSIDE_IP: &str = "203.0.113.7";

/// Runs `f` on a new thread that first moves into a fresh network
/// namespace; whatever that thread starts (servers, the daemon, skopeo)
/// lives there too. A panic in `f` is the caller's panic.
pub fn run_in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        enter();
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn enter() {
    // SAFETY: unshare(2) with CLONE_NEWNET touches no memory; it moves only
    // the calling thread (and what it starts later) to a new namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) failed ({}): this test needs CAP_SYS_ADMIN; run it as root, as scripts/test.sh does",
        std::io::Error::last_os_error()
    );
    ip(&["link", "set", "lo", "up"]);
    ip(&["addr", "add", &format!("{OUTSIDE_IP}/32"), "dev", "lo"]);
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("`ip` (iproute2) is missing: the test command installs it");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
