//! Every PatientRecords RPC over real gRPC on loopback against a real Postgres: the working paths
//! and each error path (right code, reason and field; nothing written).

use crate::common::*;
use pac_platform::caller::PERMISSION_RESTRICTED_READ;
use pac_platform::testkit::audited;
use pac_proto::records as pb;
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn register_get_and_lookup() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let mut input = patient(1);
    input.nhs_number = "943 476 5919".into();
    input.local_identifiers = vec![pb::LocalIdentifier { issuer: "rr8".into(), value: "MRN0001".into() }];
    let response = client.register_patient(register(input, "req-1")).await.unwrap();
    let registered = response.get_ref().patient.clone().unwrap();
    // The audit trail hears which patient each call touched.
    assert_eq!(audited(&response), [registered.id.clone()]);
    assert_eq!(registered.nhs_number, "9434765919");
    assert_eq!(registered.nhs_number_status, pb::NhsNumberStatus::NotTraced as i32);
    assert_eq!(registered.etag, "1");
    assert_eq!(registered.phone, "+447700900001");
    assert_eq!(registered.local_identifiers[0].issuer, "RR8");
    assert!(uuid::Uuid::parse_str(&registered.id).unwrap().get_version_num() == 7);

    let got = client.get_patient(pb::GetPatientRequest { id: registered.id.clone() }).await.unwrap();
    assert_eq!(audited(&got), [registered.id.clone()]);
    let got = got.into_inner();
    assert_eq!(got.patient.unwrap(), registered);
    assert!(got.merged_from.is_empty());

    use pb::lookup_patient_request::Identifier;
    let by_nhs =
        client.lookup_patient(pb::LookupPatientRequest { identifier: Some(Identifier::NhsNumber("9434765919".into())) }).await.unwrap();
    assert_eq!(audited(&by_nhs), [registered.id.clone()]);
    assert_eq!(by_nhs.into_inner().patient.unwrap().id, registered.id);
    let by_mrn = client
        .lookup_patient(pb::LookupPatientRequest {
            identifier: Some(Identifier::LocalIdentifier(pb::LocalIdentifier { issuer: "RR8".into(), value: "MRN0001".into() })),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_mrn.patient.unwrap().id, registered.id);
    server.stop().await;
}

