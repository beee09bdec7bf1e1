// A handler's future must be `Send` (the runtime runs partitions on a multi-threaded executor):
// a non-`Send` value held across an `.await` is reported at the handler.
use std::rc::Rc;
use std::sync::Mutex;

use eventuate_core::prelude::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct OrderCreated {}
#[derive(Debug, Deserialize)]
pub struct OrderApproved {}
#[derive(Debug, Deserialize)]
pub struct OrderShipped {}

#[derive(Default)]
pub struct Billing {
    seen: Mutex<u32>,
}

#[event_handler(subscribe = "Order")]
impl Billing {
    async fn on_created(&self, _: &EventContext, _: &OrderCreated) -> Result<(), HandlerError> {
        let guard = self.seen.lock().unwrap();
        tokio_yield().await;
        drop(guard);
        Ok(())
    }

    async fn on_approved(&self, _: &EventContext, _: &OrderApproved) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn on_shipped(&self, _: &EventContext, _: &OrderShipped) -> Result<(), HandlerError> {
        let shared = Rc::new(1);
        tokio_yield().await;
        let _ = shared;
        Ok(())
    }
}

async fn tokio_yield() {}

fn main() {}
