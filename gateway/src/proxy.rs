//! Forwarding a call to the service that owns it: authenticate the bearer token, check the policy
//! table, replace the caller's credentials with a signed caller context, bound the deadline, pass the
//! trace on, relay the call unchanged (unary or streaming), and record it in the audit trail.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use pac_platform::caller::CALLER_HEADER;
use pac_platform::grpc::parse_grpc_timeout;
use pac_platform::{ApiError, CallerVerifier};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::audit::{AuditLog, Entry, Reserved, Stored};
use crate::auth::{self, Authenticator, Identity, Refusal};
use crate::policy::{self, Data};
use crate::refusals::Refusals;
use crate::streams::{self, Tally};

/// Where a call goes: a service over its connections, or an API the gateway serves itself.
pub type Upstream = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// The upstreams, by package prefix of the RPC path (`/pac.records.v1.`).
#[derive(Clone, Default)]
pub struct Upstreams {
    routes: Vec<(&'static str, Upstream)>,
}

impl Upstreams {
    /// Calls under `prefix` go to `service` (a service's connections, or an API served here).
    pub fn route<S>(mut self, prefix: &'static str, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
    {
        self.routes.push((prefix, BoxCloneSyncService::new(service.map_err(Into::into))));
        self
    }

    fn for_path(&self, path: &str) -> Option<Upstream> {
        self.routes.iter().find(|(prefix, _)| path.starts_with(prefix)).map(|(_, upstream)| upstream.clone())
    }
}

/// Deadlines: the one a call gets when it sends none, and the longest it may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub default: Duration,
    pub max: Duration,
}

/// Load limits: calls in flight at once (more are shed at once with UNAVAILABLE), each caller's
/// rate (a token bucket: `burst` calls at once, refilled at `per_second`), each caller's
/// searches in flight at once ([`policy::is_expensive`]), so that one caller cannot take the
/// database from the others, and each address's calls that fail authentication (a token bucket;
/// beyond it, its calls with tokens not already verified are refused unverified).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_in_flight: usize,
    pub per_second: f64,
    pub burst: f64,
    pub searches_per_caller: usize,
    pub failures_per_second: f64,
    pub failures_burst: f64,
}

/// Each caller's expensive calls in flight, by subject.
struct Searches {
    max: usize,
    running: Mutex<HashMap<String, usize>>,
}

/// One caller's place among its searches in flight, given back when dropped.
struct Searching {
    searches: Arc<Searches>,
    subject: String,
}

impl Searches {
    fn enter(self: &Arc<Self>, subject: &str) -> Option<Searching> {
        let mut running = self.running.lock().expect("searches in flight");
        let count = running.entry(subject.to_string()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Searching { searches: self.clone(), subject: subject.to_string() })
    }
}

impl Drop for Searching {
    fn drop(&mut self) {
        let mut running = self.searches.running.lock().expect("searches in flight");
        if let Some(count) = running.get_mut(&self.subject) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.subject);
            }
        }
    }
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
    fn new(per_second: f64, burst: f64) -> Self {
        let limits = Limits { per_second, burst, ..DEFAULT_LIMITS };
        Self { limits, buckets: Mutex::default() }
    }

    /// Whether `subject` has a token left, taking none.
    fn has_token(&self, subject: &str) -> bool {
        let buckets = self.buckets.lock().expect("rate buckets");
        buckets.get(subject).is_none_or(|bucket| {
            let refilled = bucket.tokens + Instant::now().duration_since(bucket.at).as_secs_f64() * self.limits.per_second;
            refilled >= 1.0
        })
    }

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

/// How long a verified token's identity, and the caller context signed for it, is reused (never
/// past the token's expiry; the signed context lives longer, `policy::CALLER_CONTEXT_TTL`).
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Most tokens remembered at once.
const VERIFIED_MAX: usize = 50_000;

/// A token's identity and the signed caller context that stands for it upstream.
#[derive(Debug, Clone)]
struct Verified {
    identity: Identity,
    context: HeaderValue,
    until: Instant,
}

/// Verifies bearer tokens and signs caller contexts, remembering both for a token seen again: a
/// client sends the same token on every call, and checking a signature and signing a context for
/// each would be a large share of the gateway's work. Refused tokens are not remembered.
struct Verifications {
    authenticator: Authenticator,
    signer: CallerVerifier,
    seen: Mutex<HashMap<String, Verified>>,
}

