//! `pac`: run the Patient Access Platform.
//!
//! - `pac dev`: everything in one process on fixed ports, with a Postgres found or started for it and
//!   demo data loaded.
//! - `pac serve <component>`: one component, configured from the environment (what a container runs).
//! - `pac migrate [component]`: create roles and schemas and run migrations.
//! - `pac token`: a development bearer token for the gateway.
//! - `pac audit verify`: checks the audit trail's hash chains.
//! - `pac health`: asks a component's grpc.health.v1 service; exits 0 only when it is SERVING (the
//!   containers' health check).
//!
//! Benchmarks, data seeding and load generation are not part of the product: they are `pac-load`
//! (`tools/`).

mod demo;
mod dev;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pac_platform::PlatformConfig;
use pac_platform::config::{Environment, Secret};

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
    /// Create roles and schemas and run migrations (administrator DATABASE_URL).
    Migrate {
        #[arg(value_enum, default_value = "all")]
        component: Component,
    },
    /// Print a development bearer token for the gateway (signed with PAC_GATEWAY_DEV_TOKEN_KEY).
    Token {
        /// coordinator, clinician, integration, auditor or admin.
        #[arg(long, default_value = "coordinator")]
        role: String,
        /// Organisation (ODS code) acted for; repeat for more.
        #[arg(long = "org", default_value = pac_gateway::DEVELOPMENT_ORGANISATION)]
        orgs: Vec<String>,
        /// Who the token names.
        #[arg(long)]
        subject: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 8 * 3600)]
        ttl: u64,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The interop component's operator API (`pac.interop.v1.Interop`), through the gateway with an
    /// administrator's token.
    Interop {
        /// The gateway.
        #[arg(long, default_value = "http://127.0.0.1:50050")]
        gateway: String,
        /// An administrator's bearer token.
        #[arg(long, env = "PAC_TOKEN", hide_env_values = true)]
        token: String,
        #[command(subcommand)]
        command: InteropCommand,
    },
    /// Ask a component for its health (grpc.health.v1 Check, plain text); exits 0 only when SERVING.
    Health {
        /// The component's address: host:port (or an http:// URL).
        #[arg(long, default_value = "127.0.0.1:50050")]
        addr: String,
        /// The service to ask about, e.g. pac.records.v1.PatientRecords; empty asks about the server.
        #[arg(long, default_value = "")]
        service: String,
        /// Seconds to wait for the answer, connecting included.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum InteropCommand {
    /// The ADT listener's messages by type and ACK code over the last hours, and its latest refusal.
    Listener {
        #[arg(long, default_value_t = 24)]
        hours: i64,
    },
    /// Each feed: pending messages and lag, delivered, parked patients, last error.
    Feeds,
    /// The patients parked on a feed.
    Parked { feed: String },
    /// Send a parked patient's messages again, in order (after the receiving engine is put right).
    Release { feed: String, patient_id: String },
    /// Send a feed's delivered messages again from a sequence number on (the stored bytes, the same
    /// MSH-10s).
    Replay {
        feed: String,
        #[arg(long)]
        from: i64,
    },
    /// The coordinators' worklist: messages refused as possible duplicates, to look at.
    Reviews,
    /// Close a review task, saying what was done.
    Resolve { task: i64, resolution: String },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every writer's chain and signatures, and the signed checkpoints (administrator
    /// DATABASE_URL; the key from PAC_AUDIT_KEY and/or --key-file); exits 1 on any break.
    Verify {
        /// A file holding a key the trail was signed with; repeat for keys rotated out.
        #[arg(long = "key-file")]
        key_files: Vec<std::path::PathBuf>,
    },
    /// Detach every whole month of the trail before a date, each after signed checkpoints of the
    /// chains it ends (administrator DATABASE_URL; the key from PAC_AUDIT_KEY): dump each detached
    /// table, keep the dump, then drop the table.
    Archive {
        /// The first day not archived, e.g. 2026-01-01.
        #[arg(long)]
        before: chrono::NaiveDate,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Component {
    Records,
    Scheduling,
    Referrals,
    Gateway,
    /// The HL7 v2 (MLLP) listener, a client of the gateway.
    Interop,
    /// Every component in one process.
    All,
}

/// Every component runs in this binary; why mimalloc: the root Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Token { role, orgs, subject, ttl } => {
            println!("{}", development_token(&role, orgs, subject, ttl)?);
            Ok(())
        }
        Command::Migrate { component } => {
            let platform = PlatformConfig::from_env(Environment::Production)?;
            let _telemetry = pac_platform::telemetry::init("pac-migrate", &platform.telemetry)?;
            migrate(&platform, component).await
        }
        Command::Audit { command: AuditCommand::Verify { key_files } } => verify_audit(key_files).await,
        Command::Audit { command: AuditCommand::Archive { before } } => archive_audit(before).await,
        Command::Interop { gateway, token, command } => interop(&gateway, &token, command).await,
        Command::Health { addr, service, timeout } => health(&addr, &service, std::time::Duration::from_secs(timeout)).await,
    }
}

