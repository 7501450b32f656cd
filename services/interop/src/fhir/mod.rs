//! The FHIR R4 API at `/fhir/R4` (`application/fhir+json`): each request becomes gRPC calls to the
//! gateway with the caller's own bearer token (and request id), so authentication, the role table,
//! organisation scoping and the audit trail are the gateway's, as for any client. One module a
//! resource maps it; the JSON types are serde structs for just what is served.
//!
//! Served: `metadata`; Patient read, search, create and contact-detail update; Schedule read and
//! search; Slot search; Appointment read, search, book and cancel; ServiceRequest read and search
//! (docs/fhir.md).

pub mod outcome;
pub mod patient;
pub mod referrals;
pub mod scheduling;

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
        .route("/fhir/R4/Patient/{id}", get(read_patient).put(update_patient).patch(update_patient))
        .route("/fhir/R4/Patient", get(search_patients).post(create_patient))
        .route("/fhir/R4/Schedule/{id}", get(read_schedule))
        .route("/fhir/R4/Schedule", get(search_schedules))
        .route("/fhir/R4/Slot", get(search_slots))
        .route("/fhir/R4/Appointment/{id}", get(read_appointment).put(update_appointment).patch(update_appointment))
        .route("/fhir/R4/Appointment", get(search_appointments).post(book_appointment))
        .route("/fhir/R4/ServiceRequest/{id}", get(read_service_request))
        .route("/fhir/R4/ServiceRequest", get(search_service_requests))
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
    let mut clinics = Clinics::new(&gateway, &call);
    clinics.load(found.slots.iter().map(|s| s.clinic_id.as_str())).await?;
    for slot in &found.slots {
        entries.push(entry(scheduling::slot(slot, &clinics.get(&slot.clinic_id).await?.service_code), "match"));
    }
    if first(&pairs, "_include") == Some("Slot:schedule") {
        entries.extend(clinics.known.values().map(|c| entry(scheduling::schedule(c), "include")));
    }
    Ok(json(StatusCode::OK, &searchset(entries, next_link("Slot", &pairs, &found.next_page_token))))
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
    let appointment = get_appointment(&gateway, &id, &call).await?;
    let rendered = Clinics::new(&gateway, &call).appointment(&appointment).await?;
    Ok(with_etag(json(StatusCode::OK, &rendered), &appointment.etag))
}

async fn get_appointment(gateway: &Gateway, id: &str, call: &Call) -> Result<pac_proto::scheduling::Appointment, Failure> {
    let request = gateway.request(pac_proto::scheduling::GetAppointmentRequest { id: id.to_string() }, call)?;
    Ok(gateway.scheduling().get_appointment(request).await?.into_inner().appointment.unwrap_or_default())
}

fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("W/\"{etag}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn appointment_body(body: &[u8]) -> Result<scheduling::AppointmentInput, Failure> {
    let input: scheduling::AppointmentInput =
        serde_json::from_slice(body).map_err(|e| Failure::invalid(format!("the body is not an Appointment: {e}"), Some("Appointment")))?;
    if input.resource_type != "Appointment" {
        return Err(Failure::invalid("the body is not an Appointment", Some("Appointment.resourceType")));
    }
    Ok(input)
}

/// The search of an `If-None-Exist` header (a conditional create), when there is one; only the
/// parameters in `known`, each once.
fn condition(headers: &HeaderMap, known: &[&str]) -> Result<Option<Vec<(String, String)>>, Failure> {
    let Some(value) = headers.get("if-none-exist") else { return Ok(None) };
    let refused = || Failure::invalid(format!("If-None-Exist is a search by {}", known.join(", ")), Some("If-None-Exist"));
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(value.to_str().map_err(|_| refused())?.trim_start_matches('?')).map_err(|_| refused())?;
    if pairs.is_empty() {
        return Err(refused());
    }
    parameters(pairs, known, &[]).map(Some).map_err(|_| refused())
}

