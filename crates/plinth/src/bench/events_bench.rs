//! `plinth bench events`: the event store over HTTP, per backend. For
//! SQLite (always; the child node's default store, WAL with
//! `synchronous=FULL`, so every acknowledged append is on disk) and for
//! PostgreSQL (with `--postgres-url`), starts a `plinth serve` child on that
//! store and measures:
//!
//! - `append-1` and `append-100`: appends of 1 and 100 events per request
//!   (`expected_version: any`) spread over many streams, at 1, 16 and 64
//!   connections: events/s and request p50/p99;
//! - `read`: paging through a 1000-event stream (100 events per page) at 1
//!   and 16 connections: events/s and page p50/p99;
//! - `delivery`: one live SSE subscription to `/v1/all/subscribe` while one
//!   event is appended every few milliseconds; each event carries its send
//!   time, and latency is measured on receipt.
//!
//! With PostgreSQL the same run measures the engine's own limit (see
//! `raw_postgres`) and prints Plinth's rates as a ratio of it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use plinth_core::HumanDuration;
use plinth_core::config::PlinthConfig;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bench::client::{BenchConnection, Endpoint, build_request, send_once};
use crate::bench::load::{KeyChoice, LoadShape, LoadTarget, check_target_answers, measure};
use crate::bench::local_targets::LocalPlinth;
use crate::bench::provision::{bearer, create_bench_api_key};
use crate::bench::raw_postgres::{RawPostgres, RawPostgresSettings};
use crate::bench::report::pass_or_fail;

const EVENT_KEY_SCOPES: [&str; 2] = ["events:read", "events:write"];
const APPEND_CONCURRENCIES: [usize; 3] = [1, 16, 64];
pub const EVENTS_PER_BATCH: [usize; 2] = [1, 100];
/// Appends pick one of this many streams at random, so concurrent appends
/// seldom queue on one stream's lock and what is measured is the log.
const APPEND_STREAMS: u64 = 10_000;
const READ_STREAM: &str = "bench-read";
const READ_STREAM_EVENTS: usize = 1000;
const READ_PAGE_EVENTS: usize = 100;
const READ_CONCURRENCIES: [usize; 2] = [1, 16];
const LIVE_STREAM: &str = "bench-live";
/// One live append every 5 ms: a steady trickle, so the figure is the
/// delivery path and not queueing behind a saturated writer.
const LIVE_APPEND_INTERVAL: Duration = Duration::from_millis(5);
const BATCHED_APPEND_MINIMUM_EVENTS_PER_SECOND: f64 = 50_000.0;
const SINGLE_APPEND_MINIMUM_RAW_RATIO: f64 = 0.3;
const SINGLE_APPEND_JUDGED_CONCURRENCY: usize = 16;
const DELIVERY_P99_LIMIT_MICROSECONDS: u64 = 20_000;
const HIGHEST_TRACKED_LATENCY_MICROSECONDS: u64 = 60_000_000;

#[derive(Debug, Args)]
pub struct EventsBenchArguments {
    /// Measured time per workload, concurrency and backend, after the
    /// warm-up.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    duration: HumanDuration,
    /// Unmeasured load before each measured window.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    warmup: HumanDuration,
    /// Also measure a node on this PostgreSQL (`postgres://…`, given to
    /// the child as `storage.url`) and raw INSERTs into it.
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
    /// Print a JSON summary on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// One line of the report: a workload at one concurrency on one backend.
#[derive(Debug, Serialize)]
pub struct EventsRow {
    pub backend: &'static str,
    pub workload: String,
    pub concurrency: usize,
    pub events_per_second: f64,
    pub requests_per_second: f64,
    pub p50_microseconds: u64,
    pub p99_microseconds: u64,
    pub failed_requests: u64,
}

#[derive(Debug, Serialize)]
struct Verdict {
    target: String,
    measured: f64,
    limit: f64,
    passes: bool,
}

#[derive(Serialize)]
struct EventsReport {
    rows: Vec<EventsRow>,
    verdicts: Vec<Verdict>,
    notes: Vec<String>,
}

/// The warm-up and the measured window, the same for every workload.
#[derive(Clone, Copy)]
pub struct WindowPlan {
    pub warmup: Duration,
    pub duration: Duration,
}

/// Requests starting in `[starts_at, ends_at)` count; none start after.
#[derive(Clone, Copy)]
pub struct MeasuredWindow {
    pub starts_at: Instant,
    pub ends_at: Instant,
}

impl WindowPlan {
    pub fn start_now(&self) -> MeasuredWindow {
        let starts_at = Instant::now() + self.warmup;
        MeasuredWindow {
            starts_at,
            ends_at: starts_at + self.duration,
        }
    }
}

/// What the workers of a workload that is not a plain `LoadTarget` saw.
pub struct WindowTally {
    pub events: u64,
    pub requests: u64,
    pub failed_requests: u64,
    pub latencies_microseconds: Histogram<u64>,
}

impl WindowTally {
    pub fn new() -> anyhow::Result<WindowTally> {
        Ok(WindowTally {
            events: 0,
            requests: 0,
            failed_requests: 0,
            latencies_microseconds: Histogram::new_with_bounds(
                1,
                HIGHEST_TRACKED_LATENCY_MICROSECONDS,
                3,
            )
            .context("creating a latency histogram")?,
        })
    }

