//! What the fault suite's tests share: the platform started in this process, or as `pac serve`
//! processes that can be killed and restarted, on a database of the test's own.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pac_platform::testkit::{TestDatabase, channel, free_port, listener};
use pac_proto::common::{Address, Date};
use pac_proto::records as records_pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use pac_proto::scheduling as sched;
use pac_proto::scheduling::scheduling_client::SchedulingClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const PAC: &str = env!("CARGO_BIN_EXE_pac");

/// Records and scheduling served in this process.
pub struct InProcess {
    pub db: TestDatabase,
    pub records: Channel,
    pub scheduling: Channel,
    pub shutdown: CancellationToken,
}

impl InProcess {
    pub async fn start() -> Self {
        let db = TestDatabase::create().await;
        let platform = db.platform_config();
        let shutdown = CancellationToken::new();
        let records_addr = pac_e2e::serve_records(&platform, &shutdown).await;
        let (listener, _) = listener().await;
        let scheduling_addr = listener.local_addr().unwrap();
        let config = pac_scheduling::SchedulingConfig::development(scheduling_addr, format!("http://{records_addr}"));
        pac_e2e::serve_scheduling(&platform, config, listener, &shutdown).await;
        Self { db, records: channel(records_addr), scheduling: channel(scheduling_addr), shutdown }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A registration of a distinct patient (`n` tells them apart).
pub fn registration(n: u32, request_id: String) -> records_pb::RegisterPatientRequest {
    let letters: String = format!("{n:06}").bytes().map(|b| (b'a' + (b - b'0')) as char).collect();
    records_pb::RegisterPatientRequest {
        patient: Some(records_pb::Patient {
            given_name: format!("Fault{letters}"),
            family_name: format!("Tester{letters}"),
            birth_date: Some(Date { year: 1950 + (n % 50) as i32, month: 1 + (n % 12) as i32, day: 1 + (n % 28) as i32 }),
            sex: 1 + (n % 2) as i32,
            address: Some(Address { postcode: "LS1 4AP".into(), ..Default::default() }),
            ..Default::default()
        }),
        request_id,
        allow_possible_duplicate: true,
    }
}

/// A clinic of RR8 (service `TO-FRACTURE`) open every day from tomorrow, 08:00–18:00 in 30-minute
/// slots, each with room for `capacity` patients; returns it and its free slots (the first hundred).
pub async fn clinic(scheduling: &mut SchedulingClient<Channel>, capacity: i32) -> (sched::Clinic, Vec<sched::Slot>) {
    let location = sched::Location { name: "Fault Hospital".into(), ..Default::default() };
    let location = scheduling
        .create_location(sched::CreateLocationRequest { location: Some(location), request_id: String::new() })
        .await
        .unwrap()
        .into_inner()
        .location
        .unwrap();
    let clinic = sched::Clinic {
        location_id: location.id,
        name: "Fracture clinic".into(),
        specialty: "Trauma and orthopaedics".into(),
        service_code: "TO-FRACTURE".into(),
        time_zone: "Europe/London".into(),
        organisation: "RR8".into(),
        ..Default::default()
    };
    let clinic = scheduling
        .create_clinic(sched::CreateClinicRequest { clinic: Some(clinic), request_id: String::new() })
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
            slot_minutes: 30,
            capacity,
            valid_from: Some(pac_platform::convert::date(today + chrono::Duration::days(1))),
            ..Default::default()
        };
        scheduling
            .create_session_template(sched::CreateSessionTemplateRequest { session_template: Some(template), request_id: String::new() })
            .await
            .unwrap();
    }
    let search = sched::SearchSlotsRequest {
        target: Some(sched::search_slots_request::Target::ClinicId(clinic.id.clone())),
        page_size: 100,
        ..Default::default()
    };
    let slots = scheduling.search_slots(search).await.unwrap().into_inner().slots;
    (clinic, slots)
}

pub async fn register(records: &mut PatientRecordsClient<Channel>, n: u32) -> String {
    records.register_patient(registration(n, String::new())).await.unwrap().into_inner().patient.unwrap().id
}

/// Sessions of the test's database that have sat inside a transaction, doing nothing, for over two
/// seconds (a live transaction passes through that state between its statements): application,
/// last statement, how long.
pub async fn stuck_in_transaction(admin: &sqlx::PgPool, database: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT application_name, query, (now() - state_change)::text FROM pg_stat_activity \
         WHERE datname = $1 AND state LIKE 'idle in transaction%' AND state_change < now() - interval '2 seconds'",
    )
    .bind(database)
    .fetch_all(admin)
    .await
    .unwrap()
}

