//! The HTTP API (JSON in and out).
//!
//! | request | success | errors |
//! | --- | --- | --- |
//! | `POST /customers` `{"name", "credit_limit"}` | 201 the customer (200 on a repeat with the same `Idempotency-Key`) | 400, 409 |
//! | `GET /customers/{id}` | 200 the customer view | 404 |
//! | `POST /orders` `{"customer_id", "total"}` | 201 the order, `Pending` (200 and its current state on a repeat with the same `Idempotency-Key`) | 400, 409, 422 |
//! | `GET /orders/{id}` | 200 the order | 404 |
//!
//! Amounts are integer cents. Every error has the body `{"error": "..."}`:
//! - **400**: the request itself is wrong: a body that is not JSON, a missing field, a field of
//!   the wrong type, an empty name, an amount of zero or less, a bad `Idempotency-Key`;
//! - **404**: no customer or order has the id in the path (or no such route);
//! - **409**: the `Idempotency-Key` was already used for a different request, or the entity
//!   changed concurrently too often to apply the command;
//! - **422**: a well-formed order names a customer that does not exist;
//! - **500**: the store failed.
//!
//! `POST /orders` honours an `Idempotency-Key` header: the order's id is derived from it (UUID
//! v5), so a retried request finds the order it created instead of creating another. The same
//! holds for `POST /customers`. An `X-Request-Id` header (or a fresh one) is recorded on the
//! events the request causes, and on the events *they* cause through the saga.
//!
//! `GET /customers/{id}` reads the view, which is updated asynchronously: a customer created a
//! moment ago may answer 404 for a moment.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use eventuate_core::{CommandOptions, Error, Repository};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::Role;
use crate::customer::{CreateCustomer, Customer};
use crate::money::Money;
use crate::order::{CreateOrder, Order, OrderState};
use crate::query::CustomerViewQuery;
use crate::tables::Tables;

/// Namespaces of the UUID v5 ids derived from idempotency keys (one per entity type, so one
/// key used for a customer and for an order yields two different ids).
const CUSTOMER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x4d0c_1f52_8f4e_4b8e_9a53_2a5e_c0de_0001);
const ORDER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x4d0c_1f52_8f4e_4b8e_9a53_2a5e_c0de_0002);

/// The request id header, recorded on events as the `request-id` header.
pub const REQUEST_ID: &str = "x-request-id";
/// The idempotency key header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Clone, Debug)]
struct HttpState {
    repository: Repository,
    views: CustomerViewQuery,
}

/// The routes of `role`, over `repository` (commands, orders) and `tables` (the view).
pub fn router(repository: Repository, tables: Tables, role: Role) -> Router {
    let state = HttpState {
        repository,
        views: CustomerViewQuery::new(tables),
    };
    let mut router = Router::new();
    if role.customers() {
        router = router
            .route("/customers", post(create_customer))
            .route("/customers/{id}", get(get_customer));
    }
    if role.orders() {
        router = router
            .route("/orders", post(create_order))
            .route("/orders/{id}", get(get_order));
    }
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .with_state(state)
}

// ---- requests and responses ----

#[derive(Debug, Deserialize)]
struct CreateCustomerRequest {
    name: String,
    credit_limit: Money,
}

/// The answer to `POST /customers`: the customer as the command left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerResponse {
    /// The customer's id.
    pub customer_id: String,
    /// Display name.
    pub name: String,
    /// Credit limit.
    pub credit_limit: Money,
}

#[derive(Debug, Deserialize)]
struct CreateOrderRequest {
    customer_id: String,
    total: Money,
}

/// An order: the answer to `POST /orders` and `GET /orders/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderResponse {
    /// The order's id.
    pub order_id: String,
    /// The customer.
    pub customer_id: String,
    /// The total.
    pub total: Money,
    /// Where the saga is.
    pub state: OrderState,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection_reason: Option<String>,
}

impl OrderResponse {
    fn new(order_id: &str, order: &Order) -> Self {
        OrderResponse {
            order_id: order_id.to_owned(),
            customer_id: order.customer_id().to_owned(),
            total: order.total(),
            state: order.state(),
            rejection_reason: order.rejection_reason().map(str::to_owned),
        }
    }
}

// ---- handlers ----

async fn create_customer(
    State(state): State<HttpState>,
    meta: RequestMeta,
    JsonBody(request): JsonBody<CreateCustomerRequest>,
) -> Result<Response, ApiError> {
    let name = request.name.trim().to_owned();
    if name.is_empty() {
        return Err(ApiError::bad_request("`name` must not be empty"));
    }
    if !request.credit_limit.is_positive() {
        return Err(ApiError::bad_request(format!(
            "`credit_limit` must be above zero (in cents), not {}",
            request.credit_limit.as_cents()
        )));
    }
    let id = meta.entity_id(CUSTOMER_ID_NAMESPACE);
    let command = CreateCustomer {
        name: name.clone(),
        credit_limit: request.credit_limit,
    };
    let options = meta.command_options("POST /customers");
    let (status, customer) = match state
        .repository
        .create_with::<Customer>(Some(id.clone()), command, options)
        .await
    {
        Ok(created) => (StatusCode::CREATED, created.state),
        Err(Error::EntityExists { .. }) if meta.idempotency_key.is_some() => {
            let existing = state.repository.load::<Customer>(&id).await?.state;
            if existing.name() != name || existing.credit_limit() != request.credit_limit {
                return Err(meta.key_reused());
            }
            (StatusCode::OK, existing)
        }
        Err(e) => return Err(e.into()),
    };
    let body = CustomerResponse {
        customer_id: id.clone(),
        name: customer.name().to_owned(),
        credit_limit: customer.credit_limit(),
    };
    Ok(meta.respond(status, format!("/customers/{id}"), body))
}

