//! Appointment: statuses one to one, its slot, its patient and its clinic's Location as
//! participants, `basedOn` the referral's ServiceRequest, `cancelationReason`. Read, search, book
//! (idempotent, or conditional) and cancel.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use pac_proto::scheduling as sched;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::outcome::Failure;
use super::rest::{
    checked_id, condition, count, date, entry, first, if_match, next_link, parameters, prefixed, query, reference_id, searchset, typed_id,
    updated, with_etag, with_location,
};
use super::schedule::Clinics;
use super::{Api, CANCELLATION_SYSTEM, CANCELLED_BY_SYSTEM, instant, json, prune};
use crate::gateway::{Call, Gateway};

/// The FHIR status of an appointment status (one to one).
pub fn status(status: sched::AppointmentStatus) -> &'static str {
    use sched::AppointmentStatus as S;
    match status {
        S::Proposed => "proposed",
        S::Pending => "pending",
        S::Booked => "booked",
        S::Arrived => "arrived",
        S::CheckedIn => "checked-in",
        S::Fulfilled => "fulfilled",
        S::Cancelled => "cancelled",
        S::Noshow => "noshow",
        S::EnteredInError => "entered-in-error",
        S::Waitlist => "waitlist",
        S::Unspecified => "proposed",
    }
}

/// The appointment status a FHIR status token names.
pub fn status_of(token: &str) -> Option<sched::AppointmentStatus> {
    use sched::AppointmentStatus as S;
    [S::Proposed, S::Pending, S::Booked, S::Arrived, S::CheckedIn, S::Fulfilled, S::Cancelled, S::Noshow, S::EnteredInError, S::Waitlist]
        .into_iter()
        .find(|s| status(*s) == token)
}

/// The day an appointment starts on in its clinic's time zone (the UK's when the clinic names
/// none it knows).
pub fn local_day(appointment: &sched::Appointment, clinic: &sched::Clinic) -> Option<pac_proto::common::Date> {
    use chrono::Datelike;
    let start = appointment.start_time.as_ref()?;
    let zone: chrono_tz::Tz = clinic.time_zone.parse().unwrap_or(chrono_tz::Europe::London);
    let day = chrono::DateTime::<chrono::Utc>::from_timestamp(start.seconds, 0)?.with_timezone(&zone).date_naive();
    Some(pac_proto::common::Date { year: day.year(), month: day.month() as i32, day: day.day() as i32 })
}

/// `Appointment`: its slot, its patient and its clinic's Location as participants, the referral it
/// is for (`basedOn` ServiceRequest), and why it was cancelled.
pub fn appointment(appointment: &sched::Appointment, clinic: &sched::Clinic) -> Value {
    let mut value = json!({
        "resourceType": "Appointment",
        "id": appointment.id,
        "meta": { "versionId": appointment.etag },
        "status": status(appointment.status()),
        "serviceType": [{ "coding": [{ "system": super::SERVICE_SYSTEM, "code": appointment.service_code }] }],
        "start": appointment.start_time.as_ref().and_then(instant),
        "end": appointment.end_time.as_ref().and_then(instant),
        "slot": [{ "reference": format!("Slot/{}", appointment.slot_id) }],
        "participant": [
            { "actor": { "reference": format!("Patient/{}", appointment.patient_id) }, "status": "accepted" },
            { "actor": { "reference": format!("Location/{}", clinic.location_id), "display": clinic.name }, "status": "accepted" },
        ],
    });
    if !appointment.referral_id.is_empty() {
        value["basedOn"] = json!([{ "reference": format!("ServiceRequest/{}", appointment.referral_id) }]);
    }
    if let Some(cancellation) = &appointment.cancellation {
        let (by, who) = match cancellation.cancelled_by() {
            sched::CancelledBy::Patient => ("patient", "the patient"),
            sched::CancelledBy::Provider => ("provider", "the hospital"),
            sched::CancelledBy::System => ("system", "the system"),
            sched::CancelledBy::Unspecified => ("", ""),
        };
        let mut coding = vec![json!({ "system": super::CANCELLATION_SYSTEM, "code": cancellation.reason_code })];
        if !by.is_empty() {
            coding.push(json!({ "system": super::CANCELLED_BY_SYSTEM, "code": by }));
        }
        value["cancelationReason"] = json!({
            "coding": coding,
            "text": if who.is_empty() { cancellation.reason_code.clone() } else { format!("{} (cancelled by {who})", cancellation.reason_code) },
        });
    }
    value
}

