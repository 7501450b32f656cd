//! The shared runtime kit every Patient Access Platform component is built on: configuration,
//! telemetry, the database (schemas, roles, pools, migrations), errors mapped to gRPC status with
//! rich details, caller context, the event outbox and following other services' streams,
//! idempotency and the steps of a write (`write`), request checks, calling other services, and
//! serving over gRPC.

pub mod audit;
pub mod balance;
pub mod caller;
pub mod checks;
pub mod client;
pub mod codes;
pub mod config;
pub mod convert;
pub mod db;
pub mod error;
pub mod follow;
pub mod grpc;
pub mod idempotency;
pub mod input;
pub mod links;
pub mod local_postgres;
pub mod merges;
pub mod outbox;
pub mod paging;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod write;

pub use caller::{Actor, Caller, CallerVerifier};
pub use config::PlatformConfig;
pub use error::{ApiError, FieldViolation};

/// The current time at the database's precision (microseconds), so that what a write returns equals
/// what a later read returns.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
