-- Migration 1: the event log, cursors, the plugin registry and the capture function.
-- Runs inside one transaction, under an advisory lock, exactly once per database.

CREATE SEQUENCE pgevents.events_seq AS bigint;

-- Append-only log. Read in (txid, seq) order, below the snapshot horizon.
CREATE TABLE pgevents.events (
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    seq         bigint      NOT NULL DEFAULT nextval('pgevents.events_seq'),
    op          "char"      NOT NULL CHECK (op IN ('I', 'U', 'D', 'T')),
    schema_name text        NOT NULL,
    table_name  text        NOT NULL,
    pk          jsonb,
    new_row     jsonb,
    old_row     jsonb,
    captured_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- session_user: inside the SECURITY DEFINER capture function current_user is its owner.
    db_user     text        NOT NULL DEFAULT session_user,
    app_name    text        NOT NULL DEFAULT current_setting('application_name'),
    tag         text        DEFAULT nullif(current_setting('pgevents.context', true), ''),
    PRIMARY KEY (txid, seq)
);

-- One row per plugin name: the position of the last acknowledged event.
CREATE TABLE pgevents.cursors (
    plugin     text        PRIMARY KEY,
    txid       xid8        NOT NULL,
    seq        bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Plugins the host has loaded (active) or loaded before (inactive, cursor kept).
CREATE TABLE pgevents.plugins (
    name          text        PRIMARY KEY,
    version       text        NOT NULL,
    file          text        NOT NULL,
    sha256        text        NOT NULL,
    manifest      jsonb       NOT NULL,
    active        boolean     NOT NULL,
    loaded_at     timestamptz NOT NULL DEFAULT now(),
    halted        text,
    last_error    text,
    last_error_at timestamptz
);

-- Effective subscriptions of active plugins: the reconciler installs triggers for these.
CREATE TABLE pgevents.subscriptions (
    plugin          text     NOT NULL REFERENCES pgevents.plugins (name) ON DELETE CASCADE,
    schema_name     text     NOT NULL,
    table_name      text     NOT NULL,
    ops             "char"[] NOT NULL,
    changed_columns text[],
    PRIMARY KEY (plugin, schema_name, table_name)
);

-- The primary-key values of a row as a JSON object; NULL for tables without a key.
CREATE FUNCTION pgevents.key_of(row_json jsonb, key_columns text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN cardinality(key_columns) = 0 THEN NULL
                ELSE (SELECT jsonb_object_agg(c, row_json -> c) FROM unnest(key_columns) AS c)
           END
$$;

-- The one capture function behind every trigger the host installs.
-- Arguments: 'notify' or 'quiet', then the table's primary-key columns.
-- Inserts and deletes use statement-level triggers with transition tables (one
-- INSERT ... SELECT per statement); updates use a row-level trigger, because
-- transition tables cannot pair old and new rows of a table without a key.
-- `alias.*` is always the whole row, even when the table has a column named like the alias.
-- It runs as its owner with a pinned search_path, so a writer needs no
-- privilege on the log, and no table shape or session setting can break it.
CREATE FUNCTION pgevents.capture() RETURNS trigger
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
    IF FOUND AND TG_ARGV[0] = 'notify' THEN
        PERFORM pg_notify('pgevents', '');
    END IF;
    RETURN NULL;
END
$$;
