//! The `Account` aggregate: opened with a balance, debited and credited on behalf of a
//! transfer. A debit that does not fit is recorded as an event (`AccountDebitFailed`) rather
//! than refused, so that the transfer saga learns about it.

use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountOpened {
    pub owner: String,
    pub balance: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountDebited {
    pub transfer_id: String,
    pub amount: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountDebitFailed {
    pub transfer_id: String,
    pub amount: u64,
    pub balance: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountCredited {
    pub transfer_id: String,
    pub amount: u64,
}

#[derive(Debug, Clone, Events)]
pub enum AccountEvent {
    Opened(AccountOpened),
    Debited(AccountDebited),
    DebitFailed(AccountDebitFailed),
    Credited(AccountCredited),
}

#[aggregate(name = "Account", events = AccountEvent)]
#[derive(Debug, Default, Clone)]
pub struct Account {
    pub owner: String,
    pub balance: u64,
}

pub struct OpenAccount {
    pub owner: String,
    pub balance: u64,
}

pub struct Debit {
    pub transfer_id: String,
    pub amount: u64,
}

pub struct Credit {
    pub transfer_id: String,
    pub amount: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("amounts must be positive")]
    ZeroAmount,
}

#[command_handler]
impl Account {
    fn open(&self, command: &OpenAccount) -> Result<AccountOpened, AccountError> {
        if !self.owner.is_empty() {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(AccountOpened {
            owner: command.owner.clone(),
            balance: command.balance,
        })
    }

    fn debit(&self, command: &Debit) -> Result<Vec<AccountEvent>, AccountError> {
        if command.amount == 0 {
            return Err(AccountError::ZeroAmount);
        }
        let transfer_id = command.transfer_id.clone();
        Ok(vec![if command.amount <= self.balance {
            AccountDebited {
                transfer_id,
                amount: command.amount,
            }
            .into()
        } else {
            AccountDebitFailed {
                transfer_id,
                amount: command.amount,
                balance: self.balance,
            }
            .into()
        }])
    }

    fn credit(&self, command: &Credit) -> Result<AccountCredited, AccountError> {
        if command.amount == 0 {
            return Err(AccountError::ZeroAmount);
        }
        Ok(AccountCredited {
            transfer_id: command.transfer_id.clone(),
            amount: command.amount,
        })
    }

    #[apply]
    fn opened(&mut self, event: &AccountOpened) {
        self.owner = event.owner.clone();
        self.balance = event.balance;
    }

    #[apply]
    fn debited(&mut self, event: &AccountDebited) {
        self.balance -= event.amount;
    }

    #[apply]
    fn debit_failed(&mut self, _: &AccountDebitFailed) {}

    #[apply]
    fn credited(&mut self, event: &AccountCredited) {
        self.balance += event.amount;
    }
}
