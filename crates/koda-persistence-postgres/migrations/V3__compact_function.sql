-- koda-persistence PostgreSQL schema, version 3: compaction in one call,
-- and an index of the active messages.
-- Run from the client, a compaction held the session's row lock across
-- five round trips, and every writer of that session waited for all of
-- them. As one function call the lock is held for the statements alone.
--
-- Lock order as everywhere: the session row first, then its messages.
-- VOLATILE: under READ COMMITTED each statement below takes a fresh
-- snapshot, so the messages read after the lock include every write that
-- committed before it. The search path is pinned to this schema so the
-- function never depends on the caller's.
--
-- The active (not compacted) messages get an index of their own: a long
-- session's compacted rows no longer cost every compaction (and every
-- context load) a scan.
--
-- Returns the number of messages marked compacted, or -1 when the session
-- does not exist.

CREATE INDEX messages_active ON messages (session_id, ord) WHERE compacted_ms IS NULL;

CREATE FUNCTION kp_compact(
    p_session TEXT,
    p_summary BYTEA,
    p_hint    BYTEA,
    p_keep    BIGINT,
    p_now     BIGINT
) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_next   BIGINT;
    v_active BIGINT;
    v_marked BIGINT;
    v_place  BIGINT;
BEGIN
    SELECT next_ord INTO v_next FROM sessions WHERE id = p_session FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    SELECT count(*) INTO v_active
        FROM messages WHERE session_id = p_session AND compacted_ms IS NULL;
    v_marked := v_active - p_keep;
    IF v_marked <= 0 THEN
        RETURN 0;
    END IF;
    -- The summary and hint take the first preserved message's place (its
    -- tail moves two places on), or go after the last message.
    SELECT ord INTO v_place
        FROM messages WHERE session_id = p_session AND compacted_ms IS NULL
        ORDER BY ord OFFSET v_marked LIMIT 1;
    IF NOT FOUND THEN
        v_place := v_next + 1;
    END IF;
    UPDATE sessions SET next_ord = next_ord + 2, message_count = message_count + 2,
        version = version + 1
        WHERE id = p_session;
    UPDATE messages SET compacted_ms = p_now
        WHERE session_id = p_session AND compacted_ms IS NULL AND ord < v_place;
    UPDATE messages SET ord = ord + 2 WHERE session_id = p_session AND ord >= v_place;
    INSERT INTO messages (session_id, ord, role, content, created_ms, completed_ms)
        VALUES (p_session, v_place, 'system', p_summary, p_now, NULL),
               (p_session, v_place + 1, 'assistant', p_hint, p_now, p_now);
    RETURN v_marked;
END
$$;
