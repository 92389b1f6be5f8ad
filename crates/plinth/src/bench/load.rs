//! The load generator: a fixed number of workers, each owning one
//! keep-alive connection and sending requests back to back (closed loop),
//! for a warm-up and then a measured window. Latencies of answered 2xx
//! requests go to an HDR histogram in microseconds. For latency without
//! load, one worker can instead take several targets in turn, request by
//! request.
//!
//! A target is one method and path with a fixed body, or a path prefix to
//! which each request appends a key drawn from a set (uniformly, or with a
//! hot subset that gets most of the requests).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::bench::client::{BenchConnection, Endpoint, build_request, send_once};
use crate::bench::process_cpu::process_cpu_time;

/// Highest latency the histogram tells apart; slower answers are counted
/// at this value.
const HIGHEST_TRACKED_LATENCY_MICROSECONDS: u64 = 60_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;
/// How long a worker waits before reconnecting after a failed connect, so a
/// dead server is not hammered with connection attempts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// How long a request started in the window may take before it is
/// abandoned, so a stalled server cannot keep the benchmark running.
const STRAGGLER_GRACE: Duration = Duration::from_secs(5);

/// One route to drive.
#[derive(Debug)]
pub struct LoadTarget {
    /// Short, stable name used in the table and the JSON summary.
    pub name: &'static str,
    pub endpoint: Endpoint,
    pub method: Method,
    /// The whole path, or with `keys` the prefix each chosen key follows.
    pub path: String,
    pub keys: KeyChoice,
    /// Sent with every request (cloning `Bytes` shares it).
    pub body: Bytes,
    pub authorization: Option<HeaderValue>,
    /// Sent with every request; JSON endpoints refuse a body without it.
    pub content_type: Option<HeaderValue>,
    /// The server's process, when the benchmark started it, to report the
    /// server's CPU time per request.
    pub server_process_id: Option<u32>,
}

/// Which key each request names, appended to the target's path. Keys are
/// `KEY_PREFIX` and a zero-padded number below `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyChoice {
    /// No key: the path is used as it is.
    NoKey,
    /// Every key equally often.
    Uniform { count: u64 },
    /// `hot_request_percent` of the requests go to the first `hot_count`
    /// keys, the rest to the others, uniformly within each group.
    HotSet {
        count: u64,
        hot_count: u64,
        hot_request_percent: u64,
    },
}

const KEY_PREFIX: &str = "k";

/// The name of key number `index` of a key set.
pub fn key_name(index: u64) -> String {
    format!("{KEY_PREFIX}{index:07}")
}

impl KeyChoice {
    fn pick(self, random: &mut WorkerRandom) -> Option<u64> {
        match self {
            KeyChoice::NoKey => None,
            KeyChoice::Uniform { count } => Some(random.below(count)),
            KeyChoice::HotSet {
                count,
                hot_count,
                hot_request_percent,
            } => {
                if random.below(100) < hot_request_percent {
                    Some(random.below(hot_count))
                } else {
                    Some(hot_count + random.below(count - hot_count))
                }
            }
        }
    }
}

/// xorshift64*: statistically good enough to spread keys, one per worker so
/// that choosing a key takes no lock and no syscall.
pub struct WorkerRandom {
    state: u64,
}

