//! `pac.access.v1.Access` through the gateway, with the three services behind it.

use std::time::Duration;

use pac_e2e::gateway::{clinic_with_daily_sessions, free_slots, knee_clinic, referred_patient, start, token};
use pac_gateway::policy::Role;
use pac_platform::testkit::with_token;
use pac_proto::access as pb;
use pac_proto::access::access_client::AccessClient;
use pac_proto::referrals::ReferralStatus;
use pac_proto::referrals::{self as refs, referrals_client::ReferralsClient};
use pac_proto::scheduling::AppointmentStatus;
use pac_proto::scheduling::{self as sched, scheduling_client::SchedulingClient};
use tonic::Code;
use tonic_types::StatusExt;

fn book(referral_id: &str, slot_id: &str, request_id: &str) -> pb::BookReferralAppointmentRequest {
    pb::BookReferralAppointmentRequest { referral_id: referral_id.into(), slot_id: slot_id.into(), request_id: request_id.into() }
}

#[tokio::test]
async fn a_coordinator_books_an_accepted_referral_and_explains_the_appointment() {
    let p = start().await;
    let clinic = knee_clinic(&p).await;
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let mut access = AccessClient::new(p.gateway.clone());
    let slots = free_slots(&p, &clinic, 2).await;

    // Not yet accepted: refused, nothing booked.
    let (_, waiting) = referred_patient(&p, "Waiting", false).await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let refused =
        access.book_referral_appointment(with_token(book(&waiting.id, &slots[0].id, &request_id), Some(&coordinator))).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(refused.get_error_details().error_info().unwrap().reason, "REFERRAL_NOT_BOOKABLE");

    // Accepted: booked and linked.
    let (patient_id, referral) = referred_patient(&p, "Booked", true).await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let booked = access
        .book_referral_appointment(with_token(book(&referral.id, &slots[0].id, &request_id), Some(&coordinator)))
        .await
        .unwrap()
        .into_inner();
    let appointment = booked.appointment.unwrap();
    assert_eq!(appointment.status, AppointmentStatus::Booked as i32);
    assert_eq!((appointment.patient_id.as_str(), appointment.referral_id.as_str()), (patient_id.as_str(), referral.id.as_str()));
    assert!(booked.linked, "the referral lists its appointment");
    let linked = booked.referral.unwrap();
    assert_eq!(linked.status, ReferralStatus::Booked as i32);
    assert_eq!(linked.current_appointment_id, appointment.id);

    // A retry answers with the same appointment and books nothing more.
    let again = access
        .book_referral_appointment(with_token(book(&referral.id, &slots[0].id, &request_id), Some(&coordinator)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.appointment.unwrap().id, appointment.id);
    assert_eq!(again.referral.unwrap().appointment_ids, vec![appointment.id.clone()]);

    // The journey: the patient, the booked referral with its next step, the upcoming appointment.
    let journey = access
        .get_patient_journey(with_token(pb::GetPatientJourneyRequest { patient_id: patient_id.clone() }, Some(&coordinator)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(journey.patient.unwrap().id, patient_id);
    assert_eq!(journey.referrals.len(), 1);
    assert!(journey.referrals[0].next_step.starts_with("An appointment is booked"), "{}", journey.referrals[0].next_step);
    assert!(journey.referrals[0].next_step.contains("18-week"), "{}", journey.referrals[0].next_step);
    assert_eq!(journey.upcoming_appointments.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), vec![appointment.id.as_str()]);
    assert!(journey.past_appointments.is_empty());

    // The guide: where, when in the clinic's zone, what to bring, how to change.
    let guide = access
        .get_appointment_guide(with_token(pb::GetAppointmentGuideRequest { appointment_id: appointment.id.clone() }, Some(&coordinator)))
        .await
        .unwrap()
        .into_inner()
        .guide
        .unwrap();
    assert_eq!(guide.what, "Knee clinic (Trauma and orthopaedics)");
    assert_eq!(guide.r#where, "Chapel Allerton Hospital, Chapeltown Road, Leeds, LS7 4SA");
    assert!(guide.when.ends_with("(UK time)"), "{}", guide.when);
    assert_eq!(guide.time_zone, "Europe/London");
    assert_eq!(guide.what_to_bring, vec!["Shorts"]);
    assert_eq!(guide.access_notes, vec!["Step-free access"]);
    assert_eq!(guide.status, "Booked");
    assert!(guide.how_to_change.contains(&guide.reference), "{}", guide.how_to_change);
    let local_hour: u32 = guide.local_start[11..13].parse().unwrap();
    assert!((8..18).contains(&local_hour), "a slot of an 08:00-18:00 session in local time: {}", guide.local_start);
}

/// Found: a TO-FRACTURE referral booked into a DERM-GENERAL slot was accepted and the referral
/// became BOOKED. A slot of another service's clinic is refused and nothing changes.
#[tokio::test]
async fn a_referral_is_booked_only_into_a_clinic_of_its_service() {
    let p = start().await;
    let knee = knee_clinic(&p).await;
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let mut scheduling = SchedulingClient::new(p.gateway.clone());
    let derm = sched::Clinic {
        location_id: knee.location_id.clone(),
        name: "Dermatology".into(),
        specialty: "Dermatology".into(),
        service_code: "DERM-GENERAL".into(),
        time_zone: "Europe/London".into(),
        ..Default::default()
    };
    let derm = clinic_with_daily_sessions(&p, derm).await;
    let derm_slot = free_slots(&p, &derm, 1).await.remove(0);
    let (patient_id, referral) = referred_patient(&p, "Fracture", true).await;

    let mut access = AccessClient::new(p.gateway.clone());
    let request = book(&referral.id, &derm_slot.id, &uuid::Uuid::new_v4().to_string());
    let refused = access.book_referral_appointment(with_token(request, Some(&coordinator))).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(refused.get_error_details().error_info().unwrap().reason, "REFERRAL_SERVICE_MISMATCH");

    // Nothing changed: no appointment, the slot free, the referral still awaiting booking.
    let listed = sched::ListAppointmentsRequest { patient_id: patient_id.clone(), page_size: 10, ..Default::default() };
    let listed = scheduling.list_appointments(with_token(listed, Some(&coordinator))).await.unwrap().into_inner();
    assert!(listed.appointments.is_empty(), "{:?}", listed.appointments);
    assert_eq!(free_slots(&p, &derm, 1).await[0].id, derm_slot.id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let get = refs::GetReferralRequest { id: referral.id.clone() };
    let unchanged = ReferralsClient::new(p.gateway.clone()).get_referral(with_token(get, Some(&coordinator))).await.unwrap();
    let unchanged = unchanged.into_inner().referral.unwrap();
    assert_eq!((unchanged.status, unchanged.appointment_ids.len()), (ReferralStatus::AwaitingBooking as i32, 0));
}

#[tokio::test]
async fn bad_requests_name_every_bad_field_and_change_nothing() {
    let p = start().await;
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let mut access = AccessClient::new(p.gateway.clone());
    let invalid = access.book_referral_appointment(with_token(book("nope", "", "also-nope"), Some(&coordinator))).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let fields: Vec<String> = invalid.get_error_details().bad_request().unwrap().field_violations.iter().map(|v| v.field.clone()).collect();
    assert_eq!(fields, vec!["referral_id", "slot_id", "request_id"]);

    let unknown = uuid::Uuid::now_v7().to_string();
    let missing = access
        .book_referral_appointment(with_token(book(&unknown, &unknown, &uuid::Uuid::new_v4().to_string()), Some(&coordinator)))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing = access
        .get_patient_journey(with_token(pb::GetPatientJourneyRequest { patient_id: unknown.clone() }, Some(&coordinator)))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing = access
        .get_appointment_guide(with_token(pb::GetAppointmentGuideRequest { appointment_id: unknown }, Some(&coordinator)))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let invalid = access
        .get_appointment_guide(with_token(pb::GetAppointmentGuideRequest { appointment_id: String::new() }, Some(&coordinator)))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
}
