//! Booking over real gRPC against a real Postgres: capacity under stampedes, idempotency, holds that
//! lapse on their own, reschedules, cancellations, the patient check with the records service.

use std::time::Duration;

use futures::future::join_all;
use pac_e2e::scheduling::Platform;
use pac_platform::testkit::{assert_error, audited, eventually, service_caller};
use pac_proto::scheduling as pb;
use pac_proto::scheduling::book_appointment_request::Target;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_on_one_place_give_exactly_one_booking_over_100_slots() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    // 09:00-17:00 in 5-minute single-place slots, weekly: the first 100 free slots.
    p.session(&clinic, 9, 17, 5, 1).await;
    let slots: Vec<pb::Slot> = p.free_slots(&clinic).await;
    assert_eq!(slots.len(), 100);
    let patients = p.patients(50).await;
    for slot in &slots {
        let attempts = patients.iter().map(|patient| p.book(&slot.id, patient));
        let results = join_all(attempts).await;
        let booked = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(booked, 1, "slot {}", slot.id);
        for refused in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_error(refused, Code::FailedPrecondition, "SLOT_UNAVAILABLE");
        }
        assert_eq!(p.occupied(&slot.id).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capacity_three_slot_takes_exactly_three() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 10, 30, 3).await;
    let slot = p.free_slots(&clinic).await.remove(0);
    let patients = p.patients(50).await;
    let results = join_all(patients.iter().map(|patient| p.book(&slot.id, patient))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_error(refused, Code::FailedPrecondition, "SLOT_UNAVAILABLE");
    }
    assert_eq!(p.occupied(&slot.id).await, 3);
    // A full slot is no longer found by search.
    assert!(p.free_slots(&clinic).await.iter().all(|s| s.id != slot.id));
}

#[tokio::test]
async fn a_retried_booking_is_the_same_appointment_and_a_reused_id_is_refused() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 10, 20, 1).await;
    let slots = p.free_slots(&clinic).await;
    let patients = p.patients(1).await;
    let request = pb::BookAppointmentRequest {
        target: Some(Target::SlotId(slots[0].id.clone())),
        patient_id: patients[0].clone(),
        request_id: "8c4e1d0e-retry-0001".into(),
        ..Default::default()
    };
    let first = p.client().book_appointment(request.clone()).await.unwrap().into_inner().appointment.unwrap();
    let again = p.client().book_appointment(request.clone()).await.unwrap().into_inner().appointment.unwrap();
    assert_eq!(first, again);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM scheduling.appointments").fetch_one(&p.admin().await).await.unwrap();
    assert_eq!(rows, 1);
    assert_eq!(p.occupied(&slots[0].id).await, 1);

    let different = pb::BookAppointmentRequest { target: Some(Target::SlotId(slots[1].id.clone())), ..request };
    let refused = p.client().book_appointment(different).await.unwrap_err();
    assert_error(&refused, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    assert_eq!(p.occupied(&slots[1].id).await, 0);
}

#[tokio::test]
async fn a_hold_lapses_by_itself_and_frees_the_slot() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 10, 20, 1).await;
    let slot = p.free_slots(&clinic).await.remove(0);
    let patients = p.patients(2).await;
    let hold = p.hold(&slot.id, &patients[0], 30).await;
    assert_eq!(hold.status, pb::AppointmentStatus::Pending as i32);
    assert!(hold.hold_expire_time.is_some());
    // While held, nobody else gets it.
    assert_error(&p.book(&slot.id, &patients[1]).await.unwrap_err(), Code::FailedPrecondition, "SLOT_UNAVAILABLE");

    p.lapse_hold(&hold.id).await;
    // No call to the service: the sweeper releases it.
    let admin = p.admin().await;
    let released = eventually(Duration::from_secs(10), || async {
        let occupied: i32 =
            sqlx::query_scalar("SELECT occupied FROM scheduling.slots WHERE id = $1::uuid").bind(&slot.id).fetch_one(&admin).await.unwrap();
        occupied == 0
    })
    .await;
    assert!(released, "the lapsed hold was not released");
    let lapsed = p.get(&hold.id).await;
    assert_eq!(lapsed.status, pb::AppointmentStatus::Cancelled as i32);
    let cancellation = lapsed.cancellation.unwrap();
    assert_eq!(cancellation.reason_code, "HOLD_EXPIRED");
    assert_eq!(cancellation.cancelled_by, pb::CancelledBy::System as i32);

    // Confirming the lapsed hold is refused; the slot can be booked by someone else.
    let confirm = pb::BookAppointmentRequest { target: Some(Target::HeldAppointmentId(hold.id.clone())), ..Default::default() };
    assert_error(&p.client().book_appointment(confirm).await.unwrap_err(), Code::FailedPrecondition, "INVALID_TRANSITION");
    p.book(&slot.id, &patients[1]).await.unwrap();
}

