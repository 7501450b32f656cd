//! The records service over real gRPC on loopback against a real Postgres, as one test binary.
//! `telemetry.rs` is a test binary of its own: it installs the process-wide tracing subscriber and
//! OpenTelemetry provider, which would capture (and be disturbed by) the other tests' work.

mod bulk;
mod common;
mod events;
mod operations;
mod organisations;
mod records_api;
