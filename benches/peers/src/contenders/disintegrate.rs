//! disintegrate 4 with disintegrate-postgres: the account's events derived with `Event` (the
//! account id is a domain id, so a column of its own), its state a `StateQuery`, and each
//! command a `Decision` made by the `decision_maker` over a `PgEventStore` with JSON payloads
//! and no snapshots, as the README shows.
//!
//! One deviation, forced by the server: `PgEventStore::try_new` runs disintegrate-postgres
//! 4.0.1's set-up SQL, whose `event_store_begin_epoch()` is written with a hexadecimal integer
//! literal (`0xFFFFFFFF`), which PostgreSQL accepts from version 16 on; on PostgreSQL 15 the
//! `CREATE FUNCTION` fails. [`SETUP`] is that same set-up, statement for statement (sequence,
//! table, indexes, both epoch functions, one column and partial index per domain id), with
//! the literal written in decimal (`4294967295`, the same value); the store is then opened
//! with `PgEventStore::new_uninitialized`. Everything that runs during the workloads is the
//! library's own code.
//!
//! disintegrate appends in a SERIALIZABLE transaction, and PostgreSQL's serializable snapshot
//! isolation reports false conflicts between concurrent transactions on different accounts
//! (predicate locks cover index pages, not just rows): the decision then fails with a
//! concurrency error, which an application retries. [`DisintegrateSide::make`] does so, up to
//! [`MAX_ATTEMPTS`] times, after a random pause of up to 2^attempts microseconds, at most
//! [`MAX_PAUSE`] (exponential backoff with jitter, so that the same transactions do not
//! collide again at once), and counts the retries for the report. (eventuate's repository retries its own conflicts, without pause.)

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use disintegrate::DecisionError;
use disintegrate::serde::json::Json;
use disintegrate::{
    Decision, Event, EventSourcedStateStore, LoadState, NoSnapshot, StateMutate, StateQuery,
};
use disintegrate_postgres::{PgDecisionMaker, PgEventId, PgEventStore, decision_maker};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{AccountError, Contender};
use crate::BoxResult;
use crate::env::Env;

#[derive(Debug, Clone, PartialEq, Eq, Event, Serialize, Deserialize)]
pub enum AccountEvent {
    AccountOpened {
        #[id]
        account_id: String,
        owner: String,
    },
    AmountDeposited {
        #[id]
        account_id: String,
        amount: u64,
    },
}

#[derive(Debug, Default, StateQuery, Clone, Serialize, Deserialize)]
#[state_query(AccountEvent)]
pub struct AccountState {
    #[id]
    account_id: String,
    open: bool,
    balance: u64,
}

impl AccountState {
    fn new(account_id: &str) -> Self {
        AccountState {
            account_id: account_id.to_owned(),
            ..AccountState::default()
        }
    }
}

