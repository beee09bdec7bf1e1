// `subscribe` is required; unknown and repeated keys are reported at the key.
use eventuate_core::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct OrderCreated {}

pub struct Billing;

#[event_handler(id = "billing", retries = 3, id = "billing-2")]
impl Billing {
    async fn on_created(&self, _: &EventContext, _: &OrderCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
