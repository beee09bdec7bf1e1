//! `SubscriberFixture` and renamed entity types: told the aggregate (`.aggregate::<A>()`, as
//! the runtime is told with `Eventuate::aggregate`), it delivers the rows stored under the
//! older name to a subscriber of the current one, naming the current type in the context;
//! not told, it delivers what the subscription names and nothing else, as the runtime would.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use eventuate_core::prelude::*;
use eventuate_core::store::{AppendRequest, ExpectedVersion};
use eventuate_core::{EventStore, NewEvent, SubscriberFixture};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketOpened {
    pub title: String,
}

#[derive(Debug, Clone, Events)]
pub enum TicketEvent {
    Opened(TicketOpened),
}

/// Stored as `Issue` by the release before the rename.
#[aggregate(name = "Ticket", aliases("Issue"), events = TicketEvent)]
#[derive(Debug, Default)]
pub struct Ticket {
    title: String,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

#[derive(Debug)]
pub struct Open {
    pub title: String,
}

#[command_handler]
impl Ticket {
    fn open(&self, c: &Open) -> Result<TicketOpened, Never> {
        Ok(TicketOpened {
            title: c.title.clone(),
        })
    }
    #[apply]
    fn opened(&mut self, e: &TicketOpened) {
        self.title = e.title.clone();
    }
}

/// Records (the entity type its context names, the stored row's type, the title).
#[derive(Debug, Clone, Default)]
pub struct Titles {
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

#[event_handler(subscribe = Ticket, id = "titles")]
impl Titles {
    async fn on_opened(&self, ctx: &EventContext, e: &TicketOpened) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push((
            ctx.entity_type().to_owned(),
            ctx.event().entity_type.clone(),
            e.title.clone(),
        ));
        Ok(())
    }
}

/// One `TicketOpened` stored under `entity_type`, as a release of that name wrote it.
async fn stored_under(fixture: &SubscriberFixture<Titles>, entity_type: &str, id: &str) {
    let payload = serde_json::to_string(&TicketOpened {
        title: format!("{entity_type} {id}"),
    })
    .unwrap();
    fixture
        .store()
        .append(AppendRequest {
            entity_type: entity_type.into(),
            entity_id: id.into(),
            expected: ExpectedVersion::New,
            events: vec![NewEvent::new("TicketOpened", payload)],
            idempotency: None,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn told_the_aggregate_the_fixture_delivers_rows_under_its_older_name() {
    let titles = Titles::default();
    let mut fixture = SubscriberFixture::new(titles.clone()).aggregate::<Ticket>();
    stored_under(&fixture, "Issue", "old").await;
    stored_under(&fixture, "Ticket", "new").await;
    let delivery = fixture.deliver().await;
    assert_eq!(delivery.failures().count(), 0);
    assert_eq!(
        *titles.seen.lock().unwrap(),
        vec![
            ("Ticket".into(), "Issue".into(), "Issue old".into()),
            ("Ticket".into(), "Ticket".into(), "Ticket new".into()),
        ],
        "the old row under the current name in its context, the stored row kept"
    );
}

#[tokio::test]
async fn not_told_the_fixture_delivers_only_the_subscribed_name() {
    let titles = Titles::default();
    let mut fixture = SubscriberFixture::new(titles.clone());
    stored_under(&fixture, "Issue", "old").await;
    stored_under(&fixture, "Ticket", "new").await;
    fixture.deliver().await;
    assert_eq!(
        *titles.seen.lock().unwrap(),
        vec![("Ticket".into(), "Ticket".into(), "Ticket new".into())]
    );
}
