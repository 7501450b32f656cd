//! The FHIR R4 API at `/fhir/R4` (`application/fhir+json`): each request becomes gRPC calls to the
//! gateway with the caller's own bearer token (and request id), so authentication, the role table,
//! organisation scoping and the audit trail are the gateway's, as for any client. One module a
//! resource maps it; the JSON types are serde structs for just what is served.
//!
//! Served so far: `metadata`; Patient read and search; Schedule read and search; Slot search;
//! Appointment read, book and cancel. ServiceRequest and Patient writes are still to come
//! (docs/fhir.md).

pub mod outcome;
pub mod patient;
pub mod scheduling;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use pac_proto::records as pb;
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
        .route("/fhir/R4/Patient/{id}", get(read_patient))
        .route("/fhir/R4/Patient", get(search_patients))
        .route("/fhir/R4/Schedule/{id}", get(read_schedule))
        .route("/fhir/R4/Schedule", get(search_schedules))
        .route("/fhir/R4/Slot", get(search_slots))
        .route("/fhir/R4/Appointment/{id}", put(update_appointment).get(read_appointment))
        .route("/fhir/R4/Appointment", axum::routing::post(book_appointment))
        .fallback(|| async { Failure::not_supported("this FHIR interaction is not supported here (see GET /fhir/R4/metadata)") })
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
fn prune(value: &mut serde_json::Value) {
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
                "interaction": [{ "code": "read" }, { "code": "search-type" }],
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
                "interaction": [{ "code": "read" }, { "code": "create" }, { "code": "update" }],
                "conditionalUpdate": false,
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
    Ok(with_etag(json(StatusCode::OK, &patient::from_record(&record, &merged_from)), &record.etag))
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

fn checked_id(id: &str, what: &str) -> Result<(), Failure> {
    uuid::Uuid::parse_str(id).map(drop).map_err(|_| Failure::invalid(format!("the id is not a {what} id"), Some(&format!("{what}.id"))))
}

/// The query's parameters, each once unless `repeatable`; any not in `known` is refused.
fn parameters(pairs: Vec<(String, String)>, known: &[&str], repeatable: &[&str]) -> Result<Vec<(String, String)>, Failure> {
    for (i, (name, _)) in pairs.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            return Err(Failure::invalid(format!("search parameter {name} is not supported here"), Some(name)));
        }
        if !repeatable.contains(&name.as_str()) && pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(Failure::invalid(format!("search parameter {name} is given twice"), Some(name)));
        }
    }
    Ok(pairs)
}

fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn count(pairs: &[(String, String)]) -> Result<i32, Failure> {
    match first(pairs, "_count") {
        None => Ok(20),
        Some(n) => {
            n.parse().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| Failure::invalid("_count must be 1 to 100", Some("_count")))
        }
    }
}

fn searchset(entries: Vec<serde_json::Value>, next: Option<String>) -> serde_json::Value {
    let mut bundle = serde_json::json!({ "resourceType": "Bundle", "type": "searchset", "entry": entries });
    if let Some(next) = next {
        bundle["link"] = serde_json::json!([{ "relation": "next", "url": next }]);
    }
    bundle
}

fn entry(resource: serde_json::Value, mode: &str) -> serde_json::Value {
    let url = format!("{}/{}", resource["resourceType"].as_str().unwrap_or_default(), resource["id"].as_str().unwrap_or_default());
    serde_json::json!({ "fullUrl": url, "resource": resource, "search": { "mode": mode } })
}

async fn read_schedule(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Failure> {
    checked_id(&id, "Schedule")?;
    let (gateway, call) = api.caller(&headers);
    let clinic = gateway.get_clinic(&id, &call).await?;
    Ok(json(StatusCode::OK, &scheduling::schedule(&clinic)))
}

async fn search_schedules(
    State(api): State<Api>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let pairs = parameters(pairs, &["actor", "service-type", "_count"], &[])?;
    let location_id = match first(&pairs, "actor") {
        None => String::new(),
        Some(actor) => actor
            .strip_prefix("Location/")
            .map(str::to_string)
            .ok_or_else(|| Failure::invalid("actor must be Location/<id>", Some("actor")))?,
    };
    let service_code = first(&pairs, "service-type").map(|s| s.rsplit('|').next().unwrap_or(s).to_string()).unwrap_or_default();
    let (gateway, call) = api.caller(&headers);
    let request =
        pac_proto::scheduling::ListClinicsRequest { service_code, location_id, page_size: count(&pairs)?, page_token: String::new() };
    let clinics = gateway.scheduling().list_clinics(gateway.request(request, &call)?).await?.into_inner().clinics;
    let entries = clinics.iter().map(|c| entry(scheduling::schedule(c), "match")).collect();
    Ok(json(StatusCode::OK, &searchset(entries, None)))
}

/// An instant for `start`: a date (midnight UTC) or a date-time with its offset.
fn instant_param(text: &str) -> Option<prost_types::Timestamp> {
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .ok()
        .or_else(|| chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc()))?;
    Some(pac_platform::convert::timestamp(at))
}

