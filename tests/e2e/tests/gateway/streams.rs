//! Event streams through the gateway with two organisations: each integration account receives
//! only its organisations' events from every stream, and every stream is in the audit trail when it
//! opens and when it closes, with the cursors, counts and patients it delivered.

use std::collections::BTreeSet;
use std::time::Duration;

use pac_e2e::gateway::{Platform, free_slots, knee_clinic, referred_patient, start};
use pac_gateway::auth::{Identity, mint_development};
use pac_gateway::policy::Role;
use pac_gateway::{DEVELOPMENT_ISSUER, DEVELOPMENT_TOKEN_KEY};
use pac_platform::testkit::{registration, with_token};
use pac_proto::access::access_client::AccessClient;
use pac_proto::common::EventEnvelope;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::referrals::referrals_client::ReferralsClient;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use pac_proto::{access, records, referrals as refs, scheduling as sched};
use tokio_stream::StreamExt;

fn integration(organisation: &str) -> String {
    let identity =
        Identity { subject: format!("engine-{organisation}"), role: Role::Integration, organisations: vec![organisation.into()] };
    mint_development(DEVELOPMENT_TOKEN_KEY.as_bytes(), DEVELOPMENT_ISSUER, "pac-gateway", &identity, Duration::from_secs(600))
}

fn coordinator_of(organisation: &str) -> String {
    let identity =
        Identity { subject: format!("coordinator-{organisation}"), role: Role::Coordinator, organisations: vec![organisation.into()] };
    mint_development(DEVELOPMENT_TOKEN_KEY.as_bytes(), DEVELOPMENT_ISSUER, "pac-gateway", &identity, Duration::from_secs(600))
}

/// Envelopes from a stream until it has been quiet for a second; then the stream is dropped.
async fn drain<T>(mut stream: tonic::Streaming<T>, envelope: impl Fn(&T) -> Option<EventEnvelope>) -> Vec<EventEnvelope> {
    let mut envelopes = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        envelopes.push(envelope(&message.expect("an event, not an error")).expect("every event has an envelope"));
    }
    envelopes
}

struct Delivered {
    records: Vec<EventEnvelope>,
    scheduling: Vec<EventEnvelope>,
    referrals: Vec<EventEnvelope>,
}

async fn watch_all(p: &Platform, token: &str) -> Delivered {
    let t = Some(token);
    let records = PatientRecordsClient::new(p.gateway.clone())
        .watch_events(with_token(records::WatchEventsRequest::default(), t))
        .await
        .unwrap()
        .into_inner();
    let scheduling = SchedulingClient::new(p.gateway.clone())
        .watch_events(with_token(sched::WatchEventsRequest::default(), t))
        .await
        .unwrap()
        .into_inner();
    let referrals = ReferralsClient::new(p.gateway.clone())
        .watch_events(with_token(refs::WatchEventsRequest::default(), t))
        .await
        .unwrap()
        .into_inner();
    Delivered {
        records: drain(records, |m: &records::WatchEventsResponse| m.envelope.clone()).await,
        scheduling: drain(scheduling, |m: &sched::WatchEventsResponse| m.envelope.clone()).await,
        referrals: drain(referrals, |m: &refs::WatchEventsResponse| m.envelope.clone()).await,
    }
}

fn patients(envelopes: &[EventEnvelope]) -> BTreeSet<String> {
    envelopes.iter().flat_map(|e| e.patient_ids.iter().cloned()).collect()
}

#[derive(Debug, sqlx::FromRow)]
struct StreamRecord {
    subject: String,
    action: String,
    outcome: String,
    patient_ids: Vec<String>,
    detail: String,
}

