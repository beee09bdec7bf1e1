//! The read path: entity loads (full envelopes, or only what folding an aggregate needs),
//! snapshots, and the global stream and its head below the horizon (see [`crate::ordering`]).

use eventuate_core::{
    EventEnvelope, EventMetadata, Position, Snapshot, StreamBatch, StreamFilter, StreamItem,
    TypedHistory,
};
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::{CoreResult, PostgresEventStore, backend, get, get_unchecked, to_u64};

impl PostgresEventStore {
    pub(super) async fn load_events(
        &self,
        entity_type: &str,
        entity_id: &str,
        after_version: u64,
    ) -> CoreResult<Vec<EventEnvelope>> {
        eventuate_core::name::validate_entity_type(entity_type)?;
        eventuate_core::name::validate_entity_id(entity_id)?;
        let context = || format!("load {entity_type} `{entity_id}`");
        let query = || {
            sqlx::query(&self.inner.sql.load)
                .bind(entity_type)
                .bind(entity_id)
                .bind(i64::try_from(after_version).unwrap_or(i64::MAX))
        };
        envelopes(self, query, &context, 0).await
    }

    /// Three columns instead of the envelope's nine: rebuilding an aggregate needs neither
    /// metadata nor positions, and the metadata JSON was most of the bytes and decode time.
    /// The rows of [`Self::fold`], owned.
    pub(super) async fn load_fold(
        &self,
        entity_type: &str,
        entity_id: &str,
        after_version: u64,
    ) -> CoreResult<Vec<eventuate_core::StoredEvent>> {
        let mut events = Vec::new();
        self.fold(entity_type, entity_id, after_version, &mut |event| {
            events.push(eventuate_core::StoredEvent {
                entity_version: event.entity_version,
                event_type: event.event_type.to_owned(),
                payload: event.payload.to_owned(),
                schema_version: event.schema_version,
            });
            Ok(())
        })
        .await?;
        Ok(events)
    }

    /// An entity's version, event type, payload and schema version, handed to `apply` as the
    /// rows arrive, borrowed from the row.
    pub(super) async fn fold(
        &self,
        entity_type: &str,
        entity_id: &str,
        after_version: u64,
        apply: &mut eventuate_core::store::FoldFn<'_>,
    ) -> CoreResult<()> {
        eventuate_core::name::validate_entity_type(entity_type)?;
        eventuate_core::name::validate_entity_id(entity_id)?;
        let context = || format!("load {entity_type} `{entity_id}`");
        let query = || {
            sqlx::query(&self.inner.sql.load_fold)
                .bind(entity_type)
                .bind(entity_id)
                .bind(i64::try_from(after_version).unwrap_or(i64::MAX))
        };
        each_row(self, query, &context, |row| {
            let version: i64 = get_unchecked(&row, 0, &context)?;
            apply(eventuate_core::StoredEventRef {
                entity_version: to_u64(version),
                event_type: get_unchecked(&row, 1, &context)?,
                payload: get_unchecked(&row, 2, &context)?,
                schema_version: schema_version(get_unchecked(&row, 3, &context)?),
            })
        })
        .await
    }

