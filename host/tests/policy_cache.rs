//! Compiled policies (the bundled one precompiled at build time, others
//! cached by sha256 under the data dir) and the parse-compose memo, through
//! the library, the real daemon and the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use autodeploy::policy::{CompiledStats, DEFAULT_FUEL, Policy, PolicyConfig, PolicyRuntime};
use common::daemon::{ADMIN, Daemon, temp_dir};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const COMPOSE: &str = "services:\n  web:\n    image: nginx:1.27\n  db:\n    image: postgres:16\n";

fn runtime(cache: Option<&Path>, fuel: bool) -> Arc<PolicyRuntime> {
    let rt = PolicyRuntime::new(PolicyConfig {
        fuel: fuel.then_some(DEFAULT_FUEL),
        ..PolicyConfig::default()
    })
    .unwrap();
    if let Some(dir) = cache {
        rt.use_cache_dir(dir.to_path_buf());
    }
    rt
}

fn stats(precompiled: u64, cache_hits: u64, compiled: u64, rejected: u64) -> CompiledStats {
    CompiledStats {
        precompiled,
        cache_hits,
        shared: 0,
        compiled,
        rejected,
        shared_rejected: 0,
    }
}

/// The cache entries in `dir`, sorted.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension().is_some_and(|e| e == "cwasm"));
    found.sort();
    found
}

/// The policy answers as the bundled one does.
fn assert_decides(policy: &Policy) {
    let found = policy
        .parse_compose(COMPOSE)
        .expect("parse-compose answers");
    assert_eq!(found.images, ["nginx:1.27", "postgres:16"]);
    let err = policy.parse_compose("services: [").unwrap_err();
    assert!(err.to_string().contains("YAML"), "{err}");
}

/// Whether the bundled policy's native code is built in (the feature
/// `precompiled-policy`).
const BUILT_IN: bool = cfg!(feature = "precompiled-policy");

