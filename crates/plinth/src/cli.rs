//! Command-line arguments. Flags override `plinth.toml` and `PLINTH_...`
//! environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::bench::BenchArguments;
use crate::cache_load::CacheLoadArguments;
use crate::config_loader::ConfigSources;
use crate::events_cli::EventsArguments;

#[derive(Debug, Parser)]
#[command(
    name = "plinth",
    version,
    about = "The infrastructure layer of a backend, in one binary."
)]
pub struct Cli {
    /// Configuration file; defaults to ./plinth.toml when it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where embedded state lives (overrides `data_dir`).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (overrides `server.listen`).
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Log filter such as `info` or `plinth_server=debug` (overrides `log.level`).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node.
    Serve(ServeArguments),
    /// Apply schema migrations to the configured store and exit.
    Migrate,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Measure a running node like a client would.
    Bench(BenchArguments),
    /// Work with a running node's cache, as a client.
    Cache(CacheArguments),
    /// Verify, export, import and replay the configured event store.
    Events(EventsArguments),
}

#[derive(Debug, Args)]
pub struct CacheArguments {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Load keys from a JSON-lines file into a keyspace, through the node's
    /// bulk-put API in batches; exits with 1 when any line was rejected.
    Load(CacheLoadArguments),
}

#[derive(Debug, Args)]
pub struct ServeArguments {}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (secrets redacted) as TOML.
    Print,
}

impl Cli {
    pub fn config_sources(&self) -> ConfigSources {
        ConfigSources {
            file: self.config.clone(),
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            log_level: self.log_level.clone(),
        }
    }
}
