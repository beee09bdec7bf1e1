// A command handler that mutates the aggregate, or takes `self` by value.
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
pub struct Account {
    open: bool,
}

#[derive(Debug, Clone)]
pub struct Open;
#[derive(Debug, Clone)]
pub struct Close;

#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refused;

#[command_handler]
impl Account {
    fn open(&mut self, _: Open) -> Result<Opened, Refused> {
        self.open = true;
        Ok(Opened {})
    }

    fn close(self, _: Close) -> Result<Opened, Refused> {
        Ok(Opened {})
    }

    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
