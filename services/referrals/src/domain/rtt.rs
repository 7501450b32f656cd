//! The referral-to-treatment (RTT) clock, England. It starts when the referral is received; the
//! 18-week standard is 126 days. It stops at first definitive treatment, a decision not to treat (or
//! return to primary care), active monitoring, the patient declining treatment, or death. A DNA of the
//! first appointment nullifies it: that period is not measured at all. A later DNA stops it only if
//! the patient is discharged under local policy. There are no patient-initiated pauses (since 2015).

use chrono::{Duration, NaiveDate};

/// Days in the 18-week standard.
pub const STANDARD_DAYS: i64 = 126;

/// RTT status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 10: first activity, clock starts.
    Start = 10,
    /// 11: clock starts after a period of active monitoring.
    StartAfterActiveMonitoring = 11,
    /// 12: clock starts for a new condition.
    StartNewCondition = 12,
    /// 20: subsequent activity, clock continues.
    Continue = 20,
    /// 21: transfer to another provider, clock continues.
    Transfer = 21,
    /// 30: first definitive treatment, clock stops.
    FirstTreatment = 30,
    /// 31: active monitoring started by the patient, clock stops.
    ActiveMonitoringPatient = 31,
    /// 32: active monitoring started by the clinician, clock stops.
    ActiveMonitoringClinician = 32,
    /// 33: the patient did not attend the first appointment, clock nullified.
    FirstAppointmentDna = 33,
    /// 34: decision not to treat (or return to primary care), clock stops.
    DecisionNotToTreat = 34,
    /// 35: the patient declined treatment, clock stops.
    PatientDeclined = 35,
    /// 36: the patient died before treatment, clock stops.
    DiedBeforeTreatment = 36,
}

const CODES: [Code; 12] = [
    Code::Start,
    Code::StartAfterActiveMonitoring,
    Code::StartNewCondition,
    Code::Continue,
    Code::Transfer,
    Code::FirstTreatment,
    Code::ActiveMonitoringPatient,
    Code::ActiveMonitoringClinician,
    Code::FirstAppointmentDna,
    Code::DecisionNotToTreat,
    Code::PatientDeclined,
    Code::DiedBeforeTreatment,
];

impl Code {
    pub fn value(self) -> i32 {
        self as i32
    }

    pub fn from_value(value: i32) -> Option<Self> {
        CODES.into_iter().find(|c| c.value() == value)
    }

    fn stops(self) -> bool {
        matches!(
            self,
            Self::FirstTreatment
                | Self::ActiveMonitoringPatient
                | Self::ActiveMonitoringClinician
                | Self::DecisionNotToTreat
                | Self::PatientDeclined
                | Self::DiedBeforeTreatment
        )
    }
}

/// Whether a later (not first) DNA discharges the patient back to the referrer: local policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaterDnaPolicy {
    /// The patient is discharged and the clock stops (code 34).
    Discharge,
    /// The patient is offered another appointment and the clock keeps running.
    Rebook,
}

/// Something that happens to the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockEvent {
    /// An attended appointment or other activity that does not stop the clock (code 20).
    Activity,
    /// Care transferred to another provider (code 21).
    Transfer,
    /// The patient did not attend an appointment; `first` when it was the first one.
    DidNotAttend { first: bool },
    /// A stopping event (codes 30-32, 34-36).
    Stop(Code),
    /// A new clock for this referral pathway (codes 10-12), e.g. after active monitoring ends.
    Restart(Code),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Stopped,
    /// Nullified by a first-appointment DNA: the period is not measured.
    Nullified,
}

impl State {
    pub fn code(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Nullified => "nullified",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        [Self::Running, Self::Stopped, Self::Nullified].into_iter().find(|s| s.code() == code)
    }
}

/// A referral's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub started: NaiveDate,
    pub code: Code,
    pub state: State,
    /// The day it stopped or was nullified.
    pub ended: Option<NaiveDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockError {
    /// The event is dated before the clock started, or before its last change.
    BeforeStart,
    /// The clock is not running; only a restart applies.
    NotRunning,
    /// A restart needs a start code (10, 11 or 12); a stop needs a stopping code.
    WrongCode,
}

