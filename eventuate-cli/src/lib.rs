//! # eventuate-cli
//!
//! The `eventuate` operator CLI over a PostgreSQL event store: subscriber status, parked
//! events, resets, rebuilds with progress, migrations, following the stream, what holds
//! delivery back, and pruning old idempotency keys. A thin layer: the operations are
//! [`eventuate_postgres::admin`]'s and the [`SubscriptionStore`]'s; this crate parses
//! arguments and prints. [`run`] is the whole program, callable in-process (the tests do).
//!
//! `eventuate schemas export --server URL` needs no database: it fetches the aggregates' JSON
//! Schema documents from a running event store server ([`schemas`]).

#![warn(missing_docs)]

pub mod schemas;

use std::io::Write;
use std::time::Duration;

use clap::{Parser, Subcommand};
use eventuate_core::runtime::SubscriptionStore;
use eventuate_core::store::StreamFilter;
use eventuate_core::{EventStore, Position};
use eventuate_postgres::admin::{
    Horizon, LAG_COUNT_LIMIT, ResetTarget, SubscriberOverview, parse_position,
};
use eventuate_postgres::{PostgresEventStore, sqlx};
use serde_json::{Value, json};

/// How long a command keeps trying a database that refuses connections.
const CONNECT_RETRY_FOR: Duration = Duration::from_secs(3);

