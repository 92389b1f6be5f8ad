//! The engine's own limit for `bench events`: INSERTs into a table shaped
//! like a minimal event log (`id bigserial, stream text, data jsonb`)
//! straight through tokio-postgres, one connection per worker, each
//! statement its own transaction with `synchronous_commit = on`, so every
//! counted row is as durable as an acknowledged append.
//!
//! Each run works in a schema of its own, which it drops at the end: the
//! node under test and the raw table start empty on every run, whatever
//! earlier runs left in the database.

use anyhow::Context;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use crate::bench::events_bench::{MeasuredWindow, WindowTally};

/// Named so that it cannot be mistaken for one of Plinth's tables.
const RAW_TABLE: &str = "plinth_bench_raw_events";

/// A PostgreSQL the benchmark may create a schema in.
pub struct RawPostgres {
    /// The given URL with `search_path` set to the run's schema.
    schema_url: String,
    schema: String,
    client: Client,
}

/// Server settings that decide what a commit costs.
pub struct RawPostgresSettings {
    pub server_version: String,
    pub synchronous_commit: String,
    pub fsync: String,
}

impl RawPostgres {
    /// Creates the run's schema and the raw table in it.
    pub async fn connect(url: &str) -> anyhow::Result<RawPostgres> {
        let schema = run_schema_name();
        let schema_url = plinth_engines::postgres::url_with_search_path(url, &schema);
        let client = connect_client(url).await?;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {schema};
                 CREATE TABLE {schema}.{RAW_TABLE} (id bigserial PRIMARY KEY, stream text NOT NULL, data jsonb NOT NULL)"
            ))
            .await
            .context("creating the benchmark's schema and raw INSERT table")?;
        Ok(RawPostgres {
            schema_url,
            schema,
            client,
        })
    }

    /// The URL the node under test stores its tables with: the run's
    /// schema.
    pub fn schema_url(&self) -> &str {
        &self.schema_url
    }

    pub async fn settings(&self) -> anyhow::Result<RawPostgresSettings> {
        Ok(RawPostgresSettings {
            server_version: self.show("server_version").await?,
            synchronous_commit: self.show("synchronous_commit").await?,
            fsync: self.show("fsync").await?,
        })
    }

    async fn show(&self, setting: &str) -> anyhow::Result<String> {
        let row = self
            .client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .with_context(|| format!("SHOW {setting}"))?;
        Ok(row.get(0))
    }

    /// Drops the run's schema with everything the node and the raw
    /// INSERTs wrote.
    pub async fn drop_schema(&self) -> anyhow::Result<()> {
        self.client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await
            .context("dropping the benchmark's schema")
    }

    /// `connections` workers INSERT `rows_per_insert` rows per statement
    /// back to back until the window ends.
    pub async fn measure_inserts(
        &self,
        rows_per_insert: usize,
        connections: usize,
        window: MeasuredWindow,
    ) -> anyhow::Result<WindowTally> {
        let mut workers = JoinSet::new();
        for worker_index in 0..connections {
            let url = self.schema_url.clone();
            workers.spawn(async move {
                insert_until_window_ends(&url, rows_per_insert, worker_index as u64, window).await
            });
        }
        let mut total = WindowTally::new()?;
        while let Some(joined) = workers.join_next().await {
            total.merge(&joined.context("an INSERT worker panicked")??)?;
        }
        Ok(total)
    }
}

/// Unique per run on one machine: the process id and the start second.
fn run_schema_name() -> String {
    let started_at_seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since_epoch| since_epoch.as_secs())
        .unwrap_or_default();
    format!("plinth_bench_{}_{started_at_seconds}", std::process::id())
}

async fn connect_client(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting to PostgreSQL for the raw INSERT baseline")?;
    // The connection object performs the I/O; it ends when the client is
    // dropped.
    tokio::spawn(connection);
    client
        .batch_execute("SET synchronous_commit = on")
        .await
        .context("setting synchronous_commit")?;
    Ok(client)
}

/// `INSERT … VALUES ($1, $2), ($3, $4), …` for `rows` rows.
fn multi_row_insert(rows: usize) -> String {
    let tuples: Vec<String> = (0..rows)
        .map(|row| format!("(${}, ${})", 2 * row + 1, 2 * row + 2))
        .collect();
    format!(
        "INSERT INTO {RAW_TABLE} (stream, data) VALUES {}",
        tuples.join(", ")
    )
}

async fn insert_until_window_ends(
    url: &str,
    rows_per_insert: usize,
    worker_index: u64,
    window: MeasuredWindow,
) -> anyhow::Result<WindowTally> {
    let client = connect_client(url).await?;
    let statement = client
        .prepare(&multi_row_insert(rows_per_insert))
        .await
        .context("preparing the raw INSERT")?;
    // The same data as the appends carry; the stream is only a column here.
    let data: Value = json!({ "amount": 10, "note": "bench" });
    let stream = format!("k{worker_index:07}");
    let mut parameters: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(2 * rows_per_insert);
    for _ in 0..rows_per_insert {
        parameters.push(&stream);
        parameters.push(&data);
    }
    let mut tally = WindowTally::new()?;
    loop {
        let started = Instant::now();
        if started >= window.ends_at {
            return Ok(tally);
        }
        let outcome = client.execute(&statement, &parameters).await;
        if started < window.starts_at {
            continue;
        }
        match outcome {
            Ok(inserted_rows) => tally.record(inserted_rows, started.elapsed()),
            Err(_) => tally.failed_requests += 1,
        }
    }
}
