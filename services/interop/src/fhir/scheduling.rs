//! Schedule (a clinic), Slot and Appointment from the scheduling service.

use pac_proto::scheduling as sched;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::instant;

/// `Schedule` for a clinic: its actor the clinic's Location, its service type the service code.
pub fn schedule(clinic: &sched::Clinic) -> Value {
    json!({
        "resourceType": "Schedule",
        "id": clinic.id,
        "active": true,
        "serviceType": [{ "coding": [{ "system": super::SERVICE_SYSTEM, "code": clinic.service_code }], "text": clinic.specialty }],
        "actor": [{ "reference": format!("Location/{}", clinic.location_id), "display": clinic.name }],
        "comment": clinic.name,
    })
}

/// `Slot`: `free` while it has room, else `busy`.
pub fn slot(slot: &sched::Slot, service_code: &str) -> Value {
    let mut value = json!({
        "resourceType": "Slot",
        "id": slot.id,
        "schedule": { "reference": format!("Schedule/{}", slot.clinic_id) },
        "status": if slot.occupied < slot.capacity { "free" } else { "busy" },
        "start": slot.start_time.as_ref().and_then(instant),
        "end": slot.end_time.as_ref().and_then(instant),
    });
    if !service_code.is_empty() {
        value["serviceType"] = json!([{ "coding": [{ "system": super::SERVICE_SYSTEM, "code": service_code }] }]);
    }
    value
}

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

/// The id in a reference `Type/id` of `kind`.
pub fn id_of<'a>(references: impl IntoIterator<Item = &'a Reference>, kind: &str) -> Option<String> {
    references.into_iter().find_map(|r| r.reference.strip_prefix(kind)?.strip_prefix('/').map(str::to_string))
}
