//! A bank account aggregate and helpers, written by hand against the core traits (no
//! macros), shared by the runtime tests.
#![allow(dead_code)]

use eventuate_core::aggregate::{Aggregate, DecodeError, EventSet, HandleCommand};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Withdrawn {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AccountEvent {
    Opened(Opened),
    Deposited(Deposited),
    Withdrawn(Withdrawn),
}

impl EventSet for AccountEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Opened", "Deposited", "Withdrawn"];
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened(_) => "Opened",
            AccountEvent::Deposited(_) => "Deposited",
            AccountEvent::Withdrawn(_) => "Withdrawn",
        }
    }
    fn encode(&self) -> Result<String, serde_json::Error> {
        match self {
            AccountEvent::Opened(e) => serde_json::to_string(e),
            AccountEvent::Deposited(e) => serde_json::to_string(e),
            AccountEvent::Withdrawn(e) => serde_json::to_string(e),
        }
    }
    fn decode(event_type: &str, payload: &str) -> Result<Self, DecodeError> {
        match event_type {
            "Opened" => serde_json::from_str(payload).map(AccountEvent::Opened),
            "Deposited" => serde_json::from_str(payload).map(AccountEvent::Deposited),
            "Withdrawn" => serde_json::from_str(payload).map(AccountEvent::Withdrawn),
            _ => return Err(DecodeError::UnknownType),
        }
        .map_err(DecodeError::Json)
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub owner: String,
    pub balance: u64,
    pub deposits: u64,
}

impl Aggregate for Account {
    const ENTITY_TYPE: &'static str = "Account";
    const SNAPSHOT_EVERY: Option<u64> = Some(5);
    type Event = AccountEvent;
    fn initial() -> Self {
        Self::default()
    }
    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened(e) => self.owner = e.owner.clone(),
            AccountEvent::Deposited(e) => {
                self.balance += e.amount;
                self.deposits += 1;
            }
            AccountEvent::Withdrawn(e) => self.balance -= e.amount,
        }
    }
    fn to_snapshot(&self) -> Option<Result<String, serde_json::Error>> {
        Some(serde_json::to_string(self))
    }
    fn from_snapshot(snapshot: &str) -> Option<Result<Self, serde_json::Error>> {
        Some(serde_json::from_str(snapshot))
    }
    fn clone_for_cache(&self) -> Option<Self> {
        Some(self.clone())
    }
}

#[derive(Debug, Clone)]
pub struct Open {
    pub owner: String,
}
#[derive(Debug, Clone)]
pub struct Deposit {
    pub amount: u64,
}
#[derive(Debug, Clone)]
pub struct Withdraw {
    pub amount: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AccountError {
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: u64, requested: u64 },
    #[error("amount must be positive")]
    ZeroAmount,
}

impl HandleCommand<Open> for Account {
    type Error = AccountError;
    fn handle(&self, c: &Open) -> Result<Vec<AccountEvent>, AccountError> {
        Ok(vec![AccountEvent::Opened(Opened {
            owner: c.owner.clone(),
        })])
    }
}

impl HandleCommand<Deposit> for Account {
    type Error = AccountError;
    fn handle(&self, c: &Deposit) -> Result<Vec<AccountEvent>, AccountError> {
        if c.amount == 0 {
            return Err(AccountError::ZeroAmount);
        }
        Ok(vec![AccountEvent::Deposited(Deposited {
            amount: c.amount,
        })])
    }
}

impl HandleCommand<Withdraw> for Account {
    type Error = AccountError;
    fn handle(&self, c: &Withdraw) -> Result<Vec<AccountEvent>, AccountError> {
        if c.amount > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                requested: c.amount,
            });
        }
        Ok(vec![AccountEvent::Withdrawn(Withdrawn {
            amount: c.amount,
        })])
    }
}
