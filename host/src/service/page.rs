//! Paged lists. A page is asked for with a `limit` and an opaque cursor
//! and ends with the cursor of the next page, if there is one. Pages are
//! keyset pages on the row id (`WHERE id > cursor ORDER BY id LIMIT n`, or
//! `<` for the lists shown newest first), never OFFSET: a page costs the
//! same at the end of a long list as at its start, and rows added between
//! two requests neither repeat nor go missing.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Result, invalid};

/// Which list a cursor belongs to: a cursor is refused on any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Projects,
    Deployments,
    Events,
    Nodes,
    Decisions,
}

impl List {
    fn tag(self) -> &'static str {
        match self {
            List::Projects => "projects",
            List::Deployments => "deployments",
            List::Events => "events",
            List::Nodes => "nodes",
            List::Decisions => "decisions",
        }
    }

    /// The default and the largest `limit`. Decisions carry each call's
    /// input and answer, so their pages are smaller.
    pub fn limits(self) -> (i64, i64) {
        match self {
            List::Decisions => (50, 500),
            _ => (DEFAULT_LIMIT, MAX_LIMIT),
        }
    }
}

/// The page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest page.
pub const MAX_LIMIT: i64 = 1000;

/// One page's worth of a list, as the store is asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: i64,
    /// The id the page starts after (in the list's own order).
    pub after: Option<i64>,
}

impl PageRequest {
    /// Checks a caller's `limit` and `cursor` for `list`.
    pub fn parse(list: List, limit: Option<i64>, cursor: Option<&str>) -> Result<PageRequest> {
        let (default, max) = list.limits();
        let limit = limit.unwrap_or(default);
        if !(1..=max).contains(&limit) {
            return invalid(format!("limit must be from 1 to {max}"));
        }
        let after = cursor.map(|c| decode(list, c)).transpose()?;
        Ok(PageRequest { limit, after })
    }

    /// How many rows to fetch: one more than the page, to learn whether a
    /// next page exists without asking for an empty one.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }
}

/// A page of a list and the cursor of the next one (none on the last page).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Cuts rows fetched with [`PageRequest::fetch`] to the page; `id`
    /// gives a row's id.
    pub fn of(list: List, req: PageRequest, mut rows: Vec<T>, id: impl Fn(&T) -> i64) -> Page<T> {
        let more = rows.len() as i64 > req.limit;
        rows.truncate(req.limit as usize);
        let next_cursor = if more {
            rows.last().map(|last| encode(list, id(last)))
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// Opaque to callers: they hand it back as they got it.
fn encode(list: List, id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", list.tag()))
}

fn decode(list: List, cursor: &str) -> Result<i64> {
    let bad = || {
        invalid(format!(
            "cursor is not one this list gave out: pass the {} list's next cursor unchanged",
            list.tag()
        ))
    };
    let Some(text) = URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return bad();
    };
    match text.split_once(':') {
        Some((tag, id)) if tag == list.tag() => match id.parse::<i64>() {
            Ok(id) if id > 0 => Ok(id),
            _ => bad(),
        },
        _ => bad(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_belongs_to_its_list() {
        let c = encode(List::Events, 42);
        let req = PageRequest::parse(List::Events, Some(5), Some(&c)).unwrap();
        assert_eq!(
            req,
            PageRequest {
                limit: 5,
                after: Some(42)
            }
        );
        assert!(PageRequest::parse(List::Projects, None, Some(&c)).is_err());
        assert!(PageRequest::parse(List::Events, None, Some("not a cursor")).is_err());
        assert!(PageRequest::parse(List::Events, Some(0), None).is_err());
        assert!(PageRequest::parse(List::Events, Some(1001), None).is_err());
        assert!(PageRequest::parse(List::Decisions, Some(501), None).is_err());
    }

    #[test]
    fn the_last_page_has_no_next_cursor() {
        let req = PageRequest {
            limit: 2,
            after: None,
        };
        let page = Page::of(List::Nodes, req, vec![1, 2, 3], |i| *i);
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next_cursor, Some(encode(List::Nodes, 2)));
        let last = Page::of(List::Nodes, req, vec![3], |i| *i);
        assert_eq!(last.next_cursor, None);
    }
}
