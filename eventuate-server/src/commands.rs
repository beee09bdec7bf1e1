//! Commands by type name: `POST /aggregates/{entityType}/commands/{commandType}` and
//! `POST /aggregates/{entityType}/{entityId}/commands/{commandType}`, for the aggregates
//! registered with [`crate::Server::aggregate`] (those with `#[command_handler(dispatch)]`).
//!
//! The body is the command as JSON (an empty body is `null`, what a unit struct such as
//! `struct ApproveOrder;` decodes from; `{}` is taken as `null` for such a command). The command runs through the repository
//! ([`eventuate_core::commands::dispatch`]): load, decide, append, retried on concurrency
//! conflicts. Which repository call it becomes:
//!
//! | request | repository call | the entity must |
//! | --- | --- | --- |
//! | `POST /aggregates/Order/commands/CreateOrder` | `create_with(fresh id)` (the id derives from the `Idempotency-Key` when there is one, so a retry finds it) | be new (it is) |
//! | `POST /aggregates/Order/o-1/commands/CreateOrder` + `If-None-Match: *` | `create_with("o-1")` | not exist: else 409 `entity_exists` |
//! | `POST /aggregates/Order/o-1/commands/ApproveOrder` | `update_with` | exist: else 404 |
//! | the same + `If-Match: 3` (or `"3"`) | `update_expecting_with(3)`, not retried | be at version 3: else 409 `optimistic_lock_error` with `actualVersion` |
//! | the same + `?upsert=true` | `upsert_with` | nothing: a missing entity starts from its initial state |
//!
//! Answers:
//!
//! - 201 (a new entity) or 200 `{"entityType", "entityId", "entityVersion", "commandType",
//!   "commandId", "events": [..]}`, the events as `GET /entities/..` shows them; a command that
//!   decided nothing needs to happen answers 200 with no events. `Location` is the entity.
//! - 422 `rejected`: the handler's business error; `reason` is its `Display`, `rejection` its
//!   JSON when its type implements `Serialize`. 422 `no_events`: a create whose command
//!   produced no events.
//! - 409 `optimistic_lock_error` after the repository's retries, or at once with `If-Match`.
//! - 404 `not_found`: no aggregate registered under `entityType` (`registeredEntityTypes`
//!   lists them), or no such entity.
//! - 400 `invalid_input`: an unknown command type (`field: "commandType"`,
//!   `knownCommandTypes`), a body that is not JSON, or a command that does not validate
//!   against its schema ([`crate::schemas`]) or does not decode (`field` names the field, as
//!   `body.total`).
//!
//! **Idempotency.** An `Idempotency-Key` header (as on the other writes, [`crate::entities`])
//! becomes the command's id ([`eventuate_core::CommandOptions::with_command_id`]), so the
//! command is applied at most once: sent again it writes nothing and answers the first
//! outcome with `Idempotent-Replayed: true`. The key names one command type on one entity:
//! with another command type or entity it is 422 `idempotency_key_reused`. (The repository
//! records a command's type, not its payload, so the same key with the same command type
//! and another body replays the first outcome.) A rejected command records nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use eventuate_core::commands::{self, CommandDecodeError, DispatchError, Target};
use eventuate_core::{CommandOptions, CommandSet, EventEnvelope, EventSet, Repository};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::entities::{
    ENTITY_NAMESPACE, IDEMPOTENT_REPLAYED, KEY_NAMESPACE, encode_segment, event_json,
    idempotency_header, request_id,
};
use crate::error::ApiError;
use crate::input::{Body, PathParams, Query};
use crate::schemas::{Item, Schemas};

/// The outcome of a dispatched command.
pub(crate) struct Done {
    entity_id: String,
    version: u64,
    event_ids: Vec<Uuid>,
    duplicate: bool,
    created: bool,
}

type Dispatching<'a> = Pin<Box<dyn Future<Output = Result<Done, ApiError>> + Send + 'a>>;

