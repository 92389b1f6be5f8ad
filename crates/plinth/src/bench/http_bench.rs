//! `plinth bench http`: how much Plinth's HTTP stack costs. Drives a bare
//! axum handler, `/health/live` (the middleware stack without
//! authentication) and `/v1/whoami` (the stack with API-key
//! authentication) over keep-alive connections, in two passes:
//!
//! - a loaded pass at `--concurrency` connections, which gives throughput;
//! - an unloaded pass with one request in flight, which gives latency.
//!
//! Latency overhead is judged on the unloaded pass because under saturation
//! p50 is mostly queueing (Little's law: connections / throughput), so a
//! loaded p50 difference only restates the throughput ratio.
//!
//! On a shared virtual machine the speed of the same binary drifts by a
//! third over minutes, so neither pass gives a target a long window of its
//! own. The loaded pass takes the targets in turn, in `--rounds` short
//! rounds, each round starting one target later than the one before, and
//! adds up each target's rounds. The unloaded pass interleaves the targets
//! request by request: every other request goes to the bare handler and
//! the rest to the Plinth routes in turn, so each request follows one to
//! the other process and all targets see the same moments of the machine.
//! It runs on a thread of its own and, when the benchmark started the
//! servers, on one CPU together with them (see `placement`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http::Method;
use plinth_core::HumanDuration;
use plinth_core::config::PlinthConfig;

use crate::bench::bare_server::BARE_PATH;
use crate::bench::client::{Endpoint, resolve_url};
use crate::bench::load::{
    KeyChoice, LoadShape, LoadTarget, TargetMeasurement, check_target_answers, measure,
    measure_interleaved,
};
use crate::bench::local_targets::LocalTargets;
use crate::bench::placement::{self, UnloadedPlacement};
use crate::bench::provision::{bearer, create_bench_api_key};
use crate::bench::report::{BenchRun, LoadedPass, UnloadedPass, print_report};

const HEALTH_PATH: &str = "/health/live";
const WHOAMI_PATH: &str = "/v1/whoami";
/// The narrowest real scope: `whoami` needs none, but a key must carry one.
const WHOAMI_KEY_SCOPE: &str = "keys:read";

#[derive(Debug, Args)]
pub struct HttpBenchArguments {
    /// Measured time per target and pass, after the warm-ups (in the loaded
    /// pass split evenly over the rounds).
    #[arg(long, value_name = "DURATION", default_value = "12s")]
    duration: HumanDuration,
    /// How many times the loaded pass takes the targets in turn. A multiple
    /// of three puts every target first, second and third equally often.
    #[arg(long, value_name = "ROUNDS", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    rounds: u32,
    /// Unmeasured load before each measured window (each round of the
    /// loaded pass, and the unloaded pass): connections open, caches fill,
    /// the CPU clocks up.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    warmup: HumanDuration,
    /// Keep-alive connections of the loaded pass, one per worker. The
    /// unloaded pass, one request at a time, always runs as well.
    #[arg(long, value_name = "CONNECTIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Where the unloaded pass runs. `one-cpu` (the default when the
    /// benchmark starts the servers) puts the generator's measuring thread
    /// and every server thread on one CPU, so no request waits for an idle
    /// CPU to wake; `free` (the only choice with `--target`) leaves them
    /// where the kernel puts them.
    #[arg(long, value_name = "PLACEMENT")]
    unloaded_placement: Option<UnloadedPlacement>,
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

    /// The unloaded pass's order, as indices into `in_measuring_order`.
    fn interleaving_schedule(&self) -> Vec<usize> {
        interleaving_schedule(self.in_measuring_order().len(), self.bare.is_some())
    }
}

/// With a baseline (index 0), every other request goes to it and the rest
/// to the other targets in turn (`[0, 1, 0, 2]`): each request then follows
/// one to the other server, whose code and data it may have pushed out of
/// the CPU's caches, whichever target it is for. Without one, the targets
/// simply take turns.
fn interleaving_schedule(target_count: usize, has_baseline: bool) -> Vec<usize> {
    if !has_baseline {
        return (0..target_count).collect();
    }
    let mut schedule = Vec::new();
    for other_target in 1..target_count {
        schedule.push(0);
        schedule.push(other_target);
    }
    schedule
}

pub async fn run(config: &PlinthConfig, arguments: HttpBenchArguments) -> anyhow::Result<()> {
    let warmup = arguments.warmup.as_duration();
    let duration = arguments.duration.as_duration();
    if duration.is_zero() {
        anyhow::bail!("--duration must be longer than zero");
    }
    let plan = PassPlan {
        warmup,
        duration,
        rounds: arguments.rounds,
        loaded_connections: arguments.concurrency as usize,
        unloaded_placement: arguments.unloaded_placement,
    };
    let (passes, plinth_log) = match &arguments.target {
        Some(target_url) => (
            measure_running_node(target_url, &arguments, &plan).await?,
            None,
        ),
        None => measure_local_children(&config.log.level, &plan).await?,
    };
    let (loaded, unloaded) = passes;
    let run = BenchRun {
        loaded,
        unloaded,
        plinth_log,
    };
    print_report(&run, arguments.json)
}

