//! `plinth bench http`: how much Plinth's HTTP stack costs. Drives a bare
//! axum handler, `/health/live` (the middleware stack without
//! authentication) and `/v1/whoami` (the stack with API-key
//! authentication), each over keep-alive connections, in two passes:
//!
//! - a loaded pass at `--concurrency` connections, which gives throughput;
//! - an unloaded pass at one connection, which gives latency.
//!
//! Latency overhead is judged on the unloaded pass because under saturation
//! p50 is mostly queueing (Little's law: connections / throughput), so a
//! loaded p50 difference only restates the throughput ratio.
//!
//! Each pass measures the targets in turn, in `--rounds` short rounds, and
//! adds up each target's rounds. On a shared virtual machine the speed of
//! the same binary drifts by a third over minutes; one long window per
//! target would put that drift into the comparison, while rounds taken in
//! turn give every target the same share of fast and slow minutes. Each
//! round starts one target later than the one before.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::Method;
use plinth_core::HumanDuration;
use plinth_core::config::PlinthConfig;

use crate::bench::bare_server::BARE_PATH;
use crate::bench::client::{Endpoint, resolve_url};
use crate::bench::load::{
    KeyChoice, LoadShape, LoadTarget, TargetMeasurement, check_target_answers, measure,
};
use crate::bench::local_targets::LocalTargets;
use crate::bench::provision::{bearer, create_bench_api_key};
use crate::bench::report::{BenchRun, print_report};

const HEALTH_PATH: &str = "/health/live";
const WHOAMI_PATH: &str = "/v1/whoami";
/// The narrowest real scope: `whoami` needs none, but a key must carry one.
const WHOAMI_KEY_SCOPE: &str = "keys:read";
/// The unloaded pass: one connection, one request in flight.
const LATENCY_CONNECTIONS: usize = 1;

#[derive(Debug, Args)]
pub struct HttpBenchArguments {
    /// Measured time per target and pass, after the warm-ups, split evenly
    /// over the rounds.
    #[arg(long, value_name = "DURATION", default_value = "12s")]
    duration: HumanDuration,
    /// How many times each pass takes the targets in turn. A multiple of
    /// three puts every target first, second and third equally often.
    #[arg(long, value_name = "ROUNDS", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    rounds: u32,
    /// Unmeasured load before each round's measured window (connections
    /// open, caches fill, the CPU clocks up).
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    warmup: HumanDuration,
    /// Keep-alive connections of the loaded pass, one per worker. An
    /// unloaded pass at one connection always runs as well.
    #[arg(long, value_name = "CONNECTIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Drive this running node (`http://host:port`) instead of starting one.
    #[arg(long, value_name = "URL", requires = "api_key")]
    target: Option<String>,
    /// An API key of the node given by `--target`, sent to `/v1/whoami`.
    #[arg(long, value_name = "KEY", requires = "target")]
    api_key: Option<String>,
    /// A bare handler to compare `--target` with (`http://host:port/path`,
    /// answering GET with 2xx); without it there is no comparison.
    #[arg(long, value_name = "URL", requires = "target")]
    bare: Option<String>,
    /// Print a JSON summary on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// The node under test; its process id is known only when we started it.
struct PlinthNode {
    endpoint: Endpoint,
    process_id: Option<u32>,
}

/// The three routes, in the order the first round measures them.
struct BenchTargets {
    bare: Option<Arc<LoadTarget>>,
    health: Arc<LoadTarget>,
    whoami: Arc<LoadTarget>,
}

impl BenchTargets {
    fn for_plinth(
        plinth: &PlinthNode,
        api_key: &str,
        bare: Option<LoadTarget>,
    ) -> anyhow::Result<BenchTargets> {
        Ok(BenchTargets {
            bare: bare.map(Arc::new),
            health: Arc::new(LoadTarget {
                name: "health",
                method: Method::GET,
                endpoint: plinth.endpoint.clone(),
                path: HEALTH_PATH.to_string(),
                keys: KeyChoice::NoKey,
                body: Bytes::new(),
                authorization: None,
                content_type: None,
                server_process_id: plinth.process_id,
            }),
            whoami: Arc::new(LoadTarget {
                name: "whoami",
                method: Method::GET,
                endpoint: plinth.endpoint.clone(),
                path: WHOAMI_PATH.to_string(),
                keys: KeyChoice::NoKey,
                body: Bytes::new(),
                authorization: Some(bearer(api_key)?),
                content_type: None,
                server_process_id: plinth.process_id,
            }),
        })
    }

