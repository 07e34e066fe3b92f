//! The web UI in a real browser: Debian's headless chromium, driven through
//! chromedriver, against one real daemon shared by every case of this
//! binary. Each case signs in afresh (the cases share the browser's cookies,
//! one case at a time). Screenshots of every page, light and dark, and one
//! at 390 px wide go to `target/ui-screenshots/` for review.

mod common;

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use common::agent::{
    Agent, Cleanup, Gate, RemoveImages, build_and_push, compose_file, require_docker,
};
use common::browser::{Browser, UI_TIMEOUT, browser, run};
use common::daemon::{ADMIN, Daemon, temp_dir};
use common::git::{free_port, git};
use common::registry::TestRegistry;
use common::wait_until;
use reqwest::Method;
use serde_json::{Value, json};

/// Deploys pull and start containers: generous, it only bounds a hang.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);

/// The daemon every case talks to. Statics are never dropped: the
/// binary's reaper ends it when the binary ends (`common::reap`).
static DAEMON: LazyLock<Daemon> = LazyLock::new(|| Daemon::start(&temp_dir("web-ui")));

/// The shared browser, signed in afresh as the admin.
async fn signed_in() -> tokio::sync::MutexGuard<'static, Browser> {
    let b = browser(&DAEMON.url).await;
    b.sign_in(ADMIN).await;
    b
}

/// A name no other case (or earlier run on this daemon) uses.
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The project `id` as the API shows it.
async fn api_project(id: i64) -> Value {
    DAEMON
        .ok(Method::GET, &format!("/api/projects/{id}"), None)
        .await
}

async fn api_settings() -> Value {
    DAEMON.ok(Method::GET, "/api/settings", None).await
}

/// The id in a `/projects/ID` path.
fn project_id(path: &str) -> i64 {
    path.strip_prefix("/projects/")
        .and_then(|rest| rest.split(['?', '/']).next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not a project page: {path}"))
}

#[test]
fn a_missing_browser_fails_naming_the_package_to_install() {
    common::browser::require_chromium();
    let missing = std::panic::catch_unwind(|| {
        common::browser::require_binaries(&[
            (common::browser::CHROMIUM, "chromium"),
            ("/nonexistent/chromedriver", "chromium-driver"),
        ])
    })
    .expect_err("a missing chromedriver fails");
    let message = missing
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("/nonexistent/chromedriver") && message.contains("`chromium-driver`"),
        "{message}"
    );
}

#[test]
fn sign_in_exchanges_the_admin_token_for_an_http_only_session_cookie() {
    run(async {
        let b = browser(&DAEMON.url).await;
        b.sign_out_locally().await;

        // The token field is a labelled password input.
        b.goto("/login").await;
        let token = b.id("token").await;
        assert_eq!(
            token.attr("type").await.unwrap().as_deref(),
            Some("password")
        );
        assert!(
            b.exists("label[for=token]").await,
            "the token field has a label"
        );

        // A wrong token: the same page, 401, and the reason.
        b.fill("token", "not-the-admin-token").await;
        b.click("sign-in").await;
        b.wait_for_text("#error", "Wrong admin token").await;
        assert_eq!(b.status().await, 401);
        assert_eq!(b.path().await, "/login");
        assert_eq!(
            b.id("error").await.attr("role").await.unwrap().as_deref(),
            Some("alert")
        );

        // The right one: the projects page, with the navigation.
        b.fill("token", ADMIN).await;
        b.click("sign-in").await;
        b.wait_for_path("/projects").await;
        for link in [
            "nav-projects",
            "nav-nodes",
            "nav-settings",
            "nav-policy",
            "nav-events",
        ] {
            b.id(link).await;
        }
        let cookie = b
            .client
            .get_named_cookie("autodeploy_session")
            .await
            .expect("the session cookie is set");
        assert_eq!(cookie.http_only(), Some(true), "{cookie}");
        assert_eq!(
            format!("{:?}", cookie.same_site()),
            "Some(Strict)",
            "{cookie}"
        );
        // HttpOnly: the page's scripts cannot read it.
        let visible = b.js("return document.cookie;").await;
        assert!(
            !visible
                .as_str()
                .unwrap_or_default()
                .contains("autodeploy_session"),
            "scripts see the session cookie: {visible}"
        );
        // The admin token itself is nowhere in the page.
        let html = b.client.source().await.unwrap();
        assert!(!html.contains(ADMIN), "the admin token is in the page");
    });
}

