//! The per-request metrics (`plinth_http_requests_total` and
//! `plinth_http_request_duration_seconds`), with their handles kept per
//! (route, method, status) so that serving a request neither allocates
//! label strings nor looks its series up through the recorder.
//!
//! Labels stay bounded: routes are templates, methods outside the standard
//! set are counted as `OTHER`, and statuses are the ones the server sends.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use metrics::{Counter, Histogram};
use parking_lot::RwLock;

struct RequestSeries {
    method_label: &'static str,
    status: StatusCode,
    requests: Counter,
    duration: Histogram,
}

/// Series by route template, then a short list per route.
type SeriesByRoute = HashMap<String, Vec<RequestSeries>>;

fn series_by_route() -> &'static RwLock<SeriesByRoute> {
    static SERIES: OnceLock<RwLock<SeriesByRoute>> = OnceLock::new();
    SERIES.get_or_init(|| RwLock::new(HashMap::new()))
}

pub fn record_request(method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
    let method_label = bounded_method_label(method);
    let recorded = with_series(
        &series_by_route().read(),
        method_label,
        route,
        status,
        |series| series.record(elapsed),
    );
    if recorded.is_some() {
        return;
    }
    let mut series_by_route = series_by_route().write();
    // Another request may have registered it between the two locks.
    let recorded = with_series(&series_by_route, method_label, route, status, |series| {
        series.record(elapsed)
    });
    if recorded.is_some() {
        return;
    }
    let series = RequestSeries::register(method_label, route, status);
    series.record(elapsed);
    series_by_route
        .entry(route.to_string())
        .or_default()
        .push(series);
}

impl RequestSeries {
    fn register(method_label: &'static str, route: &str, status: StatusCode) -> RequestSeries {
        let labels = [
            ("method", method_label.to_string()),
            ("route", route.to_string()),
            ("status", status.as_str().to_string()),
        ];
        RequestSeries {
            method_label,
            status,
            requests: metrics::counter!("plinth_http_requests_total", &labels),
            duration: metrics::histogram!("plinth_http_request_duration_seconds", &labels),
        }
    }

    fn record(&self, elapsed: Duration) {
        self.requests.increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

fn with_series<R>(
    series_by_route: &SeriesByRoute,
    method_label: &'static str,
    route: &str,
    status: StatusCode,
    use_series: impl FnOnce(&RequestSeries) -> R,
) -> Option<R> {
    let route_series = series_by_route.get(route)?;
    for series in route_series {
        if series.status == status && series.method_label == method_label {
            return Some(use_series(series));
        }
    }
    None
}

fn bounded_method_label(method: &Method) -> &'static str {
    const STANDARD_METHODS: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    const LABELS: [&str; 9] = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT",
    ];
    for (index, standard_method) in STANDARD_METHODS.iter().enumerate() {
        if method == standard_method {
            return LABELS[index];
        }
    }
    "OTHER"
}
