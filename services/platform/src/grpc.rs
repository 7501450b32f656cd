//! Serving a component over gRPC: request ids, request spans with W3C context, health (NOT_SERVING
//! while the database is unreachable), reflection v1 and v1alpha, connection limits, graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Request, Response};
use opentelemetry::global;
use opentelemetry::propagation::Extractor;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::{Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::GrpcConfig;
use crate::input::{Contracts, InputCheckLayer};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// What a component serves besides its own services.
pub struct Serving {
    /// Fully-qualified gRPC service names reported by the health service, e.g. `pac.records.v1.PatientRecords`.
    pub service_names: Vec<&'static str>,
    /// Encoded file descriptor sets for reflection.
    pub descriptor_sets: Vec<&'static [u8]>,
    /// The component's database, checked for health (none for a component without one).
    pub database: Option<PgPool>,
    /// Also answer gRPC-Web (HTTP/1.1 and HTTP/2) on the same port: the public gateway does.
    pub grpc_web: bool,
    /// Serve TLS (and verify client certificates, when it names a client CA): the gateway may.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Check every request's text against the descriptor sets before the services see it
    /// (`crate::input`). The services do; the gateway checks only the APIs it serves itself.
    pub check_inputs: bool,
    /// Largest header list a request may carry, when not HTTP/2's default (16 KiB): the gateway
    /// takes more, so that an over-size bearer token reaches it and is refused and audited.
    pub max_header_list_bytes: Option<u32>,
}

impl Serving {
    /// One of the platform's services: its gRPC service, the contracts' descriptors for reflection,
    /// every request's text checked, health tied to its database.
    pub fn service(service_name: &'static str, database: PgPool) -> Self {
        Self {
            service_names: vec![service_name],
            descriptor_sets: vec![pac_proto::FILE_DESCRIPTOR_SET],
            database: Some(database),
            grpc_web: false,
            tls: None,
            check_inputs: true,
            max_header_list_bytes: None,
        }
    }
}

/// Serves `routes` on `listener` until `shutdown` fires, then drains in-flight calls for at most the
/// configured grace period.
pub async fn serve(
    config: &GrpcConfig,
    listener: TcpListener,
    routes: Routes,
    serving: Serving,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    // The first status is known before the first connection is accepted.
    let mut health = HealthState { reporter, names: serving.service_names, database: serving.database, last: None };
    health.report(shutdown.is_cancelled()).await;
    let health_task = tokio::spawn(health.follow(shutdown.clone()));

    let mut reflection =
        tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for set in &serving.descriptor_sets {
        reflection = reflection.register_encoded_file_descriptor_set(set);
    }
    let reflection_v1 = reflection.build_v1()?;
    let mut reflection =
        tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for set in &serving.descriptor_sets {
        reflection = reflection.register_encoded_file_descriptor_set(set);
    }
    let reflection_v1alpha = reflection.build_v1alpha()?;

    let routes = routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
    let input_check = match serving.check_inputs {
        true => Some(InputCheckLayer::new(Arc::new(Contracts::from_descriptor_sets(&serving.descriptor_sets)?), config.max_message_bytes)),
        false => None,
    };
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, TimeOrderedRequestId))
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(request_span)
                .on_request(())
                .on_response(on_response)
                .on_eos(on_end_of_stream)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .option_layer(input_check);

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = Server::builder();
    if let Some(tls) = serving.tls {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .accept_http1(serving.grpc_web)
        .concurrency_limit_per_connection(config.concurrency_limit_per_connection)
        .timeout(config.request_timeout)
        .max_connection_age(config.max_connection_age)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
        .http2_max_header_list_size(serving.max_header_list_bytes)
        .layer(layers)
        .layer(tower::util::option_layer(serving.grpc_web.then(tonic_web::GrpcWebLayer::new)))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());

    let grace = config.shutdown_grace;
    let result = tokio::select! {
        result = server => result.map_err(anyhow::Error::from),
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown grace period over; closing remaining calls");
            Ok(())
        }
    };
    health_task.abort();
    result
}

