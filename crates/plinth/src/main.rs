//! The `plinth` binary: a thin command line over the server and blocks.

#![forbid(unsafe_code)]

mod bench;
mod cli;
mod config_loader;
mod migrate;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, ConfigCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config_loader::load(&cli.config_sources()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("plinth: {message}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config {
            command: ConfigCommand::Print,
        } => config_loader::print(&config),
        Command::Serve(_) => run_async(serve(config)),
        Command::Migrate => run_async(migrate::run(config)),
        Command::Bench(bench_arguments) => run_async(bench::run(config, bench_arguments)),
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

async fn serve(config: plinth_core::config::PlinthConfig) -> anyhow::Result<()> {
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