/// A component of the platform run as its own `pac serve` process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Records,
    Scheduling,
    Referrals,
    Gateway,
}

impl Component {
    pub const SERVICES: [Component; 3] = [Component::Records, Component::Scheduling, Component::Referrals];

    pub fn name(self) -> &'static str {
        match self {
            Self::Records => "records",
            Self::Scheduling => "scheduling",
            Self::Referrals => "referrals",
            Self::Gateway => "gateway",
        }
    }
}

/// The platform as four `pac serve` processes on a database of the test's own.
pub struct Processes {
    pub db: TestDatabase,
    pub addrs: HashMap<Component, SocketAddr>,
    running: HashMap<Component, Child>,
    /// Restarts made, and how long each took to serve again.
    pub restarts: Vec<(Component, Duration)>,
}

impl Processes {
    pub async fn start() -> Self {
        let db = TestDatabase::create().await;
        let addrs: HashMap<Component, SocketAddr> = [Component::Records, Component::Scheduling, Component::Referrals, Component::Gateway]
            .into_iter()
            .map(|c| (c, free_port()))
            .collect();
        let mut processes = Self { db, addrs, running: HashMap::new(), restarts: Vec::new() };
        let migrated = processes.command().args(["migrate", "all"]).output().expect("pac migrate");
        assert!(
            migrated.status.success(),
            "pac migrate all: {}{}",
            String::from_utf8_lossy(&migrated.stdout),
            String::from_utf8_lossy(&migrated.stderr)
        );
        for component in [Component::Records, Component::Scheduling, Component::Referrals, Component::Gateway] {
            processes.spawn(component);
        }
        for component in [Component::Records, Component::Scheduling, Component::Referrals, Component::Gateway] {
            processes.wait_serving(component, Duration::from_secs(60)).await;
        }
        processes
    }

    fn command(&self) -> Command {
        let url = |c: Component| format!("http://{}", self.addrs[&c]);
        let mut command = Command::new(PAC);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PAC_ENVIRONMENT", "development")
            .env("DATABASE_URL", &self.db.admin_url)
            .env("PAC_DB_MAX_CONNECTIONS", pac_platform::testkit::POOL_SIZE.to_string())
            .env("PAC_RECORDS_ADDR", self.addrs[&Component::Records].to_string())
            .env("PAC_SCHEDULING_ADDR", self.addrs[&Component::Scheduling].to_string())
            .env("PAC_REFERRALS_ADDR", self.addrs[&Component::Referrals].to_string())
            .env("PAC_GATEWAY_ADDR", self.addrs[&Component::Gateway].to_string())
            .env("PAC_RECORDS_URL", url(Component::Records))
            .env("PAC_SCHEDULING_URL", url(Component::Scheduling))
            .env("PAC_REFERRALS_URL", url(Component::Referrals))
            .env("PAC_OUTBOX_POLL_MS", "100")
            .env("PAC_SHUTDOWN_GRACE_MS", "1000")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null());
        command
    }

    fn spawn(&mut self, component: Component) {
        let child =
            self.command().args(["serve", component.name()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("pac serve");
        self.running.insert(component, child);
    }

    /// Waits until `component` answers its health check SERVING.
    pub async fn wait_serving(&mut self, component: Component, timeout: Duration) -> Duration {
        let started = Instant::now();
        let addr = self.addrs[&component].to_string();
        loop {
            let answer = tokio::task::spawn_blocking({
                let addr = addr.clone();
                move || Command::new(PAC).args(["health", "--addr", &addr, "--timeout", "1"]).stdin(Stdio::null()).output().unwrap()
            })
            .await
            .unwrap();
            if answer.status.success() {
                return started.elapsed();
            }
            let child = self.running.get_mut(&component).unwrap();
            assert!(child.try_wait().unwrap().is_none(), "pac serve {} exited", component.name());
            assert!(started.elapsed() < timeout, "{} did not serve within {timeout:?}", component.name());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`, then start it again and wait until it serves.
    pub async fn kill_and_restart(&mut self, component: Component) -> Duration {
        let mut child = self.running.remove(&component).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let started = Instant::now();
        self.spawn(component);
        self.wait_serving(component, Duration::from_secs(30)).await;
        let took = started.elapsed();
        self.restarts.push((component, took));
        took
    }

    pub fn channel(&self, component: Component) -> Channel {
        channel(self.addrs[&component])
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.running.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
