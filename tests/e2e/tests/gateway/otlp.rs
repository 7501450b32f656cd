//! One client call to `BookReferralAppointment`, exported over OTLP to a receiver in this process:
//! a single trace from the client's `traceparent` through the gateway to both services and their
//! database work, with no patient data in any span.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use pac_e2e::gateway::{free_slots, knee_clinic, referred_patient, start, token};
use pac_gateway::policy::Role;
use pac_platform::config::TelemetryConfig;
use pac_platform::testkit::with_token;
use pac_proto::access::BookReferralAppointmentRequest;
use pac_proto::access::access_client::AccessClient;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP trace receiver keeping every span it is sent, with its service name.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_referral_booking_is_one_trace_across_every_hop() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let config = TelemetryConfig { log_filter: "info".into(), log_json: true, otlp_endpoint: Some(endpoint) };
    let telemetry = pac_platform::telemetry::init("pac-otlp-test", &config).unwrap();

    let p = start().await;
    let clinic = knee_clinic(&p).await;
    let (patient_id, referral) = referred_patient(&p, "Featherstonehaugh", true).await;
    let slot = free_slots(&p, &clinic, 1).await.remove(0);
    let mut request = with_token(
        BookReferralAppointmentRequest { referral_id: referral.id.clone(), slot_id: slot.id, request_id: uuid::Uuid::new_v4().to_string() },
        Some(&token(Role::Coordinator, Duration::from_secs(60))),
    );
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01").parse().unwrap());
    let booked = AccessClient::new(p.gateway.clone()).book_referral_appointment(request).await.unwrap().into_inner();
    assert!(booked.linked);

    // Spans end as the answer goes out; give them a moment, then export.
    let mut in_trace = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        telemetry.flush();
        in_trace = receiver.spans.lock().unwrap().iter().filter(|(_, s)| hex(&s.trace_id) == TRACE_ID).cloned().collect();
        if in_trace.iter().filter(|(_, s)| s.name == "postgres").count() >= 2 {
            break;
        }
    }
    let names: Vec<&str> = in_trace.iter().map(|(_, s)| s.name.as_str()).collect();
    let find = |name: &str, parent: &[u8]| {
        in_trace
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name && s.parent_span_id == parent)
            .unwrap_or_else(|| panic!("no {name} under {} in {names:?}", hex(parent)))
    };
    let client = (0..8).map(|i| u8::from_str_radix(&CLIENT_SPAN[2 * i..2 * i + 2], 16).unwrap()).collect::<Vec<_>>();
    let gateway = find("pac.access.v1.Access/BookReferralAppointment", &client);
    let get_referral = find("pac.referrals.v1.Referrals/GetReferral", &gateway.span_id);
    let book = find("pac.scheduling.v1.Scheduling/BookAppointment", &gateway.span_id);
    find("postgres", &get_referral.span_id);
    find("postgres", &book.span_id);

    // No patient data anywhere in the spans.
    let text = format!("{:?}", in_trace);
    for value in ["Featherstonehaugh", "Ada", "1980-02-03", "LS6 2AA"] {
        assert!(!text.contains(value), "span data contains {value:?}");
    }
    assert!(!patient_id.is_empty());
    drop(p);
}
