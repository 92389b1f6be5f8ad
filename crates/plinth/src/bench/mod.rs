//! `plinth bench`: load generators that drive a node over the network like
//! a client would and print throughput and latency percentiles, next to a
//! baseline measured in the same run. One subcommand per block.

mod bare_server;
mod cache_bench;
mod cache_report;
mod client;
mod events_bench;
mod http_bench;
mod load;
mod local_targets;
mod placement;
mod process_cpu;
mod provision;
mod raw_postgres;
mod redis_baseline;
mod report;

use clap::{Args, Subcommand};
use plinth_core::config::PlinthConfig;

pub use cache_bench::CacheBenchArguments;
pub use events_bench::EventsBenchArguments;
pub use http_bench::HttpBenchArguments;

#[derive(Debug, Args)]
pub struct BenchArguments {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Drive `/v1/whoami` (full middleware stack, authenticated) and
    /// `/health/live` over keep-alive connections and compare them with a
    /// bare axum handler measured in the same run.
    ///
    /// Without `--target`, starts `plinth serve` (enforced auth, fresh data
    /// dir, logs at `--log-level`, default info, to a temporary file) and
    /// the bare handler as child processes on loopback, and kills them at
    /// the end. Children ignore `plinth.toml` and `PLINTH_...` variables.
    Http(HttpBenchArguments),
    /// Drive the cache over HTTP (GETs answered by L1, GETs answered by
    /// Redis, PUTs, an 80/20 hot-key workload; 256-byte values) and compare
    /// with `redis-benchmark` GET and SET on the same machine.
    ///
    /// Starts redis-server on a free loopback port (unless `--redis-url`)
    /// and `plinth serve` with that Redis as L2 (enforced auth, fresh data
    /// dir, logs at `--log-level`, default info, to a temporary file), and
    /// kills both at the end. Without redis-server it says so and measures
    /// what needs no Redis.
    Cache(CacheBenchArguments),
    /// Drive the event store over HTTP (appends of 1 and 100 events at 1,
    /// 16 and 64 connections, paged stream reads, SSE append-to-delivery
    /// latency) on SQLite and, with `--postgres-url`, on PostgreSQL next
    /// to raw INSERTs into it.
    ///
    /// Starts one `plinth serve` child per store (enforced auth, fresh
    /// data dir, logs at `--log-level`, default info, to a temporary file)
    /// and kills it at the end.
    Events(EventsBenchArguments),
    /// Serve one small JSON handler without any middleware on `--listen`:
    /// the baseline `bench http` starts as a child process.
    #[command(hide = true)]
    BareServer,
}

pub async fn run(config: PlinthConfig, arguments: BenchArguments) -> anyhow::Result<()> {
    match arguments.command {
        BenchCommand::Http(http_arguments) => http_bench::run(&config, http_arguments).await,
        BenchCommand::Cache(cache_arguments) => cache_bench::run(&config, cache_arguments).await,
        BenchCommand::Events(events_arguments) => {
            events_bench::run(&config, events_arguments).await
        }
        BenchCommand::BareServer => bare_server::serve(config.server.listen).await,
    }
}
