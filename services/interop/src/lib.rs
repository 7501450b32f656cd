//! The interop component: the platform as a peer of trust integration engines. HL7 v2 messages
//! travel over MLLP (`mllp`); an ADT message from a patient administration system (`adt`) becomes
//! calls to the public gateway as an integration account (`gateway`), so authorisation,
//! organisation scoping and the audit trail stay in one place, and is answered with an ACK (`ack`)
//! once its change is committed (`inbound`, `listener`).
//!
//! Scheduling feeds go the other way (`feeds`): the appointment events of a destination's
//! organisations, read through the gateway, become SIU messages (`siu`) delivered in order over
//! MLLP.
//!
//! It owns the `interop` schema: the inbound message log, which is also the idempotency record,
//! and the feeds' positions and messages (`store`). It reads no other service's tables. Beside the
//! MLLP listener it serves the operator API `pac.interop.v1.Interop` (`admin`, reached through the
//! gateway), gRPC health and reflection.

pub mod ack;
pub mod admin;
pub mod adt;
pub mod feeds;
pub mod fhir;
pub mod gateway;
pub mod hl7;
pub mod inbound;
pub mod listener;
pub mod mllp;
pub mod siu;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use pac_platform::config::{Secret, var};
use pac_platform::db::{self, ServiceSchema};
use pac_platform::grpc::{self, Serving};
use pac_platform::{CallerVerifier, PlatformConfig};
use pac_proto::interop::interop_server::InteropServer;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::gateway::{Gateway, TokenSource, Tokens};
use crate::hl7::Charset;
use crate::inbound::{DuplicatePolicy, Handler, Handling};

pub const SCHEMA: &str = "interop";
pub const DATABASE: ServiceSchema = ServiceSchema::new(SCHEMA, "pac_interop");
/// The operator API this component serves (health reports it).
pub const SERVICE_NAME: &str = "pac.interop.v1.Interop";
/// gRPC health and reflection.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50054";
/// The MLLP listener: 2575 is HL7's registered port.
pub const DEFAULT_MLLP_ADDR: &str = "127.0.0.1:2575";
/// The FHIR R4 API (`/fhir/R4`).
pub const DEFAULT_FHIR_ADDR: &str = "127.0.0.1:8080";

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Settings of the interop component (environment variables in docs/configuration.md).
#[derive(Debug, Clone)]
pub struct InteropConfig {
    /// `PAC_INTEROP_ADDR`: the operator API, gRPC health and reflection.
    pub listen: SocketAddr,
    /// `PAC_INTEROP_FHIR_ADDR`: the FHIR R4 API (HTTP).
    pub fhir_listen: SocketAddr,
    /// `PAC_INTEROP_DATABASE_URL`: the component's own connection; derived from `DATABASE_URL` when unset.
    pub database_url: Option<Secret>,
    /// `PAC_INTEROP_GATEWAY_URL`: the public gateway.
    pub gateway_url: String,
    /// `PAC_INTEROP_TOKEN` or `PAC_INTEROP_TOKEN_FILE`: the integration account's bearer token.
    pub token: TokenSource,
    /// The ADT listener.
    pub mllp: MllpConfig,
    /// `PAC_INTEROP_KEY_RETENTION_DAYS` (30): how long a message's key is remembered (a resend
    /// within it is answered from the log).
    pub key_retention: Duration,
    /// `PAC_INTEROP_MESSAGE_RETENTION_DAYS` (30, at most the key retention): how long a message's
    /// text is kept for investigation.
    pub message_retention: Duration,
    /// `PAC_INTEROP_FEEDS`: the scheduling feeds' destinations (a JSON list; none by default).
    pub feeds: Vec<feeds::Destination>,
    /// `PAC_INTEROP_GATEWAY_CA_FILE` (and the client certificate `PAC_INTEROP_GATEWAY_CERT_FILE`,
    /// `PAC_INTEROP_GATEWAY_KEY_FILE`, for a gateway requiring mutual TLS of integration accounts):
    /// the gateway over TLS, its URL `https://`.
    pub gateway_tls: Option<GatewayTls>,
}

/// How the component calls the gateway over TLS.
#[derive(Debug, Clone)]
pub struct GatewayTls {
    /// PEM: the CA the gateway's certificate is signed by.
    pub ca: String,
    /// The client certificate presented (mutual TLS).
    pub identity: Option<tls::Identity>,
}