/// A registered aggregate, its type erased.
pub(crate) trait Endpoint: Send + Sync + 'static {
    fn entity_type(&self) -> &'static str;
    fn command_types(&self) -> &'static [&'static str];
    fn event_types(&self) -> &'static [&'static str];
    fn schemas(&self) -> &Schemas;
    /// Validates and decodes the command, and runs it.
    fn dispatch<'a>(
        &'a self,
        repository: &'a Repository,
        target: Target,
        command_type: &'a str,
        body: &'a Value,
        options: CommandOptions,
    ) -> Dispatching<'a>;
    /// Checks the `eventData` of a REST write (`field`) for the event `event_type`; the schema
    /// version to record.
    fn check_event(&self, field: &str, event_type: &str, data: &Value) -> Result<u32, ApiError>;
}

struct Registered<A> {
    schemas: Schemas,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: CommandSet> Endpoint for Registered<A> {
    fn entity_type(&self) -> &'static str {
        A::ENTITY_TYPE
    }

    fn command_types(&self) -> &'static [&'static str] {
        A::COMMAND_TYPES
    }

    fn event_types(&self) -> &'static [&'static str] {
        <A::Event as EventSet>::EVENT_TYPES
    }

    fn schemas(&self) -> &Schemas {
        &self.schemas
    }

    fn dispatch<'a>(
        &'a self,
        repository: &'a Repository,
        target: Target,
        command_type: &'a str,
        body: &'a Value,
        options: CommandOptions,
    ) -> Dispatching<'a> {
        Box::pin(async move {
            if !A::COMMAND_TYPES.contains(&command_type) {
                return Err(unknown_command::<A>(command_type));
            }
            // `{}` for a command without fields (a unit struct, whose JSON is `null`): what
            // many HTTP clients send for "no body". Taken as `null` when the schema refuses it
            // and takes `null` (without a schema, the decoding falls back the same way).
            let body = match self
                .schemas
                .check(Item::Command, command_type, "body", body)
            {
                Ok(()) => body,
                Err(_)
                    if body.as_object().is_some_and(serde_json::Map::is_empty)
                        && self
                            .schemas
                            .check(Item::Command, command_type, "body", &Value::Null)
                            .is_ok() =>
                {
                    &Value::Null
                }
                Err(e) => return Err(e),
            };
            let payload = body.to_string();
            match commands::dispatch::<A>(repository, target, command_type, &payload, options).await
            {
                Ok(committed) => Ok(Done {
                    created: !committed.duplicate
                        && committed.version == committed.event_ids.len() as u64
                        && !committed.event_ids.is_empty(),
                    entity_id: committed.entity_id,
                    version: committed.version,
                    event_ids: committed.event_ids,
                    duplicate: committed.duplicate,
                }),
                Err(DispatchError::Decode(CommandDecodeError::UnknownType { .. })) => {
                    Err(unknown_command::<A>(command_type))
                }
                Err(DispatchError::Decode(CommandDecodeError::Json { path, error })) => {
                    let field = if path == "." {
                        "body".to_owned()
                    } else {
                        format!("body.{path}")
                    };
                    Err(ApiError::invalid(
                        field.clone(),
                        format!("`{field}` does not decode into `{command_type}`: {error}"),
                    ))
                }
                Err(DispatchError::Command(error)) => Err(command_error::<A>(error)),
                Err(other) => Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    other.to_string(),
                )),
            }
        })
    }

    fn check_event(&self, field: &str, event_type: &str, data: &Value) -> Result<u32, ApiError> {
        let Some(current) = <A::Event as EventSet>::EVENT_TYPES
            .iter()
            .find(|name| **name == <A::Event as EventSet>::current_name(event_type))
        else {
            return Err(ApiError::invalid(
                field.replace("eventData", "eventType"),
                format!(
                    "{} stores no event `{event_type}`; its event types are: {}",
                    A::ENTITY_TYPE,
                    <A::Event as EventSet>::EVENT_TYPES.join(", ")
                ),
            ));
        };
        let version = <A::Event as EventSet>::schema(current).map_or(1, |s| s.version);
        self.schemas.check(Item::Event, current, field, data)?;
        // Whatever the schema says, the aggregate must be able to read the event back.
        <A::Event as EventSet>::decode(current, &data.to_string()).map_err(|e| {
            ApiError::invalid(
                field,
                format!("`{field}` does not decode into {current}: {e}"),
            )
        })?;
        Ok(version)
    }
}

