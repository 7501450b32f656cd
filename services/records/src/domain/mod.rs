//! The rules of patient identity, in plain Rust: no database, no gRPC.

pub mod demographics;
pub mod matching;
pub mod nhs_number;
pub mod patient;
