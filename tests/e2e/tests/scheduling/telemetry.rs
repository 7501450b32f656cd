//! With the production telemetry stack installed, a register / hold / book / reschedule / cancel /
//! waitlist run through both services leaves no patient data in any log line or span, and the
//! caller's W3C trace continues from scheduling into its call to the records service.

use opentelemetry_sdk::trace::InMemorySpanExporter;
use pac_e2e::scheduling::Platform;
use pac_platform::config::TelemetryConfig;
use pac_proto::common::{Address, Date};
use pac_proto::records as records_pb;
use pac_proto::scheduling as pb;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test]
async fn no_patient_data_in_logs_or_spans_and_traces_cross_services() {
    let logs = pac_platform::testkit::CapturedLogs::default();
    let spans = InMemorySpanExporter::default();
    let config = TelemetryConfig { log_filter: "trace,h2=info,hyper=info,tower=info".into(), log_json: true, otlp_endpoint: None };
    let telemetry = pac_platform::telemetry::init_with("pac-test", &config, logs.clone(), Some(spans.clone())).unwrap();

    let p = Platform::start().await;
    let patient = records_pb::Patient {
        nhs_number: "943 476 5919".into(),
        given_name: "Philippa".into(),
        family_name: "Brackenridge".into(),
        birth_date: Some(Date { year: 1969, month: 4, day: 17 }),
        sex: 2,
        address: Some(Address { lines: vec!["4 Saltaire Mews".into()], postcode: "BD18 3LA".into(), ..Default::default() }),
        phone: "07700 900318".into(),
        ..Default::default()
    };
    let created = p
        .records()
        .register_patient(records_pb::RegisterPatientRequest {
            patient: Some(patient),
            request_id: String::new(),
            allow_possible_duplicate: false,
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 10, 20, 1).await;
    let slots = p.free_slots(&clinic).await;
    let mut request = tonic::Request::new(pb::HoldSlotRequest {
        slot_id: slots[0].id.clone(),
        patient_id: created.id.clone(),
        ttl_seconds: 300,
        request_id: "telemetry-hold".into(),
    });
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01").parse().unwrap());
    let hold = p.client().hold_slot(request).await.unwrap().into_inner().appointment.unwrap();
    let booked = p
        .client()
        .book_appointment(pb::BookAppointmentRequest {
            target: Some(pb::book_appointment_request::Target::HeldAppointmentId(hold.id.clone())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap();
    let moved = p
        .client()
        .reschedule_appointment(pb::RescheduleAppointmentRequest {
            appointment_id: booked.id.clone(),
            new_slot_id: slots[1].id.clone(),
            etag: booked.etag.clone(),
            reason: "patient asked for later".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap();
    p.client()
        .add_to_waitlist(pb::AddToWaitlistRequest {
            entry: Some(pb::WaitlistEntry {
                patient_id: created.id.clone(),
                target: Some(pb::waitlist_entry::Target::ServiceCode("TO-FRACTURE".into())),
                priority: pb::Priority::Urgent as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    p.client()
        .cancel_appointment(pb::CancelAppointmentRequest {
            appointment_id: moved.id.clone(),
            reason_code: "PATIENT_UNWELL".into(),
            cancelled_by: pb::CancelledBy::Patient as i32,
            etag: moved.etag.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    p.book(&slots[2].id, &uuid::Uuid::now_v7().to_string()).await.unwrap_err();
    drop(p);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    telemetry.flush();

    let log_text = logs.text();
    let finished = spans.get_finished_spans().unwrap();
    let span_text: String = finished
        .iter()
        .map(|span| {
            let attributes: Vec<String> = span.attributes.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect();
            format!("{} {}\n", span.name, attributes.join(" "))
        })
        .collect();
    assert!(log_text.contains(&hold.id), "appointment ids (not patient data) are logged");
    let traced: Vec<&str> =
        finished.iter().filter(|s| s.span_context.trace_id().to_string() == TRACE_ID).map(|s| s.name.as_ref()).collect();
    assert!(traced.contains(&"pac.scheduling.v1.Scheduling/HoldSlot"), "{traced:?}");
    assert!(traced.contains(&"pac.records.v1.PatientRecords/GetPatient"), "the records call continues the trace: {traced:?}");
    for value in [
        "Philippa",
        "Brackenridge",
        "brackenridge",
        "9434765919",
        "943 476 5919",
        "1969-04-17",
        "Saltaire",
        "BD18 3LA",
        "BD183LA",
        "07700 900318",
        "+447700900318",
    ] {
        assert!(!log_text.contains(value), "log output contains patient data {value:?}");
        assert!(!span_text.contains(value), "span data contains patient data {value:?}");
    }
}