/// One grpc.health.v1 Check: Ok only when the answer is SERVING.
async fn health(addr: &str, service: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .with_context(|| format!("--addr {addr:?} is not an address"))?
            .connect_timeout(timeout)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest { service: service.to_string() })
            .await
            .map_err(|status| anyhow::anyhow!("health check at {addr} failed: {:?} {}", status.code(), status.message()))?;
        anyhow::Ok(response.into_inner().status())
    };
    let status = tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| anyhow::anyhow!("no health answer from {addr} within {} s", timeout.as_secs_f64()))??;
    let subject = if service.is_empty() { "server" } else { service };
    anyhow::ensure!(status == ServingStatus::Serving, "{subject} at {addr} is {}", status.as_str_name());
    println!("{subject} at {addr}: SERVING");
    Ok(())
}

async fn verify_audit(key_files: Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    use pac_gateway::audit::AuditKey;
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL must name the platform's database")?;
    let mut keys = Vec::new();
    if let Some(key) = std::env::var("PAC_AUDIT_KEY").ok().filter(|k| !k.is_empty()) {
        keys.push(AuditKey::new(key.as_bytes()));
    }
    for file in &key_files {
        let key = std::fs::read_to_string(file).with_context(|| format!("cannot read the key file {}", file.display()))?;
        keys.push(AuditKey::new(key.trim_end_matches(['\r', '\n']).as_bytes()));
    }
    let pool = pac_platform::db::admin_pool(&Secret::new(url)).await?;
    let result = pac_gateway::audit::verify(&pool, &keys).await.context("cannot read the audit trail")?;
    for problem in &result.problems {
        println!("BROKEN {problem}");
    }
    let latest = result.latest_checkpoint.map_or("none".to_string(), |at| at.to_rfc3339());
    let summary = format!(
        "{} records from {} writers, {} checkpoints (the latest written {latest}); {} records after their writer's last checkpoint",
        result.records, result.writers, result.checkpoints, result.uncovered
    );
    if !result.problems.is_empty() {
        println!("audit trail NOT verified: {} problems; {summary}", result.problems.len());
        std::process::exit(1);
    }
    if keys.is_empty() {
        println!("audit trail chains intact, signatures NOT checked (give the key: PAC_AUDIT_KEY or --key-file); {summary}");
    } else {
        println!("audit trail verified: every chain intact and every signature good; {summary}");
    }
    Ok(())
}

