//! Prints one SIU message of every kind the scheduling feeds send (S12, S13, S14, S15, S17, S26),
//! built by the same code as the feeds from made-up events, one per line with its segments
//! separated by `\r`, for an independent validator (CI: `tests/smoke/hl7_validate.py`).
//!
//!     cargo run -q -p pac-interop --example siu_samples | python3 tests/smoke/hl7_validate.py

use pac_interop::hl7::Charset;
use pac_interop::siu::{Addressing, Context, build, trigger_of};
use pac_proto::records as rec;
use pac_proto::scheduling::{self as sched, watch_events_response::Event};

fn main() {
    let patient = rec::Patient {
        id: "01a243cd-ed57-7119-bf22-d8768141c687".into(),
        nhs_number: "9434765919".into(),
        nhs_number_status: 1,
        local_identifiers: vec![rec::LocalIdentifier { issuer: "RR8".into(), value: "K123456".into() }],
        family_name: "O'Súilleabháin".into(),
        given_name: "Seán".into(),
        birth_date: Some(pac_proto::common::Date { year: 1980, month: 1, day: 31 }),
        sex: rec::Sex::Male as i32,
        ..Default::default()
    };
    let clinic = sched::Clinic { name: "Knee clinic".into(), specialty: "Trauma & orthopaedics".into(), ..Default::default() };
    let context = Context { patient: &patient, clinic: &clinic, changed_by: "coordinator-1" };
    let appointment = |status: sched::AppointmentStatus| sched::Appointment {
        id: "01a243cd-ed57-7119-bf22-d8768141c690".into(),
        status: status as i32,
        organisation: "RR8".into(),
        service_code: "KNEE".into(),
        start_time: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
        end_time: Some(prost_types::Timestamp { seconds: 1_800_000_900, nanos: 0 }),
        cancellation: (status == sched::AppointmentStatus::Cancelled).then(|| sched::Cancellation {
            reason_code: "PATIENT_UNWELL".into(),
            cancelled_by: sched::CancelledBy::Patient as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let event = |status, reason: &str| sched::AppointmentEvent {
        appointment: Some(appointment(status)),
        reason: reason.into(),
        ..Default::default()
    };
    use sched::AppointmentStatus as S;
    let events = [
        Event::AppointmentBooked(event(S::Booked, "")),
        Event::AppointmentRescheduled(event(S::Booked, "CLINIC_CHANGED")),
        Event::AppointmentStatusChanged(event(S::Arrived, "")),
        Event::AppointmentStatusChanged(event(S::Fulfilled, "")),
        Event::AppointmentPatientChanged(event(S::Booked, "")),
        Event::AppointmentCancelled(event(S::Cancelled, "")),
        Event::AppointmentStatusChanged(event(S::EnteredInError, "")),
        Event::AppointmentStatusChanged(event(S::Noshow, "")),
    ];
    for (n, item) in events.iter().enumerate() {
        let (trigger, event) = trigger_of(item).expect("a message for each");
        for charset in [Charset::Latin1, Charset::Utf8] {
            let addressing = Addressing {
                sending_application: "PAC".into(),
                receiving_application: "PAS".into(),
                receiving_facility: "RR8".into(),
                charset,
            };
            let message = build(trigger, event, &context, &addressing, &format!("PAC{n:017}"), chrono::Utc::now());
            // One line each: the validator reads the text (the character set is the transport's).
            println!("{}", message.trim_end_matches('\r'));
        }
    }
}
