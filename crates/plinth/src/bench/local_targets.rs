//! The servers `plinth bench http` starts for itself: a `plinth serve`
//! child (enforced auth, a fresh SQLite data dir, JSON logs at the chosen
//! level written to a file) and the bare axum baseline child, both on free
//! loopback ports. Separate processes keep the servers off the load
//! generator's runtime. Both children are killed when this is dropped, on
//! success and on error alike.

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

pub struct LocalTargets {
    pub plinth_endpoint: Endpoint,
    pub bare_endpoint: Endpoint,
    pub bootstrap_admin_key: String,
    plinth_log_path: PathBuf,
    plinth_child: Child,
    bare_child: Child,
    // Declared last so it is deleted after the children are killed.
    work_directory: TempDir,
}

impl LocalTargets {
    /// Starts both children and returns once both answer HTTP.
    pub async fn start(plinth_log_level: &str) -> anyhow::Result<LocalTargets> {
        let work_directory = tempfile::Builder::new()
            .prefix("plinth-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        let executable = std::env::current_exe().context("finding the plinth executable")?;
        // A random plk_-shaped string of 256 random bits: long enough for the
        // bootstrap key rules, without another random-number dependency.
        let bootstrap_admin_key = GeneratedApiKey::generate().secret.reveal().to_string();
        let [plinth_address, bare_address] = free_loopback_addresses()?;
        let plinth_log_path = work_directory.path().join("plinth-serve.log");
        let plinth_child = spawn_plinth_serve(&PlinthServeLaunch {
            executable: &executable,
            work_directory: work_directory.path(),
            listen: plinth_address,
            bootstrap_admin_key: &bootstrap_admin_key,
            log_level: plinth_log_level,
            log_path: &plinth_log_path,
        })?;
        let bare_child = spawn_bare_server(&executable, work_directory.path(), bare_address)?;
        let mut local_targets = LocalTargets {
            plinth_endpoint: Endpoint::from_socket_address(plinth_address)?,
            bare_endpoint: Endpoint::from_socket_address(bare_address)?,
            bootstrap_admin_key,
            plinth_log_path,
            plinth_child,
            bare_child,
            work_directory,
        };
        local_targets.wait_until_both_answer().await?;
        Ok(local_targets)
    }

    pub fn plinth_process_id(&self) -> Option<u32> {
        self.plinth_child.id()
    }

    pub fn bare_process_id(&self) -> Option<u32> {
        self.bare_child.id()
    }

    /// How many bytes of logs `plinth serve` has written so far.
    pub fn plinth_log_bytes(&self) -> u64 {
        std::fs::metadata(&self.plinth_log_path)
            .map(|metadata| metadata.len())
            .unwrap_or(0)
    }

    /// Fails when a child has exited, which would make every figure after it
    /// meaningless.
    pub fn ensure_both_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.plinth_child.try_wait()? {
            anyhow::bail!(
                "plinth serve exited with {status}; the end of its log:\n{}",
                log_tail(&self.plinth_log_path)
            );
        }
        if let Some(status) = self.bare_child.try_wait()? {
            anyhow::bail!("the bare server exited with {status}");
        }
        Ok(())
    }

    /// Kills both children and removes the temporary directory.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.plinth_child
            .kill()
            .await
            .context("stopping plinth serve")?;
        self.bare_child
            .kill()
            .await
            .context("stopping the bare server")?;
        self.work_directory
            .close()
            .context("removing the temporary directory")
    }

    async fn wait_until_both_answer(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let plinth_endpoint = self.plinth_endpoint.clone();
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
                    log_tail(&self.plinth_log_path)
                );
            }
            tokio::time::sleep(STARTUP_POLL_INTERVAL).await;
        }
    }
}

struct PlinthServeLaunch<'a> {
    executable: &'a Path,
    work_directory: &'a Path,
    listen: SocketAddr,
    bootstrap_admin_key: &'a str,
    log_level: &'a str,
    log_path: &'a Path,
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

/// Two distinct free ports; both listeners are held until both are known
/// so the kernel cannot hand out the same port twice.
fn free_loopback_addresses() -> anyhow::Result<[SocketAddr; 2]> {
    let first = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    let second = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok([first.local_addr()?, second.local_addr()?])
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
