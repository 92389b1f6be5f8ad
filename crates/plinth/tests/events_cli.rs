//! Black-box tests of `plinth events verify|export|import|replay`: events
//! are written through `plinth-events` into a data directory, then the real
//! binary works on that directory like an operator would.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use plinth_core::config::PlinthConfig;
use plinth_core::{Secret, TenantId};
use plinth_engines::Store;
use plinth_events::{
    AppendRequest, EVENTS_MIGRATIONS, EventStore, ExpectedVersion, NewEvent, StreamName,
};
use serde_json::{Value, json};
use support::{CommandOutput, run_plinth};

/// Appends `count` events to each (tenant, stream) into the SQLite store
/// of `data_dir`, through the crate, then closes it.
async fn write_events(data_dir: &Path, batches: &[(&str, &str, u64)]) {
    let config = PlinthConfig {
        data_dir: data_dir.to_path_buf(),
        ..PlinthConfig::default()
    };
    write_events_into(config, batches).await;
}

async fn write_events_into(config: PlinthConfig, batches: &[(&str, &str, u64)]) {
    let store = Store::open(&config).await.expect("open the store");
    store.migrate(&[&EVENTS_MIGRATIONS]).await.expect("migrate");
    let events = EventStore::new(&store, config.events.clone()).expect("event store");
    for (tenant, stream, count) in batches {
        let batch = (0..*count)
            .map(|number| NewEvent::new("Happened", json!({ "number": number })))
            .collect();
        events
            .append(
                &TenantId::parse(tenant).expect("tenant"),
                &StreamName::parse(stream).expect("stream"),
                AppendRequest::new(ExpectedVersion::Any, batch),
            )
            .await
            .expect("append");
    }
    store.close().await;
}

fn events_command(directory: &Path, data_dir: &Path, arguments: &[&str]) -> CommandOutput {
    let mut full = vec!["events"];
    full.extend_from_slice(arguments);
    full.extend_from_slice(&["--data-dir", data_dir.to_str().expect("utf-8 path")]);
    run_plinth(directory, &full, &[])
}

