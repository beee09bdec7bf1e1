//! Commands by type name (`POST /aggregates/..`) and the schemas (`GET /schemas`, payload
//! validation), through the router in-process, over the in-memory store and a throwaway
//! PostgreSQL: every scenario runs on both.

mod http_support;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use eventuate_core::prelude::*;
use eventuate_core::store::{AppendOutcome, AppendRequest, ExpectedVersion};
use eventuate_core::{
    CommandFingerprint, EventEnvelope, IdempotencyKey, NewEvent, Position, RepositoryOptions,
    Snapshot, StreamFilter,
};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::test_database;
use eventuate_server::Server;
use futures_util::future::BoxFuture;
use http_support::{Reply, get, post};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The aggregate under test.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TicketOpened {
    title: String,
    priority: u8,
}

/// Version 2: `assignee` was `user` in version 1; stored once as `TicketTaken`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TicketAssigned {
    assignee: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TicketClosed {}

/// Not `JsonSchema`: listed without a schema, still decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketNoted {
    note: String,
}

fn assigned_v1_to_v2(mut v: Value) -> Result<Value, String> {
    let user = v
        .as_object_mut()
        .and_then(|o| o.remove("user"))
        .ok_or("no `user`")?;
    Ok(json!({ "assignee": user }))
}

#[derive(Debug, Clone, PartialEq, Events)]
pub enum TicketEvent {
    Opened(TicketOpened),
    #[event(version = 2, upcast(from = 1, with = assigned_v1_to_v2), aliases("TicketTaken"))]
    Assigned(TicketAssigned),
    Closed(TicketClosed),
    Noted(TicketNoted),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct OpenTicket {
    title: String,
    #[schemars(range(min = 1, max = 5))]
    priority: u8,
}

/// Not `JsonSchema`: no schema, so a bad payload is reported by decoding.
#[derive(Debug, Clone, Deserialize)]
pub struct AssignTicket {
    assignee: String,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct CloseTicket;

/// Not `Deserialize`: its handler is in a block without `dispatch`.
#[derive(Debug, Clone)]
pub struct Escalate;

#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind")]
pub enum TicketError {
    #[error("the ticket is already open")]
    AlreadyOpen,
    #[error("the ticket is closed")]
    Closed { at_version: u64 },
}

/// Not `Serialize`: a rejection without `rejection`.
#[derive(Debug, thiserror::Error)]
#[error("tickets cannot be escalated")]
pub struct CannotEscalate;

#[aggregate(name = "Ticket", events = TicketEvent, ignore(TicketNoted))]
#[derive(Debug, Default, Clone)]
pub struct Ticket {
    open: bool,
    closed: bool,
    events: u64,
}

#[command_handler(dispatch)]
impl Ticket {
    fn open(&self, command: &OpenTicket) -> Result<TicketOpened, TicketError> {
        if self.open || self.closed {
            return Err(TicketError::AlreadyOpen);
        }
        Ok(TicketOpened {
            title: command.title.clone(),
            priority: command.priority,
        })
    }

    fn assign(&self, command: AssignTicket) -> Result<TicketAssigned, TicketError> {
        if self.closed {
            return Err(TicketError::Closed {
                at_version: self.events,
            });
        }
        Ok(TicketAssigned {
            assignee: command.assignee,
        })
    }

    /// Closing a closed ticket changes nothing.
    fn close(&self, _: &CloseTicket) -> Result<Vec<TicketClosed>, TicketError> {
        Ok(if self.closed {
            Vec::new()
        } else {
            vec![TicketClosed {}]
        })
    }

    #[apply]
    fn on_opened(&mut self, _: &TicketOpened) {
        self.open = true;
        self.events += 1;
    }

    #[apply]
    fn on_assigned(&mut self, _: &TicketAssigned) {
        self.events += 1;
    }

