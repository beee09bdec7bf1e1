//! Look-ups outside the write and read paths: whether an idempotency key is recorded (asked by
//! the repository when a keyed command is rejected or decides nothing), and the stored entity
//! types (asked once when a runtime starts, to warn about subscriptions to unknown types).

use eventuate_core::{CommandFingerprint, IdempotencyKey};

use super::{CoreResult, PostgresEventStore, backend, quote};

impl PostgresEventStore {
    pub(super) async fn recorded_key(
        &self,
        key: &IdempotencyKey,
    ) -> CoreResult<Option<Option<CommandFingerprint>>> {
        let pool = &self.inner.pool;
        let recorded: Option<(Option<String>, Option<String>, Option<String>)> = self
            .inner
            .health
            .read(pool, || {
                sqlx::query_as(&self.inner.sql.key_fingerprint)
                    .bind(key.subscriber_id.as_str())
                    .bind(key.triggering_event_id)
                    .bind(i64::from(key.sequence))
                    .fetch_optional(pool)
            })
            .await
            .map_err(|e| backend("look up an idempotency key".to_owned(), e))?;
        Ok(recorded.map(|columns| match columns {
            (Some(entity_type), Some(entity_id), Some(command_type)) => Some(CommandFingerprint {
                entity_type,
                entity_id,
                command_type,
            }),
            // Recorded before fingerprints were.
            _ => None,
        }))
    }

    /// The distinct entity types, by a loose index scan of the unique index on
    /// `(entity_type, entity_id, entity_version)`: one index probe per type, however many
    /// events each has.
    pub(super) async fn stored_entity_types(&self) -> CoreResult<Vec<String>> {
        let events = format!("{}.events", quote(&self.inner.schema));
        let sql = format!(
            "WITH RECURSIVE t(entity_type) AS (\
               (SELECT entity_type FROM {events} ORDER BY entity_type LIMIT 1) \
               UNION ALL \
               SELECT (SELECT e.entity_type FROM {events} e WHERE e.entity_type > t.entity_type \
                       ORDER BY e.entity_type LIMIT 1) \
               FROM t WHERE t.entity_type IS NOT NULL) \
             SELECT entity_type FROM t WHERE entity_type IS NOT NULL"
        );
        let pool = &self.inner.pool;
        self.inner
            .health
            .read(pool, || sqlx::query_scalar(&sql).fetch_all(pool))
            .await
            .map_err(|e| backend("list the stored entity types".to_owned(), e))
    }
}
