//! `pac-load bench book` and `pac-load bench slots`: the scheduling service's measurements, over real gRPC on
//! loopback against a real Postgres, each with its baseline in the same run.
//!
//! - `book`: BookAppointment on distinct slots (the records check included) against pgbench running
//!   the same statements (the records lookup, the idempotency claim, the place, the appointment, the
//!   waitlist close, the event and the idempotency record) in one transaction; then a stampede of
//!   clients on a few slots, counted.
//! - `slots`: SearchSlots latency with a small and then a large number of slots in the table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::future::join_all;
use pac_proto::scheduling as pb;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::bench::{Bench, Latencies, latencies, median, ms, pgbench, throughput, verdict};
use crate::people::{Kind, Rng, numbered};

/// Ids the seed gives patients and slots, so pgbench can name them from a number.
fn patient_id(n: u64) -> Uuid {
    numbered(Kind::Patient, 0, n)
}
fn slot_id(n: u64) -> Uuid {
    numbered(Kind::Slot, 0, n)
}
const PATIENTS: u64 = 1_000;
/// Slots booked over gRPC are 1..=`slots`; pgbench books PGBENCH_BASE+1..=PGBENCH_BASE+`slots`
/// (capacity 100, so its random picks never fill one).
const PGBENCH_BASE: u64 = 1 << 32;

async fn clients(bench: &Bench, count: usize) -> anyhow::Result<Vec<SchedulingClient<Channel>>> {
    let mut clients = Vec::new();
    for _ in 0..count {
        let channel = Endpoint::from_shared(format!("http://{}", bench.scheduling))?.connect().await?;
        clients.push(SchedulingClient::new(channel));
    }
    Ok(clients)
}

/// The statements BookAppointment runs for a direct booking with a request id, the records
/// service's patient lookup first, as one pgbench transaction (with the patient's merge guard and
/// merged-record lookup, `pac_platform::merges`).
fn pgbench_booking_script(slots: u64) -> String {
    format!(
        r#"\set s random({first}, {last})
\set p random(1, {PATIENTS})
\set r random(1, 1000000000)
SELECT p.id, p.version, p.nhs_number, p.nhs_number_status, p.given_name, p.family_name, p.birth_date, p.sex, p.address_lines, p.locality, p.district, p.postcode, p.country, p.phone, p.email, p.gp_practice_code, p.preferred_language, p.interpreter_needed, p.accessibility_needs, p.preferred_contact_method, p.consented_contact_methods, p.restricted, p.merged_into, p.created_at, p.updated_at, ARRAY(SELECT l.issuer FROM records.local_identifiers l WHERE l.patient_id = p.id ORDER BY l.issuer, l.value) AS local_issuers, ARRAY(SELECT l.value FROM records.local_identifiers l WHERE l.patient_id = p.id ORDER BY l.issuer, l.value) AS local_values FROM records.patients p WHERE p.id = ('00000000-0000-4000-9000-' || lpad(to_hex(:p::bigint), 12, '0'))::uuid;
BEGIN;
SELECT pg_advisory_xact_lock(hashtextextended('scheduling' || chr(58) || 'BookAppointment' || chr(58) || 'pgb-' || CAST(:s AS text) || '-' || CAST(:r AS text), 0));
SELECT request_hash, response FROM scheduling.idempotency WHERE operation = 'BookAppointment' AND request_id = 'pgb-' || CAST(:s AS text) || '-' || CAST(:r AS text);
SELECT pg_advisory_xact_lock_shared(hashtextextended('scheduling' || '.patient' || chr(58) || ('00000000-0000-4000-9000-' || lpad(to_hex(:p::bigint), 12, '0')), 0));
SELECT survivor_id FROM scheduling.merged_patients WHERE merged_id = ('00000000-0000-4000-9000-' || lpad(to_hex(:p::bigint), 12, '0'))::uuid;
UPDATE scheduling.slots SET occupied = occupied + 1 WHERE id = ('00000000-0000-4000-8000-' || lpad(to_hex(:s::bigint), 12, '0'))::uuid AND withdrawn_at IS NULL RETURNING id, clinic_id, service_code, location_id, start_time, end_time, local_date, local_start, capacity, occupied \gset slot_
INSERT INTO scheduling.appointments (id, version, slot_id, clinic_id, patient_id, referral_id, status, start_time, end_time, hold_expires_at, created_at, updated_at, service_code) VALUES (gen_random_uuid(), 1, :slot_id::uuid, :slot_clinic_id::uuid, gen_random_uuid(), NULL, 'booked', :slot_start_time::timestamptz, :slot_end_time::timestamptz, NULL, now(), now(), :slot_service_code);
UPDATE scheduling.waitlist_entries SET closed_at = now(), close_reason = 'booked' WHERE patient_id = gen_random_uuid() AND closed_at IS NULL AND (clinic_id = :slot_clinic_id::uuid OR service_code = :slot_service_code);
INSERT INTO scheduling.outbox (event_id, event_type, aggregate_id, payload, actor_subject, actor_role, actor_organisation, request_id, trace_id, organisation, patient_ids) VALUES (gen_random_uuid(), 'AppointmentBooked', gen_random_uuid(), decode(repeat('0a', 260), 'hex'), 'anonymous', 'anonymous', '', 'pgb-' || CAST(:s AS text) || '-' || CAST(:r AS text), NULL, '', ARRAY[gen_random_uuid()]);
INSERT INTO scheduling.idempotency (operation, request_id, request_hash, response) VALUES ('BookAppointment', 'pgb-' || CAST(:s AS text) || '-' || CAST(:r AS text), decode(repeat('ab', 32), 'hex'), decode(repeat('0a', 250), 'hex')) ON CONFLICT DO NOTHING;
END;
"#,
        first = PGBENCH_BASE + 1,
        last = PGBENCH_BASE + slots,
    )
}