    #[apply]
    fn on_closed(&mut self, _: &TicketClosed) {
        self.closed = true;
        self.events += 1;
    }
}

#[command_handler]
impl Ticket {
    fn escalate(&self, _: &Escalate) -> Result<Vec<TicketNoted>, CannotEscalate> {
        Err(CannotEscalate)
    }
}

// ---------------------------------------------------------------------------------------------
// Harness.

#[track_caller]
fn assert_error(reply: &Reply, status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"], code, "{}", reply.body);
    if let Some(field) = field {
        assert_eq!(reply.body["field"], field, "{}", reply.body);
    }
}

fn event_types(reply: &Reply) -> Vec<String> {
    reply.body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["eventType"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn app(store: Arc<dyn EventStore>) -> Router {
    Server::new(store).aggregate::<Ticket>().router()
}

async fn postgres() -> (
    eventuate_postgres::embedded::TestDatabase,
    Arc<dyn EventStore>,
) {
    let db = test_database().await;
    let store = PostgresEventStore::builder()
        .migrate_on_connect(true)
        .max_connections(4)
        .connect(&db.url)
        .await
        .expect("store");
    (db, Arc::new(store))
}

// ---------------------------------------------------------------------------------------------
// Scenarios, each run on both stores.

async fn create_update_and_preconditions(store: Arc<dyn EventStore>) {
    let app = app(store.clone());

    // A create without an id: 201, a fresh id, the events as GET /entities shows them.
    let created = post(
        &app,
        "/aggregates/Ticket/commands/OpenTicket",
        r#"{"title": "printer", "priority": 2}"#,
        &[],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["entityId"].as_str().expect("an id").to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(created.body["entityVersion"], 1);
    assert_eq!(created.body["commandType"], "OpenTicket");
    assert_eq!(event_types(&created), ["TicketOpened"]);
    assert_eq!(
        created.body["events"][0]["eventData"],
        json!({"title": "printer", "priority": 2})
    );
    assert_eq!(
        created.headers["location"],
        format!("/entities/Ticket/{id}")
    );
    let read = get(&app, &format!("/entities/Ticket/{id}")).await;
    assert_eq!(
        read.body["events"], created.body["events"],
        "the same shape as the REST reads"
    );

    // An update: 200, the next version. A by-value command (cloned for retries) works too.
    let assigned = post(
        &app,
        &format!("/aggregates/Ticket/{id}/commands/AssignTicket"),
        r#"{"assignee": "ann"}"#,
        &[],
    )
    .await;
    assert_eq!(assigned.status, StatusCode::OK, "{}", assigned.body);
    assert_eq!(assigned.body["entityVersion"], 2);
    assert_eq!(event_types(&assigned), ["TicketAssigned"]);
    assert_eq!(assigned.headers["etag"], "\"2\"");
    // Version 2 of the event is recorded, so it is read back without upcasting.
    let stored = store.load("Ticket", &id, 1).await.expect("load");
    assert_eq!(stored[0].metadata.schema_version, Some(2));

    // If-Match: a stale version is a conflict at once, with the actual version.
    let stale = post(
        &app,
        &format!("/aggregates/Ticket/{id}/commands/CloseTicket"),
        "",
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_error(&stale, StatusCode::CONFLICT, "optimistic_lock_error", None);
    assert_eq!(stale.body["actualVersion"], 2);
    // The current one: applied. The empty body is `null`, a unit struct.
    let closed = post(
        &app,
        &format!("/aggregates/Ticket/{id}/commands/CloseTicket"),
        "",
        &[("if-match", "2")],
    )
    .await;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.body);
    assert_eq!(closed.body["entityVersion"], 3);
    // A command that decides nothing needs to happen: 200, no events, the same version.
    let again = post(
        &app,
        &format!("/aggregates/Ticket/{id}/commands/CloseTicket"),
        "null",
        &[],
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["entityVersion"], 3);
    assert_eq!(again.body["events"], json!([]));
    // `{}`, what many HTTP clients send for "no body", is taken as `null` too.
    let empty_object = post(
        &app,
        &format!("/aggregates/Ticket/{id}/commands/CloseTicket"),
        "{}",
        &[],
    )
    .await;
    assert_eq!(empty_object.status, StatusCode::OK, "{}", empty_object.body);
    assert_eq!(empty_object.body["entityVersion"], 3);

    // Without a precondition the entity must exist.
    let missing = post(
        &app,
        "/aggregates/Ticket/t-none/commands/CloseTicket",
        "",
        &[],
    )
    .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found", None);
    assert!(
        store
            .load("Ticket", "t-none", 0)
            .await
            .expect("load")
            .is_empty()
    );

    // If-None-Match: * creates with the given id; a second time it exists.
    let open = r#"{"title": "lamp", "priority": 1}"#;
    let named = post(
        &app,
        "/aggregates/Ticket/t-1/commands/OpenTicket",
        open,
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(named.status, StatusCode::CREATED, "{}", named.body);
    assert_eq!(named.body["entityId"], "t-1");
    let twice = post(
        &app,
        "/aggregates/Ticket/t-1/commands/OpenTicket",
        open,
        &[("if-none-match", "*")],
    )
    .await;
    assert_error(&twice, StatusCode::CONFLICT, "entity_exists", None);

    // ?upsert=true: a missing entity starts from its initial state (201), an existing one is
    // updated (200).
    let upserted = post(
        &app,
        "/aggregates/Ticket/t-2/commands/AssignTicket?upsert=true",
        r#"{"assignee": "bo"}"#,
        &[],
    )
    .await;
    assert_eq!(upserted.status, StatusCode::CREATED, "{}", upserted.body);
    assert_eq!(upserted.body["entityVersion"], 1);
    let upserted = post(
        &app,
        "/aggregates/Ticket/t-2/commands/AssignTicket?upsert=true",
        r#"{"assignee": "cy"}"#,
        &[],
    )
    .await;
    assert_eq!(upserted.status, StatusCode::OK, "{}", upserted.body);
    assert_eq!(upserted.body["entityVersion"], 2);

    // A create names no version.
    let versioned = post(
        &app,
        "/aggregates/Ticket/commands/OpenTicket",
        open,
        &[("if-match", "1")],
    )
    .await;
    assert_error(
        &versioned,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("If-Match"),
    );

    // Two preconditions at once are refused.
    let both = post(
        &app,
        "/aggregates/Ticket/t-2/commands/CloseTicket?upsert=true",
        "",
        &[("if-match", "2")],
    )
    .await;
    assert_error(&both, StatusCode::BAD_REQUEST, "invalid_input", None);
}

async fn rejections_and_bad_requests(store: Arc<dyn EventStore>) {
    let app = app(store.clone());
    let open = r#"{"title": "desk", "priority": 3}"#;
    let created = post(
        &app,
        "/aggregates/Ticket/r-1/commands/OpenTicket",
        open,
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);

    // A business error: 422 with its Display and, as it is `Serialize`, its JSON.
    let rejected = post(
        &app,
        "/aggregates/Ticket/r-1/commands/OpenTicket?upsert=true",
        open,
        &[],
    )
    .await;
    assert_error(
        &rejected,
        StatusCode::UNPROCESSABLE_ENTITY,
        "rejected",
        None,
    );
    assert_eq!(rejected.body["reason"], "the ticket is already open");
    assert_eq!(rejected.body["rejection"], json!({"kind": "AlreadyOpen"}));
    assert_eq!(rejected.body["commandType"], "OpenTicket");
    post(&app, "/aggregates/Ticket/r-1/commands/CloseTicket", "", &[]).await;
    let closed = post(
        &app,
        "/aggregates/Ticket/r-1/commands/AssignTicket",
        r#"{"assignee": "x"}"#,
        &[],
    )
    .await;
    assert_error(&closed, StatusCode::UNPROCESSABLE_ENTITY, "rejected", None);
    assert_eq!(
        closed.body["rejection"],
        json!({"kind": "Closed", "at_version": 2})
    );
    assert_eq!(
        store.load("Ticket", "r-1", 0).await.expect("load").len(),
        2,
        "nothing written"
    );

    // A body over the listener's limit: a JSON 413 naming the limit, as on /entities.
    let huge = format!(r#"{{"title": "{}", "priority": 3}}"#, "x".repeat(5 << 20));
    let over = post(&app, "/aggregates/Ticket/commands/OpenTicket", &huge, &[]).await;
    assert_error(
        &over,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    assert_eq!(over.body["max"], 4 << 20, "{}", over.body);

    // An unknown aggregate type: 404 naming the registered ones.
    let unknown = post(&app, "/aggregates/Invoice/i-1/commands/Pay", "{}", &[]).await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found", None);
    assert_eq!(unknown.body["registeredEntityTypes"], json!(["Ticket"]));

    // An unknown command type: 400 naming the known ones (not `Escalate`: no `dispatch`).
    let unknown = post(
        &app,
        "/aggregates/Ticket/r-1/commands/Escalate",
        "null",
        &[],
    )
    .await;
    assert_error(
        &unknown,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("commandType"),
    );
    assert_eq!(
        unknown.body["knownCommandTypes"],
        json!(["OpenTicket", "AssignTicket", "CloseTicket"])
    );
    let explanation = unknown.body["explanation"].as_str().unwrap_or_default();
    assert!(
        explanation.contains("OpenTicket, AssignTicket, CloseTicket"),
        "{explanation}"
    );

    // Not JSON.
    let garbage = post(
        &app,
        "/aggregates/Ticket/commands/OpenTicket",
        "{title",
        &[],
    )
    .await;
    assert_error(
        &garbage,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("body"),
    );
    // A command without a schema that does not decode: the field is named.
    let bad = post(
        &app,
        "/aggregates/Ticket/r-1/commands/AssignTicket",
        r#"{"assignee": 7}"#,
        &[],
    )
    .await;
    assert_error(
        &bad,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("body.assignee"),
    );
    let missing = post(
        &app,
        "/aggregates/Ticket/r-1/commands/AssignTicket",
        "{}",
        &[],
    )
    .await;
    assert_error(
        &missing,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("body"),
    );
    assert!(
        missing.body["explanation"]
            .as_str()
            .unwrap_or_default()
            .contains("assignee"),
        "{}",
        missing.body
    );
    // A command with a schema that does not validate: every violation, by JSON pointer.
    // (Without the `schemas` feature: the first field that does not decode.)
    let invalid = post(
        &app,
        "/aggregates/Ticket/commands/OpenTicket",
        r#"{"title": 5, "priority": 9}"#,
        &[],
    )
    .await;
    if cfg!(feature = "schemas") {
        assert_error(
            &invalid,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some("body"),
        );
        let mut pointers: Vec<&str> = invalid.body["errors"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["pointer"].as_str()).collect())
            .unwrap_or_default();
        pointers.sort_unstable();
        assert_eq!(pointers, ["/priority", "/title"], "{}", invalid.body);
    } else {
        assert_error(
            &invalid,
            StatusCode::BAD_REQUEST,
            "invalid_input",
            Some("body.title"),
        );
    }
    let after = store
        .read_stream(Position::START, &StreamFilter::default(), 100)
        .await
        .expect("read");
    assert_eq!(
        after.len(),
        2,
        "no rejected or invalid command wrote anything"
    );
}

async fn idempotency_keys(store: Arc<dyn EventStore>) {
    let app = app(store.clone());
    let open = r#"{"title": "chair", "priority": 1}"#;
    let key = [("idempotency-key", "open-chair-1")];
    let first = post(&app, "/aggregates/Ticket/commands/OpenTicket", open, &key).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    // Sent again (a lost answer): the same entity, nothing written, the first answer.
    let second = post(&app, "/aggregates/Ticket/commands/OpenTicket", open, &key).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_eq!(second.headers["idempotent-replayed"], "true");
    assert_eq!(second.body["entityId"], first.body["entityId"]);
    assert_eq!(second.body["events"], first.body["events"]);
    assert_eq!(second.body["commandId"], first.body["commandId"]);
    let id = first.body["entityId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(store.load("Ticket", &id, 0).await.expect("load").len(), 1);

    // An update under a key, sent twice: applied once.
    let key = [("idempotency-key", "assign-chair-1")];
    let uri = format!("/aggregates/Ticket/{id}/commands/AssignTicket");
    let first = post(&app, &uri, r#"{"assignee": "dee"}"#, &key).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let second = post(&app, &uri, r#"{"assignee": "dee"}"#, &key).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(second.headers["idempotent-replayed"], "true");
    assert_eq!(second.body["events"], first.body["events"]);
    assert_eq!(store.load("Ticket", &id, 0).await.expect("load").len(), 2);

    // The same key for another command: 422.
    let reused = post(
        &app,
        &format!("/aggregates/Ticket/{id}/commands/CloseTicket"),
        "",
        &key,
    )
    .await;
    assert_error(
        &reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        None,
    );
    assert_eq!(store.load("Ticket", &id, 0).await.expect("load").len(), 2);
}

/// Without the `schemas` feature: no documents, and REST writes to a registered entity type
/// are still checked by decoding.
#[cfg(not(feature = "schemas"))]
async fn schemas_and_rest_validation(store: Arc<dyn EventStore>) {
    let app = app(store.clone());
    let list = get(&app, "/schemas").await;
    assert_error(&list, StatusCode::NOT_FOUND, "not_found", None);
    let doc = get(&app, "/schemas/Ticket").await;
    assert_error(&doc, StatusCode::NOT_FOUND, "not_found", None);
    let bad = json!({"entityId": "v-1", "events": [
        {"eventType": "TicketAssigned", "eventData": {"assignee": ["not", "a", "string"]}},
    ]});
    let reply = post(&app, "/entities/Ticket", &bad.to_string(), &[]).await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("events[0].eventData"),
    );
    assert!(
        store
            .load("Ticket", "v-1", 0)
            .await
            .expect("load")
            .is_empty()
    );
}

#[cfg(feature = "schemas")]
async fn schemas_and_rest_validation(store: Arc<dyn EventStore>) {
    let app = app(store.clone());
    let list = get(&app, "/schemas").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.body["aggregates"][0]["entityType"], "Ticket");
    assert_eq!(list.body["aggregates"][0]["schema"], "/schemas/Ticket");
    assert_eq!(
        list.body["aggregates"][0]["commands"],
        json!(["OpenTicket", "AssignTicket", "CloseTicket"])
    );

    let doc = get(&app, "/schemas/Ticket").await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.body);
    let doc = doc.body;
    assert_eq!(
        doc["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(doc["title"], "Ticket");
    assert_eq!(doc["events"]["TicketAssigned"]["version"], 2);
    assert_eq!(
        doc["events"]["TicketAssigned"]["aliases"],
        json!(["TicketTaken"])
    );
    assert_eq!(doc["events"]["TicketNoted"]["schema"], Value::Null);
    assert_eq!(
        doc["events"]["TicketOpened"]["schema"]["$ref"],
        "#/$defs/TicketOpened"
    );
    assert_eq!(
        doc["$defs"]["TicketOpened"]["required"],
        json!(["title", "priority"])
    );
    assert_eq!(doc["commands"]["AssignTicket"]["schema"], Value::Null);
    assert_eq!(
        doc["$defs"]["OpenTicket"]["properties"]["priority"]["maximum"],
        5
    );
    let missing = get(&app, "/schemas/Invoice").await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found", None);

    // REST writes to a registered entity type are validated: a bad eventData is a 400 with
    // JSON pointers into it, and nothing is written.
    let bad = json!({"entityId": "v-1", "events": [
        {"eventType": "TicketOpened", "eventData": {"title": "ok", "priority": 1}},
        {"eventType": "TicketAssigned", "eventData": {"assignee": ["not", "a", "string"]}},
    ]});
    let reply = post(&app, "/entities/Ticket", &bad.to_string(), &[]).await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("events[1].eventData"),
    );
    assert_eq!(
        reply.body["errors"][0]["pointer"], "/assignee",
        "{}",
        reply.body
    );
    assert!(
        store
            .load("Ticket", "v-1", 0)
            .await
            .expect("load")
            .is_empty()
    );
    // An event the aggregate does not have.
    let unknown = json!({"events": [{"eventType": "TicketBurned", "eventData": {}}]});
    let reply = post(&app, "/entities/Ticket", &unknown.to_string(), &[]).await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("events[0].eventType"),
    );
    // An event without a schema is still decoded.
    let undecodable = json!({"entityId": "v-2", "events": [{"eventType": "TicketNoted", "eventData": {"text": "x"}}]});
    let reply = post(&app, "/entities/Ticket", &undecodable.to_string(), &[]).await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("events[0].eventData"),
    );
    // Valid events are written, each with its current schema version, and the aggregate
    // reads them (an append validates the same way).
    let good = json!({"entityId": "v-3", "events": [
        {"eventType": "TicketOpened", "eventData": {"title": "ok", "priority": 1}},
        {"eventType": "TicketAssigned", "eventData": {"assignee": "eve"}},
    ]});
    let reply = post(&app, "/entities/Ticket", &good.to_string(), &[]).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let stored = store.load("Ticket", "v-3", 0).await.expect("load");
    assert_eq!(stored[1].metadata.schema_version, Some(2));
    let append = json!({"expectedVersion": 2, "events": [{"eventType": "TicketClosed", "eventData": {"at": 1}}]});
    let reply = post(&app, "/entities/Ticket/v-3", &append.to_string(), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let assigned = post(
        &app,
        "/aggregates/Ticket/v-3/commands/AssignTicket",
        r#"{"assignee": "x"}"#,
        &[],
    )
    .await;
    assert_error(
        &assigned,
        StatusCode::UNPROCESSABLE_ENTITY,
        "rejected",
        None,
    );
    let bad_append = json!({"expectedVersion": 3, "events": [{"eventType": "TicketOpened", "eventData": {"title": "t"}}]});
    let reply = post(&app, "/entities/Ticket/v-3", &bad_append.to_string(), &[]).await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        Some("events[0].eventData"),
    );
    // Other entity types are not validated.
    let other = json!({"events": [{"eventType": "Anything", "eventData": 1}]});
    let reply = post(&app, "/entities/Invoice", &other.to_string(), &[]).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(std::sync::Arc::new(eventuate_core::InMemoryEventStore::new())).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let (_db, store) = super::postgres().await;
                    super::$scenario(store).await;
                }
            )*
        }
    };
}

on_both_stores!(
    create_update_and_preconditions,
    rejections_and_bad_requests,
    idempotency_keys,
    schemas_and_rest_validation,
);

// ---------------------------------------------------------------------------------------------
// Conflicts after the repository's retries.

/// A store where another writer appends to the entity right after every load, so every
/// attempt of a command conflicts.
struct Contended {
    inner: InMemoryEventStore,
    contend: std::sync::atomic::AtomicBool,
}

impl EventStore for Contended {
    fn append(
        &self,
        request: AppendRequest,
    ) -> BoxFuture<'_, eventuate_core::Result<AppendOutcome>> {
        self.inner.append(request)
    }

