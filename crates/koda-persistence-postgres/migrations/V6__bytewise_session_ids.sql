-- koda-persistence PostgreSQL schema, version 6: session ids compare
-- bytewise (COLLATE "C") in every column that holds one.
--
-- A session id is an opaque key: nothing sorts by it for a reader, but
-- every message insert compares it in the (session_id, ord) indexes and in
-- the foreign-key check against sessions, and every read of a session
-- looks it up. Under the database's default collation each comparison
-- goes through the locale (strcoll), also for "C.UTF-8"; bytewise it is a
-- memcmp. Measured on PostgreSQL 15 (C.UTF-8): a 1,000-message import
-- statement 22-27 ms before, 14-15 ms after, its foreign-key checks
-- 9.5 ms before, 5 ms after. Equality is unchanged: a deterministic
-- collation calls two ids equal only when their bytes are.
--
-- Each ALTER rebuilds the column's indexes (and rechecks the foreign keys
-- that use it) under an exclusive lock: on a large team schema run
-- `koda-store migrate` when nobody writes.

ALTER TABLE sessions ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE messages ALTER COLUMN session_id TYPE TEXT COLLATE "C";
ALTER TABLE session_metadata ALTER COLUMN session_id TYPE TEXT COLLATE "C";
ALTER TABLE session_usage ALTER COLUMN session_id TYPE TEXT COLLATE "C";
