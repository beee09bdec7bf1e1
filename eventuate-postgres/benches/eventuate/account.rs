//! The bank account the benchmark drives, declared with the macros as an application would,
//! and the subscribers it runs (a latency probe and a no-op counter).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

/// Nanoseconds on a monotonic clock shared by the whole process (writers and handlers run in
/// the same process, so one `Instant` origin makes their stamps comparable).
pub fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let nanos = ORIGIN.get_or_init(Instant::now).elapsed().as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
}

/// `sent_ns` is stamped by the command handler, i.e. after the load and just before the
/// append: delivery latency is measured from there to the subscriber's handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
    pub sent_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Withdrawn {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Events)]
pub enum AccountEvent {
    Opened(Opened),
    Deposited(Deposited),
    Withdrawn(Withdrawn),
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

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    Insufficient { balance: u64, asked: u64 },
}

/// The account, without snapshots: every load replays all of its events.
#[aggregate(name = "Account", events = AccountEvent)]
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub owner: String,
    pub balance: u64,
    pub deposits: u64,
}

#[command_handler]
impl Account {
    fn open(&self, command: &Open) -> Result<Opened, AccountError> {
        if !self.owner.is_empty() {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(Opened {
            owner: command.owner.clone(),
        })
    }

    fn deposit(&self, command: &Deposit) -> Result<Deposited, AccountError> {
        if self.owner.is_empty() {
            return Err(AccountError::NotOpen);
        }
        Ok(Deposited {
            amount: command.amount,
            sent_ns: now_ns(),
        })
    }

    fn withdraw(&self, command: &Withdraw) -> Result<Withdrawn, AccountError> {
        if command.amount > self.balance {
            return Err(AccountError::Insufficient {
                balance: self.balance,
                asked: command.amount,
            });
        }
        Ok(Withdrawn {
            amount: command.amount,
        })
    }

    #[apply]
    fn on_opened(&mut self, event: &Opened) {
        self.owner.clone_from(&event.owner);
    }

    #[apply]
    fn on_deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
        self.deposits += 1;
    }

    #[apply]
    fn on_withdrawn(&mut self, event: &Withdrawn) {
        self.balance -= event.amount;
    }
}

/// The same stored entity ("Account", same events) seen by an aggregate that takes a snapshot
/// every 100 events, so one 10,000-event account can be loaded both ways.
#[aggregate(name = "Account", events = AccountEvent, snapshot_every = 100)]
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshottedAccount {
    pub account: Account,
}

#[command_handler]
impl SnapshottedAccount {
    fn deposit(&self, command: &Deposit) -> Result<Deposited, AccountError> {
        self.account.deposit(command)
    }

    #[apply]
    fn on_opened(&mut self, event: &Opened) {
        self.account.on_opened(event);
    }

    #[apply]
    fn on_deposited(&mut self, event: &Deposited) {
        self.account.on_deposited(event);
    }

    #[apply]
    fn on_withdrawn(&mut self, event: &Withdrawn) {
        self.account.on_withdrawn(event);
    }
}

/// The payload of a deposit, as the aggregate writes it.
pub fn deposited_json(amount: u64) -> String {
    serde_json::to_string(&Deposited {
        amount,
        sent_ns: now_ns(),
    })
    .unwrap_or_default()
}

/// Metadata like the repository writes for a command (ids, command type, timestamp).
pub fn command_metadata() -> EventMetadataJson {
    let command_id = uuid::Uuid::new_v4();
    let metadata = eventuate_core::EventMetadata {
        timestamp: std::time::SystemTime::now(),
        command_id: Some(command_id),
        command_type: Some("Deposit".into()),
        causation_id: None,
        correlation_id: Some(command_id),
        headers: Default::default(),
        schema_version: None,
    };
    EventMetadataJson {
        text: serde_json::to_string(&metadata).unwrap_or_default(),
        value: metadata,
    }
}

/// Event metadata and its JSON text.
#[derive(Debug, Clone)]
pub struct EventMetadataJson {
    pub value: eventuate_core::EventMetadata,
    pub text: String,
}

/// Records, for every deposit it receives, the time from the command's stamp to handler entry.
#[derive(Debug, Clone, Default)]
pub struct LatencyProbe {
    pub latencies_ns: Arc<Mutex<Vec<u64>>>,
    pub received: Arc<AtomicU64>,
}

#[event_handler(subscribe = Account, id = "latency-probe")]
impl LatencyProbe {
    async fn on_deposited(
        &self,
        _ctx: &EventContext,
        event: &Deposited,
    ) -> Result<(), HandlerError> {
        let latency = now_ns().saturating_sub(event.sent_ns);
        self.latencies_ns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(latency);
        self.received.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

impl LatencyProbe {
    /// Takes the latencies recorded so far.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.latencies_ns.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A no-op subscriber that only counts the deposits it is handed.
#[derive(Debug, Clone, Default)]
pub struct DepositCounter {
    pub count: Arc<AtomicU64>,
}

#[event_handler(subscribe = Account, id = "deposit-counter")]
impl DepositCounter {
    async fn on_deposited(
        &self,
        _ctx: &EventContext,
        _event: &Deposited,
    ) -> Result<(), HandlerError> {
        self.count.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

impl DepositCounter {
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }
}
