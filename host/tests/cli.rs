//! The `autodeploy policy` commands as a user runs them: the real binary,
//! real files, JSON on stdin and stdout.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

/// Where the CLI keeps compiled policies during these tests: inside the
/// target dir, never the user's own `~/.cache`.
fn cache_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache")
}

fn autodeploy(args: &[&str], stdin: &str) -> Output {
    common::output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_autodeploy"))
            .env("XDG_CACHE_HOME", cache_home())
            .args(args)
            .env_remove("AUTODEPLOY_POLICY"),
        stdin,
    )
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
    let dir = common::daemon::temp_dir("cli");
    let hostile = dir.join("hostile.wasm");
    std::fs::write(&hostile, common::hostile_policy(common::LOOP_BODY)).unwrap();

    let info = json_out(&autodeploy(
        &["policy", "info", "--policy", hostile.to_str().unwrap()],
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
        &["policy", "info", "--policy", missing.to_str().unwrap()],
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

/// The subcommands `autodeploy ARGS --help` lists (not `help` itself).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// The policy flags belong to the commands that run a policy: `serve` and
/// `policy ...`. Every other command's help, found by walking the whole
/// tree, leaves them out.
#[test]
fn only_serve_and_policy_show_the_policy_flags() {
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut checked = Vec::new();
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = autodeploy(&args, "");
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        let runs_a_policy = matches!(path.first().map(String::as_str), Some("serve" | "policy"));
        for flag in [
            "--policy ",
            "--policy-fuel",
            "--policy-deadline-ms",
            "--policy-memory-mib",
        ] {
            // The top level lists no flags of its subcommands either.
            assert_eq!(
                help.contains(flag),
                runs_a_policy,
                "{flag} in `autodeploy {}`:\n{help}",
                args.join(" ")
            );
        }
        for sub in subcommands(&help) {
            let mut next = path.clone();
            next.push(sub);
            todo.push(next);
        }
        checked.push(path.join(" "));
    }
    for want in [
        "agent",
        "node list",
        "project deployments",
        "settings get",
        "events",
        "completions",
        "man",
        "policy info",
    ] {
        assert!(checked.iter().any(|c| c == want), "{want} in {checked:?}");
    }
}

/// The same env vars still set the policy flags where they moved.
#[test]
fn policy_env_vars_still_set_the_moved_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .env("XDG_CACHE_HOME", cache_home())
        .args(["policy", "info"])
        .env_remove("AUTODEPLOY_POLICY")
        .env("AUTODEPLOY_POLICY_MEMORY_MIB", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--policy-memory-mib"), "{err}");
}

/// `completions bash` is a script bash accepts; zsh and fish get theirs;
/// `man` prints a roff page naming the subcommands.
#[test]
fn completions_and_man_page() {
    let dir = std::env::temp_dir().join(format!("autodeploy-completions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = autodeploy(&["completions", "bash"], "");
    assert!(out.status.success());
    let script = dir.join("autodeploy.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let bash = String::from_utf8(out.stdout).unwrap();
    assert!(
        bash.contains("complete -F") && bash.contains("deployments"),
        "{bash}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let zsh = autodeploy(&["completions", "zsh"], "");
    assert!(zsh.status.success());
    assert!(
        String::from_utf8(zsh.stdout)
            .unwrap()
            .starts_with("#compdef autodeploy")
    );
    let fish = autodeploy(&["completions", "fish"], "");
    assert!(fish.status.success());
    assert!(
        String::from_utf8(fish.stdout)
            .unwrap()
            .contains("complete -c autodeploy")
    );
    let out = autodeploy(&["completions", "tcsh"], "");
    assert_eq!(out.status.code(), Some(2));

    let man = autodeploy(&["man"], "");
    assert!(man.status.success());
    let man = String::from_utf8(man.stdout).unwrap();
    // roff: the page's title line after nothing but roff requests (the
    // quote-character setup clap_mangen puts first).
    let head: Vec<&str> = man.lines().take_while(|l| !l.starts_with(".TH")).collect();
    assert!(head.iter().all(|l| l.starts_with('.')), "{head:?}");
    assert!(
        man.lines().any(|l| l.starts_with(".TH autodeploy 1")),
        "{}",
        &man[..man.len().min(300)]
    );
    for sub in ["serve", "agent", "project", "events", "completions"] {
        assert!(man.contains(sub), "{sub} in the man page");
    }
}
