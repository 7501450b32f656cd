//! Places in slots, appointments and their history of changes.

use super::*;

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
pub(super) struct AppointmentRow {
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

pub(super) const APPOINTMENT_COLUMNS: &str = "id, version, slot_id, clinic_id, patient_id, referral_id, status, start_time, end_time, \
    hold_expires_at, cancel_reason_code, cancelled_by, cancel_late, cancelled_at, created_at, updated_at, organisation, service_code, held_by";

/// The scope predicate on appointments, with the scope bound as `$2`.
pub(super) const APPOINTMENT_SCOPED: &str = "($2::text[] IS NULL OR organisation = ANY($2))";

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

pub(super) fn appointments(rows: Vec<AppointmentRow>) -> Result<Vec<Appointment>> {
    Ok(rows.into_iter().map(Appointment::try_from).collect::<std::result::Result<_, _>>()?)
}

pub(super) fn double_booking(error: sqlx::Error) -> SchedulingError {
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
