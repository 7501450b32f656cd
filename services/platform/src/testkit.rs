//! Test support: a throwaway database per test on a real Postgres (found, or started privately once
//! per machine), dropped when the test ends.

use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::OnceCell;
use uuid::Uuid;

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