/// What a command can fail with: a message for the operator.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The `eventuate` command line.
#[derive(Debug, Parser)]
#[command(
    name = "eventuate",
    version,
    about = "Operate an eventuate-rs PostgreSQL event store"
)]
pub struct Cli {
    /// PostgreSQL connection URL (every command but `schemas`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub url: Option<String>,
    /// Schema holding the store's tables.
    #[arg(long, env = "EVENTUATE_SCHEMA", default_value = "public")]
    pub schema: String,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every stored subscriber: shape and generation, partitions, owners (node), checkpoints,
    /// lag (counted up to 1,000) and parked counts.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List, replay or skip a subscriber's parked events.
    Parked {
        /// What to do.
        #[command(subcommand)]
        action: ParkedAction,
    },
    /// Move every partition checkpoint of a subscriber, fencing off its live consumers: their
    /// writes fail and their leases end, so they take the partitions again from the new
    /// checkpoint. Parked events stay parked.
    Reset {
        /// Subscriber id.
        subscriber: String,
        /// `beginning` (deliver everything again), `now` (skip everything stored) or a
        /// position `<transaction>/<sequence>` (deliver what follows it).
        #[arg(long)]
        to: ResetTarget,
    },
    /// Rebuild what a subscriber wrote: in one transaction, empty its tables (`--truncate`)
    /// and reset it to the beginning (fencing off its live consumers), then follow the
    /// catch-up with its progress (events, events/s, ETA) until every partition has caught
    /// up. A transactional view is rebuilt exactly once. The subscriber's own processes do
    /// the work: this command only starts it and watches.
    Rebuild {
        /// Subscriber id.
        subscriber: String,
        /// Tables to empty first (`table` or `schema.table`), repeatable.
        #[arg(long)]
        truncate: Vec<String>,
        /// Give up following after this long (`<number><unit>`, e.g. `10m`); the rebuild
        /// itself goes on.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// How often to print the progress.
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        every: Duration,
    },
    /// Apply the store's migrations that the schema lacks (history in
    /// `<schema>.eventuate_migrations`), and print the applied versions.
    Migrate,
    /// Follow the stream: one line per event (`position entity_type/entity_id vN event_type
    /// payload`), until Ctrl-C or `--limit`.
    Tail {
        /// Only these entity types (comma-separated).
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        /// Only these event types (comma-separated).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Where to start: `beginning`, `now` or after a position `<transaction>/<sequence>`.
        #[arg(long, default_value = "now")]
        from: ResetTarget,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// What holds delivery back now: the stream horizon and the oldest running transaction of
    /// this database that holds a transaction id (pid, age, state, query).
    Horizon {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete idempotency keys (processed_commands rows) older than a duration.
    ///
    /// A key is what stops a command from being applied twice when the event that sent it is
    /// delivered again: after a crash before a checkpoint, a reset or reshape that moved
    /// checkpoints back, or a replay of a parked event. Pruning is safe only past the longest
    /// such redelivery window: once a key is gone, a redelivery of its event applies the
    /// command again. Keep `--older-than` well beyond how old an event can be when it is
    /// delivered again (old parked events you may still replay, resets to old positions).
    Prune {
        /// `<number><unit>` with unit `s`, `m`, `h`, `d` or `w`, e.g. `90d`.
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,
    },
    /// The JSON Schema documents of the aggregates an event store server has registered.
    Schemas {
        /// What to do.
        #[command(subcommand)]
        action: SchemasAction,
    },
}

/// `eventuate schemas ...`.
#[derive(Debug, Subcommand)]
pub enum SchemasAction {
    /// Fetch the documents from a running event store server (`GET /schemas/{entityType}`)
    /// and print them as one JSON object by entity type, or write one file per aggregate.
    Export {
        /// The server, `http://host:port`.
        #[arg(long, env = "EVENTUATE_SERVER")]
        server: String,
        /// Write `<DIR>/<entityType>.schema.json` files (created if missing) instead of
        /// printing.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Only these aggregates (comma-separated entity types).
        #[arg(long, value_delimiter = ',')]
        entity_type: Vec<String>,
    },
}

/// `eventuate parked ...`.
#[derive(Debug, Subcommand)]
pub enum ParkedAction {
    /// The subscriber's parked events, in stream order.
    List {
        /// Subscriber id.
        subscriber: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the consumers to replay parked events (all of the subscriber's, or one entity's);
    /// the consumer owning each partition replays them in order within a poll interval.
    Replay {
        /// Subscriber id.
        subscriber: String,
        /// Only this entity: `<entity_type>/<entity_id>`.
        #[arg(long)]
        entity: Option<String>,
    },
    /// Delete one parked record so that its event is never offered again and its entity
    /// flows again (events parked behind it stay parked). Fenced: the consumer holding the
    /// partition has its next write refused and re-reads the parked events; a replay of that
    /// very event already running may still complete.
    Skip {
        /// Subscriber id.
        subscriber: String,
        /// The parked event's position, `<transaction>/<sequence>` (see `parked list`).
        #[arg(value_parser = parse_position_arg)]
        position: Position,
    },
}

fn parse_position_arg(s: &str) -> Result<Position, String> {
    parse_position(s).ok_or_else(|| format!("`{s}` is not a position `<transaction>/<sequence>`"))
}

/// Parses `<number><unit>`, unit one of `s`, `m`, `h`, `d`, `w`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit (s, m, h, d or w)"))?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => return Err(format!("unknown unit `{other}` (s, m, h, d or w)")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// Connects to the store (two connections, no migration) and runs the command, printing to
/// `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), Error> {
    if let Command::Schemas {
        action:
            SchemasAction::Export {
                server,
                dir,
                entity_type,
            },
    } = cli.command
    {
        return schemas::export(&server, dir, &entity_type, out).await;
    }
    let url = cli
        .url
        .ok_or("no database: pass --url or set DATABASE_URL (PostgreSQL connection URL)")?;
    let store = PostgresEventStore::builder()
        .schema(&cli.schema)
        .max_connections(2)
        // An operator at a terminal wants an answer: a short restart is waited out, a server
        // that is down is named within seconds (a service's default is 30 s).
        .connect_retry_for(CONNECT_RETRY_FOR)
        .connect(&url)
        .await?;
    let result = match cli.command {
        // `migrate` is what makes a store of an empty schema.
        Command::Migrate => execute(&store, cli.command, out).await,
        command => match check_store(&store).await {
            Ok(lacking) => execute(&store, command, out)
                .await
                .map_err(|e| match lacking {
                    Some(hint) => format!("{e}\nhint: {hint}").into(),
                    None => e,
                }),
            Err(e) => Err(e),
        },
    };
    store.close().await;
    result
}

/// Whether `error` is a write to a closed pipe (`eventuate ... | head`): the reader has all it
/// wanted, so the binary ends quietly, with success, as other Unix tools do.
pub fn is_broken_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let kind = e
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                e.downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            });
        if kind == Some(std::io::ErrorKind::BrokenPipe) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Before every command but `migrate`: refuses a schema that holds no store (never migrated:
/// every command would fail on a missing table) with the command that makes one. Otherwise
/// `Some(hint)` when the schema lacks migrations of this release, added to a command's error
/// (a missing column or function is then the likely cause). A check that cannot run (a role
/// that may not read the history) leaves the command to run and fail on its own.
async fn check_store(store: &PostgresEventStore) -> Result<Option<String>, Error> {
    let schema = store.schema();
    let Ok((applied, latest)) = store.migration_status().await else {
        return Ok(None);
    };
    let migrate = format!("eventuate --schema {schema} migrate");
    if applied.is_empty() {
        // A store migrated by an earlier release keeps its history in `_sqlx_migrations`:
        // its `events` table says it is one.
        let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
        let events: Result<bool, _> = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("{quoted}.events"))
            .fetch_one(store.pool())
            .await;
        if matches!(events, Ok(false)) {
            return Err(format!(
                "schema `{schema}` holds no eventuate store (never migrated?): run `{migrate}` \
                 (with the same --url or DATABASE_URL) to create one, or name the schema that \
                 holds the store with --schema"
            )
            .into());
        }
    }
    let newest = applied.last().copied().unwrap_or(0);
    Ok((newest < latest).then(|| {
        format!(
            "schema `{schema}` lacks migrations of this release (applied: {}; this release \
             knows up to {latest}): `{migrate}` applies them",
            if applied.is_empty() {
                "none recorded in eventuate_migrations".to_owned()
            } else {
                format!("up to {newest}")
            }
        )
    }))
}

