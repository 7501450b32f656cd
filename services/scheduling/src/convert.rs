//! Records as contract messages, and request fields as domain values.

use chrono::{NaiveTime, Timelike, Weekday};
use pac_platform::convert::{date, timestamp};
use pac_platform::error::FieldViolation;
use pac_proto::common::Address;
use pac_proto::scheduling as pb;

use crate::domain::appointment::Status;
use crate::domain::cancellation::CancelledBy;
use crate::domain::waitlist::Priority;
use crate::model::*;

pub use pac_platform::convert::{parse_date, parse_id, parse_optional_id, parse_text, parse_timestamp};

pub fn location(l: &Location) -> pb::Location {
    pb::Location {
        id: l.id.to_string(),
        name: l.name.clone(),
        address: Some(Address {
            lines: l.address_lines.clone(),
            locality: l.locality.clone(),
            postcode: l.postcode.clone(),
            ..Default::default()
        }),
        directions: l.directions.clone(),
        access_notes: l.access_notes.clone(),
        parking: l.parking.clone(),
    }
}

pub fn clinic(c: &Clinic) -> pb::Clinic {
    pb::Clinic {
        id: c.id.to_string(),
        location_id: c.location_id.to_string(),
        name: c.name.clone(),
        specialty: c.specialty.clone(),
        service_code: c.service_code.clone(),
        time_zone: c.time_zone.clone(),
        what_to_bring: c.what_to_bring.clone(),
        organisation: c.organisation.clone(),
    }
}

pub fn local_time(t: NaiveTime) -> pb::LocalTime {
    pb::LocalTime { hours: t.hour() as i32, minutes: t.minute() as i32 }
}

pub fn parse_local_time(field: &str, value: Option<&pb::LocalTime>) -> Result<NaiveTime, FieldViolation> {
    let value = value.ok_or_else(|| FieldViolation::new(field, "TIME_REQUIRED", "is required"))?;
    u32::try_from(value.hours)
        .ok()
        .zip(u32::try_from(value.minutes).ok())
        .and_then(|(h, m)| NaiveTime::from_hms_opt(h, m, 0))
        .ok_or_else(|| FieldViolation::new(field, "TIME_INVALID", "hours must be 0-23 and minutes 0-59"))
}

pub fn weekday(code: i16) -> Weekday {
    Weekday::try_from((code.clamp(1, 7) - 1) as u8).unwrap_or(Weekday::Mon)
}

pub fn template(t: &Template) -> pb::SessionTemplate {
    pb::SessionTemplate {
        id: t.id.to_string(),
        clinic_id: t.clinic_id.to_string(),
        weekday: t.weekday.into(),
        start: Some(local_time(t.start_time)),
        end: Some(local_time(t.end_time)),
        slot_minutes: t.slot_minutes,
        capacity: t.capacity,
        valid_from: Some(date(t.valid_from)),
        valid_until: t.valid_until.map(date),
    }
}

pub fn slot(s: &Slot) -> pb::Slot {
    pb::Slot {
        id: s.id.to_string(),
        clinic_id: s.clinic_id.to_string(),
        start_time: Some(timestamp(s.start_time)),
        end_time: Some(timestamp(s.end_time)),
        local_date: Some(date(s.local_date)),
        local_start: Some(local_time(s.local_start)),
        capacity: s.capacity,
        occupied: s.occupied,
        organisation: s.organisation.clone(),
    }
}

pub fn status(s: Status) -> pb::AppointmentStatus {
    use pb::AppointmentStatus as P;
    match s {
        Status::Proposed => P::Proposed,
        Status::Pending => P::Pending,
        Status::Booked => P::Booked,
        Status::Arrived => P::Arrived,
        Status::CheckedIn => P::CheckedIn,
        Status::Fulfilled => P::Fulfilled,
        Status::Cancelled => P::Cancelled,
        Status::Noshow => P::Noshow,
        Status::EnteredInError => P::EnteredInError,
        Status::Waitlist => P::Waitlist,
    }
}

pub fn parse_status(field: &str, value: i32) -> Result<Status, FieldViolation> {
    use pb::AppointmentStatus as P;
    let status = match P::try_from(value) {
        Ok(P::Proposed) => Status::Proposed,
        Ok(P::Pending) => Status::Pending,
        Ok(P::Booked) => Status::Booked,
        Ok(P::Arrived) => Status::Arrived,
        Ok(P::CheckedIn) => Status::CheckedIn,
        Ok(P::Fulfilled) => Status::Fulfilled,
        Ok(P::Cancelled) => Status::Cancelled,
        Ok(P::Noshow) => Status::Noshow,
        Ok(P::EnteredInError) => Status::EnteredInError,
        Ok(P::Waitlist) => Status::Waitlist,
        Ok(P::Unspecified) | Err(_) => return Err(FieldViolation::new(field, "STATUS_INVALID", "must be an appointment status")),
    };
    Ok(status)
}

pub fn cancelled_by(by: CancelledBy) -> pb::CancelledBy {
    match by {
        CancelledBy::Patient => pb::CancelledBy::Patient,
        CancelledBy::Provider => pb::CancelledBy::Provider,
        CancelledBy::System => pb::CancelledBy::System,
    }
}

