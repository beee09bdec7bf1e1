// Command handlers take exactly one command after `&self`; a function without `self` is not a
// handler either.
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
    fn open(&self) -> Result<Opened, Refused> {
        Ok(Opened {})
    }

    fn open_for(&self, _: Open, owner: String, limit: u64) -> Result<Opened, Refused> {
        let _ = (owner, limit);
        Ok(Opened {})
    }

    fn helper(x: u64) -> u64 {
        x
    }

    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
