//! The audit trail under a mixed workload: every call to patient data and every refusal has exactly
//! one record (joined by request id), the chain verifies, and tampering is found.

use std::collections::HashMap;
use std::time::Duration;

use pac_e2e::gateway::{Platform, knee_clinic, referred_patient, start_with, token, wait_for_audit};
use pac_gateway::policy::Role;
use pac_platform::db::{ServiceSchema, service_connect_options};
use pac_platform::testkit::{registration, with_token};
use pac_proto::access::access_client::AccessClient;
use pac_proto::audit as audit_pb;
use pac_proto::audit::audit_trail_client::AuditTrailClient;
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::scheduling as sched;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use sqlx::ConnectOptions;

/// What one call of the workload should leave in the trail.
struct Expect {
    audited: bool,
    outcome: &'static str,
    patient: Option<String>,
}

fn tagged<T>(message: T, token: Option<&str>, request_id: &str) -> tonic::Request<T> {
    let mut request = with_token(message, token);
    request.metadata_mut().insert("x-request-id", request_id.parse().unwrap());
    request
}

/// A number spelt in letters (names hold no digits).
fn letters(n: usize) -> String {
    n.to_string().bytes().map(|d| char::from(b'a' + d - b'0')).collect()
}

async fn workload(p: &Platform) -> HashMap<String, Expect> {
    let clinic = knee_clinic(p).await;
    let (referred, _) = referred_patient(p, "Referred", true).await;
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let clinician = token(Role::Clinician, Duration::from_secs(600));
    let auditor = token(Role::Auditor, Duration::from_secs(600));
    let mut records = PatientRecordsClient::new(p.gateway.clone());
    let mut scheduling = SchedulingClient::new(p.gateway.clone());
    let mut access = AccessClient::new(p.gateway.clone());
    let mut trail = AuditTrailClient::new(p.gateway.clone());
    let mut expected = HashMap::new();
    let mut patients = Vec::new();
    for i in 0..1_100 {
        let id = format!("wl-{i}");
        let expect = match i % 11 {
            // Registrations (patient data).
            0 | 1 => {
                let outcome =
                    records.register_patient(tagged(registration(&format!("Audit{}", letters(i))), Some(&coordinator), &id)).await;
                let patient = outcome.unwrap().into_inner().patient.unwrap().id;
                patients.push(patient.clone());
                Expect { audited: true, outcome: "OK", patient: Some(patient) }
            }
            // Reads of a known patient (patient data).
            2..=4 => {
                let patient = patients[i % patients.len()].clone();
                records.get_patient(tagged(records_pb::GetPatientRequest { id: patient.clone() }, Some(&clinician), &id)).await.unwrap();
                Expect { audited: true, outcome: "OK", patient: Some(patient) }
            }
            // A read of nobody: still an access attempt.
            5 => {
                let missing = records_pb::GetPatientRequest { id: uuid::Uuid::now_v7().to_string() };
                let status = records.get_patient(tagged(missing, Some(&clinician), &id)).await.unwrap_err();
                assert_eq!(status.code(), tonic::Code::NotFound);
                Expect { audited: true, outcome: "NOT_FOUND", patient: None }
            }
            // The directory: not patient data, not audited.
            6 => {
                let search = sched::SearchSlotsRequest {
                    target: Some(sched::search_slots_request::Target::ClinicId(clinic.id.clone())),
                    page_size: 5,
                    ..Default::default()
                };
                scheduling.search_slots(tagged(search, Some(&coordinator), &id)).await.unwrap();
                Expect { audited: false, outcome: "", patient: None }
            }
            // The composite journey (patient data).
            7 => {
                let request = pac_proto::access::GetPatientJourneyRequest { patient_id: referred.clone() };
                access.get_patient_journey(tagged(request, Some(&coordinator), &id)).await.unwrap();
                Expect { audited: true, outcome: "OK", patient: Some(referred.clone()) }
            }
            // Refused: a clinician may not register; no token at all.
            8 => {
                let status = records.register_patient(tagged(registration("Refused"), Some(&clinician), &id)).await.unwrap_err();
                assert_eq!(status.code(), tonic::Code::PermissionDenied);
                Expect { audited: true, outcome: "PERMISSION_DENIED", patient: None }
            }
            9 => {
                let status =
                    records.get_patient(tagged(records_pb::GetPatientRequest { id: referred.clone() }, None, &id)).await.unwrap_err();
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
                // Counted with the other refusals from this address (below), not one record each.
                Expect { audited: false, outcome: "UNAUTHENTICATED", patient: None }
            }
            // An auditor reading a patient's trail is itself recorded.
            _ => {
                let request = audit_pb::ListAuditEventsRequest { patient_id: referred.clone(), page_size: 10, ..Default::default() };
                trail.list_audit_events(tagged(request, Some(&auditor), &id)).await.unwrap();
                Expect { audited: true, outcome: "OK", patient: Some(referred.clone()) }
            }
        };
        expected.insert(id, expect);
    }
    expected
}

