//! A PostgreSQL transaction whose `BEGIN` and `COMMIT` travel with its
//! statements instead of costing a round trip each.
//!
//! tokio-postgres' `Transaction` awaits its `BEGIN` before the first
//! statement can be sent, and its `commit` takes the transaction by value,
//! so it cannot be sent together with the last statement. A hot path that
//! sends `BEGIN` with its first statements and `COMMIT` right behind its
//! last one saves two round trips, and the locks its last statement takes
//! are held only while the server runs the statement and the commit, not
//! for a round trip to the client in between.
//!
//! A connection runs what it receives in order, so a `COMMIT` sent behind
//! a statement runs after it; when that statement fails, the server turns
//! the `COMMIT` into a rollback and answers it without an error. The
//! caller must therefore check every statement's outcome before it takes
//! the transaction as committed, and call [`PipelinedTransaction::ended`]
//! only then. A transaction dropped before `ended` (an error, a cancelled
//! task) closes its connection rather than returning it to the pool in an
//! unknown state; the server rolls back what the connection left open.

use crate::postgres::PooledClient;

/// Sent behind a transaction's last statement.
pub const COMMIT: &str = "COMMIT";
pub const ROLLBACK: &str = "ROLLBACK";

/// A pooled connection that is, or is about to be, inside a transaction.
pub struct PipelinedTransaction {
    client: Option<PooledClient>,
}

impl PipelinedTransaction {
    /// Takes the connection the caller is about to send `BEGIN` on (with
    /// whatever else the transaction starts with, in one simple query).
    pub fn new(client: PooledClient) -> Self {
        PipelinedTransaction {
            client: Some(client),
        }
    }

    /// The connection, for sending the transaction's statements.
    pub fn client(&self) -> &tokio_postgres::Client {
        match &self.client {
            Some(client) => client,
            None => unreachable!("the client is only taken when the transaction is dropped"),
        }
    }

    /// The `COMMIT` or `ROLLBACK` succeeded and every statement was checked:
    /// the connection goes back to the pool.
    pub fn ended(mut self) {
        drop(self.client.take());
    }
}

impl Drop for PipelinedTransaction {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Detached from the pool and dropped: the connection closes.
            drop(deadpool::managed::Object::take(client));
        }
    }
}
