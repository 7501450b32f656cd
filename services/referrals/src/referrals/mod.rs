//! The referrals service's operations, by area: the directory and eligibility (`directory`), a
//! referral's life (`lifecycle`), and other services' events followed (`followed`). Each write is
//! one transaction, taken through the kit's write steps (`pac_platform::write`): it locks the
//! referral, checks the etag and the domain's rules, writes, appends its events to the outbox and
//! records its response under the request id. Calls to other services happen before the lock is
//! taken, except the cancellation of a cancelled referral's appointment, which must not race the
//! appointment events that follow it.
//!
//! Organisation scope: a referral belongs to its service's organisation. A caller's scope
//! (`Write::scope`, or the `scope` argument of a read) goes into the SQL that reads or locks the
//! referral, so another organisation's is `NotFound`; referring into a service of another
//! organisation is `OtherOrganisation`. A redirect may name any service in the directory: the new
//! referral is the new service's organisation's (a hand-over, as between providers in e-RS), so the
//! redirecting caller sees it in the triage response and afterwards only if it is theirs too.

use chrono::{DateTime, NaiveDate, Utc};
use pac_platform::caller::within;
use pac_platform::links::{self, Mismatch, Owner};
use pac_platform::outbox::Outbox;
pub use pac_platform::write::Write;
use pac_platform::write::{self, Claim, WriteTx, Writes};
use pac_platform::{follow, merges};
use pac_proto::referrals as pb;
use pac_proto::referrals::watch_events_response::Event;
use prost::Message;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::clients::{Clients, PatientFacts, REFERRAL_CANCELLED, REFERRAL_CLOSED, SUPERSEDED};
use crate::convert;
use crate::domain::eligibility::{self, Applicant, Priority, Reason};
use crate::domain::referral::{self, Action, AppointmentEvent, RebookReason, Status};
use crate::domain::rtt::{Clock, ClockEvent, Code, LaterDnaPolicy, State};
use crate::error::ReferralsError;
use crate::model::{Note, Referral, ServiceEntry, Worklist, WorklistKey};
use crate::store::{self, Scope};

mod directory;
mod followed;
mod lifecycle;

type Result<T> = std::result::Result<T, ReferralsError>;

const REFERRAL: &str = "pac.referrals.v1.Referral";

/// Today in England, where the RTT clock counts days.
pub fn today() -> NaiveDate {
    local_date(Utc::now())
}

pub fn local_date(at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&chrono_tz::Europe::London).date_naive()
}

pub struct NewReferral {
    pub patient_id: Uuid,
    pub service_code: String,
    pub priority: Priority,
    pub referrer_organisation: String,
    pub referrer_clinician: String,
    pub source: String,
    pub reason: String,
    pub information: Vec<String>,
    pub received_at: DateTime<Utc>,
}

pub enum Decision {
    Accept,
    Reject { reason_code: String, comment: String },
    ReturnToReferrer { advice: String },
    Redirect { service_code: String, comment: String },
    RequestInformation { question: String },
    InformationReceived { information: Vec<String> },
}

impl Decision {
    fn action(&self) -> Action {
        match self {
            Self::Accept => Action::Accept,
            Self::Reject { .. } => Action::Reject,
            Self::ReturnToReferrer { .. } => Action::ReturnToReferrer,
            Self::Redirect { .. } => Action::Redirect,
            Self::RequestInformation { .. } => Action::RequestInformation,
            Self::InformationReceived { .. } => Action::InformationReceived,
        }
    }
}

/// What the scheduling service reported, as referrals needs it.
pub struct AppointmentChange {
    pub appointment_id: Uuid,
    pub referral_id: Option<Uuid>,
    /// The appointment's patient, organisation and clinic's service code.
    pub patient_id: Uuid,
    pub organisation: String,
    pub service_code: String,
    pub kind: AppointmentChangeKind,
    /// The day it happened (the appointment's day for attendance).
    pub on: NaiveDate,
}

pub enum AppointmentChangeKind {
    Booked,
    /// Cancelled, or entered in error (by the hospital).
    Cancelled {
        by_patient: bool,
    },
    DidNotAttend,
    Attended,
}

#[derive(Clone)]
pub struct Referrals {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clients: Clients,
    writes: Writes,
}

fn not_found(id: Uuid) -> ReferralsError {
    ReferralsError::NotFound { resource: REFERRAL, id: id.to_string() }
}

