//! The runtime's operations: `GET /subscribers`, `GET /subscribers/{id}/parked`,
//! `POST /subscribers/{id}/parked/replay` and `POST /subscribers/{id}/parked/skip`, over
//! [`Running`] and, when the server serves STOMP over WebSocket
//! ([`crate::Server::stomp_over_websocket`]), over the STOMP server's subscribers too: those
//! with a client now (their runtime's status) and those subscribed in this process since it
//! started (their stored partitions). Without either they answer 404.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use eventuate_core::Position;
use eventuate_core::runtime::ParkedEvent;
use eventuate_core::runtime::{LAG_COUNT_LIMIT, PartitionStatus, Running, ShapeView};
use serde_json::{Value, json};

use crate::AppState;
use crate::entities::{event_json, millis, parse_position};
use crate::error::ApiError;
use crate::input::{PathParams, Query};

const NOTHING_RUNS: &str = "this server runs no subscribers: the operations routes need the \
     runtime (eventuate_server::Server::operations) or the STOMP server \
     (eventuate_server::Server::stomp_over_websocket)";

/// Where a subscriber's parked events are handled: its runtime, or the STOMP server's store.
enum Owner<'a> {
    Runtime(&'a Arc<Running>),
    Stomp(&'a crate::StompServer),
}

impl Owner<'_> {
    async fn parked(&self, id: &str) -> eventuate_core::Result<Vec<ParkedEvent>> {
        match self {
            Owner::Runtime(running) => running.parked(id).await,
            Owner::Stomp(stomp) => stomp.registry().subscription_store().parked(id).await,
        }
    }

    async fn replay(&self, id: &str, entity: Option<(&str, &str)>) -> eventuate_core::Result<u64> {
        match self {
            Owner::Runtime(running) => running.replay(id, entity).await,
            Owner::Stomp(stomp) => {
                stomp
                    .registry()
                    .subscription_store()
                    .request_replay(id, entity)
                    .await
            }
        }
    }

    async fn skip(&self, id: &str, position: Position) -> eventuate_core::Result<bool> {
        match self {
            Owner::Runtime(running) => running.skip_parked(id, position).await,
            Owner::Stomp(stomp) => {
                stomp
                    .registry()
                    .subscription_store()
                    .skip_parked(id, position)
                    .await
            }
        }
    }
}

fn shape(view: &ShapeView) -> Value {
    match view {
        ShapeView::Unknown => json!({ "state": "unknown" }),
        ShapeView::Agreed { generation } => json!({ "state": "agreed", "generation": generation }),
        ShapeView::Reshaping => json!({ "state": "reshaping" }),
        ShapeView::Mismatch { stored } => {
            json!({ "state": "mismatch", "stored": stored.to_string() })
        }
    }
}

fn partition_json(partition: &PartitionStatus, parked: u64) -> Value {
    json!({
        "partition": partition.partition,
        "owned": partition.owned,
        "owner": partition.owner.map(|o| o.to_string()),
        "unownedForMs": partition.unowned_for.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "shape": shape(&partition.shape),
        "position": partition.position.to_string(),
        "lag": partition.lag,
        "lagCapped": partition.lag >= LAG_COUNT_LIMIT,
        "parked": parked,
        "delivered": partition.delivered,
        "retried": partition.retried,
        "unknownEntityTypes": partition.unknown_entity_types,
    })
}

/// One subscriber's entry: its partitions with their parked counts.
async fn subscriber_json(
    owner: &Owner<'_>,
    id: &str,
    partitions: &[PartitionStatus],
) -> Result<Value, ApiError> {
    let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
    for parked in owner.parked(id).await? {
        *counts.entry(parked.partition).or_insert(0) += 1;
    }
    let listed: Vec<Value> = partitions
        .iter()
        .map(|p| partition_json(p, counts.get(&p.partition).copied().unwrap_or(0)))
        .collect();
    Ok(json!({
        "subscriberId": id,
        "parked": counts.values().sum::<u64>(),
        "partitions": listed,
    }))
}