/// `reset`'s error for a subscriber id that no table of the schema knows (a typo), for the
/// `parked` commands once they found nothing: an empty answer would hide the typo.
async fn check_known(store: &PostgresEventStore, subscriber: &str) -> Result<(), Error> {
    if store
        .subscriber_ids()
        .await?
        .iter()
        .any(|id| id == subscriber)
    {
        Ok(())
    } else {
        Err(eventuate_postgres::Error::UnknownSubscriber {
            subscriber: subscriber.to_owned(),
        }
        .into())
    }
}

async fn execute(
    store: &PostgresEventStore,
    command: Command,
    out: &mut dyn Write,
) -> Result<(), Error> {
    match command {
        // Handled by `run` without a store.
        Command::Schemas { action } => Err(format!("`schemas {action:?}` needs no store").into()),
        Command::Status { json } => status(store, json, out).await,
        Command::Parked { action } => parked(store, action, out).await,
        Command::Reset { subscriber, to } => {
            let done = store.reset_subscriber(&subscriber, to).await?;
            writeln!(
                out,
                "reset `{subscriber}`: {} partition(s) now at {}; {} live lease(s) ended (their \
                 consumers take the partitions again from there)",
                done.partitions, done.checkpoint, done.leases_ended
            )?;
            Ok(())
        }
        Command::Rebuild {
            subscriber,
            truncate,
            timeout,
            every,
        } => {
            let done = store.rebuild_subscriber(&subscriber, &truncate).await?;
            writeln!(
                out,
                "rebuild `{subscriber}`: {} emptied; {} partition(s) reset to the beginning; {} \
                 live lease(s) ended",
                if truncate.is_empty() {
                    "no table".to_owned()
                } else {
                    truncate.join(", ")
                },
                done.partitions,
                done.leases_ended
            )?;
            follow_rebuild(store, &subscriber, timeout, every, out).await
        }
        Command::Migrate => {
            store.migrate().await?;
            let (applied, latest) = store.migration_status().await?;
            writeln!(
                out,
                "schema `{}` migrated: versions {} applied (this release knows up to {latest})",
                store.schema(),
                applied
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
            Ok(())
        }
        Command::Tail {
            types,
            events,
            from,
            limit,
        } => tail(store, types, events, from, limit, out).await,
        Command::Horizon { json } => horizon(store, json, out).await,
        Command::Prune { older_than } => {
            let pruned = store.prune_processed_commands(older_than).await?;
            writeln!(
                out,
                "pruned {pruned} idempotency key(s) older than {}s",
                older_than.as_secs()
            )?;
            Ok(())
        }
    }
}

fn owner_text(owner: Option<(uuid::Uuid, uuid::Uuid)>, unowned: Option<Duration>) -> String {
    match (owner, unowned) {
        (Some((_, node)), _) => node.to_string(),
        (None, Some(d)) => format!("- (free for {:.0}s)", d.as_secs_f64()),
        (None, None) => "-".into(),
    }
}

fn lag_text(lag: u64) -> String {
    if lag >= LAG_COUNT_LIMIT {
        format!("{LAG_COUNT_LIMIT}+")
    } else {
        lag.to_string()
    }
}

fn overview_json(o: &SubscriberOverview) -> Value {
    json!({
        "subscriber": o.subscriber_id,
        "shape": o.shape.as_ref().map(|s| json!({
            "partitions": s.shape.partitions,
            "entity_types": s.shape.entity_types,
            "event_types": s.shape.event_types,
            "generation": s.generation,
        })),
        "migration_pending": o.migration_pending,
        "parked": o.parked,
        "partitions": o.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "owner_node": p.owner.map(|(_, node)| node.to_string()),
            "owner_incarnation": p.owner.map(|(incarnation, _)| incarnation.to_string()),
            "unowned_for_secs": p.unowned_for.map(|d| d.as_secs_f64()),
            "checkpoint": p.checkpoint.to_string(),
            "lag": p.lag,
            "lag_capped": p.lag >= LAG_COUNT_LIMIT,
            "parked": p.parked,
        })).collect::<Vec<_>>(),
    })
}

