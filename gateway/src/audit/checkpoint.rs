//! Signed checkpoints: now and then (and when it stops) each writer records where its chain stands,
//! its latest sequence number and hash, signed. Checkpoints form one chain of their own across all
//! writers (numbered from 1, each signing the one before), so removing the last records of a
//! writer's chain, or a whole writer, shows: `verify` finds a chain that stops short of its
//! checkpoint, or a gap in the checkpoints. Only what was written after a writer's last checkpoint
//! (at most one interval of it) could go unnoticed.
//!
//! Archiving a month of the trail leaves an `archived` checkpoint for each writer's last record in
//! it, from which verification of the rest of that writer's chain starts.

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::GENESIS;
use super::keys::AuditKey;

/// Serialises checkpoint writers, so that each signs the one before it.
const CHECKPOINT_LOCK: i64 = 0x7061_635f_6175_6474; // "pac_audt"

/// What a checkpoint marks.
pub const INTERVAL: &str = "interval";
/// The writer stopped cleanly: nothing follows.
pub const FINAL: &str = "final";
/// The records up to here were archived (a partition detached).
pub const ARCHIVED: &str = "archived";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Checkpoint {
    pub number: i64,
    pub writer: String,
    pub sequence: i64,
    pub hash: String,
    #[serde(serialize_with = "super::micros")]
    pub written_at: DateTime<Utc>,
    pub kind: String,
    pub key_id: String,
    pub previous_mac: String,
    #[serde(skip)]
    pub mac: String,
}

impl Checkpoint {
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a checkpoint serialises")
    }
}

/// Writes a checkpoint of `writer` at (`sequence`, `hash`), signed with `key`.
pub async fn write(pool: &PgPool, key: &AuditKey, writer: &str, sequence: i64, hash: &str, kind: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    write_in(&mut tx, key, writer, sequence, hash, kind).await?;
    tx.commit().await
}

/// The same, inside the caller's transaction.
pub async fn write_in(
    tx: &mut PgConnection,
    key: &AuditKey,
    writer: &str,
    sequence: i64,
    hash: &str,
    kind: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHECKPOINT_LOCK).execute(&mut *tx).await?;
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT number, mac FROM audit.checkpoints ORDER BY number DESC LIMIT 1").fetch_optional(&mut *tx).await?;
    let (number, previous_mac) = last.map_or((1, GENESIS.to_string()), |(number, mac)| (number + 1, mac));
    let mut checkpoint = Checkpoint {
        number,
        writer: writer.to_string(),
        sequence,
        hash: hash.to_string(),
        written_at: Utc::now().trunc_subsecs(6),
        kind: kind.to_string(),
        key_id: key.id().to_string(),
        previous_mac,
        mac: String::new(),
    };
    checkpoint.mac = key.sign(&checkpoint.canonical());
    sqlx::query(
        "INSERT INTO audit.checkpoints (number, writer, sequence, hash, written_at, kind, key_id, previous_mac, mac) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(checkpoint.number)
    .bind(&checkpoint.writer)
    .bind(checkpoint.sequence)
    .bind(&checkpoint.hash)
    .bind(checkpoint.written_at)
    .bind(&checkpoint.kind)
    .bind(&checkpoint.key_id)
    .bind(&checkpoint.previous_mac)
    .bind(&checkpoint.mac)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Every checkpoint, in order.
pub async fn all(pool: &PgPool) -> Result<Vec<Checkpoint>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM audit.checkpoints ORDER BY number").fetch_all(pool).await
}
