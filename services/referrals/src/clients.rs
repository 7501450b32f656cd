//! The other services, as referrals sees them: records ("who is this patient, as eligibility needs
//! them?", and the merges to follow) and scheduling (cancelling a cancelled referral's appointment,
//! and the appointment events to follow).

use std::time::Duration;

use chrono::NaiveDate;
use pac_platform::balance::Balanced;
use pac_platform::caller::PERMISSION_RESTRICTED_READ;
use pac_platform::client::ServiceIdentity;
use pac_platform::config::Secret;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use pac_proto::{records as records_pb, scheduling as scheduling_pb};
use tonic::Code;
use uuid::Uuid;

use crate::domain::eligibility::Sex;
use crate::error::ReferralsError;

pub const SUBJECT: &str = "pac-referrals";

/// What eligibility needs to know of a patient.
#[derive(Debug, Clone)]
pub struct PatientFacts {
    /// The current record (the survivor, if the id asked for was merged away).
    pub id: Uuid,
    pub birth_date: NaiveDate,
    pub sex: Sex,
    /// Postcode district (outward code), when an address is recorded.
    pub district: Option<String>,
    /// The organisation that registered the patient ('' for none).
    pub organisation: String,
}

#[derive(Clone)]
pub struct Clients {
    records: PatientRecordsClient<Balanced>,
    scheduling: SchedulingClient<Balanced>,
    identity: ServiceIdentity,
    timeout: Duration,
}

impl Clients {
    /// Clients for the records and scheduling services (connected on first use). Referrals reads
    /// restricted records' postcodes for catchment checks; it never returns them.
    pub fn new(records_url: &str, scheduling_url: &str, internal_key: &Secret, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            records: PatientRecordsClient::new(Balanced::new(records_url, 1)?),
            scheduling: SchedulingClient::new(Balanced::new(scheduling_url, 1)?),
            identity: ServiceIdentity::new(internal_key, SUBJECT, &[PERMISSION_RESTRICTED_READ]),
            timeout,
        })
    }

    pub fn actor(&self) -> &pac_platform::Actor {
        self.identity.actor()
    }

    pub async fn patient(&self, id: Uuid) -> Result<PatientFacts, ReferralsError> {
        let request = self.identity.request(records_pb::GetPatientRequest { id: id.to_string() }, Some(self.timeout));
        let patient = match self.records.clone().get_patient(request).await {
            Ok(response) => response.into_inner().patient.ok_or(ReferralsError::RecordsUnavailable)?,
            Err(status) if status.code() == Code::NotFound => return Err(ReferralsError::PatientNotFound(id)),
            Err(status) => {
                tracing::warn!(code = ?status.code(), "patient look-up with the records service failed");
                return Err(ReferralsError::RecordsUnavailable);
            }
        };
        let birth = patient.birth_date.unwrap_or_default();
        let birth_date =
            NaiveDate::from_ymd_opt(birth.year, birth.month as u32, birth.day as u32).ok_or(ReferralsError::RecordsUnavailable)?;
        let district = patient.address.and_then(|a| a.postcode.split_whitespace().next().map(str::to_uppercase)).filter(|d| !d.is_empty());
        Ok(PatientFacts {
            id: Uuid::parse_str(&patient.id).map_err(|_| ReferralsError::RecordsUnavailable)?,
            birth_date,
            sex: Sex::from_value(patient.sex).unwrap_or(Sex::Unknown),
            district,
            organisation: patient.organisation,
        })
    }

    pub async fn watch_records(&self, cursor: String) -> Result<tonic::Streaming<records_pb::WatchEventsResponse>, tonic::Status> {
        let request = self.identity.request(records_pb::WatchEventsRequest { after_cursor: cursor }, None);
        Ok(self.records.clone().watch_events(request).await?.into_inner())
    }

    pub async fn watch_scheduling(&self, cursor: String) -> Result<tonic::Streaming<scheduling_pb::WatchEventsResponse>, tonic::Status> {
        let request = self.identity.request(scheduling_pb::WatchEventsRequest { after_cursor: cursor }, None);
        Ok(self.scheduling.clone().watch_events(request).await?.into_inner())
    }

    /// Cancels an appointment its referral no longer needs (`reason_code` says why); idempotent
    /// on `request_id`. An appointment already over or cancelled is left as it is.
    pub async fn cancel_appointment(&self, appointment_id: Uuid, reason_code: &str, request_id: String) -> Result<(), ReferralsError> {
        let request = self.identity.request(
            scheduling_pb::CancelAppointmentRequest {
                appointment_id: appointment_id.to_string(),
                reason_code: reason_code.into(),
                cancelled_by: scheduling_pb::CancelledBy::Provider as i32,
                etag: String::new(),
                request_id,
            },
            Some(self.timeout),
        );
        match self.scheduling.clone().cancel_appointment(request).await {
            Ok(_) => Ok(()),
            Err(status) if matches!(status.code(), Code::FailedPrecondition | Code::NotFound) => {
                tracing::info!(appointment_id = %appointment_id, code = ?status.code(), "appointment not cancelled with its referral");
                Ok(())
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), "cancelling an appointment with the scheduling service failed");
                Err(ReferralsError::SchedulingUnavailable)
            }
        }
    }
}

/// Why referrals cancels an appointment: its referral was cancelled, its referral was closed
/// (treated, discharged, died) or booked again, or it was booked for a referral already closed.
pub const REFERRAL_CANCELLED: &str = "REFERRAL_CANCELLED";
pub const REFERRAL_CLOSED: &str = "REFERRAL_CLOSED";
pub const SUPERSEDED: &str = "SUPERSEDED_BY_NEW_BOOKING";
