//! All SQL of the scheduling service. The invariants are the schema's: a slot never holds more live
//! appointments than its capacity (`slots_within_capacity`), a patient is never in two live
//! appointments at once (`appointments_patient_no_overlap`), one open waitlist entry per patient and
//! target, one open offer per entry. This module turns their violations into domain errors.
//!
//! Organisation scope: the statements that read or change appointments, waitlist entries and offers
//! for a caller take the caller's scope (`pac_platform::Caller::scope`; `None` when unscoped) and
//! carry it in their `WHERE` clause, so another organisation's row is not found and never listed.
//! Clinics, slots and locations are the shared directory and are not scoped.

use chrono::{DateTime, NaiveDate, Utc};
use pac_platform::error::violated_constraint;
use sqlx::error::ErrorKind;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::appointment::Status;
use crate::domain::cancellation::CancelledBy;
use crate::domain::session::SlotTime;
use crate::error::SchedulingError;
use crate::model::*;

type Result<T> = std::result::Result<T, SchedulingError>;

/// The organisations a caller may see (`None`: every one); see `pac_platform::Caller::scope`.
pub type Scope<'a> = Option<&'a [String]>;

// ---------------------------------------------------------------------------------------------
// Directory

pub async fn insert_location(conn: &mut PgConnection, l: &Location) -> Result<()> {
    sqlx::query(
        "INSERT INTO locations (id, name, address_lines, locality, postcode, directions, access_notes, parking, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())",
    )
    .bind(l.id)
    .bind(&l.name)
    .bind(&l.address_lines)
    .bind(&l.locality)
    .bind(&l.postcode)
    .bind(&l.directions)
    .bind(&l.access_notes)
    .bind(&l.parking)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn find_location(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Location>> {
    Ok(sqlx::query_as("SELECT id, name, address_lines, locality, postcode, directions, access_notes, parking FROM locations WHERE id = $1")
        .bind(id)
        .fetch_optional(executor)
        .await?)
}

pub async fn insert_clinic(conn: &mut PgConnection, c: &Clinic) -> Result<()> {
    let result = sqlx::query(
        "INSERT INTO clinics (id, location_id, name, specialty, service_code, time_zone, what_to_bring, organisation, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())",
    )
    .bind(c.id)
    .bind(c.location_id)
    .bind(&c.name)
    .bind(&c.specialty)
    .bind(&c.service_code)
    .bind(&c.time_zone)
    .bind(&c.what_to_bring)
    .bind(&c.organisation)
    .execute(conn)
    .await;
    match result {
        Err(e) if matches!(violated_constraint(&e), Some((ErrorKind::ForeignKeyViolation, _))) => {
            Err(SchedulingError::invalid("clinic.location_id", "LOCATION_NOT_FOUND", "no location has this id"))
        }
        other => other.map(drop).map_err(Into::into),
    }
}

const CLINIC_COLUMNS: &str = "id, location_id, name, specialty, service_code, time_zone, what_to_bring, organisation";

pub async fn find_clinic(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Clinic>> {
    let sql = format!("SELECT {CLINIC_COLUMNS} FROM clinics WHERE id = $1");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(executor).await?)
}

pub async fn list_clinics(
    executor: impl PgExecutor<'_>,
    service_code: Option<&str>,
    location_id: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> Result<Vec<Clinic>> {
    let sql = format!(
        "SELECT {CLINIC_COLUMNS} FROM clinics \
         WHERE ($1::text IS NULL OR service_code = $1) AND ($2::uuid IS NULL OR location_id = $2) \
         ORDER BY name, id LIMIT $3 OFFSET $4"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(service_code).bind(location_id).bind(limit).bind(offset).fetch_all(executor).await?)
}

const TEMPLATE_COLUMNS: &str =
    "id, clinic_id, weekday, start_time, end_time, slot_minutes, capacity, valid_from, valid_until, generated_until";

pub async fn templates_of(executor: impl PgExecutor<'_>, clinic_id: Uuid) -> Result<Vec<Template>> {
    let sql = format!("SELECT {TEMPLATE_COLUMNS} FROM session_templates WHERE clinic_id = $1 ORDER BY weekday, start_time, id");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(clinic_id).fetch_all(executor).await?)
}

pub async fn lock_template(conn: &mut PgConnection, id: Uuid) -> Result<Option<Template>> {
    let sql = format!("SELECT {TEMPLATE_COLUMNS} FROM session_templates WHERE id = $1 FOR UPDATE");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(conn).await?)
}

/// Templates whose slots end before `through` and that still run after that point.
pub async fn templates_to_extend(executor: impl PgExecutor<'_>, through: NaiveDate) -> Result<Vec<Template>> {
    let sql = format!(
        "SELECT {TEMPLATE_COLUMNS} FROM session_templates \
         WHERE (generated_until IS NULL OR generated_until < $1) \
           AND (valid_until IS NULL OR generated_until IS NULL OR valid_until > generated_until) \
         ORDER BY id"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(through).fetch_all(executor).await?)
}

/// Inserts or replaces a template (all fields).
pub async fn save_template(conn: &mut PgConnection, t: &Template) -> Result<()> {
    sqlx::query(
        "INSERT INTO session_templates (id, clinic_id, weekday, start_time, end_time, slot_minutes, capacity, valid_from, \
                                        valid_until, generated_until, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), now()) \
         ON CONFLICT (id) DO UPDATE SET weekday = EXCLUDED.weekday, start_time = EXCLUDED.start_time, \
             end_time = EXCLUDED.end_time, slot_minutes = EXCLUDED.slot_minutes, capacity = EXCLUDED.capacity, \
             valid_from = EXCLUDED.valid_from, valid_until = EXCLUDED.valid_until, \
             generated_until = EXCLUDED.generated_until, updated_at = now()",
    )
    .bind(t.id)
    .bind(t.clinic_id)
    .bind(t.weekday)
    .bind(t.start_time)
    .bind(t.end_time)
    .bind(t.slot_minutes)
    .bind(t.capacity)
    .bind(t.valid_from)
    .bind(t.valid_until)
    .bind(t.generated_until)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts a template's slots; a withdrawn free slot at the same start is restored instead. Returns
/// the slots created or restored.
pub async fn insert_slots(conn: &mut PgConnection, clinic: &Clinic, template: &Template, slots: &[SlotTime]) -> Result<u64> {
    if slots.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = slots.iter().map(|_| Uuid::now_v7()).collect();
    let starts: Vec<DateTime<Utc>> = slots.iter().map(|s| s.start).collect();
    let ends: Vec<DateTime<Utc>> = slots.iter().map(|s| s.end).collect();
    let days: Vec<NaiveDate> = slots.iter().map(|s| s.day).collect();
    let local_starts: Vec<chrono::NaiveTime> = slots.iter().map(|s| s.local_start).collect();
    let result = sqlx::query(
        "INSERT INTO slots (id, clinic_id, template_id, service_code, location_id, start_time, end_time, local_date, \
                            local_start, capacity, organisation) \
         SELECT id, $6, $7, $8, $9, start_time, end_time, local_date, local_start, $10, $11 \
         FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::date[], $5::time[]) \
              AS s (id, start_time, end_time, local_date, local_start) \
         ON CONFLICT (template_id, start_time) DO UPDATE SET withdrawn_at = NULL, end_time = EXCLUDED.end_time, \
             local_date = EXCLUDED.local_date, local_start = EXCLUDED.local_start, capacity = EXCLUDED.capacity \
         WHERE slots.withdrawn_at IS NOT NULL AND slots.occupied = 0",
    )
    .bind(&ids)
    .bind(&starts)
    .bind(&ends)
    .bind(&days)
    .bind(&local_starts)
    .bind(clinic.id)
    .bind(template.id)
    .bind(&clinic.service_code)
    .bind(clinic.location_id)
    .bind(template.capacity)
    .bind(&clinic.organisation)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Withdraws a template's free slots that start after `after`; returns how many.
pub async fn withdraw_free_slots(conn: &mut PgConnection, template_id: Uuid, after: DateTime<Utc>) -> Result<u64> {
    let result = sqlx::query(
        "UPDATE slots SET withdrawn_at = now() \
         WHERE template_id = $1 AND start_time > $2 AND occupied = 0 AND withdrawn_at IS NULL",
    )
    .bind(template_id)
    .bind(after)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// A template's slots after `after` kept because they hold live appointments.
pub async fn count_occupied_slots(conn: &mut PgConnection, template_id: Uuid, after: DateTime<Utc>) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM slots WHERE template_id = $1 AND start_time > $2 AND occupied > 0 AND withdrawn_at IS NULL",
    )
    .bind(template_id)
    .bind(after)
    .fetch_one(conn)
    .await?)
}

const SLOT_COLUMNS: &str =
    "id, clinic_id, service_code, location_id, start_time, end_time, local_date, local_start, capacity, occupied, organisation";

pub async fn find_slot(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Slot>> {
    let sql = format!("SELECT {SLOT_COLUMNS} FROM slots WHERE id = $1 AND withdrawn_at IS NULL");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(executor).await?)
}

/// Free slots of a clinic's template starting after `after`, earliest first.
pub async fn free_slots_of_template(conn: &mut PgConnection, template_id: Uuid, after: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM slots WHERE template_id = $1 AND start_time > $2 AND occupied < capacity AND withdrawn_at IS NULL \
         ORDER BY start_time, id LIMIT $3",
    )
    .bind(template_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Where a page of slots starts: after this (start, id).
pub type SlotKey = (DateTime<Utc>, Uuid);

/// A clinic's slots in a window, booked or not, by start.
pub async fn list_slots(
    executor: impl PgExecutor<'_>,
    clinic_id: Uuid,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    after: Option<SlotKey>,
    limit: i64,
) -> Result<Vec<Slot>> {
    let sql = format!(
        "SELECT {SLOT_COLUMNS} FROM slots \
         WHERE clinic_id = $1 AND start_time >= $2 AND start_time < $3 AND withdrawn_at IS NULL \
           AND start_time >= $4 AND (start_time, id) > ($4, $5) \
         ORDER BY start_time, id LIMIT $6"
    );
    let (after_start, after_id) = after.unwrap_or((DateTime::<Utc>::UNIX_EPOCH, Uuid::nil()));
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(clinic_id)
        .bind(from)
        .bind(until)
        .bind(after_start)
        .bind(after_id)
        .bind(limit)
        .fetch_all(executor)
        .await?)
}

pub enum SlotTarget<'a> {
    Clinic(Uuid),
    Service(&'a str),
}

/// Free slots by clinic or service code (and location), earliest first. Each combination is its own
/// statement, so each gets a plan that walks the matching partial index in start order.
pub async fn search_slots(
    executor: impl PgExecutor<'_>,
    target: SlotTarget<'_>,
    location_id: Option<Uuid>,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    after: Option<SlotKey>,
    limit: i64,
) -> Result<Vec<Slot>> {
    const FREE: &str = "occupied < capacity AND withdrawn_at IS NULL AND start_time >= $2 AND start_time < $3 \
                        AND start_time >= $4 AND (start_time, id) > ($4, $5)";
    let (filter, location) = match (&target, location_id) {
        (SlotTarget::Clinic(_), None) => ("clinic_id = $1", None),
        (SlotTarget::Clinic(_), Some(l)) => ("clinic_id = $1 AND location_id = $7", Some(l)),
        (SlotTarget::Service(_), None) => ("service_code = $1", None),
        (SlotTarget::Service(_), Some(l)) => ("location_id = $7 AND service_code = $1", Some(l)),
    };
    let sql = format!("SELECT {SLOT_COLUMNS} FROM slots WHERE {filter} AND {FREE} ORDER BY start_time, id LIMIT $6");
    let (after_start, after_id) = after.unwrap_or((DateTime::<Utc>::UNIX_EPOCH, Uuid::nil()));
    let query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
    let query = match target {
        SlotTarget::Clinic(id) => query.bind(id),
        SlotTarget::Service(code) => query.bind(code.to_string()),
    };
    let mut query = query.bind(from).bind(until).bind(after_start).bind(after_id).bind(limit);
    if let Some(location) = location {
        query = query.bind(location);
    }
    Ok(query.fetch_all(executor).await?)
}

// ---------------------------------------------------------------------------------------------
// Places and appointments

/// Takes one place in a slot. The capacity constraint decides a race for the last place: concurrent
/// takers queue on the row and the ones that would overfill it fail.
pub async fn take_place(conn: &mut PgConnection, slot_id: Uuid) -> Result<Slot> {
    let sql = format!("UPDATE slots SET occupied = occupied + 1 WHERE id = $1 AND withdrawn_at IS NULL RETURNING {SLOT_COLUMNS}");
    let result: std::result::Result<Option<Slot>, sqlx::Error> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(slot_id).fetch_optional(&mut *conn).await;
    match result {
        Ok(Some(slot)) => Ok(slot),
        Ok(None) => Err(SchedulingError::NotFound { resource: "pac.scheduling.v1.Slot", id: slot_id }),
        Err(e) if matches!(violated_constraint(&e), Some((ErrorKind::CheckViolation, "slots_within_capacity"))) => {
            Err(SchedulingError::SlotUnavailable { slot_id, why: "is fully booked" })
        }
        Err(e) => Err(e.into()),
    }
}

/// Gives a place back.
pub async fn release_place(conn: &mut PgConnection, slot_id: Uuid) -> Result<()> {
    sqlx::query("UPDATE slots SET occupied = occupied - 1 WHERE id = $1").bind(slot_id).execute(conn).await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct AppointmentRow {
    id: Uuid,
    version: i64,
    slot_id: Uuid,
    clinic_id: Uuid,
    patient_id: Uuid,
    referral_id: Option<Uuid>,
    status: String,
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
    hold_expires_at: Option<DateTime<Utc>>,
    cancel_reason_code: Option<String>,
    cancelled_by: Option<i16>,
    cancel_late: Option<bool>,
    cancelled_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    organisation: String,
    service_code: String,
    held_by: Option<String>,
}

const APPOINTMENT_COLUMNS: &str = "id, version, slot_id, clinic_id, patient_id, referral_id, status, start_time, end_time, \
    hold_expires_at, cancel_reason_code, cancelled_by, cancel_late, cancelled_at, created_at, updated_at, organisation, service_code, held_by";

/// The scope predicate on appointments, with the scope bound as `$2`.
const APPOINTMENT_SCOPED: &str = "($2::text[] IS NULL OR organisation = ANY($2))";

impl TryFrom<AppointmentRow> for Appointment {
    type Error = sqlx::Error;
    fn try_from(r: AppointmentRow) -> std::result::Result<Self, sqlx::Error> {
        let status = Status::from_code(&r.status).ok_or_else(|| sqlx::Error::Decode("unknown appointment status".into()))?;
        let cancellation = match (r.cancel_reason_code, r.cancelled_by.and_then(|c| CancelledBy::from_code(c.into())), r.cancelled_at) {
            (Some(reason_code), Some(by), Some(at)) => Some(Cancellation { reason_code, by, late: r.cancel_late.unwrap_or(false), at }),
            _ => None,
        };
        Ok(Appointment {
            id: r.id,
            version: r.version,
            slot_id: r.slot_id,
            clinic_id: r.clinic_id,
            patient_id: r.patient_id,
            referral_id: r.referral_id,
            status,
            start_time: r.start_time,
            end_time: r.end_time,
            hold_expires_at: r.hold_expires_at,
            cancellation,
            created_at: r.created_at,
            updated_at: r.updated_at,
            organisation: r.organisation,
            service_code: r.service_code,
            held_by: r.held_by,
        })
    }
}

fn appointments(rows: Vec<AppointmentRow>) -> Result<Vec<Appointment>> {
    Ok(rows.into_iter().map(Appointment::try_from).collect::<std::result::Result<_, _>>()?)
}

fn double_booking(error: sqlx::Error) -> SchedulingError {
    match violated_constraint(&error) {
        Some((ErrorKind::ExclusionViolation, "appointments_patient_no_overlap")) => SchedulingError::PatientDoubleBooked,
        _ => error.into(),
    }
}

pub async fn insert_appointment(conn: &mut PgConnection, a: &Appointment) -> Result<()> {
    sqlx::query(
        "INSERT INTO appointments (id, version, slot_id, clinic_id, patient_id, referral_id, status, start_time, end_time, \
                                   hold_expires_at, created_at, updated_at, organisation, service_code, held_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(a.id)
    .bind(a.version)
    .bind(a.slot_id)
    .bind(a.clinic_id)
    .bind(a.patient_id)
    .bind(a.referral_id)
    .bind(a.status.code())
    .bind(a.start_time)
    .bind(a.end_time)
    .bind(a.hold_expires_at)
    .bind(a.created_at)
    .bind(a.updated_at)
    .bind(&a.organisation)
    .bind(&a.service_code)
    .bind(a.held_by.as_deref())
    .execute(conn)
    .await
    .map_err(double_booking)?;
    Ok(())
}

/// The live holds (pending, not lapsed) `holder` took with HoldSlot, counted under a lock on the
/// holder that lasts until the transaction ends: concurrent holds by one caller queue here, and
/// each counts what the ones before it committed, so together they never exceed the cap.
pub async fn lock_and_count_live_holds(conn: &mut PgConnection, holder: &str) -> Result<i64> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('pac-scheduling.holds:' || $1, 0))")
        .bind(holder)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM appointments WHERE held_by = $1 AND status = 'pending' AND hold_expires_at > now()")
        .bind(holder)
        .fetch_one(conn)
        .await?)
}

