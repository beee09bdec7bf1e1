//! Relays the event stream to a message broker (issue #12): NATS JetStream (feature `nats`,
//! default, module `nats`) or Kafka (feature `kafka`, module `kafka`).
//!
//! A [`Relay`] is a durable subscriber: registered with the runtime like any other, so leases,
//! partitions, retries, parking and status are the runtime's. Its checkpoint moves only after
//! the broker acknowledged: [`Subscriber::handle_batch`] publishes a run of events (pipelined)
//! and reports how many, from the first, were acknowledged.
//!
//! ```no_run
//! # #[cfg(feature = "nats")]
//! # async fn demo(store: eventuate_postgres::PostgresEventStore) -> Result<(), Box<dyn std::error::Error>> {
//! use eventuate_core::Eventuate;
//! use eventuate_relay::{Relay, RelayOptions, Topics};
//!
//! let client = async_nats::connect("127.0.0.1:4222").await?;
//! let running = Eventuate::new(store)
//!     .subscriber(Relay::nats(client, RelayOptions::new("orders-to-nats", ["Order", "Customer"], Topics::per_entity_type("events."))))
//!     .start()?;
//! # Ok(()) }
//! ```
//!
//! # What a consumer receives
//!
//! One message per event. Its subject (NATS) or topic (Kafka) comes from [`Topics`]; its
//! value is the event as JSON, the same document the event store server returns:
//!
//! ```json
//! {
//!   "id": "0b9c…",                     // event id (UUID)
//!   "entityType": "Order",
//!   "entityId": "order-1",
//!   "entityVersion": 3,                // the entity's version after this event (first is 1)
//!   "eventType": "OrderShipped",
//!   "eventData": { … },                // the payload (a string if it is not JSON)
//!   "position": "812/4",               // global position: transaction/sequence
//!   "metadata": {
//!     "timestamp": 1767225600000,      // milliseconds since the Unix epoch
//!     "commandId": "…", "commandType": "Ship",          // when a command produced it
//!     "causationId": "…", "correlationId": "…",         // cause tracing, when set
//!     "headers": { "user": "…" }                        // user headers, when any
//!   }
//! }
//! ```
//!
//! and its headers are the [`headers`] constants: event id, event type, entity type and id,
//! version, position, and the causation and correlation ids when the event has them. On NATS,
//! `Nats-Msg-Id` is the event id too, so JetStream's duplicate window drops a re-publication.
//!
//! # Guarantees
//!
//! - **At least once.** An event is checkpointed only once the broker acknowledged it; a
//!   relay that stops between the two publishes the event again. Deduplicate on the event id
//!   (JetStream does it for you within the stream's duplicate window, 2 minutes by default).
//! - **Per-entity order.** Events of one entity reach the broker in their version order, also
//!   across failures (see [`nats::NatsBroker`] for how).
//! - **Broker outages** are [`HandlerError::unavailable`]: retried with backoff, the
//!   checkpoint waiting, and not counted as attempts, so an outage, however long, never parks
//!   an event. A message the broker refuses for good (too large) is a
//!   *permanent* error: its event is parked at once with the broker's error, and later events
//!   of its entity wait behind it (the runtime's parking and replay).

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::fmt;
use std::future::Future;
use std::time::Duration;

use eventuate_core::{
    BatchOutcome, EventContext, EventEnvelope, HandlerError, RetryPolicy, Subscriber, Subscription,
};
use serde_json::Value;
use uuid::Uuid;

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;

/// The header names every message carries (both brokers).
pub mod headers {
    /// The event id (UUID): deduplicate on it.
    pub const EVENT_ID: &str = "Eventuate-Event-Id";
    /// The event type, e.g. `OrderShipped`.
    pub const EVENT_TYPE: &str = "Eventuate-Event-Type";
    /// The entity type, e.g. `Order`.
    pub const ENTITY_TYPE: &str = "Eventuate-Entity-Type";
    /// The entity id (also the Kafka key).
    pub const ENTITY_ID: &str = "Eventuate-Entity-Id";
    /// The entity's version after the event, in decimal.
    pub const ENTITY_VERSION: &str = "Eventuate-Entity-Version";
    /// The event's global position, `transaction/sequence`.
    pub const POSITION: &str = "Eventuate-Position";
    /// The id of the event whose handler caused this one (absent for external commands).
    pub const CAUSATION_ID: &str = "Eventuate-Causation-Id";
    /// The id shared by every event of one causal chain (absent when not set).
    pub const CORRELATION_ID: &str = "Eventuate-Correlation-Id";
}

