// `#[command_handler]` goes on the aggregate's inherent impl block, nothing else.
use eventuate_core::prelude::*;

#[command_handler]
pub struct Account {}

pub trait Audit {
    fn audit(&self);
}

#[command_handler]
impl Audit for Account {
    fn audit(&self) {}
}

#[command_handler]
fn open() {}

#[command_handler(strict)]
impl Account {}

fn main() {}
