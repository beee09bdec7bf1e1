// Versions and upcasters: every step of the chain up to the current version, once each.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn step(v: Value) -> Result<Value, String> {
    Ok(v)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gap {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Twice {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ahead {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoVersion {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoSteps {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Zero {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionTwice {}

#[derive(Debug, Clone, Events)]
pub enum OrderEvent {
    #[event(version = 4, upcast(from = 1, with = step), upcast(from = 3, with = step))]
    Gap(Gap),
    #[event(version = 3, upcast(from = 1, with = step), upcast(from = 2, with = step), upcast(from = 2, with = step))]
    Twice(Twice),
    #[event(version = 2, upcast(from = 1, with = step), upcast(from = 2, with = step))]
    Ahead(Ahead),
    #[event(upcast(from = 1, with = step))]
    NoVersion(NoVersion),
    #[event(version = 2)]
    NoSteps(NoSteps),
    #[event(version = 0)]
    Zero(Zero),
    #[event(version = 2, version = 3, upcast(from = 1, with = step))]
    VersionTwice(VersionTwice),
}

fn main() {}