    fn load<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        after_version: u64,
    ) -> BoxFuture<'a, eventuate_core::Result<Vec<EventEnvelope>>> {
        Box::pin(async move {
            let events = self
                .inner
                .load(entity_type, entity_id, after_version)
                .await?;
            let contend = self.contend.load(std::sync::atomic::Ordering::SeqCst);
            if let Some(last) = events.last().filter(|_| contend) {
                let interloper = NewEvent {
                    event_id: uuid::Uuid::new_v4(),
                    event_type: "TicketNoted".into(),
                    payload: r#"{"note": "another writer"}"#.into(),
                    metadata: Default::default(),
                };
                self.inner
                    .append(AppendRequest {
                        entity_type: entity_type.to_owned(),
                        entity_id: entity_id.to_owned(),
                        expected: ExpectedVersion::Exactly(last.entity_version),
                        events: vec![interloper],
                        idempotency: None,
                    })
                    .await?;
            }
            Ok(events)
        })
    }

    fn read_stream<'a>(
        &'a self,
        after: Position,
        filter: &'a StreamFilter,
        limit: usize,
    ) -> BoxFuture<'a, eventuate_core::Result<Vec<EventEnvelope>>> {
        self.inner.read_stream(after, filter, limit)
    }

    fn head(&self) -> BoxFuture<'_, eventuate_core::Result<Position>> {
        self.inner.head()
    }

    fn save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, eventuate_core::Result<()>> {
        self.inner.save_snapshot(snapshot)
    }

    fn load_snapshot<'a>(
        &'a self,
        entity_type: &'a str,
        entity_id: &'a str,
        snapshot_version: u32,
    ) -> BoxFuture<'a, eventuate_core::Result<Option<Snapshot>>> {
        self.inner
            .load_snapshot(entity_type, entity_id, snapshot_version)
    }

    fn recorded_command<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, eventuate_core::Result<Option<Option<CommandFingerprint>>>> {
        self.inner.recorded_command(key)
    }
}

#[tokio::test]
async fn conflicts_after_retries_are_409() {
    let inner = InMemoryEventStore::new();
    let contended = Arc::new(Contended {
        inner: inner.clone(),
        contend: false.into(),
    });
    let store: Arc<dyn EventStore> = contended.clone();
    let app = Server::new(store)
        .repository_options(RepositoryOptions {
            max_attempts: 3,
            cache_capacity: 0,
        })
        .aggregate::<Ticket>()
        .router();
    let open = r#"{"title": "busy", "priority": 1}"#;
    let created = post(
        &app,
        "/aggregates/Ticket/c-1/commands/OpenTicket",
        open,
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    contended
        .contend
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let assign = post(
        &app,
        "/aggregates/Ticket/c-1/commands/AssignTicket",
        r#"{"assignee": "x"}"#,
        &[],
    )
    .await;
    assert_error(&assign, StatusCode::CONFLICT, "optimistic_lock_error", None);
    // Three attempts, each met by one interloper, none of the command's events.
    let stored = inner.load("Ticket", "c-1", 0).await.expect("load");
    let types: Vec<&str> = stored.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["TicketOpened", "TicketNoted", "TicketNoted", "TicketNoted"]
    );
}
