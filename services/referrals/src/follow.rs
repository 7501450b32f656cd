//! Following the scheduling service's appointment events (booked, cancelled, missed, attended) and
//! the records service's merges. Cursors live in `consumed_streams`, saved with each change.

use chrono::Utc;
use pac_platform::follow::{self, Follower};
use pac_platform::merges::{self, MergeChange};
use pac_proto::{records as records_pb, scheduling as scheduling_pb};
use uuid::Uuid;

use crate::referrals::{AppointmentChange, AppointmentChangeKind, Referrals, local_date};

pub const SCHEDULING_STREAM: &str = "scheduling";
pub const RECORDS_STREAM: &str = "records";

fn reason(error: crate::error::ReferralsError) -> String {
    pac_platform::ApiError::from(error).reason.to_string()
}

fn uuid(value: &str) -> Option<Uuid> {
    Uuid::parse_str(value).ok()
}

async fn saved(referrals: &Referrals, stream: &str) -> Result<Option<String>, String> {
    follow::stream_cursor(&referrals.pool, stream).await.map_err(|e| reason(e.into()))
}

async fn save(referrals: &Referrals, stream: &str, cursor: &str) -> Result<(), String> {
    follow::save_stream_cursor(&referrals.pool, stream, cursor).await.map_err(|e| reason(e.into()))
}

pub struct AppointmentEvents(pub Referrals);

impl Follower for AppointmentEvents {
    type Message = scheduling_pb::WatchEventsResponse;

    fn stream(&self) -> &'static str {
        SCHEDULING_STREAM
    }

    async fn saved_cursor(&self) -> Result<Option<String>, String> {
        saved(&self.0, SCHEDULING_STREAM).await
    }

    async fn save_cursor(&self, cursor: &str) -> Result<(), String> {
        save(&self.0, SCHEDULING_STREAM, cursor).await
    }

    async fn open(&self, cursor: String) -> Result<tonic::Streaming<Self::Message>, tonic::Status> {
        self.0.clients.watch_scheduling(cursor).await
    }

    fn cursor_of(message: &Self::Message) -> String {
        message.envelope.as_ref().map(|e| e.cursor.clone()).unwrap_or_default()
    }

    async fn apply(&self, message: Self::Message, cursor: &str) -> Result<bool, String> {
        let Some(change) = appointment_change(&message) else { return Ok(false) };
        self.0.apply_appointment(change, SCHEDULING_STREAM, cursor).await.map_err(reason)
    }
}

/// What an appointment event means for a referral, if anything.
fn appointment_change(message: &scheduling_pb::WatchEventsResponse) -> Option<AppointmentChange> {
    use scheduling_pb::watch_events_response::Event;
    let (event, kind) = match message.event.as_ref()? {
        Event::AppointmentBooked(e) => (e, AppointmentChangeKind::Booked),
        Event::AppointmentCancelled(e) => {
            let cancellation = e.appointment.as_ref()?.cancellation.clone().unwrap_or_default();
            let by_patient = cancellation.cancelled_by == scheduling_pb::CancelledBy::Patient as i32;
            (e, AppointmentChangeKind::Cancelled { by_patient })
        }
        Event::AppointmentStatusChanged(e) => {
            let status = scheduling_pb::AppointmentStatus::try_from(e.appointment.as_ref()?.status).ok()?;
            match status {
                scheduling_pb::AppointmentStatus::Noshow => (e, AppointmentChangeKind::DidNotAttend),
                scheduling_pb::AppointmentStatus::Fulfilled => (e, AppointmentChangeKind::Attended),
                scheduling_pb::AppointmentStatus::EnteredInError => (e, AppointmentChangeKind::Cancelled { by_patient: false }),
                _ => return None,
            }
        }
        _ => return None,
    };
    let appointment = event.appointment.as_ref()?;
    let on = match kind {
        // Attendance counts on the appointment's day; a booking on the day it was made.
        AppointmentChangeKind::DidNotAttend | AppointmentChangeKind::Attended => appointment.start_time.as_ref(),
        _ => message.envelope.as_ref().and_then(|e| e.occur_time.as_ref()),
    }
    .and_then(|t| chrono::DateTime::<Utc>::from_timestamp(t.seconds, 0))
    .unwrap_or_else(Utc::now);
    Some(AppointmentChange {
        appointment_id: uuid(&appointment.id)?,
        referral_id: uuid(&appointment.referral_id),
        patient_id: uuid(&appointment.patient_id)?,
        organisation: appointment.organisation.clone(),
        service_code: appointment.service_code.clone(),
        kind,
        on: local_date(on),
    })
}

pub struct PatientMerges(pub Referrals);

impl Follower for PatientMerges {
    type Message = records_pb::WatchEventsResponse;

    fn stream(&self) -> &'static str {
        RECORDS_STREAM
    }

    async fn saved_cursor(&self) -> Result<Option<String>, String> {
        saved(&self.0, RECORDS_STREAM).await
    }

    async fn save_cursor(&self, cursor: &str) -> Result<(), String> {
        save(&self.0, RECORDS_STREAM, cursor).await
    }

    async fn open(&self, cursor: String) -> Result<tonic::Streaming<Self::Message>, tonic::Status> {
        self.0.clients.watch_records(cursor).await
    }

    fn cursor_of(message: &Self::Message) -> String {
        message.envelope.as_ref().map(|e| e.cursor.clone()).unwrap_or_default()
    }

    async fn apply(&self, message: Self::Message, cursor: &str) -> Result<bool, String> {
        match merges::merge_change(&message)? {
            Some(MergeChange::Merged { merge_id, merged, survivor }) => {
                self.0.apply_merge(merge_id, merged, survivor, RECORDS_STREAM, cursor).await.map_err(reason)?
            }
            Some(MergeChange::Unmerged { merge_id }) => self.0.apply_unmerge(merge_id, RECORDS_STREAM, cursor).await.map_err(reason)?,
            None => return Ok(false),
        }
        Ok(true)
    }
}
