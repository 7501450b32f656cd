//! Plain-language answers from structured data: what happens next with a referral, and where, when
//! and how of an appointment, in the clinic's own time zone.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use pac_proto::access::AppointmentGuide;
use pac_proto::referrals::{RebookReason, Referral, ReferralStatus};
use pac_proto::scheduling::{Appointment, AppointmentStatus, Clinic, Location};

/// What happens next with an open referral, and how its waiting-time clock stands.
pub fn next_step(referral: &Referral) -> String {
    let rebook = RebookReason::try_from(referral.rebook_reason).unwrap_or(RebookReason::Unspecified);
    let step = match ReferralStatus::try_from(referral.status).unwrap_or(ReferralStatus::Unspecified) {
        ReferralStatus::AwaitingTriage => "Waiting for a clinician to review (triage) the referral.".to_string(),
        ReferralStatus::AwaitingInformation if !referral.triage_text.is_empty() => {
            format!("The clinic has asked for more information: \"{}\". Review resumes when it arrives.", referral.triage_text)
        }
        ReferralStatus::AwaitingInformation => "The clinic has asked for more information. Review resumes when it arrives.".into(),
        ReferralStatus::AwaitingBooking => match rebook {
            RebookReason::CancelledByProvider => "The hospital cancelled the last appointment and must offer a new date.".into(),
            RebookReason::CancelledByPatient => "The patient cancelled the last appointment; agree a new date with them.".into(),
            RebookReason::DidNotAttend => "The patient missed an appointment: follow up with them before booking again.".into(),
            RebookReason::Unspecified => "Accepted: book the first appointment.".into(),
        },
        ReferralStatus::Booked => "An appointment is booked (see upcoming appointments).".into(),
        ReferralStatus::Rejected => "Not accepted; the referrer has been told why.".into(),
        ReferralStatus::Returned => "Returned to the referrer with advice.".into(),
        ReferralStatus::Redirected => "Sent on to another service.".into(),
        ReferralStatus::Cancelled => "Cancelled.".into(),
        ReferralStatus::Completed => "Completed.".into(),
        ReferralStatus::Unspecified => "Status unknown.".into(),
    };
    match referral.clock.as_ref().and_then(|c| c.days_to_breach) {
        Some(days) if days < 0 => format!("{step} The 18-week waiting time standard was passed {} days ago.", -days),
        Some(0) => format!("{step} The 18-week waiting time standard is reached today."),
        Some(1) => format!("{step} The 18-week waiting time standard is reached tomorrow."),
        Some(days) => format!("{step} The 18-week waiting time standard is reached in {days} days."),
        None => step,
    }
}

/// A short reference to quote, from the end of the appointment id (the random part of a UUIDv7).
pub fn reference(appointment_id: &str) -> String {
    let hex: String = appointment_id.chars().filter(char::is_ascii_hexdigit).collect();
    let tail = &hex[hex.len().saturating_sub(8)..];
    format!("PAC-{}", tail.to_uppercase())
}

fn zone_phrase(zone: &Tz) -> String {
    match zone.name() {
        "Europe/London" => "UK time".into(),
        name => format!("{} time", name.rsplit('/').next().unwrap_or(name).replace('_', " ")),
    }
}

fn status_phrase(appointment: &Appointment, zone: &Tz) -> String {
    match AppointmentStatus::try_from(appointment.status).unwrap_or(AppointmentStatus::Unspecified) {
        AppointmentStatus::Pending => match appointment.hold_expire_time.as_ref().and_then(|t| DateTime::from_timestamp(t.seconds, 0)) {
            Some(until) => {
                format!("Held, not yet booked: the hold lapses at {}", zone.from_utc_datetime(&until.naive_utc()).format("%-I:%M%P"))
            }
            None => "Held, not yet booked".into(),
        },
        AppointmentStatus::Booked => "Booked".into(),
        AppointmentStatus::Arrived => "Arrived".into(),
        AppointmentStatus::CheckedIn => "Checked in".into(),
        AppointmentStatus::Fulfilled => "Attended".into(),
        AppointmentStatus::Cancelled => "Cancelled".into(),
        AppointmentStatus::Noshow => "Missed (did not attend)".into(),
        AppointmentStatus::EnteredInError => "Entered in error: this appointment does not exist".into(),
        AppointmentStatus::Proposed | AppointmentStatus::Waitlist => "Proposed, not yet booked".into(),
        AppointmentStatus::Unspecified => "Unknown".into(),
    }
}

