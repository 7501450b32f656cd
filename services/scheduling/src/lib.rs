//! The scheduling service (`pac.scheduling.v1.Scheduling`): clinics and their sessions, slots
//! generated ahead for a horizon, holds that lapse on their own, bookings that never overfill a slot,
//! reschedules, cancellations, attendance, a waitlist that offers freed slots, and a resumable event
//! stream. Patients are checked with the records service over gRPC, and its merges are followed; a
//! referral a booking, reschedule or waitlist entry names is checked with the referrals service
//! (`pac_platform::links`: the same patient's, the slot's organisation and service, bookable).
//!
//! A library first: [`serve`] runs it on a listener until a shutdown token fires, so `pac dev`, the
//! tests and the container all start the same thing.
//!
//! Organisation scope: a clinic belongs to the organisation that runs it (`Clinic.organisation`,
//! set on creation); its slots, appointments and waitlist entries carry that organisation in a
//! column of their own. The directory (locations, clinics, slots) is shared. A caller acting for
//! organisations (`pac_platform::Caller::scope`) reads and changes only their appointments, entries
//! and offers, by a predicate in the SQL (`store`): another organisation's is NOT_FOUND and never
//! listed. Holding, booking or rescheduling into another organisation's slot, or waiting for its
//! clinic, is PERMISSION_DENIED with reason `OTHER_ORGANISATION` (the clinic is in the shared
//! directory, so refusing it reveals nothing), decided in the same transaction that takes the place.
//! A freed slot is offered only to entries of its own organisation. The patient of a hold, booking
//! or waitlist entry must be one the caller sees in the records service (registered by one of their
//! organisations): another organisation's patient is PATIENT_NOT_FOUND, as an unknown one is.
//! Service-to-service calls and anonymous development calls are unscoped; `WatchEvents` delivers a
//! scoped caller (an integration account) only its organisations' events.

pub mod bulk;
pub mod convert;
pub mod domain;
pub mod error;
pub mod follow;
pub mod model;
pub mod patients;
pub mod referrals;
pub mod scheduling;
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
use pac_proto::scheduling::scheduling_server::SchedulingServer;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::patients::Patients;
use crate::referrals::Referrals;
use crate::scheduling::{Policy, Scheduling};

pub const SCHEMA: &str = "scheduling";
pub const DATABASE: ServiceSchema = ServiceSchema::new(SCHEMA, "pac_scheduling");
pub const SERVICE_NAME: &str = "pac.scheduling.v1.Scheduling";
pub const DEFAULT_ADDR: &str = "127.0.0.1:50052";
/// Where the referrals service answers unless `PAC_REFERRALS_URL` says otherwise.
const DEFAULT_REFERRALS_URL: &str = "http://127.0.0.1:50053";
/// The records service's event stream, as named in `consumed_streams`.
pub const RECORDS_STREAM: &str = "records";

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Settings of the scheduling service (environment variables in docs/configuration.md).
#[derive(Debug, Clone)]
pub struct SchedulingConfig {
    /// `PAC_SCHEDULING_ADDR`.
    pub listen: SocketAddr,
    /// `PAC_SCHEDULING_DATABASE_URL`: the service role's own connection; derived from `DATABASE_URL` when unset.
    pub database_url: Option<Secret>,
    /// `PAC_RECORDS_URL`: where the records service answers.
    pub records_url: String,
    /// `PAC_RECORDS_TIMEOUT_MS`: deadline of a patient check.
    pub records_timeout: Duration,
    /// `PAC_REFERRALS_URL`: where the referrals service answers.
    pub referrals_url: String,
    /// `PAC_REFERRALS_TIMEOUT_MS`: deadline of a referral check.
    pub referrals_timeout: Duration,
    /// `PAC_SLOT_HORIZON_DAYS`, `PAC_LATE_CANCELLATION_HOURS`, `PAC_OFFER_HOLD_SECONDS`, `PAC_OFFER_MIN_NOTICE_MINUTES`,
    /// `PAC_SCHEDULING_MAX_HOLDS_PER_CALLER` (live holds one caller may have at once, default 20).
    pub policy: Policy,
    /// `PAC_HOLD_SWEEP_MS`: how often lapsed holds are released.
    pub hold_sweep_interval: Duration,
    /// `PAC_FOLLOW_RECORDS`: follow the records service's merges (default true).
    pub follow_records: bool,
}

