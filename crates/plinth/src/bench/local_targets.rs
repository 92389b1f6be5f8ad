//! The servers the benchmarks start for themselves: a `plinth serve` child
//! (enforced auth, a fresh SQLite data dir, JSON logs at the chosen level
//! written to a file, plus any settings the benchmark passes as `PLINTH_...`
//! variables) and, for `bench http`, the bare axum baseline child, all on
//! free loopback ports. Separate processes keep the servers off the load
//! generator's runtime. The children are killed when dropped, on success and
//! on error alike.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::Method;
use plinth_control::GeneratedApiKey;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::bench::bare_server::BARE_PATH;
use crate::bench::client::{Endpoint, build_request, send_once};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const STARTUP_POLL_INTERVAL: Duration = Duration::from_millis(50);
const LIVENESS_PATH: &str = "/health/live";
/// Lines of a child's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 20;
const PLINTH_ENVIRONMENT_PREFIX: &str = "PLINTH_";

/// A `plinth serve` child and the temporary directory it runs in.
pub struct LocalPlinth {
    pub endpoint: Endpoint,
    pub bootstrap_admin_key: String,
    log_path: PathBuf,
    child: Child,
    // Declared last so it is deleted after the child is killed.
    work_directory: TempDir,
}

impl LocalPlinth {
    /// Starts `plinth serve` with `settings` (pairs of `PLINTH_...` variable
    /// and value) on top of the benchmark's own, and returns once it
    /// answers HTTP.
    pub async fn start(
        log_level: &str,
        settings: &[(&str, String)],
    ) -> anyhow::Result<LocalPlinth> {
        let [listen] = free_loopback_addresses::<1>()?;
        let mut local_plinth = LocalPlinth::spawn(log_level, settings, listen)?;
        local_plinth.wait_until_answering().await?;
        Ok(local_plinth)
    }

    fn spawn(
        log_level: &str,
        settings: &[(&str, String)],
        listen: SocketAddr,
    ) -> anyhow::Result<LocalPlinth> {
        let work_directory = tempfile::Builder::new()
            .prefix("plinth-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        // A random plk_-shaped string of 256 random bits: long enough for the
        // bootstrap key rules, without another random-number dependency.
        let bootstrap_admin_key = GeneratedApiKey::generate().secret.reveal().to_string();
        let log_path = work_directory.path().join("plinth-serve.log");
        let child = spawn_plinth_serve(&PlinthServeLaunch {
            executable: &plinth_executable()?,
            work_directory: work_directory.path(),
            listen,
            bootstrap_admin_key: &bootstrap_admin_key,
            log_level,
            log_path: &log_path,
            settings,
        })?;
        Ok(LocalPlinth {
            endpoint: Endpoint::from_socket_address(listen)?,
            bootstrap_admin_key,
            log_path,
            child,
            work_directory,
        })
    }

    pub fn process_id(&self) -> Option<u32> {
        self.child.id()
    }

    /// How many bytes of logs `plinth serve` has written so far.
    pub fn log_bytes(&self) -> u64 {
        std::fs::metadata(&self.log_path)
            .map(|metadata| metadata.len())
            .unwrap_or(0)
    }

    /// Fails when the child has exited, which would make every figure after
    /// it meaningless.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "plinth serve exited with {status}; the end of its log:\n{}",
                log_tail(&self.log_path)
            );
        }
        Ok(())
    }

    /// Kills the child and removes the temporary directory.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("stopping plinth serve")?;
        self.work_directory
            .close()
            .context("removing the temporary directory")
    }

    async fn wait_until_answering(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            self.ensure_running()?;
            if answers_ok(&self.endpoint, LIVENESS_PATH).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "plinth serve did not answer within {STARTUP_TIMEOUT:?}; the end of its log:\n{}",
                    log_tail(&self.log_path)
                );
            }
            tokio::time::sleep(STARTUP_POLL_INTERVAL).await;
        }
    }
}

/// `bench http`'s children: `plinth serve` and the bare baseline.
pub struct LocalTargets {
    pub bare_endpoint: Endpoint,
    bare_child: Child,
    // Declared last: the bare server runs in its temporary directory.
    pub plinth: LocalPlinth,
}

impl LocalTargets {
    /// Starts both children and returns once both answer HTTP.
    pub async fn start(plinth_log_level: &str) -> anyhow::Result<LocalTargets> {
        let [plinth_address, bare_address] = free_loopback_addresses::<2>()?;
        let plinth = LocalPlinth::spawn(plinth_log_level, &[], plinth_address)?;
        let bare_child = spawn_bare_server(
            &plinth_executable()?,
            plinth.work_directory.path(),
            bare_address,
        )?;
        let mut local_targets = LocalTargets {
            bare_endpoint: Endpoint::from_socket_address(bare_address)?,
            bare_child,
            plinth,
        };
        local_targets.wait_until_both_answer().await?;
        Ok(local_targets)
    }