/// Writes every changeable field of an appointment.
pub async fn update_appointment(conn: &mut PgConnection, a: &Appointment) -> Result<()> {
    let c = a.cancellation.as_ref();
    sqlx::query(
        "UPDATE appointments SET version = $2, slot_id = $3, clinic_id = $4, patient_id = $5, referral_id = $6, \
             status = $7, start_time = $8, end_time = $9, hold_expires_at = $10, cancel_reason_code = $11, \
             cancelled_by = $12, cancel_late = $13, cancelled_at = $14, updated_at = $15, organisation = $16, \
             service_code = $17 \
         WHERE id = $1",
    )
    .bind(a.id)
    .bind(a.version)
    .bind(a.slot_id)
    .bind(a.clinic_id)
    .bind(a.patient_id)
    .bind(a.referral_id)
    .bind(a.status.code())
    .bind(a.start_time)
    .bind(a.end_time)
    .bind(a.hold_expires_at)
    .bind(c.map(|c| c.reason_code.as_str()))
    .bind(c.map(|c| c.by as i16))
    .bind(c.map(|c| c.late))
    .bind(c.map(|c| c.at))
    .bind(a.updated_at)
    .bind(&a.organisation)
    .bind(&a.service_code)
    .execute(conn)
    .await
    .map_err(double_booking)?;
    Ok(())
}