/// Books distinct slots for `seconds` with `concurrency` requests in flight; bookings per second.
async fn booking_load(
    clients: &[SchedulingClient<Channel>],
    next_slot: Arc<AtomicU64>,
    slots: u64,
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<f64> {
    throughput(clients, seconds, concurrency, "booking", move |mut client: SchedulingClient<Channel>, worker, n| {
        let next_slot = next_slot.clone();
        async move {
            let slot = next_slot.fetch_add(1, Ordering::Relaxed);
            if slot > slots {
                return Err(tonic::Status::resource_exhausted("the benchmark ran out of seeded slots"));
            }
            let request = pb::BookAppointmentRequest {
                target: Some(pb::book_appointment_request::Target::SlotId(slot_id(slot).to_string())),
                patient_id: patient_id(1 + (Rng(0xb00c_0000 ^ (worker << 32) ^ n).next() % PATIENTS)).to_string(),
                referral_id: String::new(),
                request_id: format!("bench-{slot}"),
            };
            client.book_appointment(request).await.map(drop)
        }
    })
    .await
}

/// `clients` clients each try every one of `slots` single-place slots at once; returns (booked,
/// refused as unavailable, other errors) over all slots, and whether each slot got exactly one.
async fn stampede(
    bench_clients: &[SchedulingClient<Channel>],
    first_slot: u64,
    slots: u64,
    clients: usize,
) -> (usize, usize, Vec<Code>, bool) {
    let (mut booked, mut refused, mut other, mut exactly_one) = (0, 0, Vec::new(), true);
    for s in 0..slots {
        let attempts = (0..clients).map(|c| {
            let mut client = bench_clients[c % bench_clients.len()].clone();
            async move {
                client
                    .book_appointment(pb::BookAppointmentRequest {
                        target: Some(pb::book_appointment_request::Target::SlotId(slot_id(first_slot + s).to_string())),
                        patient_id: patient_id(1 + c as u64).to_string(),
                        ..Default::default()
                    })
                    .await
            }
        });
        let results = join_all(attempts).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        exactly_one &= ok == 1;
        booked += ok;
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            match error.code() {
                Code::FailedPrecondition => refused += 1,
                code => other.push(code),
            }
        }
    }
    (booked, refused, other, exactly_one)
}

