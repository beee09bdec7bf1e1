// Values checked at compile time: ids and entity types are identifiers, `start` is "beginning"
// or "now", counts are positive; one handler per event type.
use eventuate_core::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct OrderCreated {}

mod v2 {
    #[derive(Debug, serde::Deserialize)]
    pub struct OrderCreated {}
}

pub struct Billing;

#[event_handler(
    subscribe = ["Order", "order items", "Order"],
    id = "billing workflow",
    start = "latest",
    partitions = 0,
    max_attempts = 0,
    transactional = "yes"
)]
impl Billing {
    async fn created(&self, _: &EventContext, _: &OrderCreated) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn created_v2(&self, _: &EventContext, _: &v2::OrderCreated) -> Result<(), HandlerError> {
        Ok(())
    }

    #[event(name = "2fast")]
    async fn fast(&self, _: &EventContext, _: &v2::OrderCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

pub struct Empty;

#[event_handler(subscribe = [])]
impl Empty {}

fn main() {}
