//! The public gateway's building blocks: who the caller is (bearer JWTs verified against a JWKS, or
//! a development key), and what each role may call (one table, default deny), turned into the
//! signed caller context the services verify.
//!
//! The serving part (routing to the services, gRPC-Web, audit, limits and the access API) is not
//! built yet.

pub mod auth;
pub mod policy;
