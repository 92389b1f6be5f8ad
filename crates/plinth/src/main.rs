//! The `plinth` binary: a thin command line over the server and blocks.

#![forbid(unsafe_code)]

mod bench;
mod cache_load;
mod cli;
mod config_loader;
mod events_cli;
mod migrate;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use plinth_core::config::PlinthConfig;

/// mimalloc rather than the system allocator: a request allocates and frees
/// many small buffers across threads, where glibc's allocator cost a fifth
/// of the server's CPU time in `plinth bench http` profiles.
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crate::cli::{CacheArguments, CacheCommand, Cli, Command, ConfigCommand};
use crate::config_loader::ConfigSources;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_sources = cli.config_sources();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Print,
        } => with_config(&config_sources, |config| config_loader::print(&config)),
        Command::Serve(_) => with_config(&config_sources, |config| run_async(serve(config))),
        Command::Migrate => with_config(&config_sources, |config| run_async(migrate::run(config))),
        Command::Bench(bench_arguments) => with_config(&config_sources, |config| {
            run_async(bench::run(config, bench_arguments))
        }),
        Command::Events(events_arguments) => with_config(&config_sources, |config| {
            run_async(events_cli::run(config, events_arguments))
        }),
        // A client of a running node: the node configuration does not
        // apply, and PLINTH_API_KEY is not one of its keys.
        Command::Cache(CacheArguments {
            command: CacheCommand::Load(load_arguments),
        }) => run_async(cache_load::run(load_arguments)),
    }
}

/// Runs a command that needs the node configuration; exits with 2 when it
/// is invalid.
fn with_config(
    sources: &ConfigSources,
    command: impl FnOnce(PlinthConfig) -> ExitCode,
) -> ExitCode {
    match config_loader::load(sources) {
        Ok(config) => command(config),
        Err(message) => {
            eprintln!("plinth: {message}");
            ExitCode::from(2)
        }
    }
}

fn run_async(future: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("plinth: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("plinth: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: PlinthConfig) -> anyhow::Result<()> {
    let telemetry_guard = telemetry::init(&config.log, &config.telemetry)?;
    let options = plinth_server::ServeOptions {
        config,
        on_listening: None,
    };
    let outcome = plinth_server::run_server(options, shutdown_signal()).await;
    telemetry_guard.shutdown();
    outcome.map_err(|error| anyhow::anyhow!("{error}"))
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
