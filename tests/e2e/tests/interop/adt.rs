//! ADT over MLLP end to end: a PAS's messages reach the records through the gateway as the
//! integration account, each answered AA only once its change is committed, AE for content the
//! sender must not resend, AR for what may succeed later; a message sent again changes nothing.

use std::time::{Duration, Instant};

use pac_e2e::gateway::{self, token};
use pac_e2e::interop::{ACCOUNT, Pas, ack_code, err_segment, start};
use pac_gateway::policy::Role;
use pac_interop::hl7::Charset;
use pac_platform::testkit::with_token;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::records::{self as pb, LocalIdentifier, lookup_patient_request::Identifier};

const VERIFIED_NHS: &str = "9998193036";

/// A UK ITK-shaped ADT message from RR8's PAS: `body` is the segments after MSH, `\r`-ended.
fn adt(trigger: &str, structure: &str, control_id: &str, body: &str) -> String {
    format!(
        "MSH|^~\\&|PAS|RR8|PAC|PAC|20261205091500||ADT^{trigger}^{structure}|{control_id}|P|2.4|||AL|NE|GBR|8859/1\rEVN|{trigger}|20261205091500\r{body}"
    )
}

fn pid(identifiers: &str, name: &str, rest: &str) -> String {
    format!("PID|1||{identifiers}||{name}||{rest}\r")
}

/// Sends `message` in Latin-1 (the MSH-18 `adt` names) and reads the ACK in it.
async fn send(pas: &mut Pas, message: &str) -> String {
    Charset::Latin1.decode(&pas.send(Charset::Latin1.encode(message)).await).unwrap()
}

async fn lookup(p: &gateway::Platform, identifier: Identifier) -> Option<pb::LookupPatientResponse> {
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let request = pb::LookupPatientRequest { identifier: Some(identifier) };
    PatientRecordsClient::new(p.gateway.clone()).lookup_patient(with_token(request, Some(&coordinator))).await.ok().map(|r| r.into_inner())
}

