//! The referrals service's operations. Each write is one transaction: it locks the referral, checks
//! the etag and the domain's rules, writes, appends its events to the outbox and records its
//! response under the request id. Calls to other services happen before the lock is taken, except
//! the cancellation of a cancelled referral's appointment, which must not race the appointment
//! events that follow it.
//!
//! Organisation scope: a referral belongs to its service's organisation. A caller's scope
//! (`Write::scope`, or the `scope` argument of a read) goes into the SQL that reads or locks the
//! referral, so another organisation's is `NotFound`; referring into a service of another
//! organisation is `OtherOrganisation`. A redirect may name any service in the directory: the new
//! referral is the new service's organisation's (a hand-over, as between providers in e-RS), so the
//! redirecting caller sees it in the triage response and afterwards only if it is theirs too.

use chrono::{DateTime, NaiveDate, Utc};
use pac_platform::Actor;
use pac_platform::caller::within;
use pac_platform::idempotency::IdempotencyStore;
use pac_platform::links::{self, Mismatch, Owner};
use pac_platform::outbox::{NewEvent, Outbox};
use pac_platform::{follow, merges};
use pac_proto::referrals as pb;
use pac_proto::referrals::watch_events_response::Event;
use prost::Message;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::clients::{Clients, PatientFacts, REFERRAL_CANCELLED, REFERRAL_CLOSED, SUPERSEDED};
use crate::convert;
use crate::domain::eligibility::{self, Applicant, Priority, Reason};
use crate::domain::referral::{self, Action, AppointmentEvent, RebookReason, Status};
use crate::domain::rtt::{Clock, ClockEvent, Code, LaterDnaPolicy, State};
use crate::error::ReferralsError;
use crate::model::{Note, Referral, ServiceEntry, Worklist, WorklistKey};
use crate::store::{self, Scope};

type Result<T> = std::result::Result<T, ReferralsError>;
type Tx = Transaction<'static, Postgres>;

const REFERRAL: &str = "pac.referrals.v1.Referral";

/// Today in England, where the RTT clock counts days.
pub fn today() -> NaiveDate {
    local_date(Utc::now())
}

pub fn local_date(at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&chrono_tz::Europe::London).date_naive()
}

/// Who asked for a write, within which organisations, and its idempotency key.
pub struct Write {
    pub actor: Actor,
    /// The caller's organisation scope (`Caller::scope`); `None` when unscoped.
    pub scope: Option<Vec<String>>,
    pub request_id: Option<String>,
    pub request_hash: Vec<u8>,
}

impl Write {
    pub fn scope(&self) -> Scope<'_> {
        self.scope.as_deref()
    }
}