impl Verifications {
    /// The verification of a token seen before and still good.
    fn remembered(&self, authorization: Option<&str>) -> Option<Verified> {
        let token = auth::bearer(authorization).ok()?;
        self.seen.lock().expect("verified tokens").get(token).filter(|v| v.until > Instant::now()).cloned()
    }

    /// A remembered verification, else a new one.
    #[cfg(test)]
    fn verify(&self, authorization: Option<&str>) -> Result<Verified, Refusal> {
        self.remembered(authorization).map_or_else(|| self.verify_new(authorization), Ok)
    }

    /// Verifies a token not remembered, and remembers it when good.
    fn verify_new(&self, authorization: Option<&str>) -> Result<Verified, Refusal> {
        let token = auth::bearer(authorization)?;
        let now = Instant::now();
        let (identity, expires) = self.authenticator.verify(token)?;
        let context = self.signer.sign(&policy::caller(&identity), policy::CALLER_CONTEXT_TTL);
        let context = HeaderValue::from_str(&context).expect("a signed token is a header value");
        let left = Duration::from_secs(expires.saturating_sub(jsonwebtoken::get_current_timestamp()));
        let verified = Verified { identity, context, until: now + left.min(VERIFIED_FOR) };
        if left > Duration::ZERO {
            let mut seen = self.seen.lock().expect("verified tokens");
            if seen.len() >= VERIFIED_MAX {
                seen.retain(|_, v| v.until > now);
                if seen.len() >= VERIFIED_MAX {
                    seen.clear();
                }
            }
            seen.insert(token.to_string(), verified.clone());
        }
        Ok(verified)
    }
}

#[derive(Clone)]
pub struct Proxy {
    upstreams: Upstreams,
    verifications: Arc<Verifications>,
    deadlines: Deadlines,
    in_flight: Arc<Semaphore>,
    rates: Arc<RateLimiter>,
    searches: Arc<Searches>,
    /// Each peer's calls that failed authentication (a token bucket by address).
    failures: Arc<RateLimiter>,
    refusals: Refusals,
    audit: AuditLog,
    retries: Arc<TpsBudget>,
    /// Integration accounts must call over a connection with a verified client certificate.
    integration_certificates: bool,
}

/// Retries of a read the service answered `UNAVAILABLE`: at most this many more attempts...
const RETRY_ATTEMPTS: u32 = 2;
/// ...the first after this pause, each next one four times longer...
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// ...and, across all calls, at most a fifth as many retries as calls (10 a second at least), so
/// that retries cannot multiply the load on a service that is struggling.
fn retry_budget() -> TpsBudget {
    TpsBudget::new(Duration::from_secs(10), 10, 0.2)
}
/// Largest read request the gateway forwards: it keeps a copy of each read to send again on a retry,
/// and refuses a larger one with `OUT_OF_RANGE` (reads are small: ids and search terms).
const RETRY_BODY_LIMIT: usize = 64 * 1024;

/// Header naming one call, from the caller or made by the gateway; answered back and audited.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Why a call was turned away, and by whom (when known).
struct Denial {
    status: Status,
    reason: &'static str,
    identity: Option<Identity>,
}

impl Denial {
    fn new(error: ApiError, identity: Option<Identity>) -> Self {
        Self { reason: error.reason, status: error.into(), identity }
    }
}

/// A refusal of the gateway's own, with `ErrorInfo`: a stable reason in the gateway's domain
/// ([`crate::ERROR_DOMAIN`]).
fn refusal(code: Code, reason: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(code, reason, message).with_domain(crate::ERROR_DOMAIN)
}

/// A call let through: where it goes, as what, and whether it is audited.
struct Admitted {
    upstream: Upstream,
    request: Request<Body>,
    identity: Identity,
    data: Data,
    deadline: Instant,
    /// For an expensive call, the caller's place among its searches in flight.
    searching: Option<Searching>,
}

