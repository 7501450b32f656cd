//! Who gets a freed slot: waitlist entries are offered in order of clinical priority, then the
//! earliest referral-to-treatment breach date, then the longest wait on the list; an entry is offered
//! only slots that fit it.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, Utc};

/// Clinical priority, least urgent first (so `Ord` puts the most urgent last; see `offer_order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Routine,
    Urgent,
    TwoWeekWait,
}

/// What the waitlist needs to know about an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub priority: Priority,
    pub breach_date: Option<NaiveDate>,
    pub added_at: DateTime<Utc>,
    /// Acceptable clinic-local days, inclusive.
    pub earliest: Option<NaiveDate>,
    pub latest: Option<NaiveDate>,
}

/// Offer order: most urgent first; then the earliest breach date (entries without one after those
/// with one); then the longest on the list.
pub fn offer_order(a: &Entry, b: &Entry) -> Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| match (a.breach_date, b.breach_date) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then_with(|| a.added_at.cmp(&b.added_at))
}

/// Whether a slot on clinic-local `day` fits the entry's window.
pub fn fits(entry: &Entry, day: NaiveDate) -> bool {
    entry.earliest.is_none_or(|earliest| day >= earliest) && entry.latest.is_none_or(|latest| day <= latest)
}

/// The entry to offer a slot on `day` to, if any fits.
pub fn best_fit(entries: &[Entry], day: NaiveDate) -> Option<&Entry> {
    entries.iter().filter(|e| fits(e, day)).min_by(|a, b| offer_order(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn entry(priority: Priority, breach: Option<NaiveDate>, days_on_list: i64) -> Entry {
        Entry { priority, breach_date: breach, added_at: Utc::now() - Duration::days(days_on_list), earliest: None, latest: None }
    }

    #[test]
    fn priority_then_breach_date_then_time_on_list() {
        let routine_old = entry(Priority::Routine, Some(d(2027, 1, 1)), 300);
        let urgent_late_breach = entry(Priority::Urgent, Some(d(2027, 6, 1)), 10);
        let urgent_early_breach = entry(Priority::Urgent, Some(d(2027, 3, 1)), 5);
        let urgent_no_breach_long_wait = entry(Priority::Urgent, None, 200);
        let two_week_wait = entry(Priority::TwoWeekWait, None, 1);
        let mut entries = vec![
            routine_old.clone(),
            urgent_late_breach.clone(),
            urgent_no_breach_long_wait.clone(),
            two_week_wait.clone(),
            urgent_early_breach.clone(),
        ];
        entries.sort_by(offer_order);
        assert_eq!(entries, [two_week_wait, urgent_early_breach, urgent_late_breach, urgent_no_breach_long_wait, routine_old]);
    }

    #[test]
    fn equal_priority_and_breach_go_by_time_on_list() {
        let newer = entry(Priority::Routine, None, 3);
        let older = entry(Priority::Routine, None, 30);
        assert_eq!(offer_order(&older, &newer), Ordering::Less);
    }

    #[test]
    fn only_entries_whose_window_fits_are_offered() {
        let mut urgent_but_not_until_may = entry(Priority::Urgent, None, 1);
        urgent_but_not_until_may.earliest = Some(d(2027, 5, 1));
        let mut routine_until_april = entry(Priority::Routine, None, 1);
        routine_until_april.latest = Some(d(2027, 4, 30));
        let entries = [urgent_but_not_until_may.clone(), routine_until_april.clone()];
        assert_eq!(best_fit(&entries, d(2027, 4, 10)), Some(&routine_until_april));
        assert_eq!(best_fit(&entries, d(2027, 5, 10)), Some(&urgent_but_not_until_may));
        assert_eq!(best_fit(&[routine_until_april], d(2027, 5, 10)), None);
    }
}
