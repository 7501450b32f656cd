//! Configuration from environment variables, with defaults. Every variable is listed in
//! docs/configuration.md; a malformed value is a start-up error naming the variable.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};

/// Production refuses test-range NHS numbers, the development signing key and default passwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Production,
    Development,
}

impl FromStr for Environment {
    type Err = anyhow::Error;
    fn from_str(value: &str) -> anyhow::Result<Self> {
        match value {
            "production" | "prod" => Ok(Self::Production),
            "development" | "dev" | "test" => Ok(Self::Development),
            other => bail!("expected production or development, got {other:?}"),
        }
    }
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Signing key for caller contexts in development only; production must set `PAC_INTERNAL_KEY`.
pub const DEVELOPMENT_INTERNAL_KEY: &str = "pac-development-internal-key-do-not-use-in-production";
/// Password given to service database roles in development only.
pub const DEVELOPMENT_ROLE_PASSWORD: &str = "pac-development-role-password";

#[derive(Debug, Clone)]
pub struct DbConfig {
    /// Administrator connection: provisioning (roles, schemas, extensions) and migrations.
    pub admin_url: Secret,
    /// Password set on (and used for) service roles when their URL is derived from the admin URL.
    pub role_password: Secret,
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
}

#[derive(Debug, Clone)]
pub struct GrpcConfig {
    pub max_message_bytes: usize,
    pub concurrency_limit_per_connection: usize,
    pub request_timeout: Duration,
    pub max_connection_age: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `RUST_LOG`-style filter.
    pub log_filter: String,
    /// `json` (default) or `pretty`.
    pub log_json: bool,
    /// OTLP/gRPC endpoint; when unset, spans are not exported.
    pub otlp_endpoint: Option<String>,
}

/// Settings shared by every component.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    pub environment: Environment,
    pub db: DbConfig,
    pub grpc: GrpcConfig,
    pub telemetry: TelemetryConfig,
    /// HS256 key that signs caller contexts forwarded between components.
    pub internal_key: Secret,
    /// Refuse calls that carry no caller context (default: true in production).
    pub require_caller_context: bool,
    /// How often an idle event stream re-checks its outbox for events committed by other replicas.
    pub outbox_poll_interval: Duration,
    /// How long idempotency records (request ids) are kept.
    pub idempotency_retention: Duration,
}

/// What production refuses to start with: no internal key or role password, the development values
/// published in this source (anyone could sign a caller context acting for every organisation, or
/// log in as a service), or services that accept calls without a caller context.
fn check_production(internal_key: Option<&str>, role_password: Option<&str>, require_caller_context: bool) -> anyhow::Result<()> {
    match internal_key {
        None => bail!("PAC_INTERNAL_KEY must be set in production (32 or more characters)"),
        Some(DEVELOPMENT_INTERNAL_KEY) => {
            bail!("PAC_INTERNAL_KEY is the published development key: set a secret of your own in production")
        }
        Some(_) => {}
    }
    match role_password {
        None => bail!("PAC_DB_ROLE_PASSWORD must be set in production"),
        Some(DEVELOPMENT_ROLE_PASSWORD) => {
            bail!("PAC_DB_ROLE_PASSWORD is the published development password: set a secret of your own in production")
        }
        Some(_) => {}
    }
    if !require_caller_context {
        bail!("PAC_REQUIRE_CALLER_CONTEXT=false is refused in production: every call must carry a signed caller context");
    }
    Ok(())
}