    pub fn record(&mut self, events: u64, latency: Duration) {
        self.events += events;
        self.requests += 1;
        let microseconds = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latencies_microseconds.saturating_record(microseconds);
    }

    pub fn merge(&mut self, other: &WindowTally) -> anyhow::Result<()> {
        self.events += other.events;
        self.requests += other.requests;
        self.failed_requests += other.failed_requests;
        self.latencies_microseconds
            .add(&other.latencies_microseconds)
            .context("merging latency histograms")
    }

    pub fn into_row(
        self,
        backend: &'static str,
        workload: String,
        concurrency: usize,
        duration: Duration,
    ) -> EventsRow {
        let seconds = duration.as_secs_f64();
        EventsRow {
            backend,
            workload,
            concurrency,
            events_per_second: self.events as f64 / seconds,
            requests_per_second: self.requests as f64 / seconds,
            p50_microseconds: self.latencies_microseconds.value_at_percentile(50.0),
            p99_microseconds: self.latencies_microseconds.value_at_percentile(99.0),
            failed_requests: self.failed_requests,
        }
    }
}

pub async fn run(config: &PlinthConfig, arguments: EventsBenchArguments) -> anyhow::Result<()> {
    let plan = WindowPlan {
        warmup: arguments.warmup.as_duration(),
        duration: arguments.duration.as_duration(),
    };
    if plan.duration.is_zero() {
        anyhow::bail!("--duration must be longer than zero");
    }
    let mut rows = measure_backend("sqlite", &[], &config.log.level, plan).await?;
    let mut notes = vec![
        "sqlite: the child node's default store, WAL with synchronous=FULL (an fsync per group commit)".to_string(),
    ];
    if let Some(postgres_url) = &arguments.postgres_url {
        let raw_postgres = RawPostgres::connect(postgres_url).await?;
        notes.push(describe_postgres(&raw_postgres.settings().await?));
        let storage_setting = [("PLINTH_STORAGE__URL", raw_postgres.schema_url().to_string())];
        let measured =
            measure_postgres(&raw_postgres, &storage_setting, &config.log.level, plan).await;
        raw_postgres.drop_schema().await?;
        rows.extend(measured?);
    } else {
        notes.push(
            "no --postgres-url: PostgreSQL and its raw INSERT baseline were not measured"
                .to_string(),
        );
    }
    let verdicts = judge(&rows);
    let report = EventsReport {
        rows,
        verdicts,
        notes,
    };
    if arguments.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// The node on PostgreSQL, then raw INSERTs into the same database.
async fn measure_postgres(
    raw_postgres: &RawPostgres,
    storage_setting: &[(&str, String)],
    log_level: &str,
    plan: WindowPlan,
) -> anyhow::Result<Vec<EventsRow>> {
    let mut rows = measure_backend("postgres", storage_setting, log_level, plan).await?;
    rows.extend(measure_raw_inserts(raw_postgres, plan).await?);
    Ok(rows)
}

fn describe_postgres(settings: &RawPostgresSettings) -> String {
    format!(
        "postgres: server {}, server defaults synchronous_commit={} and fsync={} (the node leaves them as they are; the raw INSERTs set synchronous_commit=on)",
        settings.server_version, settings.synchronous_commit, settings.fsync
    )
}

/// Starts a node on one store, measures every workload, stops it.
async fn measure_backend(
    backend: &'static str,
    settings: &[(&str, String)],
    log_level: &str,
    plan: WindowPlan,
) -> anyhow::Result<Vec<EventsRow>> {
    let mut plinth = LocalPlinth::start(log_level, settings).await?;
    eprintln!(
        "started plinth serve on {} with the {backend} store",
        plinth.endpoint.socket_address
    );
    let api_key = create_bench_api_key(
        &plinth.endpoint,
        &plinth.bootstrap_admin_key,
        &EVENT_KEY_SCOPES,
    )
    .await?;
    let node = BenchNode {
        endpoint: plinth.endpoint.clone(),
        authorization: bearer(&api_key)?,
        process_id: plinth.process_id(),
    };
    let mut rows = Vec::new();
    for events_per_batch in EVENTS_PER_BATCH {
        for concurrency in APPEND_CONCURRENCIES {
            plinth.ensure_running()?;
            rows.push(measure_appends(&node, backend, events_per_batch, concurrency, plan).await?);
        }
    }
    fill_read_stream(&node).await?;
    for concurrency in READ_CONCURRENCIES {
        plinth.ensure_running()?;
        rows.push(measure_stream_reads(&node, backend, concurrency, plan).await?);
    }
    plinth.ensure_running()?;
    rows.push(measure_delivery(&node, backend, plan).await?);
    plinth.ensure_running()?;
    plinth.stop().await?;
    Ok(rows)
}

/// The node under test and the key the benchmark talks to it with.
struct BenchNode {
    endpoint: Endpoint,
    authorization: HeaderValue,
    process_id: Option<u32>,
}

impl BenchNode {
    fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut request = build_request(method, &self.endpoint, path, body)?;
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, self.authorization.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(request)
    }
}

/// An append body of `events_per_batch` events whose data is `data`.
fn append_body(events_per_batch: usize, data: &Value) -> Bytes {
    let events: Vec<Value> = (0..events_per_batch)
        .map(|_| json!({ "type": "BenchEvent", "data": data }))
        .collect();
    Bytes::from(json!({ "expected_version": "any", "events": events }).to_string())
}

fn append_target_name(events_per_batch: usize) -> &'static str {
    if events_per_batch == 1 {
        "append-1"
    } else {
        "append-100"
    }
}

