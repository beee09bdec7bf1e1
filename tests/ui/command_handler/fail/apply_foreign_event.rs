// An `#[apply]` method takes one of its aggregate's events: a method for any other type would
// never run, so that type is reported, also in a block with other mistakes.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Withdrawn {
    pub amount: u64,
}
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
pub struct Account {
    balance: u64,
}

#[command_handler]
impl Account {
    #[apply]
    fn on_opened(&mut self, _: &Opened) {}

    #[apply]
    fn withdrawn(&mut self, e: &Withdrawn) {
        self.balance -= e.amount;
    }
}

#[aggregate(events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Statement {}

#[command_handler]
impl Statement {
    #[apply]
    fn on_opened(&mut self, _: &Opened) {}

    #[apply]
    fn audited(&self, _: &ledger::Audited) {}
}

fn main() {}
