//! Following the records service's event stream: merges re-point appointments and waitlist entries
//! to the surviving record, unmerges move them back (see `pac_platform::follow` for the cursor).

use pac_platform::follow::{self, Follower};
use pac_platform::merges::{self, MergeChange};
use pac_proto::records::WatchEventsResponse;

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
        match merges::merge_change(&message)? {
            Some(MergeChange::Merged { merge_id, merged, survivor }) => {
                self.0.apply_merge(merge_id, merged, survivor, cursor).await.map_err(reason)?
            }
            Some(MergeChange::Unmerged { merge_id }) => self.0.apply_unmerge(merge_id, cursor).await.map_err(reason)?,
            None => return Ok(false),
        }
        Ok(true)
    }
}

fn reason(error: crate::error::SchedulingError) -> String {
    pac_platform::ApiError::from(error).reason.to_string()
}
