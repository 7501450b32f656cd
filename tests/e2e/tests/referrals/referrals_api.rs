//! The referrals API over gRPC against a real Postgres: the directory and eligibility, referrals and
//! triage with their errors, the RTT clock, notes and tasks, worklists and the event stream.

use chrono::{Duration, Utc};
use futures::StreamExt;
use pac_e2e::referrals::{Platform, assert_violation, timestamp};
use pac_platform::convert::date;
use pac_platform::testkit::{assert_error, audited};
use pac_proto::referrals as pb;
use pac_proto::referrals::triage_referral_request::Decision;
use tonic::Code;

async fn count(p: &Platform, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM referrals.{table}"))).fetch_one(&p.admin().await).await.unwrap()
}

fn breast_clinic() -> pb::Service {
    pb::Service {
        code: "BREAST-2WW".into(),
        name: "Breast clinic".into(),
        specialty: "Breast surgery".into(),
        rules: Some(pb::EligibilityRules {
            min_age: Some(16),
            max_age: Some(80),
            sexes: vec![pb::Sex::Female as i32, pb::Sex::Male as i32],
            sources: vec!["GP".into(), "SCREENING".into()],
            catchment_districts: vec!["LS6".into(), "ls1".into()],
            required_information: vec!["Examination findings".into()],
        }),
        accepted_priorities: vec![pb::Priority::TwoWeekWait as i32, pb::Priority::Urgent as i32],
        target_wait_days: 14,
        ..Default::default()
    }
}

