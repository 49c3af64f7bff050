//! Deleted sessions kept for a grace period (the trash): the URL parameter
//! `keep_deleted_days`, what a trashed session looks like, and the one
//! rule of when it goes for good.
//!
//! With a grace period of `N` days (`N` > 0),
//! [`delete_session`](crate::Persistence::delete_session) moves the session,
//! its messages, metadata and usage out of every read into the store's
//! trash, unchanged (ids, times, states, positions, counters, bodies):
//! every call of [`Persistence`](crate::Persistence) and of every capability trait
//! then answers exactly as if it were deleted (listings, loads, usage,
//! `recent_user_messages`, `compacted_stats`, `purge_compacted`, search,
//! fork, export, and every write: `SessionNotFound`/`MessageNotFound`).
//! [`Trash::restore_session`] puts it back
//! byte-exact. A trashed session is **expired** from the instant
//! `deleted_ms + N × 86,400,000 ≤ now` ([`is_expired`]): from then on it can
//! no longer be listed or restored, and the next open (one that may write)
//! or [`Trash::purge_deleted`] removes it
//! for good, releasing its bodies. `N` is the grace period of the handle
//! doing it (the URL it was opened with), not the one in force when the
//! session was deleted. With `N` = 0 a delete is for good at once, as
//! koda has always done, and an open or purge empties the trash.
//!
//! The default is [`DEFAULT_KEEP_DELETED_DAYS`] on every store this layer
//! created, and 0 on a SQLite file adopted from an older koda, so that a
//! delete there still removes the rows an older koda reads. An older koda
//! sharing a file with this layer never sees trashed sessions (they are
//! not in its tables), and cannot restore them.
//!
//! Copies (`export`, `import`, `copy`) carry live sessions only: the trash
//! stays with its store.

use crate::error::PersistenceError;
use crate::url::StoreUrl;
use anyhow::Result;

/// The trash: deleted sessions kept for a grace period, listed, restored
/// or purged for good.
#[async_trait::async_trait]
pub trait Trash: Send + Sync {
    /// The sessions in the trash that have not expired, the latest
    /// deletion first (ties by id), each with when it goes for good
    /// ([`crate::trash`]: the rules of the grace period). Empty when the
    /// store keeps no grace period.
    async fn list_deleted(&self) -> Result<Vec<DeletedSession>>;

    /// How many sessions [`list_deleted`](Self::list_deleted) would list
    /// (in the trash and not expired), without reading them: for a badge
    /// or a summary line. 0 when the store keeps no grace period.
    async fn count_deleted(&self) -> Result<usize>;

    /// Brings a trashed, unexpired session back byte-exact: its record
    /// (id, agent, root, times, title, mode, listing order), every message
    /// with its id, position, text, states, times, agent and usage, its
    /// metadata, and the counters `list_sessions` and the usage calls
    /// read. One atomic step.
    ///
    /// # Errors
    /// `SessionNotFound` when the id is not in the trash (never deleted,
    /// deleted for good, or expired); `Conflict` when a live session holds
    /// the id (only an import can make one). Nothing is written on error.
    async fn restore_session(&self, session_id: &str) -> Result<()>;

    /// Removes for good every trashed session that has expired (see
    /// [`crate::trash`]), with its messages, metadata and the references
    /// to its bodies (a body another session still uses stays), and
    /// returns them; with `dry_run`, changes nothing and returns what it
    /// would remove. Sessions still in their grace period are untouched.
    async fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>>;
}

/// The grace period, in days, of a store this layer created, when its
/// URL does not say.
pub const DEFAULT_KEEP_DELETED_DAYS: u32 = 7;

/// The longest grace period a URL may ask for (about 100 years).
pub const MAX_KEEP_DELETED_DAYS: u32 = 36_500;

/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// The URL parameter naming the grace period.
pub const KEEP_DELETED_DAYS: &str = "keep_deleted_days";

/// The URL parameter that turns the open-time purge off.
pub const PURGE_ON_OPEN: &str = "purge_on_open";

