//! cqrs-es 0.5 with postgres-es: the account as a cqrs-es `Aggregate`, commands through
//! `postgres_cqrs` (a `CqrsFramework` over a `PersistedEventStore` that replays every event,
//! with no queries), tables from postgres-es's `db/init.sql`.
//!
//! postgres-es also offers snapshot and "aggregate" stores (`postgres_snapshot_cqrs`,
//! `postgres_aggregate_cqrs`), which write a serialized aggregate in the same transaction as
//! the events; the bench uses the plain event store, like the eventuate side without cache
//! (neither snapshots nor caches).

use async_trait::async_trait;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, DomainEvent, EventStore};
use postgres_es::{PostgresCqrs, PostgresEventRepository, postgres_cqrs};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{AccountError, Contender};
use crate::BoxResult;
use crate::env::Env;

/// postgres-es's `db/init.sql` (events and snapshots tables).
const SCHEMA: &[&str] = &[
    "CREATE TABLE events (
        aggregate_type text NOT NULL,
        aggregate_id text NOT NULL,
        sequence bigint CHECK (sequence >= 0) NOT NULL,
        event_type text NOT NULL,
        event_version text NOT NULL,
        payload json NOT NULL,
        metadata json NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, sequence))",
    "CREATE TABLE snapshots (
        aggregate_type text NOT NULL,
        aggregate_id text NOT NULL,
        last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
        current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
        payload json NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, last_sequence))",
];

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Account {
    open: bool,
    balance: u64,
}

#[derive(Debug)]
pub enum AccountCommand {
    Open { owner: String },
    Deposit { amount: u64 },
    DepositMany { count: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        match self {
            AccountEvent::Opened { .. } => "Opened".into(),
            AccountEvent::Deposited { .. } => "Deposited".into(),
        }
    }

    fn event_version(&self) -> String {
        "1.0".into()
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: AccountCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), AccountError> {
        match command {
            AccountCommand::Open { owner } => {
                if self.open {
                    return Err(AccountError::AlreadyOpen);
                }
                sink.write(AccountEvent::Opened { owner }, self).await;
            }
            AccountCommand::Deposit { amount } => {
                if !self.open {
                    return Err(AccountError::NotOpen);
                }
                sink.write(AccountEvent::Deposited { amount }, self).await;
            }
            AccountCommand::DepositMany { count } => {
                if !self.open {
                    return Err(AccountError::NotOpen);
                }
                for _ in 0..count {
                    sink.write(AccountEvent::Deposited { amount: 1 }, self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
        }
    }
}

pub struct CqrsSide {
    pool: PgPool,
    cqrs: PostgresCqrs<Account>,
    /// The same kind of store the framework uses, for loads.
    store: PersistedEventStore<PostgresEventRepository, Account>,
}

impl CqrsSide {
    pub async fn connect(url: &str) -> BoxResult<CqrsSide> {
        let pool = Env::pool(url).await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        Ok(CqrsSide {
            cqrs: postgres_cqrs(pool.clone(), vec![], ()),
            store: PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone())),
            pool,
        })
    }
}

#[async_trait]
impl Contender for CqrsSide {
    fn name(&self) -> &'static str {
        "cqrs-es"
    }

    async fn open(&self, id: Uuid) -> BoxResult<()> {
        self.cqrs
            .execute(
                &id.to_string(),
                AccountCommand::Open {
                    owner: "bench".into(),
                },
            )
            .await?;
        Ok(())
    }

    async fn deposit(&self, id: Uuid, amount: u64) -> BoxResult<()> {
        self.cqrs
            .execute(&id.to_string(), AccountCommand::Deposit { amount })
            .await?;
        Ok(())
    }

    async fn balance(&self, id: Uuid) -> BoxResult<u64> {
        let mut context = self.store.load_aggregate(&id.to_string()).await?;
        Ok(cqrs_es::AggregateContext::aggregate(&mut context).balance)
    }

    async fn deposit_many(&self, id: Uuid, count: u64) -> BoxResult<()> {
        self.cqrs
            .execute(&id.to_string(), AccountCommand::DepositMany { count })
            .await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
