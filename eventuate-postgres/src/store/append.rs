//! The write path: validation, then one statement per append (optimistic concurrency from the
//! unique key on the entity version, idempotency keys and their command fingerprints written by
//! the same statement), and the mapping of unique violations to typed errors.

use eventuate_core::store::{duplicate_or_mismatch, validate_append, validate_payload};
use eventuate_core::{AppendOutcome, AppendRequest, CommandFingerprint, ExpectedVersion, Position};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{CoreResult, PostgresEventStore, backend, get, to_u64};

/// Whether an append to an existing entity checks that the version it builds on exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Guard {
    /// It does (with the statement's guard; see `sql.rs`): `append`, `append_in`.
    Checked,
    /// The caller read that version from this store
    /// ([`EventStore::append_after_load`](eventuate_core::EventStore::append_after_load)), and a
    /// single-statement append's transaction is younger than the one that wrote it (it
    /// committed before the statement's snapshot, and the statement takes its id after):
    /// the plain insert, whose unique version still catches a lost race.
    Loaded,
}

/// How many times an append whose guard failed only because its snapshot was a moment too old
/// is re-run before giving up (see [`PostgresEventStore::append_in`]).
const GUARD_ATTEMPTS: u32 = 3;

impl PostgresEventStore {
    /// Appends inside the caller's transaction: the events (and the idempotency key) commit or
    /// roll back with the caller's other writes, e.g. a read model updated by the same handler.
    ///
    /// Same checks and outcomes as
    /// [`EventStore::append`](eventuate_core::EventStore::append), with these differences:
    /// - nothing is visible, and [`appended`](Self::appended) does not fire, until the caller
    ///   commits; call [`notify_appended`](Self::notify_appended) after the commit;
    /// - a lost race (a unique violation) aborts the caller's transaction, as any failed
    ///   statement does in PostgreSQL; the error still says what happened;
    /// - the stream orders transactions by their id, which a transaction gets at its first
    ///   write. If the entity's current version was written by a transaction that got its id
    ///   *after* the caller's, appending the next version here would put it before its
    ///   predecessor in the stream; the store refuses it with
    ///   [`eventuate_core::Error::OrderingRefused`], a transient error: roll back and run the
    ///   transaction again (a new transaction is younger). Appending early in the transaction
    ///   avoids it.
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        request: AppendRequest,
    ) -> CoreResult<AppendOutcome> {
        self.check(&request)?;
        self.append_on(conn, &request, true, Guard::Checked).await
    }

    pub(super) fn check(&self, request: &AppendRequest) -> CoreResult<()> {
        validate_append(request)?;
        for event in &request.events {
            validate_payload(request, event, self.inner.max_payload_bytes)?;
        }
        Ok(())
    }

    pub(super) async fn append_on(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        in_transaction: bool,
        guard: Guard,
    ) -> CoreResult<AppendOutcome> {
        // The caller has run `check`: payloads are parsed once per append.
        let sql = &self.inner.sql;
        let entity_type = request.entity_type.as_str();
        let entity_id = request.entity_id.as_str();
        let base = match request.expected {
            ExpectedVersion::New => 0,
            ExpectedVersion::Exactly(v) => i64::try_from(v).map_err(|_| {
                eventuate_core::Error::Config(format!(
                    "append to {entity_type} `{entity_id}` expects version {v}, beyond what the \
                     store can hold"
                ))
            })?,
        };
        let event_ids: Vec<Uuid> = request.events.iter().map(|e| e.event_id).collect();
        let event_types: Vec<&str> = request
            .events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect();
        let payloads: Vec<&str> = request.events.iter().map(|e| e.payload.as_str()).collect();
        // The events of one command carry the same metadata: then it is serialized and sent
        // once, not once per event.
        let shared = request
            .events
            .split_first()
            .is_some_and(|(first, rest)| rest.iter().all(|e| e.metadata == first.metadata));
        let metadata = request
            .events
            .iter()
            .take(if shared { 1 } else { usize::MAX })
            .map(|e| serde_json::to_string(&e.metadata))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|source| eventuate_core::Error::Encode {
                what: format!("event metadata for {entity_type} `{entity_id}`"),
                source,
            })?;
        // Fits: entity_hash is 31 bits.
        let hash = i32::try_from(eventuate_core::name::entity_hash(entity_id)).unwrap_or(0);
        // `append_new` inserts versions from $7 + 1 unconditionally: a create ($7 = 0), or an
        // update whose base version is known to exist (see `Guard::Loaded`). In a caller's
        // transaction the guard's ordering check is needed whatever the caller read: the
        // transaction may have taken its id before the version's writer did.
        let checked = guard == Guard::Checked || in_transaction;
        let statements = match (&request.expected, &request.idempotency) {
            (ExpectedVersion::Exactly(_), None) if checked => &sql.append_exactly,
            (ExpectedVersion::Exactly(_), Some(_)) if checked => &sql.append_exactly_key,
            (_, None) => &sql.append_new,
            (_, Some(_)) => &sql.append_new_key,
        };
        // Most commands append one event: a plain row is cheaper for the server than UNNEST.
        let single = match request.events.as_slice() {
            [event] => Some(event),
            _ => None,
        };
        let statement = if single.is_some() {
            &statements.one
        } else if shared {
            &statements.many_shared
        } else {
            &statements.many
        };
        let context = || format!("append to {entity_type} `{entity_id}`");

        for _ in 0..GUARD_ATTEMPTS {
            let query = sqlx::query(statement);
            let mut query = match single {
                Some(event) => query
                    .bind(event.event_id)
                    .bind(event.event_type.as_str())
                    .bind(event.payload.as_str())
                    .bind(metadata[0].as_str()),
                None if shared => query
                    .bind(&event_ids)
                    .bind(&event_types)
                    .bind(&payloads)
                    .bind(metadata[0].as_str()),
                None => query
                    .bind(&event_ids)
                    .bind(&event_types)
                    .bind(&payloads)
                    .bind(&metadata),
            }
            .bind(entity_type)
            .bind(entity_id)
            .bind(base)
            .bind(hash);
            if let Some(key) = &request.idempotency {
                query = query
                    .bind(key.subscriber_id.as_str())
                    .bind(key.triggering_event_id)
                    .bind(i64::from(key.sequence))
                    .bind(key.command_type.as_str());
            }
            let rows = match query.fetch_all(&mut *conn).await {
                Ok(rows) => rows,
                Err(sqlx::Error::Database(db))
                    if db.is_unique_violation()
                        && db.constraint() == Some("events_entity_version_unique") =>
                {
                    // Another writer committed one of our versions first. In the caller's
                    // transaction the failure aborted it: ask the pool instead.
                    let actual = if in_transaction {
                        let mut other = self
                            .inner
                            .pool
                            .acquire()
                            .await
                            .map_err(|e| eventuate_core::Error::backend(context(), e))?;
                        self.current_version(&mut other, entity_type, entity_id)
                            .await?
                    } else {
                        self.current_version(conn, entity_type, entity_id).await?
                    };
                    return Err(lost_race(request, actual));
                }
                Err(sqlx::Error::Database(db))
                    if db.is_unique_violation()
                        && db.constraint() == Some("events_event_id_unique") =>
                {
                    // Which one? In the caller's transaction the failure aborted it: ask the
                    // pool instead.
                    let lookup = sqlx::query_scalar(&sql.taken_event_id).bind(&event_ids);
                    let taken: Option<Uuid> = if in_transaction {
                        let mut other = self
                            .inner
                            .pool
                            .acquire()
                            .await
                            .map_err(|e| backend(context(), e))?;
                        lookup.fetch_optional(&mut *other).await
                    } else {
                        lookup.fetch_optional(&mut *conn).await
                    }
                    .map_err(|e| backend(context(), e))?;
                    return Err(match taken {
                        Some(event_id) => eventuate_core::Error::DuplicateEventId {
                            entity_type: request.entity_type.clone(),
                            entity_id: request.entity_id.clone(),
                            event_id,
                        },
                        // Taken by a transaction that has not committed (or rolled back) yet.
                        None => eventuate_core::Error::backend(
                            format!("{}: an event id of this append is already taken", context()),
                            sqlx::Error::Database(db),
                        ),
                    });
                }
                Err(e) => {
                    // A broken connection: the pool's others may be broken too.
                    self.inner.health.saw(&e);
                    return Err(append_failed(context(), e));
                }
            };
            if !rows.is_empty() {
                let mut stored = Vec::with_capacity(rows.len());
                for row in &rows {
                    let transaction: i64 = get(row, 0, &context)?;
                    let sequence: i64 = get(row, 1, &context)?;
                    let version: i64 = get(row, 2, &context)?;
                    stored.push((
                        version,
                        Position::new(to_u64(transaction), to_u64(sequence)),
                    ));
                }
                stored.sort_unstable_by_key(|(version, _)| *version);
                let version = stored.last().map_or(0, |(v, _)| to_u64(*v));
                if !in_transaction {
                    self.notify_appended();
                }
                return Ok(AppendOutcome::Appended {
                    version,
                    positions: stored.into_iter().map(|(_, p)| p).collect(),
                });
            }
            // Nothing inserted: the key was already there, or the version guard failed.
            // The key is checked first so that a re-delivered create is a duplicate, not
            // "entity exists". The same query reads the fingerprint recorded with the key, so
            // telling a duplicate from a different command costs no extra round trip.
            if let Some(key) = &request.idempotency {
                let recorded: Option<(Option<String>, Option<String>, Option<String>)> =
                    sqlx::query_as(&sql.key_fingerprint)
                        .bind(key.subscriber_id.as_str())
                        .bind(key.triggering_event_id)
                        .bind(i64::from(key.sequence))
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(|e| backend(context(), e))?;
                if let Some(columns) = recorded {
                    // NULLs: recorded before fingerprints were; unknown, never a mismatch.
                    let fingerprint = match columns {
                        (Some(entity_type), Some(entity_id), Some(command_type)) => {
                            Some(CommandFingerprint {
                                entity_type,
                                entity_id,
                                command_type,
                            })
                        }
                        _ => None,
                    };
                    return duplicate_or_mismatch(request, fingerprint);
                }
            }
            let actual = self.current_version(conn, entity_type, entity_id).await?;
            match request.expected {
                ExpectedVersion::New if actual > 0 => return Err(lost_race(request, actual)),
                ExpectedVersion::Exactly(_) if actual == 0 => {
                    return Err(eventuate_core::Error::EntityNotFound {
                        entity_type: entity_type.to_owned(),
                        entity_id: entity_id.to_owned(),
                    });
                }
                ExpectedVersion::Exactly(v) if actual != v => {
                    return Err(lost_race(request, actual));
                }
                // The version we build on was committed between the statement's snapshot and
                // our look-up: run the statement again with a fresh snapshot.
                _ => continue,
            }
        }
        Err(match request.expected {
            // Transient: a new transaction (or, for a pooled append, a later statement) sees
            // the version as committed by an older transaction.
            ExpectedVersion::Exactly(version) => eventuate_core::Error::OrderingRefused {
                entity_type: entity_type.to_owned(),
                entity_id: entity_id.to_owned(),
                version,
            },
            ExpectedVersion::New => eventuate_core::Error::Config(format!(
                "{}: the entity neither exists nor can be created; is another process deleting \
                 events?",
                context()
            )),
        })
    }

    pub(super) async fn current_version(
        &self,
        conn: &mut PgConnection,
        entity_type: &str,
        entity_id: &str,
    ) -> CoreResult<u64> {
        let version: i64 = sqlx::query_scalar(&self.inner.sql.current_version)
            .bind(entity_type)
            .bind(entity_id)
            .fetch_one(conn)
            .await
            .map_err(|e| {
                backend(
                    format!("read the version of {entity_type} `{entity_id}`"),
                    e,
                )
            })?;
        Ok(to_u64(version))
    }

    pub(super) async fn append_pooled(
        &self,
        request: AppendRequest,
        guard: Guard,
    ) -> CoreResult<AppendOutcome> {
        // Validate before taking a connection: bad input never waits for the pool.
        self.check(&request)?;
        // Not sent yet: a failure to get a connection writes nothing (a plain `Backend`).
        let mut conn = match self.inner.pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                let e = self.inner.health.failed(&self.inner.pool, e).await;
                return Err(backend(
                    format!(
                        "append to {} `{}`: no database connection",
                        request.entity_type, request.entity_id
                    ),
                    e,
                ));
            }
        };
        self.append_on(&mut conn, &request, false, guard).await
    }
}

