// A command handler returns `Result<Events, Error>`.
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
#[derive(Debug, Clone)]
pub struct Reopen;
#[derive(Debug, Clone)]
pub struct Touch;

#[command_handler]
impl Account {
    fn open(&self, _: Open) -> Opened {
        Opened {}
    }

    fn reopen(&self, _: Reopen) -> Option<Opened> {
        None
    }

    fn touch(&self, _: Touch) {}

    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
