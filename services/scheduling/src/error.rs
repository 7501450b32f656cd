//! The scheduling service's errors, and their one mapping to gRPC status with rich details.

use pac_platform::error::{ApiError, FieldViolation};
use pac_platform::links::{self, Mismatch};
use tonic::{Code, Status};
use uuid::Uuid;

use crate::domain::appointment::{Status as AppointmentStatus, TransitionError};

#[derive(Debug)]
pub enum SchedulingError {
    Invalid(Vec<FieldViolation>),
    NotFound {
        resource: &'static str,
        id: Uuid,
    },
    /// The slot is full, withdrawn, or its start has passed.
    SlotUnavailable {
        slot_id: Uuid,
        why: &'static str,
    },
    /// The patient already has a live appointment at an overlapping time.
    PatientDoubleBooked,
    PatientNotFound(Uuid),
    InvalidTransition(TransitionError),
    HoldExpired(Uuid),
    VersionMismatch {
        current_etag: String,
    },
    OfferClosed {
        offer_id: Uuid,
        outcome: String,
    },
    WaitlistEntryExists {
        existing: Uuid,
    },
    /// A clinic (or what belongs to it) of an organisation outside the caller's scope.
    OtherOrganisation {
        resource: &'static str,
        id: Uuid,
    },
    /// The caller already holds as many live holds as a caller may.
    TooManyHolds {
        limit: u32,
    },
    /// The records service did not answer.
    RecordsUnavailable,
    /// The named referral is unknown, or of an organisation outside the caller's scope.
    ReferralNotFound(Uuid),
    /// The named referral does not fit: another patient's, or another service's (see `pac_platform::links`).
    ReferralMismatch {
        referral_id: Uuid,
        mismatch: Mismatch,
    },
    /// The named referral is not awaiting booking (nor booked).
    ReferralNotBookable {
        referral_id: Uuid,
        status: String,
    },
    /// The referrals service did not answer.
    ReferralsUnavailable,
    /// A concurrent change got there first; retrying will give a definite answer.
    Conflict,
    Platform(ApiError),
}

impl From<sqlx::Error> for SchedulingError {
    fn from(error: sqlx::Error) -> Self {
        Self::Platform(error.into())
    }
}

impl From<ApiError> for SchedulingError {
    fn from(error: ApiError) -> Self {
        Self::Platform(error)
    }
}

impl SchedulingError {
    pub fn invalid(field: &str, reason: &'static str, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, reason, description)])
    }
}

fn status_name(status: AppointmentStatus) -> &'static str {
    status.code()
}

