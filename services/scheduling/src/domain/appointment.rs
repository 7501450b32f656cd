//! Appointment status and its transitions (FHIR R4 Appointment codes; table in DOMAIN.md).

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Proposed,
    Pending,
    Booked,
    Arrived,
    CheckedIn,
    Fulfilled,
    Cancelled,
    Noshow,
    EnteredInError,
    Waitlist,
}

pub const ALL: [Status; 10] = [
    Status::Proposed,
    Status::Pending,
    Status::Booked,
    Status::Arrived,
    Status::CheckedIn,
    Status::Fulfilled,
    Status::Cancelled,
    Status::Noshow,
    Status::EnteredInError,
    Status::Waitlist,
];

impl Status {
    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::Pending => "pending",
            Self::Booked => "booked",
            Self::Arrived => "arrived",
            Self::CheckedIn => "checked-in",
            Self::Fulfilled => "fulfilled",
            Self::Cancelled => "cancelled",
            Self::Noshow => "noshow",
            Self::EnteredInError => "entered-in-error",
            Self::Waitlist => "waitlist",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        ALL.into_iter().find(|s| s.code() == code)
    }

    /// A live appointment occupies its slot's capacity and the patient's time.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Booked | Self::Arrived | Self::CheckedIn)
    }

    /// Ends the appointment's life; changed only by an explicit correction.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Fulfilled | Self::Cancelled | Self::Noshow | Self::EnteredInError)
    }
}

/// What a move is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Moment {
    pub now: DateTime<Utc>,
    pub slot_start: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionError {
    /// The table does not allow it.
    NotAllowed { from: Status, to: Status },
    /// A no-show can be recorded only once the appointment has started.
    NoshowBeforeStart,
    /// Corrections of a finished appointment need a reason.
    CorrectionNeedsReason,
}

/// Checks a status change. `correction_reason` is the reason given for correcting a terminal status.
pub fn check(from: Status, to: Status, at: Moment, correction_reason: Option<&str>) -> Result<(), TransitionError> {
    use Status::*;
    let not_allowed = Err(TransitionError::NotAllowed { from, to });
    if from.is_terminal() {
        // People mis-mark no-shows and attendances: those corrections are allowed, with a reason, and
        // so is marking a record entered-in-error. Nothing leaves entered-in-error.
        let correctable =
            matches!((from, to), (Noshow, Fulfilled) | (Fulfilled, Noshow)) || (to == EnteredInError && from != EnteredInError);
        if !correctable {
            return not_allowed;
        }
        return match correction_reason.map(str::trim) {
            Some(reason) if !reason.is_empty() => Ok(()),
            _ => Err(TransitionError::CorrectionNeedsReason),
        };
    }
    let allowed = match from {
        Proposed => matches!(to, Pending | Booked | Cancelled),
        Pending => matches!(to, Booked | Cancelled | EnteredInError),
        Booked => matches!(to, Booked | Arrived | CheckedIn | Fulfilled | Cancelled | Noshow | EnteredInError),
        Arrived | CheckedIn => matches!(to, CheckedIn | Fulfilled | Cancelled | EnteredInError),
        Waitlist => matches!(to, Pending | Booked | Cancelled),
        Fulfilled | Cancelled | Noshow | EnteredInError => false,
    };
    if !allowed {
        return not_allowed;
    }
    if to == Noshow && at.now < at.slot_start {
        return Err(TransitionError::NoshowBeforeStart);
    }
    Ok(())
}

/// Confirming a hold (booking it, or accepting the waitlist offer it carries): only a pending
/// appointment becomes booked this way.
pub fn check_confirm(from: Status, at: Moment) -> Result<(), TransitionError> {
    if from != Status::Pending {
        return Err(TransitionError::NotAllowed { from, to: Status::Booked });
    }
    check(from, Status::Booked, at, None)
}