pub async fn find_appointment(executor: impl PgExecutor<'_>, id: Uuid, scope: Scope<'_>) -> Result<Option<Appointment>> {
    let sql = format!("SELECT {APPOINTMENT_COLUMNS} FROM appointments WHERE id = $1 AND {APPOINTMENT_SCOPED}");
    let row: Option<AppointmentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(scope).fetch_optional(executor).await?;
    Ok(row.map(Appointment::try_from).transpose()?)
}

pub async fn lock_appointment(conn: &mut PgConnection, id: Uuid, scope: Scope<'_>) -> Result<Option<Appointment>> {
    let sql = format!("SELECT {APPOINTMENT_COLUMNS} FROM appointments WHERE id = $1 AND {APPOINTMENT_SCOPED} FOR UPDATE");
    let row: Option<AppointmentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(scope).fetch_optional(conn).await?;
    Ok(row.map(Appointment::try_from).transpose()?)
}

/// A patient's appointments in scope, by start.
pub async fn appointments_of_patient(
    executor: impl PgExecutor<'_>,
    patient_id: Uuid,
    statuses: &[&str],
    limit: i64,
    offset: i64,
    scope: Scope<'_>,
) -> Result<Vec<Appointment>> {
    let sql = format!(
        "SELECT {APPOINTMENT_COLUMNS} FROM appointments \
         WHERE patient_id = $1 AND {APPOINTMENT_SCOPED} AND (cardinality($3::text[]) = 0 OR status = ANY($3)) \
         ORDER BY start_time, id LIMIT $4 OFFSET $5"
    );
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(patient_id)
        .bind(scope)
        .bind(statuses)
        .bind(limit)
        .bind(offset)
        .fetch_all(executor)
        .await?;
    appointments(rows)
}

