//! `pac-load bench gateway-booking`: BookAppointment through the gateway, as other teams' clients
//! call it (a coordinator's bearer token; authenticated, checked against the role table, forwarded,
//! and its answer held until its audit record is committed), against the same bookings sent
//! straight to the scheduling service with the caller context the gateway would sign for that
//! coordinator. Both paths run the `book` load of `pac-load run` (closed loop, 16 in flight, each
//! booking a slot of its own for a patient of its own), taking turns in one-second slices (and
//! turns at going first), so both see the same seconds of this machine. Then single calls, one at a
//! time, of a call the gateway does not audit (SearchSlots), an audited read (GetPatient) and the
//! booking, each way: what the gateway adds to each says where its time goes.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use pac_gateway::policy::Role;
use pac_proto::records as records_pb;
use pac_proto::scheduling as sched;
use tokio::time::Instant;

use crate::bench::{Bench, median, verdict};
use crate::credentials::{self, Credential};
use crate::load::driver::{self, Pace};
use crate::load::scenario::{Person, Scenario, World};
use crate::load::stats::{Stats, Tally};
use crate::load::target::{self, Callers, Target};
use crate::people::{Kind, numbered};

#[derive(Args)]
pub struct GatewayBookingArgs {
    /// One-second slices of each path in a round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Bookings in flight on each path.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// HTTP/2 connections from the load to the gateway, and to scheduling.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls of each kind timed one at a time on each path, for the breakdown.
    #[arg(long, default_value_t = 300)]
    single_calls: usize,
    /// Bookings a second the seed allows for on each path (a slot and a patient each).
    #[arg(long, default_value_t = 2_000)]
    capacity: u64,
}

const CLINICS: u64 = 8;

