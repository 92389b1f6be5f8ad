//! Logs and traces for `plinth serve`: JSON lines when stderr is not a
//! terminal, readable text when it is (written by
//! [`plinth_server::log_lines`]); the level from `log.level`; and,
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
use plinth_server::log_lines::{ACCESS_LOG_TARGET, LogLineFlusher, LogLineFormat, log_line_layer};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How long shutdown waits for queued log lines to reach stderr.
const LOG_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Flushes pending spans when dropped through [`TelemetryGuard::shutdown`].
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    log_flusher: LogLineFlusher,
}

impl TelemetryGuard {
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("plinth: flushing traces failed: {error}");
        }
        self.log_flusher.flush(LOG_FLUSH_TIMEOUT);
    }
}

pub fn init(log: &LogConfig, telemetry: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    let use_json = match log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let format = if use_json {
        LogLineFormat::Json
    } else {
        LogLineFormat::Text
    };
    let (log_layer, log_flusher) =
        log_line_layer(format).context("starting the log writer thread")?;
    let access_log = log_layer.access_log();
    // Log lines are made of events only; the request's context comes from
    // the request itself, so no span needs to be recorded for them. The
    // event filter declares that it lets every level through: without a
    // hint, the combined filter would have none, and `tracing` (and the
    // `log` bridge) would then hand every debug and trace callsite of every
    // dependency to the subscriber.
    let events_only =
        filter_fn(|metadata| metadata.is_event()).with_max_level_hint(LevelFilter::TRACE);
    let log_filter = level_filter(&log.level)?.and(events_only);
    let tracer_provider = match &telemetry.otlp_endpoint {
        Some(endpoint) => Some(build_tracer_provider(endpoint, telemetry)?),
        None => None,
    };
    let subscriber = tracing_subscriber::registry().with(log_layer.with_filter(log_filter));
    // No `Option` layer for a missing exporter: a `None` layer counts as
    // interested in every span and event, so the registry would create
    // and track the request span of every request for nobody.
    let installed = match &tracer_provider {
        Some(provider) => subscriber
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("plinth"))
                    .with_filter(level_filter(&log.level)?),
            )
            .try_init(),
        None => subscriber.try_init(),
    };
    installed.context("installing the log subscriber")?;
    // The access line bypasses `tracing`, so the level is asked once here
    // for it, the way an `info!` from the edge would be: `log.level` does
    // not change while the process runs.
    if tracing::enabled!(
        kind: tracing::metadata::Kind::EVENT,
        target: ACCESS_LOG_TARGET,
        tracing::Level::INFO
    ) {
        access_log.install();
    }
    Ok(TelemetryGuard {
        tracer_provider,
        log_flusher,
    })
}

fn level_filter(level: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_new(level).with_context(|| format!("log.level `{level}` is not a valid filter"))
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