impl PlatformConfig {
    /// Reads the environment. `default_environment` applies when `PAC_ENVIRONMENT` is unset: `pac dev`
    /// passes Development, everything else Production.
    pub fn from_env(default_environment: Environment) -> anyhow::Result<Self> {
        let environment: Environment = var("PAC_ENVIRONMENT", default_environment)?;
        let development = environment == Environment::Development;
        let internal_key = std::env::var("PAC_INTERNAL_KEY").ok().filter(|k| !k.is_empty());
        let role_password = std::env::var("PAC_DB_ROLE_PASSWORD").ok().filter(|k| !k.is_empty());
        let require_caller_context = var("PAC_REQUIRE_CALLER_CONTEXT", !development)?;
        if !development {
            check_production(internal_key.as_deref(), role_password.as_deref(), require_caller_context)?;
        }
        let internal_key = internal_key.unwrap_or_else(|| DEVELOPMENT_INTERNAL_KEY.to_string());
        if internal_key.len() < 32 {
            bail!("PAC_INTERNAL_KEY must be at least 32 characters");
        }
        Ok(Self {
            environment,
            db: DbConfig {
                admin_url: Secret::new(var_string("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")),
                role_password: Secret::new(role_password.unwrap_or_else(|| DEVELOPMENT_ROLE_PASSWORD.into())),
                max_connections: var("PAC_DB_MAX_CONNECTIONS", 16)?,
                min_connections: var("PAC_DB_MIN_CONNECTIONS", 1)?,
                acquire_timeout: millis("PAC_DB_ACQUIRE_TIMEOUT_MS", 3_000)?,
                statement_timeout: millis("PAC_DB_STATEMENT_TIMEOUT_MS", 5_000)?,
                idle_in_transaction_timeout: millis("PAC_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", 15_000)?,
                idle_timeout: millis("PAC_DB_IDLE_TIMEOUT_MS", 300_000)?,
                max_lifetime: millis("PAC_DB_MAX_LIFETIME_MS", 1_800_000)?,
            },
            grpc: GrpcConfig {
                max_message_bytes: var("PAC_GRPC_MAX_MESSAGE_BYTES", 4 * 1024 * 1024)?,
                concurrency_limit_per_connection: var("PAC_GRPC_CONCURRENCY_PER_CONNECTION", 256)?,
                request_timeout: millis("PAC_GRPC_REQUEST_TIMEOUT_MS", 30_000)?,
                max_connection_age: millis("PAC_GRPC_MAX_CONNECTION_AGE_MS", 600_000)?,
                shutdown_grace: millis("PAC_SHUTDOWN_GRACE_MS", 20_000)?,
            },
            telemetry: TelemetryConfig {
                log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn,h2=warn,tower=warn".into()),
                log_json: var_string("PAC_LOG_FORMAT", "json") != "pretty",
                otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty()),
            },
            internal_key: Secret::new(internal_key),
            require_caller_context,
            outbox_poll_interval: millis("PAC_OUTBOX_POLL_MS", 500)?,
            idempotency_retention: Duration::from_secs(3600 * var::<u64>("PAC_IDEMPOTENCY_RETENTION_HOURS", 72)?),
        })
    }
}

impl PlatformConfig {
    /// Development defaults against the given administrator URL, ignoring the environment (tests).
    pub fn development(admin_url: &str) -> Self {
        Self {
            environment: Environment::Development,
            db: DbConfig {
                admin_url: Secret::new(admin_url),
                role_password: Secret::new(DEVELOPMENT_ROLE_PASSWORD),
                max_connections: 16,
                min_connections: 0,
                acquire_timeout: Duration::from_secs(5),
                statement_timeout: Duration::from_secs(10),
                idle_in_transaction_timeout: Duration::from_secs(15),
                idle_timeout: Duration::from_secs(60),
                max_lifetime: Duration::from_secs(1800),
            },
            grpc: GrpcConfig {
                max_message_bytes: 4 * 1024 * 1024,
                concurrency_limit_per_connection: 256,
                request_timeout: Duration::from_secs(30),
                max_connection_age: Duration::from_secs(600),
                shutdown_grace: Duration::from_secs(5),
            },
            telemetry: TelemetryConfig { log_filter: "info".into(), log_json: true, otlp_endpoint: None },
            internal_key: Secret::new(DEVELOPMENT_INTERNAL_KEY),
            require_caller_context: false,
            outbox_poll_interval: Duration::from_millis(200),
            idempotency_retention: Duration::from_secs(72 * 3600),
        }
    }
}

fn var_string(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

/// Reads and parses an environment variable, falling back to `default` when unset or empty.
pub fn var<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => {
            value.parse().map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("environment variable {name}={value:?} is not valid"))
        }
        _ => Ok(default),
    }
}

fn millis(name: &str, default: u64) -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(var(name, default)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "a-secret-of-this-deployment-of-32-characters";

    #[test]
    fn production_refuses_the_published_development_secrets_and_calls_without_a_caller_context() {
        assert!(check_production(Some(KEY), Some("secret"), true).is_ok());
        let refused = |key, password, require| check_production(key, password, require).unwrap_err().to_string();
        assert!(refused(None, Some("secret"), true).contains("PAC_INTERNAL_KEY must be set"));
        assert!(refused(Some(DEVELOPMENT_INTERNAL_KEY), Some("secret"), true).contains("published development key"));
        assert!(refused(Some(KEY), None, true).contains("PAC_DB_ROLE_PASSWORD must be set"));
        assert!(refused(Some(KEY), Some(DEVELOPMENT_ROLE_PASSWORD), true).contains("published development password"));
        assert!(refused(Some(KEY), Some("secret"), false).contains("PAC_REQUIRE_CALLER_CONTEXT=false"));
    }
}
