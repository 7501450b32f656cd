//! Locations, clinics, session templates and slots.

use super::*;

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

pub(super) const CLINIC_COLUMNS: &str = "id, location_id, name, specialty, service_code, time_zone, what_to_bring, organisation";

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

pub(super) const TEMPLATE_COLUMNS: &str =
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

pub(super) const SLOT_COLUMNS: &str =
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
