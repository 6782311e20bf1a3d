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
-- Capture's owner, grants and guard: see capture.sql, applied at every install.

-- Locks the host takes among its own hosts, as rows only it may lock (an
-- advisory lock can be taken by any role that can connect, and a table lock
-- of a mode above ROW SHARE by any role that may parse an INSERT into the
-- table: the lock comes before the privilege check).
CREATE TABLE pgevents.locks (name text PRIMARY KEY);
INSERT INTO pgevents.locks (name) VALUES ('install'), ('retention');

-- The table a subscription means, by identity: a subscribed table that is
-- renamed keeps being captured, and its events carry the subscribed name
-- (the trigger says which; see capture.sql), so nothing waiting is lost when
-- a table is replaced, and partitions keep their keys.
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

-- A key is a JSON object (the reader takes its keys): a row forged into the
-- log with another shape must not stop every reader. NOT VALID: the rows
-- already logged are capture's own.
ALTER TABLE pgevents.events
    ADD CONSTRAINT events_key_is_an_object CHECK (pk IS NULL OR jsonb_typeof(pk) = 'object') NOT VALID;
