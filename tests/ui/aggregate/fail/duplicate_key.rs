// A key given twice is reported at its second occurrence.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
}

#[aggregate(name = "Account", events = AccountEvent, name = "Acct")]
#[derive(Debug, Default)]
pub struct Account {}

#[command_handler]
impl Account {
    #[apply]
    fn on_opened(&mut self, _: &Opened) {}
}

fn main() {}
