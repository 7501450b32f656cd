//! `pac dev`: the whole platform in one process for a laptop or a demo.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pac_platform::PlatformConfig;
use pac_platform::config::{Environment, Secret};
use pac_platform::local_postgres::{LocalPostgres, Origin};

#[derive(Args)]
pub struct DevArgs {
    /// Data directory for a private Postgres, used only when none is found.
    #[arg(long, env = "PAC_DEV_DATA_DIR", default_value_os_t = std::env::temp_dir().join("pac-dev-postgres"))]
    data_dir: PathBuf,
    /// Port for a private Postgres.
    #[arg(long, env = "PAC_DEV_PG_PORT", default_value_t = 54320)]
    pg_port: u16,
    /// Do not load the demo data set.
    #[arg(long)]
    no_demo: bool,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut platform = PlatformConfig::from_env(Environment::Development)?;
    platform.telemetry.log_json = std::env::var("PAC_LOG_FORMAT").is_ok_and(|f| f == "json");
    let _telemetry = pac_platform::telemetry::init("pac-dev", &platform.telemetry)?;

    let postgres = LocalPostgres::find_or_start(&args.data_dir, args.pg_port, true).await?;
    platform.db.admin_url = Secret::new(match postgres.origin {
        Origin::DatabaseUrl => postgres.url.clone(),
        // A server we found or started: keep the platform in a database of its own.
        _ => pac_platform::local_postgres::ensure_database(&postgres.url, "pac_dev").await?,
    });
    let records = pac_records::RecordsConfig::from_env(&platform)?;
    let mut scheduling = pac_scheduling::SchedulingConfig::from_env()?;
    let mut referrals = pac_referrals::ReferralsConfig::from_env()?;
    pac_records::migrate(&platform, &records).await?;
    pac_scheduling::migrate(&platform, &scheduling).await?;
    pac_referrals::migrate(&platform, &referrals).await?;
    pac_gateway::migrate(&platform).await?;
    let interop_token = std::sync::Arc::new(|| {
        crate::development_token("integration", vec![pac_gateway::DEVELOPMENT_ORGANISATION.into()], Some("dev-pas".into()), 3600)
            .expect("the development key makes tokens")
    });
    let interop =
        pac_interop::InteropConfig::from_env(&crate::gateway_url()?, Some(pac_interop::gateway::TokenSource::Minted(interop_token)))?;
    pac_interop::migrate(&platform, &interop).await?;

    let shutdown = pac_platform::grpc::shutdown_on_signals();
    let records_listener = bind(records.listen, "PAC_RECORDS_ADDR").await?;
    let scheduling_listener = bind(scheduling.listen, "PAC_SCHEDULING_ADDR").await?;
    let referrals_listener = bind(referrals.listen, "PAC_REFERRALS_ADDR").await?;
    let mut gateway = pac_gateway::GatewayConfig::from_env(&platform)?;
    let gateway_listener = bind(gateway.listen, "PAC_GATEWAY_ADDR").await?;
    let interop_listeners = pac_interop::Listeners::bind(&interop).await?;
    let (interop_addr, mllp_addr, fhir_addr) =
        (interop_listeners.grpc.local_addr()?, interop_listeners.mllp.local_addr()?, interop_listeners.fhir.local_addr()?);
    let (records_addr, scheduling_addr, referrals_addr, gateway_addr) = (
        records_listener.local_addr()?,
        scheduling_listener.local_addr()?,
        referrals_listener.local_addr()?,
        gateway_listener.local_addr()?,
    );
    if std::env::var("PAC_RECORDS_URL").is_err() {
        scheduling.records_url = format!("http://{records_addr}");
        referrals.records_url = format!("http://{records_addr}");
        gateway.records_url = format!("http://{records_addr}");
    }
    if std::env::var("PAC_SCHEDULING_URL").is_err() {
        referrals.scheduling_url = format!("http://{scheduling_addr}");
        gateway.scheduling_url = format!("http://{scheduling_addr}");
    }
    if std::env::var("PAC_REFERRALS_URL").is_err() {
        scheduling.referrals_url = format!("http://{referrals_addr}");
        gateway.referrals_url = format!("http://{referrals_addr}");
    }
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(pac_records::serve(platform.clone(), records, records_listener, shutdown.clone()));
    servers.spawn(pac_scheduling::serve(platform.clone(), scheduling, scheduling_listener, shutdown.clone()));
    servers.spawn(pac_referrals::serve(platform.clone(), referrals, referrals_listener, shutdown.clone()));
    servers.spawn(pac_gateway::serve(platform.clone(), gateway, gateway_listener, shutdown.clone()));
    servers.spawn(pac_interop::serve(platform.clone(), interop, interop_listeners, shutdown.clone()));

    if !args.no_demo {
        crate::demo::load(records_addr, scheduling_addr, referrals_addr).await.context("loading demo data failed")?;
    }
    let database = match &postgres.origin {
        Origin::DatabaseUrl => "DATABASE_URL".to_string(),
        Origin::DefaultPort => "the server on 127.0.0.1:5432".to_string(),
        Origin::Private { data_dir, port } => {
            format!("a private cluster on 127.0.0.1:{port} in {} (stopped on exit)", data_dir.display())
        }
    };
    let token = crate::development_token("coordinator", vec!["RR8".into()], None, 8 * 3600)?;
    println!(
        "\nPatient Access Platform is running (development).\n\
         \n  database    {database}\
         \n  records     {records_addr}   pac.records.v1.PatientRecords\
         \n  scheduling  {scheduling_addr}   pac.scheduling.v1.Scheduling\
         \n  referrals   {referrals_addr}   pac.referrals.v1.Referrals\
         \n  gateway     {gateway_addr}   every API above, bearer token required\
         \n  interop     {mllp_addr}    HL7 v2 ADT over MLLP (account dev-pas, RR8); health on {interop_addr}\
         \n  FHIR R4     http://{fhir_addr}/fhir/R4   Patient, Schedule, Slot, Appointment, ServiceRequest; your bearer token\
         \n\nA coordinator's development token (8 hours; `pac token --role clinician` for others):\n  {token}\
         \n\nTry:\n  buf curl --protocol grpc --http2-prior-knowledge -d '{{\"name\":\"smith\"}}' \\\n    http://{records_addr}/pac.records.v1.PatientRecords/SearchPatients\
         \n  buf curl --protocol grpc --http2-prior-knowledge -d '{{\"service_code\":\"TO-FRACTURE\",\"page_size\":3}}' \\\n    http://{scheduling_addr}/pac.scheduling.v1.Scheduling/SearchSlots\
         \n  buf curl --protocol grpc --http2-prior-knowledge -d '{{\"breaching_within_days\":126}}' \\\n    http://{referrals_addr}/pac.referrals.v1.Referrals/ListReferrals\n\nCtrl-C stops everything.\n"
    );
    let mut result = Ok(());
    while let Some(finished) = servers.join_next().await {
        if let Err(error) = finished.context("service task failed").and_then(|r| r) {
            // One service failing stops the others.
            shutdown.cancel();
            result = result.and(Err(error));
        }
    }
    drop(postgres);
    result
}

async fn bind(address: std::net::SocketAddr, variable: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (set {variable} to use another address)"))
}
