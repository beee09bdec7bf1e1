-- The event store: events, processed commands (idempotency keys) and snapshots.
-- Runs with search_path set to the store's schema: names are deliberately unqualified.

-- The append-only log. `sequence` identifies an event; `transaction_id` is the 64-bit id of the
-- writing transaction, and (transaction_id, sequence) is the order of the global stream (see
-- the `ordering` module of eventuate-postgres for why it is safe to follow).
-- Payloads are `json`, not `jsonb`: `json` keeps the exact text the application wrote (the
-- in-memory store does too), accepts every valid JSON document (`jsonb` refuses "\u0000"), and
-- is cheaper to write and to read back as text.
CREATE TABLE events (
    sequence       BIGSERIAL,
    transaction_id BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    event_id       UUID NOT NULL,
    entity_type    TEXT NOT NULL,
    entity_id      TEXT NOT NULL,
    entity_version BIGINT NOT NULL CHECK (entity_version > 0),
    event_type     TEXT NOT NULL,
    payload        JSON NOT NULL,
    metadata       JSON NOT NULL,
    -- eventuate_core::name::entity_hash(entity_id), computed by the writer.
    partition_hash INT NOT NULL CHECK (partition_hash >= 0),
    -- The stream order; also the primary key, which spares every append one more index.
    CONSTRAINT events_pkey PRIMARY KEY (transaction_id, sequence),
    CONSTRAINT events_event_id_unique UNIQUE (event_id),
    CONSTRAINT events_entity_version_unique UNIQUE (entity_type, entity_id, entity_version)
);

-- Commands already applied, keyed by the event whose handler sent them.
CREATE TABLE processed_commands (
    subscriber_id       TEXT NOT NULL,
    triggering_event_id UUID NOT NULL,
    sequence            BIGINT NOT NULL,
    processed_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (subscriber_id, triggering_event_id, sequence)
);

-- The latest snapshot of an entity per snapshot format version.
CREATE TABLE snapshots (
    entity_type      TEXT NOT NULL,
    entity_id        TEXT NOT NULL,
    snapshot_version BIGINT NOT NULL,
    entity_version   BIGINT NOT NULL,
    payload          JSON NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_type, entity_id, snapshot_version)
);
