//! The OpenAPI 3.1 document served at `GET /openapi.json`, written by hand next to the routes
//! ([`ROUTES`] lists them; a test checks that each is in the document and answers).

use serde_json::{Value, json};

/// Every route the server answers, as `(method, OpenAPI path)`.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/entities/{entityType}"),
    ("post", "/entities/{entityType}/{entityId}"),
    ("get", "/entities/{entityType}/{entityId}"),
    ("get", "/stream"),
    ("post", "/aggregates/{entityType}/commands/{commandType}"),
    (
        "post",
        "/aggregates/{entityType}/{entityId}/commands/{commandType}",
    ),
    ("get", "/schemas"),
    ("get", "/schemas/{entityType}"),
    ("get", "/subscribers"),
    ("get", "/subscribers/{subscriberId}/parked"),
    ("post", "/subscribers/{subscriberId}/parked/replay"),
    ("post", "/subscribers/{subscriberId}/parked/skip"),
    ("get", "/stomp"),
    ("get", "/health"),
    ("get", "/openapi.json"),
    ("get", "/"),
    ("get", "/horizon"),
    ("get", "/metrics"),
];

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description,
            "schema": { "type": "string" } })
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description,
            "schema": schema })
}

fn idempotency_header() -> Value {
    json!({ "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Makes the write idempotent: sent again, it appends nothing and answers \
                            what the first attempt answered (with `Idempotent-Replayed: true`).",
            "schema": { "type": "string", "minLength": 1, "maxLength": 200 } })
}

