//! With the production telemetry stack installed, a referral's life (eligibility, receipt, triage,
//! notes, booking, a missed appointment, clock events, cancellation) leaves no patient data in any
//! log line or span, and the caller's trace continues into the referrals service's call to records.

use opentelemetry_sdk::trace::InMemorySpanExporter;
use pac_e2e::referrals::Platform;
use pac_platform::config::TelemetryConfig;
use pac_platform::convert::date;
use pac_proto::common::{Address, Date};
use pac_proto::records as records_pb;
use pac_proto::referrals as pb;
use pac_proto::referrals::triage_referral_request::Decision;
use pac_proto::scheduling as sched;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REASON: &str = "Haematuria with weight loss";
const NOTE: &str = "Daughter says she cannot climb stairs";

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
    let request = records_pb::RegisterPatientRequest { patient: Some(patient), request_id: String::new(), allow_possible_duplicate: false };
    let patient_id = p.records().register_patient(request).await.unwrap().into_inner().patient.unwrap().id;
    p.service(pb::Service {
        code: "URO-2WW".into(),
        name: "Urology".into(),
        target_wait_days: 14,
        rules: Some(pb::EligibilityRules {
            catchment_districts: vec!["BD18".into()],
            min_age: Some(18),
            sources: vec!["GP".into()],
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let slots = p.slots("URO-2WW").await;

    let mut create = tonic::Request::new(pb::CreateReferralRequest {
        reason: REASON.into(),
        priority: pb::Priority::TwoWeekWait as i32,
        request_id: "telemetry-referral".into(),
        ..p.new_referral(&patient_id, "URO-2WW")
    });
    create.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01").parse().unwrap());
    let referral = p.client().create_referral(create).await.unwrap().into_inner().referral.unwrap();
    let ineligible = pb::CheckEligibilityRequest {
        patient_id: patient_id.clone(),
        service_code: "URO-2WW".into(),
        source: "DENTIST".into(),
        ..Default::default()
    };
    assert!(!p.client().check_eligibility(ineligible).await.unwrap().into_inner().eligible);
    let refused = pb::CreateReferralRequest { source: "DENTIST".into(), reason: REASON.into(), ..p.new_referral(&patient_id, "URO-2WW") };
    assert!(p.create(refused).await.unwrap_err().message().contains("DENTIST"));
    let asked = p
        .triage(&referral, Decision::RequestInformation(pb::RequestInformation { question: "Recent PSA result for Philippa?".into() }))
        .await
        .unwrap();
    let back =
        p.triage(&asked, Decision::InformationReceived(pb::InformationReceived { information: vec!["PSA 7.1".into()] })).await.unwrap();
    let accepted = p.accept(&back).await;
    p.client()
        .add_note(pb::AddNoteRequest {
            referral_id: referral.id.clone(),
            note: Some(pb::Note {
                task: true,
                text: NOTE.into(),
                team: "Urology admin".into(),
                due_date: Some(date(chrono::Utc::now().date_naive())),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    let appointment = p.book(&slots[0].id, &accepted).await;
    let booked = p.referral_becomes(&referral.id, |r| r.current_appointment_id == appointment.id).await;
    let cancel = pb::CancelReferralRequest {
        referral_id: booked.id.clone(),
        etag: booked.etag.clone(),
        reason: "Moved to Philippa's sister in Leeds".into(),
        request_id: String::new(),
    };
    p.client().cancel_referral(cancel).await.unwrap();
    let got = p.scheduling().get_appointment(sched::GetAppointmentRequest { id: appointment.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.appointment.unwrap().status, sched::AppointmentStatus::Cancelled as i32);
    drop(p);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
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
    assert!(log_text.contains(&referral.id), "referral ids (not patient data) are logged");
    let traced: Vec<&str> =
        finished.iter().filter(|s| s.span_context.trace_id().to_string() == TRACE_ID).map(|s| s.name.as_ref()).collect();
    assert!(traced.contains(&"pac.referrals.v1.Referrals/CreateReferral"), "{traced:?}");
    assert!(traced.contains(&"pac.records.v1.PatientRecords/GetPatient"), "the records call continues the trace: {traced:?}");
    for value in [
        "Philippa",
        "Brackenridge",
        "9434765919",
        "1969-04-17",
        "Saltaire",
        "BD18 3LA",
        "07700 900318",
        REASON,
        NOTE,
        "PSA",
        "sister in Leeds",
        "BD18",
    ] {
        assert!(!log_text.contains(value), "log output contains patient data {value:?}");
        assert!(!span_text.contains(value), "span data contains patient data {value:?}");
    }
}
