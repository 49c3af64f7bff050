//! The argument checks of the contract, written once. The [`Checked`](crate::Checked)
//! layer runs them before a call reaches a backend; import paths and
//! backends call the few that need stored state (an id sequence) themselves.

use std::path::Path;

use anyhow::Result;

use crate::clock::{MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS};
use crate::error::PersistenceError;
use crate::import::{Import, StoreHealth};
use crate::persistence::Persistence;
use crate::records::{MAX_SESSION_ID_BYTES, MessageRecord, MetadataRecord, SessionRecord};
use crate::search::{Query, SearchHit, SearchScope};
use crate::trash::DeletedSession;
use crate::types::{CompactedStats, Message, NewMessage, SessionInfo, SessionUsage, TokenUsage};

/// `SessionNotFound` for `id`: the answer every backend gives a write to a
/// session it does not hold.
pub fn session_not_found(id: &str) -> anyhow::Error {
    PersistenceError::SessionNotFound(id.to_owned()).into()
}

/// `MessageNotFound` for `id`.
pub fn message_not_found(id: i64) -> anyhow::Error {
    PersistenceError::MessageNotFound(id).into()
}

/// Checks a `limit` argument: negative is [`PersistenceError::InvalidInput`];
/// any other value is returned as a `usize` bound (saturating), never to be
/// used as a capacity.
///
/// # Errors
/// [`PersistenceError::InvalidInput`] when `limit < 0`.
pub fn check_limit(limit: i64) -> Result<usize, PersistenceError> {
    if limit < 0 {
        return Err(PersistenceError::InvalidInput(format!(
            "limit must not be negative, got {limit}"
        )));
    }
    Ok(usize::try_from(limit).unwrap_or(usize::MAX))
}

/// A `limit` as the bound a store applies: the value itself (saturating
/// at `usize::MAX`, never to be used as a capacity), and 0 for a negative
/// one, which [`Checked`] refuses before any store sees it.
pub fn limit_bound(limit: i64) -> usize {
    usize::try_from(limit).unwrap_or(if limit < 0 { 0 } else { usize::MAX })
}

/// Checks that no counter of `usage` is negative.
///
/// # Errors
/// [`PersistenceError::InvalidInput`] naming the first negative counter.
pub fn check_usage(usage: Option<&TokenUsage>) -> Result<(), PersistenceError> {
    let Some(u) = usage else { return Ok(()) };
    let fields = [
        ("prompt_tokens", u.prompt_tokens),
        ("completion_tokens", u.completion_tokens),
        ("cache_read_tokens", u.cache_read_tokens),
        ("cache_creation_tokens", u.cache_creation_tokens),
        ("thinking_tokens", u.thinking_tokens),
    ];
    match fields.iter().find(|(_, v)| *v < 0) {
        Some((name, v)) => Err(PersistenceError::InvalidInput(format!(
            "token counter {name} must not be negative, got {v}"
        ))),
        None => Ok(()),
    }
}

/// The project root as the exact string that identifies it (its bytes, no
/// normalisation: `/a/b` and `/a/b/` differ, the empty path is a root).
///
/// # Errors
/// [`PersistenceError::InvalidInput`] when the path is not valid UTF-8.
pub fn root_to_str(root: &Path) -> Result<&str, PersistenceError> {
    root.as_os_str().to_str().ok_or_else(|| {
        PersistenceError::InvalidInput(format!(
            "project root is not valid UTF-8: {}",
            root.display()
        ))
    })
}

fn invalid(what: String) -> PersistenceError {
    PersistenceError::InvalidInput(what)
}

fn check_time(what: &str, ms: i64) -> Result<(), PersistenceError> {
    if (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {ms} is outside {MIN_TIMESTAMP_MS}..={MAX_TIMESTAMP_MS} ms"
        )))
    }
}

