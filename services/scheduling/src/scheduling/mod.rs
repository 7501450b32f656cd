//! The scheduling service's operations, by area: the directory (`directory`), appointments
//! (`booking`), the waitlist and its offers (`offers`), and merges followed from the records
//! service (`followed_merges`). Each write is one transaction, taken through the kit's write steps
//! (`pac_platform::write`): it applies the domain's rules, lets the schema's constraints settle
//! races (capacity, overlap, one open offer), appends its events to the outbox, and records its
//! response under the request id.
//!
//! Organisation scope: a write carries its caller's scope (`Write::scope`), which goes into the SQL
//! that reads or locks the appointment, entry or offer it changes (another organisation's is
//! `NotFound`). A new appointment takes its slot's (clinic's) organisation; taking a place in a slot
//! outside the scope is refused (`OtherOrganisation`) inside the same transaction, so nothing is
//! written. Waitlist offers stay inside an organisation: a freed slot is offered only to entries of
//! its own organisation.

use chrono::{DateTime, Duration, Utc};
use pac_platform::Actor;
use pac_platform::caller::within;
use pac_platform::links::{self, Owner};
use pac_platform::outbox::Outbox;
pub use pac_platform::write::Write;
use pac_platform::write::{self, Claim, Writes};
use pac_platform::{follow, merges};
use pac_proto::scheduling as pb;
use pac_proto::scheduling::watch_events_response::Event;
use prost::Message;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::convert;
use crate::domain::appointment::{self, Moment, Status};
use crate::domain::cancellation::{self, CancelledBy};
use crate::domain::clinic_time;
use crate::domain::session::SessionTemplate;
use crate::domain::waitlist;
use crate::error::SchedulingError;
use crate::model::*;
use crate::patients::{Patients, service_actor};
use crate::referrals::{ReferralFacts, Referrals};
use crate::store::{self, Change, Scope};

mod booking;
mod directory;
mod followed_merges;
mod offers;

type Result<T> = std::result::Result<T, SchedulingError>;

/// Local policy (configuration).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Slots exist this many days ahead.
    pub horizon_days: u32,
    /// A cancellation inside this period before the start is late.
    pub late_notice: Duration,
    /// How long a waitlist offer is held for the patient.
    pub offer_hold: Duration,
    /// A freed slot is offered from the waitlist only if it starts at least this far ahead.
    pub offer_min_notice: Duration,
    /// Live holds (pending, not lapsed) one caller (subject) may have at once.
    pub max_holds_per_caller: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            horizon_days: 90,
            late_notice: Duration::hours(24),
            offer_hold: Duration::hours(24),
            offer_min_notice: Duration::hours(2),
            max_holds_per_caller: 20,
        }
    }
}

#[derive(Clone)]
pub struct Scheduling {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub patients: Patients,
    pub referrals: Referrals,
    pub policy: Policy,
    writes: Writes,
}

/// The referral a new appointment names.
enum Naming<'a> {
    Nothing,
    /// Named by the caller: checked against the slot when the place is taken.
    Checked(&'a ReferralFacts),
    /// A waitlist entry's, checked when the entry was added.
    Entry(Option<Uuid>),
}

impl Naming<'_> {
    fn id(&self) -> Option<Uuid> {
        match self {
            Naming::Nothing => None,
            Naming::Checked(facts) => Some(facts.id),
            Naming::Entry(id) => *id,
        }
    }
}

/// What a place taken in a slot becomes.
enum Placement<'a> {
    Booking,
    /// A hold that lapses after `ttl` (at the latest at the slot's start): taken by a caller's
    /// HoldSlot (`held_by`, their subject) or by the service itself (a waitlist offer).
    Hold {
        ttl: Duration,
        held_by: Option<&'a str>,
    },
}

pub enum BookTarget {
    Slot(Uuid),
    Hold(Uuid),
}

pub struct Book {
    pub target: BookTarget,
    pub patient_id: Option<Uuid>,
    pub referral_id: Option<Uuid>,
    pub write: Write,
}

pub struct Reschedule {
    pub appointment_id: Uuid,
    pub new_slot_id: Uuid,
    pub etag: String,
    pub reason: String,
    pub write: Write,
}

pub struct Cancel {
    pub appointment_id: Uuid,
    pub reason_code: String,
    pub by: CancelledBy,
    pub etag: Option<String>,
    pub write: Write,
}

pub struct StatusChange {
    pub appointment_id: Uuid,
    pub to: Status,
    pub etag: Option<String>,
    pub correction_reason: Option<String>,
    /// Unkeyed: the etag guards a status change.
    pub write: Write,
}

/// Events are stored as a `WatchEventsResponse` without its envelope; the envelope is added on read.
fn event_payload(event: Event) -> Vec<u8> {
    pb::WatchEventsResponse { envelope: None, event: Some(event) }.encode_to_vec()
}

fn event_type(event: &Event) -> &'static str {
    match event {
        Event::AppointmentHeld(_) => "AppointmentHeld",
        Event::AppointmentBooked(_) => "AppointmentBooked",
        Event::AppointmentRescheduled(_) => "AppointmentRescheduled",
        Event::AppointmentCancelled(_) => "AppointmentCancelled",
        Event::AppointmentStatusChanged(_) => "AppointmentStatusChanged",
        Event::OfferMade(_) => "OfferMade",
        Event::AppointmentPatientChanged(_) => "AppointmentPatientChanged",
    }
}

