//! The scheduling service's operations. Each write is one transaction that applies the domain's
//! rules, lets the schema's constraints settle races (capacity, overlap, one open offer), appends its
//! events to the outbox, and records its response under the request id.
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

    // -----------------------------------------------------------------------------------------
    // Directory

    pub async fn create_location(&self, location: Location, write: Write) -> Result<pb::CreateLocationResponse> {
        let mut tx = match self.writes.claim("CreateLocation", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        store::insert_location(&mut tx, &location).await?;
        let response = pb::CreateLocationResponse { location: Some(convert::location(&location)) };
        tx.commit(&response).await?;
        Ok(response)
    }

    pub async fn create_clinic(&self, clinic: Clinic, write: Write) -> Result<pb::CreateClinicResponse> {
        let mut tx = match self.writes.claim("CreateClinic", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        store::insert_clinic(&mut tx, &clinic).await?;
        let response = pb::CreateClinicResponse { clinic: Some(convert::clinic(&clinic)) };
        tx.commit(&response).await?;
        Ok(response)
    }

    pub async fn clinic(&self, id: Uuid) -> Result<Clinic> {
        store::find_clinic(&self.pool, id).await?.ok_or(not_found("pac.scheduling.v1.Clinic", id))
    }

    pub async fn get_clinic(&self, id: Uuid) -> Result<pb::GetClinicResponse> {
        let clinic = self.clinic(id).await?;
        let location = store::find_location(&self.pool, clinic.location_id).await?;
        let templates = store::templates_of(&self.pool, id).await?;
        Ok(pb::GetClinicResponse {
            clinic: Some(convert::clinic(&clinic)),
            location: location.as_ref().map(convert::location),
            session_templates: templates.iter().map(convert::template).collect(),
        })
    }

    /// Creates a session and its slots for the horizon, then offers them to anyone waiting.
    pub async fn create_template(&self, template: Template, write: Write) -> Result<pb::CreateSessionTemplateResponse> {
        let mut tx = match self.writes.claim("CreateSessionTemplate", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let clinic = store::find_clinic(&mut *tx, template.clinic_id)
            .await?
            .ok_or_else(|| SchedulingError::invalid("session_template.clinic_id", "CLINIC_NOT_FOUND", "no clinic has this id"))?;
        let (template, created) = self.generate(&mut tx, &clinic, template).await?;
        self.offer_new_slots(&mut tx, &clinic, template.id).await?;
        let response =
            pb::CreateSessionTemplateResponse { session_template: Some(convert::template(&template)), slots_created: created as i32 };
        tx.commit(&response).await?;
        tracing::info!(template_id = %template.id, clinic_id = %clinic.id, slots_created = created, "session created");
        Ok(response)
    }

    /// Changes a session: its future free slots are withdrawn and the new pattern generated; slots
    /// holding live appointments stay as they are.
    pub async fn update_template(&self, changed: Template, write: Write) -> Result<pb::UpdateSessionTemplateResponse> {
        let mut tx = match self.writes.claim("UpdateSessionTemplate", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let current = store::lock_template(&mut tx, changed.id).await?.ok_or(not_found("pac.scheduling.v1.SessionTemplate", changed.id))?;
        if current.clinic_id != changed.clinic_id {
            return Err(SchedulingError::invalid(
                "session_template.clinic_id",
                "CLINIC_IMMUTABLE",
                "a session cannot move to another clinic",
            ));
        }
        let clinic =
            store::find_clinic(&mut *tx, current.clinic_id).await?.ok_or(not_found("pac.scheduling.v1.Clinic", current.clinic_id))?;
        let now = pac_platform::now();
        let withdrawn = store::withdraw_free_slots(&mut tx, current.id, now).await?;
        let (template, created) = self.generate(&mut tx, &clinic, changed).await?;
        let kept = store::count_occupied_slots(&mut tx, template.id, now).await?;
        self.offer_new_slots(&mut tx, &clinic, template.id).await?;
        let response = pb::UpdateSessionTemplateResponse {
            session_template: Some(convert::template(&template)),
            slots_withdrawn: withdrawn as i32,
            slots_created: created as i32,
            slots_kept: kept as i32,
        };
        tx.commit(&response).await?;
        tracing::info!(template_id = %template.id, withdrawn, created, kept, "session changed");
        Ok(response)
    }

    /// Saves a template and generates its future slots from today (clinic-local) to the horizon.
    async fn generate(&self, conn: &mut PgConnection, clinic: &Clinic, mut template: Template) -> Result<(Template, u64)> {
        let today = clinic_time::local(clinic.zone(), Utc::now()).date();
        let through = today + Duration::days(i64::from(self.policy.horizon_days));
        template.generated_until = Some(through);
        store::save_template(conn, &template).await?;
        let created = self.generate_between(conn, clinic, &template, today, through).await?;
        Ok((template, created))
    }

    async fn generate_between(
        &self,
        conn: &mut PgConnection,
        clinic: &Clinic,
        template: &Template,
        from: chrono::NaiveDate,
        through: chrono::NaiveDate,
    ) -> Result<u64> {
        let session = session_of(template);
        let now = Utc::now();
        let slots: Vec<_> = session.slots(clinic.zone(), from, through).into_iter().filter(|s| s.start > now).collect();
        let mut created = 0;
        for chunk in slots.chunks(2000) {
            created += store::insert_slots(conn, clinic, template, chunk).await?;
        }
        Ok(created)
    }

    /// Keeps every session's slots generated to the horizon; returns the slots created.
    pub async fn extend_horizon(&self) -> Result<u64> {
        let through = Utc::now().date_naive() + Duration::days(i64::from(self.policy.horizon_days));
        let mut created = 0;
        for stale in store::templates_to_extend(&self.pool, through).await? {
            let mut tx = self.writes.begin().await?;
            let Some(template) = store::lock_template(&mut tx, stale.id).await? else { continue };
            let Some(clinic) = store::find_clinic(&mut *tx, template.clinic_id).await? else { continue };
            let from = template.generated_until.map_or(template.valid_from, |d| d + Duration::days(1));
            created += self.generate_between(&mut tx, &clinic, &template, from, through).await?;
            store::save_template(&mut tx, &Template { generated_until: Some(through), ..template.clone() }).await?;
            self.offer_new_slots(&mut tx, &clinic, template.id).await?;
            tx.commit_unanswered().await?;
        }
        Ok(created)
    }

    // -----------------------------------------------------------------------------------------
    // Holds and bookings

    /// Holds a slot for the caller, who may have at most `policy.max_holds_per_caller` live holds:
    /// counted and written in one transaction under a lock on the caller (see
    /// `store::lock_and_count_live_holds`), so concurrent holds cannot pass the cap.
    pub async fn hold(&self, slot_id: Uuid, patient_id: Uuid, ttl: Duration, write: Write) -> Result<pb::HoldSlotResponse> {
        let patient_id = self.patients.resolve(patient_id, write.scope()).await?;
        let limit = self.policy.max_holds_per_caller;
        let attempt = || async {
            let mut tx = match self.writes.claim("HoldSlot", &write).await? {
                Claim::Replay(r) => return Ok(r),
                Claim::Fresh(tx) => tx,
            };
            let holder = &write.actor.subject;
            if store::lock_and_count_live_holds(&mut tx, holder).await? >= i64::from(limit) {
                return Err(SchedulingError::TooManyHolds { limit });
            }
            let placement = Placement::Hold { ttl, held_by: Some(holder) };
            let (appointment, _) = self.place(&mut tx, slot_id, patient_id, Naming::Nothing, placement, write.scope()).await?;
            self.emit(&mut tx, appointment.id, Event::AppointmentHeld(appointment_event(&appointment, None, "")), &write).await?;
            let response = pb::HoldSlotResponse { appointment: Some(convert::appointment(&appointment)) };
            tx.commit(&response).await?;
            tracing::info!(appointment_id = %appointment.id, slot_id = %slot_id, "slot held");
            Ok(response)
        };
        match attempt().await {
            Err(SchedulingError::SlotUnavailable { .. }) if self.expire_lapsed_holds(Some(slot_id)).await? > 0 => attempt().await,
            result => result,
        }
    }

    pub async fn book(&self, book: Book) -> Result<pb::BookAppointmentResponse> {
        let patient_id = match book.patient_id {
            Some(id) => Some(self.patients.resolve(id, book.write.scope()).await?),
            None => None,
        };
        let referral = self.named_referral(book.referral_id, patient_id, book.write.scope()).await?;
        let referral = referral.as_ref();
        match book.target {
            BookTarget::Slot(slot_id) => {
                let patient_id = patient_id.ok_or_else(|| SchedulingError::invalid("patient_id", "ID_REQUIRED", "is required"))?;
                match self.book_slot(slot_id, patient_id, referral, &book).await {
                    Err(SchedulingError::SlotUnavailable { .. }) if self.expire_lapsed_holds(Some(slot_id)).await? > 0 => {
                        self.book_slot(slot_id, patient_id, referral, &book).await
                    }
                    result => result,
                }
            }
            BookTarget::Hold(appointment_id) => self.confirm_hold(appointment_id, patient_id, referral, &book).await,
        }
    }

    async fn book_slot(
        &self,
        slot_id: Uuid,
        patient_id: Uuid,
        referral: Option<&ReferralFacts>,
        book: &Book,
    ) -> Result<pb::BookAppointmentResponse> {
        let mut tx = match self.writes.claim("BookAppointment", &book.write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let naming = referral.map_or(Naming::Nothing, Naming::Checked);
        let (appointment, slot) = self.place(&mut tx, slot_id, patient_id, naming, Placement::Booking, book.write.scope()).await?;
        store::close_entries_for(&mut tx, appointment.patient_id, &slot, "booked").await?;
        self.emit(&mut tx, appointment.id, Event::AppointmentBooked(appointment_event(&appointment, None, "")), &book.write).await?;
        let response = pb::BookAppointmentResponse { appointment: Some(convert::appointment(&appointment)) };
        tx.commit(&response).await?;
        tracing::info!(appointment_id = %appointment.id, slot_id = %slot_id, "appointment booked");
        Ok(response)
    }

    /// Takes a place in a future slot of a clinic in `scope` and writes the appointment (booked, or
    /// pending for a hold), of the clinic's organisation, for the patient's current record (see
    /// `pac_platform::merges`), naming a referral that fits it. On an error nothing stays written:
    /// the caller's transaction is not committed.
    async fn place(
        &self,
        conn: &mut PgConnection,
        slot_id: Uuid,
        patient_id: Uuid,
        referral: Naming<'_>,
        placement: Placement<'_>,
        scope: Scope<'_>,
    ) -> Result<(Appointment, Slot)> {
        let patient_id = merges::current_patient(conn, patient_id).await?;
        let slot = store::take_place(conn, slot_id).await?;
        check_slot_in_scope(&slot, scope)?;
        if let Naming::Checked(facts) = referral {
            let holder = Owner { patient_id, organisation: &slot.organisation, service_code: &slot.service_code };
            check_referral(conn, facts, holder).await?;
        }
        let now = pac_platform::now();
        if slot.start_time <= now {
            return Err(SchedulingError::SlotUnavailable { slot_id, why: "has already started" });
        }
        let (status, hold_expires_at, held_by) = match placement {
            Placement::Hold { ttl, held_by } => (Status::Pending, Some((now + ttl).min(slot.start_time)), held_by),
            Placement::Booking => (Status::Booked, None, None),
        };
        let appointment = Appointment {
            held_by: held_by.map(str::to_string),
            ..Appointment::new(&slot, patient_id, referral.id(), status, hold_expires_at)
        };
        store::insert_appointment(conn, &appointment).await?;
        Ok((appointment, slot))
    }

    async fn confirm_hold(
        &self,
        id: Uuid,
        patient_id: Option<Uuid>,
        referral: Option<&ReferralFacts>,
        book: &Book,
    ) -> Result<pb::BookAppointmentResponse> {
        let mut tx = match self.writes.claim("BookAppointment", &book.write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let mut appointment = store::lock_appointment(&mut tx, id, book.write.scope()).await?.ok_or(not_found(APPOINTMENT, id))?;
        if patient_id.is_some_and(|p| p != appointment.patient_id) {
            return Err(SchedulingError::invalid("patient_id", "PATIENT_MISMATCH", "the hold is for another patient"));
        }
        appointment::check_confirm(appointment.status, Moment { now: Utc::now(), slot_start: appointment.start_time })
            .map_err(SchedulingError::InvalidTransition)?;
        if appointment.hold_expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(SchedulingError::HoldExpired(id));
        }
        if let Some(facts) = referral {
            check_referral(&mut tx, facts, owner(&appointment)).await?;
            appointment.referral_id = Some(facts.id);
        }
        let now = pac_platform::now();
        appointment.status = Status::Booked;
        appointment.hold_expires_at = None;
        appointment.version += 1;
        appointment.updated_at = now;
        store::update_appointment(&mut tx, &appointment).await?;
        if let Some(offer) = store::close_offer_of(&mut tx, id, OfferOutcome::Accepted).await? {
            store::close_entry(&mut tx, offer.entry_id, "booked").await?;
        }
        if let Some(slot) = store::find_slot(&mut *tx, appointment.slot_id).await? {
            store::close_entries_for(&mut tx, appointment.patient_id, &slot, "booked").await?;
        }
        self.record_change(&mut tx, &appointment, Status::Pending, None, None, &book.write.actor).await?;
        self.emit(&mut tx, id, Event::AppointmentBooked(appointment_event(&appointment, None, "")), &book.write).await?;
        let response = pb::BookAppointmentResponse { appointment: Some(convert::appointment(&appointment)) };
        tx.commit(&response).await?;
        tracing::info!(appointment_id = %id, "hold confirmed");
        Ok(response)
    }

    /// Book the new slot, then release the old, in one transaction: if the new slot is taken nothing
    /// changes.
    pub async fn reschedule(&self, r: Reschedule) -> Result<pb::RescheduleAppointmentResponse> {
        // The referral the appointment names must fit the new slot too: asked first, as a booking's.
        let named = match store::find_appointment(&self.pool, r.appointment_id, r.write.scope()).await? {
            Some(current) => self.named_referral(current.referral_id, Some(current.patient_id), r.write.scope()).await?,
            None => None,
        };
        let mut tx = match self.writes.claim("RescheduleAppointment", &r.write).await? {
            Claim::Replay(response) => return Ok(response),
            Claim::Fresh(tx) => tx,
        };
        let mut appointment =
            store::lock_appointment(&mut tx, r.appointment_id, r.write.scope()).await?.ok_or(not_found(APPOINTMENT, r.appointment_id))?;
        check_etag(&appointment, Some(&r.etag))?;
        if appointment.referral_id != named.as_ref().map(|f| f.id) {
            return Err(SchedulingError::Conflict);
        }
        appointment::check_reschedule(appointment.status, Moment { now: Utc::now(), slot_start: appointment.start_time })
            .map_err(SchedulingError::InvalidTransition)?;
        if appointment.slot_id == r.new_slot_id {
            return Err(SchedulingError::invalid("new_slot_id", "SAME_SLOT", "is the appointment's current slot"));
        }
        let new_slot = store::take_place(&mut tx, r.new_slot_id).await?;
        check_slot_in_scope(&new_slot, r.write.scope())?;
        if let Some(facts) = &named {
            let holder =
                Owner { patient_id: appointment.patient_id, organisation: &new_slot.organisation, service_code: &new_slot.service_code };
            check_referral(&mut tx, facts, holder).await?;
        }
        if new_slot.start_time <= Utc::now() {
            return Err(SchedulingError::SlotUnavailable { slot_id: new_slot.id, why: "has already started" });
        }
        let previous_slot = appointment.slot_id;
        store::release_place(&mut tx, previous_slot).await?;
        appointment.slot_id = new_slot.id;
        appointment.clinic_id = new_slot.clinic_id;
        appointment.organisation = new_slot.organisation.clone();
        appointment.service_code = new_slot.service_code.clone();
        appointment.start_time = new_slot.start_time;
        appointment.end_time = new_slot.end_time;
        appointment.version += 1;
        appointment.updated_at = pac_platform::now();
        store::update_appointment(&mut tx, &appointment).await?;
        let reason = (!r.reason.is_empty()).then_some(r.reason.as_str());
        self.record_change(&mut tx, &appointment, Status::Booked, Some(previous_slot), reason, &r.write.actor).await?;
        let event = Event::AppointmentRescheduled(appointment_event(&appointment, Some(previous_slot), &r.reason));
        self.emit(&mut tx, appointment.id, event, &r.write).await?;
        self.offer_slot(&mut tx, previous_slot).await?;
        let response = pb::RescheduleAppointmentResponse { appointment: Some(convert::appointment(&appointment)) };
        tx.commit(&response).await?;
        tracing::info!(appointment_id = %appointment.id, from_slot = %previous_slot, to_slot = %new_slot.id, "appointment rescheduled");
        Ok(response)
    }

    pub async fn cancel(&self, c: Cancel) -> Result<pb::CancelAppointmentResponse> {
        let mut tx = match self.writes.claim("CancelAppointment", &c.write).await? {
            Claim::Replay(response) => return Ok(response),
            Claim::Fresh(tx) => tx,
        };
        let appointment =
            store::lock_appointment(&mut tx, c.appointment_id, c.write.scope()).await?.ok_or(not_found(APPOINTMENT, c.appointment_id))?;
        check_etag(&appointment, c.etag.as_deref())?;
        let outcome = if c.by == CancelledBy::Patient { OfferOutcome::Declined } else { OfferOutcome::Withdrawn };
        let cancelled = self.cancel_in(&mut tx, appointment, &c.reason_code, c.by, outcome, &c.write).await?;
        let response = pb::CancelAppointmentResponse { appointment: Some(convert::appointment(&cancelled)) };
        tx.commit(&response).await?;
        let late = cancelled.cancellation.as_ref().is_some_and(|x| x.late);
        tracing::info!(appointment_id = %cancelled.id, reason_code = %c.reason_code, late, "appointment cancelled");
        Ok(response)
    }

    /// Cancels inside a transaction: frees the place, closes an offer held by it, records and
    /// announces the change, and offers the freed slot to the waitlist.
    async fn cancel_in(
        &self,
        tx: &mut PgConnection,
        mut appointment: Appointment,
        reason_code: &str,
        by: CancelledBy,
        offer_outcome: OfferOutcome,
        write: &Write,
    ) -> Result<Appointment> {
        let now = pac_platform::now();
        let from = appointment.status;
        appointment::check(from, Status::Cancelled, Moment { now, slot_start: appointment.start_time }, None)
            .map_err(SchedulingError::InvalidTransition)?;
        appointment.status = Status::Cancelled;
        appointment.hold_expires_at = None;
        appointment.cancellation = Some(Cancellation {
            reason_code: reason_code.to_string(),
            by,
            late: cancellation::is_late(now, appointment.start_time, self.policy.late_notice),
            at: now,
        });
        appointment.version += 1;
        appointment.updated_at = now;
        store::update_appointment(tx, &appointment).await?;
        if from.is_live() {
            store::release_place(tx, appointment.slot_id).await?;
        }
        store::close_offer_of(tx, appointment.id, offer_outcome).await?;
        self.record_change(tx, &appointment, from, None, Some(reason_code), &write.actor).await?;
        self.emit(tx, appointment.id, Event::AppointmentCancelled(appointment_event(&appointment, None, reason_code)), write).await?;
        if from.is_live() {
            self.offer_slot(tx, appointment.slot_id).await?;
        }
        Ok(appointment)
    }

    pub async fn change_status(&self, s: StatusChange) -> Result<Appointment> {
        let mut tx = self.writes.begin().await?;
        let mut appointment =
            store::lock_appointment(&mut tx, s.appointment_id, s.write.scope()).await?.ok_or(not_found(APPOINTMENT, s.appointment_id))?;
        check_etag(&appointment, s.etag.as_deref())?;
        let from = appointment.status;
        let now = pac_platform::now();
        appointment::check(from, s.to, Moment { now, slot_start: appointment.start_time }, s.correction_reason.as_deref())
            .map_err(SchedulingError::InvalidTransition)?;
        appointment.status = s.to;
        appointment.version += 1;
        appointment.updated_at = now;
        store::update_appointment(&mut tx, &appointment).await?;
        if from.is_live() && !s.to.is_live() {
            store::release_place(&mut tx, appointment.slot_id).await?;
        }
        let reason = s.correction_reason.as_deref();
        self.record_change(&mut tx, &appointment, from, None, reason, &s.write.actor).await?;
        let event = Event::AppointmentStatusChanged(appointment_event(&appointment, None, reason.unwrap_or_default()));
        self.emit(&mut tx, appointment.id, event, &s.write).await?;
        tx.commit_unanswered().await?;
        tracing::info!(appointment_id = %appointment.id, from = from.code(), to = s.to.code(), "appointment status changed");
        Ok(appointment)
    }

    async fn record_change(
        &self,
        conn: &mut PgConnection,
        a: &Appointment,
        from: Status,
        from_slot: Option<Uuid>,
        reason: Option<&str>,
        actor: &Actor,
    ) -> Result<()> {
        let change = Change {
            appointment_id: a.id,
            from,
            to: a.status,
            from_slot,
            to_slot: from_slot.map(|_| a.slot_id),
            reason,
            actor: &actor.subject,
            at: a.updated_at,
        };
        store::insert_change(conn, change).await
    }

    pub async fn appointment(&self, id: Uuid, scope: Scope<'_>) -> Result<Appointment> {
        store::find_appointment(&self.pool, id, scope).await?.ok_or(not_found(APPOINTMENT, id))
    }

    /// Cancels lapsed holds (of one slot, or any), freeing their places; returns how many.
    pub async fn expire_lapsed_holds(&self, slot_id: Option<Uuid>) -> Result<usize> {
        const BATCH: i64 = 100;
        let mut total = 0;
        loop {
            let mut tx = self.writes.begin().await?;
            let lapsed = store::lock_lapsed_holds(&mut tx, slot_id, BATCH).await?;
            let count = lapsed.len();
            for hold in lapsed {
                let id = hold.id;
                self.cancel_in(
                    &mut tx,
                    hold,
                    "HOLD_EXPIRED",
                    CancelledBy::System,
                    OfferOutcome::Expired,
                    &Write::by_service(service_actor()),
                )
                .await?;
                tracing::info!(appointment_id = %id, "hold expired");
            }
            tx.commit_unanswered().await?;
            total += count;
            if (count as i64) < BATCH {
                return Ok(total);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Waitlist

    /// Adds an entry. For a clinic it takes the clinic's organisation (which must be in the caller's
    /// scope, and agree with `requested_organisation` when one was given); for a service code it
    /// keeps the organisation the handler chose.
    pub async fn add_to_waitlist(&self, mut entry: Entry, requested_organisation: &str, write: Write) -> Result<pb::AddToWaitlistResponse> {
        let mut service_code = match &entry.target {
            Target::Clinic(_) => String::new(),
            Target::Service(code) => code.clone(),
        };
        if let Target::Clinic(clinic_id) = entry.target {
            let clinic = store::find_clinic(&self.pool, clinic_id)
                .await?
                .ok_or_else(|| SchedulingError::invalid("entry.clinic_id", "CLINIC_NOT_FOUND", "no clinic has this id"))?;
            if !requested_organisation.is_empty() && requested_organisation != clinic.organisation {
                return Err(SchedulingError::invalid(
                    "entry.organisation",
                    "ORGANISATION_MISMATCH",
                    "an entry for a clinic has the clinic's organisation; leave it empty",
                ));
            }
            if !within(write.scope(), &clinic.organisation) {
                return Err(SchedulingError::OtherOrganisation { resource: "pac.scheduling.v1.Clinic", id: clinic_id });
            }
            entry.organisation = clinic.organisation;
            service_code = clinic.service_code;
        }
        entry.patient_id = self.patients.resolve(entry.patient_id, write.scope()).await?;
        let referral = self.named_referral(entry.referral_id, Some(entry.patient_id), write.scope()).await?;
        let mut tx = match self.writes.claim("AddToWaitlist", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        entry.patient_id = merges::current_patient(&mut tx, entry.patient_id).await?;
        if let Some(facts) = &referral {
            let holder = Owner { patient_id: entry.patient_id, organisation: &entry.organisation, service_code: &service_code };
            check_referral(&mut tx, facts, holder).await?;
        }
        if let Some(existing) = store::insert_entry(&mut tx, &entry).await? {
            return Err(SchedulingError::WaitlistEntryExists { existing });
        }
        let response = pb::AddToWaitlistResponse { entry: Some(convert::entry(&entry, &[])) };
        tx.commit(&response).await?;
        tracing::info!(entry_id = %entry.id, "added to waitlist");
        Ok(response)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn list_waitlist(
        &self,
        clinic_id: Option<Uuid>,
        service_code: Option<String>,
        include_closed: bool,
        limit: i64,
        offset: i64,
        scope: Scope<'_>,
    ) -> Result<Vec<pb::WaitlistEntry>> {
        let clinic = match clinic_id {
            Some(id) => Some(self.clinic(id).await?),
            None => None,
        };
        let code = clinic.as_ref().map(|c| c.service_code.clone()).or(service_code).unwrap_or_default();
        let entries = store::list_entries(&self.pool, clinic.as_ref(), &code, include_closed, limit, offset, scope).await?;
        let ids: Vec<Uuid> = entries.iter().map(|e| e.id).collect();
        let offers = store::offers_of(&self.pool, &ids).await?;
        Ok(entries.iter().map(|e| convert::entry(e, &offers)).collect())
    }

    pub async fn respond_to_offer(&self, offer_id: Uuid, accept: bool, write: Write) -> Result<pb::RespondToOfferResponse> {
        let mut tx = match self.writes.claim("RespondToOffer", &write).await? {
            Claim::Replay(r) => return Ok(r),
            Claim::Fresh(tx) => tx,
        };
        let offer = store::lock_offer(&mut tx, offer_id, write.scope()).await?.ok_or(not_found("pac.scheduling.v1.Offer", offer_id))?;
        // The offer's hold is of the entry's organisation: in scope with it.
        let mut appointment =
            store::lock_appointment(&mut tx, offer.appointment_id, None).await?.ok_or(not_found(APPOINTMENT, offer.appointment_id))?;
        if offer.outcome != OfferOutcome::Open {
            return Err(SchedulingError::OfferClosed { offer_id, outcome: offer.outcome.code().into() });
        }
        if appointment.hold_expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(SchedulingError::OfferClosed { offer_id, outcome: "expired".into() });
        }
        let booked = if accept {
            appointment::check_confirm(appointment.status, Moment { now: Utc::now(), slot_start: appointment.start_time })
                .map_err(SchedulingError::InvalidTransition)?;
            appointment.status = Status::Booked;
            appointment.hold_expires_at = None;
            appointment.version += 1;
            appointment.updated_at = pac_platform::now();
            store::update_appointment(&mut tx, &appointment).await?;
            store::close_offer_of(&mut tx, appointment.id, OfferOutcome::Accepted).await?;
            store::close_entry(&mut tx, offer.entry_id, "booked").await?;
            self.record_change(&mut tx, &appointment, Status::Pending, None, Some("offer accepted"), &write.actor).await?;
            self.emit(&mut tx, appointment.id, Event::AppointmentBooked(appointment_event(&appointment, None, "offer accepted")), &write)
                .await?;
            Some(convert::appointment(&appointment))
        } else {
            self.cancel_in(&mut tx, appointment, "OFFER_DECLINED", CancelledBy::Patient, OfferOutcome::Declined, &write).await?;
            None
        };
        let entry =
            store::find_entry(&mut *tx, offer.entry_id).await?.ok_or(not_found("pac.scheduling.v1.WaitlistEntry", offer.entry_id))?;
        let offers = store::offers_of(&mut *tx, &[entry.id]).await?;
        let response = pb::RespondToOfferResponse { entry: Some(convert::entry(&entry, &offers)), appointment: booked };
        tx.commit(&response).await?;
        tracing::info!(offer_id = %offer_id, accept, "offer answered");
        Ok(response)
    }

    /// Offers a slot with a free place to the best waiting entry it fits, as a timed hold. A clash
    /// found only now (a concurrent booking for the same patient) skips the offer, not the caller's
    /// change.
    async fn offer_slot(&self, conn: &mut PgConnection, slot_id: Uuid) -> Result<bool> {
        let Some(slot) = store::find_slot(&mut *conn, slot_id).await? else { return Ok(false) };
        let now = pac_platform::now();
        if slot.occupied >= slot.capacity || slot.start_time < now + self.policy.offer_min_notice {
            return Ok(false);
        }
        let candidates = store::entries_fitting(conn, &slot, 50).await?;
        let rankings: Vec<waitlist::Entry> = candidates.iter().map(Entry::ranking).collect();
        let Some(best) = waitlist::best_fit(&rankings, slot.local_date) else { return Ok(false) };
        let entry = &candidates[rankings.iter().position(|r| std::ptr::eq(r, best)).expect("best is one of them")];
        let mut savepoint = conn.begin().await?;
        let offer_hold = Placement::Hold { ttl: self.policy.offer_hold, held_by: None };
        let held = self.place(&mut savepoint, slot.id, entry.patient_id, Naming::Entry(entry.referral_id), offer_hold, None).await;
        let appointment = match held {
            Ok((appointment, _)) => appointment,
            Err(SchedulingError::PatientDoubleBooked | SchedulingError::SlotUnavailable { .. }) => {
                savepoint.rollback().await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let expires_at = appointment.hold_expires_at.unwrap_or(slot.start_time);
        let offer = Offer {
            id: Uuid::now_v7(),
            entry_id: entry.id,
            appointment_id: appointment.id,
            slot_id: slot.id,
            offered_at: now,
            notice_hours: ((slot.start_time - now).num_hours()).max(0) as i32,
            expires_at,
            outcome: OfferOutcome::Open,
        };
        match store::insert_offer(&mut savepoint, &offer).await {
            Ok(()) => {}
            Err(SchedulingError::Conflict) => {
                // A concurrent change offered the entry a slot first: this one is not offered now.
                savepoint.rollback().await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let system = Write::by_service(service_actor());
        self.emit(&mut savepoint, appointment.id, Event::AppointmentHeld(appointment_event(&appointment, None, "waitlist offer")), &system)
            .await?;
        let made = pb::OfferMade { entry: Some(convert::entry(entry, &[])), offer: Some(convert::offer(&offer)) };
        self.emit(&mut savepoint, entry.id, Event::OfferMade(made), &system).await?;
        savepoint.commit().await?;
        tracing::info!(offer_id = %offer.id, entry_id = %entry.id, slot_id = %slot.id, "waitlist offer made");
        Ok(true)
    }

    /// Offers a session's new free slots to the entries waiting for its clinic or service.
    async fn offer_new_slots(&self, conn: &mut PgConnection, clinic: &Clinic, template_id: Uuid) -> Result<()> {
        if !store::anyone_waiting(conn, clinic).await? {
            return Ok(());
        }
        let after = pac_platform::now() + self.policy.offer_min_notice;
        for slot_id in store::free_slots_of_template(conn, template_id, after, 200).await? {
            if self.offer_slot(conn, slot_id).await? && !store::anyone_waiting(conn, clinic).await? {
                break;
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Merges in the records service

    /// A merge in the records service: the merged-away record's appointments and waitlist entries
    /// move to the survivor. A live appointment that clashes with one the survivor already has is a
    /// duplicate booking of the same person and is cancelled. Idempotent.
    pub async fn apply_merge(&self, merge_id: Uuid, merged: Uuid, survivor: Uuid, cursor: &str) -> Result<()> {
        let mut tx = self.writes.begin().await?;
        if !follow::advance_stream_cursor(&mut tx, crate::RECORDS_STREAM, cursor).await? {
            return Ok(());
        }
        merges::record_merge(&mut tx, merge_id, merged, survivor).await?;
        let system = Write::by_service(service_actor());
        for clash in store::lock_clashing_appointments(&mut tx, merged, survivor).await? {
            self.cancel_in(&mut tx, clash, "DUPLICATE_PATIENT_RECORD", CancelledBy::System, OfferOutcome::Withdrawn, &system).await?;
        }
        let moved = store::repoint_patient(&mut tx, merge_id, merged, survivor).await?;
        self.announce_patient_change(&mut tx, &moved, "patient records merged").await?;
        tx.commit_unanswered().await?;
        tracing::info!(merge_id = %merge_id, appointments_moved = moved.len(), "followed a patient merge");
        Ok(())
    }

    /// A merge reversed: what it moved goes back. Idempotent.
    pub async fn apply_unmerge(&self, merge_id: Uuid, cursor: &str) -> Result<()> {
        let mut tx = self.writes.begin().await?;
        if !follow::advance_stream_cursor(&mut tx, crate::RECORDS_STREAM, cursor).await? {
            return Ok(());
        }
        merges::forget_merge(&mut tx, merge_id).await?;
        let moved = store::unrepoint_patient(&mut tx, merge_id).await?;
        self.announce_patient_change(&mut tx, &moved, "patient merge reversed").await?;
        tx.commit_unanswered().await?;
        tracing::info!(merge_id = %merge_id, appointments_moved = moved.len(), "followed a merge reversal");
        Ok(())
    }

    async fn announce_patient_change(&self, conn: &mut PgConnection, moved: &[Appointment], reason: &str) -> Result<()> {
        let system = Write::by_service(service_actor());
        for appointment in moved {
            let event = Event::AppointmentPatientChanged(appointment_event(appointment, None, reason));
            self.emit(conn, appointment.id, event, &system).await?;
        }
        Ok(())
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
