//! Black-box tests of the node's life: the command line (`--version`,
//! `config print`, `migrate`), configuration errors, health, readiness,
//! metrics, graceful shutdown and restart, and a node on PostgreSQL.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::{BOOTSTRAP_KEY, Node, NodeOptions, free_loopback_port, run_plinth};

#[test]
fn version_is_printed() {
    let directory = tempfile::tempdir().unwrap();
    let output = run_plinth(directory.path(), &["--version"], &[]);
    assert!(output.status.success(), "{}", output.all_output());
    assert_eq!(
        output.stdout.trim(),
        format!("plinth {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn config_print_shows_overrides_and_redacts_secrets() {
    let directory = tempfile::tempdir().unwrap();
    let output = run_plinth(
        directory.path(),
        &["--log-level", "debug", "config", "print"],
        &[
            ("PLINTH_SERVER__MAX_BODY_BYTES", "2048"),
            ("PLINTH_AUTH__MODE", "enforced"),
            ("PLINTH_AUTH__BOOTSTRAP_ADMIN_KEY", BOOTSTRAP_KEY),
            ("PLINTH_STORAGE__URL", "postgres://u:sekret@127.0.0.1:1/db"),
            ("PLINTH_AUTH__JWT__HS256_SECRET", "jwt-shared-secret-value"),
        ],
    );
    assert!(output.status.success(), "{}", output.all_output());
    let printed: toml::Value = toml::from_str(&output.stdout)
        .unwrap_or_else(|error| panic!("config print is not TOML ({error}): {}", output.stdout));
    assert_eq!(printed["server"]["max_body_bytes"].as_integer(), Some(2048));
    assert_eq!(printed["auth"]["mode"].as_str(), Some("enforced"));
    assert_eq!(printed["log"]["level"].as_str(), Some("debug"));
    assert_eq!(
        printed["auth"]["bootstrap_admin_key"].as_str(),
        Some("***redacted***")
    );
    assert_eq!(printed["storage"]["url"].as_str(), Some("***redacted***"));
    assert_eq!(
        printed["auth"]["jwt"]["hs256_secret"].as_str(),
        Some("***redacted***")
    );
    for secret in [BOOTSTRAP_KEY, "sekret", "jwt-shared-secret-value"] {
        assert!(
            !output.all_output().contains(secret),
            "`{secret}` was printed: {}",
            output.all_output()
        );
    }
}

#[test]
fn config_file_and_flags_are_layered() {
    let directory = tempfile::tempdir().unwrap();
    let config_path = directory.path().join("custom.toml");
    std::fs::write(
        &config_path,
        "[server]\nmax_body_bytes = 4096\nrequest_timeout = \"5s\"\n[log]\nlevel = \"warn\"\n",
    )
    .unwrap();
    let output = run_plinth(
        directory.path(),
        &[
            "--config",
            config_path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9999",
            "config",
            "print",
        ],
        &[("PLINTH_SERVER__MAX_BODY_BYTES", "8192")],
    );
    assert!(output.status.success(), "{}", output.all_output());
    let printed: toml::Value = toml::from_str(&output.stdout).unwrap();
    // Environment beats the file; flags beat both; the file beats defaults.
    assert_eq!(printed["server"]["max_body_bytes"].as_integer(), Some(8192));
    assert_eq!(printed["server"]["listen"].as_str(), Some("127.0.0.1:9999"));
    assert_eq!(printed["server"]["request_timeout"].as_str(), Some("5s"));
    assert_eq!(printed["log"]["level"].as_str(), Some("warn"));

    // ./plinth.toml is read when no --config is given.
    std::fs::write(
        directory.path().join("plinth.toml"),
        "[server]\nmax_body_bytes = 3333\n",
    )
    .unwrap();
    let output = run_plinth(directory.path(), &["config", "print"], &[]);
    assert!(output.status.success(), "{}", output.all_output());
    let printed: toml::Value = toml::from_str(&output.stdout).unwrap();
    assert_eq!(printed["server"]["max_body_bytes"].as_integer(), Some(3333));
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    let directory = tempfile::tempdir().unwrap();
    let config_path = directory.path().join("typo.toml");
    std::fs::write(&config_path, "[server]\nlisen = 1\n").unwrap();
    let from_file = run_plinth(
        directory.path(),
        &["--config", config_path.to_str().unwrap(), "config", "print"],
        &[],
    );
    assert!(!from_file.status.success(), "{}", from_file.all_output());
    assert!(
        from_file.stderr.contains("lisen"),
        "{}",
        from_file.all_output()
    );

    let from_environment = run_plinth(
        directory.path(),
        &["config", "print"],
        &[("PLINTH_SERVER__LISEN", "1")],
    );
    assert!(
        !from_environment.status.success(),
        "{}",
        from_environment.all_output()
    );
    assert!(
        from_environment.stderr.contains("lisen"),
        "{}",
        from_environment.all_output()
    );

    let missing_file = run_plinth(
        directory.path(),
        &["--config", "does-not-exist.toml", "config", "print"],
        &[],
    );
    assert!(!missing_file.status.success());
    assert!(
        missing_file.stderr.contains("does-not-exist.toml"),
        "{}",
        missing_file.all_output()
    );

    let bad_duration = run_plinth(
        directory.path(),
        &["config", "print"],
        &[("PLINTH_SERVER__SHUTDOWN_TIMEOUT", "soon")],
    );
    assert!(!bad_duration.status.success());
    assert!(
        bad_duration.stderr.contains("shutdown_timeout"),
        "{}",
        bad_duration.all_output()
    );
}

/// `scripts/test.sh` exports `PLINTH_TEST_...` variables for the tests; the
/// binary documents that they are not configuration, so a node started
/// from a test run must not trip over them.
#[test]
fn test_script_variables_are_not_configuration() {
    let directory = tempfile::tempdir().unwrap();
    let output = run_plinth(
        directory.path(),
        &["config", "print"],
        &[
            (
                "PLINTH_TEST_POSTGRES_URL",
                "postgres://plinth@127.0.0.1:1/x",
            ),
            ("PLINTH_TEST_REQUIRE_ENGINES", "1"),
        ],
    );
    assert!(output.status.success(), "{}", output.all_output());
}

#[test]
fn migrate_applies_once_then_reports_up_to_date() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let arguments = ["--data-dir", data_dir.to_str().unwrap(), "migrate"];
    let first = run_plinth(directory.path(), &arguments, &[]);
    assert!(first.status.success(), "{}", first.all_output());
    assert!(first.stdout.contains("applied ["), "{}", first.all_output());
    assert!(data_dir.join("plinth.db").exists());

    let second = run_plinth(directory.path(), &arguments, &[]);
    assert!(second.status.success(), "{}", second.all_output());
    assert!(
        second.stdout.contains("up to date"),
        "{}",
        second.all_output()
    );
    assert!(
        !second.stdout.contains("applied ["),
        "{}",
        second.all_output()
    );
}

#[tokio::test]
async fn sigterm_stops_the_node_cleanly_and_a_restart_keeps_the_data() {
    let mut node =
        Node::start(NodeOptions::enforced().env("PLINTH_SERVER__SHUTDOWN_TIMEOUT", "5s")).await;
    let admin = node.admin();
    admin.create_tenant("survivor").await;
    let key = admin.create_tenant_key("survivor", &["keys:read"]).await;

    let stopping = Instant::now();
    let status = node.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.logs()
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        stopping.elapsed()
    );
    let logs = node.logs();
    assert!(logs.contains("shutdown requested"), "{logs}");
    assert!(logs.contains("plinth stopped"), "{logs}");

    node.restart().await;
    let tenant = node.admin().get("/v1/admin/tenants/survivor").await;
    assert_eq!(tenant.status, 200, "{}", tenant.text());
    let who = node
        .anonymous()
        .with_token(&key.secret)
        .get("/v1/whoami")
        .await;
    assert_eq!(who.status, 200, "{}", who.text());
    assert_eq!(who.json()["tenant"], "survivor");
}

