//! Test support for the black-box tests: starts the real `plinth` binary
//! (the one cargo built for this test run) in a temporary directory on a
//! free loopback port, captures its stderr to a file the tests can grep,
//! and drives it over HTTP like a client would.
//!
//! A started [`Node`] is killed with SIGKILL when dropped, unless the test
//! stopped it itself with [`Node::terminate`] (SIGTERM). Every wait here is
//! bounded, so a hung node fails the test instead of hanging the suite.

// Each test file compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The bootstrap admin key every enforced-mode node in these tests gets.
pub const BOOTSTRAP_KEY: &str = "bootstrap-admin-key-for-black-box-tests-7f3a9c";

/// How long a node may take to answer `/health/live` after it was spawned.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped node may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a one-shot command (`config print`, `migrate`) may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of every HTTP request the tests make.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two polls of something the tests wait for.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Name of the file the node's stderr (its log) goes to.
const LOG_FILE_NAME: &str = "plinth.stderr.log";

/// The path of the `plinth` binary cargo built for these tests.
pub fn plinth_binary() -> &'static str {
    env!("CARGO_BIN_EXE_plinth")
}

/// A free TCP port on 127.0.0.1 (free when this returns; the node binds it
/// right after).
pub fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A command for the `plinth` binary that sees none of the caller's
/// `PLINTH_...` configuration variables (only what the test passes), runs
/// in `working_directory` (so no stray `./plinth.toml` is read).
fn plinth_command(working_directory: &Path, environment: &[(String, String)]) -> Command {
    let mut command = Command::new(plinth_binary());
    command.current_dir(working_directory);
    for (name, _) in std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value)))
        .filter(|(name, _)| name.starts_with("PLINTH_"))
    {
        command.env_remove(name);
    }
    for (name, value) in environment {
        command.env(name, value);
    }
    command.stdin(Stdio::null());
    command
}

