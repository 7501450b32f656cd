//! The scheduling schema's invariants, against a real Postgres: a slot never holds more live
//! appointments than its capacity, and a patient never has two live appointments that overlap.

use chrono::{Duration, Utc};
use pac_platform::testkit::TestDatabase;
use sqlx::PgPool;
use uuid::Uuid;

async fn database() -> (TestDatabase, PgPool) {
    let db = TestDatabase::create().await;
    let platform = db.platform_config();
    let config = pac_scheduling::SchedulingConfig::development("127.0.0.1:0".parse().unwrap(), "http://127.0.0.1:1".into());
    pac_scheduling::migrate(&platform, &config).await.unwrap();
    let pool = pac_scheduling::connect(&platform, &config).await.unwrap();
    (db, pool)
}

/// A clinic with one slot of `capacity` places; returns the slot id.
async fn slot(pool: &PgPool, capacity: i32) -> Uuid {
    let (location, clinic, slot) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    sqlx::query("INSERT INTO scheduling.locations (id, name, created_at) VALUES ($1, 'St Elsewhere', now())")
        .bind(location)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO scheduling.clinics (id, location_id, name, service_code, time_zone, created_at) \
         VALUES ($1, $2, 'Fracture clinic', 'TO-FRACTURE', 'Europe/London', now())",
    )
    .bind(clinic)
    .bind(location)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO scheduling.slots (id, clinic_id, service_code, location_id, start_time, end_time, local_date, local_start, capacity) \
         VALUES ($1, $2, 'TO-FRACTURE', $3, now() + interval '1 day', now() + interval '1 day 20 minutes', current_date + 1, '09:00', $4)",
    )
    .bind(slot)
    .bind(clinic)
    .bind(location)
    .bind(capacity)
    .execute(pool)
    .await
    .unwrap();
    slot
}

/// Takes a place in the slot; the CHECK decides.
async fn take_place(pool: &PgPool, slot: Uuid) -> Result<(), String> {
    sqlx::query("UPDATE scheduling.slots SET occupied = occupied + 1 WHERE id = $1")
        .bind(slot)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| e.as_database_error().and_then(|d| d.constraint().map(str::to_string)).unwrap_or_default())
}

#[tokio::test]
async fn a_slot_never_takes_more_than_its_capacity() {
    let (_db, pool) = database().await;
    for capacity in [1, 3] {
        let slot = slot(&pool, capacity).await;
        let attempts = futures::future::join_all((0..50).map(|_| take_place(&pool, slot))).await;
        let taken = attempts.iter().filter(|a| a.is_ok()).count();
        assert_eq!(taken, capacity as usize);
        assert!(attempts.iter().filter_map(|a| a.as_ref().err()).all(|c| c == "slots_within_capacity"));
        let occupied: i32 =
            sqlx::query_scalar("SELECT occupied FROM scheduling.slots WHERE id = $1").bind(slot).fetch_one(&pool).await.unwrap();
        assert_eq!(occupied, capacity);
    }
}

#[tokio::test]
async fn a_patient_cannot_hold_two_overlapping_live_appointments() {
    let (_db, pool) = database().await;
    let slot = slot(&pool, 5).await;
    let patient = Uuid::now_v7();
    let start = Utc::now() + Duration::days(1);
    let insert = |status: &'static str, offset_minutes: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO scheduling.appointments (id, slot_id, clinic_id, patient_id, status, start_time, end_time, \
                 hold_expires_at, cancel_reason_code, cancelled_by, created_at, updated_at, service_code) \
                 SELECT $1, s.id, s.clinic_id, $2, $3, $4, $4 + interval '20 minutes', now() + interval '10 minutes', \
                        CASE WHEN $3 = 'cancelled' THEN 'PATIENT_UNWELL' END, CASE WHEN $3 = 'cancelled' THEN 1 END, now(), now(), \
                        s.service_code \
                 FROM scheduling.slots s WHERE s.id = $5",
            )
            .bind(Uuid::now_v7())
            .bind(patient)
            .bind(status)
            .bind(start + Duration::minutes(offset_minutes))
            .bind(slot)
            .execute(&pool)
            .await
            .map(|_| ())
            .map_err(|e| e.as_database_error().and_then(|d| d.constraint().map(str::to_string)).unwrap_or_default())
        }
    };
    insert("booked", 0).await.unwrap();
    assert_eq!(insert("pending", 10).await, Err("appointments_patient_no_overlap".into()));
    assert_eq!(insert("booked", 19).await, Err("appointments_patient_no_overlap".into()));
    // Back to back is fine; a cancelled or finished one does not block.
    insert("booked", 20).await.unwrap();
    insert("cancelled", 5).await.unwrap();
    insert("fulfilled", 5).await.unwrap();
}
