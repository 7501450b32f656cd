//! Thousands of calls with random short deadlines: a caller that gives up never leaves a database
//! session inside a transaction, and the service answers normally afterwards.

use std::time::Duration;

use futures::StreamExt;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::scheduling as sched;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use rand::{Rng, SeedableRng};

use crate::common::{InProcess, clinic, register, registration, stuck_in_transaction};

const CALLS: u32 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_abandoned_at_random_deadlines_leave_no_session_idle_in_transaction() {
    let p = InProcess::start().await;
    let mut scheduling = SchedulingClient::new(p.scheduling.clone());
    let mut records = PatientRecordsClient::new(p.records.clone());
    let (_, slots) = clinic(&mut scheduling, 100).await;
    let patient = register(&mut records, 0).await;

    let outcomes = futures::stream::iter(0..CALLS)
        .map(|n| {
            let (mut scheduling, mut records) = (scheduling.clone(), records.clone());
            let (slot, patient) = (slots[n as usize % slots.len()].id.clone(), patient.clone());
            async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(n.into());
                let deadline =
                    Duration::from_micros(if n % 2 == 0 { rng.random_range(500..20_000) } else { rng.random_range(1_000..300_000) });
                match n % 3 {
                    0 => {
                        let mut request = tonic::Request::new(registration(n + 1, uuid::Uuid::now_v7().to_string()));
                        request.set_timeout(deadline);
                        records.register_patient(request).await.err().map(|s| (s.code(), s.message().to_string()))
                    }
                    1 => {
                        let mut request = tonic::Request::new(sched::HoldSlotRequest {
                            slot_id: slot,
                            patient_id: patient,
                            ttl_seconds: 60,
                            request_id: uuid::Uuid::now_v7().to_string(),
                        });
                        request.set_timeout(deadline);
                        scheduling.hold_slot(request).await.err().map(|s| (s.code(), s.message().to_string()))
                    }
                    _ => {
                        let mut request = tonic::Request::new(pac_proto::records::SearchPatientsRequest {
                            name: "fault tester".into(),
                            ..Default::default()
                        });
                        request.set_timeout(deadline);
                        records.search_patients(request).await.err().map(|s| (s.code(), s.message().to_string()))
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let code = |c: &Option<(tonic::Code, String)>| c.as_ref().map(|(code, _)| *code);
    let expired = outcomes.iter().filter(|c| matches!(code(c), Some(tonic::Code::DeadlineExceeded | tonic::Code::Cancelled))).count();
    let internal: Vec<_> = outcomes.iter().filter(|c| matches!(code(c), Some(tonic::Code::Internal | tonic::Code::Unknown))).collect();
    let internal_count = internal.len();
    eprintln!(
        "{CALLS} calls with deadlines of 0.5–20 ms and 1–300 ms: {expired} ended at their deadline, {internal_count} INTERNAL/UNKNOWN"
    );
    assert!(expired > CALLS as usize / 10, "the deadlines were too long to test anything: {expired}");
    assert!(internal.is_empty(), "a deadline is never INTERNAL: {:?}", &internal[..internal_count.min(5)]);

    // A unit of work already started finishes on its own task (the backlog of abandoned calls takes
    // a moment to drain); then no session may sit inside a transaction.
    let admin = p.db.admin_pool().await;
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let left = stuck_in_transaction(&admin, &p.db.name).await;
    assert!(left.is_empty(), "sessions left idle in a transaction: {left:?}");
    // And every pool still answers.
    register(&mut records, CALLS + 1).await;
    let book = sched::BookAppointmentRequest {
        target: Some(sched::book_appointment_request::Target::SlotId(slots[1].id.clone())),
        patient_id: register(&mut records, CALLS + 2).await,
        ..Default::default()
    };
    scheduling.book_appointment(book).await.expect("a booking after the storm");
}

/// A caller that abandons hundreds of calls at once (an engine whose timeouts all fire together)
/// keeps its connection: the server does not take the cancellations for an attack and close it
/// under the caller's other calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_abandoned_calls_does_not_close_the_callers_connection() {
    let p = InProcess::start().await;
    let mut records = PatientRecordsClient::new(p.records.clone());
    register(&mut records, 0).await;
    for round in 0..5 {
        let outcomes = futures::stream::iter(0..400u32)
            .map(|n| {
                let mut records = records.clone();
                async move {
                    let mut request = tonic::Request::new(pac_proto::records::SearchPatientsRequest {
                        name: "fault tester".into(),
                        ..Default::default()
                    });
                    request.set_timeout(Duration::from_micros(200 + u64::from(n % 5) * 100));
                    records.search_patients(request).await.err().map(|s| (s.code(), s.message().to_string()))
                }
            })
            .buffer_unordered(400)
            .collect::<Vec<_>>()
            .await;
        let broken: Vec<_> =
            outcomes.iter().flatten().filter(|(code, _)| !matches!(code, tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)).collect();
        assert!(
            broken.is_empty(),
            "round {round}: {} calls failed otherwise than at their deadline, e.g. {:?}",
            broken.len(),
            broken.first()
        );
        register(&mut records, round + 1).await;
    }
}
