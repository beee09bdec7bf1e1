// An alias of the entity type names an older name its history is stored under: the aggregate's
// own name (given or defaulted), a repeated alias and an invalid name are each reported at the
// alias, all in one build.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
}

#[aggregate(name = "Account", aliases("BankAccount", "Account"), events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Account {}

#[command_handler]
impl Account {
    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

#[aggregate(aliases("Ledger"), events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Ledger {}

#[command_handler]
impl Ledger {
    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

#[aggregate(name = "Wallet", aliases("Purse", "Bag", "Purse", "Old Wallet"), events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Wallet {}

#[command_handler]
impl Wallet {
    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
