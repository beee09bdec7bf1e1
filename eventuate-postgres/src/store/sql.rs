//! Every statement of the store, built once per store with the schema spliced in (names cannot
//! be bound as parameters), and the horizon expression that makes stream reads exact.

use super::quote;

pub(super) const EVENT_COLUMNS: &str = "transaction_id, sequence, event_id, entity_type, entity_id, \
     entity_version, event_type, payload::text, metadata::text";

/// Every statement, built once per store with the schema spliced in (names cannot be bound
/// as parameters). sqlx prepares each on first use per connection and caches it.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) append_new: AppendSql,
    pub(super) append_exactly: AppendSql,
    pub(super) append_new_key: AppendSql,
    pub(super) append_exactly_key: AppendSql,
    pub(super) key_fingerprint: String,
    pub(super) current_version: String,
    pub(super) load: String,
    pub(super) taken_event_id: String,
    pub(super) load_fold: String,
    pub(super) load_snapshot_and_fold: String,
    pub(super) load_under_types: String,
    pub(super) read: Filtered,
    pub(super) batch: Filtered,
    /// [`Sql::batch`] for large pages ([`WINDOW_FROM`] rows or more): see `batch_window`.
    pub(super) batch_window: Filtered,
    pub(super) count: Filtered,
    pub(super) head: String,
    pub(super) save_snapshot: String,
    pub(super) load_snapshot: String,
}

/// From this page size on, batches are read with `batch_window` (the page, then cut at the
/// horizon) instead of `batch` (the scan bounded by the horizon). A catch-up's pages grow to
/// this size and beyond only while it is far behind; at the head pages are the runtime's batch
/// size again (256 by default).
pub(super) const WINDOW_FROM: usize = 1024;

/// One stream statement in its four forms, by filter. Each takes $1, $2 (the position to read
/// after) and $3 (the limit), then the entity types ($4) and the partition (count, index)
/// when the filter has them.
#[derive(Debug)]
pub(super) struct Filtered {
    all: String,
    types: String,
    partition: String,
    types_partition: String,
}

impl Filtered {
    fn new(statement: impl Fn(&str) -> String) -> Self {
        Filtered {
            all: statement(""),
            types: statement(" AND entity_type = ANY($4)"),
            partition: statement(" AND partition_hash % $4 = $5"),
            types_partition: statement(" AND entity_type = ANY($4) AND partition_hash % $5 = $6"),
        }
    }

    /// The form for a filter.
    pub(super) fn of(&self, filter: &eventuate_core::StreamFilter) -> &str {
        match (filter.entity_types.is_empty(), filter.partition.is_some()) {
            (true, false) => &self.all,
            (false, false) => &self.types,
            (true, true) => &self.partition,
            (false, true) => &self.types_partition,
        }
    }
}

/// One kind of append, for one event and for several.
#[derive(Debug)]
pub(super) struct AppendSql {
    pub(super) one: String,
    pub(super) many: String,
    /// `many` with one metadata document ($4, a scalar) for every event: what the events of
    /// one command share, serialized and sent once.
    pub(super) many_shared: String,
}

