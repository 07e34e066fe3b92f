//! What Docker says about a compose project's containers: read with the
//! docker CLI, parsed from `docker inspect`'s JSON.

use std::collections::BTreeMap;
use std::process::Stdio;

use serde_json::Value;
use tokio::process::Command;

use super::compose::NODE_TOKEN_ENV;

/// One container, as the health gate and the ran-state record need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub id: String,
    pub service: String,
    /// created, running, restarting, exited, dead, ...
    pub status: String,
    pub restart_count: i64,
    /// `None` when the image defines no healthcheck.
    pub health: Option<String>,
    pub exit_code: i64,
    /// The image id (`sha256:…`).
    pub image_id: String,
    /// The image as the compose file named it.
    pub image_ref: String,
    /// Container port (`8080/tcp`) → host ports it is published on.
    pub published: BTreeMap<String, Vec<u16>>,
}

/// The containers in `docker inspect`'s answer.
pub fn parse_inspect(json: &Value) -> Vec<Container> {
    let Some(all) = json.as_array() else {
        return Vec::new();
    };
    all.iter()
        .map(|c| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let state = &c["State"];
            let mut published = BTreeMap::new();
            if let Some(ports) = c["NetworkSettings"]["Ports"].as_object() {
                for (port, bindings) in ports {
                    let hosts = bindings
                        .as_array()
                        .map(|b| {
                            b.iter()
                                .filter_map(|b| b["HostPort"].as_str()?.parse().ok())
                                .collect()
                        })
                        .unwrap_or_default();
                    published.insert(port.clone(), hosts);
                }
            }
            Container {
                id: s(&c["Id"]),
                service: s(&c["Config"]["Labels"]["com.docker.compose.service"]),
                status: s(&state["Status"]),
                restart_count: c["RestartCount"].as_i64().unwrap_or(0),
                health: state["Health"]["Status"].as_str().map(str::to_string),
                exit_code: state["ExitCode"].as_i64().unwrap_or(0),
                image_id: s(&c["Image"]),
                image_ref: s(&c["Config"]["Image"]),
                published,
            }
        })
        .collect()
}

async fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .env_remove(NODE_TOKEN_ENV)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker {} exited with {}: {}",
            args.first().copied().unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The service containers of compose project `project` (one-off `run`
/// containers left out).
pub async fn containers(project: &str) -> Result<Vec<Container>, String> {
    let ids = docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        "label=com.docker.compose.oneoff=False",
    ])
    .await?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["inspect"];
    args.extend(ids);
    // A container removed between ps and inspect fails the call: the next
    // look sees the new set.
    let json = docker(&args).await?;
    let value: Value =
        serde_json::from_str(&json).map_err(|e| format!("docker inspect answered: {e}"))?;
    Ok(parse_inspect(&value))
}

/// The repository digests Docker knows for image `id` (`repo@sha256:…`).
pub async fn repo_digests(id: &str) -> Vec<String> {
    let Ok(json) = docker(&["image", "inspect", id]).await else {
        return Vec::new();
    };
    let value: Value = serde_json::from_str(&json).unwrap_or_default();
    value[0]["RepoDigests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether image `id` is here.
pub async fn has_image(id: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", id])
        .await
        .is_ok()
}

pub async fn tag(id: &str, tag: &str) -> Result<(), String> {
    docker(&["tag", id, tag]).await.map(|_| ())
}

/// The last `lines` lines container `id` wrote (stdout and stderr).
pub async fn last_logs(id: &str, lines: usize) -> String {
    let out = Command::new("docker")
        .args(["logs", "--tail", &lines.to_string(), id])
        .env_remove(NODE_TOKEN_ENV)
        .stdin(Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        }
        Err(e) => format!("(cannot read its logs: {e})"),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A `docker inspect` entry as Docker 20.10 writes it (the fields read).
    pub fn inspect_entry(
        service: &str,
        status: &str,
        restarts: i64,
        health: Option<&str>,
    ) -> Value {
        let mut state = serde_json::json!({"Status": status, "Running": status == "running", "Restarting": status == "restarting", "ExitCode": if status == "exited" { 1 } else { 0 }});
        if let Some(h) = health {
            state["Health"] = serde_json::json!({"Status": h, "FailingStreak": 0, "Log": []});
        }
        serde_json::json!({
            "Id": format!("{service}-id"),
            "RestartCount": restarts,
            "State": state,
            "Image": "sha256:1111",
            "Config": {"Image": "r:5000/web:1", "Labels": {"com.docker.compose.service": service, "com.docker.compose.project": "p"}},
            "NetworkSettings": {"Ports": {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}, {"HostIp": "::", "HostPort": "32768"}], "9000/tcp": null}}
        })
    }

    #[test]
    fn inspect_json_gives_state_health_image_and_published_ports() {
        let json = Value::Array(vec![
            inspect_entry("web", "running", 2, Some("healthy")),
            inspect_entry("db", "exited", 0, None),
        ]);
        let c = parse_inspect(&json);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].service, "web");
        assert_eq!(c[0].status, "running");
        assert_eq!(c[0].restart_count, 2);
        assert_eq!(c[0].health.as_deref(), Some("healthy"));
        assert_eq!(c[0].image_id, "sha256:1111");
        assert_eq!(c[0].image_ref, "r:5000/web:1");
        assert_eq!(c[0].published["8080/tcp"], vec![32768, 32768]);
        assert!(c[0].published["9000/tcp"].is_empty());
        assert_eq!(c[1].health, None);
        assert_eq!(c[1].exit_code, 1);
        assert!(parse_inspect(&Value::Null).is_empty());
    }
}