impl Clock {
    /// The clock a referral received on `received` starts with.
    pub fn start(received: NaiveDate) -> Self {
        Self { started: received, code: Code::Start, state: State::Running, ended: None }
    }

    /// The day the 18-week standard is breached for a running clock: 126 days after the start.
    pub fn breach_date(&self) -> Option<NaiveDate> {
        (self.state == State::Running).then(|| self.started + Duration::days(STANDARD_DAYS))
    }

    /// Days waited on `today` (to the stop, if stopped); none when nullified.
    pub fn days_waited(&self, today: NaiveDate) -> Option<i64> {
        match self.state {
            State::Nullified => None,
            State::Running => Some((today - self.started).num_days().max(0)),
            State::Stopped => self.ended.map(|end| (end - self.started).num_days().max(0)),
        }
    }

    /// Completed weeks waited on `today`.
    pub fn weeks_waited(&self, today: NaiveDate) -> Option<i64> {
        self.days_waited(today).map(|days| days / 7)
    }

    /// Applies an event dated `on`.
    pub fn apply(self, event: ClockEvent, on: NaiveDate, later_dna: LaterDnaPolicy) -> Result<Self, ClockError> {
        if on < self.started || self.ended.is_some_and(|end| on < end) {
            return Err(ClockError::BeforeStart);
        }
        if let ClockEvent::Restart(code) = event {
            if !matches!(code, Code::Start | Code::StartAfterActiveMonitoring | Code::StartNewCondition) {
                return Err(ClockError::WrongCode);
            }
            if self.state == State::Running {
                return Err(ClockError::WrongCode);
            }
            return Ok(Self { started: on, code, state: State::Running, ended: None });
        }
        if self.state != State::Running {
            return Err(ClockError::NotRunning);
        }
        let stopped = |code| Self { code, state: State::Stopped, ended: Some(on), ..self };
        Ok(match event {
            ClockEvent::Activity => Self { code: Code::Continue, ..self },
            ClockEvent::Transfer => Self { code: Code::Transfer, ..self },
            ClockEvent::DidNotAttend { first: true } => {
                Self { code: Code::FirstAppointmentDna, state: State::Nullified, ended: Some(on), ..self }
            }
            ClockEvent::DidNotAttend { first: false } => match later_dna {
                LaterDnaPolicy::Discharge => stopped(Code::DecisionNotToTreat),
                LaterDnaPolicy::Rebook => self,
            },
            ClockEvent::Stop(code) if code.stops() => stopped(code),
            ClockEvent::Stop(_) => return Err(ClockError::WrongCode),
            ClockEvent::Restart(_) => unreachable!("handled above"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn codes_round_trip() {
        for code in CODES {
            assert_eq!(Code::from_value(code.value()), Some(code));
        }
        assert_eq!(Code::from_value(13), None);
    }

    #[test]
    fn breach_is_126_days_after_receipt() {
        let clock = Clock::start(d(2026, 11, 25));
        assert_eq!(clock.breach_date(), Some(d(2027, 3, 31)));
        assert_eq!(clock.code.value(), 10);
        // Across a leap day.
        assert_eq!(Clock::start(d(2027, 12, 1)).breach_date(), Some(d(2028, 4, 5)));
    }

    #[test]
    fn weeks_waited_count_whole_weeks_from_receipt() {
        let clock = Clock::start(d(2026, 11, 25));
        assert_eq!(clock.weeks_waited(d(2026, 11, 25)), Some(0));
        assert_eq!(clock.weeks_waited(d(2026, 12, 1)), Some(0));
        assert_eq!(clock.weeks_waited(d(2026, 12, 2)), Some(1));
        assert_eq!(clock.weeks_waited(d(2027, 3, 31)), Some(18));
    }

    #[test]
    fn stop_events_stop_the_clock_and_freeze_the_wait() {
        for code in [
            Code::FirstTreatment,
            Code::ActiveMonitoringPatient,
            Code::ActiveMonitoringClinician,
            Code::DecisionNotToTreat,
            Code::PatientDeclined,
            Code::DiedBeforeTreatment,
        ] {
            let clock = Clock::start(d(2026, 11, 25)).apply(ClockEvent::Stop(code), d(2027, 1, 20), LaterDnaPolicy::Rebook).unwrap();
            assert_eq!((clock.state, clock.code, clock.ended), (State::Stopped, code, Some(d(2027, 1, 20))));
            assert_eq!(clock.breach_date(), None);
            assert_eq!(clock.weeks_waited(d(2027, 6, 1)), Some(8), "{code:?}: the wait ends at the stop");
            let after = clock.apply(ClockEvent::Activity, d(2027, 2, 1), LaterDnaPolicy::Rebook);
            assert_eq!(after, Err(ClockError::NotRunning));
        }
        let wrong = Clock::start(d(2026, 11, 25)).apply(ClockEvent::Stop(Code::Continue), d(2027, 1, 20), LaterDnaPolicy::Rebook);
        assert_eq!(wrong, Err(ClockError::WrongCode));
    }

    #[test]
    fn a_first_appointment_dna_nullifies_the_clock() {
        let clock =
            Clock::start(d(2026, 11, 25)).apply(ClockEvent::DidNotAttend { first: true }, d(2027, 1, 8), LaterDnaPolicy::Rebook).unwrap();
        assert_eq!((clock.state, clock.code.value()), (State::Nullified, 33));
        assert_eq!(clock.weeks_waited(d(2027, 2, 1)), None, "the period is not measured");
        assert_eq!(clock.breach_date(), None);
        // Rebooked: a new clock from the day the patient rebooks.
        let again = clock.apply(ClockEvent::Restart(Code::Start), d(2027, 1, 12), LaterDnaPolicy::Rebook).unwrap();
        assert_eq!((again.started, again.breach_date()), (d(2027, 1, 12), Some(d(2027, 5, 18))));
    }

    #[test]
    fn a_later_dna_follows_local_policy() {
        let seen = Clock::start(d(2026, 11, 25)).apply(ClockEvent::Activity, d(2027, 1, 8), LaterDnaPolicy::Rebook).unwrap();
        assert_eq!(seen.code.value(), 20);
        let rebook = seen.apply(ClockEvent::DidNotAttend { first: false }, d(2027, 2, 8), LaterDnaPolicy::Rebook).unwrap();
        assert_eq!((rebook.state, rebook.breach_date()), (State::Running, Some(d(2027, 3, 31))));
        let discharge = seen.apply(ClockEvent::DidNotAttend { first: false }, d(2027, 2, 8), LaterDnaPolicy::Discharge).unwrap();
        assert_eq!((discharge.state, discharge.code.value(), discharge.ended), (State::Stopped, 34, Some(d(2027, 2, 8))));
    }

    #[test]
    fn restarts_after_active_monitoring_and_events_in_the_past_are_refused() {
        let monitoring = Clock::start(d(2026, 11, 25))
            .apply(ClockEvent::Stop(Code::ActiveMonitoringClinician), d(2027, 1, 5), LaterDnaPolicy::Rebook)
            .unwrap();
        let restarted =
            monitoring.apply(ClockEvent::Restart(Code::StartAfterActiveMonitoring), d(2027, 6, 1), LaterDnaPolicy::Rebook).unwrap();
        assert_eq!((restarted.code.value(), restarted.started, restarted.state), (11, d(2027, 6, 1), State::Running));
        assert_eq!(
            Clock::start(d(2026, 11, 25)).apply(ClockEvent::Restart(Code::Start), d(2027, 1, 1), LaterDnaPolicy::Rebook),
            Err(ClockError::WrongCode),
            "a running clock is not restarted"
        );
        assert_eq!(
            monitoring.apply(ClockEvent::Restart(Code::FirstTreatment), d(2027, 6, 1), LaterDnaPolicy::Rebook),
            Err(ClockError::WrongCode)
        );
        assert_eq!(
            Clock::start(d(2026, 11, 25)).apply(ClockEvent::Activity, d(2026, 11, 24), LaterDnaPolicy::Rebook),
            Err(ClockError::BeforeStart)
        );
        assert_eq!(monitoring.apply(ClockEvent::Restart(Code::Start), d(2027, 1, 4), LaterDnaPolicy::Rebook), Err(ClockError::BeforeStart));
        assert_eq!(
            Clock::start(d(2026, 11, 25)).apply(ClockEvent::Transfer, d(2027, 1, 1), LaterDnaPolicy::Rebook).unwrap().code.value(),
            21
        );
    }
}
