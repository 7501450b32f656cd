//! `pac-load bench adt`: the ADT listener against the gRPC API it stands in front of.
//!
//! 1. Ingest: A08 updates (a new phone number for a patient known by hospital number) over four
//!    MLLP connections, one message in flight on each as engines send, against the same updates as
//!    four gRPC clients of the gateway make them (look the patient up by hospital number, update the
//!    phone with the etag read: the calls the listener makes for the message), in one-second slices
//!    taking turns. Bar: ≥ 0.5×.
//! 2. ACK latency at a steady 100 messages a second over the four connections. Bar: p99 < 50 ms.
//! 3. The last 1,000 messages sent again: each answered with its first ACK, byte for byte, and
//!    nothing written (the audit trail, the message log and every patient's version unchanged). Bar:
//!    0 writes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use pac_gateway::auth::Identity;
use pac_gateway::policy::Role;
use pac_interop::gateway::TokenSource;
use pac_interop::mllp::Mllp;
use pac_platform::config::Secret;
use pac_proto::records as pb;
use pac_proto::records::lookup_patient_request::Identifier;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_util::codec::Framed;
use tonic::transport::Channel;

use crate::bench::{Bench, Latencies, median, ms, records_clients, throughput, verdict};
use crate::credentials::Credential;

#[derive(clap::Args)]
pub struct AdtArgs {
    /// One-second slices of each path per round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Patients registered (over MLLP, A28) before the measurements; the updates cycle through them.
    #[arg(long, default_value_t = 2_000)]
    patients: u64,
    /// Messages a second for the ACK latency measurement.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds of the ACK latency measurement.
    #[arg(long, default_value_t = 10)]
    rate_seconds: u64,
    /// Messages sent again.
    #[arg(long, default_value_t = 1_000)]
    resend: usize,
}

/// MLLP connections and gRPC clients, as the bar has them.
const CONNECTIONS: usize = 4;

type Connection = Arc<Mutex<Framed<TcpStream, Mllp>>>;

async fn connect(address: SocketAddr) -> anyhow::Result<Connection> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(Arc::new(Mutex::new(Framed::new(stream, Mllp::default()))))
}

/// Sends `message` on `connection` and reads its ACK; a code other than AA is a failure.
async fn send(connection: &Connection, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut framed = connection.lock().await;
    framed.send(message).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let ack = framed.next().await.ok_or_else(|| tonic::Status::unavailable("the listener closed the connection"))?;
    let ack = ack.map_err(|e| tonic::Status::unavailable(e.to_string()))?.to_vec();
    if !ack.windows(7).any(|w| w == b"\rMSA|AA") {
        return Err(tonic::Status::internal(format!("not AA: {}", String::from_utf8_lossy(&ack))));
    }
    Ok(ack)
}

fn hospital_number(patient: u64) -> String {
    format!("B{patient:07}")
}

fn phone(change: u64) -> String {
    format!("+447700{:06}", change % 1_000_000)
}

/// An ITK-shaped ADT message from RR8's PAS about `patient` (a person no other patient resembles).
fn adt(trigger: &str, control: u64, patient: u64, phone: &str) -> Vec<u8> {
    let structure = if trigger == "A28" { "ADT_A05" } else { "ADT_A01" };
    let person = crate::people::distinct_person(patient);
    let born = person.birth_date.unwrap_or_default();
    format!(
        "MSH|^~\\&|PAS|RR8|PAC|PAC|20261205120000||ADT^{trigger}^{structure}|B{control}|P|2.4|||AL|NE|GBR|8859/1\r\
         EVN|{trigger}|20261205120000\r\
         PID|1||{}^^^RR8^PI||{}^{}||{:04}{:02}{:02}|F|||||{phone}\r",
        hospital_number(patient),
        person.family_name,
        person.given_name,
        born.year,
        born.month,
        born.day
    )
    .into_bytes()
}

