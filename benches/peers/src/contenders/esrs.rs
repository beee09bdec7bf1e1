//! esrs 0.18 (event_sourcing.rs, feature `postgres`): the account as an esrs `Aggregate`, a
//! `PgStore` built by `PgStoreBuilder` (its migrations create the `account_events` table), and
//! commands through an `AggregateManager`: `load` then `handle_command`, as its examples do.
//! `lock_and_load` (an advisory lock around the command) is esrs's pessimistic option; the
//! bench uses the optimistic `load`, which costs fewer round trips and is safe here because
//! no two tasks touch the same account.

use async_trait::async_trait;
use esrs::manager::AggregateManager;
use esrs::store::postgres::{PgStore, PgStoreBuilder};
use esrs::{Aggregate, AggregateState};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{AccountError, Contender};
use crate::BoxResult;
use crate::env::Env;

pub struct Account;

#[derive(Debug, Default)]
pub struct AccountData {
    open: bool,
    balance: u64,
}

pub enum AccountCommand {
    Open { owner: String },
    Deposit { amount: u64 },
    DepositMany { count: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type State = AccountData;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle_command(
        state: &AccountData,
        command: AccountCommand,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { .. } if state.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open { owner } => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !state.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::DepositMany { count } => Ok((0..count)
                .map(|_| AccountEvent::Deposited { amount: 1 })
                .collect()),
        }
    }

    fn apply_event(state: AccountData, event: AccountEvent) -> AccountData {
        match event {
            AccountEvent::Opened { .. } => AccountData {
                open: true,
                ..state
            },
            AccountEvent::Deposited { amount } => AccountData {
                balance: state.balance + amount,
                ..state
            },
        }
    }
}

pub struct EsrsSide {
    pool: PgPool,
    manager: AggregateManager<PgStore<Account>>,
}

impl EsrsSide {
    pub async fn connect(url: &str) -> BoxResult<EsrsSide> {
        let pool = Env::pool(url).await?;
        let store: PgStore<Account> = PgStoreBuilder::new(pool.clone()).try_build().await?;
        Ok(EsrsSide {
            pool,
            manager: AggregateManager::new(store),
        })
    }

    async fn command(&self, id: Uuid, command: AccountCommand) -> BoxResult<()> {
        let state = self
            .manager
            .load(id)
            .await?
            .unwrap_or_else(|| AggregateState::with_id(id));
        self.manager.handle_command(state, command).await??;
        Ok(())
    }
}

#[async_trait]
impl Contender for EsrsSide {
    fn name(&self) -> &'static str {
        "esrs"
    }

    async fn open(&self, id: Uuid) -> BoxResult<()> {
        self.command(
            id,
            AccountCommand::Open {
                owner: "bench".into(),
            },
        )
        .await
    }

    async fn deposit(&self, id: Uuid, amount: u64) -> BoxResult<()> {
        self.command(id, AccountCommand::Deposit { amount }).await
    }

    async fn balance(&self, id: Uuid) -> BoxResult<u64> {
        let state = self
            .manager
            .load(id)
            .await?
            .ok_or("esrs: no such account")?;
        Ok(state.into_inner().balance)
    }

    async fn deposit_many(&self, id: Uuid, count: u64) -> BoxResult<()> {
        self.command(id, AccountCommand::DepositMany { count })
            .await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
