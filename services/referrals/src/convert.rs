//! Between the wire (`pac.referrals.v1`) and the service's records.

use chrono::{DateTime, Utc};
use pac_platform::convert::{actor, date, timestamp};
use pac_proto::referrals as pb;

use crate::domain::eligibility::{Priority, Sex};
use crate::domain::referral::{Action, RebookReason, Status};
use crate::domain::rtt::{LaterDnaPolicy, State};
use crate::model::{Note, Referral, ServiceEntry};
use crate::referrals::local_date;

pub fn priority(p: Priority) -> pb::Priority {
    match p {
        Priority::Routine => pb::Priority::Routine,
        Priority::Urgent => pb::Priority::Urgent,
        Priority::TwoWeekWait => pb::Priority::TwoWeekWait,
    }
}

pub fn status(s: Status) -> pb::ReferralStatus {
    match s {
        Status::AwaitingTriage => pb::ReferralStatus::AwaitingTriage,
        Status::AwaitingBooking => pb::ReferralStatus::AwaitingBooking,
        Status::Booked => pb::ReferralStatus::Booked,
        Status::Rejected => pb::ReferralStatus::Rejected,
        Status::Returned => pb::ReferralStatus::Returned,
        Status::Redirected => pb::ReferralStatus::Redirected,
        Status::AwaitingInformation => pb::ReferralStatus::AwaitingInformation,
        Status::Cancelled => pb::ReferralStatus::Cancelled,
        Status::Completed => pb::ReferralStatus::Completed,
    }
}

pub fn parse_status(value: i32) -> Option<Status> {
    Some(match pb::ReferralStatus::try_from(value).ok()? {
        pb::ReferralStatus::Unspecified => return None,
        pb::ReferralStatus::AwaitingTriage => Status::AwaitingTriage,
        pb::ReferralStatus::AwaitingBooking => Status::AwaitingBooking,
        pb::ReferralStatus::Booked => Status::Booked,
        pb::ReferralStatus::Rejected => Status::Rejected,
        pb::ReferralStatus::Returned => Status::Returned,
        pb::ReferralStatus::Redirected => Status::Redirected,
        pb::ReferralStatus::AwaitingInformation => Status::AwaitingInformation,
        pb::ReferralStatus::Cancelled => Status::Cancelled,
        pb::ReferralStatus::Completed => Status::Completed,
    })
}

pub fn action(a: Action) -> pb::ReferralAction {
    match a {
        Action::Accept => pb::ReferralAction::Accept,
        Action::Reject => pb::ReferralAction::Reject,
        Action::ReturnToReferrer => pb::ReferralAction::ReturnToReferrer,
        Action::Redirect => pb::ReferralAction::Redirect,
        Action::RequestInformation => pb::ReferralAction::RequestInformation,
        Action::InformationReceived => pb::ReferralAction::InformationReceived,
        Action::Cancel => pb::ReferralAction::Cancel,
        Action::RecordClockEvent => pb::ReferralAction::RecordClockEvent,
    }
}

fn sex(s: Sex) -> pb::Sex {
    match s {
        Sex::Male => pb::Sex::Male,
        Sex::Female => pb::Sex::Female,
        Sex::Other => pb::Sex::Other,
        Sex::Unknown => pb::Sex::Unknown,
    }
}

fn later_dna(p: LaterDnaPolicy) -> pb::LaterDnaPolicy {
    match p {
        LaterDnaPolicy::Rebook => pb::LaterDnaPolicy::Rebook,
        LaterDnaPolicy::Discharge => pb::LaterDnaPolicy::Discharge,
    }
}

fn clock_state(s: State) -> pb::ClockState {
    match s {
        State::Running => pb::ClockState::Running,
        State::Stopped => pb::ClockState::Stopped,
        State::Nullified => pb::ClockState::Nullified,
    }
}

fn rebook_reason(r: RebookReason) -> pb::RebookReason {
    match r {
        RebookReason::CancelledByProvider => pb::RebookReason::CancelledByProvider,
        RebookReason::CancelledByPatient => pb::RebookReason::CancelledByPatient,
        RebookReason::DidNotAttend => pb::RebookReason::DidNotAttend,
    }
}

