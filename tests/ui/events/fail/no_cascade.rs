// One mistake in the event set is reported once: the aggregate, its command handler and a
// subscriber checked against it still compile against the stubs.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    #[event(name = "not a name")]
    Opened(Opened),
}

#[aggregate(events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Account {}

pub struct Open;

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

#[command_handler]
impl Account {
    fn open(&self, _: &Open) -> Result<Opened, Never> {
        Ok(Opened {})
    }
    #[apply]
    fn opened(&mut self, _: &Opened) {}
}

pub struct Audit;

#[event_handler(subscribe = Account)]
impl Audit {
    async fn on_opened(&self, _: &EventContext, _: &Opened) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
