//! The audit trail: one record per call that reads or changes patient data and per refused call,
//! written by the gateway to its own schema (`audit`), which no service role may change.
//!
//! Each gateway process is one writer: its records are numbered from 1 without gaps and chained,
//! each hash covering the previous hash and the record, so a changed, removed or inserted record
//! breaks the chain (`pac audit verify`). Records are queued by the calls and written by one task,
//! a batch of whatever is queued at a time (group commit: one transaction, one flush to disk, for
//! many calls); a call learns when its record is durable ([`Stored`]), and the proxy holds back an
//! answer carrying patient data until then. When the queue is full the gateway refuses new calls
//! rather than lose records.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use pac_platform::config::DbConfig;
use pac_platform::db;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The role that owns the audit schema. Nobody logs in as it.
pub const OWNER_ROLE: &str = "pac_audit";
pub const SCHEMA: &str = "audit";
/// The hash a writer's first record follows.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// What one call did, as the proxy saw it.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub subject: String,
    pub role: String,
    pub organisation: String,
    /// Every organisation the caller acts for (`organisation` is the first).
    pub organisations: Vec<String>,
    pub action: String,
    pub patient_ids: Vec<String>,
    pub outcome: String,
    pub reason: String,
    pub request_id: String,
    pub trace_id: String,
    /// What else the record says, as JSON (e.g. a stream's cursors and counts); empty for a call.
    pub detail: String,
}

/// One stored record: an entry with its place in its writer's chain.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Record {
    pub writer: String,
    pub sequence: i64,
    #[serde(serialize_with = "micros")]
    pub occurred_at: DateTime<Utc>,
    pub subject: String,
    pub role: String,
    pub organisation: String,
    pub action: String,
    pub patient_ids: Vec<String>,
    pub outcome: String,
    pub reason: String,
    pub request_id: String,
    pub trace_id: String,
    /// Hashed only when present, so records written before it existed verify as they were written.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Hashed only when present, as `detail`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub organisations: Vec<String>,
    pub previous_hash: String,
    #[serde(skip)]
    pub hash: String,
}

fn micros<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

impl Record {
    /// SHA-256 (hex) over the record's fields and the previous hash, in a fixed form.
    pub fn compute_hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a record serialises");
        format!("{:x}", Sha256::digest(canonical))
    }
}

/// Where a writer's chain stands.
struct Chain {
    writer: String,
    sequence: i64,
    last_hash: String,
}

impl Chain {
    fn seal(&mut self, entry: Entry, at: DateTime<Utc>) -> Record {
        self.sequence += 1;
        let mut record = Record {
            writer: self.writer.clone(),
            sequence: self.sequence,
            occurred_at: at.trunc_subsecs(6),
            subject: entry.subject,
            role: entry.role,
            organisation: entry.organisation,
            action: entry.action,
            patient_ids: entry.patient_ids,
            outcome: entry.outcome,
            reason: entry.reason,
            request_id: entry.request_id,
            trace_id: entry.trace_id,
            detail: entry.detail,
            organisations: entry.organisations,
            previous_hash: std::mem::take(&mut self.last_hash),
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        self.last_hash = record.hash.clone();
        record
    }
}

type Queued = (Entry, DateTime<Utc>, Option<oneshot::Sender<()>>);

/// Resolves when a record is durable: its batch committed. Fails only if the writer stopped
/// without storing it (it does not, short of the process ending).
pub type Stored = oneshot::Receiver<()>;

/// The calls' side of the trail. A call reserves room for its record when it is admitted, so a
/// call that was let in is always recorded; when there is no room the call is refused.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Queued>,
}

/// Room for one record in the queue.
pub struct Reserved(mpsc::OwnedPermit<Queued>);

impl AuditLog {
    /// A log whose records go to the returned receiver, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> (Self, mpsc::Receiver<Queued>) {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        (Self { queue }, receiver)
    }

    /// Room for one call's record, or `None` when the writer is behind (or stopped).
    pub fn reserve(&self) -> Option<Reserved> {
        self.queue.clone().try_reserve_owned().ok().map(Reserved)
    }
}

impl Reserved {
    /// Queues the record of a finished call.
    pub fn record(self, entry: Entry) {
        self.0.send((entry, Utc::now(), None));
    }

    /// Queues the record of a finished call; the answer resolves once it is durable.
    pub fn record_durably(self, entry: Entry) -> Stored {
        let (stored, notify) = oneshot::channel();
        self.0.send((entry, Utc::now(), Some(stored)));
        notify
    }
}

/// How many entries may wait for the writer; calls are refused while it is full.
pub const QUEUE_CAPACITY: usize = 65_536;
const BATCH: usize = 1_000;

/// Starts the writer task on `pool` as a new writer. It runs until `stop` fires and the queue is
/// drained.
pub fn start(pool: PgPool, stop: CancellationToken) -> (AuditLog, tokio::task::JoinHandle<()>) {
    let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let writer = format!("gateway-{}", uuid::Uuid::now_v7());
    let chain = Chain { writer, sequence: 0, last_hash: GENESIS.into() };
    let task = tokio::spawn(write(pool, chain, receiver, stop));
    (AuditLog { queue }, task)
}

