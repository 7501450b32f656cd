//! Referral rules in plain Rust: no database, no gRPC.

pub mod eligibility;
pub mod referral;
pub mod rtt;
pub mod worklist;
