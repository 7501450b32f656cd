//! Logs and traces. JSON log lines carry the request's trace id; spans go to an OpenTelemetry
//! collector over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. W3C trace context is extracted
//! where the request span is created (see `grpc`), never after.
//!
//! Nothing that identifies a patient is ever put in a log line, span name or span attribute: handlers
//! record ids (UUIDs) and outcomes, never request fields.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;

/// Flushes and stops span export when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports every finished span now.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the process-wide subscriber: logs to stdout, spans to OTLP when configured.
pub fn init(service_name: &str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    let exporter = match &config.otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            Some(opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?)
        }
        None => None,
    };
    init_with(service_name, config, std::io::stdout, exporter)
}

/// Installs the process-wide subscriber with a given log writer and span exporter (tests capture both).
pub fn init_with<W, E>(service_name: &str, config: &TelemetryConfig, writer: W, exporter: Option<E>) -> anyhow::Result<TelemetryGuard>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    E: SpanExporter + 'static,
{
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(exporter) = exporter {
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer("pac");

    let filter = EnvFilter::try_new(&config.log_filter)?;
    let logs = if config.log_json {
        tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false).with_writer(writer).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(writer).boxed()
    };
    tracing_subscriber::registry().with(filter).with(logs).with(tracing_opentelemetry::layer().with_tracer(tracer)).try_init()?;
    Ok(TelemetryGuard { provider })
}

/// The W3C trace id of the current span, if it is being traced.
pub fn current_trace_id() -> Option<String> {
    current_trace_id_of(&tracing::Span::current())
}

/// The W3C trace id of `span`, if it is being traced.
pub fn current_trace_id_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// Adds the current span's W3C trace context to an outgoing gRPC request, so a call to another
/// component continues this trace.
pub fn inject_context(metadata: &mut tonic::metadata::MetadataMap) {
    struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);
    impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(key), Ok(value)) =
                (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(value))
            {
                self.0.insert(key, value);
            }
        }
    }
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut MetadataInjector(metadata)));
}