#[tokio::test]
async fn a_lapsed_hold_not_yet_swept_does_not_block_a_booking() {
    let p = Platform::start_with(|c| c.hold_sweep_interval = Duration::from_secs(3600)).await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 10, 20, 1).await;
    let slot = p.free_slots(&clinic).await.remove(0);
    let patients = p.patients(2).await;
    let hold = p.hold(&slot.id, &patients[0], 60).await;
    p.lapse_hold(&hold.id).await;
    let booked = p.book(&slot.id, &patients[1]).await.unwrap();
    assert_eq!(booked.status, pb::AppointmentStatus::Booked as i32);
    assert_eq!(p.get(&hold.id).await.status, pb::AppointmentStatus::Cancelled as i32);
    assert_eq!(p.occupied(&slot.id).await, 1);
}

#[tokio::test]
async fn a_hold_is_confirmed_into_a_booking() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 10, 20, 1).await;
    let slot = p.free_slots(&clinic).await.remove(0);
    let patients = p.patients(2).await;
    let hold = p.hold(&slot.id, &patients[0], 0).await;
    // Someone else's patient cannot confirm it.
    let wrong = pb::BookAppointmentRequest {
        target: Some(Target::HeldAppointmentId(hold.id.clone())),
        patient_id: patients[1].clone(),
        ..Default::default()
    };
    assert_error(&p.client().book_appointment(wrong).await.unwrap_err(), Code::InvalidArgument, "PATIENT_MISMATCH");
    let confirm = pb::BookAppointmentRequest { target: Some(Target::HeldAppointmentId(hold.id.clone())), ..Default::default() };
    let response = p.client().book_appointment(confirm).await.unwrap();
    // The audit trail hears whose appointment it was.
    assert_eq!(audited(&response), [patients[0].clone()]);
    let booked = response.into_inner().appointment.unwrap();
    assert_eq!(booked.id, hold.id);
    assert_eq!(booked.status, pb::AppointmentStatus::Booked as i32);
    assert!(booked.hold_expire_time.is_none());
    assert_eq!(p.occupied(&slot.id).await, 1);
}

#[tokio::test]
async fn reschedule_to_a_taken_slot_changes_nothing_and_a_stale_etag_is_aborted() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 11, 20, 1).await;
    let slots = p.free_slots(&clinic).await;
    let patients = p.patients(2).await;
    let mine = p.book(&slots[0].id, &patients[0]).await.unwrap();
    p.book(&slots[1].id, &patients[1]).await.unwrap();

    let to_taken = pb::RescheduleAppointmentRequest {
        appointment_id: mine.id.clone(),
        new_slot_id: slots[1].id.clone(),
        etag: mine.etag.clone(),
        reason: "patient asked for later".into(),
        ..Default::default()
    };
    assert_error(&p.client().reschedule_appointment(to_taken).await.unwrap_err(), Code::FailedPrecondition, "SLOT_UNAVAILABLE");
    assert_eq!(p.get(&mine.id).await, mine);
    assert_eq!((p.occupied(&slots[0].id).await, p.occupied(&slots[1].id).await), (1, 1));

    // Two concurrent reschedules with the same etag: one moves it, the other is told it is stale.
    let to = |slot: &pb::Slot| pb::RescheduleAppointmentRequest {
        appointment_id: mine.id.clone(),
        new_slot_id: slot.id.clone(),
        etag: mine.etag.clone(),
        ..Default::default()
    };
    let (mut a, mut b) = (p.client(), p.client());
    let (first, second) = tokio::join!(a.reschedule_appointment(to(&slots[2])), b.reschedule_appointment(to(&slots[3])));
    let outcomes = [first.map(|r| r.into_inner().appointment.unwrap()), second.map(|r| r.into_inner().appointment.unwrap())];
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    let moved = outcomes.iter().find_map(|o| o.as_ref().ok()).unwrap().clone();
    assert_error(outcomes.iter().find_map(|o| o.as_ref().err()).unwrap(), Code::Aborted, "VERSION_MISMATCH");
    assert_eq!(moved.id, mine.id);
    assert_ne!(moved.etag, mine.etag);
    let occupied: Vec<i32> = join_all(slots[..4].iter().map(|s| p.occupied(&s.id))).await;
    assert_eq!(occupied.iter().sum::<i32>(), 2, "{occupied:?}");
    assert_eq!(p.occupied(&slots[0].id).await, 0);
    assert_eq!(p.occupied(&moved.slot_id).await, 1);
}