/// Where events go: the NATS subject or Kafka topic of each event.
#[derive(Clone)]
pub enum Topics {
    /// One per entity type, `{prefix}{entity type}` (Eventuate's layout: `events.Order`).
    PerEntityType {
        /// Put before the entity type (may be empty).
        prefix: String,
    },
    /// One for every event (Evento's layout: `kf-evento-events`).
    Single(String),
    /// Chosen by a function of the event.
    Custom(fn(&EventEnvelope) -> String),
}

impl Topics {
    /// [`Topics::PerEntityType`] with this prefix.
    pub fn per_entity_type(prefix: impl Into<String>) -> Self {
        Topics::PerEntityType {
            prefix: prefix.into(),
        }
    }

    /// The subject or topic of `event`.
    pub fn of(&self, event: &EventEnvelope) -> String {
        match self {
            Topics::PerEntityType { prefix } => format!("{prefix}{}", event.entity_type),
            Topics::Single(name) => name.clone(),
            Topics::Custom(f) => f(event),
        }
    }
}

impl fmt::Debug for Topics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topics::PerEntityType { prefix } => f
                .debug_struct("PerEntityType")
                .field("prefix", prefix)
                .finish(),
            Topics::Single(name) => f.debug_tuple("Single").field(name).finish(),
            Topics::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// What a relay reads and where it publishes.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// The subscriber id: the relay's checkpoint, leases and parked events are stored under it.
    pub id: String,
    /// The entity types whose events are relayed.
    pub entity_types: Vec<String>,
    /// Subject or topic of each event.
    pub topics: Topics,
    /// The most events published before waiting for their acknowledgements (the subscription's
    /// [`Subscription::batch`]). 64 by default.
    pub batch: usize,
    /// Retries of unacknowledged events. By default 5 attempts, backoff from 100 ms doubling
    /// to 5 s; a broker outage is not an attempt, so it never parks (see the crate
    /// documentation).
    pub retry: RetryPolicy,
}

impl RelayOptions {
    /// Options with the default window and retry policy.
    pub fn new<I, S>(id: impl Into<String>, entity_types: I, topics: Topics) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RelayOptions {
            id: id.into(),
            entity_types: entity_types.into_iter().map(Into::into).collect(),
            topics,
            ..RelayOptions::default()
        }
    }
}

impl Default for RelayOptions {
    /// No id and no entity types (set them: the runtime refuses an empty subscription),
    /// one subject per entity type without prefix, a window of 64, 5 attempts (broker outages
    /// are not attempts).
    fn default() -> Self {
        RelayOptions {
            id: String::new(),
            entity_types: Vec::new(),
            topics: Topics::per_entity_type(""),
            batch: 64,
            retry: RetryPolicy {
                max_attempts: 5,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
            },
        }
    }
}

/// One event as a broker message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The event id.
    pub event_id: Uuid,
    /// NATS subject or Kafka topic.
    pub topic: String,
    /// The entity type (with `key`, what per-entity order is kept by).
    pub entity_type: String,
    /// The entity id: the Kafka key.
    pub key: String,
    /// The [`headers`], in that order; the ids of cause tracing only when set.
    pub headers: Vec<(&'static str, String)>,
    /// The event as JSON (see the crate documentation).
    pub value: Vec<u8>,
}

impl Message {
    /// The message for `event`.
    pub fn from_event(event: &EventEnvelope, topics: &Topics) -> Self {
        let mut message_headers = vec![
            (headers::EVENT_ID, event.event_id.to_string()),
            (headers::EVENT_TYPE, event.event_type.clone()),
            (headers::ENTITY_TYPE, event.entity_type.clone()),
            (headers::ENTITY_ID, event.entity_id.clone()),
            (headers::ENTITY_VERSION, event.entity_version.to_string()),
            (headers::POSITION, event.position.to_string()),
        ];
        if let Some(id) = event.metadata.causation_id {
            message_headers.push((headers::CAUSATION_ID, id.to_string()));
        }
        if let Some(id) = event.metadata.correlation_id {
            message_headers.push((headers::CORRELATION_ID, id.to_string()));
        }
        Message {
            event_id: event.event_id,
            topic: topics.of(event),
            entity_type: event.entity_type.clone(),
            key: event.entity_id.clone(),
            headers: message_headers,
            value: envelope_json(event).to_string().into_bytes(),
        }
    }
}

/// The event as the JSON document a consumer receives: [`EventEnvelope::wire_json`], the
/// same document the event store server's REST and STOMP APIs answer with.
pub fn envelope_json(event: &EventEnvelope) -> Value {
    event.wire_json()
}

