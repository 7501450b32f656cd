//! The gateway alone, over real gRPC on loopback: no service of the platform behind it, only
//! stand-ins that answer (or hang) as a test tells them. The gateway in front of the services is
//! tested end to end (`tests/e2e`).

use std::time::Duration;

use pac_gateway::auth::{Identity, mint_development};
use pac_gateway::policy::Role;
use pac_gateway::{DEVELOPMENT_ISSUER, DEVELOPMENT_TOKEN_KEY, GatewayConfig};
use pac_platform::testkit::{TestDatabase, listener, registration, with_token};
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// A development token of `role` for RR8, living `ttl`.
fn token(role: Role, ttl: Duration) -> String {
    let identity = Identity { subject: format!("{}-1", role.name()), role, organisations: vec!["RR8".into()] };
    mint_development(DEVELOPMENT_TOKEN_KEY.as_bytes(), DEVELOPMENT_ISSUER, "pac-gateway", &identity, ttl)
}

/// A browser's call: gRPC-Web over HTTP/1.1 on the gateway's port (health needs no token).
#[tokio::test]
async fn grpc_web_is_answered_on_the_same_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDatabase::create().await;
    let shutdown = CancellationToken::new();
    let (listener, _) = listener().await;
    let address = listener.local_addr().unwrap();
    let config = GatewayConfig::development(address, "http://127.0.0.1:1".into(), "http://127.0.0.1:1".into(), "http://127.0.0.1:1".into());
    pac_gateway::migrate(&db.platform_config()).await.unwrap();
    tokio::spawn(pac_gateway::serve(db.platform_config(), config, listener, shutdown.clone()));
    let mut stream = None;
    for _ in 0..50 {
        if let Ok(s) = tokio::net::TcpStream::connect(address).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = stream.expect("gateway listening");
    // An empty HealthCheckRequest in one gRPC-Web frame.
    let body = [0u8, 0, 0, 0, 0];
    let head = format!(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.to_lowercase().contains("content-type: application/grpc-web+proto"), "{text}");
    assert!(text.contains("grpc-status:0"), "trailers ride in the body: {text}");
    shutdown.cancel();
}

/// A stand-in service that notes the deadline each call arrives with and works until it is told to
/// stop (its work is dropped).
async fn slow_service() -> (String, tokio::sync::mpsc::UnboundedReceiver<(Option<String>, std::time::Instant)>) {
    let (seen, receiver) = tokio::sync::mpsc::unbounded_channel();
    struct Stopped(Option<String>, tokio::sync::mpsc::UnboundedSender<(Option<String>, std::time::Instant)>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = self.1.send((self.0.take(), std::time::Instant::now()));
        }
    }
    let service = tower::service_fn(move |request: http::Request<axum::body::Body>| {
        let timeout = request.headers().get("grpc-timeout").map(|v| v.to_str().unwrap().to_string());
        let stopped = Stopped(timeout, seen.clone());
        async move {
            let _stopped = stopped;
            tokio::time::sleep(Duration::from_secs(20)).await;
            Ok::<_, std::convert::Infallible>(tonic::Status::ok("").into_http::<axum::body::Body>())
        }
    });
    let url = stand_in(tonic::transport::Server::builder(), service).await;
    (url, receiver)
}

#[tokio::test]
async fn the_callers_deadline_reaches_the_service_and_ends_its_work() {
    let (url, mut seen) = slow_service().await;
    let (gateway, _db, shutdown) = gateway_in_front_of(url.clone(), url, |config| {
        config.deadlines = pac_gateway::proxy::Deadlines { default: Duration::from_millis(700), max: Duration::from_millis(1500) };
    })
    .await;
    let mut records = PatientRecordsClient::new(gateway);
    let coordinator = token(Role::Coordinator, Duration::from_secs(60));
    let mut call = async |deadline: Option<Duration>| {
        let mut request = with_token(records_pb::GetPatientRequest { id: uuid::Uuid::now_v7().to_string() }, Some(&coordinator));
        if let Some(deadline) = deadline {
            request.set_timeout(deadline);
        }
        let started = std::time::Instant::now();
        let status = records.get_patient(request).await.unwrap_err();
        let (timeout, stopped) = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.unwrap().unwrap();
        let millis: u64 = timeout.expect("a deadline is always forwarded").trim_end_matches('m').parse().unwrap();
        (status.code(), millis, stopped.duration_since(started))
    };
    // The caller's own deadline: forwarded, and the service's work ends with it.
    let (code, millis, worked) = call(Some(Duration::from_millis(200))).await;
    assert!(matches!(code, Code::DeadlineExceeded | Code::Cancelled), "{code:?}");
    assert!(millis <= 200, "{millis}");
    assert!(worked < Duration::from_secs(2), "the service worked on for {worked:?}");
    // No deadline: the default. Too long a deadline: the maximum.
    assert!((600..=700).contains(&call(None).await.1));
    let (_, millis, worked) = call(Some(Duration::from_secs(60))).await;
    assert!((1400..=1500).contains(&millis), "{millis}");
    assert!(worked < Duration::from_secs(3), "{worked:?}");
    shutdown.cancel();
}

/// Serves `service` (answering every path) with `server`'s settings on a new port; its URL.
async fn stand_in<S>(mut server: tonic::transport::Server, service: S) -> String
where
    S: tower::Service<http::Request<axum::body::Body>, Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let (listener, url) = listener().await;
    let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(service));
    tokio::spawn(server.add_routes(routes).serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
    url
}

