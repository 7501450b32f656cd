//! The platform behind its gateway, over real gRPC on loopback against a real Postgres, and the
//! directory and patients an access test books with, made through the gateway as a client would.

use std::collections::BTreeMap;
use std::time::Duration;

use pac_gateway::auth::{Identity, mint_development};
use pac_gateway::policy::Role;
use pac_gateway::{DEVELOPMENT_ISSUER, DEVELOPMENT_TOKEN_KEY, GatewayConfig};
use pac_platform::testkit::{TestDatabase, listener, registration, with_token};
use pac_proto::common::Address;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::referrals as refs;
use pac_proto::referrals::referrals_client::ReferralsClient;
use pac_proto::scheduling as sched;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub struct Platform {
    pub db: TestDatabase,
    pub gateway: Channel,
    pub address: std::net::SocketAddr,
    pub shutdown: CancellationToken,
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start() -> Platform {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut GatewayConfig)) -> Platform {
    let db = TestDatabase::create().await;
    let platform = db.platform_config();
    let shutdown = CancellationToken::new();
    let records_url = format!("http://{}", crate::serve_records(&platform, &shutdown).await);
    let (scheduling_listener, scheduling_url) = listener().await;
    let (referrals_listener, referrals_url) = listener().await;
    let (gateway_listener, gateway_url) = listener().await;
    let address = gateway_listener.local_addr().unwrap();

    let mut config = pac_scheduling::SchedulingConfig::development(scheduling_listener.local_addr().unwrap(), records_url.clone());
    config.referrals_url = referrals_url.clone();
    crate::serve_scheduling(&platform, config, scheduling_listener, &shutdown).await;
    let config =
        pac_referrals::ReferralsConfig::development(referrals_listener.local_addr().unwrap(), records_url.clone(), scheduling_url.clone());
    crate::serve_referrals(&platform, config, referrals_listener, &shutdown).await;
    // Behind the gateway the services require a signed caller context, as in production.
    let mut gateway_platform = platform.clone();
    gateway_platform.require_caller_context = true;
    let mut config = GatewayConfig::development(address, records_url, scheduling_url, referrals_url);
    adjust(&mut config);
    crate::serve_gateway(&gateway_platform, config, gateway_listener, &shutdown).await;
    let gateway = tonic::transport::Endpoint::from_shared(gateway_url).unwrap().connect_lazy();
    Platform { db, gateway, address, shutdown }
}

pub fn token(role: Role, ttl: Duration) -> String {
    token_for(role, "RR8", ttl)
}

/// A development token for `role` acting for `organisation`.
pub fn token_for(role: Role, organisation: &str, ttl: Duration) -> String {
    let identity = Identity { subject: format!("{}-1", role.name()), role, organisations: vec![organisation.into()] };
    mint_development(DEVELOPMENT_TOKEN_KEY.as_bytes(), DEVELOPMENT_ISSUER, "pac-gateway", &identity, ttl)
}

impl Platform {
    pub async fn admin_pool(&self) -> sqlx::PgPool {
        self.db.admin_pool().await
    }
}

