//! NATS JetStream (feature `nats`).
//!
//! Each event is published to its subject with the [`crate::headers`] and `Nats-Msg-Id` = the
//! event id, so the stream's duplicate window (2 minutes by default) drops a re-publication.
//! A stream must capture the relay's subjects (create it before, or as part of the
//! deployment): until one does, publishes get *no responders* and are retried.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use eventuate_core::{BatchOutcome, HandlerError};

use crate::{Broker, Message, Relay, RelayOptions, outcome, waves};

/// The JetStream header that deduplicates messages: the event id.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// Publishes to NATS JetStream.
///
/// A run is sent in waves (see [`crate::waves`]): the first event of each entity in the run,
/// all at once, then every acknowledgement awaited; then the second event of each entity,
/// and so on. If a connection breaks under pipelined messages, JetStream may store a later
/// message and lose an earlier one; sending an entity's next event only once the one before
/// it is acknowledged keeps every entity's events in order in the stream. A run of many
/// entities costs one round trip, a run of one entity one per event.
#[derive(Clone, Debug)]
pub struct NatsBroker {
    jetstream: jetstream::Context,
}

impl NatsBroker {
    /// Publishes through this JetStream context (its timeout is how long an acknowledgement
    /// is awaited before the event is retried).
    pub fn new(jetstream: jetstream::Context) -> Self {
        NatsBroker { jetstream }
    }

    async fn send(&self, message: &Message) -> Result<PublishAckFuture, HandlerError> {
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, message.event_id.to_string().as_str());
        for (name, value) in &message.headers {
            headers.insert(*name, value.as_str());
        }
        self.jetstream
            .publish_with_headers(
                message.topic.clone(),
                headers,
                bytes::Bytes::copy_from_slice(&message.value),
            )
            .await
            .map_err(|e| classify(message, e))
    }
}

impl Relay<NatsBroker> {
    /// A relay to NATS JetStream over this client (acknowledgements awaited 5 s).
    pub fn nats(client: async_nats::Client, options: RelayOptions) -> Self {
        Relay::nats_jetstream(jetstream::new(client), options)
    }

    /// A relay to NATS JetStream through this context (its domain, prefix and timeout).
    pub fn nats_jetstream(jetstream: jetstream::Context, options: RelayOptions) -> Self {
        Relay::new(NatsBroker::new(jetstream), options)
    }
}

/// A JetStream context over `client` whose acknowledgements are awaited `timeout`.
pub fn jetstream_with_timeout(client: async_nats::Client, timeout: Duration) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client)
}

impl Broker for NatsBroker {
    async fn publish(&self, messages: &[Message]) -> BatchOutcome {
        let mut results: Vec<Option<Result<(), HandlerError>>> =
            messages.iter().map(|_| None).collect();
        for wave in waves(messages) {
            let mut pending = Vec::with_capacity(wave.len());
            for i in wave {
                match self.send(&messages[i]).await {
                    Ok(ack) => pending.push((i, ack)),
                    Err(e) => {
                        results[i] = Some(Err(e));
                        break;
                    }
                }
            }
            let mut failed = results.iter().any(|r| matches!(r, Some(Err(_))));
            for (i, ack) in pending {
                results[i] = Some(match ack.await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        failed = true;
                        Err(classify(&messages[i], e))
                    }
                });
            }
            if failed {
                break;
            }
        }
        outcome(results)
    }
}

/// A refusal for good (the message is too large for the server or the stream) is permanent;
/// everything else (no connection, no acknowledgement in time, no stream yet) is transient.
fn classify(message: &Message, error: jetstream::context::PublishError) -> HandlerError {
    let too_large = match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => std::error::Error::source(&error)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|e| {
                matches!(
                    e.error_code(),
                    ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                        | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
                )
            }),
        _ => false,
    };
    // The source's text, unless the error's own already holds it (async-nats's publish
    // errors do: it was printed twice).
    let shown = error.to_string();
    let source = std::error::Error::source(&error)
        .map(|s| s.to_string())
        .filter(|s| !shown.contains(s.as_str()))
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    let text = format!(
        "NATS JetStream did not take event {} on `{}` ({} bytes): {shown}{source}",
        message.event_id,
        message.topic,
        message.value.len(),
    );
    if too_large {
        HandlerError::permanent(text)
    } else {
        // The broker is down or slow: not the event's fault, so not an attempt.
        HandlerError::unavailable(text)
    }
}
