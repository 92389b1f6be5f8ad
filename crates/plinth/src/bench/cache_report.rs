//! What `plinth bench cache` prints: the HTTP measurements in the table
//! `bench http` uses, the redis-benchmark figures, Plinth/Redis throughput
//! ratios at each concurrency, and a PASS or FAIL against each target of
//! the issue:
//!
//! - at least 50,000 L1-hit GETs/s over keep-alive HTTP, with p99 under
//!   2 ms, at 64 connections;
//! - PUTs into a keyspace without a store at least 0.5x Redis SET;
//! - an L1 hit ratio of at least 80% in the 80/20 workload with an L1 a
//!   fifth of the keys.

use crate::bench::load::TargetMeasurement;
use crate::bench::redis_baseline::RedisMeasurement;
use crate::bench::report::print_measurement_table;

const L1_GET_THROUGHPUT_MINIMUM: f64 = 50_000.0;
const L1_GET_P99_LIMIT_MICROSECONDS: u64 = 2_000;
/// The concurrency the L1 targets are stated for.
const TARGET_CONNECTIONS: usize = 64;
const PUT_TO_REDIS_SET_MINIMUM: f64 = 0.5;
const HOT_HIT_RATIO_MINIMUM: f64 = 0.8;

/// The 80/20 workload and what the keyspace's L1 stats said about its
/// measured window.
pub struct HotWorkload {
    pub measurement: TargetMeasurement,
    pub keys: u64,
    pub l1_entries_configured: u64,
    pub l1_hits: u64,
    pub l1_misses: u64,
    pub l1_evictions: u64,
    /// Reads made before the measured window.
    pub warmup_reads: u64,
}

impl HotWorkload {
    fn l1_hit_ratio(&self) -> Option<f64> {
        let lookups = self.l1_hits + self.l1_misses;
        (lookups > 0).then(|| self.l1_hits as f64 / lookups as f64)
    }
}

pub struct CacheBenchRun {
    pub loaded_connections: usize,
    /// get-l1, get-l2 (with Redis) and put, at each concurrency.
    pub measurements: Vec<TargetMeasurement>,
    pub hot_workload: HotWorkload,
    pub redis_measurements: Vec<RedisMeasurement>,
    /// What could not be measured, and why.
    pub notes: Vec<String>,
}

impl CacheBenchRun {
    fn find(&self, target_name: &str, connections: usize) -> Option<&TargetMeasurement> {
        self.measurements.iter().find(|measurement| {
            measurement.target_name == target_name
                && measurement.connections == connections
                && measurement.successful_requests > 0
        })
    }

    fn find_redis(&self, test: &str, connections: usize) -> Option<&RedisMeasurement> {
        self.redis_measurements
            .iter()
            .find(|measurement| measurement.test == test && measurement.connections == connections)
    }

    fn concurrencies(&self) -> Vec<usize> {
        let mut concurrencies: Vec<usize> = self
            .measurements
            .iter()
            .map(|measurement| measurement.connections)
            .collect();
        concurrencies.dedup();
        concurrencies
    }
}

/// One target of the issue; `passes` is `None` when it could not be judged.
#[derive(Debug, PartialEq)]
struct TargetVerdict {
    description: String,
    measured: String,
    passes: Option<bool>,
}

pub fn print_cache_report(run: &CacheBenchRun) {
    let mut plinth_rows: Vec<&TargetMeasurement> = run.measurements.iter().collect();
    plinth_rows.push(&run.hot_workload.measurement);
    print_measurement_table(&plinth_rows);
    println!();
    print_hot_workload(&run.hot_workload);
    print_redis_table(&run.redis_measurements);
    print_ratios(run);
    println!();
    for verdict in judge(run) {
        let outcome = match verdict.passes {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "NOT JUDGED",
        };
        println!("{}: {} ({outcome})", verdict.description, verdict.measured);
    }
    for note in &run.notes {
        println!("note: {note}");
    }
}