/// The refusals in the audit trail by action and outcome, once there are at least `expected`.
pub async fn wait_for_audit(pool: &sqlx::PgPool, expected: i64) -> BTreeMap<(String, String), i64> {
    // Calls refused before their caller is known are recorded in aggregate, with their count.
    let query = "SELECT action, outcome, sum(CASE WHEN action = 'unauthenticated calls' THEN (detail::jsonb->>'count')::bigint ELSE 1 END)::bigint \
                 FROM audit.events WHERE reason <> '' GROUP BY 1, 2";
    for _ in 0..100 {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(query).fetch_all(pool).await.unwrap();
        if rows.iter().map(|r| r.2).sum::<i64>() >= expected {
            return rows.into_iter().map(|(a, o, n)| ((a, o), n)).collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {expected} refusals were audited");
}

/// The directory an access test books into: a clinic of service `KNEE` open every day, and the
/// referral service `KNEE`.
pub async fn knee_clinic(p: &Platform) -> sched::Clinic {
    let admin = token(Role::Admin, Duration::from_secs(600));
    let mut scheduling = SchedulingClient::new(p.gateway.clone());
    let location = sched::Location {
        name: "Chapel Allerton Hospital".into(),
        address: Some(Address {
            lines: vec!["Chapeltown Road".into()],
            locality: "Leeds".into(),
            postcode: "LS7 4SA".into(),
            ..Default::default()
        }),
        directions: "Outpatients is on the ground floor.".into(),
        access_notes: vec!["Step-free access".into()],
        parking: "Pay and display at the front.".into(),
        ..Default::default()
    };
    let location = scheduling
        .create_location(with_token(sched::CreateLocationRequest { location: Some(location), request_id: String::new() }, Some(&admin)))
        .await
        .unwrap()
        .into_inner()
        .location
        .unwrap();
    let clinic = sched::Clinic {
        location_id: location.id,
        name: "Knee clinic".into(),
        specialty: "Trauma and orthopaedics".into(),
        service_code: "KNEE".into(),
        time_zone: "Europe/London".into(),
        what_to_bring: vec!["Shorts".into()],
        ..Default::default()
    };
    let clinic = clinic_with_daily_sessions(p, clinic).await;
    let service = refs::Service { code: "KNEE".into(), name: "Knee".into(), target_wait_days: 42, ..Default::default() };
    ReferralsClient::new(p.gateway.clone())
        .create_service(with_token(refs::CreateServiceRequest { service: Some(service), request_id: String::new() }, Some(&admin)))
        .await
        .unwrap();
    clinic
}

/// Creates `clinic` (as an administrator) with a session of 15-minute slots, 08:00-18:00, every day.
pub async fn clinic_with_daily_sessions(p: &Platform, clinic: sched::Clinic) -> sched::Clinic {
    let admin = token(Role::Admin, Duration::from_secs(600));
    let mut scheduling = SchedulingClient::new(p.gateway.clone());
    let clinic = scheduling
        .create_clinic(with_token(sched::CreateClinicRequest { clinic: Some(clinic), request_id: String::new() }, Some(&admin)))
        .await
        .unwrap()
        .into_inner()
        .clinic
        .unwrap();
    let today = chrono::Utc::now().date_naive();
    for weekday in 1..=7 {
        let template = sched::SessionTemplate {
            clinic_id: clinic.id.clone(),
            weekday,
            start: Some(sched::LocalTime { hours: 8, minutes: 0 }),
            end: Some(sched::LocalTime { hours: 18, minutes: 0 }),
            slot_minutes: 15,
            capacity: 1,
            valid_from: Some(pac_platform::convert::date(today)),
            ..Default::default()
        };
        scheduling
            .create_session_template(with_token(
                sched::CreateSessionTemplateRequest { session_template: Some(template), request_id: String::new() },
                Some(&admin),
            ))
            .await
            .unwrap();
    }
    clinic
}

/// A registered patient with a referral to `KNEE`, accepted when `accept`.
pub async fn referred_patient(p: &Platform, family_name: &str, accept: bool) -> (String, refs::Referral) {
    let coordinator = token(Role::Coordinator, Duration::from_secs(600));
    let patient = PatientRecordsClient::new(p.gateway.clone())
        .register_patient(with_token(registration(family_name), Some(&coordinator)))
        .await
        .unwrap()
        .into_inner()
        .patient
        .unwrap();
    let mut referrals = ReferralsClient::new(p.gateway.clone());
    let create = refs::CreateReferralRequest {
        patient_id: patient.id.clone(),
        service_code: "KNEE".into(),
        priority: refs::Priority::Routine as i32,
        referrer: Some(refs::Referrer { organisation: "B86001".into(), clinician: String::new() }),
        source: "GP".into(),
        reason: "Knee pain".into(),
        ..Default::default()
    };
    let mut referral = referrals.create_referral(with_token(create, Some(&coordinator))).await.unwrap().into_inner().referral.unwrap();
    if accept {
        let decision = refs::TriageReferralRequest {
            referral_id: referral.id.clone(),
            etag: referral.etag.clone(),
            decision: Some(refs::triage_referral_request::Decision::Accept(refs::Accept {})),
            request_id: String::new(),
        };
        let clinician = token(Role::Clinician, Duration::from_secs(600));
        referral = referrals.triage_referral(with_token(decision, Some(&clinician))).await.unwrap().into_inner().referral.unwrap();
    }
    (patient.id, referral)
}

/// Free slots of `clinic`, earliest first.
pub async fn free_slots(p: &Platform, clinic: &sched::Clinic, count: i32) -> Vec<sched::Slot> {
    let search = sched::SearchSlotsRequest {
        target: Some(sched::search_slots_request::Target::ClinicId(clinic.id.clone())),
        page_size: count,
        ..Default::default()
    };
    SchedulingClient::new(p.gateway.clone())
        .search_slots(with_token(search, Some(&token(Role::Coordinator, Duration::from_secs(600)))))
        .await
        .unwrap()
        .into_inner()
        .slots
}
