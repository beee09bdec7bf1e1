// Event handlers are awaited by the runtime: they must be `async fn`.
use eventuate_core::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct OrderCreated {}

pub struct Billing;

#[event_handler(subscribe = "Order")]
impl Billing {
    fn on_created(&self, _: &EventContext, _: &OrderCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
