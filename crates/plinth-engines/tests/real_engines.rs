//! The engine connections against real PostgreSQL and Redis servers: pool
//! behaviour, pipelined transactions, migrations, breaker trips on outage,
//! and recovery after Redis comes back. Under `scripts/test.sh` these run
//! for real; a plain `cargo test` skips them and says so.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use plinth_core::config::PostgresConfig;
use plinth_core::resilience::{BreakerConfig, BreakerState, CircuitBreaker};
use plinth_core::{ErrorKind, HumanDuration};
use plinth_engines::postgres_transaction::{COMMIT, PipelinedTransaction};
use plinth_engines::test_support::{isolated_postgres_url, postgres_url, redis_url};
use plinth_engines::{HealthProbe, Migration, MigrationSet, PostgresEngine, RedisEngine, Store};

static TEST_MIGRATIONS: MigrationSet = MigrationSet {
    component: "engine_test",
    migrations: &[
        Migration {
            version: 1,
            name: "create widgets",
            sqlite: "CREATE TABLE widgets (id INTEGER PRIMARY KEY)",
            postgres: "CREATE TABLE widgets (id BIGINT PRIMARY KEY)",
        },
        Migration {
            version: 2,
            name: "add widget names",
            sqlite: "ALTER TABLE widgets ADD COLUMN name TEXT",
            postgres: "ALTER TABLE widgets ADD COLUMN name TEXT",
        },
    ],
};

static EDITED_MIGRATIONS: MigrationSet = MigrationSet {
    component: "engine_test",
    migrations: &[Migration {
        version: 1,
        name: "create widgets",
        sqlite: "CREATE TABLE widgets (id INTEGER PRIMARY KEY, edited INTEGER)",
        postgres: "CREATE TABLE widgets (id BIGINT PRIMARY KEY, edited INTEGER)",
    }],
};

fn quick_breaker(name: &str) -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::new(
        name,
        BreakerConfig {
            consecutive_failures: 2,
            open_timeout: HumanDuration::from_millis(200),
            ..BreakerConfig::default()
        },
    ))
}

async fn connect_postgres(test_name: &str) -> Option<Arc<PostgresEngine>> {
    let base_url = postgres_url(test_name)?;
    let url = isolated_postgres_url(&base_url, test_name).await;
    let config = PostgresConfig {
        pool_min_size: 2,
        pool_max_size: 4,
        acquire_timeout: HumanDuration::from_millis(500),
        ..PostgresConfig::default()
    };
    let engine = PostgresEngine::connect(
        &url,
        &config,
        quick_breaker("postgres"),
        Duration::from_secs(5),
    )
    .await
    .expect("connect to the test postgres");
    Some(engine)
}

#[tokio::test]
async fn postgres_migrations_apply_once_and_refuse_edited_history() {
    let Some(engine) = connect_postgres("postgres_migrations").await else {
        return;
    };
    let store = Store::Postgres(engine);
    let first = store.migrate(&[&TEST_MIGRATIONS]).await.unwrap();
    assert_eq!(first[0].newly_applied, vec![1, 2]);
    let second = store.migrate(&[&TEST_MIGRATIONS]).await.unwrap();
    assert!(second[0].newly_applied.is_empty());
    assert_eq!(second[0].already_applied, 2);
    let edited = store.migrate(&[&EDITED_MIGRATIONS]).await.unwrap_err();
    assert!(
        edited
            .detail()
            .contains("already applied with different SQL"),
        "{}",
        edited.detail()
    );
}

#[tokio::test]
async fn postgres_concurrent_migrators_apply_each_migration_once() {
    let Some(engine) = connect_postgres("postgres_concurrent_migrate").await else {
        return;
    };
    let store = Store::Postgres(engine);
    let mut runs = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        runs.push(tokio::spawn(async move {
            store.migrate(&[&TEST_MIGRATIONS]).await
        }));
    }
    let mut total_newly_applied = 0;
    for run in runs {
        let reports = run.await.unwrap().unwrap();
        total_newly_applied += reports[0].newly_applied.len();
    }
    assert_eq!(total_newly_applied, 2);
}

#[tokio::test]
async fn postgres_pool_holds_its_minimum_and_times_out_when_exhausted() {
    let Some(engine) = connect_postgres("postgres_pool").await else {
        return;
    };
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(engine.acquire().await.unwrap());
    }
    let exhausted = engine.acquire().await.unwrap_err();
    assert_eq!(exhausted.code(), "engine_pool_exhausted");
    assert_eq!(exhausted.kind(), ErrorKind::Unavailable);
    drop(held);
    let client = engine.acquire().await.unwrap();
    let row = engine
        .run("test_query", client.query_one("SELECT 41 + 1", &[]))
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    engine.probe().await.unwrap();
}

/// The backend process ids of every connection of a pool of four.
async fn backend_ids_of_all_connections(
    engine: &PostgresEngine,
) -> (Vec<plinth_engines::postgres::PooledClient>, Vec<i32>) {
    let mut clients = Vec::new();
    let mut backend_ids = Vec::new();
    for _ in 0..4 {
        let client = engine.acquire().await.unwrap();
        let row = engine
            .run(
                "test_backend",
                client.query_one("SELECT pg_backend_pid()", &[]),
            )
            .await
            .unwrap();
        backend_ids.push(row.get::<_, i32>(0));
        clients.push(client);
    }
    (clients, backend_ids)
}

