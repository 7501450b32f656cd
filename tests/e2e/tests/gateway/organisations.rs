//! The matrix's last row: the right role of another organisation. Everything one organisation
//! holds (patients, appointments, referrals) is invisible to another's callers through every RPC
//! that names it, lists never include it, and each attempt is in the audit trail.

use std::time::Duration;

use pac_e2e::gateway::{Platform, free_slots, knee_clinic, referred_patient, start, token};
use pac_gateway::auth::{Identity, mint_development};
use pac_gateway::policy::Role;
use pac_gateway::{DEVELOPMENT_ISSUER, DEVELOPMENT_TOKEN_KEY};
use pac_platform::testkit::with_token;
use pac_proto::access::access_client::AccessClient;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::referrals::referrals_client::ReferralsClient;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use pac_proto::{access, records, referrals as refs, scheduling as sched};
use tonic::Code;

fn other(role: Role) -> String {
    let identity = Identity { subject: format!("rae-{}", role.name()), role, organisations: vec!["RAE".into()] };
    mint_development(DEVELOPMENT_TOKEN_KEY.as_bytes(), DEVELOPMENT_ISSUER, "pac-gateway", &identity, Duration::from_secs(600))
}

fn refused<T: std::fmt::Debug>(rpc: &str, outcome: Result<tonic::Response<T>, tonic::Status>, allowed: &[Code]) {
    let code = outcome.as_ref().err().map_or(Code::Ok, |s| s.code());
    assert!(allowed.contains(&code), "{rpc}: {code:?} ({outcome:?})");
}

const HIDDEN: &[Code] = &[Code::NotFound];
/// Writes naming another organisation's objects: not found, or refused outright.
const REFUSED: &[Code] = &[Code::NotFound, Code::PermissionDenied, Code::FailedPrecondition];

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn booked_in_rr8(p: &Platform) -> (String, refs::Referral, sched::Appointment, sched::Clinic, Vec<sched::Slot>) {
    let clinic = knee_clinic(p).await;
    let (patient_id, referral) = referred_patient(p, "Ownership", true).await;
    let slots = free_slots(p, &clinic, 3).await;
    let booked = AccessClient::new(p.gateway.clone())
        .book_referral_appointment(with_token(
            access::BookReferralAppointmentRequest { referral_id: referral.id.clone(), slot_id: slots[0].id.clone(), request_id: id() },
            Some(&token(Role::Coordinator, Duration::from_secs(60))),
        ))
        .await
        .unwrap()
        .into_inner();
    (patient_id, booked.referral.unwrap(), booked.appointment.unwrap(), clinic, slots)
}

