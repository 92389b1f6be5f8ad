//! Prometheus metrics (the recorder, histogram buckets, and the documented
//! list of every metric Plinth publishes) and the bridge from an incoming
//! W3C `traceparent` to the request's span.

use std::sync::OnceLock;

use axum::http::HeaderMap;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::Extractor;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Every metric Plinth publishes: name, type, labels, meaning.
/// A test checks that `docs/METRICS.md` documents each of them.
pub const METRICS_DOCUMENTATION: &[(&str, &str, &str, &str)] = &[
    (
        "plinth_build_info",
        "gauge",
        "version",
        "Always 1; the labels say which build is running.",
    ),
    (
        "plinth_http_requests_total",
        "counter",
        "method, route, status",
        "Requests served, by route template (never the raw path) and status code.",
    ),
    (
        "plinth_http_request_duration_seconds",
        "histogram",
        "method, route, status",
        "Time from the first byte of the request to the response head.",
    ),
    (
        "plinth_http_requests_in_flight",
        "gauge",
        "",
        "Requests being served right now.",
    ),
    (
        "plinth_log_lines_dropped_total",
        "counter",
        "",
        "Log lines dropped because the log writer's queue of 65,536 lines was full.",
    ),
    (
        "plinth_breaker_state",
        "gauge",
        "breaker",
        "State of an engine's circuit breaker: 0 closed, 1 half-open, 2 open.",
    ),
    (
        "plinth_breaker_transitions_total",
        "counter",
        "breaker, from, to",
        "Breaker state changes.",
    ),
    (
        "plinth_breaker_rejected_calls_total",
        "counter",
        "breaker",
        "Calls refused because the breaker was open or its half-open probes were taken.",
    ),
    (
        "plinth_engine_call_duration_seconds",
        "histogram",
        "engine, operation, outcome",
        "Duration of each engine call through its guard; outcome is ok, error, timeout or rejected.",
    ),
    (
        "plinth_pool_connections",
        "gauge",
        "engine, state",
        "Pooled connections, idle or in_use.",
    ),
    (
        "plinth_pool_max_connections",
        "gauge",
        "engine",
        "Pool size limit.",
    ),
    (
        "plinth_pool_waiters",
        "gauge",
        "engine",
        "Callers waiting for a pooled connection (postgres).",
    ),
    (
        "plinth_pool_acquire_duration_seconds",
        "histogram",
        "engine",
        "Time to get a pooled connection.",
    ),
    (
        "plinth_pool_exhausted_total",
        "counter",
        "engine",
        "Acquires that timed out because every connection was busy.",
    ),
    (
        "plinth_redis_connected",
        "gauge",
        "",
        "1 when the Redis connection is up, 0 otherwise.",
    ),
    (
        "plinth_sqlite_write_batch_size",
        "histogram",
        "",
        "Write jobs committed per SQLite transaction (group commit).",
    ),
    (
        "plinth_sqlite_commit_duration_seconds",
        "histogram",
        "",
        "Time to run and commit one SQLite write batch.",
    ),
    (
        "plinth_dependency_up",
        "gauge",
        "dependency",
        "1 when the last health check of the engine passed, 0 otherwise.",
    ),
    (
        "plinth_auth_failures_total",
        "counter",
        "reason",
        "Requests refused for missing, malformed, unknown, expired or revoked credentials.",
    ),
    (
        "plinth_audit_dropped_total",
        "counter",
        "",
        "Audit entries that could not be written (queue full or store error).",
    ),
    (
        "plinth_cache_lookups_total",
        "counter",
        "keyspace, tier, result",
        "Cache lookups per tier (l1, redis, sqlite, postgres) and result (hit, miss, error).",
    ),
    (
        "plinth_cache_tier_duration_seconds",
        "histogram",
        "keyspace, tier, operation",
        "Duration of each cache tier call; operation is get, write, copy or invalidate.",
    ),
    (
        "plinth_cache_l1_entries",
        "gauge",
        "keyspace",
        "Entries in this node's L1, deletion markers included.",
    ),
    (
        "plinth_cache_l1_bytes",
        "gauge",
        "keyspace",
        "Bytes of keys, values, content types and tags in this node's L1.",
    ),
    (
        "plinth_cache_l1_evictions_total",
        "counter",
        "keyspace",
        "L1 entries dropped for room, including new entries TinyLFU did not admit.",
    ),
    (
        "plinth_cache_l1_expirations_total",
        "counter",
        "keyspace",
        "L1 entries dropped at their TTL or the keyspace's L1 TTL cap.",
    ),
    (
        "plinth_cache_coherence_up",
        "gauge",
        "",
        "1 while this node receives other nodes' cache changes over Redis pub/sub.",
    ),
    (
        "plinth_cache_coherence_dropped_total",
        "counter",
        "",
        "Cache changes not announced to other nodes because the outgoing queue was full.",
    ),
    (
        "plinth_events_appended_total",
        "counter",
        "",
        "Events written by appends (retried appends that wrote nothing are not counted).",
    ),
    (
        "plinth_events_subscriptions_active",
        "gauge",
        "transport",
        "Event subscriptions being served right now; transport is sse or websocket.",
    ),
    (
        "plinth_events_subscriptions_ended_total",
        "counter",
        "transport, reason",
        "Event subscriptions the server ended; reason is shutdown, slow_consumer, client_gone or error.",
    ),
    (
        "plinth_events_scavenged_total",
        "counter",
        "kind",
        "What scavenging removed (kind: events or snapshots), published every second while it runs.",
    ),
    (
        "plinth_events_scavenge_batches_total",
        "counter",
        "",
        "Scavenge batches run (one short transaction on one stream each).",
    ),
    (
        "plinth_events_scavenge_running",
        "gauge",
        "",
        "1 while a scavenge runs on this node.",
    ),
    (
        "plinth_events_scavenge_runs_total",
        "counter",
        "outcome",
        "Finished scavenges; outcome is ok or error.",
    ),
    (
        "plinth_idempotent_replays_total",
        "counter",
        "",
        "Responses replayed for a repeated Idempotency-Key.",
    ),
];

const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Cache tier calls: L1 answers in about a microsecond, Redis and the
/// stores in tens of microseconds to milliseconds.
const CACHE_TIER_BUCKETS_SECONDS: &[f64] = &[
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_string()),
                    LATENCY_BUCKETS_SECONDS,
                )
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("plinth_sqlite_write_batch_size".to_string()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                // A full-name matcher wins over the `_seconds` suffix.
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("plinth_cache_tier_duration_seconds".to_string()),
                        CACHE_TIER_BUCKETS_SECONDS,
                    )
                })
                .expect("histogram buckets are non-empty constants");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist when the server is embedded; the
            // handle then renders only what this recorder saw.
            let _ = metrics::set_global_recorder(recorder);
            describe_metrics();
            metrics::gauge!("plinth_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

fn describe_metrics() {
    for (name, kind, _labels, help) in METRICS_DOCUMENTATION {
        match *kind {
            "counter" => metrics::describe_counter!(*name, *help),
            "gauge" => metrics::describe_gauge!(*name, *help),
            _ => metrics::describe_histogram!(*name, *help),
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// Makes the request span a child of the caller's trace when the request
/// carries `traceparent` and an OpenTelemetry exporter is configured.
pub fn attach_remote_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent_context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    let _ = span.set_parent(parent_context);
}
