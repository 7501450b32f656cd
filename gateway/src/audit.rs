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

pub mod archive;
pub mod checkpoint;
pub mod keys;
mod verify;

pub use keys::AuditKey;
pub use verify::{Verification, verify};

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
    /// The key the record is signed with ([`AuditKey::id`]); empty for records written before
    /// records were signed, whose `hash` is a plain SHA-256.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    pub previous_hash: String,
    #[serde(skip)]
    pub hash: String,
}

pub(crate) fn micros<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&micros_text(*at))
}

/// A time as records hold it: UTC, to the microsecond.
pub(crate) fn micros_text(at: DateTime<Utc>) -> String {
    at.trunc_subsecs(6).format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Record {
    /// The record's fields and the previous hash, in a fixed form: what its hash signs.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record serialises")
    }

    /// Plain SHA-256 (hex) of the canonical form: the hash of a record written before records
    /// were signed.
    pub fn compute_hash(&self) -> String {
        format!("{:x}", Sha256::digest(self.canonical()))
    }
}

/// Where a writer's chain stands.
struct Chain {
    writer: String,
    sequence: i64,
    last_hash: String,
    /// The time of the last record: a record is never earlier than the one before it, so a chain
    /// splits between months (partitions) at one place.
    last_at: DateTime<Utc>,
    key: AuditKey,
}

impl Chain {
    fn new(writer: String, key: AuditKey) -> Self {
        Self { writer, sequence: 0, last_hash: GENESIS.into(), last_at: DateTime::<Utc>::MIN_UTC, key }
    }

