//! The Redis side of `plinth bench cache`: a `redis-server` child on a free
//! loopback port (or a Redis given by URL), which is also the L2 of the
//! `plinth serve` under test, and `redis-benchmark` runs against it with the
//! same concurrency and value size as the HTTP measurements.
//!
//! `redis-benchmark` sends a fixed number of requests, not for a fixed time,
//! so each measurement first runs a short calibration (which also writes the
//! keys the GET test reads) and then sizes the real run to last about the
//! measured duration.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::bench::local_targets::free_loopback_addresses;

const REDIS_SERVER_PROGRAM: &str = "redis-server";
const REDIS_BENCHMARK_PROGRAM: &str = "redis-benchmark";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const STARTUP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Requests of the calibration run of each test.
const CALIBRATION_REQUESTS: u64 = 5_000;
/// No measured run sends fewer, however slow the calibration was.
const MINIMUM_REQUESTS: u64 = 1_000;

/// The Redis the benchmark uses; a child it started is killed on drop.
pub struct RedisUnderTest {
    pub url: String,
    child: Option<Child>,
    // Declared last so it is deleted after the child is killed.
    _work_directory: Option<TempDir>,
}

impl RedisUnderTest {
    /// The Redis at `url`, which the benchmark neither starts nor stops.
    pub fn external(url: &str) -> RedisUnderTest {
        RedisUnderTest {
            url: url.to_string(),
            child: None,
            _work_directory: None,
        }
    }

    /// Starts `redis-server` on a free loopback port without persistence.
    /// `Ok(Err(reason))` when it is not installed, so the benchmark can go
    /// on without Redis.
    pub async fn start_local() -> anyhow::Result<Result<RedisUnderTest, String>> {
        let work_directory = tempfile::Builder::new()
            .prefix("plinth-bench-redis-")
            .tempdir()
            .context("creating a temporary directory")?;
        let [address] = free_loopback_addresses::<1>()?;
        let child = match spawn_redis_server(work_directory.path(), address.port()) {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(format!(
                    "`{REDIS_SERVER_PROGRAM}` is not installed (apt-get install redis-server), and no --redis-url was given"
                )));
            }
            Err(error) => return Err(error).context("starting redis-server"),
        };
        let mut redis = RedisUnderTest {
            url: format!("redis://{address}"),
            child: Some(child),
            _work_directory: Some(work_directory),
        };
        redis.wait_until_answering(&address.to_string()).await?;
        Ok(Ok(redis))
    }

    /// The child's process id; `None` for an external Redis.
    pub fn process_id(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn wait_until_answering(&mut self, address: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!("redis-server exited with {status} at start-up");
            }
            if answers_ping(address).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!("redis-server did not answer PING within {STARTUP_TIMEOUT:?}");
            }
            tokio::time::sleep(STARTUP_POLL_INTERVAL).await;
        }
    }
}

fn spawn_redis_server(work_directory: &Path, port: u16) -> std::io::Result<Child> {
    Command::new(REDIS_SERVER_PROGRAM)
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--save")
        .arg("")
        .arg("--appendonly")
        .arg("no")
        .arg("--dir")
        .arg(work_directory)
        .current_dir(work_directory)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

async fn answers_ping(address: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).await.is_ok() && &answer == b"+PONG\r\n"
}

/// What one `redis-benchmark` test did.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisMeasurement {
    /// `SET` or `GET`.
    pub test: String,
    pub connections: usize,
    pub requests: u64,
    pub throughput_per_second: f64,
    /// Absent from the CSV of redis-benchmark before 6.2.
    pub p50_microseconds: Option<f64>,
    pub p99_microseconds: Option<f64>,
}

/// What `redis-benchmark` runs look like.
pub struct RedisBenchmarkShape {
    pub connections: usize,
    pub value_bytes: usize,
    /// Keys drawn at random (`-r`), as many as the HTTP targets use.
    pub keys: u64,
    pub duration: Duration,
}

/// SET, then GET (which reads the keys the SETs wrote), each about
/// `shape.duration` long, over keep-alive connections (`-k 1`).
pub async fn measure_set_and_get(
    redis: &RedisUnderTest,
    shape: &RedisBenchmarkShape,
) -> anyhow::Result<Vec<RedisMeasurement>> {
    let calibration = run_redis_benchmark(redis, shape, "set,get", CALIBRATION_REQUESTS).await?;
    let mut measurements = Vec::new();
    for test in ["SET", "GET"] {
        let calibrated = calibration
            .iter()
            .find(|measurement| measurement.test == test)
            .with_context(|| format!("the calibration run printed no {test} line"))?;
        let requests = ((calibrated.throughput_per_second * shape.duration.as_secs_f64()) as u64)
            .max(MINIMUM_REQUESTS);
        let measured =
            run_redis_benchmark(redis, shape, &test.to_ascii_lowercase(), requests).await?;
        measurements.extend(measured);
    }
    Ok(measurements)
}

