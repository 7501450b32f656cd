//! Archiving whole months of the trail (`pac audit archive --before <date>`): each month's
//! partition wholly before the date leaves, for each writer with records in it, a signed
//! `archived` checkpoint of its last record there, and is detached from the trail. The detached
//! table stays in the `audit` schema, unchanged, to be dumped (`pg_dump -t audit.events_YYYY_MM`),
//! stored and dropped; `verify` checks each remaining chain from its archived checkpoint.

use chrono::{Months, NaiveDate};
use sqlx::PgPool;

use super::checkpoint::{self, ARCHIVED};
use super::keys::AuditKey;
use super::{OWNER_ROLE, SCHEMA};

/// One month detached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// The detached table, e.g. `audit.events_2026_01`.
    pub table: String,
    pub records: i64,
    pub writers: usize,
}

/// The months' partitions, oldest first, with the first day of each.
async fn months(pool: &PgPool) -> Result<Vec<(String, NaiveDate)>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'audit.events'::regclass AND c.relname ~ '^events_[0-9]{4}_[0-9]{2}$' ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?;
    Ok(names
        .into_iter()
        .filter_map(|name| {
            let first = NaiveDate::parse_from_str(&format!("{}_01", &name["events_".len()..]), "%Y_%m_%d").ok()?;
            Some((name, first))
        })
        .collect())
}

/// Detaches every month wholly before `before`, each after its archived checkpoints, in one
/// transaction a month (administrator connection; acts as the schema's owner).
pub async fn archive(pool: &PgPool, key: &AuditKey, before: NaiveDate) -> anyhow::Result<Vec<Archived>> {
    let mut archived = Vec::new();
    for (name, first) in months(pool).await? {
        let Some(end) = first.checked_add_months(Months::new(1)) else { continue };
        if end > before {
            break;
        }
        let table = format!("{SCHEMA}.{name}");
        let mut tx = pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {OWNER_ROLE}"))).execute(&mut *tx).await?;
        // No record may land in the month between reading where its chains end and detaching it;
        // and the gateways' writes are not held up behind a long wait for the trail (e.g. a `verify`
        // reading it): try again later instead.
        sqlx::query("SET LOCAL lock_timeout = '5s'").execute(&mut *tx).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("LOCK TABLE {table} IN EXCLUSIVE MODE"))).execute(&mut *tx).await?;
        let heads: Vec<(String, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT ON (writer) writer, sequence, hash FROM {table} ORDER BY writer, sequence DESC"
        )))
        .fetch_all(&mut *tx)
        .await?;
        let records: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}"))).fetch_one(&mut *tx).await?;
        for (writer, sequence, hash) in &heads {
            checkpoint::write_in(&mut tx, key, writer, *sequence, hash, ARCHIVED).await?;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("ALTER TABLE {SCHEMA}.events DETACH PARTITION {table}"))).execute(&mut *tx).await?;
        tx.commit().await?;
        archived.push(Archived { table, records, writers: heads.len() });
    }
    Ok(archived)
}
