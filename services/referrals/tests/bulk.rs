//! `bulk::load_services`, `load_referrals` and `load_notes`: loaded referrals read back as stored,
//! their task counts follow their loaded tasks, and the worklists (store and API) find them as they
//! find referrals made through the API.

use std::time::Duration;

use chrono::Utc;
use pac_platform::Actor;
use pac_platform::testkit::TestDatabase;
use pac_proto::referrals as pb;
use pac_proto::referrals::referrals_client::ReferralsClient;
use pac_referrals::ReferralsConfig;
use pac_referrals::bulk;
use pac_referrals::domain::eligibility::{Priority, Rules};
use pac_referrals::domain::referral::{RebookReason, Status};
use pac_referrals::domain::rtt::{ClockEvent, Code, LaterDnaPolicy};
use pac_referrals::domain::worklist::Threshold;
use pac_referrals::model::{Note, Referral, ServiceEntry, Worklist};
use pac_referrals::referrals::NewReferral;
use pac_referrals::store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn service(code: &str) -> ServiceEntry {
    ServiceEntry {
        code: code.into(),
        name: format!("Service {code}"),
        specialty: "General".into(),
        rules: Rules::default(),
        target_wait_days: 42,
        // Two-week waits count as stuck after two working days awaiting triage.
        thresholds: vec![Threshold { status: "awaiting-triage".into(), priority: 3, working_days: 2 }],
        later_dna: LaterDnaPolicy::Rebook,
        created_at: pac_platform::now(),
        organisation: "RR8".into(),
    }
}

/// Referral `n`: received `n % 300` days ago; a mix of priorities and states as a worklist sees them.
fn referral(n: usize, services: &[ServiceEntry]) -> Referral {
    let service = &services[n % services.len()];
    let priority = [Priority::Routine, Priority::Urgent, Priority::TwoWeekWait][(n / 3) % 3];
    let received_at = pac_platform::now() - chrono::Duration::days((n % 300) as i64) - chrono::Duration::minutes(n as i64);
    let new = NewReferral {
        patient_id: Uuid::now_v7(),
        service_code: service.code.clone(),
        priority,
        referrer_organisation: "B86001".into(),
        referrer_clinician: "Dr Bulk".into(),
        source: "GP".into(),
        reason: format!("Referral {n}"),
        information: Vec::new(),
        received_at,
    };
    let mut referral = bulk::received(&new, service, pac_platform::now());
    match n % 5 {
        0 => {}
        1 => referral.enter(Status::AwaitingBooking, received_at, service),
        2 => {
            let appointment = Uuid::now_v7();
            referral.appointment_ids = vec![appointment];
            referral.current_appointment_id = Some(appointment);
            referral.enter(Status::Booked, received_at, service);
        }
        3 => {
            // Missed its appointment: awaiting booking again, for follow-up.
            let missed = Uuid::now_v7();
            referral.appointment_ids = vec![missed];
            referral.missed = vec![missed];
            referral.rebook_reason = Some(RebookReason::DidNotAttend);
            referral.dna_follow_up = true;
            referral.enter(Status::AwaitingBooking, received_at, service);
        }
        _ => {
            let on = referral.clock.started + chrono::Duration::days(60);
            referral.clock = referral.clock.apply(ClockEvent::Stop(Code::FirstTreatment), on, LaterDnaPolicy::Rebook).unwrap();
            referral.enter(Status::Completed, received_at, service);
        }
    }
    referral
}

fn task(referral: &Referral, team: &str) -> Note {
    Note {
        id: Uuid::now_v7(),
        referral_id: referral.id,
        task: true,
        text: "Call the patient back".into(),
        team: team.into(),
        due_date: Some(Utc::now().date_naive() + chrono::Duration::days(3)),
        completed_at: None,
        author: Actor { subject: "coordinator-1".into(), role: "coordinator".into(), organisation: "RR8".into() },
        created_at: pac_platform::now(),
    }
}