pub fn service(s: &ServiceEntry) -> pb::Service {
    pb::Service {
        code: s.code.clone(),
        name: s.name.clone(),
        specialty: s.specialty.clone(),
        rules: Some(pb::EligibilityRules {
            min_age: s.rules.min_age.map(|a| a as i32),
            max_age: s.rules.max_age.map(|a| a as i32),
            sexes: s.rules.sexes.iter().map(|x| sex(*x) as i32).collect(),
            sources: s.rules.sources.clone(),
            catchment_districts: s.rules.catchment.clone(),
            required_information: s.rules.required_information.clone(),
        }),
        accepted_priorities: s.rules.priorities.iter().map(|p| priority(*p) as i32).collect(),
        target_wait_days: s.target_wait_days,
        stuck_thresholds: s
            .thresholds
            .iter()
            .map(|t| pb::StuckThreshold {
                status: Status::from_code(&t.status).map_or(0, |x| status(x) as i32),
                priority: Priority::from_value(i32::from(t.priority)).map_or(0, |p| priority(p) as i32),
                working_days: t.working_days as i32,
            })
            .collect(),
        later_dna_policy: later_dna(s.later_dna) as i32,
        create_time: Some(timestamp(s.created_at)),
        organisation: s.organisation.clone(),
    }
}

/// The referral as read at `now`: the clock's weeks waited and days to breach are as of today.
pub fn referral(r: &Referral, now: DateTime<Utc>) -> pb::Referral {
    let today = local_date(now);
    let breach = r.clock.breach_date();
    pb::Referral {
        id: r.id.to_string(),
        etag: r.etag(),
        patient_id: r.patient_id.to_string(),
        service_code: r.service_code.clone(),
        priority: priority(r.priority) as i32,
        status: status(r.status) as i32,
        referrer: Some(pb::Referrer { organisation: r.referrer_organisation.clone(), clinician: r.referrer_clinician.clone() }),
        source: r.source.clone(),
        reason: r.reason.clone(),
        information: r.information.clone(),
        receive_time: Some(timestamp(r.received_at)),
        clock: Some(pb::RttClock {
            status_code: r.clock.code.value(),
            state: clock_state(r.clock.state) as i32,
            start_date: Some(date(r.clock.started)),
            end_date: r.clock.ended.map(date),
            weeks_waited: r.clock.weeks_waited(today).map(|w| w as i32),
            breach_date: breach.map(date),
            days_to_breach: breach.map(|b| (b - today).num_days() as i32),
        }),
        appointment_ids: r.appointment_ids.iter().map(|a| a.to_string()).collect(),
        current_appointment_id: r.current_appointment_id.map(|a| a.to_string()).unwrap_or_default(),
        rebook_reason: r.rebook_reason.map_or(0, |x| rebook_reason(x) as i32),
        dna_follow_up: r.dna_follow_up,
        missed_appointments: r.missed.len() as i32,
        attended_appointments: r.attended.len() as i32,
        triage_code: r.triage_code.clone(),
        triage_text: r.triage_text.clone(),
        redirected_to: r.redirected_to.map(|x| x.to_string()).unwrap_or_default(),
        redirected_from: r.redirected_from.map(|x| x.to_string()).unwrap_or_default(),
        status_time: Some(timestamp(r.status_since)),
        stuck: r.is_stuck(now),
        open_tasks: r.open_tasks,
        create_time: Some(timestamp(r.created_at)),
        update_time: Some(timestamp(r.updated_at)),
        organisation: r.organisation.clone(),
    }
}

pub fn note(n: &Note) -> pb::Note {
    pb::Note {
        id: n.id.to_string(),
        task: n.task,
        text: n.text.clone(),
        team: n.team.clone(),
        due_date: n.due_date.map(date),
        complete_time: n.completed_at.map(timestamp),
        author: Some(actor(&n.author)),
        create_time: Some(timestamp(n.created_at)),
    }
}