async fn get_customer(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<crate::query::CustomerView>, ApiError> {
    match state.views.find(&id).await {
        Ok(Some(view)) => Ok(Json(view)),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("customer `{id}` not found"),
        )),
        Err(e) => Err(ApiError::internal(e)),
    }
}

async fn create_order(
    State(state): State<HttpState>,
    meta: RequestMeta,
    JsonBody(request): JsonBody<CreateOrderRequest>,
) -> Result<Response, ApiError> {
    if request.customer_id.trim().is_empty() {
        return Err(ApiError::bad_request("`customer_id` must not be empty"));
    }
    if !request.total.is_positive() {
        return Err(ApiError::bad_request(format!(
            "`total` must be above zero (in cents), not {}",
            request.total.as_cents()
        )));
    }
    let unknown_customer = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("customer `{}` does not exist", request.customer_id),
        )
    };
    // The order side reads the customer's stream only to refuse orders for nobody at once;
    // the credit itself is checked by the customer side, asynchronously.
    match state
        .repository
        .find::<Customer>(&request.customer_id)
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) | Err(Error::InvalidName { .. }) => return Err(unknown_customer()),
        Err(e) => return Err(e.into()),
    }
    let id = meta.entity_id(ORDER_ID_NAMESPACE);
    let command = CreateOrder {
        customer_id: request.customer_id.clone(),
        total: request.total,
    };
    let options = meta.command_options("POST /orders");
    let (status, order) = match state
        .repository
        .create_with::<Order>(Some(id.clone()), command, options)
        .await
    {
        Ok(created) => (StatusCode::CREATED, created.state),
        Err(Error::EntityExists { .. }) if meta.idempotency_key.is_some() => {
            let existing = state.repository.load::<Order>(&id).await?.state;
            if existing.customer_id() != request.customer_id || existing.total() != request.total {
                return Err(meta.key_reused());
            }
            (StatusCode::OK, existing)
        }
        Err(e) => return Err(e.into()),
    };
    let body = OrderResponse::new(&id, &order);
    Ok(meta.respond(status, format!("/orders/{id}"), body))
}

async fn get_order(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Json<OrderResponse>, ApiError> {
    match state.repository.find::<Order>(&id).await {
        Ok(Some(loaded)) => Ok(Json(OrderResponse::new(&id, &loaded.state))),
        Ok(None) | Err(Error::InvalidName { .. }) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("order `{id}` not found"),
        )),
        Err(e) => Err(e.into()),
    }
}

// ---- request metadata ----

/// The request id and idempotency key of a request.
#[derive(Debug)]
struct RequestMeta {
    request_id: String,
    idempotency_key: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let header = |name: &str| -> Result<Option<String>, ApiError> {
            match parts.headers.get(name) {
                None => Ok(None),
                Some(value) => match value.to_str() {
                    Ok(text) if !text.trim().is_empty() && text.len() <= 200 => {
                        Ok(Some(text.trim().to_owned()))
                    }
                    _ => Err(ApiError::bad_request(format!(
                        "the `{name}` header must be 1 to 200 visible ASCII characters"
                    ))),
                },
            }
        };
        Ok(RequestMeta {
            request_id: header(REQUEST_ID)?.unwrap_or_else(|| Uuid::new_v4().to_string()),
            idempotency_key: header(IDEMPOTENCY_KEY)?,
        })
    }
}

impl RequestMeta {
    /// The new entity's id: derived from the idempotency key, or fresh.
    fn entity_id(&self, namespace: Uuid) -> String {
        match &self.idempotency_key {
            Some(key) => Uuid::new_v5(&namespace, key.as_bytes()).to_string(),
            None => Uuid::new_v4().to_string(),
        }
    }

    /// The command's options: the request id and the route, copied onto every event of the
    /// chain the command starts.
    fn command_options(&self, route: &str) -> CommandOptions {
        let mut options = CommandOptions::default()
            .header("request-id", &self.request_id)
            .header("http", route);
        if let Some(key) = &self.idempotency_key {
            options = options.header("idempotency-key", key);
        }
        options
    }

    fn key_reused(&self) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Idempotency-Key `{}` was already used for a different request",
                self.idempotency_key.as_deref().unwrap_or_default()
            ),
        )
    }

    fn respond(&self, status: StatusCode, location: String, body: impl Serialize) -> Response {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, value);
        }
        if let Ok(value) = HeaderValue::from_str(&self.request_id) {
            headers.insert(HeaderName::from_static(REQUEST_ID), value);
        }
        (status, headers, Json(body)).into_response()
    }
}

// ---- JSON bodies ----

/// A JSON request body; anything wrong with it is a 400 with a message (axum's own `Json`
/// answers 415 or 422 for some cases, and in plain text).
#[derive(Debug)]
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "the request body is empty; send a JSON object",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

// ---- errors ----

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::EntityNotFound { .. } => Self::new(StatusCode::NOT_FOUND, error.to_string()),
            Error::EntityExists { .. }
            | Error::Conflict { .. }
            | Error::RetriesExhausted { .. } => Self::new(StatusCode::CONFLICT, error.to_string()),
            // The HTTP layer checks what it can first; what the aggregate still refuses is a
            // well-formed request that the business rules do not allow.
            Error::Rejected { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
            }
            Error::InvalidName { .. } => Self::bad_request(error.to_string()),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}
