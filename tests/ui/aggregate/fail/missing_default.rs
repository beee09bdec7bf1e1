// An aggregate struct without `Default` (its starting state) is one error, at the struct's
// name, however many command handlers and subscribers use the aggregate.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}
#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
}
#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;
pub struct Open;
pub struct Reopen;

#[aggregate(events = AccountEvent)]
#[derive(Debug)]
pub struct Account {}

#[command_handler]
impl Account {
    fn open(&self, _: &Open) -> Result<Opened, Never> {
        Ok(Opened {})
    }
    fn reopen(&self, _: &Reopen) -> Result<Opened, Never> {
        Ok(Opened {})
    }
    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

pub struct Audit;

#[event_handler(subscribe = Account, id = "audit")]
impl Audit {
    async fn opened(&self, _ctx: &EventContext, _: &Opened) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
