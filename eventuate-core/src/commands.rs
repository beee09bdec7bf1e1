//! Commands by type name: an aggregate's [`CommandSet`] decodes a command from JSON by its
//! type name (`"CreateOrder"`) and runs it through the [`Repository`], so that a generic
//! endpoint (the event store server's `POST /aggregates/{entityType}/../commands/{commandType}`)
//! can dispatch commands without knowing their Rust types.
//!
//! `#[command_handler(dispatch)]` implements [`CommandSet`] for the commands of its impl block;
//! each of them must implement `serde::Deserialize`. Without `dispatch` nothing is generated,
//! so commands that cannot be decoded from JSON are unaffected. A command's type name is the
//! last segment of its type's path (what [`crate::Command::command_type`] records in the
//! events' metadata).
//!
//! ```
//! use eventuate_core::prelude::*;
//! use eventuate_core::commands::{self, Target};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! pub struct Opened { owner: String }
//! #[derive(Debug, Clone, Events)]
//! pub enum AccountEvent { Opened(Opened) }
//! #[derive(Debug, Clone, Deserialize)]
//! pub struct Open { owner: String }
//! #[derive(Debug, thiserror::Error)]
//! #[error("the account is already open")]
//! pub struct AlreadyOpen;
//!
//! #[aggregate(events = AccountEvent)]
//! #[derive(Debug, Default)]
//! pub struct Account { owner: Option<String> }
//!
//! #[command_handler(dispatch)]
//! impl Account {
//!     fn open(&self, command: &Open) -> Result<Opened, AlreadyOpen> {
//!         match self.owner {
//!             Some(_) => Err(AlreadyOpen),
//!             None => Ok(Opened { owner: command.owner.clone() }),
//!         }
//!     }
//!     #[apply]
//!     fn on_opened(&mut self, event: &Opened) { self.owner = Some(event.owner.clone()); }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let repo = Repository::new(InMemoryEventStore::new());
//! let committed = commands::dispatch::<Account>(
//!     &repo,
//!     Target::Create(Some("a-1".into())),
//!     "Open",
//!     r#"{"owner": "ann"}"#,
//!     CommandOptions::default(),
//! )
//! .await
//! .unwrap();
//! assert_eq!(committed.version, 1);
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;

use crate::aggregate::{Aggregate, Command};
use crate::repository::{CommandOptions, Committed, Repository};

/// The commands of an aggregate that can be decoded from JSON by type name. Implemented by
/// `#[command_handler(dispatch)]`.
pub trait CommandSet: Aggregate {
    /// The type name of every command, in the order of the impl block.
    const COMMAND_TYPES: &'static [&'static str];

    /// Decodes the command named `command_type` from the JSON text `payload` and hands it,
    /// typed, to `visitor`.
    fn decode_command<V: CommandVisitor<Self>>(
        command_type: &str,
        payload: &str,
        visitor: V,
    ) -> Result<V::Output, CommandDecodeError>;

    /// A handler's business error as JSON, when its type implements `serde::Serialize`
    /// (`None` otherwise, or when it is not the error type of one of the set's handlers).
    fn rejection_json(
        _error: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> Option<serde_json::Value> {
        None
    }

    /// The JSON Schema of each command, by type name; `None` for a command whose type does
    /// not implement `schemars::JsonSchema`. Generated with the `schemas` feature.
    #[cfg(feature = "schemas")]
    fn command_schemas(
        _generator: &mut schemars::SchemaGenerator,
    ) -> Vec<(&'static str, Option<schemars::Schema>)> {
        Vec::new()
    }
}

/// Receives a decoded command with its type (what [`CommandSet::decode_command`] calls).
pub trait CommandVisitor<A: Aggregate> {
    /// What visiting produces.
    type Output;

    /// Takes the decoded command.
    fn visit<C: Command<A>>(self, command: C) -> Self::Output;
}

/// Why a command could not be decoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum CommandDecodeError {
    /// The aggregate has no dispatchable command of this name.
    UnknownType {
        /// The name asked for.
        command_type: String,
        /// The names it knows ([`CommandSet::COMMAND_TYPES`]).
        known: &'static [&'static str],
    },
    /// The JSON does not decode into the command.
    Json {
        /// Where in the document decoding failed: `total`, `lines[2].sku` (`.` for the
        /// document itself).
        path: String,
        /// serde's message.
        error: serde_json::Error,
    },
}

impl CommandDecodeError {
    /// An unknown command type for the set `S` (used by the generated code).
    pub fn unknown<S: CommandSet>(command_type: &str) -> Self {
        CommandDecodeError::UnknownType {
            command_type: command_type.to_owned(),
            known: S::COMMAND_TYPES,
        }
    }
}