/// The MLLP listener's settings.
#[derive(Debug, Clone)]
pub struct MllpConfig {
    /// `PAC_INTEROP_MLLP_ADDR` (default 127.0.0.1:2575).
    pub listen: SocketAddr,
    /// `PAC_INTEROP_CHARSET` (windows-1252), `PAC_INTEROP_NEWLINES` (false), `PAC_INTEROP_ACK_BUDGET_MS`
    /// (3000), `PAC_INTEROP_POSSIBLE_DUPLICATES` (register).
    pub handling: Handling,
    /// `PAC_INTEROP_MAX_FRAME_BYTES` (10 MiB), `PAC_INTEROP_MAX_CONNECTIONS` (64),
    /// `PAC_INTEROP_KEEPALIVE_SECONDS` (60).
    pub limits: listener::Limits,
    /// `PAC_INTEROP_TLS_CERT_FILE` and `PAC_INTEROP_TLS_KEY_FILE`: TLS on the listener;
    /// `PAC_INTEROP_TLS_CLIENT_CA_FILE`: mutual TLS, engines presenting a certificate it signed.
    pub tls: Option<ListenerTls>,
}

/// The listener's TLS.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub identity: tls::Identity,
    /// PEM; when set, every connection must present a certificate it signed.
    pub client_ca: Option<String>,
}

impl MllpConfig {
    pub fn development(listen: SocketAddr) -> Self {
        Self {
            listen,
            handling: Handling {
                listener: "adt".into(),
                default_charset: Charset::Windows1252,
                lenient_newlines: false,
                budget: Duration::from_millis(3000),
                processing_id: "P".into(),
                duplicates: DuplicatePolicy::Register,
            },
            limits: listener::Limits { max_frame: mllp::DEFAULT_MAX_FRAME, max_connections: 64, keepalive: Duration::from_secs(60) },
            tls: None,
        }
    }
}

const DAY: u64 = 24 * 3600;