pub async fn adt_against_grpc(args: AdtArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.seconds == 0 || args.rate == 0 || args.patients < CONNECTIONS as u64 {
        bail!("--rounds, --seconds and --rate must be at least 1, --patients at least {CONNECTIONS}");
    }
    let bench = Bench::start("pac_bench_adt").await?;
    let identity = Identity { subject: "bench-pas".into(), role: Role::Integration, organisations: vec!["RR8".into()] };
    let token = crate::credentials::development_token(&identity, Duration::from_secs(3600))?;
    let mllp = start_interop(&bench, &token).await?;
    let connections = futures::future::try_join_all((0..CONNECTIONS).map(|_| connect(mllp))).await?;
    let controls = Arc::new(AtomicU64::new(1));
    let changes = Arc::new(AtomicU64::new(1));

    // The patients, registered over MLLP (A28), four connections at once.
    let started = Instant::now();
    let per = args.patients.div_ceil(CONNECTIONS as u64);
    let registrations = connections.iter().enumerate().map(|(c, connection)| {
        let controls = controls.clone();
        async move {
            for patient in (c as u64 * per)..((c as u64 + 1) * per).min(args.patients) {
                send(connection, adt("A28", controls.fetch_add(1, Ordering::Relaxed), patient, &phone(0))).await?;
            }
            Ok::<_, tonic::Status>(())
        }
    });
    futures::future::try_join_all(registrations).await.map_err(|s| anyhow::anyhow!("registering over MLLP: {s:?}"))?;
    eprintln!("{} patients registered over MLLP in {:.1} s", args.patients, started.elapsed().as_secs_f64());

    let grpc = records_clients(bench.gateway, CONNECTIONS).await?;
    let credential = Credential::bearer(&token)?;
    let patients = args.patients;
    let over_mllp = |connections: Vec<Connection>| {
        let (controls, changes) = (controls.clone(), changes.clone());
        async move {
            throughput(&connections, 1, CONNECTIONS, "A08 over MLLP", move |connection: Connection, worker, n| {
                let patient = (worker + CONNECTIONS as u64 * n) % patients;
                let message =
                    adt("A08", controls.fetch_add(1, Ordering::Relaxed), patient, &phone(changes.fetch_add(1, Ordering::Relaxed)));
                async move { send(&connection, message).await.map(drop) }
            })
            .await
        }
    };
    let over_grpc = |clients: Vec<PatientRecordsClient<Channel>>| {
        let (credential, changes) = (credential.clone(), changes.clone());
        async move {
            throughput(&clients, 1, CONNECTIONS, "UpdatePatient through the gateway", move |client, worker, n| {
                let patient = (worker + CONNECTIONS as u64 * n) % patients;
                let phone = phone(changes.fetch_add(1, Ordering::Relaxed));
                let credential = credential.clone();
                async move { update_over_grpc(client, &credential, patient, phone).await }
            })
            .await
        }
    };
    // Warm both paths.
    over_mllp(connections.clone()).await?;
    over_grpc(grpc.clone()).await?;
    let (mut mllp_rates, mut grpc_rates) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let (mut m, mut g) = (0.0, 0.0);
        for slice in 0..args.seconds {
            if (slice + round as u64).is_multiple_of(2) {
                m += over_mllp(connections.clone()).await?;
                g += over_grpc(grpc.clone()).await?;
            } else {
                g += over_grpc(grpc.clone()).await?;
                m += over_mllp(connections.clone()).await?;
            }
        }
        let (m, g) = (m / args.seconds as f64, g / args.seconds as f64);
        eprintln!("round {}: A08 over MLLP {m:.0}/s, UpdatePatient through the gateway {g:.0}/s", round + 1);
        mllp_rates.push(m);
        grpc_rates.push(g);
    }

    // ACK latency at a steady rate; the messages kept for the resend.
    let (latencies, sent) = steady(&connections, args.rate, args.rate_seconds, patients, &controls, &changes).await?;
    let latencies = Latencies(latencies);

    // Everything sent again: the same ACKs, nothing written.
    let admin = bench.admin().await?;
    // Rows in the audit trail and the message log, and every patient's version.
    let writes = "SELECT (SELECT count(*) FROM audit.events) + (SELECT count(*) FROM interop.inbound_messages) \
                  + (SELECT coalesce(sum(version), 0) FROM records.patients)::bigint";
    let before: i64 = sqlx::query_scalar(writes).fetch_one(&admin).await?;
    let resent: Vec<(Vec<u8>, Vec<u8>)> = sent.into_iter().rev().take(args.resend).collect();
    let mut differing = 0;
    for (i, (message, ack)) in resent.iter().enumerate() {
        if send(&connections[i % CONNECTIONS], message.clone()).await.map_err(|s| anyhow::anyhow!("{s:?}"))? != *ack {
            differing += 1;
        }
    }
    let after: i64 = sqlx::query_scalar(writes).fetch_one(&admin).await?;

    let ratios: Vec<f64> = mllp_rates.iter().zip(&grpc_rates).map(|(m, g)| m / g).collect();
    let ratio = median(&ratios);
    println!(
        "\nA08 (a new phone number) over {CONNECTIONS} MLLP connections against LookupPatient + UpdatePatient through the gateway by {CONNECTIONS} gRPC clients, one in flight each, {} patients, rounds of {} one-second slices of each, taking turns\n",
        args.patients, args.seconds
    );
    println!("| round | MLLP messages/s | gRPC updates/s | ratio |");
    println!("|---:|---:|---:|---:|");
    for (round, ((m, g), r)) in mllp_rates.iter().zip(&grpc_rates).zip(&ratios).enumerate() {
        println!("| {} | {m:.0} | {g:.0} | {r:.2} |", round + 1);
    }
    println!("| median | {:.0} | {:.0} | {ratio:.2} |", median(&mllp_rates), median(&grpc_rates));
    let p99 = latencies.percentile(0.99);
    println!(
        "\nACK latency at {} messages/s for {} s ({} messages): p50 {}, p95 {}, p99 {}",
        args.rate,
        args.rate_seconds,
        latencies.0.len(),
        ms(latencies.percentile(0.5)),
        ms(latencies.percentile(0.95)),
        ms(p99)
    );
    println!("{} messages sent again: {differing} ACKs differed from the first; writes {}", resent.len(), after - before);
    println!("\ningest ratio MLLP/gRPC (median of the rounds): {ratio:.2} (bar: >= 0.50) {}", verdict(ratio >= 0.5));
    println!("ACK p99 at {}/s: {} (bar: < 50 ms) {}", args.rate, ms(p99), verdict(p99 < Duration::from_millis(50)));
    println!(
        "resent messages: {} writes, {differing} changed ACKs (bar: 0) {}",
        after - before,
        verdict(after == before && differing == 0)
    );
    Ok(())
}

