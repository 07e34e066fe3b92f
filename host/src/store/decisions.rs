//! The decision log's rows: every policy call the daemon made, what it was
//! asked and what it answered, kept for a bounded time and count.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::Result;
use super::db::SqlStore;

super::text_enum! {
    /// The policy function a decision called; the WIT function's name.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum DecisionCall {
        PolicyInfo = "policy-info",
        ParseCompose = "parse-compose",
        WatchPlan = "watch-plan",
        DecideCommit = "decide-commit",
        DecideImages = "decide-images",
        CheckAutoDeploy = "check-auto-deploy",
        CheckDeployable = "check-deployable",
    }
}

impl DecisionCall {
    pub fn parse(s: &str) -> Option<DecisionCall> {
        s.parse().ok()
    }
}

/// One decision, as it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    pub at: i64,
    pub call: DecisionCall,
    pub project_id: Option<i64>,
    /// The call as JSON (`{"call": ..., "input": ...}`).
    pub input: String,
    /// The answer as JSON (`{"ok": ...}` / `{"error": ...}`), or
    /// `{"failed": "..."}` when the policy could not answer.
    pub output: String,
    pub policy_name: String,
    pub policy_version: String,
    pub policy_sha256: String,
    /// The contract version the policy implements.
    pub policy_wit_version: String,
}

/// One decision, as it is read back.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: i64,
    pub at: i64,
    pub call: DecisionCall,
    pub project_id: Option<i64>,
    /// The deployment this decision made, if any.
    pub deployment_id: Option<i64>,
    pub input: serde_json::Value,
    pub output: serde_json::Value,
    pub policy_name: String,
    pub policy_version: String,
    pub policy_sha256: String,
    pub policy_wit_version: String,
}

/// Which decisions to read: newest first, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct DecisionQuery {
    pub project_id: Option<i64>,
    pub deployment_id: Option<i64>,
    pub call: Option<DecisionCall>,
    /// Only ids below this one (the paging cursor).
    pub before: Option<i64>,
    /// Only decisions made at or after this time (Unix seconds).
    pub since: Option<i64>,
    pub limit: i64,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub by_age: u64,
    pub by_count: u64,
}

/// Most decision ids a deployment shows; `GET /api/decisions?deployment_id=`
/// lists them all (a failure folded on every tick may gather many).
pub const DEPLOYMENT_DECISION_IDS: usize = 100;

/// Rows one delete statement removes: a prune of millions of rows becomes
/// many short write transactions, never one long lock.
const PRUNE_BATCH: i64 = 5_000;

const COLUMNS: &str = "id, at, call_name, project_id, deployment_id, input, output, \
     policy_name, policy_version, policy_sha256, policy_wit_version";

fn decision_from(row: &AnyRow) -> Result<Decision> {
    // A row that is not JSON (written by hand) is shown as the text it is.
    let json = |col: &str| -> Result<serde_json::Value> {
        let text: String = row.try_get(col)?;
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    };
    Ok(Decision {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        call: row.try_get("call_name")?,
        project_id: row.try_get("project_id")?,
        deployment_id: row.try_get("deployment_id")?,
        input: json("input")?,
        output: json("output")?,
        policy_name: row.try_get("policy_name")?,
        policy_version: row.try_get("policy_version")?,
        policy_sha256: row.try_get("policy_sha256")?,
        policy_wit_version: row.try_get("policy_wit_version")?,
    })
}

/// Rows one INSERT writes at most. A tick writes tens of thousands of
/// decisions; one statement per row cost more than the policy calls. Not
/// more: every bound `$N` is looked up by name in SQLite, a linear search
/// over the statement's parameters, so wide statements pay quadratically.
const INSERT_ROWS: usize = 16;
const INSERT_COLUMNS: usize = 10;

/// `INSERT ... VALUES` with `rows` rows of placeholders.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO decision_log (at, call_name, project_id, deployment_id, input, output, \
         policy_name, policy_version, policy_sha256, policy_wit_version) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..INSERT_COLUMNS {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * INSERT_COLUMNS + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// The statements' row counts for `n` rows: full ones, then the rest in
/// powers of two, so a connection prepares at most a handful of shapes.
fn chunk_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= INSERT_ROWS {
            INSERT_ROWS
        } else {
            1 << n.ilog2()
        };
        n -= size;
        Some(size)
    })
}

