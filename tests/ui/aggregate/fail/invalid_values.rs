// Values that cannot be stored or used: a name that is not an identifier, a snapshot interval
// that is not a positive integer, an event ignored twice; and a generic struct or an enum.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
}

#[aggregate(name = "bank account", events = AccountEvent, snapshot_every = "100")]
#[derive(Debug, Default)]
pub struct Account {}

#[aggregate(name = "9lives", events = AccountEvent, snapshot_every = 0, snapshot_version = -1)]
#[derive(Debug, Default)]
pub struct Cat {}

#[aggregate(events = AccountEvent, ignore(Opened, Opened))]
#[derive(Debug, Default)]
pub struct Dog {}

#[aggregate(events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Wrapper<T> {
    inner: T,
}

#[aggregate(events = AccountEvent)]
pub enum State {
    Open,
    Closed,
}

fn main() {}
