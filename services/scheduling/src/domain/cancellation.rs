//! Cancellations: a coded reason, who cancelled, and whether it came inside the notice period.
//! The notice period is local policy (configuration), e.g. 24 hours.

use chrono::{DateTime, Duration, Utc};

/// Who cancelled: hospital and patient cancellations affect the waiting-time clock differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelledBy {
    Patient = 1,
    Provider = 2,
    System = 3,
}

impl CancelledBy {
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            1 => Some(Self::Patient),
            2 => Some(Self::Provider),
            3 => Some(Self::System),
            _ => None,
        }
    }
}

/// Cancelled less than `notice` before the start (or after it).
pub fn is_late(cancelled_at: DateTime<Utc>, slot_start: DateTime<Utc>, notice: Duration) -> bool {
    cancelled_at > slot_start - notice
}

/// A reason code: 2-40 upper-case letters, digits and underscores, e.g. `PATIENT_UNWELL`.
pub fn parse_reason_code(code: &str) -> Result<String, &'static str> {
    let code = code.trim();
    let valid = (2..=40).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if valid { Ok(code.to_string()) } else { Err("must be a reason code such as PATIENT_UNWELL (upper case, digits, underscores)") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_means_inside_the_notice_period() {
        let start: DateTime<Utc> = "2027-03-29T09:00:00Z".parse().unwrap();
        let notice = Duration::hours(24);
        assert!(!is_late(start - Duration::hours(25), start, notice));
        assert!(!is_late(start - notice, start, notice));
        assert!(is_late(start - Duration::hours(23), start, notice));
        assert!(is_late(start + Duration::minutes(5), start, notice));
    }

    #[test]
    fn reason_codes_and_who_cancelled() {
        assert_eq!(parse_reason_code(" PATIENT_UNWELL ").unwrap(), "PATIENT_UNWELL");
        for bad in ["", "x", "patient unwell", "TOO-MANY-DASHES", &"A".repeat(41)] {
            assert!(parse_reason_code(bad).is_err(), "{bad}");
        }
        assert_eq!(CancelledBy::from_code(2), Some(CancelledBy::Provider));
        assert_eq!(CancelledBy::from_code(0), None);
    }
}