async fn archive_audit(before: chrono::NaiveDate) -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL must name the platform's database")?;
    let key = std::env::var("PAC_AUDIT_KEY").ok().filter(|k| !k.is_empty()).context("PAC_AUDIT_KEY must be the trail's key")?;
    use chrono::Datelike;
    let today = chrono::Utc::now().date_naive();
    let this_month = chrono::NaiveDate::from_ymd_opt(today.year(), today.month(), 1).expect("the first of a month");
    anyhow::ensure!(before <= this_month, "--before must be no later than {this_month}: only past months are archived");
    let pool = pac_platform::db::admin_pool(&Secret::new(url)).await?;
    let archived = pac_gateway::audit::archive::archive(&pool, &pac_gateway::audit::AuditKey::new(key.as_bytes()), before).await?;
    if archived.is_empty() {
        println!("no whole month before {before} to archive");
    }
    for month in &archived {
        println!(
            "detached {} ({} records, {} writers); dump it (pg_dump -t {}), keep the dump, then DROP TABLE {}",
            month.table, month.records, month.writers, month.table, month.table
        );
    }
    Ok(())
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
    if matches!(component, Component::Gateway | Component::All) {
        pac_gateway::migrate(platform).await?;
        tracing::info!(component = "gateway", "migrated");
    }
    if matches!(component, Component::Interop | Component::All) {
        // Migrating needs no token.
        let config =
            pac_interop::InteropConfig::from_env(&gateway_url()?, Some(pac_interop::gateway::TokenSource::Fixed(Secret::new(""))))?;
        pac_interop::migrate(platform, &config).await?;
        tracing::info!(component = "interop", "migrated");
    }
    Ok(())
}

async fn serve(component: Component) -> anyhow::Result<()> {
    let platform = PlatformConfig::from_env(Environment::Production)?;
    let service_name = match component {
        Component::Records => "pac-records",
        Component::Scheduling => "pac-scheduling",
        Component::Referrals => "pac-referrals",
        Component::Gateway => "pac-gateway",
        Component::Interop => "pac-interop",
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
    if matches!(component, Component::Gateway | Component::All) {
        let config = pac_gateway::GatewayConfig::from_env(&platform)?;
        let listener = bind(config.listen, "PAC_GATEWAY_ADDR").await?;
        servers.spawn(pac_gateway::serve(platform.clone(), config, listener, shutdown.clone()));
    }
    // `all` serves the interop component when its account's token is configured.
    let has_token = ["PAC_INTEROP_TOKEN", "PAC_INTEROP_TOKEN_FILE"].iter().any(|v| std::env::var(v).is_ok_and(|t| !t.is_empty()));
    if component == Component::Interop || (component == Component::All && has_token) {
        let config = interop_config()?;
        let listeners = pac_interop::Listeners::bind(&config).await?;
        servers.spawn(pac_interop::serve(platform.clone(), config, listeners, shutdown.clone()));
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

async fn interop(gateway: &str, token: &str, command: InteropCommand) -> anyhow::Result<()> {
    use pac_proto::interop as pb;
    let channel = tonic::transport::Endpoint::from_shared(gateway.to_string())
        .context("--gateway is not a URL")?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", token.trim()).parse().context("the token is not printable ASCII")?;
    let mut client = pac_proto::interop::interop_client::InteropClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", bearer.clone());
        Ok(request)
    });
    let failed = |status: tonic::Status| anyhow::anyhow!("{:?}: {}", status.code(), status.message());
    match command {
        InteropCommand::Listener { hours } => {
            let since = pac_platform::convert::timestamp(chrono::Utc::now() - chrono::Duration::hours(hours));
            let counts =
                client.list_listener_counts(pb::ListListenerCountsRequest { since: Some(since) }).await.map_err(failed)?.into_inner();
            println!("| message type | ACK | count |\n|---|---|---:|");
            for count in &counts.counts {
                println!("| {} | {} | {} |", count.message_type, count.ack_code, count.count);
            }
            if counts.last_error_code != 0 {
                println!("\nlatest refusal: {} {}", counts.last_error_code, counts.last_error_text);
            }
        }
        InteropCommand::Feeds => {
            println!("| feed | organisations | pending | lag | delivered | parked patients | last error |");
            println!("|---|---|---:|---:|---:|---:|---|");
            for feed in client.list_feeds(pb::ListFeedsRequest {}).await.map_err(failed)?.into_inner().feeds {
                println!(
                    "| {} | {} | {} | {:.1} s | {} | {} | {} |",
                    feed.name,
                    feed.organisations.join(", "),
                    feed.pending,
                    feed.lag_seconds,
                    feed.delivered,
                    feed.parked_patients,
                    feed.last_error
                );
            }
        }
        InteropCommand::Parked { feed } => {
            println!("| patient | sequence | reason |\n|---|---:|---|");
            for parked in client.list_parked_patients(pb::ListParkedPatientsRequest { feed }).await.map_err(failed)?.into_inner().patients {
                println!("| {} | {} | {} |", parked.patient_id, parked.sequence, parked.reason);
            }
        }
        InteropCommand::Release { feed, patient_id } => {
            client
                .release_patient(pb::ReleasePatientRequest { feed: feed.clone(), patient_id: patient_id.clone() })
                .await
                .map_err(failed)?;
            println!("released: patient {patient_id}'s messages on feed {feed} are sent again, in order");
        }
        InteropCommand::Reviews => {
            println!("| task | control id | type | facility | reason | candidates |\n|---:|---|---|---|---|---|");
            for task in client.list_review_tasks(pb::ListReviewTasksRequest {}).await.map_err(failed)?.into_inner().tasks {
                println!(
                    "| {} | {} | {} | {} | {} | {} |",
                    task.id,
                    task.control_id,
                    task.message_type,
                    task.sending_facility,
                    task.reason,
                    task.candidate_patient_ids.join(", ")
                );
            }
        }
        InteropCommand::Resolve { task, resolution } => {
            client.resolve_review_task(pb::ResolveReviewTaskRequest { task_id: task, resolution }).await.map_err(failed)?;
            println!("review task {task} resolved");
        }
        InteropCommand::Replay { feed, from } => {
            let replayed = client
                .replay_feed(pb::ReplayFeedRequest { feed: feed.clone(), from_sequence: from })
                .await
                .map_err(failed)?
                .into_inner()
                .replayed;
            println!("{replayed} delivered messages of feed {feed} from sequence {from} on are sent again");
        }
    }
    Ok(())
}

/// The interop component's settings (from the environment; its account's token required).
fn interop_config() -> anyhow::Result<pac_interop::InteropConfig> {
    pac_interop::InteropConfig::from_env(&gateway_url()?, None)
}

/// Where the interop component calls the gateway unless `PAC_INTEROP_GATEWAY_URL` says: the address
/// `PAC_GATEWAY_ADDR` names (only that setting is read, not the gateway's keys).
pub fn gateway_url() -> anyhow::Result<String> {
    let address: std::net::SocketAddr = pac_platform::config::var("PAC_GATEWAY_ADDR", pac_gateway::DEFAULT_ADDR.parse()?)?;
    Ok(format!("http://{address}"))
}

async fn bind(address: std::net::SocketAddr, variable: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} ({variable})"))
}

