//! Threads that own SQLite connections. Async callers send a job and await a
//! oneshot reply, so no rusqlite call ever runs on a tokio worker thread.
//!
//! One writer thread owns the write connection (koda's pattern: one writer
//! at a time); a few reader threads share a queue of read jobs and, in WAL
//! mode, never wait for the writer.
//!
//! **Group commit**: writes that are waiting when the writer takes one run
//! together in one transaction, each in a savepoint of its own (a write that
//! fails is rolled back to its savepoint, alone), and one commit (one fsync
//! with `synchronous=full`) makes them all durable. Every caller is answered
//! only after that commit: a crash loses no acknowledged write. When the
//! group's transaction itself fails (its commit, or a busy database past
//! the timeout), each write runs again on its own, so each caller gets its
//! own outcome.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use koda_persistence_api::backend::ContextCache;
use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::SqliteStore;
use crate::checkpoint::{self, Checkpointer};
use crate::error::{classify, is_busy};

thread_local! {
    /// What the job running on this worker thread handed to
    /// [`drop_after_answer`].
    static LATER: std::cell::RefCell<Vec<Box<dyn Any>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Drops `value` once the job running on this worker thread has answered
/// its callers, before the thread takes its next job: for what takes long
/// to free (a long session's cached rows) and is no caller's business.
/// Called only from a job's steps on a worker thread (elsewhere the value
/// would wait for that thread's end).
pub(crate) fn drop_after_answer(value: impl Any) {
    LATER.with(|later| later.borrow_mut().push(Box::new(value)));
}

/// Drops what the last job handed to [`drop_after_answer`].
fn drop_handed_over() {
    // Taken out before dropping, so that a drop which hands over more finds
    // the list free (what it hands over goes after the next job).
    let values = LATER.with(|later| std::mem::take(&mut *later.borrow_mut()));
    drop(values);
}

/// The value a write produced, before its caller's type is restored.
type Produced = Box<dyn Any + Send>;

/// A write's body, run inside a transaction.
type Apply = Box<dyn FnMut(&Transaction<'_>) -> Result<Produced> + Send>;

/// What answers a write's caller with its outcome.
type Finish = Box<dyn FnOnce(Result<Produced>) + Send>;

/// A write: applied inside a transaction (again, if the transaction is
/// retried), then finished with its outcome once that transaction ended.
struct WriteJob {
    timeout: Duration,
    apply: Apply,
    finish: Finish,
}

enum Job {
    /// Runs on the connection as it is.
    Raw(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Runs in a write transaction, possibly grouped with others.
    Write(WriteJob),
}

/// At most this many writes share one transaction.
const MAX_GROUP: usize = 64;

/// The size of the last group of writes and how long its transaction took.
#[derive(Default)]
struct LastGroup {
    size: usize,
    took: Duration,
}

/// The longest a group waits for more writes (see [`gather`]).
const MAX_GATHER: Duration = Duration::from_micros(250);

/// The group that starts with `first`: every write already waiting joins
/// it (at most [`MAX_GROUP`]); the first other job is left in `pending`,
/// next in line.
///
/// While the group is smaller than the last one, it also waits for more
/// writes, for up to half the last group's transaction time (at most
/// [`MAX_GATHER`]), yielding the core meanwhile. Without that wait,
/// concurrent writers split into alternating groups: the writer took the
/// first caller answered by the last commit alone, paying a whole commit
/// (an fsync with `Full`) for one write while the others were still on
/// their way (W5, 8 writers, FULL: groups of 1 and of 7 in turn, about
/// 650 each per 2,000). A lone writer's groups are of one, so it never
/// waits.
fn gather(
    rx: &crossbeam_channel::Receiver<Job>,
    first: WriteJob,
    last: &LastGroup,
    pending: &mut Option<Job>,
) -> Vec<WriteJob> {
    let mut group = vec![first];
    let deadline = Instant::now() + (last.took / 2).min(MAX_GATHER);
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(Job::Write(w)) => group.push(w),
            Ok(other) => {
                *pending = Some(other);
                break;
            }
            Err(crossbeam_channel::TryRecvError::Empty) if group.len() < last.size && Instant::now() < deadline => {
                thread::yield_now()
            }
            Err(_) => break,
        }
    }
    group
}

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
    ///
    /// A `writer` with a `checkpointer` connection also starts the thread
    /// that checkpoints the WAL off the write path (see [`checkpoint`]).
    pub(crate) fn spawn(
        name: &str,
        conns: Vec<Connection>,
        writer: bool,
        checkpointer: Option<Connection>,
        close_wait: Duration,
    ) -> Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let (running, ended) = crossbeam_channel::bounded::<()>(0);
        let mut checkpointer = match checkpointer {
            Some(conn) if writer => Some(Checkpointer::spawn(name, conn)?),
            _ => None,
        };
        for (i, mut conn) in conns.into_iter().enumerate() {
            let rx = rx.clone();
            let running = running.clone();
            let checkpointer = checkpointer.take();
            thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    let mut pending = None;
                    let mut last = LastGroup::default();
                    while let Some(job) = pending.take().or_else(|| next_job(&rx, writer)) {
                        match job {
                            // A panicking job must not take the connection's
                            // thread down with it; its caller sees the reply
                            // channel close and gets `Unavailable`.
                            Job::Raw(job) => {
                                let _ = catch_unwind(AssertUnwindSafe(|| job(&mut conn)));
                            }
                            Job::Write(first) => {
                                let group = gather(&rx, first, &last, &mut pending);
                                let size = group.len();
                                let started = Instant::now();
                                write_group(&mut conn, group);
                                last = LastGroup { size, took: started.elapsed() };
                            }
                        }
                        drop_handed_over();
                        if writer {
                            checkpoint::after_job(&conn, checkpointer.as_ref());
                        }
                    }
                    if let Some(checkpointer) = checkpointer {
                        checkpointer.stop();
                    }
                    if writer {
                        // Best effort: another process may hold a snapshot,
                        // and then SQLite checkpoints what it can.
                        let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
                    }
                    drop(conn);
                    drop(running);
                })
                .map_err(|e| PersistenceError::Unavailable(format!("cannot start {name} thread: {e}")))?;
        }
        Ok(Self { tx, _closer: Arc::new(Closer { ended, wait: close_wait }) })
    }

    /// Runs `f` on one of the worker's connections and returns its result.
    ///
    /// When it is the process's only call waiting on SQLite, the reply is
    /// polled for [`SPIN`], then checked between yields to the runtime for
    /// up to [`YIELD_SPIN`], before the task parks: a typical call answers
    /// within that window, and skipping a park and wake of the runtime
    /// thread halves the latency of a small write. With other calls
    /// waiting, the task parks at once (see [`YIELD_SPIN`]).
    pub(crate) async fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Job::Raw(Box::new(move |conn: &mut Connection| {
            let _ = reply.send(f(conn));
        })))?;
        Self::answer(answer).await
    }

    /// Runs `f` in a write transaction (see the module docs: possibly with
    /// other waiting writes, each in its own savepoint), then `after` with
    /// its result once the transaction committed, in commit order. A busy
    /// database is waited for up to `timeout`.
    pub(crate) async fn write<R, T, F, A>(&self, timeout: Duration, mut f: F, after: A) -> Result<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnMut(&Transaction<'_>) -> Result<R> + Send + 'static,
        A: FnOnce(R) -> T + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Job::Write(WriteJob {
            timeout,
            apply: Box::new(move |tx| f(tx).map(|r| Box::new(r) as Produced)),
            finish: Box::new(move |out: Result<Produced>| {
                let out = out.and_then(|produced| match produced.downcast::<R>() {
                    Ok(r) => Ok(after(*r)),
                    Err(_) => Err(anyhow::anyhow!("sqlite writer: a write's result lost its type")),
                });
                let _ = reply.send(out);
            }),
        }))?;
        Self::answer(answer).await
    }

    fn send(&self, job: Job) -> Result<()> {
        self.tx.send(job).map_err(|_| PersistenceError::Unavailable("sqlite worker thread has stopped".into()).into())
    }

    async fn answer<R>(answer: tokio::sync::oneshot::Receiver<Result<R>>) -> Result<R> {
        let mut answer = answer;
        let start = Instant::now();
        // Counted from before the first check to the answer (or the
        // caller's cancellation): with other calls waiting too, on this
        // store or another in the process, cores are busy and this one
        // parks at once rather than compete for one, also with the writer
        // thread (8 concurrent writers spinning 40 µs each: W5 NORMAL
        // 12.2k inserts/s, 40 % of the run's samples on the callers'
        // clock reads; parking at once: 14.4k-16.3k).
        let _waiting = Waiting::new(&WAITING);
        let alone = WAITING.load(Ordering::Relaxed) <= 1;
        let deadline = start + SPIN;
        while alone && Instant::now() < deadline {
            match answer.try_recv() {
                Ok(out) => return out,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => std::hint::spin_loop(),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => break,
            }
        }
        let deadline = start + YIELD_SPIN;
        while alone && Instant::now() < deadline {
            match answer.try_recv() {
                Ok(out) => return out,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => break,
            }
        }
        answer.await.map_err(|_| PersistenceError::Unavailable("sqlite worker thread dropped the call".into()))?
    }
}

