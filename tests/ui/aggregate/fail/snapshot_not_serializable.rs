// `snapshot_every` stores the state as JSON, so the struct must be `Serialize` and
// `Deserialize`; the error is at the struct.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
}

#[aggregate(events = AccountEvent, snapshot_every = 50)]
#[derive(Debug, Default)]
pub struct Account {}

#[command_handler]
impl Account {
    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
