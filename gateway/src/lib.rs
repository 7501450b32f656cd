//! The public gateway (`pac serve gateway`): the one door to the records, scheduling and referrals
//! APIs. It authenticates bearer JWTs (ES256/RS256 against a JWKS, or HS256 with a development key),
//! checks each call against one role table (default deny), forwards it to the owning service with a
//! signed caller context, a bounded deadline and the trace context, and serves health and
//! reflection for every API.
//!
//! It answers gRPC-Web (browsers) on the same port.
//!
//! Calls beyond a limit in flight are shed at once (UNAVAILABLE); each caller has a rate limit
//! (RESOURCE_EXHAUSTED with the time to wait).
//!
//! It also serves `pac.access.v1.Access` itself (`access`): answers composed from the services for
//! a coordinator on the phone.
//!
//! Every call to patient data and every refused call is recorded in the audit trail (`audit`),
//! which auditors read through `pac.audit.v1.AuditTrail` (`trail`).

pub mod access;
pub mod audit;
pub mod auth;
pub mod guide;
pub mod policy;
pub mod proxy;
pub mod refusals;
pub mod streams;
pub mod trail;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pac_platform::config::{Secret, var};
use pac_platform::db::{self, ServiceSchema};
use pac_platform::grpc::{self, Serving};
use pac_platform::input::{Contracts, InputCheckLayer};
use pac_platform::{CallerVerifier, PlatformConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tower::Layer;

use crate::auth::Authenticator;
use crate::proxy::{DEFAULT_LIMITS, Deadlines, Limits, Proxy, Upstreams};
use pac_platform::balance::Balanced;
use pac_proto::access::access_server::AccessServer;
use pac_proto::audit::audit_trail_server::AuditTrailServer;

pub const DEFAULT_ADDR: &str = "127.0.0.1:50050";
/// Where the interop component's operator API is, unless `PAC_INTEROP_URL` says.
pub const DEFAULT_INTEROP_URL: &str = "http://127.0.0.1:50054";
/// The gateway's role (it writes the audit trail) and its own schema.
pub const DATABASE: ServiceSchema = ServiceSchema::new("gateway", "pac_gateway");
/// The development token key: `pac token` signs with it, `pac dev`'s gateway accepts it.
pub const DEVELOPMENT_TOKEN_KEY: &str = "pac-development-token-key-not-for-production-use";
pub const DEVELOPMENT_ISSUER: &str = "pac-dev";
/// The audience tokens must name when `PAC_GATEWAY_AUDIENCE` is unset.
pub const DEFAULT_AUDIENCE: &str = "pac-gateway";
/// The organisation `pac token` acts for by default, and that `pac dev`'s demo data belongs to.
pub const DEVELOPMENT_ORGANISATION: &str = "RR8";
/// `ErrorInfo.domain` of the gateway's own refusals (no or bad token, role, limits), so a client
/// tells them from a service's errors (`pac_platform::error::ERROR_DOMAIN`).
pub const ERROR_DOMAIN: &str = "pac.gateway";

/// How the gateway knows callers.
#[derive(Debug, Clone)]
pub enum TokenKeys {
    /// `PAC_GATEWAY_JWKS_FILE`: ES256/RS256 keys.
    Jwks(String),
    /// `PAC_GATEWAY_DEV_TOKEN_KEY` (development only): HS256.
    Development(String),
}

/// Settings of the gateway (environment variables in docs/configuration.md).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `PAC_GATEWAY_ADDR`.
    pub listen: SocketAddr,
    /// `PAC_GATEWAY_DATABASE_URL`: the gateway role's own connection; derived from `DATABASE_URL` when unset.
    pub database_url: Option<Secret>,
    /// `PAC_RECORDS_URL`, `PAC_SCHEDULING_URL`, `PAC_REFERRALS_URL`: each one URL, or several
    /// (comma-separated) for replicas.
    pub records_url: String,
    pub scheduling_url: String,
    pub referrals_url: String,
    /// `PAC_INTEROP_URL`: the interop component's operator API (`pac.interop.v1.Interop`).
    pub interop_url: String,
    pub keys: TokenKeys,
    /// `PAC_GATEWAY_ISSUER`, `PAC_GATEWAY_AUDIENCE`.
    pub issuer: String,
    pub audience: String,
    /// `PAC_GATEWAY_TOKEN_MAX_LIFETIME_S`: tokens that expire longer than this after they were
    /// issued are refused.
    pub token_max_lifetime: Duration,
    /// `PAC_AUDIT_KEY`: signs the audit trail's records and checkpoints (required in production;
    /// the development key is refused there).
    pub audit_key: audit::AuditKey,
    /// `PAC_AUDIT_CHECKPOINT_MS`: how often the audit writer checkpoints its chain.
    pub audit_checkpoint_every: Duration,
    /// `PAC_AUDIT_REFUSALS_MS`: the interval over which calls refused before their caller is known
    /// are counted into one record per peer and reason.
    pub refusals_every: Duration,
    /// `PAC_GATEWAY_DEFAULT_DEADLINE_MS`, `PAC_GATEWAY_MAX_DEADLINE_MS`.
    pub deadlines: Deadlines,
    /// `PAC_GATEWAY_MAX_IN_FLIGHT`, `PAC_GATEWAY_RATE_PER_SECOND`, `PAC_GATEWAY_RATE_BURST`,
    /// `PAC_GATEWAY_SEARCHES_PER_CALLER`, `PAC_GATEWAY_FAILURES_PER_SECOND`, `PAC_GATEWAY_FAILURES_BURST`.
    pub limits: Limits,
    /// `PAC_GATEWAY_LINK_WAIT_MS`: how long `BookReferralAppointment` waits to see the referral list
    /// its new appointment before answering `linked = false` (the link still completes).
    pub link_wait: Duration,
    /// `PAC_GATEWAY_CONNECTIONS`: HTTP/2 connections to each service URL, used round-robin.
    /// One by default: calls sharing a connection share its reads and writes, so a single
    /// service is served with the least work; Kubernetes needs several, to spread them over
    /// the replicas behind a Service name (see `deploy/`).
    pub connections: usize,
    /// `PAC_GATEWAY_TLS_CERT_FILE`, `PAC_GATEWAY_TLS_KEY_FILE`, `PAC_GATEWAY_TLS_CLIENT_CA_FILE`.
    pub tls: Option<TlsSettings>,
}

