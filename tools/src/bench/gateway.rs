//! `pac-load bench gateway`: the gateway's overhead. The same database-bound RPC (SearchPatients by
//! phone: one indexed look-up among 100,000 patients) by the same caller, called directly on the
//! records service with the signed caller context the gateway would send, and through the gateway
//! with a bearer token, in the same run: throughput with many calls in flight, and single-call
//! latency.
//!
//! Throughput is measured in one-second slices, the two paths taking turns (and turns at going
//! first): this machine's speed drifts over seconds, and paths measured minutes apart would
//! differ by that drift more than by the gateway. A round's ratio compares the paths over the same
//! seconds; the run's ratio is the median of its rounds'.
//!
//! Where Postgres runs on this machine, each path's CPU time per call is also accounted, by process
//! (this one, and the bench database's Postgres backends by application), over the same slices, with
//! the share of the machine they kept busy: what the gateway hop and its audit trail cost, and how
//! much of the machine a path leaves idle while its calls wait.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use pac_gateway::policy;
use pac_platform::CallerVerifier;
use pac_platform::caller::CALLER_HEADER;
use pac_proto::records as pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use sqlx::PgPool;
use tonic::transport::Channel;

use crate::bench::{Bench, Latencies, latencies, median, ms, records_clients, throughput, verdict};
use crate::people::Rng;

