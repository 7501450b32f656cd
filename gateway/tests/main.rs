//! The gateway's tests, as one test binary. The gateway in front of the services is tested end to
//! end, in `tests/e2e`: this crate depends on no service.

mod alone;
