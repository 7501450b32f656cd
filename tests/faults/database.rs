//! The database goes away under load, on a private Postgres of the test's own: stopped as in a
//! crash (`pg_ctl stop -m immediate`) and paused (every server process SIGSTOPped). Callers are told
//! UNAVAILABLE once a call has waited `PAC_DB_ACQUIRE_TIMEOUT_MS` for a connection (a caller whose
//! deadline is shorter hears DEADLINE_EXCEEDED first), never INTERNAL; health goes NOT_SERVING; and
//! the service answers again within 5 s of the database coming back, without a restart. Every
//! registration acknowledged before, during or after is there at the end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pac_platform::local_postgres::{LocalPostgres, ensure_database};
use pac_proto::records::patient_records_client::PatientRecordsClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::registration;
use pac_platform::testkit::{channel, eventually, free_port};

/// What the load saw: each call's outcome, by when it ended.
#[derive(Default)]
struct Observed {
    outcomes: Vec<(Instant, Option<Code>)>,
    acknowledged: Vec<String>,
}

async fn serving(health: &mut HealthClient<tonic::transport::Channel>) -> bool {
    let request = tonic_health::pb::HealthCheckRequest { service: "pac.records.v1.PatientRecords".into() };
    health.check(request).await.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

/// How long after `since` the first successful call ended.
fn recovered_after(observed: &Observed, since: Instant) -> Option<Duration> {
    observed.outcomes.iter().find(|(at, code)| *at > since && code.is_none()).map(|(at, _)| *at - since)
}

fn codes_between(observed: &Observed, from: Instant, to: Instant) -> BTreeMap<String, usize> {
    let mut codes = BTreeMap::new();
    for (_, code) in observed.outcomes.iter().filter(|(at, _)| *at >= from && *at < to) {
        *codes.entry(code.map_or("OK".to_string(), |c| format!("{c:?}"))).or_default() += 1;
    }
    codes
}

fn signal(pids: &[u32], signal: &str) {
    for pid in pids {
        let _ = std::process::Command::new("kill").args([signal, &pid.to_string()]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_or_paused_database_is_unavailable_never_internal_and_recovers_within_five_seconds() {
    database_faults(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: part of the full fault suite (RELIABILITY.md)"]
async fn five_database_crashes_under_load_lose_nothing() {
    database_faults(5).await;
}

async fn database_faults(crash_count: usize) {
    let data_dir = std::env::temp_dir().join(format!("pac-fault-postgres-{}", uuid::Uuid::now_v7().simple()));
    let server = LocalPostgres::start_private(&data_dir, free_port().port()).await.expect("a private Postgres");
    let url = ensure_database(&server.url, "pac_faults").await.unwrap();
    let mut platform = pac_platform::PlatformConfig::development(&url);
    platform.db.max_connections = 3;
    // A call waits this long for a connection before it is told UNAVAILABLE: within the callers'
    // deadline, so the service, not the deadline, answers while the database is away.
    platform.db.acquire_timeout = Duration::from_secs(1);
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = pac_records::RecordsConfig::development(addr);
    pac_records::migrate(&platform, &config).await.unwrap();
    tokio::spawn(pac_records::serve(platform.clone(), config, listener, shutdown.clone()));
    let records = PatientRecordsClient::new(channel(addr));
    let mut health = HealthClient::new(channel(addr));

    // Load: registrations with request ids (a failed one is retried under the same id), each with a
    // three-second deadline, four at a time.
    let observed = Arc::new(Mutex::new(Observed::default()));
    let load = CancellationToken::new();
    let mut workers = Vec::new();
    for worker in 0..4u32 {
        let (mut records, observed, load) = (records.clone(), observed.clone(), load.clone());
        workers.push(tokio::spawn(async move {
            let mut n = worker;
            let mut request_id = uuid::Uuid::now_v7().to_string();
            while !load.is_cancelled() {
                let mut request = tonic::Request::new(registration(n, request_id.clone()));
                request.set_timeout(Duration::from_secs(3));
                let outcome = records.register_patient(request).await;
                {
                    let mut observed = observed.lock().unwrap();
                    match outcome {
                        Ok(response) => {
                            observed.outcomes.push((Instant::now(), None));
                            observed.acknowledged.push(response.into_inner().patient.unwrap().id);
                            n += 4;
                            request_id = uuid::Uuid::now_v7().to_string();
                        }
                        // The caller's own deadline, enforced by the client: as DEADLINE_EXCEEDED.
                        Err(status) if status.code() == Code::Cancelled && status.message().contains("Timeout expired") => {
                            observed.outcomes.push((Instant::now(), Some(Code::DeadlineExceeded)))
                        }
                        Err(status) => observed.outcomes.push((Instant::now(), Some(status.code()))),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(serving(&mut health).await, "serving before the fault");

    // 1. Crashes.
    let mut crashes = Vec::new();
    for _ in 0..crash_count {
        let crashed = Instant::now();
        server.crash().expect("pg_ctl stop -m immediate");
        let not_serving = eventually(Duration::from_secs(10), || {
            let mut health = health.clone();
            async move { !serving(&mut health).await }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let back = Instant::now();
        server.restart().await.expect("Postgres starts again");
        let serving_again = eventually(Duration::from_secs(15), || {
            let mut health = health.clone();
            async move { serving(&mut health).await }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        crashes.push((crashed, back, not_serving, serving_again));
    }

    // 2. A pause.
    let pids = server.server_processes().unwrap();
    let paused = Instant::now();
    signal(&pids, "-STOP");
    let not_serving_paused = eventually(Duration::from_secs(10), || {
        let mut health = health.clone();
        async move { !serving(&mut health).await }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resumed = Instant::now();
    signal(&pids, "-CONT");
    tokio::time::sleep(Duration::from_secs(6)).await;
    load.cancel();
    for worker in workers {
        worker.await.unwrap();
    }

    // Every worker has stopped: what they saw is this test's alone now.
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    let pause_codes = codes_between(&observed, paused, resumed);
    let after_pause = recovered_after(&observed, resumed);
    for (n, (crashed, back, not_serving, serving_again)) in crashes.iter().enumerate() {
        let crash_codes = codes_between(&observed, *crashed, *back);
        let after_crash = recovered_after(&observed, *back);
        eprintln!("crash {}: {crash_codes:?} while down, answering again {after_crash:?} after Postgres restarted", n + 1);
        assert!(*not_serving, "health did not go NOT_SERVING after crash {}", n + 1);
        assert!(*serving_again, "health did not come back after crash {}", n + 1);
        assert!(crash_codes.contains_key("Unavailable"), "the crash was not noticed: {crash_codes:?}");
        assert!(crash_codes.keys().all(|c| c == "Unavailable" || c == "OK"), "while down, callers are told UNAVAILABLE: {crash_codes:?}");
        assert!(after_crash.is_some_and(|d| d <= Duration::from_secs(5)), "recovery after crash {} took {after_crash:?}", n + 1);
    }
    eprintln!("pause: {pause_codes:?} while paused, answering again {after_pause:?} after it resumed");
    let wrong: Vec<_> =
        observed.outcomes.iter().filter_map(|(_, c)| *c).filter(|c| !matches!(c, Code::Unavailable | Code::DeadlineExceeded)).collect();
    assert!(wrong.is_empty(), "callers were told {wrong:?}");
    assert!(not_serving_paused, "health did not go NOT_SERVING while the database was paused");
    assert!(after_pause.is_some_and(|d| d <= Duration::from_secs(5)), "recovery after the pause took {after_pause:?}");

    // Every acknowledged registration is there, once.
    let check = sqlx::PgPool::connect(&url).await.unwrap();
    let ids: Vec<uuid::Uuid> = observed.acknowledged.iter().map(|id| id.parse().unwrap()).collect();
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM records.patients WHERE id = ANY($1)").bind(&ids).fetch_one(&check).await.unwrap();
    assert_eq!(stored as usize, ids.len(), "acknowledged registrations lost");
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM records.outbox WHERE event_type = 'PatientRegistered' AND aggregate_id = ANY($1)")
            .bind(&ids)
            .fetch_one(&check)
            .await
            .unwrap();
    assert_eq!(events as usize, ids.len(), "one event per registration");
    check.close().await;
    shutdown.cancel();
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
}
