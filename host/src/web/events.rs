//! The event log, newest first, filterable by project.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use maud::html;
use serde::Deserialize;

use super::auth::Signed;
use super::layout::{self, Banner, Nav, PageResult};
use crate::app::App;
use crate::service;
use crate::service::page::{List, PageRequest};
use crate::store::now;

#[derive(Deserialize, Default)]
pub struct EventQuery {
    #[serde(default)]
    project: String,
    cursor: Option<String>,
}

pub async fn list(
    State(app): State<Arc<App>>,
    signed: Signed,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let mut banner = Banner::default();
    let project = match q.project.trim() {
        "" => None,
        p => match p.parse::<i64>() {
            Ok(id) if id > 0 => Some(id),
            _ => {
                banner.error = Some("project: enter a project id (a whole number)".into());
                None
            }
        },
    };
    let page = match PageRequest::parse(List::Events, None, q.cursor.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            banner.error = Some(e.to_string());
            PageRequest::parse(List::Events, None, None)?
        }
    };
    let events = service::events::list(&app, project, page).await?;
    let t = now();
    let body = html! {
        h1 { "Events" }
        form #event-filter .filters method="get" action="/events" {
            div {
                label for="project" { "Project id" }
                input #project type="number" name="project" min="1" inputmode="numeric"
                    value=(project.map(|p| p.to_string()).unwrap_or_default());
            }
            button #filter-events type="submit" { "Filter" }
            @if project.is_some() { a href="/events" { "All events" } }
        }
        div.table-wrap {
            table #events .stack {
                thead { tr {
                    th scope="col" { "When" }
                    th scope="col" { "Kind" }
                    th scope="col" { "Project" }
                    th scope="col" { "Message" }
                } }
                tbody {
                    @for e in &events.items {
                        tr data-event-id=(e.id) {
                            td.at data-label="When" { (layout::time_ago(e.at, t)) }
                            td.kind.mono data-label="Kind" { (e.kind.as_str()) }
                            td.project data-label="Project" { @if let Some(p) = e.project_id { a href={ "/projects/" (p) } { (p) } } @else { "—" } }
                            td.message data-label="Message" { (e.message) }
                        }
                    }
                }
            }
        }
        @if events.items.is_empty() { p.hint { "No events." } }
        @if let Some(c) = &events.next_cursor {
            p.pager {
                a #next-page rel="next" href={ "/events?project=" (project.map(|p| p.to_string()).unwrap_or_default()) "&cursor=" (c) } { "Older events" }
            }
        }
    };
    Ok(layout::page(&signed, Nav::Events, "Events", &banner, body).into_response())
}
