//! `pac-load`: what is not shipped with the Patient Access Platform but measures and exercises it.
//!
//! - `pac-load run <scenario>`: a load generator for any deployment, through the gateway with a
//!   bearer token (or straight to the services): open loop at a target rate or closed loop with a
//!   number of calls in flight, single scenarios or a coordinator's day, every gRPC status counted,
//!   HDR latency percentiles, a progress line each second and a JSON report at the end.
//! - `pac-load seed <what> --count N`: bulk data written through each service's own bulk loader.
//! - `pac-load bench <bar>`: the benchmarks behind BENCHMARKS.md, each on a platform of its own.
//! - `pac-load scenarios`: the names `run` takes, one a line.

mod bench;
mod credentials;
mod load;
mod people;
mod seed;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pac-load", version, about = "Load generation, data seeding and benchmarks for the Patient Access Platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Put load on a deployment and report what it did (see `pac-load run --help`).
    Run(load::RunArgs),
    /// Write bulk data into a deployment's database through the services' own bulk loaders.
    Seed(seed::SeedArgs),
    /// Measure the platform against its baselines (BENCHMARKS.md), each on a platform of its own.
    Bench(bench::BenchArgs),
    /// List the scenarios `run` takes.
    Scenarios,
}

/// The benchmarks run every component in this process, as `pac` does; same allocator, same figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => load::run(args).await,
            Command::Seed(args) => seed::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Scenarios => {
                for name in load::scenario_names() {
                    println!("{name}");
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pac-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}
