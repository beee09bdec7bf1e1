// `#[command_handler]` takes only `dispatch`, without a value.
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

#[derive(Debug, Clone, Deserialize)]
pub struct Open {}

#[derive(Debug, Clone, Deserialize)]
pub struct Close {}

#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refused;

#[command_handler(dispach)]
impl Account {
    fn open(&self, _: &Open) -> Result<Opened, Refused> {
        Ok(Opened {})
    }

    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

#[command_handler(dispatch = true)]
impl Account {
    fn close(&self, _: &Close) -> Result<Vec<Opened>, Refused> {
        Ok(Vec::new())
    }
}

fn main() {}
