//! The referrals service (`pac.referrals.v1.Referrals`). So far: its domain rules in plain Rust — the
//! referral-to-treatment clock, service eligibility, and the referral state machine with its allowed
//! actions. The contract, store, gRPC service and event handling follow.

pub mod domain;
