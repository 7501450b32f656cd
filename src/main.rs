//! `pac`: run the Patient Access Platform.
//!
//! - `pac dev`: everything in one process on fixed ports, with a Postgres found or started for it and
//!   demo data loaded.
//! - `pac serve <component>`: one component, configured from the environment (what a container runs).
//! - `pac migrate [component]`: create roles and schemas and run migrations.
//! - `pac bench <scenario>`: the benchmarks behind BENCHMARKS.md.

mod bench;
mod bench_referrals;
mod bench_scheduling;
mod demo;
mod dev;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pac_platform::PlatformConfig;
use pac_platform::config::Environment;

#[derive(Parser)]
#[command(name = "pac", version, about = "Patient Access Platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole platform locally: finds or starts Postgres, migrates, serves, loads demo data.
    Dev(dev::DevArgs),
    /// Run one component until SIGTERM/SIGINT (configuration from the environment).
    Serve {
        #[arg(value_enum)]
        component: Component,
    },
    /// Measure the platform against its baselines (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Create roles and schemas and run migrations (administrator DATABASE_URL).
    Migrate {
        #[arg(value_enum, default_value = "all")]
        component: Component,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Component {
    Records,
    Scheduling,
    Referrals,
    /// Every component in one process.
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pac: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Serve { component } => serve(component).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Migrate { component } => {
            let platform = PlatformConfig::from_env(Environment::Production)?;
            let _telemetry = pac_platform::telemetry::init("pac-migrate", &platform.telemetry)?;
            migrate(&platform, component).await
        }
    }
}

async fn migrate(platform: &PlatformConfig, component: Component) -> anyhow::Result<()> {
    if matches!(component, Component::Records | Component::All) {
        let config = pac_records::RecordsConfig::from_env(platform)?;
        pac_records::migrate(platform, &config).await?;
        tracing::info!(component = "records", "migrated");
    }
    if matches!(component, Component::Scheduling | Component::All) {
        let config = pac_scheduling::SchedulingConfig::from_env()?;
        pac_scheduling::migrate(platform, &config).await?;
        tracing::info!(component = "scheduling", "migrated");
    }
    if matches!(component, Component::Referrals | Component::All) {
        let config = pac_referrals::ReferralsConfig::from_env()?;
        pac_referrals::migrate(platform, &config).await?;
        tracing::info!(component = "referrals", "migrated");
    }
    Ok(())
}

async fn serve(component: Component) -> anyhow::Result<()> {
    let platform = PlatformConfig::from_env(Environment::Production)?;
    let service_name = match component {
        Component::Records => "pac-records",
        Component::Scheduling => "pac-scheduling",
        Component::Referrals => "pac-referrals",
        Component::All => "pac",
    };
    let _telemetry = pac_platform::telemetry::init(service_name, &platform.telemetry)?;
    let shutdown = pac_platform::grpc::shutdown_on_signals();
    let mut servers = tokio::task::JoinSet::new();
    if matches!(component, Component::Records | Component::All) {
        let config = pac_records::RecordsConfig::from_env(&platform)?;
        let listener = bind(config.listen, "PAC_RECORDS_ADDR").await?;
        servers.spawn(pac_records::serve(platform.clone(), config, listener, shutdown.clone()));
    }
    if matches!(component, Component::Scheduling | Component::All) {
        let config = pac_scheduling::SchedulingConfig::from_env()?;
        let listener = bind(config.listen, "PAC_SCHEDULING_ADDR").await?;
        servers.spawn(pac_scheduling::serve(platform.clone(), config, listener, shutdown.clone()));
    }
    if matches!(component, Component::Referrals | Component::All) {
        let config = pac_referrals::ReferralsConfig::from_env()?;
        let listener = bind(config.listen, "PAC_REFERRALS_ADDR").await?;
        servers.spawn(pac_referrals::serve(platform.clone(), config, listener, shutdown.clone()));
    }
    while let Some(result) = servers.join_next().await {
        // One component failing stops the others.
        if let Err(error) = result.context("component task failed")? {
            shutdown.cancel();
            return Err(error);
        }
    }
    Ok(())
}

async fn bind(address: std::net::SocketAddr, variable: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} ({variable})"))
}
