//! `plinth bench`: load generators that drive a node over the network like
//! a client would and print throughput and latency percentiles, next to a
//! baseline measured in the same run. One subcommand per block.

mod bare_server;
mod client;
mod http_bench;
mod load;
mod local_targets;
mod process_cpu;
mod provision;
mod report;

use clap::{Args, Subcommand};
use plinth_core::config::PlinthConfig;

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
    /// Serve one small JSON handler without any middleware on `--listen`:
    /// the baseline `bench http` starts as a child process.
    #[command(hide = true)]
    BareServer,
}

pub async fn run(config: PlinthConfig, arguments: BenchArguments) -> anyhow::Result<()> {
    match arguments.command {
        BenchCommand::Http(http_arguments) => http_bench::run(&config, http_arguments).await,
        BenchCommand::BareServer => bare_server::serve(config.server.listen).await,
    }
}
