// A command handler returns events of its aggregate: a type that is not a variant of the event
// set is reported at that type, as one event, an element of a `Vec` or of a tuple.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Withdrawn {}
mod ledger {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    pub struct Audited {}
}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
}

#[aggregate(events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Account {}

#[derive(Debug, Clone)]
pub struct Open;
#[derive(Debug, Clone)]
pub struct Withdraw;
#[derive(Debug, Clone)]
pub struct Audit;

#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Nope;

#[command_handler]
impl Account {
    fn open(&self, _: Open) -> Result<(Opened, Withdrawn), Nope> {
        Ok((Opened {}, Withdrawn {}))
    }

    fn withdraw(&self, _: &Withdraw) -> Result<Withdrawn, Nope> {
        Ok(Withdrawn {})
    }

    fn audit(&self, _: &Audit) -> Result<Vec<ledger::Audited>, Nope> {
        Ok(Vec::new())
    }

    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
