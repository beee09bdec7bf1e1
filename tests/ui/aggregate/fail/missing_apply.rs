// An event with no `#[apply]` method (and not in `ignore(..)`) is reported at `events = ..`,
// naming the aggregate and the event.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Closed {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Noted {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
    Closed(Closed),
    Noted(Noted),
}

#[aggregate(events = AccountEvent, ignore(Noted))]
#[derive(Debug, Default)]
pub struct Account {}

#[command_handler]
impl Account {
    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
