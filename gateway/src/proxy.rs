//! Forwarding a call to the service that owns it: authenticate the bearer token, check the policy
//! table, replace the caller's credentials with a signed caller context, bound the deadline, pass the
//! trace on, and relay the call unchanged (unary or streaming).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use pac_platform::caller::CALLER_HEADER;
use pac_platform::{ApiError, CallerVerifier};
use tokio::sync::Semaphore;
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

/// Load limits: calls in flight at once (more are shed at once with UNAVAILABLE), and each caller's
/// rate (a token bucket: `burst` calls at once, refilled at `per_second`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_in_flight: usize,
    pub per_second: f64,
    pub burst: f64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Each caller's token bucket, by subject.
struct RateLimiter {
    limits: Limits,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes a token for `subject`, or says how long until one is there.
    fn take(&self, subject: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate buckets");
        if buckets.len() > 100_000 {
            // Forget callers idle long enough to have refilled.
            let full = Duration::from_secs_f64(self.limits.burst / self.limits.per_second.max(f64::MIN_POSITIVE));
            buckets.retain(|_, b| now.duration_since(b.at) < full);
        }
        let bucket = buckets.entry(subject.to_string()).or_insert(Bucket { tokens: self.limits.burst, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.limits.per_second).min(self.limits.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.limits.per_second.max(f64::MIN_POSITIVE))
                .max(Duration::from_millis(1)))
        }
    }
}

#[derive(Clone)]
pub struct Proxy {
    upstreams: Upstreams,
    authenticator: Arc<Authenticator>,
    signer: CallerVerifier,
    deadlines: Deadlines,
    in_flight: Arc<Semaphore>,
    rates: Arc<RateLimiter>,
}

impl Proxy {
    pub fn new(upstreams: Upstreams, authenticator: Authenticator, signer: CallerVerifier, deadlines: Deadlines, limits: Limits) -> Self {
        Self {
            upstreams,
            authenticator: Arc::new(authenticator),
            signer,
            deadlines,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            rates: Arc::new(RateLimiter { limits, buckets: Mutex::default() }),
        }
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
        if let Err(wait) = self.rates.take(&identity.subject) {
            tracing::info!(subject = %identity.subject, rpc = %path, "call refused: rate limit");
            let error = ApiError::new(tonic::Code::ResourceExhausted, "RATE_LIMITED", "too many calls from this caller; retry later")
                .with_retry_after(wait);
            return Err(error.into());
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
    if !value.is_ascii() {
        return None;
    }
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
        // Overloaded: shed at once rather than queue.
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let error = ApiError::unavailable("OVERLOADED", "the gateway is at capacity; retry shortly")
                .with_retry_after(Duration::from_millis(100));
            return Box::pin(async move { Ok(Status::from(error).into_http()) });
        };
        let admitted = self.admit(request.map(Body::new));
        Box::pin(async move {
            let _permit = permit;
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
    fn each_caller_has_a_bucket_of_its_own() {
        let limiter = RateLimiter { limits: Limits { max_in_flight: 1, per_second: 10.0, burst: 2.0 }, buckets: Mutex::default() };
        assert!(limiter.take("a").is_ok() && limiter.take("a").is_ok());
        let wait = limiter.take("a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limiter.take("b").is_ok(), "another caller is not held back");
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.take("a").is_ok(), "refilled");
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789S", "5x", "-5S", "5 S", "5é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
