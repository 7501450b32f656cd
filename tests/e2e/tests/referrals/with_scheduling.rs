//! Referrals following the other services, end to end over gRPC: bookings, cancellations by the
//! hospital and by the patient, missed and attended appointments, a referral cancelled with its
//! appointment, catching up after being stopped, and patient merges.

use std::time::Duration;

use pac_e2e::referrals::Platform;
use pac_platform::testkit::assert_error;
use pac_proto::records as records_pb;
use pac_proto::referrals as pb;
use pac_proto::scheduling as sched;

async fn make_started(p: &Platform, appointment_id: &str) {
    sqlx::query(
        "UPDATE scheduling.appointments SET start_time = now() - interval '30 minutes', end_time = now() - interval '10 minutes' \
         WHERE id = $1::uuid",
    )
    .bind(appointment_id)
    .execute(&p.admin().await)
    .await
    .unwrap();
}

async fn cancel(p: &Platform, appointment: &sched::Appointment, by: sched::CancelledBy) {
    p.scheduling()
        .cancel_appointment(sched::CancelAppointmentRequest {
            appointment_id: appointment.id.clone(),
            reason_code: "CLINIC_CANCELLED".into(),
            cancelled_by: by as i32,
            etag: appointment.etag.clone(),
            request_id: String::new(),
        })
        .await
        .expect("cancel appointment");
}

async fn set_status(p: &Platform, appointment_id: &str, status: sched::AppointmentStatus) {
    make_started(p, appointment_id).await;
    p.scheduling()
        .update_appointment_status(sched::UpdateAppointmentStatusRequest {
            appointment_id: appointment_id.into(),
            status: status as i32,
            ..Default::default()
        })
        .await
        .expect("update appointment status");
}

fn status(r: &pb::Referral) -> pb::ReferralStatus {
    pb::ReferralStatus::try_from(r.status).unwrap()
}

#[tokio::test]
async fn bookings_and_cancellations_move_the_referral() {
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    let slots = p.slots("KNEE").await;
    let patient = p.adult().await;
    let referral = p.accept(&p.refer(&patient, "KNEE").await).await;

    let first = p.book(&slots[0].id, &referral).await;
    let booked = p.referral_becomes(&referral.id, |r| status(r) == pb::ReferralStatus::Booked).await;
    assert_eq!(
        (booked.current_appointment_id.as_str(), booked.appointment_ids.as_slice()),
        (first.id.as_str(), [first.id.clone()].as_slice())
    );

    cancel(&p, &first, sched::CancelledBy::Provider).await;
    let lost = p.referral_becomes(&referral.id, |r| status(r) == pb::ReferralStatus::AwaitingBooking).await;
    assert_eq!(lost.rebook_reason, pb::RebookReason::CancelledByProvider as i32);
    assert!(lost.current_appointment_id.is_empty());
    assert_eq!(lost.clock.unwrap().state, pb::ClockState::Running as i32, "a cancellation does not stop the clock");

    let second = p.book(&slots[1].id, &referral).await;
    p.referral_becomes(&referral.id, |r| r.current_appointment_id == second.id).await;
    cancel(&p, &second, sched::CancelledBy::Patient).await;
    let lost = p.referral_becomes(&referral.id, |r| status(r) == pb::ReferralStatus::AwaitingBooking).await;
    assert_eq!(lost.rebook_reason, pb::RebookReason::CancelledByPatient as i32);
    assert_eq!(lost.appointment_ids, [first.id.clone(), second.id.clone()]);

    // A booking for a referral not yet accepted is refused, and books nothing.
    let untriaged = p.refer(&patient, "KNEE").await;
    let refused = p.try_book(&slots[2].id, &untriaged).await.unwrap_err();
    assert_error(&refused, tonic::Code::FailedPrecondition, "REFERRAL_NOT_BOOKABLE");
    assert_eq!(p.occupied(&slots[2].id).await, 0);
    assert_eq!(status(&p.get(&untriaged.id).await), pb::ReferralStatus::AwaitingTriage);
}