async fn measure_appends(
    node: &BenchNode,
    backend: &'static str,
    events_per_batch: usize,
    concurrency: usize,
    plan: WindowPlan,
) -> anyhow::Result<EventsRow> {
    let target = Arc::new(LoadTarget {
        name: append_target_name(events_per_batch),
        endpoint: node.endpoint.clone(),
        method: Method::POST,
        path: "/v1/streams/".to_string(),
        keys: KeyChoice::Uniform {
            count: APPEND_STREAMS,
        },
        body: append_body(events_per_batch, &json!({ "amount": 10, "note": "bench" })),
        authorization: Some(node.authorization.clone()),
        content_type: Some(HeaderValue::from_static("application/json")),
        server_process_id: node.process_id,
    });
    check_target_answers(&target).await?;
    eprintln!(
        "{backend}: measuring {} at {concurrency} connection(s)",
        target.name
    );
    let shape = LoadShape {
        connections: concurrency,
        warmup: plan.warmup,
        duration: plan.duration,
    };
    let measurement = measure(target, shape).await?;
    let requests_per_second = measurement.throughput_per_second();
    Ok(EventsRow {
        backend,
        workload: measurement.target_name.to_string(),
        concurrency,
        events_per_second: requests_per_second * events_per_batch as f64,
        requests_per_second,
        p50_microseconds: measurement.latency_percentile_microseconds(50.0),
        p99_microseconds: measurement.latency_percentile_microseconds(99.0),
        failed_requests: measurement.failed_requests,
    })
}