/// The guide to an appointment at `clinic` in `location`, as of `now`.
pub fn appointment_guide(
    appointment: &Appointment,
    clinic: Option<&Clinic>,
    location: Option<&Location>,
    now: DateTime<Utc>,
) -> AppointmentGuide {
    let zone: Tz = clinic.and_then(|c| c.time_zone.parse().ok()).unwrap_or(chrono_tz::Europe::London);
    let start = appointment.start_time.as_ref().and_then(|t| DateTime::from_timestamp(t.seconds, 0));
    let local = start.map(|s| zone.from_utc_datetime(&s.naive_utc()));
    let reference = reference(&appointment.id);
    let what = match clinic {
        Some(c) if !c.specialty.is_empty() && c.specialty != c.name => format!("{} ({})", c.name, c.specialty),
        Some(c) => c.name.clone(),
        None => "Clinic appointment".into(),
    };
    let place = location.map(|l| {
        let address = l.address.as_ref();
        let mut parts = vec![l.name.clone()];
        parts.extend(address.map(|a| a.lines.clone()).unwrap_or_default());
        parts.extend(address.map(|a| a.locality.clone()));
        parts.extend(address.map(|a| a.postcode.clone()));
        parts.retain(|p| !p.trim().is_empty());
        parts.join(", ")
    });
    let status = AppointmentStatus::try_from(appointment.status).unwrap_or(AppointmentStatus::Unspecified);
    let changeable = matches!(status, AppointmentStatus::Pending | AppointmentStatus::Booked) && start.is_some_and(|s| s > now);
    let how_to_change = if changeable {
        format!(
            "To change or cancel, contact the booking team and quote reference {reference}. Please tell us as early as you can, \
             so the time can be offered to someone else."
        )
    } else if matches!(status, AppointmentStatus::Cancelled | AppointmentStatus::EnteredInError) {
        "This appointment was cancelled: there is no need to attend.".into()
    } else {
        format!("This appointment can no longer be changed. If you need another, contact the booking team quoting reference {reference}.")
    };
    AppointmentGuide {
        what,
        when: local.map(|l| format!("{} ({})", l.format("%A %-d %B %Y at %-I:%M%P"), zone_phrase(&zone))).unwrap_or_default(),
        local_start: local.map(|l| l.format("%Y-%m-%dT%H:%M:%S").to_string()).unwrap_or_default(),
        time_zone: zone.name().to_string(),
        start_time: appointment.start_time,
        r#where: place.unwrap_or_default(),
        directions: location.map(|l| l.directions.clone()).unwrap_or_default(),
        access_notes: location.map(|l| l.access_notes.clone()).unwrap_or_default(),
        parking: location.map(|l| l.parking.clone()).unwrap_or_default(),
        what_to_bring: clinic.map(|c| c.what_to_bring.clone()).unwrap_or_default(),
        how_to_change,
        status: status_phrase(appointment, &zone),
        reference,
    }
}

#[cfg(test)]
mod tests {
    use pac_proto::common::Address;
    use pac_proto::referrals::RttClock;

