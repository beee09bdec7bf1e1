-- The multi-process subscription protocol (see eventuate_core::subscription_store): members with
-- the subscribers they run, stored subscriber shapes with a generation, and fencing tokens.
-- Runs with search_path set to the store's schema: names are deliberately unqualified.

-- Running dispatchers. Leases are held by the incarnation (fresh for every start), so a process
-- restarted under the same node id is a new holder. Fair shares count, per subscriber, only the
-- members that run it. (`subscription_nodes` of migration 2 is no longer used.)
CREATE TABLE subscription_members (
    incarnation UUID PRIMARY KEY,
    node        UUID NOT NULL,
    subscribers TEXT[] NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);

-- What a subscriber's checkpoints mean. A reshape bumps the generation; partition rows of an
-- older generation are migrated once none of their leases is live.
CREATE TABLE subscribers (
    subscriber_id TEXT PRIMARY KEY,
    partitions    INT NOT NULL CHECK (partitions > 0),
    entity_types  TEXT[] NOT NULL,
    event_types   TEXT[] NOT NULL,
    generation    BIGINT NOT NULL,
    -- Where partitions start when they are first created (one head for `start = now`).
    start_tx      BIGINT NOT NULL,
    start_seq     BIGINT NOT NULL
);

-- `owner` is now the holding incarnation; `epoch` is bumped by every acquisition and every
-- reshape and fences every state write; rows left by migration 2 are generation 0 (migrated by
-- the first declaration of their subscriber).
ALTER TABLE subscription_partitions
    ADD COLUMN generation    BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN epoch         BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN owner_node    UUID,
    ADD COLUMN unowned_since TIMESTAMPTZ NOT NULL DEFAULT now();