async fn fill_read_stream(node: &BenchNode) -> anyhow::Result<()> {
    let body = append_body(READ_PAGE_EVENTS, &json!({ "amount": 10, "note": "bench" }));
    for _ in 0..READ_STREAM_EVENTS / READ_PAGE_EVENTS {
        let request = node.request(
            Method::POST,
            &format!("/v1/streams/{READ_STREAM}"),
            body.clone(),
        )?;
        let (status, answer) = send_once(&node.endpoint, request).await?;
        if !status.is_success() {
            anyhow::bail!(
                "filling {READ_STREAM} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    Ok(())
}

async fn measure_stream_reads(
    node: &BenchNode,
    backend: &'static str,
    concurrency: usize,
    plan: WindowPlan,
) -> anyhow::Result<EventsRow> {
    eprintln!("{backend}: measuring reads of {READ_STREAM} at {concurrency} connection(s)");
    let window = plan.start_now();
    let mut readers = JoinSet::new();
    for _ in 0..concurrency {
        let endpoint = node.endpoint.clone();
        let authorization = node.authorization.clone();
        readers.spawn(async move {
            let node = BenchNode {
                endpoint,
                authorization,
                process_id: None,
            };
            read_stream_in_pages(&node, window).await
        });
    }
    let mut total = WindowTally::new()?;
    while let Some(joined) = readers.join_next().await {
        total.merge(&joined.context("a reader panicked")??)?;
    }
    let workload = format!("read ({READ_PAGE_EVENTS}/page)");
    Ok(total.into_row(backend, workload, concurrency, plan.duration))
}

/// Reads the stream page after page from the start, over and over.
async fn read_stream_in_pages(
    node: &BenchNode,
    window: MeasuredWindow,
) -> anyhow::Result<WindowTally> {
    let mut tally = WindowTally::new()?;
    let mut connection = BenchConnection::open(&node.endpoint).await?;
    let mut next_revision = 0;
    loop {
        let started = Instant::now();
        if started >= window.ends_at {
            return Ok(tally);
        }
        let path = format!(
            "/v1/streams/{READ_STREAM}?limit={READ_PAGE_EVENTS}&from_revision={next_revision}"
        );
        let (status, body) = connection
            .send(node.request(Method::GET, &path, Bytes::new())?)
            .await?;
        let events_read = events_in_page(&body);
        let counted = started >= window.starts_at;
        match events_read {
            Some(events_read) if status.is_success() => {
                if counted {
                    tally.record(events_read as u64, started.elapsed());
                }
                next_revision += events_read;
                if events_read < READ_PAGE_EVENTS || next_revision >= READ_STREAM_EVENTS {
                    next_revision = 0;
                }
            }
            _ if counted => tally.failed_requests += 1,
            _ => {}
        }
    }
}

fn events_in_page(body: &[u8]) -> Option<usize> {
    let page: Value = serde_json::from_slice(body).ok()?;
    Some(page.get("events")?.as_array()?.len())
}

/// The field of a live event's data that carries its send time.
const SENT_AT_FIELD: &str = "sent_at_unix_microseconds";

fn unix_microseconds_now() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX)
}

async fn measure_delivery(
    node: &BenchNode,
    backend: &'static str,
    plan: WindowPlan,
) -> anyhow::Result<EventsRow> {
    eprintln!("{backend}: measuring append-to-delivery latency over SSE");
    let subscription_body = open_live_subscription(node).await?;
    let window = plan.start_now();
    let appender = tokio::spawn(append_live_events(
        node.endpoint.clone(),
        node.authorization.clone(),
        window,
    ));
    let tally = receive_live_events(subscription_body, window).await?;
    let appends = appender.await.context("the live appender panicked")??;
    let mut row = tally.into_row(backend, "delivery (SSE)".to_string(), 1, plan.duration);
    row.requests_per_second = appends as f64 / plan.duration.as_secs_f64();
    Ok(row)
}

/// Subscribes to the log after its current head (the earlier workloads
/// wrote millions of events that a catch-up would replay first), and
/// returns once the answer's headers are in, so no live event is missed.
async fn open_live_subscription(node: &BenchNode) -> anyhow::Result<hyper::body::Incoming> {
    let (status, answer) = send_once(
        &node.endpoint,
        node.request(
            Method::GET,
            "/v1/all?direction=backward&limit=1",
            Bytes::new(),
        )?,
    )
    .await?;
    anyhow::ensure!(
        status.is_success(),
        "reading the log's head answered {status}"
    );
    let head: Value = serde_json::from_slice(&answer).context("the log's head is not JSON")?;
    let from_position = head["head_position"].as_u64().map_or(0, |head| head + 1);
    let path =
        format!("/v1/all/subscribe?from_position={from_position}&stream_prefix={LIVE_STREAM}");
    let mut request = node.request(Method::GET, &path, Bytes::new())?;
    request
        .headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let stream = TcpStream::connect(node.endpoint.socket_address).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake for the subscription failed")?;
    // The subscription is one long answer: its connection is driven on a
    // task of its own, which ends when the body is dropped.
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "subscribing answered {}",
        response.status()
    );
    Ok(response.into_body())
}