/// A clinic's appointments in scope starting in a window, by start.
#[allow(clippy::too_many_arguments)]
pub async fn appointments_of_clinic(
    executor: impl PgExecutor<'_>,
    clinic_id: Uuid,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    statuses: &[&str],
    limit: i64,
    offset: i64,
    scope: Scope<'_>,
) -> Result<Vec<Appointment>> {
    let sql = format!(
        "SELECT {APPOINTMENT_COLUMNS} FROM appointments \
         WHERE clinic_id = $1 AND {APPOINTMENT_SCOPED} AND start_time >= $3 AND start_time < $4 \
           AND (cardinality($5::text[]) = 0 OR status = ANY($5)) \
         ORDER BY start_time, id LIMIT $6 OFFSET $7"
    );
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(clinic_id)
        .bind(scope)
        .bind(from)
        .bind(until)
        .bind(statuses)
        .bind(limit)
        .bind(offset)
        .fetch_all(executor)
        .await?;
    appointments(rows)
}

/// Holds that have lapsed, oldest first, locked; holds locked by someone else are left to them.
pub async fn lock_lapsed_holds(conn: &mut PgConnection, slot_id: Option<Uuid>, limit: i64) -> Result<Vec<Appointment>> {
    let sql = format!(
        "SELECT {APPOINTMENT_COLUMNS} FROM appointments \
         WHERE status = 'pending' AND hold_expires_at <= now() AND ($1::uuid IS NULL OR slot_id = $1) \
         ORDER BY hold_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    );
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(slot_id).bind(limit).fetch_all(conn).await?;
    appointments(rows)
}

/// One line of an appointment's audit trail.
pub struct Change<'a> {
    pub appointment_id: Uuid,
    pub from: Status,
    pub to: Status,
    pub from_slot: Option<Uuid>,
    pub to_slot: Option<Uuid>,
    pub reason: Option<&'a str>,
    pub actor: &'a str,
    pub at: DateTime<Utc>,
}

