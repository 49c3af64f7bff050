-- koda-persistence PostgreSQL schema, version 7: large outputs stored once.
--
-- A message field that is a body (koda_persistence_api::bodies: a tool
-- result from 256 bytes, any field from 4 KiB) has NULL in its own column
-- and the body's address (SHA-256 of its text) in content_body,
-- full_content_body or tool_calls_body. `bodies` holds each body once,
-- compressed by the client (zstd; STORAGE EXTERNAL, so TOAST stores it out
-- of line without compressing it again), with `refs`, the number of
-- message fields that point at it.
--
-- Writers add references in the statement that inserts the rows
-- (INSERT ... ON CONFLICT (hash) DO UPDATE SET refs = refs + n: a body
-- that a concurrent writer is releasing is either still there and counted,
-- or gone and inserted anew; the data always travels with the insert).
-- Every delete of messages (a session's cascade, a purge) releases its
-- references in the same statement, through the statement trigger below.
-- Lock order as everywhere: the session row first, then messages, then
-- bodies, those in address order.
--
-- Written to run again over its own result (IF NOT EXISTS, OR REPLACE):
-- a schema whose history was rewound re-applies it cleanly.

CREATE TABLE IF NOT EXISTS bodies (
    hash BYTEA PRIMARY KEY,
    data BYTEA NOT NULL,
    len  BIGINT NOT NULL,
    refs BIGINT NOT NULL
);
ALTER TABLE bodies ALTER COLUMN data SET STORAGE EXTERNAL;

ALTER TABLE messages
    ADD COLUMN IF NOT EXISTS content_body BYTEA,
    ADD COLUMN IF NOT EXISTS full_content_body BYTEA,
    ADD COLUMN IF NOT EXISTS tool_calls_body BYTEA;

CREATE OR REPLACE FUNCTION kp_release_bodies() RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM 1 FROM bodies WHERE hash IN (
            SELECT content_body FROM gone
            UNION SELECT full_content_body FROM gone
            UNION SELECT tool_calls_body FROM gone)
        ORDER BY hash FOR NO KEY UPDATE;
    UPDATE bodies b SET refs = b.refs - g.n
    FROM (SELECT h, count(*) AS n FROM (
              SELECT content_body AS h FROM gone
              UNION ALL SELECT full_content_body FROM gone
              UNION ALL SELECT tool_calls_body FROM gone) x
          WHERE h IS NOT NULL GROUP BY h) g
    WHERE b.hash = g.h;
    DELETE FROM bodies WHERE refs <= 0 AND hash IN (
        SELECT content_body FROM gone
        UNION SELECT full_content_body FROM gone
        UNION SELECT tool_calls_body FROM gone);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS messages_release_bodies ON messages;
CREATE TRIGGER messages_release_bodies AFTER DELETE ON messages
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION kp_release_bodies();

-- Compaction as in version 3, with the summary stored as a body when it
-- is one (p_summary NULL, p_summary_body its address, p_body its packed
-- bytes).
CREATE OR REPLACE FUNCTION kp_compact(
    p_session      TEXT,
    p_summary      BYTEA,
    p_hint         BYTEA,
    p_keep         BIGINT,
    p_now          BIGINT,
    p_summary_body BYTEA,
    p_body         BYTEA,
    p_body_len     BIGINT
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
    IF p_summary_body IS NOT NULL THEN
        INSERT INTO bodies AS b (hash, data, len, refs)
            VALUES (p_summary_body, p_body, p_body_len, 1)
            ON CONFLICT (hash) DO UPDATE SET refs = b.refs + 1;
    END IF;
    INSERT INTO messages (session_id, ord, role, content, content_body, created_ms, completed_ms)
        VALUES (p_session, v_place, 'system', p_summary, p_summary_body, p_now, NULL),
               (p_session, v_place + 1, 'assistant', p_hint, NULL, p_now, p_now);
    RETURN v_marked;
END
$$;