pub async fn gateway_against_direct(args: GatewayBookingArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0 && args.rounds > 0 && args.concurrency > 0, "--seconds, --rounds and --concurrency must be positive");
    let bench = Bench::start("pac_bench_gateway_booking").await?;
    // A slot and a patient for every booking either path could make: the measured slices, a
    // second of warm-up each, and the single calls.
    let per_path = args.capacity * (args.seconds * args.rounds as u64 + 1) + args.single_calls as u64 + 100;
    let started = Instant::now();
    let records = bench.records_pool().await?;
    crate::seed::patients(&records, 0, 0..2 * per_path, "RR8").await?;
    let scheduling = bench.scheduling_pool().await?;
    let clinics = crate::seed::directory(&scheduling, 0, CLINICS, 1, 1, "BOOK", "RR8").await?;
    crate::seed::slots(&scheduling, 0, 0..2 * per_path, &clinics, 1, 0, crate::seed::first_slot_start()).await?;
    eprintln!("seeded {} patients and {} slots in {:.0} s", 2 * per_path, 2 * per_path, started.elapsed().as_secs_f64());

    // One RR8 coordinator: a bearer token for the gateway; for scheduling, the context the gateway
    // signs for that token.
    let identity = credentials::identity(Role::Coordinator, &["RR8".to_string()]);
    let lifetime = Duration::from_secs(4 * 3600);
    let token = Credential::bearer(&credentials::development_token(&identity, lifetime)?)?;
    let context = Credential::caller_context(&credentials::caller_context(&bench.internal_key, &identity, lifetime))?;
    let callers = |coordinator: Credential| Callers { coordinators: vec![coordinator], admin: None, clinician: None };
    let gateway = Target::gateway(
        format!("gateway {}", bench.gateway),
        target::channels(&bench.gateway.to_string(), args.connections, None).await?,
        callers(token),
    );
    let direct = Target::direct(
        format!("scheduling {}", bench.scheduling),
        target::channels(&bench.records.to_string(), args.connections, None).await?,
        target::channels(&bench.scheduling.to_string(), args.connections, None).await?,
        Vec::new(),
        callers(context),
    );
    // Each path its own slots and patients: the first half for direct calls, the second through the gateway.
    let world = |half: u64| {
        let numbers = half * per_path..(half + 1) * per_path;
        let patients = numbers.clone().map(|n| person(numbered(Kind::Patient, 0, n).to_string())).collect();
        let slots = numbers.map(|n| numbered(Kind::Slot, 0, n).to_string()).collect();
        Arc::new(World::given(Scenario::Book, format!("bench{half}"), patients, slots, Duration::from_secs(10)))
    };
    let paths = [(direct, world(0)), (gateway, world(1))];

    let pace = Pace::Closed { concurrency: args.concurrency };
    for (target, world) in &paths {
        let warmup = Arc::new(Stats::default());
        driver::drive(pace, Duration::from_secs(1), 0, crate::load::operation(world, target, &warmup), warmup, Duration::from_secs(10))
            .await;
    }
    let totals = [Stats::default(), Stats::default()];
    let admin = bench.admin().await?;
    let mut costs = [Cost::default(), Cost::default()];
    let mut rounds = Vec::new();
    let mut sequence = 1u64 << 40;
    for round in 0..args.rounds {
        let (mut ok, mut seconds) = ([0u64; 2], [0f64; 2]);
        let round_stats = [Arc::new(Stats::default()), Arc::new(Stats::default())];
        for slice in 0..args.seconds {
            let order = if (slice + round as u64).is_multiple_of(2) { [0, 1] } else { [1, 0] };
            for path in order {
                let (target, world) = &paths[path];
                let stats = Arc::new(Stats::default());
                let before = Cost::now(&admin).await?;
                let began = Instant::now();
                let operation = crate::load::operation(world, target, &stats);
                sequence += driver::drive(pace, Duration::from_secs(1), sequence, operation, stats.clone(), Duration::from_secs(10)).await;
                seconds[path] += began.elapsed().as_secs_f64();
                costs[path].add(&before, &Cost::now(&admin).await?);
                ok[path] += stats.total().ok();
                anyhow::ensure!(stats.not_sent_total() == 0, "the seed ran out of slots: raise --capacity");
                round_stats[path].absorb(&stats);
            }
        }
        let rates = [ok[0] as f64 / seconds[0], ok[1] as f64 / seconds[1]];
        let (direct_tally, gateway_tally) = (round_stats[0].total(), round_stats[1].total());
        eprintln!(
            "round {}: direct {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), through the gateway {:.0}/s (p50 {:.2} ms, p99 {:.2} ms): {:.2}",
            round + 1,
            rates[0],
            direct_tally.millis(0.5),
            direct_tally.millis(0.99),
            rates[1],
            gateway_tally.millis(0.5),
            gateway_tally.millis(0.99),
            rates[1] / rates[0]
        );
        for path in 0..2 {
            totals[path].absorb(&round_stats[path]);
        }
        rounds.push((rates, direct_tally, gateway_tally));
    }

    // One call at a time, each way.
    let mut singles = Vec::new();
    for (what, kind) in [
        ("SearchSlots (not audited)", Single::SearchSlots),
        ("GetPatient (audited read)", Single::GetPatient),
        ("BookAppointment (audited write)", Single::Book),
    ] {
        let mut tallies = Vec::new();
        for (target, world) in &paths {
            tallies.push(single(kind, target, world, args.single_calls, &clinics[0].id.to_string()).await?);
        }
        singles.push((what, tallies));
    }

    println!(
        "\nBookAppointment through the gateway (an RR8 coordinator's token) vs straight to scheduling (the caller context the gateway signs), \
         {} in flight on {} connections each way, a slot and a patient of its own per booking, {} rounds of {} one-second slices of each path, taking turns\n",
        args.concurrency, args.connections, args.rounds, args.seconds
    );
    println!("| round | direct bookings/s | p50 | p99 | gateway bookings/s | p50 | p99 | ratio |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for (round, (rates, d, g)) in rounds.iter().enumerate() {
        let ratio = rates[1] / rates[0];
        ratios.push(ratio);
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.0} | {:.2} ms | {:.2} ms | {ratio:.2} |",
            round + 1,
            rates[0],
            d.millis(0.5),
            d.millis(0.99),
            rates[1],
            g.millis(0.5),
            g.millis(0.99)
        );
    }
    let ratio = median(&ratios);
    println!("\nAll rounds, per path:\n");
    println!("| path | bookings | failed | p50 | p90 | p99 | p99.9 | max |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, stats) in [("direct", &totals[0]), ("gateway", &totals[1])] {
        let t = stats.total();
        println!(
            "| {name} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            t.ok(),
            if t.failures().is_empty() { "0".to_string() } else { t.failures() },
            t.millis(0.5),
            t.millis(0.9),
            t.millis(0.99),
            t.millis(0.999),
            t.latency.max() as f64 / 1000.0
        );
    }
    println!(
        "\nCPU per booking, all rounds (this process: the load, the services and the gateway; the database: this benchmark's backends):\n"
    );
    println!("| path | this process | the database | both | machine busy |");
    println!("|---|---:|---:|---:|---:|");
    for (name, cost, stats) in [("direct", &costs[0], &totals[0]), ("gateway", &costs[1], &totals[1])] {
        let bookings = stats.total().ok().max(1) as f64;
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0}% |",
            cost.process_ms / bookings,
            cost.database_ms / bookings,
            (cost.process_ms + cost.database_ms) / bookings,
            100.0 * cost.machine_busy_ms / cost.machine_ms.max(1.0)
        );
    }
    println!("\nOne call at a time ({} of each, each way): what the gateway adds\n", args.single_calls);
    println!("| call | direct p50 | gateway p50 | added p50 | direct p99 | gateway p99 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (what, tallies) in &singles {
        println!(
            "| {what} | {:.2} ms | {:.2} ms | {:+.2} ms | {:.2} ms | {:.2} ms |",
            tallies[0].millis(0.5),
            tallies[1].millis(0.5),
            tallies[1].millis(0.5) - tallies[0].millis(0.5),
            tallies[0].millis(0.99),
            tallies[1].millis(0.99)
        );
    }
    let failed = totals[0].total().calls() - totals[0].total().ok() + totals[1].total().calls() - totals[1].total().ok();
    println!(
        "\nthroughput ratio gateway/direct (median of the rounds): {ratio:.2} (bar: >= 0.70) {}",
        verdict(ratio >= 0.7 && failed == 0)
    );
    Ok(())
}

