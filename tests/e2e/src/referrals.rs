//! Records, scheduling and referrals in-process on loopback ports against one database of their
//! own. The referrals service can be stopped and started again on the same address.

use std::time::Duration;

use chrono::{Datelike, Utc};
use pac_platform::testkit::{TestDatabase, channel, member_of, signed};
use pac_platform::{Actor, Caller, PlatformConfig};
use pac_proto::common::{Address, Date};
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::referrals as pb;
use pac_proto::referrals::referrals_client::ReferralsClient;
use pac_proto::scheduling as sched;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use pac_referrals::ReferralsConfig;
use pac_scheduling::SchedulingConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub struct Platform {
    pub db: TestDatabase,
    pub platform: PlatformConfig,
    pub records: Channel,
    pub scheduling: Channel,
    pub referrals: Channel,
    referrals_config: ReferralsConfig,
    referrals_shutdown: Option<CancellationToken>,
    pub shutdown: CancellationToken,
}

impl Platform {
    pub async fn start() -> Self {
        let db = TestDatabase::create().await;
        let platform = db.platform_config();
        let shutdown = CancellationToken::new();

        let records_addr = crate::serve_records(&platform, &shutdown).await;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheduling_addr = listener.local_addr().unwrap();
        let referrals_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let referrals_addr = referrals_listener.local_addr().unwrap();
        let mut config = SchedulingConfig::development(scheduling_addr, format!("http://{records_addr}"));
        config.referrals_url = format!("http://{referrals_addr}");
        crate::serve_scheduling(&platform, config, listener, &shutdown).await;

        let listener = referrals_listener;
        let referrals_config =
            ReferralsConfig::development(referrals_addr, format!("http://{records_addr}"), format!("http://{scheduling_addr}"));
        pac_referrals::migrate(&platform, &referrals_config).await.expect("migrate referrals");
        let mut p = Self {
            db,
            platform,
            records: channel(records_addr),
            scheduling: channel(scheduling_addr),
            referrals: channel(referrals_addr),
            referrals_config,
            referrals_shutdown: None,
            shutdown,
        };
        p.start_referrals(Some(listener)).await;
        p
    }