impl InteropConfig {
    /// From the environment; `development_token` is used when neither token variable is set (`pac
    /// dev`), else one of them is required.
    pub fn from_env(gateway_default: &str, development_token: Option<TokenSource>) -> anyhow::Result<Self> {
        let mut mllp = MllpConfig::development(var("PAC_INTEROP_MLLP_ADDR", DEFAULT_MLLP_ADDR.parse()?)?);
        let charset: String = var("PAC_INTEROP_CHARSET", "windows-1252".to_string())?;
        mllp.handling.default_charset = Charset::from_setting(&charset)
            .with_context(|| format!("PAC_INTEROP_CHARSET={charset:?} is not ascii, 8859/1, 8859/15, utf-8 or windows-1252"))?;
        mllp.handling.lenient_newlines = var("PAC_INTEROP_NEWLINES", false)?;
        mllp.handling.processing_id = var("PAC_INTEROP_PROCESSING_ID", "P".to_string())?;
        anyhow::ensure!(
            matches!(mllp.handling.processing_id.as_str(), "P" | "T" | "D"),
            "PAC_INTEROP_PROCESSING_ID must be P (production), T (training) or D (debugging)"
        );
        mllp.handling.budget = Duration::from_millis(var("PAC_INTEROP_ACK_BUDGET_MS", 3000u64)?);
        anyhow::ensure!(
            (100..=4500).contains(&mllp.handling.budget.as_millis()),
            "PAC_INTEROP_ACK_BUDGET_MS must be 100 to 4500 (integration engines wait 5 seconds)"
        );
        let duplicates: String = var("PAC_INTEROP_POSSIBLE_DUPLICATES", "register".to_string())?;
        mllp.handling.duplicates = DuplicatePolicy::from_setting(&duplicates)
            .with_context(|| format!("PAC_INTEROP_POSSIBLE_DUPLICATES={duplicates:?} is not register or refuse"))?;
        mllp.limits.max_frame = var("PAC_INTEROP_MAX_FRAME_BYTES", mllp::DEFAULT_MAX_FRAME)?;
        mllp.limits.max_connections = var("PAC_INTEROP_MAX_CONNECTIONS", 64usize)?;
        mllp.limits.keepalive = Duration::from_secs(var("PAC_INTEROP_KEEPALIVE_SECONDS", 60u64)?);
        anyhow::ensure!(mllp.limits.max_frame >= 1024, "PAC_INTEROP_MAX_FRAME_BYTES must be at least 1024");
        anyhow::ensure!(mllp.limits.max_connections >= 1, "PAC_INTEROP_MAX_CONNECTIONS must be at least 1");
        let file = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
        mllp.tls = match (file("PAC_INTEROP_TLS_CERT_FILE"), file("PAC_INTEROP_TLS_KEY_FILE"), file("PAC_INTEROP_TLS_CLIENT_CA_FILE")) {
            (Some(certificate), Some(key), ca) => Some(ListenerTls {
                identity: tls::Identity::from_files(&certificate, &key)?,
                client_ca: ca.map(|ca| tls::read(&ca)).transpose()?,
            }),
            (None, None, None) => None,
            _ => anyhow::bail!(
                "TLS on the listener needs PAC_INTEROP_TLS_CERT_FILE and PAC_INTEROP_TLS_KEY_FILE (and PAC_INTEROP_TLS_CLIENT_CA_FILE for mutual TLS)"
            ),
        };
        let gateway_tls =
            match (file("PAC_INTEROP_GATEWAY_CA_FILE"), file("PAC_INTEROP_GATEWAY_CERT_FILE"), file("PAC_INTEROP_GATEWAY_KEY_FILE")) {
                (None, None, None) => None,
                (Some(ca), certificate, key) => Some(GatewayTls {
                    ca: tls::read(&ca)?,
                    identity: match (certificate, key) {
                        (Some(certificate), Some(key)) => Some(tls::Identity::from_files(&certificate, &key)?),
                        (None, None) => None,
                        _ => anyhow::bail!(
                            "a client certificate for the gateway needs PAC_INTEROP_GATEWAY_CERT_FILE and PAC_INTEROP_GATEWAY_KEY_FILE"
                        ),
                    },
                }),
                _ => anyhow::bail!("TLS to the gateway needs PAC_INTEROP_GATEWAY_CA_FILE (the CA its certificate is signed by)"),
            };
        let token = match (
            std::env::var("PAC_INTEROP_TOKEN").ok().filter(|t| !t.is_empty()),
            std::env::var("PAC_INTEROP_TOKEN_FILE").ok().filter(|t| !t.is_empty()),
        ) {
            (Some(_), Some(_)) => anyhow::bail!("set PAC_INTEROP_TOKEN or PAC_INTEROP_TOKEN_FILE, not both"),
            (Some(token), None) => TokenSource::Fixed(Secret::new(token)),
            (None, Some(path)) => TokenSource::File(path.into()),
            (None, None) => development_token
                .context("the interop component needs the integration account's token: PAC_INTEROP_TOKEN or PAC_INTEROP_TOKEN_FILE")?,
        };
        let config = Self {
            listen: var("PAC_INTEROP_ADDR", DEFAULT_ADDR.parse()?)?,
            fhir_listen: var("PAC_INTEROP_FHIR_ADDR", DEFAULT_FHIR_ADDR.parse()?)?,
            database_url: std::env::var("PAC_INTEROP_DATABASE_URL").ok().filter(|u| !u.is_empty()).map(Secret::new),
            gateway_url: var("PAC_INTEROP_GATEWAY_URL", gateway_default.to_string())?,
            token,
            mllp,
            key_retention: Duration::from_secs(DAY * var("PAC_INTEROP_KEY_RETENTION_DAYS", 30u64)?),
            message_retention: Duration::from_secs(DAY * var("PAC_INTEROP_MESSAGE_RETENTION_DAYS", 30u64)?),
            feeds: match std::env::var("PAC_INTEROP_FEEDS") {
                Ok(json) if !json.trim().is_empty() => feeds::parse_destinations(&json)?,
                _ => Vec::new(),
            },
            gateway_tls,
        };
        config.check()?;
        Ok(config)
    }

    /// Development defaults: the given addresses, a token made on demand.
    pub fn development(listen: SocketAddr, mllp: SocketAddr, gateway_url: String, token: TokenSource) -> Self {
        Self {
            listen,
            fhir_listen: DEFAULT_FHIR_ADDR.parse().expect("an address"),
            database_url: None,
            gateway_url,
            token,
            mllp: MllpConfig::development(mllp),
            key_retention: Duration::from_secs(30 * DAY),
            message_retention: Duration::from_secs(30 * DAY),
            feeds: Vec::new(),
            gateway_tls: None,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        // tonic speaks TLS only to an https:// URL; a CA with an http:// URL would send the
        // account's token in plain text.
        anyhow::ensure!(
            self.gateway_tls.is_none() || self.gateway_url.starts_with("https://"),
            "PAC_INTEROP_GATEWAY_CA_FILE is set: PAC_INTEROP_GATEWAY_URL must be https://"
        );
        anyhow::ensure!(self.key_retention >= Duration::from_secs(DAY), "PAC_INTEROP_KEY_RETENTION_DAYS must be at least 1");
        anyhow::ensure!(
            self.message_retention <= self.key_retention,
            "PAC_INTEROP_MESSAGE_RETENTION_DAYS must not exceed PAC_INTEROP_KEY_RETENTION_DAYS (a message's text is kept with its key)"
        );
        Ok(())
    }
}

fn connect_options(platform: &PlatformConfig, config: &InteropConfig) -> anyhow::Result<PgConnectOptions> {
    db::service_connect_options(&platform.db, DATABASE, config.database_url.as_ref())
}

/// Opens the component's pool as its own role.
pub async fn connect(platform: &PlatformConfig, config: &InteropConfig) -> anyhow::Result<PgPool> {
    db::connect(&platform.db, DATABASE, connect_options(platform, config)?).await
}

/// Creates the role and schema (administrator connection), then migrates as the component's role.
pub async fn migrate(platform: &PlatformConfig, config: &InteropConfig) -> anyhow::Result<()> {
    db::provision_and_migrate(&platform.db, DATABASE, connect_options(platform, config)?, &MIGRATIONS).await
}

/// Where the component listens.
pub struct Listeners {
    /// The operator API, health and reflection (gRPC).
    pub grpc: TcpListener,
    /// HL7 v2 over MLLP.
    pub mllp: TcpListener,
    /// The FHIR R4 API (HTTP).
    pub fhir: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &InteropConfig) -> anyhow::Result<Self> {
        let bind = |address: SocketAddr, variable: &'static str| async move {
            TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} ({variable})"))
        };
        Ok(Self {
            grpc: bind(config.listen, "PAC_INTEROP_ADDR").await?,
            mllp: bind(config.mllp.listen, "PAC_INTEROP_MLLP_ADDR").await?,
            fhir: bind(config.fhir_listen, "PAC_INTEROP_FHIR_ADDR").await?,
        })
    }
}

