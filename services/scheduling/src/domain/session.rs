//! Session templates and the slots they make: "every Tuesday 09:00-12:30 in 20-minute slots, two
//! patients each, from April to March". Times are wall-clock times in the clinic's zone.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;

use super::clinic_time::{Placement, instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTemplate {
    pub weekday: Weekday,
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub slot_minutes: u32,
    pub capacity: u32,
    pub valid_from: NaiveDate,
    /// Inclusive; `None` means open-ended.
    pub valid_until: Option<NaiveDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateError {
    EndNotAfterStart,
    SlotLength,
    Capacity,
    ValidUntilBeforeFrom,
    SessionShorterThanOneSlot,
}

impl TemplateError {
    pub fn description(self) -> &'static str {
        match self {
            Self::EndNotAfterStart => "end must be after start",
            Self::SlotLength => "slot length must be 5 to 480 minutes",
            Self::Capacity => "capacity must be 1 to 100",
            Self::ValidUntilBeforeFrom => "valid_until must not be before valid_from",
            Self::SessionShorterThanOneSlot => "the session is shorter than one slot",
        }
    }
}

impl SessionTemplate {
    pub fn validate(&self) -> Result<(), TemplateError> {
        if self.end <= self.start {
            return Err(TemplateError::EndNotAfterStart);
        }
        if !(5..=480).contains(&self.slot_minutes) {
            return Err(TemplateError::SlotLength);
        }
        if !(1..=100).contains(&self.capacity) {
            return Err(TemplateError::Capacity);
        }
        if self.valid_until.is_some_and(|until| until < self.valid_from) {
            return Err(TemplateError::ValidUntilBeforeFrom);
        }
        if self.end - self.start < Duration::minutes(i64::from(self.slot_minutes)) {
            return Err(TemplateError::SessionShorterThanOneSlot);
        }
        Ok(())
    }

    /// The session's slots on the days in `from..=until` it runs.
    pub fn slots(&self, zone: Tz, from: NaiveDate, until: NaiveDate) -> Vec<SlotTime> {
        let first = from.max(self.valid_from);
        let last = self.valid_until.map_or(until, |v| v.min(until));
        first
            .iter_days()
            .take_while(|day| *day <= last)
            .filter(|day| day.weekday() == self.weekday)
            .flat_map(|day| self.slots_on(zone, day))
            .collect()
    }

    /// One day's slots. Each slot starts at its wall-clock time (placed by the clinic-time rule) and
    /// lasts the slot length. Where a clock change makes two wall-clock starts the same instant (the
    /// skipped hour), the slot is made once.
    fn slots_on(&self, zone: Tz, day: NaiveDate) -> Vec<SlotTime> {
        let length = Duration::minutes(i64::from(self.slot_minutes));
        let mut slots: Vec<SlotTime> = Vec::new();
        let mut local_start = self.start;
        while local_start + length <= self.end && local_start >= self.start {
            let (start, placement) = instant(zone, day, local_start);
            if slots.last().is_none_or(|previous| start >= previous.end) {
                slots.push(SlotTime { day, local_start, start, end: start + length, placement });
            }
            local_start += length;
        }
        slots
    }
}

/// A generated slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotTime {
    pub day: NaiveDate,
    pub local_start: NaiveTime,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub placement: Placement,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clinic_time::local;
    use chrono_tz::Europe::London;
    use proptest::prelude::*;

    fn t(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }
    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn sunday_template(start: NaiveTime, end: NaiveTime, minutes: u32) -> SessionTemplate {
        SessionTemplate {
            weekday: Weekday::Sun,
            start,
            end,
            slot_minutes: minutes,
            capacity: 1,
            valid_from: d(2020, 1, 1),
            valid_until: None,
        }
    }

    #[test]
    fn a_morning_clinic_keeps_its_local_times_across_both_changes() {
        let template = sunday_template(t(9, 0), t(12, 0), 30);
        for day in [d(2027, 3, 21), d(2027, 3, 28), d(2027, 4, 4), d(2027, 10, 24), d(2027, 10, 31), d(2027, 11, 7)] {
            let slots = template.slots(London, day, day);
            assert_eq!(slots.len(), 6, "{day}");
            for slot in &slots {
                assert_eq!(local(London, slot.start).time(), slot.local_start);
                assert_eq!(slot.end - slot.start, Duration::minutes(30));
            }
        }
    }

    #[test]
    fn a_night_session_across_the_spring_gap_makes_each_instant_once() {
        let template = sunday_template(t(0, 0), t(4, 0), 60);
        let slots = template.slots(London, d(2027, 3, 28), d(2027, 3, 28));
        let starts: Vec<String> = slots.iter().map(|s| s.start.format("%H:%M").to_string()).collect();
        // 00:00 GMT, 01:00 skipped -> 02:00 BST (01:00Z), 02:00 BST is that same instant, 03:00 BST.
        assert_eq!(starts, ["00:00", "01:00", "02:00"]);
        assert_eq!(slots[1].placement, Placement::MovedForward);
    }

    #[test]
    fn a_night_session_across_the_autumn_repeat_uses_the_first_hour() {
        let template = sunday_template(t(0, 0), t(3, 0), 60);
        let slots = template.slots(London, d(2027, 10, 31), d(2027, 10, 31));
        let starts: Vec<String> = slots.iter().map(|s| s.start.format("%H:%M").to_string()).collect();
        // 00:00 BST (23:00Z), 01:00 first occurrence (00:00Z), 02:00 GMT (02:00Z).
        assert_eq!(starts, ["23:00", "00:00", "02:00"]);
        assert_eq!(slots[1].placement, Placement::FirstOfTwo);
    }

    #[test]
    fn validity_window_and_weekday_are_respected() {
        let template = SessionTemplate {
            weekday: Weekday::Tue,
            start: t(9, 0),
            end: t(10, 0),
            slot_minutes: 20,
            capacity: 2,
            valid_from: d(2027, 1, 5),
            valid_until: Some(d(2027, 1, 19)),
        };
        let slots = template.slots(London, d(2026, 12, 1), d(2027, 2, 28));
        let days: std::collections::BTreeSet<_> = slots.iter().map(|s| s.day).collect();
        assert_eq!(days.into_iter().collect::<Vec<_>>(), [d(2027, 1, 5), d(2027, 1, 12), d(2027, 1, 19)]);
        assert_eq!(slots.len(), 9);
    }

    #[test]
    fn invalid_templates() {
        let ok = sunday_template(t(9, 0), t(10, 0), 30);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(SessionTemplate { end: t(9, 0), ..ok.clone() }.validate(), Err(TemplateError::EndNotAfterStart));
        assert_eq!(SessionTemplate { slot_minutes: 0, ..ok.clone() }.validate(), Err(TemplateError::SlotLength));
        assert_eq!(SessionTemplate { capacity: 0, ..ok.clone() }.validate(), Err(TemplateError::Capacity));
        assert_eq!(SessionTemplate { end: t(9, 20), ..ok.clone() }.validate(), Err(TemplateError::SessionShorterThanOneSlot));
        assert_eq!(SessionTemplate { valid_until: Some(d(2019, 1, 1)), ..ok }.validate(), Err(TemplateError::ValidUntilBeforeFrom));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Over years of dates in Europe/London: slots never overlap, each lasts the slot length, and
        /// every slot whose wall-clock time exists once is at exactly that wall-clock time.
        #[test]
        fn slots_keep_wall_clock_time_and_never_overlap(
            days_from_2020 in 0i64..(366 * 20),
            start_minute in 0u32..(23 * 60),
            length in prop::sample::select(vec![5u32, 10, 15, 20, 30, 45, 60, 90]),
            slots_wanted in 1u32..12,
        ) {
            let day = d(2020, 1, 1) + Duration::days(days_from_2020);
            let start = t(start_minute / 60, start_minute % 60);
            let end_minutes = (start_minute + length * slots_wanted).min(24 * 60 - 1);
            prop_assume!(end_minutes >= start_minute + length);
            let end = t(end_minutes / 60, end_minutes % 60);
            let template = SessionTemplate { weekday: day.weekday(), start, end, slot_minutes: length, capacity: 1, valid_from: day, valid_until: Some(day) };
            let slots = template.slots(London, day, day);
            prop_assert!(!slots.is_empty());
            for pair in slots.windows(2) {
                prop_assert!(pair[0].end <= pair[1].start, "overlap: {:?}", pair);
            }
            for slot in &slots {
                prop_assert_eq!(slot.end - slot.start, Duration::minutes(i64::from(length)));
                if slot.placement == Placement::Exact {
                    prop_assert_eq!(local(London, slot.start), day.and_time(slot.local_start));
                }
            }
        }
    }
}