#[tokio::test]
async fn every_patient_data_call_and_refusal_has_exactly_one_record() {
    let p = start_with(|c| c.limits.per_second = 1e6).await;
    let expected = workload(&p).await;
    let audited = expected.values().filter(|e| e.audited).count();
    assert!(expected.len() >= 1_000 && audited >= 900, "{} calls, {audited} audited", expected.len());

    let pool = p.admin_pool().await;
    let mut rows: Vec<(String, String, Vec<String>, i64)> = Vec::new();
    for _ in 0..200 {
        rows = sqlx::query_as(
            "SELECT request_id, outcome, patient_ids, count(*) OVER (PARTITION BY request_id) \
             FROM audit.events WHERE request_id LIKE 'wl-%'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if rows.len() >= audited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by_request: HashMap<&str, (&str, &Vec<String>, i64)> =
        rows.iter().map(|(id, outcome, patients, n)| (id.as_str(), (outcome.as_str(), patients, *n))).collect();
    for (id, expect) in &expected {
        match by_request.get(id.as_str()) {
            None => assert!(!expect.audited, "{id}: no audit record"),
            Some((outcome, patients, n)) => {
                assert!(expect.audited, "{id}: recorded but not patient data");
                assert_eq!(*n, 1, "{id}: exactly one record");
                assert_eq!(*outcome, expect.outcome, "{id}");
                if let Some(patient) = &expect.patient {
                    assert!(patients.contains(patient), "{id}: names its patient");
                }
            }
        }
    }
    assert_eq!(rows.len(), audited, "nothing recorded beyond the calls");

    // Every call without a token is counted, in aggregate records.
    let unauthenticated = expected.values().filter(|e| e.outcome == "UNAUTHENTICATED").count() as i64;
    let key = (pac_gateway::refusals::ACTION.to_string(), "UNAUTHENTICATED".to_string());
    let mut counted = None;
    for _ in 0..100 {
        counted = wait_for_audit(&pool, 0).await.get(&key).copied();
        if counted >= Some(unauthenticated) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, Some(unauthenticated));

    let verification = pac_gateway::audit::verify(&pool, &[pac_gateway::audit::AuditKey::development()]).await.unwrap();
    assert!(verification.problems.is_empty(), "{:?}", verification.problems);
    assert!(verification.records >= audited as u64);

    // Auditors read it by patient, newest first, paged.
    let auditor = token(Role::Auditor, Duration::from_secs(600));
    let mut trail = AuditTrailClient::new(p.gateway.clone());
    let patient = expected.get("wl-0").unwrap().patient.clone().unwrap();
    let page = trail
        .list_audit_events(with_token(
            audit_pb::ListAuditEventsRequest { patient_id: patient.clone(), page_size: 2, ..Default::default() },
            Some(&auditor),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 2);
    assert!(page.events.iter().all(|e| e.patient_ids.contains(&patient)));
    assert!(page.events[0].occur_time.unwrap().seconds >= page.events[1].occur_time.unwrap().seconds);
    let rest = trail
        .list_audit_events(with_token(
            audit_pb::ListAuditEventsRequest {
                patient_id: patient.clone(),
                page_size: 100,
                page_token: page.next_page_token,
                ..Default::default()
            },
            Some(&auditor),
        ))
        .await
        .unwrap()
        .into_inner();
    let first_page: Vec<_> = page.events.iter().map(|e| (e.writer.clone(), e.sequence)).collect();
    assert!(rest.events.iter().all(|e| !first_page.contains(&(e.writer.clone(), e.sequence))), "pages do not overlap");
    let by_actor = trail
        .list_audit_events(with_token(
            audit_pb::ListAuditEventsRequest { actor_subject: "clinician-1".into(), ..Default::default() },
            Some(&auditor),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!by_actor.events.is_empty() && by_actor.events.iter().all(|e| e.actor.as_ref().unwrap().subject == "clinician-1"));
    let bad = trail
        .list_audit_events(with_token(
            audit_pb::ListAuditEventsRequest { patient_id: "x".into(), page_size: -1, ..Default::default() },
            Some(&auditor),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // Only auditors read it.
    let refused = trail
        .list_audit_events(with_token(audit_pb::ListAuditEventsRequest::default(), Some(&token(Role::Admin, Duration::from_secs(60)))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn no_role_can_change_the_trail_and_tampering_is_found() {
    let p = start_with(|_| {}).await;
    knee_clinic(&p).await;
    referred_patient(&p, "Tamper", false).await;
    referred_patient(&p, "Tamper", false).await;
    let pool = p.admin_pool().await;
    for _ in 0..100 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.events").fetch_one(&pool).await.unwrap();
        if n >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pac_gateway::audit::verify(&pool, &[pac_gateway::audit::AuditKey::development()]).await.unwrap().problems.is_empty());

    // Every service role, and the gateway's own: neither change nor removal.
    let platform = p.db.platform_config();
    for role in ["pac_records", "pac_scheduling", "pac_referrals", "pac_gateway"] {
        let options = service_connect_options(&platform.db, ServiceSchema::new("audit", role), None).unwrap();
        let mut connection = options.connect().await.unwrap();
        for statement in ["UPDATE audit.events SET outcome = 'OK'", "DELETE FROM audit.events", "TRUNCATE audit.events"] {
            let refused = sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut connection).await.unwrap_err();
            let code = refused.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
            assert_eq!(code.as_deref(), Some("42501"), "{role}: {statement}: {refused}");
        }
    }
    // Not even the administrator, while the trigger stands.
    let refused = sqlx::query("UPDATE audit.events SET outcome = 'OK'").execute(&pool).await.unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");

    // Someone with the power to drop the guard changes one record and removes another: found.
    sqlx::query("ALTER TABLE audit.events DISABLE TRIGGER events_append_only").execute(&pool).await.unwrap();
    sqlx::query("UPDATE audit.events SET outcome = 'OK', subject = 'someone' WHERE sequence = 1").execute(&pool).await.unwrap();
    let verification = pac_gateway::audit::verify(&pool, &[pac_gateway::audit::AuditKey::development()]).await.unwrap();
    assert!(verification.problems.iter().any(|p| p.contains("#1: contents do not match its signature")), "{:?}", verification.problems);
    sqlx::query("DELETE FROM audit.events WHERE sequence = 3").execute(&pool).await.unwrap();
    let verification = pac_gateway::audit::verify(&pool, &[pac_gateway::audit::AuditKey::development()]).await.unwrap();
    assert!(verification.problems.iter().any(|p| p.contains("records missing")), "{:?}", verification.problems);
}

#[tokio::test]
async fn a_call_without_a_request_id_is_given_a_time_ordered_one_answered_and_audited() {
    let p = start_with(|_| {}).await;
    knee_clinic(&p).await;
    let (patient, _) = referred_patient(&p, "Requested", false).await;
    let coordinator = token(Role::Coordinator, Duration::from_secs(60));
    let mut records = PatientRecordsClient::new(p.gateway.clone());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let request = with_token(records_pb::GetPatientRequest { id: patient.clone() }, Some(&coordinator));
        let answered = records.get_patient(request).await.unwrap();
        let id = answered.metadata().get("x-request-id").expect("a request id is answered").to_str().unwrap().to_string();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7, "{id}");
        ids.push(id);
    }
    assert!(ids[0] < ids[1], "made in order, they sort in order: {ids:?}");
    // A caller's own id is kept.
    let answered =
        records.get_patient(tagged(records_pb::GetPatientRequest { id: patient.clone() }, Some(&coordinator), "caller-7")).await.unwrap();
    assert_eq!(answered.metadata().get("x-request-id").unwrap(), "caller-7");
    ids.push("caller-7".into());
    let pool = p.admin_pool().await;
    for id in &ids {
        let mut stored = 0i64;
        for _ in 0..100 {
            stored = sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE request_id = $1 AND $2 = ANY(patient_ids)")
                .bind(id)
                .bind(&patient)
                .fetch_one(&pool)
                .await
                .unwrap();
            if stored > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(stored, 1, "{id}");
    }
}

#[tokio::test]
async fn the_database_refuses_a_record_whose_hash_is_not_64_lowercase_hex_digits() {
    let p = start_with(|_| {}).await;
    let pool = p.admin_pool().await;
    let good = "0123456789abcdef".repeat(4);
    let insert = |sequence: i64, previous: String, hash: String| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO audit.events (writer, sequence, occurred_at, subject, role, organisation, action, outcome, \
                                           request_id, previous_hash, hash) \
                 VALUES ('w', $1, now(), 's', 'coordinator', 'RR8', '/a', 'OK', 'r', $2, $3)",
            )
            .bind(sequence)
            .bind(previous)
            .bind(hash)
            .execute(&pool)
            .await
        }
    };
    let bad = [good[1..].to_string(), format!("{good}0"), good.to_uppercase(), "é".repeat(32), format!("{}g", &good[1..])];
    for (n, value) in bad.iter().enumerate() {
        for (previous, hash) in [(value.clone(), good.clone()), (good.clone(), value.clone())] {
            let refused = insert(n as i64 + 1, previous, hash).await.unwrap_err();
            let code = refused.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
            assert_eq!(code.as_deref(), Some("23514"), "{value:?}: {refused}");
        }
    }
    insert(1, good.clone(), good).await.expect("64 lowercase hex digits are taken");
}

#[tokio::test]
async fn records_are_stored_exactly_whatever_characters_they_hold() {
    let p = start_with(|_| {}).await;
    let pool = p.admin_pool().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (log, writer) =
        pac_gateway::audit::start(pool.clone(), stop.clone(), pac_gateway::audit::AuditKey::development(), Duration::from_secs(10));
    let awkward = "tab\there \\ back\\slash\nline \"quoted\" {braces},comma é \r end";
    for n in 0..3 {
        let entry = pac_gateway::audit::Entry {
            subject: format!("{awkward}#{n}"),
            role: "coordinator".into(),
            organisation: "RR8".into(),
            organisations: vec!["RR8".into(), awkward.into(), "NULL".into()],
            action: "/pac.records.v1.PatientRecords/GetPatient".into(),
            patient_ids: vec![awkward.into(), "\\N".into(), "".into(), "NULL".into()],
            outcome: "OK".into(),
            reason: awkward.into(),
            request_id: format!("awkward-{n}"),
            trace_id: String::new(),
            detail: format!("{{\"note\": \"{}\"}}", awkward.escape_default()),
        };
        log.reserve().expect("room in the queue").record(entry);
    }
    stop.cancel();
    // A batch the database refused would be retried for ever.
    tokio::time::timeout(Duration::from_secs(20), writer).await.expect("the writer stored every record and stopped").unwrap();
    for n in 0..3 {
        let query = pac_gateway::audit::Query { subject: Some(format!("{awkward}#{n}")), limit: 10, ..Default::default() };
        let stored = pac_gateway::audit::list(&pool, &query).await.unwrap();
        assert_eq!(stored.len(), 1, "#{n}");
        assert_eq!(stored[0].patient_ids, vec![awkward.to_string(), "\\N".into(), "".into(), "NULL".into()]);
        assert_eq!((stored[0].reason.as_str(), stored[0].trace_id.as_str()), (awkward, ""));
        assert_eq!(stored[0].detail, format!("{{\"note\": \"{}\"}}", awkward.escape_default()));
        assert_eq!(stored[0].organisations, vec!["RR8".to_string(), awkward.into(), "NULL".into()]);
    }
    let verification = pac_gateway::audit::verify(&pool, &[pac_gateway::audit::AuditKey::development()]).await.unwrap();
    assert!(verification.problems.is_empty() && verification.records >= 3, "{verification:?}");
}

/// Found: 60 BookAppointment calls cancelled by their client after 1–8 ms created 60 appointments
/// and 23 audit records. Every call that reaches a service is recorded, whatever its caller does:
/// one cancelled before the answer's headers as CANCELLED, each with its request id. 1,000 calls,
/// each dropped by its client at a random point (before it is sent, before the answer, while it is
/// read, or never).
#[tokio::test]
async fn calls_their_callers_cancel_are_audited_all_the_same() {
    const CALLS: usize = 1_000;
    let p = start_with(|_| {}).await;
    let clinic = knee_clinic(&p).await;
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let (patient_id, _) = referred_patient(&p, "Cancelled", false).await;
    let mut slots = Vec::new();
    let mut page_token = String::new();
    while slots.len() < CALLS {
        let search = sched::SearchSlotsRequest {
            target: Some(sched::search_slots_request::Target::ClinicId(clinic.id.clone())),
            page_size: 100,
            page_token,
            ..Default::default()
        };
        let page =
            SchedulingClient::new(p.gateway.clone()).search_slots(with_token(search, Some(&coordinator))).await.unwrap().into_inner();
        slots.extend(page.slots);
        page_token = page.next_page_token;
        assert!(!page_token.is_empty() || slots.len() >= CALLS, "{} free slots", slots.len());
    }
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("seed {seed}");
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut sent = Vec::new();
    for slot in slots.iter().take(CALLS) {
        let request_id = uuid::Uuid::now_v7().to_string();
        let booking = sched::BookAppointmentRequest {
            target: Some(sched::book_appointment_request::Target::SlotId(slot.id.clone())),
            patient_id: patient_id.clone(),
            referral_id: String::new(),
            request_id: request_id.clone(),
        };
        let mut client = SchedulingClient::new(p.gateway.clone());
        let call = client.book_appointment(tagged(booking, Some(&coordinator), &request_id));
        // Dropped at a random moment up to 12 ms (the client resets the call), or let finish.
        let wait = Duration::from_micros(random() % 12_000);
        if random() % 10 == 0 {
            let _ = call.await;
        } else {
            let _ = tokio::time::timeout(wait, call).await;
        }
        sent.push(request_id);
    }
    // The bookings the service made are each audited, under their request id.
    let admin = p.admin_pool().await;
    let mut booked: Vec<String> = Vec::new();
    let mut audited: HashMap<String, String> = HashMap::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        booked = sqlx::query_scalar(
            "SELECT o.request_id FROM scheduling.outbox o JOIN scheduling.appointments a ON a.id = o.aggregate_id \
             WHERE o.event_type = 'AppointmentBooked' AND a.patient_id = $1::uuid",
        )
        .bind(&patient_id)
        .fetch_all(&admin)
        .await
        .unwrap();
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT request_id, outcome FROM audit.events WHERE action = '/pac.scheduling.v1.Scheduling/BookAppointment'")
                .fetch_all(&admin)
                .await
                .unwrap();
        audited = rows.into_iter().collect();
        if !booked.is_empty() && booked.iter().all(|id| audited.contains_key(id)) {
            break;
        }
    }
    admin.close().await;
    let missing: Vec<&String> = booked.iter().filter(|id| !audited.contains_key(*id)).collect();
    let cancelled = audited.values().filter(|o| *o == "CANCELLED").count();
    println!("{} sent, {} booked, {} audited ({cancelled} CANCELLED)", sent.len(), booked.len(), audited.len());
    assert!(!booked.is_empty(), "no booking reached the service");
    assert!(missing.is_empty(), "{} of {} bookings have no audit record", missing.len(), booked.len());
    assert!(cancelled > 0, "no call was cancelled before its answer");
    assert!(audited.keys().all(|id| sent.contains(id)));
}

/// Found by an attack: an RR8 auditor listed another organisation's events, subjects and patient
/// ids. An auditor reads the records of calls by callers acting for its organisations (the only
/// calls that can touch their patients); the whole trail is a platform auditor's, a separate role.
#[tokio::test]
async fn an_auditor_reads_only_its_organisations_records_and_a_platform_auditor_all() {
    use pac_gateway::auth::{Identity, mint_development};
    use pac_gateway::{DEVELOPMENT_ISSUER, DEVELOPMENT_TOKEN_KEY};
    let p = start_with(|_| {}).await;
    let as_ = |subject: &str, role: Role, orgs: &[&str]| {
        let identity = Identity { subject: subject.into(), role, organisations: orgs.iter().map(|o| o.to_string()).collect() };
        mint_development(DEVELOPMENT_TOKEN_KEY.as_bytes(), DEVELOPMENT_ISSUER, "pac-gateway", &identity, Duration::from_secs(600))
    };
    let mut records = PatientRecordsClient::new(p.gateway.clone());
    let mut registered = HashMap::new();
    for (subject, orgs) in [("leeds-1", &["RR8"][..]), ("york-1", &["RCB"][..]), ("both-1", &["RCB", "RR8"][..])] {
        let registration = registration("Audited");
        let patient = records.register_patient(with_token(registration, Some(&as_(subject, Role::Coordinator, orgs)))).await.unwrap();
        registered.insert(subject, patient.into_inner().patient.unwrap().id);
    }
    // A refusal of a caller with no valid token belongs to no organisation.
    let _ = records.get_patient(with_token(records_pb::GetPatientRequest { id: registered["leeds-1"].clone() }, None)).await;
    wait_for_audit(&p.admin_pool().await, 1).await;

    let mut trail = AuditTrailClient::new(p.gateway.clone());
    let mut list = async |token: &str, patient_id: &str| {
        let request = audit_pb::ListAuditEventsRequest { patient_id: patient_id.into(), page_size: 500, ..Default::default() };
        let events = trail.list_audit_events(with_token(request, Some(token))).await.unwrap().into_inner().events;
        events
            .into_iter()
            .filter(|e| e.action.ends_with("/RegisterPatient") || e.outcome == "UNAUTHENTICATED")
            .map(|e| e.actor.unwrap().subject)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let leeds_auditor = as_("leeds-auditor", Role::Auditor, &["RR8"]);
    let york_auditor = as_("york-auditor", Role::Auditor, &["RCB"]);
    let platform_auditor = as_("platform-auditor", Role::PlatformAuditor, &["RR8"]);
    let subjects = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(list(&leeds_auditor, "").await, subjects(&["both-1", "leeds-1"]));
    assert_eq!(list(&york_auditor, "").await, subjects(&["both-1", "york-1"]));
    assert_eq!(list(&platform_auditor, "").await, subjects(&["", "both-1", "leeds-1", "york-1"]));
    // By patient: York's patient is nothing to Leeds' auditor.
    assert!(list(&leeds_auditor, &registered["york-1"]).await.is_empty());
    assert_eq!(list(&york_auditor, &registered["york-1"]).await, subjects(&["york-1"]));
}

/// Found by an attack: logged in as the gateway's own role (which may add rows), a new writer with
/// three fabricated events ("read patient X") verified as intact, and removing the last events of a
/// chain went unnoticed. Records and checkpoints are signed with a key the database does not hold;
/// checkpoints show where each chain reached.
#[tokio::test]
async fn forged_records_and_a_truncated_chain_are_found() {
    use pac_gateway::audit::{AuditKey, Record, verify};
    let p = start_with(|c| c.audit_checkpoint_every = Duration::from_millis(50)).await;
    knee_clinic(&p).await;
    let (patient, _) = referred_patient(&p, "Forged", false).await;
    let pool = p.admin_pool().await;
    let key = [AuditKey::development()];
    // Wait until the gateway's chain is covered by a checkpoint to its end.
    let mut covered = false;
    for _ in 0..100 {
        let (last, checkpointed): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT max(sequence) FROM audit.events), (SELECT max(sequence) FROM audit.checkpoints WHERE kind = 'interval')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if last.is_some() && last == checkpointed {
            covered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(covered, "the writer checkpoints its chain");
    let verified = verify(&pool, &key).await.unwrap();
    assert!(verified.problems.is_empty() && verified.checkpoints > 0, "{verified:?}");

    // As the gateway's role: a new writer of three events, chained with SHA-256 as before, and one
    // claiming the real key.
    let platform = p.db.platform_config();
    let options = service_connect_options(&platform.db, ServiceSchema::new("audit", "pac_gateway"), None).unwrap();
    let mut gateway_role = options.connect().await.unwrap();
    let mut previous = pac_gateway::audit::GENESIS.to_string();
    for sequence in 1..=3 {
        let mut forged = Record {
            writer: "gateway-forged".into(),
            sequence,
            occurred_at: chrono::Utc::now(),
            subject: "coordinator-1".into(),
            role: "coordinator".into(),
            organisation: "RR8".into(),
            action: "/pac.records.v1.PatientRecords/GetPatient".into(),
            patient_ids: vec![patient.clone()],
            outcome: "OK".into(),
            reason: String::new(),
            request_id: format!("forged-{sequence}"),
            trace_id: String::new(),
            detail: String::new(),
            organisations: vec!["RR8".into()],
            key_id: if sequence == 3 { key[0].id().to_string() } else { String::new() },
            previous_hash: previous.clone(),
            hash: String::new(),
        };
        forged.hash = match sequence {
            3 => AuditKey::new(b"a guess at the key, thirty-two bytes").sign(&forged.canonical()),
            _ => forged.compute_hash(),
        };
        previous = forged.hash.clone();
        sqlx::query(
            "INSERT INTO audit.events (writer, sequence, occurred_at, subject, role, organisation, action, patient_ids, outcome, \
             reason, request_id, trace_id, detail, organisations, key_id, previous_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(&forged.writer)
        .bind(forged.sequence)
        .bind(forged.occurred_at)
        .bind(&forged.subject)
        .bind(&forged.role)
        .bind(&forged.organisation)
        .bind(&forged.action)
        .bind(&forged.patient_ids)
        .bind(&forged.outcome)
        .bind(&forged.reason)
        .bind(&forged.request_id)
        .bind(&forged.trace_id)
        .bind(&forged.detail)
        .bind(&forged.organisations)
        .bind(&forged.key_id)
        .bind(&forged.previous_hash)
        .bind(&forged.hash)
        .execute(&mut gateway_role)
        .await
        .unwrap();
    }
    // Without the key, the plain chain looks intact, as every chain did before records were signed.
    let unkeyed = verify(&pool, &[]).await.unwrap();
    assert!(unkeyed.problems.is_empty(), "{:?}", unkeyed.problems);
    // With it, every forged record is found.
    let problems = verify(&pool, &key).await.unwrap().problems;
    for expected in
        ["gateway-forged #1: not signed", "gateway-forged #2: not signed", "gateway-forged #3: contents do not match its signature"]
    {
        assert!(problems.iter().any(|p| p.starts_with(expected)), "{expected}: {problems:?}");
    }
    assert_eq!(problems.len(), 3, "{problems:?}");

    // Someone able to drop the guard removes the last two records of the real writer's chain.
    sqlx::query("ALTER TABLE audit.events DISABLE TRIGGER events_append_only").execute(&pool).await.unwrap();
    let writer: String =
        sqlx::query_scalar("SELECT writer FROM audit.events WHERE writer <> 'gateway-forged' LIMIT 1").fetch_one(&pool).await.unwrap();
    sqlx::query("DELETE FROM audit.events WHERE writer = $1 AND sequence > (SELECT max(sequence) - 2 FROM audit.events WHERE writer = $1)")
        .bind(&writer)
        .execute(&pool)
        .await
        .unwrap();
    let verification = verify(&pool, &key).await.unwrap();
    let problems = &verification.problems;
    assert!(problems.iter().any(|p| p.starts_with(&format!("{writer}: records #")) && p.contains("removed")), "{verification:?}");
    // And a checkpoint before the last in the checkpoints' own chain (once there are two).
    referred_patient(&p, "Forged", false).await;
    for _ in 0..100 {
        let checkpoints: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.checkpoints").fetch_one(&pool).await.unwrap();
        if checkpoints >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("ALTER TABLE audit.checkpoints DISABLE TRIGGER checkpoints_append_only").execute(&pool).await.unwrap();
    sqlx::query("DELETE FROM audit.checkpoints WHERE number = 1").execute(&pool).await.unwrap();
    let problems = verify(&pool, &key).await.unwrap().problems;
    assert!(problems.iter().any(|p| p.contains("checkpoints missing")), "{problems:?}");
}

/// The trail is kept a month to a partition; whole months are archived (detached, after signed
/// checkpoints of the chains they end), and what remains still verifies from those checkpoints,
/// tampering included.
#[tokio::test]
async fn whole_months_are_archived_and_the_rest_still_verifies_from_their_checkpoints() {
    use chrono::{Datelike, Months, NaiveDate, Utc};
    use pac_gateway::audit::{AuditKey, Entry, archive, verify};
    let p = start_with(|_| {}).await;
    let pool = p.admin_pool().await;
    let key = AuditKey::development();
    // This month's partition and the next two are there.
    let today = Utc::now().date_naive();
    let this_month = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap();
    for ahead in 0..3 {
        let month = this_month.checked_add_months(Months::new(ahead)).unwrap();
        let name = format!("audit.events_{}", month.format("%Y_%m"));
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text").bind(&name).fetch_one(&pool).await.unwrap();
        assert_eq!(exists.as_deref(), Some(name.as_str()));
    }

    // A writer of its own: three records, this month's partition archived, two more, stopped.
    let stop = tokio_util::sync::CancellationToken::new();
    let (log, writer) = pac_gateway::audit::start(pool.clone(), stop.clone(), key.clone(), Duration::from_secs(3600));
    let record = |n: usize| Entry {
        subject: "archivist".into(),
        action: "/a".into(),
        outcome: "OK".into(),
        request_id: format!("archive-{n}"),
        ..Entry::default()
    };
    for n in 0..3 {
        log.reserve().unwrap().record_durably(record(n)).await.unwrap();
    }
    let next_month = this_month.checked_add_months(Months::new(1)).unwrap();
    let archived = archive::archive(&pool, &key, next_month).await.unwrap();
    let this = format!("audit.events_{}", this_month.format("%Y_%m"));
    assert_eq!(archived.last().map(|a| (a.table.as_str(), a.records)), Some((this.as_str(), 3)), "{archived:?}");
    for n in 3..5 {
        log.reserve().unwrap().record_durably(record(n)).await.unwrap();
    }
    stop.cancel();
    writer.await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE subject = 'archivist'").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 2, "the archived month's records left the trail");
    let detached: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {this}"))).fetch_one(&pool).await.unwrap();
    assert_eq!(detached, 3, "and stay, unchanged, in the detached table");
    let verified = verify(&pool, std::slice::from_ref(&key)).await.unwrap();
    assert!(verified.problems.is_empty(), "{verified:?}");

    // The remaining chain is still checked: its first record removed, or its archived checkpoint.
    sqlx::query("ALTER TABLE audit.events DISABLE TRIGGER events_append_only").execute(&pool).await.unwrap();
    sqlx::query("DELETE FROM audit.events WHERE subject = 'archivist' AND request_id = 'archive-3'").execute(&pool).await.unwrap();
    let problems = verify(&pool, std::slice::from_ref(&key)).await.unwrap().problems;
    assert!(problems.iter().any(|p| p.contains("#5") && (p.contains("records missing") || p.contains("does not follow"))), "{problems:?}");
}
