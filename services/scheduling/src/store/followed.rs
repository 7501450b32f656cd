//! What other services' events change: merged patients' appointments and entries.

use super::*;

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