    /// The snapshot and the events after it in one statement (one round trip, one view of
    /// the data): the first row, if `kind` is 0, is the snapshot.
    pub(super) async fn load_snapshot_and_fold(
        &self,
        entity_type: &str,
        entity_id: &str,
        snapshot_version: u32,
    ) -> CoreResult<(Option<Snapshot>, Vec<eventuate_core::StoredEvent>)> {
        eventuate_core::name::validate_entity_type(entity_type)?;
        eventuate_core::name::validate_entity_id(entity_id)?;
        let context = || format!("load {entity_type} `{entity_id}` with its snapshot");
        let query = || {
            sqlx::query(&self.inner.sql.load_snapshot_and_fold)
                .bind(entity_type)
                .bind(entity_id)
                .bind(i64::from(snapshot_version))
        };
        let mut snapshot = None;
        let mut events = Vec::new();
        each_row(self, query, &context, |row| {
            let row = &row;
            let kind: i32 = get(row, 0, &context)?;
            let version: i64 = get(row, 1, &context)?;
            let payload: String = get(row, 3, &context)?;
            if kind == 0 {
                snapshot = Some(Snapshot {
                    entity_type: entity_type.to_owned(),
                    entity_id: entity_id.to_owned(),
                    entity_version: to_u64(version),
                    snapshot_version,
                    payload,
                });
            } else {
                events.push(eventuate_core::StoredEvent {
                    entity_version: to_u64(version),
                    event_type: get(row, 2, &context)?,
                    payload,
                    schema_version: schema_version(get(row, 4, &context)?),
                });
            }
            Ok(())
        })
        .await?;
        Ok((snapshot, events))
    }

    /// An entity under any of several entity type names (a renamed aggregate's current name and
    /// aliases): each name's snapshot and the events after it, in one statement (one round
    /// trip, one view of the data), returned in the order of `entity_types`.
    pub(super) async fn load_under_types(
        &self,
        entity_types: &[&str],
        entity_id: &str,
        snapshot_version: Option<u32>,
    ) -> CoreResult<Vec<TypedHistory>> {
        for entity_type in entity_types {
            eventuate_core::name::validate_entity_type(entity_type)?;
        }
        eventuate_core::name::validate_entity_id(entity_id)?;
        let context = || format!("load `{entity_id}` under [{}]", entity_types.join(", "));
        let query = || {
            sqlx::query(&self.inner.sql.load_under_types)
                .bind(entity_types)
                .bind(entity_id)
                .bind(snapshot_version.map(i64::from))
        };
        let mut found: Vec<TypedHistory> = Vec::new();
        each_row(self, query, &context, |row| {
            let row = &row;
            let kind: i32 = get(row, 0, &context)?;
            let entity_type: String = get(row, 1, &context)?;
            let version: i64 = get(row, 2, &context)?;
            let payload: String = get(row, 4, &context)?;
            let index = match found.iter().position(|h| h.entity_type == entity_type) {
                Some(index) => index,
                None => {
                    found.push(TypedHistory {
                        entity_type: entity_type.clone(),
                        snapshot: None,
                        events: Vec::new(),
                    });
                    found.len() - 1
                }
            };
            let history = &mut found[index];
            if kind == 0 {
                history.snapshot = Some(Snapshot {
                    entity_type,
                    entity_id: entity_id.to_owned(),
                    entity_version: to_u64(version),
                    snapshot_version: snapshot_version.unwrap_or_default(),
                    payload,
                });
            } else {
                history.events.push(eventuate_core::StoredEvent {
                    entity_version: to_u64(version),
                    event_type: get(row, 3, &context)?,
                    payload,
                    schema_version: schema_version(get(row, 5, &context)?),
                });
            }
            Ok(())
        })
        .await?;
        found.sort_by_key(|h| entity_types.iter().position(|t| *t == h.entity_type));
        Ok(found)
    }