/// A development token for the gateway: HS256 with `PAC_GATEWAY_DEV_TOKEN_KEY` (or the built-in
/// development key), issuer `PAC_GATEWAY_ISSUER`, audience `PAC_GATEWAY_AUDIENCE`.
pub fn development_token(role: &str, orgs: Vec<String>, subject: Option<String>, ttl: u64) -> anyhow::Result<String> {
    use pac_gateway::auth::{Identity, mint_development};
    let role = pac_gateway::policy::Role::from_name(role)
        .ok_or_else(|| anyhow::anyhow!("--role must be coordinator, clinician, integration, auditor or admin"))?;
    let max = pac_gateway::auth::DEFAULT_MAX_LIFETIME.as_secs();
    anyhow::ensure!((1..=max).contains(&ttl), "--ttl must be 1 second to {max} seconds (the gateway's longest token lifetime)");
    // Read as the gateway reads them (an empty setting is an unset one).
    use pac_platform::config::var;
    let key = var("PAC_GATEWAY_DEV_TOKEN_KEY", pac_gateway::DEVELOPMENT_TOKEN_KEY.to_string())?;
    let issuer = var("PAC_GATEWAY_ISSUER", pac_gateway::DEVELOPMENT_ISSUER.to_string())?;
    let audience = var("PAC_GATEWAY_AUDIENCE", pac_gateway::DEFAULT_AUDIENCE.to_string())?;
    let identity = Identity { subject: subject.unwrap_or_else(|| format!("dev-{}", role.name())), role, organisations: orgs };
    Ok(mint_development(key.as_bytes(), &issuer, &audience, &identity, std::time::Duration::from_secs(ttl)))
}