impl std::fmt::Display for CommandDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandDecodeError::UnknownType {
                command_type,
                known,
            } => write!(
                f,
                "unknown command type `{command_type}`; the known command types are: {}",
                if known.is_empty() {
                    "(none)".to_owned()
                } else {
                    known.join(", ")
                }
            ),
            CommandDecodeError::Json { path, error } if path == "." => {
                write!(f, "the command does not decode: {error}")
            }
            CommandDecodeError::Json { path, error } => {
                write!(f, "the command's field `{path}` does not decode: {error}")
            }
        }
    }
}

impl std::error::Error for CommandDecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CommandDecodeError::Json { error, .. } => Some(error),
            CommandDecodeError::UnknownType { .. } => None,
        }
    }
}

/// Decodes one command from JSON text, naming the field at fault (used by the generated code).
/// `{}` that does not decode is tried as `null`: a command without fields (a unit struct) is
/// `null` in JSON, and many HTTP clients send `{}` for "no body".
pub fn decode_json<C: serde::de::DeserializeOwned>(payload: &str) -> Result<C, CommandDecodeError> {
    let decoded = decode_exactly(payload);
    if decoded.is_err()
        && payload
            .trim()
            .strip_prefix('{')
            .and_then(|p| p.strip_suffix('}'))
            .is_some_and(|p| p.trim().is_empty())
        && let Ok(command) = decode_exactly("null")
    {
        return Ok(command);
    }
    decoded
}

fn decode_exactly<C: serde::de::DeserializeOwned>(payload: &str) -> Result<C, CommandDecodeError> {
    let mut deserializer = serde_json::Deserializer::from_str(payload);
    let value = serde_path_to_error::deserialize::<_, C>(&mut deserializer).map_err(|e| {
        CommandDecodeError::Json {
            path: e.path().to_string(),
            error: e.into_inner(),
        }
    })?;
    deserializer
        .end()
        .map_err(|error| CommandDecodeError::Json {
            path: ".".to_owned(),
            error,
        })?;
    Ok(value)
}

/// Which entity a dispatched command runs on, and how (the [`Repository`] call it becomes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// [`Repository::create_with`]: a new entity, with this id or a fresh UUID;
    /// [`crate::Error::EntityExists`] if it has events.
    Create(Option<String>),
    /// [`Repository::update_with`]: an existing entity, conflicts retried.
    Update(String),
    /// [`Repository::update_expecting_with`]: an existing entity at this version; another
    /// version is [`crate::Error::Conflict`], not retried.
    UpdateExpecting(String, u64),
    /// [`Repository::upsert_with`]: the entity's current state, or the initial state when it
    /// has no events.
    Upsert(String),
}

/// What [`dispatch`] fails with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The command could not be decoded; nothing ran.
    #[error(transparent)]
    Decode(#[from] CommandDecodeError),
    /// The repository's error: a rejection ([`crate::Error::Rejected`]), a conflict, a
    /// missing entity, the store's failure.
    #[error(transparent)]
    Command(#[from] crate::Error),
}

type Run<'a, A> = Pin<Box<dyn Future<Output = crate::Result<Committed<A>>> + Send + 'a>>;

struct Runner<'a> {
    repository: &'a Repository,
    target: Target,
    options: CommandOptions,
}

impl<'a, A: Aggregate> CommandVisitor<A> for Runner<'a> {
    type Output = Run<'a, A>;

    fn visit<C: Command<A>>(self, command: C) -> Run<'a, A> {
        let Runner {
            repository,
            target,
            options,
        } = self;
        Box::pin(async move {
            match target {
                Target::Create(id) => repository.create_with(id, command, options).await,
                Target::Update(id) => repository.update_with(&id, command, options).await,
                Target::UpdateExpecting(id, version) => {
                    repository
                        .update_expecting_with(&id, version, command, options)
                        .await
                }
                Target::Upsert(id) => repository.upsert_with(&id, command, options).await,
            }
        })
    }
}

/// Decodes the command named `command_type` from `payload` and runs it on `target` through
/// the repository: what `repository.create_with(..)` (or `update_with`, ..) does with a typed
/// command, including retries on conflicts and idempotency by command id.
pub async fn dispatch<A: CommandSet>(
    repository: &Repository,
    target: Target,
    command_type: &str,
    payload: &str,
    options: CommandOptions,
) -> Result<Committed<A>, DispatchError> {
    let run = A::decode_command(
        command_type,
        payload,
        Runner {
            repository,
            target,
            options,
        },
    )?;
    Ok(run.await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Close;

    #[derive(Debug, serde::Deserialize)]
    struct Assign {
        #[allow(dead_code)]
        assignee: String,
    }

    #[test]
    fn an_empty_object_is_a_command_without_fields() {
        assert!(decode_json::<Close>("null").is_ok());
        assert!(decode_json::<Close>("{}").is_ok());
        assert!(decode_json::<Close>(" { } ").is_ok());
        assert!(decode_json::<Close>(r#"{"x": 1}"#).is_err());
        // A command with fields still says which one is missing.
        match decode_json::<Assign>("{}") {
            Err(CommandDecodeError::Json { error, .. }) => {
                assert!(error.to_string().contains("assignee"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
}