    pub(super) async fn read(
        &self,
        after: Position,
        filter: &StreamFilter,
        limit: usize,
    ) -> CoreResult<Vec<EventEnvelope>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let context = || format!("read the event stream after position {after}");
        let args = filtered_args(after, limit, filter)
            .map_err(|e| backend(context(), sqlx::Error::Encode(e)))?;
        let query = || sqlx::query_with(self.inner.sql.read.of(filter), args.clone());
        envelopes(self, query, &context, limit.min(4096)).await
    }

    /// A batch for a consumer: undecodable rows are handed over instead of failing the read,
    /// and a short batch reports the horizon it looked up to (see
    /// [`eventuate_core::StreamBatch::scanned_to`]).
    pub(super) async fn read_batch_below_horizon(
        &self,
        after: Position,
        filter: &StreamFilter,
        limit: usize,
    ) -> CoreResult<StreamBatch> {
        if limit == 0 {
            return Ok(StreamBatch {
                items: Vec::new(),
                scanned_to: after,
            });
        }
        let context = || format!("read the event stream after position {after}");
        let args = filtered_args(after, limit, filter)
            .map_err(|e| backend(context(), sqlx::Error::Encode(e)))?;
        let statement = if limit >= super::sql::WINDOW_FROM {
            &self.inner.sql.batch_window
        } else {
            &self.inner.sql.batch
        };
        let query = || sqlx::query_with(statement.of(filter), args.clone());
        let mut items = Vec::with_capacity(limit.min(4096));
        // The newest event's transaction below the horizon (none: no event below it).
        let mut newest_final: Option<i64> = None;
        // The horizon's row and the event rows, in whatever order the server sends them (the
        // events keep theirs).
        each_row(self, query, &context, |row| {
            let sequence: Option<i64> = get_unchecked(&row, 2, &context)?;
            if sequence.is_some() {
                items.push(stream_item(&row, 1, &context)?);
            } else {
                newest_final = get_unchecked(&row, 1, &context)?;
            }
            Ok(())
        })
        .await?;
        let scanned_to = if items.len() < limit {
            // Everything below the horizon that passes the filter was read, and nothing can
            // be committed below it any more; the claim stops at the newest event's
            // transaction, whose commit is durable (see the statement in `sql.rs`: ids above
            // it may be handed out again after a crash).
            newest_final.map_or(after, |tx| {
                Position::new(to_u64(tx), i64::MAX as u64).max(after)
            })
        } else {
            items.last().map_or(after, |i| i.event().position)
        };
        Ok(StreamBatch { items, scanned_to })
    }

    pub(super) async fn count(
        &self,
        after: Position,
        filter: &StreamFilter,
        limit: u64,
    ) -> CoreResult<u64> {
        let context = || format!("count the events after position {after}");
        let args = filtered_args(after, limit, filter)
            .map_err(|e| backend(context(), sqlx::Error::Encode(e)))?;
        let pool = &self.inner.pool;
        let count: i64 = self
            .inner
            .health
            .read(pool, || {
                sqlx::query_scalar_with(self.inner.sql.count.of(filter), args.clone())
                    .fetch_one(pool)
            })
            .await
            .map_err(|e| backend(context(), e))?;
        Ok(to_u64(count))
    }

    pub(super) async fn read_head(&self) -> CoreResult<Position> {
        let context = || "read the head of the event stream".to_owned();
        let pool = &self.inner.pool;
        let row = self
            .inner
            .health
            .read(pool, || {
                sqlx::query(&self.inner.sql.head).fetch_optional(pool)
            })
            .await
            .map_err(|e| backend(context(), e))?;
        match row {
            None => Ok(Position::START),
            Some(row) => {
                let transaction: i64 = get(&row, 0, &context)?;
                let sequence: i64 = get(&row, 1, &context)?;
                Ok(Position::new(to_u64(transaction), to_u64(sequence)))
            }
        }
    }

    pub(super) async fn store_snapshot(&self, snapshot: Snapshot) -> CoreResult<()> {
        eventuate_core::name::validate_entity_type(&snapshot.entity_type)?;
        eventuate_core::name::validate_entity_id(&snapshot.entity_id)?;
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&snapshot.payload) {
            return Err(eventuate_core::Error::InvalidPayload {
                entity_type: snapshot.entity_type,
                entity_id: snapshot.entity_id,
                event_type: "snapshot".into(),
                reason: e.to_string(),
            });
        }
        let context = || {
            format!(
                "save a snapshot of {} `{}`",
                snapshot.entity_type, snapshot.entity_id
            )
        };
        let version = i64::try_from(snapshot.entity_version).map_err(|_| {
            eventuate_core::Error::Config(format!("{}: version out of range", context()))
        })?;
        sqlx::query(&self.inner.sql.save_snapshot)
            .bind(&snapshot.entity_type)
            .bind(&snapshot.entity_id)
            .bind(i64::from(snapshot.snapshot_version))
            .bind(version)
            .bind(&snapshot.payload)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| backend(context(), e))?;
        Ok(())
    }

    pub(super) async fn fetch_snapshot(
        &self,
        entity_type: &str,
        entity_id: &str,
        snapshot_version: u32,
    ) -> CoreResult<Option<Snapshot>> {
        eventuate_core::name::validate_entity_type(entity_type)?;
        eventuate_core::name::validate_entity_id(entity_id)?;
        let context = || format!("load the snapshot of {entity_type} `{entity_id}`");
        let pool = &self.inner.pool;
        let row = self
            .inner
            .health
            .read(pool, || {
                sqlx::query(&self.inner.sql.load_snapshot)
                    .bind(entity_type)
                    .bind(entity_id)
                    .bind(i64::from(snapshot_version))
                    .fetch_optional(pool)
            })
            .await
            .map_err(|e| backend(context(), e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let version: i64 = get(&row, 0, &context)?;
        let payload: String = get(&row, 1, &context)?;
        Ok(Some(Snapshot {
            entity_type: entity_type.to_owned(),
            entity_id: entity_id.to_owned(),
            entity_version: to_u64(version),
            snapshot_version,
            payload,
        }))
    }
}

/// A statement, built anew for each run (a read may run again, see [`each_row`]).
type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Runs the statement `query` builds and hands each row to `decode` as it arrives. A row is
/// dropped once decoded instead of all being collected first: the rows' bytes are slices of
/// the connection's read buffer, and while any is alive the buffer cannot be reused, so
/// collecting a long result makes the connection allocate fresh buffers as it reads.
///
/// A run that fails on a broken connection before any row arrived runs again on another
/// connection (see [`super::health`]): `decode` has seen nothing yet.
async fn each_row<'q>(
    store: &PostgresEventStore,
    query: impl Fn() -> Query<'q>,
    context: &(dyn Fn() -> String + Sync),
    mut decode: impl FnMut(PgRow) -> CoreResult<()> + Send,
) -> CoreResult<()> {
    use futures_util::TryStreamExt;
    let inner = &store.inner;
    let mut retries = inner.health.read_retries(&inner.pool);
    'run: loop {
        let mut rows = query().fetch(&inner.pool);
        let mut seen = false;
        loop {
            match rows.try_next().await {
                Ok(Some(row)) => {
                    seen = true;
                    decode(row)?;
                }
                Ok(None) => return Ok(()),
                Err(e) if !seen && inner.health.retry_read_after(&e, &mut retries) => {
                    continue 'run;
                }
                Err(e) => {
                    return Err(backend(
                        context(),
                        inner.health.failed(&inner.pool, e).await,
                    ));
                }
            }
        }
    }
}

