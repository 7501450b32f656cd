//! `pac audit verify`: every writer's chain and every checkpoint, checked against the keys given.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::checkpoint::{self, ARCHIVED, FINAL};
use super::keys::AuditKey;
use super::{GENESIS, Record};

/// What `verify` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verification {
    pub writers: usize,
    pub records: u64,
    pub checkpoints: u64,
    /// One line per break: writer, sequence and what is wrong.
    pub problems: Vec<String>,
    /// Records and checkpoints whose signature could not be checked, as no key was given.
    pub unchecked: u64,
    /// Records after their writer's last checkpoint, the writer not having stopped cleanly: their
    /// removal could not be told from the writer having written no more.
    pub uncovered: u64,
    /// When the newest checkpoint was written.
    pub latest_checkpoint: Option<DateTime<Utc>>,
}

/// How one signed thing checks against the keys given.
enum Signature {
    Good,
    Bad,
    UnknownKey,
    Unchecked,
}

fn check(keys: &[AuditKey], key_id: &str, signed: &[u8], signature: &str) -> Signature {
    match keys.iter().find(|k| k.id() == key_id) {
        Some(key) if key.sign(signed) == signature => Signature::Good,
        Some(_) => Signature::Bad,
        None if keys.is_empty() => Signature::Unchecked,
        None => Signature::UnknownKey,
    }
}

/// Walks the checkpoints, then every writer's chain in order: numbering from 1 without gaps (or
/// from an archived checkpoint), each record's previous hash the hash before it, each signature
/// what the record's contents and the key give, and each chain reaching its last checkpoint.
/// Records written before records were signed (no key id) verify by their plain SHA-256 when no key
/// is given, and are reported as unsigned when one is.
pub async fn verify(pool: &PgPool, keys: &[AuditKey]) -> Result<Verification, sqlx::Error> {
    use futures::TryStreamExt;
    let mut result = Verification::default();

    // The checkpoints: one chain, signed.
    let mut covered: HashMap<String, (i64, String)> = HashMap::new();
    let mut archived: HashMap<(String, i64), String> = HashMap::new();
    let mut archived_up_to: HashMap<String, i64> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut previous_mac = GENESIS.to_string();
    for (i, checkpoint) in checkpoint::all(pool).await?.into_iter().enumerate() {
        result.checkpoints += 1;
        let expected = i as i64 + 1;
        let at = format!("checkpoint #{}", checkpoint.number);
        if checkpoint.number != expected {
            result.problems.push(format!("{at}: expected #{expected} (checkpoints missing)"));
        }
        if checkpoint.previous_mac != previous_mac {
            result.problems.push(format!("{at}: does not follow the checkpoint before it"));
        }
        match check(keys, &checkpoint.key_id, &checkpoint.canonical(), &checkpoint.mac) {
            Signature::Good => {}
            Signature::Bad => result.problems.push(format!("{at}: does not match its signature (changed or forged)")),
            Signature::UnknownKey => result.problems.push(format!("{at}: signed with a key not given ({})", checkpoint.key_id)),
            Signature::Unchecked => result.unchecked += 1,
        }
        result.latest_checkpoint = Some(checkpoint.written_at);
        previous_mac = checkpoint.mac.clone();
        match checkpoint.kind.as_str() {
            ARCHIVED => {
                let up_to = archived_up_to.entry(checkpoint.writer.clone()).or_insert(0);
                *up_to = (*up_to).max(checkpoint.sequence);
                archived.insert((checkpoint.writer, checkpoint.sequence), checkpoint.hash);
            }
            kind => {
                if kind == FINAL {
                    finished.insert(checkpoint.writer.clone());
                }
                let entry = covered.entry(checkpoint.writer).or_insert((0, String::new()));
                if checkpoint.sequence >= entry.0 {
                    *entry = (checkpoint.sequence, checkpoint.hash);
                }
            }
        }
    }

    // The records, writer by writer.
    let mut rows = sqlx::query_as::<_, Record>("SELECT * FROM audit.events ORDER BY writer, sequence").fetch(pool);
    let mut reached: HashMap<String, i64> = HashMap::new();
    let mut current: Option<(String, i64, String)> = None;
    while let Some(record) = rows.try_next().await? {
        result.records += 1;
        let (expected_sequence, expected_previous) = match &current {
            Some((writer, sequence, hash)) if *writer == record.writer => (sequence + 1, hash.clone()),
            _ => {
                result.writers += 1;
                // A chain whose earlier records were archived starts after its archived checkpoint.
                let archived_before = archived.get(&(record.writer.clone(), record.sequence - 1));
                match archived_before {
                    Some(hash) if *hash == record.previous_hash => (record.sequence, hash.clone()),
                    _ => (1, GENESIS.to_string()),
                }
            }
        };
        let at = format!("{} #{}", record.writer, record.sequence);
        if record.sequence != expected_sequence {
            result.problems.push(format!("{at}: expected #{expected_sequence} (records missing)"));
        }
        if record.previous_hash != expected_previous {
            result.problems.push(format!("{at}: does not follow the record before it"));
        }
        if record.key_id.is_empty() {
            if !keys.is_empty() {
                result.problems.push(format!("{at}: not signed (anyone able to add rows could have written it)"));
            } else if record.compute_hash() != record.hash {
                result.problems.push(format!("{at}: contents do not match its hash (changed)"));
            }
        } else {
            match check(keys, &record.key_id, &record.canonical(), &record.hash) {
                Signature::Good => {}
                Signature::Bad => result.problems.push(format!("{at}: contents do not match its signature (changed or forged)")),
                Signature::UnknownKey => result.problems.push(format!("{at}: signed with a key not given ({})", record.key_id)),
                Signature::Unchecked => result.unchecked += 1,
            }
        }
        if let Some((sequence, hash)) = covered.get(&record.writer)
            && *sequence == record.sequence
            && *hash != record.hash
        {
            result.problems.push(format!("{at}: is not the record its checkpoint names"));
        }
        reached.insert(record.writer.clone(), record.sequence);
        current = Some((record.writer, record.sequence, record.hash));
    }

    // Each chain reaches its last checkpoint; what lies beyond it is reported, not judged.
    let mut writers: Vec<&String> = covered.keys().chain(reached.keys()).collect::<HashSet<_>>().into_iter().collect();
    writers.sort();
    for writer in writers {
        // A writer's records may all be archived: its chain reached at least its archived checkpoint.
        let last = reached.get(writer).copied().unwrap_or(0).max(archived_up_to.get(writer).copied().unwrap_or(0));
        let checkpointed = covered.get(writer).map_or(0, |(sequence, _)| *sequence);
        if last < checkpointed {
            result.problems.push(format!("{writer}: records #{}..#{checkpointed} removed (its checkpoint covers them)", last + 1));
        } else if finished.contains(writer) && last > checkpointed {
            result.problems.push(format!("{writer}: records #{}..#{last} follow its final checkpoint", checkpointed + 1));
        } else if !finished.contains(writer) {
            result.uncovered += (last - checkpointed) as u64;
        }
    }
    Ok(result)
}
