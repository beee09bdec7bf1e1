-- The stream's horizon (see the `ordering` module of eventuate-postgres) as a function, so that
-- statements that read the stream call it instead of carrying its subqueries: PostgreSQL then
-- plans those statements in a fraction of the time (planning the inline expression cost more
-- than reading a batch of 256 events), and plans the function's own query once per session.
-- STABLE: it sees the calling statement's snapshot, exactly as the inline expression did.
-- Runs with search_path set to the store's schema: names are deliberately unqualified.
CREATE FUNCTION stream_horizon() RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    -- On a hot standby (or when no transaction runs) the running-xid list says nothing
    -- useful: plain xmin. Otherwise the oldest running transaction that could write to this
    -- database, or xmax when there is none.
    IF pg_is_in_recovery() OR NOT EXISTS (SELECT 1 FROM pg_snapshot_xip(pg_current_snapshot())) THEN
        RETURN pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
    END IF;
    RETURN COALESCE(
        (SELECT min(x::text::bigint) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
         WHERE NOT EXISTS (SELECT 1 FROM pg_stat_get_activity(NULL) AS a
           WHERE a.backend_xid = x::xid
           AND (a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database())
                OR a.backend_type = 'autovacuum worker'))),
        pg_snapshot_xmax(pg_current_snapshot())::text::bigint);
END
$$;
