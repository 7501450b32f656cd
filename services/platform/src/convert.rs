//! Conversions between the contracts' shared messages (`pac.common.v1`, well-known types) and Rust
//! values, used by every service: ids, timestamps, dates, free text, actors and event envelopes.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use pac_proto::common::{Date, EventEnvelope};
use uuid::Uuid;

use crate::caller::Actor;
use crate::error::FieldViolation;
use crate::outbox::StoredEvent;

/// A required id (UUID) in `field`.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, FieldViolation> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "ID_REQUIRED", "is required"));
    }
    Uuid::parse_str(value).map_err(|_| FieldViolation::new(field, "ID_INVALID", "is not an id (UUID)"))
}

/// An optional id: empty means none.
pub fn parse_optional_id(field: &str, value: &str) -> Result<Option<Uuid>, FieldViolation> {
    if value.is_empty() { Ok(None) } else { parse_id(field, value).map(Some) }
}

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

/// A timestamp from a request, truncated to microseconds (the database's precision).
pub fn parse_timestamp(field: &str, value: &prost_types::Timestamp) -> Result<DateTime<Utc>, FieldViolation> {
    let nanos = u32::try_from(value.nanos).ok().filter(|n| *n < 1_000_000_000);
    nanos
        .and_then(|n| DateTime::from_timestamp(value.seconds, n - n % 1000))
        .filter(|at| (1900..=9999).contains(&at.year()))
        .ok_or_else(|| FieldViolation::new(field, "TIMESTAMP_INVALID", "is not a valid timestamp between years 1900 and 9999"))
}

pub fn date(date: NaiveDate) -> Date {
    Date { year: date.year(), month: date.month() as i32, day: date.day() as i32 }
}

/// A calendar date from a request.
pub fn parse_date(field: &str, value: &Date) -> Result<NaiveDate, FieldViolation> {
    let month = u32::try_from(value.month).unwrap_or(0);
    let day = u32::try_from(value.day).unwrap_or(0);
    NaiveDate::from_ymd_opt(value.year, month, day)
        .filter(|d| (1880..=9999).contains(&d.year()))
        .ok_or_else(|| FieldViolation::new(field, "DATE_INVALID", "is not a calendar date"))
}

/// Free text of a bounded length with no control characters, trimmed.
pub fn parse_text(input: &str, max_chars: usize) -> Result<String, &'static str> {
    let value = input.trim();
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if value.chars().count() > max_chars {
        return Err("is too long");
    }
    Ok(value.to_string())
}

pub fn actor(actor: &Actor) -> pac_proto::common::Actor {
    pac_proto::common::Actor { subject: actor.subject.clone(), role: actor.role.clone(), organisation: actor.organisation.clone() }
}

/// The envelope of a stored event: cursor, ids, time, actor, request and trace.
pub fn envelope(event: &StoredEvent) -> EventEnvelope {
    EventEnvelope {
        cursor: event.cursor.to_string(),
        event_id: event.event_id.to_string(),
        event_type: event.event_type.clone(),
        occur_time: Some(timestamp(event.occurred_at)),
        aggregate_id: event.aggregate_id.to_string(),
        actor: Some(actor(&event.actor)),
        request_id: event.request_id.clone().unwrap_or_default(),
        trace_id: event.trace_id.clone().unwrap_or_default(),
        organisation: event.organisation.clone(),
        patient_ids: event.patient_ids.iter().map(Uuid::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_dates() {
        let at = parse_timestamp("t", &prost_types::Timestamp { seconds: 1_800_000_000, nanos: 123_456_789 }).unwrap();
        assert_eq!(at.timestamp_subsec_nanos(), 123_456_000);
        assert!(parse_timestamp("t", &prost_types::Timestamp { seconds: 0, nanos: -1 }).is_err());
        assert!(parse_timestamp("t", &prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }).is_err());
        assert_eq!(parse_date("d", &date(NaiveDate::from_ymd_opt(2027, 3, 28).unwrap())).unwrap().to_string(), "2027-03-28");
        assert!(parse_date("d", &Date { year: 2027, month: 2, day: 30 }).is_err());
        assert!(parse_date("d", &Date { year: 2027, month: -1, day: 1 }).is_err());
    }

    #[test]
    fn ids_and_text() {
        assert!(parse_id("id", "").is_err());
        assert!(parse_id("id", "nope").is_err());
        assert_eq!(parse_optional_id("id", "").unwrap(), None);
        assert!(parse_text("line\u{0}", 10).is_err());
        assert!(parse_text("12345678901", 10).is_err());
        assert_eq!(parse_text("  ok ", 10).unwrap(), "ok");
    }
}
