//! `POST /entities/{entityType}`, `POST /entities/{entityType}/{entityId}`,
//! `GET /entities/{entityType}/{entityId}` and `GET /stream`.
//!
//! ## Idempotency
//!
//! A write may carry an idempotency key: the `Idempotency-Key` header (1 to 200 visible ASCII
//! characters), or Eventuate's `triggeringEventToken` body field (the token of the event whose
//! handler sends the request). The key is recorded by the store in the append's transaction,
//! with the store's own mechanism ([`IdempotencyKey`] under [`EXTERNAL_COMMANDS`], as
//! [`eventuate_core::CommandOptions::with_command_id`] records a command id), so a request
//! sent again after a timeout or a lost answer appends nothing and answers what the first one
//! answered: the same status, the same body, and the header `Idempotent-Replayed: true`.
//! The first outcome is found again from the stored events, which carry the key's command id
//! in their metadata; if they cannot be found (events written under the same key by other
//! means), the answer is the entity's current version with an empty `eventIds`.
//!
//! - An `Idempotency-Key` names one request: the same key with another entity or other
//!   events is `422 idempotency_key_reused`. A create without `entityId` derives the id from
//!   the key, so that the retry finds the entity the first attempt created.
//! - A `triggeringEventToken` names the event that caused the request, and one event may
//!   cause writes to several entities: the key is the token *and* the entity.

use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use eventuate_core::store::{
    AppendOutcome, AppendRequest, ExpectedVersion, StreamItem, duplicate_or_mismatch,
};
use eventuate_core::{
    EXTERNAL_COMMANDS, EventEnvelope, EventMetadata, IdempotencyKey, NewEvent, Position,
    StreamFilter,
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::input::{JsonObject, PathParams, Query, kind, opt_string};

/// The idempotency key header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header set on an answer replayed for a repeated idempotency key.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// The request id header, recorded on the events as the `request-id` header.
pub const REQUEST_ID: &str = "x-request-id";

/// Namespaces of the UUID v5 ids derived from idempotency keys.
pub(crate) const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x7e3a_61c2_5b0d_4f41_8d7e_0c6f_5e72_0001);
const TOKEN_NAMESPACE: Uuid = Uuid::from_u128(0x7e3a_61c2_5b0d_4f41_8d7e_0c6f_5e72_0002);
pub(crate) const ENTITY_NAMESPACE: Uuid =
    Uuid::from_u128(0x7e3a_61c2_5b0d_4f41_8d7e_0c6f_5e72_0003);
const BODY_NAMESPACE: Uuid = Uuid::from_u128(0x7e3a_61c2_5b0d_4f41_8d7e_0c6f_5e72_0004);

/// Most events an append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 1000;
/// Default and largest page of `GET /entities/{type}/{id}`.
const ENTITY_PAGE: (u64, u64) = (1000, 10_000);
/// Default and largest page of `GET /stream`.
const STREAM_PAGE: (u64, u64) = (100, 1000);

/// Where an idempotency key came from.
#[derive(Debug, Clone)]
enum KeySource {
    Header(String),
    Token(String),
}

/// The `Idempotency-Key` header, checked.
pub(crate) fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(value) => match value.to_str() {
            Ok(text) if !text.trim().is_empty() && text.len() <= 200 => {
                Ok(Some(text.trim().to_owned()))
            }
            _ => Err(ApiError::invalid(
                "Idempotency-Key",
                "the `Idempotency-Key` header must be 1 to 200 visible ASCII characters",
            )),
        },
    }
}

fn idempotency_source(
    headers: &HeaderMap,
    body: &Map<String, Value>,
) -> Result<Option<KeySource>, ApiError> {
    let header = idempotency_header(headers)?;
    let token = opt_string(body, "triggeringEventToken")?;
    if let Some(token) = &token
        && (token.is_empty() || token.len() > 200 || token.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "triggeringEventToken",
            "`triggeringEventToken` must be 1 to 200 characters without control characters",
        ));
    }
    match (header, token) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "triggeringEventToken",
            "send either an `Idempotency-Key` header or a `triggeringEventToken`, not both",
        )),
        (Some(h), None) => Ok(Some(KeySource::Header(h))),
        (None, Some(t)) => Ok(Some(KeySource::Token(t))),
        (None, None) => Ok(None),
    }
}