/// Like [`events_command`], on the PostgreSQL database at `url`.
fn events_command_on_postgres(directory: &Path, url: &str, arguments: &[&str]) -> CommandOutput {
    let mut full = vec!["events"];
    full.extend_from_slice(arguments);
    run_plinth(directory, &full, &[("PLINTH_STORAGE__URL", url)])
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn positions(records: &[Value]) -> Vec<u64> {
    records
        .iter()
        .map(|record| record["position"].as_u64().expect("position"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_tampering_exactly_and_exits_1() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let data_dir = directory.path().join("data");
    write_events(&data_dir, &[("default", "orders", 3), ("acme", "users", 2)]).await;

    let intact = events_command(directory.path(), &data_dir, &["verify"]);
    assert!(intact.status.success(), "{}", intact.all_output());
    assert!(
        intact
            .stdout
            .contains("tenant `acme`: intact: 2 events in 1 streams checked"),
        "{}",
        intact.all_output()
    );
    assert!(intact.stdout.contains("2 tenants verified, no problems"));

    let connection = rusqlite::Connection::open(data_dir.join("plinth.db")).expect("open sqlite");
    connection
        .execute(
            "UPDATE plinth_events_events SET data = '{\"number\":99}'
             WHERE tenant = 'default' AND position = 1",
            [],
        )
        .expect("tamper");
    drop(connection);

    let damaged = events_command(directory.path(), &data_dir, &["verify"]);
    assert_eq!(damaged.status.code(), Some(1), "{}", damaged.all_output());
    assert!(
        damaged.stdout.contains(
            "hash_mismatch at stream `orders`, revision 1, position 1: the stored hash does not match"
        ),
        "{}",
        damaged.all_output()
    );
    assert!(damaged.stdout.contains("tenant `acme`: intact"));
    assert!(
        damaged.stderr.contains("1 integrity problems found"),
        "{}",
        damaged.all_output()
    );
    let only_acme = events_command(directory.path(), &data_dir, &["verify", "--tenant", "acme"]);
    assert!(only_acme.status.success(), "{}", only_acme.all_output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_twice_is_idempotent() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let data_dir = directory.path().join("data");
    write_events(
        &data_dir,
        &[
            ("default", "orders", 3),
            ("default", "users", 2),
            ("acme", "users", 1),
        ],
    )
    .await;

    let to_stdout = events_command(directory.path(), &data_dir, &["export"]);
    assert!(to_stdout.status.success(), "{}", to_stdout.all_output());
    assert_eq!(
        positions(&json_lines(&to_stdout.stdout)),
        vec![0, 1, 2, 3, 4]
    );
    let one_stream = events_command(
        directory.path(),
        &data_dir,
        &["export", "--stream", "users", "--tenant", "default"],
    );
    let users = json_lines(&one_stream.stdout);
    assert_eq!(positions(&users), vec![3, 4]);
    assert!(users.iter().all(|record| record["stream"] == "users"));

    let export_file = directory.path().join("export.jsonl");
    let to_file = events_command(
        directory.path(),
        &data_dir,
        &["export", "--output", export_file.to_str().expect("utf-8")],
    );
    assert!(to_file.status.success(), "{}", to_file.all_output());
    assert!(
        to_file
            .stderr
            .contains("exported 5 events of tenant `default`")
    );

    let fresh_data_dir = directory.path().join("fresh");
    let file_argument = export_file.to_str().expect("utf-8");
    let first = events_command(
        directory.path(),
        &fresh_data_dir,
        &["import", file_argument],
    );
    assert!(first.status.success(), "{}", first.all_output());
    assert!(
        first
            .stdout
            .contains("5 events imported into tenant `default`, 0 already present"),
        "{}",
        first.all_output()
    );
    let second = events_command(
        directory.path(),
        &fresh_data_dir,
        &["import", file_argument],
    );
    assert!(
        second
            .stdout
            .contains("0 events imported into tenant `default`, 5 already present"),
        "{}",
        second.all_output()
    );
    let verified = events_command(directory.path(), &fresh_data_dir, &["verify"]);
    assert!(verified.status.success(), "{}", verified.all_output());

    std::fs::write(&export_file, "{\"not\": \"a record\"}\n").expect("write");
    let refused = events_command(
        directory.path(),
        &fresh_data_dir,
        &["import", file_argument],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused.stderr.contains("line 1 is not an export line"),
        "{}",
        refused.all_output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_prints_from_a_position_and_posts_in_order_until_a_refusal() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let data_dir = directory.path().join("data");
    write_events(
        &data_dir,
        &[("default", "orders", 4), ("default", "users", 2)],
    )
    .await;

    let printed = events_command(directory.path(), &data_dir, &["replay", "--from", "2"]);
    assert!(printed.status.success(), "{}", printed.all_output());
    assert_eq!(positions(&json_lines(&printed.stdout)), vec![2, 3, 4, 5]);
    let one_stream = events_command(
        directory.path(),
        &data_dir,
        &["replay", "--from", "1", "--stream", "users"],
    );
    assert_eq!(positions(&json_lines(&one_stream.stdout)), vec![4, 5]);

    let received = Arc::new(Mutex::new(Vec::new()));
    let url = start_receiver(Arc::clone(&received), 3).await;
    let directory_path = directory.path().to_path_buf();
    let posted = tokio::task::spawn_blocking(move || {
        events_command(
            &directory_path,
            &data_dir,
            &["replay", "--from", "0", "--to-url", &url],
        )
    })
    .await
    .expect("join");
    assert_eq!(posted.status.code(), Some(1), "{}", posted.all_output());
    assert!(
        posted.stderr.contains(
            "replay stopped at position 3 (stream `orders`, revision 3) after 3 events were delivered"
        ),
        "{}",
        posted.all_output()
    );
    assert!(
        posted.stderr.contains("500 Internal Server Error: full"),
        "{}",
        posted.all_output()
    );
    let bodies = received.lock().expect("lock").clone();
    assert_eq!(
        positions(&bodies),
        vec![0, 1, 2, 3],
        "in order, the refused one last"
    );
}

/// A local endpoint that records each body and refuses (500) the one after
/// `accepted` bodies; its URL.
async fn start_receiver(received: Arc<Mutex<Vec<Value>>>, accepted: usize) -> String {
    async fn receive(
        State((received, accepted)): State<(Arc<Mutex<Vec<Value>>>, usize)>,
        Json(body): Json<Value>,
    ) -> (StatusCode, &'static str) {
        let mut bodies = received.lock().expect("lock");
        bodies.push(body);
        if bodies.len() > accepted {
            return (StatusCode::INTERNAL_SERVER_ERROR, "full");
        }
        (StatusCode::NO_CONTENT, "")
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let router = axum::Router::new()
        .route("/events", axum::routing::post(receive))
        .with_state((received, accepted));
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    format!("http://{address}/events")
}

/// An export is the same on both stores: what PostgreSQL exported imports
/// into SQLite, and back into a fresh PostgreSQL schema, and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_moves_between_postgres_and_sqlite() {
    let test_name = "an_export_moves_between_postgres_and_sqlite";
    let Some(base_url) = support::postgres_base_url(test_name) else {
        return;
    };
    let source_url = support::isolated_postgres_url(&base_url, "cli_export_source").await;
    let target_url = support::isolated_postgres_url(&base_url, "cli_export_target").await;
    let mut source_config = PlinthConfig::default();
    source_config.storage.url = Some(Secret::new(source_url.clone()));
    write_events_into(
        source_config,
        &[("default", "orders", 3), ("default", "users", 2)],
    )
    .await;

    let directory = tempfile::tempdir().expect("temporary directory");
    let from_postgres = events_command_on_postgres(directory.path(), &source_url, &["export"]);
    assert!(
        from_postgres.status.success(),
        "{}",
        from_postgres.all_output()
    );
    let exported = json_lines(&from_postgres.stdout);
    assert_eq!(exported.len(), 5, "{}", from_postgres.stdout);
    let export_file = directory.path().join("from-postgres.jsonl");
    std::fs::write(&export_file, &from_postgres.stdout).expect("write the export");
    let file_argument = export_file.to_str().expect("utf-8");

    let sqlite_data_dir = directory.path().join("sqlite");
    let into_sqlite = events_command(
        directory.path(),
        &sqlite_data_dir,
        &["import", file_argument],
    );
    assert!(
        into_sqlite
            .stdout
            .contains("5 events imported into tenant `default`, 0 already present"),
        "{}",
        into_sqlite.all_output()
    );
    let from_sqlite = events_command(directory.path(), &sqlite_data_dir, &["export"]);
    assert_eq!(
        from_sqlite.stdout, from_postgres.stdout,
        "the same export from SQLite"
    );

    let into_postgres =
        events_command_on_postgres(directory.path(), &target_url, &["import", file_argument]);
    assert!(
        into_postgres
            .stdout
            .contains("5 events imported into tenant `default`, 0 already present"),
        "{}",
        into_postgres.all_output()
    );
    let verified = events_command_on_postgres(directory.path(), &target_url, &["verify"]);
    assert!(verified.status.success(), "{}", verified.all_output());
}
