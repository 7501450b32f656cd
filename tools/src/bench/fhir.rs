//! `pac-load bench fhir`: the FHIR R4 API of the interop component, in front of the gateway.
//!
//! - **Read**: `GET Patient/{id}` through the FHIR API against `GetPatient` over gRPC through the
//!   gateway, the same caller (an RR8 coordinator's token), the same patients, many in flight,
//!   measured in one-second slices taking turns (as `bench gateway` does); the ratio is the
//!   median of the rounds'.
//! - **Searches**: `Patient` search among `--patients` patients and `Slot` search among `--slots`
//!   slots, through the FHIR API, a few clients at a time: p50/p99 of each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use pac_gateway::policy::Role;
use pac_proto::records as pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::scheduling::search_slots_request::Target;
use tonic::transport::Channel;

use crate::bench::{Bench, Latencies, latencies, median, ms, records_clients, throughput, verdict};
use crate::people::{Kind, Rng, numbered};

#[derive(clap::Args)]
pub struct FhirArgs {
    /// One-second slices of each path per round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Reads in flight on each path (the FHIR path: one HTTP/1.1 connection each).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 1_000_000)]
    patients: u64,
    #[arg(long, default_value_t = 5_000_000)]
    slots: u64,
    /// Searches measured of each resource.
    #[arg(long, default_value_t = 3_000)]
    queries: usize,
    /// Searches in flight.
    #[arg(long, default_value_t = 4)]
    search_concurrency: usize,
}

/// One HTTP/1.1 connection to the FHIR API, one request at a time.
#[derive(Clone)]
struct Http {
    sender: Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>>,
    authorization: Arc<str>,
}

impl Http {
    async fn connect(address: SocketAddr, token: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self { sender: Arc::new(tokio::sync::Mutex::new(sender)), authorization: format!("Bearer {token}").into() })
    }

    /// `GET path`: the body of a 200 answer, else the failure as a status (the benchmark's helpers
    /// count gRPC statuses).
    async fn get(&self, path: &str) -> Result<Bytes, tonic::Status> {
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, "fhir")
            .header(hyper::header::AUTHORIZATION, &*self.authorization)
            .header(hyper::header::ACCEPT, "application/fhir+json")
            .body(Empty::new())
            .map_err(|e| tonic::Status::invalid_argument(format!("GET {path}: {e}")))?;
        let mut sender = self.sender.lock().await;
        sender.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?.to_bytes();
        if status != hyper::StatusCode::OK {
            // The HTTP status and the OperationOutcome, for the benchmark's own failure report.
            return Err(tonic::Status::unknown(format!("GET {path}: {status} {}", String::from_utf8_lossy(&body))));
        }
        Ok(body)
    }
}

fn patient_path(i: u64) -> String {
    format!("/fhir/R4/Patient/{}", numbered(Kind::Patient, 0, i))
}

fn get_patient(i: u64, authorization: &str) -> tonic::Request<pb::GetPatientRequest> {
    let mut request = tonic::Request::new(pb::GetPatientRequest { id: numbered(Kind::Patient, 0, i).to_string() });
    request.metadata_mut().insert("authorization", authorization.parse().expect("an ascii token"));
    request
}

/// The search benchmark's patient queries as FHIR searches (the phone query has no FHIR
/// parameter here, so it is left out).
fn patient_searches(count: usize, patients: u64, rng: &mut Rng) -> Vec<(&'static str, String)> {
    let mut searches = Vec::new();
    for (kind, request) in crate::bench::search_queries(count * 6 / 5 + 6, patients as i64, rng) {
        let mut query = Vec::new();
        if !request.name.is_empty() {
            let mut words = request.name.split_whitespace().collect::<Vec<_>>();
            let family = words.pop().unwrap_or_default();
            query.push(format!("family={family}"));
            if !words.is_empty() {
                query.push(format!("given={}", words.join(" ")));
            }
        }
        if let Some(d) = request.birth_date {
            query.push(format!("birthdate={:04}-{:02}-{:02}", d.year, d.month, d.day));
        }
        if !request.postcode.is_empty() {
            query.push(format!("address-postalcode={}", request.postcode));
        }
        if query.is_empty() {
            continue;
        }
        searches.push((kind, format!("/fhir/R4/Patient?{}", query.join("&"))));
    }
    searches.truncate(count);
    searches
}