/// The events of a write request, checked field by field.
fn parse_events(body: &Map<String, Value>) -> Result<Vec<NewEvent>, ApiError> {
    let list = match body.get("events") {
        Some(Value::Array(list)) => list,
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("events", "`events` is missing"));
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "events",
                format!("`events` must be an array, not {}", kind(other)),
            ));
        }
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "`events` is empty; a write needs at least one event",
        ));
    }
    if list.len() > MAX_EVENTS_PER_APPEND {
        return Err(ApiError::too_large(format!(
            "`events` has {} events; at most {MAX_EVENTS_PER_APPEND} per request",
            list.len()
        )));
    }
    let mut events = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let Value::Object(event) = item else {
            return Err(ApiError::invalid(
                format!("events[{i}]"),
                format!("`events[{i}]` must be an object, not {}", kind(item)),
            ));
        };
        let field = |name: &str| format!("events[{i}].{name}");
        let event_type = match event.get("eventType") {
            Some(Value::String(t)) => t.clone(),
            None | Some(Value::Null) => {
                return Err(ApiError::invalid(
                    field("eventType"),
                    format!("`{}` is missing", field("eventType")),
                ));
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    field("eventType"),
                    format!(
                        "`{}` must be a string, not {}",
                        field("eventType"),
                        kind(other)
                    ),
                ));
            }
        };
        eventuate_core::name::validate_event_type(&event_type)
            .map_err(|e| ApiError::invalid(field("eventType"), e.to_string()))?;
        let payload = match event.get("eventData") {
            None => {
                return Err(ApiError::invalid(
                    field("eventData"),
                    format!("`{}` is missing", field("eventData")),
                ));
            }
            Some(data) => data.to_string(),
        };
        let event_id = match event.get("eventId") {
            None | Some(Value::Null) => Uuid::new_v4(),
            Some(Value::String(s)) => {
                let id = Uuid::parse_str(s).map_err(|e| {
                    ApiError::invalid(
                        field("eventId"),
                        format!("`{}` is not a UUID: {e}", field("eventId")),
                    )
                })?;
                if events.iter().any(|e: &NewEvent| e.event_id == id) {
                    return Err(ApiError::invalid(
                        field("eventId"),
                        format!("`{}` repeats an earlier event's id", field("eventId")),
                    ));
                }
                id
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    field("eventId"),
                    format!(
                        "`{}` must be a UUID string, not {}",
                        field("eventId"),
                        kind(other)
                    ),
                ));
            }
        };
        events.push(NewEvent {
            event_id,
            event_type,
            payload,
            metadata: EventMetadata::default(),
        });
    }
    Ok(events)
}

/// For an entity type registered with [`crate::Server::aggregate`]: every event must be one
/// of the aggregate's, its `eventData` must match the event's schema ([`crate::schemas`]) and
/// decode into the event; the event is recorded with its current schema version.
fn check_registered(
    state: &AppState,
    entity_type: &str,
    body: &Map<String, Value>,
    events: &mut [NewEvent],
) -> Result<(), ApiError> {
    let Some(endpoint) = state.aggregates.find(entity_type) else {
        return Ok(());
    };
    let list = body.get("events").and_then(Value::as_array);
    for (i, event) in events.iter_mut().enumerate() {
        let data = list
            .and_then(|l| l.get(i))
            .and_then(|e| e.get("eventData"))
            .unwrap_or(&Value::Null);
        let version =
            endpoint.check_event(&format!("events[{i}].eventData"), &event.event_type, data)?;
        // Version 1 is what an event without a recorded version reads as.
        event.metadata.schema_version = Some(version).filter(|v| *v != 1);
    }
    Ok(())
}

pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned)
}

/// The body of a write's answer.
fn write_answer(entity_id: &str, version: u64, event_ids: &[Uuid]) -> Value {
    json!({
        "entityId": entity_id,
        "entityVersion": version,
        "eventIds": event_ids.iter().map(Uuid::to_string).collect::<Vec<_>>(),
    })
}

/// One write: the append, under the request's idempotency key if it has one, and the answer.
struct Write {
    entity_type: String,
    entity_id: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    key: Option<KeySource>,
    route: &'static str,
    request_id: String,
    /// What the request asked for, hashed into the key's fingerprint: the same key with
    /// other events is another request.
    fingerprint_input: String,
}

impl Write {
    async fn run(mut self, state: &AppState, status: StatusCode) -> Result<Response, ApiError> {
        eventuate_core::name::validate_entity_id(&self.entity_id)?;
        let command_id = match &self.key {
            None => Uuid::new_v4(),
            Some(KeySource::Header(key)) => Uuid::new_v5(&KEY_NAMESPACE, key.as_bytes()),
            Some(KeySource::Token(token)) => Uuid::new_v5(
                &TOKEN_NAMESPACE,
                format!("{token}\n{}\n{}", self.entity_type, self.entity_id).as_bytes(),
            ),
        };
        let idempotency = self.key.as_ref().map(|_| IdempotencyKey {
            subscriber_id: EXTERNAL_COMMANDS.to_owned(),
            triggering_event_id: command_id,
            sequence: 0,
            command_type: format!(
                "{}:{}",
                self.route,
                Uuid::new_v5(&BODY_NAMESPACE, self.fingerprint_input.as_bytes())
            ),
        });
        for event in &mut self.events {
            event.metadata.command_id = Some(command_id);
            event.metadata.command_type = Some(self.route.to_owned());
            event.metadata.correlation_id = Some(command_id);
            event
                .metadata
                .headers
                .insert("request-id".into(), self.request_id.clone());
            if let Some(KeySource::Header(key)) = &self.key {
                event
                    .metadata
                    .headers
                    .insert("idempotency-key".into(), key.clone());
            }
        }
        let event_ids: Vec<Uuid> = self.events.iter().map(|e| e.event_id).collect();
        let request = AppendRequest {
            entity_type: self.entity_type.clone(),
            entity_id: self.entity_id.clone(),
            expected: self.expected,
            events: self.events,
            idempotency,
        };
        let outcome = match state.store.append(request.clone()).await {
            // A retry that names its events' ids may meet them before the key: the key
            // decides whether this is the same request sent again.
            Err(e @ eventuate_core::Error::DuplicateEventId { .. }) => {
                match request.idempotency.as_ref() {
                    Some(key) => match state.store.recorded_command(key).await? {
                        Some(recorded) => duplicate_or_mismatch(&request, recorded)?,
                        None => return Err(e.into()),
                    },
                    None => return Err(e.into()),
                }
            }
            other => other?,
        };
        let (body, replayed) = match outcome {
            AppendOutcome::Appended { version, .. } => {
                (write_answer(&self.entity_id, version, &event_ids), false)
            }
            AppendOutcome::Duplicate => {
                // The first attempt's events carry the key's command id.
                let stored = state
                    .store
                    .load(&self.entity_type, &self.entity_id, 0)
                    .await?;
                let first: Vec<&EventEnvelope> = stored
                    .iter()
                    .filter(|e| e.metadata.command_id == Some(command_id))
                    .collect();
                let body = match first.last() {
                    Some(last) => write_answer(
                        &self.entity_id,
                        last.entity_version,
                        &first.iter().map(|e| e.event_id).collect::<Vec<_>>(),
                    ),
                    None => write_answer(
                        &self.entity_id,
                        stored.last().map_or(0, |e| e.entity_version),
                        &[],
                    ),
                };
                (body, true)
            }
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(&format!(
            "/entities/{}/{}",
            self.entity_type,
            encode_segment(&self.entity_id)
        )) {
            headers.insert(header::LOCATION, location);
        }
        if replayed {
            headers.insert(
                HeaderName::from_static(IDEMPOTENT_REPLAYED),
                HeaderValue::from_static("true"),
            );
        }
        Ok(response)
    }
}

/// Percent-encodes a path segment (entity ids are free text).
pub(crate) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `POST /entities/{entityType}`: creates an entity with its first events.
pub(crate) async fn create(
    State(state): State<AppState>,
    PathParams(entity_type): PathParams<String>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    eventuate_core::name::validate_entity_type(&entity_type)?;
    let mut events = parse_events(&body)?;
    check_registered(&state, &entity_type, &body, &mut events)?;
    let key = idempotency_source(&headers, &body)?;
    let entity_id = match (opt_string(&body, "entityId")?, &key) {
        (Some(id), _) => id,
        (None, None) => Uuid::new_v4().to_string(),
        (None, Some(KeySource::Header(k))) => Uuid::new_v5(
            &ENTITY_NAMESPACE,
            format!("{entity_type}\nkey\n{k}").as_bytes(),
        )
        .to_string(),
        (None, Some(KeySource::Token(t))) => Uuid::new_v5(
            &ENTITY_NAMESPACE,
            format!("{entity_type}\ntoken\n{t}").as_bytes(),
        )
        .to_string(),
    };
    let fingerprint_input = json!({ "events": body.get("events") }).to_string();
    Write {
        entity_type,
        entity_id,
        expected: ExpectedVersion::New,
        events,
        key,
        route: "rest.create",
        request_id: request_id(&headers),
        fingerprint_input,
    }
    .run(&state, StatusCode::CREATED)
    .await
}

/// `POST /entities/{entityType}/{entityId}`: appends with optimistic locking.
pub(crate) async fn append(
    State(state): State<AppState>,
    PathParams((entity_type, entity_id)): PathParams<(String, String)>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    eventuate_core::name::validate_entity_type(&entity_type)?;
    eventuate_core::name::validate_entity_id(&entity_id)?;
    // `entityVersion` is the Eventuate API's name for it (an opaque string there).
    let (field, raw) = match (body.get("expectedVersion"), body.get("entityVersion")) {
        (Some(v), _) => ("expectedVersion", v),
        (None, Some(v)) => ("entityVersion", v),
        (None, None) => {
            return Err(ApiError::invalid(
                "expectedVersion",
                "`expectedVersion` is missing: the entity version the events build on",
            ));
        }
    };
    let version = match raw {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    let expected = match version {
        Some(v) if v >= 1 && i64::try_from(v).is_ok() => v,
        _ => {
            return Err(ApiError::invalid(
                field,
                format!(
                    "`{field}` must be a positive integer (the entity's current version), not {raw}"
                ),
            ));
        }
    };
    let mut events = parse_events(&body)?;
    check_registered(&state, &entity_type, &body, &mut events)?;
    let key = idempotency_source(&headers, &body)?;
    let fingerprint_input =
        json!({ "expectedVersion": expected, "events": body.get("events") }).to_string();
    Write {
        entity_type,
        entity_id,
        expected: ExpectedVersion::Exactly(expected),
        events,
        key,
        route: "rest.append",
        request_id: request_id(&headers),
        fingerprint_input,
    }
    .run(&state, StatusCode::OK)
    .await
}

/// Milliseconds since the Unix epoch.
pub(crate) fn millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A stored event as JSON ([`EventEnvelope::wire_json`]: the same document the relay sends).
pub(crate) fn event_json(event: &EventEnvelope) -> Value {
    event.wire_json()
}

/// `GET /entities/{entityType}/{entityId}?fromVersion=&limit=&snapshotVersion=`.
///
/// `EventStore::load` has no limit: a page is cut from everything after `fromVersion - 1`, so
/// paging bounds the answer, not the read. The snapshot is the latest written with
/// `snapshotVersion` (default 1, an aggregate's default `SNAPSHOT_VERSION`).
pub(crate) async fn get_entity(
    State(state): State<AppState>,
    PathParams((entity_type, entity_id)): PathParams<(String, String)>,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    query.only(&["fromVersion", "limit", "snapshotVersion"])?;
    eventuate_core::name::validate_entity_type(&entity_type)?;
    eventuate_core::name::validate_entity_id(&entity_id)?;
    let from = query.number("fromVersion", 1, 1, i64::MAX as u64)?;
    let limit = query.number("limit", ENTITY_PAGE.0, 1, ENTITY_PAGE.1)?;
    let snapshot_version = query.number("snapshotVersion", 1, 0, u64::from(u32::MAX))?;
    let mut events = state.store.load(&entity_type, &entity_id, from - 1).await?;
    let version = match events.last() {
        Some(last) => last.entity_version,
        // Past the end, or no such entity: which one?
        None if from > 1 => state
            .store
            .load(&entity_type, &entity_id, 0)
            .await?
            .last()
            .map_or(0, |e| e.entity_version),
        None => 0,
    };
    if version == 0 {
        return Err(ApiError::not_found(format!(
            "{entity_type} `{entity_id}` does not exist"
        )));
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next = (events.len() > limit).then(|| events[limit].entity_version);
    events.truncate(limit);
    let snapshot = state
        .store
        .load_snapshot(
            &entity_type,
            &entity_id,
            u32::try_from(snapshot_version).unwrap_or(u32::MAX),
        )
        .await?
        .map(|s| {
            json!({
                "entityVersion": s.entity_version,
                "snapshotVersion": s.snapshot_version,
                "state": serde_json::from_str::<Value>(&s.payload)
                    .unwrap_or(Value::String(s.payload)),
            })
        });
    Ok(Json(json!({
        "entityType": entity_type,
        "entityId": entity_id,
        "entityVersion": version,
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "nextFromVersion": next,
        "snapshot": snapshot,
    })))
}

/// Parses a stream position `transaction/sequence`.
pub(crate) fn parse_position(field: &str, text: &str) -> Result<Position, ApiError> {
    let parsed = text
        .split_once('/')
        .and_then(|(t, s)| Some(Position::new(t.parse().ok()?, s.parse().ok()?)));
    parsed.ok_or_else(|| {
        ApiError::invalid(
            field,
            format!(
                "`{field}` must be a stream position `transaction/sequence` (e.g. `0/0`, or the \
                 `next` of the previous page), not `{text}`"
            ),
        )
    })
}

/// `GET /stream?after=<tx>/<seq>&types=A,B&limit=`: the global stream, for polling clients.
pub(crate) async fn stream(
    State(state): State<AppState>,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    query.only(&["after", "types", "limit"])?;
    let after = match query.get("after") {
        None | Some("") => Position::START,
        Some(text) => parse_position("after", text)?,
    };
    let limit = query.number("limit", STREAM_PAGE.0, 1, STREAM_PAGE.1)?;
    let mut types = Vec::new();
    for name in query
        .get("types")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        eventuate_core::name::validate_entity_type(name)
            .map_err(|e| ApiError::invalid("types", e.to_string()))?;
        types.push(name.to_owned());
    }
    let filter = StreamFilter::entity_types(types);
    let batch = state
        .store
        .read_batch(after, &filter, usize::try_from(limit).unwrap_or(usize::MAX))
        .await?;
    let events: Vec<Value> = batch
        .items
        .iter()
        .map(|item| match item {
            StreamItem::Event(event) => event_json(event),
            StreamItem::Undecodable { event, error } => {
                let mut value = event_json(event);
                value["undecodable"] = json!(error);
                value
            }
        })
        .collect();
    let next = batch
        .items
        .last()
        .map_or(after, |i| i.event().position)
        .max(batch.scanned_to)
        .max(after);
    Ok(Json(json!({ "events": events, "next": next.to_string() })))
}
