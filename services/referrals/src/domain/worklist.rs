//! Worklist rules: when a referral counts as stuck in its status.

use chrono::{DateTime, Datelike, Duration, Utc, Weekday};

use super::eligibility::Priority;
use super::referral::Status;

/// How long a referral may stay in a status: `working_days`, for one priority or (None) any.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Threshold {
    pub status: String,
    /// Priority value (1..3); 0 means any.
    pub priority: i16,
    pub working_days: u32,
}

impl Threshold {
    fn applies(&self, status: Status, priority: Priority) -> bool {
        self.status == status.code() && (self.priority == 0 || self.priority == priority.value())
    }
}

/// `days` working days (Monday to Friday) after `from`, at the same time of day.
pub fn add_working_days(from: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    let mut at = from;
    let mut left = days;
    while left > 0 {
        at += Duration::days(1);
        if !matches!(at.weekday(), Weekday::Sat | Weekday::Sun) {
            left -= 1;
        }
    }
    at
}

/// When a referral that entered `status` at `since` counts as stuck: the tightest threshold that
/// applies to it, or never.
pub fn stuck_after(thresholds: &[Threshold], status: Status, priority: Priority, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
    thresholds.iter().filter(|t| t.applies(status, priority)).map(|t| add_working_days(since, t.working_days)).min()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    #[test]
    fn working_days_skip_weekends() {
        // Wednesday 2026-11-25.
        assert_eq!(add_working_days(at(2026, 11, 25, 10), 2), at(2026, 11, 27, 10));
        // Friday + 2 working days = Tuesday.
        assert_eq!(add_working_days(at(2026, 11, 27, 16), 2), at(2026, 12, 1, 16));
        // Saturday + 1 = Monday.
        assert_eq!(add_working_days(at(2026, 11, 28, 9), 1), at(2026, 11, 30, 9));
        assert_eq!(add_working_days(at(2026, 11, 28, 9), 0), at(2026, 11, 28, 9));
    }

    #[test]
    fn the_tightest_applicable_threshold_counts() {
        let thresholds = vec![
            Threshold { status: "awaiting-triage".into(), priority: 3, working_days: 2 },
            Threshold { status: "awaiting-triage".into(), priority: 0, working_days: 5 },
            Threshold { status: "awaiting-booking".into(), priority: 0, working_days: 10 },
        ];
        let since = at(2026, 11, 25, 10);
        assert_eq!(stuck_after(&thresholds, Status::AwaitingTriage, Priority::TwoWeekWait, since), Some(at(2026, 11, 27, 10)));
        assert_eq!(stuck_after(&thresholds, Status::AwaitingTriage, Priority::Routine, since), Some(at(2026, 12, 2, 10)));
        assert_eq!(stuck_after(&thresholds, Status::Booked, Priority::Routine, since), None);
    }
}