fn print_hot_workload(hot: &HotWorkload) {
    println!(
        "hot 80/20: {} keys, L1 max_entries {}, after {} warm-up reads: {} L1 hits, {} L1 misses, hit ratio {}, {} L1 evictions in the window",
        hot.keys,
        hot.l1_entries_configured,
        hot.warmup_reads,
        hot.l1_hits,
        hot.l1_misses,
        percent_or_dash(hot.l1_hit_ratio()),
        hot.l1_evictions
    );
}

fn print_redis_table(measurements: &[RedisMeasurement]) {
    if measurements.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<16} {:>5} {:>10} {:>10} {:>8} {:>8}",
        "redis-benchmark", "conns", "requests", "req/s", "p50 µs", "p99 µs"
    );
    for measurement in measurements {
        println!(
            "{:<16} {:>5} {:>10} {:>10.0} {:>8} {:>8}",
            measurement.test,
            measurement.connections,
            measurement.requests,
            measurement.throughput_per_second,
            whole_or_dash(measurement.p50_microseconds),
            whole_or_dash(measurement.p99_microseconds)
        );
    }
}

/// Each Plinth target over the Redis command it stands for.
const RATIO_PAIRS: [(&str, &str); 3] = [("get-l1", "GET"), ("get-l2", "GET"), ("put", "SET")];

fn print_ratios(run: &CacheBenchRun) {
    let mut printed_any = false;
    for connections in run.concurrencies() {
        for (target_name, redis_test) in RATIO_PAIRS {
            let Some(ratio) = throughput_ratio(run, target_name, redis_test, connections) else {
                continue;
            };
            if !printed_any {
                println!();
                printed_any = true;
            }
            println!(
                "{target_name} / redis {redis_test} at {connections} connection(s): {ratio:.2}x"
            );
        }
    }
}

fn throughput_ratio(
    run: &CacheBenchRun,
    target_name: &str,
    redis_test: &str,
    connections: usize,
) -> Option<f64> {
    let plinth = run.find(target_name, connections)?;
    let redis = run.find_redis(redis_test, connections)?;
    (redis.throughput_per_second > 0.0)
        .then(|| plinth.throughput_per_second() / redis.throughput_per_second)
}

fn judge(run: &CacheBenchRun) -> Vec<TargetVerdict> {
    let loaded = run.loaded_connections;
    let stated_for = if loaded == TARGET_CONNECTIONS {
        String::new()
    } else {
        format!("; the target is stated for {TARGET_CONNECTIONS}")
    };
    let l1_get = run.find("get-l1", loaded);
    let mut verdicts = vec![
        TargetVerdict {
            description: format!(
                "L1-hit GET throughput at {loaded} connections, minimum {L1_GET_THROUGHPUT_MINIMUM:.0}/s"
            ),
            measured: match l1_get {
                Some(measurement) => {
                    format!("{:.0}/s{stated_for}", measurement.throughput_per_second())
                }
                None => "no answered request".to_string(),
            },
            passes: l1_get.map(|measurement| {
                measurement.throughput_per_second() >= L1_GET_THROUGHPUT_MINIMUM
            }),
        },
        TargetVerdict {
            description: format!(
                "L1-hit GET p99 at {loaded} connections, limit < {L1_GET_P99_LIMIT_MICROSECONDS} µs"
            ),
            measured: match l1_get {
                Some(measurement) => format!(
                    "{} µs{stated_for}",
                    measurement.latency_percentile_microseconds(99.0)
                ),
                None => "no answered request".to_string(),
            },
            passes: l1_get.map(|measurement| {
                measurement.latency_percentile_microseconds(99.0) < L1_GET_P99_LIMIT_MICROSECONDS
            }),
        },
    ];
    let put_ratio = throughput_ratio(run, "put", "SET", loaded);
    verdicts.push(TargetVerdict {
        description: format!(
            "PUT (no store) / redis SET at {loaded} connections, minimum {PUT_TO_REDIS_SET_MINIMUM}x"
        ),
        measured: match put_ratio {
            Some(ratio) => format!("{ratio:.2}x"),
            None => "no Redis SET baseline".to_string(),
        },
        passes: put_ratio.map(|ratio| ratio >= PUT_TO_REDIS_SET_MINIMUM),
    });
    let hit_ratio = run.hot_workload.l1_hit_ratio();
    verdicts.push(TargetVerdict {
        description: format!(
            "80/20 L1 hit ratio with L1 a fifth of the keys, minimum {:.0}%",
            HOT_HIT_RATIO_MINIMUM * 100.0
        ),
        measured: percent_or_dash(hit_ratio),
        passes: hit_ratio.map(|ratio| ratio >= HOT_HIT_RATIO_MINIMUM),
    });
    verdicts
}