#[tokio::test]
async fn another_organisation_sees_and_changes_nothing_of_ours() {
    let p = start().await;
    let (patient_id, referral, appointment, clinic, slots) = booked_in_rr8(&p).await;
    let (coordinator, clinician, integration, admin) =
        (other(Role::Coordinator), other(Role::Clinician), other(Role::Integration), other(Role::Admin));
    let t = |token: &String| Some(token.clone());
    let mut records = PatientRecordsClient::new(p.gateway.clone());
    let mut scheduling = SchedulingClient::new(p.gateway.clone());
    let mut referrals = ReferralsClient::new(p.gateway.clone());
    let mut access_api = AccessClient::new(p.gateway.clone());

    // Records.
    let get = records::GetPatientRequest { id: patient_id.clone() };
    refused("GetPatient", records.get_patient(with_token(get, t(&clinician).as_deref())).await, HIDDEN);
    let update = records::UpdatePatientRequest {
        patient: Some(records::Patient { id: patient_id.clone(), given_name: "Changed".into(), etag: "x".into(), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["given_name".into()] }),
    };
    refused("UpdatePatient", records.update_patient(with_token(update, t(&coordinator).as_deref())).await, REFUSED);
    let search = records::SearchPatientsRequest { name: "Ownership".into(), ..Default::default() };
    let found = records.search_patients(with_token(search, t(&coordinator).as_deref())).await.unwrap().into_inner();
    assert!(found.results.iter().all(|r| r.patient.as_ref().is_none_or(|p| p.id != patient_id)), "search shows another's patient");
    let merge = records::MergePatientsRequest { survivor_id: patient_id.clone(), merged_id: id(), reason: "x".into(), request_id: id() };
    refused("MergePatients", records.merge_patients(with_token(merge, t(&admin).as_deref())).await, REFUSED);
    let unmerge = records::UnmergePatientRequest { merged_id: patient_id.clone(), reason: "x".into(), request_id: id() };
    refused("UnmergePatient", records.unmerge_patient(with_token(unmerge, t(&admin).as_deref())).await, REFUSED);

    // Scheduling.
    let get = sched::GetAppointmentRequest { id: appointment.id.clone() };
    refused("GetAppointment", scheduling.get_appointment(with_token(get, t(&clinician).as_deref())).await, HIDDEN);
    let list = sched::ListAppointmentsRequest { patient_id: patient_id.clone(), ..Default::default() };
    let listed = scheduling.list_appointments(with_token(list, t(&coordinator).as_deref())).await;
    assert!(listed.as_ref().map_or(true, |l| l.get_ref().appointments.is_empty()), "{listed:?}");
    let hold = sched::HoldSlotRequest { slot_id: slots[1].id.clone(), patient_id: patient_id.clone(), ttl_seconds: 300, request_id: id() };
    refused("HoldSlot", scheduling.hold_slot(with_token(hold, t(&coordinator).as_deref())).await, REFUSED);
    let book = sched::BookAppointmentRequest {
        target: Some(sched::book_appointment_request::Target::SlotId(slots[2].id.clone())),
        patient_id: patient_id.clone(),
        referral_id: String::new(),
        request_id: id(),
    };
    refused("BookAppointment", scheduling.book_appointment(with_token(book, t(&integration).as_deref())).await, REFUSED);
    let reschedule = sched::RescheduleAppointmentRequest {
        appointment_id: appointment.id.clone(),
        new_slot_id: slots[1].id.clone(),
        etag: appointment.etag.clone(),
        reason: "x".into(),
        request_id: id(),
    };
    refused("RescheduleAppointment", scheduling.reschedule_appointment(with_token(reschedule, t(&coordinator).as_deref())).await, REFUSED);
    let cancel = sched::CancelAppointmentRequest {
        appointment_id: appointment.id.clone(),
        reason_code: "PATIENT_UNWELL".into(),
        cancelled_by: sched::CancelledBy::Patient as i32,
        etag: appointment.etag.clone(),
        request_id: id(),
    };
    refused("CancelAppointment", scheduling.cancel_appointment(with_token(cancel, t(&coordinator).as_deref())).await, REFUSED);
    let status = sched::UpdateAppointmentStatusRequest {
        appointment_id: appointment.id.clone(),
        status: sched::AppointmentStatus::Arrived as i32,
        etag: appointment.etag.clone(),
        correction_reason: String::new(),
    };
    refused("UpdateAppointmentStatus", scheduling.update_appointment_status(with_token(status, t(&clinician).as_deref())).await, REFUSED);
    let waitlist = sched::ListWaitlistRequest { clinic_id: clinic.id.clone(), ..Default::default() };
    let listed = scheduling.list_waitlist(with_token(waitlist, t(&coordinator).as_deref())).await;
    assert!(listed.as_ref().map_or(true, |l| l.get_ref().entries.is_empty()), "{listed:?}");

    // Referrals.
    let get = refs::GetReferralRequest { id: referral.id.clone() };
    refused("GetReferral", referrals.get_referral(with_token(get, t(&clinician).as_deref())).await, HIDDEN);
    let list = refs::ListReferralsRequest { patient_id: patient_id.clone(), ..Default::default() };
    let listed = referrals.list_referrals(with_token(list, t(&clinician).as_deref())).await.unwrap().into_inner();
    assert!(listed.referrals.is_empty(), "another organisation's worklist shows our referral");
    let actions = refs::GetAllowedActionsRequest { referral_id: referral.id.clone() };
    refused("GetAllowedActions", referrals.get_allowed_actions(with_token(actions, t(&clinician).as_deref())).await, HIDDEN);
    let cancel =
        refs::CancelReferralRequest { referral_id: referral.id.clone(), etag: referral.etag.clone(), reason: "x".into(), request_id: id() };
    refused("CancelReferral", referrals.cancel_referral(with_token(cancel, t(&clinician).as_deref())).await, REFUSED);
    let note = refs::AddNoteRequest {
        referral_id: referral.id.clone(),
        note: Some(refs::Note { text: "A note".into(), ..Default::default() }),
        request_id: id(),
    };
    refused("AddNote", referrals.add_note(with_token(note, t(&clinician).as_deref())).await, REFUSED);
    let task = refs::CompleteTaskRequest { referral_id: referral.id.clone(), task_id: id() };
    refused("CompleteTask", referrals.complete_task(with_token(task, t(&clinician).as_deref())).await, REFUSED);
    let clock = refs::RecordClockEventRequest {
        referral_id: referral.id.clone(),
        etag: referral.etag.clone(),
        kind: refs::ClockEventKind::Activity as i32,
        date: None,
        request_id: id(),
    };
    refused("RecordClockEvent", referrals.record_clock_event(with_token(clock, t(&clinician).as_deref())).await, REFUSED);
    let triage = refs::TriageReferralRequest {
        referral_id: referral.id.clone(),
        etag: referral.etag.clone(),
        decision: Some(refs::triage_referral_request::Decision::Accept(refs::Accept {})),
        request_id: id(),
    };
    refused("TriageReferral", referrals.triage_referral(with_token(triage, t(&clinician).as_deref())).await, REFUSED);
    let eligibility = refs::CheckEligibilityRequest { patient_id: patient_id.clone(), service_code: "KNEE".into(), ..Default::default() };
    refused("CheckEligibility", referrals.check_eligibility(with_token(eligibility, t(&coordinator).as_deref())).await, REFUSED);
    let create = refs::CreateReferralRequest {
        patient_id: patient_id.clone(),
        service_code: "KNEE".into(),
        priority: refs::Priority::Routine as i32,
        referrer: Some(refs::Referrer { organisation: "B86001".into(), clinician: String::new() }),
        source: "GP".into(),
        reason: "Knee pain".into(),
        ..Default::default()
    };
    refused("CreateReferral", referrals.create_referral(with_token(create, t(&coordinator).as_deref())).await, REFUSED);

    // The access API answers with the caller's scope too.
    let journey = access::GetPatientJourneyRequest { patient_id: patient_id.clone() };
    refused("GetPatientJourney", access_api.get_patient_journey(with_token(journey, t(&coordinator).as_deref())).await, HIDDEN);
    let guide = access::GetAppointmentGuideRequest { appointment_id: appointment.id.clone() };
    refused("GetAppointmentGuide", access_api.get_appointment_guide(with_token(guide, t(&coordinator).as_deref())).await, HIDDEN);
    let book = access::BookReferralAppointmentRequest { referral_id: referral.id.clone(), slot_id: slots[1].id.clone(), request_id: id() };
    refused("BookReferralAppointment", access_api.book_referral_appointment(with_token(book, t(&coordinator).as_deref())).await, HIDDEN);

    // Nothing changed for the owner, and every attempt is on the record.
    let owner = token(Role::Clinician, Duration::from_secs(60));
    let still = referrals
        .get_referral(with_token(refs::GetReferralRequest { id: referral.id.clone() }, Some(&owner)))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    assert_eq!((still.etag, still.status), (referral.etag, refs::ReferralStatus::Booked as i32));
    let pool = p.admin_pool().await;
    let mut attempts = 0i64;
    for _ in 0..100 {
        attempts = sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE organisation = 'RAE'").fetch_one(&pool).await.unwrap();
        if attempts >= 26 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(attempts, 26, "each of the other organisation's 26 calls is audited once");
}