impl SchedulingConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        let defaults = Policy::default();
        let policy = Policy {
            horizon_days: var("PAC_SLOT_HORIZON_DAYS", defaults.horizon_days)?,
            late_notice: chrono::Duration::hours(var("PAC_LATE_CANCELLATION_HOURS", 24)?),
            offer_hold: chrono::Duration::seconds(var("PAC_OFFER_HOLD_SECONDS", 24 * 3600)?),
            offer_min_notice: chrono::Duration::minutes(var("PAC_OFFER_MIN_NOTICE_MINUTES", 120)?),
            max_holds_per_caller: var("PAC_SCHEDULING_MAX_HOLDS_PER_CALLER", defaults.max_holds_per_caller)?,
        };
        anyhow::ensure!((1..=730).contains(&policy.horizon_days), "PAC_SLOT_HORIZON_DAYS must be 1 to 730");
        anyhow::ensure!(policy.offer_hold > chrono::Duration::zero(), "PAC_OFFER_HOLD_SECONDS must be positive");
        anyhow::ensure!(policy.max_holds_per_caller >= 1, "PAC_SCHEDULING_MAX_HOLDS_PER_CALLER must be at least 1");
        Ok(Self {
            listen: var("PAC_SCHEDULING_ADDR", DEFAULT_ADDR.parse()?)?,
            database_url: std::env::var("PAC_SCHEDULING_DATABASE_URL").ok().filter(|u| !u.is_empty()).map(Secret::new),
            records_url: var("PAC_RECORDS_URL", "http://127.0.0.1:50051".to_string())?,
            records_timeout: Duration::from_millis(var("PAC_RECORDS_TIMEOUT_MS", 2_000)?),
            referrals_url: var("PAC_REFERRALS_URL", DEFAULT_REFERRALS_URL.to_string())?,
            referrals_timeout: Duration::from_millis(var("PAC_REFERRALS_TIMEOUT_MS", 2_000)?),
            policy,
            hold_sweep_interval: Duration::from_millis(var("PAC_HOLD_SWEEP_MS", 1_000)?),
            follow_records: var("PAC_FOLLOW_RECORDS", true)?,
        })
    }

    /// Development defaults on the given address, calling records at `records_url` and referrals at
    /// its default address (tests, `pac dev`; set `referrals_url` where referrals runs elsewhere).
    pub fn development(listen: SocketAddr, records_url: String) -> Self {
        Self {
            listen,
            database_url: None,
            records_url,
            records_timeout: Duration::from_secs(2),
            referrals_url: DEFAULT_REFERRALS_URL.to_string(),
            referrals_timeout: Duration::from_secs(2),
            policy: Policy::default(),
            hold_sweep_interval: Duration::from_millis(500),
            follow_records: true,
        }
    }
}

/// The service role's connection options.
fn connect_options(platform: &PlatformConfig, config: &SchedulingConfig) -> anyhow::Result<PgConnectOptions> {
    db::service_connect_options(&platform.db, DATABASE, config.database_url.as_ref())
}

/// Opens the service's pool as its own role.
pub async fn connect(platform: &PlatformConfig, config: &SchedulingConfig) -> anyhow::Result<PgPool> {
    db::connect(&platform.db, DATABASE, connect_options(platform, config)?).await
}

/// Creates the role and schema (administrator connection), then migrates as the service role.
pub async fn migrate(platform: &PlatformConfig, config: &SchedulingConfig) -> anyhow::Result<()> {
    db::provision_and_migrate(&platform.db, DATABASE, connect_options(platform, config)?, &MIGRATIONS).await
}

/// Serves the scheduling service on `listener` until `shutdown` fires, with its background work:
/// releasing lapsed holds, keeping slots generated to the horizon, pruning idempotency records and
/// following the records service's merges.
pub async fn serve(
    platform: PlatformConfig,
    config: SchedulingConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = connect(&platform, &config).await?;
    let patients = Patients::new(&config.records_url, &platform.internal_key, config.records_timeout)?;
    let referrals = Referrals::new(&config.referrals_url, &platform.internal_key, config.referrals_timeout)?;
    let scheduling = Scheduling::new(pool.clone(), Outbox::new(SCHEMA), patients, referrals, config.policy.clone());
    let verifier = CallerVerifier::new(&platform.internal_key, platform.require_caller_context);
    let service = service::SchedulingService::new(scheduling.clone(), verifier, platform.outbox_poll_interval, shutdown.clone());

    let sweeper = scheduling.clone();
    grpc::every(config.hold_sweep_interval, shutdown.clone(), move || {
        let scheduling = sweeper.clone();
        async move {
            if let Err(error) = scheduling.expire_lapsed_holds(None).await {
                tracing::warn!(error = ?pac_platform::ApiError::from(error).reason, "releasing lapsed holds failed");
            }
        }
    });
    let horizon = scheduling.clone();
    tokio::spawn(async move { extend_horizon(&horizon).await });
    let horizon = scheduling.clone();
    grpc::every(Duration::from_secs(3600), shutdown.clone(), move || {
        let scheduling = horizon.clone();
        async move { extend_horizon(&scheduling).await }
    });
    IdempotencyStore::new(SCHEMA).prune_hourly(pool.clone(), platform.idempotency_retention, shutdown.clone());
    if config.follow_records {
        tokio::spawn(pac_platform::follow::follow(follow::RecordsMerges(scheduling.clone()), shutdown.clone()));
    }

    let max = platform.grpc.max_message_bytes;
    let routes = Routes::new(SchedulingServer::new(service).max_decoding_message_size(max).max_encoding_message_size(max));
    tracing::info!(address = %listener.local_addr()?, "scheduling service listening");
    let serving = Serving::service(SERVICE_NAME, pool);
    grpc::serve(&platform.grpc, listener, routes, serving, shutdown).await
}

async fn extend_horizon(scheduling: &Scheduling) {
    match scheduling.extend_horizon().await {
        Ok(0) => {}
        Ok(created) => tracing::info!(slots_created = created, "slots generated to the horizon"),
        Err(error) => tracing::warn!(reason = pac_platform::ApiError::from(error).reason, "extending the slot horizon failed"),
    }
}
