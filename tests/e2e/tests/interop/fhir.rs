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
    assert_eq!(none.body["total"], 0, "combined parameters must all match");

    // Another organisation's coordinator: not found, and no search hit.
    let elsewhere = token_for(Role::Coordinator, "RAE", Duration::from_secs(600));
    assert_eq!(fhir_get(fhir, &format!("/fhir/R4/Patient/{}", registered.id), Some(&elsewhere)).await.status, 404);
    let search = fhir_get(fhir, &format!("/fhir/R4/Patient?identifier={NHS}"), Some(&elsewhere)).await;
    assert_eq!(search.body["total"], 0);

    // Refusals are OperationOutcomes with the HTTP status of the gateway's answer.
    let cases = [
        (format!("/fhir/R4/Patient/{}", registered.id), None, 401, "login"),
        ("/fhir/R4/Patient?name=smith".to_string(), Some(coordinator.as_str()), 400, "invalid"),
        ("/fhir/R4/Patient?birthdate=ge1980-01-01".to_string(), Some(coordinator.as_str()), 400, "invalid"),
        ("/fhir/R4/Patient/not-an-id".to_string(), Some(coordinator.as_str()), 400, "invalid"),
        ("/fhir/R4/Encounter".to_string(), Some(coordinator.as_str()), 400, "not-supported"),
    ];
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