#[tokio::test]
async fn register_rejects_bad_input_and_writes_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client();
    type Change = Box<dyn Fn(&mut pb::Patient)>;
    let cases: Vec<(Change, &str, &str)> = vec![
        (Box::new(|p| p.nhs_number = "9434765918".into()), "NHS_NUMBER_INVALID", "patient.nhs_number"),
        (Box::new(|p| p.nhs_number = "4123456879".into()), "NHS_NUMBER_INVALID", "patient.nhs_number"),
        (Box::new(|p| p.nhs_number = "0000000000".into()), "NHS_NUMBER_PLACEHOLDER", "patient.nhs_number"),
        (Box::new(|p| p.nhs_number = "94347659".into()), "NHS_NUMBER_INVALID", "patient.nhs_number"),
        (Box::new(|p| p.given_name = "".into()), "NAME_INVALID", "patient.given_name"),
        (Box::new(|p| p.family_name = "Sm1th".into()), "NAME_INVALID", "patient.family_name"),
        (Box::new(|p| p.birth_date = None), "BIRTH_DATE_REQUIRED", "patient.birth_date"),
        (Box::new(|p| p.birth_date = date(2001, 2, 29)), "BIRTH_DATE_INVALID", "patient.birth_date"),
        (Box::new(|p| p.birth_date = date(2999, 1, 1)), "BIRTH_DATE_INVALID", "patient.birth_date"),
        (Box::new(|p| p.sex = 0), "SEX_REQUIRED", "patient.sex"),
        (Box::new(|p| p.sex = 42), "SEX_REQUIRED", "patient.sex"),
        (Box::new(|p| p.phone = "not a phone".into()), "PHONE_INVALID", "patient.phone"),
        (Box::new(|p| p.email = "nobody".into()), "EMAIL_INVALID", "patient.email"),
        (Box::new(|p| p.address.as_mut().unwrap().postcode = "XX".into()), "POSTCODE_INVALID", "patient.address.postcode"),
        (Box::new(|p| p.gp_practice_code = "??".into()), "ODS_CODE_INVALID", "patient.gp_practice_code"),
        (Box::new(|p| p.nhs_number_status = 9), "NHS_NUMBER_STATUS_INVALID", "patient.nhs_number_status"),
        (Box::new(|p| p.nhs_number_status = 1), "NHS_NUMBER_STATUS_INCONSISTENT", "patient.nhs_number_status"),
        (Box::new(|p| p.id = "0192f0a4-7c1e-7000-8000-000000000001".into()), "FIELD_OUTPUT_ONLY", "patient.id"),
        (Box::new(|p| p.etag = "7".into()), "FIELD_OUTPUT_ONLY", "patient.etag"),
        (Box::new(|p| p.merged_into = "x".into()), "FIELD_OUTPUT_ONLY", "patient.merged_into"),
        (
            Box::new(|p| p.local_identifiers = vec![pb::LocalIdentifier { issuer: "RR8".into(), value: "".into() }]),
            "IDENTIFIER_INVALID",
            "patient.local_identifiers[0].value",
        ),
    ];
    for (change, reason, field) in cases {
        let mut input = patient(2);
        change(&mut input);
        let status = client.register_patient(register(input, "")).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, reason, Some(field));
    }
    let status = client.register_patient(pb::RegisterPatientRequest { patient: None, ..Default::default() }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "PATIENT_REQUIRED", Some("patient"));
    let status = client.register_patient(register(patient(2), "has spaces")).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "REQUEST_ID_INVALID", Some("request_id"));
    assert_eq!(server.patient_count().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn test_range_numbers_are_refused_in_production() {
    let db = pac_platform::testkit::TestDatabase::create().await;
    let platform = db.platform_config();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = pac_records::RecordsConfig { accept_test_nhs_numbers: false, ..pac_records::RecordsConfig::development(addr) };
    pac_records::migrate(&platform, &config).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(pac_records::serve(platform, config, listener, shutdown.clone()));
    let mut client = pb::patient_records_client::PatientRecordsClient::connect(format!("http://{addr}")).await.unwrap();
    let mut input = patient(3);
    input.nhs_number = "9434765919".into();
    let status = client.register_patient(register(input.clone(), "")).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "NHS_NUMBER_TEST_RANGE", Some("patient.nhs_number"));
    input.nhs_number = "4010232137".into();
    client.register_patient(register(input, "")).await.unwrap();
    shutdown.cancel();
}

#[tokio::test]
async fn same_nhs_number_is_already_exists_naming_the_record() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let mut first = patient(4);
    first.nhs_number = "9000000009".into();
    let existing = client.register_patient(register(first, "")).await.unwrap().into_inner().patient.unwrap();
    let mut other = patient(40);
    other.nhs_number = "9000000009".into();
    let status = client.register_patient(register(other, "")).await.unwrap_err();
    assert_error(&status, Code::AlreadyExists, "NHS_NUMBER_EXISTS", None);
    assert_eq!(status.get_error_details().resource_info().unwrap().resource_name, existing.id);
    assert_eq!(server.patient_count().await, 1);
    server.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_registrations_of_one_nhs_number_create_one_record() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for n in 0..50 {
        let mut client = server.client();
        tasks.push(tokio::spawn(async move {
            let mut input = patient(5);
            input.nhs_number = "9449305552".into();
            client.register_patient(register(input, &format!("concurrent-{n}"))).await
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => created += 1,
            Err(status) => assert_error(&status, Code::AlreadyExists, "NHS_NUMBER_EXISTS", None),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(server.patient_count().await, 1);
    server.stop().await;
}

#[tokio::test]
async fn retry_with_same_request_id_replays_and_a_different_request_is_refused() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let first = client.register_patient(register(patient(6), "retry-key")).await.unwrap().into_inner();
    let again = client.register_patient(register(patient(6), "retry-key")).await.unwrap().into_inner();
    assert_eq!(first, again);
    // Concurrent retries of one request: all get the same patient.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut client = server.client();
        tasks.push(tokio::spawn(async move { client.register_patient(register(patient(7), "retry-burst")).await }));
    }
    let ids: std::collections::HashSet<String> =
        futures::future::join_all(tasks).await.into_iter().map(|r| r.unwrap().unwrap().into_inner().patient.unwrap().id).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(server.patient_count().await, 2);

    let status = client.register_patient(register(patient(8), "retry-key")).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "REQUEST_ID_REUSED", None);
    assert_eq!(server.patient_count().await, 2);
    server.stop().await;
}