/// What `POST Appointment` and `PUT Appointment/{id}` read of the body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppointmentInput {
    pub resource_type: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub slot: Vec<Reference>,
    #[serde(default)]
    pub participant: Vec<Participant>,
    #[serde(default)]
    pub based_on: Vec<Reference>,
    #[serde(default)]
    pub cancelation_reason: Option<CodeableConcept>,
}

#[derive(Deserialize, Serialize)]
pub struct Reference {
    #[serde(default)]
    pub reference: String,
}

#[derive(Deserialize)]
pub struct Participant {
    pub actor: Option<Reference>,
}

#[derive(Deserialize)]
pub struct CodeableConcept {
    #[serde(default)]
    pub coding: Vec<Coding>,
    #[serde(default)]
    pub text: String,
}

#[derive(Deserialize)]
pub struct Coding {
    #[serde(default)]
    pub system: String,
    #[serde(default)]
    pub code: String,
}

/// The id of the one reference to a `kind` among `references` (`Kind/<id>`), if any. Two, or one
/// that is no `Kind/<id>`, are refused: nothing sent is dropped.
fn id_of<'a>(references: impl IntoIterator<Item = &'a Reference>, kind: &str, field: &str) -> Result<Option<String>, Failure> {
    let mut found = None;
    for reference in references {
        let id = typed_id(&reference.reference, kind)
            .ok_or_else(|| Failure::invalid(format!("{} is not a {kind} reference ({kind}/<id>)", reference.reference), Some(field)))?;
        if found.replace(id).is_some() {
            return Err(Failure::invalid(format!("one {kind} only"), Some(field)));
        }
    }
    Ok(found)
}

// The interactions.