/// The patient's one appointment a conditional booking (`If-None-Exist: patient=…&slot=…&status=…`)
/// finds; several are a 412, as FHIR has it.
async fn existing_appointment(
    gateway: &Gateway,
    call: &Call,
    condition: &[(String, String)],
) -> Result<Option<pac_proto::scheduling::Appointment>, Failure> {
    let patient_id = first(condition, "patient")
        .and_then(|p| reference_id(p, "Patient"))
        .ok_or_else(|| Failure::invalid("If-None-Exist names the patient: patient=Patient/<id>", Some("If-None-Exist")))?;
    let slot = match first(condition, "slot") {
        None => None,
        Some(slot) => Some(reference_id(slot, "Slot").ok_or_else(|| Failure::invalid("slot must be Slot/<id>", Some("If-None-Exist")))?),
    };
    let mut statuses = Vec::new();
    for token in first(condition, "status").into_iter().flat_map(|s| s.split(',')) {
        let status = scheduling::status_of(token.trim())
            .ok_or_else(|| Failure::invalid(format!("status {token} is not an appointment status"), Some("If-None-Exist")))?;
        statuses.push(status as i32);
    }
    let (mut matches, mut page_token) = (Vec::new(), String::new());
    loop {
        let request = pac_proto::scheduling::ListAppointmentsRequest {
            patient_id: patient_id.clone(),
            statuses: statuses.clone(),
            page_size: 100,
            page_token,
            ..Default::default()
        };
        let found = gateway.scheduling().list_appointments(gateway.request(request, call)?).await?.into_inner();
        matches.extend(found.appointments.into_iter().filter(|a| slot.as_ref().is_none_or(|s| *s == a.slot_id)));
        if matches.len() > 1 {
            return Err(Failure::precondition("more than one appointment matches If-None-Exist: make the search narrower"));
        }
        if found.next_page_token.is_empty() {
            return Ok(matches.pop());
        }
        page_token = found.next_page_token;
    }
}

/// Books: a free Slot (`slot`) for a Patient (a `participant`), for a referral when `basedOn` names
/// its ServiceRequest. Idempotent on `X-Request-Id`, or conditional on `If-None-Exist`
/// (`patient`, `slot`, `status`): the one appointment it finds is answered (200), none booked.
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
    if let Some(condition) = condition(&headers, &["patient", "slot", "status"])?
        && let Some(found) = existing_appointment(&gateway, &call, &condition).await?
    {
        let rendered = Clinics::new(&gateway, &call).appointment(&found).await?;
        return Ok(with_etag(json(StatusCode::OK, &rendered), &found.etag));
    }
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let request = pac_proto::scheduling::BookAppointmentRequest {
        target: Some(pac_proto::scheduling::book_appointment_request::Target::SlotId(slot_id)),
        patient_id,
        referral_id,
        request_id,
    };
    let booked =
        gateway.scheduling().book_appointment(gateway.request(request, &call)?).await?.into_inner().appointment.unwrap_or_default();
    let rendered = Clinics::new(&gateway, &call).appointment(&booked).await?;
    Ok(with_location(with_etag(json(StatusCode::CREATED, &rendered), &booked.etag), &format!("Appointment/{}", booked.id)))
}

