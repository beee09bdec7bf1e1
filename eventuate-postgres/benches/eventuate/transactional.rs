//! Workload 8b: transactional subscriber throughput. A subscriber that writes one view row
//! per event in the delivery's transaction (`PgEventContextExt::pg_transaction`: the row and
//! the checkpoint commit together, exactly once) catches up on stored events; timed from
//! `start()` until the view holds a row for every event. Reference: a plain subscriber making
//! the same insert on its own (autocommit, at least once), over the same events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventuate_core::{
    AppendRequest, EventContext, EventStore, Eventuate, ExpectedVersion, HandlerError, NewEvent,
    Subscriber, Subscription,
};
use eventuate_postgres::PgEventContextExt;
use serde_json::json;
use sqlx::PgPool;

use crate::account::{command_metadata, deposited_json};
use crate::env::Env;
use crate::report::{Row, Target};
use crate::stats::Throughput;
use crate::{BoxResult, Mode};

const EVENTS_PER_ENTITY: u64 = 500;

/// Inserts one view row per event, in the delivery's transaction or on its own.
#[derive(Clone)]
struct ViewWriter {
    id: String,
    transactional: bool,
    insert: Arc<str>,
    pool: PgPool,
    written: Arc<AtomicU64>,
}

impl Subscriber for ViewWriter {
    fn subscription(&self) -> Subscription {
        Subscription::new(self.id.clone(), ["Account"]).transactional(self.transactional)
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        let event = ctx.event();
        let query = sqlx::query(&self.insert)
            .bind(&self.id)
            .bind(event.event_id)
            .bind(&event.entity_id)
            .bind(event.entity_version as i64);
        if self.transactional {
            let mut conn = ctx.pg_transaction().await?;
            query.execute(&mut *conn).await?;
        } else {
            query.execute(&self.pool).await?;
        }
        self.written.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

pub async fn run(env: &Env, mode: Mode) -> BoxResult<(Vec<Row>, Option<String>)> {
    let events: u64 = if mode.quick { 5_000 } else { 20_000 };
    let store = env.store("txview", mode.pool_size).await?;
    let schema = store.schema().to_owned();
    let metadata = command_metadata().value;
    for e in 0..events.div_ceil(EVENTS_PER_ENTITY) {
        let n = (events - e * EVENTS_PER_ENTITY).min(EVENTS_PER_ENTITY);
        store
            .append(AppendRequest {
                entity_type: "Account".into(),
                entity_id: format!("txview-{e}"),
                expected: ExpectedVersion::New,
                events: (0..n)
                    .map(|_| NewEvent {
                        event_id: uuid::Uuid::new_v4(),
                        event_type: "Deposited".into(),
                        payload: deposited_json(1),
                        metadata: metadata.clone(),
                    })
                    .collect(),
                idempotency: None,
            })
            .await?;
    }
    let table = format!("\"{schema}\".view_rows");
    sqlx::query(&format!(
        "CREATE TABLE {table} (row_no BIGSERIAL PRIMARY KEY, subscriber TEXT NOT NULL, \
         event_id UUID NOT NULL, entity_id TEXT NOT NULL, version BIGINT NOT NULL)"
    ))
    .execute(store.pool())
    .await?;
    sqlx::query(&format!("VACUUM ANALYZE \"{schema}\".events"))
        .execute(store.pool())
        .await?;
    let insert: Arc<str> = format!(
        "INSERT INTO {table} (subscriber, event_id, entity_id, version) VALUES ($1, $2, $3, $4)"
    )
    .into();

    let (mut fw, mut plain) = (Throughput::default(), Throughput::default());
    let rounds = if mode.quick { 1 } else { 2 };
    for round in 0..rounds {
        for transactional in [round % 2 == 0, round % 2 != 0] {
            let writer = ViewWriter {
                id: format!(
                    "txview-{}-{round}",
                    if transactional { "tx" } else { "plain" }
                ),
                transactional,
                insert: insert.clone(),
                pool: store.pool().clone(),
                written: Arc::default(),
            };
            let t0 = Instant::now();
            let runtime = Eventuate::new(store.clone())
                .subscriber(writer.clone())
                .start()?;
            let deadline = t0 + Duration::from_secs(300);
            while writer.written.load(Ordering::Acquire) < events && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let elapsed = t0.elapsed();
            runtime.shutdown().await?;
            let rows: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {table} WHERE subscriber = $1"
            ))
            .bind(&writer.id)
            .fetch_one(store.pool())
            .await?;
            if rows as u64 != events {
                return Err(format!(
                    "transactional view: {rows} of {events} rows written by {}",
                    writer.id
                )
                .into());
            }
            let side = if transactional { &mut fw } else { &mut plain };
            side.add(events, elapsed, Vec::new());
        }
    }
    store.close().await;
    let note = mode.quick.then(|| {
        format!(
            "transactional subscriber: quick mode uses {events} stored events (full mode: 20,000), 1 round"
        )
    });
    let row = Row::new(
        format!("8b. transactional subscriber catch-up, {events} events, one view row per event"),
        "events/s",
        fw.rate(),
        plain.rate(),
    )
    .notes(
        "pg_transaction: rows + checkpoint, one commit per run of up to 64 events",
        "plain subscriber, autocommit insert",
    )
    .target(Target::RatioAtLeast(0.5))
    .details(json!({
        "events": events,
        "rounds": rounds,
        "framework_per_run": fw.runs,
        "reference_per_run": plain.runs,
    }));
    Ok((vec![row], note))
}
