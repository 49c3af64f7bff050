//! Threads that own SQLite connections. Async callers send a job and await a
//! oneshot reply, so no rusqlite call ever runs on a tokio worker thread.
//!
//! One writer thread owns the write connection (koda's pattern: one writer
//! at a time); a few reader threads share a queue of read jobs and, in WAL
//! mode, never wait for the writer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A queue served by one or more threads, each owning a connection.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    tx: crossbeam_channel::Sender<Job>,
    /// Dropped after `tx` (fields drop in order): when the last clone goes,
    /// the threads see the queue close, and this waits for them to finish.
    _closer: Arc<Closer>,
}

/// Waits, when the last [`Worker`] clone is dropped, until every thread of
/// the worker has closed its connection (at most `wait`), so that a store
/// dropped before the process exits leaves a complete database file.
#[derive(Debug)]
struct Closer {
    /// Each thread holds a sender; all gone means all threads ended.
    ended: crossbeam_channel::Receiver<()>,
    wait: Duration,
}

impl Drop for Closer {
    fn drop(&mut self) {
        // Blocks for as long as the last job plus a checkpoint takes, and
        // never longer than `wait`.
        let _ = self.ended.recv_timeout(self.wait);
    }
}

impl Worker {
    /// Starts one thread per connection, all serving the same queue. The
    /// threads end when the last `Worker` clone is dropped, and that drop
    /// waits up to `close_wait` for them: each finishes its job, checkpoints
    /// the WAL into the database file when `writer` (so a copy of the `.db`
    /// file alone holds every row), and closes its connection. With
    /// `writer`, a thread also polls for the next job for a few microseconds
    /// before parking (worth it for the single writer, whose caller usually
    /// sends the next write at once; not for readers, which would only
    /// compete for cores).
    pub(crate) fn spawn(
        name: &str,
        conns: Vec<Connection>,
        writer: bool,
        close_wait: Duration,
    ) -> Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let (running, ended) = crossbeam_channel::bounded::<()>(0);
        for (i, mut conn) in conns.into_iter().enumerate() {
            let rx = rx.clone();
            let running = running.clone();
            thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    while let Some(job) = next_job(&rx, writer) {
                        // A panicking job must not take the connection's
                        // thread down with it; its caller sees the reply
                        // channel close and gets `Unavailable`.
                        let _ = catch_unwind(AssertUnwindSafe(|| job(&mut conn)));
                    }
                    if writer {
                        // Best effort: another process may hold a snapshot,
                        // and then SQLite checkpoints what it can.
                        let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
                    }
                    drop(conn);
                    drop(running);
                })
                .map_err(|e| {
                    PersistenceError::Unavailable(format!("cannot start {name} thread: {e}"))
                })?;
        }
        Ok(Self {
            tx,
            _closer: Arc::new(Closer {
                ended,
                wait: close_wait,
            }),
        })
    }

    /// Runs `f` on one of the worker's connections and returns its result.
    ///
    /// The reply is polled for a few microseconds before the task parks:
    /// a typical call answers within that window, and skipping a park and
    /// wake of the runtime thread halves the latency of a small write.
    pub(crate) async fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Box::new(move |conn: &mut Connection| {
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| {
                PersistenceError::Unavailable("sqlite worker thread has stopped".into())
            })?;
        let mut answer = answer;
        let deadline = Instant::now() + SPIN;
        while Instant::now() < deadline {
            match answer.try_recv() {
                Ok(out) => return out,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => std::hint::spin_loop(),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => break,
            }
        }
        answer.await.map_err(|_| {
            PersistenceError::Unavailable("sqlite worker thread dropped the call".into())
        })?
    }
}

/// How long either side spins for the other before parking.
const SPIN: Duration = Duration::from_micros(40);

/// The next job: polled for [`SPIN`] after the last one (callers usually
/// send the next call right away), then waited for. `None` once every
/// sender is gone.
fn next_job(rx: &crossbeam_channel::Receiver<Job>, spin: bool) -> Option<Job> {
    let deadline = Instant::now() + SPIN;
    while spin && Instant::now() < deadline {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(crossbeam_channel::TryRecvError::Empty) => std::hint::spin_loop(),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
        }
    }
    rx.recv().ok()
}

/// Whether `e` (anywhere in its chain) is SQLite's busy or locked.
pub(crate) fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        )
    })
}

/// Runs `f` until it succeeds or fails with something other than SQLite's
/// busy/locked, pausing 1 ms, then doubling up to 50 ms, between tries.
/// Past `deadline` a busy database is `Unavailable`, saying for how long it
/// stayed locked (`waited`).
///
/// The writer connection's own SQLite busy handler is off (timeout 0): this
/// loop is the one place a writer waits, with the store's deadline, also
/// where SQLite reports busy without calling its handler (a deferred
/// transaction upgrading to write, as the migration does).
pub(crate) fn retry_busy<R>(
    deadline: Instant,
    waited: Duration,
    mut f: impl FnMut() -> Result<R>,
) -> Result<R> {
    let mut pause = Duration::from_millis(1);
    let mut warned = false;
    loop {
        match f() {
            Err(e) if is_busy(&e) => {
                let now = Instant::now();
                if !warned {
                    tracing::warn!(
                        timeout_ms = waited.as_millis() as u64,
                        "SQLite database locked by another writer; retrying"
                    );
                    warned = true;
                }
                if now >= deadline {
                    tracing::warn!(
                        timeout_ms = waited.as_millis() as u64,
                        "SQLite database stayed locked; giving up"
                    );
                    return Err(e.context(PersistenceError::Unavailable(format!(
                        "database stayed locked by another writer for {} ms",
                        waited.as_millis()
                    ))));
                }
                thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits it. A busy
/// database (another process writing) is retried until `timeout` runs out,
/// then reported as `Unavailable`. Any error rolls the transaction back.
pub(crate) fn write<R>(
    conn: &mut Connection,
    timeout: Duration,
    mut f: impl FnMut(&Transaction<'_>) -> Result<R>,
) -> Result<R> {
    retry_busy(Instant::now() + timeout, timeout, || {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    })
}
