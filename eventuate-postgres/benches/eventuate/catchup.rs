//! Workload 5: catch-up. A subscriber with a no-op handler starts from the beginning of a
//! store that already holds the events; timed from `start()` until its handler has seen the
//! last one (lease acquisition, stream reads, payload decoding, durable checkpoint after every
//! batch included, checkpoint saved per poll interval). Reference: a hand-written
//! keyset-paginated SELECT of the same rows, in stream order, delivering what a subscriber gets
//! (the nine envelope columns, metadata and payload decoded), with the runtime's page size
//! policy (256 events, four times more after each full page, up to 4,096). Second and third
//! rows: the same reader in fixed batches of 256, and the earlier reference, a 3-column read
//! (position and payload) in batches of 256, so that the choice of floor is visible.

use std::time::{Duration, Instant};

use eventuate_core::runtime::RuntimeOptions;
use eventuate_core::{
    AppendRequest, EventEnvelope, EventMetadata, EventStore, Eventuate, ExpectedVersion, NewEvent,
    Position,
};
use eventuate_postgres::PostgresEventStore;
use serde_json::json;

use crate::account::{DepositCounter, Deposited, command_metadata, deposited_json};
use crate::diag::{self, Diagnosis};
use crate::env::Env;
use crate::report::{Row, Target};
use crate::stats::Throughput;
use crate::{BoxResult, Mode};

const EVENTS_PER_ENTITY: u64 = 1_000;

pub async fn run(
    env: &Env,
    mode: Mode,
    diag: Option<&Diagnosis>,
) -> BoxResult<(Vec<Row>, Option<String>)> {
    let events: u64 = if mode.quick { 50_000 } else { 200_000 };
    let store = env.store("catchup", mode.pool_size).await?;
    let metadata = command_metadata().value;
    // Fill: 1,000-event appends, one entity each, several in flight.
    let entities = events / EVENTS_PER_ENTITY;
    let mut fill = Vec::new();
    for lane in 0..4u64 {
        let (store, metadata) = (store.clone(), metadata.clone());
        fill.push(tokio::spawn(async move {
            for e in (lane..entities).step_by(4) {
                let batch = (0..EVENTS_PER_ENTITY)
                    .map(|_| NewEvent {
                        event_id: uuid::Uuid::new_v4(),
                        event_type: "Deposited".into(),
                        payload: deposited_json(1),
                        metadata: metadata.clone(),
                    })
                    .collect();
                store
                    .append(AppendRequest {
                        entity_type: "Account".into(),
                        entity_id: format!("catchup-{e}"),
                        expected: ExpectedVersion::New,
                        events: batch,
                        idempotency: None,
                    })
                    .await?;
            }
            Ok::<_, eventuate_core::Error>(())
        }));
    }
    for task in fill {
        task.await??;
    }
    sqlx::query(&format!("VACUUM ANALYZE \"{}\".events", store.schema()))
        .execute(store.pool())
        .await?;

    let options = RuntimeOptions::default();
    let (batch_size, max_batch_size) = (options.batch_size, options.max_batch_size);
    let schema = store.schema().to_owned();
    // Untimed passes: every side then reads from a warm cache, with its statements prepared
    // on the pool's connections (the store's batch reads alone, on a fresh pool, took 130-155
    // ms for these events in each of three passes and 90 ms from the fourth on, as fast as
    // the envelope reader).
    for reader in Reader::ALL {
        reader
            .read(store.pool(), &schema, batch_size, max_batch_size, events)
            .await?;
    }
    framework_catch_up(&store, "catchup-warm-up", events).await?;
    let (mut fw, mut growing, mut envelope, mut narrow, mut batches) = (
        Throughput::default(),
        Throughput::default(),
        Throughput::default(),
        Throughput::default(),
        Throughput::default(),
    );
    let rounds = if mode.quick { 1 } else { 3 };
    // Per framework run: from `start()` to the first delivery (lease claim, first read).
    let mut starts: Vec<Duration> = Vec::new();
    for round in 0..rounds {
        // Rotate which side goes first.
        for turn in 0..5 {
            match (round + turn) % 5 {
                0 => {
                    let token = diag::begin(diag).await?;
                    let (elapsed, first) =
                        framework_catch_up(&store, &format!("catchup-{round}"), events).await?;
                    diag::end(diag, token, "5. catch-up events, framework", events).await?;
                    starts.push(first);
                    fw.add(events, elapsed, Vec::new());
                }
                4 => {
                    let token = diag::begin(diag).await?;
                    let t0 = Instant::now();
                    let n = store_batches(&store, batch_size, max_batch_size, events).await?;
                    batches.add(n, t0.elapsed(), Vec::new());
                    diag::end(
                        diag,
                        token,
                        "5. catch-up events, the store's batch reads alone",
                        n,
                    )
                    .await?;
                }
                n => {
                    let (reader, sink) = match n {
                        1 => (Reader::EnvelopeGrowing, &mut growing),
                        2 => (Reader::Envelope, &mut envelope),
                        _ => (Reader::Narrow, &mut narrow),
                    };
                    let token = diag::begin(diag).await?;
                    let t0 = Instant::now();
                    let n = reader
                        .read(store.pool(), &schema, batch_size, max_batch_size, events)
                        .await?;
                    sink.add(n, t0.elapsed(), Vec::new());
                    diag::end(diag, token, reader.diag_label(), n).await?;
                }
            }
        }
    }
    store.close().await;
    let note = mode.quick.then(|| {
        format!("catch-up: quick mode uses {events} stored events (full mode: 200,000), 1 round")
    });
    let first_ms = starts
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .fold(f64::NAN, f64::min);
    let framework_note = format!(
        "batches {batch_size} growing to {max_batch_size}, next batch read during delivery, \
         checkpoint per poll interval; first delivery {first_ms:.0} ms after start()"
    );
    let details = json!({
        "events": events,
        "batch_size": batch_size,
        "max_batch_size": max_batch_size,
        "rounds": rounds,
        "framework_per_run": fw.runs,
        "framework_first_delivery_ms": starts.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
        "envelope_growing_reference_per_run": growing.runs,
        "envelope_reference_per_run": envelope.runs,
        "narrow_reference_per_run": narrow.runs,
        "store_batches_per_run": batches.runs,
    });
    let rows = vec![
        Row::new(
            format!("5. catch-up from the beginning, {events} events, no-op handler"),
            "events/s",
            fw.rate(),
            growing.rate(),
        )
        .notes(
            framework_note.clone(),
            format!(
                "hand-written reader: SELECT batches of {batch_size} growing to \
                 {max_batch_size} (the runtime's policy) of the nine envelope columns, \
                 metadata and payload decoded"
            ),
        )
        .target(Target::RatioAtLeast(0.8))
        .details(details.clone()),
        Row::new(
            format!("5. catch-up, {events} events, against the reader in fixed batches"),
            "events/s",
            fw.rate(),
            envelope.rate(),
        )
        .notes(
            framework_note.clone(),
            format!(
                "the same reader in fixed batches of {batch_size} (the floor before batches \
                 grew)"
            ),
        )
        .details(details.clone()),
        Row::new(
            format!("5. catch-up, {events} events, against the 3-column read (earlier reference)"),
            "events/s",
            fw.rate(),
            narrow.rate(),
        )
        .notes(
            framework_note,
            format!("SELECT batches of {batch_size} of position and payload only, payload decoded"),
        )
        .details(details.clone()),
        Row::new(
            format!("5. catch-up, {events} events: the store's batch reads alone (diagnostic)"),
            "events/s",
            fw.rate(),
            batches.rate(),
        )
        .notes(
            framework_note_short(batch_size, max_batch_size),
            "`EventStore::read_batch` in a loop with the runtime's page policy, no delivery: \
             what the consumer's reads (and the payload decoding) cost without the rest"
                .to_owned(),
        )
        .details(details),
    ];
    Ok((rows, note))
}

