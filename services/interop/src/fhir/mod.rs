//! The FHIR R4 API at `/fhir/R4` (`application/fhir+json`): each request becomes gRPC calls to the
//! gateway with the caller's own bearer token (and request id), so authentication, the role table,
//! organisation scoping and the audit trail are the gateway's, as for any client. One module a
//! resource holds its mapping and its interactions (`rest` what they share); the JSON types are
//! serde structs for just what is served.
//!
//! Served: `metadata`; Patient read, search, create and contact-detail update; Schedule read and
//! search; Slot search; Appointment read, search, book and cancel; ServiceRequest read and search
//! (docs/fhir.md).

pub mod appointment;
pub mod outcome;
pub mod patient;
mod rest;
pub mod schedule;
pub mod service_request;
pub mod slot;

use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::gateway::{Call, Gateway};
use outcome::Failure;

/// The code system of the platform's service codes.
pub const SERVICE_SYSTEM: &str = "urn:pac:service-code";
/// The code system of the platform's cancellation reason codes.
pub const CANCELLATION_SYSTEM: &str = "urn:pac:cancellation-reason";
/// Who cancelled (`patient`, `provider`, `system`): it decides what happens to the waiting-time clock.
pub const CANCELLED_BY_SYSTEM: &str = "urn:pac:cancelled-by";

/// How long a FHIR request may take through the gateway.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Api {
    gateway: Gateway,
}

/// The routes under `/fhir/R4`.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/fhir/R4/metadata", get(metadata))
        .route("/fhir/R4/Patient/{id}", get(patient::read).put(patient::update).patch(patient::update))
        .route("/fhir/R4/Patient", get(patient::search).post(patient::create))
        .route("/fhir/R4/Schedule/{id}", get(schedule::read))
        .route("/fhir/R4/Schedule", get(schedule::search))
        .route("/fhir/R4/Slot", get(slot::search))
        .route("/fhir/R4/Appointment/{id}", get(appointment::read).put(appointment::update).patch(appointment::update))
        .route("/fhir/R4/Appointment", get(appointment::search).post(appointment::book))
        .route("/fhir/R4/ServiceRequest/{id}", get(service_request::read))
        .route("/fhir/R4/ServiceRequest", get(service_request::search))
        .fallback(|| async { Failure::not_supported("this FHIR interaction is not supported here (see GET /fhir/R4/metadata)") })
        .method_not_allowed_fallback(|| async { Failure::method_not_allowed() })
        .with_state(Api { gateway })
}

/// A FHIR JSON answer. FHIR has no empty values: nulls, empty strings, arrays and objects are left
/// out.
pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut value = serde_json::to_value(body).unwrap_or_default();
    prune(&mut value);
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"))], bytes).into_response()
}

/// `value` without its empty members, recursively.
pub(super) fn prune(value: &mut serde_json::Value) {
    use serde_json::Value;
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    match value {
        Value::Object(members) => {
            members.values_mut().for_each(prune);
            members.retain(|_, v| !empty(v));
        }
        Value::Array(items) => {
            items.iter_mut().for_each(prune);
            items.retain(|v| !empty(v));
        }
        _ => {}
    }
}

/// An instant as FHIR writes it.
pub(crate) fn instant(time: &prost_types::Timestamp) -> Option<String> {
    chrono::DateTime::<chrono::Utc>::from_timestamp(time.seconds, time.nanos.max(0) as u32)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl Api {
    /// The gateway as the caller: their bearer token and request id, forwarded.
    fn caller(&self, headers: &HeaderMap) -> (Gateway, Call) {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .trim()
            .to_string();
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        (self.gateway.as_caller(bearer), Call { request_id, deadline: Instant::now() + DEADLINE })
    }
}

async fn metadata() -> Response {
    let search = |names: &[(&'static str, &'static str)]| {
        names.iter().map(|(name, kind)| serde_json::json!({ "name": name, "type": kind })).collect::<Vec<_>>()
    };
    let statement = serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-05",
        "kind": "instance",
        "software": { "name": "Patient Access Platform" },
        "implementation": { "description": "Patient Access Platform FHIR R4 API", "url": "/fhir/R4" },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": { "description": "A bearer token (the gateway's), forwarded with every call: the caller's role and organisations decide what they see." },
            "resource": [{
                "type": "Patient",
                "profile": "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient",
                "interaction": [{ "code": "read" }, { "code": "search-type" }, { "code": "create" }, { "code": "update" }, { "code": "patch" }],
                "conditionalCreate": true,
                "conditionalUpdate": false,
                "searchParam": search(&[("identifier", "token"), ("family", "string"), ("given", "string"), ("birthdate", "date"), ("address-postalcode", "string"), ("_count", "number")]),
            }, {
                "type": "Schedule",
                "interaction": [{ "code": "read" }, { "code": "search-type" }],
                "searchParam": search(&[("actor", "reference"), ("service-type", "token"), ("_count", "number")]),
            }, {
                "type": "Slot",
                "interaction": [{ "code": "search-type" }],
                "searchInclude": ["Slot:schedule"],
                "searchParam": search(&[("schedule", "reference"), ("service-type", "token"), ("start", "date"), ("status", "token"), ("_count", "number")]),
            }, {
                "type": "Appointment",
                "interaction": [{ "code": "read" }, { "code": "search-type" }, { "code": "create" }, { "code": "update" }, { "code": "patch" }],
                "conditionalCreate": true,
                "conditionalUpdate": false,
                "searchParam": search(&[("patient", "reference"), ("actor", "reference"), ("date", "date"), ("status", "token"), ("_count", "number")]),
            }, {
                "type": "ServiceRequest",
                "interaction": [{ "code": "read" }, { "code": "search-type" }],
                "searchParam": search(&[("patient", "reference"), ("status", "token"), ("_count", "number")]),
            }],
        }],
    });
    json(StatusCode::OK, &statement)
}
