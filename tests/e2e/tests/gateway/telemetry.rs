//! With the production telemetry stack installed: a client's call through the gateway is one
//! trace. The gateway's span continues the client's `traceparent`, the service's span is the
//! gateway's child, and neither the spans nor the log lines carry patient data.

use std::time::Duration;

use opentelemetry_sdk::trace::InMemorySpanExporter;
use pac_gateway::auth::{Identity, mint_development};
use pac_gateway::policy::Role;
use pac_gateway::{DEVELOPMENT_ISSUER, DEVELOPMENT_TOKEN_KEY, GatewayConfig};
use pac_platform::config::TelemetryConfig;
use pac_platform::testkit::TestDatabase;
use pac_proto::common::{Address, Date};
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TRACE_ID: &str = "5af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

#[tokio::test]
async fn one_trace_from_the_client_through_the_gateway_to_the_service() {
    let logs = pac_platform::testkit::CapturedLogs::default();
    let spans = InMemorySpanExporter::default();
    let config = TelemetryConfig { log_filter: "trace,h2=info,hyper=info,tower=info".into(), log_json: true, otlp_endpoint: None };
    let telemetry = pac_platform::telemetry::init_with("pac-test", &config, logs.clone(), Some(spans.clone())).unwrap();

    let db = TestDatabase::create().await;
    let platform = db.platform_config();
    let shutdown = CancellationToken::new();
    let records_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let records_url = format!("http://{}", records_listener.local_addr().unwrap());
    let records_config = pac_records::RecordsConfig::development(records_listener.local_addr().unwrap());
    pac_records::migrate(&platform, &records_config).await.unwrap();
    tokio::spawn(pac_records::serve(platform.clone(), records_config, records_listener, shutdown.clone()));
    let gateway_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_url = format!("http://{}", gateway_listener.local_addr().unwrap());
    let config = GatewayConfig::development(
        gateway_listener.local_addr().unwrap(),
        records_url,
        "http://127.0.0.1:1".into(),
        "http://127.0.0.1:1".into(),
    );
    pac_gateway::migrate(&platform).await.unwrap();
    tokio::spawn(pac_gateway::serve(platform.clone(), config, gateway_listener, shutdown.clone()));

    let identity = Identity { subject: "coordinator-9".into(), role: Role::Coordinator, organisations: vec!["RR8".into()] };
    let token = mint_development(DEVELOPMENT_TOKEN_KEY.as_bytes(), DEVELOPMENT_ISSUER, "pac-gateway", &identity, Duration::from_secs(60));
    let patient = records_pb::Patient {
        given_name: "Philippa".into(),
        family_name: "Brackenridge".into(),
        birth_date: Some(Date { year: 1969, month: 4, day: 17 }),
        sex: 2,
        address: Some(Address { lines: vec!["4 Saltaire Mews".into()], postcode: "BD18 3LA".into(), ..Default::default() }),
        phone: "07700 900318".into(),
        ..Default::default()
    };
    let mut request = tonic::Request::new(records_pb::RegisterPatientRequest {
        patient: Some(patient),
        request_id: String::new(),
        allow_possible_duplicate: false,
    });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01").parse().unwrap());
    let channel = tonic::transport::Endpoint::from_shared(gateway_url).unwrap().connect_lazy();
    let created = PatientRecordsClient::new(channel).register_patient(request).await.unwrap().into_inner().patient.unwrap();
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    telemetry.flush();

    let finished = spans.get_finished_spans().unwrap();
    let in_trace: Vec<_> = finished.iter().filter(|s| s.span_context.trace_id().to_string() == TRACE_ID).collect();
    let named = |name: &str| in_trace.iter().filter(|s| s.name == name).copied().collect::<Vec<_>>();
    let hops = named("pac.records.v1.PatientRecords/RegisterPatient");
    assert_eq!(hops.len(), 2, "the gateway's span and the service's: {:?}", in_trace.iter().map(|s| &s.name).collect::<Vec<_>>());
    let gateway = hops.iter().find(|s| s.parent_span_id.to_string() == CLIENT_SPAN).expect("the gateway continues the client's span");
    let service =
        hops.iter().find(|s| s.parent_span_id == gateway.span_context.span_id()).expect("the service's span is the gateway's child");
    assert_ne!(gateway.span_context.span_id(), service.span_context.span_id());

    let log_text = logs.text();
    assert!(log_text.contains(&created.id));
    let span_text: String = finished.iter().map(|s| format!("{} {:?}\n", s.name, s.attributes)).collect();
    for value in ["Philippa", "Brackenridge", "1969-04-17", "Saltaire", "BD18 3LA", "07700 900318", &token] {
        assert!(!log_text.contains(value), "log output contains {value:?}");
        assert!(!span_text.contains(value), "span data contains {value:?}");
    }
}
