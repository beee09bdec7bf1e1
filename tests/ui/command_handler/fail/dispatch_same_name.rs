// Dispatched commands are named by the last segment of their type's path, so two commands of
// one `dispatch` block may not share it.
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

mod v1 {
    #[derive(Debug, Clone, serde::Deserialize)]
    pub struct Open {}
}

mod v2 {
    #[derive(Debug, Clone, serde::Deserialize)]
    pub struct Open {}
}

#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refused;

#[command_handler(dispatch)]
impl Account {
    fn open(&self, _: &v1::Open) -> Result<Opened, Refused> {
        Ok(Opened {})
    }

    fn open_again(&self, _: &v2::Open) -> Result<Opened, Refused> {
        Ok(Opened {})
    }

    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