/// The envelopes of a statement that selects [`EVENT_COLUMNS`], in the order it returns them.
async fn envelopes<'q>(
    store: &PostgresEventStore,
    query: impl Fn() -> Query<'q>,
    context: &(dyn Fn() -> String + Sync),
    capacity: usize,
) -> CoreResult<Vec<EventEnvelope>> {
    let mut events = Vec::with_capacity(capacity);
    each_row(store, query, context, |row| {
        events.push(envelope(&row, context)?);
        Ok(())
    })
    .await?;
    Ok(events)
}

/// Decodes a row of the columns listed in [`EVENT_COLUMNS`]; a row whose metadata does not
/// decode is a typed error naming it.
fn envelope(row: &PgRow, context: &dyn Fn() -> String) -> CoreResult<EventEnvelope> {
    match decode_row(row, 0, context)? {
        Ok(event) => Ok(event),
        Err((event, source)) => Err(eventuate_core::Error::Decode {
            entity_type: event.entity_type,
            entity_id: event.entity_id,
            version: event.entity_version,
            event_type: format!("metadata of {}", event.event_type),
            source,
        }),
    }
}

/// Decodes the [`EVENT_COLUMNS`] that start at column `first`. A row whose metadata does not
/// decode (written by hand or by another service) is [`StreamItem::Undecodable`], with
/// default metadata and the reason; the other columns are typed by the table.
fn stream_item(row: &PgRow, first: usize, context: &dyn Fn() -> String) -> CoreResult<StreamItem> {
    Ok(match decode_row(row, first, context)? {
        Ok(event) => StreamItem::Event(event),
        Err((event, e)) => {
            let text: &str = get_unchecked(row, first + 8, context)?;
            let shown: String = text.chars().take(200).collect();
            StreamItem::Undecodable {
                error: format!("its metadata `{shown}` does not decode: {e}"),
                event,
            }
        }
    })
}

