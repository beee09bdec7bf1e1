// Every mistake of an impl block is reported in one build, each at its own token, and the
// rest of the crate still type-checks (no cascade of follow-up errors).
use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Closed {}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
    Closed(Closed),
}

#[aggregate(events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Account {
    open: bool,
}

#[derive(Debug, Clone)]
pub struct Open;
#[derive(Debug, Clone)]
pub struct Close;

#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refused;

#[command_handler]
impl Account {
    async fn open(&mut self, _: Open) -> Result<Opened, Refused> {
        Ok(Opened {})
    }

    fn close(&self, _: Close, _: bool) -> Closed {
        Closed {}
    }

    fn close_again(&self, _: &Close) -> Result<Closed, Refused> {
        Ok(Closed {})
    }

    #[apply]
    fn on_opened(&self, _: &Opened) {}

    #[apply]
    fn on_closed(&mut self, _: Closed) -> bool {
        self.open
    }

    #[apply]
    fn on_opened_again(&mut self, _: &Opened) {}
}

// Uses of the aggregate elsewhere add no errors of their own.
fn decide(account: &Account) -> bool {
    use eventuate_core::HandleCommand;
    HandleCommand::<Open>::handle(account, &Open).is_ok()
}

fn main() {
    let _ = decide(&Account::default());
}
