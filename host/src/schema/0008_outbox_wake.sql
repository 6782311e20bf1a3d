-- Migration 8: recording messages no longer notifies inside the transaction.
-- A NOTIFY takes a database-wide lock at commit that is held through the
-- commit's disk flush, and the capture triggers of busy writers notify too:
-- it cost each acknowledgement with messages about 5 ms at 1,000 commits/s.
-- The host now wakes its own flusher in-process after the commit, and
-- notifies `pgevents_outbox` (outside any transaction) only for a sink that
-- another host flushes.

CREATE OR REPLACE FUNCTION pgevents.record_messages(p_plugin text, p_part int, p_token uuid,
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
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION pgevents.record_messages(text, int, uuid, uuid[], text[], text[], text[], bytea[], jsonb[]) FROM PUBLIC;
