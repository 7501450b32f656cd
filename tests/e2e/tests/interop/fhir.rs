//! The FHIR R4 API over HTTP, with the caller's own token forwarded to the gateway: the
//! capability statement, a UK Core Patient read and searched, another organisation's caller seeing
//! none of it, refusals as OperationOutcomes, every call in the audit trail.

use std::time::Duration;

use pac_e2e::gateway::{self, token, token_for};
use pac_e2e::interop::{fhir_get, start_listening};
use pac_gateway::policy::Role;
use pac_platform::testkit::{registration, with_token};
use pac_proto::records::patient_records_client::PatientRecordsClient;

const NHS: &str = "9998193036";

#[tokio::test]
async fn patients_are_read_and_searched_as_uk_core_for_the_callers_organisation_only() {
    let p = gateway::start().await;
    let (health, _) = pac_platform::testkit::listener().await;
    let (_, fhir) = start_listening(&p, health, p.shutdown.clone(), |_| {}).await;
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let mut request = registration("Fhirpatient");
    let patient = request.patient.as_mut().unwrap();
    patient.nhs_number = NHS.into();
    patient.nhs_number_status = 1;
    patient.gp_practice_code = "B86001".into();
    patient.local_identifiers = vec![pac_proto::records::LocalIdentifier { issuer: "RR8".into(), value: "KF1".into() }];
    let registered = PatientRecordsClient::new(p.gateway.clone())
        .register_patient(with_token(request, Some(&coordinator)))
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();

    let metadata = fhir_get(fhir, "/fhir/R4/metadata", None).await;
    assert_eq!(
        (metadata.status, metadata.body["resourceType"].as_str(), metadata.body["fhirVersion"].as_str()),
        (200, Some("CapabilityStatement"), Some("4.0.1"))
    );
    assert_eq!(metadata.header("content-type"), Some("application/fhir+json; charset=utf-8"));

    let read = fhir_get(fhir, &format!("/fhir/R4/Patient/{}", registered.id), Some(&coordinator)).await;
    assert_eq!(read.status, 200, "{}", read.body);
    let body = &read.body;
    assert_eq!(body["resourceType"], "Patient");
    assert_eq!(body["identifier"][0]["system"], "https://fhir.nhs.uk/Id/nhs-number");
    assert_eq!(body["identifier"][0]["value"], NHS);
    assert_eq!(
        body["identifier"][0]["extension"][0]["url"],
        "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
    );
    assert_eq!(
        body["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["system"],
        "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"
    );
    assert_eq!(body["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"], "01");
    assert_eq!(
        (body["name"][0]["family"].as_str(), body["birthDate"].as_str(), body["gender"].as_str()),
        (Some("Fhirpatient"), Some("1980-02-03"), Some("female"))
    );
    assert_eq!(body["generalPractitioner"][0]["identifier"]["system"], "https://fhir.nhs.uk/Id/ods-organization-code");
    assert_eq!(read.header("etag"), Some(format!("W/\"{}\"", registered.etag).as_str()));

    for query in [
        format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{NHS}"),
        "identifier=urn:pac:local-identifier:RR8|KF1".to_string(),
        format!("identifier={NHS}&family=fhirpat&birthdate=1980-02-03"),
        "family=Fhirpatient&birthdate=1980-02-03".to_string(),
    ] {
        let found = fhir_get(fhir, &format!("/fhir/R4/Patient?{query}"), Some(&coordinator)).await;
        assert_eq!((found.status, found.body["type"].as_str()), (200, Some("searchset")), "{query}: {}", found.body);
        assert_eq!(found.body["entry"][0]["resource"]["id"], registered.id.as_str(), "{query}");
    }
    let none = fhir_get(fhir, &format!("/fhir/R4/Patient?identifier={NHS}&birthdate=1999-01-01"), Some(&coordinator)).await;
    assert_eq!((none.status, none.body.get("entry")), (200, None), "combined parameters must all match: {}", none.body);

    // Another organisation's coordinator: not found, and no search hit.
    let elsewhere = token_for(Role::Coordinator, "RAE", Duration::from_secs(600));
    assert_eq!(fhir_get(fhir, &format!("/fhir/R4/Patient/{}", registered.id), Some(&elsewhere)).await.status, 404);
    let search = fhir_get(fhir, &format!("/fhir/R4/Patient?identifier={NHS}"), Some(&elsewhere)).await;
    assert_eq!((search.status, search.body.get("entry")), (200, None), "{}", search.body);

    // Refusals are OperationOutcomes with the HTTP status of the gateway's answer.
    let cases = [
        (format!("/fhir/R4/Patient/{}", registered.id), None, 401, "login"),
        ("/fhir/R4/Patient?name=smith".to_string(), Some(coordinator.as_str()), 400, "invalid"),
        ("/fhir/R4/Patient?birthdate=ge1980-01-01".to_string(), Some(coordinator.as_str()), 400, "invalid"),
        ("/fhir/R4/Patient/not-an-id".to_string(), Some(coordinator.as_str()), 400, "invalid"),
        ("/fhir/R4/Encounter".to_string(), Some(coordinator.as_str()), 400, "not-supported"),
        ("/fhir/R4/Patient?family=a&family=b".to_string(), Some(coordinator.as_str()), 400, "invalid"),
        ("/fhir/R4/Patient?family=%FF".to_string(), Some(coordinator.as_str()), 400, "invalid"),
        (format!("/fhir/R4/Patient?identifier={NHS}&_page_token=x"), Some(coordinator.as_str()), 400, "invalid"),
        // A multi-byte character where a prefix would be: once a panic that closed the connection.
        ("/fhir/R4/Slot?service-type=KNEE&start=a%C3%A9".to_string(), Some(coordinator.as_str()), 400, "invalid"),
    ];
    let deleted =
        pac_e2e::interop::fhir_send(fhir, "DELETE", &format!("/fhir/R4/Patient/{}", registered.id), Some(&coordinator), &[], None).await;
    assert_eq!((deleted.status, deleted.body["resourceType"].as_str()), (405, Some("OperationOutcome")), "{}", deleted.body);
    for (path, bearer, status, code) in cases {
        let answer = fhir_get(fhir, &path, bearer).await;
        assert_eq!(
            (answer.status, answer.body["resourceType"].as_str(), answer.body["issue"][0]["code"].as_str()),
            (status, Some("OperationOutcome"), Some(code)),
            "{path}: {}",
            answer.body
        );
    }

    // Each FHIR call reached the gateway with the caller's token: audited under them.
    let admin = p.admin_pool().await;
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit.events WHERE subject = 'coordinator-1' AND action LIKE '%GetPatient%' AND $1 = ANY(patient_ids)",
    )
    .bind(&registered.id)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn a_free_slot_is_found_booked_read_back_and_cancelled_and_a_taken_one_is_a_409() {
    use pac_e2e::interop::fhir_send;
    let p = gateway::start().await;
    let clinic = gateway::knee_clinic(&p).await;
    let (health, _) = pac_platform::testkit::listener().await;
    let (_, fhir) = start_listening(&p, health, p.shutdown.clone(), |_| {}).await;
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let register = |name: &str| {
        let (mut client, request, coordinator) = (PatientRecordsClient::new(p.gateway.clone()), registration(name), coordinator.clone());
        async move { client.register_patient(with_token(request, Some(&coordinator))).await.unwrap().into_inner().patient.unwrap().id }
    };
    let (first, second) = (register("Fhirbooker").await, register("Fhirsecond").await);

    // Free slots of the knee service, with their Schedule included.
    let slots = fhir_get(fhir, "/fhir/R4/Slot?service-type=KNEE&status=free&_count=2&_include=Slot:schedule", Some(&coordinator)).await;
    assert_eq!(slots.status, 200, "{}", slots.body);
    let entries = slots.body["entry"].as_array().unwrap();
    let slot = entries.iter().find(|e| e["resource"]["resourceType"] == "Slot").unwrap()["resource"].clone();
    assert_eq!(slot["status"], "free");
    let schedule = entries.iter().find(|e| e["search"]["mode"] == "include").expect("the schedule included");
    assert_eq!(schedule["resource"]["id"], clinic.id.as_str());
    assert!(slots.body["link"][0]["url"].as_str().unwrap().starts_with("Slot?"), "a next page: {}", slots.body);
    // Patient search pages: one a page, the next link gives the other.
    let page = fhir_get(fhir, "/fhir/R4/Patient?birthdate=1980-02-03&_count=1", Some(&coordinator)).await;
    assert_eq!((page.status, page.body["entry"].as_array().map(Vec::len)), (200, Some(1)), "{}", page.body);
    let next = page.body["link"][0]["url"].as_str().expect("a next link");
    let rest = fhir_get(fhir, &format!("/fhir/R4/{next}"), Some(&coordinator)).await;
    assert_eq!(rest.status, 200, "{}", rest.body);
    let ids: std::collections::HashSet<&str> =
        [&page, &rest].iter().flat_map(|b| b.body["entry"].as_array().unwrap()).map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert!(ids.contains(first.as_str()) && ids.contains(second.as_str()), "both patients over the two pages: {ids:?}");
    let schedules = fhir_get(fhir, "/fhir/R4/Schedule?service-type=KNEE", Some(&coordinator)).await;
    assert_eq!(schedules.body["entry"][0]["resource"]["id"], clinic.id.as_str());

    // Book it.
    let appointment = |patient: &str| {
        serde_json::json!({
            "resourceType": "Appointment",
            "status": "booked",
            "slot": [{ "reference": format!("Slot/{}", slot["id"].as_str().unwrap()) }],
            "participant": [{ "actor": { "reference": format!("Patient/{patient}") }, "status": "accepted" }],
        })
    };
    let booked =
        fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[("X-Request-Id", "fhir-book-1")], Some(&appointment(&first)))
            .await;
    assert_eq!(booked.status, 201, "{}", booked.body);
    assert_eq!(booked.body["status"], "booked");
    let id = booked.body["id"].as_str().unwrap().to_string();
    assert_eq!(booked.header("location"), Some(format!("Appointment/{id}").as_str()));
    // The same request again (same X-Request-Id): the same appointment, not a second one.
    let again =
        fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[("X-Request-Id", "fhir-book-1")], Some(&appointment(&first)))
            .await;
    assert_eq!(again.body["id"], id.as_str());
    // The slot is taken now: 409, in plain words.
    let taken = fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[], Some(&appointment(&second))).await;
    assert_eq!((taken.status, taken.body["issue"][0]["code"].as_str()), (409, Some("conflict")), "{}", taken.body);
    assert!(taken.body["issue"][0]["diagnostics"].as_str().unwrap().contains("no longer free"), "{}", taken.body);

    // Read back; another organisation's coordinator cannot.
    let read = fhir_get(fhir, &format!("/fhir/R4/Appointment/{id}"), Some(&coordinator)).await;
    assert_eq!((read.status, read.body["participant"][0]["actor"]["reference"].as_str()), (200, Some(format!("Patient/{first}").as_str())));
    let elsewhere = token_for(Role::Coordinator, "RAE", Duration::from_secs(600));
    assert_eq!(fhir_get(fhir, &format!("/fhir/R4/Appointment/{id}"), Some(&elsewhere)).await.status, 404);

    // Cancel: status cancelled, why and who, If-Match the current version.
    let etag = read.header("etag").unwrap().to_string();
    let mut cancel = read.body.clone();
    cancel["status"] = "cancelled".into();
    cancel["cancelationReason"] = serde_json::json!({ "coding": [
        { "system": "urn:pac:cancellation-reason", "code": "PATIENT_UNWELL" },
        { "system": "urn:pac:cancelled-by", "code": "patient" }
    ]});
    let without_who = {
        let mut body = cancel.clone();
        body["cancelationReason"]["coding"].as_array_mut().unwrap().pop();
        body
    };
    let refused =
        fhir_send(fhir, "PUT", &format!("/fhir/R4/Appointment/{id}"), Some(&coordinator), &[("If-Match", &etag)], Some(&without_who)).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let stale =
        fhir_send(fhir, "PUT", &format!("/fhir/R4/Appointment/{id}"), Some(&coordinator), &[("If-Match", "W/\"0\"")], Some(&cancel)).await;
    assert_eq!(stale.status, 412, "{}", stale.body);
    let cancelled =
        fhir_send(fhir, "PUT", &format!("/fhir/R4/Appointment/{id}"), Some(&coordinator), &[("If-Match", &etag)], Some(&cancel)).await;
    assert_eq!((cancelled.status, cancelled.body["status"].as_str()), (200, Some("cancelled")), "{}", cancelled.body);
    assert_eq!(cancelled.body["cancelationReason"]["coding"][0]["code"], "PATIENT_UNWELL");
}

