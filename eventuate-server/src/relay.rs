//! The binary's `--relay`: registers an `eventuate-relay` subscriber that publishes the
//! stream to NATS JetStream (`nats://host:port`) or Kafka (`kafka://host:port[,host:port]`,
//! when built with the `kafka` feature).

use eventuate_core::{BoxError, Eventuate};
use eventuate_relay::{Relay, RelayOptions, Topics};

/// The relay's options as given on the command line or in the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayArgs {
    /// `--relay` / `EVENTUATE_RELAY`.
    pub url: Option<String>,
    /// `--relay-types` / `EVENTUATE_RELAY_TYPES`, comma-separated.
    pub types: Option<String>,
    /// `--relay-prefix` / `EVENTUATE_RELAY_PREFIX`.
    pub prefix: Option<String>,
    /// `--relay-topic` / `EVENTUATE_RELAY_TOPIC`.
    pub topic: Option<String>,
    /// `--relay-id` / `EVENTUATE_RELAY_ID`.
    pub id: Option<String>,
}

/// Where the relay publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A NATS server URL, as given (`nats://host:port`).
    Nats(String),
    /// Kafka bootstrap servers (`host:port,host:port`).
    Kafka(String),
}

/// A checked relay configuration.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub target: Target,
    pub options: RelayOptions,
}

impl RelayArgs {
    /// Values from the environment, which the command line then overrides.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        RelayArgs {
            url: var("EVENTUATE_RELAY"),
            types: var("EVENTUATE_RELAY_TYPES"),
            prefix: var("EVENTUATE_RELAY_PREFIX"),
            topic: var("EVENTUATE_RELAY_TOPIC"),
            id: var("EVENTUATE_RELAY_ID"),
        }
    }

    /// The relay to run: none without `--relay`; an error for options that do not fit.
    pub fn check(self) -> Result<Option<RelayConfig>, String> {
        let Some(url) = self.url else {
            let given = [
                ("--relay-types", &self.types),
                ("--relay-prefix", &self.prefix),
                ("--relay-topic", &self.topic),
                ("--relay-id", &self.id),
            ];
            return match given.iter().find(|(_, v)| v.is_some()) {
                Some((name, _)) => Err(format!("{name} needs --relay URL")),
                None => Ok(None),
            };
        };
        let target = if url.starts_with("nats://") {
            Target::Nats(url)
        } else if let Some(servers) = url.strip_prefix("kafka://") {
            if servers.is_empty() {
                return Err("--relay kafka:// needs host:port".into());
            }
            Target::Kafka(servers.to_owned())
        } else {
            return Err(format!(
                "--relay `{url}`: expected nats://host:port or kafka://host:port[,host:port]"
            ));
        };
        let types: Vec<String> = self
            .types
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if types.is_empty() {
            return Err(
                "--relay needs --relay-types with the entity types to relay (e.g. Order,Customer)"
                    .into(),
            );
        }
        let topics = match (self.prefix, self.topic) {
            (Some(_), Some(_)) => {
                return Err("--relay-prefix and --relay-topic exclude each other".into());
            }
            (_, Some(topic)) => Topics::Single(topic),
            (prefix, None) => Topics::per_entity_type(prefix.unwrap_or_else(|| "events.".into())),
        };
        let id = self.id.unwrap_or_else(|| "relay".into());
        Ok(Some(RelayConfig {
            target,
            options: RelayOptions::new(id, types, topics),
        }))
    }
}

impl RelayConfig {
    /// Says what is relayed where.
    pub fn describe(&self) -> String {
        let layout = match &self.options.topics {
            Topics::PerEntityType { prefix } => format!("`{prefix}<entity type>`"),
            Topics::Single(name) => format!("`{name}`"),
            Topics::Custom(_) => "a custom layout".into(),
        };
        let (broker, at) = match &self.target {
            Target::Nats(url) => ("NATS JetStream", url.as_str()),
            Target::Kafka(servers) => ("Kafka", servers.as_str()),
        };
        format!(
            "relay: {} to {broker} at {at} on {layout}, as subscriber `{}`",
            self.options.entity_types.join(", "),
            self.options.id
        )
    }

    /// Registers the relay with the runtime. NATS connects in the background (an unreachable
    /// server is an outage the relay waits out, not a start-up failure).
    pub async fn register(self, eventuate: Eventuate) -> Result<Eventuate, BoxError> {
        match self.target {
            Target::Nats(url) => {
                let client = async_nats::ConnectOptions::new()
                    .retry_on_initial_connect()
                    .connect(url)
                    .await?;
                Ok(eventuate.subscriber(Relay::nats(client, self.options)))
            }
            #[cfg(feature = "kafka")]
            Target::Kafka(servers) => {
                Ok(eventuate.subscriber(Relay::kafka_at(&servers, self.options)?))
            }
            #[cfg(not(feature = "kafka"))]
            Target::Kafka(_) => Err("--relay kafka://: this eventuate-server was built without \
                 Kafka; build it with `--features kafka`"
                .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(url: &str, types: &str) -> RelayArgs {
        RelayArgs {
            url: Some(url.into()),
            types: Some(types.into()),
            ..RelayArgs::default()
        }
    }

    #[test]
    fn nats_with_types_publishes_per_entity_type_under_events_by_default() {
        let config = args("nats://127.0.0.1:4222", "Order, Customer")
            .check()
            .unwrap()
            .unwrap();
        assert_eq!(config.target, Target::Nats("nats://127.0.0.1:4222".into()));
        assert_eq!(config.options.entity_types, ["Order", "Customer"]);
        assert_eq!(config.options.id, "relay");
        assert!(
            matches!(&config.options.topics, Topics::PerEntityType { prefix } if prefix == "events.")
        );
    }

    #[test]
    fn kafka_takes_a_bootstrap_list_and_one_topic() {
        let mut a = args("kafka://k1:9092,k2:9092", "Order");
        a.topic = Some("all-events".into());
        a.id = Some("to-kafka".into());
        let config = a.check().unwrap().unwrap();
        assert_eq!(config.target, Target::Kafka("k1:9092,k2:9092".into()));
        assert!(matches!(&config.options.topics, Topics::Single(t) if t == "all-events"));
        assert_eq!(config.options.id, "to-kafka");
    }

    #[test]
    fn wrong_combinations_are_refused_with_what_to_do() {
        assert!(RelayArgs::default().check().unwrap().is_none());
        let no_types = args("nats://h:4222", " ,").check().unwrap_err();
        assert!(no_types.contains("--relay-types"), "{no_types}");
        let scheme = args("http://h", "Order").check().unwrap_err();
        assert!(scheme.contains("nats://"), "{scheme}");
        let mut both = args("nats://h:4222", "Order");
        both.prefix = Some("e.".into());
        both.topic = Some("t".into());
        assert!(both.check().unwrap_err().contains("exclude"));
        let orphan = RelayArgs {
            types: Some("Order".into()),
            ..RelayArgs::default()
        };
        assert!(orphan.check().unwrap_err().contains("needs --relay"));
    }
}
