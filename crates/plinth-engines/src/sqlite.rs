//! The embedded SQLite engine: one writer thread that commits write jobs in
//! batches (group commit), and a small pool of read-only connections.
//!
//! SQLite allows one writer at a time; many connections writing at once
//! only produce "database is locked". So every write job goes through a
//! bounded channel to a single writer thread, which takes whatever has
//! queued up (up to `max_batch`), runs each job in its own savepoint inside
//! one transaction, commits once, and only then answers every caller. One
//! fsync covers the whole batch, and a failing job rolls back only its own
//! savepoint. When the queue is full, writers wait (up to their deadline):
//! back-pressure instead of unbounded memory.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use plinth_core::Error;
use plinth_core::config::SqliteConfig;
use plinth_core::resilience::{CircuitBreaker, EngineGuard};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::health::{HealthProbe, ProbeFailure};

const ENGINE_NAME: &str = "sqlite";

/// Maps a SQLite failure to a Plinth error. Blocks use it inside their jobs.
pub fn sqlite_failure(error: rusqlite::Error) -> Error {
    Error::internal(format!("sqlite: {error}"))
}

pub struct SqliteEngine {
    path: PathBuf,
    writer_queue: mpsc::Sender<WriterMessage>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<ReaderPool>,
    guard: EngineGuard,
}

impl SqliteEngine {
    /// Opens (creating when missing) the database at `path`, starts the
    /// writer thread and the reader pool.
    pub fn open(
        path: &Path,
        config: &SqliteConfig,
        breaker: Arc<CircuitBreaker>,
        call_timeout: Duration,
    ) -> Result<Self, Error> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|io_error| {
                Error::internal(format!(
                    "cannot create the data directory {}: {io_error}",
                    parent.display()
                ))
            })?;
        }
        let busy_timeout = config.busy_timeout.as_duration();
        let writer_connection = open_writer_connection(path, busy_timeout)?;
        let reader_count = config.readers.max(1);
        let mut reader_connections = Vec::with_capacity(reader_count);
        for _ in 0..reader_count {
            reader_connections.push(open_reader_connection(path, busy_timeout)?);
        }

        let (writer_queue, writer_inbox) = mpsc::channel(config.queue_capacity.max(1));
        let max_batch = config.max_batch.max(1);
        let writer_thread = std::thread::Builder::new()
            .name("plinth-sqlite-writer".to_string())
            .spawn(move || run_writer(writer_connection, writer_inbox, max_batch))
            .map_err(|spawn_error| {
                Error::internal(format!(
                    "cannot start the sqlite writer thread: {spawn_error}"
                ))
            })?;

        metrics::gauge!("plinth_pool_max_connections", "engine" => ENGINE_NAME)
            .set(reader_count as f64);
        Ok(SqliteEngine {
            path: path.to_path_buf(),
            writer_queue,
            writer_thread: Mutex::new(Some(writer_thread)),
            readers: Arc::new(ReaderPool::new(reader_connections)),
            guard: EngineGuard::new(breaker, call_timeout),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn guard(&self) -> &EngineGuard {
        &self.guard
    }

    /// Runs `job` on the writer thread inside a savepoint of the current
    /// batch's transaction and answers once the batch is committed. An `Err`
    /// from the job rolls back only the job's own changes.
    pub async fn write<T, F>(&self, operation: &'static str, job: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let (reply_sender, reply_receiver) = oneshot::channel();
        let pending = Box::new(PendingWrite {
            job: Some(job),
            outcome: None,
            reply: Some(reply_sender),
        });
        let submit_and_wait = async move {
            if self
                .writer_queue
                .send(WriterMessage::Write(pending))
                .await
                .is_err()
            {
                return Err(writer_stopped());
            }
            match reply_receiver.await {
                Ok(commit_and_job_outcome) => commit_and_job_outcome,
                Err(_) => Err(writer_stopped()),
            }
        };
        match self.guard.call(operation, submit_and_wait).await {
            Ok(job_outcome) => job_outcome,
            Err(guarded_error) => {
                Err(guarded_error.into_plinth_error(ENGINE_NAME, |engine_error| engine_error))
            }
        }
    }

    /// Runs `job` on a read-only connection from the pool, on a blocking
    /// thread. Reads see every committed write.
    pub async fn read<T, F>(&self, operation: &'static str, job: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        let read_on_pool = async move { readers.run(job).await };
        match self.guard.call(operation, read_on_pool).await {
            Ok(job_outcome) => job_outcome,
            Err(guarded_error) => {
                Err(guarded_error.into_plinth_error(ENGINE_NAME, |engine_error| engine_error))
            }
        }
    }

    /// Commits what is queued, checkpoints the WAL and stops the writer.
    /// Writes submitted afterwards fail with `engine_unavailable`.
    pub async fn close(&self) {
        let (done_sender, done_receiver) = oneshot::channel();
        if self
            .writer_queue
            .send(WriterMessage::Shutdown(done_sender))
            .await
            .is_ok()
        {
            let _ = done_receiver.await;
        }
        let writer_thread = self.writer_thread.lock().take();
        if let Some(writer_thread) = writer_thread {
            let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
        }
    }
}

fn writer_stopped() -> Error {
    Error::unavailable(
        "engine_unavailable",
        "the sqlite writer has stopped (the node is shutting down)",
        Duration::from_secs(1),
    )
}

fn open_writer_connection(path: &Path, busy_timeout: Duration) -> Result<Connection, Error> {
    let connection = Connection::open(path).map_err(|open_error| {
        Error::internal(format!(
            "cannot open sqlite database {}: {open_error}",
            path.display()
        ))
    })?;
    connection
        .busy_timeout(busy_timeout)
        .map_err(sqlite_failure)?;
    // WAL lets readers run beside the writer; FULL makes every commit
    // durable (an fsync per batch, which group commit amortises).
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite_failure)?;
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(sqlite_failure)?;
    connection
        .pragma_update(None, "foreign_keys", "ON")
        .map_err(sqlite_failure)?;
    Ok(connection)
}

