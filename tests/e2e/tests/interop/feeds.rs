//! Scheduling feeds end to end: bookings made over gRPC reach a receiving engine as SIU messages,
//! in order, each until an AA answers its own control id; a refused (AE) patient is parked alone;
//! a stopped component loses nothing and resends with the same MSH-10.

use std::time::{Duration, Instant};

use pac_e2e::gateway::{self, free_slots, knee_clinic, token};
use pac_e2e::interop::{Receiver, field, pool, start_serving, start_until};
use pac_gateway::policy::Role;
use pac_interop::feeds::Destination;
use pac_platform::testkit::{registration, with_token};
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::scheduling as sched;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use tokio_util::sync::CancellationToken;

fn destination(receiver: &Receiver) -> Destination {
    Destination {
        name: "rr8-pas".into(),
        address: receiver.address.to_string(),
        organisations: vec!["RR8".into()],
        messages: pac_interop::siu::TRIGGERS.iter().map(|t| t.to_string()).collect(),
        receiving_application: "PAS".into(),
        receiving_facility: "RR8".into(),
        charset: "8859/1".into(),
        ack_timeout_ms: 500,
        tls: None,
    }
}

async fn patient(p: &gateway::Platform, family_name: &str) -> String {
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let mut request = registration(family_name);
    request.patient.as_mut().unwrap().nhs_number = nhs_for(family_name);
    PatientRecordsClient::new(p.gateway.clone())
        .register_patient(with_token(request, Some(&coordinator)))
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap()
        .id
}

/// A valid test-range NHS number per name (the tests' few patients).
fn nhs_for(family_name: &str) -> String {
    match family_name {
        "Feedone" => "9998193036",
        "Feedtwo" => "9998656907",
        _ => "9992021527",
    }
    .into()
}

async fn book(p: &gateway::Platform, slot: &sched::Slot, patient_id: &str) -> sched::Appointment {
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let request = sched::BookAppointmentRequest {
        target: Some(sched::book_appointment_request::Target::SlotId(slot.id.clone())),
        patient_id: patient_id.into(),
        ..Default::default()
    };
    SchedulingClient::new(p.gateway.clone())
        .book_appointment(with_token(request, Some(&coordinator)))
        .await
        .unwrap()
        .into_inner()
        .appointment
        .unwrap()
}

async fn cancel(p: &gateway::Platform, appointment: &sched::Appointment) {
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let request = sched::CancelAppointmentRequest {
        appointment_id: appointment.id.clone(),
        reason_code: "PATIENT_UNWELL".into(),
        cancelled_by: sched::CancelledBy::Patient as i32,
        etag: appointment.etag.clone(),
        request_id: String::new(),
    };
    SchedulingClient::new(p.gateway.clone()).cancel_appointment(with_token(request, Some(&coordinator))).await.unwrap();
}

#[tokio::test]
async fn a_booking_reaches_the_receiving_engine_as_an_s12_and_a_cancellation_as_an_s15() {
    let p = gateway::start().await;
    let clinic = knee_clinic(&p).await;
    let slots = free_slots(&p, &clinic, 2).await;
    let receiver = Receiver::start().await;
    let feed = destination(&receiver);
    start_until(&p, p.shutdown.clone(), |config| config.feeds = vec![feed]).await;
    let patient_id = patient(&p, "Feedone").await;

    let booked_at = Instant::now();
    let appointment = book(&p, &slots[0], &patient_id).await;
    let s12 = receiver.wait_for(Duration::from_secs(5), |m| m.contains("SIU^S12")).await.expect("an S12");
    assert!(booked_at.elapsed() < Duration::from_secs(1), "the S12 took {:?}", booked_at.elapsed());
    assert_eq!(field(&s12, "MSH", 9), "SIU^S12^SIU_S12");
    assert_eq!(field(&s12, "MSH", 12), "2.5");
    assert_eq!(field(&s12, "SCH", 2), format!("{}^PAC", appointment.id));
    assert!(field(&s12, "PID", 3).starts_with("9998193036^^^NHS^NH"), "{s12}");
    assert!(field(&s12, "AIS", 3).starts_with("KNEE^"), "{s12}");
    assert_eq!(field(&s12, "AIL", 3), "^^^RR8^^^^^Knee clinic");

    cancel(&p, &appointment).await;
    let s15 = receiver.wait_for(Duration::from_secs(5), |m| m.contains("SIU^S15")).await.expect("an S15");
    assert_eq!(field(&s15, "SCH", 6), "PATIENT_UNWELL^Cancelled by the patient^PAC");
    // Each message once, in commit order, with the feed's sequence in MSH-10.
    let controls: Vec<String> = receiver.messages().iter().map(|m| field(m, "MSH", 10)).collect();
    assert_eq!(controls, vec!["PAC00000000000000001", "PAC00000000000000002"]);
    // Each message's reads are in the audit trail under the integration account and the event.
    let admin = p.admin_pool().await;
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE request_id LIKE 'feed:rr8-pas:%' AND action LIKE '%GetPatient%'")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(audited, 2);

    // An operator's replay from the first message: both again, the same bytes, the same MSH-10s.
    let first_two = receiver.messages();
    assert_eq!(pac_interop::store::replay(&pool(&p).await, "rr8-pas", 1).await.unwrap(), 2);
    assert!(receiver.wait_for(Duration::from_secs(5), |_| receiver.messages().len() >= 4).await.is_some(), "replayed");
    assert_eq!(receiver.messages()[2..], first_two[..]);
}

