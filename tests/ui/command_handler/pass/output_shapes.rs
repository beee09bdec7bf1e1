//! Every shape a command handler may return compiles, each event converted through `Into`:
//! one event (a variant's type, the event set itself, a type with a `From` impl into the set,
//! `impl Into<..>`), a `Vec` of them, a tuple of them, `()`; and `#[apply]` methods take the
//! set's events however the type is written (a path, an alias).

#![deny(warnings, rust_2018_idioms)]

use eventuate_core::prelude::*;
use eventuate_core::{Aggregate, HandleCommand};

mod events {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Opened {}
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Deposited {
        pub amount: u64,
    }
}

use events::Opened;

/// Another name for an event type.
type Credit = events::Deposited;

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(Opened),
    Deposited(events::Deposited),
}

/// Not an event of the set, but converts into one.
#[derive(Debug, Clone)]
pub struct LegacyDeposit(pub u64);

impl From<LegacyDeposit> for AccountEvent {
    fn from(legacy: LegacyDeposit) -> Self {
        AccountEvent::Deposited(events::Deposited { amount: legacy.0 })
    }
}

#[aggregate(events = AccountEvent)]
#[derive(Debug, Default)]
pub struct Account {
    balance: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("refused")]
pub struct Refused;

macro_rules! commands {
    ($($name:ident),*) => { $(#[derive(Debug, Clone)] pub struct $name;)* };
}
commands!(One, TheSet, Projection, Qualified, Aliased, Converted, Opaque, Many, ManySet,
    ManyOpaque, ManyConverted, Pair, Single, Nothing);

#[command_handler]
impl Account {
    fn one(&self, _: One) -> Result<Opened, Refused> {
        Ok(Opened {})
    }

    fn the_set(&self, _: &TheSet) -> Result<AccountEvent, Refused> {
        Ok(AccountEvent::Opened(Opened {}))
    }

    fn projection(&self, _: &Projection) -> Result<<Self as Aggregate>::Event, Refused> {
        Ok(AccountEvent::Opened(Opened {}))
    }

    fn qualified(&self, _: &Qualified) -> Result<crate::events::Deposited, Refused> {
        Ok(events::Deposited { amount: 1 })
    }

    fn aliased(&self, _: &Aliased) -> Result<Credit, Refused> {
        Ok(Credit { amount: 1 })
    }

    fn converted(&self, _: &Converted) -> Result<LegacyDeposit, Refused> {
        Ok(LegacyDeposit(1))
    }

    fn opaque(&self, _: &Opaque) -> Result<impl Into<AccountEvent>, Refused> {
        Ok(Opened {})
    }

    fn many(&self, _: &Many) -> Result<Vec<events::Deposited>, Refused> {
        Ok(vec![events::Deposited { amount: 1 }, events::Deposited { amount: 2 }])
    }

    fn many_set(&self, _: &ManySet) -> Result<std::vec::Vec<AccountEvent>, Refused> {
        Ok(vec![AccountEvent::Opened(Opened {})])
    }

    fn many_opaque(&self, _: &ManyOpaque) -> Result<Vec<impl Into<AccountEvent>>, Refused> {
        Ok(vec![LegacyDeposit(1)])
    }

    fn many_converted(&self, _: &ManyConverted) -> Result<Vec<LegacyDeposit>, Refused> {
        Ok(vec![LegacyDeposit(1)])
    }

    fn pair(
        &self,
        _: &Pair,
    ) -> Result<(Opened, AccountEvent, LegacyDeposit, impl Into<AccountEvent>), Refused> {
        Ok((
            Opened {},
            AccountEvent::Opened(Opened {}),
            LegacyDeposit(1),
            Credit { amount: 1 },
        ))
    }

    fn single(&self, _: &Single) -> Result<(Opened,), Refused> {
        Ok((Opened {},))
    }

    fn nothing(&self, _: &Nothing) -> Result<(), Refused> {
        Ok(())
    }

    #[apply]
    fn on_opened(&mut self, _: &events::Opened) {}

    #[apply]
    fn on_deposited(&mut self, event: &Credit) {
        self.balance += event.amount;
    }
}

fn count<C>(account: &Account, command: C) -> usize
where
    Account: HandleCommand<C>,
{
    match account.handle(&command) {
        Ok(events) => events.len(),
        Err(_) => usize::MAX,
    }
}

fn main() {
    let account = Account::default();
    let counts = [
        count(&account, One),
        count(&account, TheSet),
        count(&account, Projection),
        count(&account, Qualified),
        count(&account, Aliased),
        count(&account, Converted),
        count(&account, Opaque),
        count(&account, Many),
        count(&account, ManySet),
        count(&account, ManyOpaque),
        count(&account, ManyConverted),
        count(&account, Pair),
        count(&account, Single),
        count(&account, Nothing),
    ];
    assert_eq!(counts, [1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 4, 1, 0]);
    let mut account = account;
    for event in HandleCommand::<Pair>::handle(&account, &Pair).unwrap_or_default() {
        account.apply(&event);
    }
    assert_eq!(account.balance, 2);
}