async fn status(store: &PostgresEventStore, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    let overviews = store.subscriber_overviews().await?;
    if json {
        let value = Value::Array(overviews.iter().map(overview_json).collect());
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    if overviews.is_empty() {
        writeln!(out, "no subscriber stored in schema `{}`", store.schema())?;
        return Ok(());
    }
    for o in &overviews {
        let shape = match &o.shape {
            Some(s) => format!("generation {}: {}", s.generation, s.shape),
            None => "no stored shape".into(),
        };
        writeln!(out, "{}  ({shape}; {} parked)", o.subscriber_id, o.parked)?;
        if o.migration_pending {
            writeln!(
                out,
                "  reshape pending: waits for the old shape's leases to end"
            )?;
        }
        writeln!(
            out,
            "  {:<9} {:<38} {:<22} {:>6} {:>6}",
            "PARTITION", "OWNER (NODE)", "CHECKPOINT", "LAG", "PARKED"
        )?;
        for p in &o.partitions {
            writeln!(
                out,
                "  {:<9} {:<38} {:<22} {:>6} {:>6}",
                p.partition,
                owner_text(p.owner, p.unowned_for),
                p.checkpoint.to_string(),
                lag_text(p.lag),
                p.parked
            )?;
        }
    }
    Ok(())
}

async fn parked(
    store: &PostgresEventStore,
    action: ParkedAction,
    out: &mut dyn Write,
) -> Result<(), Error> {
    match action {
        ParkedAction::List { subscriber, json } => {
            let parked = store.parked(&subscriber).await?;
            if parked.is_empty() {
                check_known(store, &subscriber).await?;
            }
            if json {
                let value: Vec<Value> = parked
                    .iter()
                    .map(|p| {
                        json!({
                            "position": p.event.position.to_string(),
                            "partition": p.partition,
                            "entity_type": p.event.entity_type,
                            "entity_id": p.event.entity_id,
                            "entity_version": p.event.entity_version,
                            "event_type": p.event.event_type,
                            "event_id": p.event.event_id.to_string(),
                            "attempts": p.attempts,
                            "error": p.error,
                            "replay_requested": p.replay_requested,
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
                return Ok(());
            }
            if parked.is_empty() {
                writeln!(out, "no parked event for `{subscriber}`")?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<22} {:<30} {:<20} {:>8} {:<6} ERROR",
                "POSITION", "ENTITY", "EVENT", "ATTEMPTS", "REPLAY"
            )?;
            for p in &parked {
                writeln!(
                    out,
                    "{:<22} {:<30} {:<20} {:>8} {:<6} {}",
                    p.event.position.to_string(),
                    format!(
                        "{}/{} v{}",
                        p.event.entity_type, p.event.entity_id, p.event.entity_version
                    ),
                    p.event.event_type,
                    p.attempts,
                    if p.replay_requested { "yes" } else { "no" },
                    p.error.lines().next().unwrap_or("")
                )?;
            }
            Ok(())
        }
        ParkedAction::Replay { subscriber, entity } => {
            let entity = match &entity {
                None => None,
                Some(e) => Some(e.split_once('/').ok_or_else(|| {
                    format!("`{e}` is not an entity `<entity_type>/<entity_id>`")
                })?),
            };
            let n = store.request_replay(&subscriber, entity).await?;
            if n == 0 {
                check_known(store, &subscriber).await?;
            }
            writeln!(
                out,
                "replay requested for {n} parked event(s) of `{subscriber}`; the consumer \
                 owning each partition replays them within a poll interval"
            )?;
            Ok(())
        }
        ParkedAction::Skip {
            subscriber,
            position,
        } => {
            if store.skip_parked(&subscriber, position).await? {
                writeln!(
                    out,
                    "skipped the parked event at {position} of `{subscriber}`; its partition's \
                     consumer was fenced off and re-reads the parked events"
                )?;
                Ok(())
            } else {
                check_known(store, &subscriber).await?;
                Err(format!("no parked event of `{subscriber}` at {position}").into())
            }
        }
    }
}

async fn tail(
    store: &PostgresEventStore,
    types: Vec<String>,
    events: Vec<String>,
    from: ResetTarget,
    limit: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let mut cursor = match from {
        ResetTarget::Beginning => Position::START,
        ResetTarget::Now => store.head().await?,
        ResetTarget::Position(p) => p,
    };
    let filter = StreamFilter::entity_types(types);
    let mut wakeups = SubscriptionStore::wakeups(store);
    let mut printed = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if limit.is_some_and(|l| printed >= l) {
            return Ok(());
        }
        wakeups.borrow_and_update();
        let batch = store.read_stream(cursor, &filter, 256).await?;
        for e in &batch {
            cursor = e.position;
            if !events.is_empty() && !events.contains(&e.event_type) {
                continue;
            }
            writeln!(
                out,
                "{} {}/{} v{} {} {}",
                e.position, e.entity_type, e.entity_id, e.entity_version, e.event_type, e.payload
            )?;
            printed += 1;
            if limit.is_some_and(|l| printed >= l) {
                return Ok(());
            }
        }
        out.flush()?;
        if batch.is_empty() {
            tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                _ = wakeups.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

fn horizon_json(h: &Horizon) -> Value {
    json!({
        "horizon": h.horizon,
        "head": h.head.to_string(),
        "oldest_transaction": h.oldest.as_ref().map(|t| json!({
            "pid": t.pid,
            "xid": t.xid,
            "age_secs": t.age.as_secs_f64(),
            "state": t.state,
            "query": t.query,
            "user": t.user,
            "application": t.application,
        })),
    })
}

async fn horizon(store: &PostgresEventStore, json: bool, out: &mut dyn Write) -> Result<(), Error> {
    let h = store.horizon().await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&horizon_json(&h))?)?;
        return Ok(());
    }
    writeln!(
        out,
        "stream horizon: transaction {} (events of transactions from it on are not delivered yet)",
        h.horizon
    )?;
    writeln!(out, "head: {}", h.head)?;
    match &h.oldest {
        None => writeln!(
            out,
            "no transaction with a transaction id is running in this database"
        )?,
        Some(t) => {
            writeln!(
                out,
                "oldest writing transaction: pid {} (xid {}), open for {:.1}s, {}, user {}, \
                 application {}",
                t.pid,
                t.xid,
                t.age.as_secs_f64(),
                t.state.as_deref().unwrap_or("unknown state"),
                t.user.as_deref().unwrap_or("?"),
                t.application.as_deref().unwrap_or("-")
            )?;
            writeln!(
                out,
                "  query: {}",
                t.query.as_deref().unwrap_or("(not visible to this role)")
            )?;
            writeln!(
                out,
                "  (pg_cancel_backend({0}) or pg_terminate_backend({0}) ends it)",
                t.pid
            )?;
        }
    }
    Ok(())
}

/// Prints a rebuild's progress every `every` until the subscriber has caught up.
async fn follow_rebuild(
    store: &PostgresEventStore,
    subscriber: &str,
    timeout: Option<Duration>,
    every: Duration,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let mut last = (std::time::Instant::now(), 0u64);
    loop {
        let progress = store.subscriber_progress(subscriber).await?;
        if progress.caught_up {
            writeln!(
                out,
                "rebuilt `{subscriber}`: {} events in {:.1} s",
                progress.total,
                started.elapsed().as_secs_f64()
            )?;
            return Ok(());
        }
        let elapsed = last.0.elapsed().as_secs_f64().max(0.001);
        let rate = progress.done.saturating_sub(last.1) as f64 / elapsed;
        let eta = if rate > 0.0 {
            format!(
                "{:.0} s",
                progress.total.saturating_sub(progress.done) as f64 / rate
            )
        } else {
            "unknown (is a process running the subscriber?)".to_owned()
        };
        writeln!(
            out,
            "  {}/{} events ({:.1}%), {rate:.0} events/s, ETA {eta}",
            progress.done,
            progress.total,
            progress.done as f64 * 100.0 / (progress.total.max(1) as f64)
        )?;
        last = (std::time::Instant::now(), progress.done);
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return Err(format!(
                "`{subscriber}` has not caught up after {:?}; the rebuild goes on",
                started.elapsed()
            )
            .into());
        }
        tokio::time::sleep(every).await;
    }
}