pub(super) async fn read(State(api): State<Api>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Failure> {
    checked_id(&id, "Appointment")?;
    let (gateway, call) = api.caller(&headers);
    let appointment = get_appointment(&gateway, &id, &call).await?;
    let rendered = Clinics::new(&gateway, &call).appointment(&appointment).await?;
    Ok(with_etag(json(StatusCode::OK, &rendered), &appointment.etag))
}

pub(super) async fn get_appointment(gateway: &Gateway, id: &str, call: &Call) -> Result<sched::Appointment, Failure> {
    let request = gateway.request(sched::GetAppointmentRequest { id: id.to_string() }, call)?;
    Ok(gateway.scheduling().get_appointment(request).await?.into_inner().appointment.unwrap_or_default())
}

pub(super) fn appointment_body(body: &[u8]) -> Result<AppointmentInput, Failure> {
    let input: AppointmentInput =
        serde_json::from_slice(body).map_err(|e| Failure::invalid(format!("the body is not an Appointment: {e}"), Some("Appointment")))?;
    if input.resource_type != "Appointment" {
        return Err(Failure::invalid("the body is not an Appointment", Some("Appointment.resourceType")));
    }
    Ok(input)
}

/// The statuses an appointment is live in (it holds its slot).
const LIVE: [sched::AppointmentStatus; 4] = [
    sched::AppointmentStatus::Pending,
    sched::AppointmentStatus::Booked,
    sched::AppointmentStatus::Arrived,
    sched::AppointmentStatus::CheckedIn,
];

/// The statuses of a comma-separated `status` parameter.
fn statuses(tokens: &str, parameter: &str) -> Result<Vec<i32>, Failure> {
    tokens
        .split(',')
        .map(|token| {
            status_of(token.trim())
                .map(|s| s as i32)
                .ok_or_else(|| Failure::invalid(format!("status {token} is not an appointment status"), Some(parameter)))
        })
        .collect()
}

/// The patient's one appointment a conditional booking (`If-None-Exist: patient=…&slot=…&status=…`)
/// finds; several are a 412, as FHIR has it.
pub(super) async fn existing_appointment(
    gateway: &Gateway,
    call: &Call,
    condition: &[(String, String)],
) -> Result<Option<sched::Appointment>, Failure> {
    let patient_id = first(condition, "patient")
        .and_then(|p| reference_id(p, "Patient"))
        .ok_or_else(|| Failure::invalid("If-None-Exist names the patient: patient=Patient/<id>", Some("If-None-Exist")))?;
    let slot = match first(condition, "slot") {
        None => None,
        Some(slot) => Some(reference_id(slot, "Slot").ok_or_else(|| Failure::invalid("slot must be Slot/<id>", Some("If-None-Exist")))?),
    };
    // Without a status, a live appointment: a cancelled one does not stop a booking.
    let statuses = match first(condition, "status") {
        Some(tokens) => statuses(tokens, "If-None-Exist")?,
        None => LIVE.iter().map(|s| *s as i32).collect(),
    };
    let (mut matches, mut page_token) = (Vec::new(), String::new());
    loop {
        let request = sched::ListAppointmentsRequest {
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
pub(super) async fn book(State(api): State<Api>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, Failure> {
    let input = appointment_body(&body)?;
    if !matches!(input.status.as_str(), "" | "booked" | "proposed" | "pending") {
        return Err(Failure::invalid("a new appointment is booked: status booked", Some("Appointment.status")));
    }
    let slot_id = id_of(&input.slot, "Slot", "Appointment.slot")?
        .ok_or_else(|| Failure::invalid("name the free Slot to book (slot)", Some("Appointment.slot")))?;
    // The clinic's Location is the platform's to set: only the Patient is read of the participants.
    let patients = input.participant.iter().filter_map(|p| p.actor.as_ref()).filter(|a| !a.reference.starts_with("Location/"));
    let patient_id = id_of(patients, "Patient", "Appointment.participant")?
        .ok_or_else(|| Failure::invalid("name the Patient (a participant's actor)", Some("Appointment.participant")))?;
    let referral_id = id_of(&input.based_on, "ServiceRequest", "Appointment.basedOn")?.unwrap_or_default();
    let (gateway, call) = api.caller(&headers);
    if let Some(condition) = condition(&headers, &["patient", "slot", "status"])? {
        if first(&condition, "patient").and_then(|p| reference_id(p, "Patient")).is_some_and(|p| p != patient_id) {
            return Err(Failure::invalid("If-None-Exist names another patient than the appointment", Some("If-None-Exist")));
        }
        if first(&condition, "slot").and_then(|s| reference_id(s, "Slot")).is_some_and(|s| s != slot_id) {
            return Err(Failure::invalid("If-None-Exist names another slot than the appointment", Some("If-None-Exist")));
        }
        if let Some(found) = existing_appointment(&gateway, &call, &condition).await? {
            let rendered = Clinics::new(&gateway, &call).appointment(&found).await?;
            return Ok(with_etag(json(StatusCode::OK, &rendered), &found.etag));
        }
    }
    let request = sched::BookAppointmentRequest {
        target: Some(sched::book_appointment_request::Target::SlotId(slot_id)),
        patient_id,
        referral_id,
        request_id: call.request_id.clone(),
    };
    let booked =
        gateway.scheduling().book_appointment(gateway.request(request, &call)?).await?.into_inner().appointment.unwrap_or_default();
    let rendered = Clinics::new(&gateway, &call).appointment(&booked).await?;
    Ok(with_location(with_etag(json(StatusCode::CREATED, &rendered), &booked.etag), &format!("Appointment/{}", booked.id)))
}

/// Cancels by `PUT` (the whole Appointment) or `PATCH` (a JSON Patch of it): status `cancelled`
/// with a `cancelationReason`, `If-Match` its current version. Any other change is refused.
pub(super) async fn update(
    State(api): State<Api>,
    method: Method,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    checked_id(&id, "Appointment")?;
    let etag = if_match(&headers)?;
    let (gateway, call) = api.caller(&headers);
    let current = get_appointment(&gateway, &id, &call).await?;
    let mut clinics = Clinics::new(&gateway, &call);
    let mut rendered = clinics.appointment(&current).await?;
    let wanted = updated(&method, &etag, &current.etag, || rendered.clone(), &headers, &body)?;
    let input = appointment_body(&wanted)?;
    if input.status != "cancelled" {
        return Err(Failure::invalid(
            "only a cancellation is taken here: status cancelled, with a cancelationReason",
            Some("Appointment.status"),
        ));
    }
    // Every element sent but the status and the reason must be as it is now (left out: left as is).
    let mut wanted: Value = serde_json::from_slice(&wanted).unwrap_or_default();
    if wanted.get("id").is_some_and(|sent| sent.as_str() != Some(id.as_str())) {
        return Err(Failure::invalid("the body's id is not the Appointment addressed", Some("Appointment.id")));
    }
    prune(&mut wanted);
    prune(&mut rendered);
    let kept = ["resourceType", "id", "meta", "status", "cancelationReason"];
    let changed = wanted
        .as_object()
        .into_iter()
        .flatten()
        .find(|(name, value)| !kept.contains(&name.as_str()) && rendered.get(name.as_str()) != Some(value));
    if let Some((name, _)) = changed {
        return Err(Failure::unprocessable(format!(
            "only a cancellation is taken here, and {name} would change (to move an appointment, book the new slot, then cancel this one)"
        )));
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
        Some("patient") => sched::CancelledBy::Patient,
        Some("provider") => sched::CancelledBy::Provider,
        _ => {
            return Err(Failure::invalid(
                format!(
                    "say who cancelled: a cancelationReason coding of {CANCELLED_BY_SYSTEM}, patient or provider (it decides the waiting-time clock)"
                ),
                Some("Appointment.cancelationReason"),
            ));
        }
    };
    let request = sched::CancelAppointmentRequest {
        appointment_id: id,
        reason_code: reason,
        cancelled_by: cancelled_by as i32,
        etag,
        request_id: call.request_id.clone(),
    };
    let cancelled =
        gateway.scheduling().cancel_appointment(gateway.request(request, &call)?).await?.into_inner().appointment.unwrap_or_default();
    Ok(with_etag(json(StatusCode::OK, &clinics.appointment(&cancelled).await?), &cancelled.etag))
}

/// At most this many appointments answer a search by Location and day (every clinic there).
pub(super) const LOCATION_DAY_LIMIT: usize = 1000;

/// At most this many pages of a patient's appointments are read to fill one page of those on a
/// `date` (the rest follow by the next link).
const PAGES_A_SEARCH: usize = 10;

/// Appointments of a patient (`patient`, or `actor=Patient/<id>`), optionally on a `date` and in
/// some `status`es; or of a Location (`actor=Location/<id>`) on a `date`.
pub(super) async fn search(State(api): State<Api>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Result<Response, Failure> {
    let pairs = parameters(query(raw)?, &["patient", "actor", "date", "status", "_count", "_page_token"], &[])?;
    let statuses = first(&pairs, "status").map(|tokens| statuses(tokens, "status")).transpose()?.unwrap_or_default();
    let day = first(&pairs, "date")
        .map(|text| {
            let day = match prefixed(text) {
                ("eq", day) => date(day),
                _ => None,
            };
            day.ok_or_else(|| Failure::invalid("date is a day, YYYY-MM-DD (equality only)", Some("date")))
        })
        .transpose()?;
    let (mut patient, mut location) = (first(&pairs, "patient").map(|p| reference_id(p, "Patient")), None);
    if let Some(actor) = first(&pairs, "actor") {
        match (typed_id(actor, "Patient"), typed_id(actor, "Location")) {
            (Some(_), _) if patient.is_some() => {
                return Err(Failure::invalid("name the patient once: patient or actor=Patient/<id>", Some("actor")));
            }
            (Some(id), _) => patient = Some(Some(id)),
            (None, Some(id)) => location = Some(id),
            (None, None) => return Err(Failure::invalid("actor must be Patient/<id> or Location/<id>", Some("actor"))),
        }
    }
    let (gateway, call) = api.caller(&headers);
    let (entries, next) = match (patient, location) {
        (Some(patient_id), None) => {
            let patient_id = patient_id.ok_or_else(|| Failure::invalid("patient must be Patient/<id>", Some("patient")))?;
            let (count, mut page_token) = (count(&pairs)?, first(&pairs, "_page_token").unwrap_or_default().to_string());
            let mut clinics = Clinics::new(&gateway, &call);
            let mut entries = Vec::new();
            for _ in 0..PAGES_A_SEARCH {
                let page_size = count - entries.len() as i32;
                let request = sched::ListAppointmentsRequest {
                    patient_id: patient_id.clone(),
                    statuses: statuses.clone(),
                    page_size,
                    page_token,
                    ..Default::default()
                };
                let found = gateway.scheduling().list_appointments(gateway.request(request, &call)?).await?.into_inner();
                clinics.load(found.appointments.iter().map(|a| a.clinic_id.as_str())).await?;
                for listed in &found.appointments {
                    let clinic = clinics.get(&listed.clinic_id).await?;
                    let on_the_day = day.as_ref().is_none_or(|d| local_day(listed, clinic).as_ref() == Some(d));
                    if on_the_day {
                        entries.push(entry(clinics.appointment(listed).await?, "match"));
                    }
                }
                page_token = found.next_page_token;
                if page_token.is_empty() || entries.len() as i32 >= count {
                    break;
                }
            }
            (entries, next_link("Appointment", &pairs, &page_token))
        }
        (None, Some(location_id)) => {
            let day = day.ok_or_else(|| Failure::invalid("a search by Location needs a date (YYYY-MM-DD)", Some("date")))?;
            if let Some(name) = ["_count", "_page_token"].into_iter().find(|name| first(&pairs, name).is_some()) {
                return Err(Failure::invalid(format!("a Location's day is answered whole, in one page: no {name}"), Some(name)));
            }
            (location_day(&gateway, &call, location_id, day, &statuses).await?, None)
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

/// Every appointment on `day` at every clinic of the Location, as search entries.
async fn location_day(
    gateway: &Gateway,
    call: &Call,
    location_id: String,
    day: pac_proto::common::Date,
    statuses: &[i32],
) -> Result<Vec<Value>, Failure> {
    let (mut entries, mut clinics_page) = (Vec::new(), String::new());
    loop {
        let request =
            sched::ListClinicsRequest { location_id: location_id.clone(), page_size: 100, page_token: clinics_page, ..Default::default() };
        let here = gateway.scheduling().list_clinics(gateway.request(request, call)?).await?.into_inner();
        for clinic in &here.clinics {
            let mut page_token = String::new();
            loop {
                let request = sched::ListAppointmentsRequest {
                    clinic_id: clinic.id.clone(),
                    day: Some(day),
                    statuses: statuses.to_vec(),
                    page_size: 100,
                    page_token,
                    ..Default::default()
                };
                let found = gateway.scheduling().list_appointments(gateway.request(request, call)?).await?.into_inner();
                entries.extend(found.appointments.iter().map(|a| entry(appointment(a, clinic), "match")));
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
        if here.next_page_token.is_empty() {
            return Ok(entries);
        }
        clinics_page = here.next_page_token;
    }
}
