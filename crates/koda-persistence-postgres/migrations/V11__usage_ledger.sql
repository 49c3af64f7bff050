-- koda-persistence PostgreSQL schema, version 11: the usage ledger (the
-- Ledger capability). Per session x UTC day x agent, with the session's
-- root: the sums of the five token counters and the number of messages,
-- added to by every insert and import in the same statement, never
-- subtracted (no foreign key: a deleted session's rows stay). Filled here
-- from the messages the schema still holds.
--
-- Written to run again over its own result (IF NOT EXISTS, and the fill
-- only into an empty table).

CREATE TABLE IF NOT EXISTS usage_ledger (
    session_id     TEXT COLLATE "C" NOT NULL,
    day            BIGINT NOT NULL,
    agent          BYTEA NOT NULL,
    root           BYTEA,
    prompt         NUMERIC NOT NULL,
    completion     NUMERIC NOT NULL,
    cache_read     NUMERIC NOT NULL,
    cache_creation NUMERIC NOT NULL,
    thinking       NUMERIC NOT NULL,
    messages       BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS usage_ledger_key ON usage_ledger (session_id, day, sha256(agent));
CREATE INDEX IF NOT EXISTS usage_ledger_day ON usage_ledger (day);

INSERT INTO usage_ledger (session_id, day, agent, root, prompt, completion, cache_read, cache_creation,
                          thinking, messages)
SELECT m.session_id, m.created_ms / 86400000, COALESCE(m.agent_name, 'main'::BYTEA), s.project_root,
       COALESCE(SUM(m.prompt_tokens), 0), COALESCE(SUM(m.completion_tokens), 0),
       COALESCE(SUM(m.cache_read_tokens), 0), COALESCE(SUM(m.cache_creation_tokens), 0),
       COALESCE(SUM(m.thinking_tokens), 0), COUNT(*)
FROM messages m JOIN sessions s ON s.id = m.session_id
WHERE NOT EXISTS (SELECT 1 FROM usage_ledger)
GROUP BY m.session_id, m.created_ms / 86400000, COALESCE(m.agent_name, 'main'::BYTEA), s.project_root;