/// What every backend's options hold of the trash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrashOptions {
    /// Days a deleted session stays in the trash (`keep_deleted_days=N`);
    /// `None`: the store's default ([`DEFAULT_KEEP_DELETED_DAYS`], or 0 on
    /// a SQLite file adopted from an older koda); 0: deletes are for good
    /// at once.
    pub keep_deleted_days: Option<u32>,
    /// Whether opening removes the expired trashed sessions
    /// (`purge_on_open=true|false`, true by default). `koda-store purge
    /// --deleted` opens with it off, so that its report (and its dry run)
    /// names what an open would have removed.
    pub purge_on_open: bool,
}

impl Default for TrashOptions {
    fn default() -> Self {
        Self { keep_deleted_days: None, purge_on_open: true }
    }
}

impl TrashOptions {
    /// These options with `keep_deleted_days` and `purge_on_open` taken
    /// from `url` where it names them.
    ///
    /// # Errors
    /// `InvalidInput` naming the parameter for a bad value.
    pub fn with_parameters(mut self, url: &StoreUrl) -> Result<Self, PersistenceError> {
        if let Some(days) = keep_deleted_days(url)? {
            self.keep_deleted_days = Some(days);
        }
        if let Some(p) = url.take(PURGE_ON_OPEN) {
            self.purge_on_open = p.boolean()?;
        }
        Ok(self)
    }

    /// Checks options set in code.
    ///
    /// # Errors
    /// `InvalidInput` for a grace period over [`MAX_KEEP_DELETED_DAYS`].
    pub fn validate(&self) -> Result<(), PersistenceError> {
        match self.keep_deleted_days {
            Some(days) => check_keep_deleted_days(days),
            None => Ok(()),
        }
    }

    /// The grace period of a store opened with these options: the one
    /// asked for, else [`DEFAULT_KEEP_DELETED_DAYS`] on a store this layer
    /// created (`created_here`) and 0 on a file adopted from an older
    /// koda, whose own reads and deletes expect a delete to be for good.
    pub fn days(&self, created_here: bool) -> u32 {
        self.keep_deleted_days.unwrap_or(if created_here { DEFAULT_KEEP_DELETED_DAYS } else { 0 })
    }
}

