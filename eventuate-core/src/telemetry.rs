//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade: without an installed
//! recorder each call is a few atomic loads and records nothing. `eventuate-server` installs a
//! Prometheus recorder and serves it at `GET /metrics`; an application without the server
//! installs any recorder once at start, before the runtime (what is recorded before a
//! recorder is installed is lost, and a consumer registers its delivery counter and latency
//! histogram once, when it takes its partition: one started before the recorder records its
//! deliveries nowhere), e.g. with `metrics-exporter-prometheus`:
//!
//! ```text
//! let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
//! // ... serve `handle.render()` where your scraper reads it; call
//! // `handle.run_upkeep()` every few seconds, and `Running::status()` before rendering
//! // to refresh the lag gauge.
//! ```
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `eventuate_commands_total` | counter | `entity_type`, `outcome` | repository commands by outcome: `applied` (first try), `conflict_retried` (applied after concurrency conflicts), `rejected` (the aggregate refused it), `conflict` (the caller's expected version or a create of an existing entity, or conflict retries exhausted), `failed` (anything else: store, input, decode) |
//! | `eventuate_command_conflict_retries_total` | counter | `entity_type` | concurrency conflicts that made the repository load and process a command again |
//! | `eventuate_command_duration_seconds` | histogram | `entity_type` | a command's time in the repository, load to append, retries included |
//! | `eventuate_deliveries_total` | counter | `subscriber` | events a handler handled successfully (replays included) |
//! | `eventuate_delivery_retries_total` | counter | `subscriber` | retries: failed handler attempts that are made again, and pauses because what a handler needs is unavailable (a last failed attempt, which parks the event, is not one); `status()`'s `retried` counts the same |
//! | `eventuate_parked_total` | counter | `subscriber` | events parked (including those parked behind an earlier parked event of their entity) |
//! | `eventuate_delivery_latency_seconds` | histogram | `subscriber` | from the event's metadata timestamp (set when the command produced it) to its handler's success |
//! | `eventuate_subscriber_lag` | gauge | `subscriber`, `partition` | events behind the head (capped at [`crate::runtime::LAG_COUNT_LIMIT`]), set by [`crate::runtime::Running::status`] |
//! | `eventuate_lease_acquisitions_total` | counter | `subscriber` | partitions this node took |
//! | `eventuate_lease_takeovers_total` | counter | `subscriber` | of those, partitions whose previous holder did not release them cleanly (crashed, hung or lost its lease) |
//! | `eventuate_lease_losses_total` | counter | `subscriber` | leases another member took from this node (found at renewal) |
//!
//! Labels are bounded by the code (entity types, subscriber ids, partition indexes): no entity
//! ids, no positions.

use std::future::Future;
use std::time::{Instant, SystemTime};

use tracing::Instrument;

use crate::envelope::EventEnvelope;
use crate::{Error, Result};

/// Runs a repository command in a `command` span and records its outcome and duration.
pub(crate) async fn command<T>(
    entity_type: &'static str,
    entity_id: &str,
    command_type: &'static str,
    attempts: impl Fn(&T) -> u32,
    run: impl Future<Output = Result<T>>,
) -> Result<T> {
    let span = tracing::info_span!("command", entity_type, entity_id, command = command_type);
    let started = Instant::now();
    let result = run.instrument(span).await;
    let outcome = match &result {
        Ok(done) => {
            let retries = attempts(done).saturating_sub(1);
            if retries > 0 {
                metrics::counter!("eventuate_command_conflict_retries_total", "entity_type" => entity_type)
                    .increment(u64::from(retries));
                "conflict_retried"
            } else {
                "applied"
            }
        }
        Err(Error::Rejected { .. }) => "rejected",
        Err(Error::Conflict { .. } | Error::EntityExists { .. }) => "conflict",
        Err(Error::RetriesExhausted { attempts, .. }) => {
            metrics::counter!("eventuate_command_conflict_retries_total", "entity_type" => entity_type)
                .increment(u64::from(attempts.saturating_sub(1)));
            "conflict"
        }
        Err(_) => "failed",
    };
    metrics::counter!("eventuate_commands_total", "entity_type" => entity_type, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("eventuate_command_duration_seconds", "entity_type" => entity_type)
        .record(started.elapsed().as_secs_f64());
    result
}

/// A subscriber's delivery counter and latency histogram, registered once (by each consumer,
/// when it starts) rather than looked up by name and label for every event.
pub(crate) struct Deliveries {
    count: metrics::Counter,
    latency: metrics::Histogram,
}

impl Deliveries {
    pub(crate) fn of(subscriber: &str) -> Self {
        Deliveries {
            count: metrics::counter!("eventuate_deliveries_total", "subscriber" => subscriber.to_owned()),
            latency: metrics::histogram!("eventuate_delivery_latency_seconds", "subscriber" => subscriber.to_owned()),
        }
    }

    /// An event handled successfully: counted, and its commit-to-handler latency recorded.
    pub(crate) fn delivered(&self, event: &EventEnvelope) {
        self.count.increment(1);
        if let Ok(latency) = SystemTime::now().duration_since(event.metadata.timestamp) {
            self.latency.record(latency.as_secs_f64());
        }
    }
}

/// A failed handler attempt that is retried.
pub(crate) fn retried(subscriber: &str) {
    metrics::counter!("eventuate_delivery_retries_total", "subscriber" => subscriber.to_owned())
        .increment(1);
}

/// An event parked.
pub(crate) fn parked(subscriber: &str) {
    metrics::counter!("eventuate_parked_total", "subscriber" => subscriber.to_owned()).increment(1);
}

/// A partition's lag, as [`crate::runtime::Running::status`] counted it.
pub(crate) fn lag(subscriber: &str, partition: u32, lag: u64) {
    metrics::gauge!("eventuate_subscriber_lag", "subscriber" => subscriber.to_owned(), "partition" => partition.to_string())
        .set(lag as f64);
}

/// A lease taken; `takeover` when its previous holder did not release it cleanly.
pub(crate) fn lease_acquired(subscriber: &str, takeover: bool) {
    metrics::counter!("eventuate_lease_acquisitions_total", "subscriber" => subscriber.to_owned())
        .increment(1);
    if takeover {
        metrics::counter!("eventuate_lease_takeovers_total", "subscriber" => subscriber.to_owned())
            .increment(1);
    }
}

/// A lease another member took.
pub(crate) fn lease_lost(subscriber: &str) {
    metrics::counter!("eventuate_lease_losses_total", "subscriber" => subscriber.to_owned())
        .increment(1);
}
