//! `eventuate schemas export` against a real event store server on a socket, with one
//! registered aggregate; no database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use clap::Parser;
use eventuate_cli::{Cli, Error};
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Opened {
    owner: String,
}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct Open {
    owner: String,
}

#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refused;

#[aggregate(events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Account {}

#[command_handler(dispatch)]
impl Account {
    fn open(&self, command: &Open) -> Result<Opened, Refused> {
        Ok(Opened {
            owner: command.owner.clone(),
        })
    }

    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

async fn cli(args: &[&str]) -> Result<String, Error> {
    let mut argv = vec!["eventuate"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv)?;
    let mut out = Vec::new();
    eventuate_cli::run(cli, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn export_fetches_the_documents_of_a_running_server() {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryEventStore::new());
    let server = eventuate_server::Server::new(store).aggregate::<Account>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
    });

    // Printed: one object by entity type, each the server's document.
    let printed = cli(&["schemas", "export", "--server", &url]).await.unwrap();
    let printed: Value = serde_json::from_str(&printed).unwrap();
    let document = &printed["Account"];
    assert_eq!(document["title"], "Account");
    assert_eq!(
        document["events"]["Opened"]["schema"]["$ref"],
        "#/$defs/Opened"
    );
    assert_eq!(
        document["commands"]["Open"]["schema"]["$ref"],
        "#/$defs/Open"
    );
    assert_eq!(document["$defs"]["Open"]["required"][0], "owner");

    // Written: one file per aggregate.
    let dir = std::env::temp_dir().join(format!("eventuate-schemas-{}", uuid::Uuid::new_v4()));
    let listed = cli(&[
        "schemas",
        "export",
        "--server",
        &url,
        "--dir",
        dir.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let path = dir.join("Account.schema.json");
    assert_eq!(listed.trim(), path.display().to_string());
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(&written, document);
    std::fs::remove_dir_all(&dir).unwrap();

    // An aggregate the server does not have, and a server that is not there.
    let unknown = cli(&[
        "schemas",
        "export",
        "--server",
        &url,
        "--entity-type",
        "Order",
    ])
    .await
    .unwrap_err();
    assert!(
        unknown
            .to_string()
            .contains("no aggregate `Order`; it has: Account"),
        "{unknown}"
    );
    let https = cli(&["schemas", "export", "--server", "https://example.invalid"])
        .await
        .unwrap_err();
    assert!(https.to_string().contains("only plain `http://"), "{https}");

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}
