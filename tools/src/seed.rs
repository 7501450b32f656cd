//! `pac-load seed`: bulk data for a deployment's database, written through each service's own bulk
//! loader (`pac_records::bulk`, `pac_scheduling::bulk`, `pac_referrals::bulk`) over the service's
//! own database role, never by SQL of its own. The benchmarks seed with the same functions.
//!
//! The database is the one `pac migrate` and the services use: `DATABASE_URL` (administrator),
//! `PAC_DB_ROLE_PASSWORD`, or each service's `PAC_<SERVICE>_DATABASE_URL`. Every seed's ids are its
//! own (a random id space, printed), so seeding twice adds twice.

use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Duration, DurationRound, Utc};
use clap::{Args, Subcommand};
use pac_platform::PlatformConfig;
use pac_platform::config::Environment;
use pac_records::domain::patient::PatientRecord;
use pac_referrals::domain::eligibility::{Priority, Rules};
use pac_referrals::domain::referral::{RebookReason, Status};
use pac_referrals::domain::rtt::{ClockEvent, Code, LaterDnaPolicy};
use pac_referrals::domain::worklist::Threshold;
use pac_referrals::model::{Note, Referral, ServiceEntry};
use pac_referrals::referrals::NewReferral;
use pac_scheduling::model::{Clinic, Location, Slot};
use sqlx::PgPool;

use crate::people::{self, Kind, Rng, numbered};

#[derive(Args)]
pub struct SeedArgs {
    #[command(subcommand)]
    what: What,
    /// The organisation (ODS code) everything seeded belongs to.
    #[arg(long, global = true, default_value = pac_gateway::DEVELOPMENT_ORGANISATION)]
    organisation: String,
}

#[derive(Subcommand)]
enum What {
    /// Patients searchable by name (common and rare), birth date, district and phone.
    Patients {
        #[arg(long)]
        count: u64,
    },
    /// A clinic directory (locations; clinics offering service codes SEED-n at every location) and
    /// quarter-hour slots from tomorrow, spread over the clinics.
    Slots {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 20)]
        clinics: u64,
        #[arg(long, default_value_t = 5)]
        services: u64,
        #[arg(long, default_value_t = 2)]
        locations: u64,
        #[arg(long, default_value_t = 1)]
        capacity: i32,
        /// Slots already full, in percent.
        #[arg(long, default_value_t = 0)]
        full_percent: u32,
    },
    /// Referral services (SEED-n) and referrals in every worklist's state, of patients seeded with them.
    Referrals {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 10)]
        services: u64,
        /// Patients the referrals are of (seeded too); default a third of the referrals.
        #[arg(long)]
        patients: Option<u64>,
    },
}

pub async fn run(args: SeedArgs) -> anyhow::Result<()> {
    let mut platform = PlatformConfig::from_env(Environment::Development)?;
    platform.db.max_connections = 2;
    // A bulk statement takes longer than an API call's.
    platform.db.statement_timeout = std::time::Duration::from_secs(300);
    let space = (Utc::now().timestamp_micros() as u64 % u64::from(u32::MAX)) as u32 | 1;
    let organisation = args.organisation.to_uppercase();
    let started = Instant::now();
    let (what, count) = match args.what {
        What::Patients { count } => {
            let pool = records_pool(&platform).await?;
            patients(&pool, space, 0..count, &organisation).await?;
            ("patients", count)
        }
        What::Slots { count, clinics, services, locations, capacity, full_percent } => {
            anyhow::ensure!(clinics > 0 && services > 0 && locations > 0, "--clinics, --services and --locations must be positive");
            let pool = pac_scheduling::connect(&platform, &pac_scheduling::SchedulingConfig::from_env()?).await?;
            let clinics = directory(&pool, space, clinics, services, locations, "SEED", &organisation).await?;
            slots(&pool, space, 0..count, &clinics, capacity, full_percent, first_slot_start()).await?;
            ("slots", count)
        }
        What::Referrals { count, services, patients: people } => {
            anyhow::ensure!(services > 0, "--services must be positive");
            let people = people.unwrap_or(count / 3).max(1);
            let records = records_pool(&platform).await?;
            patients(&records, space, 0..people, &organisation).await?;
            let pool = pac_referrals::connect(&platform, &pac_referrals::ReferralsConfig::from_env()?).await?;
            let services = referral_services(&pool, services, "SEED", &organisation).await?;
            referrals(&pool, space, 0..count, &services, people).await?;
            ("referrals", count)
        }
    };
    println!("seeded {count} {what} for {organisation} in {:.1} s (ids {space:08x}-0000-4000-…)", started.elapsed().as_secs_f64());
    Ok(())
}

async fn records_pool(platform: &PlatformConfig) -> anyhow::Result<PgPool> {
    pac_records::connect(platform, &pac_records::RecordsConfig::from_env(platform)?).await
}