pub fn appointment(a: &Appointment) -> pb::Appointment {
    pb::Appointment {
        id: a.id.to_string(),
        etag: a.etag(),
        slot_id: a.slot_id.to_string(),
        clinic_id: a.clinic_id.to_string(),
        patient_id: a.patient_id.to_string(),
        referral_id: a.referral_id.map(|r| r.to_string()).unwrap_or_default(),
        status: status(a.status) as i32,
        start_time: Some(timestamp(a.start_time)),
        end_time: Some(timestamp(a.end_time)),
        hold_expire_time: a.hold_expires_at.map(timestamp),
        cancellation: a.cancellation.as_ref().map(|c| pb::Cancellation {
            reason_code: c.reason_code.clone(),
            cancelled_by: cancelled_by(c.by) as i32,
            late: c.late,
            cancel_time: Some(timestamp(c.at)),
        }),
        create_time: Some(timestamp(a.created_at)),
        update_time: Some(timestamp(a.updated_at)),
        organisation: a.organisation.clone(),
        service_code: a.service_code.clone(),
    }
}

pub fn priority(p: Priority) -> pb::Priority {
    match p {
        Priority::Routine => pb::Priority::Routine,
        Priority::Urgent => pb::Priority::Urgent,
        Priority::TwoWeekWait => pb::Priority::TwoWeekWait,
    }
}

pub fn parse_priority(field: &str, value: i32) -> Result<Priority, FieldViolation> {
    match pb::Priority::try_from(value) {
        Ok(pb::Priority::Routine) => Ok(Priority::Routine),
        Ok(pb::Priority::Urgent) => Ok(Priority::Urgent),
        Ok(pb::Priority::TwoWeekWait) => Ok(Priority::TwoWeekWait),
        _ => Err(FieldViolation::new(field, "PRIORITY_REQUIRED", "must be ROUTINE, URGENT or TWO_WEEK_WAIT")),
    }
}

pub fn offer(o: &Offer) -> pb::Offer {
    let outcome = match o.outcome {
        OfferOutcome::Open => pb::OfferOutcome::Open,
        OfferOutcome::Accepted => pb::OfferOutcome::Accepted,
        OfferOutcome::Declined => pb::OfferOutcome::Declined,
        OfferOutcome::Expired => pb::OfferOutcome::Expired,
        OfferOutcome::Withdrawn => pb::OfferOutcome::Withdrawn,
    };
    pb::Offer {
        id: o.id.to_string(),
        appointment_id: o.appointment_id.to_string(),
        slot_id: o.slot_id.to_string(),
        offer_time: Some(timestamp(o.offered_at)),
        notice_hours: o.notice_hours,
        expire_time: Some(timestamp(o.expires_at)),
        outcome: outcome as i32,
    }
}

/// An entry with its offers (those of `offers` that are its own).
pub fn entry(e: &Entry, offers: &[Offer]) -> pb::WaitlistEntry {
    pb::WaitlistEntry {
        id: e.id.to_string(),
        patient_id: e.patient_id.to_string(),
        target: Some(match &e.target {
            Target::Clinic(id) => pb::waitlist_entry::Target::ClinicId(id.to_string()),
            Target::Service(code) => pb::waitlist_entry::Target::ServiceCode(code.clone()),
        }),
        earliest_date: e.earliest_date.map(date),
        latest_date: e.latest_date.map(date),
        priority: priority(e.priority) as i32,
        breach_date: e.breach_date.map(date),
        referral_id: e.referral_id.map(|r| r.to_string()).unwrap_or_default(),
        add_time: Some(timestamp(e.added_at)),
        offers: offers.iter().filter(|o| o.entry_id == e.id).map(offer).collect(),
        closed: e.closed_at.is_some(),
        organisation: e.organisation.clone(),
    }
}

/// Required free text.
pub fn parse_name(field: &str, value: &str, max: usize) -> Result<String, FieldViolation> {
    match parse_text(value, max) {
        Ok(text) if !text.is_empty() => Ok(text),
        Ok(_) => Err(FieldViolation::new(field, "FIELD_REQUIRED", "is required")),
        Err(e) => Err(FieldViolation::new(field, "TEXT_INVALID", e)),
    }
}

/// Optional free text.
pub fn parse_optional_text(field: &str, value: &str, max: usize) -> Result<String, FieldViolation> {
    parse_text(value, max).map_err(|e| FieldViolation::new(field, "TEXT_INVALID", e))
}

/// A list of short notes (access notes, what to bring): at most 20, each at most 200 characters.
pub fn parse_notes(field: &str, values: &[String]) -> Result<Vec<String>, FieldViolation> {
    if values.len() > 20 {
        return Err(FieldViolation::new(field, "TOO_MANY", "at most 20 entries"));
    }
    values.iter().enumerate().map(|(i, v)| parse_name(&format!("{field}[{i}]"), v, 200)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_and_weekdays() {
        assert_eq!(
            parse_local_time("t", Some(&pb::LocalTime { hours: 9, minutes: 30 })).unwrap(),
            NaiveTime::from_hms_opt(9, 30, 0).unwrap()
        );
        assert!(parse_local_time("t", Some(&pb::LocalTime { hours: 24, minutes: 0 })).is_err());
        assert!(parse_local_time("t", Some(&pb::LocalTime { hours: -1, minutes: 0 })).is_err());
        assert!(parse_local_time("t", None).is_err());
        assert_eq!(weekday(1), Weekday::Mon);
        assert_eq!(weekday(7), Weekday::Sun);
    }

    #[test]
    fn statuses_round_trip() {
        for s in crate::domain::appointment::ALL {
            assert_eq!(parse_status("status", status(s) as i32).unwrap(), s);
        }
        assert!(parse_status("status", 0).is_err());
        assert!(parse_status("status", 99).is_err());
    }
}