/// TLS for the gateway's port (PEM). With a client CA, integration accounts must also present a
/// client certificate it signed (mutual TLS); other callers may connect without one.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub certificate: String,
    pub key: String,
    pub client_ca: Option<String>,
}

impl TlsSettings {
    fn from_env() -> anyhow::Result<Option<Self>> {
        let file = |name: &str| -> anyhow::Result<Option<String>> {
            match std::env::var(name).ok().filter(|f| !f.is_empty()) {
                Some(path) => Ok(Some(std::fs::read_to_string(&path).with_context(|| format!("cannot read {name} {path}"))?)),
                None => Ok(None),
            }
        };
        let (certificate, key, client_ca) =
            (file("PAC_GATEWAY_TLS_CERT_FILE")?, file("PAC_GATEWAY_TLS_KEY_FILE")?, file("PAC_GATEWAY_TLS_CLIENT_CA_FILE")?);
        match (certificate, key) {
            (Some(certificate), Some(key)) => Ok(Some(Self { certificate, key, client_ca })),
            (None, None) if client_ca.is_none() => Ok(None),
            _ => anyhow::bail!("TLS needs both PAC_GATEWAY_TLS_CERT_FILE and PAC_GATEWAY_TLS_KEY_FILE (and a client CA needs both)"),
        }
    }

    fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&self.certificate, &self.key));
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(ca)).client_auth_optional(true);
        }
        config
    }
}

const DEFAULT_CONNECTIONS: usize = 1;
const DEFAULT_CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
const DEFAULT_REFUSALS_EVERY: Duration = Duration::from_secs(10);

/// The audit trail's signing key from `PAC_AUDIT_KEY`: at least 32 bytes, and in production never
/// the development key published in the source (which development uses when none is set).
pub fn audit_key_from_env(development: bool) -> anyhow::Result<audit::AuditKey> {
    use audit::keys::{DEVELOPMENT_AUDIT_KEY, MIN_KEY_BYTES};
    match std::env::var("PAC_AUDIT_KEY").ok().filter(|k| !k.is_empty()) {
        Some(key) if key == DEVELOPMENT_AUDIT_KEY && !development => {
            anyhow::bail!("PAC_AUDIT_KEY is the published development key; production needs a secret of its own")
        }
        Some(key) if key.len() < MIN_KEY_BYTES => anyhow::bail!("PAC_AUDIT_KEY must be at least {MIN_KEY_BYTES} bytes"),
        Some(key) => Ok(audit::AuditKey::new(key.as_bytes())),
        None if development => Ok(audit::AuditKey::development()),
        None => anyhow::bail!("PAC_AUDIT_KEY is required outside development (it signs the audit trail)"),
    }
}
/// Largest header list a call may carry: enough for any token to reach the token check, which
/// refuses one over `auth::MAX_TOKEN_BYTES` and audits the refusal. Beyond it HTTP/2 itself answers
/// 431 before there is a call.
const MAX_HEADER_LIST_BYTES: u32 = 256 * 1024;