fn framework_note_short(batch_size: usize, max_batch_size: usize) -> String {
    format!("the runtime, batches {batch_size} growing to {max_batch_size}")
}

/// The store's batch reads of every `Account` event from the start, pages growing as the
/// runtime's do, each payload decoded, nothing delivered: the read side of a catch-up alone. Fails unless it
/// read `expected` events.
async fn store_batches(
    store: &PostgresEventStore,
    batch_size: usize,
    max_batch_size: usize,
    expected: u64,
) -> BoxResult<u64> {
    let filter = eventuate_core::StreamFilter {
        entity_types: vec!["Account".into()],
        partition: None,
    };
    let (mut after, mut count, mut limit) = (Position::START, 0u64, batch_size);
    loop {
        let batch = store.read_batch(after, &filter, limit).await?;
        let read = batch.items.len();
        for item in &batch.items {
            let event: Deposited = item.event().decode()?;
            count += event.amount;
        }
        after = batch.scanned_to;
        if read < limit {
            break;
        }
        limit = (limit * 4).min(max_batch_size);
    }
    if count != expected {
        return Err(format!("store batches read {count} events, expected {expected}").into());
    }
    Ok(count)
}

/// One catch-up by a new subscriber with a no-op handler: the time from `start()` until it
/// has seen all `events`, and until its first delivery.
async fn framework_catch_up(
    store: &PostgresEventStore,
    id: &str,
    events: u64,
) -> BoxResult<(Duration, Duration)> {
    let counter = DepositCounter::default();
    let t0 = Instant::now();
    let runtime = Eventuate::new(store.clone())
        .subscriber_with(counter.clone(), |mut s| {
            s.id = id.to_owned();
            s
        })
        .start()?;
    let deadline = t0 + Duration::from_secs(600);
    let mut first = None;
    while counter.get() < events && Instant::now() < deadline {
        if first.is_none() && counter.get() > 0 {
            first = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = t0.elapsed();
    runtime.shutdown().await?;
    if counter.get() != events {
        return Err(format!("catch-up: {} of {events} events delivered", counter.get()).into());
    }
    Ok((elapsed, first.unwrap_or(elapsed)))
}

/// The hand-written floors of a catch-up: keyset-paginated SELECTs of the same rows, in
/// stream order, without the horizon (which a reader that must not skip events under
/// concurrent writers would need, so the floor is if anything too fast).
#[derive(Debug, Clone, Copy)]
enum Reader {
    /// What a subscriber receives: the nine columns of an envelope, metadata JSON decoded into
    /// `EventMetadata`, the payload decoded, with the runtime's page size policy (the batch
    /// size, four times more after each full page, up to the maximum). The fair floor.
    EnvelopeGrowing,
    /// [`Reader::EnvelopeGrowing`] in fixed batches of the batch size.
    Envelope,
    /// Position and payload only (the reference of the runs before 2026-12-06).
    Narrow,
}

impl Reader {
    const ALL: [Reader; 3] = [Reader::EnvelopeGrowing, Reader::Envelope, Reader::Narrow];

    fn diag_label(self) -> &'static str {
        match self {
            Reader::EnvelopeGrowing => "5. catch-up events, raw envelope reader, growing pages",
            Reader::Envelope => "5. catch-up events, raw envelope reader",
            Reader::Narrow => "5. catch-up events, raw 3-column reader",
        }
    }

    fn sql(self, schema: &str) -> String {
        let columns = match self {
            Reader::EnvelopeGrowing | Reader::Envelope => {
                "transaction_id, sequence, event_id, entity_type, entity_id, entity_version, \
                 event_type, payload::text, metadata::text"
            }
            Reader::Narrow => "transaction_id, sequence, payload::text",
        };
        format!(
            "SELECT {columns} FROM \"{schema}\".events \
             WHERE (transaction_id, sequence) > ($1, $2) AND entity_type = 'Account' \
             ORDER BY transaction_id, sequence LIMIT $3"
        )
    }

    /// Reads every event; fails unless it read `expected` events, each a deposit of 1.
    async fn read(
        self,
        pool: &sqlx::PgPool,
        schema: &str,
        batch_size: usize,
        max_batch_size: usize,
        expected: u64,
    ) -> BoxResult<u64> {
        let sql = self.sql(schema);
        let (mut after, mut count, mut balance) = ((0i64, 0i64), 0u64, 0u64);
        let mut limit = batch_size;
        loop {
            let read = match self {
                Reader::EnvelopeGrowing | Reader::Envelope => {
                    let rows: Vec<EnvelopeRow> = sqlx::query_as(&sql)
                        .bind(after.0)
                        .bind(after.1)
                        .bind(limit as i64)
                        .fetch_all(pool)
                        .await?;
                    if matches!(self, Reader::EnvelopeGrowing) {
                        limit = if rows.len() < limit {
                            batch_size
                        } else {
                            (limit * 4).min(max_batch_size)
                        };
                    }
                    let mut last = None;
                    for row in rows {
                        let envelope = envelope_of(row)?;
                        let event: Deposited = envelope.decode()?;
                        balance += event.amount;
                        count += 1;
                        last = Some(envelope.position);
                    }
                    last.map(|p| (p.transaction as i64, p.sequence as i64))
                }
                Reader::Narrow => {
                    let rows: Vec<(i64, i64, String)> = sqlx::query_as(&sql)
                        .bind(after.0)
                        .bind(after.1)
                        .bind(batch_size as i64)
                        .fetch_all(pool)
                        .await?;
                    for (_, _, payload) in &rows {
                        let event: Deposited = serde_json::from_str(payload)?;
                        balance += event.amount;
                        count += 1;
                    }
                    rows.last().map(|last| (last.0, last.1))
                }
            };
            let Some(last) = read else { break };
            after = last;
        }
        if count != expected || balance != expected {
            return Err(format!("raw catch-up read {count} events, expected {expected}").into());
        }
        Ok(count)
    }
}

type EnvelopeRow = (
    i64,
    i64,
    uuid::Uuid,
    String,
    String,
    i64,
    String,
    String,
    String,
);

/// The envelope a subscriber would get from a row of [`Reader::Envelope`].
fn envelope_of(row: EnvelopeRow) -> BoxResult<EventEnvelope> {
    let (
        transaction,
        sequence,
        event_id,
        entity_type,
        entity_id,
        version,
        event_type,
        payload,
        metadata,
    ) = row;
    Ok(EventEnvelope {
        event_id,
        entity_type,
        entity_id,
        entity_version: version as u64,
        event_type,
        payload,
        metadata: serde_json::from_str::<EventMetadata>(&metadata)?,
        position: Position::new(transaction as u64, sequence as u64),
    })
}
