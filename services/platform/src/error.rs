//! The one error type every service maps its own error enum into, and its mapping to `tonic::Status`
//! with google.rpc rich details (BadRequest field violations, ErrorInfo with a stable reason,
//! PreconditionFailure, ResourceInfo, RetryInfo).
//!
//! Rules kept here so no service can break them:
//! - a caller's mistake is never `INTERNAL`;
//! - database error text never reaches a caller, and is logged only as SQLSTATE, constraint and table
//!   (Postgres error messages and details can quote the values that were written, i.e. patient data).

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` for every error the platform returns.
pub const ERROR_DOMAIN: &str = "pac.nhs.uk";

/// A field violation: which request field is wrong and why, in words a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
    /// Stable machine-readable reason, e.g. `NHS_NUMBER_INVALID`.
    pub reason: &'static str,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, reason: &'static str, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into(), reason }
    }
}

/// An error on its way to a caller.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    /// Stable machine-readable reason (ErrorInfo.reason).
    pub reason: &'static str,
    pub message: String,
    pub field_violations: Vec<FieldViolation>,
    /// (type, subject, description) triples for PreconditionFailure.
    pub precondition_violations: Vec<(String, String, String)>,
    /// (resource type, resource name, description) for ResourceInfo.
    pub resource: Option<(String, String, String)>,
    pub metadata: HashMap<String, String>,
    pub retry_after: Option<Duration>,
    /// The underlying failure of an INTERNAL or UNAVAILABLE error; logged, never sent.
    pub source: Option<anyhow::Error>,
    /// `ErrorInfo.domain`: [`ERROR_DOMAIN`] but for the gateway's own refusals.
    pub domain: &'static str,
}

impl ApiError {
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            field_violations: Vec::new(),
            precondition_violations: Vec::new(),
            resource: None,
            metadata: HashMap::new(),
            retry_after: None,
            source: None,
            domain: ERROR_DOMAIN,
        }
    }

    /// INVALID_ARGUMENT from one or more field violations; the reason is the first violation's.
    pub fn invalid(violations: Vec<FieldViolation>) -> Self {
        let reason = violations.first().map(|v| v.reason).unwrap_or("INVALID_ARGUMENT");
        let message = match violations.as_slice() {
            [one] => format!("{}: {}", one.field, one.description),
            many => format!("{} invalid fields; see the field violations", many.len()),
        };
        Self { field_violations: violations, ..Self::new(Code::InvalidArgument, reason, message) }
    }

    /// INVALID_ARGUMENT for a single field.
    pub fn invalid_field(field: impl Into<String>, reason: &'static str, description: impl Into<String>) -> Self {
        Self::invalid(vec![FieldViolation::new(field, reason, description)])
    }

    pub fn not_found(resource_type: &str, name: impl Into<String>) -> Self {
        let name = name.into();
        Self::new(Code::NotFound, "NOT_FOUND", format!("{resource_type} {name} not found")).with_resource(
            resource_type,
            name,
            "no such resource",
        )
    }

    pub fn failed_precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, reason, message)
    }

    pub fn aborted(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Aborted, reason, message)
    }

    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, reason, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, "UNAUTHENTICATED", message)
    }

    pub fn permission_denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, reason, message)
    }

    /// A failure that is ours, not the caller's. The source is logged; the caller sees a generic message.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        Self { source: Some(source.into()), ..Self::new(Code::Internal, "INTERNAL", "internal error") }
    }

    pub fn with_resource(mut self, resource_type: &str, name: impl Into<String>, description: impl Into<String>) -> Self {
        self.resource = Some((resource_type.to_string(), name.into(), description.into()));
        self
    }

    pub fn with_precondition(mut self, kind: impl Into<String>, subject: impl Into<String>, description: impl Into<String>) -> Self {
        self.precondition_violations.push((kind.into(), subject.into(), description.into()));
        self
    }

    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    pub fn with_domain(mut self, domain: &'static str) -> Self {
        self.domain = domain;
        self
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        if let Some(source) = &error.source {
            // `{:#}` prints the context chain; sqlx errors are converted to safe text before they get here.
            tracing::error!(code = ?error.code, reason = error.reason, error = format!("{source:#}"), "request failed");
        }
        let mut details = ErrorDetails::new();
        details.set_error_info(error.reason, error.domain, error.metadata);
        if !error.field_violations.is_empty() {
            // Each violation carries its own stable reason, as well as the words.
            let violations = error.field_violations.iter().map(|v| tonic_types::FieldViolation {
                field: v.field.clone(),
                description: v.description.clone(),
                reason: v.reason.to_string(),
                localized_message: None,
            });
            details.set_bad_request(violations.collect::<Vec<_>>());
        }
        for (kind, subject, description) in error.precondition_violations {
            details.add_precondition_failure_violation(kind, subject, description);
        }
        if let Some((resource_type, name, description)) = error.resource {
            details.set_resource_info(resource_type, name, "", description);
        }
        if let Some(delay) = error.retry_after {
            details.set_retry_info(Some(delay));
        }
        Status::with_error_details(error.code, error.message, details)
    }
}