fn open_reader_connection(path: &Path, busy_timeout: Duration) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let connection = Connection::open_with_flags(path, flags).map_err(|open_error| {
        Error::internal(format!(
            "cannot open sqlite database {} for reading: {open_error}",
            path.display()
        ))
    })?;
    connection
        .busy_timeout(busy_timeout)
        .map_err(sqlite_failure)?;
    Ok(connection)
}

enum WriterMessage {
    Write(Box<dyn QueuedWrite>),
    Shutdown(oneshot::Sender<()>),
}

/// A write job with its result type erased, so jobs of any type share the
/// writer's queue.
trait QueuedWrite: Send {
    /// Runs the job inside its own savepoint.
    fn execute(&mut self, connection: &Connection);
    /// Answers the caller once the batch's commit outcome is known.
    fn finish(self: Box<Self>, commit_outcome: Result<(), Error>);
}

type WriteReply<T> = oneshot::Sender<Result<Result<T, Error>, Error>>;

struct PendingWrite<T, F> {
    job: Option<F>,
    outcome: Option<Result<T, Error>>,
    reply: Option<WriteReply<T>>,
}

impl<T, F> QueuedWrite for PendingWrite<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, Error> + Send,
{
    fn execute(&mut self, connection: &Connection) {
        let Some(job) = self.job.take() else {
            return;
        };
        self.outcome = Some(run_in_savepoint(connection, job));
    }

    fn finish(mut self: Box<Self>, commit_outcome: Result<(), Error>) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        let answer = match commit_outcome {
            Err(commit_error) => Err(commit_error),
            Ok(()) => Ok(self
                .outcome
                .take()
                .unwrap_or_else(|| Err(Error::internal("write job was never executed")))),
        };
        // The caller may have given up (timeout); the write stands anyway.
        let _ = reply.send(answer);
    }
}

fn run_in_savepoint<T, F>(connection: &Connection, job: F) -> Result<T, Error>
where
    F: FnOnce(&Connection) -> Result<T, Error>,
{
    connection
        .execute_batch("SAVEPOINT plinth_write_job")
        .map_err(sqlite_failure)?;
    let job_result = catch_unwind(AssertUnwindSafe(|| job(connection)));
    let outcome = match job_result {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::internal(
            "a sqlite write job panicked; its changes were rolled back",
        )),
    };
    let end_savepoint = if outcome.is_ok() {
        "RELEASE plinth_write_job"
    } else {
        "ROLLBACK TO plinth_write_job; RELEASE plinth_write_job"
    };
    connection
        .execute_batch(end_savepoint)
        .map_err(sqlite_failure)?;
    outcome
}