/// The slot benchmark's queries as FHIR searches (by schedule, by service, by service in a later
/// window; searching at a location has no FHIR parameter here).
fn slot_searches(count: usize, clinics: i64, codes: i64, locations: i64, span_days: i64, rng: &mut Rng) -> Vec<(&'static str, String)> {
    let instant = |t: &prost_types::Timestamp| {
        chrono::DateTime::<chrono::Utc>::from_timestamp(t.seconds, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    };
    let mut searches = Vec::new();
    for (kind, request) in crate::bench::scheduling::slot_queries(count * 4 / 3 + 4, clinics, codes, locations, span_days, rng) {
        if !request.location_id.is_empty() {
            continue;
        }
        let mut query = vec!["status=free".to_string()];
        match request.target {
            Some(Target::ClinicId(clinic)) => query.push(format!("schedule=Schedule/{clinic}")),
            Some(Target::ServiceCode(code)) => query.push(format!("service-type={code}")),
            None => continue,
        }
        if let Some(start) = &request.start_time {
            query.push(format!("start=ge{}", instant(start)));
        }
        if let Some(end) = &request.end_time {
            query.push(format!("start=lt{}", instant(end)));
        }
        searches.push((kind, format!("/fhir/R4/Slot?{}", query.join("&"))));
    }
    searches.truncate(count);
    searches
}

async fn timed(clients: &[Http], searches: Vec<(&'static str, String)>) -> anyhow::Result<Vec<(&'static str, Duration, usize)>> {
    latencies(clients, searches, |client: Http, path: String| async move {
        let body = client.get(&path).await?;
        // Entries found: a search that finds nothing measures nothing.
        Ok(occurrences(&body, b"\"fullUrl\":"))
    })
    .await
}

fn occurrences(text: &[u8], what: &[u8]) -> usize {
    text.windows(what.len()).filter(|w| *w == what).count()
}

fn table(title: &str, timings: &[(&'static str, Duration, usize)], kinds: &[&str]) -> Duration {
    let all = Latencies(timings.iter().map(|(_, d, _)| *d).collect());
    println!("\n{title}\n");
    println!("| kind | queries | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    for kind in kinds {
        let of = Latencies(timings.iter().filter(|(k, _, _)| k == kind).map(|(_, d, _)| *d).collect());
        if !of.0.is_empty() {
            println!("| {kind} | {} | {} | {} |", of.0.len(), ms(of.percentile(0.5)), ms(of.percentile(0.99)));
        }
    }
    println!("| all | {} | {} | {} |", all.0.len(), ms(all.percentile(0.5)), ms(all.percentile(0.99)));
    all.percentile(0.99)
}

pub async fn fhir(args: FhirArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rounds > 0 && args.seconds > 0 && args.concurrency > 0,
        "--rounds, --seconds and --concurrency must be at least 1"
    );
    let bench = Bench::start("pac_bench_fhir").await?;
    let started = Instant::now();
    bench.seed_patients(0, args.patients).await?;
    eprintln!("seeded {} patients in {:.0} s", args.patients, started.elapsed().as_secs_f64());
    let (clinics, codes, locations) = (200i64, 20i64, 10i64);
    let started = Instant::now();
    let pool = bench.scheduling_pool().await?;
    let directory = crate::seed::directory(&pool, 0, clinics as u64, codes as u64, locations as u64, "SVC", "RR8").await?;
    // Two slots in three are already full, as in `bench slots`: the search skips them.
    crate::seed::slots(&pool, 0, 0..args.slots, &directory, 1, 67, crate::seed::first_slot_start()).await?;
    sqlx::raw_sql("VACUUM ANALYZE scheduling.slots").execute(&bench.admin().await?).await?;
    eprintln!("seeded {} slots in {:.0} s", args.slots, started.elapsed().as_secs_f64());

    let coordinator = crate::credentials::development_token(
        &crate::credentials::identity(Role::Coordinator, &["RR8".to_string()]),
        Duration::from_secs(3600),
    )?;
    let account = crate::credentials::development_token(
        &crate::credentials::identity(Role::Integration, &["RR8".to_string()]),
        Duration::from_secs(3600),
    )?;
    let (_, fhir) = crate::bench::interop::start_interop_with(&bench, &account, Vec::new()).await?;
    let http = futures::future::try_join_all((0..args.concurrency).map(|_| Http::connect(fhir, &coordinator))).await?;
    let grpc = records_clients(bench.gateway, 4).await?;
    let authorization = format!("Bearer {coordinator}");
    let patients = args.patients;
    let fhir_load = |seconds| {
        throughput(&http, seconds, args.concurrency, "GET Patient", move |client: Http, worker, n| async move {
            client.get(&patient_path((worker * 7919 + n * 104_729) % patients)).await.map(drop)
        })
    };
    let grpc_load = |seconds| {
        let authorization = authorization.clone();
        throughput(&grpc, seconds, args.concurrency, "GetPatient", move |mut client: PatientRecordsClient<Channel>, worker, n| {
            let request = get_patient((worker * 7919 + n * 104_729) % patients, &authorization);
            async move { client.get_patient(request).await.map(drop) }
        })
    };
    // Both paths read the patient, then warm up.
    let body = http[0].get(&patient_path(7)).await?;
    anyhow::ensure!(occurrences(&body, b"\"resourceType\":\"Patient\"") == 1, "the FHIR read is no Patient");
    grpc[0].clone().get_patient(get_patient(7, &authorization)).await.context("GetPatient through the gateway")?;
    fhir_load(1).await?;
    grpc_load(1).await?;
    let (mut fhir_rates, mut grpc_rates) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let (mut f, mut g) = (0.0, 0.0);
        for slice in 0..args.seconds {
            if slice % 2 == 0 {
                g += grpc_load(1).await?;
                f += fhir_load(1).await?;
            } else {
                f += fhir_load(1).await?;
                g += grpc_load(1).await?;
            }
        }
        let (f, g) = (f / args.seconds as f64, g / args.seconds as f64);
        eprintln!("round {}: GetPatient over gRPC {g:.0}/s, GET Patient over FHIR {f:.0}/s: {:.2}", round + 1, f / g);
        fhir_rates.push(f);
        grpc_rates.push(g);
    }
    let ratios: Vec<f64> = fhir_rates.iter().zip(&grpc_rates).map(|(f, g)| f / g).collect();
    let ratio = median(&ratios);

    let searchers = &http[..args.search_concurrency.clamp(1, http.len())];
    let mut rng = Rng(0xf41e_0001);
    timed(searchers, patient_searches(args.queries / 5, patients, &mut rng)).await?; // warm-up
    let patient_timings = timed(searchers, patient_searches(args.queries, patients, &mut rng)).await?;
    let span_days = args.slots as i64 / clinics / 96;
    timed(searchers, slot_searches(args.queries / 5, clinics, codes, locations, span_days, &mut rng)).await?; // warm-up
    let slot_timings = timed(searchers, slot_searches(args.queries, clinics, codes, locations, span_days, &mut rng)).await?;
    let empty = slot_timings.iter().filter(|(_, _, found)| *found == 0).count();
    anyhow::ensure!(empty <= slot_timings.len() / 10, "{empty} slot searches found nothing: the seed does not match the queries");

    println!(
        "\nGET Patient/{{id}} through the FHIR API against GetPatient over gRPC through the gateway ({patients} patients), {} in flight each way (FHIR: one HTTP/1.1 connection each; gRPC: 4 connections), rounds of {} one-second slices of each, taking turns\n",
        args.concurrency, args.seconds
    );
    println!("| round | gRPC reads/s | FHIR reads/s | ratio |");
    println!("|---:|---:|---:|---:|");
    for (round, ((g, f), r)) in grpc_rates.iter().zip(&fhir_rates).zip(&ratios).enumerate() {
        println!("| {} | {g:.0} | {f:.0} | {r:.2} |", round + 1);
    }
    println!("| median | {:.0} | {:.0} | {ratio:.2} |", median(&grpc_rates), median(&fhir_rates));
    let searching = format!("{} clients", searchers.len());
    let patient_p99 = table(
        &format!("Patient search through the FHIR API at {patients} patients, {searching}"),
        &patient_timings,
        &["name", "rare name", "misspelt name", "name + birth date", "district"],
    );
    let slot_p99 = table(
        &format!("Slot search through the FHIR API at {} slots (status=free, 20 a page), {searching}", args.slots),
        &slot_timings,
        &["clinic", "service", "service, later window"],
    );
    println!("\nFHIR read / gRPC read through the gateway (median of the rounds): {ratio:.2} (bar: >= 0.5) {}", verdict(ratio >= 0.5));
    println!("Patient search p99 at {patients}: {} (bar: < 25 ms) {}", ms(patient_p99), verdict(patient_p99 < Duration::from_millis(25)));
    println!("Slot search p99 at {}: {} (bar: < 25 ms) {}", args.slots, ms(slot_p99), verdict(slot_p99 < Duration::from_millis(25)));
    Ok(())
}