/// A broker a relay publishes to.
pub trait Broker: Send + Sync + 'static {
    /// Publishes `messages` (consecutive events of one partition, in stream order) and says
    /// how many, from the first, the broker acknowledged; the error is the next one's
    /// ([`HandlerError::permanent`] if the broker refused it for good). Messages after those
    /// may have been published too: they are published again, so a broker must keep each
    /// entity's messages in order across such re-publications.
    fn publish<'a>(
        &'a self,
        messages: &'a [Message],
    ) -> impl Future<Output = BatchOutcome> + Send + 'a;
}

/// A relay from the event stream to a broker: a [`Subscriber`] to register with
/// [`eventuate_core::Eventuate::subscriber`].
pub struct Relay<B> {
    options: RelayOptions,
    broker: B,
}

impl<B> fmt::Debug for Relay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<B: Broker> Relay<B> {
    /// A relay to any [`Broker`].
    pub fn new(broker: B, options: RelayOptions) -> Self {
        Relay { options, broker }
    }

    /// Its options.
    pub fn options(&self) -> &RelayOptions {
        &self.options
    }
}

impl<B: Broker> Subscriber for Relay<B> {
    fn subscription(&self) -> Subscription {
        Subscription::new(self.options.id.clone(), self.options.entity_types.clone())
            .batch(self.options.batch)
            .retry(self.options.retry)
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        let message = [Message::from_event(ctx.event(), &self.options.topics)];
        let outcome = self.broker.publish(&message).await;
        match (outcome.handled, outcome.error) {
            (1.., _) => Ok(()),
            (0, Some(error)) => Err(error),
            (0, None) => Err(HandlerError::msg(format!(
                "the broker did not acknowledge event {}",
                ctx.event_id()
            ))),
        }
    }

    async fn handle_batch(&self, contexts: &[EventContext]) -> BatchOutcome {
        let messages: Vec<Message> = contexts
            .iter()
            .map(|ctx| Message::from_event(ctx.event(), &self.options.topics))
            .collect();
        let outcome = self.broker.publish(&messages).await;
        BatchOutcome {
            handled: outcome.handled.min(contexts.len()),
            error: outcome.error,
        }
    }
}

/// Splits a run into waves: wave `w` holds the `w`-th message of each entity in the run,
/// in stream order. Sending a wave only once the one before it is acknowledged keeps each
/// entity's messages in order on a broker that may store message `k + 1` after losing `k`
/// (pipelined messages on a connection that breaks), while messages of different entities
/// still share one round trip.
pub fn waves(messages: &[Message]) -> Vec<Vec<usize>> {
    let mut seen: std::collections::HashMap<(&str, &str), usize> = std::collections::HashMap::new();
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let n = seen.entry((&m.entity_type, &m.key)).or_insert(0);
        if waves.len() <= *n {
            waves.push(Vec::new());
        }
        waves[*n].push(i);
        *n += 1;
    }
    waves
}

/// The outcome of a run whose messages were acknowledged (`Ok`) or failed (`Err`), `None`
/// for those not sent: how many from the first were acknowledged, and the error of the next
/// one if it failed (none if it was not sent: the runtime hands it over again).
pub fn outcome(results: Vec<Option<Result<(), HandlerError>>>) -> BatchOutcome {
    let mut handled = 0;
    for result in results {
        match result {
            Some(Ok(())) => handled += 1,
            Some(Err(error)) => {
                return BatchOutcome {
                    handled,
                    error: Some(error),
                };
            }
            None => break,
        }
    }
    BatchOutcome {
        handled,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn message(entity: &str) -> Message {
        Message {
            event_id: Uuid::new_v4(),
            topic: "t".into(),
            entity_type: "Order".into(),
            key: entity.into(),
            headers: Vec::new(),
            value: Vec::new(),
        }
    }

    #[test]
    fn waves_hold_one_message_per_entity_in_stream_order() {
        let run: Vec<Message> = ["a", "b", "a", "c", "a", "b"]
            .into_iter()
            .map(message)
            .collect();
        assert_eq!(waves(&run), vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
    }

    #[test]
    fn the_outcome_counts_acknowledged_messages_from_the_first() {
        let o = outcome(vec![Some(Ok(())), Some(Ok(())), None, Some(Ok(()))]);
        assert_eq!((o.handled, o.error.is_none()), (2, true));
        let o = outcome(vec![
            Some(Ok(())),
            Some(Err(HandlerError::permanent("too large"))),
            Some(Ok(())),
        ]);
        assert_eq!(o.handled, 1);
        assert!(o.error.unwrap().is_permanent());
    }
}