impl WorkerRandom {
    pub fn seeded(seed: u64) -> WorkerRandom {
        // Zero is xorshift's fixed point; the odd constant keeps it away.
        WorkerRandom {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform below `bound` (bias under 2^-40 for the bounds used here).
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

impl LoadTarget {
    /// The path as the table shows it: `{key}` stands for the chosen key.
    pub fn shown_path(&self) -> String {
        match self.keys {
            KeyChoice::NoKey => self.path.clone(),
            KeyChoice::Uniform { .. } | KeyChoice::HotSet { .. } => format!("{}{{key}}", self.path),
        }
    }

    fn request(&self, random: &mut WorkerRandom) -> anyhow::Result<Request<Full<Bytes>>> {
        let path = match self.keys.pick(random) {
            None => std::borrow::Cow::Borrowed(self.path.as_str()),
            Some(index) => std::borrow::Cow::Owned(format!("{}{}", self.path, key_name(index))),
        };
        let mut request = build_request(
            self.method.clone(),
            &self.endpoint,
            &path,
            self.body.clone(),
        )?;
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(AUTHORIZATION, authorization.clone());
        }
        if let Some(content_type) = &self.content_type {
            request
                .headers_mut()
                .insert(CONTENT_TYPE, content_type.clone());
        }
        Ok(request)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LoadShape {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one target did during the measured window.
pub struct TargetMeasurement {
    pub target_name: &'static str,
    pub path: String,
    pub connections: usize,
    pub measured_for: Duration,
    /// Answered with a 2xx status.
    pub successful_requests: u64,
    /// Answered with another status, or lost to an I/O error or timeout.
    pub failed_requests: u64,
    pub latencies_microseconds: Histogram<u64>,
    pub cpu_during_window: WindowCpu,
}

impl TargetMeasurement {
    pub fn throughput_per_second(&self) -> f64 {
        self.successful_requests as f64 / self.measured_for.as_secs_f64()
    }

    pub fn server_cpu_microseconds_per_request(&self) -> Option<f64> {
        self.cpu_microseconds_per_request(self.cpu_during_window.server)
    }

    pub fn generator_cpu_microseconds_per_request(&self) -> Option<f64> {
        self.cpu_microseconds_per_request(self.cpu_during_window.generator)
    }

    fn cpu_microseconds_per_request(&self, cpu: Option<Duration>) -> Option<f64> {
        if self.successful_requests == 0 {
            return None;
        }
        Some(cpu?.as_secs_f64() * 1_000_000.0 / self.successful_requests as f64)
    }

    pub fn latency_percentile_microseconds(&self, percentile: f64) -> u64 {
        self.latencies_microseconds.value_at_percentile(percentile)
    }

    /// Adds a later window of the same target at the same connection
    /// count, so that rounds taken in turn with other targets read as one
    /// measurement: requests, time and CPU add up, latencies merge.
    pub fn absorb(&mut self, later: TargetMeasurement) -> anyhow::Result<()> {
        self.measured_for += later.measured_for;
        self.successful_requests += later.successful_requests;
        self.failed_requests += later.failed_requests;
        self.latencies_microseconds
            .add(&later.latencies_microseconds)
            .context("merging latency histograms")?;
        self.cpu_during_window = self.cpu_during_window.plus(later.cpu_during_window);
        Ok(())
    }
}

/// Requests starting inside `[starts_at, ends_at)` are counted; earlier
/// ones are warm-up; none start after `ends_at`.
#[derive(Clone, Copy)]
struct MeasurementWindow {
    starts_at: Instant,
    ends_at: Instant,
    abandon_at: Instant,
}

impl MeasurementWindow {
    fn starting_now(warmup: Duration, duration: Duration) -> MeasurementWindow {
        let starts_at = Instant::now() + warmup;
        MeasurementWindow {
            starts_at,
            ends_at: starts_at + duration,
            abandon_at: starts_at + duration + STRAGGLER_GRACE,
        }
    }
}

/// CPU time used during the measured window; `None` where unknown (a
/// server the benchmark did not start, or no `/proc`).
#[derive(Clone, Copy, Debug, Default)]
pub struct WindowCpu {
    pub server: Option<Duration>,
    /// This process, which during the window only generates load.
    pub generator: Option<Duration>,
}

impl WindowCpu {
    fn plus(self, other: WindowCpu) -> WindowCpu {
        WindowCpu {
            server: sum_when_known(self.server, other.server),
            generator: sum_when_known(self.generator, other.generator),
        }
    }
}

fn sum_when_known(first: Option<Duration>, second: Option<Duration>) -> Option<Duration> {
    Some(first? + second?)
}

struct CpuSample {
    server: Option<Duration>,
    generator: Option<Duration>,
}

impl CpuSample {
    fn take(server_process_id: Option<u32>) -> CpuSample {
        CpuSample {
            server: server_process_id.and_then(process_cpu_time),
            generator: process_cpu_time(std::process::id()),
        }
    }

    fn until(&self, later: &CpuSample) -> WindowCpu {
        WindowCpu {
            server: cpu_between(self.server, later.server),
            generator: cpu_between(self.generator, later.generator),
        }
    }
}

fn cpu_between(earlier: Option<Duration>, later: Option<Duration>) -> Option<Duration> {
    later?.checked_sub(earlier?)
}

/// Samples CPU time at both ends of the window, on its own task so that
/// no worker is held up.
async fn cpu_during(window: MeasurementWindow, server_process_id: Option<u32>) -> WindowCpu {
    tokio::time::sleep_until(window.starts_at).await;
    let at_start = CpuSample::take(server_process_id);
    tokio::time::sleep_until(window.ends_at).await;
    at_start.until(&CpuSample::take(server_process_id))
}

struct WorkerTally {
    successful_requests: u64,
    failed_requests: u64,
    latencies_microseconds: Histogram<u64>,
    /// Time spent on counted requests and connection attempts, answered
    /// or not: with one request in flight, what the target alone would
    /// have taken.
    busy: Duration,
}

impl WorkerTally {
    fn new() -> anyhow::Result<WorkerTally> {
        let latencies_microseconds =
            Histogram::new_with_bounds(1, HIGHEST_TRACKED_LATENCY_MICROSECONDS, SIGNIFICANT_DIGITS)
                .context("creating a latency histogram")?;
        Ok(WorkerTally {
            successful_requests: 0,
            failed_requests: 0,
            latencies_microseconds,
            busy: Duration::ZERO,
        })
    }

    fn record_success(&mut self, latency: Duration) {
        let microseconds = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latencies_microseconds.saturating_record(microseconds);
        self.successful_requests += 1;
    }

    fn merge(&mut self, other: &WorkerTally) -> anyhow::Result<()> {
        self.successful_requests += other.successful_requests;
        self.failed_requests += other.failed_requests;
        self.busy += other.busy;
        self.latencies_microseconds
            .add(&other.latencies_microseconds)
            .context("merging latency histograms")
    }
}

/// Longest part of a refused answer quoted in the error.
const QUOTED_ANSWER_CHARACTERS: usize = 300;

/// Sends one request to `target` and fails unless it answers 2xx, so a
/// wrong key or path is reported at once instead of as a table of errors.
pub async fn check_target_answers(target: &LoadTarget) -> anyhow::Result<()> {
    let request = target.request(&mut WorkerRandom::seeded(0))?;
    let (status, body) = send_once(&target.endpoint, request)
        .await
        .with_context(|| format!("{} {} did not answer", target.name, target.shown_path()))?;
    if status.is_success() {
        return Ok(());
    }
    let answer: String = String::from_utf8_lossy(&body)
        .chars()
        .take(QUOTED_ANSWER_CHARACTERS)
        .collect();
    anyhow::bail!(
        "{} {} answered {status} before the benchmark: {answer}",
        target.name,
        target.shown_path()
    )
}

/// Drives `target` with `shape.connections` workers for the warm-up and
/// the measured window, then returns what the window saw.
pub async fn measure(
    target: Arc<LoadTarget>,
    shape: LoadShape,
) -> anyhow::Result<TargetMeasurement> {
    let window = MeasurementWindow::starting_now(shape.warmup, shape.duration);
    let cpu_sampler = tokio::spawn(cpu_during(window, target.server_process_id));
    let mut workers = JoinSet::new();
    for worker_index in 0..shape.connections {
        let random = WorkerRandom::seeded(worker_index as u64 + 1);
        let driver = TargetDriver::new(Arc::clone(&target), random)?;
        workers.spawn(run_worker(driver, window));
    }
    let mut total = WorkerTally::new()?;
    while let Some(joined) = workers.join_next().await {
        let worker_tally = joined.context("a load worker panicked")??;
        total.merge(&worker_tally)?;
    }
    let cpu_during_window = cpu_sampler.await.context("the CPU sampler panicked")?;
    Ok(TargetMeasurement {
        target_name: target.name,
        path: target.shown_path(),
        connections: shape.connections,
        measured_for: shape.duration,
        successful_requests: total.successful_requests,
        failed_requests: total.failed_requests,
        latencies_microseconds: total.latencies_microseconds,
        cpu_during_window,
    })
}

/// Drives several targets one request at a time, each over a keep-alive
/// connection of its own, taking them in the order of `schedule` (indices
/// into `targets`, repeated until the window ends). Every target then sees
/// the machine as it is at the same moments, so a slow second or minute
/// slows them all alike instead of landing on whichever ran then.
///
/// A target's `measured_for` is the time spent waiting on its own requests,
/// so its throughput reads as that of one connection of its own. CPU per
/// request is unknown: targets may share a server process.
pub async fn measure_interleaved(
    targets: &[Arc<LoadTarget>],
    schedule: &[usize],
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Vec<TargetMeasurement>> {
    if schedule.is_empty() {
        anyhow::bail!("an interleaving schedule needs at least one target");
    }
    if let Some(unknown) = schedule.iter().find(|index| **index >= targets.len()) {
        anyhow::bail!(
            "the interleaving schedule names target {unknown} of {}",
            targets.len()
        );
    }
    let mut drivers = Vec::with_capacity(targets.len());
    for (target_index, target) in targets.iter().enumerate() {
        let random = WorkerRandom::seeded(target_index as u64 + 1);
        drivers.push(TargetDriver::new(Arc::clone(target), random)?);
    }
    let window = MeasurementWindow::starting_now(warmup, duration);
    'window: loop {
        for target_index in schedule {
            if Instant::now() >= window.ends_at {
                break 'window;
            }
            drivers[*target_index].take_turn(window).await?;
        }
    }
    let mut measurements = Vec::with_capacity(drivers.len());
    for driver in drivers {
        measurements.push(TargetMeasurement {
            target_name: driver.target.name,
            path: driver.target.shown_path(),
            connections: 1,
            measured_for: driver.tally.busy,
            successful_requests: driver.tally.successful_requests,
            failed_requests: driver.tally.failed_requests,
            latencies_microseconds: driver.tally.latencies_microseconds,
            cpu_during_window: WindowCpu::default(),
        });
    }
    Ok(measurements)
}

async fn run_worker(
    mut driver: TargetDriver,
    window: MeasurementWindow,
) -> anyhow::Result<WorkerTally> {
    while Instant::now() < window.ends_at {
        driver.take_turn(window).await?;
    }
    Ok(driver.tally)
}

/// One connection to one target and what it counted.
struct TargetDriver {
    target: Arc<LoadTarget>,
    connection: Option<BenchConnection>,
    random: WorkerRandom,
    tally: WorkerTally,
}

impl TargetDriver {
    fn new(target: Arc<LoadTarget>, random: WorkerRandom) -> anyhow::Result<TargetDriver> {
        Ok(TargetDriver {
            target,
            connection: None,
            random,
            tally: WorkerTally::new()?,
        })
    }

    /// Sends one request, first opening the connection when there is
    /// none, and counts the outcome when it started inside the window. A
    /// failed connection attempt counts as a failed request.
    async fn take_turn(&mut self, window: MeasurementWindow) -> anyhow::Result<()> {
        let open_connection = match self.connection.take() {
            Some(open_connection) => open_connection,
            None => {
                let connect_started = Instant::now();
                let Some(new_connection) = connect_or_pause(&self.target.endpoint, window).await
                else {
                    if connect_started >= window.starts_at {
                        self.tally.busy += connect_started.elapsed();
                        self.tally.failed_requests += 1;
                    }
                    return Ok(());
                };
                new_connection
            }
        };
        let open_connection = self.connection.insert(open_connection);
        let turn_started = Instant::now();
        // Opening the connection may have taken the window's last moments.
        if turn_started >= window.ends_at {
            return Ok(());
        }
        let counted = turn_started >= window.starts_at;
        let request = self.target.request(&mut self.random)?;
        let outcome =
            tokio::time::timeout_at(window.abandon_at, open_connection.send(request)).await;
        let latency = turn_started.elapsed();
        let answered_status = match outcome {
            Ok(Ok((status, _body))) => Some(status),
            Ok(Err(_)) | Err(_) => None,
        };
        if answered_status.is_none() {
            // The connection may be half-way through an answer: start over.
            self.connection = None;
        }
        if !counted {
            return Ok(());
        }
        self.tally.busy += latency;
        match answered_status {
            Some(status) if status.is_success() => self.tally.record_success(latency),
            _ => self.tally.failed_requests += 1,
        }
        Ok(())
    }
}

async fn connect_or_pause(
    endpoint: &Endpoint,
    window: MeasurementWindow,
) -> Option<BenchConnection> {
    match tokio::time::timeout_at(window.abandon_at, BenchConnection::open(endpoint)).await {
        Ok(Ok(connection)) => Some(connection),
        Ok(Err(_)) | Err(_) => {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_set_gets_its_share_of_the_requests() {
        let choice = KeyChoice::HotSet {
            count: 1000,
            hot_count: 200,
            hot_request_percent: 80,
        };
        let mut random = WorkerRandom::seeded(7);
        let mut hot_requests = 0;
        let mut cold_keys_seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            let index = choice.pick(&mut random).unwrap();
            assert!(index < 1000);
            if index < 200 {
                hot_requests += 1;
            } else {
                cold_keys_seen.insert(index);
            }
        }
        assert!((79_000..81_000).contains(&hot_requests), "{hot_requests}");
        assert_eq!(cold_keys_seen.len(), 800);
    }

    fn round(
        requests: u64,
        latency_microseconds: u64,
        server_cpu: Option<Duration>,
    ) -> TargetMeasurement {
        let mut tally = WorkerTally::new().unwrap();
        for _ in 0..requests {
            tally.record_success(Duration::from_micros(latency_microseconds));
        }
        TargetMeasurement {
            target_name: "whoami",
            path: "/v1/whoami".to_string(),
            connections: 1,
            measured_for: Duration::from_secs(2),
            successful_requests: tally.successful_requests,
            failed_requests: 1,
            latencies_microseconds: tally.latencies_microseconds,
            cpu_during_window: WindowCpu {
                server: server_cpu,
                generator: Some(Duration::from_millis(100)),
            },
        }
    }

    #[test]
    fn rounds_add_up_to_one_measurement() {
        let mut rounds = round(1000, 100, Some(Duration::from_millis(50)));
        rounds
            .absorb(round(3000, 300, Some(Duration::from_millis(70))))
            .unwrap();

        assert_eq!(rounds.measured_for, Duration::from_secs(4));
        assert_eq!(rounds.successful_requests, 4000);
        assert_eq!(rounds.failed_requests, 2);
        assert_eq!(rounds.throughput_per_second(), 1000.0);
        // Three quarters of the requests took 300 µs.
        assert_eq!(rounds.latency_percentile_microseconds(50.0), 300);
        assert_eq!(rounds.latency_percentile_microseconds(20.0), 100);
        assert_eq!(rounds.server_cpu_microseconds_per_request(), Some(30.0));
        assert_eq!(rounds.generator_cpu_microseconds_per_request(), Some(50.0));
    }

    #[test]
    fn a_round_without_a_cpu_figure_leaves_the_sum_unknown() {
        let mut rounds = round(1000, 100, Some(Duration::from_millis(50)));
        rounds.absorb(round(1000, 100, None)).unwrap();
        assert_eq!(rounds.server_cpu_microseconds_per_request(), None);
        assert!(rounds.generator_cpu_microseconds_per_request().is_some());
    }

    /// Serves `/ok` (200) and `/missing` (404, axum's fallback) on a free
    /// loopback port of this runtime.
    async fn start_local_server() -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint::from_socket_address(listener.local_addr().unwrap()).unwrap();
        let router = axum::Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, router).await });
        endpoint
    }

    fn get_target(name: &'static str, endpoint: &Endpoint, path: &str) -> Arc<LoadTarget> {
        Arc::new(LoadTarget {
            name,
            endpoint: endpoint.clone(),
            method: Method::GET,
            path: path.to_string(),
            keys: KeyChoice::NoKey,
            body: Bytes::new(),
            authorization: None,
            content_type: None,
            server_process_id: None,
        })
    }

    #[tokio::test]
    async fn interleaving_sends_to_each_target_as_often_as_the_schedule_names_it() {
        let endpoint = start_local_server().await;
        let targets = [
            get_target("twice", &endpoint, "/ok"),
            get_target("once", &endpoint, "/ok"),
            get_target("refused", &endpoint, "/missing"),
        ];
        let warmup = Duration::from_millis(500);
        let window = Duration::from_millis(300);
        let measurements = measure_interleaved(&targets, &[0, 1, 0, 2], warmup, window)
            .await
            .unwrap();

        let [twice, once, refused] = &measurements[..] else {
            panic!("one measurement per target");
        };
        assert_eq!(twice.target_name, "twice");
        assert!(
            once.successful_requests > 10,
            "{}",
            once.successful_requests
        );
        assert_eq!(twice.failed_requests + once.failed_requests, 0);
        assert_eq!(refused.successful_requests, 0);
        assert!(refused.failed_requests > 10);
        // The window ends between two turns, so counts differ by at most
        // the turns of one pass through the schedule.
        let twice_minus_double_once =
            twice.successful_requests as i64 - 2 * once.successful_requests as i64;
        assert!(
            (-2..=2).contains(&twice_minus_double_once),
            "{twice_minus_double_once}"
        );
        let once_minus_refused = once.successful_requests as i64 - refused.failed_requests as i64;
        assert!(
            (-1..=1).contains(&once_minus_refused),
            "{once_minus_refused}"
        );
        // Each target's time is its own requests' time: together the
        // window and at most its last request, never the warm-up.
        let busy_together: Duration = measurements
            .iter()
            .map(|measurement| measurement.measured_for)
            .sum();
        let last_request_allowance = Duration::from_millis(250);
        assert!(
            busy_together <= window + last_request_allowance,
            "{busy_together:?}"
        );
        assert!(once.measured_for > Duration::ZERO);
        assert_eq!(twice.server_cpu_microseconds_per_request(), None);
    }

    #[tokio::test]
    async fn an_interleaving_schedule_must_name_known_targets() {
        let endpoint = Endpoint::from_socket_address("127.0.0.1:9".parse().unwrap()).unwrap();
        let targets = [get_target("only", &endpoint, "/ok")];
        let short = Duration::from_millis(1);
        assert!(
            measure_interleaved(&targets, &[], short, short)
                .await
                .is_err()
        );
        assert!(
            measure_interleaved(&targets, &[0, 1], short, short)
                .await
                .is_err()
        );
    }

    #[test]
    fn key_names_are_valid_cache_keys_in_index_order() {
        assert_eq!(key_name(42), "k0000042");
        assert!(key_name(9) < key_name(10));
    }
}
