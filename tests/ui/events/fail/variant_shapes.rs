// Each variant of an event set wraps exactly one event struct.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Closed {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
    Closed { at: u64 },
    Reset,
    Both(Opened, Closed),
    Raw(&'static str),
}

#[derive(Debug, Clone, Events)]
pub struct NotAnEnum {}

fn main() {}