/// Request ids for calls that come without one: UUIDv7, so that ids made close together sort
/// together (the audit trail's index on them then grows at its end, like its other indexes).
#[derive(Clone, Copy)]
struct TimeOrderedRequestId;

impl MakeRequestId for TimeOrderedRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = uuid::Uuid::now_v7().to_string();
        Some(RequestId::new(id.parse().expect("a uuid is a header value")))
    }
}

/// The request span: named after the RPC, parented on the caller's W3C trace context (extracted here,
/// before the span is ever entered), with the request id and trace id for log correlation.
fn request_span<B>(request: &Request<B>) -> Span {
    let path = request.uri().path();
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let request_id = request.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        request_id = %request_id,
        trace_id = field::Empty,
        rpc.grpc.status_code = field::Empty,
        otel.status_code = field::Empty,
    );
    let parent = global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(request.headers())));
    let _ = span.set_parent(parent);
    if let Some(trace_id) = crate::telemetry::current_trace_id_of(&span) {
        span.record("trace_id", field::display(trace_id));
    }
    span
}

fn on_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    // A trailers-only response (most errors) has its status in the headers.
    if let Some(code) = grpc_status(response.headers()) {
        finish(code, latency, span);
    }
}

fn on_end_of_stream(trailers: Option<&HeaderMap>, latency: Duration, span: &Span) {
    finish(trailers.and_then(grpc_status).unwrap_or(0), latency, span);
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn finish(code: i32, latency: Duration, span: &Span) {
    span.record("rpc.grpc.status_code", code);
    let code_name = format!("{:?}", tonic::Code::from_i32(code));
    if is_server_fault(code) {
        span.record("otel.status_code", "ERROR");
        tracing::warn!(parent: span, grpc.code = %code_name, latency_ms = latency.as_secs_f64() * 1e3, "rpc finished");
    } else {
        tracing::info!(parent: span, grpc.code = %code_name, latency_ms = latency.as_secs_f64() * 1e3, "rpc finished");
    }
}

/// Codes that mean the server failed, not that the caller asked for something it may not have.
fn is_server_fault(code: i32) -> bool {
    use tonic::Code::*;
    matches!(tonic::Code::from_i32(code), Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss)
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

/// Reads W3C `traceparent`/`tracestate` from request headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Streams a client may cancel before the server has taken them up, on one connection, before the
/// server closes it as an attack (HTTP/2 "rapid reset"). h2's default of 20 closed the connection of
/// a caller whose timeouts fired together (an engine under load), failing its other calls in flight
/// with them (`tests/faults/deadlines.rs`). This still bounds the attack.
const MAX_PENDING_ACCEPT_RESETS: usize = 1024;

/// Keeps the health service in step with the database: SERVING while it answers, NOT_SERVING when it
/// does not and from the moment shutdown begins.
struct HealthState {
    reporter: HealthReporter,
    names: Vec<&'static str>,
    database: Option<PgPool>,
    last: Option<ServingStatus>,
}

impl HealthState {
    async fn report(&mut self, shutting_down: bool) {
        let reachable = match &self.database {
            Some(database) => crate::db::is_reachable(database, Duration::from_secs(2)).await,
            None => true,
        };
        let status = if !shutting_down && reachable { ServingStatus::Serving } else { ServingStatus::NotServing };
        if self.last == Some(status) {
            return;
        }
        if status == ServingStatus::NotServing && !shutting_down {
            tracing::warn!("database unreachable; reporting NOT_SERVING");
        }
        for name in self.names.iter().copied().chain([""]) {
            self.reporter.set_service_status(name, status).await;
        }
        self.last = Some(status);
    }

    async fn follow(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.report(true).await;
                    return;
                }
                _ = tokio::time::sleep(Duration::from_secs(2)) => self.report(false).await,
            }
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `task` every `period` until shutdown (housekeeping such as pruning idempotency records).
pub fn every<F, Fut>(period: Duration, shutdown: CancellationToken, mut task: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => task().await,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
