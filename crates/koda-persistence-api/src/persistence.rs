//! The [`Persistence`] trait: the storage contract every backend implements.

use std::path::Path;

use anyhow::Result;

use crate::types::{CompactedStats, Message, NewMessage, Role, SessionInfo, SessionUsage, TokenUsage};

/// Core storage contract for koda's sessions, messages, usage and metadata.
///
/// Rules that hold for every method (the conformance suite checks each one on
/// every backend):
///
/// - **Errors**: a failure the caller can act on is a
///   [`PersistenceError`](crate::PersistenceError) inside the `anyhow::Error`
///   ([`PersistenceError::of`](crate::PersistenceError::of)). Writes to an
///   unknown session are `SessionNotFound` and write nothing; reads of an
///   unknown session return empty values. A store that cannot be reached, or
///   stays busy past its timeout, is `Unavailable`; a server that refuses the
///   role (password, grants) is `PermissionDenied`; a stored row that cannot
///   be decoded is `Corrupt`. The text keeps what the database said (SQLSTATE
///   and message, never a password) and the driver error stays in the
///   error's chain as its source. No method, and no open, panics on any
///   input; every URL parameter is range-checked and a bad one is
///   `InvalidInput` naming it.
/// - **Where the argument checks run**: `InvalidInput` for a negative limit
///   or token counter, a project root that is not UTF-8, and import records
///   or id claims out of range comes from the [`Checked`](crate::Checked)
///   layer, not from each backend; every store the facade opens has it.
///   So does the answer for a session id no store can hold (empty, over
///   [`MAX_SESSION_ID_BYTES`](crate::MAX_SESSION_ID_BYTES) bytes, or with
///   NUL: only such ids are ever created or imported): it names no
///   session, and reads and writes answer as for an unknown session. A
///   store made from a backend crate directly is bare and may answer such
///   input without that error (never with a panic): wrap it with
///   [`backend::open_checked`](crate::backend::open_checked).
/// - **Strings** round-trip byte for byte in every field and lookup argument:
///   empty, white space, any Unicode, NUL bytes, and any size up to at least
///   16 MiB, also in fields a database indexes (project roots, agent names,
///   metadata keys). `None` and `Some("")` stay distinct.
/// - **Time**: every timestamp comes from the store's [`Clock`](crate::Clock),
///   read once per call, in whole milliseconds; returned timestamps are UTC
///   RFC 3339 with milliseconds (`2026-11-26T05:07:04.123Z`).
/// - **Ids**: message ids come from one store-wide increasing sequence and are
///   never reused; an insert that starts after another returned gets a larger id.
/// - **Conversation order** is the order of [`load_all_messages`](Self::load_all_messages):
///   insertion order, except that compaction places its summary and hint right
///   before the first preserved message. "Last" always means last in that order.
/// - **Atomicity**: each call is atomic (all of its effects or none) and calls
///   on one session are linearizable; once a call returns `Ok` its effects
///   survive a crash of the process.
/// - **Failed writes** leave nothing visible, and the store keeps working once
///   the cause (a full disk, a dropped connection) is gone, without being
///   reopened by its caller. One exception no client of a database server
///   can close: a write that fails `Unavailable` because the connection was
///   lost while the server committed it (a server crash or failover at that
///   instant) is *in doubt*: the commit may have happened, and with
///   synchronous replication reached the standby, before the answer was
///   lost. Such a write may be stored; a caller that must know re-reads
///   (e.g. [`load_all_messages`](Self::load_all_messages)). Embedded
///   backends have no such window. (Seen in PostgreSQL's failover test: in
///   3 of 9 runs one of about 40 failed writes was on the promoted server.)
/// - **Large outputs stored once** (the contract was silent on storage
///   layout; every backend does this, see [`crate::bodies`]): a tool
///   result from [`TOOL_BODY_MIN`](crate::bodies::TOOL_BODY_MIN) bytes and
///   any `content`, `full_content` or `tool_calls` from
///   [`BODY_THRESHOLD`](crate::bodies::BODY_THRESHOLD) bytes is kept once per
///   store by its SHA-256 and counted; reads return exactly the original
///   bytes; deleting a session, purging, clearing content and a failed write
///   release their references in the same atomic step, and a body goes with
///   its last one. [`Health::health`](crate::Health::health) reports the
///   accounting. (SQLite keeps them inline on a file an older koda may
///   read, until the user opts in: see that crate.)
/// - **Locks and conflicts**: every write takes its locks in one order, the
///   session (several sessions: in id order) before its messages and
///   metadata, and bodies last (in address order), so two writes never
///   deadlock. Busy stores, serialization
///   failures and deadlocks the store can resolve are retried inside it;
///   `Unavailable` means its timeout ran out, `Conflict` that its retries did.
///   `mark_message_complete` of an answer that a concurrent compaction and
///   purge removed is `MessageNotFound`.
/// - **Files** a backend creates (databases, directories) are private to their
///   owner (`0600` / `0700`) whatever the process's umask.
/// - **Encryption at rest** (the contract is silent; see
///   [`crate::cipher`]): a store opened with `key_file=` behaves exactly as
///   one without, every call and rule above included; what changes is what
///   reaches the disk. SQLite (feature `sqlcipher`) encrypts the whole
///   file; sled seals every value with XChaCha20-Poly1305 bound to its row
///   (session ids, message ids, positions, metadata keys and project roots
///   stay in clear in its keys), and addresses bodies by a keyed hash. A
///   wrong or missing key, a key for a store that is not encrypted, and a
///   key file that is missing or readable by others are `PermissionDenied`
///   before anything is written: every file of the store is byte-identical
///   after a refused open (sled checks the key against a copy of its key
///   record kept beside its files, since sled writes as it opens; a store
///   first opened without a key stays plaintext, even while empty). A
///   value changed or moved to another row is `Corrupt`, never other text.
///   Which kind a store has is [`Capabilities::encryption`](crate::Capabilities::encryption);
///   a backend that cannot encrypt refuses `key_file=` with one message. Search on an encrypted sled store is
///   its usual scan, over decrypted text. (PostgreSQL does not take
///   `key_file=` yet.)
/// - **Limits** are `i64`: negative is `InvalidInput`, `0` gives nothing, any
///   positive value up to `i64::MAX` is honoured. Sums saturate at `i64::MAX`.
/// - **Error precedence** (the contract is silent; every backend does this):
///   arguments are checked before the session is looked up, so a negative
///   token counter for an unknown session is `InvalidInput`, not
///   `SessionNotFound`.
#[async_trait::async_trait]
pub trait Persistence: Send + Sync {
    // ── Sessions ──

