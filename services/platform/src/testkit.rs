//! Test support: a throwaway database per test on a real Postgres (found, or started privately once
//! per machine), dropped when the test ends; components on loopback ports; callers and their signed
//! context; what every suite asserts about an answer.
//!
//! What starts the services themselves is in the end-to-end test crate (`tests/e2e`, `pac-e2e`): the
//! kit cannot depend on the services built on it.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::caller::{Actor, CALLER_HEADER, Caller, CallerVerifier};
use crate::config::PlatformConfig;
use crate::local_postgres::LocalPostgres;

/// Connections of each component's pool in tests: with four components (three services and the
/// gateway) and two tests at once, a test binary stays under 30 connections.
pub const POOL_SIZE: u32 = 3;

/// Port of the private test cluster, when one has to be started.
const TEST_CLUSTER_PORT: u16 = 54329;

static SERVER: OnceCell<String> = OnceCell::const_new();

/// The administrator URL of the server tests use: `DATABASE_URL`, else 127.0.0.1:5432, else a private
/// cluster (left running for the next test run; `pg_ctl -D <tmp>/pac-test-postgres stop` stops it).
pub async fn server_url() -> String {
    SERVER
        .get_or_init(|| async {
            let data_dir = std::env::temp_dir().join("pac-test-postgres");
            let server = LocalPostgres::find_or_start(&data_dir, TEST_CLUSTER_PORT, false)
                .await
                .expect("no Postgres for tests: set DATABASE_URL, run one on 127.0.0.1:5432, or install PostgreSQL");
            server.url.clone()
        })
        .await
        .clone()
}

/// A database of its own for one test.
pub struct TestDatabase {
    pub name: String,
    pub admin_url: String,
    server_url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let server_url = server_url().await;
        let name = format!("pac_test_{}", Uuid::now_v7().simple());
        let mut conn = PgConnectOptions::from_str(&server_url).unwrap().connect().await.expect("connect to test server");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create test database");
        let admin_url = PgConnectOptions::from_str(&server_url).unwrap().database(&name).to_url_lossy().to_string();
        Self { name, admin_url, server_url }
    }

    /// Development settings pointed at this database, with small pools: tests share the server with
    /// other test binaries and running platforms (`max_connections` is 100 by default), and a test
    /// starts up to four components (see [`POOL_SIZE`]).
    pub fn platform_config(&self) -> PlatformConfig {
        let mut config = PlatformConfig::development(&self.admin_url);
        config.db.max_connections = POOL_SIZE;
        config
    }

    /// A small administrator pool on this database, for a test's own queries.
    pub async fn admin_pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&self.admin_url).await.expect("connect to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        // Dropped inside a test's runtime: do the async work on a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) = PgConnectOptions::from_str(&server_url).unwrap().connect().await {
                    let _ =
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

/// A log writer that keeps everything written to it, for tests that read a service's log output.
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A listener on a loopback port of its own, and its URL (`http://127.0.0.1:<port>`).
pub async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("a bound address"));
    (listener, url)
}

/// A port nothing listens on now, and not handed out before in this test binary: a component binds
/// it later, and tests running side by side must not be given the same one meanwhile.
pub fn free_port() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// A channel to the component on `addr`, connected at its first call. On loopback a connection is
/// made or refused at once; the short timeout ends a call to a component that is down or hung soon.
pub fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_timeout(Duration::from_secs(2)).connect_lazy()
}

/// A coordinator acting for `organisation` only, with `permissions`.
pub fn member_of(subject: &str, organisation: &str, permissions: &[&str]) -> Caller {
    Caller {
        actor: Actor { subject: subject.into(), role: "coordinator".into(), organisation: organisation.into() },
        organisations: vec![organisation.into()],
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
    }
}

/// One of the platform's services (`subject`, such as `pac-scheduling`) calling: unscoped.
pub fn service_caller(subject: &str) -> Caller {
    Caller {
        actor: Actor { subject: subject.into(), role: "service".into(), organisation: String::new() },
        organisations: Vec::new(),
        permissions: Vec::new(),
    }
}

/// `message` from `caller`, its context signed with the deployment's internal key, as the gateway
/// (or a service calling another) sends it.
pub fn signed<T>(platform: &PlatformConfig, message: T, caller: &Caller) -> Request<T> {
    let token = CallerVerifier::new(&platform.internal_key, false).sign(caller, Duration::from_secs(300));
    let mut request = Request::new(message);
    request.metadata_mut().insert(CALLER_HEADER, token.parse().unwrap());
    request
}

/// `message` with `token` (if any) as its bearer token, as a client of the gateway sends it.
pub fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// A registration of Ada `family_name` (born 1980-02-03, LS6 2AA), a possible duplicate allowed.
pub fn registration(family_name: &str) -> pac_proto::records::RegisterPatientRequest {
    use pac_proto::common::{Address, Date};
    pac_proto::records::RegisterPatientRequest {
        patient: Some(pac_proto::records::Patient {
            given_name: "Ada".into(),
            family_name: family_name.into(),
            birth_date: Some(Date { year: 1980, month: 2, day: 3 }),
            sex: 2,
            address: Some(Address { postcode: "LS6 2AA".into(), ..Default::default() }),
            ..Default::default()
        }),
        request_id: String::new(),
        allow_possible_duplicate: true,
    }
}

/// The patient ids a response names for the audit trail.
pub fn audited<T>(response: &Response<T>) -> Vec<String> {
    response.metadata().get(crate::audit::PATIENTS_HEADER).map(|v| crate::audit::patients_in(v.to_str().unwrap())).unwrap_or_default()
}

/// Asserts the code and the ErrorInfo reason.
pub fn assert_error(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(details.error_info().map(|i| i.reason.as_str()), Some(reason), "{status:?}");
}

/// Polls `check` until it is true or `timeout` passes; whether it became true.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