/// Patients `numbers` (ids numbered in `space`), searchable people of `organisation`, loaded by the
/// records service's bulk loader in batches, then `records.patients` analysed. Only that table, as
/// the benchmarks always have: whether the others have statistics changes how Postgres plans every
/// patient read (see BENCHMARKS.md, 2026-12-04), and the benchmarks' figures stay comparable.
pub async fn patients(pool: &PgPool, space: u32, numbers: std::ops::Range<u64>, organisation: &str) -> anyhow::Result<()> {
    let (family, given) = people::names();
    let rules = pac_records::convert::Rules { accept_test_nhs_numbers: true, today: Utc::now().date_naive() };
    let at = pac_platform::now();
    const BATCH: u64 = 20_000;
    let mut start = numbers.start;
    while start < numbers.end {
        let end = (start + BATCH).min(numbers.end);
        let records: Vec<PatientRecord> = (start..end)
            .map(|i| {
                let mut rng = Rng(0x5eed_0000_0000 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                let person = people::searchable_person(i, &family, &given, &mut rng);
                let mut record = pac_records::bulk::record(&person, organisation, rules, at)
                    .map_err(|violations| anyhow::anyhow!("made-up patient {i} is not valid: {violations:?}"))?;
                record.id = numbered(Kind::Patient, space, i);
                Ok(record)
            })
            .collect::<anyhow::Result<_>>()?;
        pac_records::bulk::load_patients(pool, &records).await.context("loading patients")?;
        start = end;
    }
    sqlx::raw_sql("ANALYZE records.patients").execute(pool).await?;
    Ok(())
}

/// `count` locations and `clinics` clinics: clinic i offers `<prefix>-(i % codes)` at location
/// `i / codes % locations`, so that every service is at every location. Ids numbered in `space`.
pub async fn directory(
    pool: &PgPool,
    space: u32,
    clinics: u64,
    codes: u64,
    locations: u64,
    prefix: &str,
    organisation: &str,
) -> anyhow::Result<Vec<Clinic>> {
    let sites: Vec<Location> = (0..locations)
        .map(|n| Location {
            id: numbered(Kind::Location, space, n),
            name: format!("Site {n}"),
            address_lines: vec![format!("{} Infirmary Street", n + 1)],
            locality: "Leeds".into(),
            postcode: "LS1 3EX".into(),
            directions: "Main entrance, then follow the signs".into(),
            access_notes: vec!["Step-free access".into()],
            parking: "Multi-storey opposite".into(),
        })
        .collect();
    let clinics: Vec<Clinic> = (0..clinics)
        .map(|n| Clinic {
            id: numbered(Kind::Clinic, space, n),
            location_id: sites[((n / codes) % locations) as usize].id,
            name: format!("Clinic {n}"),
            specialty: "General".into(),
            service_code: format!("{prefix}-{}", n % codes),
            time_zone: "Europe/London".into(),
            what_to_bring: vec!["A list of your medicines".into()],
            organisation: organisation.to_string(),
        })
        .collect();
    pac_scheduling::bulk::load_directory(pool, &sites, &clinics).await.map_err(|e| anyhow::anyhow!("loading the directory: {e:?}"))?;
    Ok(clinics)
}

/// The start of the first seeded slot: the next whole hour a day from now.
pub fn first_slot_start() -> DateTime<Utc> {
    (Utc::now() + Duration::days(1)).duration_trunc(Duration::hours(1)).expect("an hour")
}

/// Slots `numbers` (ids numbered in `space`), 10 minutes long: slot i is clinic `i % clinics`'s, and
/// starts `(i mod 2^32) / clinics` quarter-hours after `first`, so a clinic's slots never overlap
/// (numbers 2^32 apart share a start). `full_percent` of them are full.
pub async fn slots(
    pool: &PgPool,
    space: u32,
    numbers: std::ops::Range<u64>,
    clinics: &[Clinic],
    capacity: i32,
    full_percent: u32,
    first: DateTime<Utc>,
) -> anyhow::Result<()> {
    const BATCH: u64 = 100_000;
    let count = clinics.len() as u64;
    let mut start = numbers.start;
    while start < numbers.end {
        let end = (start + BATCH).min(numbers.end);
        let batch: Vec<Slot> = (start..end)
            .map(|i| {
                let clinic = &clinics[(i % count) as usize];
                let at = first + Duration::minutes(15 * ((i & 0xffff_ffff) / count) as i64);
                let mut slot = pac_scheduling::bulk::slot(clinic, at, 10, capacity);
                slot.id = numbered(Kind::Slot, space, i);
                if Rng(0x510f ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1).fraction() * 100.0 < f64::from(full_percent) {
                    slot.occupied = capacity;
                }
                slot
            })
            .collect();
        pac_scheduling::bulk::load_slots(pool, &batch).await.map_err(|e| anyhow::anyhow!("loading slots: {e:?}"))?;
        start = end;
    }
    sqlx::raw_sql("ANALYZE scheduling.slots").execute(pool).await?;
    Ok(())
}

/// `count` referral services `<prefix>-n` of `organisation`: a 42-day target, later missed
/// appointments rebooked, two-week waits stuck after two working days awaiting triage.
pub async fn referral_services(pool: &PgPool, count: u64, prefix: &str, organisation: &str) -> anyhow::Result<Vec<ServiceEntry>> {
    let services: Vec<ServiceEntry> = (0..count)
        .map(|n| ServiceEntry {
            code: format!("{prefix}-{n}"),
            name: format!("Service {n}"),
            specialty: "General".into(),
            rules: Rules::default(),
            target_wait_days: 42,
            thresholds: vec![Threshold {
                status: Status::AwaitingTriage.code().into(),
                priority: Priority::TwoWeekWait.value(),
                working_days: 2,
            }],
            later_dna: LaterDnaPolicy::Rebook,
            created_at: pac_platform::now(),
            organisation: organisation.to_string(),
        })
        .collect();
    pac_referrals::bulk::load_services(pool, &services).await.context("loading referral services")?;
    Ok(services)
}

/// Referrals `numbers` (ids numbered in `space`) of patients numbered `0..patients`: service
/// `(i * 7) % services`; 70% routine, 20% urgent, 10% two-week wait; 20% awaiting triage, 25%
/// awaiting booking, 15% booked, 5% awaiting information, 35% completed; received over the last
/// 300 days; 1 in 50 of those awaiting booking after a missed appointment; 1 in 97 open ones with
/// an unassigned task.
pub async fn referrals(
    pool: &PgPool,
    space: u32,
    numbers: std::ops::Range<u64>,
    services: &[ServiceEntry],
    patients: u64,
) -> anyhow::Result<()> {
    const STATUSES: [Status; 20] = {
        use Status::*;
        [
            AwaitingTriage,
            AwaitingTriage,
            AwaitingTriage,
            AwaitingTriage,
            AwaitingBooking,
            AwaitingBooking,
            AwaitingBooking,
            AwaitingBooking,
            AwaitingBooking,
            Booked,
            Booked,
            Booked,
            AwaitingInformation,
            Completed,
            Completed,
            Completed,
            Completed,
            Completed,
            Completed,
            Completed,
        ]
    };
    const BATCH: u64 = 50_000;
    let now = pac_platform::now();
    let author = pac_platform::Actor { subject: "pac-load-seed".into(), role: "coordinator".into(), organisation: String::new() };
    let mut start = numbers.start;
    while start < numbers.end {
        let end = (start + BATCH).min(numbers.end);
        let mut batch = Vec::with_capacity((end - start) as usize);
        let mut tasks = Vec::new();
        for i in start..end {
            let service = &services[((i * 7) % services.len() as u64) as usize];
            let priority = match i % 10 {
                0..=6 => Priority::Routine,
                7 | 8 => Priority::Urgent,
                _ => Priority::TwoWeekWait,
            };
            let received_at = now - Duration::days(((i * 7919) % 300) as i64) - Duration::seconds((i % 86_400) as i64);
            let new = NewReferral {
                patient_id: numbered(Kind::Patient, space, i % patients.max(1)),
                service_code: service.code.clone(),
                priority,
                referrer_organisation: "B86001".into(),
                referrer_clinician: "Dr Seed".into(),
                source: "GP".into(),
                reason: "Seeded referral".into(),
                information: Vec::new(),
                received_at,
            };
            let mut referral: Referral = pac_referrals::bulk::received(&new, service, now);
            referral.id = numbered(Kind::Referral, space, i);
            let status = STATUSES[(((i / 10) * 13) % 20) as usize];
            match status {
                Status::Booked => {
                    let appointment = numbered(Kind::Appointment, space, i);
                    referral.appointment_ids = vec![appointment];
                    referral.current_appointment_id = Some(appointment);
                }
                Status::AwaitingBooking if i % 50 == 0 => {
                    let missed = numbered(Kind::MissedAppointment, space, i);
                    referral.appointment_ids = vec![missed];
                    referral.missed = vec![missed];
                    referral.rebook_reason = Some(RebookReason::DidNotAttend);
                    referral.dna_follow_up = true;
                }
                Status::Completed => {
                    let treated = referral.clock.started + Duration::days(60);
                    referral.clock = referral
                        .clock
                        .apply(ClockEvent::Stop(Code::FirstTreatment), treated, LaterDnaPolicy::Rebook)
                        .map_err(|e| anyhow::anyhow!("stopping a seeded clock: {e:?}"))?;
                }
                _ => {}
            }
            referral.enter(status, received_at, service);
            if !status.is_terminal() && i % 97 == 0 {
                tasks.push(Note {
                    id: uuid::Uuid::now_v7(),
                    referral_id: referral.id,
                    task: true,
                    text: "Call the patient to agree a date".into(),
                    team: String::new(),
                    due_date: Some(received_at.date_naive() + Duration::days(14)),
                    completed_at: None,
                    author: author.clone(),
                    created_at: received_at,
                });
            }
            batch.push(referral);
        }
        pac_referrals::bulk::load_referrals(pool, &batch).await.context("loading referrals")?;
        pac_referrals::bulk::load_notes(pool, &tasks).await.context("loading tasks")?;
        start = end;
    }
    sqlx::raw_sql("ANALYZE referrals.referrals").execute(pool).await?;
    Ok(())
}