pub async fn book(seconds: u64, concurrency: usize, runs: usize, slots: u64) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bench = Bench::start("pac_bench_book").await?;
    let records = bench.records_pool().await?;
    crate::seed::patients(&records, 0, 1..PATIENTS + 1, "RR8").await?;
    let pool = bench.scheduling_pool().await?;
    let clinics = crate::seed::directory(&pool, 0, 1, 1, 1, "SVC", "RR8").await?;
    let first = crate::seed::first_slot_start();
    crate::seed::slots(&pool, 0, 1..slots + 1, &clinics, 1, 0, first).await?;
    crate::seed::slots(&pool, 0, PGBENCH_BASE + 1..PGBENCH_BASE + slots + 1, &clinics, 100, 0, first).await?;
    let clients = clients(&bench, 4).await?;
    let next_slot = Arc::new(AtomicU64::new(1));
    booking_load(&clients, next_slot.clone(), slots, 2, concurrency).await?; // warm-up
    let script = pgbench_booking_script(slots);
    let (mut baseline, mut platform) = (Vec::new(), Vec::new());
    for round in 0..runs {
        let (url, sql) = (bench.admin_url.clone(), script.clone());
        let tps = tokio::task::spawn_blocking(move || pgbench(&url, "book", &sql, seconds, 16)).await??;
        let rps = booking_load(&clients, next_slot.clone(), slots, seconds, concurrency).await?;
        eprintln!("round {}: pgbench {tps:.0} bookings/s, gRPC {rps:.0} bookings/s", round + 1);
        baseline.push(tps);
        platform.push(rps);
    }
    let ratio = median(&platform) / median(&baseline);
    println!(
        "\nBookAppointment over gRPC ({concurrency} in flight, 4 connections, distinct slots, patient checked with records over gRPC) \
         vs pgbench (16 clients) running the same statements, {seconds} s each, alternating\n"
    );
    println!("| round | pgbench bookings/s | BookAppointment/s |");
    println!("|---:|---:|---:|");
    for (round, (tps, rps)) in baseline.iter().zip(&platform).enumerate() {
        println!("| {} | {tps:.0} | {rps:.0} |", round + 1);
    }
    println!("| median | {:.0} | {:.0} |", median(&baseline), median(&platform));
    println!("\nratio median(gRPC)/median(pgbench): {ratio:.2} (bar: >= 0.50) {}", verdict(ratio >= 0.5));

    // Stampede: 64 clients on each of 20 single-place slots not yet booked.
    let first = next_slot.fetch_add(100, Ordering::Relaxed);
    let (slots, stampeders) = (20, 64);
    let (booked, refused, other, exactly_one) = stampede(&clients, first, slots, stampeders).await;
    println!(
        "\nStampede: {stampeders} clients at once on each of {slots} single-place slots: {booked} booked, {refused} SLOT_UNAVAILABLE, \
         {} other errors {:?}; exactly one per slot: {} {}",
        other.len(),
        other,
        exactly_one,
        verdict(exactly_one && other.is_empty())
    );
    Ok(())
}

/// The SearchSlots query mix: by clinic, by service code, by service code at a location, and by
/// service code from a later start (a page deep into the horizon).
pub(crate) fn slot_queries(
    count: usize,
    clinics: i64,
    codes: i64,
    locations: i64,
    span_days: i64,
    rng: &mut Rng,
) -> Vec<(&'static str, pb::SearchSlotsRequest)> {
    use pb::search_slots_request::Target;
    let clinic = |i: usize| numbered(Kind::Clinic, 0, i as u64).to_string();
    let location = |i: usize| numbered(Kind::Location, 0, i as u64).to_string();
    (0..count)
        .map(|n| {
            let code = format!("SVC-{}", rng.below(codes as usize));
            match n % 4 {
                0 => (
                    "clinic",
                    pb::SearchSlotsRequest { target: Some(Target::ClinicId(clinic(rng.below(clinics as usize)))), ..Default::default() },
                ),
                1 => ("service", pb::SearchSlotsRequest { target: Some(Target::ServiceCode(code)), ..Default::default() }),
                2 => (
                    "service at location",
                    pb::SearchSlotsRequest {
                        target: Some(Target::ServiceCode(code)),
                        location_id: location(rng.below(locations as usize)),
                        ..Default::default()
                    },
                ),
                _ => {
                    let start = chrono::Utc::now() + chrono::Duration::days(1 + rng.below((span_days * 4 / 5).max(1) as usize) as i64);
                    (
                        "service, later window",
                        pb::SearchSlotsRequest {
                            target: Some(Target::ServiceCode(code)),
                            start_time: Some(pac_platform::convert::timestamp(start)),
                            end_time: Some(pac_platform::convert::timestamp(start + chrono::Duration::days(14))),
                            ..Default::default()
                        },
                    )
                }
            }
        })
        .collect()
}