impl Proxy {
    pub fn new(
        upstreams: Upstreams,
        authenticator: Authenticator,
        signer: CallerVerifier,
        deadlines: Deadlines,
        limits: Limits,
        audit: AuditLog,
    ) -> Self {
        Self {
            upstreams,
            verifications: Arc::new(Verifications { authenticator, signer, seen: Mutex::default() }),
            deadlines,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            rates: Arc::new(RateLimiter { limits, buckets: Mutex::default() }),
            searches: Arc::new(Searches { max: limits.searches_per_caller, running: Mutex::default() }),
            failures: Arc::new(RateLimiter::new(limits.failures_per_second, limits.failures_burst)),
            refusals: Refusals::default(),
            audit,
            retries: Arc::new(retry_budget()),
            integration_certificates: false,
        }
    }

    /// The counts of calls refused before their caller was known, which the gateway writes to the
    /// audit trail in aggregate (`crate::refusals`).
    pub fn refusals(&self) -> Refusals {
        self.refusals.clone()
    }

    /// Requires integration accounts to present a client certificate (mutual TLS).
    pub fn integration_certificates(mut self, required: bool) -> Self {
        self.integration_certificates = required;
        self
    }

    /// The request as the upstream should receive it, or why it is refused.
    fn admit(&self, mut request: Request<Body>, path: &str) -> Result<Admitted, Denial> {
        let (upstream, (data, roles)) = match (self.upstreams.for_path(path), policy::rule(path)) {
            (Some(upstream), Some(rule)) => (upstream, rule),
            _ => {
                return Err(Denial::new(refusal(Code::Unimplemented, "UNKNOWN_METHOD", format!("no such method: {path}")), None));
            }
        };
        let authorization = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let peer = peer_key(peer_of(&request));
        // A peer whose calls keep failing authentication: only tokens already verified get through.
        let verified = match self.verifications.remembered(authorization) {
            Some(verified) => Ok(verified),
            None if !self.failures.has_token(&peer) => {
                let message = "too many calls from this address failed authentication; retry later";
                let error = refusal(Code::ResourceExhausted, "RATE_LIMITED", message).with_retry_after(Duration::from_secs(1));
                return Err(Denial::new(error, None));
            }
            None => self.verifications.verify_new(authorization).inspect_err(|_| {
                let _ = self.failures.take(&peer);
            }),
        };
        let Verified { identity, context, .. } = verified.map_err(|why: Refusal| {
            let message = match why {
                Refusal::Missing => "a bearer token is required",
                Refusal::Expired => "the bearer token has expired",
                Refusal::TooLarge => "the bearer token is too large",
                Refusal::Lifetime => "the bearer token's lifetime is longer than this gateway accepts",
                _ => "the bearer token is not valid",
            };
            Denial::new(refusal(Code::Unauthenticated, why.code(), message), None)
        })?;
        if identity.role == policy::Role::Integration && self.integration_certificates && !has_client_certificate(&request) {
            let error =
                refusal(Code::Unauthenticated, "CLIENT_CERTIFICATE_REQUIRED", "integration accounts must present a client certificate");
            return Err(Denial::new(error, Some(identity)));
        }
        if !roles.contains(&identity.role) {
            let message = format!("the {} role may not call {path}", identity.role.name());
            return Err(Denial::new(refusal(Code::PermissionDenied, "ROLE_NOT_PERMITTED", message), Some(identity)));
        }
        if let Err(wait) = self.rates.take(&identity.subject) {
            let error =
                refusal(Code::ResourceExhausted, "RATE_LIMITED", "too many calls from this caller; retry later").with_retry_after(wait);
            return Err(Denial::new(error, Some(identity)));
        }
        let searching = match policy::is_expensive(path) {
            true => Some(self.searches.enter(&identity.subject).ok_or_else(|| {
                let message = format!("at most {} searches at once per caller; retry when one has finished", self.searches.max);
                let error = refusal(Code::ResourceExhausted, "TOO_MANY_SEARCHES", message).with_retry_after(Duration::from_millis(100));
                Denial::new(error, Some(identity.clone()))
            })?),
            false => None,
        };
        let headers = request.headers_mut();
        headers.remove(http::header::AUTHORIZATION);
        headers.insert(CALLER_HEADER, context);
        let deadline = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        let bounded = deadline.unwrap_or(self.deadlines.default).min(self.deadlines.max);
        headers.insert("grpc-timeout", HeaderValue::from_str(&format!("{}m", bounded.as_millis().max(1))).expect("digits"));
        // The service's span continues this one (the gateway's request span).
        let mut metadata = tonic::metadata::MetadataMap::from_headers(std::mem::take(headers));
        pac_platform::telemetry::inject_context(&mut metadata);
        *request.headers_mut() = metadata.into_headers();
        Ok(Admitted { upstream, request, identity, data, deadline: Instant::now() + bounded, searching })
    }
}

