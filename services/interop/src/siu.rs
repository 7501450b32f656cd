//! Scheduling feeds to the trust: an appointment event as an HL7 v2.5 SIU message.
//!
//! | event | message |
//! |---|---|
//! | booked | S12 |
//! | rescheduled | S13 (the reason in SCH-6) |
//! | arrived, checked in, attended; the appointment moved to another patient record by a merge | S14 |
//! | cancelled | S15 (the reason and who cancelled in SCH-6) |
//! | entered in error | S17 |
//! | did not attend | S26 |
//!
//! Segments: MSH, SCH (the appointment id as an EI in namespace `PAC`, the event reason, the filler
//! contact, who made the change, the filler status), PID (NHS number with its authority `NHS`, local
//! identifiers, the platform's patient id, name, birth date, sex), RGS, AIS (the clinic's service,
//! start, duration in minutes), AIL (the clinic, its organisation).

use chrono::{DateTime, Utc};
use pac_proto::records as rec;
use pac_proto::scheduling::{self as sched, watch_events_response::Event};

use crate::ack::escape;
use crate::hl7::Charset;

/// The SIU trigger events.
pub const TRIGGERS: &[&str] = &["S12", "S13", "S14", "S15", "S17", "S26"];

/// The message an event becomes, with its appointment and the reason it carries; `None` for events
/// a feed does not send (holds, offers, other status changes).
pub fn trigger_of(event: &Event) -> Option<(&'static str, &sched::AppointmentEvent)> {
    use sched::AppointmentStatus as S;
    match event {
        Event::AppointmentBooked(e) => Some(("S12", e)),
        Event::AppointmentRescheduled(e) => Some(("S13", e)),
        Event::AppointmentCancelled(e) => Some(("S15", e)),
        Event::AppointmentPatientChanged(e) => Some(("S14", e)),
        Event::AppointmentStatusChanged(e) => match e.appointment.as_ref().map(|a| a.status()) {
            Some(S::Arrived | S::CheckedIn | S::Fulfilled) => Some(("S14", e)),
            Some(S::Noshow) => Some(("S26", e)),
            Some(S::EnteredInError) => Some(("S17", e)),
            _ => None,
        },
        Event::AppointmentHeld(_) | Event::OfferMade(_) => None,
    }
}

/// Where a feed sends and how it names itself.
#[derive(Debug, Clone)]
pub struct Addressing {
    pub sending_application: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    pub charset: Charset,
}

/// What a message says beside the event: the patient and the clinic as the gateway returned them,
/// and who made the change.
pub struct Context<'a> {
    pub patient: &'a rec::Patient,
    pub clinic: &'a sched::Clinic,
    pub changed_by: &'a str,
}

fn timestamp(time: Option<&prost_types::Timestamp>) -> String {
    time.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.format("%Y%m%d%H%M%S+0000").to_string())
        .unwrap_or_default()
}

fn status_code(status: sched::AppointmentStatus) -> &'static str {
    use sched::AppointmentStatus as S;
    // HL7 table 0278 (filler status codes).
    match status {
        S::Booked | S::Arrived | S::CheckedIn => "Booked",
        S::Fulfilled => "Complete",
        S::Cancelled => "Cancelled",
        S::Noshow => "Noshow",
        S::EnteredInError => "Deleted",
        S::Pending | S::Proposed => "Pending",
        S::Waitlist => "Waitlist",
        S::Unspecified => "",
    }
}