/// The envelope, or, when its stored metadata does not decode, the envelope with default
/// metadata and the reason. The hot path of every stream read and load: the columns' types are
/// fixed by the statements, so sqlx's per-value type check is skipped.
#[allow(clippy::type_complexity)]
fn decode_row(
    row: &PgRow,
    first: usize,
    context: &dyn Fn() -> String,
) -> CoreResult<Result<EventEnvelope, (EventEnvelope, serde_json::Error)>> {
    let transaction: i64 = get_unchecked(row, first, context)?;
    let sequence: i64 = get_unchecked(row, first + 1, context)?;
    let version: i64 = get_unchecked(row, first + 5, context)?;
    let metadata: &str = get_unchecked(row, first + 8, context)?;
    let (metadata, error) = match serde_json::from_str(metadata) {
        Ok(metadata) => (metadata, None),
        Err(e) => (EventMetadata::default(), Some(e)),
    };
    let event = EventEnvelope {
        event_id: get_unchecked::<Uuid>(row, first + 2, context)?,
        entity_type: get_unchecked(row, first + 3, context)?,
        entity_id: get_unchecked(row, first + 4, context)?,
        entity_version: to_u64(version),
        event_type: get_unchecked(row, first + 6, context)?,
        payload: get_unchecked(row, first + 7, context)?,
        metadata,
        position: Position::new(to_u64(transaction), to_u64(sequence)),
    };
    Ok(match error {
        None => Ok(event),
        Some(e) => Err((event, e)),
    })
}

/// The row's `schema_version` column (computed from its metadata when written, migration 6).
/// A value that is not a version (-1: only SQL written by hand can store one) reads as
/// `u32::MAX`, a version no event set has, so the load fails with `Error::Upcast` naming the
/// event instead of reading the payload as a shape it may not have.
fn schema_version(column: Option<i32>) -> Option<u32> {
    column.map(|v| u32::try_from(v).unwrap_or(u32::MAX))
}

/// The parameters of a [`super::sql::Filtered`] statement: the position, the limit, then the
/// filter's entity types and partition.
fn filtered_args(
    after: Position,
    limit: impl TryInto<i64>,
    filter: &StreamFilter,
) -> Result<sqlx::postgres::PgArguments, sqlx::error::BoxDynError> {
    use sqlx::Arguments;
    let mut args = sqlx::postgres::PgArguments::default();
    args.add(i64::try_from(after.transaction).unwrap_or(i64::MAX))?;
    args.add(i64::try_from(after.sequence).unwrap_or(i64::MAX))?;
    args.add(limit.try_into().unwrap_or(i64::MAX))?;
    if !filter.entity_types.is_empty() {
        args.add(filter.entity_types.clone())?;
    }
    if let Some(partition) = filter.partition {
        args.add(i64::from(partition.count.max(1)))?;
        args.add(i64::from(partition.index))?;
    }
    Ok(args)
}
