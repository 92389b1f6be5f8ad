//! Connections to the engines a Plinth node runs on: the embedded SQLite
//! database, PostgreSQL, and Redis.
//!
//! Every call to an engine goes through an [`EngineGuard`] (a circuit
//! breaker plus a timeout), every engine reports its health through
//! [`HealthProbe`], and every engine publishes pool and latency metrics.
//! Blocks (the cache, the event store, ...) get a [`Store`] for durable data
//! and an optional [`RedisEngine`] for shared state; they never open
//! connections themselves.
//!
//! [`EngineGuard`]: plinth_core::resilience::EngineGuard

pub mod health;
pub mod migrations;
pub mod postgres;
pub mod postgres_transaction;
pub mod redis;
pub mod sqlite;
mod store;
pub mod test_support;
mod url;

pub use health::{HealthProbe, ProbeFailure};
pub use migrations::{Migration, MigrationSet};
pub use postgres::PostgresEngine;
pub use postgres::postgres_failure;
pub use redis::RedisEngine;
pub use redis::redis_failure;
pub use sqlite::SqliteEngine;
pub use sqlite::sqlite_failure;
pub use store::{Engines, Store};
pub use url::{EngineUrl, StoreKind};