pub async fn insert_change(conn: &mut PgConnection, c: Change<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO appointment_changes (appointment_id, from_status, to_status, from_slot_id, to_slot_id, reason, \
                                          actor_subject, changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(c.appointment_id)
    .bind(c.from.code())
    .bind(c.to.code())
    .bind(c.from_slot)
    .bind(c.to_slot)
    .bind(c.reason)
    .bind(c.actor)
    .bind(c.at)
    .execute(conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Waitlist and offers

#[derive(sqlx::FromRow)]
struct EntryRow {
    id: Uuid,
    patient_id: Uuid,
    clinic_id: Option<Uuid>,
    service_code: Option<String>,
    earliest_date: Option<NaiveDate>,
    latest_date: Option<NaiveDate>,
    priority: i16,
    breach_date: Option<NaiveDate>,
    referral_id: Option<Uuid>,
    added_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
    organisation: String,
}

const ENTRY_COLUMNS: &str = "e.id, e.patient_id, e.clinic_id, e.service_code, e.earliest_date, e.latest_date, e.priority, \
    e.breach_date, e.referral_id, e.added_at, e.closed_at, e.organisation";
/// Offer order (the domain's `offer_order`), for reading entries in that order.
const OFFER_ORDER: &str = "e.priority DESC, e.breach_date NULLS LAST, e.added_at, e.id";

fn entries(rows: Vec<EntryRow>) -> Result<Vec<Entry>> {
    rows.into_iter()
        .map(|r| {
            let target = match (r.clinic_id, r.service_code) {
                (Some(clinic), _) => Target::Clinic(clinic),
                (None, Some(code)) => Target::Service(code),
                (None, None) => return Err(sqlx::Error::Decode("waitlist entry without target".into()).into()),
            };
            let priority = priority_from_code(r.priority).ok_or_else(|| sqlx::Error::Decode("unknown priority".into()))?;
            Ok(Entry {
                id: r.id,
                patient_id: r.patient_id,
                target,
                earliest_date: r.earliest_date,
                latest_date: r.latest_date,
                priority,
                breach_date: r.breach_date,
                referral_id: r.referral_id,
                added_at: r.added_at,
                closed_at: r.closed_at,
                organisation: r.organisation,
            })
        })
        .collect()
}

/// Adds an entry, or returns the id of the patient's open entry for the same target and organisation.
pub async fn insert_entry(conn: &mut PgConnection, e: &Entry) -> Result<Option<Uuid>> {
    let (clinic_id, service_code) = match &e.target {
        Target::Clinic(id) => (Some(*id), None),
        Target::Service(code) => (None, Some(code.as_str())),
    };
    let inserted = sqlx::query(
        "INSERT INTO waitlist_entries (id, patient_id, clinic_id, service_code, earliest_date, latest_date, priority, \
                                       breach_date, referral_id, added_at, organisation) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (patient_id, coalesce(clinic_id::text, service_code), organisation) WHERE closed_at IS NULL DO NOTHING",
    )
    .bind(e.id)
    .bind(e.patient_id)
    .bind(clinic_id)
    .bind(service_code)
    .bind(e.earliest_date)
    .bind(e.latest_date)
    .bind(priority_code(e.priority))
    .bind(e.breach_date)
    .bind(e.referral_id)
    .bind(e.added_at)
    .bind(&e.organisation)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(done) if done.rows_affected() == 1 => Ok(None),
        Ok(_) => Ok(sqlx::query_scalar(
            "SELECT id FROM waitlist_entries \
             WHERE patient_id = $1 AND coalesce(clinic_id::text, service_code) = coalesce($2::text, $3) AND organisation = $4 \
               AND closed_at IS NULL",
        )
        .bind(e.patient_id)
        .bind(clinic_id)
        .bind(service_code)
        .bind(&e.organisation)
        .fetch_optional(conn)
        .await?),
        Err(e) if matches!(violated_constraint(&e), Some((ErrorKind::ForeignKeyViolation, _))) => {
            Err(SchedulingError::invalid("entry.clinic_id", "CLINIC_NOT_FOUND", "no clinic has this id"))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn find_entry(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Entry>> {
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM waitlist_entries e WHERE e.id = $1");
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_all(executor).await?;
    Ok(entries(rows)?.pop())
}

/// Entries in scope waiting for a clinic (directly or by its service code) or for a service code
/// (directly or at any of its clinics), in offer order.
pub async fn list_entries(
    executor: impl PgExecutor<'_>,
    clinic: Option<&Clinic>,
    service_code: &str,
    include_closed: bool,
    limit: i64,
    offset: i64,
    scope: Scope<'_>,
) -> Result<Vec<Entry>> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM waitlist_entries e \
         WHERE ($3 OR e.closed_at IS NULL) AND ($6::text[] IS NULL OR e.organisation = ANY($6)) AND (CASE WHEN $1::uuid IS NOT NULL \
               THEN e.clinic_id = $1 OR e.service_code = $2 \
               ELSE e.service_code = $2 OR e.clinic_id IN (SELECT id FROM clinics WHERE service_code = $2) END) \
         ORDER BY {OFFER_ORDER} LIMIT $4 OFFSET $5"
    );
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(clinic.map(|c| c.id))
        .bind(service_code)
        .bind(include_closed)
        .bind(limit)
        .bind(offset)
        .bind(scope)
        .fetch_all(executor)
        .await?;
    entries(rows)
}

/// Open entries a free `slot` fits, in offer order: of the slot's organisation, waiting for its
/// clinic or service, its day in their window, no open offer, never offered this slot, and no live
/// appointment at that time.
pub async fn entries_fitting(conn: &mut PgConnection, slot: &Slot, limit: i64) -> Result<Vec<Entry>> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM waitlist_entries e \
         WHERE e.closed_at IS NULL AND e.organisation = $8 AND (e.clinic_id = $1 OR e.service_code = $2) \
           AND (e.earliest_date IS NULL OR e.earliest_date <= $3) AND (e.latest_date IS NULL OR e.latest_date >= $3) \
           AND NOT EXISTS (SELECT 1 FROM offers o WHERE o.entry_id = e.id AND (o.outcome = 'open' OR o.slot_id = $4)) \
           AND NOT EXISTS (SELECT 1 FROM appointments a WHERE a.patient_id = e.patient_id \
                           AND a.status IN ('pending', 'booked', 'arrived', 'checked-in') \
                           AND tstzrange(a.start_time, a.end_time) && tstzrange($5, $6)) \
         ORDER BY {OFFER_ORDER} LIMIT $7"
    );
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(slot.clinic_id)
        .bind(&slot.service_code)
        .bind(slot.local_date)
        .bind(slot.id)
        .bind(slot.start_time)
        .bind(slot.end_time)
        .bind(limit)
        .bind(&slot.organisation)
        .fetch_all(conn)
        .await?;
    entries(rows)
}

/// Whether any open entry of the clinic's organisation without an open offer waits for this clinic
/// or its service.
pub async fn anyone_waiting(conn: &mut PgConnection, clinic: &Clinic) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM waitlist_entries e WHERE e.closed_at IS NULL AND e.organisation = $3 \
                        AND (e.clinic_id = $1 OR e.service_code = $2) \
                        AND NOT EXISTS (SELECT 1 FROM offers o WHERE o.entry_id = e.id AND o.outcome = 'open'))",
    )
    .bind(clinic.id)
    .bind(&clinic.service_code)
    .bind(&clinic.organisation)
    .fetch_one(conn)
    .await?)
}