/// Cancels by `PUT` (the whole Appointment) or `PATCH` (a JSON Patch of it): status `cancelled`
/// with a `cancelationReason`, `If-Match` its current version. Any other change is refused.
async fn update_appointment(
    State(api): State<Api>,
    method: axum::http::Method,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    checked_id(&id, "Appointment")?;
    let etag = if_match(&headers)?;
    let (gateway, call) = api.caller(&headers);
    let current = get_appointment(&gateway, &id, &call).await?;
    let mut clinics = Clinics::new(&gateway, &call);
    let input = if method == axum::http::Method::PATCH {
        if current.etag != etag {
            return Err(Failure::stale());
        }
        let rendered = clinics.appointment(&current).await?;
        appointment_body(&serde_json::to_vec(&patched(rendered, &headers, &body)?).unwrap_or_default())?
    } else {
        appointment_body(&body)?
    };
    if input.status != "cancelled" {
        return Err(Failure::invalid(
            "only a cancellation is taken here: status cancelled, with a cancelationReason",
            Some("Appointment.status"),
        ));
    }
    let named = |references: Vec<&scheduling::Reference>, kind: &str, current: &str| {
        scheduling::id_of(references, kind).is_none_or(|id| id == current)
    };
    if !named(input.slot.iter().collect(), "Slot", &current.slot_id)
        || !named(input.participant.iter().filter_map(|p| p.actor.as_ref()).collect(), "Patient", &current.patient_id)
        || !named(input.based_on.iter().collect(), "ServiceRequest", &current.referral_id)
    {
        return Err(Failure::unprocessable(
            "only a cancellation is taken here: the slot, patient and basedOn stay as they are (to move an appointment, book the new slot, then cancel this one)",
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
    let request = pac_proto::scheduling::CancelAppointmentRequest {
        appointment_id: id,
        reason_code: reason,
        cancelled_by: cancelled_by as i32,
        etag,
        request_id: headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string(),
    };
    let cancelled =
        gateway.scheduling().cancel_appointment(gateway.request(request, &call)?).await?.into_inner().appointment.unwrap_or_default();
    Ok(with_etag(json(StatusCode::OK, &clinics.appointment(&cancelled).await?), &cancelled.etag))
}

/// The id of `Kind/<id>` (or of a bare id), when it is one.
fn reference_id(reference: &str, kind: &str) -> Option<String> {
    let id = reference.strip_prefix(kind).and_then(|r| r.strip_prefix('/')).unwrap_or(reference);
    uuid::Uuid::parse_str(id).ok().map(|_| id.to_string())
}

/// The next page of a search: the same parameters with the service's page token.
fn next_link(kind: &str, pairs: &[(String, String)], page_token: &str) -> Option<String> {
    if page_token.is_empty() {
        return None;
    }
    let mut query: Vec<(&str, &str)> = pairs.iter().filter(|(n, _)| n != "_page_token").map(|(n, v)| (n.as_str(), v.as_str())).collect();
    query.push(("_page_token", page_token));
    let encoded = query.iter().map(|(n, v)| format!("{n}={}", percent(v))).collect::<Vec<_>>().join("&");
    Some(format!("{kind}?{encoded}"))
}

fn with_location(mut response: Response, location: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The version `If-Match` names (`W/"<etag>"`), which every change needs.
fn if_match(headers: &HeaderMap) -> Result<String, Failure> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Failure::invalid("If-Match: the resource's current version (its ETag)", Some("If-Match")))
}

/// `current` with the JSON Patch (RFC 6902) in `body` applied; PATCH takes no other kind.
fn patched(current: serde_json::Value, headers: &HeaderMap, body: &[u8]) -> Result<serde_json::Value, Failure> {
    let json_patch = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().starts_with("application/json-patch+json"));
    if !json_patch {
        return Err(Failure::unsupported_media("PATCH takes a JSON Patch: Content-Type application/json-patch+json"));
    }
    let patch: json_patch::Patch =
        serde_json::from_slice(body).map_err(|e| Failure::invalid(format!("the body is not a JSON Patch: {e}"), None))?;
    let mut document = current;
    json_patch::patch(&mut document, &patch).map_err(|e| Failure::unprocessable(format!("the patch does not apply: {e}")))?;
    Ok(document)
}

/// A new Patient, unless `If-None-Exist` (`identifier=<system>|<value>`) finds one: then that one
/// (200) and nothing is registered. Idempotent on `X-Request-Id`.
async fn create_patient(State(api): State<Api>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, Failure> {
    let input = patient::input(&body)?;
    let record = patient::to_record(&input)?;
    let (gateway, call) = api.caller(&headers);
    if let Some(condition) = condition(&headers, &["identifier"])? {
        let token = first(&condition, "identifier").unwrap_or_default();
        if let Some((found, _)) = gateway.lookup(&identifier(token)?, &call).await? {
            return Ok(with_etag(json(StatusCode::OK, &patient::from_record(&found, "")), &found.etag));
        }
    }
    let registered = gateway.register(record, false, &call).await?;
    let response = with_etag(json(StatusCode::CREATED, &patient::from_record(&registered, "")), &registered.etag);
    Ok(with_location(response, &format!("Patient/{}", registered.id)))
}

/// Contact details changed: the whole Patient (`PUT`) or a JSON Patch of it (`PATCH`), `If-Match`
/// its current version. Anything else changed is refused (422), never dropped.
async fn update_patient(
    State(api): State<Api>,
    method: axum::http::Method,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    checked_id(&id, "Patient")?;
    let etag = if_match(&headers)?;
    let (gateway, call) = api.caller(&headers);
    let (current, _) = gateway.read_patient(&id, &call).await?;
    if current.id != id {
        return Err(Failure::unprocessable(format!("this record was merged into Patient/{}: change that one", current.id)));
    }
    let input = if method == axum::http::Method::PATCH {
        if current.etag != etag {
            return Err(Failure::stale());
        }
        let document = patched(serde_json::to_value(patient::from_record(&current, "")).unwrap_or_default(), &headers, &body)?;
        patient::input(&serde_json::to_vec(&document).unwrap_or_default())?
    } else {
        patient::input(&body)?
    };
    if !input.id.is_empty() && input.id != id {
        return Err(Failure::invalid("the body's id is not the Patient addressed", Some("Patient.id")));
    }
    let wanted = patient::to_record(&input)?;
    if let Some(field) = patient::other_change(&current, &wanted) {
        return Err(Failure::unprocessable(format!(
            "only contact details (address, telecom) are changed through this API; {field} differs from the record"
        )));
    }
    let change = pb::Patient { id, etag, address: wanted.address, phone: wanted.phone, email: wanted.email, ..Default::default() };
    let updated = gateway.update(change, patient::CONTACT_FIELDS.map(String::from).to_vec(), &call).await?;
    Ok(with_etag(json(StatusCode::OK, &patient::from_record(&updated, "")), &updated.etag))
}

async fn read_service_request(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Failure> {
    checked_id(&id, "ServiceRequest")?;
    let (gateway, call) = api.caller(&headers);
    let request = gateway.request(pac_proto::referrals::GetReferralRequest { id }, &call)?;
    let referral = gateway.referrals().get_referral(request).await?.into_inner().referral.unwrap_or_default();
    Ok(with_etag(json(StatusCode::OK, &referrals::service_request(&referral)), &referral.etag))
}

async fn search_service_requests(
    State(api): State<Api>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let pairs = parameters(pairs, &["patient", "status", "_count", "_page_token"], &[])?;
    let page_token = first(&pairs, "_page_token").unwrap_or_default().to_string();
    let request = referrals::list_request(first(&pairs, "patient"), first(&pairs, "status"), count(&pairs)?, page_token)?;
    let (gateway, call) = api.caller(&headers);
    let found = gateway.referrals().list_referrals(gateway.request(request, &call)?).await?.into_inner();
    let entries = found.referrals.iter().map(|r| entry(referrals::service_request(r), "match")).collect();
    Ok(json(StatusCode::OK, &searchset(entries, next_link("ServiceRequest", &pairs, &found.next_page_token))))
}

/// The clinics of a request's appointments, each fetched once.
struct Clinics<'a> {
    gateway: &'a Gateway,
    call: &'a Call,
    known: HashMap<String, pac_proto::scheduling::Clinic>,
}

impl<'a> Clinics<'a> {
    fn new(gateway: &'a Gateway, call: &'a Call) -> Self {
        Self { gateway, call, known: HashMap::new() }
    }

    /// Fetches the clinics of `ids` not yet known, all at once.
    async fn load<'i>(&mut self, ids: impl IntoIterator<Item = &'i str>) -> Result<(), Failure> {
        let mut missing: Vec<&str> = ids.into_iter().filter(|id| !self.known.contains_key(*id)).collect();
        missing.sort_unstable();
        missing.dedup();
        let fetched = futures::future::try_join_all(missing.iter().map(|id| self.gateway.get_clinic(id, self.call))).await?;
        self.known.extend(fetched.into_iter().map(|clinic| (clinic.id.clone(), clinic)));
        Ok(())
    }

    async fn get(&mut self, id: &str) -> Result<&pac_proto::scheduling::Clinic, Failure> {
        if !self.known.contains_key(id) {
            let clinic = self.gateway.get_clinic(id, self.call).await?;
            self.known.insert(id.to_string(), clinic);
        }
        Ok(&self.known[id])
    }

    /// The FHIR Appointment, with its clinic's Location as a participant.
    async fn appointment(&mut self, appointment: &pac_proto::scheduling::Appointment) -> Result<serde_json::Value, Failure> {
        Ok(scheduling::appointment(appointment, self.get(&appointment.clinic_id).await?))
    }
}

/// At most this many appointments answer a search by Location and day (every clinic there).
const LOCATION_DAY_LIMIT: usize = 1000;

/// Appointments of a patient (`patient`, or `actor=Patient/<id>`), optionally on a `date` and in
/// some `status`es; or of a Location (`actor=Location/<id>`) on a `date`.
async fn search_appointments(
    State(api): State<Api>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    use pac_proto::scheduling as sched;
    let pairs = parameters(pairs, &["patient", "actor", "date", "status", "_count", "_page_token"], &[])?;
    let mut statuses = Vec::new();
    for token in first(&pairs, "status").into_iter().flat_map(|s| s.split(',')) {
        let status = scheduling::status_of(token.trim())
            .ok_or_else(|| Failure::invalid(format!("status {token} is not an appointment status"), Some("status")))?;
        statuses.push(status as i32);
    }
    let day = match first(&pairs, "date") {
        None => None,
        Some(text) => Some(
            date(text.strip_prefix("eq").unwrap_or(text))
                .ok_or_else(|| Failure::invalid("date is a day, YYYY-MM-DD (equality only)", Some("date")))?,
        ),
    };
    let actor = first(&pairs, "actor");
    let patient = match (first(&pairs, "patient"), actor.filter(|a| a.starts_with("Patient/"))) {
        (Some(_), Some(_)) => return Err(Failure::invalid("name the patient once: patient or actor=Patient/<id>", Some("actor"))),
        (patient, from_actor) => patient.or(from_actor),
    };
    let location = actor.filter(|a| !a.starts_with("Patient/"));
    let (gateway, call) = api.caller(&headers);
    let mut clinics = Clinics::new(&gateway, &call);
    let mut entries = Vec::new();
    let next = match (patient, location) {
        (Some(patient), None) => {
            let patient_id =
                reference_id(patient, "Patient").ok_or_else(|| Failure::invalid("patient must be Patient/<id>", Some("patient")))?;
            let page_token = first(&pairs, "_page_token").unwrap_or_default().to_string();
            let request =
                sched::ListAppointmentsRequest { patient_id, statuses, page_size: count(&pairs)?, page_token, ..Default::default() };
            let found = gateway.scheduling().list_appointments(gateway.request(request, &call)?).await?.into_inner();
            clinics.load(found.appointments.iter().map(|a| a.clinic_id.as_str())).await?;
            for appointment in &found.appointments {
                let clinic = clinics.get(&appointment.clinic_id).await?;
                if day.as_ref().is_none_or(|d| scheduling::local_day(appointment, clinic).as_ref() == Some(d)) {
                    entries.push(entry(clinics.appointment(appointment).await?, "match"));
                }
            }
            next_link("Appointment", &pairs, &found.next_page_token)
        }
        (None, Some(location)) => {
            let location_id = reference_id(location, "Location")
                .ok_or_else(|| Failure::invalid("actor must be Patient/<id> or Location/<id>", Some("actor")))?;
            let day = day.ok_or_else(|| Failure::invalid("a search by Location needs a date (YYYY-MM-DD)", Some("date")))?;
            if first(&pairs, "_page_token").is_some() {
                return Err(Failure::invalid("a Location's day is answered in one page", Some("_page_token")));
            }
            let request = sched::ListClinicsRequest { location_id, page_size: 100, ..Default::default() };
            let here = gateway.scheduling().list_clinics(gateway.request(request, &call)?).await?.into_inner().clinics;
            for clinic in here {
                let mut page_token = String::new();
                loop {
                    let request = sched::ListAppointmentsRequest {
                        clinic_id: clinic.id.clone(),
                        day: Some(day),
                        statuses: statuses.clone(),
                        page_size: 100,
                        page_token,
                        ..Default::default()
                    };
                    let found = gateway.scheduling().list_appointments(gateway.request(request, &call)?).await?.into_inner();
                    for appointment in &found.appointments {
                        entries.push(entry(scheduling::appointment(appointment, &clinic), "match"));
                    }
                    if entries.len() > LOCATION_DAY_LIMIT {
                        return Err(Failure::unprocessable(format!(
                            "more than {LOCATION_DAY_LIMIT} appointments at this Location on that day: search by status too"
                        )));
                    }
                    if found.next_page_token.is_empty() {
                        break;
                    }
                    page_token = found.next_page_token;
                }
            }
            None
        }
        _ => {
            return Err(Failure::invalid(
                "search appointments by patient (or actor=Patient/<id>), or by actor=Location/<id> with a date",
                None,
            ));
        }
    };
    Ok(json(StatusCode::OK, &searchset(entries, next)))
}
