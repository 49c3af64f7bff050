-- koda-persistence PostgreSQL schema, version 9: the trash.
--
-- With a grace period (keep_deleted_days > 0), delete_session moves the
-- session's rows, every column as stored, into tables shaped like the
-- live ones (LIKE: same columns in the same order, no identity, no keys),
-- out of every read; restore_session moves them back (OVERRIDING SYSTEM
-- VALUE keeps ids and seq). `trash` says what is there and since when.
-- A migration that adds a column to a live table adds it to its twin too.
--
-- Body references: a trashed message keeps its references. Moving rows
-- into either set of tables adds their references in the same
-- transaction (bodies locked in address order); deleting them from either
-- releases them through kp_release_bodies (the messages trigger of
-- version 7, and the one below). Lock order as everywhere: the session
-- row (or its trash row) first, then messages, then bodies.
--
-- Written to run again over its own result (IF NOT EXISTS, OR REPLACE).

CREATE TABLE IF NOT EXISTS trash (
    session_id TEXT PRIMARY KEY,
    deleted_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS trash_deleted ON trash (deleted_ms);
CREATE TABLE IF NOT EXISTS trash_sessions (LIKE sessions);
CREATE TABLE IF NOT EXISTS trash_messages (LIKE messages);
CREATE TABLE IF NOT EXISTS trash_metadata (LIKE session_metadata);
CREATE TABLE IF NOT EXISTS trash_usage (LIKE session_usage);
CREATE INDEX IF NOT EXISTS trash_sessions_id ON trash_sessions (id);
CREATE INDEX IF NOT EXISTS trash_messages_session ON trash_messages (session_id);
CREATE INDEX IF NOT EXISTS trash_metadata_session ON trash_metadata (session_id);
CREATE INDEX IF NOT EXISTS trash_usage_session ON trash_usage (session_id);

DROP TRIGGER IF EXISTS trash_messages_release_bodies ON trash_messages;
CREATE TRIGGER trash_messages_release_bodies AFTER DELETE ON trash_messages
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION kp_release_bodies();