/// Checks a session id an importer supplies.
///
/// # Errors
/// `InvalidInput` for an empty id, a NUL byte, or more than
/// [`MAX_SESSION_ID_BYTES`] bytes.
pub fn check_session_id(id: &str) -> Result<(), PersistenceError> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES || id.contains('\0') {
        return Err(invalid(format!(
            "a session id has 1 to {MAX_SESSION_ID_BYTES} bytes and no NUL; got {} bytes",
            id.len()
        )));
    }
    Ok(())
}

/// Checks a session record before [`Import::import_session`] writes it.
///
/// # Errors
/// `InvalidInput` naming the bad field.
pub fn check_session_record(s: &SessionRecord) -> Result<(), PersistenceError> {
    check_session_id(&s.id)?;
    check_time("created_ms", s.created_ms)?;
    if let Some(at) = s.last_accessed_ms {
        check_time("last_accessed_ms", at)?;
    }
    Ok(())
}

/// Checks message records before [`Import::import_messages`] writes them.
///
/// # Errors
/// `InvalidInput` naming the message and field.
pub fn check_message_records(messages: &[MessageRecord]) -> Result<(), PersistenceError> {
    for m in messages {
        let at = |what: &str| format!("message {}: {what}", m.id);
        if m.id < 1 {
            return Err(invalid(format!(
                "message id must be positive, got {}",
                m.id
            )));
        }
        check_time(&at("created_ms"), m.created_ms)?;
        for (what, t) in [
            ("completed_ms", m.completed_ms),
            ("compacted_ms", m.compacted_ms),
        ] {
            if let Some(t) = t {
                check_time(&at(what), t)?;
            }
        }
        if let Some(v) = m.counters().into_iter().flatten().find(|v| *v < 0) {
            return Err(invalid(format!(
                "{} must not be negative, got {v}",
                at("a token counter")
            )));
        }
    }
    Ok(())
}

/// Checks a range for [`Import::claim_ids`].
///
/// # Errors
/// `InvalidInput` unless `1 <= first <= last`.
pub fn check_claim(first: i64, last: i64) -> Result<(), PersistenceError> {
    if first < 1 || first > last {
        return Err(invalid(format!(
            "an id claim needs 1 <= first <= last, got {first}..={last}"
        )));
    }
    Ok(())
}

/// The ids `import_messages` gives: the recorded ones with `keep_ids`,
/// else fresh ones counted on from `next`. Returns them and the store's
/// next fresh id.
///
/// # Errors
/// With `keep_ids`: `InvalidInput` for an id the store has not handed out
/// or granted (`>= next`) and for an id given twice.
pub fn assign_ids(
    messages: &[MessageRecord],
    keep_ids: bool,
    next: i64,
) -> Result<(Vec<i64>, i64), PersistenceError> {
    if keep_ids {
        let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
        check_kept(&ids, next.saturating_sub(1))?;
        Ok((ids, next))
    } else {
        let ids: Vec<i64> = (0..messages.len())
            .map(|i| next.saturating_add(i64::try_from(i).unwrap_or(i64::MAX)))
            .collect();
        let after = ids.last().map_or(next, |l| l.saturating_add(1));
        Ok((ids, after))
    }
}