    /// Creates a session and returns its new unique id. `created_at` is now;
    /// the session has never been accessed and has no title and no mode.
    /// `project_root` is compared by its exact bytes (`/a/b` ≠ `/a/b/`; the
    /// empty path is an ordinary root).
    ///
    /// # Errors
    /// `InvalidInput` when `project_root` is not valid UTF-8.
    async fn create_session(&self, agent_name: &str, project_root: &Path) -> Result<String>;

    /// Sessions whose root equals `project_root`, plus legacy sessions that have
    /// no root (migrated from old koda files; listed under every root), newest
    /// `created_at` first (ties: later-created first), at most
    /// `limit`. `message_count` counts stored messages (compacted included);
    /// `total_tokens` sums `prompt + completion` over them (unset counts 0).
    ///
    /// # Errors
    /// `InvalidInput` for a negative `limit` or a non-UTF-8 `project_root`.
    async fn list_sessions(&self, limit: i64, project_root: &Path) -> Result<Vec<SessionInfo>>;

    /// Deletes a session with its messages and metadata, atomically. Returns
    /// `true` if it existed, `false` for an unknown id (a session already
    /// in the trash is unknown).
    ///
    /// On a store that keeps a grace period (`keep_deleted_days` > 0, see
    /// [`crate::trash`]) the session goes to the trash instead: every call
    /// answers as if it were deleted, and
    /// [`Trash::restore_session`](crate::Trash::restore_session) can bring
    /// it back until the period ends.
    ///
    /// # Errors
    /// Only store failures (`Unavailable`).
    async fn delete_session(&self, session_id: &str) -> Result<bool>;

    /// Sets (overwrites) the session's title.
    ///
    /// # Errors
    /// `SessionNotFound` for an unknown session.
    async fn set_session_title(&self, session_id: &str, title: &str) -> Result<()>;

    /// Sets (overwrites) the session's approval mode, restored on resume.
    ///
    /// # Errors
    /// `SessionNotFound` for an unknown session.
    async fn set_session_mode(&self, session_id: &str, mode: &str) -> Result<()>;

    /// The last mode set on the session; `None` if none was set or the session
    /// is unknown.
    ///
    /// # Errors
    /// Only store failures.
    async fn get_session_mode(&self, session_id: &str) -> Result<Option<String>>;

    /// Whole seconds since the session was last accessed:
    /// `(now − last_accessed_at)` in ms, floor-divided by 1000, clamped at 0.
    /// `None` if the session was never accessed or is unknown. Only the three
    /// inserting methods set `last_accessed_at` (not reads, not compaction).
    ///
    /// # Errors
    /// Only store failures.
    async fn get_session_idle_secs(&self, session_id: &str) -> Result<Option<i64>>;

    // ── Messages ──

