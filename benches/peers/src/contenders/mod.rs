//! The sides of the comparison: one bank account per library, written the way the library's
//! documentation shows, behind one small interface so that every workload drives each of them
//! with the same calls, ids and amounts.

mod cqrs;
pub mod disintegrate;
mod esrs;
pub mod eventuate;
pub mod raw;

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use crate::BoxResult;
use crate::env::Env;

/// Largest number of events one set-up command appends (see [`Contender::fill`]).
pub const FILL_BATCH: u64 = 1_000;

/// The business errors of the account, shared by every library's version of it.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
}

/// One library's account.
#[async_trait]
pub trait Contender: Send + Sync {
    /// The library, as printed in the table.
    fn name(&self) -> &'static str;

    /// The `Open` command on a new account: one `Opened` event.
    async fn open(&self, id: Uuid) -> BoxResult<()>;

    /// One `Deposit` command: load the account, decide, append one `Deposited` event.
    async fn deposit(&self, id: Uuid, amount: u64) -> BoxResult<()>;

    /// Loads the account (all its events) and returns its balance.
    async fn balance(&self, id: Uuid) -> BoxResult<u64>;

    /// Untimed set-up: `count` deposits of 1, by commands that each append up to
    /// [`FILL_BATCH`] `Deposited` events.
    async fn fill(&self, id: Uuid, count: u64) -> BoxResult<()> {
        let mut left = count;
        while left > 0 {
            let batch = left.min(FILL_BATCH);
            self.deposit_many(id, batch).await?;
            left -= batch;
        }
        Ok(())
    }

    /// A `DepositMany` command: `count` `Deposited` events of 1 in one append.
    async fn deposit_many(&self, id: Uuid, count: u64) -> BoxResult<()>;

    /// Commands retried so far after concurrency errors that the library left to the
    /// application (those it retries itself are not counted).
    fn retries(&self) -> u64 {
        0
    }

    /// Closes the library's pool.
    async fn close(&self);
}

/// Every side of the command and load workloads, each in its own database on one server.
pub struct Sides {
    pub raw: Arc<dyn Contender>,
    /// The cached command's floor; commands only (see [`raw::RawInsertOnly`]).
    pub raw_insert_only: Arc<dyn Contender>,
    pub eventuate: Arc<dyn Contender>,
    pub eventuate_cached: Arc<dyn Contender>,
    pub cqrs: Arc<dyn Contender>,
    pub esrs: Arc<dyn Contender>,
    pub disintegrate: Arc<dyn Contender>,
}

impl Sides {
    pub async fn connect(env: &Env) -> BoxResult<Sides> {
        let eventuate_url = env.database("eventuate").await?;
        let (eventuate, eventuate_cached) = eventuate::EventuateSide::pair(&eventuate_url).await?;
        Ok(Sides {
            raw: Arc::new(raw::RawSide::connect(&env.database("raw").await?).await?),
            raw_insert_only: Arc::new(
                raw::RawInsertOnly::connect(&env.database("raw_insert_only").await?).await?,
            ),
            eventuate: Arc::new(eventuate),
            eventuate_cached: Arc::new(eventuate_cached),
            cqrs: Arc::new(cqrs::CqrsSide::connect(&env.database("cqrs_es").await?).await?),
            esrs: Arc::new(esrs::EsrsSide::connect(&env.database("esrs").await?).await?),
            disintegrate: Arc::new(
                disintegrate::DisintegrateSide::connect(&env.database("disintegrate").await?)
                    .await?,
            ),
        })
    }

    /// The library sides without the cache, then the cached one, then the raw floor.
    pub fn all(&self) -> Vec<Arc<dyn Contender>> {
        vec![
            self.eventuate.clone(),
            self.cqrs.clone(),
            self.esrs.clone(),
            self.disintegrate.clone(),
            self.eventuate_cached.clone(),
            self.raw.clone(),
        ]
    }

    /// [`Sides::all`] and the cached command's floor: the command workload's sides.
    pub fn commands(&self) -> Vec<Arc<dyn Contender>> {
        let mut sides = self.all();
        sides.push(self.raw_insert_only.clone());
        sides
    }

    pub async fn close(&self) {
        for side in self.commands() {
            side.close().await;
        }
    }
}