/// Appends one event carrying its send time every `LIVE_APPEND_INTERVAL`
/// until the window ends; returns how many appends were answered 2xx.
async fn append_live_events(
    endpoint: Endpoint,
    authorization: HeaderValue,
    window: MeasuredWindow,
) -> anyhow::Result<u64> {
    let node = BenchNode {
        endpoint,
        authorization,
        process_id: None,
    };
    let mut connection = BenchConnection::open(&node.endpoint).await?;
    let mut ticks = tokio::time::interval(LIVE_APPEND_INTERVAL);
    let mut answered_appends = 0;
    while Instant::now() < window.ends_at {
        ticks.tick().await;
        let body = append_body(1, &json!({ SENT_AT_FIELD: unix_microseconds_now() }));
        let request = node.request(Method::POST, &format!("/v1/streams/{LIVE_STREAM}"), body)?;
        let (status, _answer) = connection.send(request).await?;
        if status.is_success() && Instant::now() >= window.starts_at {
            answered_appends += 1;
        }
    }
    Ok(answered_appends)
}

/// Reads SSE frames until the window ends (plus a second for the last
/// deliveries) and records, for each live event, receipt time minus send
/// time.
async fn receive_live_events(
    mut body: hyper::body::Incoming,
    window: MeasuredWindow,
) -> anyhow::Result<WindowTally> {
    let mut tally = WindowTally::new()?;
    let mut unparsed = String::new();
    let stop_at = window.ends_at + Duration::from_secs(1);
    while let Ok(Some(frame)) = tokio::time::timeout_at(stop_at, body.frame()).await {
        let Ok(data) = frame.context("the subscription failed")?.into_data() else {
            continue;
        };
        let received_at = unix_microseconds_now();
        unparsed.push_str(&String::from_utf8_lossy(&data));
        while let Some(line_end) = unparsed.find('\n') {
            let line: String = unparsed.drain(..=line_end).collect();
            let Some(sent_at) = sent_at_of_sse_line(&line) else {
                continue;
            };
            if Instant::now() >= window.starts_at {
                let latency = Duration::from_micros(received_at.saturating_sub(sent_at));
                tally.record(1, latency);
            }
        }
    }
    Ok(tally)
}

/// The send time of a `data:` line holding a live event, `None` for any
/// other line (ids, `caught_up`, keep-alives).
fn sent_at_of_sse_line(line: &str) -> Option<u64> {
    let event: Value = serde_json::from_str(line.strip_prefix("data:")?.trim()).ok()?;
    event.get("data")?.get(SENT_AT_FIELD)?.as_u64()
}

async fn measure_raw_inserts(
    raw_postgres: &RawPostgres,
    plan: WindowPlan,
) -> anyhow::Result<Vec<EventsRow>> {
    let mut rows = Vec::new();
    for rows_per_insert in EVENTS_PER_BATCH {
        for concurrency in APPEND_CONCURRENCIES {
            eprintln!(
                "postgres-raw: measuring {rows_per_insert}-row INSERTs at {concurrency} connection(s)"
            );
            let tally = raw_postgres
                .measure_inserts(rows_per_insert, concurrency, plan.start_now())
                .await?;
            let workload = format!("insert-{rows_per_insert}");
            rows.push(tally.into_row("postgres-raw", workload, concurrency, plan.duration));
        }
    }
    Ok(rows)
}

fn find_row<'a>(
    rows: &'a [EventsRow],
    backend: &str,
    workload: &str,
    concurrency: usize,
) -> Option<&'a EventsRow> {
    rows.iter().find(|row| {
        row.backend == backend && row.workload == workload && row.concurrency == concurrency
    })
}