    /// Same as [`insert_message_with_agent`](Self::insert_message_with_agent)
    /// with no agent name (provided: backends need not write it).
    ///
    /// # Errors
    /// As `insert_message_with_agent`.
    async fn insert_message(
        &self,
        session_id: &str,
        role: &Role,
        content: Option<&str>,
        tool_calls: Option<&str>,
        tool_call_id: Option<&str>,
        usage: Option<&TokenUsage>,
    ) -> Result<i64> {
        self.insert_message_with_agent(session_id, role, content, tool_calls, tool_call_id, usage, None).await
    }

    /// Appends a message to the session and returns its id. `created_at` is
    /// now; the message is not complete and has no `full_content`. `usage:
    /// None` stores all five counters as `None`; `Some(u)` stores all five,
    /// zeros included. `tool_calls` is stored verbatim (it need not be valid
    /// JSON). Sets the session's `last_accessed_at` to now.
    ///
    /// Provided: builds a [`NewMessage`] and calls
    /// [`append_message`](Self::append_message).
    ///
    /// # Errors
    /// `SessionNotFound` for an unknown session; `InvalidInput` for a negative
    /// token counter. Nothing is written on error.
    #[allow(clippy::too_many_arguments)]
    async fn insert_message_with_agent(
        &self,
        session_id: &str,
        role: &Role,
        content: Option<&str>,
        tool_calls: Option<&str>,
        tool_call_id: Option<&str>,
        usage: Option<&TokenUsage>,
        agent_name: Option<&str>,
    ) -> Result<i64> {
        self.append_message(NewMessage::message(
            session_id,
            *role,
            content,
            tool_calls,
            tool_call_id,
            usage,
            agent_name,
        ))
        .await
    }

    /// Appends a `tool` message whose `content` is the model-facing summary and
    /// `full_content` the complete output, answering `tool_call_id`; no usage,
    /// no agent. Sets the session's `last_accessed_at` to now.
    ///
    /// Provided: builds a [`NewMessage`] and calls
    /// [`append_message`](Self::append_message).
    ///
    /// # Errors
    /// `SessionNotFound` for an unknown session.
    async fn insert_tool_message_with_full(
        &self,
        session_id: &str,
        content: &str,
        tool_call_id: &str,
        full_content: &str,
    ) -> Result<i64> {
        self.append_message(NewMessage::tool_result(session_id, content, tool_call_id, full_content)).await
    }

    /// The one inserting method a backend implements; koda calls the three
    /// `insert_*` methods above, which build `message` and land here.
    /// Appends `message` to its session and returns the new id: `created_at`
    /// is now; not complete; every field stored exactly as given; the
    /// session's `last_accessed_at` set to now.
    ///
    /// # Errors
    /// `InvalidInput` for a negative token counter (checked first);
    /// `SessionNotFound` for an unknown session. Nothing is written on error.
    async fn append_message(&self, message: NewMessage) -> Result<i64>;

    /// The context to send to the model: the active (not compacted) messages in
    /// conversation order, then three passes (see [`apply_context_passes`](crate::backend::apply_context_passes)):
    /// (1) drop assistant messages that are not complete; (2) pair tool calls:
    /// drop every assistant message naming a call id no remaining tool message
    /// answers, then every tool message whose `tool_call_id` is `None` or named
    /// by no remaining assistant message; (3) drop assistant messages without
    /// tool calls whose content is `None` or only white space. Empty for an
    /// unknown session. Reading does not touch `last_accessed_at`.
    ///
    /// # Errors
    /// `Corrupt` when a stored row cannot be decoded.
    async fn load_context(&self, session_id: &str) -> Result<Vec<Message>>;

    /// Every message of the session, compacted and incomplete included, in
    /// conversation order, exactly as stored. Empty for an unknown session.
    ///
    /// # Errors
    /// `Corrupt` when a stored row cannot be decoded.
    async fn load_all_messages(&self, session_id: &str) -> Result<Vec<Message>>;

    /// Across all sessions: contents of `user` messages (compacted included)
    /// whose content is set and non-empty, highest id first, at most `limit`,
    /// no de-duplication.
    ///
    /// # Errors
    /// `InvalidInput` for a negative `limit`.
    async fn recent_user_messages(&self, limit: i64) -> Result<Vec<String>>;

    /// Content of the last assistant message in conversation order whose
    /// content is set (compacted and incomplete included); `""` if none.
    ///
    /// # Errors
    /// Only store failures.
    async fn last_assistant_message(&self, session_id: &str) -> Result<String>;

    /// Content of the last user message in conversation order whose content is
    /// set (compacted included); `""` if none.
    ///
    /// # Errors
    /// Only store failures.
    async fn last_user_message(&self, session_id: &str) -> Result<String>;

