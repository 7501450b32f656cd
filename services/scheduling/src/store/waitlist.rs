//! Waitlist entries and the offers made to them.

use super::*;

#[derive(sqlx::FromRow)]
pub(super) struct EntryRow {
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

pub(super) const ENTRY_COLUMNS: &str = "e.id, e.patient_id, e.clinic_id, e.service_code, e.earliest_date, e.latest_date, e.priority, \
    e.breach_date, e.referral_id, e.added_at, e.closed_at, e.organisation";
/// Offer order (the domain's `offer_order`), for reading entries in that order.
pub(super) const OFFER_ORDER: &str = "e.priority DESC, e.breach_date NULLS LAST, e.added_at, e.id";

pub(super) fn entries(rows: Vec<EntryRow>) -> Result<Vec<Entry>> {
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
pub(super) struct OfferRow {
    id: Uuid,
    entry_id: Uuid,
    appointment_id: Uuid,
    slot_id: Uuid,
    offered_at: DateTime<Utc>,
    notice_hours: i32,
    expires_at: DateTime<Utc>,
    outcome: String,
}

pub(super) const OFFER_COLUMNS: &str = "id, entry_id, appointment_id, slot_id, offered_at, notice_hours, expires_at, outcome";

pub(super) fn offers(rows: Vec<OfferRow>) -> Result<Vec<Offer>> {
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
