//! Smoke test of `plinth bench events`: a very short run on SQLite only, so
//! the command keeps working end to end (the child node, the API key, every
//! workload, the SSE subscription, the report and its verdicts). Its
//! figures mean nothing here.

mod support;

use support::run_plinth;

#[test]
fn a_short_bench_events_run_measures_every_workload_and_judges_them() {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let output = run_plinth(
        directory.path(),
        &["bench", "events", "--duration", "200ms", "--warmup", "0s"],
        &[],
    );
    let all_output = output.all_output();
    assert!(output.status.success(), "{all_output}");
    for expected in [
        "append-1",
        "append-100",
        "read (100/page)",
        "delivery (SSE)",
        "sqlite append-100 events/s",
        "sqlite SSE delivery p99",
        "no --postgres-url",
    ] {
        assert!(
            output.stdout.contains(expected),
            "no `{expected}` in:\n{all_output}"
        );
    }
    assert!(!output.stdout.contains("postgres-raw"), "{all_output}");
}
