//! With the production telemetry stack installed (JSON logs at trace level, OpenTelemetry spans),
//! a full register / search / match / update / lookup / error run leaves no patient data in any log
//! line, span name or span attribute, and traces continue the caller's W3C trace.

mod common;

use common::*;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use pac_platform::config::TelemetryConfig;
use pac_proto::common::{Address, Date};
use pac_proto::records as pb;
use prost_types::FieldMask;
use tokio_stream::StreamExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn no_patient_data_in_logs_or_spans() {
    let logs = pac_platform::testkit::CapturedLogs::default();
    let spans = InMemorySpanExporter::default();
    let config = TelemetryConfig { log_filter: "trace,h2=info,hyper=info,tower=info".into(), log_json: true, otlp_endpoint: None };
    let telemetry = pac_platform::telemetry::init_with("pac-records", &config, logs.clone(), Some(spans.clone())).unwrap();

    let server = TestServer::start().await;
    let mut client = server.client();
    let patient = pb::Patient {
        nhs_number: "943 476 5919".into(),
        given_name: "Zephyrine".into(),
        family_name: "Quartermaine".into(),
        birth_date: Some(Date { year: 1977, month: 8, day: 23 }),
        sex: 2,
        address: Some(Address {
            lines: vec!["17 Lindisfarne Crescent".into()],
            locality: "Harrogate".into(),
            postcode: "HG1 2RQ".into(),
            ..Default::default()
        }),
        phone: "07700 900461".into(),
        email: "zephyrine.q@example.org".into(),
        local_identifiers: vec![pb::LocalIdentifier { issuer: "RCD".into(), value: "HX77123".into() }],
        accessibility_needs: vec!["needs a BSL interpreter".into()],
        ..Default::default()
    };
    // The caller's trace context (W3C traceparent) continues into the service.
    let mut request = tonic::Request::new(register(patient.clone(), "telemetry-run"));
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01").parse().unwrap());
    let created = client.register_patient(request).await.unwrap().into_inner().patient.unwrap();

    client.search_patients(pb::SearchPatientsRequest { name: "zephyrine quartermaine".into(), ..Default::default() }).await.unwrap();
    client
        .search_patients(pb::SearchPatientsRequest { postcode: "HG1 2RQ".into(), phone: "07700 900461".into(), ..Default::default() })
        .await
        .unwrap();
    client.match_patients(pb::MatchPatientsRequest { patient: Some(patient.clone()), max_candidates: 5 }).await.unwrap();
    let mut change = created.clone();
    change.family_name = "Quartermaine-Oakes".into();
    client
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(change),
            update_mask: Some(FieldMask { paths: vec!["family_name".into()] }),
        })
        .await
        .unwrap();
    use pb::lookup_patient_request::Identifier;
    client.lookup_patient(pb::LookupPatientRequest { identifier: Some(Identifier::NhsNumber("9434765919".into())) }).await.unwrap();
    // Failures too: a duplicate NHS number, an invalid one, a possible duplicate.
    client.register_patient(register(patient.clone(), "")).await.unwrap_err();
    let mut invalid = patient.clone();
    invalid.nhs_number = "9434765918".into();
    client.register_patient(register(invalid, "")).await.unwrap_err();
    let mut similar = patient.clone();
    similar.nhs_number.clear();
    client.register_patient(register(similar, "")).await.unwrap_err();
    let mut events = client.watch_events(pb::WatchEventsRequest::default()).await.unwrap().into_inner();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.envelope.unwrap().trace_id, TRACE_ID, "the event records the trace of the request that caused it");
    drop(events);
    server.stop().await;
    telemetry.flush();

    let log_text = logs.text();
    let finished = spans.get_finished_spans().unwrap();
    let span_text: String = finished
        .iter()
        .map(|span| {
            let attributes: Vec<String> = span.attributes.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect();
            let events: Vec<String> = span
                .events
                .iter()
                .map(|e| format!("{} {:?}", e.name, e.attributes.iter().map(|kv| kv.value.to_string()).collect::<Vec<_>>()))
                .collect();
            format!("{} {} {}\n", span.name, attributes.join(" "), events.join(" "))
        })
        .collect();

    // The capture is real: requests were logged and traced.
    assert!(log_text.contains("rpc finished"), "no request logs captured");
    assert!(log_text.contains(&created.id), "patient ids (not patient data) are logged");
    assert!(finished.iter().any(|s| s.name == "pac.records.v1.PatientRecords/RegisterPatient"));
    let register_span = finished.iter().find(|s| s.name == "pac.records.v1.PatientRecords/RegisterPatient").unwrap();
    assert_eq!(register_span.span_context.trace_id().to_string(), TRACE_ID, "caller's trace continued");

    let forbidden = [
        "Zephyrine",
        "zephyrine",
        "Quartermaine",
        "quartermaine",
        "9434765919",
        "943 476 5919",
        "1977-08-23",
        "23/08/1977",
        "HG1 2RQ",
        "HG12RQ",
        "07700 900461",
        "07700900461",
        "+447700900461",
        "zephyrine.q@example.org",
        "Lindisfarne",
        "Harrogate",
        "HX77123",
        "BSL interpreter",
    ];
    for value in forbidden {
        assert!(!log_text.contains(value), "log output contains patient data {value:?}");
        assert!(!span_text.contains(value), "span data contains patient data {value:?}");
    }
}
