//! The referrals service's errors, and their one mapping to gRPC status with rich details.

use pac_platform::error::{ApiError, FieldViolation};
use tonic::{Code, Status};
use uuid::Uuid;

use crate::domain::eligibility::Reason;
use crate::domain::referral::{Action, Status as ReferralStatus};
use crate::domain::rtt::ClockError;

#[derive(Debug)]
pub enum ReferralsError {
    Invalid(Vec<FieldViolation>),
    NotFound {
        resource: &'static str,
        id: String,
    },
    ServiceNotFound(String),
    ServiceExists(String),
    NotEligible(Vec<Reason>),
    PatientNotFound(Uuid),
    InvalidTransition {
        from: ReferralStatus,
        action: Action,
    },
    ClockRefused(ClockError),
    VersionMismatch {
        current_etag: String,
    },
    /// A service (or what belongs to it) of an organisation outside the caller's scope.
    OtherOrganisation {
        resource: &'static str,
        id: String,
    },
    /// The records service did not answer.
    RecordsUnavailable,
    /// The scheduling service did not answer.
    SchedulingUnavailable,
    Platform(ApiError),
}

impl From<sqlx::Error> for ReferralsError {
    fn from(error: sqlx::Error) -> Self {
        Self::Platform(error.into())
    }
}

impl From<ApiError> for ReferralsError {
    fn from(error: ApiError) -> Self {
        Self::Platform(error)
    }
}

impl ReferralsError {
    pub fn invalid(field: &str, reason: &'static str, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, reason, description)])
    }
}

fn status_words(status: ReferralStatus) -> &'static str {
    status.code()
}

fn action_words(action: Action) -> &'static str {
    match action {
        Action::Accept => "accepted",
        Action::Reject => "rejected",
        Action::ReturnToReferrer => "returned to the referrer",
        Action::Redirect => "redirected",
        Action::RequestInformation => "sent back for more information",
        Action::InformationReceived => "given the information asked for",
        Action::Cancel => "cancelled",
        Action::RecordClockEvent => "given a clock event",
    }
}

impl From<ReferralsError> for ApiError {
    fn from(error: ReferralsError) -> ApiError {
        use ReferralsError::*;
        match error {
            Invalid(violations) => ApiError::invalid(violations),
            NotFound { resource, id } => ApiError::not_found(resource, id),
            ServiceNotFound(code) => ApiError::failed_precondition("SERVICE_NOT_FOUND", format!("no service has the code {code}"))
                .with_precondition("SERVICE_NOT_FOUND", code, "create the service in the directory first"),
            ServiceExists(code) => ApiError::new(Code::AlreadyExists, "SERVICE_EXISTS", format!("a service with the code {code} exists"))
                .with_resource("pac.referrals.v1.Service", code, "the existing service"),
            NotEligible(reasons) => {
                let summary = reasons.iter().map(|r| r.message.as_str()).collect::<Vec<_>>().join("; ");
                let mut error = ApiError::failed_precondition("NOT_ELIGIBLE", format!("the referral does not fit the service: {summary}"));
                for reason in reasons {
                    error = error.with_precondition(reason.code, "eligibility", reason.message);
                }
                error
            }
            PatientNotFound(id) => ApiError::failed_precondition("PATIENT_NOT_FOUND", format!("no patient record {id}")).with_precondition(
                "PATIENT_NOT_FOUND",
                id.to_string(),
                "register the patient first",
            ),
            InvalidTransition { from, action } => {
                let message = format!("a referral that is {} cannot be {}", status_words(from), action_words(action));
                ApiError::failed_precondition("INVALID_TRANSITION", message.clone()).with_precondition(
                    "INVALID_TRANSITION",
                    "status",
                    message,
                )
            }
            ClockRefused(error) => {
                let (reason, message) = match error {
                    ClockError::BeforeStart => {
                        ("CLOCK_EVENT_BEFORE_START", "the event is dated before the clock's start or its last change")
                    }
                    ClockError::NotRunning => ("CLOCK_NOT_RUNNING", "the clock is not running; only a new clock can be started"),
                    ClockError::WrongCode => {
                        ("CLOCK_EVENT_NOT_APPLICABLE", "a running clock cannot be restarted; a stopped one only restarted")
                    }
                };
                ApiError::failed_precondition(reason, message).with_precondition(reason, "clock", message)
            }
            VersionMismatch { current_etag } => {
                ApiError::aborted("VERSION_MISMATCH", "the referral changed since it was read; read it again and reapply the change")
                    .with_metadata("current_etag", current_etag)
            }
            OtherOrganisation { resource, id } => ApiError::permission_denied(
                pac_platform::caller::OTHER_ORGANISATION,
                "the service belongs to an organisation the caller does not act for",
            )
            .with_resource(resource, id, "a service of another organisation"),
            RecordsUnavailable => ApiError::unavailable("RECORDS_UNAVAILABLE", "the patient records service did not answer; retry")
                .with_retry_after(std::time::Duration::from_secs(1)),
            SchedulingUnavailable => ApiError::unavailable("SCHEDULING_UNAVAILABLE", "the scheduling service did not answer; retry")
                .with_retry_after(std::time::Duration::from_secs(1)),
            Platform(error) => error,
        }
    }
}

impl From<ReferralsError> for Status {
    fn from(error: ReferralsError) -> Status {
        ApiError::from(error).into()
    }
}