    pub fn bare_process_id(&self) -> Option<u32> {
        self.bare_child.id()
    }

    /// Fails when a child has exited, which would make every figure after it
    /// meaningless.
    pub fn ensure_both_running(&mut self) -> anyhow::Result<()> {
        self.plinth.ensure_running()?;
        if let Some(status) = self.bare_child.try_wait()? {
            anyhow::bail!("the bare server exited with {status}");
        }
        Ok(())
    }

    /// Kills both children and removes the temporary directory.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.bare_child
            .kill()
            .await
            .context("stopping the bare server")?;
        self.plinth.stop().await
    }

    async fn wait_until_both_answer(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let plinth_endpoint = self.plinth.endpoint.clone();
        let bare_endpoint = self.bare_endpoint.clone();
        loop {
            self.ensure_both_running()?;
            let plinth_answers = answers_ok(&plinth_endpoint, LIVENESS_PATH).await;
            let bare_answers = answers_ok(&bare_endpoint, BARE_PATH).await;
            if plinth_answers && bare_answers {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the servers did not answer within {STARTUP_TIMEOUT:?} (plinth serve: {plinth_answers}, bare: {bare_answers}); the end of plinth's log:\n{}",
                    log_tail(&self.plinth.log_path)
                );
            }
            tokio::time::sleep(STARTUP_POLL_INTERVAL).await;
        }
    }
}

fn plinth_executable() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the plinth executable")
}

struct PlinthServeLaunch<'a> {
    executable: &'a Path,
    work_directory: &'a Path,
    listen: SocketAddr,
    bootstrap_admin_key: &'a str,
    log_level: &'a str,
    log_path: &'a Path,
    /// `PLINTH_...` variables the benchmark sets on top of its own.
    settings: &'a [(&'a str, String)],
}

fn spawn_plinth_serve(launch: &PlinthServeLaunch<'_>) -> anyhow::Result<Child> {
    let log_file = std::fs::File::create(launch.log_path)
        .with_context(|| format!("creating {}", launch.log_path.display()))?;
    let mut command = isolated_child_command(launch.executable, launch.work_directory);
    command
        .arg("serve")
        .arg("--listen")
        .arg(launch.listen.to_string())
        .arg("--data-dir")
        .arg(launch.work_directory.join("data"))
        .arg("--log-level")
        .arg(launch.log_level)
        .env("PLINTH_AUTH__MODE", "enforced")
        .env(
            "PLINTH_AUTH__BOOTSTRAP_ADMIN_KEY",
            launch.bootstrap_admin_key,
        )
        .env("PLINTH_LOG__FORMAT", "json")
        .envs(launch.settings.iter().map(|(name, value)| (*name, value)))
        .stderr(Stdio::from(log_file));
    command.spawn().context("starting plinth serve")
}

fn spawn_bare_server(
    executable: &Path,
    work_directory: &Path,
    listen: SocketAddr,
) -> anyhow::Result<Child> {
    let mut command = isolated_child_command(executable, work_directory);
    command
        .arg("bench")
        .arg("bare-server")
        .arg("--listen")
        .arg(listen.to_string())
        .stderr(Stdio::null());
    command.spawn().context("starting the bare server")
}

/// A child that sees the default configuration plus what the benchmark
/// sets: no `plinth.toml` from the caller's directory and no `PLINTH_...`
/// variables from the caller's environment, so runs are comparable.
fn isolated_child_command(executable: &Path, work_directory: &Path) -> Command {
    let mut command = Command::new(executable);
    command
        .current_dir(work_directory)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|name| name.starts_with(PLINTH_ENVIRONMENT_PREFIX))
        {
            command.env_remove(name);
        }
    }
    command
}

/// Distinct free ports; every listener is held until all are known so the
/// kernel cannot hand out the same port twice.
pub fn free_loopback_addresses<const COUNT: usize>() -> anyhow::Result<[SocketAddr; COUNT]> {
    let mut listeners = Vec::with_capacity(COUNT);
    for _ in 0..COUNT {
        listeners.push(TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?);
    }
    let mut addresses = [SocketAddr::from(([127, 0, 0, 1], 0)); COUNT];
    for (address, listener) in addresses.iter_mut().zip(&listeners) {
        *address = listener.local_addr()?;
    }
    Ok(addresses)
}

async fn answers_ok(endpoint: &Endpoint, path: &str) -> bool {
    let Ok(request) = build_request(Method::GET, endpoint, path, Bytes::new()) else {
        return false;
    };
    match send_once(endpoint, request).await {
        Ok((status, _body)) => status.is_success(),
        Err(_) => false,
    }
}

fn log_tail(log_path: &Path) -> String {
    let Ok(contents) = std::fs::read_to_string(log_path) else {
        return format!("({} could not be read)", log_path.display());
    };
    let lines: Vec<&str> = contents.lines().collect();
    let first_kept = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[first_kept..].join("\n")
}
