// `#[command_handler(dispatch)]` decodes its commands from JSON by type name, so each must be
// `Deserialize`; the error is at the command type. (Commands that are not stay in a block
// without `dispatch`.)
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

#[derive(Debug, Clone)]
pub struct Close {}

#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refused;

#[command_handler(dispatch)]
impl Account {
    fn open(&self, _: &Open) -> Result<Opened, Refused> {
        Ok(Opened {})
    }

    fn close(&self, _: &Close) -> Result<Vec<Opened>, Refused> {
        Ok(Vec::new())
    }

    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