fn run_writer(connection: Connection, mut inbox: mpsc::Receiver<WriterMessage>, max_batch: usize) {
    let mut batch: Vec<Box<dyn QueuedWrite>> = Vec::with_capacity(max_batch);
    while let Some(first_message) = inbox.blocking_recv() {
        let mut shutdown_reply = None;
        match first_message {
            WriterMessage::Write(write) => batch.push(write),
            WriterMessage::Shutdown(reply) => shutdown_reply = Some(reply),
        }
        while shutdown_reply.is_none() && batch.len() < max_batch {
            match inbox.try_recv() {
                Ok(WriterMessage::Write(write)) => batch.push(write),
                Ok(WriterMessage::Shutdown(reply)) => shutdown_reply = Some(reply),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit_batch(&connection, &mut batch);
        }
        if let Some(reply) = shutdown_reply {
            inbox.close();
            drain_after_shutdown(&connection, &mut inbox, &mut batch, max_batch);
            checkpoint(&connection);
            let _ = reply.send(());
            return;
        }
    }
}

/// Writes already queued when shutdown was asked for are still committed.
fn drain_after_shutdown(
    connection: &Connection,
    inbox: &mut mpsc::Receiver<WriterMessage>,
    batch: &mut Vec<Box<dyn QueuedWrite>>,
    max_batch: usize,
) {
    while let Ok(message) = inbox.try_recv() {
        match message {
            WriterMessage::Write(write) => batch.push(write),
            WriterMessage::Shutdown(reply) => {
                let _ = reply.send(());
            }
        }
        if batch.len() >= max_batch {
            commit_batch(connection, batch);
        }
    }
    if !batch.is_empty() {
        commit_batch(connection, batch);
    }
}

fn commit_batch(connection: &Connection, batch: &mut Vec<Box<dyn QueuedWrite>>) {
    let started = Instant::now();
    let batch_size = batch.len();
    let commit_outcome = match connection.execute_batch("BEGIN IMMEDIATE") {
        Err(begin_error) => Err(engine_write_failure(begin_error)),
        Ok(()) => {
            for write in batch.iter_mut() {
                write.execute(connection);
            }
            match connection.execute_batch("COMMIT") {
                Ok(()) => Ok(()),
                Err(commit_error) => {
                    let _ = connection.execute_batch("ROLLBACK");
                    Err(engine_write_failure(commit_error))
                }
            }
        }
    };
    if let Err(commit_error) = &commit_outcome {
        tracing::error!(error = %commit_error, batch_size, "sqlite batch commit failed");
    }
    for write in batch.drain(..) {
        write.finish(commit_outcome.clone());
    }
    metrics::histogram!("plinth_sqlite_write_batch_size").record(batch_size as f64);
    metrics::histogram!("plinth_sqlite_commit_duration_seconds")
        .record(started.elapsed().as_secs_f64());
}

fn engine_write_failure(error: rusqlite::Error) -> Error {
    Error::unavailable(
        "engine_unavailable",
        format!("sqlite could not commit: {error}"),
        Duration::from_secs(1),
    )
}

fn checkpoint(connection: &Connection) {
    if let Err(checkpoint_error) = connection.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %checkpoint_error, "sqlite checkpoint at shutdown failed");
    }
}

/// Read-only connections handed out one caller at a time. The semaphore
/// bounds concurrent reads to the number of connections; callers beyond it
/// wait (up to their deadline).
struct ReaderPool {
    idle_connections: Mutex<Vec<Connection>>,
    available: Arc<Semaphore>,
    size: usize,
}