/// Writes what is queued, a batch at a time: while one batch is being stored the next gathers, so
/// under load each flush carries many records, and a lone call's record is written at once.
async fn write(pool: PgPool, mut chain: Chain, mut receiver: mpsc::Receiver<Queued>, stop: CancellationToken) {
    tracing::info!(writer = %chain.writer, "audit writer started");
    let mut batch = Vec::with_capacity(BATCH);
    let mut waiting = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            biased;
            n = receiver.recv_many(&mut batch, BATCH) => n,
            _ = stop.cancelled() => {
                // Shutting down: what is queued still gets written.
                receiver.close();
                receiver.recv_many(&mut batch, BATCH).await
            }
        };
        if received == 0 {
            break;
        }
        let records: Vec<Record> = batch
            .drain(..)
            .map(|(entry, at, stored)| {
                waiting.extend(stored);
                chain.seal(entry, at)
            })
            .collect();
        insert_until_stored(&pool, &records).await;
        for stored in waiting.drain(..) {
            let _ = stored.send(());
        }
    }
    tracing::info!(writer = %chain.writer, records = chain.sequence, "audit writer stopped");
}

/// Inserts a batch, retrying until the database takes it. A batch whose commit was not
/// acknowledged is recognised by its last sequence number and not written twice.
async fn insert_until_stored(pool: &PgPool, records: &[Record]) {
    let mut delay = Duration::from_millis(50);
    loop {
        match insert(pool, records).await {
            Ok(()) => return,
            Err(error) => {
                let last = records.last().expect("a batch is not empty");
                if stored_up_to(pool, &last.writer).await.is_ok_and(|stored| stored >= last.sequence) {
                    return;
                }
                tracing::error!(error = %pac_platform::error::safe_description(&error), "audit batch not stored; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn stored_up_to(pool: &PgPool, writer: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT coalesce(max(sequence), 0) FROM audit.events WHERE writer = $1").bind(writer).fetch_one(pool).await
}

/// Inserts a batch in one statement (one round trip: a batch is on its way to disk as soon as it
/// is sent). Array columns travel as array literals.
async fn insert(pool: &PgPool, records: &[Record]) -> Result<(), sqlx::Error> {
    let column = |field: fn(&Record) -> &str| records.iter().map(field).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO audit.events (writer, sequence, occurred_at, subject, role, organisation, action, patient_ids, \
                                   outcome, reason, request_id, trace_id, previous_hash, hash, detail, organisations) \
         SELECT $1, s, t, subj, r, org, act, ids::text[], o, rsn, rid, tid, ph, h, d, orgs::text[] \
         FROM unnest($2::int8[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
                     $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[]) \
              AS u(s, t, subj, r, org, act, ids, o, rsn, rid, tid, ph, h, d, orgs)",
    )
    .bind(&records.first().expect("a batch is not empty").writer)
    .bind(records.iter().map(|r| r.sequence).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
    .bind(column(|r| &r.subject))
    .bind(column(|r| &r.role))
    .bind(column(|r| &r.organisation))
    .bind(column(|r| &r.action))
    .bind(records.iter().map(|r| array_literal(&r.patient_ids)).collect::<Vec<_>>())
    .bind(column(|r| &r.outcome))
    .bind(column(|r| &r.reason))
    .bind(column(|r| &r.request_id))
    .bind(column(|r| &r.trace_id))
    .bind(column(|r| &r.previous_hash))
    .bind(column(|r| &r.hash))
    .bind(column(|r| &r.detail))
    .bind(records.iter().map(|r| array_literal(&r.organisations)).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

/// A text array literal of quoted elements (`{"a","b\"c"}`).
fn array_literal(values: &[String]) -> String {
    let mut out = String::from("{");
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in value.chars() {
            if c == '\\' || c == '"' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

// ---------------------------------------------------------------------------------------------
// Schema

/// Creates the gateway's role, and the audit schema owned by a role nobody logs in as, then
/// migrates it as that role. Administrator connection.
pub async fn provision(db_config: &DbConfig, gateway: db::ServiceSchema) -> anyhow::Result<()> {
    let admin = db::admin_pool(&db_config.admin_url).await?;
    db::provision(&admin, gateway, &db_config.role_password).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DO $$ BEGIN CREATE ROLE {OWNER_ROLE} NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )))
        .await
        .context("cannot create the audit schema's owner role")?;
    // A non-superuser administrator needs membership to act as the owner; a superuser has it.
    let _ = admin.execute(sqlx::AssertSqlSafe(format!("GRANT {OWNER_ROLE} TO CURRENT_USER"))).await;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA} AUTHORIZATION {OWNER_ROLE}")))
        .await
        .context("cannot create the audit schema")?;
    admin.close().await;

    let options = PgConnectOptions::from_str(db_config.admin_url.expose()).context("DATABASE_URL is not a valid postgres URL")?;
    let owner = PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|connection, _| {
            Box::pin(async move {
                connection.execute(sqlx::AssertSqlSafe(format!("SET ROLE {OWNER_ROLE}; SET search_path = {SCHEMA}"))).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .context("cannot connect to migrate the audit schema")?;
    MIGRATIONS.run(&owner).await.context("audit migrations failed")?;
    owner.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading and verifying

/// Filters of `ListAuditEvents`.
#[derive(Debug, Default)]
pub struct Query {
    pub patient_id: Option<String>,
    pub subject: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub before: Option<DateTime<Utc>>,
    /// Keyset: strictly older than this (time, writer, sequence).
    pub after: Option<(DateTime<Utc>, String, i64)>,
    pub limit: i64,
    /// The organisations whose callers' records may be read; `None` for every record.
    pub organisations: Option<Vec<String>>,
}

/// Records matching `query`, newest first.
pub async fn list(pool: &PgPool, query: &Query) -> Result<Vec<Record>, sqlx::Error> {
    let (after_time, after_writer, after_sequence) = match &query.after {
        Some((time, writer, sequence)) => (Some(*time), Some(writer.as_str()), Some(*sequence)),
        None => (None, None, None),
    };
    sqlx::query_as(
        "SELECT * FROM audit.events \
         WHERE ($1::text IS NULL OR patient_ids @> ARRAY[$1::text]) \
           AND ($2::text IS NULL OR subject = $2) \
           AND ($3::timestamptz IS NULL OR occurred_at >= $3) \
           AND ($4::timestamptz IS NULL OR occurred_at < $4) \
           AND ($5::timestamptz IS NULL OR (occurred_at, writer, sequence) < ($5, $6::text, $7::bigint)) \
           AND ($9::text[] IS NULL OR organisations && $9 OR organisation = ANY($9)) \
         ORDER BY occurred_at DESC, writer DESC, sequence DESC \
         LIMIT $8",
    )
    .bind(query.patient_id.as_deref())
    .bind(query.subject.as_deref())
    .bind(query.from)
    .bind(query.before)
    .bind(after_time)
    .bind(after_writer)
    .bind(after_sequence)
    .bind(query.limit)
    .bind(query.organisations.as_deref())
    .fetch_all(pool)
    .await
}

/// What `verify` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verification {
    pub writers: usize,
    pub records: u64,
    /// One line per break: writer, sequence and what is wrong.
    pub problems: Vec<String>,
}

/// Walks every writer's chain in order: numbering from 1 without gaps, each record's previous hash
/// the hash before it, each hash what the record's contents give.
pub async fn verify(pool: &PgPool) -> Result<Verification, sqlx::Error> {
    use futures::TryStreamExt;
    let mut rows = sqlx::query_as::<_, Record>("SELECT * FROM audit.events ORDER BY writer, sequence").fetch(pool);
    let mut result = Verification::default();
    let mut current: Option<(String, i64, String)> = None;
    while let Some(record) = rows.try_next().await? {
        result.records += 1;
        let (expected_sequence, expected_previous) = match &current {
            Some((writer, sequence, hash)) if *writer == record.writer => (sequence + 1, hash.clone()),
            _ => {
                result.writers += 1;
                (1, GENESIS.to_string())
            }
        };
        let at = format!("{} #{}", record.writer, record.sequence);
        if record.sequence != expected_sequence {
            result.problems.push(format!("{at}: expected #{expected_sequence} (records missing)"));
        }
        if record.previous_hash != expected_previous {
            result.problems.push(format!("{at}: does not follow the record before it"));
        }
        if record.compute_hash() != record.hash {
            result.problems.push(format!("{at}: contents do not match its hash (changed)"));
        }
        current = Some((record.writer, record.sequence, record.hash));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> Entry {
        Entry { subject: "u1".into(), role: "coordinator".into(), action: action.into(), outcome: "OK".into(), ..Entry::default() }
    }

    #[test]
    fn each_record_chains_to_the_one_before() {
        let mut chain = Chain { writer: "w".into(), sequence: 0, last_hash: GENESIS.into() };
        let first = chain.seal(entry("/a"), Utc::now());
        let second = chain.seal(entry("/b"), Utc::now());
        assert_eq!((first.sequence, first.previous_hash.as_str()), (1, GENESIS));
        assert_eq!((second.sequence, &second.previous_hash), (2, &first.hash));
        assert_eq!(second.compute_hash(), second.hash);
        let mut changed = second.clone();
        changed.outcome = "PERMISSION_DENIED".into();
        assert_ne!(changed.compute_hash(), second.hash, "any change breaks the hash");
    }

    #[test]
    fn array_literals_quote_and_escape_every_element() {
        assert_eq!(array_literal(&[]), "{}");
        assert_eq!(array_literal(&["p\"1".into(), "q\\".into(), "".into(), "NULL".into()]), r#"{"p\"1","q\\","","NULL"}"#);
    }
}