/// Maps a database failure that no caller caused. Serialization failures and deadlocks are ABORTED
/// (retry the whole request); timeouts and lost connections UNAVAILABLE; the rest INTERNAL.
impl From<FieldViolation> for ApiError {
    fn from(violation: FieldViolation) -> Self {
        Self::invalid(vec![violation])
    }
}

/// A single field's violation answers INVALID_ARGUMENT, so a handler can `?` a parse.
impl From<FieldViolation> for Status {
    fn from(violation: FieldViolation) -> Self {
        ApiError::from(violation).into()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        let safe = safe_description(&error);
        match &error {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("40001") | Some("40P01") => {
                    ApiError::aborted("CONCURRENT_UPDATE", "the change conflicted with a concurrent one; retry")
                }
                Some("57014") => ApiError {
                    source: Some(anyhow::anyhow!(safe)),
                    ..ApiError::unavailable("DATABASE_TIMEOUT", "the database did not answer in time; retry")
                },
                // Connection, operator intervention, resources, missing database, authentication:
                // the database cannot serve us right now; nothing the caller did.
                Some(code) if ["08", "57P", "53", "3D", "28"].iter().any(|class| code.starts_with(class)) => ApiError {
                    source: Some(anyhow::anyhow!(safe)),
                    ..ApiError::unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry")
                },
                _ => ApiError::internal(anyhow::anyhow!(safe)),
            },
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => ApiError {
                source: Some(anyhow::anyhow!(safe)),
                ..ApiError::unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry")
                    .with_retry_after(Duration::from_secs(1))
            },
            _ => ApiError::internal(anyhow::anyhow!(safe)),
        }
    }
}

/// A description of a database error that is safe to log: SQLSTATE, constraint and table for server
/// errors (never the message or detail, which may quote row values), the error kind otherwise.
pub fn safe_description(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => format!(
            "database error sqlstate={} constraint={} table={}",
            db.code().as_deref().unwrap_or("-"),
            db.constraint().unwrap_or("-"),
            db.table().unwrap_or("-"),
        ),
        sqlx::Error::Io(io) => format!("database i/o error: {}", io.kind()),
        sqlx::Error::PoolTimedOut => "database pool timed out".into(),
        sqlx::Error::PoolClosed => "database pool closed".into(),
        sqlx::Error::RowNotFound => "row not found".into(),
        sqlx::Error::ColumnNotFound(column) => format!("column not found: {column}"),
        sqlx::Error::ColumnDecode { index, .. } => format!("column decode failed: {index}"),
        sqlx::Error::Protocol(_) => "database protocol error".into(),
        sqlx::Error::Tls(_) => "database tls error".into(),
        other => format!("database error: {}", std::any::type_name_of_val(other)),
    }
}

/// The kind and constraint name of a constraint violation, for stores that turn them into domain errors.
pub fn violated_constraint(error: &sqlx::Error) -> Option<(sqlx::error::ErrorKind, &str)> {
    match error {
        sqlx::Error::Database(db) => Some((db.kind(), db.constraint().unwrap_or(""))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_reason_and_violations() {
        let status: Status = ApiError::invalid_field("patient.nhs_number", "NHS_NUMBER_INVALID", "check digit is wrong").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "NHS_NUMBER_INVALID");
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "patient.nhs_number");
    }

    #[test]
    fn internal_error_hides_its_source() {
        let status: Status = ApiError::internal(anyhow::anyhow!("secret detail 9434765919")).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("9434765919"));
    }
}
