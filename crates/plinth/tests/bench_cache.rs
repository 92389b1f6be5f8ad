//! Smoke test of `plinth bench cache`: a very short run, so the command
//! keeps working end to end (child processes, keyspace set-up through the
//! API, every target, the report). Its figures mean nothing here. With
//! redis-server installed the run also covers the L2 GET and the
//! redis-benchmark baselines; without it the command must say so and still
//! measure the rest.

mod support;

use support::run_plinth;

#[test]
fn a_short_bench_cache_run_measures_every_target_and_judges_them() {
    let directory = tempfile::tempdir().expect("create a temporary directory");
    let output = run_plinth(
        directory.path(),
        &[
            "bench",
            "cache",
            "--duration",
            "200ms",
            "--warmup",
            "0s",
            "--concurrency",
            "2",
            "--keys",
            "20",
            "--hot-keys",
            "50",
        ],
        &[],
    );
    let all_output = output.all_output();
    assert!(output.status.success(), "{all_output}");
    for expected in [
        "get-l1",
        "put",
        "hot",
        "80/20 L1 hit ratio",
        "L1-hit GET p99",
    ] {
        assert!(
            output.stdout.contains(expected),
            "no `{expected}` in:\n{all_output}"
        );
    }
    let measured_redis =
        output.stdout.contains("get-l2") && output.stdout.contains("redis-benchmark");
    let said_why_not = output.stdout.contains("note: no Redis");
    assert!(measured_redis || said_why_not, "{all_output}");
}