async fn run_redis_benchmark(
    redis: &RedisUnderTest,
    shape: &RedisBenchmarkShape,
    tests: &str,
    requests: u64,
) -> anyhow::Result<Vec<RedisMeasurement>> {
    let output = Command::new(REDIS_BENCHMARK_PROGRAM)
        .arg("-u")
        .arg(&redis.url)
        .arg("-c")
        .arg(shape.connections.to_string())
        .arg("-n")
        .arg(requests.to_string())
        .arg("-d")
        .arg(shape.value_bytes.to_string())
        .arg("-r")
        .arg(shape.keys.to_string())
        .arg("-k")
        .arg("1")
        .arg("-t")
        .arg(tests)
        .arg("--csv")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {REDIS_BENCHMARK_PROGRAM}"))?;
    if !output.status.success() {
        anyhow::bail!(
            "{REDIS_BENCHMARK_PROGRAM} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let csv = String::from_utf8_lossy(&output.stdout);
    parse_redis_benchmark_csv(&csv, shape.connections, requests)
}

/// Whether `redis-benchmark` can be started at all.
pub async fn redis_benchmark_is_installed() -> bool {
    Command::new(REDIS_BENCHMARK_PROGRAM)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|status| status.success())
}

/// Parses `redis-benchmark --csv`: a header line naming the columns
/// (`"test","rps",...,"p50_latency_ms",...,"p99_latency_ms",...`), then one
/// quoted line per test.
fn parse_redis_benchmark_csv(
    csv: &str,
    connections: usize,
    requests: u64,
) -> anyhow::Result<Vec<RedisMeasurement>> {
    let mut lines = csv.lines().filter(|line| !line.trim().is_empty());
    let header = lines
        .next()
        .context("redis-benchmark printed nothing on stdout")?;
    let columns = csv_fields(header);
    let column_of = |name: &str| columns.iter().position(|column| column == name);
    let test_column = column_of("test").context("redis-benchmark's CSV has no `test` column")?;
    let rps_column = column_of("rps").context("redis-benchmark's CSV has no `rps` column")?;
    let p50_column = column_of("p50_latency_ms");
    let p99_column = column_of("p99_latency_ms");
    let mut measurements = Vec::new();
    for line in lines {
        let fields = csv_fields(line);
        let number_at = |column: Option<usize>| -> Option<f64> {
            fields.get(column?).and_then(|field| field.parse().ok())
        };
        let milliseconds_as_microseconds =
            |column: Option<usize>| number_at(column).map(|milliseconds| milliseconds * 1000.0);
        measurements.push(RedisMeasurement {
            test: fields
                .get(test_column)
                .with_context(|| format!("a CSV line without a test name: {line}"))?
                .clone(),
            connections,
            requests,
            throughput_per_second: number_at(Some(rps_column))
                .with_context(|| format!("a CSV line without a numeric rps: {line}"))?,
            p50_microseconds: milliseconds_as_microseconds(p50_column),
            p99_microseconds: milliseconds_as_microseconds(p99_column),
        });
    }
    Ok(measurements)
}

/// redis-benchmark quotes every field and never puts a comma inside one.
fn csv_fields(line: &str) -> Vec<String> {
    line.split(',')
        .map(|field| field.trim().trim_matches('"').to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csv_of_redis_benchmark_7_gives_throughput_and_percentiles() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"21795.99\",\"1.966\",\"0.280\",\"1.447\",\"5.767\",\"7.167\",\"12.823\"\n\
                   \"GET\",\"21285.65\",\"2.002\",\"0.080\",\"1.407\",\"5.519\",\"6.775\",\"23.823\"\n";
        let measurements = parse_redis_benchmark_csv(csv, 64, 50_000).unwrap();
        assert_eq!(measurements.len(), 2);
        assert_eq!(measurements[0].test, "SET");
        assert!((measurements[0].throughput_per_second - 21795.99).abs() < 1e-9);
        assert_eq!(measurements[1].p50_microseconds, Some(1407.0));
        assert_eq!(measurements[1].p99_microseconds, Some(6775.0));
        assert_eq!(measurements[1].connections, 64);
    }

    #[test]
    fn older_csv_without_percentiles_still_gives_throughput() {
        let csv = "\"test\",\"rps\"\n\"GET\",\"1000.00\"\n";
        let measurements = parse_redis_benchmark_csv(csv, 1, 10).unwrap();
        assert_eq!(measurements[0].p99_microseconds, None);
        assert!(parse_redis_benchmark_csv("", 1, 10).is_err());
    }
}
