//! What `plinth bench http` prints: a table of each pass's measurements,
//! then the comparisons with the bare handler against the targets of the
//! issue (p50 overhead under 50 µs, unloaded; throughput at least 0.6x,
//! loaded), or the same as a JSON document with `--json`.

use std::time::Duration;

use serde::Serialize;

use plinth_core::HumanDuration;

use crate::bench::http_bench::PlinthLog;
use crate::bench::load::TargetMeasurement;

/// The stack may add less than this at p50 over the bare handler.
const P50_OVERHEAD_LIMIT_MICROSECONDS: i64 = 50;
/// The authenticated route must keep at least this share of the bare
/// handler's throughput.
const THROUGHPUT_RATIO_MINIMUM: f64 = 0.6;
const BASELINE_NAME: &str = "bare";
/// The route the targets apply to; `health` is compared for information,
/// to tell the cost of authentication from the cost of the rest.
const JUDGED_TARGET_NAME: &str = "whoami";
const COMPARED_TARGET_NAMES: [&str; 2] = ["health", JUDGED_TARGET_NAME];

pub struct BenchRun {
    pub loaded: LoadedPass,
    pub unloaded: UnloadedPass,
    pub plinth_log: Option<PlinthLog>,
}

/// Throughput: each target at `connections`, the targets in turn in
/// rounds.
pub struct LoadedPass {
    pub connections: usize,
    pub rounds: u32,
    pub warmup_per_round: Duration,
    /// All rounds together.
    pub duration_per_target: Duration,
    pub measurements: Vec<TargetMeasurement>,
}

/// Latency: one request at a time, the targets interleaved request by
/// request in the order of `schedule`.
pub struct UnloadedPass {
    pub warmup: Duration,
    pub duration: Duration,
    pub schedule: Vec<&'static str>,
    /// The CPU the generator's measuring thread and the servers' threads
    /// shared; `None` when they ran wherever the kernel put them.
    pub pinned_cpu: Option<usize>,
    pub measurements: Vec<TargetMeasurement>,
}

fn find<'run>(
    measurements: &'run [TargetMeasurement],
    target_name: &str,
) -> Option<&'run TargetMeasurement> {
    measurements
        .iter()
        .find(|measurement| measurement.target_name == target_name)
}

#[derive(Serialize)]
struct MeasurementSummary {
    target: &'static str,
    path: String,
    connections: usize,
    requests: u64,
    errors: u64,
    throughput_per_second: f64,
    p50_microseconds: u64,
    p99_microseconds: u64,
    p999_microseconds: u64,
    /// Server CPU time per answered request; only for servers the
    /// benchmark started.
    server_cpu_microseconds_per_request: Option<f64>,
    generator_cpu_microseconds_per_request: Option<f64>,
}

impl MeasurementSummary {
    fn of(measurement: &TargetMeasurement) -> MeasurementSummary {
        MeasurementSummary {
            target: measurement.target_name,
            path: measurement.path.clone(),
            connections: measurement.connections,
            requests: measurement.successful_requests,
            errors: measurement.failed_requests,
            throughput_per_second: measurement.throughput_per_second(),
            p50_microseconds: measurement.latency_percentile_microseconds(50.0),
            p99_microseconds: measurement.latency_percentile_microseconds(99.0),
            p999_microseconds: measurement.latency_percentile_microseconds(99.9),
            server_cpu_microseconds_per_request: measurement.server_cpu_microseconds_per_request(),
            generator_cpu_microseconds_per_request: measurement
                .generator_cpu_microseconds_per_request(),
        }
    }
}

#[derive(Serialize)]
struct Comparison {
    target: &'static str,
    baseline: &'static str,
    /// From the unloaded pass.
    p50_overhead_microseconds: i64,
    /// From the loaded pass.
    throughput_ratio: f64,
    throughput_connections: usize,
    /// Server CPU per request over the baseline's, at the throughput pass:
    /// what the throughput ratio would be on cores of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_ratio: Option<f64>,
    /// Only for the route the targets apply to.
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<Verdict>,
}

#[derive(Serialize)]
struct Verdict {
    p50_overhead_limit_microseconds: i64,
    p50_overhead_passes: bool,
    throughput_ratio_minimum: f64,
    throughput_ratio_passes: bool,
}

#[derive(Serialize)]
struct JsonReport {
    loaded_pass: LoadedPassSummary,
    unloaded_pass: UnloadedPassSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    plinth_log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plinth_log_bytes: Option<u64>,
    comparisons: Vec<Comparison>,
}