#[tokio::test]
async fn a_patient_is_created_once_and_only_its_contact_details_change_with_if_match() {
    use pac_e2e::interop::fhir_send;
    let p = gateway::start().await;
    let (health, _) = pac_platform::testkit::listener().await;
    let (_, fhir) = start_listening(&p, health, p.shutdown.clone(), |_| {}).await;
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let nhs = "9990000018";
    let patient = serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{
            "system": "https://fhir.nhs.uk/Id/nhs-number",
            "value": nhs,
            "extension": [{
                "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
                "valueCodeableConcept": { "coding": [{ "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland", "code": "01" }] }
            }]
        }, { "system": "urn:pac:local-identifier:RR8", "value": "KC1" }],
        "name": [{ "use": "official", "family": "Fhircreated", "given": ["Aoife", "Mary"] }],
        "gender": "female",
        "birthDate": "1975-06-01",
        "address": [{ "use": "home", "line": ["2 Park Row"], "city": "Leeds", "postalCode": "LS1 5HD" }],
        "telecom": [{ "system": "phone", "value": "07700900456" }],
        "generalPractitioner": [{ "identifier": { "system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "B86001" } }]
    });
    let condition = format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}");
    let created = fhir_send(fhir, "POST", "/fhir/R4/Patient", Some(&coordinator), &[("If-None-Exist", &condition)], Some(&patient)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(created.header("location"), Some(format!("Patient/{id}").as_str()));
    assert_eq!(created.body["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"], "01");
    assert_eq!(
        (created.body["name"][0]["given"][1].as_str(), created.body["telecom"][0]["value"].as_str()),
        (Some("Mary"), Some("+447700900456"))
    );
    // The same create again: If-None-Exist finds it, nothing new is registered.
    let again = fhir_send(fhir, "POST", "/fhir/R4/Patient", Some(&coordinator), &[("If-None-Exist", &condition)], Some(&patient)).await;
    assert_eq!((again.status, again.body["id"].as_str()), (200, Some(id.as_str())), "{}", again.body);
    // Without the condition, the NHS number is the organisation's already: 409.
    let duplicate = fhir_send(fhir, "POST", "/fhir/R4/Patient", Some(&coordinator), &[], Some(&patient)).await;
    assert_eq!((duplicate.status, duplicate.body["issue"][0]["code"].as_str()), (409, Some("duplicate")), "{}", duplicate.body);
    // Elements the platform does not keep are refused by name, not dropped.
    let mut with_contact = patient.clone();
    with_contact["contact"] = serde_json::json!([{ "name": { "family": "Next-of-kin" } }]);
    let refused = fhir_send(fhir, "POST", "/fhir/R4/Patient", Some(&coordinator), &[], Some(&with_contact)).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body["issue"][0]["diagnostics"].as_str().unwrap().contains("contact"), "{}", refused.body);

    // PUT: a new phone number, If-Match the current version.
    let etag = created.header("etag").unwrap().to_string();
    let mut changed = created.body.clone();
    changed["telecom"] =
        serde_json::json!([{ "system": "phone", "value": "07700900789" }, { "system": "email", "value": "aoife@example.org" }]);
    let path = format!("/fhir/R4/Patient/{id}");
    let put = fhir_send(fhir, "PUT", &path, Some(&coordinator), &[("If-Match", &etag)], Some(&changed)).await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(
        (put.body["telecom"][0]["value"].as_str(), put.body["telecom"][1]["value"].as_str()),
        (Some("+447700900789"), Some("aoife@example.org"))
    );
    assert_ne!(put.header("etag"), Some(etag.as_str()));
    // The version it named is gone now: 412. No If-Match: 400.
    assert_eq!(fhir_send(fhir, "PUT", &path, Some(&coordinator), &[("If-Match", &etag)], Some(&changed)).await.status, 412);
    assert_eq!(fhir_send(fhir, "PUT", &path, Some(&coordinator), &[], Some(&changed)).await.status, 400);
    // A stale version is 412 whatever else the body says.
    let mut stale_rename = changed.clone();
    stale_rename["name"][0]["family"] = "Renamed".into();
    assert_eq!(fhir_send(fhir, "PUT", &path, Some(&coordinator), &[("If-Match", &etag)], Some(&stale_rename)).await.status, 412);
    // Anything but contact details: 422, nothing changed.
    let current = put.header("etag").unwrap().to_string();
    let mut renamed = put.body.clone();
    renamed["name"][0]["family"] = "Renamed".into();
    let refused = fhir_send(fhir, "PUT", &path, Some(&coordinator), &[("If-Match", &current)], Some(&renamed)).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body["issue"][0]["diagnostics"].as_str().unwrap().contains("name"), "{}", refused.body);

    // PATCH: a JSON Patch of the address.
    let patch = serde_json::json!([{ "op": "replace", "path": "/address/0/postalCode", "value": "LS2 9JT" }]);
    let patched = fhir_patch(fhir, &path, &coordinator, &current, &patch).await;
    assert_eq!((patched.status, patched.body["address"][0]["postalCode"].as_str()), (200, Some("LS2 9JT")), "{}", patched.body);
    assert_eq!(patched.body["name"][0]["family"], "Fhircreated");
    let stale = fhir_patch(fhir, &path, &coordinator, &current, &patch).await;
    assert_eq!(stale.status, 412, "{}", stale.body);
    let not_json_patch =
        fhir_send(fhir, "PATCH", &path, Some(&coordinator), &[("If-Match", patched.header("etag").unwrap())], Some(&patch)).await;
    assert_eq!(not_json_patch.status, 415, "{}", not_json_patch.body);

    // Another organisation's coordinator cannot see it to change it, and creates a record of its own.
    let elsewhere = token_for(Role::Coordinator, "RAE", Duration::from_secs(600));
    let hidden = fhir_send(fhir, "PUT", &path, Some(&elsewhere), &[("If-Match", patched.header("etag").unwrap())], Some(&changed)).await;
    assert_eq!(hidden.status, 404, "{}", hidden.body);
    let mut theirs = patient.clone();
    theirs["identifier"].as_array_mut().unwrap().truncate(1);
    let own = fhir_send(fhir, "POST", "/fhir/R4/Patient", Some(&elsewhere), &[("If-None-Exist", &condition)], Some(&theirs)).await;
    assert_eq!(own.status, 201, "{}", own.body);
    assert_ne!(own.body["id"].as_str(), Some(id.as_str()));
}

