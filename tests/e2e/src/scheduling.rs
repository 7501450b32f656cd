//! The scheduling service and the records service it calls, in-process on loopback ports against
//! one database of their own, and the directory a test books against.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{Datelike, Utc};
use pac_platform::PlatformConfig;
use pac_platform::caller::Caller;
use pac_platform::convert::date;
use pac_platform::testkit::{TestDatabase, channel, listener, signed};
use pac_proto::common::{Address, Date};
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::scheduling as pb;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use pac_scheduling::SchedulingConfig;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub struct Platform {
    pub db: TestDatabase,
    pub platform: PlatformConfig,
    pub records: Channel,
    pub scheduling: Channel,
    pub scheduling_addr: SocketAddr,
    pub shutdown: CancellationToken,
}

impl Platform {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts both services; `adjust` changes the scheduling settings first.
    pub async fn start_with(adjust: impl FnOnce(&mut SchedulingConfig)) -> Self {
        let db = TestDatabase::create().await;
        let platform = db.platform_config();
        let shutdown = CancellationToken::new();

        let records_addr = crate::serve_records(&platform, &shutdown).await;

        let (listener, _) = listener().await;
        let scheduling_addr = listener.local_addr().unwrap();
        let mut config = SchedulingConfig::development(scheduling_addr, format!("http://{records_addr}"));
        config.hold_sweep_interval = Duration::from_millis(200);
        adjust(&mut config);
        crate::serve_scheduling(&platform, config, listener, &shutdown).await;

        Self { db, platform, records: channel(records_addr), scheduling: channel(scheduling_addr), scheduling_addr, shutdown }
    }

    pub fn client(&self) -> SchedulingClient<Channel> {
        SchedulingClient::new(self.scheduling.clone())
    }

    pub fn records(&self) -> PatientRecordsClient<Channel> {
        PatientRecordsClient::new(self.records.clone())
    }

    pub async fn admin(&self) -> sqlx::PgPool {
        self.db.admin_pool().await
    }

    /// Registers `count` distinct patients; returns their ids.
    pub async fn patients(&self, count: u32) -> Vec<String> {
        self.patients_of(0..count, "").await
    }

    /// Registers distinct patients (`numbers` tell them apart) owned by `organisation` ('': none);
    /// returns their ids.
    pub async fn patients_of(&self, numbers: std::ops::Range<u32>, organisation: &str) -> Vec<String> {
        let mut ids = Vec::new();
        for n in numbers {
            let patient = records_pb::Patient {
                given_name: format!("Given{}", letters(n)),
                family_name: format!("Family{}", letters(n * 7 + 3)),
                birth_date: Some(Date { year: 1940 + (n % 60) as i32, month: 1 + (n % 12) as i32, day: 1 + (n % 28) as i32 }),
                sex: 1 + (n % 2) as i32,
                address: Some(Address { lines: vec![format!("{} High Street", n + 1)], postcode: "LS1 4AP".into(), ..Default::default() }),
                organisation: organisation.into(),
                ..Default::default()
            };
            let request =
                records_pb::RegisterPatientRequest { patient: Some(patient), request_id: String::new(), allow_possible_duplicate: true };
            let response = self.records().register_patient(request).await.expect("register patient").into_inner();
            ids.push(response.patient.unwrap().id);
        }
        ids
    }

    /// `message` from `caller`, its context signed with the deployment's internal key.
    pub fn signed<T>(&self, message: T, caller: &Caller) -> Request<T> {
        signed(&self.platform, message, caller)
    }

    /// A location and clinic in Europe/London; returns the clinic.
    pub async fn clinic(&self, service_code: &str) -> pb::Clinic {
        self.clinic_of(service_code, "").await
    }

