//! `pac-load run <scenario>`: load on any deployment of the platform, the way its callers make it.
//!
//! Through the gateway (`--gateway host:port`) with bearer tokens, or straight to the services
//! (`--records`, `--scheduling`, `--referrals`) with the caller context the gateway would sign
//! (`--internal-key`), or none on a development deployment. Open loop (`--rate`: operations sent on
//! schedule, each call timed from when it was due, so a stall is measured rather than waited out)
//! or closed loop (`--concurrency`: that many calls in flight). Every gRPC status is counted (and a
//! refusal's `ErrorInfo` reason); latencies go into HDR histograms (p50, p90, p99, p99.9, max), per
//! RPC and in total. A progress line each second on standard error; a JSON report at the end on
//! standard output or in `--report`.

pub mod driver;
pub mod scenario;
pub mod stats;
pub mod target;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use pac_gateway::policy::Role;
use pac_platform::config::Secret;
use serde_json::json;
use tokio::time::Instant;

use crate::credentials::{self, Credential};
use driver::{Operation, Pace};
use scenario::{Plan, Scenario, World};
use stats::Stats;
use target::{Callers, Target};

#[derive(Args)]
pub struct RunArgs {
    /// What the load does (`pac-load scenarios` lists them).
    #[arg(value_enum)]
    scenario: Scenario,
    /// The gateway (host:port, or an http:// or https:// URL): every call through it, with a bearer token.
    #[arg(long, required_unless_present_any = ["records", "scheduling", "referrals"])]
    gateway: Option<String>,
    /// The records service, called directly (instead of --gateway).
    #[arg(long, conflicts_with = "gateway")]
    records: Option<String>,
    /// The scheduling service, called directly.
    #[arg(long, conflicts_with = "gateway")]
    scheduling: Option<String>,
    /// The referrals service, called directly.
    #[arg(long, conflicts_with = "gateway")]
    referrals: Option<String>,
    /// Coordinators' bearer tokens: the load's calls take turns among them (through the gateway).
    /// Repeat, or separate with commas.
    #[arg(long, env = "PAC_TOKEN", hide_env_values = true, value_delimiter = ',')]
    token: Vec<String>,
    /// With --dev-tokens (or straight to the services), how many coordinators the load acts as:
    /// the gateway limits each caller (rate, searches in flight), as it would each of a team.
    #[arg(long, default_value_t = 20)]
    coordinators: usize,
    /// An administrator's bearer token: makes the run's clinic directory and referral service.
    #[arg(long, env = "PAC_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A clinician's bearer token: triages referrals (a coordinator's day).
    #[arg(long, env = "PAC_CLINICIAN_TOKEN", hide_env_values = true)]
    clinician_token: Option<String>,
    /// Make any token not given with the development key (`PAC_GATEWAY_DEV_TOKEN_KEY` or the
    /// built-in one), as `pac token` does: for development deployments.
    #[arg(long)]
    dev_tokens: bool,
    /// Direct calls: the deployment's internal key, to sign the caller contexts the gateway would.
    #[arg(long, env = "PAC_INTERNAL_KEY", hide_env_values = true)]
    internal_key: Option<String>,
    /// The organisation (ODS code) made tokens and contexts act for, and the run's clinics belong to.
    #[arg(long, default_value = pac_gateway::DEVELOPMENT_ORGANISATION)]
    org: String,
    /// Open loop: operations per second, sent on schedule whatever the answers' pace.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: operations in flight at once (16 when neither this nor --rate is given).
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long the measured load runs (e.g. 30s, 2m, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the measured load, not reported.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// HTTP/2 connections to the gateway (or to each service).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Each call's deadline.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Patients registered at the start (the population booked for and searched).
    #[arg(long, default_value_t = 1_000)]
    patients: usize,
    /// Free slots gathered at the start (default: enough for the run's bookings at the expected pace).
    #[arg(long)]
    slots: Option<usize>,
    /// Referrals made at the start (half accepted when a clinician can triage).
    #[arg(long, default_value_t = 200)]
    referrals_made: usize,
    /// Book into the existing clinics of this service code (and refer to it) instead of making a
    /// clinic directory (no administrator needed).
    #[arg(long)]
    service_code: Option<String>,
    /// Slot length of the clinics the run makes, in minutes.
    #[arg(long, default_value_t = 5)]
    slot_minutes: i32,
    /// CA certificate (PEM) to trust for an https:// address.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Where the JSON report goes (default: standard output).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Exit 1 when nothing succeeded, an operation could not be sent, or a call ended with a status
    /// that means something is broken (anything but OK, FAILED_PRECONDITION, ABORTED,
    /// ALREADY_EXISTS and NOT_FOUND, which a busy day brings).
    #[arg(long)]
    strict: bool,
}

/// The scenario names, as `run` takes them.
pub fn scenario_names() -> Vec<String> {
    Scenario::value_variants().iter().map(|s| s.name()).collect()
}

/// `30s`, `2m`, `500ms`, `1h` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.find(|c: char| c.is_ascii_alphabetic()).map_or((text, "s"), |at| text.split_at(at));
    let value: f64 = number.trim().parse().map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 2m, 500ms)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m or h")),
    };
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let pace = match (args.rate, args.concurrency) {
        (Some(rate), _) if rate > 0.0 && rate.is_finite() => Pace::Open { rate },
        (Some(_), _) => bail!("--rate must be a positive number of operations per second"),
        (None, concurrency) => Pace::Closed { concurrency: concurrency.unwrap_or(16).max(1) },
    };
    let lifetime = args.duration + args.warmup + Duration::from_secs(3600);
    let target = connect(&args, lifetime).await?;
    let plan = Plan {
        patients: args.patients,
        slots: args.slots.unwrap_or_else(|| expected_bookings(args.scenario, pace, args.duration + args.warmup)),
        referrals: args.referrals_made,
        service_code: args.service_code.clone(),
        organisation: args.org.to_uppercase(),
        slot_minutes: args.slot_minutes,
        timeout: args.timeout,
    };
    let setup_started = Instant::now();
    let world = Arc::new(World::make(args.scenario, &target, &plan).await.context("setting up the run's data")?);
    let mut made = world.made();
    made.seconds = setup_started.elapsed().as_secs_f64();

    if !args.warmup.is_zero() {
        eprintln!("warming up for {:.1} s", args.warmup.as_secs_f64());
        let warmup = Arc::new(Stats::default());
        driver::drive(pace, args.warmup, 0, operation(&world, &target, &warmup), warmup, args.timeout).await;
    }
    let stats = Arc::new(Stats::default());
    let progress = tokio::spawn(progress(stats.clone()));
    let started_at = chrono::Utc::now();
    let started = Instant::now();
    let sent = driver::drive(pace, args.duration, 1 << 40, operation(&world, &target, &stats), stats.clone(), args.timeout).await;
    let elapsed = started.elapsed().as_secs_f64().max(args.duration.as_secs_f64());
    progress.abort();

    let report = json!({
        "scenario": args.scenario.name(),
        "target": {
            "name": target.name,
            "through_gateway": target.through_gateway,
            "connections": args.connections,
            "coordinators": target.callers.coordinators.len(),
        },
        "pace": match pace {
            Pace::Open { rate } => json!({ "open_loop": { "rate_per_second": rate } }),
            Pace::Closed { concurrency } => json!({ "closed_loop": { "in_flight": concurrency } }),
        },
        "started_at": started_at.to_rfc3339(),
        "duration_seconds": args.duration.as_secs_f64(),
        "measured_seconds": elapsed,
        "warmup_seconds": args.warmup.as_secs_f64(),
        "operations_started": sent,
        "setup": made,
        "results": stats.report(elapsed),
        "generator": { "name": "pac-load", "version": env!("CARGO_PKG_VERSION") },
    });
    eprintln!("\n{} for {elapsed:.1} s against {}:", args.scenario.name(), target.name);
    for line in stats.summary(elapsed) {
        eprintln!("  {line}");
    }
    let text = serde_json::to_string_pretty(&report)?;
    match &args.report {
        Some(path) => std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{text}"),
    }
    if args.strict {
        let total = stats.total();
        let broken: Vec<String> =
            total.statuses.iter().filter(|(name, _)| stats::is_breakage(name)).map(|(name, n)| format!("{name} {n}")).collect();
        anyhow::ensure!(total.ok() > 0, "--strict: no call succeeded");
        anyhow::ensure!(broken.is_empty(), "--strict: calls failed: {}", broken.join(", "));
        anyhow::ensure!(stats.not_sent_total() == 0, "--strict: {} operations could not be sent", stats.not_sent_total());
    }
    Ok(())
}

