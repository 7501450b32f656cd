//! Postgres for services: each service owns one schema and one login role, and its pool can reach
//! nothing else. Provisioning (roles, schemas, extensions) runs with the administrator connection;
//! migrations and all service traffic run as the service's own role.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tracing::Instrument;

use crate::config::{DbConfig, Secret};
use crate::error::ApiError;

/// Schema that holds the extensions every service uses (pg_trgm, btree_gist); services get USAGE only.
pub const EXTENSIONS_SCHEMA: &str = "pac_ext";

/// A service's place in the database.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSchema {
    /// Schema name, e.g. `records`.
    pub schema: &'static str,
    /// Login role that owns the schema, e.g. `pac_records`.
    pub role: &'static str,
}

impl ServiceSchema {
    pub const fn new(schema: &'static str, role: &'static str) -> Self {
        Self { schema, role }
    }
}

/// Opens a small pool with the administrator URL.
pub async fn admin_pool(url: &Secret) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url.expose())
        .context("DATABASE_URL is not a valid postgres URL")?
        .application_name("pac-admin")
        .log_statements(tracing::log::LevelFilter::Trace);
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("cannot connect to the database with DATABASE_URL")
}

/// Creates (or brings up to date) the service's role, schema and the shared extensions. Idempotent,
/// and safe to run from several processes at once (role creation races are retried).
pub async fn provision(admin: &PgPool, service: ServiceSchema, password: &Secret) -> anyhow::Result<()> {
    let ServiceSchema { schema, role } = service;
    assert!(is_identifier(schema) && is_identifier(role), "schema and role names are lowercase identifiers");
    let password = password.expose().replace('\'', "''");
    let statements = [
        format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ),
        format!("ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}'"),
        format!("CREATE SCHEMA IF NOT EXISTS {EXTENSIONS_SCHEMA}"),
        format!("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA {EXTENSIONS_SCHEMA}"),
        format!("CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA {EXTENSIONS_SCHEMA}"),
        format!("GRANT USAGE ON SCHEMA {EXTENSIONS_SCHEMA} TO {role}"),
        format!("CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role}"),
        // Nothing but its own schema: no objects in public, no temporary tables.
        format!("REVOKE CREATE ON SCHEMA public FROM {role}"),
        // This database admits only the roles provisioned in it (and its owner and administrators):
        // no other login role on the server may connect, and nobody may create temporary tables.
        format!(
            "DO $$ BEGIN                EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());                EXECUTE format('GRANT CONNECT ON DATABASE %I TO {role}', current_database());              END $$"
        ),
    ];
    for statement in &statements {
        let mut attempt = 0;
        loop {
            match sqlx::raw_sql(sqlx::AssertSqlSafe(statement.as_str())).execute(admin).await {
                Ok(_) => break,
                // Concurrent CREATE ROLE / ALTER ROLE / CREATE EXTENSION from another process.
                Err(error) if attempt < 8 && is_concurrent_ddl_conflict(&error) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Err(error) => {
                    return Err(anyhow::anyhow!(crate::error::safe_description(&error)))
                        .with_context(|| format!("provisioning schema {schema} failed"));
                }
            }
        }
    }
    Ok(())
}

fn is_concurrent_ddl_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("XX000" | "23505" | "42710" | "40001" | "40P01")))
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// The service role's connection options: `explicit_url` when given, else the administrator URL with
/// the role's name and password.
pub fn service_connect_options(
    config: &DbConfig,
    service: ServiceSchema,
    explicit_url: Option<&Secret>,
) -> anyhow::Result<PgConnectOptions> {
    Ok(match explicit_url {
        Some(url) => PgConnectOptions::from_str(url.expose()).context("service database URL is not valid")?,
        None => PgConnectOptions::from_str(config.admin_url.expose())
            .context("DATABASE_URL is not a valid postgres URL")?
            .username(service.role)
            .password(config.role_password.expose()),
    })
}

/// A pooled connection idle for longer than this is pinged before it is handed out.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Opens the service's pool: its schema first on the search path, statement and idle-in-transaction
/// timeouts set on every connection.
pub async fn connect(config: &DbConfig, service: ServiceSchema, options: PgConnectOptions) -> anyhow::Result<PgPool> {
    let search_path = format!("{},{EXTENSIONS_SCHEMA}", service.schema);
    let options = options
        .application_name(&format!("pac-{}", service.schema))
        .options([
            ("search_path", search_path.as_str()),
            ("statement_timeout", &config.statement_timeout.as_millis().to_string()),
            // Backstop for a connection left inside a transaction: the server ends it.
            ("idle_in_transaction_session_timeout", &config.idle_in_transaction_timeout.as_millis().to_string()),
        ])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    PgPoolOptions::new()
        // A connection in steady use is not pinged before each use: that round trip was two of a
        // registration's four (BENCHMARKS.md). One that sat idle for a while, where a restart or a
        // network drop would show, still is; a connection that breaks while in use fails its query
        // and is dropped from the pool either way.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_AFTER_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(config.idle_timeout)
        .max_lifetime(config.max_lifetime)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to the database as role {}", service.role))
}

/// Runs the platform's tables and then the service's own migrations in the service's schema, as the
/// service's role.
pub async fn migrate(pool: &PgPool, service_migrations: &Migrator) -> anyhow::Result<()> {
    // Tables every service has in its own schema: the event outbox and idempotency records. They are
    // tracked apart from the service's own migrations so that each set keeps its own version numbers.
    let mut platform: Migrator = sqlx::migrate!("./migrations");
    platform.dangerous_set_table_name("_pac_platform_migrations");
    platform.run(pool).await.context("platform migrations failed")?;
    service_migrations.run(pool).await.context("service migrations failed")?;
    Ok(())
}

/// Creates the service's role and schema (administrator connection), then migrates as the service
/// role, connected with `options` (see [`service_connect_options`]).
pub async fn provision_and_migrate(
    config: &DbConfig,
    service: ServiceSchema,
    options: PgConnectOptions,
    service_migrations: &Migrator,
) -> anyhow::Result<()> {
    let admin = admin_pool(&config.admin_url).await?;
    provision(&admin, service, &config.role_password).await?;
    admin.close().await;
    let pool = connect(config, service, options).await?;
    migrate(&pool, service_migrations).await.with_context(|| format!("{} migrations failed", service.schema))?;
    pool.close().await;
    Ok(())
}

/// Runs a unit of database work on its own task, so that a caller who goes away (deadline, cancelled
/// request) cannot drop it half-way. A dropped `begin()` can hand a connection back to the pool still
/// inside a transaction; work that is never dropped never does that.
///
/// The work is traced as one client span (`postgres`), a child of the request's span.
pub async fn detached<T, F>(work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let span = tracing::info_span!("postgres", otel.kind = "client", db.system.name = "postgresql");
    tokio::spawn(work.instrument(span)).await.map_err(|e| ApiError::internal(anyhow::anyhow!("database task failed: {e}")))?
}

/// A handler's operation, run as [`detached`] work, its error answered as a status.
pub async fn run<T, E, F>(work: F) -> Result<T, tonic::Status>
where
    T: Send + 'static,
    E: Into<ApiError>,
    F: Future<Output = Result<T, E>> + Send + 'static,
{
    detached(async move { work.await.map_err(Into::into) }).await.map_err(tonic::Status::from)
}

/// Whether the database answers, within `timeout`.
pub async fn is_reachable(pool: &PgPool, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool)).await, Ok(Ok(1)))
}
