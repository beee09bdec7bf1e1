// A stored name reads as one event only: an alias may not be another event's name or alias,
// nor the event's own name.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderCancelled {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderShipped {}

#[derive(Debug, Clone, Events)]
pub enum OrderEvent {
    #[event(aliases("OrderCreated", "OrderPlaced"))]
    Placed(OrderPlaced),
    #[event(aliases("OrderShipped", "OrderCreated", "order cancelled"))]
    Cancelled(OrderCancelled),
    Shipped(OrderShipped),
}

fn main() {}