/// Bookings (and reschedules) a run may make: at `--rate`, that rate's share; closed loop, as if
/// 1,500 operations a second.
fn expected_bookings(scenario: Scenario, pace: Pace, duration: Duration) -> usize {
    let share = match scenario {
        Scenario::Book => 1.0,
        Scenario::CoordinatorsDay => 0.15,
        _ => 0.0,
    };
    let per_second = match pace {
        Pace::Open { rate } => rate,
        Pace::Closed { .. } => 1_500.0,
    };
    ((per_second * duration.as_secs_f64() * share * 1.1) as usize + 100).min(200_000)
}

pub(crate) fn operation(world: &Arc<World>, target: &Target, stats: &Arc<Stats>) -> Operation {
    let (world, target, stats) = (world.clone(), target.clone(), stats.clone());
    Arc::new(move |n, due| {
        let (world, target, stats) = (world.clone(), target.clone(), stats.clone());
        Box::pin(async move { world.operate(&target, &stats, n, due).await })
    })
}

/// A line on standard error each second: the last second's calls, failures and latencies.
async fn progress(stats: Arc<Stats>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tick.tick().await;
        let (last, not_sent) = stats.take_interval();
        let failures = last.failures();
        eprintln!(
            "{:>5.0}s  {:>7} calls/s  ok {:>7}  p50 {:>7.2} ms  p99 {:>8.2} ms  max {:>8.2} ms{}{}",
            started.elapsed().as_secs_f64(),
            last.calls(),
            last.ok(),
            last.millis(0.5),
            last.millis(0.99),
            last.latency.max() as f64 / 1000.0,
            if failures.is_empty() { String::new() } else { format!("  failed: {failures}") },
            if not_sent == 0 { String::new() } else { format!("  not sent: {not_sent}") },
        );
    }
}