/// Calls sent to any SQLite worker of this process and not yet answered.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// One waiting call in [`WAITING`], for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long either side spins for the other before parking (a caller only
/// when it is the only one waiting).
const SPIN: Duration = Duration::from_micros(40);

/// How long a caller that is the process's only waiting call keeps checking
/// for its answer, yielding to the runtime between checks, before it
/// parks. Parking costs a wake-up when the answer comes, and on a virtual
/// machine waking an idle vCPU costs more than most writes: with
/// `synchronous=full` a write's fsync outlasts [`SPIN`]. Yielding keeps
/// the runtime thread serving other tasks (it never blocks); it only keeps
/// the thread from sleeping for this long. With other calls waiting (on
/// this store's workers or another store's) the cores are busy anyway,
/// and a caller parks at once instead of taking one from them: a count per
/// worker let the test suite's many concurrent stores spin against each
/// other (SQLite conformance 48 s → 80 s in CI).
///
/// Measured (W1, 10,000 sequential inserts, release, 2-vCPU VM): NORMAL
/// 0.28-0.32x the raw ceiling with the 40 µs spin alone, 0.45-0.49x with
/// 400 µs of yielding, 0.45-0.48x with 1 ms; FULL 0.65-0.69x, 0.68-0.79x,
/// 1.08-1.12x.
const YIELD_SPIN: Duration = Duration::from_millis(1);

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