async fn search_slots(State(api): State<Api>, Query(pairs): Query<Vec<(String, String)>>, headers: HeaderMap) -> Result<Response, Failure> {
    use pac_proto::scheduling as sched;
    let pairs = parameters(pairs, &["schedule", "service-type", "start", "status", "_count", "_include", "_page_token"], &["start"])?;
    if first(&pairs, "status").is_some_and(|s| s != "free") {
        return Err(Failure::invalid("status: only free slots are searched (status=free)", Some("status")));
    }
    if first(&pairs, "_include").is_some_and(|i| i != "Slot:schedule") {
        return Err(Failure::invalid("_include: only Slot:schedule", Some("_include")));
    }
    let target = match (first(&pairs, "schedule"), first(&pairs, "service-type")) {
        (Some(schedule), None) => {
            sched::search_slots_request::Target::ClinicId(schedule.strip_prefix("Schedule/").unwrap_or(schedule).to_string())
        }
        (None, Some(service)) => {
            sched::search_slots_request::Target::ServiceCode(service.rsplit('|').next().unwrap_or(service).to_string())
        }
        _ => return Err(Failure::invalid("search slots by schedule or by service-type (one of them)", None)),
    };
    let (mut start_time, mut end_time) = (None, None);
    for (_, value) in pairs.iter().filter(|(n, _)| n == "start") {
        let (prefix, rest) = value.split_at(value.len().min(2));
        let at = instant_param(rest)
            .ok_or_else(|| Failure::invalid("start must be ge<date or date-time> or lt<date or date-time>", Some("start")))?;
        match prefix {
            "ge" | "gt" => start_time = Some(at),
            "lt" | "le" => end_time = Some(at),
            _ => return Err(Failure::invalid("start takes the prefixes ge and lt", Some("start"))),
        }
    }
    let page_token = first(&pairs, "_page_token").unwrap_or_default().to_string();
    let request = sched::SearchSlotsRequest {
        target: Some(target),
        start_time,
        end_time,
        location_id: String::new(),
        page_size: count(&pairs)?,
        page_token,
    };
    let (gateway, call) = api.caller(&headers);
    let found = gateway.scheduling().search_slots(gateway.request(request, &call)?).await?.into_inner();
    let mut entries: Vec<serde_json::Value> = Vec::new();
    let mut clinics: HashMap<String, pac_proto::scheduling::Clinic> = HashMap::new();
    for slot in &found.slots {
        if !clinics.contains_key(&slot.clinic_id) {
            clinics.insert(slot.clinic_id.clone(), gateway.get_clinic(&slot.clinic_id, &call).await?);
        }
        entries.push(entry(scheduling::slot(slot, &clinics[&slot.clinic_id].service_code), "match"));
    }
    if first(&pairs, "_include") == Some("Slot:schedule") {
        entries.extend(clinics.values().map(|c| entry(scheduling::schedule(c), "include")));
    }
    let next = (!found.next_page_token.is_empty()).then(|| {
        let mut query: Vec<(String, String)> = pairs.iter().filter(|(n, _)| n != "_page_token").cloned().collect();
        query.push(("_page_token".into(), found.next_page_token.clone()));
        let encoded = query.iter().map(|(n, v)| format!("{n}={}", percent(v))).collect::<Vec<_>>().join("&");
        format!("Slot?{encoded}")
    });
    Ok(json(StatusCode::OK, &searchset(entries, next)))
}