/// The error for an append that found the entity at `actual`, not where it expected.
fn lost_race(request: &AppendRequest, actual: u64) -> eventuate_core::Error {
    match request.expected {
        ExpectedVersion::New => eventuate_core::Error::EntityExists {
            entity_type: request.entity_type.clone(),
            entity_id: request.entity_id.clone(),
            version: actual,
        },
        ExpectedVersion::Exactly(expected) => eventuate_core::Error::Conflict {
            entity_type: request.entity_type.clone(),
            entity_id: request.entity_id.clone(),
            expected,
            actual,
        },
    }
}

/// The error for an append statement that failed without an answer from the database: when
/// the statement may have reached it (the connection broke after sending), the events may be
/// stored, and the error says so ([`eventuate_core::Error::OutcomeUnknown`]); an error the
/// database answered (the statement failed, nothing was written) or a failure before sending
/// (no connection, pool timeout, configuration) is a plain `Backend` error.
pub(super) fn append_failed(context: String, e: sqlx::Error) -> eventuate_core::Error {
    if may_have_reached_the_database(&e) {
        eventuate_core::Error::backend_outcome_unknown(context, e)
    } else {
        backend(context, e)
    }
}

/// Whether a failed statement may have been executed: the connection failed while the
/// statement was sent or its answer awaited.
///
/// The server ending the session counts too: its FATAL may arrive after the statement
/// committed and before the answer was read.
fn may_have_reached_the_database(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnDecode { .. }
    ) || super::health::session_ended(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_failures_say_whether_the_events_may_be_stored() {
        let reset = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ));
        let err = append_failed("append to Order `o-1`".into(), reset);
        assert!(err.outcome_unknown(), "{err:?}");
        assert!(!err.is_permanent());
        assert!(err.to_string().contains("may or may not"), "{err}");
        for nothing_written in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Configuration("bad url".into()),
        ] {
            let err = append_failed("append".into(), nothing_written);
            assert!(!err.outcome_unknown(), "{err:?}");
            assert!(
                matches!(err, eventuate_core::Error::Backend { .. }),
                "{err:?}"
            );
        }
    }
}