impl StateMutate for AccountState {
    fn mutate(&mut self, event: Self::Event) {
        match event {
            AccountEvent::AccountOpened { .. } => self.open = true,
            AccountEvent::AmountDeposited { amount, .. } => self.balance += amount,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Command {
    Open { owner: String },
    Deposit { amount: u64 },
    DepositMany { count: u64 },
}

/// One command on one account, as a decision.
#[derive(Debug, Clone)]
pub struct AccountDecision {
    pub account_id: String,
    pub command: Command,
}

impl Decision for AccountDecision {
    type Event = AccountEvent;
    type StateQuery = AccountState;
    type Error = AccountError;

    fn state_query(&self) -> AccountState {
        AccountState::new(&self.account_id)
    }

    fn process(&self, state: &AccountState) -> Result<Vec<AccountEvent>, AccountError> {
        let account_id = self.account_id.clone();
        match &self.command {
            Command::Open { .. } if state.open => Err(AccountError::AlreadyOpen),
            Command::Open { owner } => Ok(vec![AccountEvent::AccountOpened {
                account_id,
                owner: owner.clone(),
            }]),
            _ if !state.open => Err(AccountError::NotOpen),
            Command::Deposit { amount } => Ok(vec![AccountEvent::AmountDeposited {
                account_id,
                amount: *amount,
            }]),
            Command::DepositMany { count } => Ok((0..*count)
                .map(|_| AccountEvent::AmountDeposited {
                    account_id: account_id.clone(),
                    amount: 1,
                })
                .collect()),
        }
    }
}

/// disintegrate-postgres 4.0.1's `Migrator::init_event_store` statements (from its
/// `src/event_store/sql/*.sql`), the one hexadecimal literal written in decimal.
const SETUP: &[&str] = &[
    "CREATE SEQUENCE IF NOT EXISTS seq_event_event_id",
    "CREATE TABLE IF NOT EXISTS event (
        event_id BIGINT PRIMARY KEY DEFAULT nextval('seq_event_event_id'),
        event_type VARCHAR(255),
        payload BYTEA,
        inserted_at TIMESTAMP DEFAULT now()
    )",
    "CREATE INDEX IF NOT EXISTS idx_event_type_btree ON event(event_type)",
    "CREATE OR REPLACE FUNCTION event_store_current_epoch()
    RETURNS BIGINT AS $$
    DECLARE
        persisted_event_id BIGINT;
        pending_event_id BIGINT;
        db_id INT;
    BEGIN
        SELECT COALESCE(MAX(event_id), 0) INTO persisted_event_id FROM event;
        SELECT oid INTO db_id FROM pg_database WHERE datname = current_database();

        SELECT MIN((l3.objid::bigint << 32) + l2.objid::bigint)
        INTO pending_event_id
        FROM pg_locks l1
        INNER JOIN pg_locks l2 ON l1.pid = l2.pid
        INNER JOIN pg_locks l3 ON l1.pid = l3.pid
        WHERE
            l1.classid = db_id
            AND l2.classid = 1
            AND l3.classid = 2
            AND l1.locktype = 'advisory';

        RETURN LEAST(COALESCE(pending_event_id, persisted_event_id), persisted_event_id);
    END;
    $$ LANGUAGE plpgsql",
    "CREATE OR REPLACE FUNCTION event_store_begin_epoch()
    RETURNS void AS $$
    DECLARE
        id BIGINT;
        db_id INT;
    BEGIN
        SELECT last_value INTO id FROM seq_event_event_id;
        SELECT oid INTO db_id FROM pg_database WHERE datname = current_database();

        PERFORM pg_try_advisory_xact_lock_shared(db_id, 0);
        PERFORM pg_try_advisory_xact_lock_shared(1, (id & 4294967295)::bit(32)::integer);
        PERFORM pg_try_advisory_xact_lock_shared(2, (id >> 32)::bit(32)::integer);
    END;
    $$ LANGUAGE plpgsql",
];

/// Creates what `PgEventStore::try_new` would (see [`SETUP`]) and opens the store.
pub async fn store(pool: PgPool) -> BoxResult<Store> {
    for statement in SETUP {
        sqlx::query(statement).execute(&pool).await?;
    }
    for domain_id in AccountEvent::SCHEMA.domain_ids {
        let column = domain_id.ident;
        let sql_type = match domain_id.type_info {
            disintegrate::IdentifierType::String => "TEXT",
            disintegrate::IdentifierType::i64 => "BIGINT",
            disintegrate::IdentifierType::Uuid => "UUID",
        };
        sqlx::query(&format!(
            "ALTER TABLE event ADD COLUMN IF NOT EXISTS {column} {sql_type}"
        ))
        .execute(&pool)
        .await?;
        sqlx::query(&format!(
            "CREATE INDEX IF NOT EXISTS idx_event_{column} ON event ({column}) \
             WHERE {column} IS NOT NULL"
        ))
        .execute(&pool)
        .await?;
    }
    Ok(PgEventStore::new_uninitialized(
        pool,
        Json::<AccountEvent>::default(),
    ))
}

pub type Store = PgEventStore<AccountEvent, Json<AccountEvent>>;

/// Attempts of one decision before a run of concurrency errors is given up.
pub const MAX_ATTEMPTS: u32 = 1_000;

/// Longest pause between two attempts.
pub const MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

pub struct DisintegrateSide {
    pub pool: PgPool,
    retries: AtomicU64,
    pub store: Store,
    decision_maker: PgDecisionMaker<AccountEvent, Json<AccountEvent>, NoSnapshot>,
    state_store: EventSourcedStateStore<PgEventId, AccountEvent, Store, NoSnapshot>,
}

impl DisintegrateSide {
    pub async fn connect(url: &str) -> BoxResult<DisintegrateSide> {
        let pool = Env::pool(url).await?;
        let store = store(pool.clone()).await?;
        Ok(DisintegrateSide {
            pool,
            retries: AtomicU64::new(0),
            decision_maker: decision_maker(store.clone(), NoSnapshot),
            state_store: EventSourcedStateStore::new(store.clone(), NoSnapshot),
            store,
        })
    }

    /// Makes the decision, retrying it after concurrency errors.
    pub async fn make(&self, id: Uuid, command: Command) -> BoxResult<()> {
        let decision = AccountDecision {
            account_id: id.to_string(),
            command,
        };
        let mut attempt = 1;
        loop {
            match self.decision_maker.make(decision.clone()).await {
                Ok(_) => return Ok(()),
                Err(error) if attempt < MAX_ATTEMPTS && is_concurrency(&error) => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    let ceiling = (1u64 << attempt.min(20)).min(MAX_PAUSE.as_micros() as u64);
                    let pause = rand::random_range(0..=ceiling);
                    tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
                    attempt += 1;
                }
                Err(error) if is_concurrency(&error) => {
                    return Err(format!("gave up after {attempt} attempts: {error}").into());
                }
                Err(error) => return Err(format!("not a concurrency error: {error:?}").into()),
            }
        }
    }
}

/// A concurrency error: a newer event matched the decision's query, or PostgreSQL could not
/// serialize the transaction (SQLSTATE 40001, reported before the commit).
fn is_concurrency(error: &DecisionError<AccountError>) -> bool {
    let DecisionError::StateStore(source) = error else {
        return false;
    };
    match source.downcast_ref::<disintegrate_postgres::Error>() {
        Some(disintegrate_postgres::Error::Concurrency) => true,
        Some(disintegrate_postgres::Error::Database(sqlx::Error::Database(db))) => {
            db.code().as_deref() == Some("40001")
        }
        _ => false,
    }
}

#[async_trait]
impl Contender for DisintegrateSide {
    fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "disintegrate"
    }

    async fn open(&self, id: Uuid) -> BoxResult<()> {
        self.make(
            id,
            Command::Open {
                owner: "bench".into(),
            },
        )
        .await
    }

    async fn deposit(&self, id: Uuid, amount: u64) -> BoxResult<()> {
        self.make(id, Command::Deposit { amount }).await
    }

    async fn balance(&self, id: Uuid) -> BoxResult<u64> {
        let loaded = self
            .state_store
            .load(AccountState::new(&id.to_string()))
            .await?;
        Ok(loaded.state().balance)
    }

    async fn deposit_many(&self, id: Uuid, count: u64) -> BoxResult<()> {
        self.make(id, Command::DepositMany { count }).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