/// Checks ids to be kept against the store's sequence `position` (the last
/// id handed out or granted).
///
/// # Errors
/// `InvalidInput` for an id past `position` (claim it first) and for an id
/// given twice.
pub fn check_kept(ids: &[i64], position: i64) -> Result<(), PersistenceError> {
    if let Some(id) = ids.iter().find(|id| **id > position) {
        return Err(invalid(format!(
            "message id {id} is past this store's id sequence ({position}); claim_ids first"
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    if let Some(id) = ids.iter().find(|id| !seen.insert(**id)) {
        return Err(invalid(format!("message id {id} is given twice")));
    }
    Ok(())
}

/// `Conflict` for a kept id that is taken.
pub fn id_taken(id: i64) -> PersistenceError {
    PersistenceError::Conflict(format!(
        "message id {id} is taken in this store; import without keeping ids"
    ))
}

/// Whether some store could hold a session with this id: only ids
/// [`check_session_id`] accepts are ever created or imported, so any other
/// (empty, longer than [`MAX_SESSION_ID_BYTES`], or holding NUL) names no
/// session, and [`Checked`] answers for it as for an unknown session
/// without asking the store (which may not even be able to look it up:
/// PostgreSQL text cannot hold NUL).
fn holdable(id: &str) -> bool {
    check_session_id(id).is_ok()
}

/// Any store, with the contract's argument checks run before each call
/// reaches it: a negative `limit` or token counter and a project root
/// that is not UTF-8 are `InvalidInput`, and so are import records and id
/// claims that fail [`check_session_record`], [`check_message_records`] or
/// [`check_claim`]. A session id no store can hold (see
/// [`check_session_id`]: empty, over [`MAX_SESSION_ID_BYTES`], or with NUL)
/// gets the unknown session's answer here (empty reads, `false`, `None`;
/// `SessionNotFound` from writes, after the arguments were checked), so no
/// backend needs its own guard. A backend implements storage only; the facade and
/// [`backend::open_url`](crate::backend::open_url) put this layer around
/// every store they open, and the conformance suite runs against stores
/// opened that way (its bad-input cases fail on a store without it).
#[derive(Debug, Clone)]
pub struct Checked<P> {
    inner: P,
}

impl<P> Checked<P> {
    /// `inner`, checked.
    pub fn new(inner: P) -> Self {
        Self { inner }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The wrapped store, unwrapped.
    pub fn into_inner(self) -> P {
        self.inner
    }
}

impl<P> std::ops::Deref for Checked<P> {
    type Target = P;

    fn deref(&self) -> &P {
        &self.inner
    }
}

#[async_trait::async_trait]
impl<P: Persistence> Persistence for Checked<P> {
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String> {
        root_to_str(project_root)?;
        self.inner.create_session(agent_name, project_root).await
    }

    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>> {
        check_limit(limit)?;
        root_to_str(project_root)?;
        self.inner.list_sessions(limit, project_root).await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool> {
        if !holdable(session_id) {
            return Ok(false);
        }
        self.inner.delete_session(session_id).await
    }

    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.set_session_title(session_id, title).await
    }

    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.set_session_mode(session_id, mode).await
    }

    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>> {
        if !holdable(session_id) {
            return Ok(None);
        }
        self.inner.get_session_mode(session_id).await
    }

    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>> {
        if !holdable(session_id) {
            return Ok(None);
        }
        self.inner.get_session_idle_secs(session_id).await
    }

    async fn append_message(&self, message: NewMessage) -> Result<i64> {
        check_usage(message.usage.as_ref())?;
        if !holdable(&message.session_id) {
            return Err(session_not_found(&message.session_id));
        }
        self.inner.append_message(message).await
    }

    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>> {
        if !holdable(session_id) {
            return Ok(Vec::new());
        }
        self.inner.load_context(session_id).await
    }

    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>> {
        if !holdable(session_id) {
            return Ok(Vec::new());
        }
        self.inner.load_all_messages(session_id).await
    }

    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>> {
        check_limit(limit)?;
        self.inner.recent_user_messages(limit).await
    }

    async fn last_assistant_message(&self, session_id: &str) -> Result<String> {
        if !holdable(session_id) {
            return Ok(String::new());
        }
        self.inner.last_assistant_message(session_id).await
    }

    async fn last_user_message(&self, session_id: &str) -> Result<String> {
        if !holdable(session_id) {
            return Ok(String::new());
        }
        self.inner.last_user_message(session_id).await
    }

    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool> {
        if !holdable(session_id) {
            return Ok(false);
        }
        self.inner.has_pending_tool_calls(session_id).await
    }

    async fn mark_message_complete(&self, message_id: i64) -> Result<()> {
        self.inner.mark_message_complete(message_id).await
    }

    async fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage> {
        if !holdable(session_id) {
            return Ok(SessionUsage::default());
        }
        self.inner.session_token_usage(session_id).await
    }

    async fn session_usage_by_agent(
        &self,
        session_id: &str,
    ) -> Result<Vec<(String, SessionUsage)>> {
        if !holdable(session_id) {
            return Ok(Vec::new());
        }
        self.inner.session_usage_by_agent(session_id).await
    }

    async fn compact_session(&self, session_id: &str, summary: &str, keep: usize) -> Result<usize> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.compact_session(session_id, summary, keep).await
    }

    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()> {
        self.inner.clear_message_content(message_ids, stub).await
    }

    async fn compacted_stats(&self) -> Result<CompactedStats> {
        self.inner.compacted_stats().await
    }

    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize> {
        self.inner.purge_compacted(min_age_days).await
    }

    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>> {
        if !holdable(session_id) {
            return Ok(None);
        }
        self.inner.get_metadata(session_id, key).await
    }

    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.set_metadata(session_id, key, value).await
    }
}

#[async_trait::async_trait]
impl<P: Import> Import for Checked<P> {
    async fn export_session_ids(&self) -> Result<Vec<String>> {
        self.inner.export_session_ids().await
    }

    async fn health(&self) -> Result<StoreHealth> {
        self.inner.health().await
    }

    async fn export_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        if !holdable(session_id) {
            return Ok(None);
        }
        self.inner.export_session(session_id).await
    }

    async fn export_messages(&self, session_id: &str) -> Result<Vec<MessageRecord>> {
        if !holdable(session_id) {
            return Ok(Vec::new());
        }
        self.inner.export_messages(session_id).await
    }

    async fn export_metadata(&self, session_id: &str) -> Result<Vec<MetadataRecord>> {
        if !holdable(session_id) {
            return Ok(Vec::new());
        }
        self.inner.export_metadata(session_id).await
    }

    async fn message_id_range(&self) -> Result<Option<(i64, i64)>> {
        self.inner.message_id_range().await
    }

    async fn claim_ids(&self, first: i64, last: i64) -> Result<bool> {
        check_claim(first, last)?;
        self.inner.claim_ids(first, last).await
    }

    async fn import_session(&self, session: &SessionRecord) -> Result<bool> {
        check_session_record(session)?;
        self.inner.import_session(session).await
    }

    async fn import_messages(
        &self,
        session_id: &str,
        messages: &[MessageRecord],
        keep_ids: bool,
    ) -> Result<Vec<i64>> {
        check_message_records(messages)?;
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner
            .import_messages(session_id, messages, keep_ids)
            .await
    }

    async fn import_metadata(&self, session_id: &str, entries: &[MetadataRecord]) -> Result<()> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.import_metadata(session_id, entries).await
    }

    async fn fork_session(&self, session_id: &str, at: Option<i64>) -> Result<String> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.fork_session(session_id, at).await
    }

    async fn list_deleted(&self) -> Result<Vec<DeletedSession>> {
        self.inner.list_deleted().await
    }

    async fn restore_session(&self, session_id: &str) -> Result<()> {
        if !holdable(session_id) {
            return Err(session_not_found(session_id));
        }
        self.inner.restore_session(session_id).await
    }

    async fn purge_deleted(&self, dry_run: bool) -> Result<Vec<DeletedSession>> {
        self.inner.purge_deleted(dry_run).await
    }

    async fn search_messages(
        &self,
        query: &str,
        scope: &SearchScope<'_>,
        limit: usize,
    ) -> Result<Vec<SearchHit>> {
        let parsed = Query::parse(query)?;
        if let Some(root) = scope.project_root {
            root_to_str(root)?;
        }
        if parsed.finds_nothing() || limit == 0 || scope.session.is_some_and(|s| !holdable(s)) {
            return Ok(Vec::new());
        }
        self.inner.search_messages(query, scope, limit).await
    }

    async fn session_checksum(&self, session_id: &str) -> Result<(usize, String)> {
        if !holdable(session_id) {
            return Ok((0, crate::records::session_checksum(&[], &[])));
        }
        self.inner.session_checksum(session_id).await
    }
}