#[tokio::test]
async fn cancellation_records_reason_who_and_lateness_and_frees_the_place() {
    let p = Platform::start_with(|c| c.policy.late_notice = chrono::Duration::days(30)).await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 10, 20, 1).await;
    let slot = p.free_slots(&clinic).await.remove(0);
    let patients = p.patients(1).await;
    let booked = p.book(&slot.id, &patients[0]).await.unwrap();
    let mut bad = pb::CancelAppointmentRequest { appointment_id: booked.id.clone(), reason_code: "unwell".into(), ..Default::default() };
    let refused = p.client().cancel_appointment(bad.clone()).await.unwrap_err();
    assert_error(&refused, Code::InvalidArgument, "REASON_CODE_INVALID");
    bad.reason_code = "PATIENT_UNWELL".into();
    assert_error(&p.client().cancel_appointment(bad.clone()).await.unwrap_err(), Code::InvalidArgument, "CANCELLED_BY_REQUIRED");
    bad.cancelled_by = pb::CancelledBy::Patient as i32;
    bad.etag = "W/\"99\"".into();
    assert_error(&p.client().cancel_appointment(bad.clone()).await.unwrap_err(), Code::Aborted, "VERSION_MISMATCH");
    bad.etag = booked.etag.clone();
    let cancelled = p.client().cancel_appointment(bad.clone()).await.unwrap().into_inner().appointment.unwrap();
    let c = cancelled.cancellation.unwrap();
    assert_eq!((c.reason_code.as_str(), c.cancelled_by, c.late), ("PATIENT_UNWELL", pb::CancelledBy::Patient as i32, true));
    assert_eq!(p.occupied(&slot.id).await, 0);
    // Cancelling again is an illegal move.
    bad.etag = String::new();
    assert_error(&p.client().cancel_appointment(bad).await.unwrap_err(), Code::FailedPrecondition, "INVALID_TRANSITION");
}

