//! `bulk::load_patients`: patients loaded in bulk read back exactly as stored, are found by the
//! service's searches and caught by its duplicate check, as registered patients are.

use std::time::Duration;

use pac_platform::testkit::TestDatabase;
use pac_proto::common::{Address, Date};
use pac_proto::records as pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_records::RecordsConfig;
use pac_records::bulk;
use pac_records::convert::Rules;
use pac_records::domain::patient::PatientRecord;
use pac_records::store::{self, SearchCriteria};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_types::StatusExt;

/// Distinct people: names spelt from `n`, one phone each, every tenth with a hospital number, one
/// with an NHS number, one restricted.
fn patient(n: usize) -> pb::Patient {
    let letters = |mut v: usize, len: usize| -> String {
        (0..len)
            .map(|i| {
                let c = char::from(b'a' + (v % 26) as u8);
                v /= 26;
                if i == 0 { c.to_ascii_uppercase() } else { c }
            })
            .collect()
    };
    pb::Patient {
        nhs_number: if n == 7 { "9434765919".into() } else { String::new() },
        local_identifiers: if n.is_multiple_of(10) {
            vec![pb::LocalIdentifier { issuer: "RR8".into(), value: format!("H{n:07}") }]
        } else {
            Vec::new()
        },
        given_name: letters(n * 7919 + 3, 6),
        family_name: format!("{}-{}", letters(n, 5), letters(n / 7 + 11, 4)),
        birth_date: Some(Date { year: 1940 + (n % 60) as i32, month: 1 + (n % 12) as i32, day: 1 + (n % 28) as i32 }),
        sex: 1 + (n % 2) as i32,
        address: Some(Address {
            lines: vec![format!("{} Infirmary Street", n + 1)],
            locality: "Leeds".into(),
            postcode: "ls1 4ap".into(),
            ..Default::default()
        }),
        phone: format!("07700 {:06}", n),
        email: if n.is_multiple_of(3) { format!("person{n}@Example.org") } else { String::new() },
        preferred_language: if n.is_multiple_of(5) { "pl".into() } else { String::new() },
        interpreter_needed: n.is_multiple_of(5),
        accessibility_needs: if n.is_multiple_of(4) { vec!["wheelchair access".into()] } else { Vec::new() },
        restricted: n == 11,
        ..Default::default()
    }
}

#[tokio::test]
async fn loaded_patients_read_back_as_registered_ones() {
    let db = TestDatabase::create().await;
    let platform = db.platform_config();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = RecordsConfig::development(addr);
    pac_records::migrate(&platform, &config).await.unwrap();
    let pool = pac_records::connect(&platform, &config).await.unwrap();

    // More than one statement's worth.
    let count = bulk::PATIENTS_PER_STATEMENT * 2 + 500;
    let rules = Rules { accept_test_nhs_numbers: true, today: chrono::Utc::now().date_naive() };
    let at = pac_platform::now();
    let records: Vec<PatientRecord> = (0..count).map(|n| bulk::record(&patient(n), "RR8", rules, at).expect("a valid patient")).collect();
    assert_eq!(bulk::load_patients(&pool, &records).await.unwrap(), count as u64);

    // Stored as given, normalised as a registration normalises (postcode, phone, email).
    for n in [0, 7, 10, 11, 1_234, count - 1] {
        let stored = store::find(&pool, records[n].id, None).await.unwrap();
        assert_eq!(stored.as_ref(), Some(&records[n]), "patient {n}");
    }
    let first = &records[0].demographics;
    assert_eq!(first.address.postcode, "LS1 4AP");
    assert_eq!(first.phone.as_ref().unwrap().as_str(), "+447700000000");
    assert_eq!(first.email.as_ref().unwrap().as_str(), "person0@example.org");
    assert_eq!(first.local_identifiers.len(), 1);
    let by_hospital_number = store::find_by_local_identifier(&pool, "RR8", "H0000010", None).await.unwrap();
    assert_eq!(by_hospital_number.map(|r| r.id), Some(records[10].id));
    let by_nhs_number = store::find_by_nhs_number(&pool, "9434765919", None).await.unwrap();
    assert_eq!(by_nhs_number.map(|r| r.id), Some(records[7].id));

    // The store's search finds a loaded patient by name (its search keys) and by phone.
    let wanted = &records[1_234];
    let name = format!("{} {}", wanted.demographics.given_name.as_str(), wanted.demographics.family_name.as_str());
    let criteria = SearchCriteria {
        name_key: Some(pac_records::domain::demographics::name_key(&name)),
        birth_date: None,
        postcode: None,
        postcode_outward: None,
        phone: None,
        limit: 5,
        offset: 0,
    };
    let hits = store::search(&pool, &criteria, None).await.unwrap();
    assert_eq!(hits.first().map(|(r, _)| r.id), Some(wanted.id), "search by name");

    // Through the API: found by search; registering the same person again is a possible duplicate;
    // another organisation's caller does not see them.
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(pac_records::serve(platform.clone(), config, listener, shutdown.clone()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut client = PatientRecordsClient::new(channel);
    let found = client
        .search_patients(pb::SearchPatientsRequest { phone: "07700 001234".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(found.len(), 1);
    let patient = found[0].patient.clone().unwrap();
    assert_eq!((patient.id.as_str(), patient.organisation.as_str()), (wanted.id.to_string().as_str(), "RR8"));
    let got = client.get_patient(pb::GetPatientRequest { id: wanted.id.to_string() }).await.unwrap().into_inner();
    assert_eq!(got.patient.unwrap().family_name, wanted.demographics.family_name.as_str());

    let again = pb::RegisterPatientRequest {
        patient: Some(patient_without_phone(1_234)),
        request_id: String::new(),
        allow_possible_duplicate: false,
    };
    let status = client.register_patient(again).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.get_error_details().error_info().map(|i| i.reason.clone()).as_deref(), Some("POSSIBLE_DUPLICATE"));

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}

/// The same person as `patient(n)`, with no phone given: found as a possible duplicate by name and
/// birth date alone.
fn patient_without_phone(n: usize) -> pb::Patient {
    pb::Patient { phone: String::new(), email: String::new(), local_identifiers: Vec::new(), ..patient(n) }
}

#[tokio::test]
async fn a_statement_that_fails_loads_none_of_its_patients() {
    let db = TestDatabase::create().await;
    let platform = db.platform_config();
    let config = RecordsConfig::development("127.0.0.1:0".parse().unwrap());
    pac_records::migrate(&platform, &config).await.unwrap();
    let pool = pac_records::connect(&platform, &config).await.unwrap();
    let rules = Rules { accept_test_nhs_numbers: true, today: chrono::Utc::now().date_naive() };
    let at = pac_platform::now();
    let mut records: Vec<PatientRecord> = (0..20).map(|n| bulk::record(&patient(n), "RR8", rules, at).unwrap()).collect();
    // Patient 10's hospital number again, on patient 19.
    records[19].demographics.local_identifiers = records[10].demographics.local_identifiers.clone();
    assert!(bulk::load_patients(&pool, &records).await.is_err());
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM records.patients").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 0);
}
