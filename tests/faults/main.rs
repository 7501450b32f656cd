//! The fault suite: the platform's promises kept under the faults a hospital's platform meets (see
//! RELIABILITY.md for each promise, its test and its last measured result).
//!
//! `cargo test --test faults` runs the quick part (also run by `cargo test --workspace`);
//! `PAC_TEST_XID_BUDGET=10000000 cargo test --test faults -- --include-ignored --nocapture` runs
//! all of it, with the figures printed.

mod common;
mod crashes;
mod database;
mod deadlines;
mod followers;
mod inputs;
mod production;
mod roles;
mod stream_order;