/// The document.
pub fn document() -> Value {
    let entity_type = path_param("entityType", "Entity type, e.g. `Order` (an identifier).");
    let entity_id = path_param(
        "entityId",
        "Entity id: 1 to 200 bytes, no control characters.",
    );
    let subscriber_id = path_param("subscriberId", "Subscriber id.");
    let write_errors = json!({
        "400": error_response("invalid_input: the field at fault is in `field`"),
        "409": error_response("optimistic_lock_error (with actualVersion), entity_exists, duplicate_event"),
        "413": error_response(&format!(
            "payload_too_large: the body over the server's limit (`max`, in bytes), more than \
             {} events in one request, or an event over the store's limit (`size`, `max`)",
            crate::entities::MAX_EVENTS_PER_APPEND
        )),
        "422": error_response("idempotency_key_reused"),
        "503": error_response("store_unavailable, outcome_unknown or timeout; see Retry-After"),
    });
    let mut create_responses = write_errors.clone();
    create_responses["201"] = ok(
        "Created (or replayed for a repeated idempotency key)",
        "WriteResult",
    );
    let mut append_responses = write_errors;
    append_responses["200"] = ok(
        "Appended (or replayed for a repeated idempotency key)",
        "WriteResult",
    );
    append_responses["404"] = error_response("not_found: the entity has no events");
    let command_type = path_param(
        "commandType",
        "The command's type name, e.g. `CreateOrder` (the aggregate's `knownCommandTypes`).",
    );
    let command_body = json!({ "required": false, "description": "The command as JSON \
        (empty: `null`). Validated against the command's schema (GET /schemas/{entityType}).",
        "content": { "application/json": { "schema": {} } } });
    let command_errors = |ok_status: &str, ok_description: &str| {
        json!({
            ok_status: ok(ok_description, "CommandResult"),
            "400": error_response("invalid_input: an unknown command type (`knownCommandTypes`), a body that is not JSON, does not match the command's schema (`errors`: JSON pointers) or does not decode (`field`)"),
            "404": error_response("not_found: no aggregate registered under entityType (`registeredEntityTypes`), or no such entity"),
            "409": error_response("optimistic_lock_error (after the retries, or at once with If-Match, with actualVersion), entity_exists"),
            "422": error_response("rejected: the business error (`reason`, and `rejection` when it serializes), no_events, idempotency_key_reused"),
            "503": error_response("store_unavailable, outcome_unknown or timeout; see Retry-After"),
        })
    };
    let mut send_responses = command_errors(
        "200",
        "Processed (its events; none when nothing needed to happen)",
    );
    send_responses["201"] = ok(
        "Created the entity (If-None-Match: *, or an upsert of a new entity)",
        "CommandResult",
    );
    let if_match = json!({ "name": "If-Match", "in": "header", "required": false,
        "description": "The entity version the command builds on (`3` or `\"3\"`): another version is 409, not retried.",
        "schema": { "type": "string" } });
    let if_none_match = json!({ "name": "If-None-Match", "in": "header", "required": false,
        "description": "`*`: create the entity with this id (409 entity_exists if it has events).",
        "schema": { "type": "string", "enum": ["*"] } });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "eventuate-rs event store server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Create entities, append events with optimistic locking and \
                            idempotency keys, read entities and the global stream, and operate \
                            the subscribers. Every error is `{\"error\": code, \"explanation\"}`."
        },
        "paths": {
            "/entities/{entityType}": {
                "post": {
                    "summary": "Create an entity with its first events",
                    "parameters": [entity_type, idempotency_header()],
                    "requestBody": { "required": true, "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/CreateRequest" } } } },
                    "responses": create_responses
                }
            },
            "/entities/{entityType}/{entityId}": {
                "post": {
                    "summary": "Append events to an entity at an expected version",
                    "parameters": [entity_type, entity_id, idempotency_header()],
                    "requestBody": { "required": true, "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/AppendRequest" } } } },
                    "responses": append_responses
                },
                "get": {
                    "summary": "An entity's events (paged) and its latest snapshot",
                    "parameters": [
                        entity_type, entity_id,
                        query_param("fromVersion", "First version to return (default 1).", json!({"type": "integer", "minimum": 1})),
                        query_param("limit", "Most events to return (default 1000, at most 10000).", json!({"type": "integer", "minimum": 1, "maximum": 10000})),
                        query_param("snapshotVersion", "Snapshot format version to look for (default 1).", json!({"type": "integer", "minimum": 0}))
                    ],
                    "responses": {
                        "200": ok("The entity", "Entity"),
                        "400": error_response("invalid_input"),
                        "404": error_response("not_found"),
                        "503": error_response("store_unavailable")
                    }
                }
            },
            "/aggregates/{entityType}/commands/{commandType}": {
                "post": {
                    "summary": "Send a command, by type name, that creates an entity with a fresh id (derived from the Idempotency-Key when there is one)",
                    "parameters": [entity_type, command_type, idempotency_header()],
                    "requestBody": command_body,
                    "responses": command_errors("201", "Created")
                }
            },
            "/aggregates/{entityType}/{entityId}/commands/{commandType}": {
                "post": {
                    "summary": "Send a command, by type name, to an entity (it must exist, unless If-None-Match: * or ?upsert=true)",
                    "parameters": [entity_type, entity_id, command_type, idempotency_header(), if_match, if_none_match,
                        query_param("upsert", "`true`: a missing entity starts from its initial state.", json!({"type": "boolean"}))],
                    "requestBody": command_body,
                    "responses": send_responses
                }
            },
            "/schemas": {
                "get": {
                    "summary": "The registered aggregates: entity type, event and command type names, the path of the schema document",
                    "responses": {
                        "200": { "description": "`{\"aggregates\": [{\"entityType\", \"events\", \"commands\", \"schema\"}]}`", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "404": error_response("not_found: built without the `schemas` feature")
                    }
                }
            },
            "/schemas/{entityType}": {
                "get": {
                    "summary": "The aggregate's JSON Schema document (2020-12): its events (version, aliases, schema) and commands",
                    "parameters": [entity_type],
                    "responses": {
                        "200": { "description": "The document", "content": { "application/schema+json": { "schema": { "type": "object" } } } },
                        "404": error_response("not_found: no aggregate registered under entityType")
                    }
                }
            },
            "/stream": {
                "get": {
                    "summary": "The global stream after a position, for polling clients",
                    "parameters": [
                        query_param("after", "Position `transaction/sequence` to read after (default `0/0`: the start); pass the previous page's `next`.", json!({"type": "string", "pattern": "^[0-9]+/[0-9]+$"})),
                        query_param("types", "Entity types, comma-separated (default: all).", json!({"type": "string"})),
                        query_param("limit", "Most events to return (default 100, at most 1000).", json!({"type": "integer", "minimum": 1, "maximum": 1000}))
                    ],
                    "responses": {
                        "200": ok("A page of the stream", "StreamPage"),
                        "400": error_response("invalid_input"),
                        "503": error_response("store_unavailable")
                    }
                }
            },
            "/subscribers": {
                "get": {
                    "summary": "Every partition of every subscriber: owner, position, lag, parked events",
                    "responses": {
                        "200": { "description": "Status", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "404": error_response("not_found: the server runs no subscribers")
                    }
                }
            },
            "/subscribers/{subscriberId}/parked": {
                "get": {
                    "summary": "A subscriber's parked events",
                    "parameters": [subscriber_id],
                    "responses": {
                        "200": { "description": "Parked events", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "404": error_response("not_found")
                    }
                }
            },
            "/subscribers/{subscriberId}/parked/replay": {
                "post": {
                    "summary": "Request a replay of a subscriber's parked events (all, or one entity's)",
                    "parameters": [
                        subscriber_id,
                        query_param("entityType", "With entityId: replay this entity's parked events only.", json!({"type": "string"})),
                        query_param("entityId", "With entityType.", json!({"type": "string"}))
                    ],
                    "responses": {
                        "202": { "description": "Replay requested: `{\"replayRequested\": n}`", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "400": error_response("invalid_input"),
                        "404": error_response("not_found")
                    }
                }
            },
            "/subscribers/{subscriberId}/parked/skip": {
                "post": {
                    "summary": "Drop one parked event for good: it is never offered to the subscriber again, and its entity flows again (the consumer of its partition is fenced off and re-reads the parked events)",
                    "parameters": [
                        subscriber_id,
                        { "name": "position", "in": "query", "required": true,
                          "description": "The parked event's stream position `transaction/sequence`, as the parked list shows it.",
                          "schema": { "type": "string" } }
                    ],
                    "responses": {
                        "200": { "description": "Skipped: `{\"subscriberId\", \"skipped\": position}`", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "400": error_response("invalid_input"),
                        "404": error_response("not_found (no such subscriber, or nothing parked at that position)")
                    }
                }
            },
            "/stomp": {
                "get": {
                    "summary": "STOMP over WebSocket: upgrades to a WebSocket speaking STOMP 1.0-1.2 (subprotocols `v12.stomp`, `v11.stomp`, `v10.stomp`), the same sessions and subscriptions as the STOMP TCP listener",
                    "responses": {
                        "101": { "description": "Switching protocols to a WebSocket" },
                        "404": error_response("not_found (this server serves no STOMP over WebSocket)")
                    }
                }
            },
            "/health": {
                "get": {
                    "summary": "Whether the store answers; its head position",
                    "responses": {
                        "200": { "description": "`{\"status\": \"ok\", \"head\"}`", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "503": error_response("store_unavailable")
                    }
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": { "200": { "description": "OpenAPI 3.1", "content": { "application/json": { "schema": { "type": "object" } } } } }
                }
            },
            "/": {
                "get": {
                    "summary": "The status page (HTML): subscribers, lag over the last minutes, head and horizon, parked events with replay",
                    "responses": { "200": { "description": "HTML", "content": { "text/html": { "schema": { "type": "string" } } } } }
                }
            },
            "/horizon": {
                "get": {
                    "summary": "What holds delivery back (PostgreSQL store only): the stream horizon, the head, the oldest running transaction",
                    "responses": {
                        "200": { "description": "`{\"horizon\", \"head\", \"oldest\": {\"pid\", \"xid\", \"ageMs\", \"state\", \"query\", \"user\", \"application\"} | null}`", "content": { "application/json": { "schema": { "type": "object" } } } },
                        "404": error_response("not_found: the store is not PostgreSQL (Server::postgres_admin not set)"),
                        "503": error_response("store_unavailable")
                    }
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text format); the lag gauges are refreshed at each scrape",
                    "responses": {
                        "200": { "description": "Prometheus text exposition format", "content": { "text/plain": { "schema": { "type": "string" } } } },
                        "404": error_response("not_found: another metrics recorder was installed first")
                    }
                }
            }
        },
        "components": { "schemas": {
            "Error": { "type": "object", "required": ["error", "explanation"], "properties": {
                "error": { "type": "string", "enum": [
                    "invalid_input", "not_found", "method_not_allowed", "optimistic_lock_error",
                    "entity_exists", "duplicate_event", "payload_too_large",
                    "idempotency_key_reused", "internal_error", "store_unavailable",
                    "outcome_unknown", "timeout", "rejected", "no_events"] },
                "explanation": { "type": "string" },
                "field": { "type": "string", "description": "The request field at fault (400)." },
                "actualVersion": { "type": "integer", "description": "The entity's version (409)." } } },
            "NewEvent": { "type": "object", "required": ["eventType", "eventData"], "properties": {
                "eventType": { "type": "string" },
                "eventData": { "description": "Any JSON value." },
                "eventId": { "type": "string", "format": "uuid", "description": "Client-chosen id (default: a fresh one)." } } },
            "CreateRequest": { "type": "object", "required": ["events"], "properties": {
                "entityId": { "type": "string", "description": "Default: derived from the idempotency key, else a fresh UUID." },
                "events": { "type": "array", "minItems": 1, "items": { "$ref": "#/components/schemas/NewEvent" } },
                "triggeringEventToken": { "type": "string", "description": "Idempotency key of a write caused by an event (per entity)." } } },
            "AppendRequest": { "type": "object", "required": ["expectedVersion", "events"], "properties": {
                "expectedVersion": { "type": "integer", "minimum": 1, "description": "Also accepted as `entityVersion`." },
                "events": { "type": "array", "minItems": 1, "items": { "$ref": "#/components/schemas/NewEvent" } },
                "triggeringEventToken": { "type": "string" } } },
            "WriteResult": { "type": "object", "required": ["entityId", "entityVersion", "eventIds"], "properties": {
                "entityId": { "type": "string" },
                "entityVersion": { "type": "integer" },
                "eventIds": { "type": "array", "items": { "type": "string", "format": "uuid" } } } },
            "Event": { "type": "object", "properties": {
                "id": { "type": "string", "format": "uuid" },
                "entityType": { "type": "string" },
                "entityId": { "type": "string" },
                "entityVersion": { "type": "integer" },
                "eventType": { "type": "string" },
                "eventData": {},
                "position": { "type": "string" },
                "metadata": { "type": "object" } } },
            "Entity": { "type": "object", "properties": {
                "entityType": { "type": "string" },
                "entityId": { "type": "string" },
                "entityVersion": { "type": "integer" },
                "events": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } },
                "nextFromVersion": { "type": ["integer", "null"] },
                "snapshot": { "type": ["object", "null"] } } },
            "CommandResult": { "type": "object", "required": ["entityType", "entityId", "entityVersion", "commandType", "events"], "properties": {
                "entityType": { "type": "string" },
                "entityId": { "type": "string" },
                "entityVersion": { "type": "integer" },
                "commandType": { "type": "string" },
                "commandId": { "type": ["string", "null"], "format": "uuid" },
                "events": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } } } },
            "StreamPage": { "type": "object", "properties": {
                "events": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } },
                "next": { "type": "string", "description": "The `after` of the next page." } } }
        } }
    })
}
