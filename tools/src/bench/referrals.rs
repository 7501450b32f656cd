//! `pac-load bench worklist` and `pac-load bench event-lag`: the referrals service's measurements, over real
//! gRPC on loopback against a real Postgres.
//!
//! - `worklist`: ListReferrals latency for the coordinators' worklists with a small and then a large
//!   number of referrals in the table (seeded through the service's bulk loader).
//! - `event-lag`: bookings made for accepted referrals at a steady rate; for each, the time from
//!   BookAppointment's answer to the referral's `ReferralBooked` event on its WatchEvents stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Datelike;
use futures::StreamExt;
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::referrals as pb;
use pac_proto::referrals::referrals_client::ReferralsClient;
use pac_proto::scheduling as sched;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use tonic::transport::{Channel, Endpoint};

use crate::bench::{Bench, Latencies, latencies, ms, verdict};
use crate::people::Rng;

const SERVICES: i64 = 41;

async fn channels(address: std::net::SocketAddr, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..count {
        channels.push(Endpoint::from_shared(format!("http://{address}"))?.connect().await?);
    }
    Ok(channels)
}

fn worklist_queries(count: usize, rng: &mut Rng, page_two: &[(String, String)]) -> Vec<(&'static str, pb::ListReferralsRequest)> {
    use pb::{Priority as P, ReferralStatus as S};
    (0..count)
        .map(|n| {
            let service = format!("SVC-{}", rng.below(SERVICES as usize));
            let request = |statuses: Vec<S>| pb::ListReferralsRequest {
                statuses: statuses.into_iter().map(|s| s as i32).collect(),
                page_size: 50,
                ..Default::default()
            };
            match n % 8 {
                0 => {
                    ("awaiting triage, one service", pb::ListReferralsRequest { service_code: service, ..request(vec![S::AwaitingTriage]) })
                }
                1 => ("awaiting booking, all services", request(vec![S::AwaitingBooking])),
                2 => ("every open referral", request(vec![])),
                3 => (
                    "two-week waits breaching in 14 days",
                    pb::ListReferralsRequest {
                        priorities: vec![P::TwoWeekWait as i32],
                        breaching_within_days: Some(14),
                        ..request(vec![])
                    },
                ),
                4 => ("DNA follow-up", pb::ListReferralsRequest { dna_follow_up: true, ..request(vec![]) }),
                5 => (
                    "unassigned tasks, one service",
                    pb::ListReferralsRequest { unassigned_tasks: true, service_code: service, ..request(vec![]) },
                ),
                6 => ("stuck", pb::ListReferralsRequest { stuck: true, ..request(vec![S::AwaitingTriage]) }),
                _ => {
                    let (service, token) = page_two[rng.below(page_two.len())].clone();
                    (
                        "awaiting booking, one service, page 2",
                        pb::ListReferralsRequest { service_code: service, page_token: token, ..request(vec![S::AwaitingBooking]) },
                    )
                }
            }
        })
        .collect()
}

const KINDS: [&str; 8] = [
    "awaiting triage, one service",
    "awaiting booking, all services",
    "every open referral",
    "two-week waits breaching in 14 days",
    "DNA follow-up",
    "unassigned tasks, one service",
    "stuck",
    "awaiting booking, one service, page 2",
];

