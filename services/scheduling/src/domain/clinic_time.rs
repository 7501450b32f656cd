//! Clinic wall-clock times on the timeline. Clinics keep local time in their IANA zone: a 09:00 clinic
//! is at 09:00 local on both sides of a clock change.
//!
//! The one rule for local times that are not simply there:
//! - a time that does not exist (skipped when clocks go forward) is moved forward by the length of the
//!   gap: 01:30 on 2027-03-28 in Europe/London is 02:30 BST (01:30 UTC);
//! - a time that happens twice (when clocks go back) is the first occurrence: 01:30 on 2027-10-31 in
//!   Europe/London is 01:30 BST (00:30 UTC).

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// How a local time was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The local time exists once.
    Exact,
    /// The local time happens twice; the first occurrence was taken.
    FirstOfTwo,
    /// The local time was skipped by a clock change; it was moved forward by the gap.
    MovedForward,
}

/// The instant of `date` at local `time` in `zone`, by the rule above.
pub fn instant(zone: Tz, date: NaiveDate, time: NaiveTime) -> (DateTime<Utc>, Placement) {
    let local = date.and_time(time);
    match zone.from_local_datetime(&local) {
        LocalResult::Single(at) => (at.with_timezone(&Utc), Placement::Exact),
        LocalResult::Ambiguous(first, second) => (first.min(second).with_timezone(&Utc), Placement::FirstOfTwo),
        LocalResult::None => (moved_forward(zone, local), Placement::MovedForward),
    }
}

/// Reads the skipped local time with the offset in force just before the gap, which lands it as far
/// past the gap's end as it was past the gap's start.
fn moved_forward(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let before_gap =
        zone.from_local_datetime(&(local - Duration::hours(12))).earliest().expect("twelve hours before a gap is a real local time");
    let offset = before_gap.offset().fix();
    (local - Duration::seconds(i64::from(offset.local_minus_utc()))).and_utc()
}

/// The local date and time of an instant in `zone`.
pub fn local(zone: Tz, at: DateTime<Utc>) -> NaiveDateTime {
    at.with_timezone(&zone).naive_local()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::London;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }
    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }
    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn nine_oclock_is_nine_oclock_local_on_both_sides_of_each_change() {
        // Spring forward: Sunday 2027-03-28.
        assert_eq!(instant(London, d(2027, 3, 27), t(9, 0)), (utc("2027-03-27T09:00:00Z"), Placement::Exact));
        assert_eq!(instant(London, d(2027, 3, 28), t(9, 0)), (utc("2027-03-28T08:00:00Z"), Placement::Exact));
        assert_eq!(instant(London, d(2027, 3, 29), t(9, 0)), (utc("2027-03-29T08:00:00Z"), Placement::Exact));
        // Fall back: Sunday 2027-10-31.
        assert_eq!(instant(London, d(2027, 10, 30), t(9, 0)), (utc("2027-10-30T08:00:00Z"), Placement::Exact));
        assert_eq!(instant(London, d(2027, 10, 31), t(9, 0)), (utc("2027-10-31T09:00:00Z"), Placement::Exact));
    }

    #[test]
    fn the_skipped_hour_moves_forward_by_the_gap() {
        assert_eq!(instant(London, d(2027, 3, 28), t(1, 0)), (utc("2027-03-28T01:00:00Z"), Placement::MovedForward));
        assert_eq!(instant(London, d(2027, 3, 28), t(1, 30)), (utc("2027-03-28T01:30:00Z"), Placement::MovedForward));
        assert_eq!(local(London, utc("2027-03-28T01:30:00Z")), d(2027, 3, 28).and_time(t(2, 30)));
        assert_eq!(instant(London, d(2027, 3, 28), t(2, 0)), (utc("2027-03-28T01:00:00Z"), Placement::Exact));
    }

    #[test]
    fn the_repeated_hour_is_its_first_occurrence() {
        assert_eq!(instant(London, d(2027, 10, 31), t(1, 0)), (utc("2027-10-31T00:00:00Z"), Placement::FirstOfTwo));
        assert_eq!(instant(London, d(2027, 10, 31), t(1, 30)), (utc("2027-10-31T00:30:00Z"), Placement::FirstOfTwo));
        assert_eq!(instant(London, d(2027, 10, 31), t(2, 0)), (utc("2027-10-31T02:00:00Z"), Placement::Exact));
    }
}
