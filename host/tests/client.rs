//! The command-line client against a running daemon: what the README's
//! walk-through does.

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::daemon::{ADMIN, Daemon, temp_dir};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `autodeploy ARGS` against `d` as a person runs it: the admin token, no
/// output format chosen.
fn person(d: &Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .args(args)
        .env("AUTODEPLOY_URL", &d.url)
        .env("AUTODEPLOY_ADMIN_TOKEN", ADMIN)
        .env_remove("AUTODEPLOY_OUTPUT")
        .output()
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A table's rows, each cell cut where its header's column starts: a cell
/// out of line with its header (or running into the next column) fails
/// here rather than reading as another value.
fn table(text: &str) -> Vec<HashMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<char> = lines.next().expect("a header line").chars().collect();
    let starts: Vec<usize> = (0..header.len())
        .filter(|&i| header[i] != ' ' && (i == 0 || (i >= 2 && header[i - 2..i] == [' ', ' '])))
        .collect();
    let cell = |line: &[char], i: usize| -> String {
        let end = starts.get(i + 1).map_or(line.len(), |&e| e.min(line.len()));
        line[starts[i].min(line.len())..end]
            .iter()
            .collect::<String>()
            .trim()
            .to_string()
    };
    let names: Vec<String> = (0..starts.len()).map(|i| cell(&header, i)).collect();
    lines
        .map(|line| {
            let line: Vec<char> = line.chars().collect();
            for (i, &at) in starts.iter().enumerate().skip(1) {
                assert!(
                    line.len() > at && line[at] != ' ' && line[at - 2..at] == [' ', ' '],
                    "column {} out of line in {:?}\n{text}",
                    names[i],
                    line.iter().collect::<String>()
                );
            }
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), cell(&line, i)))
                .collect()
        })
        .collect()
}

/// The row whose `column` is `value`.
fn row<'a>(
    rows: &'a [HashMap<String, String>],
    column: &str,
    value: &str,
) -> &'a HashMap<String, String> {
    rows.iter()
        .find(|r| r[column] == value)
        .unwrap_or_else(|| panic!("no row with {column} {value}: {rows:?}"))
}

