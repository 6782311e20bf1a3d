-- Migration 5: deliver in commit order (snapshot ticks), and render values
-- the same whatever the writer's session says.
--
-- Until now the log was read in (txid, seq) order. A transaction takes its id
-- at its first write, not at commit, so a row changed by B and then by A
-- (which wrote something else first) was delivered A, B: the wrong history.
--
-- Now a *tick* takes a snapshot and numbers the transactions that became
-- visible since the previous tick's snapshot (PgQ's design): `ord` in
-- `commits`. Transactions of one tick are numbered by their last event's
-- `seq`. Delivery is in (ord, seq) order. Why that is every row's history:
-- a transaction that changes a row another one changed first waits for that
-- one to commit (row lock, unique index, table lock, or it could not see the
-- row), so all its own events for the row come after the other's last event
-- in `seq` (the sequence hands out values in time order: CACHE 1), and it
-- commits later, so it is in the same tick or a later one; in the same tick
-- its last `seq` is the larger. (The host checks at every install that the
-- sequence has no cache; altering it here would lock out every writer for
-- the length of the migration.)

-- Committed transactions that wrote events, numbered in delivery order.
CREATE TABLE pgevents.commits (
    ord       bigint      PRIMARY KEY,
    txid      xid8        NOT NULL UNIQUE,
    first_seq bigint      NOT NULL,
    last_seq  bigint      NOT NULL,
    ticked_at timestamptz NOT NULL
);

-- The last tick: its snapshot, the last number handed out, and how many ticks
-- there were. One row; a tick locks it, so ticks are taken one at a time and
-- each one's snapshot is later than the one before.
CREATE TABLE pgevents.ticker (
    id        int         PRIMARY KEY CHECK (id = 1),
    ticks     bigint      NOT NULL,
    last_ord  bigint      NOT NULL,
    snapshot  pg_snapshot NOT NULL,
    ticked_at timestamptz NOT NULL
);