#[test]
fn a_hosted_compose_project_is_created_through_the_form() {
    run(async {
        let b = signed_in().await;
        b.click("new-project").await;
        b.wait_for_path("/projects/new").await;
        for name in [
            "name",
            "project_type",
            "git_source",
            "expose_service",
            "expose_port",
        ] {
            let id = b
                .client
                .find(fantoccini::Locator::Css(&format!(
                    "#create-project [name={name}]"
                )))
                .await
                .unwrap_or_else(|e| panic!("no field {name}: {e}"))
                .attr("id")
                .await
                .unwrap();
            if let Some(id) = id {
                assert!(
                    b.exists(&format!("label[for=\"{id}\"]")).await,
                    "the field {name} has a label"
                );
            }
        }

        // A name the server refuses: the form again, 422, the problem named
        // and what was entered kept.
        b.fill_named("create-project", "name", "not a valid name!")
            .await;
        b.fill_named("create-project", "project_type", "compose")
            .await;
        b.fill_named("create-project", "git_source", "hosted").await;
        b.fill_named("create-project", "expose_service", "web")
            .await;
        b.fill_named("create-project", "expose_port", "8080").await;
        b.click("create").await;
        b.wait_for_text("#error", "name").await;
        assert_eq!(b.status().await, 422, "{}", b.body_text().await);
        let kept = b
            .client
            .find(fantoccini::Locator::Css(
                "#create-project [name=expose_service]",
            ))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap();
        assert_eq!(kept.as_deref(), Some("web"), "the entered values are kept");

        let name = unique("webform");
        b.fill_named("create-project", "name", &name).await;
        b.fill_named("create-project", "project_type", "compose")
            .await;
        b.fill_named("create-project", "git_source", "hosted").await;
        b.click("create").await;
        b.wait_for_text("#project-name", &name).await;
        let id = project_id(&b.path().await);

        // The push token is shown once, with the push URL.
        let push_token = b.text("push-token").await;
        assert!(push_token.starts_with("adp_"), "{push_token}");
        let push_url = b.text("push-url").await;
        assert!(push_url.contains(&format!("/git/{id}.git")), "{push_url}");
        let p = api_project(id).await;
        assert_eq!(p["name"], name.as_str(), "{p}");
        assert_eq!(p["project_type"], "compose", "{p}");
        assert_eq!(p["git_source"], "hosted", "{p}");
        assert_eq!(p["expose_service"], "web", "{p}");
        assert_eq!(p["expose_port"], 8080, "{p}");
        // The token really pushes: the hosted repository takes a commit.
        let work = temp_dir(&format!("web-ui-create-{id}"));
        push_commit(&work, &remote(id, &push_token), "services: {}\n");

        b.goto(&format!("/projects/{id}")).await;
        b.id("project-name").await;
        assert!(
            !b.exists("#push-token").await,
            "the push token is shown only on the first render"
        );
        let html = b.client.source().await.unwrap();
        assert!(
            !html.contains(&push_token),
            "the push token is still in the page"
        );

        // The list finds it by name.
        b.goto(&format!("/projects?q={name}")).await;
        b.wait_for_text(&format!("tr[data-project-id=\"{id}\"] .name"), &name)
            .await;
        assert_eq!(
            b.text_of(&format!("tr[data-project-id=\"{id}\"] .type"))
                .await
                .as_deref(),
            Some("compose")
        );
    });
}

