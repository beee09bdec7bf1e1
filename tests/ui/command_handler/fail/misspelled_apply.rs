// A misspelled helper attribute is reported as unknown, with the right spelling, instead of
// the method being checked as a command handler.
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

#[command_handler]
impl Account {
    #[aply]
    fn on_opened(&mut self, _: &Opened) {
        self.open = true;
    }
}

fn main() {}
