//! Forwarding a call to the service that owns it: authenticate the bearer token, check the policy
//! table, replace the caller's credentials with a signed caller context, bound the deadline, pass the
//! trace on, and relay the call unchanged (unary or streaming).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use pac_platform::CallerVerifier;
use pac_platform::caller::CALLER_HEADER;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use crate::auth::Authenticator;
use crate::policy;

/// The services behind the gateway, by package prefix of the RPC path.
#[derive(Clone)]
pub struct Upstreams {
    pub records: Channel,
    pub scheduling: Channel,
    pub referrals: Channel,
}

impl Upstreams {
    fn for_path(&self, path: &str) -> Option<&Channel> {
        if path.starts_with("/pac.records.v1.") {
            Some(&self.records)
        } else if path.starts_with("/pac.scheduling.v1.") {
            Some(&self.scheduling)
        } else if path.starts_with("/pac.referrals.v1.") {
            Some(&self.referrals)
        } else {
            None
        }
    }
}

/// Deadlines: the one a call gets when it sends none, and the longest it may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub default: Duration,
    pub max: Duration,
}

#[derive(Clone)]
pub struct Proxy {
    upstreams: Upstreams,
    authenticator: Arc<Authenticator>,
    signer: CallerVerifier,
    deadlines: Deadlines,
}

impl Proxy {
    pub fn new(upstreams: Upstreams, authenticator: Authenticator, signer: CallerVerifier, deadlines: Deadlines) -> Self {
        Self { upstreams, authenticator: Arc::new(authenticator), signer, deadlines }
    }

    /// The request as the service should receive it, or the status that refuses it.
    fn admit<B>(&self, mut request: Request<B>) -> Result<(Channel, Request<B>), Status> {
        let path = request.uri().path().to_string();
        let channel = self.upstreams.for_path(&path).ok_or_else(|| Status::unimplemented(format!("no such method: {path}")))?.clone();
        let authorization = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let identity = self.authenticator.authenticate(authorization).map_err(|refusal| {
            tracing::info!(reason = refusal.code(), rpc = %path, "call refused: not authenticated");
            Status::unauthenticated("a valid bearer token is required")
        })?;
        if !policy::allows(&path, identity.role) {
            tracing::info!(subject = %identity.subject, role = identity.role.name(), rpc = %path, "call refused: not permitted");
            return Err(Status::permission_denied(format!("the {} role may not call {path}", identity.role.name())));
        }
        let context = self.signer.sign(&policy::caller(&identity), policy::CALLER_CONTEXT_TTL);
        let headers = request.headers_mut();
        headers.remove(http::header::AUTHORIZATION);
        headers.insert(CALLER_HEADER, HeaderValue::from_str(&context).map_err(|_| Status::internal("caller context"))?);
        let deadline = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        let bounded = deadline.unwrap_or(self.deadlines.default).min(self.deadlines.max);
        headers.insert("grpc-timeout", HeaderValue::from_str(&format!("{}m", bounded.as_millis().max(1))).expect("digits"));
        // The service's span continues this one (the gateway's request span).
        let mut metadata = tonic::metadata::MetadataMap::from_headers(std::mem::take(headers));
        pac_platform::telemetry::inject_context(&mut metadata);
        *request.headers_mut() = metadata.into_headers();
        Ok((channel, request))
    }
}

/// A `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<B> Service<Request<B>> for Proxy
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let admitted = self.admit(request.map(Body::new));
        Box::pin(async move {
            let (mut channel, request) = match admitted {
                Ok(admitted) => admitted,
                Err(status) => return Ok(status.into_http()),
            };
            // A channel is a buffered service: it must be ready before it takes a call.
            let forwarded = match channel.ready().await {
                Ok(channel) => channel.call(request).await,
                Err(error) => Err(error),
            };
            match forwarded {
                Ok(response) => Ok(response),
                Err(error) => {
                    tracing::warn!(error = %error, "forwarding to the service failed");
                    Ok(Status::unavailable("the service did not answer; retry").into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789S", "5x", "-5S", "5 S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
