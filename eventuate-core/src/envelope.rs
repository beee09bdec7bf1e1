//! What the store keeps: the event envelope (identity, entity coordinates, type name, JSON
//! payload, metadata) and the global stream position.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A point in the store's global stream, in reading order.
///
/// Positions order first by `transaction`, then by `sequence`. `sequence` alone is unique per
/// event; `transaction` groups the events of one append and is what makes the order safe to
/// follow while writers commit concurrently (see `eventuate-postgres`'s `ordering` module).
/// A reader that remembers the last position it handled and reads "everything after it" never
/// skips an event.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// The committing transaction's order key.
    pub transaction: u64,
    /// The event's unique sequence number.
    pub sequence: u64,
}

impl Position {
    /// Before the first event: reading after it reads the whole stream.
    pub const START: Position = Position {
        transaction: 0,
        sequence: 0,
    };

    /// A position from its two parts.
    pub const fn new(transaction: u64, sequence: u64) -> Self {
        Position {
            transaction,
            sequence,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.transaction, self.sequence)
    }
}

/// What an event records about why it exists.
///
/// The chain of causes of any event can be followed back to its external root: an event's
/// `command_id` names the command that produced it; that command's `causation_id` (copied into
/// the event) names the event whose handler sent it, or is `None` when the command came from
/// outside (an HTTP request, a CLI); `correlation_id` is shared by the whole chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// When the event was produced.
    pub timestamp: SystemTime,
    /// Id of the command that produced the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    /// Type name of the command that produced the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_type: Option<String>,
    /// Id of the event whose handler sent the command; `None` for an external command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Id shared by every event of one causal chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// User headers (request ids, user ids, tenant, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The schema version of the payload (`#[event(version = N)]`); `None` for events stored
    /// before versions were recorded, which read as version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
}

impl Default for EventMetadata {
    fn default() -> Self {
        EventMetadata {
            timestamp: SystemTime::now(),
            command_id: None,
            command_type: None,
            causation_id: None,
            correlation_id: None,
            headers: BTreeMap::new(),
            schema_version: None,
        }
    }
}

/// An event about to be appended: everything but what the store assigns (version, position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique id of the event.
    pub event_id: Uuid,
    /// Type name, e.g. `OrderCreated`: what subscribers match on.
    pub event_type: String,
    /// The payload as JSON text.
    pub payload: String,
    /// Metadata.
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// A new event with a fresh id and default metadata.
    pub fn new(event_type: impl Into<String>, payload: impl Into<String>) -> Self {
        NewEvent {
            event_id: Uuid::new_v4(),
            event_type: event_type.into(),
            payload: payload.into(),
            metadata: EventMetadata::default(),
        }
    }
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventEnvelope {
    /// Unique id of the event.
    pub event_id: Uuid,
    /// Entity type, e.g. `Order`.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: String,
    /// The entity's version after this event (its first event has version 1).
    pub entity_version: u64,
    /// Type name, e.g. `OrderCreated`.
    pub event_type: String,
    /// The payload as JSON text.
    pub payload: String,
    /// Metadata.
    pub metadata: EventMetadata,
    /// Position in the global stream.
    pub position: Position,
}

impl EventEnvelope {
    /// The event as services in other languages receive it (the server's REST and STOMP
    /// answers, the relay's messages): `id`, `entityType`, `entityId`, `entityVersion`,
    /// `eventType`, `eventData` (the payload as JSON), `position` (`tx/seq`) and `metadata`
    /// (`timestamp` in milliseconds since the Unix epoch, and when set `commandId`,
    /// `commandType`, `causationId`, `correlationId`, `schemaVersion`, `headers`).
    pub fn wire_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let data = serde_json::from_str::<Value>(&self.payload)
            .unwrap_or_else(|_| Value::String(self.payload.clone()));
        let mut metadata = Map::new();
        let millis = self
            .metadata
            .timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        metadata.insert("timestamp".into(), json!(millis));
        let ids = [
            ("commandId", self.metadata.command_id),
            ("causationId", self.metadata.causation_id),
            ("correlationId", self.metadata.correlation_id),
        ];
        for (name, id) in ids {
            if let Some(id) = id {
                metadata.insert(name.into(), json!(id.to_string()));
            }
        }
        if let Some(t) = &self.metadata.command_type {
            metadata.insert("commandType".into(), json!(t));
        }
        if let Some(v) = self.metadata.schema_version {
            metadata.insert("schemaVersion".into(), json!(v));
        }
        if !self.metadata.headers.is_empty() {
            metadata.insert("headers".into(), json!(self.metadata.headers));
        }
        json!({
            "id": self.event_id.to_string(),
            "entityType": self.entity_type,
            "entityId": self.entity_id,
            "entityVersion": self.entity_version,
            "eventType": self.event_type,
            "eventData": data,
            "position": self.position.to_string(),
            "metadata": metadata,
        })
    }

    /// Decodes the payload into `T`, with an error naming entity, version and type on failure.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        serde_json::from_str(&self.payload).map_err(|source| crate::Error::Decode {
            entity_type: self.entity_type.clone(),
            entity_id: self.entity_id.clone(),
            version: self.entity_version,
            event_type: self.event_type.clone(),
            source,
        })
    }
}