#[tokio::test]
async fn a_first_appointment_dna_nullifies_the_clock_and_a_later_one_follows_local_policy() {
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Discharge).await;
    let slots = p.slots("KNEE").await;
    let patient = p.adult().await;
    let referral = p.accept(&p.refer(&patient, "KNEE").await).await;

    let first = p.book(&slots[0].id, &referral).await;
    p.referral_becomes(&referral.id, |r| status(r) == pb::ReferralStatus::Booked).await;
    set_status(&p, &first.id, sched::AppointmentStatus::Noshow).await;
    let missed = p.referral_becomes(&referral.id, |r| r.missed_appointments == 1).await;
    let clock = missed.clock.unwrap();
    assert_eq!((clock.state, clock.status_code), (pb::ClockState::Nullified as i32, 33));
    assert_eq!((clock.weeks_waited, clock.breach_date), (None, None), "the period is not measured");
    assert_eq!(status(&missed), pb::ReferralStatus::AwaitingBooking);
    assert!(missed.dna_follow_up);
    let follow_up =
        p.client().list_referrals(pb::ListReferralsRequest { dna_follow_up: true, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(follow_up.referrals.len(), 1);

    // Rebooked: a new clock starts; attended, then a later DNA discharges under this service's policy.
    let second = p.book(&slots[1].id, &referral).await;
    let rebooked = p.referral_becomes(&referral.id, |r| status(r) == pb::ReferralStatus::Booked).await;
    assert_eq!(rebooked.clock.as_ref().unwrap().state, pb::ClockState::Running as i32);
    assert!(!rebooked.dna_follow_up);
    set_status(&p, &second.id, sched::AppointmentStatus::Fulfilled).await;
    let seen = p.referral_becomes(&referral.id, |r| r.attended_appointments == 1).await;
    assert_eq!(seen.clock.as_ref().unwrap().status_code, 20);
    // Attended: a follow-up appointment for the same referral, which the patient misses.
    let follow = p.book(&slots[2].id, &seen).await;
    p.referral_becomes(&referral.id, |r| r.current_appointment_id == follow.id).await;
    set_status(&p, &follow.id, sched::AppointmentStatus::Noshow).await;
    let discharged = p.referral_becomes(&referral.id, |r| r.missed_appointments == 2).await;
    assert_eq!(status(&discharged), pb::ReferralStatus::Completed);
    let clock = discharged.clock.unwrap();
    assert_eq!((clock.state, clock.status_code), (pb::ClockState::Stopped as i32, 34));
}

#[tokio::test]
async fn cancelling_a_referral_cancels_its_appointment() {
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    let slots = p.slots("KNEE").await;
    let referral = p.accept(&p.refer(&p.adult().await, "KNEE").await).await;
    let appointment = p.book(&slots[0].id, &referral).await;
    let booked = p.referral_becomes(&referral.id, |r| status(r) == pb::ReferralStatus::Booked).await;

    let request = pb::CancelReferralRequest {
        referral_id: booked.id.clone(),
        etag: booked.etag.clone(),
        reason: "Patient moved away".into(),
        request_id: "c-1".into(),
    };
    let response = p.client().cancel_referral(request.clone()).await.unwrap().into_inner();
    assert_eq!(response.cancelled_appointment_id, appointment.id);
    assert_eq!(status(response.referral.as_ref().unwrap()), pb::ReferralStatus::Cancelled);
    let got = p.scheduling().get_appointment(sched::GetAppointmentRequest { id: appointment.id.clone() }).await.unwrap().into_inner();
    let got = got.appointment.unwrap();
    assert_eq!(got.status, sched::AppointmentStatus::Cancelled as i32);
    assert_eq!(got.cancellation.unwrap().reason_code, "REFERRAL_CANCELLED");
    // The appointment's cancellation event leaves the cancelled referral as it is; a retry answers the same.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p.get(&referral.id).await.etag, response.referral.unwrap().etag);
    assert_eq!(p.client().cancel_referral(request).await.unwrap().into_inner().cancelled_appointment_id, appointment.id);
}

#[tokio::test]
async fn changes_made_while_referrals_is_stopped_are_applied_once_on_restart() {
    let mut p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    let slots = p.slots("KNEE").await;
    let patient = p.adult().await;
    let mut referrals = Vec::new();
    let mut booked = Vec::new();
    for slot in &slots[..3] {
        let referral = p.accept(&p.refer(&patient, "KNEE").await).await;
        let appointment = p.book(&slot.id, &referral).await;
        p.referral_becomes(&referral.id, |r| r.current_appointment_id == appointment.id).await;
        referrals.push(referral);
        booked.push(appointment);
    }

    p.stop_referrals().await;
    // A booking naming a referral needs the referrals service to check it: refused, nothing written.
    let waiting = &referrals[0];
    let refused = p.try_book(&slots[5].id, waiting).await.unwrap_err();
    assert_error(&refused, tonic::Code::Unavailable, "REFERRALS_UNAVAILABLE");
    assert_eq!(p.occupied(&slots[5].id).await, 0);
    // Cancellations need no referral check: made while it is stopped, followed when it is back.
    for appointment in &booked {
        cancel(&p, appointment, sched::CancelledBy::Patient).await;
    }
    p.start_referrals(None).await;
    for (referral, appointment) in referrals.iter().zip(&booked) {
        let after = p.referral_becomes(&referral.id, |r| status(r) == pb::ReferralStatus::AwaitingBooking).await;
        assert_eq!(after.appointment_ids, std::slice::from_ref(&appointment.id));
        assert_eq!(after.rebook_reason, pb::RebookReason::CancelledByPatient as i32);
    }
    // Exactly once: the restart again replays nothing.
    p.stop_referrals().await;
    p.start_referrals(None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM referrals.outbox WHERE event_type = 'ReferralBooked'")
        .fetch_one(&p.admin().await)
        .await
        .unwrap();
    assert_eq!(events, 3);
    for referral in &referrals {
        assert_eq!(p.get(&referral.id).await.etag, "4", "accepted, booked, cancelled; nothing twice");
    }
}

#[tokio::test]
async fn a_patient_merge_moves_referrals_and_an_unmerge_moves_them_back() {
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    let (survivor, merged) = (p.adult().await, p.adult().await);
    let referral = p.refer(&merged, "KNEE").await;
    p.records()
        .merge_patients(records_pb::MergePatientsRequest {
            survivor_id: survivor.clone(),
            merged_id: merged.clone(),
            reason: "duplicate".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    p.referral_becomes(&referral.id, |r| r.patient_id == survivor).await;
    p.records()
        .unmerge_patient(records_pb::UnmergePatientRequest {
            merged_id: merged.clone(),
            reason: "not the same person".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    p.referral_becomes(&referral.id, |r| r.patient_id == merged).await;
    // A referral for a merged-away id goes to the survivor.
    p.records()
        .merge_patients(records_pb::MergePatientsRequest {
            survivor_id: survivor.clone(),
            merged_id: merged.clone(),
            reason: "duplicate".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(p.refer(&merged, "KNEE").await.patient_id, survivor);
}

async fn appointment(p: &Platform, id: &str) -> sched::Appointment {
    p.scheduling().get_appointment(sched::GetAppointmentRequest { id: id.into() }).await.unwrap().into_inner().appointment.unwrap()
}

async fn cancelled_for(p: &Platform, id: &str, reason: &str) {
    for _ in 0..150 {
        let a = appointment(p, id).await;
        if a.status == sched::AppointmentStatus::Cancelled as i32 {
            assert_eq!(a.cancellation.unwrap().reason_code, reason);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("appointment {id} was never cancelled ({reason})");
}

#[tokio::test]
async fn a_referral_keeps_one_live_appointment_and_none_once_closed() {
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    let slots = p.slots("KNEE").await;
    let patient = p.adult().await;
    let referral = p.accept(&p.refer(&patient, "KNEE").await).await;

    // A second booking replaces the first, which is cancelled.
    let first = p.book(&slots[0].id, &referral).await;
    p.referral_becomes(&referral.id, |r| r.current_appointment_id == first.id).await;
    let second = p.book(&slots[1].id, &referral).await;
    let booked = p.referral_becomes(&referral.id, |r| r.current_appointment_id == second.id).await;
    cancelled_for(&p, &first.id, "SUPERSEDED_BY_NEW_BOOKING").await;
    assert_eq!(booked.appointment_ids, [first.id.clone(), second.id.clone()]);

    // Treatment closes the pathway and its live appointment.
    let request = pb::RecordClockEventRequest {
        referral_id: booked.id.clone(),
        etag: booked.etag.clone(),
        kind: pb::ClockEventKind::FirstTreatment as i32,
        ..Default::default()
    };
    let treated = p.client().record_clock_event(request).await.unwrap().into_inner().referral.unwrap();
    assert_eq!((status(&treated), treated.current_appointment_id.as_str()), (pb::ReferralStatus::Completed, ""));
    cancelled_for(&p, &second.id, "REFERRAL_CLOSED").await;

    // A closed referral cannot be booked.
    let refused = p.try_book(&slots[2].id, &referral).await.unwrap_err();
    assert_error(&refused, tonic::Code::FailedPrecondition, "REFERRAL_NOT_BOOKABLE");
    // A booking that arrives for it all the same (checked just before it closed) is cancelled, the
    // referral unchanged: an appointment booked without the referral, its event naming it.
    let late = p.book_without_referral(&slots[2].id, &referral.patient_id).await;
    p.append_booked_event(sched::Appointment { referral_id: referral.id.clone(), ..late.clone() }).await;
    cancelled_for(&p, &late.id, "REFERRAL_CLOSED").await;
    assert_eq!(p.get(&referral.id).await.etag, treated.etag);

    // Entered in error: the referral needs booking again.
    let other = p.accept(&p.refer(&patient, "KNEE").await).await;
    let wrong = p.book(&slots[3].id, &other).await;
    p.referral_becomes(&other.id, |r| r.current_appointment_id == wrong.id).await;
    p.scheduling()
        .update_appointment_status(sched::UpdateAppointmentStatusRequest {
            appointment_id: wrong.id.clone(),
            status: sched::AppointmentStatus::EnteredInError as i32,
            correction_reason: "booked for the wrong patient".into(),
            ..Default::default()
        })
        .await
        .expect("entered in error");
    let lost = p.referral_becomes(&other.id, |r| status(r) == pb::ReferralStatus::AwaitingBooking).await;
    assert_eq!(lost.rebook_reason, pb::RebookReason::CancelledByProvider as i32);
}

#[tokio::test]
async fn a_mis_marked_no_show_corrected_to_attended_takes_its_effect_back() {
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    let slots = p.slots("KNEE").await;
    let referral = p.accept(&p.refer(&p.adult().await, "KNEE").await).await;
    let first = p.book(&slots[0].id, &referral).await;
    p.referral_becomes(&referral.id, |r| status(r) == pb::ReferralStatus::Booked).await;
    set_status(&p, &first.id, sched::AppointmentStatus::Noshow).await;
    let missed = p.referral_becomes(&referral.id, |r| r.missed_appointments == 1).await;
    assert_eq!(missed.clock.as_ref().unwrap().state, pb::ClockState::Nullified as i32);

    let correct = |to: sched::AppointmentStatus| sched::UpdateAppointmentStatusRequest {
        appointment_id: first.id.clone(),
        status: to as i32,
        correction_reason: "the patient was seen; marked by mistake".into(),
        ..Default::default()
    };
    p.scheduling().update_appointment_status(correct(sched::AppointmentStatus::Fulfilled)).await.expect("correct to fulfilled");
    let corrected = p.referral_becomes(&referral.id, |r| r.attended_appointments == 1).await;
    assert_eq!((corrected.missed_appointments, status(&corrected)), (0, pb::ReferralStatus::Booked));
    assert_eq!(corrected.current_appointment_id, first.id);
    assert!(!corrected.dna_follow_up);
    let clock = corrected.clock.unwrap();
    assert_eq!((clock.state, clock.status_code, clock.start_date), (pb::ClockState::Running as i32, 20, missed.clock.unwrap().start_date));

    // And back again: a no-show after all, the first appointment's, so the clock is nullified again.
    p.scheduling().update_appointment_status(correct(sched::AppointmentStatus::Noshow)).await.expect("correct to no-show");
    let again = p.referral_becomes(&referral.id, |r| r.missed_appointments == 1).await;
    assert_eq!((again.attended_appointments, status(&again)), (0, pb::ReferralStatus::AwaitingBooking));
    assert_eq!(again.clock.unwrap().status_code, 33);
}

#[tokio::test]
async fn a_referral_that_checked_its_patient_before_a_merge_and_commits_after_it_is_the_survivors() {
    use sqlx::Connection;
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    let (survivor, merged) = (p.adult().await, p.adult().await);
    // The referral's request id is held (as a concurrent retry would hold it): the referral waits in
    // its transaction after its patient check, before it writes anything.
    let request_id = uuid::Uuid::now_v7().to_string();
    let key = format!("referrals:CreateReferral:{request_id}");
    let mut blocker = sqlx::PgConnection::connect(&p.db.admin_url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))").bind(&key).execute(&mut blocker).await.unwrap();
    let mut request = p.new_referral(&merged, "KNEE");
    request.request_id = request_id;
    let mut client = p.client();
    let creating = tokio::spawn(async move { client.create_referral(request).await });
    let admin = p.admin().await;
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pac-referrals' AND wait_event_type = 'Lock'";
    for _ in 0..100 {
        if sqlx::query_scalar::<_, i64>(waiting).fetch_one(&admin).await.unwrap() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.records()
        .merge_patients(records_pb::MergePatientsRequest {
            survivor_id: survivor.clone(),
            merged_id: merged.clone(),
            reason: "duplicate".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    // The merge is followed (nothing of the merged record's to move) while the referral waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))").bind(&key).execute(&mut blocker).await.unwrap();
    let referral = creating.await.unwrap().expect("the referral is made").into_inner().referral.unwrap();
    p.referral_becomes(&referral.id, |r| r.patient_id == survivor).await;
}
