-- Migration 6: nothing a writer, a table owner or a plugin supplies runs with
-- the host's privileges; locks no other role can take; tables followed by
-- identity.

-- Capture renders rows with to_jsonb, which runs a table owner's own cast to
-- json for a type of theirs: as the owner of a SECURITY DEFINER function
-- that is the owner's privilege. So the capture function belongs to a role
-- that may append to the log and do nothing else (roles are cluster-wide:
-- another database may have made it already; the host checks its
-- attributes at every start).
DO $$
BEGIN
    CREATE ROLE pgevents_capture NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT USAGE ON SCHEMA pgevents TO pgevents_capture;
GRANT USAGE ON SEQUENCE pgevents.events_seq TO pgevents_capture;
GRANT SELECT ON SEQUENCE pgevents.wake_until TO pgevents_capture;
ALTER FUNCTION pgevents.capture() OWNER TO pgevents_capture;
-- Triggers do not check EXECUTE when they fire; creating one does. Without
-- this, any role with USAGE on the schema (every sql grant's role) could
-- attach capture to a table of its own and write rows into the log.
REVOKE ALL ON FUNCTION pgevents.capture() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgevents.capture() TO CURRENT_USER;

-- A table owner's cast runs as pgevents_capture, which owns the capture
-- function: as its owner it could alter, re-grant or drop it (for every
-- writer of every captured table), or create objects where it may. No DDL
-- of any kind while pgevents_capture is the current user.
CREATE FUNCTION pgevents.refuse_capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_user = 'pgevents_capture' THEN
        RAISE EXCEPTION 'pgevents_capture may not run DDL (%): it owns the capture function, which runs code of table owners', tg_tag
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION pgevents.refuse_capture_ddl() FROM PUBLIC;
CREATE EVENT TRIGGER pgevents_refuse_capture_ddl ON ddl_command_start
    EXECUTE FUNCTION pgevents.refuse_capture_ddl();

-- Locks the host takes among its own hosts, as rows only it may lock (an
-- advisory lock can be taken by any role that can connect, and a table lock
-- of a mode above ROW SHARE by any role that may parse an INSERT into the
-- table: the lock comes before the privilege check).
CREATE TABLE pgevents.locks (name text PRIMARY KEY);
INSERT INTO pgevents.locks (name) VALUES ('install'), ('retention');

-- The table an event came from, by identity: a subscribed table that is
-- renamed keeps being delivered (its events carry the new name).
ALTER TABLE pgevents.events ADD COLUMN relid oid;
-- Not txid and seq: their defaults only, so a forged row cannot take a
-- sequence number another writer is about to draw and make it wait.
GRANT INSERT (op, relid, schema_name, table_name, pk, new_row, old_row, captured_at,
              db_user, app_name, tag)
    ON pgevents.events TO pgevents_capture;
ALTER TABLE pgevents.dead_letters ADD COLUMN relid oid;
ALTER TABLE pgevents.subscriptions ADD COLUMN relid oid;
UPDATE pgevents.subscriptions s SET relid = c.oid
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = s.schema_name AND c.relname = s.table_name AND c.relkind = 'r';
-- One subscription per table and plugin, or its events would come twice
-- (checked at the end of each statement, so that a reconcile may move two).
ALTER TABLE pgevents.subscriptions
    ADD CONSTRAINT subscriptions_one_per_table UNIQUE (plugin, relid) DEFERRABLE INITIALLY IMMEDIATE;

-- Events a plugin received that its own sql writes caused (a loop, unless
-- it means to).
ALTER TABLE pgevents.plugins ADD COLUMN self_events bigint NOT NULL DEFAULT 0;

-- The capture function of migration 5, also recording the table's identity.
CREATE OR REPLACE FUNCTION pgevents.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET extra_float_digits = 1
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET bytea_output = 'hex'
SET lc_monetary = 'C'
AS $$
DECLARE
    key_columns text[] := TG_ARGV[1:TG_NARGS - 1];
    key_count int := TG_NARGS - 1;
    -- Most keys are one column: build it directly rather than through key_of().
    first_key text := TG_ARGV[1];
    -- Evaluated once per statement rather than as per-row column defaults.
    writer text := session_user;
    app text := current_setting('application_name');
    tag text := nullif(current_setting('pgevents.context', true), '');
    at timestamptz := clock_timestamp();
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO pgevents.events (op, relid, schema_name, table_name, pk, new_row, old_row, captured_at, db_user, app_name, tag)
        SELECT 'U', TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.n -> first_key) ELSE pgevents.key_of(r.n, key_columns) END,
               r.n, r.o, at, writer, app, tag
        FROM (SELECT to_jsonb(NEW) AS n, to_jsonb(OLD) AS o) AS r;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO pgevents.events (op, relid, schema_name, table_name, pk, new_row, captured_at, db_user, app_name, tag)
        SELECT 'I', TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.j -> first_key) ELSE pgevents.key_of(r.j, key_columns) END,
               r.j, at, writer, app, tag
        FROM (SELECT to_jsonb(pgevents_row.*) AS j FROM pgevents_new_rows AS pgevents_row) AS r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgevents.events (op, relid, schema_name, table_name, pk, old_row, captured_at, db_user, app_name, tag)
        SELECT 'D', TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.j -> first_key) ELSE pgevents.key_of(r.j, key_columns) END,
               r.j, at, writer, app, tag
        FROM (SELECT to_jsonb(pgevents_row.*) AS j FROM pgevents_old_rows AS pgevents_row) AS r;
    ELSE
        INSERT INTO pgevents.events (op, relid, schema_name, table_name, captured_at, db_user, app_name, tag)
        VALUES ('T', TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, at, writer, app, tag);
    END IF;
    -- Wake hosts only while one waits (migration 4).
    IF FOUND AND TG_ARGV[0] = 'notify'
       AND pg_sequence_last_value('pgevents.wake_until') > (extract(epoch FROM at) * 1000)::bigint THEN
        PERFORM pg_notify('pgevents', '');
    END IF;
    RETURN NULL;
END
$$;
