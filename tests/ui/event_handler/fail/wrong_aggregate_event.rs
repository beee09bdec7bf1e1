// With `subscribe = Order` (a type), every handler must take one of `Order`'s events; the error
// is at the handler's event type.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderCreated {}
mod customers {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    pub struct CustomerCreated {}
}

#[derive(Debug, Clone, Events)]
pub enum OrderEvent {
    Created(OrderCreated),
}

#[aggregate(events = OrderEvent)]
#[derive(Debug, Default)]
pub struct Order {}

#[command_handler]
impl Order {
    #[apply]
    fn on_created(&mut self, _: &OrderCreated) {}
}

pub struct Billing;

#[event_handler(subscribe = Order)]
impl Billing {
    async fn on_order(&self, _: &EventContext, _: &OrderCreated) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn on_customer(&self, _: &EventContext, _: &customers::CustomerCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
