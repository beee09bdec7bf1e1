// Two handlers for one command type: the second is reported, naming the first.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
}

#[aggregate(events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Account {}

#[derive(Debug, Clone)]
pub struct Open;

#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refused;

#[command_handler]
impl Account {
    fn open(&self, _: Open) -> Result<Opened, Refused> {
        Ok(Opened {})
    }

    fn open_again(&self, _: &Open) -> Result<Opened, Refused> {
        Ok(Opened {})
    }

    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