impl Sql {
    pub(super) fn new(schema: &str) -> Self {
        let s = quote(schema);
        // The horizon below which the stream is final (see [`crate::ordering`] and migration 5):
        // the oldest transaction still running at the statement's snapshot that could write to
        // this database's tables, or the snapshot's xmax when there is none; plain xmin on a hot
        // standby. A function, so that the statements that use it stay cheap to plan.
        let horizon = format!("{s}.stream_horizon()");
        // $1..$4: event id, type, payload and metadata (scalars for one event, arrays for
        // several); $5 entity type, $6 entity id, $7 the version the append builds on (0 for a
        // create), $8 partition hash; $9..$11 the idempotency key, $12 the command type (with
        // $5 and $6, the command's fingerprint, recorded with the key).
        //
        // A create needs no guard: versions start at 1 and have no gaps, so an existing entity
        // has a version 1 and the unique key turns the insert into a unique violation, which is
        // mapped to `EntityExists`. An update must check that version $7 exists (or it could
        // leave a gap), and that it comes from an older transaction, so that the stream, which
        // orders by transaction id, keeps the entity's versions ascending. For the store's own
        // single-statement appends that always holds; see `append_in`. An update by a writer
        // that read the version from the store (`append_after_load`, the repository) needs
        // neither, and runs the create's statement from $7 (see `append::Guard::Loaded`).
        let guard_exactly = format!(
            "EXISTS (SELECT 1 FROM {s}.events WHERE entity_type = $5 AND entity_id = $6 \
             AND entity_version = $7 \
             AND transaction_id < pg_current_xact_id()::text::bigint)"
        );
        let columns = format!(
            "INSERT INTO {s}.events (event_id, entity_type, entity_id, entity_version, \
             event_type, payload, metadata, partition_hash)"
        );
        let returning = "RETURNING transaction_id, sequence, entity_version";
        let one_values = "$1::uuid, $5, $6, $7 + 1, $2::text, $3::text::json, $4::text::json, $8";
        let insert = |condition: Option<&str>| AppendSql {
            one: match condition {
                None => format!("{columns} VALUES ({one_values}) {returning}"),
                Some(c) => format!("{columns} SELECT {one_values} WHERE {c} {returning}"),
            },
            many: format!(
                "{columns} \
                 SELECT e.event_id, $5, $6, $7 + e.ord, e.event_type, e.payload::json, \
                 e.metadata::json, $8 \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY \
                 AS e(event_id, event_type, payload, metadata, ord) \
                 {} ORDER BY e.ord {returning}",
                condition.map(|c| format!("WHERE {c}")).unwrap_or_default()
            ),
            many_shared: format!(
                "{columns} \
                 SELECT e.event_id, $5, $6, $7 + e.ord, e.event_type, e.payload::json, \
                 $4::text::json, $8 \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY \
                 AS e(event_id, event_type, payload, ord) \
                 {} ORDER BY e.ord {returning}",
                condition.map(|c| format!("WHERE {c}")).unwrap_or_default()
            ),
        };
        // The key row is inserted only when the version guard passes, and the events only when
        // the key row was inserted: one statement, so a failed guard or a unique violation
        // records no key, and a repeated key writes no event.
        let with_key = |guard: Option<&str>| {
            let key = format!(
                "WITH key AS (INSERT INTO {s}.processed_commands \
                 (subscriber_id, triggering_event_id, sequence, entity_type, entity_id, \
                 command_type) \
                 SELECT $9, $10, $11, $5, $6, $12 {} \
                 ON CONFLICT DO NOTHING RETURNING 1)",
                guard.map(|g| format!("WHERE {g}")).unwrap_or_default()
            );
            let events = insert(Some("EXISTS (SELECT 1 FROM key)"));
            AppendSql {
                one: format!("{key} {}", events.one),
                many: format!("{key} {}", events.many),
                many_shared: format!("{key} {}", events.many_shared),
            }
        };
        // Stream reads: $1, $2 the position to read after, $3 the limit, then the filters.
        let read = |filters: &str| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events \
                 WHERE (transaction_id, sequence) > ($1, $2) AND transaction_id < {horizon}{filters} \
                 ORDER BY transaction_id, sequence LIMIT $3"
            )
        };
        // Batches: the same rows as a read, plus one row that carries the horizon in the
        // first column and the newest event's transaction below it in the second (NULL in the
        // event rows; its other columns NULL), so that a short read tells how far it looked.
        // A short read claims only up to that newest event, not up to the horizon: the
        // transaction ids between them were handed out but need not be in the WAL, and after
        // a crash PostgreSQL hands out again the ids its WAL never recorded, so a transaction
        // after the crash can commit an event with an id below a horizon seen before it
        // (`tests/server_restart.rs` lost the first event after an immediate restart about
        // one run in ten). The newest event's commit is in the WAL (appends commit
        // synchronously), so no id up to it is handed out again. A UNION ALL rather than the
        // events LEFT JOIN LATERAL'd to the horizon: the join passed every row through a nested loop, which cost the server
        // about as much again as reading it.
        // The horizon's row, then the events (one of the two forms below).
        let with_horizon_row = |events: String| {
            format!(
                "WITH h AS MATERIALIZED (SELECT {horizon} AS horizon) \
                 SELECT horizon, (SELECT max(transaction_id) FROM {s}.events \
                     WHERE transaction_id < (SELECT horizon FROM h)), \
                   NULL::bigint, NULL::uuid, NULL::text, NULL::text, \
                   NULL::bigint, NULL::text, NULL::text, NULL::text FROM h \
                 UNION ALL ({events})"
            )
        };
        let batch = |filters: &str| {
            with_horizon_row(format!(
                "SELECT NULL, {EVENT_COLUMNS} FROM {s}.events \
                 WHERE (transaction_id, sequence) > ($1, $2) \
                   AND transaction_id < (SELECT horizon FROM h){filters} \
                 ORDER BY transaction_id, sequence LIMIT $3"
            ))
        };
        // Large pages: the page is read without the horizon, then cut at it. The horizon is
        // unknown when the statement is planned, so as a condition of the scan the planner
        // guesses a third of the rows after the position pass it; near the end of the stream
        // that guess falls under a large limit and it reads every remaining row through a
        // bitmap scan and a sort to disk (EXPLAIN ANALYZE, 14,000 rows left, limit 4,096:
        // 22 ms, against 1.4 ms for the ordered index scan this form keeps; a third of a
        // 50,000-event catch-up's time). The rows the cut drops are a suffix (ordered by
        // transaction id), so a page with rows cut off still read everything below the
        // horizon, and a full page is full below it: the same answer. Not used for small
        // pages: without the bound, a read behind a long-open transaction would scan every
        // row committed after it that the filter drops, on every wake-up, where the bounded
        // scan stops at once; a large page is only asked for far behind the head, once.
        let batch_window = |filters: &str| {
            with_horizon_row(format!(
                "SELECT NULL, w.* FROM (SELECT {EVENT_COLUMNS} FROM {s}.events \
                   WHERE (transaction_id, sequence) > ($1, $2){filters} \
                   ORDER BY transaction_id, sequence LIMIT $3) AS w \
                 WHERE w.transaction_id < (SELECT horizon FROM h) \
                 ORDER BY w.transaction_id, w.sequence"
            ))
        };
        // Counts stop at the limit ($3): a lag costs at most that many rows, however far behind.
        let count = |filters: &str| {
            format!(
                "SELECT count(*) FROM (SELECT 1 FROM {s}.events \
                 WHERE (transaction_id, sequence) > ($1, $2) AND transaction_id < {horizon}{filters} \
                 LIMIT $3) AS counted"
            )
        };
        Sql {
            append_new: insert(None),
            append_exactly: insert(Some(&guard_exactly)),
            append_new_key: with_key(None),
            append_exactly_key: with_key(Some(&guard_exactly)),
            // The fingerprint recorded with a key; no row when the key is not recorded.
            key_fingerprint: format!(
                "SELECT entity_type, entity_id, command_type FROM {s}.processed_commands \
                 WHERE subscriber_id = $1 AND triggering_event_id = $2 AND sequence = $3"
            ),
            current_version: format!(
                "SELECT COALESCE(MAX(entity_version), 0)::bigint FROM {s}.events \
                 WHERE entity_type = $1 AND entity_id = $2"
            ),
            load: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events \
                 WHERE entity_type = $1 AND entity_id = $2 AND entity_version > $3 \
                 ORDER BY entity_version"
            ),
            taken_event_id: format!(
                "SELECT event_id FROM {s}.events WHERE event_id = ANY($1) LIMIT 1"
            ),
            load_fold: format!(
                "SELECT entity_version, event_type, payload::text, \
                   schema_version FROM {s}.events \
                 WHERE entity_type = $1 AND entity_id = $2 AND entity_version > $3 \
                 ORDER BY entity_version"
            ),
            load_snapshot_and_fold: format!(
                "WITH snap AS (SELECT entity_version, payload::text AS payload \
                   FROM {s}.snapshots \
                   WHERE entity_type = $1 AND entity_id = $2 AND snapshot_version = $3) \
                 SELECT 0 AS kind, entity_version, NULL::text AS event_type, payload, \
                   NULL::int AS schema_version FROM snap \
                 UNION ALL \
                 SELECT 1, e.entity_version, e.event_type, e.payload::text, \
                   e.schema_version FROM {s}.events e \
                 WHERE e.entity_type = $1 AND e.entity_id = $2 \
                   AND e.entity_version > COALESCE((SELECT entity_version FROM snap), 0) \
                 ORDER BY kind, entity_version"
            ),
            // `load_snapshot_and_fold` for several entity type names ($1, an array) at once:
            // each name's snapshot ($3 NULL: none asked) and the events after it, grouped by
            // name. The (entity_type, entity_id, entity_version) key serves `= ANY($1)`.
            load_under_types: format!(
                "WITH snap AS (SELECT entity_type, entity_version, payload::text AS payload \
                   FROM {s}.snapshots \
                   WHERE entity_type = ANY($1) AND entity_id = $2 AND snapshot_version = $3) \
                 SELECT 0 AS kind, entity_type, entity_version, NULL::text AS event_type, \
                   payload, NULL::int AS schema_version FROM snap \
                 UNION ALL \
                 SELECT 1, e.entity_type, e.entity_version, e.event_type, e.payload::text, \
                   e.schema_version FROM {s}.events e \
                 WHERE e.entity_type = ANY($1) AND e.entity_id = $2 \
                   AND e.entity_version > COALESCE((SELECT entity_version FROM snap \
                     WHERE snap.entity_type = e.entity_type), 0) \
                 ORDER BY entity_type, kind, entity_version"
            ),
            read: Filtered::new(read),
            batch: Filtered::new(batch),
            batch_window: Filtered::new(batch_window),
            count: Filtered::new(count),
            head: format!(
                "SELECT transaction_id, sequence FROM {s}.events WHERE transaction_id < {horizon} \
                 ORDER BY transaction_id DESC, sequence DESC LIMIT 1"
            ),
            save_snapshot: format!(
                "INSERT INTO {s}.snapshots AS snap \
                 (entity_type, entity_id, snapshot_version, entity_version, payload) \
                 VALUES ($1, $2, $3, $4, $5::json) \
                 ON CONFLICT (entity_type, entity_id, snapshot_version) DO UPDATE \
                 SET entity_version = EXCLUDED.entity_version, payload = EXCLUDED.payload, \
                 created_at = now() \
                 WHERE snap.entity_version <= EXCLUDED.entity_version"
            ),
            load_snapshot: format!(
                "SELECT entity_version, payload::text FROM {s}.snapshots \
                 WHERE entity_type = $1 AND entity_id = $2 AND snapshot_version = $3"
            ),
        }
    }
}
