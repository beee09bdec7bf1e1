// A subscriber has at most one `#[catch_all]` method, and it takes only the delivery.
use eventuate_core::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct OrderCreated {}

pub struct Audit;

#[event_handler(subscribe = "Order")]
impl Audit {
    async fn on_created(&self, _: &EventContext, _: &OrderCreated) -> Result<(), HandlerError> {
        Ok(())
    }

    #[catch_all]
    async fn record(&self, _: &EventContext) -> Result<(), HandlerError> {
        Ok(())
    }

    #[catch_all]
    async fn record_again(&self, _: &EventContext) -> Result<(), HandlerError> {
        Ok(())
    }
}

pub struct Relay;

#[event_handler(subscribe = "Order")]
impl Relay {
    #[catch_all]
    async fn relay(&self, _: &EventContext, _: &OrderCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