/// CPU time, in milliseconds: this process's, this database's backends', and the machine's (busy and
/// in all). Read from /proc, so only where Postgres runs on the same machine (it does here).
#[derive(Default, Clone, Copy)]
struct Cost {
    process_ms: f64,
    database_ms: f64,
    machine_busy_ms: f64,
    machine_ms: f64,
}

impl Cost {
    async fn now(admin: &sqlx::PgPool) -> anyhow::Result<Self> {
        let backends: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
                .fetch_all(admin)
                .await?;
        let (machine_busy_ms, machine_ms) = machine_cpu_ms();
        Ok(Self {
            process_ms: process_cpu_ms("self"),
            database_ms: backends.iter().map(|pid| process_cpu_ms(&pid.to_string())).sum(),
            machine_busy_ms,
            machine_ms,
        })
    }

    /// Adds what was spent from `before` to `after`.
    fn add(&mut self, before: &Cost, after: &Cost) {
        self.process_ms += after.process_ms - before.process_ms;
        // A backend that went away between the readings takes its time with it; one that came counts whole.
        self.database_ms += (after.database_ms - before.database_ms).max(0.0);
        self.machine_busy_ms += after.machine_busy_ms - before.machine_busy_ms;
        self.machine_ms += after.machine_ms - before.machine_ms;
    }
}

/// Clock ticks a second in /proc (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User and system CPU time of a process (`self` or a pid), in milliseconds; 0 when it is gone.
fn process_cpu_ms(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) * 1000.0 / TICKS_PER_SECOND
}

/// The machine's busy and total CPU time, in milliseconds (all cores).
fn machine_cpu_ms() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let times: Vec<f64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    let total: f64 = times.iter().take(8).sum();
    let idle = times.get(3).copied().unwrap_or(0.0) + times.get(4).copied().unwrap_or(0.0);
    ((total - idle) * 1000.0 / TICKS_PER_SECOND, total * 1000.0 / TICKS_PER_SECOND)
}

fn person(id: String) -> Person {
    Person {
        id,
        given: String::new(),
        family: String::new(),
        birth_date: Default::default(),
        phone: String::new(),
        postcode: String::new(),
    }
}

#[derive(Clone, Copy)]
enum Single {
    SearchSlots,
    GetPatient,
    Book,
}

/// `calls` calls of `kind`, one at a time, through `target`.
async fn single(kind: Single, target: &Target, world: &World, calls: usize, clinic: &str) -> anyhow::Result<Tally> {
    let stats = Stats::default();
    let coordinator = target.callers.coordinator();
    for n in 0..calls {
        let sent = Instant::now();
        let result = match kind {
            Single::SearchSlots => {
                let request = sched::SearchSlotsRequest {
                    target: Some(sched::search_slots_request::Target::ClinicId(clinic.to_string())),
                    page_size: 20,
                    ..Default::default()
                };
                target.scheduling().search_slots(coordinator.request(request)).await.map(drop)
            }
            Single::GetPatient => {
                let request = records_pb::GetPatientRequest { id: world.patients[n % world.patients.len()].id.clone() };
                target.records().get_patient(coordinator.request(request)).await.map(drop)
            }
            Single::Book => {
                world.operate(target, &stats, (1 << 50) + n as u64, sent).await;
                continue;
            }
        };
        stats.record("single", &result, sent.elapsed());
    }
    let tally = stats.total();
    anyhow::ensure!(
        tally.ok() == tally.calls() && tally.calls() == calls as u64,
        "single calls failed: {} {:?}",
        tally.failures(),
        tally.reasons
    );
    Ok(tally)
}
