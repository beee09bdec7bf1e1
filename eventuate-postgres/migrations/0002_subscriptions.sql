-- Durable subscription state for the dispatcher: live runtime nodes, one row per subscriber
-- partition (checkpoint, persisted attempt count, lease), and parked events.
-- Runs with search_path set to the store's schema: names are deliberately unqualified.

-- Runtimes that are alive; a node that stops heartbeating drops out of the fair-share count.
CREATE TABLE subscription_nodes (
    node_id    UUID PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);

-- One row per (subscriber, partition). Every write a consumer makes is conditional on
-- `owner` being that consumer's node (fencing); lease times come from the database clock so
-- that processes with skewed clocks agree.
CREATE TABLE subscription_partitions (
    subscriber_id    TEXT NOT NULL,
    partition        INT NOT NULL CHECK (partition >= 0),
    checkpoint_tx    BIGINT NOT NULL,
    checkpoint_seq   BIGINT NOT NULL,
    -- The event at (attempt_tx, attempt_seq) has been attempted `attempts` times.
    attempt_tx       BIGINT,
    attempt_seq      BIGINT,
    attempts         INT NOT NULL DEFAULT 0,
    owner            UUID,
    lease_expires_at TIMESTAMPTZ,
    -- Set while a consumer holds the partition, cleared by a clean release: a new holder that
    -- finds it set knows the previous one crashed or hung.
    dirty            BOOLEAN NOT NULL DEFAULT false,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, partition)
);

-- Events a subscriber gave up on, and events of the same entity parked behind them.
CREATE TABLE parked_events (
    subscriber_id    TEXT NOT NULL,
    partition        INT NOT NULL,
    transaction_id   BIGINT NOT NULL,
    sequence         BIGINT NOT NULL,
    event_id         UUID NOT NULL,
    entity_type      TEXT NOT NULL,
    entity_id        TEXT NOT NULL,
    entity_version   BIGINT NOT NULL,
    event_type       TEXT NOT NULL,
    payload          JSON NOT NULL,
    metadata         JSON NOT NULL,
    attempts         INT NOT NULL,
    error            TEXT NOT NULL,
    parked_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    replay_requested BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (subscriber_id, sequence)
);