#[tokio::test]
async fn a_refused_patient_is_parked_and_the_others_go_on_until_released() {
    let p = gateway::start().await;
    let clinic = knee_clinic(&p).await;
    let slots = free_slots(&p, &clinic, 3).await;
    let receiver = Receiver::start().await;
    let feed = destination(&receiver);
    start_until(&p, p.shutdown.clone(), |config| config.feeds = vec![feed]).await;
    let (refused, accepted) = (patient(&p, "Feedone").await, patient(&p, "Feedtwo").await);
    *receiver.refuse_containing.lock().unwrap() = Some("9998193036".into());

    let first = book(&p, &slots[0], &refused).await;
    book(&p, &slots[1], &accepted).await;
    cancel(&p, &first).await;
    assert!(receiver.wait_for(Duration::from_secs(5), |m| m.contains("SIU^S12") && m.contains("9998656907")).await.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent: Vec<(String, bool)> = receiver.messages().iter().map(|m| (field(m, "MSH", 9), m.contains("9998193036"))).collect();
    assert_eq!(
        sent,
        vec![("SIU^S12^SIU_S12".to_string(), true), ("SIU^S12^SIU_S12".to_string(), false)],
        "the refused patient's S15 waits"
    );

    let pool = pool(&p).await;
    let status = pac_interop::store::feed_status(&pool).await.unwrap();
    // The parked patient's S15 waits, counted with the parked patient, not as pending.
    assert_eq!((status[0].parked_patients, status[0].pending, status[0].delivered), (1, 0, 1));
    // Released once the receiving engine is put right: the parked S12, then the S15, in order.
    *receiver.refuse_containing.lock().unwrap() = None;
    assert!(pac_interop::store::release(&pool, "rr8-pas", &refused).await.unwrap());
    assert!(receiver.wait_for(Duration::from_secs(5), |m| m.contains("SIU^S15")).await.is_some());
    let last: Vec<String> = receiver.messages().iter().skip(2).map(|m| field(m, "MSH", 9)).collect();
    assert_eq!(last, vec!["SIU^S12^SIU_S12", "SIU^S15^SIU_S12"]);
}

#[tokio::test]
async fn a_component_stopped_mid_feed_loses_nothing_and_resends_the_same_control_id() {
    let p = gateway::start().await;
    let clinic = knee_clinic(&p).await;
    let slots = free_slots(&p, &clinic, 2).await;
    let receiver = Receiver::start().await;
    receiver.silent.store(true, std::sync::atomic::Ordering::SeqCst);
    let first_run = CancellationToken::new();
    let feed = destination(&receiver);
    start_until(&p, first_run.clone(), |config| config.feeds = vec![feed.clone()]).await;
    let patient_id = patient(&p, "Feedone").await;
    book(&p, &slots[0], &patient_id).await;
    let sent = receiver.wait_for(Duration::from_secs(5), |m| m.contains("SIU^S12")).await.expect("sent once");
    // Stopped while the S12 waits for its ACK; a booking made while it is down.
    first_run.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    book(&p, &slots[1], &patient_id).await;
    receiver.silent.store(false, std::sync::atomic::Ordering::SeqCst);
    start_until(&p, p.shutdown.clone(), |config| config.feeds = vec![feed]).await;
    let control = field(&sent, "MSH", 10);
    assert!(
        receiver.wait_for(Duration::from_secs(10), |m| field(m, "MSH", 10) == "PAC00000000000000002").await.is_some(),
        "the booking made while stopped is sent"
    );
    let copies: Vec<String> = receiver.messages().into_iter().filter(|m| field(m, "MSH", 10) == control).collect();
    assert!(copies.len() >= 2, "the unanswered S12 resent with its MSH-10: {copies:?}");
    assert!(copies.iter().all(|m| *m == sent), "the same bytes each time");
    let pool = pool(&p).await;
    let status = pac_interop::store::feed_status(&pool).await.unwrap();
    assert_eq!((status[0].pending, status[0].delivered), (0, 2));
}

#[tokio::test]
async fn operators_see_and_release_parked_patients_through_the_gateway_for_their_organisations_only() {
    use pac_e2e::gateway::start_with;
    use pac_proto::interop as ipb;
    use pac_proto::interop::interop_client::InteropClient;

    let (admin_listener, admin_url) = pac_platform::testkit::listener().await;
    let p = start_with(|config| config.interop_url = admin_url).await;
    let clinic = knee_clinic(&p).await;
    let slots = free_slots(&p, &clinic, 1).await;
    let receiver = Receiver::start().await;
    let feed = destination(&receiver);
    start_serving(&p, admin_listener, p.shutdown.clone(), |config| config.feeds = vec![feed]).await;
    let refused = patient(&p, "Feedone").await;
    *receiver.refuse_containing.lock().unwrap() = Some("9998193036".into());
    book(&p, &slots[0], &refused).await;
    assert!(receiver.wait_for(Duration::from_secs(5), |m| m.contains("SIU^S12")).await.is_some());

    let interop = InteropClient::new(p.gateway.clone());
    let admin = token(Role::Admin, Duration::from_secs(600));
    let parked = || {
        let (mut interop, admin) = (interop.clone(), admin.clone());
        async move {
            let feeds = interop.list_feeds(with_token(ipb::ListFeedsRequest {}, Some(&admin))).await.unwrap().into_inner().feeds;
            feeds.first().map(|f| f.parked_patients)
        }
    };
    assert!(pac_platform::testkit::eventually(Duration::from_secs(5), || async { parked().await == Some(1) }).await);
    let mut interop = interop.clone();
    let request = ipb::ListParkedPatientsRequest { feed: "rr8-pas".into() };
    let listed = interop.list_parked_patients(with_token(request.clone(), Some(&admin))).await.unwrap();
    assert!(pac_platform::testkit::audited(&listed).is_empty(), "the gateway takes the audit header off");
    assert_eq!(listed.into_inner().patients.iter().map(|p| p.patient_id.clone()).collect::<Vec<_>>(), vec![refused.clone()]);

    // Another organisation's administrator sees no feed; a coordinator may not call at all.
    let elsewhere = pac_e2e::gateway::token_for(Role::Admin, "RAE", Duration::from_secs(600));
    assert!(interop.list_feeds(with_token(ipb::ListFeedsRequest {}, Some(&elsewhere))).await.unwrap().into_inner().feeds.is_empty());
    let status = interop.list_parked_patients(with_token(request, Some(&elsewhere))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let status = interop.list_feeds(with_token(ipb::ListFeedsRequest {}, Some(&coordinator))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    // Bad input: the field named, nothing changed.
    let bad = ipb::ReplayFeedRequest { feed: "rr8-pas".into(), from_sequence: 0 };
    assert_eq!(interop.replay_feed(with_token(bad, Some(&admin))).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // Released once the receiving engine is put right: sent again, and delivered.
    *receiver.refuse_containing.lock().unwrap() = None;
    let release = ipb::ReleasePatientRequest { feed: "rr8-pas".into(), patient_id: refused.clone() };
    interop.release_patient(with_token(release.clone(), Some(&admin))).await.unwrap();
    assert_eq!(
        interop.release_patient(with_token(release, Some(&admin))).await.unwrap_err().code(),
        tonic::Code::NotFound,
        "released once"
    );
    assert!(pac_platform::testkit::eventually(Duration::from_secs(5), || async { parked().await == Some(0) }).await);
    // The release is in the audit trail with the patient.
    let admin_pool = p.admin_pool().await;
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE action LIKE '%ReleasePatient%' AND $1 = ANY(patient_ids)")
            .bind(&refused)
            .fetch_one(&admin_pool)
            .await
            .unwrap();
    assert_eq!(audited, 1);
    let counts =
        interop.list_listener_counts(with_token(ipb::ListListenerCountsRequest::default(), Some(&admin))).await.unwrap().into_inner();
    assert!(counts.counts.is_empty(), "no ADT was sent in this test");
}

#[tokio::test]
async fn two_replicas_send_each_message_once_in_order() {
    let p = gateway::start().await;
    let clinic = knee_clinic(&p).await;
    let slots = free_slots(&p, &clinic, 4).await;
    let receiver = Receiver::start().await;
    // A slow engine: two senders would both find the same message waiting.
    receiver.delay_ms.store(700, std::sync::atomic::Ordering::SeqCst);
    let feed = Destination { ack_timeout_ms: 5_000, ..destination(&receiver) };
    for _ in 0..2 {
        let feed = feed.clone();
        start_until(&p, p.shutdown.clone(), move |config| config.feeds = vec![feed]).await;
    }
    let patient_id = patient(&p, "Feedone").await;
    for slot in &slots {
        book(&p, slot, &patient_id).await;
    }
    assert!(receiver.wait_for(Duration::from_secs(15), |_| receiver.messages().len() >= 4).await.is_some());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let controls: Vec<String> = receiver.messages().iter().map(|m| field(m, "MSH", 10)).collect();
    assert_eq!(controls, (1..=4).map(|n| format!("PAC{n:017}")).collect::<Vec<_>>(), "each once, in order");
}
