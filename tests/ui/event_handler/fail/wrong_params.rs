// Event handler signatures: `async fn(&self, ctx: &EventContext, event: &Event) -> Result<(), E>`.
use eventuate_core::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct OrderCreated {}
#[derive(Debug, Deserialize)]
pub struct OrderApproved {}
#[derive(Debug, Deserialize)]
pub struct OrderShipped {}
#[derive(Debug, Deserialize)]
pub struct OrderCancelled {}
#[derive(Debug, Deserialize)]
pub struct OrderRefunded {}

pub struct Billing;

#[event_handler(subscribe = "Order")]
impl Billing {
    async fn created(&self, _: &OrderCreated) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn approved(&self, _: &EventContext, _: OrderApproved) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn shipped(&mut self, _: &EventContext, _: &OrderShipped) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn cancelled(&self, _: &EventContext, _: &OrderCancelled) {}

    async fn refunded(&self, _: &EventContext, _: &OrderRefunded, _: u32) -> Result<u32, HandlerError> {
        Ok(1)
    }

    async fn helper() {}
}

fn main() {}