impl ReaderPool {
    fn new(connections: Vec<Connection>) -> Self {
        let size = connections.len();
        ReaderPool {
            idle_connections: Mutex::new(connections),
            available: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    async fn run<T, F>(self: Arc<Self>, job: F) -> Result<Result<T, Error>, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    {
        let acquire_started = Instant::now();
        let Ok(permit) = Arc::clone(&self.available).acquire_owned().await else {
            return Err(Error::internal("sqlite reader pool closed"));
        };
        metrics::histogram!("plinth_pool_acquire_duration_seconds", "engine" => ENGINE_NAME)
            .record(acquire_started.elapsed().as_secs_f64());
        let pool = Arc::clone(&self);
        // The connection goes back to the pool inside the blocking task, so a
        // caller that times out cannot leak it.
        let blocking_read = tokio::task::spawn_blocking(move || {
            let Some(connection) = pool.idle_connections.lock().pop() else {
                return Err(Error::internal("sqlite reader pool accounting is broken"));
            };
            pool.publish_gauges();
            let job_result = catch_unwind(AssertUnwindSafe(|| job(&connection)));
            pool.idle_connections.lock().push(connection);
            drop(permit);
            pool.publish_gauges();
            match job_result {
                Ok(outcome) => Ok(outcome),
                Err(_) => Ok(Err(Error::internal("a sqlite read job panicked"))),
            }
        });
        match blocking_read.await {
            Ok(result) => result,
            Err(join_error) => Err(Error::internal(format!(
                "sqlite read task failed: {join_error}"
            ))),
        }
    }

    fn publish_gauges(&self) {
        let idle = self.idle_connections.lock().len();
        metrics::gauge!("plinth_pool_connections", "engine" => ENGINE_NAME, "state" => "idle")
            .set(idle as f64);
        metrics::gauge!("plinth_pool_connections", "engine" => ENGINE_NAME, "state" => "in_use")
            .set(self.size.saturating_sub(idle) as f64);
    }
}

#[async_trait]
impl HealthProbe for SqliteEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn breaker(&self) -> Arc<CircuitBreaker> {
        Arc::clone(self.guard.breaker())
    }

    async fn probe(&self) -> Result<(), ProbeFailure> {
        if self.writer_queue.is_closed() {
            return Err(ProbeFailure("the writer thread has stopped".to_string()));
        }
        let probe_result = self
            .read("health_probe", |connection| {
                connection
                    .query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
                    .map_err(sqlite_failure)
            })
            .await;
        match probe_result {
            Ok(_) => Ok(()),
            Err(error) => Err(ProbeFailure(error.detail().to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plinth_core::resilience::BreakerConfig;

    fn open_engine(directory: &Path) -> SqliteEngine {
        let breaker = Arc::new(CircuitBreaker::new("sqlite", BreakerConfig::default()));
        SqliteEngine::open(
            &directory.join("test.db"),
            &SqliteConfig::default(),
            breaker,
            Duration::from_secs(5),
        )
        .unwrap()
    }

    async fn create_table(engine: &SqliteEngine) {
        engine
            .write("test", |connection| {
                connection
                    .execute_batch("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
                    .map_err(sqlite_failure)
            })
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_all_committed_and_readable() {
        let directory = tempfile::tempdir().unwrap();
        let engine = Arc::new(open_engine(directory.path()));
        create_table(&engine).await;
        let mut tasks = Vec::new();
        for index in 0..200 {
            let engine = Arc::clone(&engine);
            tasks.push(tokio::spawn(async move {
                engine
                    .write("test", move |connection| {
                        connection
                            .execute(
                                "INSERT INTO items (name) VALUES (?1)",
                                [format!("item-{index}")],
                            )
                            .map_err(sqlite_failure)
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 1);
        }
        let count = engine
            .read("test", |connection| {
                connection
                    .query_row("SELECT COUNT(*) FROM items", [], |row| row.get::<_, i64>(0))
                    .map_err(sqlite_failure)
            })
            .await
            .unwrap();
        assert_eq!(count, 200);
    }

    #[tokio::test]
    async fn a_failing_job_rolls_back_only_itself() {
        let directory = tempfile::tempdir().unwrap();
        let engine = Arc::new(open_engine(directory.path()));
        create_table(&engine).await;
        let good = {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                engine
                    .write("test", |connection| {
                        connection
                            .execute("INSERT INTO items (name) VALUES ('kept')", [])
                            .map_err(sqlite_failure)
                    })
                    .await
            })
        };
        let bad = engine
            .write("test", |connection| {
                connection
                    .execute("INSERT INTO items (name) VALUES ('rolled-back')", [])
                    .map_err(sqlite_failure)?;
                Err::<(), _>(Error::conflict("test_conflict", "refused on purpose"))
            })
            .await;
        assert_eq!(bad.unwrap_err().code(), "test_conflict");
        good.await.unwrap().unwrap();
        let names = engine
            .read("test", |connection| {
                let mut statement = connection
                    .prepare("SELECT name FROM items ORDER BY name")
                    .map_err(sqlite_failure)?;
                let rows = statement
                    .query_map([], |row| row.get::<_, String>(0))
                    .map_err(sqlite_failure)?;
                let mut names = Vec::new();
                for row in rows {
                    names.push(row.map_err(sqlite_failure)?);
                }
                Ok(names)
            })
            .await
            .unwrap();
        assert_eq!(names, vec!["kept".to_string()]);
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_kill_the_writer() {
        let directory = tempfile::tempdir().unwrap();
        let engine = open_engine(directory.path());
        create_table(&engine).await;
        let panicked = engine
            .write("test", |_connection| -> Result<(), Error> {
                panic!("job bug")
            })
            .await;
        assert_eq!(panicked.unwrap_err().code(), "internal");
        engine
            .write("test", |connection| {
                connection
                    .execute("INSERT INTO items (name) VALUES ('after')", [])
                    .map_err(sqlite_failure)
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn writes_after_close_are_refused_and_data_survives_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let engine = open_engine(directory.path());
        create_table(&engine).await;
        engine
            .write("test", |connection| {
                connection
                    .execute("INSERT INTO items (name) VALUES ('durable')", [])
                    .map_err(sqlite_failure)
            })
            .await
            .unwrap();
        engine.close().await;
        let refused = engine.write("test", |_connection| Ok(())).await;
        assert_eq!(refused.unwrap_err().code(), "engine_unavailable");

        let reopened = open_engine(directory.path());
        let count = reopened
            .read("test", |connection| {
                connection
                    .query_row("SELECT COUNT(*) FROM items", [], |row| row.get::<_, i64>(0))
                    .map_err(sqlite_failure)
            })
            .await
            .unwrap();
        assert_eq!(count, 1);
    }
}
