//! Patient merges as the services that follow the records service see them. A service that keeps
//! patient ids (appointments, waitlist entries, referrals) moves them to the survivor when it follows
//! a merge. A write of its own that checked its patient with records before the merge and commits
//! after the service followed it would otherwise land on the merged-away record, and stay there.
//!
//! So the service records each merge it follows in its `merged_patients` table (its own migration
//! creates it: `merged_id uuid PRIMARY KEY, survivor_id uuid NOT NULL, merge_id uuid NOT NULL
//! UNIQUE`), and each such write asks [`current_patient`] inside its transaction. Both sides hold
//! the patient's merge guard, an advisory lock (writes share it, following a merge takes it alone),
//! so either the merge is followed first and the write is made for the survivor, or the write
//! commits first and following the merge finds it and moves it.

use sqlx::PgConnection;
use uuid::Uuid;

/// Deepest chain of merges followed to a current record.
const MAX_MERGE_DEPTH: usize = 8;

/// The guard, shared by writes and taken alone by following a merge. Its key is the schema's own,
/// so two services' guards never meet.
const SHARED_GUARD: &str = "SELECT pg_advisory_xact_lock_shared(hashtextextended(current_schema() || '.patient:' || $1::text, 0))";
const EXCLUSIVE_GUARD: &str = "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '.patient:' || $1::text, 0))";

/// The record a write for `patient` is to be made for: the survivor when this service has followed
/// a merge of `patient` (through a chain of merges, the last survivor). Holds the guard of each
/// record it passes until the transaction ends.
pub async fn current_patient(conn: &mut PgConnection, patient: Uuid) -> Result<Uuid, sqlx::Error> {
    let mut current = patient;
    for _ in 0..MAX_MERGE_DEPTH {
        sqlx::query(SHARED_GUARD).bind(current).execute(&mut *conn).await?;
        // A statement of its own: its snapshot is taken once the guard is held.
        let survivor: Option<Uuid> = sqlx::query_scalar("SELECT survivor_id FROM merged_patients WHERE merged_id = $1")
            .bind(current)
            .fetch_optional(&mut *conn)
            .await?;
        match survivor {
            Some(survivor) => current = survivor,
            None => break,
        }
    }
    Ok(current)
}

/// Records a merge being followed, first waiting for the writes in flight that hold the merged
/// record's guard (they commit first, and the merge then moves what they wrote). Idempotent.
pub async fn record_merge(conn: &mut PgConnection, merge_id: Uuid, merged: Uuid, survivor: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(EXCLUSIVE_GUARD).bind(merged).execute(&mut *conn).await?;
    sqlx::query("INSERT INTO merged_patients (merged_id, survivor_id, merge_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(merged)
        .bind(survivor)
        .bind(merge_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets a followed merge that was reversed. Idempotent.
pub async fn forget_merge(conn: &mut PgConnection, merge_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM merged_patients WHERE merge_id = $1").bind(merge_id).execute(conn).await?;
    Ok(())
}

/// A merge or its reversal, as the records service announces it on its event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeChange {
    Merged { merge_id: Uuid, merged: Uuid, survivor: Uuid },
    Unmerged { merge_id: Uuid },
}

/// The merge change a records event announces; `None` for any other event.
pub fn merge_change(message: &pac_proto::records::WatchEventsResponse) -> Result<Option<MergeChange>, String> {
    use pac_proto::records::watch_events_response::Event;
    let id = |value: &str| Uuid::parse_str(value).ok();
    match &message.event {
        Some(Event::PatientMerged(merged)) => {
            let merge = merged.merge.clone().unwrap_or_default();
            match (id(&merge.id), id(&merge.merged_id), id(&merge.survivor_id)) {
                (Some(merge_id), Some(merged), Some(survivor)) => Ok(Some(MergeChange::Merged { merge_id, merged, survivor })),
                _ => Err("malformed merge event".into()),
            }
        }
        Some(Event::PatientUnmerged(unmerged)) => match unmerged.merge.as_ref().and_then(|m| id(&m.id)) {
            Some(merge_id) => Ok(Some(MergeChange::Unmerged { merge_id })),
            None => Err("malformed unmerge event".into()),
        },
        _ => Ok(None),
    }
}