#[derive(Serialize)]
struct LoadedPassSummary {
    connections: usize,
    rounds: u32,
    warmup_seconds_per_round: f64,
    measured_seconds_per_target: f64,
    measurements: Vec<MeasurementSummary>,
}

#[derive(Serialize)]
struct UnloadedPassSummary {
    warmup_seconds: f64,
    measured_seconds: f64,
    schedule: Vec<&'static str>,
    pinned_cpu: Option<usize>,
    measurements: Vec<MeasurementSummary>,
}

pub fn print_report(run: &BenchRun, as_json: bool) -> anyhow::Result<()> {
    let comparisons = compare_with_baseline(run);
    if as_json {
        return print_json(run, comparisons);
    }
    print_loaded_pass(&run.loaded);
    println!();
    print_unloaded_pass(&run.unloaded);
    print_comparisons(&comparisons, &run.unloaded);
    if let Some(plinth_log) = &run.plinth_log {
        println!(
            "plinth serve logged at `{}` and wrote {:.1} MiB of JSON logs during the run",
            plinth_log.level,
            plinth_log.bytes_written as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}

fn print_loaded_pass(loaded: &LoadedPass) {
    println!(
        "loaded pass (throughput): {} connection(s) per target, the targets in turn in {} round(s) of {} warm-up and {} measured",
        loaded.connections,
        loaded.rounds,
        HumanDuration(loaded.warmup_per_round),
        HumanDuration(loaded.duration_per_target / loaded.rounds.max(1))
    );
    let rows: Vec<&TargetMeasurement> = loaded.measurements.iter().collect();
    print_measurement_table(&rows);
}

fn print_unloaded_pass(unloaded: &UnloadedPass) {
    let placement = match unloaded.pinned_cpu {
        Some(cpu) => {
            format!("the generator's measuring thread and every server thread on CPU {cpu}")
        }
        None => "on any CPU".to_string(),
    };
    println!(
        "unloaded pass (latency): one request at a time, interleaved {} for {} after {} warm-up, {placement}",
        unloaded.schedule.join(", "),
        HumanDuration(unloaded.duration),
        HumanDuration(unloaded.warmup)
    );
    println!(
        "(req/s: what one connection of its own would do, from the time spent on the target's own requests; no CPU figures, as targets share a server)"
    );
    let rows: Vec<&TargetMeasurement> = unloaded.measurements.iter().collect();
    print_measurement_table(&rows);
}

fn compare_with_baseline(run: &BenchRun) -> Vec<Comparison> {
    COMPARED_TARGET_NAMES
        .iter()
        .filter_map(|target_name| compare_one(run, target_name))
        .collect()
}

/// `None` when the baseline or the target has no answered request in a
/// pass, since percentiles of nothing would read as zero.
fn compare_one(run: &BenchRun, target_name: &'static str) -> Option<Comparison> {
    let latency_baseline = answered(find(&run.unloaded.measurements, BASELINE_NAME))?;
    let latency_target = answered(find(&run.unloaded.measurements, target_name))?;
    let throughput_baseline = answered(find(&run.loaded.measurements, BASELINE_NAME))?;
    let throughput_target = answered(find(&run.loaded.measurements, target_name))?;
    let p50_overhead_microseconds = p50_as_signed(latency_target) - p50_as_signed(latency_baseline);
    let throughput_ratio =
        throughput_target.throughput_per_second() / throughput_baseline.throughput_per_second();
    let verdict = (target_name == JUDGED_TARGET_NAME).then_some(Verdict {
        p50_overhead_limit_microseconds: P50_OVERHEAD_LIMIT_MICROSECONDS,
        p50_overhead_passes: p50_overhead_microseconds < P50_OVERHEAD_LIMIT_MICROSECONDS,
        throughput_ratio_minimum: THROUGHPUT_RATIO_MINIMUM,
        throughput_ratio_passes: throughput_ratio >= THROUGHPUT_RATIO_MINIMUM,
    });
    let server_cpu_ratio = throughput_target
        .server_cpu_microseconds_per_request()
        .zip(throughput_baseline.server_cpu_microseconds_per_request())
        .map(|(target_cpu, baseline_cpu)| target_cpu / baseline_cpu);
    Some(Comparison {
        target: target_name,
        baseline: BASELINE_NAME,
        p50_overhead_microseconds,
        throughput_ratio,
        throughput_connections: run.loaded.connections,
        server_cpu_ratio,
        verdict,
    })
}

fn answered(measurement: Option<&TargetMeasurement>) -> Option<&TargetMeasurement> {
    measurement.filter(|measurement| measurement.successful_requests > 0)
}

fn p50_as_signed(measurement: &TargetMeasurement) -> i64 {
    i64::try_from(measurement.latency_percentile_microseconds(50.0)).unwrap_or(i64::MAX)
}

fn summaries(measurements: &[TargetMeasurement]) -> Vec<MeasurementSummary> {
    measurements.iter().map(MeasurementSummary::of).collect()
}

fn print_json(run: &BenchRun, comparisons: Vec<Comparison>) -> anyhow::Result<()> {
    let report = JsonReport {
        loaded_pass: LoadedPassSummary {
            connections: run.loaded.connections,
            rounds: run.loaded.rounds,
            warmup_seconds_per_round: run.loaded.warmup_per_round.as_secs_f64(),
            measured_seconds_per_target: run.loaded.duration_per_target.as_secs_f64(),
            measurements: summaries(&run.loaded.measurements),
        },
        unloaded_pass: UnloadedPassSummary {
            warmup_seconds: run.unloaded.warmup.as_secs_f64(),
            measured_seconds: run.unloaded.duration.as_secs_f64(),
            schedule: run.unloaded.schedule.clone(),
            pinned_cpu: run.unloaded.pinned_cpu,
            measurements: summaries(&run.unloaded.measurements),
        },
        plinth_log_level: run.plinth_log.as_ref().map(|log| log.level.clone()),
        plinth_log_bytes: run.plinth_log.as_ref().map(|log| log.bytes_written),
        comparisons,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// One row per measurement; `bench cache` prints its rows with it too.
pub fn print_measurement_table(measurements: &[&TargetMeasurement]) {
    println!(
        "{:<8} {:<14} {:>5} {:>10} {:>7} {:>10} {:>8} {:>8} {:>8} {:>14} {:>14}",
        "target",
        "path",
        "conns",
        "requests",
        "errors",
        "req/s",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "srv cpu µs/req",
        "gen cpu µs/req"
    );
    for measurement in measurements {
        let summary = MeasurementSummary::of(measurement);
        println!(
            "{:<8} {:<14} {:>5} {:>10} {:>7} {:>10.0} {:>8} {:>8} {:>8} {:>14} {:>14}",
            summary.target,
            summary.path,
            summary.connections,
            summary.requests,
            summary.errors,
            summary.throughput_per_second,
            summary.p50_microseconds,
            summary.p99_microseconds,
            summary.p999_microseconds,
            one_decimal_or_dash(summary.server_cpu_microseconds_per_request),
            one_decimal_or_dash(summary.generator_cpu_microseconds_per_request)
        );
    }
}

fn one_decimal_or_dash(value: Option<f64>) -> String {
    match value {
        Some(value) => format!("{value:.1}"),
        None => "-".to_string(),
    }
}

fn print_comparisons(comparisons: &[Comparison], unloaded: &UnloadedPass) {
    println!();
    if comparisons.is_empty() {
        println!(
            "no comparison: there is no bare baseline (start without --target, or pass --bare URL), or a target answered nothing"
        );
        return;
    }
    let latency_conditions = match unloaded.pinned_cpu {
        Some(_) => "unloaded, on one CPU",
        None => "unloaded, on any CPU",
    };
    for comparison in comparisons {
        print_comparison(comparison, latency_conditions);
        print_server_cpu_ratio(comparison);
    }
}

fn print_comparison(comparison: &Comparison, latency_conditions: &str) {
    let Some(verdict) = &comparison.verdict else {
        println!(
            "{} vs {}: p50 overhead {:+} µs ({latency_conditions}), throughput ratio {:.2} at {} connection(s) (no target; for telling costs apart)",
            comparison.target,
            comparison.baseline,
            comparison.p50_overhead_microseconds,
            comparison.throughput_ratio,
            comparison.throughput_connections
        );
        return;
    };
    println!(
        "{} vs {}: p50 overhead {:+} µs ({latency_conditions}), limit < {} µs: {}",
        comparison.target,
        comparison.baseline,
        comparison.p50_overhead_microseconds,
        verdict.p50_overhead_limit_microseconds,
        pass_or_fail(verdict.p50_overhead_passes)
    );
    // Three decimals: at two, a ratio just under the minimum (0.598)
    // would print as the minimum itself next to FAIL.
    println!(
        "{} vs {}: throughput ratio {:.3} at {} connection(s), minimum {:.1}: {}",
        comparison.target,
        comparison.baseline,
        comparison.throughput_ratio,
        comparison.throughput_connections,
        verdict.throughput_ratio_minimum,
        pass_or_fail(verdict.throughput_ratio_passes)
    );
}

fn print_server_cpu_ratio(comparison: &Comparison) {
    let Some(server_cpu_ratio) = comparison.server_cpu_ratio else {
        return;
    };
    println!(
        "{} vs {}: server CPU per request {:.2}x at {} connection(s) (on cores of its own, it would sustain about {:.2}x the bare throughput)",
        comparison.target,
        comparison.baseline,
        server_cpu_ratio,
        comparison.throughput_connections,
        1.0 / server_cpu_ratio
    );
}

pub fn pass_or_fail(passes: bool) -> &'static str {
    if passes { "PASS" } else { "FAIL" }
}

#[cfg(test)]
mod tests {
    use hdrhistogram::Histogram;

    use super::*;
    use crate::bench::load::WindowCpu;

    fn measurement(
        target_name: &'static str,
        connections: usize,
        requests_in_one_second: u64,
        p50_microseconds: u64,
    ) -> TargetMeasurement {
        let mut latencies_microseconds = Histogram::new(3).unwrap();
        latencies_microseconds.record(p50_microseconds).unwrap();
        TargetMeasurement {
            target_name,
            path: String::new(),
            connections,
            measured_for: Duration::from_secs(1),
            successful_requests: requests_in_one_second,
            failed_requests: 0,
            latencies_microseconds,
            cpu_during_window: WindowCpu::default(),
        }
    }

    /// The bare handler does 1000 req/s loaded and 100 µs unloaded.
    fn run_with_whoami(loaded_requests: u64, unloaded_p50_microseconds: u64) -> BenchRun {
        BenchRun {
            loaded: LoadedPass {
                connections: 64,
                rounds: 1,
                warmup_per_round: Duration::ZERO,
                duration_per_target: Duration::from_secs(1),
                measurements: vec![
                    measurement("bare", 64, 1000, 5000),
                    measurement("whoami", 64, loaded_requests, 9000),
                ],
            },
            unloaded: UnloadedPass {
                warmup: Duration::ZERO,
                duration: Duration::from_secs(2),
                schedule: vec!["bare", "whoami"],
                pinned_cpu: Some(0),
                measurements: vec![
                    measurement("bare", 1, 10, 100),
                    measurement("whoami", 1, 10, unloaded_p50_microseconds),
                ],
            },
            plinth_log: None,
        }
    }

    fn whoami_verdict(run: &BenchRun) -> Verdict {
        compare_one(run, "whoami").unwrap().verdict.unwrap()
    }

    #[test]
    fn latency_comes_from_the_unloaded_pass_and_throughput_from_the_loaded_one() {
        let comparison = compare_one(&run_with_whoami(700, 130), "whoami").unwrap();
        assert_eq!(comparison.p50_overhead_microseconds, 30);
        assert!((comparison.throughput_ratio - 0.7).abs() < 1e-9);
    }

    #[test]
    fn the_latency_limit_is_strict_and_the_throughput_minimum_inclusive() {
        assert!(whoami_verdict(&run_with_whoami(600, 149)).p50_overhead_passes);
        assert!(!whoami_verdict(&run_with_whoami(600, 150)).p50_overhead_passes);
        assert!(whoami_verdict(&run_with_whoami(600, 149)).throughput_ratio_passes);
        assert!(!whoami_verdict(&run_with_whoami(599, 149)).throughput_ratio_passes);
    }

    #[test]
    fn only_whoami_is_judged() {
        let mut run = run_with_whoami(700, 130);
        run.loaded
            .measurements
            .push(measurement("health", 64, 800, 7000));
        run.unloaded
            .measurements
            .push(measurement("health", 1, 10, 120));
        let comparisons = compare_with_baseline(&run);
        assert_eq!(comparisons.len(), 2);
        assert!(comparisons[0].verdict.is_none());
        assert!(comparisons[1].verdict.is_some());
    }

    #[test]
    fn nothing_is_compared_without_an_answered_baseline() {
        let mut run = run_with_whoami(700, 130);
        run.loaded
            .measurements
            .retain(|measurement| measurement.target_name != "bare");
        run.unloaded
            .measurements
            .retain(|measurement| measurement.target_name != "bare");
        assert!(compare_with_baseline(&run).is_empty());
        let mut unanswered = run_with_whoami(700, 130);
        unanswered.unloaded.measurements[0].successful_requests = 0;
        assert!(compare_with_baseline(&unanswered).is_empty());
    }
}
