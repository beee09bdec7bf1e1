//! eventuate-rs: the account declared with the macros, commands through a [`Repository`]
//! (without and with the aggregate cache) on a [`PostgresEventStore`] with default settings.

use async_trait::async_trait;
use eventuate_core::prelude::*;
use eventuate_core::{Repository, RepositoryOptions};
use eventuate_postgres::PostgresEventStore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AccountError, Contender};
use crate::BoxResult;

/// Accounts the cached repository keeps: more than any workload opens.
const CACHE_CAPACITY: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq, Events)]
pub enum AccountEvent {
    Opened(Opened),
    Deposited(Deposited),
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
pub struct DepositMany {
    pub count: u64,
}

#[aggregate(name = "Account", events = AccountEvent)]
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub open: bool,
    pub balance: u64,
}

#[command_handler]
impl Account {
    fn open(&self, command: &Open) -> Result<Opened, AccountError> {
        if self.open {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(Opened {
            owner: command.owner.clone(),
        })
    }

    fn deposit(&self, command: &Deposit) -> Result<Deposited, AccountError> {
        if !self.open {
            return Err(AccountError::NotOpen);
        }
        Ok(Deposited {
            amount: command.amount,
        })
    }

    fn deposit_many(&self, command: &DepositMany) -> Result<Vec<Deposited>, AccountError> {
        if !self.open {
            return Err(AccountError::NotOpen);
        }
        Ok((0..command.count)
            .map(|_| Deposited { amount: 1 })
            .collect())
    }

    #[apply]
    fn on_opened(&mut self, _event: &Opened) {
        self.open = true;
    }

    #[apply]
    fn on_deposited(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

#[derive(Debug)]
pub struct EventuateSide {
    name: &'static str,
    store: PostgresEventStore,
    repository: Repository,
}

impl EventuateSide {
    /// The side without the cache and the side with it, on one store.
    pub async fn pair(url: &str) -> BoxResult<(EventuateSide, EventuateSide)> {
        if Account::default().clone_for_cache().is_none() {
            return Err("Account::clone_for_cache() is None: the cache could not hold it".into());
        }
        let store = store(url).await?;
        let plain = EventuateSide {
            name: "eventuate",
            repository: Repository::new(store.clone()),
            store: store.clone(),
        };
        let cached = EventuateSide {
            name: "eventuate + cache",
            repository: Repository::new(store.clone()).with_options(RepositoryOptions {
                cache_capacity: CACHE_CAPACITY,
                ..RepositoryOptions::default()
            }),
            store,
        };
        Ok((plain, cached))
    }
}

/// A migrated store with a pool of [`crate::POOL_SIZE`] connections.
pub async fn store(url: &str) -> BoxResult<PostgresEventStore> {
    Ok(PostgresEventStore::builder()
        .max_connections(crate::POOL_SIZE)
        .migrate_on_connect(true)
        .connect(url)
        .await?)
}

#[async_trait]
impl Contender for EventuateSide {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn open(&self, id: Uuid) -> BoxResult<()> {
        self.repository
            .create_with_id::<Account>(
                id.to_string(),
                Open {
                    owner: "bench".into(),
                },
            )
            .await?;
        Ok(())
    }

    async fn deposit(&self, id: Uuid, amount: u64) -> BoxResult<()> {
        self.repository
            .update::<Account>(&id.to_string(), Deposit { amount })
            .await?;
        Ok(())
    }

    async fn balance(&self, id: Uuid) -> BoxResult<u64> {
        Ok(self
            .repository
            .load::<Account>(&id.to_string())
            .await?
            .state
            .balance)
    }

    async fn deposit_many(&self, id: Uuid, count: u64) -> BoxResult<()> {
        self.repository
            .update::<Account>(&id.to_string(), DepositMany { count })
            .await?;
        Ok(())
    }

    async fn close(&self) {
        self.store.close().await;
    }
}

/// Fills a catch-up store through the repository: an `Open`, then `DepositMany` of 999.
#[derive(Debug)]
pub struct EventuateFill(pub Repository);

impl EventuateFill {
    pub async fn account(&self, id: Uuid) -> BoxResult<()> {
        let id = id.to_string();
        self.0
            .create_with_id::<Account>(
                id.clone(),
                Open {
                    owner: "bench".into(),
                },
            )
            .await?;
        self.0
            .update::<Account>(&id, DepositMany { count: 999 })
            .await?;
        Ok(())
    }
}