    fn in_measuring_order(&self) -> Vec<Arc<LoadTarget>> {
        let mut targets: Vec<Arc<LoadTarget>> = self.bare.iter().cloned().collect();
        targets.push(Arc::clone(&self.health));
        targets.push(Arc::clone(&self.whoami));
        targets
    }
}

pub async fn run(config: &PlinthConfig, arguments: HttpBenchArguments) -> anyhow::Result<()> {
    let warmup = arguments.warmup.as_duration();
    let duration = arguments.duration.as_duration();
    if duration.is_zero() {
        anyhow::bail!("--duration must be longer than zero");
    }
    let throughput_connections = arguments.concurrency as usize;
    let plan = PassPlan {
        warmup,
        round_duration: duration / arguments.rounds,
        rounds: arguments.rounds,
        connections_per_pass: connections_per_pass(throughput_connections),
    };
    let (measurements, plinth_log) = match &arguments.target {
        Some(target_url) => (
            measure_running_node(target_url, &arguments, &plan).await?,
            None,
        ),
        None => measure_local_children(&config.log.level, &plan).await?,
    };
    let run = BenchRun {
        warmup,
        duration,
        rounds: arguments.rounds,
        throughput_connections,
        latency_connections: LATENCY_CONNECTIONS,
        plinth_log,
        measurements,
    };
    print_report(&run, arguments.json)
}

struct PassPlan {
    /// Before each round's window.
    warmup: Duration,
    /// Measured time of one target in one round.
    round_duration: Duration,
    rounds: u32,
    connections_per_pass: Vec<usize>,
}

fn connections_per_pass(throughput_connections: usize) -> Vec<usize> {
    if throughput_connections == LATENCY_CONNECTIONS {
        return vec![LATENCY_CONNECTIONS];
    }
    vec![throughput_connections, LATENCY_CONNECTIONS]
}

/// Where the `plinth serve` child's logs went and how much it wrote, so the
/// report can say what the access log cost in bytes.
pub struct PlinthLog {
    pub level: String,
    pub bytes_written: u64,
}

async fn measure_local_children(
    plinth_log_level: &str,
    plan: &PassPlan,
) -> anyhow::Result<(Vec<TargetMeasurement>, Option<PlinthLog>)> {
    let mut local_targets = LocalTargets::start(plinth_log_level).await?;
    eprintln!(
        "started plinth serve on {} (log level `{plinth_log_level}`, JSON logs to a file) and the bare axum server on {}",
        local_targets.plinth.endpoint.socket_address, local_targets.bare_endpoint.socket_address
    );
    let api_key = create_bench_api_key(
        &local_targets.plinth.endpoint,
        &local_targets.plinth.bootstrap_admin_key,
        &[WHOAMI_KEY_SCOPE],
    )
    .await?;
    let bare = LoadTarget {
        name: "bare",
        method: Method::GET,
        endpoint: local_targets.bare_endpoint.clone(),
        path: BARE_PATH.to_string(),
        keys: KeyChoice::NoKey,
        body: Bytes::new(),
        authorization: None,
        content_type: None,
        server_process_id: local_targets.bare_process_id(),
    };
    let plinth = PlinthNode {
        endpoint: local_targets.plinth.endpoint.clone(),
        process_id: local_targets.plinth.process_id(),
    };
    let targets = BenchTargets::for_plinth(&plinth, &api_key, Some(bare))?;
    let measurements =
        measure_every_target(&targets, plan, || local_targets.ensure_both_running()).await?;
    local_targets.ensure_both_running()?;
    let plinth_log = PlinthLog {
        level: plinth_log_level.to_string(),
        bytes_written: local_targets.plinth.log_bytes(),
    };
    local_targets.stop().await?;
    Ok((measurements, Some(plinth_log)))
}

async fn measure_running_node(
    target_url: &str,
    arguments: &HttpBenchArguments,
    plan: &PassPlan,
) -> anyhow::Result<Vec<TargetMeasurement>> {
    let Some(api_key) = &arguments.api_key else {
        anyhow::bail!("--target needs --api-key");
    };
    let resolved_target = resolve_url(target_url).await?;
    if resolved_target.path.path() != "/" {
        anyhow::bail!("--target takes the node's base URL (`http://host:port`), not a path");
    }
    let bare = match &arguments.bare {
        None => None,
        Some(bare_url) => {
            let resolved = resolve_url(bare_url).await?;
            Some(LoadTarget {
                name: "bare",
                method: Method::GET,
                endpoint: resolved.endpoint,
                path: resolved.path.to_string(),
                keys: KeyChoice::NoKey,
                body: Bytes::new(),
                authorization: None,
                content_type: None,
                server_process_id: None,
            })
        }
    };
    let plinth = PlinthNode {
        endpoint: resolved_target.endpoint,
        process_id: None,
    };
    let targets = BenchTargets::for_plinth(&plinth, api_key, bare)?;
    // A node we did not start is not ours to watch: failures show up as
    // errors in the table instead.
    measure_every_target(&targets, plan, || Ok(())).await
}

/// Every pass over every target, after each target has answered once: one
/// measurement per target and pass, the sum of its rounds. `check_servers`
/// runs before each round of each target, so a crashed server stops the
/// run instead of producing a table of errors.
async fn measure_every_target(
    targets: &BenchTargets,
    plan: &PassPlan,
    mut check_servers: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<TargetMeasurement>> {
    for target in targets.in_measuring_order() {
        check_target_answers(&target).await?;
    }
    let ordered_targets = targets.in_measuring_order();
    let mut measurements = Vec::new();
    for connections in &plan.connections_per_pass {
        // One slot per target, in measuring order, filled by its first round.
        let mut pass_measurements: Vec<Option<TargetMeasurement>> =
            ordered_targets.iter().map(|_| None).collect();
        for round in 1..=plan.rounds {
            for target_index in round_order(round, ordered_targets.len()) {
                check_servers()?;
                let target = Arc::clone(&ordered_targets[target_index]);
                let round_measurement = measure_one(target, *connections, round, plan).await?;
                match &mut pass_measurements[target_index] {
                    Some(earlier_rounds) => earlier_rounds.absorb(round_measurement)?,
                    empty_slot => *empty_slot = Some(round_measurement),
                }
            }
        }
        measurements.extend(pass_measurements.into_iter().flatten());
    }
    Ok(measurements)
}

/// The order of the targets in round `round` (from 1): each round starts
/// one target later than the one before, so no target always runs right
/// after the same other one (health and whoami share a server).
fn round_order(round: u32, target_count: usize) -> Vec<usize> {
    let first = (round as usize - 1) % target_count.max(1);
    (0..target_count)
        .map(|offset| (first + offset) % target_count)
        .collect()
}

async fn measure_one(
    target: Arc<LoadTarget>,
    connections: usize,
    round: u32,
    plan: &PassPlan,
) -> anyhow::Result<TargetMeasurement> {
    eprintln!(
        "measuring {} {} at {connections} connection(s), round {round} of {}: {} warm-up, {} measured",
        target.name,
        target.path,
        plan.rounds,
        HumanDuration(plan.warmup),
        HumanDuration(plan.round_duration)
    );
    let shape = LoadShape {
        connections,
        warmup: plan.warmup,
        duration: plan.round_duration,
    };
    measure(target, shape).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_starts_one_target_later() {
        assert_eq!(round_order(1, 3), vec![0, 1, 2]);
        assert_eq!(round_order(2, 3), vec![1, 2, 0]);
        assert_eq!(round_order(3, 3), vec![2, 0, 1]);
        assert_eq!(round_order(4, 3), vec![0, 1, 2]);
        assert_eq!(round_order(2, 2), vec![1, 0]);
        assert_eq!(round_order(5, 1), vec![0]);
    }

    #[test]
    fn an_unloaded_pass_follows_the_loaded_one_unless_they_are_the_same() {
        assert_eq!(connections_per_pass(64), vec![64, 1]);
        assert_eq!(connections_per_pass(1), vec![1]);
    }
}