#[tokio::test]
async fn likely_duplicates_need_an_override_which_is_recorded() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let original = client.register_patient(register(patient(9), "")).await.unwrap().into_inner().patient.unwrap();
    let mut retyped = patient(9);
    retyped.given_name = retyped.given_name.to_uppercase();
    retyped.phone = String::new();
    let status = client.register_patient(register(retyped.clone(), "")).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "POSSIBLE_DUPLICATE", None);
    let details = status.get_error_details();
    assert_eq!(details.precondition_failure().unwrap().violations[0].subject, original.id);
    assert_eq!(server.patient_count().await, 1);

    let mut request = register(retyped, "");
    request.allow_possible_duplicate = true;
    let response = client.register_patient(request).await.unwrap().into_inner();
    assert_eq!(response.overridden_candidates[0].patient.as_ref().unwrap().id, original.id);
    let recorded: serde_json::Value = sqlx::query_scalar("SELECT duplicate_override FROM records.patients WHERE id = $1::uuid")
        .bind(&response.patient.unwrap().id)
        .fetch_one(&server.admin().await)
        .await
        .unwrap();
    assert_eq!(recorded["candidates"][0]["id"], original.id);
    server.stop().await;
}

#[tokio::test]
async fn match_patients_scores_candidates() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let original = client.register_patient(register(patient(10), "")).await.unwrap().into_inner().patient.unwrap();
    client.register_patient(register(patient(11), "")).await.unwrap();
    let mut probe = patient(10);
    probe.family_name = probe.family_name.replace('o', "0").replace('0', "o");
    let candidates =
        client.match_patients(pb::MatchPatientsRequest { patient: Some(probe), max_candidates: 5 }).await.unwrap().into_inner().candidates;
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0].patient.as_ref().unwrap().id, original.id);
    assert_eq!(candidates[0].grade, pb::MatchGrade::Match as i32);
    assert!(candidates[0].matched_on.contains(&"birth_date".to_string()));

    let status = client.match_patients(pb::MatchPatientsRequest { patient: Some(patient(10)), max_candidates: 51 }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "MAX_CANDIDATES_INVALID", Some("max_candidates"));
    let status = client.match_patients(pb::MatchPatientsRequest { patient: None, max_candidates: 0 }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "NAME_INVALID", Some("patient.family_name"));
    server.stop().await;
}

#[tokio::test]
async fn get_and_lookup_errors() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let status = client.get_patient(pb::GetPatientRequest { id: "nope".into() }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "ID_INVALID", Some("id"));
    let status = client.get_patient(pb::GetPatientRequest { id: String::new() }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "ID_REQUIRED", Some("id"));
    let missing = uuid::Uuid::now_v7().to_string();
    let status = client.get_patient(pb::GetPatientRequest { id: missing.clone() }).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND", None);
    assert_eq!(status.get_error_details().resource_info().unwrap().resource_name, missing);

    use pb::lookup_patient_request::Identifier;
    let status = client.lookup_patient(pb::LookupPatientRequest { identifier: None }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "IDENTIFIER_REQUIRED", Some("identifier"));
    let status =
        client.lookup_patient(pb::LookupPatientRequest { identifier: Some(Identifier::NhsNumber("123".into())) }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "NHS_NUMBER_INVALID", Some("nhs_number"));
    let status =
        client.lookup_patient(pb::LookupPatientRequest { identifier: Some(Identifier::NhsNumber("9912003888".into())) }).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND", None);
    server.stop().await;
}