    /// Starts the referrals service (again) on its address.
    pub async fn start_referrals(&mut self, listener: Option<TcpListener>) {
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(self.referrals_config.listen).await.expect("rebind referrals address"),
        };
        let token = self.shutdown.child_token();
        tokio::spawn(pac_referrals::serve(self.platform.clone(), self.referrals_config.clone(), listener, token.clone()));
        self.referrals_shutdown = Some(token);
        // Serving once health answers.
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.referrals.clone());
        for _ in 0..100 {
            if health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("referrals service did not start");
    }

    /// Stops the referrals service (its followers with it) and waits for its port to close.
    pub async fn stop_referrals(&mut self) {
        if let Some(token) = self.referrals_shutdown.take() {
            token.cancel();
        }
        for _ in 0..200 {
            if TcpListener::bind(self.referrals_config.listen).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("referrals service did not stop");
    }

    pub fn client(&self) -> ReferralsClient<Channel> {
        ReferralsClient::new(self.referrals.clone())
    }

    pub fn scheduling(&self) -> SchedulingClient<Channel> {
        SchedulingClient::new(self.scheduling.clone())
    }

    pub fn records(&self) -> PatientRecordsClient<Channel> {
        PatientRecordsClient::new(self.records.clone())
    }

    pub async fn admin(&self) -> sqlx::PgPool {
        self.db.admin_pool().await
    }

    /// `message` from a coordinator of RR8 with `permissions`.
    pub fn signed<T>(&self, message: T, permissions: &[&str]) -> tonic::Request<T> {
        signed(&self.platform, message, &member_of("coordinator-7", "RR8", permissions))
    }

    /// Registers a patient; returns the id.
    pub async fn patient(&self, birth: (i32, i32, i32), sex: i32, postcode: &str) -> String {
        self.patient_of(birth, sex, postcode, "").await
    }

    /// Registers a patient owned by `organisation` ('': none); returns the id.
    pub async fn patient_of(&self, birth: (i32, i32, i32), sex: i32, postcode: &str, organisation: &str) -> String {
        let patient = records_pb::Patient {
            given_name: "Test".into(),
            family_name: uuid::Uuid::new_v4().as_bytes().iter().take(10).map(|b| char::from(b'a' + b % 26)).collect(),
            birth_date: Some(Date { year: birth.0, month: birth.1, day: birth.2 }),
            sex,
            address: (!postcode.is_empty()).then(|| Address {
                lines: vec!["1 High Street".into()],
                postcode: postcode.into(),
                ..Default::default()
            }),
            organisation: organisation.into(),
            ..Default::default()
        };
        let request =
            records_pb::RegisterPatientRequest { patient: Some(patient), request_id: String::new(), allow_possible_duplicate: true };
        self.records().register_patient(request).await.expect("register patient").into_inner().patient.unwrap().id
    }

    /// An adult in LS6.
    pub async fn adult(&self) -> String {
        self.patient((1970, 3, 14), 2, "LS6 2AA").await
    }

    pub async fn service(&self, service: pb::Service) -> pb::Service {
        self.client()
            .create_service(pb::CreateServiceRequest { service: Some(service), request_id: String::new() })
            .await
            .expect("create service")
            .into_inner()
            .service
            .unwrap()
    }

    /// A service with no entry rules, awaiting-triage flagged after 2 working days for two-week waits.
    pub async fn open_service(&self, code: &str, later_dna: pb::LaterDnaPolicy) -> pb::Service {
        self.open_service_of(code, later_dna, "").await
    }

    /// An open service provided by `organisation` ('': none).
    pub async fn open_service_of(&self, code: &str, later_dna: pb::LaterDnaPolicy, organisation: &str) -> pb::Service {
        self.service(pb::Service {
            code: code.into(),
            name: format!("{code} clinic"),
            specialty: "General".into(),
            target_wait_days: 42,
            stuck_thresholds: vec![pb::StuckThreshold {
                status: pb::ReferralStatus::AwaitingTriage as i32,
                priority: pb::Priority::TwoWeekWait as i32,
                working_days: 2,
            }],
            later_dna_policy: later_dna as i32,
            organisation: organisation.into(),
            ..Default::default()
        })
        .await
    }

    /// `message` from `caller`, its context signed with the deployment's internal key.
    pub fn signed_as<T>(&self, message: T, caller: &Caller) -> tonic::Request<T> {
        signed(&self.platform, message, caller)
    }

    pub fn new_referral(&self, patient_id: &str, service_code: &str) -> pb::CreateReferralRequest {
        pb::CreateReferralRequest {
            patient_id: patient_id.into(),
            service_code: service_code.into(),
            priority: pb::Priority::Routine as i32,
            referrer: Some(pb::Referrer { organisation: "B86001".into(), clinician: "Dr A Jones".into() }),
            source: "GP".into(),
            reason: "Knee pain for three months".into(),
            ..Default::default()
        }
    }

    pub async fn refer(&self, patient_id: &str, service_code: &str) -> pb::Referral {
        self.create(self.new_referral(patient_id, service_code)).await.expect("create referral")
    }

    pub async fn create(&self, request: pb::CreateReferralRequest) -> Result<pb::Referral, Status> {
        self.client().create_referral(request).await.map(|r| r.into_inner().referral.unwrap())
    }

    pub async fn get(&self, id: &str) -> pb::Referral {
        self.client().get_referral(pb::GetReferralRequest { id: id.into() }).await.expect("get referral").into_inner().referral.unwrap()
    }

    pub async fn triage(&self, referral: &pb::Referral, decision: pb::triage_referral_request::Decision) -> Result<pb::Referral, Status> {
        let request = pb::TriageReferralRequest {
            referral_id: referral.id.clone(),
            etag: referral.etag.clone(),
            decision: Some(decision),
            request_id: String::new(),
        };
        self.client().triage_referral(request).await.map(|r| r.into_inner().referral.unwrap())
    }

    pub async fn accept(&self, referral: &pb::Referral) -> pb::Referral {
        self.triage(referral, pb::triage_referral_request::Decision::Accept(pb::Accept {})).await.expect("accept")
    }

    /// A clinic for `service_code` with a daily one-place session from tomorrow; its free slots.
    pub async fn slots(&self, service_code: &str) -> Vec<sched::Slot> {
        self.slots_of(service_code, "").await
    }

    /// As [`Self::slots`], for a clinic run by `organisation` ('': none).
    pub async fn slots_of(&self, service_code: &str, organisation: &str) -> Vec<sched::Slot> {
        let mut client = self.scheduling();
        let location = client
            .create_location(sched::CreateLocationRequest {
                location: Some(sched::Location { name: "Leeds General Infirmary".into(), ..Default::default() }),
                request_id: String::new(),
            })
            .await
            .expect("create location")
            .into_inner()
            .location
            .unwrap();
        let clinic = client
            .create_clinic(sched::CreateClinicRequest {
                clinic: Some(sched::Clinic {
                    location_id: location.id,
                    name: "Clinic".into(),
                    service_code: service_code.into(),
                    time_zone: "Europe/London".into(),
                    organisation: organisation.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("create clinic")
            .into_inner()
            .clinic
            .unwrap();
        let tomorrow = Utc::now().date_naive() + chrono::Duration::days(1);
        client
            .create_session_template(sched::CreateSessionTemplateRequest {
                session_template: Some(sched::SessionTemplate {
                    clinic_id: clinic.id.clone(),
                    weekday: tomorrow.weekday().number_from_monday() as i32,
                    start: Some(sched::LocalTime { hours: 9, minutes: 0 }),
                    end: Some(sched::LocalTime { hours: 12, minutes: 0 }),
                    slot_minutes: 20,
                    capacity: 1,
                    valid_from: Some(Date { year: tomorrow.year(), month: tomorrow.month() as i32, day: tomorrow.day() as i32 }),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("create session");
        client
            .search_slots(sched::SearchSlotsRequest {
                target: Some(sched::search_slots_request::Target::ClinicId(clinic.id)),
                page_size: 100,
                ..Default::default()
            })
            .await
            .expect("search slots")
            .into_inner()
            .slots
    }

    pub async fn book(&self, slot_id: &str, referral: &pb::Referral) -> sched::Appointment {
        self.try_book(slot_id, referral).await.expect("book")
    }

    pub async fn try_book(&self, slot_id: &str, referral: &pb::Referral) -> Result<sched::Appointment, Status> {
        let request = sched::BookAppointmentRequest {
            target: Some(sched::book_appointment_request::Target::SlotId(slot_id.into())),
            patient_id: referral.patient_id.clone(),
            referral_id: referral.id.clone(),
            ..Default::default()
        };
        self.scheduling().book_appointment(request).await.map(|r| r.into_inner().appointment.unwrap())
    }

    pub async fn book_without_referral(&self, slot_id: &str, patient_id: &str) -> sched::Appointment {
        let referral = pb::Referral { patient_id: patient_id.into(), ..Default::default() };
        self.book(slot_id, &referral).await
    }

    /// The places taken in a slot.
    pub async fn occupied(&self, slot_id: &str) -> i32 {
        let admin = self.admin().await;
        let occupied =
            sqlx::query_scalar("SELECT occupied FROM scheduling.slots WHERE id = $1::uuid").bind(slot_id).fetch_one(&admin).await;
        admin.close().await;
        occupied.expect("slot")
    }

    /// Writes an AppointmentBooked event for `appointment` straight into scheduling's outbox, as an
    /// older release, a race or a replayed stream would have it: what referrals does with a booking
    /// scheduling would refuse today.
    pub async fn append_booked_event(&self, appointment: sched::Appointment) {
        use prost::Message;
        use sched::watch_events_response::Event;
        let id = uuid::Uuid::parse_str(&appointment.id).unwrap();
        let patient = uuid::Uuid::parse_str(&appointment.patient_id).unwrap();
        let organisation = appointment.organisation.clone();
        let event = sched::AppointmentEvent { appointment: Some(appointment), ..Default::default() };
        let payload = sched::WatchEventsResponse { envelope: None, event: Some(Event::AppointmentBooked(event)) }.encode_to_vec();
        let actor = Actor { subject: "pac-scheduling".into(), role: "service".into(), organisation: String::new() };
        let event = pac_platform::outbox::NewEvent {
            event_type: "AppointmentBooked",
            aggregate_id: id,
            organisation: &organisation,
            patient_ids: &[patient],
            payload,
            actor: &actor,
            request_id: None,
        };
        let admin = self.admin().await;
        let mut conn = admin.acquire().await.unwrap();
        pac_platform::outbox::Outbox::new("scheduling").append(&mut conn, event).await.expect("append an event");
        drop(conn);
        admin.close().await;
    }

    /// Waits until the referral satisfies `check` (events arrive asynchronously).
    pub async fn referral_becomes(&self, id: &str, check: impl Fn(&pb::Referral) -> bool) -> pb::Referral {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let referral = self.get(id).await;
            if check(&referral) {
                return referral;
            }
            assert!(tokio::time::Instant::now() < deadline, "referral never reached the expected state: {referral:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Asserts INVALID_ARGUMENT with a violation of `field` for `reason`.
pub fn assert_violation(status: &Status, field: &str, reason: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let violations = details.bad_request().map(|b| b.field_violations.clone()).unwrap_or_default();
    assert!(violations.iter().any(|v| v.field == field && v.reason == reason), "no {field}/{reason} in {violations:?}");
}

pub fn timestamp(at: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 }
}
