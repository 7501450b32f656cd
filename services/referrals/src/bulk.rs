//! Loading a service directory, many referrals and their notes at once, for seeding a test,
//! demonstration or benchmark database (`pac-load seed referrals`). Services are stored by the same
//! statement as `CreateService`; a referral starts as `CreateReferral` makes one ([`received`]) and
//! may then be given any state the service could have brought it to; a referral's open and
//! unassigned task counts follow its loaded tasks, as they follow tasks added by `AddNote`.
//!
//! What the API does besides is left out: no request ids, no events, no clock event history, no
//! checks with the records or scheduling services (a loaded referral's patient and appointments
//! are taken as given).

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::domain::rtt::Clock;
use crate::model::{Note, Referral, ServiceEntry};
use crate::referrals::{NewReferral, local_date, new_referral};
use crate::store;

/// Referrals written by one statement (31 parameters each).
pub const REFERRALS_PER_STATEMENT: usize = 1_000;
/// Notes written by one statement (11 parameters each).
pub const NOTES_PER_STATEMENT: usize = 4_000;

/// The referral `CreateReferral` makes of `new` for `service`, created `at`: awaiting triage, its
/// clock started on the (UK) day it was received, of the service's organisation, with the stuck
/// deadline the service sets for new referrals of its priority.
pub fn received(new: &NewReferral, service: &ServiceEntry, at: DateTime<Utc>) -> Referral {
    new_referral(new, new.patient_id, service, Clock::start(local_date(new.received_at)), new.received_at, at)
}

/// Stores `services` in one transaction, each as the API stores it; returns how many were new (a
/// code already taken is left as it is). `pool`: the referrals service's own
/// (`pac_referrals::connect`).
pub async fn load_services(pool: &PgPool, services: &[ServiceEntry]) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut stored = 0;
    for service in services {
        stored += u64::from(store::insert_service(&mut tx, service).await?);
    }
    tx.commit().await?;
    Ok(stored)
}

/// Stores `referrals` (their services loaded first) in statements of [`REFERRALS_PER_STATEMENT`];
/// returns how many were stored. Each statement commits on its own. The schema's checks hold as for
/// any referral (a booked one has its live appointment, a running clock no end, …). Task counts are
/// not written: they follow the referral's tasks ([`load_notes`]).
pub async fn load_referrals(pool: &PgPool, referrals: &[Referral]) -> Result<u64, sqlx::Error> {
    let mut loaded = 0;
    for chunk in referrals.chunks(REFERRALS_PER_STATEMENT) {
        let mut statement = QueryBuilder::<Postgres>::new(
            "INSERT INTO referrals.referrals (id, version, patient_id, service_code, priority, status, referrer_organisation, \
                 referrer_clinician, source, reason, information, received_at, clock_code, clock_state, clock_started, clock_ended, \
                 appointment_ids, current_appointment_id, rebook_reason, dna_follow_up, missed_appointment_ids, \
                 attended_appointment_ids, triage_code, triage_text, redirected_to, redirected_from, status_since, stuck_after, \
                 created_at, updated_at, organisation) ",
        );
        statement.push_values(chunk, |mut row, r| {
            row.push_bind(r.id)
                .push_bind(r.version)
                .push_bind(r.patient_id)
                .push_bind(r.service_code.clone())
                .push_bind(r.priority.value())
                .push_bind(r.status.code())
                .push_bind(r.referrer_organisation.clone())
                .push_bind(r.referrer_clinician.clone())
                .push_bind(r.source.clone())
                .push_bind(r.reason.clone())
                .push_bind(r.information.clone())
                .push_bind(r.received_at)
                .push_bind(r.clock.code.value() as i16)
                .push_bind(r.clock.state.code())
                .push_bind(r.clock.started)
                .push_bind(r.clock.ended)
                .push_bind(r.appointment_ids.clone())
                .push_bind(r.current_appointment_id)
                .push_bind(r.rebook_reason.map(|reason| reason.code()))
                .push_bind(r.dna_follow_up)
                .push_bind(r.missed.clone())
                .push_bind(r.attended.clone())
                .push_bind(r.triage_code.clone())
                .push_bind(r.triage_text.clone())
                .push_bind(r.redirected_to)
                .push_bind(r.redirected_from)
                .push_bind(r.status_since)
                .push_bind(r.stuck_after)
                .push_bind(r.created_at)
                .push_bind(r.updated_at)
                .push_bind(r.organisation.clone());
        });
        loaded += statement.build().execute(pool).await?.rows_affected();
    }
    Ok(loaded)
}

/// Stores `notes` and tasks (their referrals loaded first) in statements of
/// [`NOTES_PER_STATEMENT`]; each open task counts on its referral (unassigned when it names no
/// team), as one added by `AddNote` does. Returns how many were stored.
pub async fn load_notes(pool: &PgPool, notes: &[Note]) -> Result<u64, sqlx::Error> {
    let mut loaded = 0;
    for chunk in notes.chunks(NOTES_PER_STATEMENT) {
        let mut statement = QueryBuilder::<Postgres>::new(
            "INSERT INTO referrals.notes (id, referral_id, task, text, team, due_date, completed_at, author_subject, author_role, \
                                          author_organisation, created_at) ",
        );
        statement.push_values(chunk, |mut row, n| {
            row.push_bind(n.id)
                .push_bind(n.referral_id)
                .push_bind(n.task)
                .push_bind(n.text.clone())
                .push_bind(n.team.clone())
                .push_bind(n.due_date)
                .push_bind(n.completed_at)
                .push_bind(n.author.subject.clone())
                .push_bind(n.author.role.clone())
                .push_bind(n.author.organisation.clone())
                .push_bind(n.created_at);
        });
        loaded += statement.build().execute(pool).await?.rows_affected();
    }
    Ok(loaded)
}
