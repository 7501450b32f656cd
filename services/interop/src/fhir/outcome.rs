//! FHIR errors: an OperationOutcome, its HTTP status from the gRPC code the gateway answered, its
//! issue code, and the platform's reason. Never a stack trace or SQL text: the text is the
//! gateway's answer to the caller, which never carries either.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;
use tonic_types::StatusExt;

use super::json;

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcome {
    resource_type: &'static str,
    issue: Vec<Issue>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Issue {
    severity: &'static str,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    diagnostics: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    expression: Vec<String>,
}

#[derive(Serialize, Debug)]
struct Details {
    text: String,
}

/// A FHIR error: the HTTP status and its OperationOutcome.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    outcome: OperationOutcome,
}

impl Failure {
    /// A request this API refuses before calling anything (an unsupported parameter, a bad id).
    pub fn invalid(diagnostics: impl Into<String>, expression: Option<&str>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", diagnostics.into(), None, expression.map(str::to_string).into_iter().collect())
    }

    pub fn not_supported(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "not-supported", diagnostics.into(), None, Vec::new())
    }

    /// A request that is well formed but cannot be carried out as asked (422).
    pub fn unprocessable(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "processing", diagnostics.into(), None, Vec::new())
    }

    /// `If-Match` named a version that is no longer the current one (412).
    pub fn stale() -> Self {
        let text = "the resource has changed since that version (If-Match): read it again".to_string();
        Self::new(StatusCode::PRECONDITION_FAILED, "conflict", text, None, vec!["If-Match".to_string()])
    }

    /// A condition (`If-None-Exist`) that matches more than one resource (412).
    pub fn precondition(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, "multiple-matches", diagnostics.into(), None, Vec::new())
    }

    /// A method this resource does not take (405), e.g. `DELETE Patient/{id}`.
    pub fn method_not_allowed() -> Self {
        let text = "this resource does not take that method (see GET /fhir/R4/metadata)".to_string();
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", text, None, Vec::new())
    }

    /// A body of a kind this interaction does not take (415).
    pub fn unsupported_media(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported", diagnostics.into(), None, Vec::new())
    }

    fn new(status: StatusCode, code: &'static str, diagnostics: String, reason: Option<String>, expression: Vec<String>) -> Self {
        let issue = Issue { severity: "error", code, details: reason.map(|text| Details { text }), diagnostics, expression };
        Self { status, outcome: OperationOutcome { resource_type: "OperationOutcome", issue: vec![issue] } }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let reason = status.get_details_error_info().map(|info| info.reason);
        let fields: Vec<String> =
            status.get_details_bad_request().map(|b| b.field_violations.into_iter().map(|v| v.field).collect()).unwrap_or_default();
        let (http, code) = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "invalid"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "login"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden"),
            Code::NotFound => (StatusCode::NOT_FOUND, "not-found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "duplicate"),
            Code::Aborted => (StatusCode::PRECONDITION_FAILED, "conflict"),
            // A slot someone else took: a conflict the caller resolves by choosing another.
            Code::FailedPrecondition if reason.as_deref() == Some("SLOT_UNAVAILABLE") => (StatusCode::CONFLICT, "conflict"),
            Code::FailedPrecondition => (StatusCode::UNPROCESSABLE_ENTITY, "business-rule"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "transient"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "exception"),
        };
        let diagnostics = match status.code() {
            // The platform's own words for a caller's mistake; a failure of ours is not described.
            Code::Internal | Code::Unknown | Code::DataLoss => "the platform could not answer".to_string(),
            Code::FailedPrecondition if reason.as_deref() == Some("SLOT_UNAVAILABLE") => {
                "That slot is no longer free: someone else has just booked it. Choose another slot.".to_string()
            }
            _ => status.message().to_string(),
        };
        Self::new(http, code, diagnostics, reason, fields)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        json(self.status, &self.outcome)
    }
}
