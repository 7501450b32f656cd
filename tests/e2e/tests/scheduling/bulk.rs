//! `bulk::load_directory` and `bulk::load_slots`: a loaded directory and its slots read back as the
//! API's do, full slots are skipped by searches, and a loaded slot is booked like any other.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use pac_platform::testkit::TestDatabase;
use pac_proto::common::Date;
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::scheduling as pb;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use pac_scheduling::SchedulingConfig;
use pac_scheduling::bulk;
use pac_scheduling::model::{Clinic, Location};
use pac_scheduling::store::{self, SlotTarget};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

fn location(name: &str) -> Location {
    Location {
        id: Uuid::now_v7(),
        name: name.into(),
        address_lines: vec!["1 Infirmary Street".into()],
        locality: "Leeds".into(),
        postcode: "LS1 3EX".into(),
        directions: "Main entrance".into(),
        access_notes: vec!["Step-free".into()],
        parking: "Multi-storey".into(),
    }
}

fn clinic(location: &Location, service_code: &str, organisation: &str) -> Clinic {
    Clinic {
        id: Uuid::now_v7(),
        location_id: location.id,
        name: format!("{service_code} clinic"),
        specialty: "Orthopaedics".into(),
        service_code: service_code.into(),
        time_zone: "Europe/London".into(),
        what_to_bring: vec!["A list of your medicines".into()],
        organisation: organisation.into(),
    }
}

#[test]
fn a_slot_keeps_its_clinics_wall_clock() {
    let site = location("Site");
    let fracture = clinic(&site, "TO-FRACTURE", "RR8");
    // 01:30 UTC on the morning clocks go forward is 02:30 BST; in January, 09:00 is 09:00.
    let spring: DateTime<Utc> = "2027-03-28T01:30:00Z".parse().unwrap();
    let slot = bulk::slot(&fracture, spring, 15, 2);
    assert_eq!(
        (slot.local_date, slot.local_start),
        (NaiveDate::from_ymd_opt(2027, 3, 28).unwrap(), NaiveTime::from_hms_opt(2, 30, 0).unwrap())
    );
    assert_eq!(slot.end_time - slot.start_time, chrono::Duration::minutes(15));
    assert_eq!(
        (slot.clinic_id, slot.location_id, slot.service_code.as_str(), slot.organisation.as_str()),
        (fracture.id, site.id, "TO-FRACTURE", "RR8")
    );
    let winter = bulk::slot(&fracture, "2027-01-12T09:00:00Z".parse().unwrap(), 15, 1);
    assert_eq!(winter.local_start, NaiveTime::from_hms_opt(9, 0, 0).unwrap());
}