#[tokio::test]
async fn a_killed_node_restarts_with_everything_it_acknowledged() {
    let mut node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    for tenant in ["k1", "k2", "k3"] {
        admin.create_tenant(tenant).await;
    }
    node.kill();
    node.restart().await;
    let tenants = node.admin().get("/v1/admin/tenants").await.json();
    let ids: Vec<&str> = tenants["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tenant| tenant["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["default", "k1", "k2", "k3"]);
}

fn dependency<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .find(|dependency| dependency["name"] == name)
        .unwrap_or_else(|| panic!("no {name} dependency in {report}"))
}

#[tokio::test]
async fn health_and_readiness_report_the_embedded_store() {
    let node = Node::start(NodeOptions::enforced()).await;
    let api = node.anonymous();

    let live = api.get("/health/live").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.json(), json!({ "status": "alive" }));

    let ready = api.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let report = ready.json();
    assert_eq!(report["status"], "ready");
    assert_eq!(dependency(&report, "sqlite")["status"], "up");

    let health = api.get("/health").await;
    assert_eq!(health.status, 200);
    let report = health.json();
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    assert!(report["uptime_seconds"].is_u64(), "{report}");
    let sqlite = dependency(&report, "sqlite");
    assert_eq!(sqlite["status"], "up", "{sqlite}");
    assert!(sqlite["breaker"].is_object(), "{sqlite}");
    assert!(sqlite["latency_ms"].is_number(), "{sqlite}");
    let history = sqlite["history"].as_array().expect("history");
    assert!(!history.is_empty(), "{sqlite}");
    assert!(
        history.iter().all(|check| check["status"] == "up"),
        "{sqlite}"
    );
}