/// The event reason (SCH-6, CE): a code and its text.
fn reason(trigger: &str, event: &sched::AppointmentEvent) -> (String, String) {
    let appointment = event.appointment.as_ref();
    match trigger {
        "S15" => {
            let cancellation = appointment.and_then(|a| a.cancellation.as_ref());
            let code = cancellation.map(|c| c.reason_code.clone()).filter(|c| !c.is_empty()).unwrap_or_else(|| "CANCELLED".into());
            let by = match cancellation.map(|c| c.cancelled_by()) {
                Some(sched::CancelledBy::Patient) => "Cancelled by the patient",
                Some(sched::CancelledBy::Provider) => "Cancelled by the hospital",
                Some(sched::CancelledBy::System) => "Cancelled by the system",
                _ => "Cancelled",
            };
            (code, by.to_string())
        }
        "S13" => {
            let code = if event.reason.is_empty() { "RESCHEDULED".to_string() } else { event.reason.clone() };
            (code, "Rescheduled".into())
        }
        "S12" => ("BOOKED".into(), "Booked".into()),
        "S17" => ("ENTERED_IN_ERROR".into(), "Entered in error".into()),
        "S26" => ("NOSHOW".into(), "Did not attend".into()),
        _ => match appointment.map(|a| a.status()) {
            Some(sched::AppointmentStatus::Arrived | sched::AppointmentStatus::CheckedIn) => ("ARRIVED".into(), "Arrived".into()),
            Some(sched::AppointmentStatus::Fulfilled) => ("ATTENDED".into(), "Attended".into()),
            _ => ("PATIENT_CHANGED".into(), "Patient record changed".into()),
        },
    }
}

fn pid(patient: &rec::Patient) -> String {
    let mut identifiers = Vec::new();
    if !patient.nhs_number.is_empty() {
        identifiers.push(format!("{}^^^NHS^NH", escape(&patient.nhs_number)));
    }
    for local in &patient.local_identifiers {
        identifiers.push(format!("{}^^^{}^PI", escape(&local.value), escape(&local.issuer)));
    }
    identifiers.push(format!("{}^^^PAC^PI", escape(&patient.id)));
    let birth = patient.birth_date.as_ref().map(|d| format!("{:04}{:02}{:02}", d.year, d.month, d.day)).unwrap_or_default();
    let sex = match patient.sex() {
        rec::Sex::Male => "M",
        rec::Sex::Female => "F",
        rec::Sex::Other => "O",
        _ => "U",
    };
    let status = match patient.nhs_number_status {
        n @ 1..=8 => format!("NSTS{n:02}"),
        _ => String::new(),
    };
    let mut pid =
        format!("PID|1||{}||{}^{}||{birth}|{sex}", identifiers.join("~"), escape(&patient.family_name), escape(&patient.given_name));
    if !status.is_empty() {
        // PID-9 .. PID-31 empty, PID-32 the NHS number's verification status.
        pid.push_str(&"|".repeat(24));
        pid.push_str(&status);
    }
    pid
}

