//! Organisation scope over real gRPC on loopback against a real Postgres: callers of two
//! organisations never see or change each other's appointments, waitlist entries or offers, cannot
//! hold, book or reschedule into each other's clinics nor book each other's patients, waitlist
//! offers stay inside an organisation, and the platform's own services see both.

use pac_e2e::scheduling::*;
use pac_platform::caller::Caller;
use pac_platform::testkit::{assert_error, audited, member_of, service_caller};
use pac_proto::scheduling as pb;
use pac_proto::scheduling::book_appointment_request::Target;
use tonic::Code;

fn book(slot_id: &str, patient_id: &str) -> pb::BookAppointmentRequest {
    pb::BookAppointmentRequest { target: Some(Target::SlotId(slot_id.into())), patient_id: patient_id.into(), ..Default::default() }
}

fn by_patient(patient_id: &str) -> pb::ListAppointmentsRequest {
    pb::ListAppointmentsRequest { patient_id: patient_id.into(), ..Default::default() }
}

fn waitlist(patient_id: &str, service_code: &str) -> pb::AddToWaitlistRequest {
    pb::AddToWaitlistRequest {
        entry: Some(pb::WaitlistEntry {
            patient_id: patient_id.into(),
            target: Some(pb::waitlist_entry::Target::ServiceCode(service_code.into())),
            priority: pb::Priority::Routine as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

async fn appointment_ids(p: &Platform, request: pb::ListAppointmentsRequest, caller: &Caller) -> Vec<String> {
    let listed = p.client().list_appointments(p.signed(request, caller)).await.unwrap().into_inner().appointments;
    listed.into_iter().map(|a| a.id).collect()
}

async fn entries(p: &Platform, caller: &Caller) -> Vec<pb::WaitlistEntry> {
    let request = pb::ListWaitlistRequest { service_code: "DERM".into(), ..Default::default() };
    p.client().list_waitlist(p.signed(request, caller)).await.unwrap().into_inner().entries
}

#[tokio::test]
async fn two_organisations_never_see_or_change_each_others_appointments_and_waitlists() {
    let p = Platform::start().await;
    let (leeds, york, service) = (member_of("leeds-1", "RR8", &[]), member_of("york-1", "RCB", &[]), service_caller("pac-referrals"));
    let mut client = p.client();
    // Both run a clinic for the same service code.
    let leeds_clinic = p.clinic_of("DERM", "RR8").await;
    let york_clinic = p.clinic_of("DERM", "RCB").await;
    assert_eq!((leeds_clinic.organisation.as_str(), york_clinic.organisation.as_str()), ("RR8", "RCB"));
    p.session(&leeds_clinic, 9, 12, 30, 1).await;
    p.session(&york_clinic, 9, 12, 30, 1).await;
    let (leeds_slots, york_slots) = (p.free_slots(&leeds_clinic).await, p.free_slots(&york_clinic).await);
    assert!(york_slots.iter().all(|s| s.organisation == "RCB"));
    // Each organisation's own patients (a patient belongs to the organisation that registered it).
    let (ours_p, theirs_p) = (p.patients_of(0..2, "RR8").await, p.patients_of(2..4, "RCB").await);

    let ours = client.book_appointment(p.signed(book(&leeds_slots[0].id, &ours_p[0]), &leeds)).await.unwrap();
    assert_eq!(audited(&ours), [ours_p[0].clone()]);
    let ours = ours.into_inner().appointment.unwrap();
    assert_eq!(ours.organisation, "RR8");
    let theirs = client.book_appointment(p.signed(book(&york_slots[0].id, &theirs_p[0]), &york)).await.unwrap();
    let theirs = theirs.into_inner().appointment.unwrap();

    // Another organisation's appointment is not found, whatever the call.
    let status = client.get_appointment(p.signed(pb::GetAppointmentRequest { id: theirs.id.clone() }, &leeds)).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
    let cancel = pb::CancelAppointmentRequest {
        appointment_id: theirs.id.clone(),
        reason_code: "PATIENT_UNWELL".into(),
        cancelled_by: pb::CancelledBy::Patient as i32,
        ..Default::default()
    };
    assert_error(&client.cancel_appointment(p.signed(cancel.clone(), &leeds)).await.unwrap_err(), Code::NotFound, "NOT_FOUND");
    let arrived = pb::UpdateAppointmentStatusRequest {
        appointment_id: theirs.id.clone(),
        status: pb::AppointmentStatus::Arrived as i32,
        ..Default::default()
    };
    assert_error(&client.update_appointment_status(p.signed(arrived, &leeds)).await.unwrap_err(), Code::NotFound, "NOT_FOUND");
    let move_theirs = pb::RescheduleAppointmentRequest {
        appointment_id: theirs.id.clone(),
        new_slot_id: leeds_slots[1].id.clone(),
        etag: theirs.etag.clone(),
        ..Default::default()
    };
    assert_error(&client.reschedule_appointment(p.signed(move_theirs, &leeds)).await.unwrap_err(), Code::NotFound, "NOT_FOUND");
    let hold_theirs = pb::BookAppointmentRequest { target: Some(Target::HeldAppointmentId(theirs.id.clone())), ..Default::default() };
    assert_error(&client.book_appointment(p.signed(hold_theirs, &leeds)).await.unwrap_err(), Code::NotFound, "NOT_FOUND");
    assert_eq!(p.get(&theirs.id).await.status, pb::AppointmentStatus::Booked as i32, "nothing changed");

    // Holding, booking or moving into another organisation's clinic is refused, and takes no place.
    let hold = pb::HoldSlotRequest { slot_id: york_slots[1].id.clone(), patient_id: ours_p[0].clone(), ..Default::default() };
    let status = client.hold_slot(p.signed(hold, &leeds)).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "OTHER_ORGANISATION");
    let status = client.book_appointment(p.signed(book(&york_slots[1].id, &ours_p[0]), &leeds)).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "OTHER_ORGANISATION");
    // Nor can Leeds book York's patient, even into its own clinic: to Leeds that patient does not exist.
    let status = client.book_appointment(p.signed(book(&leeds_slots[3].id, &theirs_p[0]), &leeds)).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "PATIENT_NOT_FOUND");
    let move_ours = pb::RescheduleAppointmentRequest {
        appointment_id: ours.id.clone(),
        new_slot_id: york_slots[2].id.clone(),
        etag: ours.etag.clone(),
        ..Default::default()
    };
    let status = client.reschedule_appointment(p.signed(move_ours, &leeds)).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "OTHER_ORGANISATION");
    assert_eq!((p.occupied(&york_slots[1].id).await, p.occupied(&york_slots[2].id).await), (0, 0));
    assert_eq!(p.get(&ours.id).await.slot_id, leeds_slots[0].id);

    // Lists hold only the caller's own.
    assert!(appointment_ids(&p, by_patient(&theirs_p[0]), &leeds).await.is_empty());
    assert_eq!(appointment_ids(&p, by_patient(&theirs_p[0]), &york).await, [theirs.id.clone()]);
    let day = york_slots[0].local_date;
    let york_day = pb::ListAppointmentsRequest { clinic_id: york_clinic.id.clone(), day, ..Default::default() };
    assert!(appointment_ids(&p, york_day.clone(), &leeds).await.is_empty());
    assert_eq!(appointment_ids(&p, york_day, &york).await, [theirs.id.clone()]);

    // Waitlists: not for another organisation's clinic; for a service code, each organisation its own.
    let mut for_york_clinic = waitlist(&ours_p[1], "DERM");
    for_york_clinic.entry.as_mut().unwrap().target = Some(pb::waitlist_entry::Target::ClinicId(york_clinic.id.clone()));
    let status = client.add_to_waitlist(p.signed(for_york_clinic, &leeds)).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "OTHER_ORGANISATION");
    let leeds_entry = client.add_to_waitlist(p.signed(waitlist(&ours_p[1], "DERM"), &leeds)).await.unwrap().into_inner().entry.unwrap();
    let york_entry = client.add_to_waitlist(p.signed(waitlist(&theirs_p[1], "DERM"), &york)).await.unwrap().into_inner().entry.unwrap();
    assert_eq!((leeds_entry.organisation.as_str(), york_entry.organisation.as_str()), ("RR8", "RCB"));
    assert_eq!(entries(&p, &leeds).await.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), [leeds_entry.id.clone()]);
    assert_eq!(entries(&p, &york).await.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), [york_entry.id.clone()]);

    // A slot York frees is offered to York's waiting patient only.
    let cancel = pb::CancelAppointmentRequest { cancelled_by: pb::CancelledBy::Provider as i32, ..cancel };
    client.cancel_appointment(p.signed(cancel, &york)).await.unwrap();
    let york_view = entries(&p, &york).await;
    let offer = york_view[0].offers.first().expect("York's entry is offered York's freed slot").clone();
    assert_eq!(offer.slot_id, york_slots[0].id);
    assert!(entries(&p, &leeds).await[0].offers.is_empty(), "Leeds' entry is offered nothing of York's");
    let respond = pb::RespondToOfferRequest { offer_id: offer.id.clone(), accept: true, request_id: String::new() };
    assert_error(&client.respond_to_offer(p.signed(respond.clone(), &leeds)).await.unwrap_err(), Code::NotFound, "NOT_FOUND");
    let accepted = client.respond_to_offer(p.signed(respond, &york)).await.unwrap();
    assert_eq!(audited(&accepted), [theirs_p[1].clone()]);

    // Clinics are created for one of the caller's organisations only.
    let mut clinic = leeds_clinic.clone();
    clinic.id.clear();
    clinic.organisation = "RCB".into();
    let create = |clinic: pb::Clinic| pb::CreateClinicRequest { clinic: Some(clinic), request_id: String::new() };
    let status = client.create_clinic(p.signed(create(clinic.clone()), &leeds)).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "OTHER_ORGANISATION");
    clinic.organisation.clear();
    let created = client.create_clinic(p.signed(create(clinic), &leeds)).await.unwrap().into_inner().clinic.unwrap();
    assert_eq!(created.organisation, "RR8");

    // The platform's own services are unscoped: they see both organisations'.
    for id in [&ours.id, &theirs.id] {
        let got = client.get_appointment(p.signed(pb::GetAppointmentRequest { id: id.clone() }, &service)).await.unwrap();
        assert_eq!(&got.into_inner().appointment.unwrap().id, id);
    }
    let every = pb::ListWaitlistRequest { service_code: "DERM".into(), include_closed: true, ..Default::default() };
    let listed = client.list_waitlist(p.signed(every, &service)).await.unwrap().into_inner().entries;
    assert_eq!(listed.len(), 2, "Leeds' open entry and York's, closed by the booking");
    assert_eq!(appointment_ids(&p, by_patient(&theirs_p[1]), &service).await.len(), 1, "the accepted offer");
}