/// The value of the first sample line of `metric` whose labels contain
/// every fragment.
fn sample_value(metrics: &str, metric: &str, label_fragments: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(metric) && !line.starts_with('#'))
        .find(|line| {
            label_fragments
                .iter()
                .all(|fragment| line.contains(fragment))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test]
async fn metrics_use_route_templates_and_publish_the_documented_families() {
    let node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("alpha").await;
    let key = admin
        .create_tenant_key("alpha", &["keys:read", "keys:write"])
        .await;
    let tenant_api = node.anonymous().with_token(&key.secret);
    for _ in 0..3 {
        assert_eq!(tenant_api.get("/v1/whoami").await.status, 200);
    }
    assert_eq!(
        tenant_api.get(&format!("/v1/keys/{}", key.id)).await.status,
        200
    );
    assert_eq!(node.anonymous().get("/v1/whoami").await.status, 401);

    let reply = node.anonymous().get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|content_type| content_type.starts_with("text/plain"))
    );
    let metrics = reply.text();
    let whoami_ok = sample_value(
        &metrics,
        "plinth_http_requests_total",
        &[
            r#"route="/v1/whoami""#,
            r#"status="200""#,
            r#"method="GET""#,
        ],
    );
    assert_eq!(whoami_ok, Some(3.0), "{metrics}");
    assert!(
        metrics.contains(r#"route="/v1/keys/{key_id}""#),
        "the key route template is missing:\n{metrics}"
    );
    assert!(
        !metrics.contains(&key.id),
        "a raw key id is a metric label:\n{metrics}"
    );
    for family in [
        "plinth_http_request_duration_seconds_bucket",
        "plinth_breaker_state",
        "plinth_build_info",
        "plinth_auth_failures_total",
    ] {
        assert!(
            metrics.lines().any(|line| line.starts_with(family)),
            "{family} is missing:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"))),
        "{metrics}"
    );
    let unmatched = node.anonymous().get("/no/such/route/12345").await;
    assert_eq!(unmatched.status, 404);
    let metrics = node.anonymous().get("/metrics").await.text();
    assert!(
        !metrics.contains("/no/such/route/12345"),
        "a raw unknown path is a metric label:\n{metrics}"
    );
}

#[tokio::test]
async fn a_node_on_postgres_serves_and_audits() {
    let Some(base_url) = support::postgres_base_url("a_node_on_postgres_serves_and_audits") else {
        return;
    };
    let url = support::isolated_postgres_url(&base_url, "blackbox_pg_roundtrip").await;

    let directory = tempfile::tempdir().unwrap();
    let migrate = run_plinth(
        directory.path(),
        &["migrate"],
        &[("PLINTH_STORAGE__URL", &url)],
    );
    assert!(migrate.status.success(), "{}", migrate.all_output());
    assert!(
        migrate.stdout.contains("applied ["),
        "{}",
        migrate.all_output()
    );

    let mut node = Node::start(NodeOptions::enforced().env("PLINTH_STORAGE__URL", &url)).await;
    let health = node.anonymous().get("/health").await.json();
    assert_eq!(dependency(&health, "postgres")["status"], "up", "{health}");
    assert_eq!(node.anonymous().get("/health/ready").await.status, 200);

    let admin = node.admin();
    admin.create_tenant("pg-tenant").await;
    let key = admin
        .create_tenant_key("pg-tenant", &["keys:read", "keys:write"])
        .await;
    let tenant_api = node.anonymous().with_token(&key.secret);
    assert_eq!(
        tenant_api.get("/v1/whoami").await.json()["tenant"],
        "pg-tenant"
    );
    let revoked = admin
        .delete(&format!("/v1/admin/tenants/pg-tenant/keys/{}", key.id))
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(tenant_api.get("/v1/whoami").await.status, 401);

    let actions: Vec<String> = admin.get("/v1/admin/audit").await.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action"].as_str().unwrap().to_string())
        .collect();
    for action in ["tenant.create", "key.create", "key.revoke"] {
        assert!(actions.iter().any(|seen| seen == action), "{actions:?}");
    }

    let status = node.terminate();
    assert!(status.success(), "{status}");
    node.restart().await;
    assert_eq!(
        node.admin().get("/v1/admin/tenants/pg-tenant").await.status,
        200
    );
}

