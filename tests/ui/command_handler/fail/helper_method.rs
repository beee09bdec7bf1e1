// A helper method (not a command handler, not `#[apply]`) belongs in another impl block.
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
}

#[aggregate(events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Account {
    open: bool,
}

#[derive(Debug, Clone)]
pub struct Open;

#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refused;

#[command_handler]
impl Account {
    fn open(&self, _: Open) -> Result<Opened, Refused> {
        if self.is_open() {
            return Err(Refused);
        }
        Ok(Opened {})
    }

    fn is_open(&self) -> bool {
        self.open
    }

    fn new_opened() -> Opened {
        Opened {}
    }

    #[apply]
    fn on_opened(&mut self, _: &Opened) {
        self.open = true;
    }
}

fn main() {
    let _ = Account::new_opened();
}