/// Serves the interop component until `shutdown` fires.
pub async fn serve(
    platform: PlatformConfig,
    config: InteropConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Listeners { grpc: listener, mllp, fhir } = listeners;
    config.check()?;
    let pool = connect(&platform, &config).await?;
    let mut endpoint = tonic::transport::Endpoint::from_shared(config.gateway_url.clone())
        .context("PAC_INTEROP_GATEWAY_URL is not a URL")?
        .connect_timeout(Duration::from_secs(2))
        .tcp_keepalive(Some(Duration::from_secs(30)));
    if let Some(tls) = &config.gateway_tls {
        let mut client = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca));
        if let Some(identity) = &tls.identity {
            client = client.identity(tonic::transport::Identity::from_pem(&identity.certificate, &identity.key));
        }
        endpoint = endpoint.tls_config(client).context("TLS to the gateway")?;
    }
    let channel = endpoint.connect_lazy();
    let gateway = Gateway::new(channel, Tokens::new(config.token.clone()), platform.grpc.max_message_bytes);
    let handler = Handler::new(config.mllp.handling.clone(), pool.clone(), gateway.clone());
    tracing::info!(address = %fhir.local_addr()?, "FHIR R4 API listening");
    let fhir_shutdown = shutdown.clone();
    let routes = fhir::router(gateway.clone());
    let fhir_api =
        tokio::spawn(
            async move { axum::serve(fhir, routes.into_make_service()).with_graceful_shutdown(fhir_shutdown.cancelled_owned()).await },
        );
    feeds::start(config.feeds.clone(), pool.clone(), gateway.clone(), shutdown.clone())?;

    let (keys, messages) = (config.key_retention, config.message_retention);
    let prune_pool = pool.clone();
    grpc::every(Duration::from_secs(3600), shutdown.clone(), move || {
        let pool = prune_pool.clone();
        async move {
            match store::prune(&pool, keys, messages).await {
                Ok((deleted, cleared, sent)) => tracing::info!(deleted, cleared, sent, "message log pruned"),
                Err(error) => tracing::warn!(error = %pac_platform::ApiError::from(error).reason, "pruning the message log failed"),
            }
        }
    });

    let acceptor = match &config.mllp.tls {
        Some(settings) => Some(tls::acceptor(&settings.identity, settings.client_ca.as_deref()).context("the listener's TLS")?),
        None => None,
    };
    tracing::info!(address = %mllp.local_addr()?, tls = acceptor.is_some(), "MLLP listener listening");
    let listening = tokio::spawn(listener::serve(mllp, handler, config.mllp.limits, acceptor, shutdown.clone()));
    tracing::info!(address = %listener.local_addr()?, "interop component listening");
    let verifier = CallerVerifier::new(&platform.internal_key, platform.require_caller_context);
    let max = platform.grpc.max_message_bytes;
    let admin = InteropServer::new(admin::InteropService::new(pool.clone(), verifier, config.feeds.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let serving = Serving::service(SERVICE_NAME, pool);
    let served = grpc::serve(&platform.grpc, listener, Routes::new(admin), serving, shutdown.clone()).await;
    shutdown.cancel();
    listening.await.context("the MLLP listener failed")?;
    fhir_api.await.context("the FHIR API failed")?.context("the FHIR API failed")?;
    served
}
