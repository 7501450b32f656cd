//! Starts the records service in-process on a loopback port against a database of its own.
// Also compiled into the telemetry test binary, which uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use pac_platform::PlatformConfig;
use pac_platform::caller::{Caller, PERMISSION_RESTRICTED_READ};
use pac_platform::testkit::{TestDatabase, channel, member_of, signed};
use pac_proto::common::{Address, Date};
use pac_proto::records as pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_records::RecordsConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

pub struct TestServer {
    pub addr: SocketAddr,
    pub db: TestDatabase,
    pub platform: PlatformConfig,
    pub channel: Channel,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        let db = TestDatabase::create().await;
        let platform = db.platform_config();
        Self::start_on(db, platform).await
    }

    pub async fn start_on(db: TestDatabase, platform: PlatformConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = RecordsConfig::development(addr);
        pac_records::migrate(&platform, &config).await.expect("migrate");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(pac_records::serve(platform.clone(), config, listener, shutdown.clone()));
        Self { addr, db, platform, channel: channel(addr), shutdown, task }
    }

    pub fn client(&self) -> PatientRecordsClient<Channel> {
        PatientRecordsClient::new(self.channel.clone())
    }

    /// `message` from a coordinator of RR8 with `permissions`.
    pub fn as_caller<T>(&self, message: T, permissions: &[&str]) -> Request<T> {
        self.signed(message, &member_of("coordinator-1", "RR8", permissions))
    }

    pub fn privileged<T>(&self, message: T) -> Request<T> {
        self.as_caller(message, &[PERMISSION_RESTRICTED_READ])
    }

    /// `message` from `caller`, its context signed with the deployment's internal key.
    pub fn signed<T>(&self, message: T, caller: &Caller) -> Request<T> {
        signed(&self.platform, message, caller)
    }

    /// Admin connection to this test's database.
    pub async fn admin(&self) -> sqlx::PgPool {
        self.db.admin_pool().await
    }

    pub async fn patient_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM records.patients").fetch_one(&self.admin().await).await.unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

pub fn date(year: i32, month: i32, day: i32) -> Option<Date> {
    Some(Date { year, month, day })
}

/// A valid patient; `n` varies name, birth date and contact so patients do not look alike.
pub fn patient(n: u32) -> pb::Patient {
    const GIVEN: [&str; 8] = ["Ada", "Bilal", "Ceri", "Dara", "Efua", "Fionn", "Gita", "Hamish"];
    const FAMILY: [&str; 8] = ["Lovelace", "Okafor", "Pritchard", "Quinn", "Rahman", "Sokolova", "Tremayne", "Underwood"];
    pb::Patient {
        given_name: GIVEN[(n % 8) as usize].into(),
        family_name: format!("{}{}", FAMILY[((n / 8) % 8) as usize], suffix(n / 64)),
        birth_date: date(1950 + (n % 60) as i32, 1 + (n % 12) as i32, 1 + (n % 28) as i32),
        sex: 1 + (n % 2) as i32,
        address: Some(Address {
            lines: vec![format!("{} Infirmary Street", n + 1)],
            locality: "Leeds".into(),
            postcode: "LS1 3EX".into(),
            ..Default::default()
        }),
        phone: format!("07700 9{:05}", n % 100_000),
        email: format!("patient{n}@example.org"),
        ..Default::default()
    }
}

fn suffix(n: u32) -> String {
    // Letters only (names may not contain digits): 0 -> "", 1 -> "b", ...
    if n == 0 { String::new() } else { format!("-{}", char::from(b'a' + (n % 26) as u8)) }
}

pub fn register(patient: pb::Patient, request_id: &str) -> pb::RegisterPatientRequest {
    pb::RegisterPatientRequest { patient: Some(patient), request_id: request_id.into(), allow_possible_duplicate: false }
}

/// Asserts the code, the ErrorInfo reason, and (when given) the field of the first violation.
pub fn assert_error(status: &Status, code: Code, reason: &str, field: Option<&str>) {
    pac_platform::testkit::assert_error(status, code, reason);
    if let Some(field) = field {
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("field violations").field_violations;
        assert!(violations.iter().any(|v| v.field == field), "no violation on {field}: {violations:?}");
    }
}