#[tokio::test]
async fn each_organisation_streams_only_its_own_events_and_every_stream_is_audited() {
    let p = start().await;
    // RR8: a patient referred, accepted and booked (events in all three services).
    let clinic = knee_clinic(&p).await;
    let (rr8_patient, referral) = referred_patient(&p, "Streamwell", true).await;
    let slot = free_slots(&p, &clinic, 1).await.remove(0);
    let booking = access::BookReferralAppointmentRequest {
        referral_id: referral.id.clone(),
        slot_id: slot.id,
        request_id: uuid::Uuid::now_v7().to_string(),
    };
    AccessClient::new(p.gateway.clone()).book_referral_appointment(with_token(booking, Some(&coordinator_of("RR8")))).await.unwrap();
    // RAE: a patient of its own, with a restricted record.
    let mut rae_registration = registration("Elsewhere");
    rae_registration.patient.as_mut().unwrap().restricted = true;
    rae_registration.patient.as_mut().unwrap().phone = "07700 900123".into();
    let rae_patient = PatientRecordsClient::new(p.gateway.clone())
        .register_patient(with_token(rae_registration, Some(&coordinator_of("RAE"))))
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap()
        .id;

    let rr8 = watch_all(&p, &integration("RR8")).await;
    let rae = watch_all(&p, &integration("RAE")).await;

    // Every event delivered is of the caller's organisation, and names only its patients.
    for (organisation, delivered) in [("RR8", &rr8), ("RAE", &rae)] {
        for envelope in delivered.records.iter().chain(&delivered.scheduling).chain(&delivered.referrals) {
            assert_eq!(envelope.organisation, organisation, "{organisation} received {envelope:?}");
        }
    }
    assert_eq!(patients(&rr8.records), BTreeSet::from([rr8_patient.clone()]));
    assert_eq!(patients(&rr8.scheduling), BTreeSet::from([rr8_patient.clone()]));
    assert_eq!(patients(&rr8.referrals), BTreeSet::from([rr8_patient.clone()]));
    assert!(!rr8.scheduling.is_empty() && rr8.referrals.len() >= 3, "RR8's booking and referral events: {:?}", rr8.referrals);
    assert_eq!(patients(&rae.records), BTreeSet::from([rae_patient.clone()]));
    assert!(rae.scheduling.is_empty() && rae.referrals.is_empty(), "RAE has no appointments or referrals");

    // The restricted record stays redacted on the integration account's stream.
    let mut stream = PatientRecordsClient::new(p.gateway.clone())
        .watch_events(with_token(records::WatchEventsRequest::default(), Some(&integration("RAE"))))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    let Some(records::watch_events_response::Event::PatientRegistered(registered)) = first.event else { panic!("a registration") };
    let patient = registered.patient.unwrap();
    assert!(patient.contact_withheld && patient.phone.is_empty() && patient.address.is_none(), "{patient:?}");
    drop(stream);

    // Seven streams: each opened and closed on the record, the closing record with what it delivered.
    let pool = p.admin_pool().await;
    let mut rows: Vec<StreamRecord> = Vec::new();
    for _ in 0..100 {
        rows = sqlx::query_as(
            "SELECT subject, action, outcome, patient_ids, detail FROM audit.events WHERE action LIKE '%/WatchEvents' ORDER BY occurred_at",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if rows.len() >= 14 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows.len(), 14, "{rows:#?}");
    let detail = |row: &StreamRecord| serde_json::from_str::<serde_json::Value>(&row.detail).unwrap();
    let opened: Vec<&StreamRecord> = rows.iter().filter(|r| detail(r)["stream"] == "opened").collect();
    let closed: Vec<&StreamRecord> = rows.iter().filter(|r| detail(r)["stream"] == "closed").collect();
    assert_eq!((opened.len(), closed.len()), (7, 7));
    for row in &opened {
        assert_eq!(row.outcome, "OK");
        let organisation = row.subject.strip_prefix("engine-").unwrap();
        assert_eq!(detail(row)["organisations"], serde_json::json!([organisation]));
        assert_eq!(detail(row)["after_cursor"], "");
    }
    for (subject, delivered) in [("engine-RR8", &rr8), ("engine-RAE", &rae)] {
        for (service, envelopes) in
            [("PatientRecords", &delivered.records), ("Scheduling", &delivered.scheduling), ("Referrals", &delivered.referrals)]
        {
            let row = closed
                .iter()
                .find(|r| r.subject == subject && r.action.contains(service))
                .unwrap_or_else(|| panic!("no closing record of {subject}'s {service} stream"));
            let d = detail(row);
            assert_eq!(row.outcome, "CANCELLED", "the client went away");
            assert_eq!(d["events"].as_u64(), Some(envelopes.len() as u64), "{subject} {service}");
            assert_eq!(d["patients"].as_u64(), Some(patients(envelopes).len() as u64));
            assert_eq!(row.patient_ids.iter().cloned().collect::<BTreeSet<_>>(), patients(envelopes));
            let (first, last) = (envelopes.first().map(|e| e.cursor.as_str()), envelopes.last().map(|e| e.cursor.as_str()));
            assert_eq!((d["first_cursor"].as_str(), d["last_cursor"].as_str()), (Some(first.unwrap_or("")), Some(last.unwrap_or(""))));
        }
    }
    // The gateway's own check of the chain still holds with the new records.
    let verification = pac_gateway::audit::verify(&pool, &[pac_gateway::audit::AuditKey::development()]).await.unwrap();
    assert!(verification.problems.is_empty(), "{:?}", verification.problems);
}

#[tokio::test]
async fn a_refused_stream_is_audited_once_with_its_outcome() {
    let p = start().await;
    let status = PatientRecordsClient::new(p.gateway.clone())
        .watch_events(with_token(records::WatchEventsRequest { after_cursor: "not-a-cursor".into() }, Some(&integration("RR8"))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let pool = p.admin_pool().await;
    let count = "SELECT count(*) FROM audit.events WHERE action LIKE '%/WatchEvents'";
    for _ in 0..100 {
        if sqlx::query_scalar::<_, i64>(count).fetch_one(&pool).await.unwrap() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more follows (an opening record would come with the closing one).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT outcome, detail FROM audit.events WHERE action LIKE '%/WatchEvents'").fetch_all(&pool).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "INVALID_ARGUMENT");
    let detail: serde_json::Value = serde_json::from_str(&rows[0].1).unwrap();
    assert_eq!(
        (detail["stream"].as_str(), detail["after_cursor"].as_str(), detail["events"].as_u64()),
        (Some("closed"), Some("not-a-cursor"), Some(0))
    );
}
