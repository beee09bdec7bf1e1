//! `GET /schemas` and `GET /schemas/{entityType}`, and the validation of payloads against
//! them (the `schemas` feature, on by default).
//!
//! Each aggregate registered with [`crate::Server::aggregate`] has a schema document
//! ([`eventuate_core::schemas::schema`]). With it, the server validates before writing:
//!
//! - a command posted by type name, against the command's schema;
//! - the `eventData` of each event of `POST /entities/{entityType}` and
//!   `POST /entities/{entityType}/{entityId}`, against the event's schema.
//!
//! A payload that does not validate is a 400 `invalid_input` whose `field` names the
//! request part (`body`, `events[0].eventData`) and whose `errors` list every violation:
//! `{"pointer": "/total", "schemaPath": "/$defs/CreateOrder/properties/total/type",
//! "message": "\"ten\" is not of type \"integer\""}` (`pointer` is a JSON pointer into that
//! part). Events and commands without a schema (their type does not derive `JsonSchema`) are
//! not validated against one; they are still decoded, which reports the field serde fails on.
//!
//! The validators are compiled once, when the aggregate is registered, with the `jsonschema`
//! crate without its HTTP and file resolvers: a schema can only refer inside its document.

#[cfg(feature = "schemas")]
use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use eventuate_core::CommandSet;
use serde_json::Value;
#[cfg(feature = "schemas")]
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::input::PathParams;

/// Which part of a schema document: an event (by current name) or a command (by type name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Item {
    /// An event.
    Event,
    /// A command.
    Command,
}

/// The schema document of a registered aggregate and its compiled validators.
pub(crate) struct Schemas {
    #[cfg(feature = "schemas")]
    document: Value,
    #[cfg(feature = "schemas")]
    validators: HashMap<(Item, String), jsonschema::Validator>,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schemas").finish_non_exhaustive()
    }
}

#[cfg(feature = "schemas")]
impl Schemas {
    /// The document of `A`, with a validator for each event and command that has a schema.
    ///
    /// Panics if the document does not compile: `schemars` wrote it, so that is a bug, and
    /// registration happens when the server is built, not while it serves.
    pub(crate) fn of<A: CommandSet>() -> Self {
        use eventuate_core::schemas::{self, Item as CoreItem};
        let document = schemas::schema::<A>();
        let mut validators = HashMap::new();
        for (item, core_item, section) in [
            (Item::Event, CoreItem::Event, "events"),
            (Item::Command, CoreItem::Command, "commands"),
        ] {
            let names: Vec<String> = document[section]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for name in names {
                let Some(schema) = schemas::item_schema(&document, core_item, &name) else {
                    continue;
                };
                let validator = jsonschema::validator_for(&schema).unwrap_or_else(|e| {
                    panic!(
                        "the JSON Schema of {} `{name}` does not compile: {e}",
                        A::ENTITY_TYPE
                    )
                });
                validators.insert((item, name), validator);
            }
        }
        Schemas {
            document,
            validators,
        }
    }

    /// The document.
    pub(crate) fn document(&self) -> Option<&Value> {
        Some(&self.document)
    }

    /// Validates `value` (the request part `field`) against the schema of the event or
    /// command `name`; a 400 listing every violation when it does not validate.
    pub(crate) fn check(
        &self,
        item: Item,
        name: &str,
        field: &str,
        value: &Value,
    ) -> Result<(), ApiError> {
        let Some(validator) = self.validators.get(&(item, name.to_owned())) else {
            return Ok(());
        };
        let errors: Vec<Value> = validator
            .iter_errors(value)
            .map(|e| {
                json!({
                    "pointer": e.instance_path().to_string(),
                    "schemaPath": e.schema_path().to_string(),
                    "message": e.to_string(),
                })
            })
            .collect();
        let Some(first) = errors.first() else {
            return Ok(());
        };
        let what = match item {
            Item::Event => "event",
            Item::Command => "command",
        };
        let pointer = first["pointer"].as_str().unwrap_or_default();
        let at = if pointer.is_empty() {
            String::new()
        } else {
            format!(" at `{pointer}`")
        };
        Err(ApiError::invalid(
            field,
            format!(
                "`{field}` does not match the schema of {what} `{name}` (GET /schemas/{}){at}: {}{}",
                self.document["entityType"].as_str().unwrap_or_default(),
                first["message"].as_str().unwrap_or_default(),
                if errors.len() > 1 {
                    format!(" (and {} more in `errors`)", errors.len() - 1)
                } else {
                    String::new()
                }
            ),
        )
        .with("errors", Value::Array(errors)))
    }
}

#[cfg(not(feature = "schemas"))]
impl Schemas {
    /// Without the feature: no document, no validators. (Generic like the real one, so the
    /// registration reads the same either way.)
    #[allow(clippy::extra_unused_type_parameters)]
    pub(crate) fn of<A: CommandSet>() -> Self {
        Schemas {}
    }

    /// Without the feature: no document.
    pub(crate) fn document(&self) -> Option<&Value> {
        None
    }

    /// Without the feature: everything validates (payloads are still decoded).
    pub(crate) fn check(&self, _: Item, _: &str, _: &str, _: &Value) -> Result<(), ApiError> {
        Ok(())
    }
}

fn unavailable() -> ApiError {
    ApiError::not_found(
        "this server was built without the `schemas` feature of eventuate-server: it serves no \
         schemas",
    )
}

/// `GET /schemas`: the registered aggregates, each with its event and command type names and
/// the path of its document.
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if !cfg!(feature = "schemas") {
        return Err(unavailable());
    }
    let aggregates: Vec<Value> = state
        .aggregates
        .endpoints()
        .map(|endpoint| {
            serde_json::json!({
                "entityType": endpoint.entity_type(),
                "events": endpoint.event_types(),
                "commands": endpoint.command_types(),
                "schema": format!("/schemas/{}", endpoint.entity_type()),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "aggregates": aggregates })))
}

/// `GET /schemas/{entityType}`: the aggregate's schema document.
pub(crate) async fn get(
    State(state): State<AppState>,
    PathParams(entity_type): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    let endpoint = state.aggregates.get(&entity_type)?;
    match endpoint.schemas().document() {
        Some(document) => Ok(Json(document.clone())),
        None => Err(unavailable()),
    }
}