/// The interop component for `bench`'s gateway, as the integration account `token` names; its MLLP
/// address.
async fn start_interop(bench: &Bench, token: &str) -> anyhow::Result<SocketAddr> {
    Ok(start_interop_with(bench, token, Vec::new()).await?.0)
}

/// `start_interop`, with scheduling feeds to `feeds`; its MLLP and FHIR addresses.
pub(crate) async fn start_interop_with(
    bench: &Bench,
    token: &str,
    feeds: Vec<pac_interop::feeds::Destination>,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mllp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = mllp.local_addr()?;
    let mut config = pac_interop::InteropConfig::development(
        health.local_addr()?,
        address,
        format!("http://{}", bench.gateway),
        TokenSource::Fixed(Secret::new(token)),
    );
    config.feeds = feeds;
    pac_interop::migrate(&bench.platform, &config).await.context("migrating interop")?;
    let fhir = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let fhir_address = fhir.local_addr()?;
    let listeners = pac_interop::Listeners { grpc: health, mllp, fhir };
    tokio::spawn(pac_interop::serve(bench.platform.clone(), config, listeners, bench.shutdown.clone()));
    Ok((address, fhir_address))
}

/// What a gRPC client does for the same update: find the patient by hospital number, then update
/// the phone with the etag it read.
async fn update_over_grpc(
    mut client: PatientRecordsClient<Channel>,
    credential: &Credential,
    patient: u64,
    phone: String,
) -> Result<(), tonic::Status> {
    let identifier = pb::LocalIdentifier { issuer: "RR8".into(), value: hospital_number(patient) };
    let request = pb::LookupPatientRequest { identifier: Some(Identifier::LocalIdentifier(identifier)) };
    let found = client.lookup_patient(credential.request(request)).await?.into_inner().patient.unwrap_or_default();
    let patient = pb::Patient { id: found.id, etag: found.etag, phone, ..Default::default() };
    let request =
        pb::UpdatePatientRequest { patient: Some(patient), update_mask: Some(prost_types::FieldMask { paths: vec!["phone".into()] }) };
    client.update_patient(credential.request(request)).await.map(drop)
}