fn check_etag(referral: &Referral, etag: &str) -> Result<()> {
    if etag != referral.etag() {
        return Err(ReferralsError::VersionMismatch { current_etag: referral.etag() });
    }
    Ok(())
}

fn transition(referral: &Referral, action: Action) -> Result<Status> {
    referral::after(referral.status, action).ok_or(ReferralsError::InvalidTransition { from: referral.status, action })
}

fn event_type(event: &Event) -> &'static str {
    match event {
        Event::ReferralReceived(_) => "ReferralReceived",
        Event::ReferralTriaged(_) => "ReferralTriaged",
        Event::ReferralBooked(_) => "ReferralBooked",
        Event::ReferralBookingLost(_) => "ReferralBookingLost",
        Event::ReferralCancelled(_) => "ReferralCancelled",
        Event::ClockStopped(_) => "ClockStopped",
        Event::ReferralUpdated(_) => "ReferralUpdated",
    }
}

/// Events are stored as a `WatchEventsResponse` without its envelope; the envelope is added on read.
fn event_payload(event: Event) -> Vec<u8> {
    pb::WatchEventsResponse { envelope: None, event: Some(event) }.encode_to_vec()
}

fn referral_event(referral: &Referral, reason: &str) -> pb::ReferralEvent {
    pb::ReferralEvent { referral: Some(convert::referral(referral, Utc::now())), reason: reason.to_string() }
}

impl Referrals {
    pub fn new(pool: PgPool, outbox: Outbox, clients: Clients) -> Self {
        let writes = Writes::new(pool.clone(), outbox.clone(), crate::SCHEMA);
        Self { pool, outbox, clients, writes }
    }

    /// Appends `event` about `referral` in the write's transaction.
    async fn emit(&self, conn: &mut PgConnection, referral: &Referral, event: Event, write: &Write) -> Result<()> {
        let event = write::Event {
            event_type: event_type(&event),
            aggregate_id: referral.id,
            organisation: referral.organisation.clone(),
            patient_ids: vec![referral.patient_id],
            payload: event_payload(event),
        };
        Ok(self.writes.append(conn, write, event).await?)
    }
}

/// What is known of a referral when eligibility is checked; `None` means not known (not checked).
#[derive(Debug, Clone, Default)]
pub struct ReferralFacts {
    pub source: Option<String>,
    pub priority: Option<Priority>,
    pub information: Option<Vec<String>>,
}

fn stop_clock(clock: &Clock, code: Code, today: NaiveDate) -> Result<Clock> {
    match clock.state {
        State::Running => {
            clock.apply(ClockEvent::Stop(code), today.max(clock.started), LaterDnaPolicy::Rebook).map_err(ReferralsError::ClockRefused)
        }
        _ => Ok(*clock),
    }
}

fn referral_as_new(r: &Referral, service_code: String) -> NewReferral {
    NewReferral {
        patient_id: r.patient_id,
        service_code,
        priority: r.priority,
        referrer_organisation: r.referrer_organisation.clone(),
        referrer_clinician: r.referrer_clinician.clone(),
        source: r.source.clone(),
        reason: r.reason.clone(),
        information: r.information.clone(),
        received_at: r.received_at,
    }
}

/// A referral awaiting triage since `since` (its receipt, or its redirection).
pub(crate) fn new_referral(
    new: &NewReferral,
    patient_id: Uuid,
    service: &ServiceEntry,
    clock: Clock,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Referral {
    let mut referral = Referral {
        id: Uuid::now_v7(),
        version: 1,
        patient_id,
        service_code: service.code.clone(),
        priority: new.priority,
        status: Status::AwaitingTriage,
        referrer_organisation: new.referrer_organisation.clone(),
        referrer_clinician: new.referrer_clinician.clone(),
        source: new.source.clone(),
        reason: new.reason.clone(),
        information: new.information.clone(),
        received_at: new.received_at,
        clock,
        appointment_ids: Vec::new(),
        current_appointment_id: None,
        rebook_reason: None,
        dna_follow_up: false,
        missed: Vec::new(),
        attended: Vec::new(),
        triage_code: String::new(),
        triage_text: String::new(),
        redirected_to: None,
        redirected_from: None,
        status_since: since,
        stuck_after: None,
        open_tasks: 0,
        unassigned_tasks: 0,
        created_at: now,
        updated_at: now,
        organisation: service.organisation.clone(),
    };
    referral.enter(Status::AwaitingTriage, since, service);
    referral
}
