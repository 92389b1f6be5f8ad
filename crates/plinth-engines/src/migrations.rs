//! Versioned schema migrations for SQLite and PostgreSQL.
//!
//! Each component that owns tables (the control plane, the cache, the event
//! store, ...) declares a [`MigrationSet`]: an ordered list of migrations,
//! each with the SQL for both engines. Applying is idempotent: applied
//! versions are recorded in `plinth_schema_migrations` with a checksum of
//! their SQL, so a migration is never applied twice and an applied
//! migration whose SQL was later edited is refused loudly instead of
//! leaving two nodes with different schemas. On PostgreSQL, an advisory
//! lock makes nodes starting together apply migrations one at a time.

use sha2::{Digest, Sha256};

use plinth_core::Error;

use crate::Store;
use crate::sqlite::sqlite_failure;

/// One schema change, written for both engines.
#[derive(Debug)]
pub struct Migration {
    /// Strictly increasing within its set, starting at 1.
    pub version: u32,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// The ordered migrations of one component.
#[derive(Debug)]
pub struct MigrationSet {
    pub component: &'static str,
    pub migrations: &'static [Migration],
}

/// What one run did for one component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    pub component: &'static str,
    pub newly_applied: Vec<u32>,
    pub already_applied: usize,
}

const CREATE_SQLITE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS plinth_schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (component, version)
)";

const CREATE_POSTGRES_LEDGER: &str = "CREATE TABLE IF NOT EXISTS plinth_schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)";

/// An arbitrary constant shared by every Plinth node, so concurrent
/// migrators serialise on the same advisory lock.
const POSTGRES_MIGRATION_LOCK_KEY: i64 = 0x706c_696e_7468_6d67;

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

fn validate_order(set: &MigrationSet) -> Result<(), Error> {
    let mut previous_version = 0;
    for migration in set.migrations {
        if migration.version <= previous_version {
            return Err(Error::internal(format!(
                "migrations of `{}` are out of order at version {}",
                set.component, migration.version
            )));
        }
        previous_version = migration.version;
    }
    Ok(())
}

fn checksum_mismatch(component: &str, migration: &Migration) -> Error {
    Error::internal(format!(
        "migration {} `{}` of `{component}` was already applied with different SQL; \
         never edit an applied migration, add a new one",
        migration.version, migration.name
    ))
}

impl Store {
    /// Applies every migration not yet applied, in order.
    pub async fn migrate(
        &self,
        sets: &[&'static MigrationSet],
    ) -> Result<Vec<MigrationReport>, Error> {
        for set in sets {
            validate_order(set)?;
        }
        match self {
            Store::Sqlite(engine) => {
                let sets: Vec<&'static MigrationSet> = sets.to_vec();
                engine
                    .write("migrate", move |connection| {
                        migrate_sqlite(connection, &sets)
                    })
                    .await
            }
            Store::Postgres(engine) => {
                let mut client = engine.acquire().await?;
                let transaction = engine.run("migrate_begin", client.transaction()).await?;
                engine
                    .run(
                        "migrate_lock",
                        transaction.execute(
                            "SELECT pg_advisory_xact_lock($1)",
                            &[&POSTGRES_MIGRATION_LOCK_KEY],
                        ),
                    )
                    .await?;
                engine
                    .run(
                        "migrate_ledger",
                        transaction.batch_execute(CREATE_POSTGRES_LEDGER),
                    )
                    .await?;
                let mut reports = Vec::with_capacity(sets.len());
                for set in sets {
                    reports.push(migrate_postgres_set(engine, &transaction, set).await?);
                }
                engine.run("migrate_commit", transaction.commit()).await?;
                Ok(reports)
            }
        }
    }
}

fn migrate_sqlite(
    connection: &rusqlite::Connection,
    sets: &[&'static MigrationSet],
) -> Result<Vec<MigrationReport>, Error> {
    connection
        .execute_batch(CREATE_SQLITE_LEDGER)
        .map_err(sqlite_failure)?;
    let mut reports = Vec::with_capacity(sets.len());
    for set in sets {
        let mut report = MigrationReport {
            component: set.component,
            newly_applied: Vec::new(),
            already_applied: 0,
        };
        for migration in set.migrations {
            let expected_checksum = checksum(migration.sqlite);
            let recorded_checksum: Option<String> = connection
                .query_row(
                    "SELECT checksum FROM plinth_schema_migrations WHERE component = ?1 AND version = ?2",
                    rusqlite::params![set.component, migration.version],
                    |row| row.get(0),
                )
                .map(Some)
                .or_else(|error| match error {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    other => Err(sqlite_failure(other)),
                })?;
            if let Some(recorded_checksum) = recorded_checksum {
                if recorded_checksum != expected_checksum {
                    return Err(checksum_mismatch(set.component, migration));
                }
                report.already_applied += 1;
                continue;
            }
            connection
                .execute_batch(migration.sqlite)
                .map_err(|error| {
                    Error::internal(format!(
                        "migration {} `{}` of `{}` failed on sqlite: {error}",
                        migration.version, migration.name, set.component
                    ))
                })?;
            connection
                .execute(
                    "INSERT INTO plinth_schema_migrations (component, version, name, checksum) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![set.component, migration.version, migration.name, expected_checksum],
                )
                .map_err(sqlite_failure)?;
            report.newly_applied.push(migration.version);
        }
        reports.push(report);
    }
    Ok(reports)
}

async fn migrate_postgres_set(
    engine: &crate::PostgresEngine,
    transaction: &tokio_postgres::Transaction<'_>,
    set: &'static MigrationSet,
) -> Result<MigrationReport, Error> {
    let mut report = MigrationReport {
        component: set.component,
        newly_applied: Vec::new(),
        already_applied: 0,
    };
    for migration in set.migrations {
        let expected_checksum = checksum(migration.postgres);
        let version = i32::try_from(migration.version)
            .map_err(|_| Error::internal("migration version does not fit in an INTEGER"))?;
        let recorded = engine
            .run(
                "migrate_check",
                transaction.query_opt(
                    "SELECT checksum FROM plinth_schema_migrations WHERE component = $1 AND version = $2",
                    &[&set.component, &version],
                ),
            )
            .await?;
        if let Some(row) = recorded {
            let recorded_checksum: String = row.get(0);
            if recorded_checksum != expected_checksum {
                return Err(checksum_mismatch(set.component, migration));
            }
            report.already_applied += 1;
            continue;
        }
        engine
            .run(
                "migrate_apply",
                transaction.batch_execute(migration.postgres),
            )
            .await
            .map_err(|error| {
                Error::internal(format!(
                    "migration {} `{}` of `{}` failed on postgres: {}",
                    migration.version,
                    migration.name,
                    set.component,
                    error.detail()
                ))
            })?;
        engine
            .run(
                "migrate_record",
                transaction.execute(
                    "INSERT INTO plinth_schema_migrations (component, version, name, checksum) VALUES ($1, $2, $3, $4)",
                    &[&set.component, &version, &migration.name, &expected_checksum],
                ),
            )
            .await?;
        report.newly_applied.push(migration.version);
    }
    Ok(report)
}
