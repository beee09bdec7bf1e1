//! Request parsing with messages that name the field at fault: JSON bodies (read as a
//! `serde_json::Value`, then field by field), query strings and path segments.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The body limit the router applies ([`crate::ServerOptions::body_limit`]), a request
/// extension, so that a 413 can say what the limit is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimit(pub usize);

/// The request body as bytes; over the body limit a JSON 413 naming the limit (`max`, in
/// bytes), a body that cannot be read a 400.
#[derive(Debug)]
pub(crate) struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let limit = request.extensions().get::<BodyLimit>().copied();
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() != StatusCode::PAYLOAD_TOO_LARGE {
                    return ApiError::invalid("body", rejection.body_text());
                }
                match limit {
                    Some(BodyLimit(max)) => ApiError::too_large(format!(
                        "the request body is over the server's limit of {max} bytes"
                    ))
                    .with("max", max),
                    None => ApiError::too_large(format!(
                        "the request body is over the server's limit: {}",
                        rejection.body_text()
                    )),
                }
            })?;
        Ok(Body(bytes))
    }
}

/// A JSON object body; anything else is a 400 (413 over the body limit).
#[derive(Debug)]
pub(crate) struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Body(bytes) = Body::from_request(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid(
                "body",
                "the request body is empty; send a JSON object",
            ));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(JsonObject(map)),
            Ok(_) => Err(ApiError::invalid(
                "body",
                "the request body must be a JSON object",
            )),
            Err(e) => Err(ApiError::invalid("body", format!("invalid JSON body: {e}"))),
        }
    }
}

/// Path parameters; a segment that does not decode (bad percent-encoding, not UTF-8) is a 400.
#[derive(Debug)]
pub(crate) struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|rejection| ApiError::invalid("path", rejection.body_text()))
    }
}

/// The query string as decoded `(name, value)` pairs.
#[derive(Debug, Default)]
pub(crate) struct Query(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(query) = parts.uri.query() else {
            return Ok(Query::default());
        };
        let mut pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name).ok_or_else(|| {
                ApiError::invalid(
                    "query",
                    "the query string is not valid percent-encoded UTF-8",
                )
            })?;
            let value = decode(value).ok_or_else(|| {
                ApiError::invalid(
                    name.clone(),
                    format!("query parameter `{name}` is not valid percent-encoded UTF-8"),
                )
            })?;
            pairs.push((name, value));
        }
        Ok(Query(pairs))
    }
}

impl Query {
    /// The value of `name` (the first one when repeated).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Refuses parameters other than `known`: a misspelt parameter must not be ignored.
    pub(crate) fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(n, _)| !known.contains(&n.as_str())) {
            None => Ok(()),
            Some((name, _)) => Err(ApiError::invalid(
                name.clone(),
                format!(
                    "unknown query parameter `{name}`; this route takes: {}",
                    known.join(", ")
                ),
            )),
        }
    }

    /// An integer parameter within `min..=max`, or `default` when absent.
    pub(crate) fn number(
        &self,
        name: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(
                    name,
                    format!("`{name}` must be an integer from {min} to {max}, not `{text}`"),
                )),
            },
        }
    }
}

/// Percent-decodes (and `+` as a space, as forms encode it); `None` if not UTF-8 or malformed.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A string field of a JSON body: `Ok(None)` when absent or null.
pub(crate) fn opt_string(
    body: &Map<String, Value>,
    field: &str,
) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::invalid(
            field,
            format!("`{field}` must be a string, not {}", kind(other)),
        )),
    }
}

/// What kind of JSON value this is, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(decode("a%2Cb+c").as_deref(), Some("a,b c"));
        assert_eq!(decode("%00").as_deref(), Some("\0"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("%ff"), None);
    }
}
