// A command taken by value is cloned (the handler may run again after a conflict), so it must
// be `Clone`; the error is at the command type.
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

#[derive(Debug)]
pub struct Open {
    pub owner: String,
}

#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refused;

#[command_handler]
impl Account {
    fn open(&self, command: Open) -> Result<Opened, Refused> {
        let _ = command.owner;
        Ok(Opened {})
    }

    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
