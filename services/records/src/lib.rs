//! The patient records service (`pac.records.v1.PatientRecords`): registration with NHS number
//! validation and duplicate detection, lookup, update with etags, ranked search, matching, reversible
//! merges, restricted records, and a resumable event stream.
//!
//! A library first: [`serve`] runs it on a listener until a shutdown token fires, so `pac dev`, the
//! tests and the container all start the same thing.
//!
//! Organisation scope: each patient belongs to the organisation that registered it
//! (`patients.organisation`, `Patient.organisation`; immutable). A caller acting for organisations
//! (`pac_platform::Caller::scope`) reads, searches, matches, updates and merges only their
//! organisations' patients, by a predicate in the SQL itself (`store`): another organisation's
//! patient is NOT_FOUND, never a search hit or a candidate. An NHS number or local identifier is
//! unique across organisations, so registering one held elsewhere is still ALREADY_EXISTS, without
//! naming the other organisation's record. Service-to-service calls (role `service`) and anonymous
//! development calls are unscoped. `WatchEvents` delivers a scoped caller only its organisations'
//! events; the other services follow the whole feed.

pub mod bulk;
pub mod convert;
pub mod domain;
pub mod error;
pub mod records;
pub mod service;
pub mod store;

use std::net::SocketAddr;

use pac_platform::config::{Environment, Secret, var};
use pac_platform::db::{self, ServiceSchema};
use pac_platform::grpc::{self, Serving};
use pac_platform::idempotency::IdempotencyStore;
use pac_platform::outbox::Outbox;
use pac_platform::{CallerVerifier, PlatformConfig};
use pac_proto::records::patient_records_server::PatientRecordsServer;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::domain::matching::Thresholds;

pub const SCHEMA: &str = "records";
pub const DATABASE: ServiceSchema = ServiceSchema::new(SCHEMA, "pac_records");
pub const SERVICE_NAME: &str = "pac.records.v1.PatientRecords";
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Settings of the records service (environment variables in docs/configuration.md).
#[derive(Debug, Clone)]
pub struct RecordsConfig {
    /// `PAC_RECORDS_ADDR`.
    pub listen: SocketAddr,
    /// `PAC_RECORDS_DATABASE_URL`: the service role's own connection; derived from `DATABASE_URL` when unset.
    pub database_url: Option<Secret>,
    /// `PAC_MATCH_THRESHOLD`, `PAC_POSSIBLE_MATCH_THRESHOLD`.
    pub thresholds: Thresholds,
    /// `PAC_ACCEPT_TEST_NHS_NUMBERS`: accept 900-999 test numbers (default: only outside production).
    pub accept_test_nhs_numbers: bool,
}

impl RecordsConfig {
    pub fn from_env(platform: &PlatformConfig) -> anyhow::Result<Self> {
        let defaults = Thresholds::default();
        let thresholds = Thresholds {
            matched: var("PAC_MATCH_THRESHOLD", defaults.matched)?,
            possible: var("PAC_POSSIBLE_MATCH_THRESHOLD", defaults.possible)?,
        };
        anyhow::ensure!(
            0.0 < thresholds.possible && thresholds.possible <= thresholds.matched && thresholds.matched <= 1.0,
            "match thresholds must satisfy 0 < PAC_POSSIBLE_MATCH_THRESHOLD <= PAC_MATCH_THRESHOLD <= 1"
        );
        Ok(Self {
            listen: var("PAC_RECORDS_ADDR", DEFAULT_ADDR.parse()?)?,
            database_url: std::env::var("PAC_RECORDS_DATABASE_URL").ok().filter(|u| !u.is_empty()).map(Secret::new),
            thresholds,
            accept_test_nhs_numbers: var("PAC_ACCEPT_TEST_NHS_NUMBERS", platform.environment == Environment::Development)?,
        })
    }

    /// Development defaults on the given address (tests, `pac dev`).
    pub fn development(listen: SocketAddr) -> Self {
        Self { listen, database_url: None, thresholds: Thresholds::default(), accept_test_nhs_numbers: true }
    }
}

/// The service role's connection options.
fn connect_options(platform: &PlatformConfig, config: &RecordsConfig) -> anyhow::Result<PgConnectOptions> {
    // The name search's similarity floor is also the trigram index's pruning bound (`%>`).
    let threshold = store::MIN_NAME_SCORE.to_string();
    Ok(db::service_connect_options(&platform.db, DATABASE, config.database_url.as_ref())?
        .options([("pg_trgm.word_similarity_threshold", threshold.as_str())]))
}

/// Opens the service's pool as its own role.
pub async fn connect(platform: &PlatformConfig, config: &RecordsConfig) -> anyhow::Result<PgPool> {
    db::connect(&platform.db, DATABASE, connect_options(platform, config)?).await
}

/// Creates the role and schema (administrator connection), then migrates as the service role.
pub async fn migrate(platform: &PlatformConfig, config: &RecordsConfig) -> anyhow::Result<()> {
    db::provision_and_migrate(&platform.db, DATABASE, connect_options(platform, config)?, &MIGRATIONS).await
}

/// Serves the records service on `listener` until `shutdown` fires.
pub async fn serve(
    platform: PlatformConfig,
    config: RecordsConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = connect(&platform, &config).await?;
    let records = records::Records::new(pool.clone(), Outbox::new(SCHEMA), config.thresholds);
    let plans = records.plans.clone();
    let verifier = CallerVerifier::new(&platform.internal_key, platform.require_caller_context);
    let service =
        service::RecordsService::new(records, verifier, config.accept_test_nhs_numbers, platform.outbox_poll_interval, shutdown.clone());

    IdempotencyStore::new(SCHEMA).prune_hourly(pool.clone(), platform.idempotency_retention, shutdown.clone());
    tokio::spawn(watch_table_size(plans, pool.clone(), shutdown.clone()));

    let max = platform.grpc.max_message_bytes;
    let routes = Routes::new(PatientRecordsServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max));
    tracing::info!(address = %listener.local_addr()?, "records service listening");
    let serving = Serving::service(SERVICE_NAME, pool);
    grpc::serve(&platform.grpc, listener, routes, serving, shutdown).await
}

/// Lets the duplicate-candidate query keep a cached plan once the patients table is big enough
/// (`store::PlanCache`): checked at start and every five seconds until it is.
async fn watch_table_size(plans: store::PlanCache, pool: PgPool, shutdown: CancellationToken) {
    loop {
        match plans.check(&pool).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(error) => tracing::warn!(error = ?pac_platform::ApiError::from(error).reason, "checking the patients table's size failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}
