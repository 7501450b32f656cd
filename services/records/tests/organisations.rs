//! Organisation scope over real gRPC on loopback against a real Postgres: callers of two
//! organisations never see or change each other's patients (by id, by identifier, in searches,
//! matches, updates and merges), cannot register into each other's organisation, and the platform's
//! own services see both.

use crate::common::*;
use pac_platform::caller::PERMISSION_RESTRICTED_READ;
use pac_platform::testkit::{member_of, service_caller};
use pac_proto::records as pb;
use pac_proto::records::lookup_patient_request::Identifier;
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn two_organisations_never_see_or_change_each_others_patients() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let (leeds, york, service) = (
        member_of("leeds-1", "RR8", &[PERMISSION_RESTRICTED_READ]),
        member_of("york-1", "RCB", &[PERMISSION_RESTRICTED_READ]),
        service_caller("pac-scheduling"),
    );

    let mut input = patient(1);
    input.nhs_number = "9434765919".into();
    input.local_identifiers = vec![pb::LocalIdentifier { issuer: "RR8".into(), value: "MRN-L1".into() }];
    let ours = client.register_patient(server.signed(register(input.clone(), ""), &leeds)).await.unwrap().into_inner().patient.unwrap();
    assert_eq!(ours.organisation, "RR8", "a patient belongs to the registering caller's organisation");

    // York registers someone who looks just like Leeds' patient: Leeds' record is no candidate for
    // York, so no override is needed (and nothing of Leeds' record is shown).
    let mut lookalike = input.clone();
    lookalike.nhs_number.clear();
    lookalike.local_identifiers.clear();
    let theirs = client.register_patient(server.signed(register(lookalike, ""), &york)).await.unwrap().into_inner();
    assert!(theirs.overridden_candidates.is_empty());
    let theirs = theirs.patient.unwrap();
    assert_eq!(theirs.organisation, "RCB");

    // By id and by identifier: not found, exactly as for an id nobody holds.
    let status = client.get_patient(server.signed(pb::GetPatientRequest { id: ours.id.clone() }, &york)).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND", None);
    let status = client.get_patient(server.signed(pb::GetPatientRequest { id: theirs.id.clone() }, &leeds)).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND", None);
    for identifier in [
        Identifier::NhsNumber("9434765919".into()),
        Identifier::LocalIdentifier(pb::LocalIdentifier { issuer: "RR8".into(), value: "MRN-L1".into() }),
    ] {
        let request = pb::LookupPatientRequest { identifier: Some(identifier.clone()) };
        let status = client.lookup_patient(server.signed(request.clone(), &york)).await.unwrap_err();
        assert_error(&status, Code::NotFound, "NOT_FOUND", None);
        let found = client.lookup_patient(server.signed(request, &leeds)).await.unwrap().into_inner();
        assert_eq!(found.patient.unwrap().id, ours.id);
    }

    // Searches and matches hold only the caller's own.
    let search = pb::SearchPatientsRequest { name: format!("{} {}", input.given_name, input.family_name), ..Default::default() };
    for (caller, own) in [(&leeds, &ours.id), (&york, &theirs.id)] {
        let hits = client.search_patients(server.signed(search.clone(), caller)).await.unwrap().into_inner().results;
        let ids: Vec<String> = hits.into_iter().map(|h| h.patient.unwrap().id).collect();
        assert_eq!(&ids, &[own.clone()]);
        let request = pb::MatchPatientsRequest { patient: Some(input.clone()), max_candidates: 10 };
        let candidates = client.match_patients(server.signed(request, caller)).await.unwrap().into_inner().candidates;
        let ids: Vec<String> = candidates.into_iter().map(|c| c.patient.unwrap().id).collect();
        assert_eq!(&ids, &[own.clone()]);
    }
    let by_birth_date = pb::SearchPatientsRequest { birth_date: input.birth_date, ..Default::default() };
    let hits = client.search_patients(server.signed(by_birth_date.clone(), &york)).await.unwrap().into_inner().results;
    assert_eq!(hits.iter().map(|h| h.patient.as_ref().unwrap().id.clone()).collect::<Vec<_>>(), [theirs.id.clone()]);

    // Changes: another organisation's patient is not found; the owner cannot be changed.
    let mut change = theirs.clone();
    change.family_name = "Changed".into();
    let update = |patient: pb::Patient, path: &str| pb::UpdatePatientRequest {
        patient: Some(patient),
        update_mask: Some(FieldMask { paths: vec![path.into()] }),
    };
    let status = client.update_patient(server.signed(update(change.clone(), "family_name"), &leeds)).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND", None);
    change.organisation = "RR8".into();
    let status = client.update_patient(server.signed(update(change, "organisation"), &york)).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "FIELD_IMMUTABLE", Some("update_mask"));
    let merge = pb::MergePatientsRequest {
        survivor_id: ours.id.clone(),
        merged_id: theirs.id.clone(),
        reason: "same person".into(),
        request_id: String::new(),
    };
    let status = client.merge_patients(server.signed(merge.clone(), &leeds)).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND", None);

    // Registering into another organisation is refused; into one's own, allowed by name.
    let mut elsewhere = patient(2);
    elsewhere.organisation = "RCB".into();
    let status = client.register_patient(server.signed(register(elsewhere.clone(), ""), &leeds)).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "OTHER_ORGANISATION", None);
    elsewhere.organisation = "rr8".into();
    let named = client.register_patient(server.signed(register(elsewhere, ""), &leeds)).await.unwrap().into_inner();
    assert_eq!(named.patient.unwrap().organisation, "RR8");
    // The same person may be treated by both trusts: York registers its own record of the NHS number
    // (and of Leeds' hospital number, which York also keeps), and is told nothing of Leeds' record.
    let mut same_number = patient(3);
    same_number.nhs_number = "9434765919".into();
    same_number.local_identifiers = vec![pb::LocalIdentifier { issuer: "RR8".into(), value: "MRN-L1".into() }];
    let york_own =
        client.register_patient(server.signed(register(same_number.clone(), ""), &york)).await.unwrap().into_inner().patient.unwrap();
    assert_eq!(york_own.organisation, "RCB");
    assert_ne!(york_own.id, ours.id);
    for (caller, own) in [(&leeds, &ours.id), (&york, &york_own.id)] {
        for identifier in [
            Identifier::NhsNumber("9434765919".into()),
            Identifier::LocalIdentifier(pb::LocalIdentifier { issuer: "RR8".into(), value: "MRN-L1".into() }),
        ] {
            let found = client.lookup_patient(server.signed(pb::LookupPatientRequest { identifier: Some(identifier) }, caller)).await;
            assert_eq!(&found.unwrap().into_inner().patient.unwrap().id, own, "each organisation finds its own record");
        }
    }
    // Within one organisation the NHS number is still unique, and the record holding it is named.
    let status = client.register_patient(server.signed(register(same_number, ""), &york)).await.unwrap_err();
    assert_error(&status, Code::AlreadyExists, "NHS_NUMBER_EXISTS", None);
    assert_eq!(status.get_error_details().error_info().unwrap().metadata.get("existing_patient_id"), Some(&york_own.id));
    assert!(!status.message().contains(&ours.id) && !status.message().contains("organisation"), "{}", status.message());
    // A change that would give a York record Leeds' number clashes with York's own only.
    let mut renumbered = theirs.clone();
    renumbered.nhs_number = "9434765919".into();
    let status = client.update_patient(server.signed(update(renumbered, "nhs_number"), &york)).await.unwrap_err();
    assert_error(&status, Code::AlreadyExists, "NHS_NUMBER_EXISTS", None);
    assert_eq!(status.get_error_details().error_info().unwrap().metadata.get("existing_patient_id"), Some(&york_own.id));

    // A record owned by no organisation (registered by an unscoped caller) is no scoped caller's.
    let unowned = client.register_patient(register(patient(4), "")).await.unwrap().into_inner().patient.unwrap();
    assert_eq!(unowned.organisation, "");
    let status = client.get_patient(server.signed(pb::GetPatientRequest { id: unowned.id.clone() }, &leeds)).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND", None);

    // The platform's own services are unscoped: they see both organisations' patients.
    for id in [&ours.id, &theirs.id, &unowned.id] {
        let got = client.get_patient(server.signed(pb::GetPatientRequest { id: id.clone() }, &service)).await.unwrap();
        assert_eq!(&got.into_inner().patient.unwrap().id, id);
    }
    let hits = client.search_patients(server.signed(by_birth_date, &service)).await.unwrap().into_inner().results;
    assert_eq!(hits.len(), 2, "both organisations' look-alikes");
    let by_number = pb::LookupPatientRequest { identifier: Some(Identifier::NhsNumber("9434765919".into())) };
    assert!(client.lookup_patient(server.signed(by_number, &service)).await.is_ok(), "the service finds a record of the number");
    let merged = client.merge_patients(server.signed(merge, &service)).await.unwrap().into_inner();
    assert_eq!(merged.survivor.unwrap().organisation, "RR8");
    // Merged across organisations: York's id now resolves to a survivor York may not see.
    let status = client.get_patient(server.signed(pb::GetPatientRequest { id: theirs.id.clone() }, &york)).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND", None);
    server.stop().await;
}
