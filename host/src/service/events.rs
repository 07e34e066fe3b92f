//! The event log, newest first.

use super::Result;
use super::page::{List, Page, PageRequest};
use crate::app::App;
use crate::store::Event;

/// Every event, or one project's.
pub async fn list(app: &App, project_id: Option<i64>, page: PageRequest) -> Result<Page<Event>> {
    let rows = app
        .store
        .events_page(project_id, page.after, page.fetch())
        .await?;
    Ok(Page::of(List::Events, page, rows, |e| e.id))
}
