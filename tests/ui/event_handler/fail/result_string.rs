// A handler's error must convert into `HandlerError`; `String` does not: the error is at the
// return type and says which errors are accepted.
use eventuate_core::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct OrderCreated {}

pub struct Billing;

#[event_handler(subscribe = "Order")]
impl Billing {
    async fn on_created(&self, _: &EventContext, _: &OrderCreated) -> Result<(), String> {
        Err("no".to_owned())
    }
}

fn main() {}
