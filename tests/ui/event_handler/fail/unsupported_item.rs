// `#[event_handler]` goes on the inherent impl block of a subscriber type.
use eventuate_core::prelude::*;

#[event_handler(subscribe = "Order")]
pub struct Billing;

#[event_handler(subscribe = "Order")]
async fn on_created() {}

pub trait Audit {}

#[event_handler(subscribe = "Order")]
impl Audit for Billing {}

fn main() {}
