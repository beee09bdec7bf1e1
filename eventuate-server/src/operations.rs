//! The runtime's operations: `GET /subscribers`, `GET /subscribers/{id}/parked` and
//! `POST /subscribers/{id}/parked/replay`, over [`Running`]. Without a runtime
//! ([`crate::Server::operations`] not set) they answer 404.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use eventuate_core::runtime::{LAG_COUNT_LIMIT, Running, ShapeView};
use serde_json::{Value, json};

use crate::AppState;
use crate::entities::{event_json, millis};
use crate::error::ApiError;
use crate::input::{PathParams, Query};

fn running(state: &AppState) -> Result<&Arc<Running>, ApiError> {
    state.running.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "this server runs no subscribers: the operations routes need the runtime \
             (eventuate_server::Server::operations)",
        )
    })
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

/// `GET /subscribers`: every partition of every subscriber.
pub(crate) async fn subscribers(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let running = running(&state)?;
    let status = running.status().await?;
    let mut by_subscriber: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut parked_counts: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
    for partition in &status {
        if !parked_counts.contains_key(&partition.subscriber_id) {
            let mut counts = BTreeMap::new();
            for parked in running.parked(&partition.subscriber_id).await? {
                *counts.entry(parked.partition).or_insert(0) += 1;
            }
            parked_counts.insert(partition.subscriber_id.clone(), counts);
        }
        let parked = parked_counts
            .get(&partition.subscriber_id)
            .and_then(|c| c.get(&partition.partition))
            .copied()
            .unwrap_or(0);
        by_subscriber
            .entry(partition.subscriber_id.clone())
            .or_default()
            .push(json!({
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
            }));
    }
    let subscribers: Vec<Value> = by_subscriber
        .into_iter()
        .map(|(id, partitions)| {
            let parked: u64 = parked_counts.get(&id).map_or(0, |c| c.values().sum());
            json!({ "subscriberId": id, "parked": parked, "partitions": partitions })
        })
        .collect();
    Ok(Json(json!({
        "nodeId": running.node_id().to_string(),
        "subscribers": subscribers,
    })))
}

/// 404 unless `id` is a subscriber the runtime runs.
async fn known(running: &Running, id: &str) -> Result<(), ApiError> {
    eventuate_core::name::validate_subscriber_id(id)?;
    if running
        .status()
        .await?
        .iter()
        .any(|p| p.subscriber_id == id)
    {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no subscriber `{id}` runs here (GET /subscribers lists them)"
        )))
    }
}

/// `GET /subscribers/{id}/parked`.
pub(crate) async fn parked(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    let running = running(&state)?;
    known(running, &id).await?;
    let parked: Vec<Value> = running
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
    let running = running(&state)?;
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
    known(running, &id).await?;
    let requested = running.replay(&id, entity).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "subscriberId": id, "replayRequested": requested })),
    ))
}
