//! The referrals service (`pac.referrals.v1.Referrals`): a directory of services whose entry rules
//! are data, eligibility answered in plain language, referrals with triage and the RTT clock,
//! worklists sorted by breach date, case notes and tasks, and a resumable event stream. It follows
//! the scheduling service's appointment events and the records service's merges.
//!
//! A library first: [`serve`] runs it on a listener until a shutdown token fires, so `pac dev`, the
//! tests and the container all start the same thing.
//!
//! Organisation scope: a service in the directory belongs to the organisation that provides it
//! (`Service.organisation`, set on creation), and each referral to its service's organisation
//! (`referrals.organisation`, copied when the referral is made). The directory is shared. A caller
//! acting for organisations (`pac_platform::Caller::scope`) reads, lists and changes only their
//! referrals, notes and tasks, by a predicate in the SQL (`store`): another organisation's referral
//! is NOT_FOUND and never on a worklist; referring into another organisation's service is
//! PERMISSION_DENIED with reason `OTHER_ORGANISATION`. A redirect may name any service: the new
//! referral belongs to that service's organisation (a hand-over between providers), and the old one
//! stays with the redirecting organisation, pointing at it. Eligibility is checked, and referrals
//! made, only for patients the caller sees in the records service (registered by one of their
//! organisations): the reasons would describe the patient, so another organisation's patient is
//! PATIENT_NOT_FOUND, as an unknown one is. Service-to-service calls, the followers of other
//! services' events and anonymous development calls are unscoped; `WatchEvents` delivers a scoped
//! caller (an integration account) only its organisations' events.

pub mod bulk;
pub mod clients;
pub mod convert;
pub mod domain;
pub mod error;
pub mod follow;
pub mod model;
pub mod referrals;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::time::Duration;

use pac_platform::config::{Secret, var};
use pac_platform::db::{self, ServiceSchema};
use pac_platform::grpc::{self, Serving};
use pac_platform::idempotency::IdempotencyStore;
use pac_platform::outbox::Outbox;
use pac_platform::{CallerVerifier, PlatformConfig};
use pac_proto::referrals::referrals_server::ReferralsServer;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::clients::Clients;
use crate::referrals::Referrals;

pub const SCHEMA: &str = "referrals";
pub const DATABASE: ServiceSchema = ServiceSchema::new(SCHEMA, "pac_referrals");
pub const SERVICE_NAME: &str = "pac.referrals.v1.Referrals";
pub const DEFAULT_ADDR: &str = "127.0.0.1:50053";

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Settings of the referrals service (environment variables in docs/configuration.md).
#[derive(Debug, Clone)]
pub struct ReferralsConfig {
    /// `PAC_REFERRALS_ADDR`.
    pub listen: SocketAddr,
    /// `PAC_REFERRALS_DATABASE_URL`: the service role's own connection; derived from `DATABASE_URL` when unset.
    pub database_url: Option<Secret>,
    /// `PAC_RECORDS_URL`.
    pub records_url: String,
    /// `PAC_SCHEDULING_URL`.
    pub scheduling_url: String,
    /// `PAC_CALL_TIMEOUT_MS`: deadline of a call to records or scheduling.
    pub call_timeout: Duration,
    /// `PAC_FOLLOW_SCHEDULING`: apply appointment events to referrals (default true).
    pub follow_scheduling: bool,
    /// `PAC_FOLLOW_RECORDS`: follow patient merges (default true).
    pub follow_records: bool,
}

impl ReferralsConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            listen: var("PAC_REFERRALS_ADDR", DEFAULT_ADDR.parse()?)?,
            database_url: std::env::var("PAC_REFERRALS_DATABASE_URL").ok().filter(|u| !u.is_empty()).map(Secret::new),
            records_url: var("PAC_RECORDS_URL", "http://127.0.0.1:50051".to_string())?,
            scheduling_url: var("PAC_SCHEDULING_URL", "http://127.0.0.1:50052".to_string())?,
            call_timeout: Duration::from_millis(var("PAC_CALL_TIMEOUT_MS", 2_000)?),
            follow_scheduling: var("PAC_FOLLOW_SCHEDULING", true)?,
            follow_records: var("PAC_FOLLOW_RECORDS", true)?,
        })
    }

    /// Development defaults on the given address, calling the other services at their URLs.
    pub fn development(listen: SocketAddr, records_url: String, scheduling_url: String) -> Self {
        Self {
            listen,
            database_url: None,
            records_url,
            scheduling_url,
            call_timeout: Duration::from_secs(2),
            follow_scheduling: true,
            follow_records: true,
        }
    }
}

/// The service role's connection options.
fn connect_options(platform: &PlatformConfig, config: &ReferralsConfig) -> anyhow::Result<PgConnectOptions> {
    db::service_connect_options(&platform.db, DATABASE, config.database_url.as_ref())
}

/// Opens the service's pool as its own role.
pub async fn connect(platform: &PlatformConfig, config: &ReferralsConfig) -> anyhow::Result<PgPool> {
    db::connect(&platform.db, DATABASE, connect_options(platform, config)?).await
}

/// Creates the role and schema (administrator connection), then migrates as the service role.
pub async fn migrate(platform: &PlatformConfig, config: &ReferralsConfig) -> anyhow::Result<()> {
    db::provision_and_migrate(&platform.db, DATABASE, connect_options(platform, config)?, &MIGRATIONS).await
}

/// Serves the referrals service on `listener` until `shutdown` fires, with its background work:
/// following appointment events and patient merges, and pruning idempotency records.
pub async fn serve(
    platform: PlatformConfig,
    config: ReferralsConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = connect(&platform, &config).await?;
    let clients = Clients::new(&config.records_url, &config.scheduling_url, &platform.internal_key, config.call_timeout)?;
    let referrals = Referrals::new(pool.clone(), Outbox::new(SCHEMA), clients);
    let verifier = CallerVerifier::new(&platform.internal_key, platform.require_caller_context);
    let service = service::ReferralsService::new(
        referrals.clone(),
        verifier,
        !platform.require_caller_context,
        platform.outbox_poll_interval,
        shutdown.clone(),
    );
    IdempotencyStore::new(SCHEMA).prune_hourly(pool.clone(), platform.idempotency_retention, shutdown.clone());
    if config.follow_scheduling {
        tokio::spawn(pac_platform::follow::follow(follow::AppointmentEvents(referrals.clone()), shutdown.clone()));
    }
    if config.follow_records {
        tokio::spawn(pac_platform::follow::follow(follow::PatientMerges(referrals.clone()), shutdown.clone()));
    }

    let max = platform.grpc.max_message_bytes;
    let routes = Routes::new(ReferralsServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max));
    tracing::info!(address = %listener.local_addr()?, "referrals service listening");
    let serving = Serving::service(SERVICE_NAME, pool);
    grpc::serve(&platform.grpc, listener, routes, serving, shutdown).await
}
