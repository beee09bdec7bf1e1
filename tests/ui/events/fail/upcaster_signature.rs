// An upcaster is a `fn(serde_json::Value) -> Result<serde_json::Value, String>`; one of
// another shape is reported at `with = ..`.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

fn typed(v: &str) -> String {
    v.to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {}

#[derive(Debug, Clone, Events)]
pub enum OrderEvent {
    #[event(version = 2, upcast(from = 1, with = typed))]
    Placed(OrderPlaced),
}

fn main() {}