#[tokio::test]
async fn the_walk_through_works_from_the_command_line() {
    let dir = temp_dir("client");
    let d = Daemon::start(&dir);
    let p = common::cli(
        &d,
        &[
            "project",
            "create",
            "--name",
            "shop",
            "--type",
            "compose",
            "--expose-service",
            "web",
            "--expose-port",
            "8080",
        ],
    )
    .unwrap();
    let id = p["id"].as_i64().unwrap().to_string();
    assert!(p["push_token"].as_str().unwrap().starts_with("adp_"));
    assert_eq!(
        common::cli(&d, &["project", "set", &id, "auto_deploy_enabled=true"]).unwrap()["auto_deploy_enabled"],
        true
    );
    assert_eq!(
        common::cli(&d, &["project", "list"])
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let first = common::cli(&d, &["project", "deploy", &id]).unwrap();
    assert_eq!(first["status"], "queued");
    let again = common::cli(&d, &["project", "deploy", &id]).unwrap();
    assert_eq!(
        (again["id"].clone(), again["trigger_count"].clone()),
        (first["id"].clone(), 2.into()),
        "coalesced"
    );
    let node = common::cli(&d, &["node", "add", "edge-1"]).unwrap();
    assert!(node["token"].as_str().unwrap().starts_with("adn_"));
    assert_eq!(
        common::cli(&d, &["project", "deployments", &id])
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    assert_eq!(
        common::cli(&d, &["settings", "set", "auto_deploy_master_enabled=false"]).unwrap()["auto_deploy_master_enabled"],
        false
    );
    let err = common::cli(
        &d,
        &["settings", "set", "auto_deploy_poll_interval_seconds=3"],
    )
    .unwrap_err();
    assert!(err.contains("must be at least 10, got 3"), "{err}");
    let err = common::cli(&d, &["project", "show", "99"]).unwrap_err();
    assert!(
        err.contains("404") && err.contains("project 99 not found"),
        "{err}"
    );
    let err = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .args(["project", "list"])
        .env("AUTODEPLOY_URL", &d.url)
        .env_remove("AUTODEPLOY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("no admin token"));

    // The policy commands reach the daemon too.
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"junk").unwrap();
    let err = common::cli(&d, &["policy", "load", junk.to_str().unwrap()]).unwrap_err();
    assert!(
        err.contains("422") && err.contains("not a valid WebAssembly component"),
        "{err}"
    );
    let err = common::cli(&d, &["policy", "rollback"]).unwrap_err();
    assert!(err.contains("no previous policy"), "{err}");
    d.stop();
}

/// `project deployments` shows the newest page by default, and follows the
/// pages up to `--limit` or to the end with `--all`.
#[tokio::test]
async fn deployments_beyond_the_first_page() {
    let dir = temp_dir("client-deployments");
    let d = Daemon::start(&dir);
    let id = d
        .create_project(json!({"name": "many", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
        .await;
    let node = d.add_node("edge").await;
    // More than the API's default page (100): each one finished, so the
    // next is a deployment of its own, not coalesced into a queued one.
    const MADE: usize = 103;
    for _ in 0..MADE {
        d.ok(
            Method::POST,
            &format!("/api/projects/{id}/deployments"),
            None,
        )
        .await;
        let (status, claim) = d.agent_claim(&node).await;
        assert_eq!(status, StatusCode::OK, "{claim}");
        let dep = claim["deployment"]["id"].as_i64().unwrap();
        let (status, v) = d
            .agent_report(&node, dep, json!({"status": "succeeded"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let id = id.to_string();
    let ids = |args: &[&str]| -> Vec<i64> {
        let mut all = vec!["project", "deployments", id.as_str()];
        all.extend_from_slice(args);
        common::cli(&d, &all)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_i64().unwrap())
            .collect()
    };
    let every = ids(&["--all"]);
    assert_eq!(every.len(), MADE);
    assert!(every.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert_eq!(ids(&[]), every[..100], "the newest page by default");
    assert_eq!(ids(&["--limit", "101"]), every[..101]);
    assert_eq!(ids(&["--limit", "500"]), every);
    // The table of the newest page says, on stderr, how to see the rest.
    let out = person(&d, &["project", "deployments", &id]);
    assert_eq!(table(&stdout_ok(&out)).len(), 100);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "showing the newest 100 deployments; --limit N or --all for more\n"
    );
    let out = person(&d, &["project", "deployments", &id, "--all"]);
    let rows = table(&stdout_ok(&out));
    assert_eq!(rows.len(), MADE);
    assert_eq!(rows[0]["ID"], every[0].to_string());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = common::cli(&d, &["project", "deployments", &id, "--limit", "0"]).unwrap_err();
    assert!(err.contains("--limit"), "{err}");
    let err = common::cli(
        &d,
        &["project", "deployments", &id, "--limit", "5", "--all"],
    )
    .unwrap_err();
    assert!(err.contains("cannot be used with"), "{err}");
    d.stop();
}

/// `project list`, `project deployments`, `node list`, `settings get` and
/// `events` print aligned tables; `-o json` prints exactly the API's answer
/// and `-o yaml` the same data.
#[tokio::test]
async fn lists_are_tables_for_people_and_the_apis_data_for_scripts() {
    let dir = temp_dir("client-tables");
    let d = Daemon::start(&dir);
    let shop = d
        .create_project(json!({"name": "shop", "project_type": "compose"}))
        .await;
    let api = d
        .create_project(json!({"name": "api", "project_type": "image", "image_ref": "registry.test/api:1", "container_port": 8080}))
        .await;
    let node = d
        .ok(
            Method::POST,
            "/api/nodes",
            Some(json!({"name": "edge-1", "labels": {"zone": "eu"}})),
        )
        .await;
    let token = node["token"].as_str().unwrap();
    d.ok(
        Method::POST,
        &format!("/api/projects/{api}/deployments"),
        None,
    )
    .await;
    let (status, claim) = d.agent_claim(token).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    let dep = claim["deployment"]["id"].as_i64().unwrap();

    // Each list: the table, then the API's data as JSON and as YAML.
    let same_data = |args: &[&str], api_answer: &Value| {
        for format in ["json", "yaml"] {
            let mut all = args.to_vec();
            all.extend(["-o", format]);
            let out = stdout_ok(&person(&d, &all));
            let printed: Value = if format == "json" {
                serde_json::from_str(&out).unwrap()
            } else {
                serde_yaml::from_str(&out).unwrap()
            };
            assert_eq!(&printed, api_answer, "{args:?} -o {format}");
        }
    };

    let rows = table(&stdout_ok(&person(&d, &["project", "list"])));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let r = row(&rows, "NAME", "shop");
    assert_eq!(
        (r["ID"].as_str(), r["TYPE"].as_str(), r["SOURCE"].as_str()),
        (shop.to_string().as_str(), "compose", "hosted")
    );
    assert_eq!(
        (r["AUTO-DEPLOY"].as_str(), r["LAST STATUS"].as_str()),
        ("off", "none")
    );
    assert!(r["AGE"].ends_with('s'), "{r:?}");
    let r = row(&rows, "NAME", "api");
    assert_eq!(r["TYPE"], "image");
    assert!(
        r["LAST STATUS"].starts_with("running ") && r["LAST STATUS"].ends_with(" ago"),
        "{r:?}"
    );
    same_data(
        &["project", "list"],
        &d.ok(Method::GET, "/api/projects", None).await,
    );

    let api_id = api.to_string();
    let rows = table(&stdout_ok(&person(
        &d,
        &["project", "deployments", &api_id],
    )));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["ID"], dep.to_string());
    assert_eq!(
        (
            r["STATUS"].as_str(),
            r["SOURCE"].as_str(),
            r["NODE"].as_str()
        ),
        ("running", "manual", "edge-1")
    );
    assert!(!r["REASON"].is_empty() && r["REASON"] != "-", "{r:?}");
    same_data(
        &["project", "deployments", &api_id],
        &Value::Array(d.deployments(api).await),
    );
    let shop_id = shop.to_string();
    let out = stdout_ok(&person(&d, &["project", "deployments", &shop_id]));
    assert_eq!(out.lines().count(), 1, "only the header: {out}");

    let rows = table(&stdout_ok(&person(&d, &["node", "list"])));
    let r = row(&rows, "NAME", "edge-1");
    assert_eq!(
        (r["STATUS"].as_str(), r["LABELS"].as_str()),
        ("online", "zone=eu")
    );
    assert!(r["LAST SEEN"].ends_with(" ago"), "{r:?}");
    d.ok(Method::POST, "/api/nodes", Some(json!({"name": "never"})))
        .await;
    let rows = table(&stdout_ok(&person(&d, &["node", "list"])));
    let r = row(&rows, "NAME", "never");
    assert_eq!(
        (
            r["STATUS"].as_str(),
            r["LAST SEEN"].as_str(),
            r["LABELS"].as_str()
        ),
        ("offline", "never", "-")
    );
    same_data(
        &["node", "list"],
        &d.ok(Method::GET, "/api/nodes", None).await,
    );

    d.ok(
        Method::PUT,
        "/api/settings",
        Some(json!({"auto_deploy_poll_interval_seconds": 120})),
    )
    .await;
    let rows = table(&stdout_ok(&person(&d, &["settings", "get"])));
    let r = row(&rows, "NAME", "auto_deploy_poll_interval_seconds");
    assert_eq!(
        (
            r["VALUE"].as_str(),
            r["DEFAULT"].as_str(),
            r["MINIMUM"].as_str()
        ),
        ("120", "60", "10")
    );
    let r = row(&rows, "NAME", "auto_deploy_master_enabled");
    assert_eq!(
        (
            r["VALUE"].as_str(),
            r["DEFAULT"].as_str(),
            r["MINIMUM"].as_str()
        ),
        ("true", "true", "-")
    );
    same_data(
        &["settings", "get"],
        &d.ok(Method::GET, "/api/settings", None).await,
    );

    let rows = table(&stdout_ok(&person(&d, &["events"])));
    let created = rows
        .iter()
        .find(|r| r["KIND"] == "project.created" && r["PROJECT"] == "shop")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert!(created["MESSAGE"].contains("shop"), "{created:?}");
    assert!(
        rows.iter()
            .any(|r| r["KIND"] == "settings.changed" && r["PROJECT"] == "-"),
        "{rows:?}"
    );
    same_data(&["events"], &d.ok(Method::GET, "/api/events", None).await);
    let rows = table(&stdout_ok(&person(&d, &["events", "--project", &api_id])));
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["PROJECT"] == "api"), "{rows:?}");
    // A page that is not the whole list says how to get the rest, on
    // stderr, so the table stays a table.
    let out = person(&d, &["events", "--limit", "1"]);
    assert_eq!(table(&stdout_ok(&out)).len(), 1);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "showing the newest 1 events; --limit N or --all for more\n"
    );
    d.stop();
}

/// A failure is one line naming the problem, and a hint when the usual
/// cause is known: never a debug dump or a chain of wrappers.
#[tokio::test]
async fn errors_are_one_line_with_a_hint() {
    let dir = temp_dir("client-errors");
    let d = Daemon::start(&dir);
    let stderr = |out: Output| -> Vec<String> {
        assert!(!out.status.success());
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8(out.stderr).unwrap();
        for bad in ["Caused by", "Error {", "kind:", "backtrace", "reqwest::"] {
            assert!(!err.contains(bad), "{bad:?} in {err}");
        }
        err.lines().map(str::to_string).collect()
    };

    assert_eq!(
        stderr(person(&d, &["project", "show", "99"])),
        ["error: project 99 not found (HTTP 404)"]
    );

    let wrong_token = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .args(["project", "list"])
        .env("AUTODEPLOY_URL", &d.url)
        .env("AUTODEPLOY_ADMIN_TOKEN", "ada_not-the-token")
        .output()
        .unwrap();
    let lines = stderr(wrong_token);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], "error: invalid admin token (HTTP 401)");
    assert!(
        lines[1].starts_with("hint: ") && lines[1].contains("AUTODEPLOY_ADMIN_TOKEN"),
        "{lines:?}"
    );

    let no_token = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .args(["node", "list"])
        .env("AUTODEPLOY_URL", &d.url)
        .env_remove("AUTODEPLOY_ADMIN_TOKEN")
        .output()
        .unwrap();
    let lines = stderr(no_token);
    assert_eq!(lines[0], "error: no admin token");
    assert!(lines[1].contains("AUTODEPLOY_ADMIN_TOKEN"), "{lines:?}");

    // Nothing listens on a port just let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let refused = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .args(["project", "list"])
        .env("AUTODEPLOY_URL", &nowhere)
        .env("AUTODEPLOY_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    let lines = stderr(refused);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "error: cannot reach the autodeploy daemon at {nowhere}: "
        )) && lines[0].to_lowercase().contains("connection refused"),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        format!(
            "hint: is `autodeploy serve` running at {nowhere}? Set AUTODEPLOY_URL (or --url) to its address"
        )
    );
    // A password in the address never reaches the error.
    let with_password = format!("http://admin:planted-hunter2@127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .args(["node", "list", "--url", &with_password])
        .env("AUTODEPLOY_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    let lines = stderr(out);
    assert!(lines[0].contains("cannot reach"), "{lines:?}");
    assert!(!lines.concat().contains("planted-hunter2"), "{lines:?}");
    d.stop();
}

/// Waits until the watch has printed a line holding `what`.
async fn printed(lines: &Mutex<Vec<String>>, what: &str) {
    common::wait_until(
        &format!("the watch prints {what:?}"),
        Duration::from_secs(30),
        || async { lines.lock().unwrap().iter().any(|l| l.contains(what)) },
    )
    .await
}

/// `project deployments ID --watch` prints a line per change as a node
/// claims and finishes a deployment, and ends cleanly on Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_watch_follows_status_changes_until_ctrl_c() {
    let dir = temp_dir("client-watch");
    let d = Daemon::start(&dir);
    let id = d
        .create_project(json!({"name": "watched", "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
        .await;
    let node = d.add_node("edge-w").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_autodeploy"))
        .args(["project", "deployments", &id.to_string(), "--watch"])
        .env("AUTODEPLOY_URL", &d.url)
        .env("AUTODEPLOY_ADMIN_TOKEN", ADMIN)
        .env_remove("AUTODEPLOY_OUTPUT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                lines.lock().unwrap().push(line.unwrap());
            }
        })
    };
    // The table first (no deployment yet): its header.
    printed(&lines, "ID  STATUS").await;

    let dep = d
        .ok(
            Method::POST,
            &format!("/api/projects/{id}/deployments"),
            None,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    printed(&lines, &format!("deployment {dep} queued (manual, ")).await;
    let (status, claim) = d.agent_claim(&node).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    printed(
        &lines,
        &format!("deployment {dep} running (was queued) on edge-w"),
    )
    .await;
    let (status, v) = d
        .agent_report(&node, dep, json!({"status": "succeeded"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    printed(
        &lines,
        &format!("deployment {dep} succeeded (was running) on edge-w"),
    )
    .await;

    // Ctrl-C: a clean end.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let child = Mutex::new(child);
    let status = Mutex::new(None);
    common::wait_until(
        "the watch ends on SIGINT",
        Duration::from_secs(10),
        || async {
            let done = child.lock().unwrap().try_wait().unwrap();
            *status.lock().unwrap() = done;
            done.is_some()
        },
    )
    .await;
    reader.join().unwrap();
    let status = status.into_inner().unwrap().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.lock().unwrap().stderr.as_mut().unwrap(), &mut stderr)
        .unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    let lines = lines.lock().unwrap().clone();
    // One line per change, in order, nothing repeated.
    let changes: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" deployment "))
        .collect();
    assert_eq!(changes.len(), 3, "{lines:#?}");
    d.stop();
}
