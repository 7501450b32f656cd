//! The platform in one test process: records, scheduling, referrals and the gateway served
//! in-process on loopback ports against a database of the test's own, for the tests in `tests/` (one
//! binary, `e2e`) and the fault suite. Each service crate's own tests start that service alone.
//!
//! - [`scheduling`]: the scheduling service and the records service it calls.
//! - [`referrals`]: records, scheduling and referrals, referrals stoppable and restartable.
//! - [`gateway`]: all three behind the gateway, called with tokens as a client calls it.
//! - [`interop`]: the interop component in front of that gateway, and an MLLP client (a PAS).
//!
//! What needs no service (databases, ports, callers, assertions) is the kit's:
//! `pac_platform::testkit`.

pub mod gateway;
pub mod interop;
pub mod referrals;
pub mod scheduling;

use std::net::SocketAddr;

use pac_gateway::GatewayConfig;
use pac_platform::PlatformConfig;
use pac_records::RecordsConfig;
use pac_referrals::ReferralsConfig;
use pac_scheduling::SchedulingConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Migrates the records service's schema and serves it, in its development settings, on a loopback
/// port of its own until `shutdown`; its address.
pub async fn serve_records(platform: &PlatformConfig, shutdown: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = RecordsConfig::development(addr);
    pac_records::migrate(platform, &config).await.expect("migrate records");
    tokio::spawn(pac_records::serve(platform.clone(), config, listener, shutdown.clone()));
    addr
}

/// Migrates the scheduling service's schema and serves it on `listener` until `shutdown`.
pub async fn serve_scheduling(platform: &PlatformConfig, config: SchedulingConfig, listener: TcpListener, shutdown: &CancellationToken) {
    pac_scheduling::migrate(platform, &config).await.expect("migrate scheduling");
    tokio::spawn(pac_scheduling::serve(platform.clone(), config, listener, shutdown.clone()));
}

/// Migrates the referrals service's schema and serves it on `listener` until `shutdown`.
pub async fn serve_referrals(platform: &PlatformConfig, config: ReferralsConfig, listener: TcpListener, shutdown: &CancellationToken) {
    pac_referrals::migrate(platform, &config).await.expect("migrate referrals");
    tokio::spawn(pac_referrals::serve(platform.clone(), config, listener, shutdown.clone()));
}

/// Migrates the gateway's schema and serves it on `listener` until `shutdown`.
pub async fn serve_gateway(platform: &PlatformConfig, config: GatewayConfig, listener: TcpListener, shutdown: &CancellationToken) {
    pac_gateway::migrate(platform).await.expect("migrate the gateway");
    tokio::spawn(pac_gateway::serve(platform.clone(), config, listener, shutdown.clone()));
}
