//! Referral states (after e-RS) and the moves between them, by people (triage, cancel, discharge)
//! and by the scheduling service's events (booked, appointment cancelled, did not attend).

use super::rtt::Code;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Received, awaiting triage.
    AwaitingTriage,
    /// Accepted, awaiting booking.
    AwaitingBooking,
    Booked,
    Rejected,
    /// Returned to the referrer with advice.
    Returned,
    /// Redirected to another service (a new referral there).
    Redirected,
    AwaitingInformation,
    Cancelled,
    /// Completed or discharged.
    Completed,
}

const STATUS_CODES: [(Status, &str); 9] = [
    (Status::AwaitingTriage, "awaiting-triage"),
    (Status::AwaitingBooking, "awaiting-booking"),
    (Status::Booked, "booked"),
    (Status::Rejected, "rejected"),
    (Status::Returned, "returned"),
    (Status::Redirected, "redirected"),
    (Status::AwaitingInformation, "awaiting-information"),
    (Status::Cancelled, "cancelled"),
    (Status::Completed, "completed"),
];

/// The statuses a referral is still open in: the worklists' default.
pub const OPEN: [Status; 4] = [Status::AwaitingTriage, Status::AwaitingBooking, Status::Booked, Status::AwaitingInformation];

impl Status {
    /// The stored code.
    pub fn code(self) -> &'static str {
        STATUS_CODES.iter().find(|(s, _)| *s == self).map(|(_, c)| *c).unwrap_or_default()
    }

    pub fn from_code(code: &str) -> Option<Self> {
        STATUS_CODES.iter().find(|(_, c)| *c == code).map(|(s, _)| *s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Rejected | Self::Returned | Self::Redirected | Self::Cancelled | Self::Completed)
    }
}

/// Who must act after an appointment was cancelled or missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebookReason {
    CancelledByProvider,
    CancelledByPatient,
    DidNotAttend,
}

impl RebookReason {
    pub fn code(self) -> &'static str {
        match self {
            Self::CancelledByProvider => "cancelled-by-provider",
            Self::CancelledByPatient => "cancelled-by-patient",
            Self::DidNotAttend => "did-not-attend",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        [Self::CancelledByProvider, Self::CancelledByPatient, Self::DidNotAttend].into_iter().find(|r| r.code() == code)
    }
}

/// Moves people make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Reject,
    ReturnToReferrer,
    Redirect,
    RequestInformation,
    /// The information asked for has arrived: back to triage.
    InformationReceived,
    Cancel,
    /// An RTT clock event; a stop by treatment, a decision not to treat, declining or death
    /// completes the referral (see [`after_clock_stop`]).
    RecordClockEvent,
}

pub const ACTIONS: [Action; 8] = [
    Action::Accept,
    Action::Reject,
    Action::ReturnToReferrer,
    Action::Redirect,
    Action::RequestInformation,
    Action::InformationReceived,
    Action::Cancel,
    Action::RecordClockEvent,
];

impl Action {
    /// Triage decisions need the triage permission; the rest any coordinator may make.
    pub fn needs_triage_permission(self) -> bool {
        matches!(self, Self::Accept | Self::Reject | Self::ReturnToReferrer | Self::Redirect | Self::RequestInformation)
    }
}

/// What the scheduling service reports about the referral's appointment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppointmentEvent {
    Booked,
    /// Cancelled by the hospital or by the patient: either way the patient needs a new date.
    Cancelled,
    /// Did not attend; `discharge` when local policy discharges the patient (a later DNA).
    DidNotAttend {
        discharge: bool,
    },
    Attended,
}

/// The status after `action`, or `None` when it is not allowed from `from`.
pub fn after(from: Status, action: Action) -> Option<Status> {
    use Action::*;
    use Status::*;
    let to = match (from, action) {
        (AwaitingTriage, Accept) => AwaitingBooking,
        (AwaitingTriage | AwaitingInformation, Reject) => Rejected,
        (AwaitingTriage | AwaitingInformation, ReturnToReferrer) => Returned,
        (AwaitingTriage, Redirect) => Redirected,
        (AwaitingTriage, RequestInformation) => AwaitingInformation,
        (AwaitingInformation, InformationReceived) => AwaitingTriage,
        (AwaitingTriage | AwaitingInformation | AwaitingBooking | Booked, Cancel) => Cancelled,
        (AwaitingTriage | AwaitingInformation | AwaitingBooking | Booked, RecordClockEvent) => from,
        _ => return None,
    };
    Some(to)
}