/// `rate` A08 messages a second for `seconds`, spread over the connections: each message's ACK
/// latency, and each message with its ACK.
async fn steady(
    connections: &[Connection],
    rate: u64,
    seconds: u64,
    patients: u64,
    controls: &Arc<AtomicU64>,
    changes: &Arc<AtomicU64>,
) -> anyhow::Result<(Vec<Duration>, Vec<(Vec<u8>, Vec<u8>)>)> {
    let per_connection = Duration::from_secs_f64(CONNECTIONS as f64 / rate as f64);
    let count = rate * seconds / CONNECTIONS as u64;
    let tasks = connections.iter().enumerate().map(|(c, connection)| {
        let (connection, controls, changes) = (connection.clone(), controls.clone(), changes.clone());
        tokio::spawn(async move {
            // Each connection starts a quarter of a period after the one before: an even stream.
            tokio::time::sleep(per_connection.mul_f64(c as f64 / CONNECTIONS as f64)).await;
            let mut ticks = tokio::time::interval(per_connection);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut measured = Vec::with_capacity(count as usize);
            for n in 0..count {
                ticks.tick().await;
                let patient = (c as u64 + CONNECTIONS as u64 * n) % patients;
                let message =
                    adt("A08", controls.fetch_add(1, Ordering::Relaxed), patient, &phone(changes.fetch_add(1, Ordering::Relaxed)));
                let started = Instant::now();
                let ack = send(&connection, message.clone()).await?;
                measured.push((started.elapsed(), message, ack));
            }
            Ok::<_, tonic::Status>(measured)
        })
    });
    let mut latencies = Vec::new();
    let mut sent = Vec::new();
    for task in futures::future::join_all(tasks).await {
        for (latency, message, ack) in task?.map_err(|s| anyhow::anyhow!("A08 at a steady rate: {s:?}"))? {
            latencies.push(latency);
            sent.push((message, ack));
        }
    }
    Ok((latencies, sent))
}