/// The limits unless configured otherwise.
pub const DEFAULT_LIMITS: Limits = Limits {
    max_in_flight: 2048,
    per_second: 500.0,
    burst: 1000.0,
    searches_per_caller: 2,
    failures_per_second: 20.0,
    failures_burst: 200.0,
};

/// The address the call came from (the connection's peer; behind a proxy, the proxy's).
fn peer_of<B>(request: &Request<B>) -> Option<std::net::IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.get_ref().remote_addr()))
        .map(|addr| addr.ip())
}

fn peer_key(peer: Option<std::net::IpAddr>) -> String {
    peer.map_or_else(String::new, |ip| ip.to_string())
}

/// Whether the connection presented a client certificate that the configured client CA verified.
fn has_client_certificate<B>(request: &Request<B>) -> bool {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|info| info.peer_certs()).is_some_and(|certs| !certs.is_empty())
}

/// The caller's request id when it is a sensible token, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

fn entry(identity: Option<&Identity>, path: &str, request_id: &str, trace_id: &str) -> Entry {
    Entry {
        subject: identity.map(|i| i.subject.clone()).unwrap_or_default(),
        role: identity.map(|i| i.role.name().to_string()).unwrap_or_default(),
        organisation: identity.and_then(|i| i.organisations.first().cloned()).unwrap_or_default(),
        organisations: identity.map(|i| i.organisations.clone()).unwrap_or_default(),
        action: path.to_string(),
        request_id: request_id.to_string(),
        trace_id: trace_id.to_string(),
        ..Entry::default()
    }
}

/// The gRPC status code's canonical name, as audit records and logs spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_in(headers: &HeaderMap) -> Option<&'static str> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(code_name(Code::from_i32(code)))
}

/// An audited call's record until the service answers: should the call be dropped first (the caller
/// went away before the answer's headers), the record is written with outcome CANCELLED, so a call
/// that reached a service is recorded whatever its caller does.
struct Unanswered(Option<(Reserved, Entry)>);

impl Unanswered {
    fn answered(mut self) -> Option<(Reserved, Entry)> {
        self.0.take()
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((slot, mut entry)) = self.0.take() {
            entry.outcome = "CANCELLED".into();
            slot.record(entry);
        }
    }
}

/// A response body that records its call in the audit trail when it ends (or is dropped by a caller
/// who went away), with the status from its trailers; for an event stream, with what it delivered.
///
/// Nothing carrying patient data leaves before the record that says so is durable: a unary answer
/// is held until its trailers arrive, its record is stored and, when it succeeded, committed; a
/// stream's first event waits for its opening record ([`AuditedBody::after`]).
struct AuditedBody {
    inner: Body,
    pending: Option<(Reserved, Entry)>,
    stream: Option<Tally>,
    /// Frames held back until `gate` opens.
    held: std::collections::VecDeque<http_body::Frame<Bytes>>,
    gate: Option<Stored>,
    ended: bool,
}

impl AuditedBody {
    fn new(inner: Body, pending: (Reserved, Entry), stream: Option<Tally>) -> Self {
        Self { inner, pending: Some(pending), stream, held: Default::default(), gate: None, ended: false }
    }

    /// Holds every frame back until `stored` resolves.
    fn after(mut self, stored: Stored) -> Self {
        self.gate = Some(stored);
        self
    }

    /// Records the call; for a unary call that succeeded, the answer waits until the record is durable.
    fn finish(&mut self, outcome: &str) {
        if let Some((slot, mut entry)) = self.pending.take() {
            if entry.outcome.is_empty() {
                entry.outcome = outcome.to_string();
            }
            match &mut self.stream {
                Some(stream) => slot.record(stream.closed(&entry.outcome)),
                None if entry.outcome == "OK" => self.gate = Some(slot.record_durably(entry)),
                None => slot.record(entry),
            }
        }
    }
}

