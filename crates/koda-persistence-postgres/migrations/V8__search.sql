-- koda-persistence PostgreSQL schema, version 8: the search index.
--
-- `search` holds a message's words with their positions
-- (koda_persistence_api::search::tsvector of its content and full content,
-- computed by the client, which alone can read a body) under a GIN index.
-- NULL means "not indexed yet": every insert leaves it NULL, and the
-- trigger below sets it NULL again whenever a statement changes the text,
-- in that statement. A search therefore takes every NULL row as a
-- candidate beside the index's matches, and a matching tsvector is never
-- stale. Before a search the client indexes the NULL rows (FOR NO KEY
-- UPDATE SKIP LOCKED, so it never waits while it holds a lock). A message
-- whose positions a tsvector cannot keep holds its words without them and
-- the lexeme '*p'; one too large for a tsvector holds the lexeme '*'
-- alone; no word can be either, and every search asks for them.
--
-- Written to run again over its own result (IF NOT EXISTS, OR REPLACE).

ALTER TABLE messages ADD COLUMN IF NOT EXISTS search tsvector;
CREATE INDEX IF NOT EXISTS messages_search ON messages USING gin (search);
CREATE INDEX IF NOT EXISTS messages_unindexed ON messages (id) WHERE search IS NULL;

CREATE OR REPLACE FUNCTION kp_search_forget() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.search := NULL;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS messages_search_forget ON messages;
CREATE TRIGGER messages_search_forget
    BEFORE UPDATE OF content, full_content, content_body, full_content_body ON messages
    FOR EACH ROW
    WHEN (OLD.content IS DISTINCT FROM NEW.content
          OR OLD.full_content IS DISTINCT FROM NEW.full_content
          OR OLD.content_body IS DISTINCT FROM NEW.content_body
          OR OLD.full_content_body IS DISTINCT FROM NEW.full_content_body)
    EXECUTE FUNCTION kp_search_forget();
