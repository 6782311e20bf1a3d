-- Migration 2: partitions, persisted attempts, dead letters, leases and the
-- guarded acknowledgement. Runs inside one transaction, under the install lock.

-- A plugin's stream may be split into partitions (by a hash of table and key),
-- each with its own cursor. Existing cursors become partition 0 of 1.
-- `rewinds` changes when an operator replays: a deliverer holding an older
-- value must not move the cursor (its position is from before the rewind).
ALTER TABLE pgevents.cursors
    ADD COLUMN part    int    NOT NULL DEFAULT 0,
    ADD COLUMN parts   int    NOT NULL DEFAULT 1,
    ADD COLUMN rewinds bigint NOT NULL DEFAULT 0;
ALTER TABLE pgevents.cursors DROP CONSTRAINT cursors_pkey;
ALTER TABLE pgevents.cursors ADD PRIMARY KEY (plugin, part);

-- The partition (0 ..< parts) an event belongs to. Rows of one key always
-- land in the same partition; rows of keyless tables go by table. (TRUNCATE
-- is delivered to every partition: see `log.rs`.) hashtextextended is the
-- stable hash PostgreSQL partitions tables with.
CREATE FUNCTION pgevents.part_of(schema_name text, table_name text, pk jsonb, parts int)
RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN parts <= 1 THEN 0
                ELSE (((hashtextextended(schema_name || '.' || table_name || '/' || coalesce(pk::text, ''), 0)
                        % parts) + parts) % parts)::int
           END
$$;

-- Failed deliveries per event (only events that failed at least once), so
-- that attempt numbers and the dead-letter threshold survive a restart.
CREATE TABLE pgevents.attempts (
    plugin          text        NOT NULL,
    part            int         NOT NULL,
    txid            xid8        NOT NULL,
    seq             bigint      NOT NULL,
    failures        int         NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_error      text        NOT NULL,
    PRIMARY KEY (plugin, part, txid, seq)
);

-- Events a plugin gave up on, with a copy of the event (the log may be pruned
-- meanwhile). Kept until purged; `redeliver` asks the plugin's deliverer to
-- hand it to the plugin again.
CREATE TABLE pgevents.dead_letters (
    id              bigserial   PRIMARY KEY,
    plugin          text        NOT NULL,
    txid            xid8        NOT NULL,
    seq             bigint      NOT NULL,
    op              "char"      NOT NULL,
    schema_name     text        NOT NULL,
    table_name      text        NOT NULL,
    pk              jsonb,
    new_row         jsonb,
    old_row         jsonb,
    captured_at     timestamptz NOT NULL,
    db_user         text        NOT NULL,
    app_name        text        NOT NULL,
    tag             text,
    error           text        NOT NULL,
    attempts        int         NOT NULL,
    first_failed_at timestamptz NOT NULL,
    dead_at         timestamptz NOT NULL DEFAULT now(),
    redeliver       boolean     NOT NULL DEFAULT false,
    UNIQUE (plugin, txid, seq)
);
CREATE INDEX dead_letters_redeliver ON pgevents.dead_letters (plugin) WHERE redeliver;

-- Running hosts and the plugins each runs, for fair shares of partitions.
-- A host counts as alive while it has been seen within its lease time-to-live.
CREATE TABLE pgevents.hosts (
    id         text        PRIMARY KEY,
    hostname   text        NOT NULL,
    os_pid     int         NOT NULL,
    plugins    text[]      NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Who delivers each partition of each plugin, until when. The token is a
-- secret of the owning host: an acknowledgement must present it.
CREATE TABLE pgevents.leases (
    plugin      text        NOT NULL,
    part        int         NOT NULL,
    owner       text        NOT NULL,
    token       uuid        NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (plugin, part)
);

-- Whether the caller holds the lease with `p_token`, locking its row until the
-- transaction ends (a taker waits for the caller to commit). Runs as the
-- owner when called from the SECURITY DEFINER functions below.
CREATE FUNCTION pgevents.lock_lease(p_plugin text, p_part int, p_token uuid)
RETURNS boolean LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM pgevents.leases
    WHERE plugin = p_plugin AND part = p_part AND token = p_token
      AND expires_at > clock_timestamp()
    FOR UPDATE;
    RETURN FOUND;
END
$$;
REVOKE ALL ON FUNCTION pgevents.lock_lease(text, int, uuid) FROM PUBLIC;

-- Move a partition's cursor to (txid, seq), only if the caller still holds the
-- lease (the row lock keeps a taker waiting until this transaction ends), the
-- partition count is still the caller's, and no replay rewound the cursor
-- since the caller read it. Returns whether it moved. SECURITY DEFINER so that
-- a plugin's SQL role may call it inside the batch transaction without any
-- privilege on the log; the token is the proof.
CREATE FUNCTION pgevents.ack(p_plugin text, p_part int, p_parts int, p_token uuid,
                             p_rewinds bigint, p_txid xid8, p_seq bigint)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pgevents.lock_lease(p_plugin, p_part, p_token) THEN
        RETURN false;
    END IF;
    UPDATE pgevents.cursors SET txid = p_txid, seq = p_seq, updated_at = now()
    WHERE plugin = p_plugin AND part = p_part AND parts = p_parts AND rewinds = p_rewinds;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM pgevents.attempts
    WHERE plugin = p_plugin AND part = p_part AND (txid, seq) <= (p_txid, p_seq);
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION pgevents.ack(text, int, int, uuid, bigint, xid8, bigint) FROM PUBLIC;

-- Delete dead letters that were delivered again, with the same lease check as
-- `ack` (so that a plugin's SQL session can do it inside its transaction).
CREATE FUNCTION pgevents.settle_dead_letters(p_plugin text, p_part int, p_token uuid, p_ids bigint[])
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pgevents.lock_lease(p_plugin, p_part, p_token) THEN
        RETURN false;
    END IF;
    DELETE FROM pgevents.dead_letters WHERE plugin = p_plugin AND id = ANY (p_ids);
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION pgevents.settle_dead_letters(text, int, uuid, bigint[]) FROM PUBLIC;