#[derive(clap::Args)]
pub struct SiuArgs {
    /// Bookings a second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

/// `pac-load bench siu`: bookings made through the gateway at a steady rate; the time from each
/// booking's answer to its S12 reaching a receiving engine (an MLLP server in this process that
/// answers AA at once) over the interop component's scheduling feed. Bar: p99 < 1 s.
pub async fn booking_to_s12(args: SiuArgs) -> anyhow::Result<()> {
    use pac_proto::scheduling as sched;
    use pac_proto::scheduling::scheduling_client::SchedulingClient;
    if args.rate == 0 || args.seconds == 0 {
        bail!("--rate and --seconds must be at least 1");
    }
    let bench = Bench::start("pac_bench_siu").await?;
    let bookings = args.rate * args.seconds;
    let records = bench.records_pool().await?;
    crate::seed::patients(&records, 0, 0..bookings, "RR8").await?;
    let scheduling = bench.scheduling_pool().await?;
    let clinics = crate::seed::directory(&scheduling, 0, 4, 1, 1, "SIU", "RR8").await?;
    crate::seed::slots(&scheduling, 0, 0..bookings, &clinics, 1, 0, crate::seed::first_slot_start()).await?;

    // The receiving engine: when each appointment's S12 arrived.
    let arrivals: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> = Default::default();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiving = receiver.local_addr()?;
    let seen = arrivals.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = receiver.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, Mllp::default());
                while let Some(Ok(frame)) = framed.next().await {
                    let at = Instant::now();
                    let text = String::from_utf8_lossy(&frame).into_owned();
                    let field = |segment: &str, n: usize| {
                        text.split('\r').find(|s| s.starts_with(segment)).and_then(|s| s.split('|').nth(n)).unwrap_or_default().to_string()
                    };
                    let control = field("MSH", 9);
                    let appointment = field("SCH", 2).split('^').next().unwrap_or_default().to_string();
                    seen.lock().expect("not poisoned").entry(appointment).or_insert(at);
                    let ack = format!("MSH|^~\\&|PAS|RR8|PAC|RR8|20261205||ACK^S12^ACK|R{control}|P|2.5\rMSA|AA|{control}\r");
                    if framed.send(ack.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let identity = Identity { subject: "bench-pas".into(), role: Role::Integration, organisations: vec!["RR8".into()] };
    let account = crate::credentials::development_token(&identity, Duration::from_secs(3600))?;
    let destination = pac_interop::feeds::Destination {
        name: "bench".into(),
        address: receiving.to_string(),
        organisations: vec!["RR8".into()],
        messages: vec!["S12".into()],
        receiving_application: "PAS".into(),
        receiving_facility: "RR8".into(),
        charset: "8859/1".into(),
        ack_timeout_ms: 10_000,
        tls: None,
    };
    start_interop_with(&bench, &account, vec![destination]).await?;

    let coordinator = crate::credentials::development_token(
        &crate::credentials::identity(Role::Coordinator, &["RR8".to_string()]),
        Duration::from_secs(3600),
    )?;
    let credential = Credential::bearer(&coordinator)?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(SchedulingClient::new(tonic::transport::Endpoint::from_shared(format!("http://{}", bench.gateway))?.connect().await?));
    }
    let answered: Arc<std::sync::Mutex<Vec<(String, Instant)>>> = Default::default();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    let mut tasks = Vec::new();
    for n in 0..bookings {
        ticks.tick().await;
        let (mut client, credential, answered) = (clients[(n % 4) as usize].clone(), credential.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let request = sched::BookAppointmentRequest {
                target: Some(sched::book_appointment_request::Target::SlotId(
                    crate::people::numbered(crate::people::Kind::Slot, 0, n).to_string(),
                )),
                patient_id: crate::people::numbered(crate::people::Kind::Patient, 0, n).to_string(),
                ..Default::default()
            };
            let appointment = client.book_appointment(credential.request(request)).await?.into_inner().appointment.unwrap_or_default();
            answered.lock().expect("not poisoned").push((appointment.id, Instant::now()));
            Ok::<_, tonic::Status>(())
        }));
    }
    for task in tasks {
        task.await?.map_err(|s| anyhow::anyhow!("booking: {s:?}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().expect("not poisoned").len() < bookings as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrived = arrivals.lock().expect("not poisoned").clone();
    let answered = answered.lock().expect("not poisoned").clone();
    let missing = answered.iter().filter(|(id, _)| !arrived.contains_key(id)).count();
    let lags = Latencies(answered.iter().filter_map(|(id, at)| arrived.get(id).map(|s12| s12.saturating_duration_since(*at))).collect());
    println!(
        "\n{bookings} bookings through the gateway at {}/s; each S12 at the receiving engine after the booking's answer:\n",
        args.rate
    );
    println!("| p50 | p95 | p99 | max | missing |");
    println!("|---:|---:|---:|---:|---:|");
    let max = lags.0.iter().max().copied().unwrap_or_default();
    println!("| {} | {} | {} | {} | {missing} |", ms(lags.percentile(0.5)), ms(lags.percentile(0.95)), ms(lags.percentile(0.99)), ms(max));
    let p99 = lags.percentile(0.99);
    println!(
        "\nbooking -> ACKed S12 p99 at {}/s: {} (bar: < 1 s) {}",
        args.rate,
        ms(p99),
        verdict(missing == 0 && p99 < Duration::from_secs(1))
    );
    Ok(())
}