impl http_body::Body for AuditedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        loop {
            if let Some(gate) = &mut self.gate {
                if ready!(Pin::new(gate).poll(cx)).is_err() {
                    tracing::error!("the audit writer stopped before storing a record; answering all the same");
                }
                self.gate = None;
            }
            // A unary answer's frames wait until its call is recorded (the trailers gave the outcome,
            // and for a success the record is committed: the gate above).
            let recorded = self.stream.is_some() || self.pending.is_none();
            if recorded && let Some(frame) = self.held.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let outcome = frame.trailers_ref().and_then(status_in);
                    if let Some(stream) = &mut self.stream {
                        if let Some(data) = frame.data_ref() {
                            stream.feed(data);
                        }
                        if let Some(outcome) = outcome {
                            self.finish(outcome);
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    // A unary answer: held until its record is stored.
                    self.held.push_back(frame);
                    if let Some(outcome) = outcome {
                        self.finish(outcome);
                    }
                }
                Some(Err(error)) => {
                    self.finish("UNAVAILABLE");
                    self.held.clear();
                    return Poll::Ready(Some(Err(error)));
                }
                None => {
                    self.finish("UNKNOWN");
                    self.ended = true;
                }
            }
        }
    }

    /// A trailers-only answer (an error) must end with its headers: a client may take a data frame
    /// after it for a protocol error. Its record, whose outcome the headers gave, is written when
    /// the body is dropped unread.
    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.gate.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.is_end_stream() {
            true => http_body::SizeHint::with_exact(0),
            false => http_body::SizeHint::default(),
        }
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

fn unavailable(response: &Response<Body>) -> bool {
    status_in(response.headers()) == Some("UNAVAILABLE")
}

/// Sends one call upstream; a call that cannot be delivered is answered `UNAVAILABLE`.
async fn forward(mut upstream: Upstream, request: Request<Body>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let forwarded = match upstream.ready().await {
        Ok(upstream) => upstream.call(request).await,
        Err(error) => Err(error),
    };
    forwarded.unwrap_or_else(|error| match error.downcast::<Status>() {
        // Ended at its deadline by the connection (`pac_platform::balance`).
        Ok(status) => status.into_http(),
        Err(error) => {
            tracing::warn!(error = %error, rpc = %path, "forwarding to the service failed");
            Status::from(refusal(Code::Unavailable, "SERVICE_UNAVAILABLE", "the service did not answer; retry")).into_http()
        }
    })
}

/// A read's request, whole; `OUT_OF_RANGE` when it is over [`RETRY_BODY_LIMIT`], `CANCELLED` when it
/// was cut off (`pac_platform::input::unread`).
async fn read_whole(request: Request<Body>) -> Result<(http::request::Parts, Bytes), Denial> {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    match http_body_util::Limited::new(body, RETRY_BODY_LIMIT).collect().await {
        Ok(collected) => Ok((parts, collected.to_bytes())),
        Err(error) => Err(Denial::new(
            pac_platform::input::unread(&*error, "the request is too large for a read").with_domain(crate::ERROR_DOMAIN),
            None,
        )),
    }
}

/// Sends a read upstream, again (within the budget and the deadline) while the service answers
/// `UNAVAILABLE`: a restarting replica or a dropped connection costs the caller nothing.
async fn forward_read(upstream: Upstream, request: Request<Body>, deadline: Instant, budget: &TpsBudget) -> Response<Body> {
    budget.deposit();
    let (parts, body) = match read_whole(request).await {
        Ok(whole) => whole,
        Err(denial) => return denial.status.into_http(),
    };
    let mut pause = RETRY_PAUSE;
    let mut attempt = 0;
    loop {
        let mut request = Request::new(Body::new(http_body_util::Full::new(body.clone())));
        (*request.method_mut(), *request.uri_mut(), *request.version_mut()) = (parts.method.clone(), parts.uri.clone(), parts.version);
        *request.headers_mut() = parts.headers.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        request.headers_mut().insert("grpc-timeout", HeaderValue::from_str(&format!("{}m", left.as_millis().max(1))).expect("digits"));
        let response = forward(upstream.clone(), request).await;
        if !unavailable(&response) || attempt == RETRY_ATTEMPTS || Instant::now() + pause >= deadline || !budget.withdraw() {
            return response;
        }
        attempt += 1;
        tracing::info!(attempt, rpc = %parts.uri.path(), "service unavailable; retrying a read");
        tokio::time::sleep(pause).await;
        pause *= 4;
    }
}

