-- koda-persistence PostgreSQL schema, version 5: usage by agent kept per
-- session, in each write's own statement, so session_token_usage and
-- session_usage_by_agent read one row per agent instead of scanning the
-- session's messages.
--
-- `agent` is the message's agent name, 'main' when it had none (no agent
-- and "main" are one group). The sums are NUMERIC: exact, so a purge
-- subtracts exactly what the insert added even past 2^63; they are
-- saturated to BIGINT only when read. `calls` counts the messages with
-- prompt or completion tokens set; a purge may leave a row at 0 calls,
-- which readers skip. Lock order as everywhere: writers lock the session
-- row first, then touch its usage rows. Agent names can be long: the
-- unique index holds their SHA-256 (see version 2).

CREATE TABLE session_usage (
    session_id     TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    agent          BYTEA NOT NULL,
    prompt         NUMERIC NOT NULL,
    completion     NUMERIC NOT NULL,
    cache_read     NUMERIC NOT NULL,
    cache_creation NUMERIC NOT NULL,
    thinking       NUMERIC NOT NULL,
    calls          BIGINT NOT NULL
);
CREATE UNIQUE INDEX session_usage_agent ON session_usage (session_id, sha256(agent));

INSERT INTO session_usage (session_id, agent, prompt, completion, cache_read, cache_creation,
                           thinking, calls)
SELECT session_id, COALESCE(agent_name, 'main'::BYTEA),
       COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
       COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_creation_tokens), 0),
       COALESCE(SUM(thinking_tokens), 0), COUNT(*)
FROM messages
WHERE prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL
GROUP BY session_id, COALESCE(agent_name, 'main'::BYTEA);
