//! The platform end to end, as one test binary: services calling each other, and the gateway in
//! front of them, in this process against a real Postgres (see the crate's library for how each
//! is started).
//!
//! Not in this binary: each `telemetry.rs` and `gateway/otlp.rs` installs the process-wide tracing
//! subscriber and OpenTelemetry provider, which would capture (and be disturbed by) the other tests'
//! work; `gateway/starvation.rs` measures latency that the other tests' load would distort. Each is
//! a test binary of its own (Cargo.toml).

/// A certificate authority for the TLS tests.
mod authority;

mod gateway {
    mod access;
    mod admission;
    mod audit;
    mod organisations;
    mod streams;
    mod tls;
}

mod interop {
    mod adt;
    mod feeds;
    mod fhir;
    mod tls;
}

mod referrals {
    mod organisations;
    mod referral_links;
    mod referrals_api;
    mod with_scheduling;
}

mod scheduling {
    mod booking;
    mod bulk;
    mod lifecycle;
    mod organisations;
    mod waitlist_and_events;
}