#[tokio::test]
async fn update_with_mask_and_etag() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let created = client.register_patient(register(patient(12), "")).await.unwrap().into_inner().patient.unwrap();
    let mask = |paths: &[&str]| Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() });

    let mut change = created.clone();
    change.family_name = "Brontë".into();
    change.given_name = "Ignored".into();
    let updated = client
        .update_patient(pb::UpdatePatientRequest { patient: Some(change.clone()), update_mask: mask(&["family_name"]) })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert_eq!(updated.family_name, "Brontë");
    assert_eq!(updated.given_name, created.given_name);
    assert_eq!(updated.etag, "2");

    // Stale etag: ABORTED, nothing changes.
    change.family_name = "Stale".into();
    let status = client
        .update_patient(pb::UpdatePatientRequest { patient: Some(change.clone()), update_mask: mask(&["family_name"]) })
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "VERSION_MISMATCH", None);

    let mut current = updated.clone();
    for (paths, reason) in [
        (vec!["etag"], "FIELD_OUTPUT_ONLY"),
        (vec!["merged_into"], "FIELD_OUTPUT_ONLY"),
        (vec!["favourite_colour"], "FIELD_UNKNOWN"),
        (vec![], "UPDATE_MASK_REQUIRED"),
    ] {
        let status = client
            .update_patient(pb::UpdatePatientRequest { patient: Some(current.clone()), update_mask: mask(&paths) })
            .await
            .unwrap_err();
        assert_error(&status, Code::InvalidArgument, reason, Some("update_mask"));
    }
    current.email = "broken".into();
    let status = client
        .update_patient(pb::UpdatePatientRequest { patient: Some(current.clone()), update_mask: mask(&["email"]) })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "EMAIL_INVALID", Some("patient.email"));
    current.etag.clear();
    let status = client
        .update_patient(pb::UpdatePatientRequest { patient: Some(current.clone()), update_mask: mask(&["email"]) })
        .await
        .unwrap_err();
    assert_error(&status, Code::InvalidArgument, "ETAG_REQUIRED", Some("patient.etag"));
    current.id = uuid::Uuid::now_v7().to_string();
    current.etag = "1".into();
    let status =
        client.update_patient(pb::UpdatePatientRequest { patient: Some(current), update_mask: mask(&["family_name"]) }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let stored = client.get_patient(pb::GetPatientRequest { id: created.id.clone() }).await.unwrap().into_inner().patient.unwrap();
    assert_eq!(stored, updated);

    // Two concurrent updates with one etag: one wins, the other is ABORTED.
    let mut tasks = Vec::new();
    for name in ["Austen", "Eliot"] {
        let mut client = server.client();
        let mut change = updated.clone();
        change.family_name = name.into();
        tasks.push(tokio::spawn(async move {
            client.update_patient(pb::UpdatePatientRequest { patient: Some(change), update_mask: mask(&["family_name"]) }).await
        }));
    }
    let results: Vec<_> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(results.iter().filter(|r| matches!(r, Err(s) if s.code() == Code::Aborted)).count(), 1);
    server.stop().await;
}

#[tokio::test]
async fn update_to_an_nhs_number_already_held_is_already_exists() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let mut holder = patient(13);
    holder.nhs_number = "9434765919".into();
    let holder = client.register_patient(register(holder, "")).await.unwrap().into_inner().patient.unwrap();
    let mut other = client.register_patient(register(patient(14), "")).await.unwrap().into_inner().patient.unwrap();
    other.nhs_number = "9434765919".into();
    let status = client
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(other.clone()),
            update_mask: Some(FieldMask { paths: vec!["nhs_number".into(), "nhs_number_status".into()] }),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::AlreadyExists, "NHS_NUMBER_EXISTS", None);
    assert_eq!(status.get_error_details().resource_info().unwrap().resource_name, holder.id);
    let unchanged = client.get_patient(pb::GetPatientRequest { id: other.id }).await.unwrap().into_inner().patient.unwrap();
    assert!(unchanged.nhs_number.is_empty());
    assert_eq!(unchanged.etag, "1");
    server.stop().await;
}

