//! One caller flooding searches, another reading: a test binary of its own, so that the latency
//! it measures is not the other tests' load (test binaries run one after another).

use std::time::Duration;

use pac_e2e::gateway::start;
use pac_gateway::auth::{Identity, mint_development};
use pac_gateway::policy::Role;
use pac_gateway::{DEVELOPMENT_ISSUER, DEVELOPMENT_TOKEN_KEY};
use pac_platform::testkit::{registration, with_token};
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use tokio_util::sync::CancellationToken;

/// Found by an attack: 32 searches at once from one coordinator, each with a name of 4,000 words,
/// took the database from everyone (another user's `GetPatient` went from 3 ms to 4.3 s). Names
/// are bounded to what a person types, and each caller has only a few searches in flight; another
/// caller's reads stay quick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_flooding_searches_does_not_slow_another_callers_reads() {
    use tonic_types::StatusExt;
    let p = start().await;
    let as_subject = |subject: &str| {
        let identity = Identity { subject: subject.into(), role: Role::Coordinator, organisations: vec!["RR8".into()] };
        mint_development(DEVELOPMENT_TOKEN_KEY.as_bytes(), DEVELOPMENT_ISSUER, "pac-gateway", &identity, Duration::from_secs(600))
    };
    let (flooder, reader) = (as_subject("flooder"), as_subject("reader"));
    let mut records = PatientRecordsClient::new(p.gateway.clone());
    let surnames = ["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson", "Wright"];
    let mut ids = Vec::new();
    for n in 0..100 {
        let registration = registration(&format!("{}-{}", surnames[n % 10], surnames[(n / 10) % 10]));
        ids.push(records.register_patient(with_token(registration, Some(&reader))).await.unwrap().into_inner().patient.unwrap().id);
    }
    // 4,000 words of three letters: under the 16 KiB every text field is held to.
    let words: Vec<&str> = ["Smi", "Jon", "Tay", "Bro", "Wil", "Dav", "Rob", "Wri"].iter().cycle().take(4_000).copied().collect();
    let huge = words.join(" ");
    let long = surnames[..8].join(" ");

    // The reader alone first, on a connection of its own: this machine's pace for reads now (the
    // machines tests run on are shared, so a fixed bound would measure the neighbours).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", p.address)).unwrap().connect().await.unwrap();
    let mut own = PatientRecordsClient::new(channel);
    let alone = read_for(&mut own, &ids, &reader, Duration::from_secs(3)).await;

    let stop = CancellationToken::new();
    let refusals = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<String, u32>::new()));
    let mut flood = Vec::new();
    for task in 0..32 {
        let (channel, stop, flooder, refusals) = (p.gateway.clone(), stop.clone(), flooder.clone(), refusals.clone());
        let name = if task % 2 == 0 { huge.clone() } else { long.clone() };
        flood.push(tokio::spawn(async move {
            let mut records = PatientRecordsClient::new(channel);
            while !stop.is_cancelled() {
                let search = records_pb::SearchPatientsRequest { name: name.clone(), ..Default::default() };
                if let Err(status) = records.search_patients(with_token(search, Some(&flooder))).await {
                    let details = status.get_error_details();
                    let violation = details.bad_request().and_then(|b| b.field_violations.first()).map(|v| v.reason.clone());
                    let reason = violation.or_else(|| details.error_info().map(|i| i.reason.clone())).unwrap_or_default();
                    *refusals.lock().unwrap().entry(reason).or_default() += 1;
                    // It waits as it is told before trying again, and tries a refused search again
                    // every 100 ms (a client would not try it again at all).
                    let wait = status.get_error_details().retry_info().and_then(|r| r.retry_delay);
                    tokio::time::sleep(wait.unwrap_or(Duration::from_millis(100))).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = read_for(&mut own, &ids, &reader, Duration::from_secs(5)).await;
    stop.cancel();
    for task in flood {
        task.await.unwrap();
    }
    let (p50, p99) = percentiles(took);
    let (alone_p50, alone_p99) = percentiles(alone);
    let refusals = refusals.lock().unwrap().clone();
    eprintln!(
        "reads alone: median {alone_p50:?}, p99 {alone_p99:?}; beside the flood: median {p50:?}, p99 {p99:?}; the flooder's refusals {refusals:?}"
    );
    // Before the cap a read beside the flood took seconds (a median of 4.3 s against 3 ms alone).
    // With it, a read waits at most for the flooder's two searches' share of the machine: a p99
    // under 50 ms (the bound this test has always had), and a median within reach of the reads' own.
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?} beside the flood, {alone_p99:?} alone");
    assert!(p50 < (alone_p50 * 20).max(Duration::from_millis(50)), "median {p50:?} beside the flood, {alone_p50:?} alone");
    assert!(refusals.get("NAME_TOO_LONG").is_some_and(|n| *n > 0), "{refusals:?}");
}

/// Reads patients for `how_long`; how long each read took (`Duration::MAX` for a failed one).
async fn read_for(
    client: &mut PatientRecordsClient<tonic::transport::Channel>,
    ids: &[String],
    token: &str,
    how_long: Duration,
) -> Vec<Duration> {
    let mut took = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < how_long {
        let id = ids[took.len() % ids.len()].clone();
        let at = std::time::Instant::now();
        let mut request = with_token(records_pb::GetPatientRequest { id }, Some(token));
        request.set_timeout(Duration::from_secs(10));
        let outcome = client.get_patient(request).await;
        took.push(if outcome.is_ok() { at.elapsed() } else { Duration::MAX });
    }
    took
}

fn percentiles(mut took: Vec<Duration>) -> (Duration, Duration) {
    took.sort();
    (took[took.len() / 2], took[took.len() * 99 / 100])
}
