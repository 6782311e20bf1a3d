-- Migration 7: the outbox. Messages plugins publish are recorded here in the
-- transaction that acknowledges their events, sent to the operator's sinks
-- by one host at a time (under a lease named `@sink:NAME`), and deleted once
-- the broker acknowledged them. A message the broker refuses for good stays,
-- with the broker's reason, until purged (`pgevents-host outbox purge`).

CREATE TABLE pgevents.outbox (
    id          bigserial   PRIMARY KEY,
    sink        text        NOT NULL,
    -- Stable: the same on every send attempt (NATS dedupes by it).
    message_id  uuid        NOT NULL UNIQUE,
    subject     text        NOT NULL,
    key         text,
    payload     bytea       NOT NULL,
    -- [[name, value], ...]
    headers     jsonb       NOT NULL DEFAULT '[]',
    plugin      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Bursts it was in that failed (connection lost, timeout).
    attempts    int         NOT NULL DEFAULT 0,
    -- Set when the broker refused it for good: it is not sent again.
    refused     text,
    refused_at  timestamptz
);
CREATE INDEX outbox_pending ON pgevents.outbox (sink, id) WHERE refused IS NULL;

-- Per sink, for `status` and `outbox status`: the flusher's last success and error.
CREATE TABLE pgevents.sinks (
    name          text PRIMARY KEY,
    last_sent_at  timestamptz,
    sent          bigint NOT NULL DEFAULT 0,
    last_error    text,
    last_error_at timestamptz
);

-- Record a batch's messages, with the same lease check as `ack` (so that a
-- plugin's SQL session can do it inside its transaction, without any
-- privilege on the outbox: the token is the proof). The arrays are parallel,
-- in publishing order. A message id recorded before is skipped.
CREATE FUNCTION pgevents.record_messages(p_plugin text, p_part int, p_token uuid,
                                         p_ids uuid[], p_sinks text[], p_subjects text[],
                                         p_keys text[], p_payloads bytea[], p_headers jsonb[])
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pgevents.lock_lease(p_plugin, p_part, p_token) THEN
        RETURN false;
    END IF;
    INSERT INTO pgevents.outbox (message_id, sink, subject, key, payload, headers, plugin)
    SELECT m.id, m.sink, m.subject, m.key, m.payload, m.headers, p_plugin
    FROM unnest(p_ids, p_sinks, p_subjects, p_keys, p_payloads, p_headers)
         WITH ORDINALITY AS m(id, sink, subject, key, payload, headers, n)
    ORDER BY m.n
    ON CONFLICT (message_id) DO NOTHING;
    PERFORM pg_notify('pgevents_outbox', s) FROM (SELECT DISTINCT unnest(p_sinks) AS s) d;
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION pgevents.record_messages(text, int, uuid, uuid[], text[], text[], text[], bytea[], jsonb[]) FROM PUBLIC;