/// Runs `f` until it succeeds or fails with something other than SQLite's
/// busy/locked, pausing 1 ms, then doubling up to 50 ms, between tries.
/// Past `deadline` a busy database is `Unavailable`, saying for how long it
/// stayed locked (`waited`).
///
/// The writer connection's own SQLite busy handler is off (timeout 0): this
/// loop is the one place a writer waits, with the store's deadline, also
/// where SQLite reports busy without calling its handler (a deferred
/// transaction upgrading to write, as the migration does).
pub(crate) fn retry_busy<R>(deadline: Instant, waited: Duration, mut f: impl FnMut() -> Result<R>) -> Result<R> {
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
                    tracing::warn!(timeout_ms = waited.as_millis() as u64, "SQLite database stayed locked; giving up");
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

/// Runs `group` in one `BEGIN IMMEDIATE` transaction, each write in its own
/// savepoint, commits, and only then finishes each (in order). When the
/// transaction as a whole fails, runs each write alone instead.
fn write_group(conn: &mut Connection, mut group: Vec<WriteJob>) {
    if group.len() == 1 {
        if let Some(job) = group.pop() {
            write_alone(conn, job);
        }
        return;
    }
    let timeout = group.iter().map(|j| j.timeout).max().unwrap_or_default();
    let together = retry_busy(Instant::now() + timeout, timeout, || {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(group.len());
        for job in group.iter_mut() {
            tx.execute_batch("SAVEPOINT kp_write")?;
            let applied = catch_unwind(AssertUnwindSafe(|| (job.apply)(&tx)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a write panicked")));
            match applied {
                Ok(v) => {
                    tx.execute_batch("RELEASE kp_write")?;
                    outcomes.push(Ok(v));
                }
                // A busy database mid-group: the whole group waits and
                // starts over.
                Err(e) if is_busy(&e) => return Err(e),
                Err(e) => {
                    tx.execute_batch("ROLLBACK TO kp_write; RELEASE kp_write")?;
                    outcomes.push(Err(e));
                }
            }
        }
        tx.commit()?;
        Ok(outcomes)
    });
    match together {
        Ok(outcomes) => {
            for (job, out) in group.into_iter().zip(outcomes) {
                finish(job.finish, out);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, writes = group.len(), "grouped write failed; running each alone");
            for job in group {
                write_alone(conn, job);
            }
        }
    }
}

/// One write in its own transaction.
fn write_alone(conn: &mut Connection, mut job: WriteJob) {
    let out = catch_unwind(AssertUnwindSafe(|| write(conn, job.timeout, |tx| (job.apply)(tx))))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("a write panicked")));
    finish(job.finish, out);
}

fn finish(f: Finish, out: Result<Produced>) {
    // A panic here (in the caller's after-commit step) drops the reply:
    // the caller gets `Unavailable`.
    let _ = catch_unwind(AssertUnwindSafe(move || f(out)));
}

/// How the store runs its calls: reads on the reader pool, writes on
/// the writer thread, driver errors classified.
impl SqliteStore {
    pub(crate) async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let location = self.location.clone();
        self.readers.run(move |conn| f(conn)).await.map_err(|e| classify(e, &location))
    }

    pub(crate) async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnMut(&rusqlite::Transaction<'_>) -> Result<R> + Send + 'static,
    {
        self.write_then(f, |_, out| out).await
    }

    /// Runs `f` in one write transaction, then `after` on the writer thread
    /// with the context cache, in commit order.
    pub(crate) async fn write_then<R, T, F, A>(&self, f: F, after: A) -> Result<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnMut(&rusqlite::Transaction<'_>) -> Result<R> + Send + 'static,
        A: FnOnce(&mut ContextCache, R) -> T + Send + 'static,
    {
        let location = self.location.clone();
        let timeout = self.options.busy_timeout;
        let cache = self.cache.clone();
        self.writer
            .write(timeout, f, move |out| after(&mut cache.lock(), out))
            .await
            .map_err(|e| classify(e, &location))
    }
}

/// Drops `session` from the context cache in a write's after-commit step
/// (on the writer thread), freeing its rows only once the write's callers
/// were answered.
pub(crate) fn forget_after_answer(cache: &mut ContextCache, session: &str) {
    if let Some(rows) = cache.remove(session) {
        drop_after_answer(rows);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::Mutex;

    type Outcomes = Arc<Mutex<Vec<(usize, Result<i64, String>, i64)>>>;

    /// A write of `n` into `t`; `fail` makes it fail after writing.
    /// Its finish records the outcome and how many rows a separate
    /// connection sees at that moment (what is committed).
    fn job(n: i64, fail: bool, path: std::path::PathBuf, seen: Outcomes, i: usize) -> WriteJob {
        WriteJob {
            timeout: Duration::from_secs(5),
            apply: Box::new(move |tx| {
                tx.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
                if fail {
                    anyhow::bail!("write {n} fails after inserting");
                }
                Ok(Box::new(n) as Produced)
            }),
            finish: Box::new(move |out| {
                let other = Connection::open(&path).unwrap();
                let committed: i64 = other.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
                let out = out.map(|v| *v.downcast::<i64>().unwrap()).map_err(|e| e.to_string());
                seen.lock().unwrap().push((i, out, committed));
            }),
        }
    }

    /// A WAL database file with one table `t (n)`, and a connection to it.
    fn scratch() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (n INTEGER)").unwrap();
        (dir, path, conn)
    }

    #[test]
    fn a_group_commits_once_before_answering_and_rolls_back_a_failed_write_alone() {
        let (_dir, path, mut conn) = scratch();
        let seen: Outcomes = Arc::default();
        let group = (0..5).map(|i| job(i as i64, i == 2, path.clone(), seen.clone(), i)).collect();
        write_group(&mut conn, group);
        let seen = seen.lock().unwrap();
        let order: Vec<usize> = seen.iter().map(|(i, _, _)| *i).collect();
        assert_eq!(order, [0, 1, 2, 3, 4], "answered in order");
        for (i, out, committed) in seen.iter() {
            // Every caller hears only after the one commit of all four.
            assert_eq!(*committed, 4, "write {i} was answered before the commit");
            if *i == 2 {
                assert!(out.is_err(), "the failing write succeeded");
            } else {
                assert_eq!(out.as_ref().ok(), Some(&(*i as i64)));
            }
        }
        let stored: Vec<i64> = conn
            .prepare("SELECT n FROM t ORDER BY n")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(stored, [0, 1, 3, 4], "the failed write left a row");
    }

    #[test]
    fn a_group_takes_the_waiting_writes_up_to_the_next_other_job() {
        let (_dir, path, _conn) = scratch();
        let seen: Outcomes = Arc::default();
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 1..3 {
            tx.send(Job::Write(job(i, false, path.clone(), seen.clone(), 0))).unwrap();
        }
        tx.send(Job::Raw(Box::new(|_| {}))).unwrap();
        tx.send(Job::Write(job(3, false, path.clone(), seen.clone(), 0))).unwrap();
        // The last group was larger and slow: this one may wait for more,
        // but the queued job that is not a write ends it, in order.
        let last = LastGroup { size: 10, took: Duration::from_secs(1) };
        let mut pending = None;
        let first = job(0, false, path.clone(), seen, 0);
        let group = gather(&rx, first, &last, &mut pending);
        assert_eq!(group.len(), 3);
        assert!(matches!(pending, Some(Job::Raw(_))));
        assert!(matches!(rx.try_recv(), Ok(Job::Write(_))));
    }

    /// Handed to `drop_after_answer`: its drop waits (at most 5 s) for the
    /// caller to say it has its answer, then records whether it had.
    struct Handed {
        answered: Arc<std::sync::atomic::AtomicBool>,
        go: std::sync::mpsc::Receiver<()>,
        dropped_answered: Arc<Mutex<Option<bool>>>,
    }

    impl Drop for Handed {
        fn drop(&mut self) {
            let _ = self.go.recv_timeout(Duration::from_secs(5));
            *self.dropped_answered.lock().unwrap() = Some(self.answered.load(Ordering::SeqCst));
        }
    }

    #[tokio::test]
    async fn what_a_write_hands_over_is_dropped_after_its_caller_is_answered() {
        let (_dir, _path, conn) = scratch();
        let worker = Worker::spawn("test-writer", vec![conn], true, None, Duration::from_secs(5)).unwrap();
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dropped_answered = Arc::new(Mutex::new(None));
        let (go, wait) = std::sync::mpsc::channel();
        let handed = Handed { answered: answered.clone(), go: wait, dropped_answered: dropped_answered.clone() };
        let started = Instant::now();
        let n = worker
            .write(
                Duration::from_secs(5),
                |tx| Ok(tx.execute("INSERT INTO t (n) VALUES (1)", [])?),
                move |n| {
                    drop_after_answer(handed);
                    n
                },
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert!(started.elapsed() < Duration::from_secs(4), "the caller waited for the handed-over value's drop");
        answered.store(true, Ordering::SeqCst);
        go.send(()).unwrap();
        // The next job runs after the drop.
        worker.write(Duration::from_secs(5), |_| Ok(()), |()| ()).await.unwrap();
        assert_eq!(*dropped_answered.lock().unwrap(), Some(true));
    }

    #[test]
    fn a_group_whose_transaction_fails_runs_each_write_alone() {
        let (_dir, path, mut conn) = scratch();
        // Another connection holds the write lock past the timeout: the
        // group gives up, then each write alone gives up too, each with
        // its own busy error.
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        // As the store's writer: no SQLite busy handler, the loop waits.
        conn.busy_timeout(Duration::ZERO).unwrap();
        let seen: Outcomes = Arc::default();
        let group = (0..3)
            .map(|i| {
                let mut j = job(i as i64, false, path.clone(), seen.clone(), i);
                j.timeout = Duration::from_millis(20);
                j
            })
            .collect();
        write_group(&mut conn, group);
        holder.execute_batch("ROLLBACK").unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "every caller is answered");
        for (i, out, committed) in seen.iter() {
            assert!(out.is_err(), "write {i} succeeded under a held lock");
            assert_eq!(*committed, 0);
        }
    }
}