fn judge(rows: &[EventsRow]) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for backend in ["sqlite", "postgres"] {
        let best_batched = rows
            .iter()
            .filter(|row| row.backend == backend && row.workload == "append-100")
            .max_by(|left, right| left.events_per_second.total_cmp(&right.events_per_second));
        if let Some(best_batched) = best_batched {
            verdicts.push(Verdict {
                target: format!(
                    "{backend} append-100 events/s (best concurrency: {})",
                    best_batched.concurrency
                ),
                measured: best_batched.events_per_second,
                limit: BATCHED_APPEND_MINIMUM_EVENTS_PER_SECOND,
                passes: best_batched.events_per_second >= BATCHED_APPEND_MINIMUM_EVENTS_PER_SECOND,
            });
        }
        if let Some(delivery) = find_row(rows, backend, "delivery (SSE)", 1) {
            let p99 = delivery.p99_microseconds;
            verdicts.push(Verdict {
                target: format!("{backend} SSE delivery p99 µs (below)"),
                measured: p99 as f64,
                limit: DELIVERY_P99_LIMIT_MICROSECONDS as f64,
                passes: delivery.events_per_second > 0.0 && p99 < DELIVERY_P99_LIMIT_MICROSECONDS,
            });
        }
    }
    let concurrency = SINGLE_APPEND_JUDGED_CONCURRENCY;
    if let (Some(plinth), Some(raw)) = (
        find_row(rows, "postgres", "append-1", concurrency),
        find_row(rows, "postgres-raw", "insert-1", concurrency),
    ) {
        let ratio = plinth.events_per_second / raw.events_per_second;
        verdicts.push(Verdict {
            target: format!("postgres append-1 / raw insert-1 at {concurrency} connections"),
            measured: ratio,
            limit: SINGLE_APPEND_MINIMUM_RAW_RATIO,
            passes: ratio >= SINGLE_APPEND_MINIMUM_RAW_RATIO,
        });
    }
    verdicts
}

fn print_report(report: &EventsReport) {
    println!(
        "{:<13} {:<16} {:>5} {:>12} {:>10} {:>9} {:>9} {:>7}",
        "backend", "workload", "conns", "events/s", "req/s", "p50 µs", "p99 µs", "errors"
    );
    for row in &report.rows {
        println!(
            "{:<13} {:<16} {:>5} {:>12.0} {:>10.0} {:>9} {:>9} {:>7}",
            row.backend,
            row.workload,
            row.concurrency,
            row.events_per_second,
            row.requests_per_second,
            row.p50_microseconds,
            row.p99_microseconds,
            row.failed_requests
        );
    }
    print_raw_ratios(&report.rows);
    println!();
    for verdict in &report.verdicts {
        println!(
            "{}: {:.2} (target {}): {}",
            verdict.target,
            verdict.measured,
            verdict.limit,
            pass_or_fail(verdict.passes)
        );
    }
    for note in &report.notes {
        println!("note: {note}");
    }
}

/// Plinth on PostgreSQL as a share of raw INSERTs of as many rows per
/// statement as events per append, at the same concurrency.
fn print_raw_ratios(rows: &[EventsRow]) {
    for events_per_batch in EVENTS_PER_BATCH {
        for concurrency in APPEND_CONCURRENCIES {
            let plinth = find_row(
                rows,
                "postgres",
                append_target_name(events_per_batch),
                concurrency,
            );
            let raw = find_row(
                rows,
                "postgres-raw",
                &format!("insert-{events_per_batch}"),
                concurrency,
            );
            if let (Some(plinth), Some(raw)) = (plinth, raw) {
                println!(
                    "postgres {} / raw insert-{events_per_batch} at {concurrency} connection(s): {:.2}x",
                    plinth.workload,
                    plinth.events_per_second / raw.events_per_second
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_lines_of_live_events_carry_a_send_time() {
        let line = format!(r#"data: {{"stream":"bench-live","data":{{"{SENT_AT_FIELD}":42}}}}"#);
        assert_eq!(sent_at_of_sse_line(&line), Some(42));
        assert_eq!(sent_at_of_sse_line("id: 7"), None);
        assert_eq!(sent_at_of_sse_line(r#"data: {"next_position":3}"#), None);
    }
}
