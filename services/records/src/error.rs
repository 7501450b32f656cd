//! The records service's errors, and their one mapping to gRPC status with rich details.

use pac_platform::error::{ApiError, FieldViolation};
use tonic::{Code, Status};
use uuid::Uuid;

use crate::domain::matching::Grade;

const PATIENT: &str = "pac.records.v1.Patient";

#[derive(Debug)]
pub enum RecordsError {
    Invalid(Vec<FieldViolation>),
    NotFound(Uuid),
    IdentifierNotFound,
    /// The NHS number is on file in the organisation's records: `existing` names the record when
    /// the caller may see it.
    NhsNumberExists {
        existing: Option<Uuid>,
    },
    LocalIdentifierExists {
        issuer: String,
        existing: Option<Uuid>,
    },
    PossibleDuplicate(Vec<(Uuid, f64, Grade)>),
    /// The record was merged away; changes go to the survivor.
    Merged {
        id: Uuid,
        survivor: Uuid,
    },
    VersionMismatch {
        current_etag: String,
    },
    AlreadyMerged {
        id: Uuid,
        survivor: Uuid,
    },
    NotMerged(Uuid),
    SameRecord,
    /// The caller may not see (so may not change) a restricted record's contact details.
    RestrictedContact,
    /// A concurrent change got there first; retrying will give a definite answer.
    Conflict,
    Platform(ApiError),
}

impl From<sqlx::Error> for RecordsError {
    fn from(error: sqlx::Error) -> Self {
        Self::Platform(error.into())
    }
}

impl From<ApiError> for RecordsError {
    fn from(error: ApiError) -> Self {
        Self::Platform(error)
    }
}

impl From<RecordsError> for ApiError {
    fn from(error: RecordsError) -> ApiError {
        use RecordsError::*;
        match error {
            Invalid(violations) => ApiError::invalid(violations),
            NotFound(id) => ApiError::not_found(PATIENT, id.to_string()),
            IdentifierNotFound => ApiError::new(Code::NotFound, "NOT_FOUND", "no patient has that identifier"),
            NhsNumberExists { existing: Some(existing) } => ApiError::new(
                Code::AlreadyExists,
                "NHS_NUMBER_EXISTS",
                format!("a patient with this NHS number already exists: {existing}"),
            )
            .with_resource(PATIENT, existing.to_string(), "the existing record with this NHS number")
            .with_metadata("existing_patient_id", existing.to_string()),
            NhsNumberExists { existing: None } => {
                ApiError::new(Code::AlreadyExists, "NHS_NUMBER_EXISTS", "a patient with this NHS number is already registered")
            }
            LocalIdentifierExists { issuer, existing: Some(existing) } => ApiError::new(
                Code::AlreadyExists,
                "LOCAL_IDENTIFIER_EXISTS",
                format!("identifier issued by {issuer} already belongs to patient {existing}"),
            )
            .with_resource(PATIENT, existing.to_string(), "the record holding this identifier")
            .with_metadata("existing_patient_id", existing.to_string()),
            LocalIdentifierExists { issuer, existing: None } => ApiError::new(
                Code::AlreadyExists,
                "LOCAL_IDENTIFIER_EXISTS",
                format!("identifier issued by {issuer} already belongs to another patient"),
            ),
            PossibleDuplicate(candidates) => {
                let ids: Vec<String> = candidates.iter().map(|(id, _, _)| id.to_string()).collect();
                let mut error = ApiError::failed_precondition(
                    "POSSIBLE_DUPLICATE",
                    format!(
                        "{} existing record(s) may be this patient; check them, or register anyway with allow_possible_duplicate",
                        candidates.len()
                    ),
                )
                .with_metadata("candidate_ids", ids.join(","));
                for (id, score, grade) in candidates {
                    let grade = match grade {
                        Grade::Match => "MATCH",
                        Grade::PossibleMatch => "POSSIBLE_MATCH",
                    };
                    error = error.with_precondition(grade, id.to_string(), format!("score {score:.2}"));
                }
                error
            }
            Merged { id, survivor } => ApiError::failed_precondition(
                "PATIENT_MERGED",
                format!("patient {id} was merged into {survivor}; use the surviving record"),
            )
            .with_precondition("PATIENT_MERGED", id.to_string(), format!("merged into {survivor}"))
            .with_metadata("survivor_id", survivor.to_string()),
            VersionMismatch { current_etag } => {
                ApiError::aborted("VERSION_MISMATCH", "the patient changed since it was read; read it again and reapply the change")
                    .with_metadata("current_etag", current_etag)
            }
            AlreadyMerged { id, survivor } => {
                ApiError::failed_precondition("ALREADY_MERGED", format!("patient {id} is already merged into {survivor}"))
                    .with_precondition("ALREADY_MERGED", id.to_string(), format!("merged into {survivor}"))
                    .with_metadata("survivor_id", survivor.to_string())
            }
            NotMerged(id) => ApiError::failed_precondition("NOT_MERGED", format!("patient {id} is not merged")).with_precondition(
                "NOT_MERGED",
                id.to_string(),
                "only a merged-away record can be unmerged",
            ),
            SameRecord => ApiError::invalid_field("merged_id", "SAME_RECORD", "must differ from survivor_id"),
            RestrictedContact => ApiError::permission_denied(
                "RESTRICTED_RECORD",
                "this is a restricted record: changing its contact details or restriction needs the patient.restricted.read permission",
            ),
            Conflict => ApiError::aborted("CONCURRENT_UPDATE", "a concurrent change conflicted with this one; retry"),
            Platform(error) => error,
        }
    }
}

impl From<RecordsError> for Status {
    fn from(error: RecordsError) -> Status {
        ApiError::from(error).into()
    }
}
