//! Errors as JSON: every answer that is not a success has the body
//! `{"error": <stable code>, "explanation": <message>, ...}`, plus `field` (the request field
//! at fault) for 400s and `actualVersion` for version conflicts. The codes are the API; the
//! explanations are for people and may change.
//!
//! | status | `error` | when |
//! | --- | --- | --- |
//! | 400 | `invalid_input` | a malformed body, query or path; `field` names what is wrong |
//! | 404 | `not_found` | no such route, entity or subscriber |
//! | 405 | `method_not_allowed` | a known path with another method |
//! | 409 | `optimistic_lock_error` | `expectedVersion` is not the entity's version (`actualVersion`) |
//! | 409 | `entity_exists` | a create names an entity that has events (`actualVersion`) |
//! | 409 | `entity_under_several_types` | the entity has events under two of its aggregate's names (an entity type alias): keep one history (`storedUnder`) |
//! | 409 | `duplicate_event` | a client-chosen `eventId` is already stored |
//! | 413 | `payload_too_large` | the body is over the server's limit (`max`, in bytes), the request has more than [`crate::entities::MAX_EVENTS_PER_APPEND`] events, or an event is over the store's limit (`size`, `max`) |
//! | 422 | `idempotency_key_reused` | an idempotency key already used for a different request |
//! | 422 | `rejected` | a command's handler refused it: `reason` (its `Display`), `rejection` (its JSON, when it is `Serialize`) |
//! | 422 | `no_events` | a command that was to create an entity produced no events |
//! | 500 | `internal_error` | a bug or stored data the server cannot read |
//! | 503 | `store_unavailable` | the store failed; nothing was written; retry after `Retry-After` |
//! | 503 | `outcome_unknown` | the store failed mid-append: retry with the same idempotency key |
//! | 503 | `timeout` | the request took longer than the server's request timeout |

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use eventuate_core::Error;
use serde_json::{Map, Value, json};

/// Seconds a client is asked to wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error answer: a status, a stable code, an explanation and optional extra fields.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    explanation: String,
    extra: Map<String, Value>,
}

impl ApiError {
    /// An error with `status`, the stable `code` and a message.
    pub fn new(status: StatusCode, code: &'static str, explanation: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            explanation: explanation.into(),
            extra: Map::new(),
        }
    }

    /// 400 `invalid_input` naming the request `field` at fault.
    pub fn invalid(field: impl Into<String>, explanation: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_input", explanation).with("field", field.into())
    }

    /// 404 `not_found`.
    pub fn not_found(explanation: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", explanation)
    }

    /// 413 `payload_too_large`.
    pub fn too_large(explanation: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            explanation,
        )
    }

    /// 503 `code` with `Retry-After`.
    pub fn unavailable(code: &'static str, explanation: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, explanation)
    }

    /// Adds a field to the body.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(name.to_owned(), value.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

/// The request field an invalid name came from.
fn field_of(kind: &str) -> String {
    match kind {
        "entity type" => "entityType".into(),
        "entity id" => "entityId".into(),
        "event type" => "eventType".into(),
        "subscriber id" => "subscriberId".into(),
        other => other.replace(' ', "_"),
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let explanation = error.to_string();
        match error {
            Error::Conflict { actual, .. } => {
                Self::new(StatusCode::CONFLICT, "optimistic_lock_error", explanation)
                    .with("actualVersion", actual)
            }
            Error::EntityExists { version, .. } => {
                Self::new(StatusCode::CONFLICT, "entity_exists", explanation)
                    .with("actualVersion", version)
            }
            Error::RetriesExhausted { .. } => {
                Self::new(StatusCode::CONFLICT, "optimistic_lock_error", explanation)
            }
            Error::DuplicateEventId { event_id, .. } => {
                Self::new(StatusCode::CONFLICT, "duplicate_event", explanation)
                    .with("eventId", event_id.to_string())
            }
            Error::EntityNotFound { .. } => Self::not_found(explanation),
            Error::EntityUnderSeveralTypes { stored_under, .. } => Self::new(
                StatusCode::CONFLICT,
                "entity_under_several_types",
                explanation,
            )
            .with("storedUnder", stored_under),
            Error::EmptyAppend { .. } => Self::invalid("events", explanation),
            Error::InvalidName { kind, .. } => Self::invalid(field_of(kind), explanation),
            Error::InvalidPayload { .. } => Self::invalid("eventData", explanation),
            Error::PayloadTooLarge { size, max, .. } => Self::too_large(explanation)
                .with("size", size)
                .with("max", max),
            Error::IdempotencyMismatch { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this idempotency key was already used for a different request (another \
                 entity, or other events); use a fresh key for a new request",
            ),
            Error::Rejected { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", explanation)
            }
            Error::OutcomeUnknown { .. } => {
                tracing::warn!(error = %explanation, "append outcome unknown");
                Self::unavailable(
                    "outcome_unknown",
                    format!(
                        "{explanation}; send the request again with the same Idempotency-Key \
                         to find out (it is applied at most once)"
                    ),
                )
            }
            Error::Backend { .. }
            | Error::Timeout { .. }
            | Error::OrderingRefused { .. }
            | Error::LeaseLost { .. } => {
                tracing::warn!(error = %explanation, "store unavailable");
                Self::unavailable("store_unavailable", explanation)
            }
            other => {
                tracing::error!(error = %other, "request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    other.to_string(),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), json!(self.code));
        body.insert("explanation".into(), json!(self.explanation));
        body.extend(self.extra);
        let mut response = (self.status, Json(Value::Object(body))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entity_stored_under_two_names_is_a_conflict_that_names_them() {
        let error = ApiError::from(Error::EntityUnderSeveralTypes {
            entity_type: "Order".into(),
            entity_id: "o-1".into(),
            stored_under: vec!["Order".into(), "PurchaseOrder".into()],
        });
        assert_eq!(error.status, StatusCode::CONFLICT);
        assert_eq!(error.code, "entity_under_several_types");
        assert_eq!(
            error.extra.get("storedUnder"),
            Some(&json!(["Order", "PurchaseOrder"]))
        );
    }
}