/// Closes the patient's open entries with the slot's organisation for its clinic or its service
/// (they have been booked).
pub async fn close_entries_for(conn: &mut PgConnection, patient_id: Uuid, slot: &Slot, reason: &str) -> Result<()> {
    sqlx::query(
        "UPDATE waitlist_entries SET closed_at = now(), close_reason = $4 \
         WHERE patient_id = $1 AND closed_at IS NULL AND organisation = $5 AND (clinic_id = $2 OR service_code = $3)",
    )
    .bind(patient_id)
    .bind(slot.clinic_id)
    .bind(&slot.service_code)
    .bind(reason)
    .bind(&slot.organisation)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct OfferRow {
    id: Uuid,
    entry_id: Uuid,
    appointment_id: Uuid,
    slot_id: Uuid,
    offered_at: DateTime<Utc>,
    notice_hours: i32,
    expires_at: DateTime<Utc>,
    outcome: String,
}

const OFFER_COLUMNS: &str = "id, entry_id, appointment_id, slot_id, offered_at, notice_hours, expires_at, outcome";

fn offers(rows: Vec<OfferRow>) -> Result<Vec<Offer>> {
    rows.into_iter()
        .map(|r| {
            let outcome = OfferOutcome::from_code(&r.outcome).ok_or_else(|| sqlx::Error::Decode("unknown offer outcome".into()))?;
            Ok(Offer {
                id: r.id,
                entry_id: r.entry_id,
                appointment_id: r.appointment_id,
                slot_id: r.slot_id,
                offered_at: r.offered_at,
                notice_hours: r.notice_hours,
                expires_at: r.expires_at,
                outcome,
            })
        })
        .collect()
}

/// Records an offer. One made concurrently to the same entry (or of the same slot to it) that
/// committed first is `Conflict`: the entry already has its offer.
pub async fn insert_offer(conn: &mut PgConnection, o: &Offer) -> Result<()> {
    let inserted = sqlx::query(
        "INSERT INTO offers (id, entry_id, appointment_id, slot_id, offered_at, notice_hours, expires_at, outcome) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(o.id)
    .bind(o.entry_id)
    .bind(o.appointment_id)
    .bind(o.slot_id)
    .bind(o.offered_at)
    .bind(o.notice_hours)
    .bind(o.expires_at)
    .bind(o.outcome.code())
    .execute(conn)
    .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                violated_constraint(&e),
                Some((ErrorKind::UniqueViolation, "offers_one_open_per_entry" | "offers_once_per_entry_and_slot"))
            ) =>
        {
            Err(SchedulingError::Conflict)
        }
        Err(e) => Err(e.into()),
    }
}