#[test]
fn the_auto_deploy_toggle_is_absent_on_tunnel_and_refused_with_the_reason_on_domain_only() {
    run(async {
        let tunnel = DAEMON
            .create_project(json!({"name": unique("tunnel"), "project_type": "tunnel"}))
            .await;
        let domain = DAEMON
            .create_project(json!({"name": unique("domain"), "project_type": "domain_only"}))
            .await;
        let compose = DAEMON
            .create_project(json!({"name": unique("toggle"), "project_type": "compose", "expose_service": "web", "expose_port": 8080}))
            .await;
        let b = signed_in().await;

        // Tunnel: no toggle at all.
        b.goto(&format!("/projects/{tunnel}")).await;
        b.id("project-name").await;
        assert!(
            !b.exists("#auto-deploy").await,
            "a tunnel project shows a toggle form"
        );
        assert!(
            !b.exists("#auto-deploy-toggle").await,
            "a tunnel project shows a toggle"
        );

        // domain_only: shown, and flipping it shows the policy's reason.
        b.goto(&format!("/projects/{domain}")).await;
        let toggle = b.id("auto-deploy-toggle").await;
        assert_eq!(
            toggle.attr("aria-pressed").await.unwrap().as_deref(),
            Some("false")
        );
        assert!(toggle.text().await.unwrap().contains("Auto Deploy: off"));
        b.click("auto-deploy-toggle").await;
        b.wait_for_text("#auto-deploy-error", "nothing to deploy")
            .await;
        assert_eq!(b.status().await, 422);
        assert_eq!(
            b.id("auto-deploy-error")
                .await
                .attr("role")
                .await
                .unwrap()
                .as_deref(),
            Some("alert")
        );
        assert_eq!(api_project(domain).await["auto_deploy_enabled"], false);
        b.screenshots("project-domain-only-refused").await;

        // A compose project: it flips on, and back off.
        b.goto(&format!("/projects/{compose}")).await;
        b.click("auto-deploy-toggle").await;
        b.wait_for_text("#auto-deploy-toggle", "Auto Deploy: on")
            .await;
        assert_eq!(
            b.id("auto-deploy-toggle")
                .await
                .attr("aria-pressed")
                .await
                .unwrap()
                .as_deref(),
            Some("true")
        );
        assert_eq!(api_project(compose).await["auto_deploy_enabled"], true);
        b.click("auto-deploy-toggle").await;
        b.wait_for_text("#auto-deploy-toggle", "Auto Deploy: off")
            .await;
        assert_eq!(api_project(compose).await["auto_deploy_enabled"], false);
    });
}

#[test]
fn an_interval_below_its_minimum_shows_the_servers_error_next_to_the_field() {
    run(async {
        let key = "auto_deploy_poll_interval_seconds";
        let before = api_settings().await[key].clone();
        let b = signed_in().await;
        b.click("nav-settings").await;
        b.wait_for_path("/settings").await;
        // Its default and minimum are shown beside it.
        let hint = b
            .js(&format!(
                "return document.getElementById('{key}').closest('div,p,fieldset,label,li,td').parentElement.querySelector('.hint')?.textContent ?? null;"
            ))
            .await;
        let hint = hint
            .as_str()
            .unwrap_or_else(|| panic!("no .hint beside #{key}"));
        assert!(hint.contains("10"), "the hint names the minimum 10: {hint}");

        b.fill(key, "5").await;
        b.click("save-settings").await;
        let error_id = format!("{key}-error");
        b.wait_for_text(&format!("#{error_id}"), "at least 10")
            .await;
        assert_eq!(b.status().await, 422);
        assert_eq!(
            b.id(&error_id).await.attr("role").await.unwrap().as_deref(),
            Some("alert")
        );
        // Next to the field: the error and the input share their container.
        let beside = b
            .js(&format!(
                "const e = document.getElementById('{error_id}'), i = document.getElementById('{key}'); \
                 return e.parentElement.contains(i) || i.parentElement.contains(e);"
            ))
            .await;
        assert_eq!(beside, json!(true), "#{error_id} is not next to #{key}");
        assert_eq!(api_settings().await[key], before, "nothing was applied");
        b.screenshots("settings-below-minimum").await;

        // The master switch pauses every automatic deploy, and resumes them.
        let master = "auto_deploy_master_enabled";
        assert_eq!(api_settings().await[master], true);
        for on in [false, true] {
            b.goto("/settings").await;
            let switch = b.id("auto_deploy_enabled").await;
            assert_eq!(
                switch.prop("checked").await.unwrap().as_deref(),
                Some(if on { "false" } else { "true" })
            );
            switch.click().await.expect("flip the master switch");
            b.click("save-settings").await;
            b.wait_for_text("#notice", "").await;
            assert_eq!(api_settings().await[master], on, "{}", b.body_text().await);
        }
    });
}

/// The URL `git push` reaches hosted project `id` at with `token`.
fn remote(id: i64, token: &str) -> String {
    format!(
        "http://x:{token}@{}/git/{id}.git",
        DAEMON.url.trim_start_matches("http://")
    )
}

/// Commits `compose` as docker-compose.yml in `work` (a repository made on
/// first use) and pushes it to `remote`'s main; returns the commit.
fn push_commit(work: &Path, remote: &str, compose: &str) -> String {
    if !work.join(".git").exists() {
        std::fs::create_dir_all(work).unwrap();
        git(work, &["init", "-q", "-b", "main"]);
    }
    std::fs::write(work.join("docker-compose.yml"), compose).unwrap();
    git(work, &["add", "."]);
    git(work, &["commit", "-q", "-m", "deploy"]);
    git(work, &["push", "-q", remote, "main"]);
    git(work, &["rev-parse", "HEAD"])
}

