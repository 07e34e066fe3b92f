//! The `autodeploy policy` commands as a user runs them: the real binary,
//! real files, JSON on stdin and stdout.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

/// Where the CLI keeps compiled policies during these tests: inside the
/// target dir, never the user's own `~/.cache`.
fn cache_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache")
}

fn autodeploy(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .env("XDG_CACHE_HOME", cache_home())
        .args(args)
        .env_remove("AUTODEPLOY_POLICY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run autodeploy");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn json_out(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/compose")
}

#[test]
fn parse_compose_answers_every_sample_file() {
    let mut checked = 0;
    for entry in std::fs::read_dir(compose_dir()).unwrap() {
        let yml = entry.unwrap().path();
        let expected = yml.with_extension("json");
        if yml.extension().is_none_or(|e| e != "yml") || !expected.exists() {
            continue;
        }
        let out = autodeploy(&["policy", "parse-compose", yml.to_str().unwrap()], "");
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(&expected).unwrap()).unwrap();
        assert_eq!(json_out(&out), want, "{}", yml.display());
        checked += 1;
    }
    assert!(checked >= 3, "sample compose files are missing");
}

#[test]
fn parse_compose_reads_stdin_and_fails_clearly_on_bad_input() {
    let out = autodeploy(
        &["policy", "parse-compose", "-"],
        "services: {a: {image: x:1}}",
    );
    assert_eq!(json_out(&out), json!({"images": ["x:1"], "skipped": []}));

    let invalid = compose_dir().join("invalid.yml");
    let out = autodeploy(&["policy", "parse-compose", invalid.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid.yml") && err.contains("invalid YAML") && err.contains("line 4"),
        "{err}"
    );

    let out = autodeploy(&["policy", "parse-compose", "/nonexistent/compose.yml"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/compose.yml"));
}

#[test]
fn decide_commit_json_in_and_out() {
    let sha = "a".repeat(40);
    let out = autodeploy(
        &["policy", "decide-commit"],
        &json!({"last_tracked": "", "remote_head": sha}).to_string(),
    );
    let d = json_out(&out);
    assert_eq!(d["trigger"], true);
    assert_eq!(d["record"], sha.as_str());
    assert!(d["reason"].as_str().unwrap().contains("align"));

    let out = autodeploy(
        &["policy", "decide-commit"],
        &json!({"last_tracked": sha, "remote_head": sha}).to_string(),
    );
    assert_eq!(
        json_out(&out),
        json!({"trigger": false, "record": null, "reason": "main is still at aaaaaaaaaaaa"})
    );

    let out = autodeploy(
        &["policy", "decide-commit"],
        &json!({"last_tracked": sha, "remote_head": null}).to_string(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist on the remote"));

    let out = autodeploy(
        &["policy", "decide-commit"],
        r#"{"last_tracked": "", "remote_hed": "x"}"#,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("remote_hed"));
}

#[test]
fn decide_images_json_in_and_out() {
    let (a, b) = (
        format!("sha256:{}", "a".repeat(64)),
        format!("sha256:{}", "b".repeat(64)),
    );
    let input = json!({
        "prior": {"redis:7": a, "gone:1": a},
        "lookups": {"redis:7": {"digest": b}, "web:1": {"digest": a}, "db:1": {"error": "timeout"}},
    });
    let d = json_out(&autodeploy(
        &["policy", "decide-images"],
        &input.to_string(),
    ));
    assert_eq!(d["trigger"], true);
    assert_eq!(d["record"], json!({"redis:7": b, "web:1": a}));
    assert_eq!(d["moved"], json!(["redis:7"]));
    assert_eq!(d["added"], json!(["web:1"]));
    assert_eq!(
        d["changes"],
        json!([{"image": "redis:7", "previous": a, "current": b}])
    );
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("redis:7")
            && reason.contains("db:1 (timeout)")
            && reason.contains("gone:1"),
        "{reason}"
    );
}

#[test]
fn policy_flag_and_env_select_another_component() {
    let dir = std::env::temp_dir().join(format!("autodeploy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hostile = dir.join("hostile.wasm");
    std::fs::write(&hostile, common::hostile_policy(common::LOOP_BODY)).unwrap();

    let info = json_out(&autodeploy(
        &["--policy", hostile.to_str().unwrap(), "policy", "info"],
        "",
    ));
    assert_eq!(info["name"], "hostile");
    assert_eq!(info["source"], hostile.to_str().unwrap());
    assert_eq!(info["sha256"].as_str().unwrap().len(), 64);

    let out = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .env("XDG_CACHE_HOME", cache_home())
        .args(["policy", "parse-compose", "-", "--policy-deadline-ms", "20"])
        .env("AUTODEPLOY_POLICY", &hostile)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceeded its deadline of 20ms"));

    let bundled = json_out(&autodeploy(&["policy", "info"], ""));
    assert_eq!(bundled["name"], "autodeploy-default");
    assert_eq!(bundled["source"], "bundled");

    let missing = dir.join("missing.wasm");
    let out = autodeploy(
        &["--policy", missing.to_str().unwrap(), "policy", "info"],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.wasm"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn settings_below_their_minimum_are_refused() {
    let out = autodeploy(&["policy", "info", "--policy-memory-mib", "1"], "");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--policy-memory-mib") && err.contains("2.."),
        "{err}"
    );
}

#[test]
fn policy_fuel_is_configurable_down_to_a_documented_minimum() {
    let yaml = "services: {a: {image: x:1}}";
    // The minimum itself is accepted, by flag and by environment.
    let min = autodeploy::policy::MIN_FUEL.to_string();
    let ok = json_out(&autodeploy(
        &["policy", "parse-compose", "-", "--policy-fuel", &min],
        yaml,
    ));
    assert_eq!(ok["images"], serde_json::json!(["x:1"]));
    let out = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .env("XDG_CACHE_HOME", cache_home())
        .args(["policy", "parse-compose", "-"])
        .env_remove("AUTODEPLOY_POLICY")
        .env("AUTODEPLOY_POLICY_FUEL", "1000")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("policy-fuel") && stderr.contains(&min),
        "{stderr}"
    );
}