impl GatewayConfig {
    pub fn from_env(platform: &PlatformConfig) -> anyhow::Result<Self> {
        let development = platform.environment == pac_platform::config::Environment::Development;
        let audit_key = audit_key_from_env(development)?;
        let keys = match std::env::var("PAC_GATEWAY_JWKS_FILE").ok().filter(|f| !f.is_empty()) {
            Some(file) => {
                TokenKeys::Jwks(std::fs::read_to_string(&file).with_context(|| format!("cannot read PAC_GATEWAY_JWKS_FILE {file}"))?)
            }
            None if development => TokenKeys::Development(var("PAC_GATEWAY_DEV_TOKEN_KEY", DEVELOPMENT_TOKEN_KEY.to_string())?),
            None => anyhow::bail!("PAC_GATEWAY_JWKS_FILE is required outside development"),
        };
        let deadlines = Deadlines {
            default: Duration::from_millis(var("PAC_GATEWAY_DEFAULT_DEADLINE_MS", 10_000)?),
            max: Duration::from_millis(var("PAC_GATEWAY_MAX_DEADLINE_MS", 30_000)?),
        };
        anyhow::ensure!(deadlines.default <= deadlines.max, "PAC_GATEWAY_DEFAULT_DEADLINE_MS must not exceed PAC_GATEWAY_MAX_DEADLINE_MS");
        let limits = Limits {
            max_in_flight: var("PAC_GATEWAY_MAX_IN_FLIGHT", DEFAULT_LIMITS.max_in_flight)?,
            per_second: var("PAC_GATEWAY_RATE_PER_SECOND", DEFAULT_LIMITS.per_second)?,
            burst: var("PAC_GATEWAY_RATE_BURST", DEFAULT_LIMITS.burst)?,
            searches_per_caller: var("PAC_GATEWAY_SEARCHES_PER_CALLER", DEFAULT_LIMITS.searches_per_caller)?.max(1),
            failures_per_second: var("PAC_GATEWAY_FAILURES_PER_SECOND", DEFAULT_LIMITS.failures_per_second)?,
            failures_burst: var("PAC_GATEWAY_FAILURES_BURST", DEFAULT_LIMITS.failures_burst)?,
        };
        anyhow::ensure!(
            limits.per_second > 0.0 && limits.burst >= 1.0,
            "PAC_GATEWAY_RATE_PER_SECOND must be positive and PAC_GATEWAY_RATE_BURST at least 1"
        );
        Ok(Self {
            listen: var("PAC_GATEWAY_ADDR", DEFAULT_ADDR.parse()?)?,
            database_url: std::env::var("PAC_GATEWAY_DATABASE_URL").ok().filter(|u| !u.is_empty()).map(Secret::new),
            records_url: var("PAC_RECORDS_URL", "http://127.0.0.1:50051".to_string())?,
            scheduling_url: var("PAC_SCHEDULING_URL", "http://127.0.0.1:50052".to_string())?,
            referrals_url: var("PAC_REFERRALS_URL", "http://127.0.0.1:50053".to_string())?,
            interop_url: var("PAC_INTEROP_URL", DEFAULT_INTEROP_URL.to_string())?,
            keys,
            issuer: var("PAC_GATEWAY_ISSUER", DEVELOPMENT_ISSUER.to_string())?,
            audience: var("PAC_GATEWAY_AUDIENCE", DEFAULT_AUDIENCE.to_string())?,
            token_max_lifetime: Duration::from_secs(var("PAC_GATEWAY_TOKEN_MAX_LIFETIME_S", auth::DEFAULT_MAX_LIFETIME.as_secs())?),
            audit_key,
            audit_checkpoint_every: Duration::from_millis(
                var("PAC_AUDIT_CHECKPOINT_MS", DEFAULT_CHECKPOINT_EVERY.as_millis() as u64)?.max(10),
            ),
            refusals_every: Duration::from_millis(var("PAC_AUDIT_REFUSALS_MS", DEFAULT_REFUSALS_EVERY.as_millis() as u64)?.max(10)),
            deadlines,
            limits,
            link_wait: Duration::from_millis(var("PAC_GATEWAY_LINK_WAIT_MS", 2_000)?),
            connections: var("PAC_GATEWAY_CONNECTIONS", DEFAULT_CONNECTIONS)?.clamp(1, 64),
            tls: TlsSettings::from_env()?,
        })
    }