/// Records in `window.__seen` every status the page's first deployment row
/// shows, and marks the page so a reload would show (the mark is gone).
const WATCH_STATUS: &str = r#"
window.__noReload = true;
window.__seen = [];
const record = () => {
  const cell = document.querySelector('#deployments tr[data-deployment-id] .status');
  if (!cell) return;
  const text = cell.textContent.trim();
  if (window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
};
new MutationObserver(record).observe(document.body, {subtree: true, childList: true, characterData: true});
record();
return true;
"#;

#[test]
fn a_pushed_commit_shows_its_deployment_go_queued_running_succeeded_live() {
    require_docker();
    run(async {
        let dir = temp_dir("web-ui-live");
        let reg = TestRegistry::start(&dir.join("registry"), None, None);
        let image_name = format!("webui-{}:1", std::process::id());
        build_and_push(
            &dir,
            &format!("{}/{image_name}", reg.addr),
            &[("a", "pushed from the browser test")],
        );
        // The deploy pulls through a gate: it stays running until the page
        // has shown it running.
        let gate = Gate::start(reg.port);
        let image = format!("127.0.0.1:{}/{image_name}", gate.port);
        let _pulled = RemoveImages(vec![image.clone()]);

        let node_name = unique("webnode");
        let node_token = DAEMON.add_node(&node_name).await;
        let name = unique("live");
        let project = DAEMON
            .ok(
                Method::POST,
                "/api/projects",
                Some(json!({"name": name, "project_type": "compose", "expose_service": "web", "expose_port": 8080, "auto_deploy_enabled": true})),
            )
            .await;
        let id = project["id"].as_i64().unwrap();
        let _cleanup = Cleanup(vec![format!("autodeploy-{name}-{id}")]);
        let push_token = project["push_token"].as_str().unwrap().to_string();

        // The page is open before anything is pushed.
        let b = signed_in().await;
        b.goto(&format!("/projects/{id}")).await;
        b.id("project-name").await;
        assert!(
            !b.exists("#deployments tr[data-deployment-id]").await,
            "a new project has no deployments yet"
        );
        assert_eq!(b.js(WATCH_STATUS).await, json!(true));

        // The push decides a deployment: the row appears, queued (no agent
        // runs yet).
        let port = free_port();
        push_commit(
            &dir.join("work"),
            &remote(id, &push_token),
            &compose_file(&image, "a", port),
        );
        b.wait_for_text("#deployments tr[data-deployment-id] .status", "queued")
            .await;

        // An agent claims it: running, and it stays so while the pull is held.
        let _agent = Agent::start(&DAEMON.url, &node_token, &dir.join("agent"), &[]);
        b.wait_for_text("#deployments tr[data-deployment-id] .status", "running")
            .await;
        wait_until(
            "the deploy pulls through the gate",
            DEPLOY_TIMEOUT,
            || async { gate.held() > 0 },
        )
        .await;
        gate.open();
        let cell = "#deployments tr[data-deployment-id] .status";
        let shown = std::sync::Mutex::new(String::new());
        wait_until(
            "the row shows the deploy finished",
            DEPLOY_TIMEOUT,
            || async {
                let t = b.text_of(cell).await.unwrap_or_default();
                *shown.lock().unwrap() = t.clone();
                matches!(t.trim(), "succeeded" | "failed" | "rolled_back")
            },
        )
        .await;
        let deployments = DAEMON.deployments(id).await;
        assert_eq!(
            shown.into_inner().unwrap().trim(),
            "succeeded",
            "{}",
            deployments[0]["log_tail"]
        );

        // All of it in place, without a reload.
        assert_eq!(
            b.js("return window.__noReload === true;").await,
            json!(true),
            "the page was reloaded"
        );
        let seen = b.js("return window.__seen;").await;
        let seen: Vec<&str> = seen
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        let order: Vec<usize> = ["queued", "running", "succeeded"]
            .iter()
            .map(|s| seen.iter().position(|x| x == s).unwrap_or(usize::MAX))
            .collect();
        assert!(
            order[0] < order[1] && order[1] < order[2] && order[2] != usize::MAX,
            "the row showed {seen:?}"
        );
        assert_eq!(deployments.len(), 1, "{deployments:?}");
        let dep_id = deployments[0]["id"].as_i64().unwrap();
        assert!(
            b.exists(&format!("#deployments tr[data-deployment-id=\"{dep_id}\"]"))
                .await,
            "the row is the deployment's"
        );
        // The rows came without a reload, and so did what the agent filled
        // in: the empty-list hint is gone and the row names the node.
        assert!(
            !b.exists("#no-deployments").await,
            "the page still says it has no deployments"
        );
        b.wait_for_text(
            &format!("#deployments tr[data-deployment-id=\"{dep_id}\"] .node"),
            &node_name,
        )
        .await;
        assert_eq!(
            reqwest::get(format!("http://127.0.0.1:{port}/"))
                .await
                .expect("the deployed service answers")
                .text()
                .await
                .unwrap()
                .trim(),
            "pushed from the browser test"
        );
        // For review: the project page with a real deployment row.
        b.screenshots("project-deployed").await;

        // Deploy now: a second deployment, shown queued or running by the
        // page the form lands on, then succeeded without a reload.
        b.click("deploy-now").await;
        wait_until(
            "Deploy now made a second deployment",
            UI_TIMEOUT,
            || async { DAEMON.deployments(id).await.len() == 2 },
        )
        .await;
        let second = DAEMON.deployments(id).await[0]["id"].as_i64().unwrap();
        let row = format!("#deployments tr[data-deployment-id=\"{second}\"] .status");
        b.wait_for_path(&format!("/projects/{id}")).await;
        b.id("project-name").await;
        assert_eq!(
            b.js("return window.__noReload === undefined;").await,
            json!(true)
        );
        b.js("window.__noReload = true; return true;").await;
        b.wait_for_text(&row, "succeeded").await;
        assert_eq!(
            b.js("return window.__noReload === true;").await,
            json!(true),
            "the page was reloaded"
        );

        // The projects list follows the last deployment live too.
        b.goto(&format!("/projects?q={name}")).await;
        let last = format!("tr[data-project-id=\"{id}\"] .last-status");
        b.wait_for_text(&last, "succeeded").await;
        let watch = WATCH_STATUS.replace("#deployments tr[data-deployment-id] .status", &last);
        assert_eq!(b.js(&watch).await, json!(true));
        DAEMON
            .ok(
                Method::POST,
                &format!("/api/projects/{id}/deployments"),
                None,
            )
            .await;
        wait_until(
            "the list saw the third deployment start",
            UI_TIMEOUT,
            || async {
                let seen = b.js("return window.__seen;").await;
                seen.as_array()
                    .is_some_and(|s| s.iter().any(|x| x == "queued" || x == "running"))
            },
        )
        .await;
        b.wait_for_text(&last, "succeeded").await;
        assert_eq!(
            b.js("return window.__noReload === true;").await,
            json!(true),
            "the list was reloaded"
        );
    });
}

#[test]
fn a_bad_policy_upload_is_refused_a_good_one_switches_and_rolls_back() {
    run(async {
        let active = DAEMON.ok(Method::GET, "/api/policy", None).await;
        let dir = temp_dir("web-ui-policy");
        let bad = dir.join("traps.wasm");
        std::fs::write(&bad, common::hostile_policy(common::TRAP_BODY)).unwrap();

        let b = signed_in().await;
        b.click("nav-policy").await;
        b.wait_for_path("/policy").await;
        let sha = b.text("policy-sha256").await;
        assert!(
            !sha.trim().is_empty(),
            "the active policy's sha256 is shown"
        );
        b.id("policy-name").await;
        b.id("policy-version").await;

        b.id("policy-file")
            .await
            .send_keys(bad.to_str().unwrap())
            .await
            .expect("choose the file");
        if let Some(asked) = b.submit_with("upload").await {
            assert!(asked.contains("self-test"), "the confirmation: {asked}");
        }
        b.wait_for_text("#error", "self-test").await;
        assert_eq!(
            b.text("policy-sha256").await,
            sha,
            "the active policy changed"
        );
        assert_eq!(
            DAEMON.ok(Method::GET, "/api/policy", None).await["sha256"],
            active["sha256"],
            "the daemon's active policy changed"
        );
        b.screenshots("policy-refused").await;

        // A good one (the bundled policy under another sha256) passes its
        // self-test and switches; rolling back restores the one before.
        let good = dir.join("variant.wasm");
        let variant = common::policy_variant("web-ui");
        std::fs::write(&good, &variant).unwrap();
        let variant_sha: String = {
            use sha2::Digest;
            sha2::Sha256::digest(&variant)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        b.goto("/policy").await;
        b.id("policy-file")
            .await
            .send_keys(good.to_str().unwrap())
            .await
            .expect("choose the file");
        b.submit_with("upload").await;
        b.wait_for_text("#notice", "self-test").await;
        b.wait_for_text("#policy-sha256", &variant_sha).await;
        assert_eq!(
            DAEMON.ok(Method::GET, "/api/policy", None).await["sha256"],
            variant_sha.as_str()
        );
        b.js("document.querySelector('#rollback-policy button[type=submit]').id = 'rollback-button'; return true;")
            .await;
        b.submit_with("rollback-button").await;
        b.wait_for_text("#notice", "Rolled back").await;
        b.wait_for_text("#policy-sha256", sha.trim()).await;
        assert_eq!(
            DAEMON.ok(Method::GET, "/api/policy", None).await["sha256"],
            active["sha256"]
        );
    });
}

#[test]
fn a_projects_fields_are_edited_its_push_token_regenerated_and_its_credentials_stay_write_only() {
    run(async {
        let name = unique("edit");
        let hosted = DAEMON
            .ok(
                Method::POST,
                "/api/projects",
                Some(json!({"name": name, "project_type": "compose", "expose_service": "web", "expose_port": 8080})),
            )
            .await;
        let id = hosted["id"].as_i64().unwrap();
        let old_token = hosted["push_token"].as_str().unwrap().to_string();
        // External, on a loopback address nothing listens on (auto-deploy
        // stays off, so nothing polls it).
        let external = DAEMON
            .create_project(json!({"name": unique("creds"), "project_type": "compose", "expose_service": "web", "expose_port": 8080, "git_source": "external", "git_url": "https://127.0.0.1:9/none.git"}))
            .await;
        let b = signed_in().await;

        // The fields are editable.
        b.goto(&format!("/projects/{id}")).await;
        b.fill_named("edit-project", "expose_port", "9090").await;
        b.fill_named("edit-project", "health_probe_path", "/healthz")
            .await;
        b.click("save").await;
        wait_until("the edit is saved", UI_TIMEOUT, || async {
            api_project(id).await["expose_port"] == 9090
        })
        .await;
        assert_eq!(api_project(id).await["health_probe_path"], "/healthz");
        b.wait_for_path(&format!("/projects/{id}")).await;
        let shown = b
            .client
            .find(fantoccini::Locator::Css("#edit-project [name=expose_port]"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap();
        assert_eq!(shown.as_deref(), Some("9090"));

        // A new push token, shown once; the old one stops working.
        b.js("document.querySelector('#regenerate-push-token button[type=submit]').id = 'regenerate-button'; return true;")
            .await;
        b.submit_with("regenerate-button").await;
        b.wait_for_text("#push-token", "adp_").await;
        let new_token = b.text("push-token").await.trim().to_string();
        assert_ne!(new_token, old_token);
        let ls_remote = |token: &str| {
            std::process::Command::new("git")
                .args(["ls-remote", &remote(id, token)])
                .env("GIT_TERMINAL_PROMPT", "0")
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(
            ls_remote(&new_token),
            "the new push token opens the repository"
        );
        assert!(!ls_remote(&old_token), "the old push token still opens it");
        b.goto(&format!("/projects/{id}")).await;
        b.id("project-name").await;
        assert!(
            !b.exists("#push-token").await,
            "the push token is shown again"
        );

        // Credentials: saved, never shown back.
        let secret = "web-ui-secret-token-5f0c2a9e";
        b.goto(&format!("/projects/{external}")).await;
        b.fill_named("credentials", "credential_kind", "https")
            .await;
        b.fill_named("credentials", "credential_username", "alice")
            .await;
        b.fill_named("credentials", "credentials", secret).await;
        b.click("save-credentials").await;
        wait_until("the credentials are stored", UI_TIMEOUT, || async {
            api_project(external).await["credentials"]["username"] == "alice"
        })
        .await;
        b.goto(&format!("/projects/{external}")).await;
        b.id("project-name").await;
        let html = b.client.source().await.unwrap();
        assert!(!html.contains(secret), "the stored secret is in the page");
        let textarea = b
            .client
            .find(fantoccini::Locator::Css(
                "#credentials textarea[name=credentials]",
            ))
            .await
            .expect("the credentials textarea")
            .prop("value")
            .await
            .unwrap();
        assert_eq!(textarea.as_deref(), Some(""), "the textarea is pre-filled");
        assert!(
            !api_project(external).await.to_string().contains(secret),
            "the API shows the secret"
        );
    });
}

#[test]
fn the_event_log_is_filtered_by_project() {
    run(async {
        let a = DAEMON
            .create_project(json!({"name": unique("events-a"), "project_type": "compose", "expose_service": "web", "expose_port": 8080}))
            .await;
        let other = DAEMON
            .create_project(json!({"name": unique("events-b"), "project_type": "tunnel"}))
            .await;
        DAEMON
            .ok(
                Method::PATCH,
                &format!("/api/projects/{a}"),
                Some(json!({"auto_deploy_enabled": true})),
            )
            .await;
        let b = signed_in().await;
        b.click("nav-events").await;
        b.wait_for_path("/events").await;
        b.fill_named("event-filter", "project", &a.to_string())
            .await;
        b.click("filter-events").await;
        b.wait_for_path(&format!("/events?project={a}")).await;
        b.wait_for_text("#events tbody", "auto-deploy enabled")
            .await;
        let projects = b
            .js("return [...document.querySelectorAll('#events tbody tr .project')].map(c => c.textContent.trim());")
            .await;
        let projects: Vec<&str> = projects
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert!(!projects.is_empty());
        assert!(
            projects.iter().all(|p| *p == a.to_string()),
            "rows of other projects (e.g. {other}): {projects:?}"
        );
    });
}

#[test]
fn a_node_added_in_the_browser_shows_its_token_once_goes_online_and_is_deleted() {
    run(async {
        let name = unique("browser-node");
        let b = signed_in().await;
        b.click("nav-nodes").await;
        b.wait_for_path("/nodes").await;
        b.fill_named("add-node", "name", &name).await;
        b.click("add-node-button").await;
        b.wait_for_text("#node-token", "").await;
        let token = b.text("node-token").await;
        assert!(!token.trim().is_empty(), "the node token is shown");
        let row_id = b
            .js(&format!(
                "const r = [...document.querySelectorAll('#nodes tr[data-node-id]')] \
                   .find(r => r.querySelector('.name')?.textContent.trim() === '{name}'); \
                 return r ? r.getAttribute('data-node-id') : null;"
            ))
            .await;
        let node = row_id
            .as_str()
            .unwrap_or_else(|| panic!("no row for {name}"))
            .to_string();
        let row = format!("#nodes tr[data-node-id=\"{node}\"]");
        assert_eq!(
            b.text_of(&format!("{row} .state")).await.as_deref(),
            Some("offline")
        );
        assert_eq!(
            b.text_of(&format!("{row} .last-seen")).await.as_deref(),
            Some("never")
        );

        // Shown once: the next render has no token. The token works: its
        // first claim makes the node online.
        b.goto("/nodes").await;
        b.id("nodes").await;
        assert!(
            !b.exists("#node-token").await,
            "the node token is shown again"
        );
        let html = b.client.source().await.unwrap();
        assert!(
            !html.contains(token.trim()),
            "the node token is still in the page"
        );
        let (status, _) = DAEMON.agent_claim(token.trim()).await;
        assert!(status.is_success(), "the shown token claims: {status}");
        b.goto("/nodes").await;
        assert_eq!(
            b.text_of(&format!("{row} .state")).await.as_deref(),
            Some("online")
        );

        // Delete, after a confirmation.
        b.js(&format!(
            "document.querySelector('{row} form.delete-node button[type=submit]').id = 'delete-this-node'; return true;"
        ))
        .await;
        let asked = b.click_and_confirm("delete-this-node").await;
        assert!(
            asked.contains(&name),
            "the confirmation names the node: {asked}"
        );
        b.wait_for_path("/nodes").await;
        wait_until("the node's row is gone", UI_TIMEOUT, || async {
            !b.exists(&row).await
        })
        .await;
        let nodes = DAEMON.ok(Method::GET, "/api/nodes", None).await;
        assert!(
            !nodes.to_string().contains(&format!("\"{name}\"")),
            "the node is still listed: {nodes}"
        );
    });
}

/// The status `GET /events/stream` answers the page's fetch with (the
/// stream itself is cancelled once its headers are in).
const STREAM_STATUS: &str = r#"
return fetch('/events/stream', {redirect: 'manual'}).then(r => {
  const s = r.status;
  if (r.body) r.body.cancel();
  return s;
});
"#;

#[test]
fn after_sign_out_the_pages_redirect_to_login_and_the_event_stream_answers_401() {
    run(async {
        let b = signed_in().await;
        assert_eq!(
            b.js(STREAM_STATUS).await,
            json!(200),
            "signed in, the stream opens"
        );
        b.click("sign-out-button").await;
        b.wait_for_path("/login").await;
        for page in [
            "/projects",
            "/settings",
            "/nodes",
            "/policy",
            "/events",
            "/projects/new",
        ] {
            b.goto(page).await;
            b.wait_for_path("/login").await;
        }
        assert_eq!(
            b.js(STREAM_STATUS).await,
            json!(401),
            "the stream after sign-out"
        );
        // The old cookie, were it kept, no longer opens anything: the session
        // was ended on the server, not just forgotten by the browser.
        let (status, _) = DAEMON.call(Method::GET, "/events/stream", None, None).await;
        assert_eq!(status, 401);
    });
}

#[test]
fn a_post_without_its_csrf_token_is_refused() {
    run(async {
        let key = "auto_deploy_poll_interval_seconds";
        let before = api_settings().await[key].clone();
        let b = signed_in().await;
        for (what, script) in [
            (
                "without a csrf field",
                "document.querySelectorAll('#settings input[name=csrf]').forEach(e => e.remove()); return true;",
            ),
            (
                "with a wrong csrf value",
                "document.querySelectorAll('#settings input[name=csrf]').forEach(e => e.value = 'forged'); return true;",
            ),
        ] {
            b.goto("/settings").await;
            b.fill(key, "33").await;
            assert!(
                b.exists("#settings input[type=hidden][name=csrf]").await,
                "the settings form carries a csrf field"
            );
            assert_eq!(b.js(script).await, json!(true));
            b.click("save-settings").await;
            b.wait_for_text("body", "CSRF token missing or wrong").await;
            assert_eq!(b.status().await, 403, "{what}");
            assert_eq!(
                api_settings().await[key],
                before,
                "{what}: the setting changed"
            );
        }
    });
}

#[test]
fn screenshots_of_every_page_in_light_and_dark_and_one_at_390_px() {
    run(async {
        let compose = DAEMON
            .create_project(json!({"name": unique("shot-compose"), "project_type": "compose", "expose_service": "web", "expose_port": 8080}))
            .await;
        let domain = DAEMON
            .create_project(json!({"name": unique("shot-domain"), "project_type": "domain_only"}))
            .await;
        DAEMON
            .create_project(json!({"name": unique("shot-image"), "project_type": "image", "image_ref": "registry.test/app:1", "container_port": 8080}))
            .await;
        DAEMON.add_node(&unique("shot-node")).await;

        let b = browser(&DAEMON.url).await;
        b.sign_out_locally().await;
        b.goto("/login").await;
        b.id("login").await;
        let mut shots = b.screenshots("login").await.to_vec();
        shots.push(b.phone_screenshot("login").await);

        b.sign_in(ADMIN).await;
        let pages = [
            ("projects", "/projects".to_string(), "projects"),
            ("project-new", "/projects/new".to_string(), "create-project"),
            ("project", format!("/projects/{compose}"), "project-name"),
            (
                "project-domain-only",
                format!("/projects/{domain}"),
                "project-name",
            ),
            ("settings", "/settings".to_string(), "settings"),
            ("nodes", "/nodes".to_string(), "nodes"),
            ("policy", "/policy".to_string(), "policy-sha256"),
            ("events", "/events".to_string(), "events"),
        ];
        for (name, path, landmark) in &pages {
            b.goto(path).await;
            b.id(landmark).await;
            assert_eq!(b.status().await, 200, "{path}");
            // Dark mode follows the system: the page's background changes.
            b.color_scheme("light").await;
            let light_bg = b
                .js("return getComputedStyle(document.body).backgroundColor;")
                .await;
            b.color_scheme("dark").await;
            let dark_bg = b
                .js("return getComputedStyle(document.body).backgroundColor;")
                .await;
            assert_ne!(light_bg, dark_bg, "{path} looks the same in dark mode");
            shots.extend(b.screenshots(name).await);
            // And on a phone: 390 px wide, nothing scrolls sideways.
            shots.push(b.phone_screenshot(name).await);
        }

        for shot in &shots {
            let len = std::fs::metadata(shot).map(|m| m.len()).unwrap_or(0);
            assert!(len > 1000, "{} is {len} bytes", shot.display());
        }
        eprintln!(
            "{} screenshots in {}",
            shots.len(),
            common::browser::screenshot_dir().display()
        );
    });
}
