//! Starts the records service in-process on a loopback port against a database of its own.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use pac_platform::PlatformConfig;
use pac_platform::caller::{Actor, CALLER_HEADER, Caller, CallerVerifier, PERMISSION_RESTRICTED_READ};
use pac_platform::testkit::TestDatabase;
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
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to records service");
        Self { addr, db, platform, channel, shutdown, task }
    }

    pub fn client(&self) -> PatientRecordsClient<Channel> {
        PatientRecordsClient::new(self.channel.clone())
    }

    /// A caller context signed with the deployment's internal key.
    pub fn caller_token(&self, permissions: &[&str]) -> String {
        let caller = Caller {
            actor: Actor { subject: "coordinator-1".into(), role: "coordinator".into(), organisation: "RR8".into() },
            organisations: vec!["RR8".into()],
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
        };
        CallerVerifier::new(&self.platform.internal_key, false).sign(&caller, Duration::from_secs(300))
    }

    pub fn as_caller<T>(&self, message: T, permissions: &[&str]) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(CALLER_HEADER, self.caller_token(permissions).parse().unwrap());
        request
    }

    pub fn privileged<T>(&self, message: T) -> Request<T> {
        self.as_caller(message, &[PERMISSION_RESTRICTED_READ])
    }

    /// `message` from `caller`, its context signed with the deployment's internal key.
    pub fn signed<T>(&self, message: T, caller: &Caller) -> Request<T> {
        let token = CallerVerifier::new(&self.platform.internal_key, false).sign(caller, Duration::from_secs(300));
        let mut request = Request::new(message);
        request.metadata_mut().insert(CALLER_HEADER, token.parse().unwrap());
        request
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

/// A coordinator acting for `organisation` only.
pub fn member_of(subject: &str, organisation: &str) -> Caller {
    Caller {
        actor: Actor { subject: subject.into(), role: "coordinator".into(), organisation: organisation.into() },
        organisations: vec![organisation.into()],
        permissions: vec![PERMISSION_RESTRICTED_READ.into()],
    }
}

/// One of the platform's services calling: unscoped.
pub fn service_caller() -> Caller {
    Caller {
        actor: Actor { subject: "pac-scheduling".into(), role: "service".into(), organisation: String::new() },
        organisations: Vec::new(),
        permissions: Vec::new(),
    }
}

/// The patient ids a response names for the audit trail.
pub fn audited<T>(response: &tonic::Response<T>) -> Vec<String> {
    response
        .metadata()
        .get(pac_platform::audit::PATIENTS_HEADER)
        .map(|v| pac_platform::audit::patients_in(v.to_str().unwrap()))
        .unwrap_or_default()
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
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(details.error_info().map(|i| i.reason.as_str()), Some(reason), "{status:?}");
    if let Some(field) = field {
        let violations = &details.bad_request().expect("field violations").field_violations;
        assert!(violations.iter().any(|v| v.field == field), "no violation on {field}: {violations:?}");
    }
}
