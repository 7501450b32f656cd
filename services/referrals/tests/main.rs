//! The referrals service's own tests against a real Postgres, as one test binary. Tests that
//! start the other services beside it are in the end-to-end crate (`tests/e2e`).

mod bulk;