/// The target and who the calls say they are.
async fn connect(args: &RunArgs, lifetime: Duration) -> anyhow::Result<Target> {
    let organisations = vec![args.org.to_uppercase()];
    let ca = args.ca_file.as_deref();
    if let Some(gateway) = &args.gateway {
        let token = |given: &Option<String>, role: Role| -> anyhow::Result<Option<Credential>> {
            match given {
                Some(token) => Ok(Some(Credential::bearer(token)?)),
                None if args.dev_tokens => {
                    Ok(Some(Credential::bearer(&credentials::development_token(&credentials::identity(role, &organisations), lifetime)?)?))
                }
                None => Ok(None),
            }
        };
        let coordinators: Vec<Credential> = if !args.token.is_empty() {
            args.token.iter().map(|t| Credential::bearer(t)).collect::<anyhow::Result<_>>()?
        } else if args.dev_tokens {
            (0..args.coordinators.max(1))
                .map(|n| {
                    Credential::bearer(&credentials::development_token(
                        &credentials::member(Role::Coordinator, &organisations, n),
                        lifetime,
                    )?)
                })
                .collect::<anyhow::Result<_>>()?
        } else {
            bail!("a coordinator's bearer token is needed: --token or PAC_TOKEN (or --dev-tokens against a development gateway)");
        };
        let callers = Callers {
            coordinators,
            admin: token(&args.admin_token, Role::Admin)?,
            clinician: token(&args.clinician_token, Role::Clinician)?,
        };
        let channels = target::channels(gateway, args.connections, ca).await?;
        return Ok(Target::gateway(format!("gateway {gateway}"), channels, callers));
    }
    let key = args.internal_key.clone().or_else(|| args.dev_tokens.then(|| pac_platform::config::DEVELOPMENT_INTERNAL_KEY.to_string()));
    let context = |role: Role, n: usize| -> anyhow::Result<Credential> {
        match &key {
            Some(key) => Credential::caller_context(&credentials::caller_context(
                &Secret::new(key.clone()),
                &credentials::member(role, &organisations, n),
                lifetime,
            )),
            // A development deployment takes calls without a context (unscoped).
            None => Ok(Credential::anonymous()),
        }
    };
    let callers = Callers {
        coordinators: (0..args.coordinators.max(1)).map(|n| context(Role::Coordinator, n)).collect::<anyhow::Result<_>>()?,
        admin: Some(context(Role::Admin, 0)?),
        clinician: Some(context(Role::Clinician, 0)?),
    };
    let service = |address: &Option<String>| {
        let address = address.clone();
        async move {
            match address {
                Some(address) => target::channels(&address, args.connections, ca).await,
                None => Ok(Vec::new()),
            }
        }
    };
    let (records, scheduling, referrals) =
        (service(&args.records).await?, service(&args.scheduling).await?, service(&args.referrals).await?);
    if scheduling.is_empty() && matches!(args.scenario, Scenario::Book | Scenario::SearchSlots | Scenario::CoordinatorsDay) {
        bail!("the {} scenario needs the scheduling service: give --scheduling (or --gateway)", args.scenario.name());
    }
    let name = [("records", &args.records), ("scheduling", &args.scheduling), ("referrals", &args.referrals)]
        .iter()
        .filter_map(|(n, a)| a.as_ref().map(|a| format!("{n} {a}")))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Target::direct(name, records, scheduling, referrals, callers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn every_scenario_has_a_name() {
        let names = scenario_names();
        assert!(names.contains(&"coordinators-day".to_string()) && names.contains(&"book".to_string()));
        assert_eq!(names.len(), Scenario::value_variants().len());
    }
}