/// Offers made to these entries, oldest first.
pub async fn offers_of(executor: impl PgExecutor<'_>, entry_ids: &[Uuid]) -> Result<Vec<Offer>> {
    let sql = format!("SELECT {OFFER_COLUMNS} FROM offers WHERE entry_id = ANY($1) ORDER BY offered_at, id");
    offers(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(entry_ids).fetch_all(executor).await?)
}

/// Locks an offer made to an entry in scope.
pub async fn lock_offer(conn: &mut PgConnection, id: Uuid, scope: Scope<'_>) -> Result<Option<Offer>> {
    let sql = format!(
        "SELECT {OFFER_COLUMNS} FROM offers o WHERE id = $1 AND EXISTS ( \
             SELECT 1 FROM waitlist_entries e WHERE e.id = o.entry_id AND ($2::text[] IS NULL OR e.organisation = ANY($2))) \
         FOR UPDATE"
    );
    Ok(offers(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(scope).fetch_all(conn).await?)?.pop())
}

/// Closes the open offer whose hold is this appointment, if there is one; returns it.
pub async fn close_offer_of(conn: &mut PgConnection, appointment_id: Uuid, outcome: OfferOutcome) -> Result<Option<Offer>> {
    let sql = format!(
        "UPDATE offers SET outcome = $2, responded_at = now() WHERE appointment_id = $1 AND outcome = 'open' \
         RETURNING {OFFER_COLUMNS}"
    );
    Ok(offers(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(appointment_id).bind(outcome.code()).fetch_all(conn).await?)?.pop())
}

