//! The macro-generated aggregates and subscribers run unchanged on the PostgreSQL dispatcher:
//! only the store differs from the in-memory run. (Here rather than in `tests/`, so that the
//! trybuild project of `tests/` does not have to build sqlx.)

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use eventuate_core::EventStore;
use eventuate_core::prelude::*;
use eventuate_core::runtime::RuntimeOptions;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountOpened {
    owner: String,
}
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
}

#[derive(Debug, Clone, Events)]
enum AccountEvent {
    Opened(AccountOpened),
    Deposited(Deposited),
}

#[aggregate(name = "Account", events = AccountEvent)]
#[derive(Debug, Default, Clone)]
struct Account {
    balance: u64,
}

struct Open;
struct Deposit {
    amount: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[command_handler]
impl Account {
    fn open(&self, _: &Open) -> Result<AccountOpened, Never> {
        Ok(AccountOpened {
            owner: "ann".into(),
        })
    }
    fn deposit(&self, cmd: &Deposit) -> Result<Deposited, Never> {
        Ok(Deposited { amount: cmd.amount })
    }
    #[apply]
    fn opened(&mut self, _: &AccountOpened) {}
    #[apply]
    fn deposited(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }
}

/// Mirrors every account into `mirror-<id>`: the opening creates the mirror, each deposit is
/// repeated on it. The commands depend only on the event, so a retry sends the same ones.
struct Mirror;

#[event_handler(subscribe = Account, id = "mirror", max_attempts = 3)]
impl Mirror {
    async fn on_opened(&self, ctx: &EventContext, _: &AccountOpened) -> Result<(), HandlerError> {
        if ctx.entity_id().starts_with("mirror-") {
            return Ok(());
        }
        ctx.create::<Account>(&format!("mirror-{}", ctx.entity_id()), Open)
            .await?;
        Ok(())
    }

    async fn on_deposit(&self, ctx: &EventContext, e: &Deposited) -> Result<(), HandlerError> {
        if ctx.entity_id().starts_with("mirror-") {
            return Ok(());
        }
        let target = format!("mirror-{}", ctx.entity_id());
        ctx.update::<Account>(&target, Deposit { amount: e.amount })
            .await?;
        Ok(())
    }
}

async fn run_saga<S>(store: S) -> u64
where
    S: EventStore + eventuate_core::runtime::SubscriptionStore,
{
    let runtime = Eventuate::new(store)
        .options(RuntimeOptions {
            poll_interval: Duration::from_millis(100),
            ..RuntimeOptions::default()
        })
        .subscriber(Mirror)
        .start()
        .unwrap();
    let repo = runtime.repository();
    for id in ["a", "b"] {
        repo.create_with_id::<Account>(id, Open).await.unwrap();
        for amount in 1..=5 {
            repo.update::<Account>(id, Deposit { amount })
                .await
                .unwrap();
        }
    }
    runtime
        .wait_caught_up(Duration::from_secs(20))
        .await
        .unwrap();
    let total = repo
        .load::<Account>("mirror-a")
        .await
        .unwrap()
        .state
        .balance
        + repo
            .load::<Account>("mirror-b")
            .await
            .unwrap()
            .state
            .balance;
    runtime.shutdown().await.unwrap();
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory() {
    assert_eq!(run_saga(InMemoryEventStore::new()).await, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    let db = eventuate_postgres::embedded::test_database().await;
    let store = eventuate_postgres::PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(&db.url)
        .await
        .unwrap();
    assert_eq!(run_saga(store).await, 30);
}