async fn by_local(p: &gateway::Platform, value: &str) -> Option<pb::LookupPatientResponse> {
    lookup(p, Identifier::LocalIdentifier(LocalIdentifier { issuer: "RR8".into(), value: value.into() })).await
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a28_a08_a40_reach_the_records_and_the_audit_trail_and_resends_change_nothing() {
    let p = gateway::start().await;
    let mllp = start(&p, |_| {}).await;
    let mut pas = Pas::connect(mllp).await;

    // A28: a new person, NHS number verified, a hospital number, PD1 GP practice, in Latin-1.
    let a28 = adt(
        "A28",
        "ADT_A05",
        "MSG00001",
        &format!(
            "{}PD1|||Park Surgery^^B86001\r",
            pid(
                &format!("{VERIFIED_NHS}^^^NHS^NH~K100001^^^RR8^PI"),
                "O'Súilleabháin^Seán^^^Mr^^L",
                &format!("19800131|M|||1 High Street^^Leeds^^LS1 4AB^^H||0113 496 0000^PRN^PH{}NSTS01", "|".repeat(19)),
            )
        ),
    );
    let a28_bytes = Charset::Latin1.encode(&a28);
    let first = pas.send(&a28_bytes).await;
    let first_text = Charset::Latin1.decode(&first).unwrap();
    assert_eq!(ack_code(&first_text), "AA", "{first_text}");
    assert!(first_text.contains("|ACK^A28^ACK|") && first_text.contains("MSA|AA|MSG00001"), "{first_text}");
    let registered = by_local(&p, "K100001").await.expect("registered").patient.unwrap();
    assert_eq!((registered.family_name.as_str(), registered.given_name.as_str()), ("O'Súilleabháin", "Seán"));
    assert_eq!((registered.nhs_number.as_str(), registered.nhs_number_status), (VERIFIED_NHS, pb::NhsNumberStatus::Verified as i32));
    assert_eq!((registered.gp_practice_code.as_str(), registered.organisation.as_str()), ("B86001", "RR8"));
    assert_eq!(registered.birth_date.unwrap().day, 31);

    // A08: a new address and phone; an empty field (birth date) leaves what is stored.
    let a08 = adt(
        "A08",
        "ADT_A01",
        "MSG00002",
        &pid(
            &format!("{VERIFIED_NHS}^^^NHS^NH~K100001^^^RR8^PI"),
            "O'Súilleabháin^Seán",
            &format!("|M|||2 Park Row^^Leeds^^LS1 5HD||0113 496 0001{}NSTS01", "|".repeat(19)),
        ),
    );
    assert_eq!(ack_code(&send(&mut pas, &a08).await), "AA");
    let updated = by_local(&p, "K100001").await.unwrap().patient.unwrap();
    assert_eq!(updated.address.as_ref().unwrap().postcode, "LS1 5HD");
    assert_eq!(updated.birth_date, registered.birth_date);
    assert_ne!(updated.etag, registered.etag);

    // A second patient, then A40: K100002 merged into K100001's record.
    let a28b = adt("A28", "ADT_A05", "MSG00003", &pid("K100002^^^RR8^PI", "Sullivan^Sean", "19800131|M"));
    assert_eq!(ack_code(&send(&mut pas, &a28b).await), "AA");
    let duplicate = by_local(&p, "K100002").await.unwrap().patient.unwrap();
    let a40 = adt("A40", "ADT_A39", "MSG00004", &format!("{}MRG|K100002^^^RR8^PI\r", pid("K100001^^^RR8^PI", "O'Súilleabháin^Seán", "")));
    let merged_ack = send(&mut pas, &a40).await;
    assert_eq!(ack_code(&merged_ack), "AA", "{merged_ack}");
    let resolved = by_local(&p, "K100002").await.unwrap();
    assert_eq!((resolved.patient.unwrap().id, resolved.merged_from), (registered.id.clone(), duplicate.id.clone()));

    // The audit trail shows every effect under the integration account, with the control ids.
    let admin = p.admin_pool().await;
    let audited =
        |control: &str| format!("SELECT count(*) FROM audit.events WHERE subject = '{ACCOUNT}' AND request_id LIKE 'hl7:{control}:%'");
    for control in ["MSG00001", "MSG00002", "MSG00003", "MSG00004"] {
        assert!(count(&admin, &audited(control)).await >= 2, "{control}: a lookup and a write audited");
    }
    let writes = "SELECT count(*) FROM audit.events WHERE subject = 'trust-pas'";
    let patients = "SELECT count(*) FROM records.patients";
    let (audit_before, patients_before, version_before) = (
        count(&admin, writes).await,
        count(&admin, patients).await,
        count(&admin, "SELECT sum(version)::bigint FROM records.patients").await,
    );

    // The same four messages again, on a new connection: the same ACKs, nothing written.
    let mut again = Pas::connect(mllp).await;
    assert_eq!(again.send(&a28_bytes).await, first, "the stored ACK, byte for byte");
    for message in [&a08, &a28b, &a40] {
        assert_eq!(ack_code(&send(&mut again, message).await), "AA");
    }
    assert_eq!(count(&admin, writes).await, audit_before, "a resend calls nothing");
    assert_eq!(count(&admin, patients).await, patients_before);
    assert_eq!(count(&admin, "SELECT sum(version)::bigint FROM records.patients").await, version_before);

    // The same control id with another body: AE 205, nothing written.
    let reused = a28b.replace("Sullivan", "Sullivane");
    let ack = send(&mut again, &reused).await;
    assert_eq!(ack_code(&ack), "AE");
    assert!(err_segment(&ack).contains("205"), "{ack}");
    assert_eq!(count(&admin, patients).await, patients_before);
    // The message log holds each message once, answered.
    assert_eq!(count(&admin, "SELECT count(*) FROM interop.inbound_messages WHERE ack_code = 'AA'").await, 4);
}

#[tokio::test]
async fn content_errors_are_ae_with_table_0357_codes_and_change_nothing() {
    let p = gateway::start().await;
    let mllp = start(&p, |_| {}).await;
    let mut pas = Pas::connect(mllp).await;
    let admin = p.admin_pool().await;
    let cases = [
        // An NHS number failing its check digit: the records service's refusal, at PID-3.
        (adt("A28", "ADT_A05", "E1", &pid("9998193037^^^NHS^NH~K2^^^RR8^PI", "Smith^Jo", "19900101|F")), "PID^1^3^102"),
        // No identifier at all.
        (adt("A28", "ADT_A05", "E2", &pid("", "Smith^Jo", "19900101|F")), "PID^1^3^101"),
        // A birth date that is not a date.
        (adt("A28", "ADT_A05", "E3", &pid("K3^^^RR8^PI", "Smith^Jo", "19901301|F")), "PID^1^7^102"),
        // A merge whose source is not known.
        (adt("A40", "ADT_A39", "E4", &format!("{}MRG|K404^^^RR8^PI\r", pid("K5^^^RR8^PI", "Smith^Jo", ""))), "204"),
        // Not ADT.
        ("MSH|^~\\&|LAB|RR8|PAC|PAC|20261205||ORU^R01|E5|P|2.4\rPID|1||K6^^^RR8^PI\r".to_string(), "MSH^1^9^200"),
        // A patient event this listener does not do: never a silent AA.
        (adt("A29", "ADT_A21", "E8", &pid("K8^^^RR8^PI", "Smith^Jo", "")), "MSH^1^9^201"),
        // A training message at a production listener.
        (adt("A28", "ADT_A05", "E9", &pid("K9^^^RR8^PI", "Smith^Jo", "19900101|F")).replace("|P|2.4|", "|T|2.4|"), "MSH^1^11^202"),
        // A version this listener does not read.
        (adt("A28", "ADT_A05", "E6", &pid("K7^^^RR8^PI", "Smith^Jo", "19900101|F")).replace("|P|2.4|", "|P|2.2|"), "203"),
    ];
    for (message, expected) in &cases {
        let ack = send(&mut pas, message).await;
        assert_eq!(ack_code(&ack), "AE", "{message:?}: {ack}");
        assert!(err_segment(&ack).contains(expected), "{message:?}: {ack}");
        assert!(!ack.contains("9998193037"), "no patient data in the ACK: {ack}");
    }
    assert_eq!(count(&admin, "SELECT count(*) FROM records.patients").await, 0);

    // A message whose header is readable but whose body is not text in its character set: AE,
    // answering its control id.
    let broken =
        [adt("A28", "ADT_A05", "E10", "").replace("8859/1", "UNICODE UTF-8").as_bytes(), &[b'P', b'I', b'D', b'|', 0xFF, 0xFE, b'\r']]
            .concat();
    let ack = String::from_utf8_lossy(&pas.send(&broken).await).into_owned();
    assert_eq!(ack_code(&ack), "AE", "{ack}");
    assert!(ack.contains("\rMSA|AE|E10"), "{ack}");
    // Bytes that are no HL7 message: AE, never AA, and the connection serves the next message.
    let ack = send(&mut pas, "\u{1}\u{2}garbage|||").await;
    assert_eq!(ack_code(&ack), "AE", "{ack}");
    // A visit event changes nothing and is acknowledged.
    let a03 = adt("A03", "ADT_A03", "V1", &format!("{}PV1|1|I\r", pid("K8^^^RR8^PI", "Smith^Jo", "")));
    assert_eq!(ack_code(&send(&mut pas, &a03).await), "AA");
    assert_eq!(count(&admin, "SELECT count(*) FROM records.patients").await, 0);
    // A 2.5 message's ERR has its code in ERR-3 and a severity.
    let v25 = adt("A28", "ADT_A05", "E7", &pid("K9^^^RR8^PI", "Smith^Jo", "19901301|F")).replace("|P|2.4|", "|P|2.5|");
    let ack = send(&mut pas, &v25).await;
    assert!(err_segment(&ack).starts_with("ERR||PID^1^7|102^Data type error^HL70357|E"), "{ack}");
}

#[tokio::test]
async fn ar_for_what_may_succeed_later() {
    let p = gateway::start().await;
    // A sending facility the account does not act for: AR, nothing written.
    let mllp = start(&p, |_| {}).await;
    let mut pas = Pas::connect(mllp).await;
    let elsewhere = adt("A28", "ADT_A05", "F1", &pid("K1^^^RAE^PI", "Smith^Jo", "19900101|F")).replace("|PAS|RR8|", "|PAS|RAE|");
    let ack = send(&mut pas, &elsewhere).await;
    assert_eq!(ack_code(&ack), "AR", "{ack}");
    // The gateway unreachable: AR within the time budget, and the same message later is handled.
    let unreachable = pac_platform::testkit::free_port();
    let mllp = start(&p, |config| {
        config.gateway_url = format!("http://{unreachable}");
        config.mllp.handling.budget = Duration::from_millis(1500);
    })
    .await;
    let mut pas = Pas::connect(mllp).await;
    let message = adt("A28", "ADT_A05", "F2", &pid("K2^^^RR8^PI", "Smith^Jo", "19900101|F"));
    let started = Instant::now();
    let ack = send(&mut pas, &message).await;
    assert_eq!(ack_code(&ack), "AR", "{ack}");
    assert!(started.elapsed() < Duration::from_millis(2500), "answered within the budget: {:?}", started.elapsed());
    let mllp = start(&p, |_| {}).await;
    let ack = send(&mut Pas::connect(mllp).await, &message).await;
    assert_eq!(ack_code(&ack), "AA", "an AR'd message sent again is handled: {ack}");
    assert!(by_local(&p, "K2").await.is_some());
}

#[tokio::test]
async fn a47_changes_a_hospital_number_and_one_connection_per_message_works() {
    let p = gateway::start().await;
    let mllp = start(&p, |_| {}).await;
    let a28 = adt("A28", "ADT_A05", "G1", &pid("K1^^^RR8^PI~OTHER9^^^RAE^PI", "Smith^Jo", "19900101|F"));
    assert_eq!(ack_code(&send(&mut Pas::connect(mllp).await, &a28).await), "AA");
    let a47 = adt("A47", "ADT_A30", "G2", &format!("{}MRG|K1^^^RR8^PI\r", pid("K1NEW^^^RR8^PI", "Smith^Jo", "")));
    assert_eq!(ack_code(&send(&mut Pas::connect(mllp).await, &a47).await), "AA");
    assert!(by_local(&p, "K1").await.is_none());
    let patient = by_local(&p, "K1NEW").await.unwrap().patient.unwrap();
    assert_eq!(patient.local_identifiers.len(), 2, "the other issuer's identifier stays");
    // \n-ended segments, read by a listener set to read them.
    let lenient = start(&p, |config| config.mllp.handling.lenient_newlines = true).await;
    let newline = adt("A08", "ADT_A01", "G3", &pid("K1NEW^^^RR8^PI", "Smith^Joanna", "")).replace('\r', "\n");
    assert_eq!(ack_code(&send(&mut Pas::connect(lenient).await, &newline).await), "AA");
    assert_eq!(by_local(&p, "K1NEW").await.unwrap().patient.unwrap().given_name, "Joanna");
}

#[tokio::test]
async fn random_bytes_are_never_accepted_and_never_stop_the_listener() {
    use rand::{Rng, SeedableRng};
    let p = gateway::start().await;
    let mllp = start(&p, |_| {}).await;
    let mut pas = Pas::connect(mllp).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261205);
    let header = adt("A28", "ADT_A05", "R0", &pid("K1^^^RR8^PI", "Smith^Jo", "19900101|F"));
    for i in 0..300 {
        let length = rng.random_range(0..400);
        // Bytes that are not block characters (those would frame differently), half of them after a
        // valid header's first bytes so that the header reader is exercised too.
        let mut frame: Vec<u8> = if i % 2 == 0 { header.as_bytes()[..rng.random_range(0..header.len())].to_vec() } else { Vec::new() };
        frame.extend((0..length).map(|_| {
            loop {
                let b: u8 = rng.random();
                if b != 0x0B && b != 0x1C {
                    break b;
                }
            }
        }));
        let ack = String::from_utf8_lossy(&pas.send(&frame).await).into_owned();
        assert_ne!(ack_code(&ack), "AA", "frame {i} {frame:?} was accepted: {ack}");
    }
    // (A frame above may have carried the header's control id R0 with another body: a new one.)
    let valid = header.replace("|R0|", "|R1|");
    assert_eq!(ack_code(&send(&mut pas, &valid).await), "AA", "the same connection still serves");
    let admin = p.admin_pool().await;
    assert_eq!(count(&admin, "SELECT count(*) FROM records.patients").await, 1);
}

