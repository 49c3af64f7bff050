//! WAL checkpoints off the write path.
//!
//! SQLite's default (`wal_autocheckpoint=1000`) makes the commit that takes
//! the WAL past 1,000 frames copy the whole WAL into the database file (and,
//! with `synchronous=full`, fsync both) before that write returns: a write
//! every few hundred pays several milliseconds, and a compaction, which
//! rewrites hundreds of pages at once, nearly always does.
//!
//! The store's writer connection replaces that with a WAL hook that only
//! records the WAL's size after each commit; past [`CHECKPOINT_FRAMES`] the
//! writer thread nudges a checkpointer thread, which owns a connection of
//! its own and runs a `PASSIVE` checkpoint (it never blocks the writer or a
//! reader). Nothing about durability changes: a commit is durable in the
//! WAL exactly as before; a checkpoint only moves committed pages into the
//! database file. If the checkpointer cannot keep up (a stream of writes
//! that never leaves it a gap) and the WAL reaches [`INLINE_FRAMES`], the
//! writer thread checkpoints itself between two writes (none of the store's
//! can start meanwhile), so the WAL stays bounded; a writer without a checkpointer checkpoints inline at
//! [`CHECKPOINT_FRAMES`], as SQLite would. The checkpoint at close
//! (`TRUNCATE`, see the writer thread) runs after the checkpointer stopped.

use std::cell::Cell;
use std::ffi::c_int;
use std::thread;

use anyhow::Result;
use koda_persistence_api::PersistenceError;
use rusqlite::Connection;
use rusqlite::hooks::Wal;

/// WAL frames past which the checkpointer is nudged (SQLite's own default
/// for `wal_autocheckpoint`).
const CHECKPOINT_FRAMES: c_int = 1000;

/// WAL frames past which the writer checkpoints itself (16 MiB of 4 KiB
/// pages).
const INLINE_FRAMES: c_int = 4 * CHECKPOINT_FRAMES;

thread_local! {
    /// Frames in the WAL after the last commit on this thread's connection.
    static WAL_FRAMES: Cell<c_int> = const { Cell::new(0) };
}

fn note_frames(_: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(frames));
    Ok(())
}

/// Makes `conn`'s commits record the WAL's size for [`after_job`] instead of
/// checkpointing (the hook replaces SQLite's automatic checkpoint).
pub(crate) fn install_hook(conn: &Connection) {
    conn.wal_hook(Some(note_frames));
}

/// Runs a `PASSIVE` checkpoint on `conn`; a failure (another process's
/// checkpoint running, a full disk) is left for the next one.
fn passive(conn: &Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        tracing::debug!(error = %e, "WAL checkpoint failed; the next one retries");
    }
}

/// The checkpointer thread of one writer.
pub(crate) struct Checkpointer {
    nudge: Option<crossbeam_channel::Sender<()>>,
    /// The WAL size at which the next nudge is due: each nudge checkpoints
    /// everything committed by then, so the next is due
    /// [`CHECKPOINT_FRAMES`] later (or at that many again once the WAL
    /// restarted), not after every commit while the WAL is long.
    due: Cell<c_int>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread that checkpoints through `conn` whenever nudged.
    pub(crate) fn spawn(name: &str, conn: Connection) -> Result<Self> {
        // One pending nudge is enough: it checkpoints everything committed
        // by the time it runs.
        let (nudge, nudged) = crossbeam_channel::bounded::<()>(1);
        let thread = thread::Builder::new()
            .name(format!("{name}-checkpointer"))
            .spawn(move || {
                while nudged.recv().is_ok() {
                    passive(&conn);
                }
            })
            .map_err(|e| PersistenceError::Unavailable(format!("cannot start {name} checkpointer: {e}")))?;
        Ok(Self { nudge: Some(nudge), due: Cell::new(CHECKPOINT_FRAMES), thread: Some(thread) })
    }

    /// Ends the thread after its current checkpoint, and waits for it.
    pub(crate) fn stop(mut self) {
        self.nudge.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Called by the writer thread after each job: what the job's commits left
/// in the WAL decides whether to nudge `checkpointer` or, past the bound
/// (or without one), to checkpoint on `conn` now.
pub(crate) fn after_job(conn: &Connection, checkpointer: Option<&Checkpointer>) {
    let frames = WAL_FRAMES.with(|f| f.replace(0));
    if frames == 0 {
        return; // nothing committed
    }
    if frames >= INLINE_FRAMES {
        // Holding no transaction, but no other write of this store can
        // start meanwhile: everything left is copied, and the next write
        // restarts the WAL from its beginning.
        passive(conn);
        return;
    }
    match checkpointer {
        Some(c) => {
            if frames + CHECKPOINT_FRAMES <= c.due.get() {
                // The WAL restarted since the last nudge.
                c.due.set(CHECKPOINT_FRAMES);
            }
            if frames >= c.due.get() {
                if let Some(nudge) = &c.nudge {
                    let _ = nudge.try_send(());
                }
                c.due.set(frames + CHECKPOINT_FRAMES);
            }
        }
        None if frames >= CHECKPOINT_FRAMES => passive(conn),
        None => {}
    }
}