struct PassPlan {
    /// Before each round of the loaded pass, and before the unloaded pass.
    warmup: Duration,
    /// Measured time per target in each pass.
    duration: Duration,
    rounds: u32,
    loaded_connections: usize,
    /// As asked for; `None` takes the default of the kind of run.
    unloaded_placement: Option<UnloadedPlacement>,
}

impl PassPlan {
    /// Measured time of one target in one round of the loaded pass.
    fn round_duration(&self) -> Duration {
        self.duration / self.rounds
    }
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
) -> anyhow::Result<((LoadedPass, UnloadedPass), Option<PlinthLog>)> {
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
    let server_process_ids = [
        local_targets.bare_process_id(),
        local_targets.plinth.process_id(),
    ];
    let unloaded_placement = match plan.unloaded_placement {
        Some(UnloadedPlacement::Free) => ServerPlacement::Free,
        Some(UnloadedPlacement::OneCpu) | None => ServerPlacement::OneCpu {
            cpu: placement::first_allowed_cpu()?,
            server_process_ids: server_process_ids
                .into_iter()
                .collect::<Option<Vec<u32>>>()
                .context("a server child has already exited")?,
        },
    };
    let passes = measure_both_passes(&targets, plan, &unloaded_placement, || {
        local_targets.ensure_both_running()
    })
    .await?;
    local_targets.ensure_both_running()?;
    let plinth_log = PlinthLog {
        level: plinth_log_level.to_string(),
        bytes_written: local_targets.plinth.log_bytes(),
    };
    local_targets.stop().await?;
    Ok((passes, Some(plinth_log)))
}

async fn measure_running_node(
    target_url: &str,
    arguments: &HttpBenchArguments,
    plan: &PassPlan,
) -> anyhow::Result<(LoadedPass, UnloadedPass)> {
    let Some(api_key) = &arguments.api_key else {
        anyhow::bail!("--target needs --api-key");
    };
    if plan.unloaded_placement == Some(UnloadedPlacement::OneCpu) {
        anyhow::bail!(
            "--unloaded-placement one-cpu needs the servers' threads, so it works only without --target"
        );
    }
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
    measure_both_passes(&targets, plan, &ServerPlacement::Free, || Ok(())).await
}