/// Records a call refused here, and answers it.
fn refuse(slot: Reserved, mut record: Entry, status: Status, reason: &str, request_id: &str) -> Response<Body> {
    (record.outcome, record.reason) = (code_name(status.code()).to_string(), reason.to_string());
    slot.record(record);
    with_request_id(status.into_http(), request_id)
}

/// Makes ready the audit of a stream, which leaves a record when it opens as well as when it closes:
/// room for the opening record, and the cursor the stream starts after (from the request, which is
/// read whole and passed on).
async fn open_stream(
    request: Request<Body>,
    audit: &AuditLog,
    record: &Entry,
    identity: &Identity,
) -> Result<(Request<Body>, Reserved, Tally), (Status, &'static str)> {
    let opening = audit.reserve().ok_or_else(|| (overloaded(), "OVERLOADED"))?;
    let (parts, body) = read_whole(request).await.map_err(|denial| (denial.status, denial.reason))?;
    let after = streams::after_cursor(&body).unwrap_or_default();
    let tally = Tally::new(audit.clone(), record.clone(), identity.organisations.clone(), after);
    Ok((Request::from_parts(parts, Body::new(http_body_util::Full::new(body))), opening, tally))
}

/// The answer when there is no room for another call, or for its audit records.
fn overloaded() -> Status {
    refusal(Code::Unavailable, "OVERLOADED", "the gateway is at capacity; retry shortly")
        .with_retry_after(Duration::from_millis(100))
        .into()
}

fn with_request_id(mut response: Response<Body>, request_id: &str) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