fn percent_or_dash(ratio: Option<f64>) -> String {
    match ratio {
        Some(ratio) => format!("{:.1}%", ratio * 100.0),
        None => "-".to_string(),
    }
}

fn whole_or_dash(value: Option<f64>) -> String {
    match value {
        Some(value) => format!("{value:.0}"),
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hdrhistogram::Histogram;

    use super::*;
    use crate::bench::load::WindowCpu;

    fn measurement(
        target_name: &'static str,
        connections: usize,
        requests: u64,
        p99_microseconds: u64,
    ) -> TargetMeasurement {
        let mut latencies_microseconds = Histogram::new(3).unwrap();
        latencies_microseconds.record(p99_microseconds).unwrap();
        TargetMeasurement {
            target_name,
            path: String::new(),
            connections,
            measured_for: Duration::from_secs(1),
            successful_requests: requests,
            failed_requests: 0,
            latencies_microseconds,
            cpu_during_window: WindowCpu::default(),
        }
    }

    fn redis(test: &str, connections: usize, throughput_per_second: f64) -> RedisMeasurement {
        RedisMeasurement {
            test: test.to_string(),
            connections,
            requests: 1,
            throughput_per_second,
            p50_microseconds: None,
            p99_microseconds: None,
        }
    }

    fn run(
        l1_requests: u64,
        l1_p99: u64,
        put_requests: u64,
        hits: u64,
        misses: u64,
    ) -> CacheBenchRun {
        CacheBenchRun {
            loaded_connections: 64,
            measurements: vec![
                measurement("get-l1", 64, l1_requests, l1_p99),
                measurement("put", 64, put_requests, 1000),
                measurement("get-l1", 1, 100, 50),
            ],
            hot_workload: HotWorkload {
                measurement: measurement("hot", 64, 1, 1),
                keys: 10,
                l1_entries_configured: 2,
                l1_hits: hits,
                l1_misses: misses,
                l1_evictions: 0,
                warmup_reads: 0,
            },
            redis_measurements: vec![redis("SET", 64, 20_000.0), redis("GET", 64, 25_000.0)],
            notes: Vec::new(),
        }
    }

    fn outcomes(run: &CacheBenchRun) -> Vec<Option<bool>> {
        judge(run)
            .into_iter()
            .map(|verdict| verdict.passes)
            .collect()
    }

    #[test]
    fn every_target_passes_at_its_bound() {
        let at_bounds = run(50_000, 1999, 10_000, 80, 20);
        assert_eq!(outcomes(&at_bounds), vec![Some(true); 4]);
    }

    #[test]
    fn every_target_fails_just_past_its_bound() {
        let past_bounds = run(49_999, 2000, 9_999, 79, 21);
        assert_eq!(outcomes(&past_bounds), vec![Some(false); 4]);
    }

    #[test]
    fn without_redis_the_put_target_is_not_judged_and_no_ratio_exists() {
        let mut no_redis = run(50_000, 100, 10_000, 80, 20);
        no_redis.redis_measurements.clear();
        assert_eq!(outcomes(&no_redis)[2], None);
        assert_eq!(throughput_ratio(&no_redis, "get-l1", "GET", 64), None);
    }

    #[test]
    fn ratios_compare_the_same_concurrency() {
        let measured = run(50_000, 100, 10_000, 80, 20);
        assert_eq!(throughput_ratio(&measured, "get-l1", "GET", 64), Some(2.0));
        assert_eq!(throughput_ratio(&measured, "get-l1", "GET", 1), None);
    }
}
