//! Smoke test of `plinth bench http`: a very short run, so the command
//! keeps working end to end (both child processes, the API key made
//! through the admin API, both passes, the servers pinned for the unloaded
//! pass, the comparison). Its figures mean nothing here.

mod support;

use serde_json::Value;
use support::run_plinth;

#[test]
fn a_short_bench_http_run_measures_both_passes_and_judges_whoami() {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let output = run_plinth(
        directory.path(),
        &[
            "bench",
            "http",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--rounds",
            "1",
            "--concurrency",
            "2",
            "--json",
        ],
        &[],
    );
    let all_output = output.all_output();
    assert!(output.status.success(), "{all_output}");
    let report: Value = serde_json::from_str(&output.stdout).expect("the report is JSON");

    let loaded = &report["loaded_pass"];
    assert_eq!(loaded["connections"], 2, "{report:#}");
    assert_every_target_answered(&loaded["measurements"]);

    let unloaded = &report["unloaded_pass"];
    let schedule: Vec<&str> = unloaded["schedule"]
        .as_array()
        .expect("a schedule")
        .iter()
        .map(|name| name.as_str().expect("a target name"))
        .collect();
    assert_eq!(schedule, ["bare", "health", "bare", "whoami"]);
    assert!(unloaded["pinned_cpu"].is_u64(), "{report:#}");
    assert_every_target_answered(&unloaded["measurements"]);
    let bare_requests = unloaded["measurements"][0]["requests"].as_u64().unwrap();
    let whoami_requests = unloaded["measurements"][2]["requests"].as_u64().unwrap();
    // Every other unloaded request goes to the bare handler.
    assert!(
        bare_requests.abs_diff(2 * whoami_requests) <= 2,
        "{report:#}"
    );

    let comparisons = report["comparisons"].as_array().expect("comparisons");
    let judged: Vec<&Value> = comparisons
        .iter()
        .filter(|comparison| comparison.get("verdict").is_some())
        .collect();
    assert_eq!(comparisons.len(), 2, "{report:#}");
    assert_eq!(judged.len(), 1, "{report:#}");
    assert_eq!(judged[0]["target"], "whoami");
}

fn assert_every_target_answered(measurements: &Value) {
    let measurements = measurements.as_array().expect("measurements");
    let targets: Vec<&str> = measurements
        .iter()
        .map(|measurement| measurement["target"].as_str().expect("a target name"))
        .collect();
    assert_eq!(targets, ["bare", "health", "whoami"]);
    for measurement in measurements {
        assert!(
            measurement["requests"].as_u64().unwrap() > 0,
            "{measurement:#}"
        );
        assert_eq!(measurement["errors"], 0, "{measurement:#}");
    }
}

#[test]
fn a_node_the_benchmark_did_not_start_cannot_be_pinned() {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let output = run_plinth(
        directory.path(),
        &[
            "bench",
            "http",
            "--target",
            "http://127.0.0.1:9",
            "--api-key",
            "plinthk_unused",
            "--unloaded-placement",
            "one-cpu",
        ],
        &[],
    );
    let all_output = output.all_output();
    assert!(!output.status.success(), "{all_output}");
    assert!(all_output.contains("only without --target"), "{all_output}");
}
