//! Following the records service's event stream: merges re-point appointments and waitlist entries
//! to the surviving record, unmerges move them back (see `pac_platform::follow` for the cursor).

use pac_platform::follow::{self, Follower};
use pac_proto::records::WatchEventsResponse;
use pac_proto::records::watch_events_response::Event;
use uuid::Uuid;

use crate::scheduling::Scheduling;

pub struct RecordsMerges(pub Scheduling);

impl Follower for RecordsMerges {
    type Message = WatchEventsResponse;

    fn stream(&self) -> &'static str {
        crate::RECORDS_STREAM
    }

    async fn saved_cursor(&self) -> Result<Option<String>, String> {
        follow::stream_cursor(&self.0.pool, crate::RECORDS_STREAM).await.map_err(|e| reason(e.into()))
    }

    async fn save_cursor(&self, cursor: &str) -> Result<(), String> {
        follow::save_stream_cursor(&self.0.pool, crate::RECORDS_STREAM, cursor).await.map_err(|e| reason(e.into()))
    }

    async fn open(&self, cursor: String) -> Result<tonic::Streaming<WatchEventsResponse>, tonic::Status> {
        self.0.patients.watch(cursor).await
    }

    fn cursor_of(message: &WatchEventsResponse) -> String {
        message.envelope.as_ref().map(|e| e.cursor.clone()).unwrap_or_default()
    }

    async fn apply(&self, message: WatchEventsResponse, cursor: &str) -> Result<bool, String> {
        match message.event {
            Some(Event::PatientMerged(merged)) => {
                let merge = merged.merge.unwrap_or_default();
                let (Some(id), Some(merged_id), Some(survivor)) = (uuid(&merge.id), uuid(&merge.merged_id), uuid(&merge.survivor_id))
                else {
                    return Err("malformed merge event".into());
                };
                self.0.apply_merge(id, merged_id, survivor, cursor).await.map_err(reason)?;
                Ok(true)
            }
            Some(Event::PatientUnmerged(unmerged)) => {
                let Some(id) = uuid(&unmerged.merge.unwrap_or_default().id) else { return Err("malformed unmerge event".into()) };
                self.0.apply_unmerge(id, cursor).await.map_err(reason)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

fn uuid(value: &str) -> Option<Uuid> {
    Uuid::parse_str(value).ok()
}

fn reason(error: crate::error::SchedulingError) -> String {
    pac_platform::ApiError::from(error).reason.to_string()
}
