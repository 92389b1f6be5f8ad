//! Logs and traces for `plinth serve`: JSON lines when stderr is not a
//! terminal, readable text when it is; the level from `log.level`; and,
//! when `telemetry.otlp_endpoint` is set, spans exported over OTLP/HTTP
//! with W3C trace-context propagation.
//!
//! Secrets never reach the log: configuration secrets are redacted types,
//! and request headers (`Authorization` included) are never logged.

use std::io::IsTerminal;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use plinth_core::config::{LogConfig, LogFormat, TelemetryConfig};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes pending spans when dropped through [`TelemetryGuard::shutdown`].
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("plinth: flushing traces failed: {error}");
        }
    }
}

pub fn init(log: &LogConfig, telemetry: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(&log.level)
        .with_context(|| format!("log.level `{}` is not a valid filter", log.level))?;
    let use_json = match log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let tracer_provider = match &telemetry.otlp_endpoint {
        Some(endpoint) => Some(build_tracer_provider(endpoint, telemetry)?),
        None => None,
    };
    let otel_layer = tracer_provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("plinth")));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    if use_json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
            .context("installing the log subscriber")?;
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
            .context("installing the log subscriber")?;
    }
    Ok(TelemetryGuard { tracer_provider })
}

fn build_tracer_provider(
    endpoint: &str,
    telemetry: &TelemetryConfig,
) -> anyhow::Result<SdkTracerProvider> {
    let traces_endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_endpoint)
        .build()
        .context("building the OTLP exporter")?;
    let sample_ratio = telemetry.sample_ratio.clamp(0.0, 1.0);
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}
