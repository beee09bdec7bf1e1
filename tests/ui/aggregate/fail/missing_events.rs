// `events` is required.
use eventuate_core::prelude::*;

#[aggregate(name = "Account")]
#[derive(Debug, Default)]
pub struct Account {}

#[aggregate]
#[derive(Debug, Default)]
pub struct Customer {}

fn main() {}