pub async fn close_entry(conn: &mut PgConnection, id: Uuid, reason: &str) -> Result<()> {
    sqlx::query("UPDATE waitlist_entries SET closed_at = now(), close_reason = $2 WHERE id = $1 AND closed_at IS NULL")
        .bind(id)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Other services' events

/// The merged-away patient's live appointments that clash with one of the survivor's, locked.
pub async fn lock_clashing_appointments(conn: &mut PgConnection, merged: Uuid, survivor: Uuid) -> Result<Vec<Appointment>> {
    let sql = format!(
        "SELECT {APPOINTMENT_COLUMNS} FROM appointments m \
         WHERE m.patient_id = $1 AND m.status IN ('pending', 'booked', 'arrived', 'checked-in') \
           AND EXISTS (SELECT 1 FROM appointments s WHERE s.patient_id = $2 \
                       AND s.status IN ('pending', 'booked', 'arrived', 'checked-in') \
                       AND tstzrange(s.start_time, s.end_time) && tstzrange(m.start_time, m.end_time)) \
         ORDER BY m.start_time, m.id FOR UPDATE"
    );
    appointments(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(merged).bind(survivor).fetch_all(conn).await?)
}

/// Moves every appointment and waitlist entry of `from` to `to`, recording each move under the
/// merge; returns the appointments moved.
pub async fn repoint_patient(conn: &mut PgConnection, merge_id: Uuid, from: Uuid, to: Uuid) -> Result<Vec<Appointment>> {
    // The survivor may already wait for the same clinic or service: that entry stands for both.
    sqlx::query(
        "UPDATE waitlist_entries m SET closed_at = now(), close_reason = 'duplicate after merge' \
         WHERE m.patient_id = $1 AND m.closed_at IS NULL AND EXISTS ( \
             SELECT 1 FROM waitlist_entries s WHERE s.patient_id = $2 AND s.closed_at IS NULL AND s.organisation = m.organisation \
             AND coalesce(s.clinic_id::text, s.service_code) = coalesce(m.clinic_id::text, m.service_code))",
    )
    .bind(from)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "WITH moved AS (UPDATE waitlist_entries SET patient_id = $3 WHERE patient_id = $2 RETURNING id) \
         INSERT INTO patient_repoints (merge_id, kind, row_id, from_patient, to_patient) \
         SELECT $1, 'waitlist', id, $2, $3 FROM moved ON CONFLICT DO NOTHING",
    )
    .bind(merge_id)
    .bind(from)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    let sql = format!(
        "WITH moved AS (UPDATE appointments SET patient_id = $3, version = version + 1, updated_at = now() \
                        WHERE patient_id = $2 RETURNING {APPOINTMENT_COLUMNS}), \
              noted AS (INSERT INTO patient_repoints (merge_id, kind, row_id, from_patient, to_patient) \
                        SELECT $1, 'appointment', id, $2, $3 FROM moved ON CONFLICT DO NOTHING) \
         SELECT * FROM moved ORDER BY start_time, id"
    );
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(merge_id).bind(from).bind(to).fetch_all(conn).await.map_err(double_booking)?;
    appointments(rows)
}

/// Moves back what a merge moved (and still sits with the survivor); returns the appointments moved.
pub async fn unrepoint_patient(conn: &mut PgConnection, merge_id: Uuid) -> Result<Vec<Appointment>> {
    sqlx::query(
        "WITH back AS (DELETE FROM patient_repoints WHERE merge_id = $1 AND kind = 'waitlist' RETURNING row_id, from_patient, to_patient) \
         UPDATE waitlist_entries w SET patient_id = back.from_patient FROM back \
         WHERE w.id = back.row_id AND w.patient_id = back.to_patient",
    )
    .bind(merge_id)
    .execute(&mut *conn)
    .await?;
    let sql = format!(
        "WITH back AS (DELETE FROM patient_repoints WHERE merge_id = $1 AND kind = 'appointment' RETURNING row_id, from_patient, to_patient) \
         UPDATE appointments a SET patient_id = back.from_patient, version = a.version + 1, updated_at = now() FROM back \
         WHERE a.id = back.row_id AND a.patient_id = back.to_patient RETURNING {}",
        APPOINTMENT_COLUMNS.split(", ").map(|c| format!("a.{c}")).collect::<Vec<_>>().join(", ")
    );
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(merge_id).fetch_all(conn).await.map_err(double_booking)?;
    appointments(rows)
}