async fn measure(
    clients: &[ReferralsClient<Channel>],
    queries: Vec<(&'static str, pb::ListReferralsRequest)>,
) -> anyhow::Result<Vec<(&'static str, Duration, usize)>> {
    latencies(clients, queries, |mut client: ReferralsClient<Channel>, request| async move {
        client.list_referrals(request).await.map(|r| r.into_inner().referrals.len())
    })
    .await
}

pub async fn worklist(small: i64, large: i64, queries: usize, concurrency: usize) -> anyhow::Result<()> {
    let bench = Bench::start("pac_bench_worklist").await?;
    let pool = bench.referrals_pool().await?;
    let services = crate::seed::referral_services(&pool, SERVICES as u64, "SVC", "RR8").await?;
    let clients: Vec<_> = channels(bench.referrals, concurrency).await?.into_iter().map(ReferralsClient::new).collect();
    let mut results = Vec::new();
    let mut seeded = 0;
    for size in [small, large] {
        let started = Instant::now();
        // Referrals of 400,000 patients (not in records: the worklists do not ask for them).
        crate::seed::referrals(&pool, 0, seeded as u64..size as u64, &services, 400_000).await?;
        seeded = size;
        eprintln!("seeded {size} referrals in {:.0} s", started.elapsed().as_secs_f64());
        let mut page_two = Vec::new();
        for service in 0..SERVICES {
            let service = format!("SVC-{service}");
            let first = clients[0]
                .clone()
                .list_referrals(pb::ListReferralsRequest {
                    statuses: vec![pb::ReferralStatus::AwaitingBooking as i32],
                    service_code: service.clone(),
                    page_size: 50,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if !first.next_page_token.is_empty() {
                page_two.push((service, first.next_page_token));
            }
        }
        anyhow::ensure!(!page_two.is_empty(), "no service has a second page of referrals awaiting booking");
        let mut rng = Rng(0x5eed_1000 + size as u64);
        measure(&clients, worklist_queries(queries / 5, &mut rng, &page_two)).await?; // warm-up
        let timings = measure(&clients, worklist_queries(queries, &mut rng, &page_two)).await?;
        results.push((size, timings));
    }
    println!("\nListReferrals (worklists, 50 a page) over gRPC, {concurrency} concurrent clients, {queries} queries per size\n");
    println!("| referrals | p50 | p95 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|");
    for (size, timings) in &results {
        let all = Latencies(timings.iter().map(|(_, d, _)| *d).collect());
        println!(
            "| {size} | {} | {} | {} | {} |",
            ms(all.percentile(0.5)),
            ms(all.percentile(0.95)),
            ms(all.percentile(0.99)),
            ms(all.percentile(1.0))
        );
    }
    println!("\nBy worklist (p50 / p99, mean rows returned at the large size):\n");
    println!("| worklist | {} | {} | rows |", results[0].0, results[1].0);
    println!("|---|---:|---:|---:|");
    for kind in KINDS {
        let of =
            |timings: &Vec<(&str, Duration, usize)>| Latencies(timings.iter().filter(|(k, _, _)| *k == kind).map(|(_, d, _)| *d).collect());
        let (a, b) = (of(&results[0].1), of(&results[1].1));
        let rows: Vec<usize> = results[1].1.iter().filter(|(k, _, _)| *k == kind).map(|(_, _, n)| *n).collect();
        let mean_rows = rows.iter().sum::<usize>() as f64 / rows.len().max(1) as f64;
        println!(
            "| {kind} | {} / {} | {} / {} | {mean_rows:.0} |",
            ms(a.percentile(0.5)),
            ms(a.percentile(0.99)),
            ms(b.percentile(0.5)),
            ms(b.percentile(0.99))
        );
    }
    let p50 = |i: usize| Latencies(results[i].1.iter().map(|(_, d, _)| *d).collect()).percentile(0.5);
    let p99_large = Latencies(results[1].1.iter().map(|(_, d, _)| *d).collect()).percentile(0.99);
    println!("\np50 ratio {large}/{small}: {:.2}", p50(1).as_secs_f64() / p50(0).as_secs_f64());
    println!("p99 at {large}: {} (bar: < 25 ms) {}", ms(p99_large), verdict(p99_large < Duration::from_millis(25)));
    Ok(())
}

/// Registers `count` patients, refers and accepts each; returns (patient id, referral id) pairs.
async fn accepted_referrals(bench: &Bench, count: usize) -> anyhow::Result<Vec<(String, String)>> {
    let records: Vec<_> = channels(bench.records, 8).await?.into_iter().map(PatientRecordsClient::new).collect();
    let referrals: Vec<_> = channels(bench.referrals, 8).await?.into_iter().map(ReferralsClient::new).collect();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (mut records, mut referrals) = (records[worker].clone(), referrals[worker].clone());
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for n in (worker..count).step_by(8) {
                let patient = records_pb::Patient {
                    given_name: "Lag".into(),
                    family_name: (0..9).map(|k| char::from(b'a' + ((n >> (k * 3)) % 26) as u8)).collect::<String>() + "son",
                    birth_date: Some(pac_proto::common::Date {
                        year: 1950 + (n % 50) as i32,
                        month: 1 + (n % 12) as i32,
                        day: 1 + (n % 28) as i32,
                    }),
                    sex: 1,
                    ..Default::default()
                };
                let request = records_pb::RegisterPatientRequest {
                    patient: Some(patient),
                    request_id: String::new(),
                    allow_possible_duplicate: true,
                };
                let patient_id = records.register_patient(request).await?.into_inner().patient.unwrap_or_default().id;
                let referral = referrals
                    .create_referral(pb::CreateReferralRequest {
                        patient_id: patient_id.clone(),
                        service_code: "LAG".into(),
                        priority: pb::Priority::Routine as i32,
                        referrer: Some(pb::Referrer { organisation: "B86001".into(), clinician: String::new() }),
                        source: "GP".into(),
                        reason: "Bench referral".into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .referral
                    .unwrap_or_default();
                let decision = Some(pb::triage_referral_request::Decision::Accept(pb::Accept {}));
                let triage = pb::TriageReferralRequest {
                    referral_id: referral.id.clone(),
                    etag: referral.etag,
                    decision,
                    request_id: String::new(),
                };
                referrals.triage_referral(triage).await?;
                made.push((patient_id, referral.id));
            }
            Ok::<_, tonic::Status>(made)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// A clinic for service LAG with a daily session of 10-minute slots, 4 places each; `count` free
/// places' slot ids.
async fn places(bench: &Bench, count: usize) -> anyhow::Result<Vec<String>> {
    let mut client = SchedulingClient::new(channels(bench.scheduling, 1).await?.remove(0));
    let location = client
        .create_location(sched::CreateLocationRequest {
            location: Some(sched::Location { name: "Bench site".into(), ..Default::default() }),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .location
        .unwrap_or_default();
    let clinic = client
        .create_clinic(sched::CreateClinicRequest {
            clinic: Some(sched::Clinic {
                location_id: location.id,
                name: "Bench clinic".into(),
                service_code: "LAG".into(),
                time_zone: "Europe/London".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .clinic
        .unwrap_or_default();
    let tomorrow = chrono::Utc::now().date_naive() + chrono::Duration::days(1);
    for day in 0..7 {
        let date = tomorrow + chrono::Duration::days(day);
        client
            .create_session_template(sched::CreateSessionTemplateRequest {
                session_template: Some(sched::SessionTemplate {
                    clinic_id: clinic.id.clone(),
                    weekday: date.weekday().number_from_monday() as i32,
                    start: Some(sched::LocalTime { hours: 8, minutes: 0 }),
                    end: Some(sched::LocalTime { hours: 20, minutes: 0 }),
                    slot_minutes: 10,
                    capacity: 4,
                    valid_from: Some(pac_proto::common::Date { year: date.year(), month: date.month() as i32, day: date.day() as i32 }),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?;
    }
    let mut slots = Vec::new();
    let mut token = String::new();
    while slots.len() * 4 < count {
        let page = client
            .search_slots(sched::SearchSlotsRequest {
                target: Some(sched::search_slots_request::Target::ClinicId(clinic.id.clone())),
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        slots.extend(page.slots.into_iter().map(|s| s.id));
        anyhow::ensure!(!page.next_page_token.is_empty() || slots.len() * 4 >= count, "not enough slots for {count} bookings");
        token = page.next_page_token;
    }
    Ok(slots.iter().flat_map(|s| std::iter::repeat_n(s.clone(), 4)).take(count).collect())
}

pub async fn event_lag(rate: u64, seconds: u64) -> anyhow::Result<()> {
    anyhow::ensure!(rate > 0 && seconds > 0, "--rate and --seconds must be positive");
    let bench = Bench::start("pac_bench_event_lag").await?;
    let count = (rate * seconds) as usize;
    let mut referrals = ReferralsClient::new(channels(bench.referrals, 1).await?.remove(0));
    referrals
        .create_service(pb::CreateServiceRequest {
            service: Some(pb::Service { code: "LAG".into(), name: "Bench service".into(), target_wait_days: 42, ..Default::default() }),
            request_id: String::new(),
        })
        .await?;
    let started = Instant::now();
    let (pairs, slots) = tokio::try_join!(accepted_referrals(&bench, count), places(&bench, count))?;
    eprintln!("{count} patients referred and accepted, {count} places ready in {:.0} s", started.elapsed().as_secs_f64());

    // The referral's ReferralBooked events, as they arrive.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut stream = referrals.watch_events(pb::WatchEventsRequest { after_cursor: String::new() }).await?.into_inner();
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Some(pb::watch_events_response::Event::ReferralBooked(event)) = message.event {
                    let id = event.referral.map(|r| r.id).unwrap_or_default();
                    seen.lock().expect("seen").entry(id).or_insert_with(Instant::now);
                }
            }
        })
    };
    // Steady load: one booking every 1/rate s, whatever the answers' pace (open loop).
    let booking_clients: Vec<_> = channels(bench.scheduling, 4).await?.into_iter().map(SchedulingClient::new).collect();
    let answered: Arc<Mutex<HashMap<String, (Instant, Duration)>>> = Arc::default();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let load_started = Instant::now();
    for (n, ((patient_id, referral_id), slot_id)) in pairs.into_iter().zip(slots).enumerate() {
        ticker.tick().await;
        let (mut client, answered) = (booking_clients[n % booking_clients.len()].clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            client
                .book_appointment(sched::BookAppointmentRequest {
                    target: Some(sched::book_appointment_request::Target::SlotId(slot_id)),
                    patient_id,
                    referral_id: referral_id.clone(),
                    ..Default::default()
                })
                .await?;
            answered.lock().expect("answered").insert(referral_id, (Instant::now(), sent.elapsed()));
            Ok::<_, tonic::Status>(())
        }));
    }
    for task in tasks {
        task.await?.map_err(|status| anyhow::anyhow!("booking failed: {status:?}"))?;
    }
    let achieved = count as f64 / load_started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().expect("seen").len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
    let (seen, answered) = (seen.lock().expect("seen").clone(), answered.lock().expect("answered").clone());
    let lags = Latencies(answered.iter().filter_map(|(id, (at, _))| seen.get(id).map(|s| s.saturating_duration_since(*at))).collect());
    let book = Latencies(answered.values().map(|(_, took)| *took).collect());
    let missing = count - lags.0.len();
    println!(
        "\nEvent lag: BookAppointment answered -> ReferralBooked on the referrals WatchEvents stream, {count} bookings at {rate}/s (achieved {achieved:.0}/s)\n"
    );
    println!("| | p50 | p95 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| event lag | {} | {} | {} | {} |",
        ms(lags.percentile(0.5)),
        ms(lags.percentile(0.95)),
        ms(lags.percentile(0.99)),
        ms(lags.percentile(1.0))
    );
    println!(
        "| BookAppointment | {} | {} | {} | {} |",
        ms(book.percentile(0.5)),
        ms(book.percentile(0.95)),
        ms(book.percentile(0.99)),
        ms(book.percentile(1.0))
    );
    println!("\nbookings never seen on their referral within 30 s: {missing}");
    let p99 = lags.percentile(0.99);
    println!("p99 event lag: {} (bar: < 1 s) {}", ms(p99), verdict(missing == 0 && p99 < Duration::from_secs(1)));
    Ok(())
}
