// Command handlers decide on the state; they do no I/O, so they are not `async`.
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
    async fn open(&self, _: Open) -> Result<Opened, Refused> {
        Ok(Opened {})
    }

    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