fn fitting(patient_id: &str) -> pb::CreateReferralRequest {
    pb::CreateReferralRequest {
        patient_id: patient_id.into(),
        service_code: "BREAST-2WW".into(),
        priority: pb::Priority::TwoWeekWait as i32,
        referrer: Some(pb::Referrer { organisation: "B86001".into(), clinician: "Dr A Jones".into() }),
        source: "gp".into(),
        reason: "Breast lump, 3 weeks".into(),
        information: vec!["examination findings".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn each_eligibility_rule_rejects_and_accepts_and_says_why() {
    let p = Platform::start().await;
    let service = p.service(breast_clinic()).await;
    assert_eq!(service.rules.as_ref().unwrap().catchment_districts, ["LS6", "LS1"], "districts are normalised");
    let adult = p.adult().await;
    let check = |patient: String, source: &str, priority: pb::Priority, information: Vec<String>| {
        let mut client = p.client();
        let request = pb::CheckEligibilityRequest {
            patient_id: patient,
            service_code: "BREAST-2WW".into(),
            source: source.into(),
            priority: priority as i32,
            information,
        };
        async move { client.check_eligibility(request).await.unwrap().into_inner() }
    };
    let codes = |r: pb::CheckEligibilityResponse| r.reasons.into_iter().map(|r| r.code).collect::<Vec<_>>();

    let yes = check(adult.clone(), "GP", pb::Priority::TwoWeekWait, vec!["Examination findings".into()]).await;
    assert!(yes.eligible && yes.reasons.is_empty(), "{yes:?}");
    // Facts not given are not checked.
    assert!(check(adult.clone(), "", pb::Priority::Unspecified, vec![]).await.eligible);

    let child = p.patient((2015, 6, 1), 2, "LS6 2AA").await;
    let no = check(child, "GP", pb::Priority::TwoWeekWait, vec![]).await;
    assert!(!no.eligible);
    assert_eq!(codes(no.clone()), ["AGE_BELOW_MINIMUM"]);
    assert!(no.reasons[0].message.contains("aged 16 and over"), "{:?}", no.reasons);
    assert_eq!(
        codes(check(p.patient((1930, 1, 1), 2, "LS6 2AA").await, "", pb::Priority::Unspecified, vec![]).await),
        ["AGE_ABOVE_MAXIMUM"]
    );
    assert_eq!(
        codes(check(p.patient((1970, 1, 1), 3, "LS6 2AA").await, "", pb::Priority::Unspecified, vec![]).await),
        ["SEX_NOT_ACCEPTED"]
    );
    assert_eq!(codes(check(adult.clone(), "OPTOMETRIST", pb::Priority::Unspecified, vec![]).await), ["SOURCE_NOT_ACCEPTED"]);
    assert_eq!(codes(check(adult.clone(), "", pb::Priority::Routine, vec![]).await), ["PRIORITY_NOT_ACCEPTED"]);
    assert_eq!(
        codes(check(p.patient((1970, 1, 1), 2, "M1 1AE").await, "", pb::Priority::Unspecified, vec![]).await),
        ["OUTSIDE_CATCHMENT"]
    );
    assert_eq!(codes(check(p.patient((1970, 1, 1), 2, "").await, "", pb::Priority::Unspecified, vec![]).await), ["ADDRESS_UNKNOWN"]);
    assert_eq!(codes(check(adult.clone(), "", pb::Priority::Unspecified, vec!["Mammogram".into()]).await), ["INFORMATION_MISSING"]);

    // CreateReferral refuses with every reason, and writes nothing.
    let wrong = pb::CreateReferralRequest { source: "OPTOMETRIST".into(), priority: pb::Priority::Routine as i32, ..fitting(&adult) };
    let error = p.create(wrong).await.unwrap_err();
    assert_error(&error, Code::FailedPrecondition, "NOT_ELIGIBLE");
    let details = tonic_types::StatusExt::get_error_details(&error);
    let kinds: Vec<String> = details.precondition_failure().unwrap().violations.iter().map(|v| v.r#type.clone()).collect();
    assert_eq!(kinds, ["SOURCE_NOT_ACCEPTED", "PRIORITY_NOT_ACCEPTED"]);
    assert_eq!(count(&p, "referrals").await, 0);
    let created = p.create(fitting(&adult)).await.unwrap();
    assert_eq!(created.status, pb::ReferralStatus::AwaitingTriage as i32);
    assert_eq!(created.source, "GP");
}

#[tokio::test]
async fn bad_requests_are_refused_with_their_field_and_change_nothing() {
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    let patient = p.adult().await;

    let bad_service = pb::Service {
        code: "no spaces".into(),
        target_wait_days: 0,
        rules: Some(pb::EligibilityRules {
            min_age: Some(60),
            max_age: Some(18),
            catchment_districts: vec!["LEEDS".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let error =
        p.client().create_service(pb::CreateServiceRequest { service: Some(bad_service), request_id: String::new() }).await.unwrap_err();
    for (field, reason) in [
        ("service.code", "SERVICE_CODE_INVALID"),
        ("service.name", "FIELD_REQUIRED"),
        ("service.rules.min_age", "AGE_RANGE_INVALID"),
        ("service.rules.catchment_districts[0]", "DISTRICT_INVALID"),
        ("service.target_wait_days", "TARGET_WAIT_INVALID"),
    ] {
        assert_violation(&error, field, reason);
    }
    let again = p
        .client()
        .create_service(pb::CreateServiceRequest {
            service: Some(pb::Service { code: "KNEE".into(), name: "Knee".into(), target_wait_days: 10, ..Default::default() }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_error(&again, Code::AlreadyExists, "SERVICE_EXISTS");

    let bad = pb::CreateReferralRequest {
        patient_id: "not-an-id".into(),
        priority: 9,
        referrer: None,
        source: String::new(),
        reason: String::new(),
        receive_time: Some(timestamp(Utc::now() + Duration::days(2))),
        ..p.new_referral(&patient, "KNEE")
    };
    let error = p.create(bad).await.unwrap_err();
    for (field, reason) in [
        ("patient_id", "ID_INVALID"),
        ("priority", "PRIORITY_INVALID"),
        ("referrer.organisation", "FIELD_REQUIRED"),
        ("source", "FIELD_REQUIRED"),
        ("reason", "FIELD_REQUIRED"),
        ("receive_time", "RECEIVE_TIME_IN_FUTURE"),
    ] {
        assert_violation(&error, field, reason);
    }
    let unknown_patient = p.create(p.new_referral(&uuid::Uuid::now_v7().to_string(), "KNEE")).await.unwrap_err();
    assert_error(&unknown_patient, Code::FailedPrecondition, "PATIENT_NOT_FOUND");
    let unknown_service = p.create(p.new_referral(&patient, "NOPE")).await.unwrap_err();
    assert_error(&unknown_service, Code::FailedPrecondition, "SERVICE_NOT_FOUND");
    assert_eq!(count(&p, "referrals").await, 0);

    let referral = p.refer(&patient, "KNEE").await;
    // A rejection needs a coded reason.
    let error = p.triage(&referral, Decision::Reject(pb::Reject { reason_code: String::new(), comment: "no".into() })).await.unwrap_err();
    assert_violation(&error, "reject.reason_code", "REASON_REQUIRED");
    let error = p.triage(&referral, Decision::ReturnToReferrer(pb::ReturnToReferrer { advice: " ".into() })).await.unwrap_err();
    assert_violation(&error, "return_to_referrer.advice", "FIELD_REQUIRED");
    let error = p
        .client()
        .triage_referral(pb::TriageReferralRequest { referral_id: referral.id.clone(), etag: referral.etag.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_violation(&error, "decision", "DECISION_REQUIRED");
    let error = p
        .client()
        .list_referrals(pb::ListReferralsRequest { page_size: 1000, statuses: vec![42], ..Default::default() })
        .await
        .unwrap_err();
    assert_violation(&error, "page_size", "PAGE_SIZE_INVALID");
    assert_violation(&error, "statuses[0]", "STATUS_INVALID");
    let error = p.client().get_referral(pb::GetReferralRequest { id: uuid::Uuid::now_v7().to_string() }).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(p.get(&referral.id).await.etag, referral.etag, "nothing changed");
}

#[tokio::test]
async fn triage_moves_are_enforced_with_etags() {
    let p = Platform::start().await;
    // Provided by the organisation of the signed callers below (RR8), so its referrals are theirs.
    p.open_service_of("KNEE", pb::LaterDnaPolicy::Rebook, "RR8").await;
    let patient = p.adult().await;
    let referral = p.refer(&patient, "KNEE").await;

    let asked = p.triage(&referral, Decision::RequestInformation(pb::RequestInformation { question: "Any X-ray?".into() })).await.unwrap();
    assert_eq!((asked.status, asked.triage_text.as_str()), (pb::ReferralStatus::AwaitingInformation as i32, "Any X-ray?"));
    // The stale etag is refused.
    let stale = p.triage(&referral, Decision::Accept(pb::Accept {})).await.unwrap_err();
    assert_error(&stale, Code::Aborted, "VERSION_MISMATCH");
    // Accepting while awaiting information is not a move.
    let illegal = p.triage(&asked, Decision::Accept(pb::Accept {})).await.unwrap_err();
    assert_error(&illegal, Code::FailedPrecondition, "INVALID_TRANSITION");
    let back = p
        .triage(&asked, Decision::InformationReceived(pb::InformationReceived { information: vec!["X-ray report".into()] }))
        .await
        .unwrap();
    assert_eq!(back.status, pb::ReferralStatus::AwaitingTriage as i32);
    assert_eq!(back.information, ["X-ray report"]);
    let accepted = p.accept(&back).await;
    assert_eq!(accepted.status, pb::ReferralStatus::AwaitingBooking as i32);

    // Every illegal move from a terminal state.
    let rejected_referral = p.refer(&patient, "KNEE").await;
    let rejected = p
        .triage(&rejected_referral, Decision::Reject(pb::Reject { reason_code: "not_clinically_indicated".into(), comment: String::new() }))
        .await
        .unwrap();
    assert_eq!((rejected.status, rejected.triage_code.as_str()), (pb::ReferralStatus::Rejected as i32, "NOT_CLINICALLY_INDICATED"));
    assert_eq!(rejected.clock.as_ref().unwrap().status_code, 34, "rejection returns the patient to primary care");
    for decision in [
        Decision::Accept(pb::Accept {}),
        Decision::Reject(pb::Reject { reason_code: "X_Y".into(), comment: String::new() }),
        Decision::ReturnToReferrer(pb::ReturnToReferrer { advice: "a".into() }),
        Decision::RequestInformation(pb::RequestInformation { question: "q".into() }),
        Decision::InformationReceived(pb::InformationReceived { information: vec!["i".into()] }),
    ] {
        let error = p.triage(&rejected, decision).await.unwrap_err();
        assert_error(&error, Code::FailedPrecondition, "INVALID_TRANSITION");
    }
    let cancel = pb::CancelReferralRequest {
        referral_id: rejected.id.clone(),
        etag: rejected.etag.clone(),
        reason: "duplicate".into(),
        request_id: String::new(),
    };
    assert_error(&p.client().cancel_referral(cancel).await.unwrap_err(), Code::FailedPrecondition, "INVALID_TRANSITION");
    let actions =
        p.client().get_allowed_actions(pb::GetAllowedActionsRequest { referral_id: rejected.id.clone() }).await.unwrap().into_inner();
    assert!(actions.actions.is_empty());

    // Allowed actions depend on the caller's permission.
    let fresh = p.refer(&patient, "KNEE").await;
    let as_clerk =
        p.client().get_allowed_actions(p.signed(pb::GetAllowedActionsRequest { referral_id: fresh.id.clone() }, &[])).await.unwrap();
    // The audit trail hears whose referral it was.
    assert_eq!(audited(&as_clerk), [patient.clone()]);
    let as_clerk = as_clerk.into_inner();
    assert_eq!(as_clerk.actions, [pb::ReferralAction::Cancel as i32, pb::ReferralAction::RecordClockEvent as i32]);
    let as_triager = p
        .client()
        .get_allowed_actions(p.signed(pb::GetAllowedActionsRequest { referral_id: fresh.id.clone() }, &["referral.triage"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(as_triager.actions.len(), 7);
    assert_eq!(as_triager.etag, fresh.etag);
    let request = pb::TriageReferralRequest {
        referral_id: fresh.id.clone(),
        etag: fresh.etag.clone(),
        decision: Some(Decision::Accept(pb::Accept {})),
        request_id: String::new(),
    };
    let denied = p.client().triage_referral(p.signed(request, &[])).await.unwrap_err();
    assert_error(&denied, Code::PermissionDenied, "TRIAGE_NOT_PERMITTED");
}

#[tokio::test]
async fn a_redirect_checks_the_new_service_and_keeps_the_clock() {
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    p.service(pb::Service {
        code: "PAEDS".into(),
        name: "Children".into(),
        target_wait_days: 30,
        rules: Some(pb::EligibilityRules { max_age: Some(15), ..Default::default() }),
        ..Default::default()
    })
    .await;
    p.open_service("HIP", pb::LaterDnaPolicy::Rebook).await;
    let patient = p.adult().await;
    let received = Utc::now() - Duration::days(20);
    let referral =
        p.create(pb::CreateReferralRequest { receive_time: Some(timestamp(received)), ..p.new_referral(&patient, "KNEE") }).await.unwrap();

    let refused =
        p.triage(&referral, Decision::Redirect(pb::Redirect { service_code: "PAEDS".into(), comment: String::new() })).await.unwrap_err();
    assert_error(&refused, Code::FailedPrecondition, "NOT_ELIGIBLE");
    let same =
        p.triage(&referral, Decision::Redirect(pb::Redirect { service_code: "KNEE".into(), comment: String::new() })).await.unwrap_err();
    assert_violation(&same, "redirect.service_code", "SAME_SERVICE");

    let request = pb::TriageReferralRequest {
        referral_id: referral.id.clone(),
        etag: referral.etag.clone(),
        decision: Some(Decision::Redirect(pb::Redirect { service_code: "HIP".into(), comment: "hip, not knee".into() })),
        request_id: "redirect-1".into(),
    };
    let response = p.client().triage_referral(request.clone()).await.unwrap().into_inner();
    let (old, new) = (response.referral.unwrap(), response.redirected_referral.unwrap());
    assert_eq!((old.status, old.redirected_to.as_str()), (pb::ReferralStatus::Redirected as i32, new.id.as_str()));
    assert_eq!(
        (new.status, new.service_code.as_str(), new.redirected_from.as_str()),
        (pb::ReferralStatus::AwaitingTriage as i32, "HIP", old.id.as_str())
    );
    let (old_clock, new_clock) = (old.clock.unwrap(), new.clock.unwrap());
    assert_eq!(new_clock.start_date, referral.clock.as_ref().unwrap().start_date, "the wait continues");
    assert_eq!((new_clock.state, new_clock.status_code), (pb::ClockState::Running as i32, 21));
    assert_eq!(old_clock.state, pb::ClockState::Stopped as i32);
    assert_eq!(new_clock.weeks_waited, Some(2));
    // A retry answers the same.
    let again = p.client().triage_referral(request).await.unwrap().into_inner();
    assert_eq!(again.redirected_referral.unwrap().id, new.id);
    assert_eq!(count(&p, "referrals").await, 2);
}

#[tokio::test]
async fn the_rtt_clock_breaches_on_day_126_and_stop_events_stop_it() {
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    let patient = p.adult().await;
    let received = Utc::now() - Duration::days(10);
    let receipt_day = pac_referrals::referrals::local_date(received);
    let referral =
        p.create(pb::CreateReferralRequest { receive_time: Some(timestamp(received)), ..p.new_referral(&patient, "KNEE") }).await.unwrap();
    let clock = referral.clock.unwrap();
    assert_eq!(clock.start_date, Some(date(receipt_day)));
    assert_eq!(clock.breach_date, Some(date(receipt_day + Duration::days(126))));
    assert_eq!((clock.weeks_waited, clock.days_to_breach, clock.status_code), (Some(1), Some(116), 10));

    let record = |referral: &pb::Referral, kind: pb::ClockEventKind, on: Option<chrono::NaiveDate>| pb::RecordClockEventRequest {
        referral_id: referral.id.clone(),
        etag: referral.etag.clone(),
        kind: kind as i32,
        date: on.map(date),
        request_id: String::new(),
    };
    let before = p
        .client()
        .record_clock_event(record(&referral, pb::ClockEventKind::Activity, Some(receipt_day - Duration::days(1))))
        .await
        .unwrap_err();
    assert_error(&before, Code::FailedPrecondition, "CLOCK_EVENT_BEFORE_START");
    let future = p
        .client()
        .record_clock_event(record(&referral, pb::ClockEventKind::Activity, Some(Utc::now().date_naive() + Duration::days(3))))
        .await
        .unwrap_err();
    assert_violation(&future, "date", "DATE_IN_FUTURE");
    let restart = p.client().record_clock_event(record(&referral, pb::ClockEventKind::RestartNewCondition, None)).await.unwrap_err();
    assert_error(&restart, Code::FailedPrecondition, "CLOCK_EVENT_NOT_APPLICABLE");

    let accepted = p.accept(&referral).await;
    let treated_on = receipt_day + Duration::days(7);
    let treated = p
        .client()
        .record_clock_event(record(&accepted, pb::ClockEventKind::FirstTreatment, Some(treated_on)))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    let clock = treated.clock.unwrap();
    assert_eq!((clock.state, clock.status_code, clock.end_date), (pb::ClockState::Stopped as i32, 30, Some(date(treated_on))));
    assert_eq!((clock.breach_date, clock.weeks_waited), (None, Some(1)));
    assert_eq!(treated.status, pb::ReferralStatus::Completed as i32, "first treatment completes the pathway");
    let after = p.client().record_clock_event(record(&treated, pb::ClockEventKind::Activity, None)).await.unwrap_err();
    assert_error(&after, Code::FailedPrecondition, "INVALID_TRANSITION");

    // Active monitoring stops the clock but keeps the referral open for a new clock.
    let other = p.refer(&patient, "KNEE").await;
    let monitored = p
        .client()
        .record_clock_event(record(&other, pb::ClockEventKind::ActiveMonitoringClinician, None))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    assert_eq!((monitored.status, monitored.clock.as_ref().unwrap().status_code), (pb::ReferralStatus::AwaitingTriage as i32, 32));
    let restarted = p
        .client()
        .record_clock_event(record(&monitored, pb::ClockEventKind::RestartAfterActiveMonitoring, None))
        .await
        .unwrap()
        .into_inner()
        .referral
        .unwrap();
    let clock = restarted.clock.unwrap();
    assert_eq!((clock.state, clock.status_code), (pb::ClockState::Running as i32, 11));
    assert_eq!(clock.breach_date, Some(date(pac_referrals::referrals::today() + Duration::days(126))));
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM referrals.clock_events WHERE referral_id = $1::uuid")
        .bind(&other.id)
        .fetch_one(&p.admin().await)
        .await
        .unwrap();
    assert_eq!(history, 3, "received, stopped, restarted");
}

#[tokio::test]
async fn worklists_sort_by_breach_date_filter_page_and_flag_stuck_referrals() {
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    p.open_service("SKIN", pb::LaterDnaPolicy::Rebook).await;
    let patient = p.adult().await;
    let mut made = Vec::new();
    for (days_ago, service, priority) in [
        (3, "KNEE", pb::Priority::Routine),
        (30, "KNEE", pb::Priority::TwoWeekWait),
        (10, "SKIN", pb::Priority::TwoWeekWait),
        (120, "KNEE", pb::Priority::Urgent),
        (0, "KNEE", pb::Priority::TwoWeekWait),
    ] {
        let request = pb::CreateReferralRequest {
            priority: priority as i32,
            receive_time: Some(timestamp(Utc::now() - Duration::days(days_ago))),
            ..p.new_referral(&patient, service)
        };
        made.push((days_ago, p.create(request).await.unwrap()));
    }
    let list = |request: pb::ListReferralsRequest| {
        let mut client = p.client();
        async move { client.list_referrals(request).await.unwrap().into_inner() }
    };
    let ages = |response: &pb::ListReferralsResponse| {
        response.referrals.iter().map(|r| made.iter().find(|(_, m)| m.id == r.id).unwrap().0).collect::<Vec<_>>()
    };
    let all = list(pb::ListReferralsRequest::default()).await;
    assert_eq!(ages(&all), [120, 30, 10, 3, 0], "soonest breach first");
    // Stuck: two-week waits awaiting triage for more than 2 working days.
    let stuck: Vec<i64> = all.referrals.iter().filter(|r| r.stuck).map(|r| made.iter().find(|(_, m)| m.id == r.id).unwrap().0).collect();
    assert_eq!(stuck, [30, 10]);
    assert_eq!(ages(&list(pb::ListReferralsRequest { stuck: true, ..Default::default() }).await), [30, 10]);
    assert_eq!(ages(&list(pb::ListReferralsRequest { service_code: "knee".into(), ..Default::default() }).await), [120, 30, 3, 0]);
    let urgent_and_2ww = list(pb::ListReferralsRequest {
        priorities: vec![pb::Priority::TwoWeekWait as i32, pb::Priority::Urgent as i32],
        service_code: "KNEE".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(ages(&urgent_and_2ww), [120, 30, 0]);
    assert_eq!(ages(&list(pb::ListReferralsRequest { breaching_within_days: Some(14), ..Default::default() }).await), [120]);
    assert_eq!(
        ages(&list(pb::ListReferralsRequest { statuses: vec![pb::ReferralStatus::AwaitingBooking as i32], ..Default::default() }).await),
        Vec::<i64>::new()
    );
    assert_eq!(ages(&list(pb::ListReferralsRequest { patient_id: patient.clone(), ..Default::default() }).await), [120, 30, 10, 3, 0]);

    // Paging walks the same order; a token does not fit other filters.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(pb::ListReferralsRequest { page_size: 2, page_token: token.clone(), ..Default::default() }).await;
        seen.extend(ages(&page));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, [120, 30, 10, 3, 0]);
    let first = list(pb::ListReferralsRequest { page_size: 2, ..Default::default() }).await;
    let misuse = p
        .client()
        .list_referrals(pb::ListReferralsRequest {
            page_size: 2,
            page_token: first.next_page_token,
            service_code: "KNEE".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_violation(&misuse, "page_token", "PAGE_TOKEN_INVALID");

    // Tasks: an unassigned one puts the referral on the unassigned-tasks worklist until done.
    let target = &made[2].1;
    let task = |team: &str| pb::AddNoteRequest {
        referral_id: target.id.clone(),
        note: Some(pb::Note {
            task: true,
            text: "Call the patient about the photo".into(),
            team: team.into(),
            due_date: Some(date(Utc::now().date_naive())),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    p.client().add_note(task("Dermatology admin")).await.unwrap();
    assert!(list(pb::ListReferralsRequest { unassigned_tasks: true, ..Default::default() }).await.referrals.is_empty());
    let unassigned = p.client().add_note(task("")).await.unwrap().into_inner().note.unwrap();
    assert_eq!(ages(&list(pb::ListReferralsRequest { unassigned_tasks: true, ..Default::default() }).await), [10]);
    let note = pb::AddNoteRequest { note: Some(pb::Note { text: "Spoke to GP".into(), ..Default::default() }), ..task("") };
    p.client().add_note(note).await.unwrap();
    let bad_note = pb::AddNoteRequest { note: Some(pb::Note { task: true, text: "x".into(), ..Default::default() }), ..task("") };
    assert_violation(&p.client().add_note(bad_note).await.unwrap_err(), "note.due_date", "FIELD_REQUIRED");
    let done = p
        .client()
        .complete_task(pb::CompleteTaskRequest { referral_id: target.id.clone(), task_id: unassigned.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert!(done.complete_time.is_some());
    assert!(list(pb::ListReferralsRequest { unassigned_tasks: true, ..Default::default() }).await.referrals.is_empty());
    let got = p.client().get_referral(pb::GetReferralRequest { id: target.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.notes.len(), 3);
    assert_eq!(got.referral.unwrap().open_tasks, 1);
}

#[tokio::test]
async fn create_is_idempotent_and_events_resume_after_a_cursor() {
    let p = Platform::start().await;
    p.open_service("KNEE", pb::LaterDnaPolicy::Rebook).await;
    let patient = p.adult().await;
    let request = pb::CreateReferralRequest { request_id: "ref-42".into(), ..p.new_referral(&patient, "KNEE") };
    let first = p.create(request.clone()).await.unwrap();
    let again = p.create(request.clone()).await.unwrap();
    assert_eq!(first.id, again.id);
    let reused = p.create(pb::CreateReferralRequest { reason: "something else".into(), ..request }).await.unwrap_err();
    assert_error(&reused, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    assert_eq!(count(&p, "referrals").await, 1);

    let accepted = p.accept(&first).await;
    let mut stream = p.client().watch_events(pb::WatchEventsRequest { after_cursor: String::new() }).await.unwrap().into_inner();
    let received = stream.next().await.unwrap().unwrap();
    assert!(matches!(received.event, Some(pb::watch_events_response::Event::ReferralReceived(_))));
    let cursor = received.envelope.unwrap().cursor;
    let mut resumed = p.client().watch_events(pb::WatchEventsRequest { after_cursor: cursor }).await.unwrap().into_inner();
    let triaged = resumed.next().await.unwrap().unwrap();
    let Some(pb::watch_events_response::Event::ReferralTriaged(event)) = triaged.event else { panic!("{triaged:?}") };
    assert_eq!(event.referral.unwrap().etag, accepted.etag);
}

#[tokio::test]
async fn the_referrals_role_cannot_touch_another_schema() {
    let p = Platform::start().await;
    let config = pac_referrals::ReferralsConfig::development("127.0.0.1:0".parse().unwrap(), String::new(), String::new());
    let pool = pac_referrals::connect(&p.platform, &config).await.unwrap();
    for sql in [
        "SELECT count(*) FROM records.patients",
        "SELECT count(*) FROM scheduling.appointments",
        "UPDATE scheduling.appointments SET status = 'cancelled'",
        "CREATE TABLE records.intruder (id int)",
    ] {
        let error = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        let code = error.as_database_error().and_then(|e| e.code()).unwrap_or_default();
        assert_eq!(code, "42501", "{sql}: {error:?}");
    }
    sqlx::query("SELECT count(*) FROM referrals.referrals").execute(&pool).await.unwrap();
}
