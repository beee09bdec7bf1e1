//! `eventuate schemas export --server URL [--dir DIR] [--entity-type T]`: fetches the JSON
//! Schema documents of the aggregates registered with a running event store server
//! (`GET /schemas`, `GET /schemas/{entityType}`) and prints them, or writes one file per
//! aggregate, `<DIR>/<entityType>.schema.json`.
//!
//! The CLI does not link the application's aggregates, so it asks the server that does. (An
//! application can also write its documents itself: `eventuate_core::schemas::schema::<A>()`.)
//! Plain `http://` only: the server has no TLS listener of its own.

use std::io::Write;
use std::path::PathBuf;

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};

use crate::Error;

/// The server's address, from `http://host:port[/prefix]`.
#[derive(Debug)]
struct Server {
    authority: String,
    prefix: String,
}

fn parse_url(url: &str) -> Result<Server, Error> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!(
            "--server `{url}`: only plain `http://host:port` URLs are supported (the event store \
             server has no TLS listener)"
        )
    })?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        return Err(format!("--server `{url}` has no host").into());
    }
    Ok(Server {
        authority: authority.to_owned(),
        prefix: path.trim_end_matches('/').to_owned(),
    })
}

/// `GET path` on the server: the body as JSON, or an error with the server's explanation.
async fn get(server: &Server, path: &str) -> Result<Value, Error> {
    let target = if server.prefix.is_empty() {
        path.to_owned()
    } else {
        format!("/{}{path}", server.prefix)
    };
    let stream = tokio::net::TcpStream::connect(&server.authority)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", server.authority))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{}: {e}", server.authority))?;
    let driver = tokio::spawn(connection);
    let request = Request::get(&target)
        .header(hyper::header::HOST, &server.authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {target}: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {target}: {e}"))?
        .to_bytes();
    drop(sender);
    driver.abort();
    let json: Value = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "GET {target}: {status}, not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    })?;
    if !status.is_success() {
        let explanation = json["explanation"].as_str().unwrap_or("no explanation");
        return Err(format!("GET {target}: {status}: {explanation}").into());
    }
    Ok(json)
}

/// Entity types become file names: only the characters of a valid entity type pass
/// (identifier characters, `-`, `.`), so a hostile server cannot name a path.
fn file_name(entity_type: &str) -> Result<String, Error> {
    let ok = !entity_type.is_empty()
        && !entity_type.starts_with('.')
        && entity_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(format!("{entity_type}.schema.json"))
    } else {
        Err(
            format!("the server lists an entity type unfit for a file name: `{entity_type}`")
                .into(),
        )
    }
}

/// Runs `schemas export`.
pub async fn export(
    url: &str,
    dir: Option<PathBuf>,
    only: &[String],
    out: &mut dyn Write,
) -> Result<(), Error> {
    let server = parse_url(url)?;
    let list = get(&server, "/schemas").await?;
    let listed: Vec<String> = list["aggregates"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|a| a["entityType"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let wanted: Vec<String> = if only.is_empty() {
        listed.clone()
    } else {
        for name in only {
            if !listed.contains(name) {
                return Err(format!(
                    "the server has no aggregate `{name}`; it has: {}",
                    if listed.is_empty() {
                        "none".to_owned()
                    } else {
                        listed.join(", ")
                    }
                )
                .into());
            }
        }
        only.to_vec()
    };
    let mut documents = Map::new();
    for name in &wanted {
        documents.insert(
            name.clone(),
            get(&server, &format!("/schemas/{name}")).await?,
        );
    }
    match dir {
        None => {
            serde_json::to_writer_pretty(&mut *out, &Value::Object(documents))?;
            writeln!(out)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            for (name, document) in &documents {
                let path = dir.join(file_name(name)?);
                let mut text = serde_json::to_string_pretty(document)?;
                text.push('\n');
                std::fs::write(&path, text)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                writeln!(out, "{}", path.display())?;
            }
            if documents.is_empty() {
                writeln!(
                    out,
                    "the server has no registered aggregates: nothing written"
                )?;
            }
        }
    }
    Ok(())
}