-- The transactions that wrote events, are visible in `cur` and were not in
-- `prev`, with their first and last `seq`. `cur` must be the calling
-- statement's own snapshot (`pg_current_snapshot()`), so that the rows read
-- here are exactly those of transactions visible in it.
-- Not visible in `prev`: ids from its xmax on, and its in-progress ids.
-- The ids from xmax(prev) up to xmax(cur) are walked as a skip scan over the
-- log's primary key, one index probe per transaction, in the intervals
-- between the ids still running in `cur` (so a running bulk insert's rows
-- are never walked).
CREATE FUNCTION pgevents.newly_visible(prev pg_snapshot, cur pg_snapshot)
RETURNS TABLE (txid xid8, first_seq bigint, last_seq bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    -- plpgsql rather than sql: its plan is kept for the session, where a sql
    -- function's would be made again on every call.
    RETURN QUERY
    WITH RECURSIVE
    edges AS (
        SELECT x::text::bigint AS x FROM pg_snapshot_xip(cur) AS x
        WHERE x >= pg_snapshot_xmax(prev)
        UNION ALL
        SELECT pg_snapshot_xmax(cur)::text::bigint
    ),
    bounds AS (
        SELECT coalesce(lag(x) OVER (ORDER BY x) + 1, pg_snapshot_xmax(prev)::text::bigint) AS lo,
               x AS hi
        FROM edges
    ),
    walk (txid, hi) AS (
        SELECT (SELECT min(e.txid) FROM pgevents.events e
                WHERE e.txid >= b.lo::text::xid8 AND e.txid < b.hi::text::xid8),
               b.hi
        FROM bounds b WHERE b.lo < b.hi
        UNION ALL
        SELECT (SELECT min(e.txid) FROM pgevents.events e
                WHERE e.txid > w.txid AND e.txid < w.hi::text::xid8),
               w.hi
        FROM walk w WHERE w.txid IS NOT NULL
    ),
    found AS (
        SELECT w.txid FROM walk w WHERE w.txid IS NOT NULL
        UNION ALL
        SELECT x FROM pg_snapshot_xip(prev) AS x
        WHERE pg_visible_in_snapshot(x, cur)
          AND EXISTS (SELECT 1 FROM pgevents.events e WHERE e.txid = x)
    )
    SELECT f.txid,
           (SELECT min(e.seq) FROM pgevents.events e WHERE e.txid = f.txid),
           (SELECT max(e.seq) FROM pgevents.events e WHERE e.txid = f.txid)
    FROM found f;
END
$$;
REVOKE ALL ON FUNCTION pgevents.newly_visible(pg_snapshot, pg_snapshot) FROM PUBLIC;

-- Take a tick: number the transactions that became visible since the last
-- one. Returns the last number handed out and the tick count. With
-- `look_first`, a look without a lock comes first, so that a tick when
-- nothing new is visible (idle) writes nothing; after a NOTIFY the host
-- skips it (something committed).
-- The host runs it with synchronous_commit off: an acknowledgement of any
-- event it numbered commits later, and flushes the tick's commit with its own.
CREATE FUNCTION pgevents.tick(look_first boolean) RETURNS TABLE (last_ord bigint, ticks bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    prev pg_snapshot;
BEGIN
    SELECT t.snapshot INTO prev FROM pgevents.ticker t WHERE t.id = 1;
    IF pg_snapshot_xmax(pg_current_snapshot()) < pg_snapshot_xmax(prev) THEN
        -- Transaction ids only grow: the log comes from another cluster (a
        -- logical dump restored here). Numbering now would skip events.
        RAISE EXCEPTION 'the last tick saw transaction %, but this server is only at %: the pgevents schema was restored from another cluster, and its events cannot be ordered here',
            pg_snapshot_xmax(prev), pg_snapshot_xmax(pg_current_snapshot())
            USING HINT = 'deliver every event before dumping, or run `pgevents-host uninstall --yes` and install again (cursors start over)';
    END IF;
    IF look_first
       AND NOT EXISTS (SELECT 1 FROM pgevents.newly_visible(prev, pg_current_snapshot())) THEN
        RETURN QUERY SELECT t.last_ord, t.ticks FROM pgevents.ticker t WHERE t.id = 1;
        RETURN;
    END IF;
    -- One tick at a time. Each statement below gets a new snapshot, taken
    -- after this lock, so later than the previous tick's.
    PERFORM 1 FROM pgevents.ticker t WHERE t.id = 1 FOR UPDATE;
    RETURN QUERY
    WITH snap AS MATERIALIZED (
        SELECT pg_current_snapshot() AS cur, t.snapshot AS prev, t.last_ord AS base
        FROM pgevents.ticker t WHERE t.id = 1
    ),
    found AS MATERIALIZED (
        SELECT n.txid, n.first_seq, n.last_seq,
               s.base + row_number() OVER (ORDER BY n.last_seq) AS ord
        FROM snap s CROSS JOIN LATERAL pgevents.newly_visible(s.prev, s.cur) AS n
    ),
    added AS (
        INSERT INTO pgevents.commits (ord, txid, first_seq, last_seq, ticked_at)
        SELECT f.ord, f.txid, f.first_seq, f.last_seq, clock_timestamp() FROM found f
    ),
    -- A tick that found nothing (another host's numbered it first) writes nothing.
    moved AS (
        UPDATE pgevents.ticker t
        SET snapshot = s.cur, last_ord = s.base + (SELECT count(*) FROM found),
            ticks = t.ticks + 1, ticked_at = clock_timestamp()
        FROM snap s WHERE t.id = 1 AND EXISTS (SELECT 1 FROM found)
        RETURNING t.last_ord, t.ticks
    )
    SELECT m.last_ord, m.ticks FROM moved m
    UNION ALL
    SELECT t.last_ord, t.ticks FROM pgevents.ticker t
    WHERE t.id = 1 AND NOT EXISTS (SELECT 1 FROM found);
END
$$;
REVOKE ALL ON FUNCTION pgevents.tick(boolean) FROM PUBLIC;

-- Upgrade in place. The events already committed are numbered in the order
-- the previous version delivered them, (txid, seq), so that every cursor
-- keeps exactly the events it had not acknowledged; the ticker starts from
-- the same snapshot. One statement, so one snapshot for both.
WITH snap AS MATERIALIZED (SELECT pg_current_snapshot() AS s),
found AS MATERIALIZED (
    SELECT txid, min(seq) AS first_seq, max(seq) AS last_seq,
           row_number() OVER (ORDER BY txid) AS ord,
           max(captured_at) AS committed_by
    FROM pgevents.events GROUP BY txid
),
added AS (
    -- Commit times are unknown: the last capture time stands in (replay
    -- --since and retention go by it).
    INSERT INTO pgevents.commits (ord, txid, first_seq, last_seq, ticked_at)
    SELECT ord, txid, first_seq, last_seq, committed_by FROM found
)
INSERT INTO pgevents.ticker (id, ticks, last_ord, snapshot, ticked_at)
SELECT 1, 0, (SELECT count(*) FROM found), s, now() FROM snap;

-- Cursors become (ord, seq). A cursor (txid, seq) had every event up to it
-- acknowledged: in ord terms it is that transaction's number with the same
-- seq, or, if that transaction has no events left, the end of the last
-- transaction before it (or the start).
ALTER TABLE pgevents.cursors ADD COLUMN ord bigint;
UPDATE pgevents.cursors c SET ord = m.ord, seq = m.seq
FROM (SELECT c2.plugin, c2.part,
             coalesce(k.ord, p.ord, 0) AS ord,
             CASE WHEN k.ord IS NOT NULL THEN c2.seq
                  WHEN p.ord IS NOT NULL THEN p.last_seq
                  ELSE 0 END AS seq
      FROM pgevents.cursors c2
      LEFT JOIN pgevents.commits k ON k.txid = c2.txid
      LEFT JOIN LATERAL (SELECT ord, last_seq FROM pgevents.commits
                         WHERE txid < c2.txid ORDER BY txid DESC LIMIT 1) p ON true) m
WHERE m.plugin = c.plugin AND m.part = c.part;
ALTER TABLE pgevents.cursors ALTER COLUMN ord SET NOT NULL;
ALTER TABLE pgevents.cursors DROP COLUMN txid;

-- Attempt counts and dead letters keep the event's identity (txid, seq) and
-- learn its position.
ALTER TABLE pgevents.attempts ADD COLUMN ord bigint;
UPDATE pgevents.attempts a SET ord = k.ord FROM pgevents.commits k WHERE k.txid = a.txid;
DELETE FROM pgevents.attempts WHERE ord IS NULL;
ALTER TABLE pgevents.attempts ALTER COLUMN ord SET NOT NULL;

-- The acknowledgement takes a position (ord, seq). The old signature goes,
-- so that a host of the previous version still running fails loudly.
DROP FUNCTION pgevents.ack(text, int, int, uuid, bigint, xid8, bigint);
CREATE FUNCTION pgevents.ack(p_plugin text, p_part int, p_parts int, p_token uuid,
                             p_rewinds bigint, p_ord bigint, p_seq bigint)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pgevents.lock_lease(p_plugin, p_part, p_token) THEN
        RETURN false;
    END IF;
    UPDATE pgevents.cursors SET ord = p_ord, seq = p_seq, updated_at = now()
    WHERE plugin = p_plugin AND part = p_part AND parts = p_parts AND rewinds = p_rewinds;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM pgevents.attempts
    WHERE plugin = p_plugin AND part = p_part AND (ord, seq) <= (p_ord, p_seq);
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION pgevents.ack(text, int, int, uuid, bigint, bigint, bigint) FROM PUBLIC;

-- The capture function of migration 4, with two changes:
-- - Values are rendered the same whatever the writer's session sets: floats
--   shortest-exact, times in UTC, dates ISO, intervals PostgreSQL's own
--   style, bytea as hex, money in the C locale (inside composite values and
--   arrays too, which are rendered as text).
-- - No transaction id is taken unless rows are logged (the column's default),
--   so a statement that changed nothing does not make the writer take one.
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
        INSERT INTO pgevents.events (op, schema_name, table_name, pk, new_row, old_row, captured_at, db_user, app_name, tag)
        SELECT 'U', TG_TABLE_SCHEMA, TG_TABLE_NAME,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.n -> first_key) ELSE pgevents.key_of(r.n, key_columns) END,
               r.n, r.o, at, writer, app, tag
        FROM (SELECT to_jsonb(NEW) AS n, to_jsonb(OLD) AS o) AS r;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO pgevents.events (op, schema_name, table_name, pk, new_row, captured_at, db_user, app_name, tag)
        SELECT 'I', TG_TABLE_SCHEMA, TG_TABLE_NAME,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.j -> first_key) ELSE pgevents.key_of(r.j, key_columns) END,
               r.j, at, writer, app, tag
        FROM (SELECT to_jsonb(pgevents_row.*) AS j FROM pgevents_new_rows AS pgevents_row) AS r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgevents.events (op, schema_name, table_name, pk, old_row, captured_at, db_user, app_name, tag)
        SELECT 'D', TG_TABLE_SCHEMA, TG_TABLE_NAME,
               CASE key_count WHEN 0 THEN NULL WHEN 1 THEN jsonb_build_object(first_key, r.j -> first_key) ELSE pgevents.key_of(r.j, key_columns) END,
               r.j, at, writer, app, tag
        FROM (SELECT to_jsonb(pgevents_row.*) AS j FROM pgevents_old_rows AS pgevents_row) AS r;
    ELSE
        INSERT INTO pgevents.events (op, schema_name, table_name, captured_at, db_user, app_name, tag)
        VALUES ('T', TG_TABLE_SCHEMA, TG_TABLE_NAME, at, writer, app, tag);
    END IF;
    -- Wake hosts only while one waits (migration 4).
    IF FOUND AND TG_ARGV[0] = 'notify'
       AND pg_sequence_last_value('pgevents.wake_until') > (extract(epoch FROM at) * 1000)::bigint THEN
        PERFORM pg_notify('pgevents', '');
    END IF;
    RETURN NULL;
END
$$;