fn unknown_command<A: CommandSet>(command_type: &str) -> ApiError {
    ApiError::invalid(
        "commandType",
        CommandDecodeError::unknown::<A>(command_type).to_string(),
    )
    .with("knownCommandTypes", json!(A::COMMAND_TYPES))
}

/// The repository's error as an answer; a rejection carries the business error.
fn command_error<A: CommandSet>(error: eventuate_core::Error) -> ApiError {
    let explanation = error.to_string();
    match error {
        eventuate_core::Error::Rejected {
            command, source, ..
        } => {
            let mut answer =
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", explanation)
                    .with("commandType", command)
                    .with("reason", source.to_string());
            if let Some(value) = A::rejection_json(source.as_ref()) {
                answer = answer.with("rejection", value);
            }
            answer
        }
        eventuate_core::Error::EmptyAppend { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_events",
            format!("{explanation}: the command produced no events, so nothing was created"),
        ),
        other => other.into(),
    }
}

/// The aggregates registered with the server, by entity type.
#[derive(Clone, Default)]
pub(crate) struct Aggregates {
    by_type: BTreeMap<&'static str, Arc<dyn Endpoint>>,
}

impl std::fmt::Debug for Aggregates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_type.keys()).finish()
    }
}

impl Aggregates {
    pub(crate) fn register<A: CommandSet>(&mut self) {
        self.by_type.insert(
            A::ENTITY_TYPE,
            Arc::new(Registered::<A> {
                schemas: Schemas::of::<A>(),
                aggregate: PhantomData,
            }),
        );
    }

    pub(crate) fn endpoints(&self) -> impl Iterator<Item = &Arc<dyn Endpoint>> {
        self.by_type.values()
    }

    /// The registered aggregate, if any (the REST writes validate only those).
    pub(crate) fn find(&self, entity_type: &str) -> Option<&Arc<dyn Endpoint>> {
        self.by_type.get(entity_type)
    }

    /// The registered aggregate; 404 listing the registered ones.
    pub(crate) fn get(&self, entity_type: &str) -> Result<&Arc<dyn Endpoint>, ApiError> {
        self.find(entity_type).ok_or_else(|| {
            ApiError::not_found(format!(
                "no aggregate `{entity_type}` is registered with this server (Server::aggregate)"
            ))
            .with(
                "registeredEntityTypes",
                json!(self.by_type.keys().collect::<Vec<_>>()),
            )
        })
    }
}

/// The body as JSON: empty is `null`; not JSON is a 400.
fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("the body is not JSON: {e}")))
}

/// `If-Match: 3` or `"3"` (an entity version, as an ETag).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let version = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    match version.parse::<u64>() {
        Ok(v) if v >= 1 => Ok(Some(v)),
        _ => Err(ApiError::invalid(
            "If-Match",
            format!(
                "`If-Match` must be the entity version the command builds on (`3` or `\"3\"`), \
                 not `{text}`"
            ),
        )),
    }
}

fn if_none_match_any(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers.get(header::IF_NONE_MATCH) {
        None => Ok(false),
        Some(value) if value.as_bytes() == b"*" => Ok(true),
        Some(_) => Err(ApiError::invalid(
            "If-None-Match",
            "`If-None-Match` takes only `*` (create the entity: it must not exist)",
        )),
    }
}

/// `POST /aggregates/{entityType}/commands/{commandType}`: a command that creates an entity.
pub(crate) async fn create(
    State(state): State<AppState>,
    PathParams((entity_type, command_type)): PathParams<(String, String)>,
    query: Query,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    query.only(&[])?;
    let endpoint = state.aggregates.get(&entity_type)?.clone();
    if headers.contains_key(header::IF_MATCH) {
        return Err(ApiError::invalid(
            "If-Match",
            "`If-Match` names the version of an existing entity; this route creates one (send \
             the command to /aggregates/{entityType}/{entityId}/commands/{commandType})",
        ));
    }
    let key = idempotency_header(&headers)?;
    // As `POST /entities/{entityType}` does: the retry finds the entity it created.
    let entity_id = key.as_ref().map(|k| {
        Uuid::new_v5(
            &ENTITY_NAMESPACE,
            format!("{entity_type}\nkey\n{k}").as_bytes(),
        )
        .to_string()
    });
    run(
        &state,
        &*endpoint,
        Target::Create(entity_id),
        &command_type,
        &headers,
        key,
        &body,
    )
    .await
}

