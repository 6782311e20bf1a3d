-- The capture function, its owner, grants and guard: applied at every
-- install (after the migrations), so that what runs is always this, owned as
-- below, whatever happened to it meanwhile (a `pg_dump --no-owner` restore
-- leaves it owned by the restoring role, say).

-- One function behind every trigger the host installs. Arguments: the mode
-- (`notify` or `quiet`; with `/named`, the subscribed schema and table
-- follow, and events carry those names: a renamed table is still delivered
-- as the table its plugins subscribed to), then the primary-key columns.
-- Inserts and deletes use statement-level triggers with transition tables
-- (one INSERT ... SELECT per statement); updates a row-level trigger.
-- `alias.*` is always the whole row, even when the table has a column named
-- like the alias.
--
-- It runs as pgevents_capture, a role that may append to the log and do
-- nothing else: rendering a row runs a table owner's casts to json, so they
-- run with no more privilege than that. Values are rendered the same
-- whatever the writer's session sets: floats shortest-exact, times in UTC,
-- dates ISO, intervals in PostgreSQL's style, bytea as hex, money in the C
-- locale (inside composite values and arrays too). No transaction id is
-- taken unless rows are logged.
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
    named boolean := TG_ARGV[0] LIKE '%/named';
    first_key_arg int := CASE WHEN TG_ARGV[0] LIKE '%/named' THEN 3 ELSE 1 END;
    key_columns text[] := TG_ARGV[first_key_arg:TG_NARGS - 1];
    key_count int := TG_NARGS - first_key_arg;
    -- Most keys are one column: build it directly rather than through key_of().
    first_key text := TG_ARGV[first_key_arg];
    v_schema text := CASE WHEN named THEN TG_ARGV[1] ELSE TG_TABLE_SCHEMA END;
    v_table text := CASE WHEN named THEN TG_ARGV[2] ELSE TG_TABLE_NAME END;
    -- Evaluated once per statement rather than as per-row column defaults.
    writer text := session_user;
    app text := current_setting('application_name');
    tag text := nullif(current_setting('pgevents.context', true), '');
    at timestamptz := clock_timestamp();
BEGIN
    -- Owned by anyone else (a restore without owners), it would run table
    -- owners' casts with that role's privileges: refuse until the host has
    -- put it right (at its next start).
    IF current_user <> 'pgevents_capture' THEN
        RAISE EXCEPTION 'pgevents.capture() is owned by % instead of pgevents_capture: start pgevents-host (or run `pgevents-host install`) to put it right', current_user;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO pgevents.events (op, schema_name, table_name, pk, new_row, old_row, captured_at, db_user, app_name, tag)
        SELECT 'U', v_schema, v_table,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.n -> first_key) ELSE pgevents.key_of(r.n, key_columns) END,
               r.n, r.o, at, writer, app, tag
        FROM (SELECT to_jsonb(NEW) AS n, to_jsonb(OLD) AS o) AS r;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO pgevents.events (op, schema_name, table_name, pk, new_row, captured_at, db_user, app_name, tag)
        SELECT 'I', v_schema, v_table,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.j -> first_key) ELSE pgevents.key_of(r.j, key_columns) END,
               r.j, at, writer, app, tag
        FROM (SELECT to_jsonb(pgevents_row.*) AS j FROM pgevents_new_rows AS pgevents_row) AS r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgevents.events (op, schema_name, table_name, pk, old_row, captured_at, db_user, app_name, tag)
        SELECT 'D', v_schema, v_table,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.j -> first_key) ELSE pgevents.key_of(r.j, key_columns) END,
               r.j, at, writer, app, tag
        FROM (SELECT to_jsonb(pgevents_row.*) AS j FROM pgevents_old_rows AS pgevents_row) AS r;
    ELSE
        INSERT INTO pgevents.events (op, schema_name, table_name, captured_at, db_user, app_name, tag)
        VALUES ('T', v_schema, v_table, at, writer, app, tag);
    END IF;
    -- Wake hosts only while one waits (migration 4).
    IF FOUND AND TG_ARGV[0] LIKE 'notify%'
       AND pg_sequence_last_value('pgevents.wake_until') > (extract(epoch FROM at) * 1000)::bigint THEN
        PERFORM pg_notify('pgevents', '');
    END IF;
    RETURN NULL;
END
$$;
ALTER FUNCTION pgevents.capture() OWNER TO pgevents_capture;
-- Triggers do not check EXECUTE when they fire; creating one does. Without
-- this, any role with USAGE on the schema (every sql grant's role) could
-- attach capture to a table of its own and write rows into the log.
REVOKE ALL ON FUNCTION pgevents.capture() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgevents.capture() TO CURRENT_USER;
-- Not txid and seq: their defaults only, so a forged row cannot take a
-- sequence number another writer is about to draw and make it wait.
REVOKE ALL ON pgevents.events FROM pgevents_capture;
GRANT INSERT (op, schema_name, table_name, pk, new_row, old_row, captured_at, db_user, app_name, tag)
    ON pgevents.events TO pgevents_capture;

-- A table owner's cast runs as pgevents_capture, which owns the capture
-- function: as its owner it could alter, re-grant or drop it (for every
-- writer of every captured table), or create objects where it may. No DDL
-- of any kind while pgevents_capture is the current user; ENABLE ALWAYS,
-- so that not even a session in replica mode escapes it.
CREATE OR REPLACE FUNCTION pgevents.refuse_capture_ddl() RETURNS event_trigger
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
DROP EVENT TRIGGER IF EXISTS pgevents_refuse_capture_ddl;
CREATE EVENT TRIGGER pgevents_refuse_capture_ddl ON ddl_command_start
    EXECUTE FUNCTION pgevents.refuse_capture_ddl();
ALTER EVENT TRIGGER pgevents_refuse_capture_ddl ENABLE ALWAYS;