impl From<SchedulingError> for ApiError {
    fn from(error: SchedulingError) -> ApiError {
        use SchedulingError::*;
        match error {
            Invalid(violations) => ApiError::invalid(violations),
            NotFound { resource, id } => ApiError::not_found(resource, id.to_string()),
            SlotUnavailable { slot_id, why } => ApiError::failed_precondition("SLOT_UNAVAILABLE", format!("slot {slot_id} {why}"))
                .with_precondition("SLOT_UNAVAILABLE", slot_id.to_string(), why)
                .with_metadata("slot_id", slot_id.to_string()),
            PatientDoubleBooked => {
                ApiError::failed_precondition("PATIENT_DOUBLE_BOOKED", "the patient already has an appointment at an overlapping time")
                    .with_precondition("PATIENT_DOUBLE_BOOKED", "patient_id", "a patient cannot be in two appointments at once")
            }
            PatientNotFound(id) => ApiError::failed_precondition("PATIENT_NOT_FOUND", format!("no patient record {id}")).with_precondition(
                "PATIENT_NOT_FOUND",
                id.to_string(),
                "register the patient first",
            ),
            InvalidTransition(transition) => {
                let message = match transition {
                    TransitionError::NotAllowed { from, to } => {
                        format!("an appointment that is {} cannot become {}", status_name(from), status_name(to))
                    }
                    TransitionError::NoshowBeforeStart => "a no-show can be recorded only after the appointment's start".into(),
                    TransitionError::CorrectionNeedsReason => {
                        "changing a finished appointment is a correction and needs correction_reason".into()
                    }
                };
                ApiError::failed_precondition("INVALID_TRANSITION", message.clone()).with_precondition(
                    "INVALID_TRANSITION",
                    "status",
                    message,
                )
            }
            HoldExpired(id) => {
                ApiError::failed_precondition("HOLD_EXPIRED", format!("the hold {id} has expired; hold or book the slot again"))
                    .with_precondition("HOLD_EXPIRED", id.to_string(), "the hold lapsed")
            }
            VersionMismatch { current_etag } => {
                ApiError::aborted("VERSION_MISMATCH", "the appointment changed since it was read; read it again and reapply the change")
                    .with_metadata("current_etag", current_etag)
            }
            OfferClosed { offer_id, outcome } => {
                ApiError::failed_precondition("OFFER_CLOSED", format!("offer {offer_id} is no longer open (it was {outcome})"))
                    .with_precondition("OFFER_CLOSED", offer_id.to_string(), format!("outcome: {outcome}"))
            }
            WaitlistEntryExists { existing } => ApiError::new(
                Code::AlreadyExists,
                "WAITLIST_ENTRY_EXISTS",
                format!("the patient is already waiting for this clinic or service: entry {existing}"),
            )
            .with_resource("pac.scheduling.v1.WaitlistEntry", existing.to_string(), "the open entry")
            .with_metadata("existing_entry_id", existing.to_string()),
            OtherOrganisation { resource, id } => ApiError::permission_denied(
                pac_platform::caller::OTHER_ORGANISATION,
                "the clinic belongs to an organisation the caller does not act for",
            )
            .with_resource(resource, id.to_string(), "a clinic of another organisation"),
            TooManyHolds { limit } => ApiError::new(
                Code::ResourceExhausted,
                "TOO_MANY_HOLDS",
                format!("a caller may hold at most {limit} slots at once; book or release a hold first"),
            )
            .with_metadata("max_holds_per_caller", limit.to_string()),
            RecordsUnavailable => ApiError::unavailable("RECORDS_UNAVAILABLE", "the patient records service did not answer; retry")
                .with_retry_after(std::time::Duration::from_secs(1)),
            ReferralNotFound(id) => ApiError::failed_precondition(links::REFERRAL_NOT_FOUND, format!("no referral {id}"))
                .with_precondition(links::REFERRAL_NOT_FOUND, id.to_string(), "name a referral of an organisation the caller acts for")
                .with_metadata("referral_id", id.to_string()),
            ReferralMismatch { referral_id, mismatch } => {
                let (message, description) = match mismatch {
                    Mismatch::Patient => ("the referral is another patient's", "the referral must be the same patient's"),
                    Mismatch::Service => (
                        "the referral is for another service than the slot's clinic",
                        "the slot must be of a clinic of the referral's service and organisation",
                    ),
                };
                ApiError::failed_precondition(mismatch.reason(), format!("referral {referral_id}: {message}"))
                    .with_precondition(mismatch.reason(), referral_id.to_string(), description)
                    .with_metadata("referral_id", referral_id.to_string())
            }
            ReferralNotBookable { referral_id, status } => ApiError::failed_precondition(
                links::REFERRAL_NOT_BOOKABLE,
                format!("referral {referral_id} cannot be booked (status {status})"),
            )
            .with_precondition(links::REFERRAL_NOT_BOOKABLE, referral_id.to_string(), "the referral must be awaiting booking or booked")
            .with_metadata("referral_id", referral_id.to_string())
            .with_metadata("referral_status", status),
            ReferralsUnavailable => ApiError::unavailable("REFERRALS_UNAVAILABLE", "the referrals service did not answer; retry")
                .with_retry_after(std::time::Duration::from_secs(1)),
            Conflict => ApiError::aborted("CONCURRENT_UPDATE", "a concurrent change conflicted with this one; retry"),
            Platform(error) => error,
        }
    }
}

impl From<SchedulingError> for Status {
    fn from(error: SchedulingError) -> Status {
        ApiError::from(error).into()
    }
}
