// A second `#[event(..)]` on a variant or a handler would silently win: it is an error.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    #[event(name = "OpenedV1")]
    #[event(name = "OpenedV2")]
    Opened(Opened),
}

pub struct Audit;

#[event_handler(subscribe = "Account")]
impl Audit {
    #[event(name = "OpenedV1")]
    #[event(name = "OpenedV2")]
    async fn on_opened(&self, _: &EventContext, _: &Opened) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
