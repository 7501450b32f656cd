//! `pac health`, the containers' health check: run as a container runs it, against `pac serve`
//! started from the environment, and against a health service that reports NOT_SERVING.

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pac_platform::testkit::{TestDatabase, free_port};

const PAC: &str = env!("CARGO_BIN_EXE_pac");

fn pac(args: &[&str]) -> Output {
    Command::new(PAC).args(args).stdin(Stdio::null()).output().expect("run pac")
}

fn health(addr: SocketAddr, service: Option<&str>) -> Output {
    let addr = addr.to_string();
    let mut args = vec!["health", "--addr", addr.as_str(), "--timeout", "2"];
    if let Some(service) = service {
        args.extend(["--service", service]);
    }
    pac(&args)
}

/// The environment a records container gets: its own listen address, and production's settings
/// but one: the service roles are shared by every test database on the server, so they keep their
/// development password, which production refuses; the environment is development, with production's
/// caller-context requirement.
fn container_env(command: &mut Command, db: &TestDatabase, addr: SocketAddr) {
    command
        .env_clear()
        .env("PAC_ENVIRONMENT", "development")
        .env("PAC_REQUIRE_CALLER_CONTEXT", "true")
        .env("DATABASE_URL", &db.admin_url)
        .env("PAC_DB_ROLE_PASSWORD", pac_platform::config::DEVELOPMENT_ROLE_PASSWORD)
        .env("PAC_INTERNAL_KEY", "health-test-internal-key-0123456789abcdef")
        .env("PAC_RECORDS_ADDR", addr.to_string())
        .env("PAC_SHUTDOWN_GRACE_MS", "2000")
        .env("RUST_LOG", "warn");
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pac_health_follows_a_served_component_from_start_to_shutdown() {
    let db = TestDatabase::create().await;
    let addr = free_port();

    let mut migrate = Command::new(PAC);
    container_env(&mut migrate, &db, addr);
    let migrated = migrate.args(["migrate", "records"]).output().expect("pac migrate");
    assert!(migrated.status.success(), "pac migrate records: {}", String::from_utf8_lossy(&migrated.stderr));

    // Nothing listens yet: not healthy.
    let before = health(addr, None);
    assert!(!before.status.success());
    assert!(String::from_utf8_lossy(&before.stderr).contains("cannot connect"), "{before:?}");

    let mut serve = Command::new(PAC);
    container_env(&mut serve, &db, addr);
    let mut served = Served(serve.args(["serve", "records"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("pac serve"));

    let started = Instant::now();
    loop {
        let answer = health(addr, None);
        if answer.status.success() {
            assert!(String::from_utf8_lossy(&answer.stdout).contains("SERVING"), "{answer:?}");
            break;
        }
        assert!(served.0.try_wait().unwrap().is_none(), "pac serve records exited");
        assert!(started.elapsed() < Duration::from_secs(60), "records never became healthy: {answer:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let named = health(addr, Some("pac.records.v1.PatientRecords"));
    assert!(named.status.success(), "{named:?}");
    let unknown = health(addr, Some("pac.nothing.v1.Nothing"));
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("NotFound"), "{unknown:?}");

    // SIGTERM, as a container runtime stops it: it drains and exits cleanly, and is then not healthy.
    let terminated = Command::new("kill").args(["-TERM", &served.0.id().to_string()]).status().expect("kill");
    assert!(terminated.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = served.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "pac serve records did not stop within its drain time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "pac serve records exited with {exit:?}");
    assert!(!health(addr, None).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn pac_health_fails_while_a_component_reports_not_serving() {
    use tonic_health::ServingStatus;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::NotServing).await;
    reporter.set_service_status("pac.records.v1.PatientRecords", ServingStatus::Serving).await;
    let server = tokio::spawn(
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let check = |service: Option<&'static str>| tokio::task::spawn_blocking(move || health(addr, service));
    let whole = check(None).await.unwrap();
    assert_eq!(whole.status.code(), Some(1), "{whole:?}");
    assert!(String::from_utf8_lossy(&whole.stderr).contains("NOT_SERVING"), "{whole:?}");
    assert!(check(Some("pac.records.v1.PatientRecords")).await.unwrap().status.success());

    reporter.set_service_status("", ServingStatus::Serving).await;
    assert!(check(None).await.unwrap().status.success());
    server.abort();
}