/// How a call says who makes it: a header and its value.
type Credential = (&'static str, String);

fn search(phone: u64, (header, value): &Credential) -> tonic::Request<pb::SearchPatientsRequest> {
    let mut request = tonic::Request::new(pb::SearchPatientsRequest { phone: format!("+447{phone:09}"), ..Default::default() });
    request.metadata_mut().insert(*header, value.parse().expect("an ascii token"));
    request
}

async fn load(
    clients: &[PatientRecordsClient<Channel>],
    credential: Credential,
    seconds: u64,
    concurrency: usize,
    patients: u64,
) -> anyhow::Result<f64> {
    throughput(clients, seconds, concurrency, "search", move |mut client: PatientRecordsClient<Channel>, worker, n| {
        let credential = credential.clone();
        async move {
            let phone = (worker * 7919 + n * 104_729) % patients;
            client.search_patients(search(phone, &credential)).await.map(drop)
        }
    })
    .await
}

/// One client, one call at a time: each call's latency.
async fn single(
    client: &PatientRecordsClient<Channel>,
    credential: Credential,
    calls: usize,
    patients: u64,
    rng: &mut Rng,
) -> anyhow::Result<Vec<Duration>> {
    let queries: Vec<(&'static str, u64)> = (0..calls).map(|_| ("search", rng.below(patients as usize) as u64)).collect();
    let timings = latencies(std::slice::from_ref(client), queries, move |mut client: PatientRecordsClient<Channel>, phone| {
        let credential = credential.clone();
        async move { client.search_patients(search(phone, &credential)).await.map(drop) }
    })
    .await?;
    Ok(timings.into_iter().map(|(_, d, ())| d).collect())
}

/// CPU time used so far: this process (the load, the gateway and the services all run in it) and
/// each of the bench database's Postgres backends, by the application that opened it. Read from
/// `/proc`, so only where Postgres runs on this machine; `None` elsewhere.
struct CpuTimes {
    process: Duration,
    backends: BTreeMap<i32, (String, Duration)>,
}

/// A process's command name and the CPU time it has used, from `/proc/<pid>/stat` (user and
/// system, in clock ticks of 10 ms); `None` when there is no such process here.
fn cpu_of(pid: &str) -> Option<(String, Duration)> {
    cpu_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn cpu_in(stat: &str) -> Option<(String, Duration)> {
    // The command name is in parentheses (and may hold spaces and parentheses itself).
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((stat.get(open + 1..close)?.to_string(), Duration::from_millis(ticks * 10)))
}

async fn cpu_times(admin: &PgPool) -> anyhow::Result<Option<CpuTimes>> {
    let backends: Vec<(i32, String)> =
        sqlx::query_as("SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            .fetch_all(admin)
            .await?;
    let Some((_, process)) = cpu_of("self") else { return Ok(None) };
    let mut times = CpuTimes { process, backends: BTreeMap::new() };
    for (pid, application) in backends {
        match cpu_of(&pid.to_string()) {
            Some((command, used)) if command == "postgres" => {
                times.backends.insert(pid, (application, used));
            }
            // Another program has this number here: Postgres runs elsewhere.
            Some(_) => return Ok(None),
            // A backend that has just ended.
            None => {}
        }
    }
    // None of the backends is here: Postgres runs elsewhere.
    Ok((!times.backends.is_empty()).then_some(times))
}

/// Where one path's CPU time went over its slices, by process.
#[derive(Default)]
struct CpuAccount {
    calls: f64,
    wall: Duration,
    by: BTreeMap<String, Duration>,
}

impl CpuAccount {
    /// Adds a slice: the CPU used between `before` and `after` (a backend opened meanwhile counts
    /// from zero; one closed meanwhile is missed).
    fn add(&mut self, before: &CpuTimes, after: &CpuTimes, calls: f64, wall: Duration) {
        self.calls += calls;
        self.wall += wall;
        *self.by.entry("pac-load (load, gateway, services)".into()).or_default() += after.process.saturating_sub(before.process);
        for (pid, (application, used)) in &after.backends {
            let earlier = before.backends.get(pid).map_or(Duration::ZERO, |(_, used)| *used);
            let name = format!("Postgres: {}", if application.is_empty() { "other" } else { application });
            *self.by.entry(name).or_default() += used.saturating_sub(earlier);
        }
    }

    fn per_call(&self, name: &str) -> f64 {
        self.by.get(name).map_or(0.0, |used| used.as_secs_f64() * 1e6 / self.calls.max(1.0))
    }

    fn total(&self) -> Duration {
        self.by.values().sum()
    }
}

/// Runs one slice of one path, adding its CPU time to `account` when it can be read.
async fn slice(
    admin: &PgPool,
    account: &mut Option<CpuAccount>,
    clients: &[PatientRecordsClient<Channel>],
    credential: Credential,
    concurrency: usize,
    patients: u64,
) -> anyhow::Result<f64> {
    let before = cpu_times(admin).await?;
    let started = std::time::Instant::now();
    let rate = load(clients, credential, 1, concurrency, patients).await?;
    let wall = started.elapsed();
    match (before, cpu_times(admin).await?, account.as_mut()) {
        (Some(before), Some(after), Some(account)) => account.add(&before, &after, rate, wall),
        _ => *account = None,
    }
    Ok(rate)
}

/// The CPU time of each path per call, by process: what the gateway and its audit trail cost.
fn print_cpu(direct: &CpuAccount, gateway: &CpuAccount) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let names: std::collections::BTreeSet<&String> = direct.by.keys().chain(gateway.by.keys()).collect();
    println!("\nCPU time per call, by process (from /proc, over the same slices; µs):\n");
    println!("| process | direct | gateway | added |");
    println!("|---|---:|---:|---:|");
    for name in names {
        let (d, g) = (direct.per_call(name), gateway.per_call(name));
        if d.max(g) < 0.5 {
            continue;
        }
        println!("| {name} | {d:.0} | {g:.0} | {:+.0} |", g - d);
    }
    let per_call = |a: &CpuAccount| a.total().as_secs_f64() * 1e6 / a.calls.max(1.0);
    let busy = |a: &CpuAccount| a.total().as_secs_f64() / (a.wall.as_secs_f64() * cores as f64) * 100.0;
    println!("| all | {:.0} | {:.0} | {:+.0} |", per_call(direct), per_call(gateway), per_call(gateway) - per_call(direct));
    println!(
        "\nThese accounted for {:.0}% of the machine's {cores} cores during the direct slices and {:.0}% during the gateway's.",
        busy(direct),
        busy(gateway)
    );
}

pub async fn overhead(seconds: u64, concurrency: usize, runs: usize, patients: u64) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bench = Bench::start("pac_bench_gateway").await?;
    bench.seed_patients(0, patients).await?;
    // One RR8 coordinator: a bearer token for the gateway, and for the service directly the
    // caller context the gateway signs for that token.
    let identity = pac_gateway::auth::Identity {
        subject: "bench-coordinator".into(),
        role: policy::Role::Coordinator,
        organisations: vec!["RR8".into()],
    };
    let token = crate::credentials::development_token(&identity, Duration::from_secs(3600))?;
    let context = CallerVerifier::new(&bench.internal_key, true).sign(&policy::caller(&identity), policy::CALLER_CONTEXT_TTL);
    let (through_service, through_gateway): (Credential, Credential) =
        ((CALLER_HEADER, context), ("authorization", format!("Bearer {token}")));
    let direct = records_clients(bench.records, 4).await?;
    let gateway = records_clients(bench.gateway, 4).await?;
    // Both paths find the patient: the seeded patients are RR8's, whom the caller acts for.
    for (client, credential) in [(&direct[0], &through_service), (&gateway[0], &through_gateway)] {
        let found = client.clone().search_patients(search(7, credential)).await?.into_inner().results.len();
        anyhow::ensure!(found == 1, "a search found {found} patients, not 1");
    }
    let mut rng = Rng(0x9a7e_0001);
    // Warm both paths.
    single(&direct[0], through_service.clone(), 200, patients, &mut rng).await?;
    single(&gateway[0], through_gateway.clone(), 200, patients, &mut rng).await?;
    let admin = bench.admin().await?;
    let (mut direct_cpu, mut gateway_cpu) = (Some(CpuAccount::default()), Some(CpuAccount::default()));
    let (mut direct_rps, mut gateway_rps, mut direct_lat, mut gateway_lat) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..runs {
        let (mut d, mut g) = (0.0, 0.0);
        for turn in 0..seconds {
            for path in if turn % 2 == 0 { [false, true] } else { [true, false] } {
                match path {
                    false => d += slice(&admin, &mut direct_cpu, &direct, through_service.clone(), concurrency, patients).await?,
                    true => g += slice(&admin, &mut gateway_cpu, &gateway, through_gateway.clone(), concurrency, patients).await?,
                }
            }
        }
        let (d, g) = (d / seconds as f64, g / seconds as f64);
        direct_lat.extend(single(&direct[0], through_service.clone(), 1000, patients, &mut rng).await?);
        gateway_lat.extend(single(&gateway[0], through_gateway.clone(), 1000, patients, &mut rng).await?);
        eprintln!("round {}: direct {d:.0}/s, through the gateway {g:.0}/s", round + 1);
        direct_rps.push(d);
        gateway_rps.push(g);
    }
    let ratios: Vec<f64> = gateway_rps.iter().zip(&direct_rps).map(|(g, d)| g / d).collect();
    let ratio = median(&ratios);
    let (d, g) = (Latencies(direct_lat), Latencies(gateway_lat));
    let added = g.percentile(0.5).saturating_sub(d.percentile(0.5));
    println!(
        "\nSearchPatients by phone ({patients} patients): directly vs through the gateway, {concurrency} in flight on 4 connections, rounds of {seconds} one-second slices of each, taking turns\n"
    );
    println!("| round | direct calls/s | gateway calls/s | ratio |");
    println!("|---:|---:|---:|---:|");
    for (round, ((a, b), r)) in direct_rps.iter().zip(&gateway_rps).zip(&ratios).enumerate() {
        println!("| {} | {a:.0} | {b:.0} | {r:.2} |", round + 1);
    }
    println!("| median | {:.0} | {:.0} | {ratio:.2} |", median(&direct_rps), median(&gateway_rps));
    println!("\nOne call at a time ({} calls each way):\n", d.0.len());
    println!("| path | p50 | p95 | p99 |");
    println!("|---|---:|---:|---:|");
    println!("| direct | {} | {} | {} |", ms(d.percentile(0.5)), ms(d.percentile(0.95)), ms(d.percentile(0.99)));
    println!("| gateway | {} | {} | {} |", ms(g.percentile(0.5)), ms(g.percentile(0.95)), ms(g.percentile(0.99)));
    match (&direct_cpu, &gateway_cpu) {
        (Some(direct), Some(gateway)) => print_cpu(direct, gateway),
        _ => println!("\n(No CPU account: Postgres does not run on this machine, or /proc cannot be read.)"),
    }
    admin.close().await;
    // The bars with the audit record of each call durable before its answer (BENCHMARKS.md).
    println!("\nthroughput ratio gateway/direct (median of the rounds): {ratio:.2} (bar: >= 0.75) {}", verdict(ratio >= 0.75));
    println!("p50 added by the gateway: {} (bar: <= 1.00 ms) {}", ms(added), verdict(added <= Duration::from_millis(1)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces() {
        let stat = "4242 (postgres: pac (x) idle) S 1 2 3 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 1 0 99 1000 200";
        assert_eq!(cpu_in(stat), Some(("postgres: pac (x) idle".to_string(), Duration::from_millis((1234 + 56) * 10))));
        assert_eq!(cpu_in("4242 (cut"), None);
        assert!(cpu_of("self").is_some(), "this process's own time can be read");
        assert_eq!(cpu_of("0"), None, "no process has number 0");
    }
}
