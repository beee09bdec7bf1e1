//! Kafka (feature `kafka`, `rdkafka` with the bundled librdkafka).
//!
//! Each event is produced to its topic with the entity id as key and the
//! [`crate::headers`]. [`producer_config`] gives an idempotent producer (`acks=all`, no
//! duplicates or reordering from its own retries) with the `murmur2_random` partitioner, which
//! puts a key on the same partition as the Java client does, so consumers in any language see
//! each entity's events on one partition, in order.

/// The `rdkafka` this relay is built with: configure producers for [`Relay::kafka`] (and
/// consumers reading what it produced) with the same version.
pub use rdkafka;

use eventuate_core::{BatchOutcome, HandlerError};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::{Broker, Message, Relay, RelayOptions, outcome, waves};

/// The producer settings a relay relies on: `bootstrap.servers`, `enable.idempotence=true`,
/// `partitioner=murmur2_random`, and a 30 s `message.timeout.ms` (after which an
/// unacknowledged event is retried by the runtime). Add your own (security, ...) before
/// `create()`.
pub fn producer_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "30000");
    config
}

/// Produces to Kafka.
///
/// Like [`crate::nats::NatsBroker`], a run is sent in waves (see [`crate::waves`]): an
/// entity's next event only once the one before it was acknowledged, so that a failed
/// delivery followed by a successful one cannot reorder an entity's events across the
/// relay's own re-publication.
pub struct KafkaBroker {
    producer: FutureProducer,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker").finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// Produces with this producer (build it from [`producer_config`]).
    pub fn new(producer: FutureProducer) -> Self {
        KafkaBroker { producer }
    }

    fn send(&self, message: &Message) -> Result<DeliveryFuture, HandlerError> {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_str()),
            });
        }
        let record = FutureRecord::to(&message.topic)
            .key(message.key.as_str())
            .payload(message.value.as_slice())
            .headers(headers);
        self.producer
            .send_result(record)
            .map_err(|(e, _)| classify(message, &e))
    }
}

impl Relay<KafkaBroker> {
    /// A relay to Kafka through this producer (build it from [`producer_config`]).
    pub fn kafka(producer: FutureProducer, options: RelayOptions) -> Self {
        Relay::new(KafkaBroker::new(producer), options)
    }

    /// A relay to the Kafka cluster at `bootstrap_servers`, with [`producer_config`].
    pub fn kafka_at(bootstrap_servers: &str, options: RelayOptions) -> KafkaResult<Self> {
        Ok(Relay::kafka(
            producer_config(bootstrap_servers).create()?,
            options,
        ))
    }
}

impl Broker for KafkaBroker {
    async fn publish(&self, messages: &[Message]) -> BatchOutcome {
        let mut results: Vec<Option<Result<(), HandlerError>>> =
            messages.iter().map(|_| None).collect();
        for wave in waves(messages) {
            let mut pending = Vec::with_capacity(wave.len());
            let mut failed = false;
            for i in wave {
                match self.send(&messages[i]) {
                    Ok(delivery) => pending.push((i, delivery)),
                    Err(e) => {
                        results[i] = Some(Err(e));
                        failed = true;
                        break;
                    }
                }
            }
            for (i, delivery) in pending {
                results[i] = Some(match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => {
                        failed = true;
                        Err(classify(&messages[i], &e))
                    }
                    Err(_canceled) => {
                        failed = true;
                        Err(HandlerError::msg(format!(
                            "the Kafka producer was dropped before it delivered event {}",
                            messages[i].event_id
                        )))
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

/// A message too large for the producer or the broker is refused for good (permanent);
/// everything else (brokers down, timeouts, unknown topic) is transient.
fn classify(message: &Message, error: &KafkaError) -> HandlerError {
    let too_large = matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    );
    let text = format!(
        "Kafka did not take event {} on `{}` ({} bytes): {error}",
        message.event_id,
        message.topic,
        message.value.len()
    );
    if too_large {
        HandlerError::permanent(text)
    } else {
        // The brokers are down or slow: not the event's fault, so not an attempt.
        HandlerError::unavailable(text)
    }
}