#[test]
fn a_node_whose_postgres_is_unreachable_exits_with_a_clear_error() {
    let directory = tempfile::tempdir().unwrap();
    let unreachable = format!(
        "postgres://plinth:pg-password-not-to-print@127.0.0.1:{}/plinth",
        free_loopback_port()
    );
    let listen = format!("127.0.0.1:{}", free_loopback_port());
    let started = Instant::now();
    let output = run_plinth(
        directory.path(),
        &["serve", "--listen", &listen],
        &[
            ("PLINTH_STORAGE__URL", unreachable.as_str()),
            ("PLINTH_ENGINES__CALL_TIMEOUT", "1s"),
            ("PLINTH_STORAGE__POSTGRES__ACQUIRE_TIMEOUT", "1s"),
        ],
    );
    assert!(!output.status.success(), "{}", output.all_output());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        output.stderr.to_lowercase().contains("postgres"),
        "the error should name the engine: {}",
        output.all_output()
    );
    assert!(
        !output.all_output().contains("pg-password-not-to-print"),
        "the password was printed: {}",
        output.all_output()
    );
}

#[test]
fn a_port_in_use_is_a_clear_startup_error() {
    let directory = tempfile::tempdir().unwrap();
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = occupied.local_addr().unwrap().to_string();
    let data_dir = directory.path().join("data");
    let output = run_plinth(
        directory.path(),
        &[
            "serve",
            "--listen",
            &address,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!output.status.success(), "{}", output.all_output());
    assert!(
        output.stderr.contains("cannot listen") && output.stderr.contains(&address),
        "{}",
        output.all_output()
    );
}

#[tokio::test]
async fn sigterm_drains_a_request_in_flight() {
    let mut node =
        Node::start(NodeOptions::enforced().env("PLINTH_SERVER__SHUTDOWN_TIMEOUT", "5s")).await;
    let (mut stream, rest_of_body) = node.start_half_sent_tenant_creation("drained").await;

    node.send_sigterm();
    node.wait_for_log_record(|record| {
        record["fields"]["message"]
            .as_str()
            .is_some_and(|message| message.starts_with("shutdown requested"))
    })
    .await;
    stream.write_all(&rest_of_body).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 201"),
        "the in-flight request was not completed: {response:?}\nlog:\n{}",
        node.logs()
    );
    let status = node.wait_for_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}; log:\n{}", node.logs());

    node.restart().await;
    let tenant = node.admin().get("/v1/admin/tenants/drained").await;
    assert_eq!(tenant.status, 200, "{}", tenant.text());
}

#[tokio::test]
async fn a_request_that_never_finishes_does_not_hold_up_shutdown() {
    let mut node =
        Node::start(NodeOptions::enforced().env("PLINTH_SERVER__SHUTDOWN_TIMEOUT", "1s")).await;
    let (_stream, _never_sent) = node.start_half_sent_tenant_creation("stuck").await;
    let stopping = Instant::now();
    node.send_sigterm();
    let _status = node.wait_for_exit(Duration::from_secs(8));
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "shutdown with a 1s drain took {:?}",
        stopping.elapsed()
    );
    assert!(
        node.logs().contains("did not finish in time"),
        "{}",
        node.logs()
    );
}

#[tokio::test]
async fn concurrent_writes_are_all_acknowledged_and_kept() {
    const WRITERS: usize = 24;
    let mut node = Node::start(NodeOptions::enforced()).await;
    let admin = node.admin();
    admin.create_tenant("busy").await;
    let mut writers = tokio::task::JoinSet::new();
    for index in 0..WRITERS {
        let admin = admin.clone();
        writers.spawn(async move {
            admin
                .post_json(
                    "/v1/admin/tenants/busy/keys",
                    &json!({ "name": format!("writer {index}"), "scopes": ["keys:read"] }),
                )
                .await
                .status
        });
    }
    let statuses = writers.join_all().await;
    assert!(statuses.iter().all(|status| *status == 201), "{statuses:?}");

    node.kill();
    node.restart().await;
    let keys = node
        .admin()
        .get("/v1/admin/tenants/busy/keys?limit=500")
        .await
        .json();
    assert_eq!(keys["items"].as_array().unwrap().len(), WRITERS, "{keys}");
}
