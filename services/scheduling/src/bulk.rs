//! Loading a clinic directory and many slots at once, for seeding a test, demonstration or benchmark
//! database (`pac-load seed slots`). Locations and clinics are stored by the same statements as
//! `CreateLocation` and `CreateClinic`; slots carry their clinic's service, location and organisation
//! and their local day and time in the clinic's zone, as a session template's slots do.
//!
//! What the API does besides is left out: no request ids, no events, no waitlist offers. Loaded
//! slots belong to no session template (a template's horizon never extends or withdraws them), and
//! a slot's `occupied` is stored as given: places taken by bookings that are not part of the load
//! (a full slot that searches must skip).

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::clinic_time;
use crate::error::SchedulingError;
use crate::model::{Clinic, Location, Slot};
use crate::store;

/// Slots written by one statement.
pub const SLOTS_PER_STATEMENT: usize = 20_000;

/// Stores `locations`, then `clinics`, in one transaction, each as the API stores it (a clinic's
/// location must exist). `pool`: the scheduling service's own (`pac_scheduling::connect`).
pub async fn load_directory(pool: &PgPool, locations: &[Location], clinics: &[Clinic]) -> Result<(), SchedulingError> {
    let mut tx = pool.begin().await?;
    for location in locations {
        store::insert_location(&mut tx, location).await?;
    }
    for clinic in clinics {
        store::insert_clinic(&mut tx, clinic).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A slot of `clinic` from `start`, `minutes` long, with `capacity` places, none taken: its day and
/// time on the clinic's wall clock, its service, location and organisation the clinic's.
pub fn slot(clinic: &Clinic, start: DateTime<Utc>, minutes: u32, capacity: i32) -> Slot {
    let local = clinic_time::local(clinic.zone(), start);
    Slot {
        id: Uuid::now_v7(),
        clinic_id: clinic.id,
        service_code: clinic.service_code.clone(),
        location_id: clinic.location_id,
        start_time: start,
        end_time: start + Duration::minutes(i64::from(minutes)),
        local_date: local.date(),
        local_start: local.time(),
        capacity,
        occupied: 0,
        organisation: clinic.organisation.clone(),
    }
}

/// Stores `slots` in statements of [`SLOTS_PER_STATEMENT`]; returns how many were stored. Each
/// statement commits on its own. The schema's checks hold as for any slot (`occupied` within
/// `capacity`, the start before the end, the clinic known).
pub async fn load_slots(pool: &PgPool, slots: &[Slot]) -> Result<u64, SchedulingError> {
    let mut loaded = 0;
    for chunk in slots.chunks(SLOTS_PER_STATEMENT) {
        let column = |field: fn(&Slot) -> String| chunk.iter().map(field).collect::<Vec<_>>();
        let result = sqlx::query(
            "INSERT INTO scheduling.slots (id, clinic_id, service_code, location_id, start_time, end_time, local_date, local_start, \
                                           capacity, occupied, organisation) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::timestamptz[], $6::timestamptz[], $7::date[], \
                                  $8::time[], $9::int4[], $10::int4[], $11::text[])",
        )
        .bind(chunk.iter().map(|s| s.id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.clinic_id).collect::<Vec<_>>())
        .bind(column(|s| s.service_code.clone()))
        .bind(chunk.iter().map(|s| s.location_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.start_time).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.end_time).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.local_date).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.local_start).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.capacity).collect::<Vec<_>>())
        .bind(chunk.iter().map(|s| s.occupied).collect::<Vec<_>>())
        .bind(column(|s| s.organisation.clone()))
        .execute(pool)
        .await?;
        loaded += result.rows_affected();
    }
    Ok(loaded)
}