/// Inserts `records`, each linked to `deployment_id`, through `conn` (a
/// transaction: the caller commits), several rows per statement.
pub(super) async fn insert(
    conn: &mut sqlx::AnyConnection,
    records: &[DecisionRecord],
    deployment_id: Option<i64>,
) -> Result<()> {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    // Index k holds the statement for 2^k rows.
    let sql: &'static [String] = SQL.get_or_init(|| {
        (0..=INSERT_ROWS.ilog2())
            .map(|k| insert_sql(1 << k))
            .collect()
    });
    let mut rest = records;
    for size in chunk_sizes(records.len()) {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let mut query = sqlx::query(sql[size.ilog2() as usize].as_str());
        for r in chunk {
            query = query
                .bind(r.at)
                .bind(r.call)
                .bind(r.project_id)
                .bind(deployment_id)
                .bind(&r.input)
                .bind(&r.output)
                .bind(&r.policy_name)
                .bind(&r.policy_version)
                .bind(&r.policy_sha256)
                .bind(&r.policy_wit_version);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

impl SqlStore {
    pub(super) async fn record_decisions_impl(&self, records: &[DecisionRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        insert(&mut tx, records, None).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn decisions_impl(&self, q: &DecisionQuery) -> Result<Vec<Decision>> {
        // Placeholders are numbered in the order the filters are added.
        let mut clauses = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if q.project_id.is_some() {
            clauses.push(format!("project_id = {}", next()));
        }
        if q.deployment_id.is_some() {
            clauses.push(format!("deployment_id = {}", next()));
        }
        if q.call.is_some() {
            clauses.push(format!("call_name = {}", next()));
        }
        if q.before.is_some() {
            clauses.push(format!("id < {}", next()));
        }
        if q.since.is_some() {
            clauses.push(format!("at >= {}", next()));
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM decision_log {filter} ORDER BY id DESC LIMIT {}",
            next()
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(v) = q.project_id {
            query = query.bind(v);
        }
        if let Some(v) = q.deployment_id {
            query = query.bind(v);
        }
        if let Some(v) = q.call {
            query = query.bind(v);
        }
        if let Some(v) = q.before {
            query = query.bind(v);
        }
        if let Some(v) = q.since {
            query = query.bind(v);
        }
        query
            .bind(q.limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(decision_from)
            .collect()
    }

    /// Deletes decisions made before `older_than`, then all but the newest
    /// `max_rows`, in batches.
    pub(super) async fn prune_decisions_impl(
        &self,
        max_rows: u64,
        older_than: i64,
    ) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        loop {
            let done = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM decision_log WHERE id IN \
                 (SELECT id FROM decision_log WHERE at < $1 ORDER BY id LIMIT {PRUNE_BATCH})"
            )))
            .bind(older_than)
            .execute(&self.pool)
            .await?;
            pruned.by_age += done.rows_affected();
            if done.rows_affected() < PRUNE_BATCH as u64 {
                break;
            }
        }
        // The newest row that goes: everything at or below it goes too.
        let offset = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let cut = sqlx::query("SELECT id FROM decision_log ORDER BY id DESC LIMIT 1 OFFSET $1")
            .bind(offset)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = cut {
            let cut: i64 = row.try_get("id")?;
            loop {
                let done = sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM decision_log WHERE id IN \
                     (SELECT id FROM decision_log WHERE id <= $1 ORDER BY id LIMIT {PRUNE_BATCH})"
                )))
                .bind(cut)
                .execute(&self.pool)
                .await?;
                pruned.by_count += done.rows_affected();
                if done.rows_affected() < PRUNE_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    /// The ids of the decisions that made each of `deployments` (at most
    /// [`DEPLOYMENT_DECISION_IDS`] each, the newest), oldest first.
    pub(super) async fn decision_ids_of(
        &self,
        deployments: &[i64],
    ) -> Result<BTreeMap<i64, Vec<i64>>> {
        let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        // A page of deployments at a time, so the list of placeholders stays
        // far below every backend's limit.
        for page in deployments.chunks(500) {
            let marks: Vec<String> = (1..=page.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, deployment_id FROM decision_log WHERE deployment_id IN ({}) ORDER BY id",
                marks.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in page {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                let (id, dep): (i64, i64) = (row.try_get("id")?, row.try_get("deployment_id")?);
                out.entry(dep).or_default().push(id);
            }
        }
        for ids in out.values_mut() {
            if ids.len() > DEPLOYMENT_DECISION_IDS {
                ids.drain(..ids.len() - DEPLOYMENT_DECISION_IDS);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_in_few_shapes() {
        for n in [0, 1, 2, 3, 63, 64, 65, 127, 500, 1000] {
            let sizes: Vec<usize> = chunk_sizes(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n}: {sizes:?}");
            assert!(
                sizes
                    .iter()
                    .all(|s| s.is_power_of_two() && *s <= INSERT_ROWS),
                "{n}: {sizes:?}"
            );
        }
        // 500 = 31 full statements of 16 rows, then 4.
        let mut expected = vec![16; 31];
        expected.push(4);
        assert_eq!(chunk_sizes(500).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn the_statement_numbers_every_placeholder() {
        let sql = insert_sql(2);
        assert!(sql.ends_with("($1, $2, $3, $4, $5, $6, $7, $8, $9, $10), ($11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"), "{sql}");
    }
}
