//! Scheduling rules in plain Rust: no database, no gRPC.

pub mod appointment;
pub mod cancellation;
pub mod clinic_time;
pub mod session;
pub mod waitlist;