/// A write's transaction, or the response recorded for its request id.
enum Started<R> {
    Fresh(Tx),
    Replay(R),
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
    idempotency: IdempotencyStore,
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
        Self { pool, outbox, clients, idempotency: IdempotencyStore::new(crate::SCHEMA) }
    }

    // -----------------------------------------------------------------------------------------
    // Transactions, idempotency and events

    /// The response recorded for this request id, if any (before any work that calls out).
    async fn recorded<R: Message + Default>(&self, operation: &str, write: &Write) -> Result<Option<R>> {
        let Some(request_id) = &write.request_id else { return Ok(None) };
        match self.idempotency.find(&self.pool, operation, request_id).await? {
            Some(recorded) => Ok(Some(recorded.replay(&write.request_hash)?)),
            None => Ok(None),
        }
    }

    async fn start<R: Message + Default>(&self, operation: &str, write: &Write) -> Result<Started<R>> {
        let mut tx = self.pool.begin().await?;
        if let Some(request_id) = &write.request_id
            && let Some(recorded) = self.idempotency.claim(&mut tx, operation, request_id).await?
        {
            return Ok(Started::Replay(recorded.replay(&write.request_hash)?));
        }
        Ok(Started::Fresh(tx))
    }

    /// Records the response under the request id (if any), commits, and wakes the event streams.
    async fn finish<R: Message>(&self, mut tx: Tx, operation: &str, write: &Write, response: &R) -> Result<()> {
        if let Some(request_id) = &write.request_id {
            self.idempotency.record(&mut tx, operation, request_id, &write.request_hash, response).await?;
        }
        tx.commit().await?;
        self.outbox.committed();
        Ok(())
    }

    async fn emit(
        &self,
        conn: &mut PgConnection,
        referral: &Referral,
        event: Event,
        actor: &Actor,
        request_id: Option<&str>,
    ) -> Result<()> {
        let new = NewEvent {
            event_type: event_type(&event),
            aggregate_id: referral.id,
            organisation: &referral.organisation,
            patient_ids: &[referral.patient_id],
            payload: event_payload(event),
            actor,
            request_id,
        };
        self.outbox.append(conn, new).await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Directory and eligibility

    pub async fn create_service(&self, service: ServiceEntry, write: Write) -> Result<pb::CreateServiceResponse> {
        let mut tx = match self.start("CreateService", &write).await? {
            Started::Replay(r) => return Ok(r),
            Started::Fresh(tx) => tx,
        };
        if !store::insert_service(&mut tx, &service).await? {
            return Err(ReferralsError::ServiceExists(service.code));
        }
        let response = pb::CreateServiceResponse { service: Some(convert::service(&service)) };
        self.finish(tx, "CreateService", &write, &response).await?;
        tracing::info!(service_code = %service.code, "service added to the directory");
        Ok(response)
    }

    pub async fn service(&self, code: &str) -> Result<ServiceEntry> {
        store::find_service(&self.pool, code).await?.ok_or_else(|| ReferralsError::ServiceNotFound(code.to_string()))
    }

    pub async fn list_services(&self, after: &str, limit: i64) -> Result<Vec<ServiceEntry>> {
        Ok(store::list_services(&self.pool, after, limit).await?)
    }

    /// Every entry rule of `service` that the patient (and what is known of the referral) breaks.
    ///
    /// The patient is read as this service (which sees every organisation's patients), then held to
    /// the caller's `scope`: another organisation's patient is not found, since the reasons would
    /// tell the caller about them (their age, sex, area).
    pub async fn check_eligibility(
        &self,
        patient_id: Uuid,
        service: &ServiceEntry,
        facts: ReferralFacts,
        scope: Scope<'_>,
    ) -> Result<(PatientFacts, Vec<Reason>)> {
        let patient = self.clients.patient(patient_id).await?;
        if !within(scope, &patient.organisation) {
            return Err(ReferralsError::PatientNotFound(patient_id));
        }
        let applicant = Applicant {
            birth_date: patient.birth_date,
            sex: patient.sex,
            district: patient.district.clone(),
            source: facts.source,
            priority: facts.priority,
            information: facts.information,
        };
        let reasons = eligibility::check(&service.rules, &applicant, today());
        Ok((patient, reasons))
    }

    // -----------------------------------------------------------------------------------------
    // Referrals

    pub async fn create_referral(&self, new: NewReferral, write: Write) -> Result<pb::CreateReferralResponse> {
        if let Some(response) = self.recorded("CreateReferral", &write).await? {
            return Ok(response);
        }
        let service = self.service(&new.service_code).await?;
        if !within(write.scope(), &service.organisation) {
            return Err(ReferralsError::OtherOrganisation { resource: "pac.referrals.v1.Service", id: service.code });
        }
        let facts =
            ReferralFacts { source: Some(new.source.clone()), priority: Some(new.priority), information: Some(new.information.clone()) };
        let (patient, reasons) = self.check_eligibility(new.patient_id, &service, facts, write.scope()).await?;
        if !reasons.is_empty() {
            return Err(ReferralsError::NotEligible(reasons));
        }
        let mut tx = match self.start("CreateReferral", &write).await? {
            Started::Replay(r) => return Ok(r),
            Started::Fresh(tx) => tx,
        };
        // The patient as this service has followed their merges (the check above ran outside).
        let patient_id = merges::current_patient(&mut tx, patient.id).await?;
        let now = pac_platform::now();
        let referral = new_referral(&new, patient_id, &service, Clock::start(local_date(new.received_at)), new.received_at, now);
        store::insert_referral(&mut tx, &referral).await?;
        store::insert_clock_event(&mut tx, referral.id, &referral.clock, referral.clock.started, "received", &write.actor.subject).await?;
        let event = Event::ReferralReceived(referral_event(&referral, ""));
        self.emit(&mut tx, &referral, event, &write.actor, write.request_id.as_deref()).await?;
        let response = pb::CreateReferralResponse { referral: Some(convert::referral(&referral, now)) };
        self.finish(tx, "CreateReferral", &write, &response).await?;
        tracing::info!(referral_id = %referral.id, service_code = %referral.service_code, "referral received");
        Ok(response)
    }

    pub async fn triage(&self, id: Uuid, etag: &str, decision: Decision, write: Write) -> Result<pb::TriageReferralResponse> {
        if let Some(response) = self.recorded("TriageReferral", &write).await? {
            return Ok(response);
        }
        // A redirect checks the patient against the new service first (a call to records): before
        // the lock. The etag checked under the lock proves nothing changed in between.
        let redirect_to = match &decision {
            Decision::Redirect { service_code, .. } => {
                let current = store::find_referral(&self.pool, id, write.scope()).await?.ok_or_else(|| not_found(id))?;
                if *service_code == current.service_code {
                    return Err(ReferralsError::invalid(
                        "redirect.service_code",
                        "SAME_SERVICE",
                        "a referral is redirected to another service",
                    ));
                }
                let target = store::find_service(&self.pool, service_code)
                    .await?
                    .ok_or_else(|| ReferralsError::ServiceNotFound(service_code.clone()))?;
                let facts = ReferralFacts {
                    source: Some(current.source.clone()),
                    priority: Some(current.priority),
                    information: Some(current.information.clone()),
                };
                let (_, reasons) = self.check_eligibility(current.patient_id, &target, facts, write.scope()).await?;
                if !reasons.is_empty() {
                    return Err(ReferralsError::NotEligible(reasons));
                }
                Some(target)
            }
            _ => None,
        };
        let mut tx = match self.start("TriageReferral", &write).await? {
            Started::Replay(r) => return Ok(r),
            Started::Fresh(tx) => tx,
        };
        let mut referral = store::lock_referral(&mut tx, id, write.scope()).await?.ok_or_else(|| not_found(id))?;
        check_etag(&referral, etag)?;
        let to = transition(&referral, decision.action())?;
        let service = self.service_in(&mut tx, &referral.service_code).await?;
        let clock_before = referral.clock;
        let now = pac_platform::now();
        let today = local_date(now);
        let mut redirected = None;
        match decision {
            Decision::Accept => referral.triage_code = "ACCEPTED".into(),
            Decision::Reject { reason_code, comment } => {
                (referral.triage_code, referral.triage_text) = (reason_code, comment);
                referral.clock = stop_clock(&referral.clock, Code::DecisionNotToTreat, today)?;
            }
            Decision::ReturnToReferrer { advice } => {
                (referral.triage_code, referral.triage_text) = ("RETURNED_WITH_ADVICE".into(), advice);
                referral.clock = stop_clock(&referral.clock, Code::DecisionNotToTreat, today)?;
            }
            Decision::RequestInformation { question } => {
                (referral.triage_code, referral.triage_text) = ("INFORMATION_REQUESTED".into(), question);
            }
            Decision::InformationReceived { information } => {
                referral.triage_code = "INFORMATION_RECEIVED".into();
                referral.information.extend(information);
            }
            Decision::Redirect { service_code, comment } => {
                let target = redirect_to.expect("checked above");
                // The wait continues at the new service: the new referral keeps the clock. It is the
                // new service's organisation's from now on (a hand-over; see the module docs).
                let mut moved =
                    new_referral(&referral_as_new(&referral, service_code), referral.patient_id, &target, referral.clock, now, now);
                moved.clock.code = Code::Transfer;
                moved.redirected_from = Some(referral.id);
                store::insert_referral(&mut tx, &moved).await?;
                store::insert_clock_event(&mut tx, moved.id, &moved.clock, today, "recorded", &write.actor.subject).await?;
                (referral.triage_code, referral.triage_text) = ("REDIRECTED".into(), comment);
                referral.redirected_to = Some(moved.id);
                referral.clock =
                    Clock { code: Code::Transfer, state: State::Stopped, ended: Some(today.max(referral.clock.started)), ..referral.clock };
                self.emit(
                    &mut tx,
                    &moved,
                    Event::ReferralReceived(referral_event(&moved, "redirected")),
                    &write.actor,
                    write.request_id.as_deref(),
                )
                .await?;
                redirected = Some(moved);
            }
        }
        self.save(&mut tx, &mut referral, to, &service, now).await?;
        if referral.clock != clock_before {
            store::insert_clock_event(&mut tx, referral.id, &referral.clock, today, "recorded", &write.actor.subject).await?;
        }
        let event = Event::ReferralTriaged(referral_event(&referral, &referral.triage_code));
        self.emit(&mut tx, &referral, event, &write.actor, write.request_id.as_deref()).await?;
        let response = pb::TriageReferralResponse {
            referral: Some(convert::referral(&referral, now)),
            redirected_referral: redirected.as_ref().map(|r| convert::referral(r, now)),
        };
        self.finish(tx, "TriageReferral", &write, &response).await?;
        tracing::info!(referral_id = %referral.id, status = referral.status.code(), "referral triaged");
        Ok(response)
    }

    /// Cancels a referral and any live appointment booked for it.
    pub async fn cancel(&self, id: Uuid, etag: &str, reason: String, write: Write) -> Result<pb::CancelReferralResponse> {
        let mut tx = match self.start("CancelReferral", &write).await? {
            Started::Replay(r) => return Ok(r),
            Started::Fresh(tx) => tx,
        };
        let mut referral = store::lock_referral(&mut tx, id, write.scope()).await?.ok_or_else(|| not_found(id))?;
        check_etag(&referral, etag)?;
        let to = transition(&referral, Action::Cancel)?;
        let service = self.service_in(&mut tx, &referral.service_code).await?;
        // Under the referral's lock, so the appointment's cancellation event finds it cancelled.
        let cancelled_appointment = referral.current_appointment_id.take();
        if let Some(appointment_id) = cancelled_appointment {
            self.clients.cancel_appointment(appointment_id, REFERRAL_CANCELLED, format!("referral-cancel-{id}")).await?;
        }
        let now = pac_platform::now();
        let today = local_date(now);
        (referral.triage_code, referral.triage_text) = ("CANCELLED".into(), reason.clone());
        if referral.clock.state == State::Running {
            referral.clock = Clock { state: State::Stopped, ended: Some(today.max(referral.clock.started)), ..referral.clock };
            store::insert_clock_event(&mut tx, referral.id, &referral.clock, today, "recorded", &write.actor.subject).await?;
        }
        referral.rebook_reason = None;
        self.save(&mut tx, &mut referral, to, &service, now).await?;
        self.emit(
            &mut tx,
            &referral,
            Event::ReferralCancelled(referral_event(&referral, &reason)),
            &write.actor,
            write.request_id.as_deref(),
        )
        .await?;
        let response = pb::CancelReferralResponse {
            referral: Some(convert::referral(&referral, now)),
            cancelled_appointment_id: cancelled_appointment.map(|a| a.to_string()).unwrap_or_default(),
        };
        self.finish(tx, "CancelReferral", &write, &response).await?;
        tracing::info!(referral_id = %referral.id, appointment_cancelled = cancelled_appointment.is_some(), "referral cancelled");
        Ok(response)
    }

    pub async fn record_clock_event(
        &self,
        id: Uuid,
        etag: &str,
        event: ClockEvent,
        on: NaiveDate,
        write: Write,
    ) -> Result<pb::RecordClockEventResponse> {
        let mut tx = match self.start("RecordClockEvent", &write).await? {
            Started::Replay(r) => return Ok(r),
            Started::Fresh(tx) => tx,
        };
        let mut referral = store::lock_referral(&mut tx, id, write.scope()).await?.ok_or_else(|| not_found(id))?;
        check_etag(&referral, etag)?;
        let mut to = transition(&referral, Action::RecordClockEvent)?;
        let service = self.service_in(&mut tx, &referral.service_code).await?;
        referral.clock = referral.clock.apply(event, on, service.later_dna).map_err(ReferralsError::ClockRefused)?;
        if let ClockEvent::Stop(code) = event {
            to = referral::after_clock_stop(to, code);
        }
        if to.is_terminal() {
            // The pathway is over: its live appointment goes (under the lock, as in `cancel`).
            if let Some(appointment_id) = referral.current_appointment_id.take() {
                self.clients.cancel_appointment(appointment_id, REFERRAL_CLOSED, format!("referral-closed-{id}-{appointment_id}")).await?;
            }
            referral.rebook_reason = None;
        }
        let now = pac_platform::now();
        self.save(&mut tx, &mut referral, to, &service, now).await?;
        store::insert_clock_event(&mut tx, referral.id, &referral.clock, on, "recorded", &write.actor.subject).await?;
        let reason = referral.clock.code.value().to_string();
        let event = if matches!(event, ClockEvent::Stop(_)) {
            Event::ClockStopped(referral_event(&referral, &reason))
        } else {
            Event::ReferralUpdated(referral_event(&referral, &reason))
        };
        self.emit(&mut tx, &referral, event, &write.actor, write.request_id.as_deref()).await?;
        let response = pb::RecordClockEventResponse { referral: Some(convert::referral(&referral, now)) };
        self.finish(tx, "RecordClockEvent", &write, &response).await?;
        tracing::info!(referral_id = %referral.id, rtt_code = referral.clock.code.value(), "clock event recorded");
        Ok(response)
    }

    pub async fn get(&self, id: Uuid, scope: Scope<'_>) -> Result<(Referral, Vec<Note>)> {
        let referral = store::find_referral(&self.pool, id, scope).await?.ok_or_else(|| not_found(id))?;
        let notes = store::notes_of(&self.pool, id).await?;
        Ok((referral, notes))
    }

    pub async fn referral(&self, id: Uuid, scope: Scope<'_>) -> Result<Referral> {
        store::find_referral(&self.pool, id, scope).await?.ok_or_else(|| not_found(id))
    }

    pub async fn worklist(
        &self,
        filter: &Worklist,
        after: Option<WorklistKey>,
        limit: i64,
        scope: Scope<'_>,
    ) -> Result<Vec<(Referral, WorklistKey)>> {
        Ok(store::worklist(&self.pool, filter, after, limit, scope).await?)
    }

    /// Adds a note to a referral in the writer's scope; the answer, and the referral's patient.
    pub async fn add_note(&self, mut note: Note, write: Write) -> Result<(pb::AddNoteResponse, Uuid)> {
        // Before the request id is looked at: a retry from outside the scope finds nothing either.
        let referral = self.referral(note.referral_id, write.scope()).await?;
        let mut tx = match self.start("AddNote", &write).await? {
            Started::Replay(r) => return Ok((r, referral.patient_id)),
            Started::Fresh(tx) => tx,
        };
        note.author = write.actor.clone();
        store::insert_note(&mut tx, &note).await?;
        let response = pb::AddNoteResponse { note: Some(convert::note(&note)) };
        self.finish(tx, "AddNote", &write, &response).await?;
        tracing::info!(referral_id = %note.referral_id, note_id = %note.id, task = note.task, "note added");
        Ok((response, referral.patient_id))
    }

    /// Marks a task of a referral in `scope` done; the task, and the referral's patient.
    pub async fn complete_task(&self, referral_id: Uuid, task_id: Uuid, scope: Scope<'_>) -> Result<(Note, Uuid)> {
        let mut tx = self.pool.begin().await?;
        let referral = store::find_referral(&mut *tx, referral_id, scope).await?.ok_or_else(|| not_found(referral_id))?;
        let task = store::complete_task(&mut tx, referral_id, task_id, pac_platform::now())
            .await?
            .ok_or(ReferralsError::NotFound { resource: "pac.referrals.v1.Note", id: task_id.to_string() })?;
        tx.commit().await?;
        Ok((task, referral.patient_id))
    }

    async fn service_in(&self, conn: &mut PgConnection, code: &str) -> Result<ServiceEntry> {
        store::find_service(conn, code).await?.ok_or_else(|| ReferralsError::ServiceNotFound(code.to_string()))
    }

    /// Writes the referral in its new status, one version on.
    async fn save(
        &self,
        conn: &mut PgConnection,
        referral: &mut Referral,
        to: Status,
        service: &ServiceEntry,
        now: DateTime<Utc>,
    ) -> Result<()> {
        referral.enter(to, now, service);
        referral.version += 1;
        referral.updated_at = now;
        store::update_referral(conn, referral).await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Other services' events

    /// Whether a booked appointment fits the referral it names (`pac_platform::links`). Patients are
    /// compared as current records: through the merges this service followed, then, should they still
    /// differ, as the records service resolves them now (a merge not yet followed here).
    async fn link_check(
        &self,
        tx: &mut PgConnection,
        referral: &Referral,
        change: &AppointmentChange,
    ) -> Result<std::result::Result<(), Mismatch>> {
        let mut patients = [referral.patient_id, change.patient_id];
        if patients[0] != patients[1] {
            patients = [merges::current_patient(tx, patients[0]).await?, merges::current_patient(tx, patients[1]).await?];
        }
        if patients[0] != patients[1] {
            for patient in &mut patients {
                *patient = match self.clients.patient(*patient).await {
                    Ok(current) => current.id,
                    Err(ReferralsError::PatientNotFound(_)) => *patient,
                    Err(error) => return Err(error),
                };
            }
        }
        let owner = |patient_id, organisation, service_code| Owner { patient_id, organisation, service_code };
        Ok(links::check(
            owner(patients[0], &referral.organisation, &referral.service_code),
            owner(patients[1], &change.organisation, &change.service_code),
        ))
    }

    /// Applies an appointment event with the stream cursor; `false` when it does not concern a
    /// referral here (nothing written). A booking is linked only when it fits its referral.
    pub async fn apply_appointment(&self, change: AppointmentChange, stream: &str, cursor: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if !follow::advance_stream_cursor(&mut tx, stream, cursor).await? {
            return Ok(false);
        }
        let found = match (&change.kind, change.referral_id) {
            (AppointmentChangeKind::Booked, Some(referral_id)) => store::lock_referral(&mut tx, referral_id, None).await?,
            (AppointmentChangeKind::Booked, None) => None,
            (AppointmentChangeKind::Cancelled { .. }, _) => store::lock_by_current_appointment(&mut tx, change.appointment_id).await?,
            // An attendance outcome: of the live appointment, or a correction of an earlier one.
            _ => store::lock_by_appointment(&mut tx, change.appointment_id).await?,
        };
        let Some(mut referral) = found else { return Ok(false) };
        if matches!(change.kind, AppointmentChangeKind::Booked)
            && let Err(mismatch) = self.link_check(&mut tx, &referral, &change).await?
        {
            // Another patient's, service's or organisation's appointment names this referral: it is
            // not linked, and the appointment (someone's real booking) is left as it is.
            tracing::warn!(referral_id = %referral.id, appointment_id = %change.appointment_id, reason = mismatch.reason(),
                "a booking names a referral it does not fit; not linked");
            return Ok(false);
        }
        let service = self.service_in(&mut tx, &referral.service_code).await?;
        let appointment = change.appointment_id;
        match change.kind {
            AppointmentChangeKind::Attended if referral.attended.contains(&appointment) => return Ok(false),
            AppointmentChangeKind::DidNotAttend if referral.missed.contains(&appointment) => return Ok(false),
            AppointmentChangeKind::Attended if referral.missed.contains(&appointment) => {
                self.correct_to_attended(&mut tx, &mut referral, &service, &change).await?;
                return self.finish_followed(tx, &referral, Event::ReferralUpdated, "attendance corrected").await;
            }
            // Corrected to a no-show: the attendance is taken back, then the no-show applies.
            AppointmentChangeKind::DidNotAttend => referral.attended.retain(|a| *a != appointment),
            _ => {}
        }
        if matches!(change.kind, AppointmentChangeKind::Attended | AppointmentChangeKind::DidNotAttend)
            && referral.current_appointment_id != Some(appointment)
        {
            // The outcome of an appointment that is no longer the live one: recorded, nothing moves.
            let outcomes =
                if matches!(change.kind, AppointmentChangeKind::Attended) { &mut referral.attended } else { &mut referral.missed };
            outcomes.push(appointment);
            let status = referral.status;
            self.save(&mut tx, &mut referral, status, &service, pac_platform::now()).await?;
            return self.finish_followed(tx, &referral, Event::ReferralUpdated, "attendance recorded").await;
        }
        let first = referral.attended.is_empty() && referral.missed.is_empty();
        if matches!(change.kind, AppointmentChangeKind::Booked) && referral.status.is_terminal() {
            // Booked for a referral already closed: the appointment is not needed.
            let request_id = format!("referral-closed-{}-{}", referral.id, change.appointment_id);
            self.clients.cancel_appointment(change.appointment_id, REFERRAL_CLOSED, request_id).await?;
            tracing::info!(referral_id = %referral.id, appointment_id = %change.appointment_id, "booking for a closed referral cancelled");
            return Ok(false);
        }
        let (event, clock_event) = match &change.kind {
            AppointmentChangeKind::Booked => (AppointmentEvent::Booked, None),
            AppointmentChangeKind::Cancelled { .. } => (AppointmentEvent::Cancelled, None),
            AppointmentChangeKind::DidNotAttend => {
                let discharge = !first && service.later_dna == LaterDnaPolicy::Discharge;
                (AppointmentEvent::DidNotAttend { discharge }, Some(ClockEvent::DidNotAttend { first }))
            }
            AppointmentChangeKind::Attended => (AppointmentEvent::Attended, Some(ClockEvent::Activity)),
        };
        let Some(to) = referral::after_appointment(referral.status, event) else {
            tracing::info!(referral_id = %referral.id, appointment_id = %change.appointment_id, "appointment event does not apply to the referral");
            return Ok(false);
        };
        let system = self.clients.actor().clone();
        let out: fn(pb::ReferralEvent) -> Event = match change.kind {
            AppointmentChangeKind::Booked => {
                if referral.clock.state == State::Nullified {
                    // Rebooked after a first-appointment DNA: a new clock from the rebooking.
                    let restarted =
                        referral.clock.apply(ClockEvent::Restart(Code::Start), change.on.max(referral.clock.started), service.later_dna);
                    referral.clock = restarted.map_err(ReferralsError::ClockRefused)?;
                    store::insert_clock_event(&mut tx, referral.id, &referral.clock, change.on, "appointment", &system.subject).await?;
                }
                if let Some(previous) = referral.current_appointment_id.filter(|p| *p != change.appointment_id) {
                    // One live appointment per referral: a new booking replaces the old one.
                    let request_id = format!("referral-superseded-{}-{previous}", referral.id);
                    self.clients.cancel_appointment(previous, SUPERSEDED, request_id).await?;
                }
                if !referral.appointment_ids.contains(&change.appointment_id) {
                    referral.appointment_ids.push(change.appointment_id);
                }
                referral.current_appointment_id = Some(change.appointment_id);
                referral.rebook_reason = None;
                // Rebooking is the follow-up of a missed appointment.
                referral.dna_follow_up = false;
                Event::ReferralBooked
            }
            AppointmentChangeKind::Cancelled { by_patient, .. } => {
                referral.current_appointment_id = None;
                referral.rebook_reason =
                    Some(if by_patient { RebookReason::CancelledByPatient } else { RebookReason::CancelledByProvider });
                Event::ReferralBookingLost
            }
            AppointmentChangeKind::DidNotAttend => {
                referral.missed.push(appointment);
                referral.current_appointment_id = None;
                referral.dna_follow_up = to != Status::Completed;
                referral.rebook_reason = (to != Status::Completed).then_some(RebookReason::DidNotAttend);
                Event::ReferralBookingLost
            }
            AppointmentChangeKind::Attended => {
                referral.attended.push(appointment);
                referral.dna_follow_up = false;
                Event::ReferralUpdated
            }
        };
        if let Some(clock_event) = clock_event
            && referral.clock.state == State::Running
        {
            let on = change.on.max(referral.clock.started);
            referral.clock = referral.clock.apply(clock_event, on, service.later_dna).map_err(ReferralsError::ClockRefused)?;
            store::insert_clock_event(&mut tx, referral.id, &referral.clock, on, "appointment", &system.subject).await?;
        }
        self.save(&mut tx, &mut referral, to, &service, pac_platform::now()).await?;
        let event = if to == Status::Completed { Event::ClockStopped } else { out };
        self.finish_followed(tx, &referral, event, &appointment.to_string()).await
    }

    /// Emits the referral's event for a followed change and commits it (with the stream cursor the
    /// change's transaction moved first).
    async fn finish_followed(&self, mut tx: Tx, referral: &Referral, event: fn(pb::ReferralEvent) -> Event, reason: &str) -> Result<bool> {
        let system = self.clients.actor().clone();
        self.emit(&mut tx, referral, event(referral_event(referral, reason)), &system, None).await?;
        tx.commit().await?;
        self.outbox.committed();
        tracing::info!(referral_id = %referral.id, status = referral.status.code(), reason, "followed an appointment event");
        Ok(true)
    }

    /// A no-show corrected to attended. The attendance is recorded; if the referral is still where
    /// that no-show put it (awaiting rebooking, or discharged that day), the no-show's effect is
    /// taken back: booked again to that appointment, and the clock running as before it (code 20).
    async fn correct_to_attended(
        &self,
        tx: &mut Tx,
        referral: &mut Referral,
        service: &ServiceEntry,
        change: &AppointmentChange,
    ) -> Result<()> {
        let appointment = change.appointment_id;
        referral.missed.retain(|a| *a != appointment);
        referral.attended.push(appointment);
        let waiting_after_it = referral.status == Status::AwaitingBooking && referral.rebook_reason == Some(RebookReason::DidNotAttend);
        let discharged_by_it = referral.status == Status::Completed
            && referral.clock.code == Code::DecisionNotToTreat
            && referral.clock.ended == Some(change.on);
        let mut status = referral.status;
        if waiting_after_it || discharged_by_it {
            status = Status::Booked;
            referral.current_appointment_id = Some(appointment);
            referral.rebook_reason = None;
            referral.dna_follow_up = false;
            let nullified_by_it = referral.clock.state == State::Nullified && referral.clock.ended == Some(change.on);
            if nullified_by_it || discharged_by_it {
                referral.clock = Clock { code: Code::Continue, state: State::Running, ended: None, ..referral.clock };
                store::insert_clock_event(tx, referral.id, &referral.clock, change.on, "appointment", &self.clients.actor().subject)
                    .await?;
            }
        }
        self.save(tx, referral, status, service, pac_platform::now()).await
    }

    /// A patient merge: the merged-away record's referrals move to the survivor.
    pub async fn apply_merge(&self, merge_id: Uuid, merged: Uuid, survivor: Uuid, stream: &str, cursor: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if !follow::advance_stream_cursor(&mut tx, stream, cursor).await? {
            return Ok(());
        }
        merges::record_merge(&mut tx, merge_id, merged, survivor).await?;
        let moved = store::repoint_patient(&mut tx, merge_id, merged, survivor).await?;
        self.announce_moves(&mut tx, &moved, "patient records merged").await?;
        tx.commit().await?;
        self.outbox.committed();
        tracing::info!(merge_id = %merge_id, referrals_moved = moved.len(), "followed a patient merge");
        Ok(())
    }

    /// A merge reversed: what it moved goes back. Idempotent.
    pub async fn apply_unmerge(&self, merge_id: Uuid, stream: &str, cursor: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if !follow::advance_stream_cursor(&mut tx, stream, cursor).await? {
            return Ok(());
        }
        merges::forget_merge(&mut tx, merge_id).await?;
        let moved = store::unrepoint_patient(&mut tx, merge_id).await?;
        self.announce_moves(&mut tx, &moved, "patient merge reversed").await?;
        tx.commit().await?;
        self.outbox.committed();
        tracing::info!(merge_id = %merge_id, referrals_moved = moved.len(), "followed a merge reversal");
        Ok(())
    }

    async fn announce_moves(&self, tx: &mut Tx, moved: &[Uuid], reason: &str) -> Result<()> {
        let system = self.clients.actor().clone();
        for id in moved {
            let referral = store::find_referral(&mut **tx, *id, None).await?.ok_or_else(|| not_found(*id))?;
            self.emit(tx, &referral, Event::ReferralUpdated(referral_event(&referral, reason)), &system, None).await?;
        }
        Ok(())
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