async fn measure_slots(
    clients: &[SchedulingClient<Channel>],
    queries: Vec<(&'static str, pb::SearchSlotsRequest)>,
) -> anyhow::Result<Vec<(&'static str, Duration, usize)>> {
    latencies(clients, queries, |mut client: SchedulingClient<Channel>, request| async move {
        Ok(client.search_slots(request).await?.into_inner().slots.len())
    })
    .await
}

pub async fn slots(small: i64, large: i64, queries: usize, concurrency: usize) -> anyhow::Result<()> {
    let (clinics, codes, locations) = (200, 20, 10);
    let bench = Bench::start("pac_bench_slots").await?;
    let admin = bench.admin().await?;
    let pool = bench.scheduling_pool().await?;
    let directory = crate::seed::directory(&pool, 0, clinics as u64, codes as u64, locations as u64, "SVC", "RR8").await?;
    let first = crate::seed::first_slot_start();
    let clients = clients(&bench, concurrency).await?;
    let mut results = Vec::new();
    let mut seeded = 0;
    for size in [small, large] {
        let started = Instant::now();
        // Two slots in three are already full: search must skip them.
        crate::seed::slots(&pool, 0, seeded as u64..size as u64, &directory, 1, 67, first).await?;
        sqlx::raw_sql("VACUUM ANALYZE scheduling.slots").execute(&admin).await?;
        seeded = size;
        eprintln!("seeded {size} slots in {:.0} s", started.elapsed().as_secs_f64());
        let mut rng = Rng(0x5107_0000u64.wrapping_add(size as u64));
        // Each clinic has size / clinics quarter-hour slots.
        let span_days = size / clinics / 96;
        measure_slots(&clients, slot_queries(queries / 5, clinics, codes, locations, span_days, &mut rng)).await?; // warm-up
        let timings = measure_slots(&clients, slot_queries(queries, clinics, codes, locations, span_days, &mut rng)).await?;
        let empty = timings.iter().filter(|(_, _, found)| *found == 0).count();
        if empty > queries / 10 {
            bail!("{empty} of {queries} searches found nothing: the seed does not match the queries");
        }
        results.push((size, timings));
    }
    println!("\nSearchSlots over gRPC, {concurrency} concurrent clients, {queries} queries per size, 20 slots a page\n");
    println!("| slots | p50 | p95 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|");
    let all = |timings: &Vec<(&str, Duration, usize)>| Latencies(timings.iter().map(|(_, d, _)| *d).collect());
    for (size, timings) in &results {
        let l = all(timings);
        println!(
            "| {size} | {} | {} | {} | {} |",
            ms(l.percentile(0.5)),
            ms(l.percentile(0.95)),
            ms(l.percentile(0.99)),
            ms(l.percentile(1.0))
        );
    }
    println!("\nBy query kind (p50 / p99):\n");
    println!("| kind | {} | {} |", results[0].0, results[1].0);
    println!("|---|---:|---:|");
    for kind in ["clinic", "service", "service at location", "service, later window"] {
        let of =
            |timings: &Vec<(&str, Duration, usize)>| Latencies(timings.iter().filter(|(k, _, _)| *k == kind).map(|(_, d, _)| *d).collect());
        let (a, b) = (of(&results[0].1), of(&results[1].1));
        println!(
            "| {kind} | {} / {} | {} / {} |",
            ms(a.percentile(0.5)),
            ms(a.percentile(0.99)),
            ms(b.percentile(0.5)),
            ms(b.percentile(0.99))
        );
    }
    let p99 = all(&results[1].1).percentile(0.99);
    let ratio = all(&results[1].1).percentile(0.5).as_secs_f64() / all(&results[0].1).percentile(0.5).as_secs_f64();
    println!("\np50 ratio {large}/{small}: {ratio:.2}");
    println!("p99 at {large} slots: {} (bar: < 25 ms) {}", ms(p99), verdict(p99 < Duration::from_millis(25)));
    Ok(())
}