/// A gateway with one connection to each service URL: `records` for records, `others` for
/// scheduling and referrals. Its channel, its database and its shutdown.
async fn gateway_in_front_of(
    records: String,
    others: String,
    adjust: impl FnOnce(&mut GatewayConfig),
) -> (tonic::transport::Channel, TestDatabase, CancellationToken) {
    let db = TestDatabase::create().await;
    let shutdown = CancellationToken::new();
    let (gateway_listener, gateway_url) = listener().await;
    let mut config = GatewayConfig::development(gateway_listener.local_addr().unwrap(), records, others.clone(), others);
    config.connections = 1;
    adjust(&mut config);
    pac_gateway::migrate(&db.platform_config()).await.unwrap();
    tokio::spawn(pac_gateway::serve(db.platform_config(), config, gateway_listener, shutdown.clone()));
    (tonic::transport::Endpoint::from_shared(gateway_url).unwrap().connect_lazy(), db, shutdown)
}

/// A stand-in service answering every call with `code`, counting the calls.
async fn answering(code: Code) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let service = tower::service_fn(move |_: http::Request<axum::body::Body>| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { Ok::<_, std::convert::Infallible>(tonic::Status::new(code, "stand-in").into_http::<axum::body::Body>()) }
    });
    let url = stand_in(tonic::transport::Server::builder(), service).await;
    (url, calls)
}

#[tokio::test]
async fn reads_are_retried_on_another_replica_and_writes_are_not() {
    use std::sync::atomic::Ordering::SeqCst;
    let (down, down_calls) = answering(Code::Unavailable).await;
    let (up, up_calls) = answering(Code::NotFound).await;
    // Two replicas of records, one connection each, taken in turn; one of them is down.
    let (gateway, _db, shutdown) = gateway_in_front_of(format!("{down},{up}"), up, |_| {}).await;
    let mut records = PatientRecordsClient::new(gateway);
    let coordinator = token(Role::Coordinator, Duration::from_secs(60));
    for _ in 0..4 {
        let read = with_token(records_pb::GetPatientRequest { id: uuid::Uuid::now_v7().to_string() }, Some(&coordinator));
        assert_eq!(records.get_patient(read).await.unwrap_err().code(), Code::NotFound, "a read gets through");
    }
    assert_eq!(up_calls.load(SeqCst), 4, "every read answered by the replica that is up");
    assert!(down_calls.load(SeqCst) >= 1, "the replicas were taken in turn");
    let before = (down_calls.load(SeqCst), up_calls.load(SeqCst));
    // A read too large to keep a copy of for a retry is refused, and reaches no replica.
    let huge = records_pb::SearchPatientsRequest { phone: "1".repeat(70 * 1024), ..Default::default() };
    assert_eq!(records.search_patients(with_token(huge, Some(&coordinator))).await.unwrap_err().code(), Code::OutOfRange);
    assert_eq!((down_calls.load(SeqCst), up_calls.load(SeqCst)), before, "nothing forwarded");
    let mut codes = Vec::new();
    for _ in 0..4 {
        let write = with_token(registration("Retry"), Some(&coordinator));
        codes.push(records.register_patient(write).await.unwrap_err().code());
    }
    let after = (down_calls.load(SeqCst), up_calls.load(SeqCst));
    assert_eq!((after.0 - before.0) + (after.1 - before.1), 4, "each write sent once");
    assert!(codes.contains(&Code::Unavailable), "a write to the replica that is down is not retried: {codes:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn writes_carry_on_while_a_service_closes_its_older_connections() {
    // A stand-in records service that answers every call after a moment, and closes each
    // connection 100 ms after it opened, as services do (`PAC_GRPC_MAX_CONNECTION_AGE_MS`) so that
    // connections spread over new replicas.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let service = tower::service_fn(move |_: http::Request<axum::body::Body>| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, std::convert::Infallible>(tonic::Status::new(Code::AlreadyExists, "stand-in").into_http::<axum::body::Body>())
        }
    });
    let url = stand_in(tonic::transport::Server::builder().max_connection_age(Duration::from_millis(100)), service).await;
    let (gateway, _db, shutdown) = gateway_in_front_of(url.clone(), url, |_| {}).await;
    let records = PatientRecordsClient::new(gateway);
    let coordinator = token(Role::Coordinator, Duration::from_secs(60));
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    let mut callers = Vec::new();
    for _ in 0..8 {
        let (mut records, coordinator) = (records.clone(), coordinator.clone());
        callers.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            while std::time::Instant::now() < until {
                let write = with_token(registration("Aged"), Some(&coordinator));
                codes.push(records.register_patient(write).await.unwrap_err().code());
            }
            codes
        }));
    }
    let mut codes = Vec::new();
    for caller in callers {
        codes.extend(caller.await.unwrap());
    }
    let failed: Vec<_> = codes.iter().filter(|c| **c != Code::AlreadyExists).collect();
    assert!(failed.is_empty(), "{} of {} writes failed: {failed:?}", failed.len(), codes.len());
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), codes.len(), "each write reached the service once");
    assert!(codes.len() > 200, "{} writes", codes.len());
    shutdown.cancel();
}

#[tokio::test]
async fn a_call_to_a_service_that_never_answers_ends_at_its_deadline() {
    // The connections services and the gateway call each other over: a call with a deadline ends
    // with DEADLINE_EXCEEDED shortly after it, even when the service never answers (here: a
    // process that accepts connections and then reads nothing).
    let (hung, url) = listener().await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = hung.accept().await {
            held.push(connection);
        }
    });
    let mut records = PatientRecordsClient::new(pac_platform::balance::Balanced::new(&url, 1).unwrap());
    let mut request = tonic::Request::new(records_pb::GetPatientRequest { id: uuid::Uuid::now_v7().to_string() });
    request.set_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let status = records.get_patient(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "ended after {:?}", started.elapsed());
}
