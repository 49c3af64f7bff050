-- koda-persistence PostgreSQL schema, version 10: store-wide settings
-- (the Settings capability: the redaction mode, its salt and rules), one
-- row per key, beside the sessions and never exported with them.
--
-- Written to run again over its own result (IF NOT EXISTS).

CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
