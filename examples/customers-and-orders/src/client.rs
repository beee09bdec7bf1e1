//! An in-process HTTP client: sends requests through the axum [`Router`] (routing, extractors,
//! JSON, status codes: everything but the socket), for the scripted scenario and the tests.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use eventuate_core::BoxError;
use serde_json::Value;
use tower::ServiceExt;

/// A response: status, headers, and the body as JSON (`Null` when empty, a string when the
/// body is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Value,
}

impl Reply {
    /// A string field of the body (empty when missing).
    pub fn str(&self, field: &str) -> &str {
        self.body[field].as_str().unwrap_or_default()
    }
}

/// Sends requests to a router.
#[derive(Clone, Debug)]
pub struct Client {
    router: Router,
}

impl Client {
    /// A client of `router`.
    pub fn new(router: Router) -> Self {
        Client { router }
    }

    /// `GET uri`.
    pub async fn get(&self, uri: &str) -> Result<Reply, BoxError> {
        self.send(Method::GET, uri, &[], None).await
    }

    /// `POST uri` with a JSON body (given as text, so tests can send malformed JSON) and
    /// extra headers.
    pub async fn post(
        &self,
        uri: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, BoxError> {
        self.send(Method::POST, uri, headers, Some(body)).await
    }

    /// Any request.
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Reply, BoxError> {
        let mut request = Request::builder().method(method).uri(uri);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::from(body.unwrap_or_default().to_owned()))?;
        let response = self.router.clone().oneshot(request).await?;
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Polls `GET uri` until `done` holds for the reply, or fails after `timeout` with the
    /// last reply.
    pub async fn poll(
        &self,
        uri: &str,
        timeout: Duration,
        mut done: impl FnMut(&Reply) -> bool,
    ) -> Result<Reply, BoxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let reply = self.get(uri).await?;
            if done(&reply) {
                return Ok(reply);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "GET {uri}: condition not met within {timeout:?}; last reply {} {}",
                    reply.status, reply.body
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