/// `POST /aggregates/{entityType}/{entityId}/commands/{commandType}`.
pub(crate) async fn send(
    State(state): State<AppState>,
    PathParams((entity_type, entity_id, command_type)): PathParams<(String, String, String)>,
    query: Query,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    query.only(&["upsert"])?;
    let endpoint = state.aggregates.get(&entity_type)?.clone();
    eventuate_core::name::validate_entity_id(&entity_id)?;
    let upsert = match query.get("upsert") {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "upsert",
                format!("`upsert` must be `true` or `false`, not `{other}`"),
            ));
        }
    };
    let target = match (if_match(&headers)?, if_none_match_any(&headers)?, upsert) {
        (None, false, false) => Target::Update(entity_id),
        (Some(version), false, false) => Target::UpdateExpecting(entity_id, version),
        (None, true, false) => Target::Create(Some(entity_id)),
        (None, false, true) => Target::Upsert(entity_id),
        _ => {
            return Err(ApiError::invalid(
                "If-Match",
                "send at most one of `If-Match`, `If-None-Match: *` and `?upsert=true`",
            ));
        }
    };
    let key = idempotency_header(&headers)?;
    run(
        &state,
        &*endpoint,
        target,
        &command_type,
        &headers,
        key,
        &body,
    )
    .await
}

async fn run(
    state: &AppState,
    endpoint: &dyn Endpoint,
    target: Target,
    command_type: &str,
    headers: &HeaderMap,
    key: Option<String>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let body = body_json(body)?;
    // Only a client's key becomes the command id (and so an idempotency key): a command
    // without one gets a fresh id from the repository and records no key.
    let command_id = key
        .as_ref()
        .map(|k| Uuid::new_v5(&KEY_NAMESPACE, k.as_bytes()));
    let mut options = match command_id {
        Some(id) => CommandOptions::with_command_id(id),
        None => CommandOptions::default(),
    }
    .header("request-id", request_id(headers));
    if let Some(k) = &key {
        options = options.header("idempotency-key", k.clone());
    }
    let repository = state.repository.clone();
    let done = endpoint
        .dispatch(&repository, target, command_type, &body, options)
        .await?;
    // The events as `GET /entities/..` shows them: those just written, or, for a replayed
    // key, those its first run wrote (they carry its command id).
    let stored = state
        .store
        .load(
            endpoint.entity_type(),
            &done.entity_id,
            if done.duplicate {
                0
            } else {
                done.version - done.event_ids.len() as u64
            },
        )
        .await?;
    let events: Vec<&EventEnvelope> = stored
        .iter()
        .filter(|e| {
            if done.duplicate {
                command_id.is_some() && e.metadata.command_id == command_id
            } else {
                done.event_ids.contains(&e.event_id)
            }
        })
        .collect();
    let status = if done.created
        || (done.duplicate && events.first().is_some_and(|e| e.entity_version == 1))
    {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let answer = json!({
        "entityType": endpoint.entity_type(),
        "entityId": done.entity_id,
        "entityVersion": done.version,
        "commandType": command_type,
        "commandId": command_id
            .or_else(|| events.first().and_then(|e| e.metadata.command_id))
            .map(|id| id.to_string()),
        "events": events.iter().map(|e| event_json(e)).collect::<Vec<_>>(),
    });
    let mut response = (status, Json(answer)).into_response();
    let response_headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!(
        "/entities/{}/{}",
        endpoint.entity_type(),
        encode_segment(&done.entity_id)
    )) {
        response_headers.insert(header::LOCATION, location);
    }
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", done.version)) {
        response_headers.insert(header::ETAG, etag);
    }
    if done.duplicate {
        response_headers.insert(
            HeaderName::from_static(IDEMPOTENT_REPLAYED),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}
