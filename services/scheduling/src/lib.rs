//! The scheduling service (`pac.scheduling.v1.Scheduling`). So far: its domain rules (the appointment
//! state machine, clinic wall-clock time, session slots) and its schema, whose constraints keep a
//! slot within capacity and a patient out of two places at once. The store, gRPC service and events
//! follow.

pub mod domain;

use anyhow::Context;
use pac_platform::PlatformConfig;
use pac_platform::db::{self, ServiceSchema};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

pub const SCHEMA: &str = "scheduling";
pub const DATABASE: ServiceSchema = ServiceSchema::new(SCHEMA, "pac_scheduling");

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Opens the service's pool as its own role (URL derived from the administrator's).
pub async fn connect(platform: &PlatformConfig) -> anyhow::Result<PgPool> {
    let options = db::service_connect_options(&platform.db, DATABASE, None)?;
    db::connect(&platform.db, DATABASE, options).await
}

/// Creates the role and schema (administrator connection), then migrates as the service role.
pub async fn migrate(platform: &PlatformConfig) -> anyhow::Result<()> {
    let admin = db::admin_pool(&platform.db.admin_url).await?;
    db::provision(&admin, DATABASE, &platform.db.role_password).await?;
    admin.close().await;
    let pool = connect(platform).await?;
    db::migrate(&pool, &MIGRATIONS).await.context("scheduling migrations failed")?;
    pool.close().await;
    Ok(())
}
