//! JSON Schema documents of aggregates (the `schemas` feature): one document per aggregate,
//! its namespace the aggregate's entity type, describing its events (with their stored names,
//! older names and schema versions) and, for an aggregate with `#[command_handler(dispatch)]`,
//! its commands. Schemas come from `schemars`: derive `schemars::JsonSchema` on the event and
//! command structs; one that does not derive it is listed with `"schema": null` (its payloads
//! are not validated).
//!
//! ```json
//! {
//!   "$schema": "https://json-schema.org/draft/2020-12/schema",
//!   "$id": "urn:eventuate:aggregate:Order",
//!   "title": "Order",
//!   "entityType": "Order",
//!   "events": {
//!     "OrderCreated": { "version": 1, "aliases": [], "schema": { "$ref": "#/$defs/OrderCreated" } }
//!   },
//!   "commands": {
//!     "CreateOrder": { "schema": { "$ref": "#/$defs/CreateOrder" } }
//!   },
//!   "$defs": { "OrderCreated": { .. }, "CreateOrder": { .. } }
//! }
//! ```
//!
//! The document is itself a JSON Schema (its own keywords are annotations) whose `$defs`
//! hold every type; [`item_schema`] cuts out the schema of one event or command, for a
//! validator.

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::aggregate::{Aggregate, EventSet};
use crate::commands::CommandSet;

/// The dialect of the documents.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

fn events_of<A: Aggregate>(generator: &mut SchemaGenerator) -> Map<String, Value> {
    let mut events = Map::new();
    for (name, schema) in <A::Event as EventSet>::event_schemas(generator) {
        let evolution = <A::Event as EventSet>::schema(name);
        events.insert(
            name.to_owned(),
            json!({
                "version": evolution.map_or(1, |s| s.version),
                "aliases": evolution.map_or(&[][..], |s| s.aliases),
                "schema": schema.map(Value::from),
            }),
        );
    }
    // A hand-written event set has no schema hooks: its names are still listed.
    for name in <A::Event as EventSet>::EVENT_TYPES {
        if !events.contains_key(*name) {
            events.insert(
                (*name).to_owned(),
                json!({ "version": 1, "aliases": [], "schema": null }),
            );
        }
    }
    events
}

fn document(
    entity_type: &str,
    events: Map<String, Value>,
    commands: Map<String, Value>,
    mut generator: SchemaGenerator,
) -> Value {
    json!({
        "$schema": DIALECT,
        "$id": format!("urn:eventuate:aggregate:{entity_type}"),
        "title": entity_type,
        "entityType": entity_type,
        "events": events,
        "commands": commands,
        "$defs": generator.take_definitions(true),
    })
}

/// The schema document of an aggregate whose commands are dispatched by name: its events and
/// its commands.
pub fn schema<A: CommandSet>() -> Value {
    let mut generator = generator();
    let events = events_of::<A>(&mut generator);
    let commands = A::command_schemas(&mut generator)
        .into_iter()
        .map(|(name, schema)| {
            (
                name.to_owned(),
                json!({ "schema": schema.map(Value::from) }),
            )
        })
        .collect();
    document(A::ENTITY_TYPE, events, commands, generator)
}

/// The schema document of any aggregate: its events only (`"commands": {}`).
pub fn events_schema<A: Aggregate>() -> Value {
    let mut generator = generator();
    let events = events_of::<A>(&mut generator);
    document(A::ENTITY_TYPE, events, Map::new(), generator)
}

/// Which part of a document: an event or a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// An event, by its current name.
    Event,
    /// A command, by its type name.
    Command,
}

/// The standalone schema of one event or command of a `document`: its schema with the
/// document's `$defs`, ready for a validator. `None` when the document does not list it, or
/// lists it without a schema.
pub fn item_schema(document: &Value, item: Item, name: &str) -> Option<Value> {
    let section = match item {
        Item::Event => "events",
        Item::Command => "commands",
    };
    let schema = document.get(section)?.get(name)?.get("schema")?;
    if schema.is_null() {
        return None;
    }
    let mut standalone = match schema {
        Value::Object(map) => map.clone(),
        // `true` / `false` schemas.
        other => return Some(other.clone()),
    };
    standalone.insert("$schema".into(), json!(DIALECT));
    if let Some(defs) = document.get("$defs") {
        standalone.insert("$defs".into(), defs.clone());
    }
    Some(Value::Object(standalone))
}