/// `value` percent-encoded for a query string.
fn percent(value: &str) -> String {
    value
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

async fn read_appointment(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Failure> {
    checked_id(&id, "Appointment")?;
    let (gateway, call) = api.caller(&headers);
    let request = pac_proto::scheduling::GetAppointmentRequest { id };
    let appointment =
        gateway.scheduling().get_appointment(gateway.request(request, &call)?).await?.into_inner().appointment.unwrap_or_default();
    Ok(with_etag(json(StatusCode::OK, &scheduling::appointment(&appointment)), &appointment.etag))
}

fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("W/\"{etag}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn appointment_body(body: &axum::body::Bytes) -> Result<scheduling::AppointmentInput, Failure> {
    let input: scheduling::AppointmentInput =
        serde_json::from_slice(body).map_err(|e| Failure::invalid(format!("the body is not an Appointment: {e}"), Some("Appointment")))?;
    if input.resource_type != "Appointment" {
        return Err(Failure::invalid("the body is not an Appointment", Some("Appointment.resourceType")));
    }
    Ok(input)
}

/// Books: a free Slot (`slot`) for a Patient (a `participant`), for a referral when `basedOn` names
/// its ServiceRequest. Idempotent on `X-Request-Id`.
async fn book_appointment(State(api): State<Api>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, Failure> {
    let input = appointment_body(&body)?;
    if !matches!(input.status.as_str(), "" | "booked" | "proposed" | "pending") {
        return Err(Failure::invalid("a new appointment is booked: status booked", Some("Appointment.status")));
    }
    let slot_id = scheduling::id_of(&input.slot, "Slot")
        .ok_or_else(|| Failure::invalid("name the free Slot to book (slot)", Some("Appointment.slot")))?;
    let patient_id = scheduling::id_of(input.participant.iter().filter_map(|p| p.actor.as_ref()), "Patient")
        .ok_or_else(|| Failure::invalid("name the Patient (a participant's actor)", Some("Appointment.participant")))?;
    let referral_id = scheduling::id_of(&input.based_on, "ServiceRequest").unwrap_or_default();
    let (gateway, call) = api.caller(&headers);
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let request = pac_proto::scheduling::BookAppointmentRequest {
        target: Some(pac_proto::scheduling::book_appointment_request::Target::SlotId(slot_id)),
        patient_id,
        referral_id,
        request_id,
    };
    let booked =
        gateway.scheduling().book_appointment(gateway.request(request, &call)?).await?.into_inner().appointment.unwrap_or_default();
    let mut response = with_etag(json(StatusCode::CREATED, &scheduling::appointment(&booked)), &booked.etag);
    if let Ok(location) = HeaderValue::from_str(&format!("Appointment/{}", booked.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Cancels: the Appointment with status `cancelled` and a `cancelationReason`, `If-Match` its
/// current version. Any other change is refused.
async fn update_appointment(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    checked_id(&id, "Appointment")?;
    let input = appointment_body(&body)?;
    if input.status != "cancelled" {
        return Err(Failure::invalid(
            "only a cancellation is taken here: status cancelled, with a cancelationReason",
            Some("Appointment.status"),
        ));
    }
    let codings = input.cancelation_reason.as_ref().map(|r| r.coding.as_slice()).unwrap_or_default();
    let coded = |system: &str| codings.iter().find(|c| c.system == system).map(|c| c.code.clone());
    let reason = coded(CANCELLATION_SYSTEM).ok_or_else(|| {
        Failure::invalid(
            format!("say why: a cancelationReason coding of {CANCELLATION_SYSTEM}, e.g. PATIENT_UNWELL"),
            Some("Appointment.cancelationReason"),
        )
    })?;
    let cancelled_by = match coded(CANCELLED_BY_SYSTEM).as_deref() {
        Some("patient") => pac_proto::scheduling::CancelledBy::Patient,
        Some("provider") => pac_proto::scheduling::CancelledBy::Provider,
        _ => {
            return Err(Failure::invalid(
                format!(
                    "say who cancelled: a cancelationReason coding of {CANCELLED_BY_SYSTEM}, patient or provider (it decides the waiting-time clock)"
                ),
                Some("Appointment.cancelationReason"),
            ));
        }
    };
    let etag = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"').to_string())
        .ok_or_else(|| Failure::invalid("If-Match: the appointment's current version (its ETag)", Some("If-Match")))?;
    let (gateway, call) = api.caller(&headers);
    let request = pac_proto::scheduling::CancelAppointmentRequest {
        appointment_id: id,
        reason_code: reason,
        cancelled_by: cancelled_by as i32,
        etag,
        request_id: headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string(),
    };
    let cancelled =
        gateway.scheduling().cancel_appointment(gateway.request(request, &call)?).await?.into_inner().appointment.unwrap_or_default();
    Ok(with_etag(json(StatusCode::OK, &scheduling::appointment(&cancelled)), &cancelled.etag))
}
