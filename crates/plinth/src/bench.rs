//! `plinth bench`: load generators that drive a node over the network.

use clap::Args;
use plinth_core::config::PlinthConfig;

#[derive(Debug, Args)]
pub struct BenchArguments {}

pub async fn run(_config: PlinthConfig, _arguments: BenchArguments) -> anyhow::Result<()> {
    anyhow::bail!("bench is being written")
}