/// `GET /subscribers`: every partition of every subscriber (STOMP subscribers say so, with
/// their number of clients in this process).
pub(crate) async fn subscribers(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.running.is_none() && state.stomp.is_none() {
        return Err(ApiError::not_found(NOTHING_RUNS));
    }
    let mut subscribers = Vec::new();
    let mut node = None;
    if let Some(running) = &state.running {
        node = Some(running.node_id().to_string());
        let mut by_subscriber: BTreeMap<String, Vec<PartitionStatus>> = BTreeMap::new();
        for partition in running.status().await? {
            by_subscriber
                .entry(partition.subscriber_id.clone())
                .or_default()
                .push(partition);
        }
        let owner = Owner::Runtime(running);
        for (id, partitions) in &by_subscriber {
            subscribers.push(subscriber_json(&owner, id, partitions).await?);
        }
    }
    if let Some(stomp) = &state.stomp {
        node.get_or_insert_with(|| stomp.server_options().runtime.node_id.to_string());
        let owner = Owner::Stomp(stomp);
        for (id, listed) in stomp.registry().list().await? {
            let mut entry = subscriber_json(&owner, &id, &listed.partitions).await?;
            entry["stomp"] = json!({ "clients": listed.clients });
            subscribers.push(entry);
        }
    }
    Ok(Json(json!({
        "nodeId": node,
        "subscribers": subscribers,
    })))
}

/// Who handles `id`'s parked events; 404 unless it is a subscriber the runtime runs or a
/// STOMP subscriber of this process.
async fn owner<'a>(state: &'a AppState, id: &str) -> Result<Owner<'a>, ApiError> {
    eventuate_core::name::validate_subscriber_id(id)?;
    if state.running.is_none() && state.stomp.is_none() {
        return Err(ApiError::not_found(NOTHING_RUNS));
    }
    if let Some(running) = &state.running
        && running
            .status()
            .await?
            .iter()
            .any(|p| p.subscriber_id == id)
    {
        return Ok(Owner::Runtime(running));
    }
    if let Some(stomp) = &state.stomp
        && stomp.registry().knows(id)
    {
        return Ok(Owner::Stomp(stomp));
    }
    Err(ApiError::not_found(format!(
        "no subscriber `{id}` runs here (GET /subscribers lists them)"
    )))
}

/// `GET /subscribers/{id}/parked`.
pub(crate) async fn parked(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    let owner = owner(&state, &id).await?;
    let parked: Vec<Value> = owner
        .parked(&id)
        .await?
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "event": event_json(&p.event),
                "attempts": p.attempts,
                "error": p.error,
                "parkedAt": millis(p.parked_at),
                "replayRequested": p.replay_requested,
            })
        })
        .collect();
    Ok(Json(json!({ "subscriberId": id, "parked": parked })))
}

/// `POST /subscribers/{id}/parked/replay[?entityType=&entityId=]`.
pub(crate) async fn replay(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    query: Query,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    query.only(&["entityType", "entityId"])?;
    let entity = match (query.get("entityType"), query.get("entityId")) {
        (None, None) => None,
        (Some(t), Some(i)) => {
            eventuate_core::name::validate_entity_type(t)?;
            eventuate_core::name::validate_entity_id(i)?;
            Some((t, i))
        }
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "entityId",
                "`entityType` without `entityId`: name one entity, or neither to replay all",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "entityType",
                "`entityId` without `entityType`: name one entity, or neither to replay all",
            ));
        }
    };
    let owner = owner(&state, &id).await?;
    let requested = owner.replay(&id, entity).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "subscriberId": id, "replayRequested": requested })),
    ))
}

/// `POST /subscribers/{id}/parked/skip?position=<tx>/<seq>`: drops one parked event for good
/// (fenced: see [`eventuate_core::runtime::SubscriptionStore::skip_parked`]).
pub(crate) async fn skip(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    query.only(&["position"])?;
    let Some(text) = query.get("position") else {
        return Err(ApiError::invalid(
            "position",
            "name the parked event by its `position` (`transaction/sequence`, as \
             GET /subscribers/{id}/parked shows it)",
        ));
    };
    let position = parse_position("position", text)?;
    let owner = owner(&state, &id).await?;
    if !owner.skip(&id, position).await? {
        return Err(ApiError::not_found(format!(
            "subscriber `{id}` has no parked event at {position} (GET /subscribers/{id}/parked \
             lists them)"
        )));
    }
    Ok(Json(
        json!({ "subscriberId": id, "skipped": position.to_string() }),
    ))
}