/// The open-time purge, the same on every backend: with
/// [`TrashOptions::purge_on_open`], `expired` (the backend's one read: has
/// any trashed session passed its grace period?) decides, and only then
/// are they removed for good with [`Trash::purge_deleted`], so an open
/// writes nothing when nothing expired. A failure (a role without the
/// rights, a busy file, a full disk) is warned, never fails the open:
/// the next open or purge tries again.
pub async fn purge_on_open<S, F>(store: &S, options: &TrashOptions, expired: F)
where
    S: Trash + ?Sized,
    F: std::future::Future<Output = Result<bool>>,
{
    if !options.purge_on_open {
        return;
    }
    let outcome = async {
        if expired.await? {
            store.purge_deleted(false).await?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = outcome {
        tracing::warn!(error = %format!("{e:#}"), "purging expired deleted sessions");
    }
}

/// Takes `keep_deleted_days=N` from `url` (every backend accepts it):
/// `None` when absent (the store's default applies).
///
/// # Errors
/// `InvalidInput` naming the parameter for anything but a whole number
/// from 0 to [`MAX_KEEP_DELETED_DAYS`].
pub fn keep_deleted_days(url: &StoreUrl) -> Result<Option<u32>, PersistenceError> {
    match url.take(KEEP_DELETED_DAYS) {
        None => Ok(None),
        Some(p) => {
            let n = p.number(0, u64::from(MAX_KEEP_DELETED_DAYS))?;
            Ok(Some(u32::try_from(n).unwrap_or(MAX_KEEP_DELETED_DAYS)))
        }
    }
}

/// Checks a grace period set in code (an options struct).
///
/// # Errors
/// `InvalidInput` above [`MAX_KEEP_DELETED_DAYS`].
pub fn check_keep_deleted_days(days: u32) -> Result<(), PersistenceError> {
    if days > MAX_KEEP_DELETED_DAYS {
        return Err(PersistenceError::InvalidInput(format!(
            "{KEEP_DELETED_DAYS} must be at most {MAX_KEEP_DELETED_DAYS}, got {days}"
        )));
    }
    Ok(())
}

/// When a session deleted at `deleted_ms` expires under a grace period
/// of `days`: `deleted_ms + days × 86,400,000`, saturating.
pub fn purge_at_ms(deleted_ms: i64, days: u32) -> i64 {
    deleted_ms.saturating_add(i64::from(days).saturating_mul(DAY_MS))
}

/// Whether a session deleted at `deleted_ms` has expired at `now` under a
/// grace period of `days` (`purge_at_ms(deleted_ms, days) <= now`).
pub fn is_expired(deleted_ms: i64, days: u32, now: i64) -> bool {
    purge_at_ms(deleted_ms, days) <= now
}

/// The newest deletion instant that has expired at `now` under `days`:
/// a trashed session is expired exactly when its `deleted_ms` is at most
/// this (the bound a store's purge query takes).
pub fn expired_cutoff(now: i64, days: u32) -> i64 {
    now.saturating_sub(i64::from(days).saturating_mul(DAY_MS))
}

/// A session in the trash, as [`Trash::list_deleted`]
/// and [`Trash::purge_deleted`] report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedSession {
    /// The session's id (restore it by this id).
    pub id: String,
    /// Its agent.
    pub agent_name: String,
    /// Its root (`None`: a root-less legacy session).
    pub project_root: Option<String>,
    /// Its title.
    pub title: Option<String>,
    /// When it was created.
    pub created_ms: i64,
    /// How many messages it holds (compacted included).
    pub message_count: i64,
    /// When it was deleted.
    pub deleted_ms: i64,
    /// When it goes for good ([`purge_at_ms`] under the handle's grace
    /// period).
    pub purge_at_ms: i64,
}

/// Orders trashed sessions as every backend lists them: the latest
/// deletion first, ties by id (bytewise).
pub fn sort_deleted(list: &mut [DeletedSession]) {
    list.sort_by(|a, b| b.deleted_ms.cmp(&a.deleted_ms).then_with(|| a.id.as_bytes().cmp(b.id.as_bytes())));
}

/// `Conflict`: `id` is in the trash, so a session with that id cannot be
/// imported (restore or purge it first).
pub fn in_trash(id: &str) -> anyhow::Error {
    PersistenceError::Conflict(format!("session {id:?} is in the trash: restore it or purge it first")).into()
}

/// `Conflict`: a live session holds `id`, so the trashed one cannot come
/// back under it.
pub fn live_session_exists(id: &str) -> anyhow::Error {
    PersistenceError::Conflict(format!("a live session {id:?} exists; the trashed one stays in the trash")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_at_the_boundary() {
        assert!(!is_expired(1_000, 1, 1_000 + DAY_MS - 1));
        assert!(is_expired(1_000, 1, 1_000 + DAY_MS));
        assert!(is_expired(1_000, 0, 1_000));
        assert_eq!(expired_cutoff(1_000 + DAY_MS, 1), 1_000);
        assert_eq!(purge_at_ms(i64::MAX - 1, 7), i64::MAX);
    }

    #[test]
    fn the_parameter_is_a_bounded_whole_number() {
        let url = StoreUrl::parse("memory:?keep_deleted_days=3").unwrap();
        assert_eq!(keep_deleted_days(&url).unwrap(), Some(3));
        for bad in ["-1", "1.5", "x", "36501", ""] {
            let url = StoreUrl::parse(&format!("memory:?keep_deleted_days={bad}")).unwrap();
            let err = keep_deleted_days(&url).unwrap_err();
            assert!(err.to_string().contains("keep_deleted_days"), "{err}");
        }
        let url = StoreUrl::parse("memory:").unwrap();
        assert_eq!(keep_deleted_days(&url).unwrap(), None);
    }
}
