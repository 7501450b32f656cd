//! The FHIR R4 API at `/fhir/R4` (`application/fhir+json`): each request becomes gRPC calls to the
//! gateway with the caller's own bearer token (and request id), so authentication, the role table,
//! organisation scoping and the audit trail are the gateway's, as for any client. One module a
//! resource maps it; the JSON types are serde structs for just what is served.
//!
//! Served so far: `metadata`, and Patient read and search. Schedule, Slot, Appointment and
//! ServiceRequest are still to come (docs/fhir.md).

pub mod outcome;
pub mod patient;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pac_proto::records as pb;
use serde::Serialize;

use crate::gateway::{Call, Gateway};
use outcome::Failure;

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
        .route("/fhir/R4/Patient/{id}", get(read_patient))
        .route("/fhir/R4/Patient", get(search_patients))
        .fallback(|| async { Failure::not_supported("this FHIR interaction is not supported here (see GET /fhir/R4/metadata)") })
        .with_state(Api { gateway })
}

/// A FHIR JSON answer.
pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"))], bytes).into_response()
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
                "interaction": [{ "code": "read" }, { "code": "search-type" }],
                "searchParam": search(&[("identifier", "token"), ("family", "string"), ("given", "string"), ("birthdate", "date"), ("address-postalcode", "string"), ("_count", "number")]),
            }],
        }],
    });
    json(StatusCode::OK, &statement)
}

async fn read_patient(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Failure> {
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(Failure::invalid("the id is not a patient id", Some("Patient.id")));
    }
    let (gateway, call) = api.caller(&headers);
    let (record, merged_from) = gateway.read_patient(&id, &call).await?;
    let mut response = json(StatusCode::OK, &patient::from_record(&record, &merged_from));
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", record.etag)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// The parameters Patient search takes; any other is refused (400), never ignored.
const PATIENT_SEARCH: &[&str] = &["identifier", "family", "given", "birthdate", "address-postalcode", "_count"];

async fn search_patients(
    State(api): State<Api>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    if let Some(unknown) = query.keys().find(|k| !PATIENT_SEARCH.contains(&k.as_str())) {
        return Err(Failure::invalid(format!("search parameter {unknown} is not supported for Patient"), Some(unknown)));
    }
    let count: i32 = match query.get("_count") {
        None => 20,
        Some(n) => {
            n.parse().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| Failure::invalid("_count must be 1 to 100", Some("_count")))?
        }
    };
    let birth_date = match query.get("birthdate") {
        None => None,
        Some(text) => {
            Some(date(text).ok_or_else(|| Failure::invalid("birthdate must be a date, YYYY-MM-DD (equality only)", Some("birthdate")))?)
        }
    };
    let (gateway, call) = api.caller(&headers);
    let found: Vec<pb::Patient> = match query.get("identifier") {
        Some(token) => {
            let identifier = identifier(token)?;
            let found = gateway.lookup(&identifier, &call).await?.map(|(p, _)| p);
            // Combined with the other parameters: the one found must meet them too.
            found.into_iter().filter(|p| meets(p, &query, birth_date.as_ref())).collect()
        }
        None => {
            let name = [query.get("given"), query.get("family")].into_iter().flatten().cloned().collect::<Vec<_>>().join(" ");
            let postcode = query.get("address-postalcode").cloned().unwrap_or_default();
            if name.is_empty() && postcode.is_empty() && birth_date.is_none() {
                return Err(Failure::invalid("search by identifier, family, given, birthdate or address-postalcode", None));
            }
            let request = pb::SearchPatientsRequest { name, birth_date, postcode, page_size: count, ..Default::default() };
            gateway.search_patients(request, &call).await?
        }
    };
    let entry: Vec<serde_json::Value> = found
        .iter()
        .map(|p| serde_json::json!({ "fullUrl": format!("Patient/{}", p.id), "resource": patient::from_record(p, ""), "search": { "mode": "match" } }))
        .collect();
    let bundle = serde_json::json!({ "resourceType": "Bundle", "type": "searchset", "total": entry.len(), "entry": entry });
    Ok(json(StatusCode::OK, &bundle))
}

/// `system|value` (or a bare value, taken as an NHS number).
fn identifier(token: &str) -> Result<crate::adt::Identifier, Failure> {
    let (system, value) = token.split_once('|').unwrap_or((patient::NHS_NUMBER_SYSTEM, token));
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(Failure::invalid("identifier needs a value", Some("identifier")));
    }
    if system == patient::NHS_NUMBER_SYSTEM || system.is_empty() {
        return Ok(crate::adt::Identifier::Nhs(value));
    }
    match system.strip_prefix(patient::LOCAL_SYSTEM_PREFIX) {
        Some(issuer) if !issuer.is_empty() => Ok(crate::adt::Identifier::Local(pb::LocalIdentifier { issuer: issuer.to_string(), value })),
        _ => Err(Failure::invalid(
            format!("identifier system must be {} or {}<ODS code>", patient::NHS_NUMBER_SYSTEM, patient::LOCAL_SYSTEM_PREFIX),
            Some("identifier"),
        )),
    }
}

fn date(text: &str) -> Option<pac_proto::common::Date> {
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    use chrono::Datelike;
    Some(pac_proto::common::Date { year: day.year(), month: day.month() as i32, day: day.day() as i32 })
}

/// Whether `patient` meets the name, birth date and postcode parameters.
fn meets(patient: &pb::Patient, query: &HashMap<String, String>, birth_date: Option<&pac_proto::common::Date>) -> bool {
    let starts = |field: &str, wanted: Option<&String>| wanted.is_none_or(|w| field.to_lowercase().starts_with(&w.to_lowercase()));
    let postcode = patient.address.as_ref().map(|a| a.postcode.replace(' ', "").to_uppercase()).unwrap_or_default();
    starts(&patient.family_name, query.get("family"))
        && starts(&patient.given_name, query.get("given"))
        && birth_date.is_none_or(|d| patient.birth_date.as_ref() == Some(d))
        && query.get("address-postalcode").is_none_or(|p| postcode.starts_with(&p.replace(' ', "").to_uppercase()))
}