/// What a one-shot `plinth` command printed and how it exited.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// Both streams, for assertion messages and greps.
    pub fn all_output(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

/// Runs `plinth ARGS...` to completion (bounded by [`COMMAND_TIMEOUT`]) in
/// `working_directory` with exactly the given `PLINTH_...` variables.
pub fn run_plinth(
    working_directory: &Path,
    arguments: &[&str],
    environment: &[(&str, &str)],
) -> CommandOutput {
    let environment: Vec<(String, String)> = environment
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let stdout_path = working_directory.join(format!("command-{}.stdout", unique_suffix()));
    let stderr_path = working_directory.join(format!("command-{}.stderr", unique_suffix()));
    let mut child = plinth_command(working_directory, &environment)
        .args(arguments)
        .stdout(File::create(&stdout_path).expect("create stdout file"))
        .stderr(File::create(&stderr_path).expect("create stderr file"))
        .spawn()
        .expect("spawn plinth");
    let status = wait_for_exit(&mut child, COMMAND_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("plinth {arguments:?} did not finish within {COMMAND_TIMEOUT:?}");
    });
    CommandOutput {
        status,
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `child` until it exits or `timeout` passes.
fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll the child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// How to start a node: its `PLINTH_...` variables and extra flags.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    environment: Vec<(String, String)>,
    arguments: Vec<String>,
}

impl NodeOptions {
    /// Defaults: embedded SQLite, auth in dev mode.
    pub fn dev() -> Self {
        NodeOptions::default()
    }

    /// Auth enforced, with [`BOOTSTRAP_KEY`] as the bootstrap admin key.
    pub fn enforced() -> Self {
        NodeOptions::default()
            .env("PLINTH_AUTH__MODE", "enforced")
            .env("PLINTH_AUTH__BOOTSTRAP_ADMIN_KEY", BOOTSTRAP_KEY)
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.environment.retain(|(existing, _)| existing != name);
        self.environment.push((name.to_string(), value.to_string()));
        self
    }

    pub fn argument(mut self, argument: &str) -> Self {
        self.arguments.push(argument.to_string());
        self
    }
}

/// A running `plinth serve`, its temporary directory and its log.
pub struct Node {
    directory: TempDir,
    options: NodeOptions,
    child: Option<Child>,
    address: SocketAddr,
    http: reqwest::Client,
}

impl Node {
    /// Starts a node and waits until `/health/live` answers 200.
    ///
    /// # Panics
    /// When the node exits or does not answer within [`STARTUP_TIMEOUT`];
    /// the message holds its log.
    pub async fn start(options: NodeOptions) -> Node {
        let directory = tempfile::Builder::new()
            .prefix("plinth-blackbox-")
            .tempdir()
            .expect("create a temporary directory");
        Self::start_in(directory, options).await
    }

    /// Starts a node whose data directory and log live in `directory`.
    pub async fn start_in(directory: TempDir, options: NodeOptions) -> Node {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(HTTP_TIMEOUT)
            .build()
            .expect("build the HTTP client");
        let mut node = Node {
            directory,
            options,
            child: None,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            http,
        };
        node.spawn_and_wait().await;
        node
    }

    /// Starts the node again (same directory, same options, a new port)
    /// after it was stopped.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node before restarting it");
        self.spawn_and_wait().await;
    }

    /// Spawns `plinth serve` on a free port and waits until it is live.
    /// The port is free when picked but another process may take it before
    /// the node binds it: that attempt is then retried on another port.
    async fn spawn_and_wait(&mut self) {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let log_length_before = self.logs().len();
            self.spawn_on_free_port();
            match self.wait_until_live().await {
                Ok(()) => return,
                Err(status) => {
                    let this_run = self.logs()[log_length_before..].to_string();
                    if attempt < ATTEMPTS && this_run.contains("cannot listen") {
                        continue;
                    }
                    panic!(
                        "plinth serve exited during startup with {status}; log:\n{}",
                        self.logs()
                    );
                }
            }
        }
    }

    fn spawn_on_free_port(&mut self) {
        self.address = SocketAddr::from(([127, 0, 0, 1], free_loopback_port()));
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the log file");
        let mut command = plinth_command(self.directory.path(), &self.options.environment);
        command
            .arg("serve")
            .arg("--listen")
            .arg(self.address.to_string())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.options.arguments)
            .stdout(Stdio::null())
            .stderr(log_file);
        self.child = Some(command.spawn().expect("spawn plinth serve"));
    }

    /// Polls `/health/live` until it answers 200; `Err` with the exit
    /// status when the process exits first.
    ///
    /// # Panics
    /// When the node does not answer within [`STARTUP_TIMEOUT`].
    async fn wait_until_live(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let live_url = self.url("/health/live");
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("poll plinth serve") {
                self.child = None;
                return Err(status);
            }
            let answer = self
                .http
                .get(&live_url)
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if let Ok(response) = answer
                && response.status() == 200
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!(
                    "plinth serve did not answer /health/live within {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("the node is running")
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.send_sigterm();
        self.wait_for_exit(EXIT_TIMEOUT)
    }

    /// Sends SIGTERM without waiting; see [`Node::wait_for_exit`].
    pub fn send_sigterm(&mut self) {
        let pid = self.child_mut().id();
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
    }

    /// Waits (bounded by `timeout`) for the process to exit.
    ///
    /// # Panics
    /// When it is still running after `timeout` (it is then killed).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let status = wait_for_exit(self.child_mut(), timeout);
        let mut child = self.child.take().expect("the node is running");
        match status {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "plinth serve did not exit within {timeout:?}; log:\n{}",
                    self.logs()
                );
            }
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The temporary directory the node runs in (its working directory).
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.directory.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.directory.path().join(LOG_FILE_NAME)
    }

    /// Everything the node wrote to stderr so far (every run of it).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log lines that are JSON objects, parsed.
    pub fn log_records(&self) -> Vec<Value> {
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Polls the log until a record satisfies `predicate` (bounded: the
    /// access-log line is written just after the response goes out).
    pub async fn wait_for_log_record(&self, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(record) = self
                .log_records()
                .into_iter()
                .find(|record| predicate(record))
            {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "no matching log record within 5s; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The value of the `plinth_http_requests_in_flight` gauge.
    pub async fn requests_in_flight(&self) -> f64 {
        let metrics = self.anonymous().get("/metrics").await.text();
        metrics
            .lines()
            .find(|line| line.starts_with("plinth_http_requests_in_flight "))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    }

    /// Opens a connection and sends, as the bootstrap admin, a tenant
    /// creation whose body is only half there; returns once the node is
    /// serving it (the in-flight gauge counts it besides the `/metrics`
    /// request that reads the gauge), with the rest of the body to send.
    pub async fn start_half_sent_tenant_creation(&self, tenant: &str) -> (TcpStream, Vec<u8>) {
        let body = format!(r#"{{"id":"{tenant}"}}"#).into_bytes();
        let mut stream = TcpStream::connect(self.address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a read timeout");
        let head = format!(
            "POST /v1/admin/tenants HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {BOOTSTRAP_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.address,
            body.len()
        );
        let (first_half, second_half) = body.split_at(body.len() / 2);
        stream.write_all(head.as_bytes()).expect("send the head");
        stream.write_all(first_half).expect("send half the body");
        stream.flush().expect("flush");
        let in_flight = eventually(Duration::from_secs(5), || async {
            self.requests_in_flight().await >= 2.0
        })
        .await;
        assert!(in_flight, "the half-sent request never reached the node");
        (stream, second_half.to_vec())
    }

    /// A client without credentials.
    pub fn anonymous(&self) -> Api {
        Api {
            http: self.http.clone(),
            base_url: self.base_url(),
            token: None,
        }
    }

    /// A client that sends [`BOOTSTRAP_KEY`].
    pub fn admin(&self) -> Api {
        self.anonymous().with_token(BOOTSTRAP_KEY)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client for one node, optionally with a bearer credential.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl Api {
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// A request to `path` with this client's credential, to customise.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn send(&self, builder: reqwest::RequestBuilder) -> Reply {
        let response = builder.send().await.expect("send the HTTP request");
        Reply::read(response).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Creates a tenant through the admin API; panics unless 201.
    pub async fn create_tenant(&self, tenant: &str) -> Value {
        let reply = self
            .post_json("/v1/admin/tenants", &json!({ "id": tenant }))
            .await;
        assert_eq!(
            reply.status,
            201,
            "create tenant {tenant}: {}",
            reply.text()
        );
        reply.json()
    }

    /// Creates a key for `tenant` through the admin API; panics unless 201.
    pub async fn create_tenant_key(&self, tenant: &str, scopes: &[&str]) -> CreatedKey {
        self.create_key_at(
            &format!("/v1/admin/tenants/{tenant}/keys"),
            &json!({ "name": "black-box test key", "scopes": scopes }),
        )
        .await
    }

    /// Creates a key in the caller's own tenant (`POST /v1/keys`).
    pub async fn create_own_key(&self, scopes: &[&str]) -> CreatedKey {
        self.create_key_at("/v1/keys", &json!({ "name": "own key", "scopes": scopes }))
            .await
    }

    async fn create_key_at(&self, path: &str, body: &Value) -> CreatedKey {
        let reply = self.post_json(path, body).await;
        assert_eq!(reply.status, 201, "create key at {path}: {}", reply.text());
        let document = reply.json();
        CreatedKey {
            id: document["id"].as_str().expect("key id").to_string(),
            secret: document["secret"].as_str().expect("key secret").to_string(),
        }
    }
}

/// A key as its creation answered it.
#[derive(Clone, Debug)]
pub struct CreatedKey {
    pub id: String,
    pub secret: String,
}

/// A whole HTTP response, read into memory.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    async fn read(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .expect("read the response body")
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (showing the body) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "status {} body is not JSON ({error}): {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("header is ASCII").to_string())
    }

    /// Asserts this is a problem document with `status` and `code`, with
    /// every required field and the request id of the response; returns it.
    pub fn expect_problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}, got: {}",
            self.text()
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "problem content type for {}",
            self.text()
        );
        let document = self.json();
        assert_eq!(document["code"], code, "{document}");
        assert_eq!(document["status"], status, "{document}");
        assert_eq!(
            document["type"],
            format!("urn:plinth:problem:{code}"),
            "{document}"
        );
        assert!(
            document["title"]
                .as_str()
                .is_some_and(|title| !title.is_empty()),
            "{document}"
        );
        assert!(
            document["detail"]
                .as_str()
                .is_some_and(|detail| !detail.is_empty()),
            "{document}"
        );
        let request_id = self.header("x-request-id").expect("x-request-id header");
        assert_eq!(document["request_id"], request_id.as_str(), "{document}");
        document
    }

    /// The `detail` of a problem document.
    pub fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A base PostgreSQL URL for this test, or `None` after printing that the
/// test is skipped (outside `scripts/test.sh`).
///
/// # Panics
/// When `PLINTH_TEST_REQUIRE_ENGINES=1` and no URL is set.
pub fn postgres_base_url(test_name: &str) -> Option<String> {
    plinth_engines::test_support::postgres_url(test_name)
}

/// A PostgreSQL URL whose `search_path` is a fresh schema of its own.
pub async fn isolated_postgres_url(base_url: &str, test_name: &str) -> String {
    plinth_engines::test_support::isolated_postgres_url(base_url, test_name).await
}

/// Polls `condition` (an async check) until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether `text` looks like a UUID (8-4-4-4-12 hex digits).
pub fn looks_like_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, length)| {
            group.len() == length && group.bytes().all(|byte| byte.is_ascii_hexdigit())
        })
}
