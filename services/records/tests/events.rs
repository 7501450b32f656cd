//! The event stream: order, resume after a cursor, following new events, transactions that commit
//! out of id order, and restricted records in events.

use std::time::Duration;

use crate::common::*;
use pac_platform::caller::Actor;
use pac_platform::outbox::{Cursor, NewEvent, Outbox};
use pac_proto::records as pb;
use pac_proto::records::watch_events_response::Event;
use prost_types::FieldMask;
use tokio_stream::StreamExt;
use tonic::Code;

async fn next(stream: &mut tonic::Streaming<pb::WatchEventsResponse>) -> pb::WatchEventsResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("stream open")
        .expect("event, not error")
}

fn kind(event: &pb::WatchEventsResponse) -> &'static str {
    match event.event.as_ref().unwrap() {
        Event::PatientRegistered(_) => "PatientRegistered",
        Event::PatientUpdated(_) => "PatientUpdated",
        Event::PatientMerged(_) => "PatientMerged",
        Event::PatientUnmerged(_) => "PatientUnmerged",
    }
}

#[tokio::test]
async fn events_stream_in_order_resume_after_a_cursor_and_follow() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let a = client.register_patient(register(patient(40), "ev-a")).await.unwrap().into_inner().patient.unwrap();
    let b = client.register_patient(register(patient(41), "ev-b")).await.unwrap().into_inner().patient.unwrap();
    let mut change = a.clone();
    change.family_name = "Renamed".into();
    client
        .update_patient(pb::UpdatePatientRequest {
            patient: Some(change),
            update_mask: Some(FieldMask { paths: vec!["family_name".into()] }),
        })
        .await
        .unwrap();
    client
        .merge_patients(pb::MergePatientsRequest {
            survivor_id: a.id.clone(),
            merged_id: b.id.clone(),
            reason: "duplicate".into(),
            request_id: String::new(),
        })
        .await
        .unwrap();
    client
        .unmerge_patient(pb::UnmergePatientRequest { merged_id: b.id.clone(), reason: "not the same".into(), request_id: String::new() })
        .await
        .unwrap();

    let mut stream = client.watch_events(pb::WatchEventsRequest { after_cursor: String::new() }).await.unwrap().into_inner();
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(next(&mut stream).await);
    }
    let kinds: Vec<_> = events.iter().map(kind).collect();
    assert_eq!(kinds, ["PatientRegistered", "PatientRegistered", "PatientUpdated", "PatientMerged", "PatientUnmerged"]);
    let envelope = events[0].envelope.as_ref().unwrap();
    assert_eq!(envelope.aggregate_id, a.id);
    assert_eq!(envelope.request_id, "ev-a");
    assert_eq!(envelope.event_type, "PatientRegistered");
    if let Some(Event::PatientUpdated(updated)) = &events[2].event {
        assert_eq!(updated.changed_fields, ["family_name"]);
    }

    // Following: a new registration arrives on the open stream.
    let c = client.register_patient(register(patient(42), "")).await.unwrap().into_inner().patient.unwrap();
    let live = next(&mut stream).await;
    assert_eq!(live.envelope.as_ref().unwrap().aggregate_id, c.id);

    // Resume after the second event: exactly the rest, in the same order.
    let cursor = events[1].envelope.as_ref().unwrap().cursor.clone();
    let mut resumed = client.watch_events(pb::WatchEventsRequest { after_cursor: cursor }).await.unwrap().into_inner();
    let mut rest = Vec::new();
    for _ in 0..4 {
        rest.push(next(&mut resumed).await.envelope.unwrap().event_id);
    }
    let expected: Vec<_> =
        events[2..].iter().map(|e| e.envelope.clone().unwrap().event_id).chain([live.envelope.unwrap().event_id]).collect();
    assert_eq!(rest, expected);

    let status = client.watch_events(pb::WatchEventsRequest { after_cursor: "garbage".into() }).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "CURSOR_INVALID", Some("after_cursor"));
    server.stop().await;
}

#[tokio::test]
async fn an_event_committed_late_is_not_skipped() {
    let server = TestServer::start().await;
    let pool = pac_records::connect(&server.platform, &pac_records::RecordsConfig::development(server.addr)).await.unwrap();
    let outbox = Outbox::new("records");
    let actor = Actor { subject: "test".into(), role: "test".into(), organisation: "RR8".into() };
    let event = |id| NewEvent {
        event_type: "PatientUpdated",
        aggregate_id: id,
        organisation: "RR8",
        patient_ids: &[],
        payload: vec![],
        actor: &actor,
        request_id: None,
    };

    // Transaction A appends first (lower id) but commits last.
    let (first, second) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let mut a = pool.begin().await.unwrap();
    outbox.append(&mut a, event(first)).await.unwrap();
    let mut b = pool.begin().await.unwrap();
    outbox.append(&mut b, event(second)).await.unwrap();
    b.commit().await.unwrap();

    // While A is open, B is held back: a reader that moved past B would never see A.
    let visible = outbox.read_after(&pool, Cursor::default(), 100).await.unwrap();
    assert!(visible.is_empty(), "B was delivered while an older transaction was still open");

    a.commit().await.unwrap();
    // Delivery waits for every older transaction in the cluster (tests running beside this one
    // included), so allow a moment.
    let mut delivered = Vec::new();
    for _ in 0..100 {
        delivered = outbox.read_after(&pool, Cursor::default(), 100).await.unwrap();
        if delivered.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<_> = delivered.iter().map(|e| e.aggregate_id).collect();
    assert_eq!(ids, [first, second]);
    // And a reader resuming after A still gets B.
    let after_a = outbox.read_after(&pool, delivered[0].cursor, 100).await.unwrap();
    assert_eq!(after_a.iter().map(|e| e.aggregate_id).collect::<Vec<_>>(), [second]);
    server.stop().await;
}

#[tokio::test]
async fn restricted_patients_are_redacted_in_events() {
    let server = TestServer::start().await;
    let mut client = server.client();
    let mut input = patient(43);
    input.restricted = true;
    // Of the organisation the privileged caller acts for: a stream delivers only its events.
    input.organisation = "RR8".into();
    client.register_patient(register(input, "")).await.unwrap();
    let mut anonymous = client.watch_events(pb::WatchEventsRequest::default()).await.unwrap().into_inner();
    let Some(Event::PatientRegistered(registered)) = next(&mut anonymous).await.event else { panic!("not a registration") };
    let patient = registered.patient.unwrap();
    assert!(patient.contact_withheld && patient.address.is_none() && patient.phone.is_empty());

    let mut privileged = client.watch_events(server.privileged(pb::WatchEventsRequest::default())).await.unwrap().into_inner();
    let Some(Event::PatientRegistered(registered)) = next(&mut privileged).await.event else { panic!("not a registration") };
    assert!(registered.patient.unwrap().address.is_some());
    server.stop().await;
}