/// Both passes over every target, after each target has answered once.
/// `check_servers` runs before each round and before the unloaded pass, so
/// a crashed server stops the run instead of producing a table of errors.
async fn measure_both_passes(
    targets: &BenchTargets,
    plan: &PassPlan,
    unloaded_placement: &ServerPlacement,
    mut check_servers: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(LoadedPass, UnloadedPass)> {
    for target in targets.in_measuring_order() {
        check_target_answers(&target).await?;
    }
    let loaded = measure_loaded_pass(targets, plan, &mut check_servers).await?;
    check_servers()?;
    let unloaded = measure_unloaded_pass(targets, plan, unloaded_placement).await?;
    Ok((loaded, unloaded))
}

/// Where the unloaded pass puts the servers, decided from the plan and
/// whether the benchmark started them.
enum ServerPlacement {
    OneCpu {
        cpu: usize,
        server_process_ids: Vec<u32>,
    },
    Free,
}

/// One measurement per target, the sum of its rounds.
async fn measure_loaded_pass(
    targets: &BenchTargets,
    plan: &PassPlan,
    check_servers: &mut impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<LoadedPass> {
    let ordered_targets = targets.in_measuring_order();
    // One slot per target, in measuring order, filled by its first round.
    let mut pass_measurements: Vec<Option<TargetMeasurement>> =
        ordered_targets.iter().map(|_| None).collect();
    for round in 1..=plan.rounds {
        for target_index in round_order(round, ordered_targets.len()) {
            check_servers()?;
            let target = Arc::clone(&ordered_targets[target_index]);
            let round_measurement = measure_one_round(target, round, plan).await?;
            match &mut pass_measurements[target_index] {
                Some(earlier_rounds) => earlier_rounds.absorb(round_measurement)?,
                empty_slot => *empty_slot = Some(round_measurement),
            }
        }
    }
    Ok(LoadedPass {
        connections: plan.loaded_connections,
        rounds: plan.rounds,
        warmup_per_round: plan.warmup,
        duration_per_target: plan.duration,
        measurements: pass_measurements.into_iter().flatten().collect(),
    })
}

/// As long as the loaded pass gives each target, so both passes take
/// about the same time.
async fn measure_unloaded_pass(
    targets: &BenchTargets,
    plan: &PassPlan,
    placement: &ServerPlacement,
) -> anyhow::Result<UnloadedPass> {
    let ordered_targets = targets.in_measuring_order();
    let schedule = targets.interleaving_schedule();
    let duration = plan.duration * ordered_targets.len() as u32;
    let schedule_names: Vec<&'static str> = schedule
        .iter()
        .map(|target_index| ordered_targets[*target_index].name)
        .collect();
    let pinned_cpu = match placement {
        ServerPlacement::OneCpu { cpu, .. } => Some(*cpu),
        ServerPlacement::Free => None,
    };
    eprintln!(
        "measuring one request at a time, interleaved {}, {}: {} warm-up, {} measured",
        schedule_names.join(", "),
        match pinned_cpu {
            Some(cpu) => format!("all on CPU {cpu}"),
            None => "on any CPU".to_string(),
        },
        HumanDuration(plan.warmup),
        HumanDuration(duration)
    );
    let measuring = UnloadedMeasuring {
        targets: ordered_targets,
        schedule,
        warmup: plan.warmup,
        duration,
        pinned_cpu,
    };
    let measurements = match placement {
        ServerPlacement::Free => measuring.run_on_a_thread_of_its_own().await?,
        ServerPlacement::OneCpu {
            cpu,
            server_process_ids,
        } => with_servers_on_one_cpu(server_process_ids, *cpu, measuring).await?,
    };
    Ok(UnloadedPass {
        warmup: plan.warmup,
        duration,
        schedule: schedule_names,
        pinned_cpu,
        measurements,
    })
}

/// Pins every thread of the servers to `cpu` for the measurement, and
/// gives them back the CPUs they had, whatever the outcome.
async fn with_servers_on_one_cpu(
    server_process_ids: &[u32],
    cpu: usize,
    measuring: UnloadedMeasuring,
) -> anyhow::Result<Vec<TargetMeasurement>> {
    // The children started with this process's CPUs, which every runtime
    // thread of this process still has.
    let every_allowed_cpu = placement::allowed_cpus()?;
    let measured = match placement::pin_processes(server_process_ids, &placement::only(cpu)?) {
        Ok(()) => measuring.run_on_a_thread_of_its_own().await,
        Err(error) => Err(error),
    };
    placement::pin_processes(server_process_ids, &every_allowed_cpu)?;
    measured
}

/// The unloaded pass's measurement, ready to move to its own thread.
struct UnloadedMeasuring {
    targets: Vec<Arc<LoadTarget>>,
    schedule: Vec<usize>,
    warmup: Duration,
    duration: Duration,
    pinned_cpu: Option<usize>,
}

impl UnloadedMeasuring {
    /// Runs on a new thread with a runtime of its own, so that the
    /// measuring loop stays on one thread (and, when pinned, on one CPU)
    /// and no other runtime thread takes its I/O.
    async fn run_on_a_thread_of_its_own(self) -> anyhow::Result<Vec<TargetMeasurement>> {
        let (result_sender, result_receiver) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("bench-unloaded".to_string())
            .spawn(move || {
                // The receiver only goes away if the benchmark is ending.
                let _ = result_sender.send(self.run_here());
            })
            .context("starting the unloaded pass's thread")?;
        result_receiver
            .await
            .context("the unloaded pass's thread ended without a result")?
    }

    fn run_here(self) -> anyhow::Result<Vec<TargetMeasurement>> {
        if let Some(cpu) = self.pinned_cpu {
            placement::pin_this_thread(&placement::only(cpu)?)?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the unloaded pass's runtime")?;
        runtime.block_on(measure_interleaved(
            &self.targets,
            &self.schedule,
            self.warmup,
            self.duration,
        ))
    }
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

async fn measure_one_round(
    target: Arc<LoadTarget>,
    round: u32,
    plan: &PassPlan,
) -> anyhow::Result<TargetMeasurement> {
    eprintln!(
        "measuring {} {} at {} connection(s), round {round} of {}: {} warm-up, {} measured",
        target.name,
        target.path,
        plan.loaded_connections,
        plan.rounds,
        HumanDuration(plan.warmup),
        HumanDuration(plan.round_duration())
    );
    let shape = LoadShape {
        connections: plan.loaded_connections,
        warmup: plan.warmup,
        duration: plan.round_duration(),
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
    fn every_other_interleaved_request_goes_to_the_baseline() {
        assert_eq!(interleaving_schedule(3, true), vec![0, 1, 0, 2]);
        assert_eq!(interleaving_schedule(2, true), vec![0, 1]);
        assert_eq!(interleaving_schedule(2, false), vec![0, 1]);
    }
}
