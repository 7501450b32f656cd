//! Following the records service's event stream: merges re-point appointments and waitlist entries
//! to the surviving record, unmerges move them back. The cursor is stored with each change it
//! causes, so a restart resumes where it stopped and a replayed event changes nothing twice.

use std::time::Duration;

use futures::StreamExt;
use pac_proto::records::watch_events_response::Event;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::scheduling::Scheduling;
use crate::store;

/// Events passed over between cursor saves.
const SAVE_EVERY: u32 = 256;

pub async fn records_merges(scheduling: Scheduling, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    while !shutdown.is_cancelled() {
        match follow_once(&scheduling, &shutdown).await {
            Ok(()) => backoff = Duration::from_millis(250),
            Err(reason) => {
                tracing::warn!(reason, retry_in_ms = backoff.as_millis() as u64, "following records events paused");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn follow_once(scheduling: &Scheduling, shutdown: &CancellationToken) -> Result<(), String> {
    let cursor = store::stream_cursor(&scheduling.pool, crate::RECORDS_STREAM).await.map_err(reason)?.unwrap_or_default();
    let mut stream = scheduling.patients.watch(cursor).await.map_err(|s| format!("records stream refused: {:?}", s.code()))?;
    let mut unsaved: Option<String> = None;
    let mut passed = 0u32;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => None,
            next = tokio::time::timeout(Duration::from_secs(1), stream.next()) => Some(next),
        };
        let message = match next {
            None => break,
            // Quiet: keep the position reached so far.
            Some(Err(_elapsed)) => {
                if let Some(cursor) = unsaved.take() {
                    store::save_stream_cursor(&scheduling.pool, crate::RECORDS_STREAM, &cursor).await.map_err(reason)?;
                }
                continue;
            }
            Some(Ok(None)) => return Err("records stream ended".into()),
            Some(Ok(Some(Err(status)))) => return Err(format!("records stream failed: {:?}", status.code())),
            Some(Ok(Some(Ok(message)))) => message,
        };
        let cursor = message.envelope.map(|e| e.cursor).unwrap_or_default();
        match message.event {
            Some(Event::PatientMerged(merged)) => {
                let merge = merged.merge.unwrap_or_default();
                let (Some(id), Some(merged_id), Some(survivor)) = (uuid(&merge.id), uuid(&merge.merged_id), uuid(&merge.survivor_id))
                else {
                    return Err("malformed merge event".into());
                };
                scheduling.apply_merge(id, merged_id, survivor, &cursor).await.map_err(reason)?;
                unsaved = None;
            }
            Some(Event::PatientUnmerged(unmerged)) => {
                let Some(id) = uuid(&unmerged.merge.unwrap_or_default().id) else { return Err("malformed unmerge event".into()) };
                scheduling.apply_unmerge(id, &cursor).await.map_err(reason)?;
                unsaved = None;
            }
            _ => {
                unsaved = Some(cursor);
                passed += 1;
                if passed >= SAVE_EVERY {
                    passed = 0;
                    if let Some(cursor) = unsaved.take() {
                        store::save_stream_cursor(&scheduling.pool, crate::RECORDS_STREAM, &cursor).await.map_err(reason)?;
                    }
                }
            }
        }
    }
    if let Some(cursor) = unsaved {
        store::save_stream_cursor(&scheduling.pool, crate::RECORDS_STREAM, &cursor).await.map_err(reason)?;
    }
    Ok(())
}

fn uuid(value: &str) -> Option<Uuid> {
    Uuid::parse_str(value).ok()
}

fn reason(error: crate::error::SchedulingError) -> String {
    pac_platform::ApiError::from(error).reason.to_string()
}