impl<B> Service<Request<B>> for Proxy
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Overloaded, or unable to record calls: shed at once rather than queue.
        let (Ok(permit), Some(slot)) = (self.in_flight.clone().try_acquire_owned(), self.audit.reserve()) else {
            return Box::pin(async move { Ok(overloaded().into_http()) });
        };
        let path = request.uri().path().to_string();
        let peer = peer_of(&request);
        let request_id = request_id(request.headers());
        let trace_id = pac_platform::telemetry::current_trace_id().unwrap_or_default();
        let admitted = self.admit(request.map(Body::new), &path);
        let retries = self.retries.clone();
        let audit = self.audit.clone();
        let refusals = self.refusals.clone();
        Box::pin(async move {
            let _permit = permit;
            let Admitted { upstream, mut request, identity, data, deadline, searching } = match admitted {
                Ok(admitted) => admitted,
                Err(Denial { status, reason, identity }) => {
                    tracing::info!(reason, rpc = %path, "call refused");
                    if status.code() == Code::Unimplemented {
                        return Ok(with_request_id(status.into_http(), &request_id));
                    }
                    if identity.is_none() {
                        // The caller is unknown: counted, and recorded with the others from its address.
                        refusals.count(peer, code_name(status.code()), reason);
                        return Ok(with_request_id(status.into_http(), &request_id));
                    }
                    return Ok(refuse(slot, entry(identity.as_ref(), &path, &request_id, &trace_id), status, reason, &request_id));
                }
            };
            request.headers_mut().insert(REQUEST_ID_HEADER, HeaderValue::from_str(&request_id).expect("checked characters"));
            let record = match data {
                Data::Other => Entry::default(),
                Data::Patient | Data::Stream => entry(Some(&identity), &path, &request_id, &trace_id),
            };
            let mut stream = None;
            if data == Data::Stream {
                match open_stream(request, &audit, &record, &identity).await {
                    Ok((opened, opening, tally)) => (request, stream) = (opened, Some((opening, tally))),
                    Err((status, reason)) => return Ok(refuse(slot, record, status, reason, &request_id)),
                }
            }
            let unanswered = Unanswered((data != Data::Other).then_some((slot, record)));
            let forwarding = async {
                if policy::is_idempotent_read(&path) {
                    forward_read(upstream, request, deadline, &retries).await
                } else {
                    forward(upstream, request).await
                }
            };
            // The service ends the call at its deadline; this is the backstop should it not answer.
            let backstop = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(250);
            let response = tokio::time::timeout(backstop, forwarding).await.unwrap_or_else(|_| {
                tracing::warn!(rpc = %path, "the service did not answer within the deadline");
                Status::from(refusal(Code::DeadlineExceeded, "SERVICE_DEADLINE_EXCEEDED", "the service did not answer within the deadline"))
                    .into_http()
            });
            // A search's work is done when the service answers.
            drop(searching);
            let (mut parts, body) = response.into_parts();
            let patients = parts.headers.remove(pac_platform::audit::PATIENTS_HEADER);
            // A trailers-only answer (an error, or a stream refused) carries its status in the headers.
            let answered = status_in(&parts.headers).map(String::from).unwrap_or_default();
            let response = match (unanswered.answered(), stream) {
                (Some((slot, mut record)), None) => {
                    record.patient_ids =
                        patients.as_ref().and_then(|v| v.to_str().ok()).map(pac_platform::audit::patients_in).unwrap_or_default();
                    record.outcome = answered;
                    Response::from_parts(parts, Body::new(AuditedBody::new(body, (slot, record), None)))
                }
                (Some((slot, mut record)), Some((opening, tally))) => {
                    let opened = answered.is_empty().then(|| opening.record_durably(tally.opened()));
                    record.outcome = answered;
                    let mut audited = AuditedBody::new(body, (slot, record), Some(tally));
                    if let Some(stored) = opened {
                        audited = audited.after(stored);
                    }
                    Response::from_parts(parts, Body::new(audited))
                }
                (None, _) => Response::from_parts(parts, body),
            };
            Ok(with_request_id(response, &request_id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A successful unary answer: nothing of it, its data above all, leaves before its record is
    /// committed.
    #[tokio::test]
    async fn a_unary_answer_is_held_until_its_record_is_stored() {
        use http_body_util::BodyExt;
        let (audit, mut queued) = AuditLog::for_tests();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames: Vec<Result<http_body::Frame<Bytes>, Status>> =
            vec![Ok(http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\x02patient"))), Ok(http_body::Frame::trailers(trailers))];
        let inner = Body::new(http_body_util::StreamBody::new(futures::stream::iter(frames)));
        let slot = audit.reserve().unwrap();
        let mut body = AuditedBody::new(inner, (slot, Entry { action: "/a".into(), ..Entry::default() }), None);
        let early = tokio::time::timeout(Duration::from_millis(100), body.frame()).await;
        assert!(early.is_err(), "no frame before the record is stored");
        let (entry, _, stored) = queued.try_recv().expect("the record is queued");
        assert_eq!(entry.outcome, "OK");
        stored.expect("the call waits for it").send(()).unwrap();
        let data = body.frame().await.unwrap().unwrap();
        assert!(data.is_data(), "the data first, once stored");
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn each_caller_has_a_bucket_of_its_own() {
        let limiter =
            RateLimiter { limits: Limits { max_in_flight: 1, per_second: 10.0, burst: 2.0, ..DEFAULT_LIMITS }, buckets: Mutex::default() };
        assert!(limiter.take("a").is_ok() && limiter.take("a").is_ok());
        let wait = limiter.take("a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limiter.take("b").is_ok(), "another caller is not held back");
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.take("a").is_ok(), "refilled");
    }

    fn verifications() -> Verifications {
        let signer = CallerVerifier::new(&pac_platform::config::Secret::new(String::from("caller-key")), true);
        Verifications { authenticator: Authenticator::development(b"token-key", "iss", "aud"), signer, seen: Mutex::default() }
    }

    fn token(ttl: Duration) -> String {
        let identity = Identity { subject: "c1".into(), role: policy::Role::Coordinator, organisations: vec!["RR8".into()] };
        format!("Bearer {}", crate::auth::mint_development(b"token-key", "iss", "aud", &identity, ttl))
    }

    #[test]
    fn a_token_seen_again_reuses_its_verification_until_it_expires() {
        let verifications = verifications();
        let bearer = token(Duration::from_secs(3600));
        let first = verifications.verify(Some(&bearer)).unwrap();
        assert!(first.until <= Instant::now() + VERIFIED_FOR);
        let again = verifications.verify(Some(&bearer)).unwrap();
        assert_eq!((again.identity, again.context, again.until), (first.identity, first.context, first.until), "remembered");
        // A token about to expire is remembered no longer than it lives.
        let short = verifications.verify(Some(&token(Duration::from_secs(5)))).unwrap();
        assert!(short.until <= Instant::now() + Duration::from_secs(5));
        // Refusals are not remembered, and a refused token never matches a remembered one.
        assert_eq!(verifications.verify(Some(&format!("{bearer}x"))).unwrap_err(), Refusal::Signature);
        assert_eq!(verifications.seen.lock().unwrap().len(), 2);
    }
}