#[tokio::test]
async fn search_ranks_by_name_and_filters() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let mut smith = patient(15);
    smith.given_name = "John".into();
    smith.family_name = "Smith".into();
    smith.address.as_mut().unwrap().postcode = "M1 1AE".into();
    let smith = client.register_patient(register(smith, "")).await.unwrap().into_inner().patient.unwrap();
    let mut smithson = patient(16);
    smithson.given_name = "Joan".into();
    smithson.family_name = "Smithson".into();
    client.register_patient(register(smithson, "")).await.unwrap();
    for n in 17..30 {
        client.register_patient(register(patient(n), "")).await.unwrap();
    }

    let hits = client
        .search_patients(pb::SearchPatientsRequest { name: "jon smyth".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(hits[0].patient.as_ref().unwrap().id, smith.id);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

    let by_postcode = client
        .search_patients(pb::SearchPatientsRequest { postcode: "m11ae".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(by_postcode.len(), 1);
    let by_district = client
        .search_patients(pb::SearchPatientsRequest { postcode: "LS1".into(), page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(by_district.len(), 14);
    let by_phone_and_date = client
        .search_patients(pb::SearchPatientsRequest { phone: smith.phone.clone(), birth_date: smith.birth_date, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(by_phone_and_date.len(), 1);

    // Paging: pages of 5 cover every Leeds patient once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .search_patients(pb::SearchPatientsRequest {
                postcode: "LS1 3EX".into(),
                page_size: 5,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.results.into_iter().map(|r| r.patient.unwrap().id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 14);
    assert_eq!(seen.iter().collect::<std::collections::HashSet<_>>().len(), 14);

    for (request, reason, field) in [
        (pb::SearchPatientsRequest::default(), "CRITERIA_REQUIRED", "name"),
        (pb::SearchPatientsRequest { name: "j".into(), ..Default::default() }, "NAME_TOO_SHORT", "name"),
        (pb::SearchPatientsRequest { postcode: "nowhere".into(), ..Default::default() }, "POSTCODE_INVALID", "postcode"),
        (pb::SearchPatientsRequest { name: "smith".into(), page_size: 1000, ..Default::default() }, "PAGE_SIZE_INVALID", "page_size"),
        (
            pb::SearchPatientsRequest { name: "smith".into(), page_token: "forged".into(), ..Default::default() },
            "PAGE_TOKEN_INVALID",
            "page_token",
        ),
        (
            pb::SearchPatientsRequest { name: "smith".into(), birth_date: date(1990, 2, 30), ..Default::default() },
            "BIRTH_DATE_INVALID",
            "birth_date",
        ),
    ] {
        let status = client.search_patients(request).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, reason, Some(field));
    }
    server.stop().await;
}

#[tokio::test]
async fn restricted_records_are_redacted_and_never_found_by_postcode() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let mut input = patient(30);
    input.restricted = true;
    input.address.as_mut().unwrap().postcode = "B33 8TH".into();
    let created = client.register_patient(server.privileged(register(input, ""))).await.unwrap().into_inner().patient.unwrap();
    assert!(created.address.is_some());

    let anonymous = client.get_patient(pb::GetPatientRequest { id: created.id.clone() }).await.unwrap().into_inner().patient.unwrap();
    assert!(anonymous.contact_withheld);
    assert!(anonymous.address.is_none() && anonymous.phone.is_empty() && anonymous.email.is_empty());
    assert_eq!(anonymous.family_name, created.family_name);

    let unprivileged = client
        .get_patient(server.as_caller(pb::GetPatientRequest { id: created.id.clone() }, &[]))
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert!(unprivileged.contact_withheld);
    let privileged = client
        .get_patient(server.privileged(pb::GetPatientRequest { id: created.id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert!(!privileged.contact_withheld);
    assert_eq!(privileged.address.unwrap().postcode, "B33 8TH");

    for postcode in ["B33 8TH", "B33"] {
        let hits = client
            .search_patients(server.privileged(pb::SearchPatientsRequest { postcode: postcode.into(), ..Default::default() }))
            .await
            .unwrap()
            .into_inner()
            .results;
        assert!(hits.is_empty(), "restricted record found by postcode {postcode}");
    }
    let by_name = client
        .search_patients(pb::SearchPatientsRequest { name: created.family_name.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(by_name[0].patient.as_ref().unwrap().contact_withheld);

    // Without the permission, contact details of a restricted record cannot be changed.
    let mut change = created.clone();
    change.phone = "07700 900999".into();
    let status = client
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(change.clone()),
            update_mask: Some(FieldMask { paths: vec!["phone".into()] }),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "RESTRICTED_RECORD", None);
    client
        .update_patient(server.as_caller(
            pb::UpdatePatientRequest { patient: Some(change), update_mask: Some(FieldMask { paths: vec!["phone".into()] }) },
            &[PERMISSION_RESTRICTED_READ],
        ))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn merge_resolves_the_loser_and_unmerge_restores_it() {
    let server = TestServer::start().await;
    let mut client = server.client();
    // Registered by the organisation whose coordinator merges them (a merge stays inside it).
    let survivor = client.register_patient(server.privileged(register(patient(31), ""))).await.unwrap().into_inner().patient.unwrap();
    let mut duplicate = patient(32);
    duplicate.nhs_number = "9912003888".into();
    duplicate.local_identifiers = vec![pb::LocalIdentifier { issuer: "RX1".into(), value: "H123".into() }];
    let loser = client.register_patient(server.privileged(register(duplicate, ""))).await.unwrap().into_inner().patient.unwrap();

    let merge_request = pb::MergePatientsRequest {
        survivor_id: survivor.id.clone(),
        merged_id: loser.id.clone(),
        reason: "same person registered twice".into(),
        request_id: "merge-1".into(),
    };
    let merged = client.merge_patients(server.privileged(merge_request.clone())).await.unwrap();
    assert_eq!(audited(&merged), [survivor.id.clone(), loser.id.clone()]);
    let merged = merged.into_inner();
    let merge = merged.merge.unwrap();
    assert_eq!(merge.survivor_id, survivor.id);
    assert_eq!(merge.moved_identifiers, ["nhs:9912003888", "local:RX1:H123"]);
    assert_eq!(merge.merged_by.as_ref().unwrap().subject, "coordinator-1");
    // Retry replays; the merge happened once.
    let replay = client.merge_patients(server.privileged(merge_request)).await.unwrap().into_inner();
    assert_eq!(replay.merge.unwrap().id, merge.id);

    let got = client.get_patient(pb::GetPatientRequest { id: loser.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.patient.unwrap().id, survivor.id);
    assert_eq!(got.merged_from, loser.id);
    use pb::lookup_patient_request::Identifier;
    let looked_up = client
        .lookup_patient(pb::LookupPatientRequest { identifier: Some(Identifier::NhsNumber("9912003888".into())) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(looked_up.patient.unwrap().id, survivor.id);
    assert_eq!(looked_up.merged_from, loser.id);

    // The merged-away record cannot be updated or merged again; a record cannot merge into itself.
    let status = client
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(pb::Patient { id: loser.id.clone(), etag: "2".into(), family_name: "X".into(), ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["family_name".into()] }),
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "PATIENT_MERGED", None);
    let again = pb::MergePatientsRequest {
        survivor_id: survivor.id.clone(),
        merged_id: loser.id.clone(),
        reason: "again".into(),
        request_id: String::new(),
    };
    assert_error(&client.merge_patients(again).await.unwrap_err(), Code::FailedPrecondition, "ALREADY_MERGED", None);
    let into_loser = pb::MergePatientsRequest {
        survivor_id: loser.id.clone(),
        merged_id: survivor.id.clone(),
        reason: "x".into(),
        request_id: String::new(),
    };
    assert_error(&client.merge_patients(into_loser).await.unwrap_err(), Code::FailedPrecondition, "PATIENT_MERGED", None);
    let itself = pb::MergePatientsRequest {
        survivor_id: survivor.id.clone(),
        merged_id: survivor.id.clone(),
        reason: "x".into(),
        request_id: String::new(),
    };
    assert_error(&client.merge_patients(itself).await.unwrap_err(), Code::InvalidArgument, "SAME_RECORD", Some("merged_id"));
    let no_reason = pb::MergePatientsRequest {
        survivor_id: survivor.id.clone(),
        merged_id: loser.id.clone(),
        reason: " ".into(),
        request_id: String::new(),
    };
    assert_error(&client.merge_patients(no_reason).await.unwrap_err(), Code::InvalidArgument, "REASON_REQUIRED", Some("reason"));
    let missing = pb::MergePatientsRequest {
        survivor_id: survivor.id.clone(),
        merged_id: uuid::Uuid::now_v7().to_string(),
        reason: "x".into(),
        request_id: String::new(),
    };
    assert_eq!(client.merge_patients(missing).await.unwrap_err().code(), Code::NotFound);

    let restored = client
        .unmerge_patient(pb::UnmergePatientRequest {
            merged_id: loser.id.clone(),
            reason: "different people".into(),
            request_id: "unmerge-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(restored.patient.as_ref().unwrap().merged_into.is_empty());
    assert!(restored.merge.unwrap().unmerge_time.is_some());
    let got = client.get_patient(pb::GetPatientRequest { id: loser.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.patient.unwrap().id, loser.id);
    assert!(got.merged_from.is_empty());
    let status = client
        .unmerge_patient(pb::UnmergePatientRequest { merged_id: loser.id.clone(), reason: "again".into(), request_id: String::new() })
        .await
        .unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "NOT_MERGED", None);

    // Merge and unmerge are both on record.
    let (merges, reversed): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(unmerged_at) FROM records.merges").fetch_one(&server.admin().await).await.unwrap();
    assert_eq!((merges, reversed), (1, 1));
    server.stop().await;
}

#[tokio::test]
async fn name_search_finds_longer_names_either_order_and_follows_renames_and_merges() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let named = |n: u32, given: &str, family: &str| {
        let mut p = patient(n);
        p.given_name = given.into();
        p.family_name = family.into();
        p
    };
    let mary = named(40, "Mary Anne", "Featherstonehaugh");
    let mary = client.register_patient(register(mary, "")).await.unwrap().into_inner().patient.unwrap();
    let other = named(41, "Marion", "Fetherston");
    let other = client.register_patient(register(other, "")).await.unwrap().into_inner().patient.unwrap();
    let search = |name: &str| {
        let mut client = server.client();
        let name = name.to_string();
        async move {
            client
                .search_patients(pb::SearchPatientsRequest { name, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .results
                .into_iter()
                .map(|r| r.patient.unwrap().id)
                .collect::<Vec<_>>()
        }
    };
    // Two of three words, misspelt, and in the other order.
    assert_eq!(search("mary featherstonhaugh").await.first(), Some(&mary.id));
    assert_eq!(search("featherstonehaugh mary").await.first(), Some(&mary.id));
    assert!(search("mary featherstonhaugh").await.contains(&other.id), "a near name is still offered");
    // An initial with a family name (the index-scan path).
    assert!(search("m featherstonehaugh").await.contains(&mary.id));

    // A renamed patient is found by the new name.
    let mut change = mary.clone();
    change.family_name = "Quillfeather".into();
    let renamed = client
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(change),
            update_mask: Some(prost_types::FieldMask { paths: vec!["family_name".into()] }),
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    assert_eq!(search("mary quillfeather").await.first(), Some(&renamed.id));
    assert!(!search("mary featherstonehaugh").await.contains(&mary.id), "not under the old name");

    // A merged-away record is not returned.
    client
        .merge_patients(pb::MergePatientsRequest {
            survivor_id: renamed.id.clone(),
            merged_id: other.id.clone(),
            reason: "duplicate".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!search("marion fetherston").await.contains(&other.id));
}

#[tokio::test]
async fn name_search_pages_are_ordered_and_complete_across_tied_names() {
    let server = TestServer::start().await;
    let mut client = server.client();
    // 12 of one name, 6 of a near one: pages of 5 walk 18 patients, best name first, ties by id.
    for n in 0..18u32 {
        let mut p = patient(100 + n);
        p.given_name = "Aurelia".into();
        p.family_name = if n < 12 { "Winterbottom".into() } else { "Winterbotham".into() };
        let request = pb::RegisterPatientRequest { patient: Some(p), request_id: String::new(), allow_possible_duplicate: true };
        client.register_patient(request).await.unwrap();
    }
    let mut seen: Vec<(String, f64)> = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .search_patients(pb::SearchPatientsRequest {
                name: "aurelia winterbottom".into(),
                page_size: 5,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.results.into_iter().map(|r| (r.patient.unwrap().id, r.score)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 18);
    assert_eq!(seen.iter().map(|(id, _)| id).collect::<std::collections::HashSet<_>>().len(), 18);
    assert!(seen.windows(2).all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)), "{seen:?}");
    assert!(seen[..12].iter().all(|(_, score)| *score == 1.0));
}