#[tokio::test]
async fn loaded_slots_are_searched_and_booked_as_any_other() {
    let db = TestDatabase::create().await;
    let platform = db.platform_config();
    let shutdown = CancellationToken::new();
    let records_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let records_addr = records_listener.local_addr().unwrap();
    let records_config = pac_records::RecordsConfig::development(records_addr);
    pac_records::migrate(&platform, &records_config).await.unwrap();
    tokio::spawn(pac_records::serve(platform.clone(), records_config, records_listener, shutdown.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = SchedulingConfig::development(addr, format!("http://{records_addr}"));
    pac_scheduling::migrate(&platform, &config).await.unwrap();
    let pool = pac_scheduling::connect(&platform, &config).await.unwrap();

    let (north, south) = (location("North site"), location("South site"));
    let clinics = [clinic(&north, "TO-FRACTURE", "RR8"), clinic(&south, "TO-FRACTURE", "RR8"), clinic(&north, "DERM", "RR8")];
    bulk::load_directory(&pool, &[north.clone(), south.clone()], &clinics).await.unwrap();

    // Quarter-hour slots from tomorrow, taking turns among the clinics; every third one full.
    let first = (Utc::now() + chrono::Duration::days(1)).date_naive().and_hms_opt(8, 0, 0).unwrap().and_utc();
    let count = bulk::SLOTS_PER_STATEMENT + 3_000;
    let slots: Vec<_> = (0..count)
        .map(|n| {
            let mut slot = bulk::slot(&clinics[n % 3], first + chrono::Duration::minutes(15 * (n / 3) as i64), 15, 2);
            if n % 3 == 1 {
                slot.occupied = slot.capacity;
            }
            slot
        })
        .collect();
    assert_eq!(bulk::load_slots(&pool, &slots).await.unwrap(), count as u64);

    // The store reads them back as loaded.
    let stored = store::find_slot(&pool, slots[4].id).await.unwrap().expect("a loaded slot");
    assert_eq!(
        (stored.clinic_id, stored.start_time, stored.end_time, stored.local_date, stored.local_start, stored.capacity, stored.occupied),
        (slots[4].clinic_id, slots[4].start_time, slots[4].end_time, slots[4].local_date, slots[4].local_start, 2, 2)
    );
    let found = store::find_clinic(&pool, clinics[1].id).await.unwrap().expect("a loaded clinic");
    assert_eq!((found.location_id, found.time_zone.as_str(), found.organisation.as_str()), (south.id, "Europe/London", "RR8"));
    let window_end = first + chrono::Duration::days(400);
    let free = store::search_slots(&pool, SlotTarget::Service("TO-FRACTURE"), None, first, window_end, None, 10).await.unwrap();
    // Clinics 0 and 2 of each turn: clinic 1's (every third slot, the full ones) are skipped, DERM is another service.
    let expected: Vec<Uuid> = slots.iter().enumerate().filter(|(n, _)| n % 3 == 0).map(|(_, s)| s.id).take(10).collect();
    assert_eq!(free.iter().map(|s| s.id).collect::<Vec<_>>(), expected);
    let at_south =
        store::search_slots(&pool, SlotTarget::Service("TO-FRACTURE"), Some(south.id), first, window_end, None, 10).await.unwrap();
    assert!(at_south.is_empty(), "the south clinic's slots are all full");
    let listed = store::list_slots(&pool, clinics[2].id, first, window_end, None, 5).await.unwrap();
    assert_eq!(listed.len(), 5);

    // Through the API: the clinic, a search, and a booking of a loaded slot.
    tokio::spawn(pac_scheduling::serve(platform.clone(), config, listener, shutdown.clone()));
    let connect = |addr: std::net::SocketAddr| async move {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    };
    let mut scheduling = SchedulingClient::new(connect(addr).await);
    let mut records = PatientRecordsClient::new(connect(records_addr).await);
    let got = scheduling.get_clinic(pb::GetClinicRequest { id: clinics[0].id.to_string() }).await.unwrap().into_inner();
    assert_eq!(got.location.unwrap().name, "North site");
    let searched = scheduling
        .search_slots(pb::SearchSlotsRequest {
            target: Some(pb::search_slots_request::Target::ServiceCode("DERM".into())),
            page_size: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .slots;
    assert_eq!(searched.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), [2, 5, 8].map(|n| slots[n].id.to_string()));
    let patient = records
        .register_patient(records_pb::RegisterPatientRequest {
            patient: Some(records_pb::Patient {
                given_name: "Ada".into(),
                family_name: "Bulkload".into(),
                birth_date: Some(Date { year: 1970, month: 3, day: 14 }),
                sex: 2,
                ..Default::default()
            }),
            request_id: String::new(),
            allow_possible_duplicate: false,
        })
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    let book = |slot: Uuid| pb::BookAppointmentRequest {
        target: Some(pb::book_appointment_request::Target::SlotId(slot.to_string())),
        patient_id: patient.id.clone(),
        ..Default::default()
    };
    let booked = scheduling.book_appointment(book(slots[2].id)).await.unwrap().into_inner().appointment.unwrap();
    assert_eq!(booked.clinic_id, clinics[2].id.to_string());
    assert_eq!(store::find_slot(&pool, slots[2].id).await.unwrap().unwrap().occupied, 1);
    let full = scheduling.book_appointment(book(slots[4].id)).await.unwrap_err();
    assert_eq!(full.code(), Code::FailedPrecondition, "a loaded full slot is full: {full:?}");
    assert_eq!(full.get_error_details().error_info().map(|i| i.reason.clone()).as_deref(), Some("SLOT_UNAVAILABLE"));
    shutdown.cancel();
}