/// The organisation that owns what an event is about, and its patient: the appointment's, or the
/// waitlist entry's.
fn event_owner(event: &Event) -> (String, Option<Uuid>) {
    let (organisation, patient_id) = match event {
        Event::AppointmentHeld(e)
        | Event::AppointmentBooked(e)
        | Event::AppointmentRescheduled(e)
        | Event::AppointmentCancelled(e)
        | Event::AppointmentStatusChanged(e)
        | Event::AppointmentPatientChanged(e) => {
            e.appointment.as_ref().map(|a| (a.organisation.clone(), a.patient_id.as_str())).unwrap_or_default()
        }
        Event::OfferMade(made) => made.entry.as_ref().map(|e| (e.organisation.clone(), e.patient_id.as_str())).unwrap_or_default(),
    };
    (organisation, Uuid::parse_str(patient_id).ok())
}

fn appointment_event(a: &Appointment, previous_slot: Option<Uuid>, reason: &str) -> pb::AppointmentEvent {
    pb::AppointmentEvent {
        appointment: Some(convert::appointment(a)),
        previous_slot_id: previous_slot.map(|s| s.to_string()).unwrap_or_default(),
        reason: reason.to_string(),
    }
}

fn check_etag(appointment: &Appointment, etag: Option<&str>) -> Result<()> {
    match etag {
        Some(etag) if etag != appointment.etag() => Err(SchedulingError::VersionMismatch { current_etag: appointment.etag() }),
        _ => Ok(()),
    }
}

fn not_found(resource: &'static str, id: Uuid) -> SchedulingError {
    SchedulingError::NotFound { resource, id }
}

/// Refuses a slot of a clinic outside the caller's scope.
fn check_slot_in_scope(slot: &Slot, scope: Scope<'_>) -> Result<()> {
    if within(scope, &slot.organisation) {
        Ok(())
    } else {
        Err(SchedulingError::OtherOrganisation { resource: "pac.scheduling.v1.Clinic", id: slot.clinic_id })
    }
}

/// Whether the referral `facts` describe may be named by an appointment or waitlist entry of
/// `patient` (the current record), at `organisation`, for `service_code`: see `pac_platform::links`.
/// The referral's patient is followed through the merges this service knows of, as the appointment's
/// is.
async fn check_referral(conn: &mut PgConnection, facts: &ReferralFacts, holder: Owner<'_>) -> Result<()> {
    let patient_id =
        if facts.patient_id == holder.patient_id { facts.patient_id } else { merges::current_patient(conn, facts.patient_id).await? };
    let referral = Owner { patient_id, organisation: &facts.organisation, service_code: &facts.service_code };
    links::check(referral, holder).map_err(|mismatch| SchedulingError::ReferralMismatch { referral_id: facts.id, mismatch })?;
    if !facts.bookable {
        return Err(SchedulingError::ReferralNotBookable { referral_id: facts.id, status: facts.status.clone() });
    }
    Ok(())
}

fn owner(appointment: &Appointment) -> Owner<'_> {
    Owner { patient_id: appointment.patient_id, organisation: &appointment.organisation, service_code: &appointment.service_code }
}

const APPOINTMENT: &str = "pac.scheduling.v1.Appointment";

impl Scheduling {
    pub fn new(pool: PgPool, outbox: Outbox, patients: Patients, referrals: Referrals, policy: Policy) -> Self {
        let writes = Writes::new(pool.clone(), outbox.clone(), crate::SCHEMA);
        Self { pool, outbox, patients, referrals, policy, writes }
    }

    /// The referral a write names, asked of the referrals service and held to the caller's scope.
    /// Its patient is resolved with the records service when it is not `patient` (the write's
    /// current record), so a merge the referrals service has not followed yet is no mismatch.
    async fn named_referral(&self, id: Option<Uuid>, patient: Option<Uuid>, scope: Scope<'_>) -> Result<Option<ReferralFacts>> {
        let Some(id) = id else { return Ok(None) };
        let mut facts = self.referrals.facts(id, scope).await?;
        if patient != Some(facts.patient_id) {
            facts.patient_id = match self.patients.resolve(facts.patient_id, None).await {
                Err(SchedulingError::PatientNotFound(_)) => facts.patient_id,
                resolved => resolved?,
            };
        }
        Ok(Some(facts))
    }

    /// Appends `event` about `aggregate_id` in the write's transaction.
    async fn emit(&self, conn: &mut PgConnection, aggregate_id: Uuid, event: Event, write: &Write) -> Result<()> {
        let event_type = event_type(&event);
        let (organisation, patient) = event_owner(&event);
        let event =
            write::Event { event_type, aggregate_id, organisation, patient_ids: Vec::from_iter(patient), payload: event_payload(event) };
        Ok(self.writes.append(conn, write, event).await?)
    }
}

pub fn session_of(t: &Template) -> SessionTemplate {
    SessionTemplate {
        weekday: convert::weekday(t.weekday),
        start: t.start_time,
        end: t.end_time,
        slot_minutes: t.slot_minutes as u32,
        capacity: t.capacity as u32,
        valid_from: t.valid_from,
        valid_until: t.valid_until,
    }
}

/// The UTC window of a clinic-local day.
pub fn local_day_window(zone: chrono_tz::Tz, day: chrono::NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let midnight = chrono::NaiveTime::MIN;
    (clinic_time::instant(zone, day, midnight).0, clinic_time::instant(zone, day + Duration::days(1), midnight).0)
}