    use super::*;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().with_timezone(&Utc)
    }

    fn appointment(start: &str, status: AppointmentStatus) -> Appointment {
        Appointment {
            id: "0190f3a2-7b1c-7d2e-9f00-1a2b3c4d5e6f".into(),
            status: status as i32,
            start_time: Some(pac_platform::convert::timestamp(at(start))),
            ..Default::default()
        }
    }

    fn clinic(zone: &str) -> Clinic {
        Clinic {
            name: "Fracture clinic".into(),
            specialty: "Trauma and orthopaedics".into(),
            time_zone: zone.into(),
            what_to_bring: vec!["Your appointment letter".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_time_is_the_clinics_wall_clock_time() {
        let location = Location {
            name: "Leeds General Infirmary".into(),
            address: Some(Address {
                lines: vec!["Great George Street".into()],
                locality: "Leeds".into(),
                postcode: "LS1 3EX".into(),
                ..Default::default()
            }),
            directions: "Enter by the Jubilee Wing.".into(),
            access_notes: vec!["Step-free access".into()],
            ..Default::default()
        };
        // 08:30 UTC in July is 09:30 British Summer Time.
        let summer = appointment_guide(
            &appointment("2026-07-07T08:30:00Z", AppointmentStatus::Booked),
            Some(&clinic("Europe/London")),
            Some(&location),
            at("2026-07-01T00:00:00Z"),
        );
        assert_eq!(summer.when, "Tuesday 7 July 2026 at 9:30am (UK time)");
        assert_eq!(summer.local_start, "2026-07-07T09:30:00");
        assert_eq!(summer.what, "Fracture clinic (Trauma and orthopaedics)");
        assert_eq!(summer.r#where, "Leeds General Infirmary, Great George Street, Leeds, LS1 3EX");
        assert_eq!(summer.status, "Booked");
        assert!(summer.how_to_change.contains("PAC-3C4D5E6F"), "{}", summer.how_to_change);
        // In winter the same UTC time is 08:30 local.
        let winter = appointment_guide(
            &appointment("2026-12-01T08:30:00Z", AppointmentStatus::Booked),
            Some(&clinic("Europe/London")),
            None,
            at("2026-07-01T00:00:00Z"),
        );
        assert_eq!(winter.when, "Tuesday 1 December 2026 at 8:30am (UK time)");
        let elsewhere = appointment_guide(
            &appointment("2026-12-01T08:30:00Z", AppointmentStatus::Booked),
            Some(&clinic("America/New_York")),
            None,
            at("2026-07-01T00:00:00Z"),
        );
        assert_eq!(elsewhere.when, "Tuesday 1 December 2026 at 3:30am (New York time)");
    }

    #[test]
    fn what_can_be_changed_depends_on_state_and_time() {
        let now = at("2026-07-10T00:00:00Z");
        let past = appointment_guide(
            &appointment("2026-07-07T08:30:00Z", AppointmentStatus::Fulfilled),
            Some(&clinic("Europe/London")),
            None,
            now,
        );
        assert!(past.how_to_change.starts_with("This appointment can no longer be changed"));
        assert_eq!(past.status, "Attended");
        let cancelled = appointment_guide(&appointment("2026-08-07T08:30:00Z", AppointmentStatus::Cancelled), None, None, now);
        assert!(cancelled.how_to_change.contains("no need to attend"));
    }

    #[test]
    fn next_steps_say_what_happens_and_how_the_clock_stands() {
        let mut referral = Referral { status: ReferralStatus::AwaitingBooking as i32, ..Default::default() };
        assert_eq!(next_step(&referral), "Accepted: book the first appointment.");
        referral.rebook_reason = RebookReason::DidNotAttend as i32;
        referral.clock = Some(RttClock { days_to_breach: Some(-3), ..Default::default() });
        assert_eq!(
            next_step(&referral),
            "The patient missed an appointment: follow up with them before booking again. The 18-week waiting time standard was passed 3 days ago."
        );
        let triage = Referral {
            status: ReferralStatus::AwaitingTriage as i32,
            clock: Some(RttClock { days_to_breach: Some(40), ..Default::default() }),
            ..Default::default()
        };
        assert!(next_step(&triage).ends_with("reached in 40 days."));
    }
}
