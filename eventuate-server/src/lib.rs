//! # eventuate-server
//!
//! The event store server: a REST API over any [`EventStore`] (create an entity, append with
//! optimistic locking and idempotency keys, read an entity and the global stream) and over the
//! runtime's operations ([`Running`]: subscriber status, parked events, replay), as a library
//! an application embeds and as a binary (`cargo run -p eventuate-server`).
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn eventuate_core::EventStore>) -> std::io::Result<()> {
//! use eventuate_server::{Server, ServerOptions};
//!
//! let server = Server::new(store).options(ServerOptions::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.serve(listener, std::future::pending()).await
//! # }
//! ```
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /entities/{entityType}` `{"entityId"?, "events": [{"eventType", "eventData", "eventId"?}]}` | 201 `{"entityId", "entityVersion", "eventIds"}` |
//! | `POST /entities/{entityType}/{entityId}` `{"expectedVersion", "events", "triggeringEventToken"?}` | 200 the same shape |
//! | `GET /entities/{entityType}/{entityId}?fromVersion=&limit=&snapshotVersion=` | 200 `{"entityVersion", "events", "nextFromVersion", "snapshot"}` |
//! | `GET /stream?after=<tx>/<seq>&types=A,B&limit=` | 200 `{"events", "next"}` |
//! | `POST /aggregates/{entityType}/commands/{commandType}` the command | 201 `{"entityId", "entityVersion", "events", ..}` ([`commands`]) |
//! | `POST /aggregates/{entityType}/{entityId}/commands/{commandType}` the command | 200 the same shape ([`commands`]) |
//! | `GET /schemas` | 200 the registered aggregates ([`schemas`]) |
//! | `GET /schemas/{entityType}` | 200 the aggregate's JSON Schema document |
//! | `GET /subscribers` | 200 every partition: owner, position, lag, parked |
//! | `GET /subscribers/{id}/parked` | 200 the parked events |
//! | `POST /subscribers/{id}/parked/replay?entityType=&entityId=` | 202 `{"replayRequested": n}` |
//! | `POST /subscribers/{id}/parked/skip?position=<tx>/<seq>` | 200 `{"skipped"}`: the parked event dropped for good |
//! | `GET /stomp` | STOMP over WebSocket ([`Server::stomp_over_websocket`], [`stomp::websocket`]) |
//! | `GET /health` | 200 `{"head"}`, 503 when the store is unavailable |
//! | `GET /openapi.json` | the OpenAPI 3.1 document |
//! | `GET /` | the status page: subscribers, lag chart, head and horizon, parked events ([`status`]) |
//! | `GET /horizon` | 200 what holds the stream back (PostgreSQL: [`Server::postgres_admin`]) |
//! | `GET /metrics` | the Prometheus metrics ([`install_prometheus`]) |
//!
//! The STOMP half ([`StompServer`], [`Server::stomp`]; see [`stomp`]) delivers events to
//! durable, named subscriptions over STOMP 1.2 on its own listener, and over WebSocket at
//! `GET /stomp` ([`Server::stomp_over_websocket`]).
//!
//! Errors are described in [`error`]; idempotency in [`entities`]. `eventData` is any JSON
//! value, stored as its JSON text and answered as JSON.

#![warn(missing_docs)]

pub mod commands;
pub mod entities;
pub mod error;
mod input;
pub mod listener;
pub mod openapi;
mod operations;
pub mod schemas;
pub mod status;
pub mod stomp;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use eventuate_core::runtime::Running;
use eventuate_core::{CommandSet, EventStore, Repository, RepositoryOptions};
use serde_json::json;

pub use error::ApiError;
pub use listener::ServerOptions;
pub use status::install_prometheus;
pub use stomp::{StompOptions, StompServer};

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Arc<dyn EventStore>,
    /// The aggregates commands can be sent to ([`Server::aggregate`]), and the repository
    /// that runs them over `store`.
    pub(crate) aggregates: Arc<commands::Aggregates>,
    pub(crate) repository: Repository,
    pub(crate) running: Option<Arc<Running>>,
    pub(crate) extras: status::Extras,
    /// STOMP over WebSocket (`GET /stomp`), and its subscribers in the operations routes.
    pub(crate) stomp: Option<StompServer>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("operations", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

/// The server: a store, optionally the runtime for the operations routes, and the listener's
/// limits.
#[derive(Clone)]
pub struct Server {
    state: AppState,
    options: ServerOptions,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("state", &self.state)
            .field("options", &self.options)
            .finish()
    }
}

impl Server {
    /// A server over `store`, without operations routes, with default limits.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Server {
            state: AppState {
                repository: Repository::from_arc(store.clone()),
                aggregates: Arc::default(),
                store,
                running: None,
                extras: status::Extras::new(),
                stomp: None,
            },
            options: ServerOptions::default(),
        }
    }

    /// Serves `GET /subscribers` and the parked-event routes from this runtime. Keep a clone
    /// of the `Arc` to shut it down after the server stops (`Arc::try_unwrap`).
    pub fn operations(mut self, running: Arc<Running>) -> Self {
        self.state.running = Some(running);
        self
    }

    /// The STOMP half of the server over the same event store: durable subscriptions whose
    /// checkpoints, leases and parked events `subscriptions` keeps (for PostgreSQL, the same
    /// store). Serve it on its own listener ([`StompServer::serve`], port 61614 by convention).
    pub fn stomp(
        &self,
        subscriptions: Arc<dyn eventuate_core::runtime::SubscriptionStore>,
    ) -> StompServer {
        StompServer::new(self.state.store.clone(), subscriptions)
    }

    /// Serves STOMP over WebSocket at `GET /stomp` with the sessions, subscriptions and
    /// shutdown of `stomp` ([`stomp::websocket`]), and lists its subscribers in the
    /// operations routes (`GET /subscribers`, parked events, replay, skip).
    pub fn stomp_over_websocket(mut self, stomp: &StompServer) -> Self {
        self.state.stomp = Some(stomp.clone());
        self
    }

    /// Registers an aggregate whose commands are dispatched by type name
    /// (`#[command_handler(dispatch)]`): serves
    /// `POST /aggregates/{entityType}[/{entityId}]/commands/{commandType}` for it
    /// ([`commands`]) and its schema document at `GET /schemas/{entityType}` ([`schemas`]),
    /// and validates the `eventData` of REST writes to its entity type. Registering an entity
    /// type again replaces it.
    pub fn aggregate<A: CommandSet>(mut self) -> Self {
        Arc::make_mut(&mut self.state.aggregates).register::<A>();
        self
    }

    /// Replaces the options of the repository that runs dispatched commands (how many times
    /// a command is tried on concurrency conflicts; its cache).
    pub fn repository_options(mut self, options: RepositoryOptions) -> Self {
        self.state.repository =
            Repository::from_arc(self.state.store.clone()).with_options(options);
        self
    }

    /// Replaces the limits.
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// The limits.
    pub fn server_options(&self) -> &ServerOptions {
        &self.options
    }

    /// The routes, with the body limit and the request timeout applied (connection limits
    /// belong to the listener: [`Server::serve`]). Drive it in-process with
    /// `tower::ServiceExt::oneshot`, or merge it into an application's router.
    pub fn router(&self) -> Router {
        let timeout = self.options.request_timeout;
        Router::new()
            .route("/entities/{entity_type}", post(entities::create))
            .route(
                "/entities/{entity_type}/{entity_id}",
                post(entities::append).get(entities::get_entity),
            )
            .route("/stream", get(entities::stream))
            .route(
                "/aggregates/{entity_type}/commands/{command_type}",
                post(commands::create),
            )
            .route(
                "/aggregates/{entity_type}/{entity_id}/commands/{command_type}",
                post(commands::send),
            )
            .route("/schemas", get(schemas::list))
            .route("/schemas/{entity_type}", get(schemas::get))
            .route("/subscribers", get(operations::subscribers))
            .route("/subscribers/{id}/parked", get(operations::parked))
            .route("/subscribers/{id}/parked/replay", post(operations::replay))
            .route("/subscribers/{id}/parked/skip", post(operations::skip))
            .route("/stomp", get(stomp::websocket::upgrade))
            .route("/health", get(health))
            .merge(status::routes())
            .route(
                "/openapi.json",
                get(|| async { axum::Json(openapi::document()) }),
            )
            .fallback(|| async {
                ApiError::not_found("no such route (GET /openapi.json lists them)")
            })
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "this path does not take this method (GET /openapi.json lists the routes)",
                )
            })
            .layer(axum::middleware::from_fn(
                move |request: Request, next: Next| with_timeout(timeout, request, next),
            ))
            .layer(DefaultBodyLimit::max(self.options.body_limit))
            .layer(axum::Extension(input::BodyLimit(self.options.body_limit)))
            .with_state(self.state.clone())
    }

    /// Serves the routes on `listener` until `shutdown` completes, with the connection cap and
    /// idle timeout of [`ServerOptions`]; then stops accepting, lets in-flight requests finish
    /// (for at most the request timeout) and returns.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        listener::serve(listener, self.router(), &self.options, shutdown).await
    }
}

async fn with_timeout(timeout: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable(
            "timeout",
            format!(
                "the request took longer than the server's {} ms limit; a write may or may not \
                 have been applied: send it again with the same Idempotency-Key",
                timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

async fn health(State(state): State<AppState>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let head = state.store.head().await?;
    Ok(axum::Json(
        json!({ "status": "ok", "head": head.to_string() }),
    ))
}