    /// Development settings on `listen`, forwarding to the given services, accepting development tokens.
    pub fn development(listen: SocketAddr, records_url: String, scheduling_url: String, referrals_url: String) -> Self {
        Self {
            listen,
            database_url: None,
            records_url,
            scheduling_url,
            referrals_url,
            interop_url: DEFAULT_INTEROP_URL.into(),
            keys: TokenKeys::Development(DEVELOPMENT_TOKEN_KEY.into()),
            issuer: DEVELOPMENT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            token_max_lifetime: auth::DEFAULT_MAX_LIFETIME,
            audit_key: audit::AuditKey::development(),
            audit_checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            // Soon enough to read back in development and tests.
            refusals_every: Duration::from_millis(200),
            deadlines: Deadlines { default: Duration::from_secs(10), max: Duration::from_secs(30) },
            limits: DEFAULT_LIMITS,
            link_wait: Duration::from_secs(2),
            connections: DEFAULT_CONNECTIONS,
            tls: None,
        }
    }
}

/// Opens the gateway's pool as its own role (it may add to and read the audit trail, nothing more).
pub async fn connect(platform: &PlatformConfig, config: &GatewayConfig) -> anyhow::Result<sqlx::PgPool> {
    let options = db::service_connect_options(&platform.db, DATABASE, config.database_url.as_ref())?;
    db::connect(&platform.db, DATABASE, options).await
}

/// Creates the gateway's role and the audit schema, and migrates it (administrator connection).
pub async fn migrate(platform: &PlatformConfig) -> anyhow::Result<()> {
    audit::provision(&platform.db, DATABASE).await
}

/// Serves the gateway on `listener` until `shutdown` fires.
pub async fn serve(
    platform: PlatformConfig,
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let authenticator = match &config.keys {
        TokenKeys::Jwks(json) => Authenticator::from_jwks(json, &config.issuer, &config.audience)?,
        TokenKeys::Development(key) => Authenticator::development(key.as_bytes(), &config.issuer, &config.audience),
    }
    .max_lifetime(config.token_max_lifetime);
    let pool = connect(&platform, &config).await?;
    let stop_writer = CancellationToken::new();
    let (audit_log, writer) = audit::start(pool.clone(), stop_writer.clone(), config.audit_key.clone(), config.audit_checkpoint_every);
    let records = Balanced::new(&config.records_url, config.connections)?;
    let scheduling = Balanced::new(&config.scheduling_url, config.connections)?;
    let referrals = Balanced::new(&config.referrals_url, config.connections)?;
    let interop = Balanced::new(&config.interop_url, 1)?;
    let access = access::AccessService::new(records.clone(), scheduling.clone(), referrals.clone(), config.link_wait);
    let signer = CallerVerifier::new(&platform.internal_key, false);
    // The APIs served here read the caller context the door signed; they are reached only through it.
    let callers = CallerVerifier::new(&platform.internal_key, true);
    // The services check the text of what is forwarded to them; the APIs served here are checked here.
    let contracts = Arc::new(Contracts::from_descriptor_sets(&[pac_proto::FILE_DESCRIPTOR_SET])?);
    let input_check = InputCheckLayer::new(contracts, platform.grpc.max_message_bytes);
    let upstreams = Upstreams::default()
        .route("/pac.records.v1.", records)
        .route("/pac.scheduling.v1.", scheduling)
        .route("/pac.referrals.v1.", referrals)
        .route("/pac.interop.v1.", interop)
        .route("/pac.access.v1.", input_check.layer(AccessServer::new(access)))
        .route("/pac.audit.v1.", input_check.layer(AuditTrailServer::new(trail::AuditTrailService::new(pool.clone(), callers))));
    let mutual_tls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let proxy = Proxy::new(upstreams, authenticator, signer, config.deadlines, config.limits, audit_log.clone())
        .integration_certificates(mutual_tls);
    let stop_refusals = CancellationToken::new();
    let refusals = proxy.refusals().start(audit_log.clone(), config.refusals_every, stop_refusals.clone());
    let routes = Routes::from(axum::Router::new().fallback_service(proxy));
    tracing::info!(address = %listener.local_addr()?, "gateway listening");
    let serving = Serving {
        service_names: vec![
            "pac.records.v1.PatientRecords",
            "pac.scheduling.v1.Scheduling",
            "pac.referrals.v1.Referrals",
            "pac.access.v1.Access",
            "pac.audit.v1.AuditTrail",
            "pac.interop.v1.Interop",
        ],
        descriptor_sets: vec![pac_proto::FILE_DESCRIPTOR_SET],
        database: Some(pool),
        grpc_web: true,
        tls: config.tls.as_ref().map(TlsSettings::server_config),
        check_inputs: false,
        max_header_list_bytes: Some(MAX_HEADER_LIST_BYTES),
    };
    let served = grpc::serve(&platform.grpc, listener, routes, serving, shutdown).await;
    // Every call has ended: count the last refusals, write what is queued, then stop.
    stop_refusals.cancel();
    let _ = refusals.await;
    stop_writer.cancel();
    if tokio::time::timeout(Duration::from_secs(10), writer).await.is_err() {
        tracing::error!("audit writer did not finish within 10 s of shutdown");
    }
    served
}
