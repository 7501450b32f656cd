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

use std::time::Duration;

use anyhow::bail;
use pac_gateway::policy;
use pac_platform::CallerVerifier;
use pac_platform::caller::CALLER_HEADER;
use pac_proto::records as pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
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
    let (mut direct_rps, mut gateway_rps, mut direct_lat, mut gateway_lat) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..runs {
        let (mut d, mut g) = (0.0, 0.0);
        for slice in 0..seconds {
            if slice % 2 == 0 {
                d += load(&direct, through_service.clone(), 1, concurrency, patients).await?;
                g += load(&gateway, through_gateway.clone(), 1, concurrency, patients).await?;
            } else {
                g += load(&gateway, through_gateway.clone(), 1, concurrency, patients).await?;
                d += load(&direct, through_service.clone(), 1, concurrency, patients).await?;
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
    // The bars with the audit record of each call durable before its answer (BENCHMARKS.md).
    println!("\nthroughput ratio gateway/direct (median of the rounds): {ratio:.2} (bar: >= 0.75) {}", verdict(ratio >= 0.75));
    println!("p50 added by the gateway: {} (bar: <= 1.00 ms) {}", ms(added), verdict(added <= Duration::from_millis(1)));
    Ok(())
}
