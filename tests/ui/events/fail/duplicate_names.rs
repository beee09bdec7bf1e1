// Type names identify stored events, so they are unique in a set; so are the event types.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

mod v1 {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    pub struct Opened {}
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Closed {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
    OldOpened(v1::Opened),
    #[event(name = "Opened")]
    Closed(Closed),
    ClosedAgain(Closed),
    #[event(name = "Account Closed")]
    Renamed(Renamed),
    #[event(nam = "X")]
    Typo(Typo),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Renamed {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Typo {}

fn main() {}
