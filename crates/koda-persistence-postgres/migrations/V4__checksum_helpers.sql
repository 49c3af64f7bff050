-- koda-persistence PostgreSQL schema, version 4: the field encodings of
-- koda_persistence_api::session_checksum, so a copy's verification is
-- computed by the server (only 8 bytes cross the network, not the rows).
-- A field is 0x00 when NULL, else 0x01 and then, for bytes, their length
-- as 8 big-endian bytes and the bytes; for a number its 8 big-endian bytes.

CREATE FUNCTION kp_field(v BYTEA) RETURNS BYTEA
LANGUAGE SQL IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN v IS NULL THEN '\x00'::BYTEA
                ELSE '\x01'::BYTEA || int8send(octet_length(v)::BIGINT) || v END
$$;

CREATE FUNCTION kp_number(v BIGINT) RETURNS BYTEA
LANGUAGE SQL IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN v IS NULL THEN '\x00'::BYTEA ELSE '\x01'::BYTEA || int8send(v) END
$$;
