//! Money transfers between bank accounts on the in-memory store: two accounts, one transfer
//! that fits and one that does not, settled by the subscribers in `workflows`.
//!
//! Run: `cargo run -p bank-transfers`

mod account;
mod transfer;
mod workflows;

use std::process::ExitCode;
use std::time::Duration;

use account::{Account, OpenAccount};
use eventuate_core::prelude::*;
use transfer::{Initiate, MoneyTransfer, TransferState};
use workflows::{DebitSource, SettleTransfer};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, Error> {
    let runtime = Eventuate::new(InMemoryEventStore::new())
        .subscriber(DebitSource)
        .subscriber(SettleTransfer)
        .start()?;
    let repo = runtime.repository();

    for (id, owner, balance) in [("alice", "Alice", 100), ("bob", "Bob", 0)] {
        let open = OpenAccount {
            owner: owner.into(),
            balance,
        };
        repo.create_with_id::<Account>(id, open).await?;
    }
    let fits = Initiate {
        from: "alice".into(),
        to: "bob".into(),
        amount: 30,
    };
    let too_big = Initiate {
        from: "alice".into(),
        to: "bob".into(),
        amount: 500,
    };
    let first = repo.create::<MoneyTransfer>(fits).await?.entity_id;
    let second = repo.create::<MoneyTransfer>(too_big).await?.entity_id;

    runtime.wait_caught_up(Duration::from_secs(10)).await?;

    let alice = repo.load::<Account>("alice").await?.state;
    let bob = repo.load::<Account>("bob").await?.state;
    let first = repo.load::<MoneyTransfer>(&first).await?.state;
    let second = repo.load::<MoneyTransfer>(&second).await?.state;
    println!("transfer of  30 alice -> bob: {:?}", first.state);
    println!("transfer of 500 alice -> bob: {:?}", second.state);
    println!("alice: {}, bob: {}", alice.balance, bob.balance);
    runtime.shutdown().await?;

    let expected = first.state == TransferState::Completed
        && second.state == TransferState::Failed
        && (alice.balance, bob.balance) == (70, 30);
    if !expected {
        eprintln!("unexpected outcome");
    }
    Ok(expected)
}

#[cfg(test)]
mod tests {
    /// The example settles as it says: one transfer completed, one failed, balances 70/30.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_transfers_settle() {
        assert!(matches!(super::run().await, Ok(true)));
    }
}
