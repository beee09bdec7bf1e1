// With `subscribe = Order`, a handler must match the name the aggregate stores the event under;
// here `OrderNoted` is stored as "OrderNoteV2".
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderNoted {}

#[derive(Debug, Clone, Events)]
pub enum OrderEvent {
    #[event(name = "OrderNoteV2")]
    Noted(OrderNoted),
}

#[aggregate(events = OrderEvent, ignore(OrderNoted))]
#[derive(Debug, Default)]
pub struct Order {}

pub struct Billing;

#[event_handler(subscribe = Order)]
impl Billing {
    async fn on_noted(&self, _: &EventContext, _: &OrderNoted) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