    /// `true` iff the last active message in conversation order (no passes;
    /// incomplete ones count) is an assistant message with `tool_calls` set.
    ///
    /// # Errors
    /// Only store failures.
    async fn has_pending_tool_calls(&self, session_id: &str) -> Result<bool>;

    /// Marks a message as fully delivered: sets its `completed_at` to now. Works
    /// on any role and is idempotent (a second call moves `completed_at`).
    /// Callers use it only after a legitimate end of stream; an unset
    /// `completed_at` means the message was interrupted.
    ///
    /// # Errors
    /// `MessageNotFound` for an unknown id.
    async fn mark_message_complete(&self, message_id: i64) -> Result<()>;

    // ── Token usage ──

    /// Sums of the five counters over the session's stored messages (compacted
    /// included) whose `prompt_tokens` or `completion_tokens` is set;
    /// `api_calls` counts those messages. Zeros for an unknown session.
    /// Each sum is the exact sum saturated at `i64::MAX` when read: a message
    /// purged or deleted takes exactly its counters away, also from a sum
    /// that was saturated. Backends keep these sums per session and agent in
    /// the writes' own transactions, so this costs O(agents), not
    /// O(messages).
    ///
    /// # Errors
    /// Only store failures.
    async fn session_token_usage(&self, session_id: &str) -> Result<SessionUsage>;

    /// The same sums grouped by agent name, where no agent and `"main"` are one
    /// group named `"main"`; ordered by `prompt + completion` descending, ties
    /// by name in byte order. Agents with no counted message do not appear.
    ///
    /// # Errors
    /// Only store failures.
    async fn session_usage_by_agent(&self, session_id: &str) -> Result<Vec<(String, SessionUsage)>>;

    // ── Compaction ──

    /// Marks all but the last `preserve_count` active messages (conversation
    /// order) compacted at now. If none is marked, returns 0 and changes
    /// nothing. Otherwise, atomically, adds a `system` message holding
    /// `summary` and a complete `assistant` message holding
    /// [`COMPACTION_HINT`](crate::COMPACTION_HINT) (no tool calls, usage, agent
    /// or full content) right before the first preserved message (at the end
    /// when none is preserved), and returns the number marked. Does not touch
    /// `last_accessed_at`. The two new messages take the next ids of the
    /// store-wide sequence, so in a compacted session id order and
    /// conversation order differ.
    ///
    /// # Errors
    /// `SessionNotFound` for an unknown session.
    async fn compact_session(&self, session_id: &str, summary: &str, preserve_count: usize) -> Result<usize>;

    // ── Microcompact ──

    /// Sets `content = stub` on each listed message that exists, in any
    /// session, compacted or not; unknown ids are ignored. Nothing else changes.
    ///
    /// # Errors
    /// Only store failures.
    async fn clear_message_content(&self, message_ids: &[i64], stub: &str) -> Result<()>;

    // ── Purge ──

    /// Over compacted messages of all sessions: their count, the number of
    /// distinct sessions, `size_bytes` (UTF-8 bytes of `content` plus
    /// `tool_calls`, unset counts 0), and the earliest `compacted_at`.
    ///
    /// # Errors
    /// Only store failures.
    async fn compacted_stats(&self) -> Result<CompactedStats>;

    /// Permanently deletes compacted messages whose `compacted_at` is strictly
    /// before `now − min_age_days × 86 400 000 ms`; returns how many. `0`
    /// deletes every compacted message, including those compacted in this very
    /// millisecond (which the strict cutoff alone would keep). A cutoff before
    /// 1970 deletes nothing. Active messages are never touched.
    ///
    /// # Errors
    /// Only store failures.
    async fn purge_compacted(&self, min_age_days: u32) -> Result<usize>;

    // ── Metadata ──

    /// The value stored under `key` for the session, else `None`.
    ///
    /// # Errors
    /// Only store failures.
    async fn get_metadata(&self, session_id: &str, key: &str) -> Result<Option<String>>;

    /// Stores `value` under `key` for the session (upsert).
    ///
    /// # Errors
    /// `SessionNotFound` for an unknown session.
    async fn set_metadata(&self, session_id: &str, key: &str, value: &str) -> Result<()>;

    /// The TODO list: the metadata value under [`TODO_KEY`](crate::TODO_KEY)
    /// (provided).
    ///
    /// # Errors
    /// Only store failures.
    async fn get_todo(&self, session_id: &str) -> Result<Option<String>> {
        self.get_metadata(session_id, crate::TODO_KEY).await
    }

    /// Stores the TODO list as the metadata value under
    /// [`TODO_KEY`](crate::TODO_KEY) (provided).
    ///
    /// # Errors
    /// `SessionNotFound` for an unknown session.
    async fn set_todo(&self, session_id: &str, content: &str) -> Result<()> {
        self.set_metadata(session_id, crate::TODO_KEY, content).await
    }
}