/// Rescheduling moves a booked appointment to another slot; it stays booked.
pub fn check_reschedule(from: Status, at: Moment) -> Result<(), TransitionError> {
    if from != Status::Booked {
        return Err(TransitionError::NotAllowed { from, to: Status::Booked });
    }
    check(from, Status::Booked, at, None)
}

#[cfg(test)]
mod tests {
    use super::Status::*;
    use super::*;
    use chrono::Duration;

    fn after_start() -> Moment {
        let now = Utc::now();
        Moment { now, slot_start: now - Duration::minutes(30) }
    }

    /// The table in DOMAIN.md, as (from, to) pairs allowed without a correction.
    const TABLE: &[(Status, Status)] = &[
        (Proposed, Pending),
        (Proposed, Booked),
        (Proposed, Cancelled),
        (Pending, Booked),
        (Pending, Cancelled),
        (Pending, EnteredInError),
        (Booked, Booked),
        (Booked, Arrived),
        (Booked, CheckedIn),
        (Booked, Fulfilled),
        (Booked, Cancelled),
        (Booked, Noshow),
        (Booked, EnteredInError),
        (Arrived, CheckedIn),
        (Arrived, Fulfilled),
        (Arrived, Cancelled),
        (Arrived, EnteredInError),
        (CheckedIn, CheckedIn),
        (CheckedIn, Fulfilled),
        (CheckedIn, Cancelled),
        (CheckedIn, EnteredInError),
        (Waitlist, Pending),
        (Waitlist, Booked),
        (Waitlist, Cancelled),
    ];

    #[test]
    fn only_a_hold_is_confirmed_and_only_a_booking_rescheduled() {
        for from in ALL {
            assert_eq!(check_confirm(from, after_start()).is_ok(), from == Pending, "confirm {from:?}");
            assert_eq!(check_reschedule(from, after_start()).is_ok(), from == Booked, "reschedule {from:?}");
        }
    }

    #[test]
    fn every_pair_follows_the_table() {
        for from in ALL {
            for to in ALL {
                let result = check(from, to, after_start(), None);
                if TABLE.contains(&(from, to)) {
                    assert_eq!(result, Ok(()), "{from:?} -> {to:?}");
                } else {
                    assert!(result.is_err(), "{from:?} -> {to:?} must be refused");
                }
            }
        }
    }

    #[test]
    fn noshow_only_after_the_start() {
        let now = Utc::now();
        let before = Moment { now, slot_start: now + Duration::minutes(5) };
        assert_eq!(check(Booked, Noshow, before, None), Err(TransitionError::NoshowBeforeStart));
        assert_eq!(check(Booked, Noshow, after_start(), None), Ok(()));
    }

    #[test]
    fn terminal_states_change_only_by_correction_with_a_reason() {
        assert_eq!(check(Noshow, Fulfilled, after_start(), None), Err(TransitionError::CorrectionNeedsReason));
        assert_eq!(check(Noshow, Fulfilled, after_start(), Some("  ")), Err(TransitionError::CorrectionNeedsReason));
        assert_eq!(check(Noshow, Fulfilled, after_start(), Some("patient was seen, marked in error")), Ok(()));
        assert_eq!(check(Fulfilled, Noshow, after_start(), Some("did not attend")), Ok(()));
        assert_eq!(check(Cancelled, EnteredInError, after_start(), Some("duplicate")), Ok(()));
        assert!(check(Cancelled, Booked, after_start(), Some("reason")).is_err());
        assert!(check(EnteredInError, Booked, after_start(), Some("reason")).is_err());
        assert!(check(EnteredInError, EnteredInError, after_start(), Some("reason")).is_err());
    }

    #[test]
    fn codes_round_trip_and_liveness() {
        for status in ALL {
            assert_eq!(Status::from_code(status.code()), Some(status));
        }
        let live: Vec<_> = ALL.into_iter().filter(|s| s.is_live()).collect();
        assert_eq!(live, [Pending, Booked, Arrived, CheckedIn]);
    }
}
