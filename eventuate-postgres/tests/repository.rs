//! The repository's aggregate cache on PostgreSQL, with two processes (two stores, two
//! repositories, each with its own cache) over one database: a rejection decided on a stale
//! cache is confirmed against the database and decided again on what it holds.

#![allow(clippy::unwrap_used)]

use eventuate_core::prelude::*;
use eventuate_core::{RepositoryOptions, Result};
use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::test_database;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {}
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
}
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Withdrawn {
    amount: u64,
}

#[derive(Debug, Clone, Events)]
enum AccountEvent {
    Opened(Opened),
    Deposited(Deposited),
    Withdrawn(Withdrawn),
}

#[aggregate(name = "Account", events = AccountEvent)]
#[derive(Debug, Default, Clone)]
struct Account {
    balance: u64,
}

struct Open;
struct Deposit(u64);
struct Withdraw(u64);

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("insufficient funds: balance {balance}")]
struct InsufficientFunds {
    balance: u64,
}

#[command_handler]
impl Account {
    fn open(&self, _: &Open) -> std::result::Result<Opened, InsufficientFunds> {
        Ok(Opened {})
    }
    fn deposit(&self, cmd: &Deposit) -> std::result::Result<Deposited, InsufficientFunds> {
        Ok(Deposited { amount: cmd.0 })
    }
    fn withdraw(&self, cmd: &Withdraw) -> std::result::Result<Withdrawn, InsufficientFunds> {
        if cmd.0 > self.balance {
            return Err(InsufficientFunds {
                balance: self.balance,
            });
        }
        Ok(Withdrawn { amount: cmd.0 })
    }
    #[apply]
    fn opened(&mut self, _: &Opened) {}
    #[apply]
    fn deposited(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }
    #[apply]
    fn withdrawn(&mut self, e: &Withdrawn) {
        self.balance -= e.amount;
    }
}

async fn process(url: &str) -> Repository {
    let store = PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(url)
        .await
        .unwrap();
    Repository::new(store).with_options(RepositoryOptions {
        cache_capacity: 100,
        ..RepositoryOptions::default()
    })
}

#[tokio::test]
async fn a_rejection_on_a_stale_cache_is_decided_again_on_the_stored_state() -> Result<()> {
    let db = test_database().await;
    let ours = process(&db.url).await;
    let theirs = process(&db.url).await;
    ours.create_with_id::<Account>("a", Open).await?;
    // Our cache holds balance 0 at version 1; the other process deposits 100.
    theirs.update::<Account>("a", Deposit(100)).await?;
    let withdrawn = ours.update::<Account>("a", Withdraw(60)).await?;
    assert_eq!((withdrawn.version, withdrawn.state.balance), (3, 40));

    theirs.update::<Account>("a", Deposit(10)).await?;
    let err = ours
        .update::<Account>("a", Withdraw(1_000))
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection::<InsufficientFunds>(),
        Some(&InsufficientFunds { balance: 50 }),
        "{err}"
    );
    assert_eq!(ours.load::<Account>("a").await?.version, 4);
    Ok(())
}