#[tokio::test]
async fn loaded_referrals_are_on_the_worklists_as_made_ones_are() {
    let db = TestDatabase::create().await;
    let platform = db.platform_config();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Nothing answers at these: the followers keep retrying, the worklists need neither.
    let config = ReferralsConfig::development(addr, "http://127.0.0.1:9".into(), "http://127.0.0.1:9".into());
    pac_referrals::migrate(&platform, &config).await.unwrap();
    let pool = pac_referrals::connect(&platform, &config).await.unwrap();

    let services = [service("ORTHO"), service("DERM"), service("CARDIO")];
    assert_eq!(bulk::load_services(&pool, &services).await.unwrap(), 3);
    assert_eq!(bulk::load_services(&pool, &services[..1]).await.unwrap(), 0, "a code already taken is left as it is");
    let count = bulk::REFERRALS_PER_STATEMENT * 2 + 250;
    let mut referrals: Vec<Referral> = (0..count).map(|n| referral(n, &services)).collect();
    assert_eq!(bulk::load_referrals(&pool, &referrals).await.unwrap(), count as u64);

    // Every 97th open referral has an unassigned task; every 89th a task for a team and a note.
    let mut notes = Vec::new();
    for (n, r) in referrals.iter_mut().enumerate().filter(|(_, r)| !r.status.is_terminal()) {
        if n % 97 == 0 {
            notes.push(task(r, ""));
            r.open_tasks += 1;
            r.unassigned_tasks += 1;
        }
        if n % 89 == 0 {
            notes.push(task(r, "Booking team"));
            notes.push(Note { task: false, due_date: None, team: String::new(), text: "Spoke to the GP".into(), ..task(r, "") });
            r.open_tasks += 1;
        }
    }
    assert_eq!(bulk::load_notes(&pool, &notes).await.unwrap(), notes.len() as u64);

    // Read back whole, task counts included.
    for n in [0, 1, 2, 3, 4, 97 * 5, 89 * 6, count - 1] {
        let stored = store::find_referral(&pool, referrals[n].id, None).await.unwrap().expect("a loaded referral");
        assert_eq!(format!("{stored:?}"), format!("{:?}", referrals[n]), "referral {n}");
    }
    // Referral 0 has an unassigned task, a team's task and a note.
    assert_eq!(store::notes_of(&pool, referrals[0].id).await.unwrap().len(), 3);

    // The worklists: awaiting triage soonest breach first, stuck two-week waits, unassigned tasks.
    let awaiting = Worklist { statuses: vec![Status::AwaitingTriage], service_code: Some("DERM".into()), ..Default::default() };
    let page = store::worklist(&pool, &awaiting, None, 20, None).await.unwrap();
    let mut expected: Vec<&Referral> =
        referrals.iter().filter(|r| r.status == Status::AwaitingTriage && r.service_code == "DERM").collect();
    expected.sort_by_key(|r| (r.clock.breach_date(), r.id));
    let first_twenty: Vec<Uuid> = expected.iter().take(20).map(|r| r.id).collect();
    assert_eq!(page.iter().map(|(r, _)| r.id).collect::<Vec<_>>(), first_twenty);
    let stuck = Worklist { statuses: vec![Status::AwaitingTriage], stuck_at: Some(Utc::now()), ..Default::default() };
    let stuck_ids: Vec<Uuid> = store::worklist(&pool, &stuck, None, 1000, None).await.unwrap().into_iter().map(|(r, _)| r.id).collect();
    let expected_stuck: Vec<Uuid> =
        referrals.iter().filter(|r| r.is_stuck(Utc::now()) && r.status == Status::AwaitingTriage).map(|r| r.id).collect();
    assert!(!expected_stuck.is_empty());
    assert_eq!(sorted(stuck_ids), sorted(expected_stuck));

    // Through the API.
    let shutdown = CancellationToken::new();
    tokio::spawn(pac_referrals::serve(platform.clone(), config, listener, shutdown.clone()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut client = ReferralsClient::new(channel);
    let listed = client
        .list_referrals(pb::ListReferralsRequest { unassigned_tasks: true, page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .referrals;
    let expected_unassigned: Vec<String> = referrals.iter().filter(|r| r.unassigned_tasks > 0).map(|r| r.id.to_string()).collect();
    assert_eq!(sorted(listed.iter().map(|r| r.id.clone()).collect()), sorted(expected_unassigned));
    let dna = client
        .list_referrals(pb::ListReferralsRequest { dna_follow_up: true, service_code: "ORTHO".into(), page_size: 5, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .referrals;
    assert_eq!(dna.len(), 5);
    assert!(dna.iter().all(|r| r.status == pb::ReferralStatus::AwaitingBooking as i32 && r.service_code == "ORTHO"));
    shutdown.cancel();
}

fn sorted<T: Ord>(mut values: Vec<T>) -> Vec<T> {
    values.sort();
    values
}