/// The SIU message for `event` (segments ended by `\r`), `control_id` its MSH-10.
pub fn build(
    trigger: &str,
    event: &sched::AppointmentEvent,
    context: &Context<'_>,
    addressing: &Addressing,
    control_id: &str,
    now: DateTime<Utc>,
) -> String {
    let default = sched::Appointment::default();
    let appointment = event.appointment.as_ref().unwrap_or(&default);
    let (reason_code, reason_text) = reason(trigger, event);
    let minutes = match (&appointment.start_time, &appointment.end_time) {
        (Some(start), Some(end)) => ((end.seconds - start.seconds) / 60).max(0),
        _ => 0,
    };
    let charset_name = match addressing.charset {
        Charset::Ascii => "ASCII",
        Charset::Latin1 | Charset::Windows1252 => "8859/1",
        Charset::Latin9 => "8859/15",
        Charset::Utf8 => "UNICODE UTF-8",
    };
    let organisation = escape(&appointment.organisation);
    let mut message = format!(
        // MSH-15 and MSH-16 empty: original mode, an application ACK (AA, AE, AR) for each message.
        "MSH|^~\\&|{}|{organisation}|{}|{}|{}||SIU^{trigger}^SIU_S12|{}|P|2.5||||||{charset_name}\r",
        escape(&addressing.sending_application),
        escape(&addressing.receiving_application),
        escape(&addressing.receiving_facility),
        now.format("%Y%m%d%H%M%S+0000"),
        escape(control_id),
    );
    message.push_str(&format!(
        "SCH||{}^PAC||||{}^{}^PAC||||||||||PAC^Patient Access Platform||||{}|||||{}\r",
        escape(&appointment.id),
        escape(&reason_code),
        escape(&reason_text),
        escape(context.changed_by),
        status_code(appointment.status()),
    ));
    message.push_str(&pid(context.patient));
    message.push('\r');
    message.push_str("RGS|1\r");
    message.push_str(&format!(
        "AIS|1||{}^{}^PAC|{}|||{minutes}|min^minutes^UCUM\r",
        escape(&appointment.service_code),
        escape(&context.clinic.specialty),
        timestamp(appointment.start_time.as_ref()),
    ));
    message.push_str(&format!("AIL|1||^^^{organisation}^^^^^{}\r", escape(&context.clinic.name)));
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_becomes_its_message() {
        let with = |status: sched::AppointmentStatus| sched::AppointmentEvent {
            appointment: Some(sched::Appointment { status: status as i32, ..Default::default() }),
            ..Default::default()
        };
        use sched::AppointmentStatus as S;
        let cases = [
            (Event::AppointmentBooked(with(S::Booked)), Some("S12")),
            (Event::AppointmentRescheduled(with(S::Booked)), Some("S13")),
            (Event::AppointmentCancelled(with(S::Cancelled)), Some("S15")),
            (Event::AppointmentPatientChanged(with(S::Booked)), Some("S14")),
            (Event::AppointmentStatusChanged(with(S::Arrived)), Some("S14")),
            (Event::AppointmentStatusChanged(with(S::Fulfilled)), Some("S14")),
            (Event::AppointmentStatusChanged(with(S::Noshow)), Some("S26")),
            (Event::AppointmentStatusChanged(with(S::EnteredInError)), Some("S17")),
            (Event::AppointmentHeld(with(S::Pending)), None),
        ];
        for (event, expected) in cases {
            assert_eq!(trigger_of(&event).map(|(t, _)| t), expected, "{event:?}");
        }
    }

    #[test]
    fn a_cancellation_says_why_and_who() {
        let appointment = sched::Appointment {
            id: "a1".into(),
            status: sched::AppointmentStatus::Cancelled as i32,
            organisation: "RR8".into(),
            service_code: "KNEE".into(),
            cancellation: Some(sched::Cancellation {
                reason_code: "PATIENT_UNWELL".into(),
                cancelled_by: sched::CancelledBy::Patient as i32,
                ..Default::default()
            }),
            start_time: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
            end_time: Some(prost_types::Timestamp { seconds: 1_800_000_900, nanos: 0 }),
            ..Default::default()
        };
        let event = sched::AppointmentEvent { appointment: Some(appointment), ..Default::default() };
        let patient = rec::Patient {
            id: "p1".into(),
            nhs_number: "9434765919".into(),
            nhs_number_status: 1,
            family_name: "O'Brien".into(),
            given_name: "Seán".into(),
            local_identifiers: vec![rec::LocalIdentifier { issuer: "RR8".into(), value: "K1".into() }],
            ..Default::default()
        };
        let clinic = sched::Clinic { name: "Knee clinic".into(), specialty: "Trauma and orthopaedics".into(), ..Default::default() };
        let addressing = Addressing {
            sending_application: "PAC".into(),
            receiving_application: "PAS".into(),
            receiving_facility: "RR8".into(),
            charset: Charset::Latin1,
        };
        let context = Context { patient: &patient, clinic: &clinic, changed_by: "coordinator-1" };
        let message = build("S15", &event, &context, &addressing, "PAC00000000000000042", chrono::Utc::now());
        let segments: Vec<&str> = message.split('\r').collect();
        assert!(segments[0].contains("|SIU^S15^SIU_S12|PAC00000000000000042|P|2.5|"), "{message}");
        assert!(segments[1].starts_with("SCH||a1^PAC||||PATIENT_UNWELL^Cancelled by the patient^PAC|"), "{message}");
        let sch: Vec<&str> = segments[1].split('|').collect();
        assert_eq!((sch[16], sch[20], sch[25]), ("PAC^Patient Access Platform", "coordinator-1", "Cancelled"), "{message}");
        let msh: Vec<&str> = segments[0].split('|').collect();
        assert_eq!((msh[14], msh[15], msh[17]), ("", "", "8859/1"), "original mode: {message}");
        assert!(segments[2].starts_with("PID|1||9434765919^^^NHS^NH~K1^^^RR8^PI~p1^^^PAC^PI||O'Brien^Seán||"), "{message}");
        assert!(segments[2].ends_with("|NSTS01"), "{message}");
        assert!(segments[4].contains("|20270115080000+0000|||15|min^minutes^UCUM"), "{message}");
    }
}