#[tokio::test]
async fn a_pipelined_transaction_returns_its_connection_only_when_it_ended() {
    let Some(engine) = connect_postgres("postgres_pipelined_transaction").await else {
        return;
    };
    let (mut clients, backend_ids) = backend_ids_of_all_connections(&engine).await;
    let abandoned = PipelinedTransaction::new(clients.pop().unwrap());
    engine
        .run(
            "test_begin",
            abandoned
                .client()
                .batch_execute("BEGIN; CREATE TEMP TABLE left_open (x int)"),
        )
        .await
        .unwrap();
    let abandoned_backend = backend_ids[3];
    drop(abandoned);
    drop(clients);

    let (mut clients, backend_ids) = backend_ids_of_all_connections(&engine).await;
    assert!(
        !backend_ids.contains(&abandoned_backend),
        "a connection left inside a transaction went back to the pool"
    );
    for client in &clients {
        let row = engine
            .run(
                "test_temp_table",
                client.query_one("SELECT to_regclass('pg_temp.left_open') IS NULL", &[]),
            )
            .await
            .unwrap();
        assert!(
            row.get::<_, bool>(0),
            "the abandoned transaction's table is visible"
        );
    }

    let committed = PipelinedTransaction::new(clients.pop().unwrap());
    let committed_backend = backend_ids[3];
    engine
        .run(
            "test_commit",
            committed
                .client()
                .batch_execute(&format!("BEGIN; SELECT 1; {COMMIT}")),
        )
        .await
        .unwrap();
    committed.ended();
    drop(clients);
    let (_clients, backend_ids) = backend_ids_of_all_connections(&engine).await;
    assert!(
        backend_ids.contains(&committed_backend),
        "an ended transaction's connection did not go back to the pool"
    );
}

#[tokio::test]
async fn postgres_unreachable_fails_to_connect_with_a_clear_error() {
    let Some(_) = postgres_url("postgres_unreachable") else {
        return;
    };
    let closed_port = free_port();
    let url = format!("postgres://plinth@127.0.0.1:{closed_port}/nothing");
    let config = PostgresConfig {
        pool_min_size: 1,
        acquire_timeout: HumanDuration::from_millis(300),
        ..PostgresConfig::default()
    };
    let error = match PostgresEngine::connect(
        &url,
        &config,
        quick_breaker("postgres"),
        Duration::from_millis(500),
    )
    .await
    {
        Ok(_) => panic!("connecting to a closed port must fail"),
        Err(error) => error,
    };
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(
        !error.detail().contains("plinth@"),
        "the URL must not leak: {}",
        error.detail()
    );
}

#[tokio::test]
async fn redis_answers_through_the_guard() {
    let Some(url) = redis_url("redis_answers") else {
        return;
    };
    let engine = RedisEngine::start(&url, quick_breaker("redis"), Duration::from_secs(2)).unwrap();
    engine.wait_connected(Duration::from_secs(5)).await.unwrap();
    let mut connection = engine.connection().unwrap();
    let set_command = redis::cmd("SET");
    let mut set_command = set_command;
    set_command.arg("plinth:engine-test").arg("42");
    engine
        .run("test_set", set_command.query_async::<()>(&mut connection))
        .await
        .unwrap();
    let get_command = {
        let mut command = redis::cmd("GET");
        command.arg("plinth:engine-test");
        command
    };
    let value: String = engine
        .run("test_get", get_command.query_async(&mut connection))
        .await
        .unwrap();
    assert_eq!(value, "42");
    engine.probe().await.unwrap();
}

/// A Redis server this test owns, so it can stop and restart it.
struct OwnedRedis {
    port: u16,
    directory: tempfile::TempDir,
    process: Option<Child>,
}

impl OwnedRedis {
    fn start() -> Option<Self> {
        let directory = tempfile::tempdir().unwrap();
        let mut redis = OwnedRedis {
            port: free_port(),
            directory,
            process: None,
        };
        if !redis.spawn() {
            return None;
        }
        Some(redis)
    }

    fn spawn(&mut self) -> bool {
        let spawned = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.directory.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => {
                self.process = Some(child);
                true
            }
            Err(_) => false,
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn redis_outage_opens_the_breaker_and_recovery_closes_it() {
    if redis_url("redis_outage").is_none() {
        return;
    }
    let Some(mut owned_redis) = OwnedRedis::start() else {
        panic!("redis-server must be on PATH where the test engines run");
    };
    let breaker = quick_breaker("redis");
    let engine = RedisEngine::start(
        &owned_redis.url(),
        Arc::clone(&breaker),
        Duration::from_millis(300),
    )
    .unwrap();
    engine.wait_connected(Duration::from_secs(5)).await.unwrap();
    engine.probe().await.unwrap();

    owned_redis.stop();
    let mut failures = 0;
    for _ in 0..5 {
        if engine.probe().await.is_err() {
            failures += 1;
        }
    }
    assert!(failures >= 2, "probes should fail while redis is down");
    assert_eq!(breaker.state(), BreakerState::Open);

    assert!(owned_redis.spawn());
    let mut recovered = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Half-open needs several successful probes in a row to close.
        if engine.probe().await.is_ok() && breaker.state() == BreakerState::Closed {
            recovered = true;
            break;
        }
    }
    assert!(
        recovered,
        "the connection should come back and the breaker close once redis is back"
    );
}

#[tokio::test]
async fn redis_down_at_start_is_reported_not_fatal() {
    if redis_url("redis_down_at_start").is_none() {
        return;
    }
    let closed_port = free_port();
    let engine = RedisEngine::start(
        &format!("redis://127.0.0.1:{closed_port}"),
        quick_breaker("redis"),
        Duration::from_millis(200),
    )
    .unwrap();
    let error = engine.connection().unwrap_err();
    assert_eq!(error.code(), "engine_unavailable");
    assert!(engine.probe().await.is_err());
    assert!(
        engine
            .wait_connected(Duration::from_millis(300))
            .await
            .is_err()
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