#[tokio::test]
async fn patients_are_checked_with_records_and_merged_ids_book_the_survivor() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 10, 20, 1).await;
    let slots = p.free_slots(&clinic).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_error(&p.book(&slots[0].id, &unknown).await.unwrap_err(), Code::FailedPrecondition, "PATIENT_NOT_FOUND");
    assert_eq!(p.occupied(&slots[0].id).await, 0);

    let patients = p.patients(2).await;
    p.records()
        .merge_patients(pac_proto::records::MergePatientsRequest {
            survivor_id: patients[0].clone(),
            merged_id: patients[1].clone(),
            reason: "duplicate registration".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let booked = p.book(&slots[0].id, &patients[1]).await.unwrap();
    assert_eq!(booked.patient_id, patients[0]);
}

#[tokio::test]
async fn bad_requests_are_refused_with_field_violations_and_change_nothing() {
    let p = Platform::start().await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 10, 20, 1).await;
    let slot = p.free_slots(&clinic).await.remove(0);
    let patients = p.patients(1).await;
    let mut c = p.client();
    let no_target = pb::BookAppointmentRequest { patient_id: patients[0].clone(), ..Default::default() };
    assert_error(&c.book_appointment(no_target).await.unwrap_err(), Code::InvalidArgument, "TARGET_REQUIRED");
    let bad_id =
        pb::BookAppointmentRequest { target: Some(Target::SlotId("nope".into())), patient_id: patients[0].clone(), ..Default::default() };
    assert_error(&c.book_appointment(bad_id).await.unwrap_err(), Code::InvalidArgument, "ID_INVALID");
    let unknown_slot = pb::BookAppointmentRequest {
        target: Some(Target::SlotId(uuid::Uuid::now_v7().to_string())),
        patient_id: patients[0].clone(),
        ..Default::default()
    };
    assert_eq!(c.book_appointment(unknown_slot).await.unwrap_err().code(), Code::NotFound);
    let ttl = pb::HoldSlotRequest { slot_id: slot.id.clone(), patient_id: patients[0].clone(), ttl_seconds: 5, ..Default::default() };
    assert_error(&c.hold_slot(ttl).await.unwrap_err(), Code::InvalidArgument, "TTL_INVALID");
    let search = pb::SearchSlotsRequest { page_size: 1000, ..Default::default() };
    let refused = c.search_slots(search).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let clinic_tz = pb::CreateClinicRequest {
        clinic: Some(pb::Clinic {
            location_id: clinic.location_id.clone(),
            name: "X".into(),
            service_code: "AB".into(),
            time_zone: "Mars/Olympus".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    assert_error(&c.create_clinic(clinic_tz).await.unwrap_err(), Code::InvalidArgument, "TIME_ZONE_INVALID");
    let session = pb::CreateSessionTemplateRequest {
        session_template: Some(pb::SessionTemplate {
            clinic_id: clinic.id.clone(),
            weekday: 8,
            slot_minutes: 2,
            capacity: 0,
            ..Default::default()
        }),
        request_id: String::new(),
    };
    assert_eq!(c.create_session_template(session).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(p.occupied(&slot.id).await, 0);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM scheduling.appointments").fetch_one(&p.admin().await).await.unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_patient_cannot_be_booked_into_two_places_at_once() {
    let p = Platform::start().await;
    let a = p.clinic("TO-FRACTURE").await;
    let b = p.clinic("DERM-GENERAL").await;
    p.session(&a, 9, 10, 30, 1).await;
    p.session(&b, 9, 10, 30, 1).await;
    let patients = p.patients(1).await;
    let first = p.free_slots(&a).await.remove(0);
    let clash = p.free_slots(&b).await.remove(0);
    p.book(&first.id, &patients[0]).await.unwrap();
    assert_error(&p.book(&clash.id, &patients[0]).await.unwrap_err(), Code::FailedPrecondition, "PATIENT_DOUBLE_BOOKED");
    assert_eq!(p.occupied(&clash.id).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_holds_at_most_the_configured_number_of_slots_at_once_even_all_at_once() {
    let p = Platform::start_with(|c| c.policy.max_holds_per_caller = 3).await;
    let clinic = p.clinic("TO-FRACTURE").await;
    p.session(&clinic, 9, 17, 15, 1).await;
    let slots = p.free_slots(&clinic).await;
    let patients = p.patients(12).await;

    // Ten holds by one caller at once: three are taken, the rest refused, and they take no place.
    let attempts = (0..10).map(|n| {
        let mut client = p.client();
        let request = pb::HoldSlotRequest { slot_id: slots[n].id.clone(), patient_id: patients[n].clone(), ..Default::default() };
        async move { client.hold_slot(request).await }
    });
    let results = join_all(attempts).await;
    let held: Vec<pb::Appointment> =
        results.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.get_ref().appointment.clone().unwrap()).collect();
    assert_eq!(held.len(), 3, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_error(refused, Code::ResourceExhausted, "TOO_MANY_HOLDS");
    }
    let occupied: i32 = join_all(slots[..10].iter().map(|s| p.occupied(&s.id))).await.into_iter().sum();
    assert_eq!(occupied, 3);

    let hold = |n: usize| pb::HoldSlotRequest { slot_id: slots[n].id.clone(), patient_id: patients[n].clone(), ..Default::default() };
    // The cap is per caller: another may still hold.
    p.client().hold_slot(p.signed(hold(10), &service_caller("pac-referrals"))).await.expect("another caller holds");
    // A hold confirmed into a booking is no longer a hold: room for one more.
    let confirm = pb::BookAppointmentRequest { target: Some(Target::HeldAppointmentId(held[0].id.clone())), ..Default::default() };
    p.client().book_appointment(confirm).await.unwrap();
    let again = p.client().hold_slot(hold(11)).await.expect("a hold after one was booked");
    let one_more = pb::HoldSlotRequest { slot_id: slots[13].id.clone(), patient_id: patients[1].clone(), ..Default::default() };
    assert_error(&p.client().hold_slot(one_more).await.unwrap_err(), Code::ResourceExhausted, "TOO_MANY_HOLDS");
    // A lapsed hold counts for nothing, even before it is swept.
    p.lapse_hold(&again.into_inner().appointment.unwrap().id).await;
    let request =
        pb::HoldSlotRequest { slot_id: slots[20].id.clone(), patient_id: patients[0].clone(), ttl_seconds: 60, ..Default::default() };
    p.client().hold_slot(request).await.expect("a hold after one lapsed");
}
