-- koda-persistence PostgreSQL schema, version 2: every string fits.
-- A B-tree entry holds at most ~2.7 kB, so an index on a caller's string
-- (a project root, a metadata key) refused long values. Index their SHA-256
-- instead; every lookup compares the full value as well.

DROP INDEX sessions_root_created;
CREATE INDEX sessions_root_created ON sessions (sha256(project_root), created_ms DESC, seq DESC);
CREATE INDEX sessions_rootless_created ON sessions (created_ms DESC, seq DESC) WHERE project_root IS NULL;

ALTER TABLE session_metadata DROP CONSTRAINT session_metadata_pkey;
CREATE UNIQUE INDEX session_metadata_key ON session_metadata (session_id, sha256(key));