/// The status after a clock stop with `code` on an open referral: the pathway ends, except for
/// active monitoring, which keeps the referral open for a later new clock.
pub fn after_clock_stop(from: Status, code: Code) -> Status {
    match code {
        Code::FirstTreatment | Code::DecisionNotToTreat | Code::PatientDeclined | Code::DiedBeforeTreatment => Status::Completed,
        _ => from,
    }
}

/// The moves this caller may make now, in a stable order.
pub fn allowed_actions(from: Status, may_triage: bool) -> Vec<Action> {
    ACTIONS.into_iter().filter(|a| after(from, *a).is_some() && (may_triage || !a.needs_triage_permission())).collect()
}

/// The status after an appointment event; `None` when the event does not apply (for instance a
/// booking for a referral already closed, whose appointment the service then cancels).
pub fn after_appointment(from: Status, event: AppointmentEvent) -> Option<Status> {
    use AppointmentEvent as E;
    use Status as S;
    match (from, event) {
        (S::AwaitingBooking | S::Booked, E::Booked) => Some(S::Booked),
        (S::Booked, E::Cancelled) => Some(S::AwaitingBooking),
        (S::Booked, E::DidNotAttend { discharge: true }) => Some(S::Completed),
        (S::Booked, E::DidNotAttend { discharge: false }) => Some(S::AwaitingBooking),
        (S::Booked, E::Attended) => Some(S::Booked),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Action::*;
    use super::Status::*;
    use super::*;

    const ALL: [Status; 9] =
        [AwaitingTriage, AwaitingBooking, Booked, Rejected, Returned, Redirected, AwaitingInformation, Cancelled, Completed];

    #[test]
    fn triage_moves() {
        assert_eq!(after(AwaitingTriage, Accept), Some(AwaitingBooking));
        assert_eq!(after(AwaitingTriage, Reject), Some(Rejected));
        assert_eq!(after(AwaitingTriage, ReturnToReferrer), Some(Returned));
        assert_eq!(after(AwaitingTriage, Redirect), Some(Redirected));
        assert_eq!(after(AwaitingTriage, RequestInformation), Some(AwaitingInformation));
        assert_eq!(after(AwaitingInformation, InformationReceived), Some(AwaitingTriage));
        assert_eq!(after(AwaitingBooking, Accept), None, "accepting twice is not a move");
    }

    #[test]
    fn terminal_states_allow_nothing() {
        for status in ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(allowed_actions(status, true).is_empty(), "{status:?}");
            for event in [AppointmentEvent::Booked, AppointmentEvent::Cancelled, AppointmentEvent::Attended] {
                assert_eq!(after_appointment(status, event), None, "{status:?} {event:?}");
            }
        }
    }

    #[test]
    fn allowed_actions_follow_the_moves_and_the_permission() {
        for status in ALL {
            for action in ACTIONS {
                let allowed = allowed_actions(status, true).contains(&action);
                assert_eq!(allowed, after(status, action).is_some(), "{status:?} {action:?}");
            }
        }
        assert_eq!(allowed_actions(AwaitingTriage, false), [Cancel, RecordClockEvent]);
        assert_eq!(
            allowed_actions(AwaitingTriage, true),
            [Accept, Reject, ReturnToReferrer, Redirect, RequestInformation, Cancel, RecordClockEvent]
        );
        assert_eq!(allowed_actions(Booked, false), [Cancel, RecordClockEvent]);
    }

    #[test]
    fn stopping_the_clock_completes_the_pathway_except_active_monitoring() {
        assert_eq!(after_clock_stop(Booked, Code::FirstTreatment), Completed);
        assert_eq!(after_clock_stop(AwaitingBooking, Code::DecisionNotToTreat), Completed);
        assert_eq!(after_clock_stop(Booked, Code::ActiveMonitoringClinician), Booked);
    }

    #[test]
    fn appointments_move_the_referral() {
        assert_eq!(after_appointment(AwaitingBooking, AppointmentEvent::Booked), Some(Booked));
        assert_eq!(after_appointment(Booked, AppointmentEvent::Cancelled), Some(AwaitingBooking));
        assert_eq!(after_appointment(Booked, AppointmentEvent::DidNotAttend { discharge: false }), Some(AwaitingBooking));
        assert_eq!(after_appointment(Booked, AppointmentEvent::DidNotAttend { discharge: true }), Some(Completed));
        assert_eq!(after_appointment(AwaitingTriage, AppointmentEvent::Booked), None, "booked before triage is not applied");
    }
}