    /// A location and clinic in Europe/London run by `organisation` ('': none); returns the clinic.
    pub async fn clinic_of(&self, service_code: &str, organisation: &str) -> pb::Clinic {
        let location = self
            .client()
            .create_location(pb::CreateLocationRequest {
                location: Some(pb::Location {
                    name: "Leeds General Infirmary".into(),
                    address: Some(Address {
                        lines: vec!["Great George Street".into()],
                        locality: "Leeds".into(),
                        postcode: "LS1 3EX".into(),
                        ..Default::default()
                    }),
                    directions: "Enter by the Jubilee Wing; outpatients is on the ground floor.".into(),
                    access_notes: vec!["step-free access".into(), "hearing loop at reception".into()],
                    parking: "Multi-storey car park on Clarendon Way".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("create location")
            .into_inner()
            .location
            .unwrap();
        self.client()
            .create_clinic(pb::CreateClinicRequest {
                clinic: Some(pb::Clinic {
                    location_id: location.id,
                    name: "Fracture clinic".into(),
                    specialty: "Trauma and orthopaedics".into(),
                    service_code: service_code.into(),
                    time_zone: "Europe/London".into(),
                    what_to_bring: vec!["a list of your medicines".into()],
                    organisation: organisation.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("create clinic")
            .into_inner()
            .clinic
            .unwrap()
    }

    /// A weekly session of the clinic on every day from tomorrow; returns its slots in the first
    /// `days` days, earliest first.
    pub async fn session(
        &self,
        clinic: &pb::Clinic,
        start_hour: i32,
        end_hour: i32,
        slot_minutes: i32,
        capacity: i32,
    ) -> pb::SessionTemplate {
        let tomorrow = Utc::now().date_naive() + chrono::Duration::days(1);
        self.client()
            .create_session_template(pb::CreateSessionTemplateRequest {
                session_template: Some(pb::SessionTemplate {
                    clinic_id: clinic.id.clone(),
                    weekday: tomorrow.weekday().number_from_monday() as i32,
                    start: Some(pb::LocalTime { hours: start_hour, minutes: 0 }),
                    end: Some(pb::LocalTime { hours: end_hour, minutes: 0 }),
                    slot_minutes,
                    capacity,
                    valid_from: Some(date(tomorrow)),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("create session")
            .into_inner()
            .session_template
            .unwrap()
    }

    /// Free slots of a clinic, earliest first (up to 100).
    pub async fn free_slots(&self, clinic: &pb::Clinic) -> Vec<pb::Slot> {
        self.client()
            .search_slots(pb::SearchSlotsRequest {
                target: Some(pb::search_slots_request::Target::ClinicId(clinic.id.clone())),
                page_size: 100,
                ..Default::default()
            })
            .await
            .expect("search slots")
            .into_inner()
            .slots
    }

    pub async fn book(&self, slot_id: &str, patient_id: &str) -> Result<pb::Appointment, Status> {
        self.client()
            .book_appointment(pb::BookAppointmentRequest {
                target: Some(pb::book_appointment_request::Target::SlotId(slot_id.into())),
                patient_id: patient_id.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().appointment.unwrap())
    }

    /// Holds a slot for a patient (`ttl_seconds` 0 means the default).
    pub async fn hold(&self, slot_id: &str, patient_id: &str, ttl_seconds: i32) -> pb::Appointment {
        let request = pb::HoldSlotRequest { slot_id: slot_id.into(), patient_id: patient_id.into(), ttl_seconds, ..Default::default() };
        self.client().hold_slot(request).await.expect("hold slot").into_inner().appointment.unwrap()
    }

    pub async fn get(&self, id: &str) -> pb::Appointment {
        self.client().get_appointment(pb::GetAppointmentRequest { id: id.into() }).await.unwrap().into_inner().appointment.unwrap()
    }

    pub async fn occupied(&self, slot_id: &str) -> i32 {
        sqlx::query_scalar("SELECT occupied FROM scheduling.slots WHERE id = $1::uuid")
            .bind(slot_id)
            .fetch_one(&self.admin().await)
            .await
            .unwrap()
    }

    /// Moves an appointment's times into the past (as if its start had come), for attendance tests.
    pub async fn make_started(&self, appointment_id: &str) {
        sqlx::query(
            "UPDATE scheduling.appointments SET start_time = now() - interval '30 minutes', end_time = now() - interval '10 minutes' \
             WHERE id = $1::uuid",
        )
        .bind(appointment_id)
        .execute(&self.admin().await)
        .await
        .unwrap();
    }

    /// Makes a hold lapse now (instead of waiting out its TTL).
    pub async fn lapse_hold(&self, appointment_id: &str) {
        sqlx::query("UPDATE scheduling.appointments SET hold_expires_at = now() - interval '1 second' WHERE id = $1::uuid")
            .bind(appointment_id)
            .execute(&self.admin().await)
            .await
            .unwrap();
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn letters(mut n: u32) -> String {
    let mut s = String::new();
    loop {
        s.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            return s;
        }
    }
}
