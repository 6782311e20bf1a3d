-- Migration 4: NOTIFY only while a host waits for it.
--
-- A NOTIFY costs a writer a cluster-wide lock at commit, and when every host
-- is busy reading a backlog (or none runs) nobody needs it. A host about to
-- wait for a notification sets `wake_until` (milliseconds since the epoch,
-- server clock) a few seconds ahead, and renews it while it waits; the capture
-- function notifies only while that time lies ahead. A sequence, because its
-- value is not transactional: every writer sees a new setting at once,
-- whatever its snapshot. After a lapse the host polls briefly until every
-- transaction that was already running has ended (see `WakeLease` in
-- dispatch.rs), so a writer that looked before the renewal is not missed.
CREATE SEQUENCE pgevents.wake_until AS bigint MINVALUE 0;

-- The capture function of migration 1, with the NOTIFY above made conditional.
CREATE OR REPLACE FUNCTION pgevents.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
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
    xid xid8 := pg_current_xact_id();
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO pgevents.events (txid, op, schema_name, table_name, pk, new_row, old_row, captured_at, db_user, app_name, tag)
        SELECT xid, 'U', TG_TABLE_SCHEMA, TG_TABLE_NAME,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.n -> first_key) ELSE pgevents.key_of(r.n, key_columns) END,
               r.n, r.o, at, writer, app, tag
        FROM (SELECT to_jsonb(NEW) AS n, to_jsonb(OLD) AS o) AS r;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO pgevents.events (txid, op, schema_name, table_name, pk, new_row, captured_at, db_user, app_name, tag)
        SELECT xid, 'I', TG_TABLE_SCHEMA, TG_TABLE_NAME,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.j -> first_key) ELSE pgevents.key_of(r.j, key_columns) END,
               r.j, at, writer, app, tag
        FROM (SELECT to_jsonb(pgevents_row.*) AS j FROM pgevents_new_rows AS pgevents_row) AS r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgevents.events (txid, op, schema_name, table_name, pk, old_row, captured_at, db_user, app_name, tag)
        SELECT xid, 'D', TG_TABLE_SCHEMA, TG_TABLE_NAME,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.j -> first_key) ELSE pgevents.key_of(r.j, key_columns) END,
               r.j, at, writer, app, tag
        FROM (SELECT to_jsonb(pgevents_row.*) AS j FROM pgevents_old_rows AS pgevents_row) AS r;
    ELSE
        INSERT INTO pgevents.events (txid, op, schema_name, table_name, captured_at, db_user, app_name, tag)
        VALUES (xid, 'T', TG_TABLE_SCHEMA, TG_TABLE_NAME, at, writer, app, tag);
    END IF;
    -- Wake hosts only while one waits (see above): a few microseconds to
    -- look, against tens for a NOTIFY and its cluster-wide lock at commit.
    IF FOUND AND TG_ARGV[0] = 'notify'
       AND pg_sequence_last_value('pgevents.wake_until') > (extract(epoch FROM at) * 1000)::bigint THEN
        PERFORM pg_notify('pgevents', '');
    END IF;
    RETURN NULL;
END
$$;
