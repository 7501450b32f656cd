//! The scheduling service's own tests, as one test binary. Tests that need the records service (or
//! any other) beside it are end-to-end tests, in `tests/e2e`: this crate depends on no other service.

mod schema;