#[test]
fn the_bundled_policy_is_compiled_at_most_once() {
    let dir = temp_dir("cwasm-bundled");
    let rt = runtime(Some(&dir), true);
    let policy = rt.load_bundled().unwrap();
    if BUILT_IN {
        assert_eq!(rt.compiled_stats(), stats(1, 0, 0, 0), "built in");
        assert!(entries(&dir).is_empty());
    } else {
        assert_eq!(rt.compiled_stats(), stats(0, 0, 1, 0), "first use");
        assert_eq!(entries(&dir).len(), 1);
    }
    assert_decides(&policy);
    let again = runtime(Some(&dir), true);
    assert_decides(&again.load_bundled().unwrap());
    assert_eq!(
        again.compiled_stats(),
        if BUILT_IN {
            stats(1, 0, 0, 0)
        } else {
            stats(0, 1, 0, 0)
        }
    );

    // Metering off changes the code: the embedded code does not fit, and
    // the policy is compiled instead.
    let unmetered = runtime(None, false);
    let policy = unmetered.load_bundled().unwrap();
    assert_eq!(unmetered.compiled_stats(), stats(0, 0, 1, 0));
    assert_decides(&policy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_policy_is_compiled_once_then_loaded_from_its_cache_entry() {
    let dir = temp_dir("cwasm-once");
    let bytes = common::policy_variant("once");
    let first = runtime(Some(&dir), true);
    let policy = first.load(&bytes, "test").unwrap();
    assert_eq!(first.compiled_stats(), stats(0, 0, 1, 0));
    assert_decides(&policy);
    let sha = policy.info().sha256.clone();
    let found = entries(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    let name = found[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("{sha}-")) && name.len() == sha.len() + 1 + 16 + 6,
        "<sha256>-<engine hash>.cwasm: {name}"
    );

    let second = runtime(Some(&dir), true);
    let policy = second.load(&bytes, "test").unwrap();
    assert_eq!(second.compiled_stats(), stats(0, 1, 0, 0));
    assert_decides(&policy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_entry_is_compiled_again_and_replaced() {
    let dir = temp_dir("cwasm-damaged");
    let bytes = common::policy_variant("damaged");
    runtime(Some(&dir), true).load(&bytes, "test").unwrap();
    let entry = entries(&dir).pop().expect("an entry");
    let good = std::fs::read(&entry).unwrap();
    let elsewhere = dir.join("other");
    runtime(Some(&elsewhere), true)
        .load(&common::policy_variant("other"), "test")
        .unwrap();
    let other = std::fs::read(entries(&elsewhere).pop().unwrap()).unwrap();
    let flip = |at: usize| {
        let mut bad = good.clone();
        bad[at] ^= 0x5a;
        bad
    };
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("a byte flipped in the code", flip(good.len() / 2)),
        ("the last byte flipped", flip(good.len() - 1)),
        ("a byte flipped in the header", flip(20)),
        ("truncated to half", good[..good.len() / 2].to_vec()),
        ("truncated inside the header", good[..40].to_vec()),
        ("empty", Vec::new()),
        ("the entry of another policy", other),
    ];
    for (what, damaged) in damages {
        std::fs::write(&entry, &damaged).unwrap();
        let rt = runtime(Some(&dir), true);
        let policy = rt
            .load(&bytes, "test")
            .unwrap_or_else(|e| panic!("{what}: the policy still loads: {e}"));
        assert_eq!(rt.compiled_stats(), stats(0, 0, 1, 1), "{what}");
        assert_decides(&policy);
        let rewritten = std::fs::read(&entry).unwrap();
        assert_ne!(rewritten, damaged, "{what}: the entry is rewritten");
        // The rewritten entry is good: the next load needs no compiling.
        let next = runtime(Some(&dir), true);
        assert_decides(&next.load(&bytes, "test").unwrap());
        assert_eq!(next.compiled_stats(), stats(0, 1, 0, 0), "{what}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_entry_made_by_another_engine_is_replaced() {
    let dir = temp_dir("cwasm-engine");
    let bytes = common::policy_variant("engine");
    runtime(Some(&dir), true).load(&bytes, "test").unwrap();
    let metered_entry = entries(&dir).pop().unwrap();

    // Another engine (metering off) has an entry name of its own: it
    // compiles, writes its entry and drops the stale one.
    let unmetered = runtime(Some(&dir), false);
    assert_decides(&unmetered.load(&bytes, "test").unwrap());
    assert_eq!(unmetered.compiled_stats(), stats(0, 0, 1, 0));
    let found = entries(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_ne!(found[0], metered_entry);
    let unmetered_entry = found[0].clone();

    // An entry renamed to another engine's name is caught by its header.
    std::fs::rename(&unmetered_entry, &metered_entry).unwrap();
    let good = std::fs::read(&metered_entry).unwrap();
    let rt = runtime(Some(&dir), true);
    assert_decides(&rt.load(&bytes, "test").unwrap());
    assert_eq!(rt.compiled_stats(), stats(0, 0, 1, 1));
    assert_ne!(std::fs::read(&metered_entry).unwrap(), good);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cache_dir_others_may_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("cwasm-shared");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let bytes = common::policy_variant("shared");
    for _ in 0..2 {
        let rt = runtime(Some(&dir), true);
        assert_decides(&rt.load(&bytes, "test").unwrap());
        assert_eq!(rt.compiled_stats(), stats(0, 0, 1, 0));
    }
    assert!(entries(&dir).is_empty(), "nothing written there");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn status(d: &Daemon) -> Value {
    d.ok(Method::GET, "/api/status", None).await
}

async fn put_policy(d: &Daemon, bytes: Vec<u8>) -> Value {
    let (status, v) = d
        .raw(
            Method::PUT,
            "/api/policy",
            Some(ADMIN),
            bytes,
            "application/wasm",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

#[tokio::test]
async fn the_daemon_compiles_a_policy_once_across_restarts() {
    let dir = temp_dir("cwasm-daemon");
    let d = Daemon::start(&dir);
    let (first, later) = if BUILT_IN {
        let built_in = json!({"precompiled": 1, "cache_hits": 0, "compiled": 0, "rejected": 0, "shared": 0, "shared_rejected": 0});
        (built_in.clone(), built_in)
    } else {
        (
            json!({"precompiled": 0, "cache_hits": 0, "compiled": 1, "rejected": 0, "shared": 0, "shared_rejected": 0}),
            json!({"precompiled": 0, "cache_hits": 1, "compiled": 0, "rejected": 0, "shared": 0, "shared_rejected": 0}),
        )
    };
    assert_eq!(status(&d).await["policy_cache"]["compiled"], first);
    d.stop();
    let d = Daemon::start(&dir);
    assert_eq!(status(&d).await["policy_cache"]["compiled"], later);
    let swapped = put_policy(&d, common::policy_variant("daemon")).await;
    let sha = swapped["sha256"].as_str().unwrap().to_string();
    assert_eq!(status(&d).await["policy_cache"]["compiled"]["compiled"], 1);
    let cache = dir.join("policies").join("compiled");
    let found: Vec<PathBuf> = entries(&cache)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&sha))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    d.stop();

    // A restart starts from the swapped policy's cached code. Its self-test
    // runs (a swap does not remember one), and its pass is remembered.
    const REMEMBERED: &str = "policy passed this self-test before";
    let d = Daemon::start(&dir);
    let s = status(&d).await;
    assert_eq!(s["policy"]["sha256"], sha.as_str());
    assert_eq!(
        s["policy_cache"]["compiled"],
        json!({"precompiled": 0, "cache_hits": 1, "compiled": 0, "rejected": 0, "shared": 0, "shared_rejected": 0})
    );
    assert!(!d.log().contains(REMEMBERED), "{}", d.log());
    d.stop();

    // A damaged entry: the daemon still starts on that policy, says so, and
    // takes the native code it stored in the database at the swap (checked
    // under its secret key) instead, rewriting the entry with it.
    let mut bytes = std::fs::read(&found[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&found[0], &bytes).unwrap();
    let d = Daemon::start(&dir);
    let s = status(&d).await;
    assert_eq!(s["policy"]["sha256"], sha.as_str());
    assert_eq!(
        s["policy_cache"]["compiled"],
        json!({"precompiled": 0, "cache_hits": 0, "compiled": 0, "rejected": 1, "shared": 1, "shared_rejected": 0})
    );
    assert!(
        d.log().contains("compiled policy entry unusable"),
        "{}",
        d.log()
    );
    assert_ne!(std::fs::read(&found[0]).unwrap(), bytes, "rewritten");
    assert!(d.log().contains(REMEMBERED), "{}", d.log());
    d.stop();

    // Another instruction budget: the self-test runs again.
    let d = Daemon::start_with(&dir, &["--policy-fuel", "3000000000"], &[]);
    assert_eq!(status(&d).await["policy"]["sha256"], sha.as_str());
    assert!(!d.log().contains(REMEMBERED), "{}", d.log());
    d.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_compose_file_is_parsed_once_until_the_policy_changes() {
    use common::fake_registry::start;
    let dir = temp_dir("parse-memo");
    let (port, _) = start(false).await;
    let d = Daemon::start(&dir);
    let (id, token) = d.shop().await;
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    common::git::git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(
        work.join("docker-compose.yml"),
        format!("services:\n  web:\n    image: 127.0.0.1:{port}/pub/app:1\n"),
    )
    .unwrap();
    common::git::git(&work, &["add", "docker-compose.yml"]);
    common::git::git(&work, &["commit", "-q", "-m", "compose"]);
    let url = format!(
        "http://x:{token}@{}/git/{id}.git",
        d.url.trim_start_matches("http://")
    );
    common::git::git(&work, &["push", "-q", &url, "main"]);
    d.ok(
        Method::PATCH,
        &format!("/api/projects/{id}"),
        Some(json!({"auto_deploy_enabled": true})),
    )
    .await;
    let memo = |s: &Value| {
        let m = &s["policy_cache"]["parse_compose"];
        (
            m["hits"].as_u64().unwrap(),
            m["misses"].as_u64().unwrap(),
            m["entries"].as_u64().unwrap(),
            m["clears"].as_u64().unwrap(),
        )
    };
    let tick = || async {
        let t = d.ok(Method::POST, "/api/ticks/image-watch", None).await;
        let me = t["projects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["project_id"] == id)
            .cloned()
            .expect("project in the tick");
        assert_eq!(
            me["images"],
            json!([format!("127.0.0.1:{port}/pub/app:1")]),
            "{t}"
        );
    };

    assert_eq!(memo(&status(&d).await), (0, 0, 0, 0));
    tick().await;
    assert_eq!(memo(&status(&d).await), (0, 1, 1, 0), "first tick parses");
    tick().await;
    assert_eq!(
        memo(&status(&d).await),
        (1, 1, 1, 0),
        "second tick over the same file: answered from the memo"
    );

    // A policy switch empties the memo: the next tick asks the new policy.
    put_policy(&d, common::policy_variant("memo")).await;
    assert_eq!(memo(&status(&d).await), (1, 1, 0, 1));
    tick().await;
    assert_eq!(memo(&status(&d).await), (1, 2, 1, 1));
    tick().await;
    assert_eq!(memo(&status(&d).await), (2, 2, 1, 1));

    // So does a rollback.
    let (code, v) = d
        .call(Method::POST, "/api/policy/rollback", Some(ADMIN), None)
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(memo(&status(&d).await), (2, 2, 0, 2));
    tick().await;
    assert_eq!(memo(&status(&d).await), (2, 3, 1, 2));
    d.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cli_uses_the_bundled_code_and_caches_a_policy_file() {
    let dir = temp_dir("cwasm-cli");
    let compose = dir.join("compose.yml");
    std::fs::write(&compose, COMPOSE).unwrap();
    let policy = dir.join("variant.wasm");
    std::fs::write(&policy, common::policy_variant("cli")).unwrap();
    let cache_home = dir.join("cache");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_autodeploy"))
            .arg("policy")
            .arg("parse-compose")
            .arg(&compose)
            .args(args)
            .env("XDG_CACHE_HOME", &cache_home)
            .env("RUST_LOG", "autodeploy=debug")
            .env_remove("AUTODEPLOY_POLICY")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let v: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(
            v["images"],
            json!(["nginx:1.27", "postgres:16"]),
            "{stdout}"
        );
        stderr
    };
    let cache = cache_home.join("autodeploy").join("policies");
    let bundled = run(&[]);
    if BUILT_IN {
        assert!(bundled.contains("source=Precompiled"), "{bundled}");
    } else {
        assert!(bundled.contains("source=Compiled"), "{bundled}");
        assert_eq!(entries(&cache).len(), 1);
        let again = run(&[]);
        assert!(again.contains("source=Cache"), "{again}");
    }
    let before = entries(&cache).len();
    let policy_arg = policy.to_str().unwrap();
    let first = run(&["--policy", policy_arg]);
    assert!(first.contains("source=Compiled"), "{first}");
    assert_eq!(entries(&cache).len(), before + 1);
    let second = run(&["--policy", policy_arg]);
    assert!(second.contains("source=Cache"), "{second}");
    let _ = std::fs::remove_dir_all(&dir);
}
