//! The operator's views: the status page (`GET /`), what holds the stream back
//! (`GET /horizon`, PostgreSQL only) and Prometheus metrics (`GET /metrics`).
//!
//! The page is one static HTML file with inline CSS and JavaScript (`status.html`): it polls
//! `GET /subscribers`, `GET /health`, `GET /horizon` and the parked events every few seconds,
//! keeps the lag history of the last minutes in the page, and replays parked events through
//! `POST /subscribers/{id}/parked/replay`.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use eventuate_postgres::PostgresEventStore;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};

use crate::entities::millis;
use crate::error::ApiError;
use crate::{AppState, Server};

/// What the operator's views need besides the store and the runtime.
#[derive(Clone, Default)]
pub(crate) struct Extras {
    /// The PostgreSQL store behind `GET /horizon`, when the store is PostgreSQL.
    admin: Option<PostgresEventStore>,
    /// The recorder behind `GET /metrics`.
    prometheus: Option<PrometheusHandle>,
}

impl Extras {
    /// With the process's Prometheus recorder, installed now unless it was already (see
    /// [`install_prometheus`]).
    pub(crate) fn new() -> Self {
        Extras {
            admin: None,
            prometheus: install_prometheus().ok(),
        }
    }
}

/// The histogram buckets of the `*_seconds` metrics: 0.5 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs a Prometheus recorder as the process's `metrics` recorder, once (later calls
/// return the same handle), with histogram buckets for the `*_seconds` metrics and a thread
/// that runs its upkeep every 5 seconds. [`Server::new`] calls it; an error means another
/// recorder was installed first: pass a handle of your own with [`Server::prometheus`], or
/// serve that recorder yourself. The metrics are listed in [`eventuate_core::telemetry`].
///
/// Call it before starting the runtime ([`eventuate_core::Eventuate::start`]) when the
/// server is created after it: what is recorded before a recorder is installed is lost
/// (the lease manager takes its partitions at once).
pub fn install_prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| format!("the Prometheus recorder was not installed: {e}"))?;
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("eventuate-metrics-upkeep".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread; /metrics runs it at each scrape");
            }
            Ok(handle)
        })
        .clone()
}

impl Server {
    /// Serves `GET /horizon` (and the page's "what holds the head back") from this
    /// PostgreSQL store, usually the same one the server serves.
    pub fn postgres_admin(mut self, store: PostgresEventStore) -> Self {
        self.state.extras.admin = Some(store);
        self
    }

    /// Serves `GET /metrics` from this Prometheus recorder instead of the one
    /// [`install_prometheus`] installs.
    pub fn prometheus(mut self, handle: PrometheusHandle) -> Self {
        self.state.extras.prometheus = Some(handle);
        self
    }
}

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/horizon", get(horizon))
        .route("/metrics", get(prometheus))
}

async fn page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}

/// `GET /horizon`: the stream horizon, the head, and the oldest transaction holding it back.
async fn horizon(State(state): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    let admin = state.extras.admin.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "the horizon is known for a PostgreSQL store only \
             (eventuate_server::Server::postgres_admin)",
        )
    })?;
    let horizon = admin
        .horizon()
        .await
        .map_err(|e| ApiError::unavailable("store_unavailable", e.to_string()))?;
    let oldest = horizon.oldest.map(|t| {
        json!({
            "pid": t.pid,
            "xid": t.xid,
            "ageMs": u64::try_from(t.age.as_millis()).unwrap_or(u64::MAX),
            "state": t.state,
            "query": t.query,
            "user": t.user,
            "application": t.application,
        })
    });
    Ok(axum::Json(json!({
        "horizon": horizon.horizon,
        "head": horizon.head.to_string(),
        "oldest": oldest,
        "at": millis(std::time::SystemTime::now()),
    })))
}

/// `GET /metrics`: the Prometheus text format. With a runtime, its status is read first, so
/// that the lag gauges are current.
async fn prometheus(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = state.extras.prometheus.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "another metrics recorder was installed before the server's: serve it yourself, \
             or pass its handle with eventuate_server::Server::prometheus",
        )
    })?;
    if let Some(running) = &state.running
        && let Err(e) = running.status().await
    {
        tracing::warn!(error = %e, "lag gauges not refreshed");
    }
    handle.run_upkeep();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response())
}
