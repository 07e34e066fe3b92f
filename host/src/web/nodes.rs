//! Deploy nodes: add one (its token is shown once), see which are online,
//! when each was last heard from and which projects are pinned to it,
//! delete one.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use maud::html;

use super::auth::{Posted, Signed, Web};
use super::layout::{self, Banner, Nav, PageResult, WebError};
use crate::app::App;
use crate::secrets::Secret;
use crate::service;
use crate::service::nodes::NewNode;
use crate::service::page::{List, PageRequest};
use crate::store::now;

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    signed: Signed,
) -> PageResult {
    let banner = Banner::notice(web.take_flash(&signed).notice);
    render(&app, &signed, banner, None, StatusCode::OK).await
}

async fn render(
    app: &App,
    signed: &Signed,
    banner: Banner,
    token: Option<(String, Secret)>,
    status: StatusCode,
) -> PageResult {
    let nodes =
        service::nodes::list(app, PageRequest::parse(List::Nodes, Some(1000), None)?).await?;
    let pinned = service::nodes::pinned(app).await?;
    let t = now();
    let empty = Vec::new();
    let body = html! {
        h1 { "Nodes" }
        @if let Some((name, token)) = &token {
            section {
                p { "The token of node " strong { (name) } ", shown this once: give it to its agent as "
                    code { "AUTODEPLOY_NODE_TOKEN" } "." }
                code #node-token .secret { (token.expose()) }
            }
        }
        section aria-labelledby="add-heading" {
            h2 #add-heading { "Add a node" }
            form #add-node method="post" action="/nodes" {
                input type="hidden" name="csrf" value=(signed.csrf);
                div.grid {
                    div {
                        label for="node-name" { "Name" }
                        input #node-name type="text" name="name" required aria-describedby="node-name-hint";
                        p #node-name-hint .hint { "1-100 letters, digits, '-', '_' or '.'" }
                    }
                    div {
                        label for="node-labels" { "Labels" }
                        input #node-labels type="text" name="labels" aria-describedby="node-labels-hint";
                        p #node-labels-hint .hint { "optional: key=value, separated by commas" }
                    }
                }
                button #add-node-button type="submit" { "Add node" }
            }
        }
        div.table-wrap {
            table #nodes .stack {
                thead { tr {
                    th scope="col" { "Name" }
                    th scope="col" { "State" }
                    th scope="col" { "Last seen" }
                    th scope="col" { "Pinned projects" }
                    th scope="col" { "Labels" }
                    th scope="col" { "Actions" }
                } }
                tbody {
                    @for n in &nodes.items {
                        @let pins = pinned.get(&n.node.id).unwrap_or(&empty);
                        tr data-node-id=(n.node.id) {
                            td.name data-label="Name" { (n.node.name) }
                            td class={ "state state-" (if n.online { "online" } else { "offline" }) } data-label="State" {
                                (if n.online { "online" } else { "offline" })
                            }
                            td.last-seen data-label="Last seen" { @if let Some(at) = n.node.last_seen_at { (layout::time_ago(at, t)) } @else { "never" } }
                            td.pinned data-label="Pinned" {
                                @if pins.is_empty() { "none" }
                                @for (i, (id, name)) in pins.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    a href={ "/projects/" (id) } { (name) }
                                }
                            }
                            td.labels.mono data-label="Labels" {
                                (n.node.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "))
                            }
                            td {
                                form.delete-node method="post" action={ "/nodes/" (n.node.id) "/delete" }
                                    data-confirm={ "Delete node " (n.node.name) "? Its running deployments fail." } {
                                    input type="hidden" name="csrf" value=(signed.csrf);
                                    @if !pins.is_empty() {
                                        label.inline {
                                            input type="checkbox" name="force" value="true";
                                            "unpin its projects"
                                        }
                                    }
                                    button .danger type="submit" aria-label={ "Delete node " (n.node.name) } { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if nodes.items.is_empty() { p.hint { "No nodes yet: add one, then start " code { "autodeploy agent" } " with its token." } }
    };
    Ok((
        status,
        layout::page(signed, Nav::Nodes, "Nodes", &banner, body),
    )
        .into_response())
}

/// `key=value, key=value` as a map; an error names the bad part.
fn labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("labels: {part:?} is not key=value"));
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

pub async fn add(State(app): State<Arc<App>>, posted: Posted) -> PageResult {
    let f = &posted.fields;
    let name = f.text("name").unwrap_or_default();
    let result = match labels(f.get("labels").unwrap_or("")) {
        Ok(labels) => service::nodes::add(&app, NewNode { name, labels })
            .await
            .map_err(WebError::from),
        Err(m) => Err(WebError::new(StatusCode::UNPROCESSABLE_ENTITY, m)),
    };
    match result {
        // Shown in this answer only: the store keeps the token's hash.
        Ok((node, token)) => {
            let banner = Banner::notice(Some(format!("Node {} added", node.name)));
            render(
                &app,
                &posted.signed,
                banner,
                Some((node.name, token)),
                StatusCode::CREATED,
            )
            .await
        }
        Err(e) if !e.status.is_server_error() => {
            render(
                &app,
                &posted.signed,
                Banner::error(e.message),
                None,
                e.status,
            )
            .await
        }
        Err(e) => Err(e),
    }
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(web): Extension<Arc<Web>>,
    Path(raw): Path<String>,
    posted: Posted,
) -> PageResult {
    let Some(id) = raw.parse::<i64>().ok().filter(|id| *id > 0) else {
        return Err(WebError::not_found("node"));
    };
    let force = posted.fields.get("force") == Some("true");
    match service::nodes::delete(&app, id, force).await {
        Ok(done) => {
            let mut text = format!("Node {} deleted", done.node.name);
            if !done.unpinned.is_empty() {
                text.push_str(&format!("; unpinned {}", done.unpinned.join(", ")));
            }
            if !done.failed_deployments.is_empty() {
                text.push_str(&format!(
                    "; {} of its deployments failed",
                    done.failed_deployments.len()
                ));
            }
            web.notice(&posted.signed, text);
            Ok(Redirect::to("/nodes").into_response())
        }
        Err(e) => {
            let e = WebError::from(e);
            if e.status.is_server_error() {
                return Err(e);
            }
            render(
                &app,
                &posted.signed,
                Banner::error(e.message),
                None,
                e.status,
            )
            .await
        }
    }
}
