//! What the web UI's lists show: a project's line (with its newest
//! deployment) filtered by name, type and toggle, and which projects are
//! pinned to which node.

use sqlx::{AssertSqlSafe, Row};

use super::db::SqlStore;
use super::{ProjectFilter, ProjectSummary, Result};

/// Up to `limit` project lines with an id above `after`, in id order: a
/// keyset page on the primary key. The newest deployment is found through
/// the (project_id, id) index, once per row of the page only.
pub(super) async fn summaries(
    db: &SqlStore,
    filter: &ProjectFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<ProjectSummary>> {
    let mut sql = String::from(
        "SELECT p.id, p.name, p.project_type, p.git_source, p.auto_deploy_enabled, p.created_at, \
         d.status AS last_status, d.updated_at AS last_at \
         FROM projects p LEFT JOIN deployments d \
         ON d.id = (SELECT MAX(x.id) FROM deployments x WHERE x.project_id = p.id) \
         WHERE p.id > $1",
    );
    let mut n = 1;
    let mut arg = |sql: &mut String, clause: &str| {
        n += 1;
        sql.push_str(&clause.replace('?', &format!("${n}")));
    };
    let pattern = filter.name_contains.as_deref().map(like_pattern);
    if pattern.is_some() {
        arg(&mut sql, " AND LOWER(p.name) LIKE ? ESCAPE '\\'");
    }
    if filter.project_type.is_some() {
        arg(&mut sql, " AND p.project_type = ?");
    }
    if filter.auto_deploy_enabled.is_some() {
        arg(&mut sql, " AND p.auto_deploy_enabled = ?");
    }
    arg(&mut sql, " ORDER BY p.id LIMIT ?");
    let mut q = sqlx::query(AssertSqlSafe(sql)).bind(after);
    if let Some(p) = pattern {
        q = q.bind(p);
    }
    if let Some(t) = filter.project_type {
        q = q.bind(t);
    }
    if let Some(on) = filter.auto_deploy_enabled {
        q = q.bind(on as i64);
    }
    let rows = q.bind(limit).fetch_all(&db.pool).await?;
    rows.iter()
        .map(|r| {
            Ok(ProjectSummary {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                project_type: r.try_get("project_type")?,
                git_source: r.try_get("git_source")?,
                auto_deploy_enabled: r.try_get::<i64, _>("auto_deploy_enabled")? != 0,
                created_at: r.try_get("created_at")?,
                last_status: r.try_get("last_status")?,
                last_at: r.try_get("last_at")?,
            })
        })
        .collect()
}

/// `%text%`, lower-cased, with LIKE's own characters escaped.
fn like_pattern(text: &str) -> String {
    let mut out = String::from("%");
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// (node id, project id, project name) of every pinned project.
pub(super) async fn pinned(db: &SqlStore) -> Result<Vec<(i64, i64, String)>> {
    let rows = sqlx::query(
        "SELECT pinned_node_id, id, name FROM projects WHERE pinned_node_id IS NOT NULL ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_characters_in_a_search_match_themselves() {
        assert_eq!(super::like_pattern("A_b%"), "%a\\_b\\%%");
    }
}
