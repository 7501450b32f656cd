//! `pac-load bench`: the measurements behind BENCHMARKS.md, over real gRPC on loopback against a
//! real Postgres, each compared with its baseline in the same run, each on a platform of its own
//! started in this process. Data is seeded through the services' own bulk loaders (`crate::seed`).
//!
//! - `search`: SearchPatients latency with 10,000 and then 1,000,000 patients in the table.
//! - `register`: RegisterPatient throughput against pgbench running the patient INSERT, alternating.
//! - `book`, `slots`: the scheduling service (see `scheduling`).
//! - `worklist`, `event-lag`: the referrals service (see `referrals`).
//! - `gateway`: the gateway's overhead (see `gateway`).
//! - `gateway-booking`: booking through the gateway against booking straight at scheduling (see
//!   `booking`).
//! - `adt`: the ADT listener (HL7 v2 over MLLP) against the same updates over gRPC; `siu`: a
//!   booking's S12 at a receiving engine (see `interop`).
//! - `fhir`: the FHIR API's Patient read against GetPatient over gRPC, and its Patient and Slot
//!   searches at size (see `fhir`).
//! - `all --quick`: every one of them for a few seconds on small data (CI), so none can rot unseen.

mod booking;
mod fhir;
mod gateway;
mod interop;
mod referrals;
mod scheduling;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use pac_platform::PlatformConfig;
use pac_platform::local_postgres::LocalPostgres;
use pac_proto::records as pb;
use pac_proto::records::patient_records_client::PatientRecordsClient;
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::people::{self, Rng};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// SearchPatients latency at a small and a large table size, in one run.
    Search {
        #[arg(long, default_value_t = 10_000)]
        small: i64,
        #[arg(long, default_value_t = 1_000_000)]
        large: i64,
        /// Queries measured at each size.
        #[arg(long, default_value_t = 3_000)]
        queries: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// RegisterPatient throughput against pgbench inserting the same patient row.
    Register {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// RegisterPatient from an empty table with autovacuum off for it: throughput over the first
    /// `seconds` against the same run's next `seconds` after ANALYZE (a plan made on the empty
    /// table must not stay).
    RegisterFromEmpty {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Throughput is reported for each slice of this many seconds.
        #[arg(long, default_value_t = 10)]
        slice: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// BookAppointment throughput on distinct slots against pgbench running the booking's SQL, then
    /// a stampede of clients on few slots.
    Book {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Single-place slots seeded for the gRPC bookings (and as many for pgbench's).
        #[arg(long, default_value_t = 300_000)]
        slots: u64,
    },
    /// ListReferrals (worklist) latency at a small and a large number of referrals, in one run.
    Worklist {
        #[arg(long, default_value_t = 10_000)]
        small: i64,
        #[arg(long, default_value_t = 1_000_000)]
        large: i64,
        #[arg(long, default_value_t = 3_000)]
        queries: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// A database-bound RPC through the gateway against the same RPC called directly.
    Gateway {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Calls in flight on each path: enough to keep the machine busy on both, so that the ratio
        /// compares what each path can carry. Each answer through the gateway waits for its audit
        /// record's commit, so that path needs more calls in flight to fill the machine than the
        /// direct one (BENCHMARKS.md: at 32 it left a tenth of the machine idle).
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Patients seeded; each call looks one up by phone.
        #[arg(long, default_value_t = 100_000)]
        patients: u64,
    },
    /// Time from a booking's answer to its referral showing it, under a steady booking rate.
    EventLag {
        /// Bookings per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// SearchSlots latency at a small and a large number of slots, in one run.
    Slots {
        #[arg(long, default_value_t = 50_000)]
        small: i64,
        #[arg(long, default_value_t = 5_000_000)]
        large: i64,
        #[arg(long, default_value_t = 3_000)]
        queries: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// BookAppointment through the gateway (a coordinator's token) against the same bookings sent
    /// straight to scheduling (the caller context the gateway would sign), taking turns, in one run.
    GatewayBooking(booking::GatewayBookingArgs),
    /// A08 updates over MLLP against the same updates through the gateway over gRPC, in one run;
    /// ACK latency at a steady rate; resent messages write nothing.
    Adt(interop::AdtArgs),
    /// Bookings through the gateway at a steady rate; each booking's S12 at a receiving engine over
    /// the interop component's scheduling feed.
    Siu(interop::SiuArgs),
    /// `GET Patient/{id}` through the FHIR API against GetPatient over gRPC through the gateway,
    /// taking turns, in one run; Patient and Slot searches through the FHIR API at size.
    Fhir(fhir::FhirArgs),
    /// Every benchmark above, one after another.
    All {
        /// A few seconds each on small data: shows each still runs, measures nothing (CI).
        #[arg(long)]
        quick: bool,
    },
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Search { small, large, queries, concurrency } => search(small, large, queries, concurrency).await,
        Scenario::Register { seconds, concurrency, runs } => register(seconds, concurrency, runs).await,
        Scenario::RegisterFromEmpty { seconds, slice, concurrency, runs } => register_from_empty(seconds, slice, concurrency, runs).await,
        Scenario::Book { seconds, concurrency, runs, slots } => scheduling::book(seconds, concurrency, runs, slots).await,
        Scenario::Slots { small, large, queries, concurrency } => scheduling::slots(small, large, queries, concurrency).await,
        Scenario::Worklist { small, large, queries, concurrency } => referrals::worklist(small, large, queries, concurrency).await,
        Scenario::EventLag { rate, seconds } => referrals::event_lag(rate, seconds).await,
        Scenario::Gateway { seconds, concurrency, runs, patients } => gateway::overhead(seconds, concurrency, runs, patients).await,
        Scenario::GatewayBooking(args) => booking::gateway_against_direct(args).await,
        Scenario::Adt(args) => interop::adt_against_grpc(args).await,
        Scenario::Siu(args) => interop::booking_to_s12(args).await,
        Scenario::Fhir(args) => fhir::fhir(args).await,
        Scenario::All { quick } => all(quick).await,
    }
}

/// Each benchmark's settings for `all --quick`: a few seconds on small data, enough to show it
/// still runs end to end (its figures mean nothing). Every benchmark must have a line here.
const QUICK: &[(&str, &[&str])] = &[
    ("search", &["--small", "500", "--large", "2000", "--queries", "60", "--concurrency", "2"]),
    ("register", &["--seconds", "1", "--runs", "1", "--concurrency", "4"]),
    ("register-from-empty", &["--seconds", "2", "--slice", "1", "--concurrency", "4"]),
    ("book", &["--seconds", "1", "--runs", "1", "--concurrency", "4", "--slots", "20000"]),
    ("worklist", &["--small", "10000", "--large", "20000", "--queries", "80", "--concurrency", "2"]),
    ("gateway", &["--seconds", "2", "--runs", "1", "--concurrency", "4", "--patients", "2000"]),
    ("event-lag", &["--rate", "20", "--seconds", "2"]),
    ("slots", &["--small", "2000", "--large", "8000", "--queries", "60", "--concurrency", "2"]),
    ("gateway-booking", &["--seconds", "1", "--rounds", "1", "--concurrency", "4"]),
    ("adt", &["--seconds", "1", "--rounds", "1", "--patients", "40", "--rate", "20", "--rate-seconds", "1", "--resend", "20"]),
    ("siu", &["--rate", "20", "--seconds", "1"]),
    ("fhir", &["--seconds", "1", "--rounds", "1", "--concurrency", "4", "--patients", "2000", "--slots", "20000", "--queries", "60"]),
];

/// Every benchmark, one after another: quick (`QUICK`) or at full size.
async fn all(quick: bool) -> anyhow::Result<()> {
    use clap::{Args as _, FromArgMatches};
    let command = BenchArgs::augment_args(clap::Command::new("bench"));
    let names: Vec<String> =
        command.get_subcommands().map(|c| c.get_name().to_string()).filter(|name| name != "all" && name != "help").collect();
    for name in &names {
        let settings: &[&str] = if quick {
            QUICK
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, a)| *a)
                .ok_or_else(|| anyhow::anyhow!("bench {name} has no quick settings (QUICK)"))?
        } else {
            &[]
        };
        let mut argv = vec!["bench", name.as_str()];
        argv.extend_from_slice(settings);
        eprintln!("\n== pac-load {}", argv.join(" "));
        let matches = BenchArgs::augment_args(clap::Command::new("bench")).try_get_matches_from(&argv)?;
        let started = Instant::now();
        Box::pin(run(BenchArgs::from_arg_matches(&matches)?)).await.with_context(|| format!("bench {name}"))?;
        eprintln!("== bench {name}: {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The records, scheduling and referrals services on a fresh database of their own.
pub(crate) struct Bench {
    _postgres: LocalPostgres,
    pub admin_url: String,
    pub records: SocketAddr,
    pub scheduling: SocketAddr,
    pub referrals: SocketAddr,
    pub gateway: SocketAddr,
    /// The key the gateway signs caller contexts with, and the services verify them with.
    pub internal_key: pac_platform::config::Secret,
    /// The platform's settings (the services' database roles among them).
    pub platform: PlatformConfig,
    pub shutdown: CancellationToken,
}

impl Bench {
    pub async fn start(database: &str) -> anyhow::Result<Self> {
        let postgres = LocalPostgres::find_or_start(&std::env::temp_dir().join("pac-bench-postgres"), 54321, true).await?;
        let server = PgConnectOptions::from_str(&postgres.url)?;
        let mut conn = server.connect().await.context("connect to Postgres")?;
        for statement in [format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"), format!("CREATE DATABASE {database}")] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await?;
        }
        let admin_url = server.database(database).to_url_lossy().to_string();
        let platform = PlatformConfig::development(&admin_url);
        let internal_key = platform.internal_key.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let records = listener.local_addr()?;
        let config = pac_records::RecordsConfig::development(records);
        pac_records::migrate(&platform, &config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(pac_records::serve(platform.clone(), config, listener, shutdown.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let scheduling = listener.local_addr()?;
        let referrals_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let referrals = referrals_listener.local_addr()?;
        let mut config = pac_scheduling::SchedulingConfig::development(scheduling, format!("http://{records}"));
        config.referrals_url = format!("http://{referrals}");
        pac_scheduling::migrate(&platform, &config).await?;
        tokio::spawn(pac_scheduling::serve(platform.clone(), config, listener, shutdown.clone()));
        let listener = referrals_listener;
        let config = pac_referrals::ReferralsConfig::development(referrals, format!("http://{records}"), format!("http://{scheduling}"));
        pac_referrals::migrate(&platform, &config).await?;
        tokio::spawn(pac_referrals::serve(platform.clone(), config, listener, shutdown.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let gateway = listener.local_addr()?;
        let mut config = pac_gateway::GatewayConfig::development(
            gateway,
            format!("http://{records}"),
            format!("http://{scheduling}"),
            format!("http://{referrals}"),
        );
        // Load comes from one caller here: its rate limit is checked on every call but never reached.
        config.limits = pac_gateway::proxy::Limits {
            max_in_flight: 4096,
            per_second: 1e9,
            burst: 1e9,
            searches_per_caller: 4096,
            ..pac_gateway::proxy::DEFAULT_LIMITS
        };
        pac_gateway::migrate(&platform).await?;
        tokio::spawn(pac_gateway::serve(platform.clone(), config, listener, shutdown.clone()));
        Ok(Self { _postgres: postgres, admin_url, records, scheduling, referrals, gateway, internal_key, platform, shutdown })
    }

    /// Separate HTTP/2 connections, as separate clients would have.
    async fn clients(&self, count: usize) -> anyhow::Result<Vec<PatientRecordsClient<Channel>>> {
        records_clients(self.records, count).await
    }

    /// Patients `from..to` of the search population (RR8's), through the records service's bulk loader.
    pub async fn seed_patients(&self, from: u64, to: u64) -> anyhow::Result<()> {
        let pool = self.records_pool().await?;
        crate::seed::patients(&pool, 0, from..to, "RR8").await?;
        pool.close().await;
        Ok(())
    }

    pub async fn admin(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&self.admin_url).await?)
    }

    /// A small pool as a service's own role, for its bulk loader (long statements allowed).
    fn seeding(&self) -> PlatformConfig {
        let mut platform = self.platform.clone();
        platform.db.max_connections = 2;
        platform.db.statement_timeout = Duration::from_secs(600);
        platform
    }

    pub async fn records_pool(&self) -> anyhow::Result<sqlx::PgPool> {
        pac_records::connect(&self.seeding(), &pac_records::RecordsConfig::development(self.records)).await
    }

    pub async fn scheduling_pool(&self) -> anyhow::Result<sqlx::PgPool> {
        let config = pac_scheduling::SchedulingConfig::development(self.scheduling, format!("http://{}", self.records));
        pac_scheduling::connect(&self.seeding(), &config).await
    }

    pub async fn referrals_pool(&self) -> anyhow::Result<sqlx::PgPool> {
        let config = pac_referrals::ReferralsConfig::development(self.referrals, String::new(), String::new());
        pac_referrals::connect(&self.seeding(), &config).await
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `count` records clients on separate connections to `address`.
pub(crate) async fn records_clients(address: SocketAddr, count: usize) -> anyhow::Result<Vec<PatientRecordsClient<Channel>>> {
    let mut clients = Vec::new();
    for _ in 0..count {
        let channel = Endpoint::from_shared(format!("http://{address}"))?.connect().await?;
        clients.push(PatientRecordsClient::new(channel));
    }
    Ok(clients)
}

/// The query mix: full names (common and rare), misspelt names, name with birth date, a district, a phone.
pub(crate) fn search_queries(count: usize, patients: i64, rng: &mut Rng) -> Vec<(&'static str, pb::SearchPatientsRequest)> {
    let (family, given) = people::names();
    (0..count)
        .map(|n| {
            let (g, f) = (&given[rng.skewed(given.len())], &family[rng.skewed(family.len())]);
            match n % 6 {
                0 => ("name", pb::SearchPatientsRequest { name: format!("{g} {f}"), ..Default::default() }),
                1 => (
                    "rare name",
                    pb::SearchPatientsRequest {
                        name: format!("{} {}", given[195 - rng.below(20)], family[299 - rng.below(30)]),
                        ..Default::default()
                    },
                ),
                2 => {
                    let mut misspelt = f.clone();
                    misspelt.remove(1 + rng.below(misspelt.len() - 2));
                    ("misspelt name", pb::SearchPatientsRequest { name: format!("{g} {misspelt}"), ..Default::default() })
                }
                3 => {
                    let date = people::date(people::birth_date(rng.below(patients as usize) as u64));
                    ("name + birth date", pb::SearchPatientsRequest { name: f.clone(), birth_date: Some(date), ..Default::default() })
                }
                4 => {
                    let district = people::district(rng.below(patients as usize) as u64);
                    ("district", pb::SearchPatientsRequest { postcode: district, ..Default::default() })
                }
                _ => {
                    ("phone", pb::SearchPatientsRequest { phone: people::phone(rng.below(patients as usize) as u64), ..Default::default() })
                }
            }
        })
        .collect()
}

pub(crate) struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Runs the queries with `concurrency` clients; returns each query's latency.
async fn measure_search(
    clients: &[PatientRecordsClient<Channel>],
    queries: Vec<(&'static str, pb::SearchPatientsRequest)>,
) -> anyhow::Result<Vec<(&'static str, Duration)>> {
    let timings = latencies(clients, queries, |mut client: PatientRecordsClient<Channel>, request| async move {
        client.search_patients(request).await.map(drop)
    })
    .await?;
    Ok(timings.into_iter().map(|(kind, latency, ())| (kind, latency)).collect())
}

/// Runs `concurrency` workers, each calling `call(client, worker, n)` back to back for `seconds`
/// (clients shared round-robin); successful calls per second. The first failure ends the run.
pub(crate) async fn throughput<C, F, Fut>(clients: &[C], seconds: u64, concurrency: usize, what: &str, call: F) -> anyhow::Result<f64>
where
    C: Clone + Send + 'static,
    F: Fn(C, u64, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency as u64 {
        let (client, call) = (clients[worker as usize % clients.len()].clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                call(client.clone(), worker, n).await?;
            }
            Ok::<_, tonic::Status>(n)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await?.map_err(|status| anyhow::anyhow!("{what} failed: {status:?}"))?;
    }
    Ok(total as f64 / seconds as f64)
}

/// Sends `queries` spread over `clients` (each client's share one after another, clients in
/// parallel); returns each query's kind, latency and what `call` made of the answer.
pub(crate) async fn latencies<C, Q, F, Fut, R>(
    clients: &[C],
    queries: Vec<(&'static str, Q)>,
    call: F,
) -> anyhow::Result<Vec<(&'static str, Duration, R)>>
where
    C: Clone + Send + 'static,
    Q: Clone + Send + 'static,
    R: Send + 'static,
    F: Fn(C, Q) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<R, tonic::Status>> + Send,
{
    let per_client = queries.len().div_ceil(clients.len());
    let mut tasks = Vec::new();
    for (client, chunk) in clients.iter().zip(queries.chunks(per_client)) {
        let (client, chunk, call) = (client.clone(), chunk.to_vec(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut timings = Vec::with_capacity(chunk.len());
            for (kind, request) in chunk {
                let started = Instant::now();
                let answer = call(client.clone(), request).await?;
                timings.push((kind, started.elapsed(), answer));
            }
            Ok::<_, tonic::Status>(timings)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

async fn search(small: i64, large: i64, queries: usize, concurrency: usize) -> anyhow::Result<()> {
    let bench = Bench::start("pac_bench_search").await?;
    let clients = bench.clients(concurrency).await?;
    let mut results = Vec::new();
    let mut seeded = 0;
    for size in [small, large] {
        let started = Instant::now();
        bench.seed_patients(seeded as u64, size as u64).await?;
        seeded = size;
        eprintln!("seeded {size} patients in {:.0} s", started.elapsed().as_secs_f64());
        let mut rng = Rng(0x5eed_0000 + size as u64);
        measure_search(&clients, search_queries(queries / 5, size, &mut rng)).await?; // warm-up
        let timings = measure_search(&clients, search_queries(queries, size, &mut rng)).await?;
        results.push((size, timings));
    }
    println!("\nSearchPatients over gRPC, {concurrency} concurrent clients, {queries} queries per size\n");
    println!("| patients | p50 | p95 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|");
    for (size, timings) in &results {
        let all = Latencies(timings.iter().map(|(_, d)| *d).collect());
        println!(
            "| {size} | {} | {} | {} | {} |",
            ms(all.percentile(0.5)),
            ms(all.percentile(0.95)),
            ms(all.percentile(0.99)),
            ms(all.percentile(1.0))
        );
    }
    println!("\nBy query kind (p50 / p99):\n");
    println!("| kind | {} | {} |", results[0].0, results[1].0);
    println!("|---|---:|---:|");
    for kind in ["name", "rare name", "misspelt name", "name + birth date", "district", "phone"] {
        let of = |timings: &Vec<(&str, Duration)>| Latencies(timings.iter().filter(|(k, _)| *k == kind).map(|(_, d)| *d).collect());
        let (a, b) = (of(&results[0].1), of(&results[1].1));
        println!(
            "| {kind} | {} / {} | {} / {} |",
            ms(a.percentile(0.5)),
            ms(a.percentile(0.99)),
            ms(b.percentile(0.5)),
            ms(b.percentile(0.99))
        );
    }
    let p50 = |i: usize| Latencies(results[i].1.iter().map(|(_, d)| *d).collect()).percentile(0.5);
    let p99_large = Latencies(results[1].1.iter().map(|(_, d)| *d).collect()).percentile(0.99);
    let ratio = p50(1).as_secs_f64() / p50(0).as_secs_f64();
    println!("\np50 ratio {large}/{small}: {ratio:.2} (bar: <= 2.0) {}", verdict(ratio <= 2.0));
    println!("p99 at {large}: {} (bar: < 25 ms) {}", ms(p99_large), verdict(p99_large < Duration::from_millis(25)));
    Ok(())
}

pub(crate) fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// The patient INSERT registration performs, as a pgbench script with varying values.
const PGBENCH_INSERT: &str = r#"\set n random(1, 1000000000)
INSERT INTO records.patients (id, nhs_number, nhs_number_status, given_name, family_name, birth_date, sex, address_lines, locality, district, postcode, postcode_outward, country, phone, email, gp_practice_code, preferred_language, interpreter_needed, accessibility_needs, preferred_contact_method, consented_contact_methods, restricted, search_name, family_phonetic, duplicate_override, created_at, updated_at) VALUES (gen_random_uuid(), NULL, 3, 'Bench', 'Family' || :n, date '1930-01-01' + (:n % 33000), 1 + (:n % 2), '{"1 Infirmary Street"}', 'Leeds', '', 'LS1 3EX', 'LS1', '', NULL, NULL, NULL, NULL, false, '{}', 0, '{}', false, 'bench family' || :n, 'FML', NULL, now(), now());
"#;

pub(crate) fn pgbench_path() -> anyhow::Result<PathBuf> {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("pgbench").is_file() {
            return Ok(dir.join("pgbench"));
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path().join("bin/pgbench")).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(Ok).unwrap_or_else(|| Ok(PathBuf::from("pgbench")))
}

/// Runs a pgbench script (prepared statements) for `seconds` with `clients`; transactions per second.
pub(crate) fn pgbench(admin_url: &str, name: &str, sql: &str, seconds: u64, clients: usize) -> anyhow::Result<f64> {
    let script = std::env::temp_dir().join(format!("pac-bench-{name}.sql"));
    std::fs::write(&script, sql)?;
    let output = Command::new(pgbench_path()?)
        .args(["-n", "-M", "prepared", "-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string()])
        .arg("-f")
        .arg(&script)
        .args(libpq_args(admin_url)?)
        .output()
        .context("cannot run pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no tps in pgbench output: {stdout}{}", String::from_utf8_lossy(&output.stderr)))
}

/// Host, port, user and database as libpq command-line arguments.
pub(crate) fn libpq_args(url: &str) -> anyhow::Result<Vec<String>> {
    let options = PgConnectOptions::from_str(url)?;
    Ok(vec![
        "-h".into(),
        options.get_host().to_string(),
        "-p".into(),
        options.get_port().to_string(),
        "-U".into(),
        options.get_username().to_string(),
        options.get_database().unwrap_or("postgres").to_string(),
    ])
}

/// Registers distinct patients for `seconds` with `concurrency` requests in flight; successes per second.
async fn register_load(clients: &[PatientRecordsClient<Channel>], seconds: u64, concurrency: usize, round: u64) -> anyhow::Result<f64> {
    throughput(clients, seconds, concurrency, "registration", move |mut client: PatientRecordsClient<Channel>, worker, n| async move {
        client.register_patient(distinct_patient((round << 40) | (worker << 24) | n)).await.map(drop)
    })
    .await
}

/// A patient nobody else in the run resembles: a name spelt from the sequence number.
fn distinct_patient(seq: u64) -> pb::RegisterPatientRequest {
    pb::RegisterPatientRequest {
        patient: Some(people::distinct_person(seq)),
        request_id: format!("bench-{seq:x}"),
        allow_possible_duplicate: false,
    }
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

async fn register(seconds: u64, concurrency: usize, runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bench = Bench::start("pac_bench_register").await?;
    let clients = bench.clients(4).await?;
    let (mut baseline, mut platform) = (Vec::new(), Vec::new());
    for round in 0..runs {
        let url = bench.admin_url.clone();
        let tps = tokio::task::spawn_blocking(move || pgbench(&url, "register", PGBENCH_INSERT, seconds, 16)).await??;
        let rps = register_load(&clients, seconds, concurrency, round as u64).await?;
        eprintln!("round {}: pgbench {tps:.0} inserts/s, gRPC {rps:.0} registrations/s", round + 1);
        baseline.push(tps);
        platform.push(rps);
    }
    let ratio = median(&platform) / median(&baseline);
    println!(
        "\nRegisterPatient over gRPC ({concurrency} in flight, 4 connections) vs pgbench (16 clients) inserting the same patient row, {seconds} s each, alternating\n"
    );
    println!("| round | pgbench INSERT/s | RegisterPatient/s |");
    println!("|---:|---:|---:|");
    for (round, (tps, rps)) in baseline.iter().zip(&platform).enumerate() {
        println!("| {} | {tps:.0} | {rps:.0} |", round + 1);
    }
    println!("| median | {:.0} | {:.0} |", median(&baseline), median(&platform));
    println!("\nratio median(gRPC)/median(pgbench): {ratio:.2} (bar: >= 0.40) {}", verdict(ratio >= 0.4));
    Ok(())
}

/// Registers for `seconds` in slices of `slice` seconds; the rate of each slice and of the whole.
async fn register_slices(
    clients: &[PatientRecordsClient<Channel>],
    seconds: u64,
    slice: u64,
    concurrency: usize,
    first_round: u64,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let slices = seconds.div_ceil(slice);
    let mut rates = Vec::new();
    for n in 0..slices {
        let round = first_round + n;
        // Over 100,000 generated people a few resemble each other: registered anyway, after the
        // same duplicate check.
        let rate = throughput(clients, slice, concurrency, "registration", move |mut client: PatientRecordsClient<Channel>, worker, n| {
            let request =
                pb::RegisterPatientRequest { allow_possible_duplicate: true, ..distinct_patient((round << 40) | (worker << 24) | n) };
            async move { client.register_patient(request).await.map(drop) }
        })
        .await?;
        rates.push(rate);
    }
    let overall = rates.iter().sum::<f64>() / rates.len() as f64;
    Ok((rates, overall))
}

async fn register_from_empty(seconds: u64, slice: u64, concurrency: usize, runs: usize) -> anyhow::Result<()> {
    if runs == 0 || slice == 0 || seconds < slice {
        bail!("--runs and --slice must be at least 1, and --seconds at least --slice");
    }
    let mut ratios = Vec::new();
    let mut table = Vec::new();
    for run in 0..runs {
        let bench = Bench::start("pac_bench_register_empty").await?;
        let admin = bench.admin().await?;
        // Whatever the server's setting, nothing refreshes these tables' statistics but the ANALYZE below.
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'records'").fetch_all(&admin).await?;
        for t in &tables {
            let sql = format!("ALTER TABLE records.{t} SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&admin).await?;
        }
        let clients = bench.clients(4).await?;
        let round = (run as u64) << 12;
        let (cold, cold_rate) = register_slices(&clients, seconds, slice, concurrency, round).await?;
        let patients: i64 = sqlx::query_scalar("SELECT count(*) FROM records.patients").fetch_one(&admin).await?;
        sqlx::raw_sql("ANALYZE records.patients, records.local_identifiers").execute(&admin).await?;
        let (warm, warm_rate) = register_slices(&clients, seconds, slice, concurrency, round + 1024).await?;
        let ratio = cold_rate / warm_rate;
        let show = |rates: &[f64]| rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" · ");
        eprintln!(
            "run {}: from empty {cold_rate:.0}/s ({}), after ANALYZE at {patients} patients {warm_rate:.0}/s ({}): {ratio:.2}",
            run + 1,
            show(&cold),
            show(&warm)
        );
        table.push(format!(
            "| {} | {} | {cold_rate:.0} | {patients} | {} | {warm_rate:.0} | {ratio:.2} |",
            run + 1,
            show(&cold),
            show(&warm)
        ));
        ratios.push(ratio);
        admin.close().await;
    }
    println!(
        "\nRegisterPatient from an empty table, autovacuum off ({concurrency} in flight, 4 connections): the first {seconds} s, then ANALYZE and the next {seconds} s; per-{slice} s slices\n"
    );
    println!(
        "| run | from empty, per slice /s | from empty /s | patients at ANALYZE | after ANALYZE, per slice /s | after ANALYZE /s | ratio |"
    );
    println!("|---:|---|---:|---:|---|---:|---:|");
    for row in &table {
        println!("{row}");
    }
    let (low, high) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
    let ratio = median(&ratios);
    println!("\nmedian ratio (from empty / after ANALYZE): {ratio:.2}, range {low:.2}-{high:.2} (bar: >= 0.80) {}", verdict(ratio >= 0.8));
    Ok(())
}
