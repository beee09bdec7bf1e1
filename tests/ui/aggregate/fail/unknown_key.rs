// An unknown key is reported at the key; the other keys are still read.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
}

#[aggregate(events = AccountEvent, snapshot = 10, table = "accounts")]
#[derive(Debug, Default)]
pub struct Account {}

#[command_handler]
impl Account {
    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