/// `PATCH path` with a JSON Patch.
async fn fhir_patch(
    fhir: std::net::SocketAddr,
    path: &str,
    bearer: &str,
    etag: &str,
    patch: &serde_json::Value,
) -> pac_e2e::interop::FhirAnswer {
    pac_e2e::interop::fhir_send_typed(fhir, "PATCH", path, Some(bearer), &[("If-Match", etag)], Some(patch), "application/json-patch+json")
        .await
}

#[tokio::test]
async fn a_referral_is_a_service_request_and_its_appointments_are_found_and_cancelled_for_its_organisation_only() {
    use pac_e2e::interop::fhir_send;
    let p = gateway::start().await;
    let clinic = gateway::knee_clinic(&p).await;
    let (health, _) = pac_platform::testkit::listener().await;
    let (_, fhir) = start_listening(&p, health, p.shutdown.clone(), |_| {}).await;
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let (patient, referral) = gateway::referred_patient(&p, "Fhirreferred", true).await;

    let read = fhir_get(fhir, &format!("/fhir/R4/ServiceRequest/{}", referral.id), Some(&coordinator)).await;
    assert_eq!(read.status, 200, "{}", read.body);
    let request = &read.body;
    assert_eq!(
        (request["status"].as_str(), request["intent"].as_str(), request["priority"].as_str()),
        (Some("active"), Some("order"), Some("routine"))
    );
    assert_eq!(request["subject"]["reference"], format!("Patient/{patient}").as_str());
    assert_eq!(request["requester"]["identifier"]["value"], "B86001");
    assert_eq!(request["performer"][0]["identifier"]["value"], "KNEE");
    let by_patient = fhir_get(fhir, &format!("/fhir/R4/ServiceRequest?patient=Patient/{patient}"), Some(&coordinator)).await;
    assert_eq!(by_patient.body["entry"][0]["resource"]["id"], referral.id.as_str(), "{}", by_patient.body);
    let revoked = fhir_get(fhir, &format!("/fhir/R4/ServiceRequest?patient={patient}&status=revoked"), Some(&coordinator)).await;
    assert_eq!((revoked.status, revoked.body.get("entry")), (200, None), "{}", revoked.body);
    for bad in ["status=draft", "patient=Patient/nobody", "requester=B86001", ""] {
        let answer = fhir_get(fhir, &format!("/fhir/R4/ServiceRequest?{bad}"), Some(&coordinator)).await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
    }

    // Book a free slot for the referral, then find the appointment by patient, day and place.
    let slots = fhir_get(fhir, &format!("/fhir/R4/Slot?schedule=Schedule/{}&status=free&_count=1", clinic.id), Some(&coordinator)).await;
    let slot = slots.body["entry"][0]["resource"].clone();
    let appointment = serde_json::json!({
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{ "reference": format!("Slot/{}", slot["id"].as_str().unwrap()) }],
        "participant": [{ "actor": { "reference": format!("Patient/{patient}") }, "status": "accepted" }],
        "basedOn": [{ "reference": format!("ServiceRequest/{}", referral.id) }],
    });
    let booked = fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[], Some(&appointment)).await;
    assert_eq!(booked.status, 201, "{}", booked.body);
    let id = booked.body["id"].as_str().unwrap().to_string();
    assert_eq!(booked.body["basedOn"][0]["reference"], format!("ServiceRequest/{}", referral.id).as_str());
    assert_eq!(booked.body["participant"][1]["actor"]["reference"], format!("Location/{}", clinic.location_id).as_str());
    // A conditional booking finds that one: nothing new is booked.
    let condition = format!("patient=Patient/{patient}&slot=Slot/{}&status=booked", slot["id"].as_str().unwrap());
    let again =
        fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[("If-None-Exist", &condition)], Some(&appointment)).await;
    assert_eq!((again.status, again.body["id"].as_str()), (200, Some(id.as_str())), "{}", again.body);
    let unsupported =
        fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[("If-None-Exist", "date=2030-01-01")], Some(&appointment))
            .await;
    assert_eq!(unsupported.status, 400, "{}", unsupported.body);
    let other = format!("patient=Patient/{}", uuid::Uuid::now_v7());
    let mismatch =
        fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[("If-None-Exist", &other)], Some(&appointment)).await;
    assert_eq!(mismatch.status, 400, "the condition names another patient: {}", mismatch.body);
    let mut bad_referral = appointment.clone();
    bad_referral["basedOn"][0]["reference"] = "ServiceRequest/not-an-id".into();
    let refused = fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[], Some(&bad_referral)).await;
    assert_eq!(refused.status, 400, "a basedOn that is no id is refused, not dropped: {}", refused.body);
    let mut two_slots = appointment.clone();
    two_slots["slot"].as_array_mut().unwrap().push(serde_json::json!({ "reference": format!("Slot/{}", uuid::Uuid::now_v7()) }));
    let refused = fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[], Some(&two_slots)).await;
    assert_eq!(refused.status, 400, "a second slot is refused, not dropped: {}", refused.body);
    let other_slot = format!("patient=Patient/{patient}&slot=Slot/{}", uuid::Uuid::now_v7());
    let refused =
        fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[("If-None-Exist", &other_slot)], Some(&appointment)).await;
    assert_eq!(refused.status, 400, "the condition names another slot: {}", refused.body);
    let day = slot["start"].as_str().unwrap()[..10].to_string();
    for query in [
        format!("patient=Patient/{patient}"),
        format!("actor=Patient/{patient}&status=booked"),
        format!("patient={patient}&date={day}"),
        format!("actor=Location/{}&date={day}", clinic.location_id),
    ] {
        let found = fhir_get(fhir, &format!("/fhir/R4/Appointment?{query}"), Some(&coordinator)).await;
        assert_eq!((found.status, found.body["entry"][0]["resource"]["id"].as_str()), (200, Some(id.as_str())), "{query}: {}", found.body);
    }
    // A second appointment three days on: a page of one on that day is filled from the pages after
    // the first (which holds the earlier appointment).
    let later_day = (chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d").unwrap() + chrono::Duration::days(3)).to_string();
    let later = fhir_get(
        fhir,
        &format!("/fhir/R4/Slot?schedule=Schedule/{}&status=free&start=ge{later_day}&_count=1", clinic.id),
        Some(&coordinator),
    )
    .await;
    let mut second = appointment.clone();
    second["slot"][0]["reference"] = format!("Slot/{}", later.body["entry"][0]["resource"]["id"].as_str().unwrap()).into();
    second.as_object_mut().unwrap().remove("basedOn");
    let second = fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[], Some(&second)).await;
    assert_eq!(second.status, 201, "{}", second.body);
    let on_later_day =
        fhir_get(fhir, &format!("/fhir/R4/Appointment?patient={patient}&_count=1&date={later_day}"), Some(&coordinator)).await;
    assert_eq!(on_later_day.body["entry"][0]["resource"]["id"], second.body["id"], "{}", on_later_day.body);
    for query in [format!("patient={patient}&status=cancelled"), format!("patient={patient}&date=2001-01-01")] {
        let found = fhir_get(fhir, &format!("/fhir/R4/Appointment?{query}"), Some(&coordinator)).await;
        assert_eq!((found.status, found.body.get("entry")), (200, None), "{query}: {}", found.body);
    }
    for bad in [
        format!("actor=Location/{}", clinic.location_id),
        "status=booked".into(),
        format!("patient={patient}&status=done"),
        format!("actor={patient}"),
        format!("actor=Location/{}&date={day}&_count=5", clinic.location_id),
    ] {
        assert_eq!(fhir_get(fhir, &format!("/fhir/R4/Appointment?{bad}"), Some(&coordinator)).await.status, 400, "{bad}");
    }
    let booked_referral = fhir_get(fhir, &format!("/fhir/R4/ServiceRequest/{}", referral.id), Some(&coordinator)).await;
    assert_eq!(booked_referral.body["status"], "active");

    // Another organisation's coordinator sees none of it.
    let elsewhere = token_for(Role::Coordinator, "RAE", Duration::from_secs(600));
    assert_eq!(fhir_get(fhir, &format!("/fhir/R4/ServiceRequest/{}", referral.id), Some(&elsewhere)).await.status, 404);
    let theirs = fhir_get(fhir, &format!("/fhir/R4/ServiceRequest?patient={patient}"), Some(&elsewhere)).await;
    assert!(theirs.status == 404 || theirs.body.get("entry").is_none(), "{}", theirs.body);
    let theirs = fhir_get(fhir, &format!("/fhir/R4/Appointment?patient={patient}"), Some(&elsewhere)).await;
    assert!(theirs.status == 404 || theirs.body.get("entry").is_none(), "{}", theirs.body);
    let theirs = fhir_get(fhir, &format!("/fhir/R4/Appointment?actor=Location/{}&date={day}", clinic.location_id), Some(&elsewhere)).await;
    assert!(theirs.status == 404 || theirs.body.get("entry").is_none(), "{}", theirs.body);

    // Cancel by PATCH; moving it by the same means is refused.
    let etag = booked.header("etag").unwrap().to_string();
    let path = format!("/fhir/R4/Appointment/{id}");
    let move_it = serde_json::json!([
        { "op": "replace", "path": "/status", "value": "cancelled" },
        { "op": "replace", "path": "/slot/0/reference", "value": format!("Slot/{}", uuid::Uuid::now_v7()) },
        { "op": "add", "path": "/cancelationReason", "value": { "coding": [
            { "system": "urn:pac:cancellation-reason", "code": "PATIENT_UNWELL" }, { "system": "urn:pac:cancelled-by", "code": "patient" }] } }
    ]);
    assert_eq!(fhir_patch(fhir, &path, &coordinator, &etag, &move_it).await.status, 422);
    let mut move_start = move_it.clone();
    move_start[1] = serde_json::json!({ "op": "replace", "path": "/start", "value": "2031-01-01T09:00:00.000Z" });
    let moved = fhir_patch(fhir, &path, &coordinator, &etag, &move_start).await;
    assert_eq!(moved.status, 422, "a changed start is refused, not dropped: {}", moved.body);
    assert!(moved.body["issue"][0]["diagnostics"].as_str().unwrap().contains("start"), "{}", moved.body);
    // Another appointment's body sent to this one's address: refused, this one left as it is.
    let mut elsewhere_body = booked.body.clone();
    elsewhere_body["id"] = uuid::Uuid::now_v7().to_string().into();
    elsewhere_body["status"] = "cancelled".into();
    elsewhere_body["cancelationReason"] = move_it[2]["value"].clone();
    let misdirected = fhir_send(fhir, "PUT", &path, Some(&coordinator), &[("If-Match", &etag)], Some(&elsewhere_body)).await;
    assert_eq!(misdirected.status, 400, "{}", misdirected.body);
    let cancel = serde_json::json!([move_it[0], move_it[2]]);
    let cancelled = fhir_patch(fhir, &path, &coordinator, &etag, &cancel).await;
    assert_eq!((cancelled.status, cancelled.body["status"].as_str()), (200, Some("cancelled")), "{}", cancelled.body);
    let after = fhir_get(fhir, &format!("/fhir/R4/ServiceRequest/{}", referral.id), Some(&coordinator)).await;
    assert_eq!(after.body["status"], "active", "awaiting booking again: {}", after.body);
    // The cancelled appointment is not the one a conditional booking looks for: the slot is booked anew.
    let condition = format!("patient=Patient/{patient}&slot=Slot/{}", slot["id"].as_str().unwrap());
    let rebooked =
        fhir_send(fhir, "POST", "/fhir/R4/Appointment", Some(&coordinator), &[("If-None-Exist", &condition)], Some(&appointment)).await;
    assert_eq!(rebooked.status, 201, "{}", rebooked.body);
    assert_ne!(rebooked.body["id"].as_str(), Some(id.as_str()));

    // Every one of those calls reached the gateway under the coordinator: audited.
    let admin = p.admin_pool().await;
    for action in ["GetReferral", "ListReferrals", "ListAppointments", "BookAppointment", "CancelAppointment", "GetAppointment"] {
        let audited: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE subject = 'coordinator-1' AND action LIKE '%' || $1")
                .bind(action)
                .fetch_one(&admin)
                .await
                .unwrap();
        assert!(audited > 0, "{action} audited");
    }
}
