//! Calling another service: requests that carry this service's signed caller context, a deadline
//! and the current trace context (the connections are `balance`).

use std::time::Duration;

use tonic::Request;

use crate::caller::{Actor, CALLER_HEADER, Caller, CallerVerifier};
use crate::config::Secret;

/// Makes requests as this service.
#[derive(Clone)]
pub struct ServiceIdentity {
    signer: CallerVerifier,
    caller: Caller,
}

impl ServiceIdentity {
    /// A service acting as `subject`, with `permissions`.
    pub fn new(internal_key: &Secret, subject: &str, permissions: &[&str]) -> Self {
        let actor = Actor { subject: subject.into(), role: "service".into(), organisation: String::new() };
        let caller = Caller { actor, organisations: Vec::new(), permissions: permissions.iter().map(|p| p.to_string()).collect() };
        Self { signer: CallerVerifier::new(internal_key, false), caller }
    }

    pub fn actor(&self) -> &Actor {
        &self.caller.actor
    }

    /// `message` as a request from this service, with a deadline when given.
    pub fn request<T>(&self, message: T, timeout: Option<Duration>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let token = self.signer.sign(&self.caller, Duration::from_secs(300));
        if let Ok(value) = token.parse() {
            request.metadata_mut().insert(CALLER_HEADER, value);
        }
        crate::telemetry::inject_context(request.metadata_mut());
        request
    }
}
