//! Organisation scope over real gRPC on loopback against a real Postgres: callers of two
//! organisations never see or change each other's referrals (by id, on worklists, by any triage,
//! cancellation, clock event, note or task), cannot refer into each other's services nor check or
//! refer each other's patients, a redirect hands a referral to the new service's organisation, and
//! the platform's own services see both.

use pac_e2e::referrals::*;
use pac_platform::convert::date;
use pac_platform::testkit::{assert_error, audited, member_of, service_caller};
use pac_proto::referrals as pb;
use pac_proto::referrals::triage_referral_request::Decision;
use tonic::Code;

const TRIAGE: &str = "referral.triage";

fn worklist() -> pb::ListReferralsRequest {
    pb::ListReferralsRequest::default()
}

async fn listed(p: &Platform, request: pb::ListReferralsRequest, caller: &pac_platform::Caller) -> Vec<String> {
    let referrals = p.client().list_referrals(p.signed_as(request, caller)).await.unwrap().into_inner().referrals;
    referrals.into_iter().map(|r| r.id).collect()
}

#[tokio::test]
async fn two_organisations_never_see_or_change_each_others_referrals() {
    let p = Platform::start().await;
    let (leeds, york, service) =
        (member_of("leeds-1", "RR8", &[TRIAGE]), member_of("york-1", "RCB", &[TRIAGE]), service_caller("pac-scheduling"));
    let mut client = p.client();
    let knee = p.open_service_of("KNEE", pb::LaterDnaPolicy::Rebook, "RR8").await;
    let hip = p.open_service_of("HIP", pb::LaterDnaPolicy::Rebook, "RCB").await;
    assert_eq!((knee.organisation.as_str(), hip.organisation.as_str()), ("RR8", "RCB"));
    // Each organisation's own patient (a patient belongs to the organisation that registered it).
    let patient = p.patient_of((1970, 3, 14), 2, "LS6 2AA", "RR8").await;
    let their_patient = p.patient_of((1968, 5, 1), 1, "YO1 7HH", "RCB").await;

    // Another organisation's patient is not found: not for eligibility, not for a referral.
    let check = pb::CheckEligibilityRequest { patient_id: their_patient.clone(), service_code: "KNEE".into(), ..Default::default() };
    let status = client.check_eligibility(p.signed_as(check.clone(), &leeds)).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "PATIENT_NOT_FOUND");
    let checked = client.check_eligibility(p.signed_as(check, &york)).await.unwrap();
    assert_eq!(audited(&checked), [their_patient.clone()]);
    let status = client.create_referral(p.signed_as(p.new_referral(&their_patient, "KNEE"), &leeds)).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "PATIENT_NOT_FOUND");

    let ours = client.create_referral(p.signed_as(p.new_referral(&patient, "KNEE"), &leeds)).await.unwrap();
    assert_eq!(audited(&ours), [patient.clone()]);
    let ours = ours.into_inner().referral.unwrap();
    assert_eq!(ours.organisation, "RR8");
    let theirs =
        client.create_referral(p.signed_as(p.new_referral(&their_patient, "HIP"), &york)).await.unwrap().into_inner().referral.unwrap();
    assert_eq!(theirs.organisation, "RCB");

    // Referring into another organisation's service is refused.
    let status = client.create_referral(p.signed_as(p.new_referral(&patient, "HIP"), &leeds)).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "OTHER_ORGANISATION");

    // Another organisation's referral is not found, whatever the call.
    let not_found = |status: tonic::Status| assert_error(&status, Code::NotFound, "NOT_FOUND");
    not_found(client.get_referral(p.signed_as(pb::GetReferralRequest { id: theirs.id.clone() }, &leeds)).await.unwrap_err());
    let actions = pb::GetAllowedActionsRequest { referral_id: theirs.id.clone() };
    not_found(client.get_allowed_actions(p.signed_as(actions, &leeds)).await.unwrap_err());
    let accept = pb::TriageReferralRequest {
        referral_id: theirs.id.clone(),
        etag: theirs.etag.clone(),
        decision: Some(Decision::Accept(pb::Accept {})),
        request_id: String::new(),
    };
    not_found(client.triage_referral(p.signed_as(accept.clone(), &leeds)).await.unwrap_err());
    let redirect = pb::TriageReferralRequest {
        decision: Some(Decision::Redirect(pb::Redirect { service_code: "KNEE".into(), comment: String::new() })),
        ..accept.clone()
    };
    not_found(client.triage_referral(p.signed_as(redirect, &leeds)).await.unwrap_err());
    let cancel = pb::CancelReferralRequest {
        referral_id: theirs.id.clone(),
        etag: theirs.etag.clone(),
        reason: "duplicate".into(),
        request_id: String::new(),
    };
    not_found(client.cancel_referral(p.signed_as(cancel, &leeds)).await.unwrap_err());
    let clock = pb::RecordClockEventRequest {
        referral_id: theirs.id.clone(),
        etag: theirs.etag.clone(),
        kind: pb::ClockEventKind::FirstTreatment as i32,
        ..Default::default()
    };
    not_found(client.record_clock_event(p.signed_as(clock, &leeds)).await.unwrap_err());
    let task = pb::Note {
        task: true,
        text: "Call the patient".into(),
        due_date: Some(date(chrono::Utc::now().date_naive())),
        ..Default::default()
    };
    let note =
        |referral_id: &str| pb::AddNoteRequest { referral_id: referral_id.into(), note: Some(task.clone()), request_id: String::new() };
    not_found(client.add_note(p.signed_as(note(&theirs.id), &leeds)).await.unwrap_err());
    let added = client.add_note(p.signed_as(note(&theirs.id), &york)).await.unwrap();
    assert_eq!(audited(&added), [their_patient.clone()]);
    let york_task = added.into_inner().note.unwrap();
    let complete = pb::CompleteTaskRequest { referral_id: theirs.id.clone(), task_id: york_task.id.clone() };
    not_found(client.complete_task(p.signed_as(complete.clone(), &leeds)).await.unwrap_err());
    client.complete_task(p.signed_as(complete, &york)).await.unwrap();
    let unchanged = client.get_referral(p.signed_as(pb::GetReferralRequest { id: theirs.id.clone() }, &york)).await.unwrap();
    assert_eq!(audited(&unchanged), [their_patient.clone()]);
    assert_eq!(unchanged.into_inner().referral.unwrap().status, pb::ReferralStatus::AwaitingTriage as i32, "nothing changed");

    // Worklists hold only the caller's own, by status, by patient and by service.
    assert_eq!(listed(&p, worklist(), &leeds).await, [ours.id.clone()]);
    assert_eq!(listed(&p, worklist(), &york).await, [theirs.id.clone()]);
    let by_patient = |patient_id: &str| pb::ListReferralsRequest { patient_id: patient_id.into(), ..Default::default() };
    assert_eq!(listed(&p, by_patient(&patient), &leeds).await, [ours.id.clone()]);
    assert!(listed(&p, by_patient(&their_patient), &leeds).await.is_empty());
    let by_service = pb::ListReferralsRequest { service_code: "HIP".into(), ..Default::default() };
    assert!(listed(&p, by_service, &leeds).await.is_empty());
    let nobody = pac_platform::Caller { organisations: Vec::new(), ..member_of("nobody-1", "", &[]) };
    assert!(listed(&p, worklist(), &nobody).await.is_empty());

    // A redirect to York's service hands Leeds' referral (and so Leeds' patient) over: the new
    // referral is York's.
    let redirect = pb::TriageReferralRequest {
        referral_id: ours.id.clone(),
        etag: ours.etag.clone(),
        decision: Some(Decision::Redirect(pb::Redirect { service_code: "HIP".into(), comment: "hip, not knee".into() })),
        request_id: String::new(),
    };
    let triaged = client.triage_referral(p.signed_as(redirect, &leeds)).await.unwrap().into_inner();
    let moved = triaged.redirected_referral.unwrap();
    assert_eq!((moved.organisation.as_str(), moved.service_code.as_str()), ("RCB", "HIP"));
    assert_eq!(triaged.referral.unwrap().redirected_to, moved.id);
    not_found(client.get_referral(p.signed_as(pb::GetReferralRequest { id: moved.id.clone() }, &leeds)).await.unwrap_err());
    let york_accepts = pb::TriageReferralRequest { referral_id: moved.id.clone(), etag: moved.etag.clone(), ..accept };
    let accepted = client.triage_referral(p.signed_as(york_accepts, &york)).await.unwrap().into_inner().referral.unwrap();
    assert_eq!(accepted.status, pb::ReferralStatus::AwaitingBooking as i32);

    // The platform's own services are unscoped: they see both organisations'.
    let mut everything = listed(&p, by_patient(&patient), &service).await;
    everything.extend(listed(&p, by_patient(&their_patient), &service).await);
    everything.sort();
    let mut expected = vec![ours.id.clone(), theirs.id.clone(), moved.id.clone()];
    expected.sort();
    assert_eq!(everything, expected);
    for id in [&ours.id, &theirs.id] {
        client.get_referral(p.signed_as(pb::GetReferralRequest { id: id.clone() }, &service)).await.unwrap();
    }
}