    /// The next record of the chain, signed.
    fn seal(&mut self, entry: Entry, at: DateTime<Utc>) -> Record {
        self.sequence += 1;
        self.last_at = at.trunc_subsecs(6).max(self.last_at);
        let mut record = Record {
            writer: self.writer.clone(),
            sequence: self.sequence,
            occurred_at: self.last_at,
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
            key_id: self.key.id().to_string(),
            previous_hash: std::mem::take(&mut self.last_hash),
            hash: String::new(),
        };
        record.hash = self.key.sign(&record.canonical());
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
/// Most turns of the scheduler a flush waits for more records to come (see [`gather`]).
const GATHER_TURNS: usize = 8;

/// Starts the writer task on `pool` as a new writer, signing with `key` and writing a checkpoint of
/// its chain every `checkpoint_every` while it moves, and a final one when it stops. It runs until
/// `stop` fires and the queue is drained.
pub fn start(pool: PgPool, stop: CancellationToken, key: AuditKey, checkpoint_every: Duration) -> (AuditLog, tokio::task::JoinHandle<()>) {
    let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
    let chain = Chain::new(format!("gateway-{}", uuid::Uuid::now_v7()), key);
    let task = tokio::spawn(write(pool, chain, receiver, stop, checkpoint_every));
    (AuditLog { queue }, task)
}

/// Writes what is queued, a batch at a time: while one batch is being stored the next gathers, so
/// under load each flush carries many records, and a lone call's record is written at once.
async fn write(pool: PgPool, mut chain: Chain, mut receiver: mpsc::Receiver<Queued>, stop: CancellationToken, every: Duration) {
    tracing::info!(writer = %chain.writer, "audit writer started");
    add_months(&pool).await;
    let mut months_added = tokio::time::Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let mut waiting = Vec::with_capacity(BATCH);
    let mut checkpointed = 0;
    let mut due = tokio::time::Instant::now() + every;
    loop {
        let received = tokio::select! {
            biased;
            n = receiver.recv_many(&mut batch, BATCH) => n,
            _ = tokio::time::sleep_until(due) => {
                due = look_after(&pool, &chain, &mut checkpointed, &mut months_added, every).await;
                continue;
            }
            _ = stop.cancelled() => {
                // Shutting down: what is queued still gets written.
                receiver.close();
                receiver.recv_many(&mut batch, BATCH).await
            }
        };
        if received == 0 {
            break;
        }
        gather(&mut receiver, &mut batch).await;
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
        if tokio::time::Instant::now() >= due {
            due = look_after(&pool, &chain, &mut checkpointed, &mut months_added, every).await;
        }
    }
    if chain.sequence > 0 {
        // Nothing follows: a final checkpoint, tried a few times.
        for attempt in 1..=5 {
            match checkpoint::write(&pool, &chain.key, &chain.writer, chain.sequence, &chain.last_hash, checkpoint::FINAL).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::error!(attempt, error = %pac_platform::error::safe_description(&error), "final audit checkpoint not written");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    tracing::info!(writer = %chain.writer, records = chain.sequence, "audit writer stopped");
}

/// Lets the calls that are finishing queue their records too, for as long as more keep coming (a
/// few turns of the scheduler, no timer): a flush then carries them all, and the database commits
/// fewer, larger batches, at no cost to a lone call.
async fn gather(receiver: &mut mpsc::Receiver<Queued>, batch: &mut Vec<Queued>) {
    for _ in 0..GATHER_TURNS {
        tokio::task::yield_now().await;
        let before = batch.len();
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        if batch.len() == before {
            return;
        }
    }
}

/// What a writer does now and then, busy or idle: a checkpoint, and the coming months'
/// partitions. Answers when it is next due.
async fn look_after(
    pool: &PgPool,
    chain: &Chain,
    checkpointed: &mut i64,
    months_added: &mut tokio::time::Instant,
    every: Duration,
) -> tokio::time::Instant {
    checkpoint_if_moved(pool, chain, checkpointed).await;
    if months_added.elapsed() >= MONTHS_EVERY {
        add_months(pool).await;
        *months_added = tokio::time::Instant::now();
    }
    tokio::time::Instant::now() + every
}

/// How often a writer makes sure the coming months have their partitions.
const MONTHS_EVERY: Duration = Duration::from_secs(3600);

/// The partitions of this month and the next two, made if missing (a record no month holds goes to
/// the default partition, which a month made later cannot take over while it holds any).
async fn add_months(pool: &PgPool) {
    if let Err(error) = sqlx::query("SELECT audit.add_months((now() AT TIME ZONE 'UTC')::date, 3)").execute(pool).await {
        tracing::warn!(error = %pac_platform::error::safe_description(&error), "the audit trail's coming months not partitioned");
    }
}

/// A checkpoint of the chain, when it has moved since the last one. A checkpoint that cannot be
/// written now is written at the next interval.
async fn checkpoint_if_moved(pool: &PgPool, chain: &Chain, checkpointed: &mut i64) {
    if chain.sequence == *checkpointed {
        return;
    }
    match checkpoint::write(pool, &chain.key, &chain.writer, chain.sequence, &chain.last_hash, checkpoint::INTERVAL).await {
        Ok(()) => *checkpointed = chain.sequence,
        Err(error) => {
            tracing::warn!(error = %pac_platform::error::safe_description(&error), "audit checkpoint not written; retrying later")
        }
    }
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
                                   outcome, reason, request_id, trace_id, previous_hash, hash, detail, organisations, key_id) \
         SELECT $1, s, t, subj, r, org, act, ids::text[], o, rsn, rid, tid, ph, h, d, orgs::text[], $17 \
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
    // One writer, one key.
    .bind(&records[0].key_id)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> Entry {
        Entry { subject: "u1".into(), role: "coordinator".into(), action: action.into(), outcome: "OK".into(), ..Entry::default() }
    }

    #[test]
    fn each_record_chains_to_the_one_before() {
        let key = AuditKey::development();
        let mut chain = Chain::new("w".into(), key.clone());
        let first = chain.seal(entry("/a"), Utc::now());
        let second = chain.seal(entry("/b"), Utc::now() - chrono::Duration::seconds(5));
        assert_eq!((first.sequence, first.previous_hash.as_str()), (1, GENESIS));
        assert_eq!((second.sequence, &second.previous_hash), (2, &first.hash));
        assert!(second.occurred_at >= first.occurred_at, "never earlier than the record before");
        assert_eq!((key.sign(&second.canonical()), second.key_id.as_str()), (second.hash.clone(), key.id()));
        let mut changed = second.clone();
        changed.outcome = "PERMISSION_DENIED".into();
        assert_ne!(key.sign(&changed.canonical()), second.hash, "any change breaks the signature");
        let other = AuditKey::new(b"some other key of thirty-two bytes");
        assert_ne!(other.sign(&second.canonical()), second.hash, "no other key makes the signature");
    }

    #[test]
    fn array_literals_quote_and_escape_every_element() {
        assert_eq!(array_literal(&[]), "{}");
        assert_eq!(array_literal(&["p\"1".into(), "q\\".into(), "".into(), "NULL".into()]), r#"{"p\"1","q\\","","NULL"}"#);
    }
}