#[tokio::test]
async fn a_refused_possible_duplicate_is_a_task_on_the_coordinators_worklist() {
    use pac_e2e::interop::start_serving;
    use pac_interop::inbound::DuplicatePolicy;
    use pac_proto::interop as ipb;
    use pac_proto::interop::interop_client::InteropClient;

    let (admin_listener, admin_url) = pac_platform::testkit::listener().await;
    let p = gateway::start_with(|config| config.interop_url = admin_url).await;
    let mllp =
        start_serving(&p, admin_listener, p.shutdown.clone(), |config| config.mllp.handling.duplicates = DuplicatePolicy::Refuse).await;
    let mut pas = Pas::connect(mllp).await;
    let person = "Smith^Joanna||19900101|F|||1 High Street^^Leeds^^LS1 4AB";
    assert_eq!(ack_code(&send(&mut pas, &adt("A28", "ADT_A05", "D1", &pid("KD1^^^RR8^PI", person, ""))).await), "AA");
    let first = by_local(&p, "KD1").await.unwrap().patient.unwrap();
    let ack = send(&mut pas, &adt("A28", "ADT_A05", "D2", &pid("KD2^^^RR8^PI", person, ""))).await;
    assert_eq!(ack_code(&ack), "AE", "{ack}");
    assert!(ack.contains("POSSIBLE_DUPLICATE"), "{ack}");
    assert!(by_local(&p, "KD2").await.is_none());

    let mut interop = InteropClient::new(p.gateway.clone());
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let list = || with_token(ipb::ListReviewTasksRequest {}, Some(&coordinator));
    let tasks = interop.list_review_tasks(list()).await.unwrap().into_inner().tasks;
    assert_eq!(tasks.len(), 1);
    assert_eq!((tasks[0].control_id.as_str(), tasks[0].reason.as_str()), ("D2", "POSSIBLE_DUPLICATE"));
    assert_eq!(tasks[0].candidate_patient_ids, vec![first.id.clone()]);
    // Another organisation's coordinator does not see it.
    let elsewhere = pac_e2e::gateway::token_for(Role::Coordinator, "RAE", Duration::from_secs(600));
    assert!(
        interop
            .list_review_tasks(with_token(ipb::ListReviewTasksRequest {}, Some(&elsewhere)))
            .await
            .unwrap()
            .into_inner()
            .tasks
            .is_empty()
    );

    let resolve = |resolution: &str| {
        with_token(ipb::ResolveReviewTaskRequest { task_id: tasks[0].id, resolution: resolution.into() }, Some(&coordinator))
    };
    assert_eq!(interop.resolve_review_task(resolve(" ")).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    // Retention: past the key retention a message is forgotten, but not one a task waits on.
    let pool = pac_e2e::interop::pool(&p).await;
    sqlx::query("UPDATE inbound_messages SET received_at = now() - interval '40 days'").execute(&pool).await.unwrap();
    let month = Duration::from_secs(30 * 24 * 3600);
    let (forgotten, cleared, _) = pac_interop::store::prune(&pool, month, month).await.unwrap();
    assert_eq!((forgotten, cleared), (1, 0), "the task's message stays, with its text");

    interop.resolve_review_task(resolve("The same patient: KD2 added to the existing record")).await.unwrap();
    assert_eq!(pac_interop::store::prune(&pool, month, month).await.unwrap().0, 1, "forgotten once resolved");
    assert!(interop.list_review_tasks(list()).await.unwrap().into_inner().tasks.is_empty());
    assert_eq!(interop.resolve_review_task(resolve("again")).await.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_message_being_handled_is_not_handled_again_at_the_same_time() {
    use pac_interop::store::{self, Answer, Claim, Key, Received};
    let p = gateway::start().await;
    start(&p, |_| {}).await;
    let pool = pac_e2e::interop::pool(&p).await;
    let key = Key { sending_application: "PAS".into(), sending_facility: "RR8".into(), control_id: "B1".into() };
    let received =
        Received { listener: "adt", key: &key, body_sha256: &[7; 32], message_type: "ADT^A08", request_id: "hl7:B1:x", raw: b"MSH|" };
    let lease = Duration::from_secs(3);
    let Claim::Handle(id) = store::claim(&pool, &received, lease).await.unwrap() else { panic!("the first is handled") };
    // The engine's resend on another connection while the first is handled: AR, not a second run.
    assert_eq!(store::claim(&pool, &received, lease).await.unwrap(), Claim::Busy);
    store::answer(&pool, id, &Answer { ack_code: "AA", error_code: None, error_text: None, ack: b"ACK" }).await.unwrap();
    assert_eq!(store::claim(&pool, &received, lease).await.unwrap(), Claim::Replay(b"ACK".to_vec()));
    // A claim that lapsed (its handler gone without an answer) is taken over.
    let other = Key { control_id: "B2".into(), ..key.clone() };
    let lapsed = Received { key: &other, ..received };
    let Claim::Handle(first) = store::claim(&pool, &lapsed, Duration::from_millis(100)).await.unwrap() else { panic!() };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store::claim(&pool, &lapsed, lease).await.unwrap(), Claim::Handle(first));
}
