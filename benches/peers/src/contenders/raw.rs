//! The raw floors: what any library has to do at least, in plain sqlx. A command is one
//! SELECT of the account's events (decoded and folded) and one autocommit INSERT of the new
//! event at the next version, in a table of the usual shape (global sequence, stream id and
//! version unique, JSON payload). The second floor, [`RawInsertOnly`], is the ceiling of a
//! library with an aggregate cache: the version is known in memory, a command is the INSERT.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::Contender;
use crate::BoxResult;
use crate::env::Env;

const SCHEMA: &str = "CREATE TABLE events (
    seq bigserial PRIMARY KEY,
    stream_id uuid NOT NULL,
    version bigint NOT NULL,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    UNIQUE (stream_id, version))";

#[derive(Debug, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

pub struct RawSide {
    pub pool: PgPool,
}

impl RawSide {
    pub async fn connect(url: &str) -> BoxResult<RawSide> {
        let pool = Env::pool(url).await?;
        sqlx::query(SCHEMA).execute(&pool).await?;
        Ok(RawSide { pool })
    }

    /// The account's (version, balance), from all its events.
    async fn load(&self, id: Uuid) -> BoxResult<(i64, u64)> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT version, event_type, payload::text FROM events \
             WHERE stream_id = $1 ORDER BY version",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let (mut version, mut balance) = (0, 0);
        for (v, event_type, payload) in rows {
            if event_type == "Deposited" {
                balance += serde_json::from_str::<Deposited>(&payload)?.amount;
            }
            version = v;
        }
        Ok((version, balance))
    }

    /// One `Deposited` event at `version`: one autocommit INSERT.
    async fn insert_deposit(&self, id: Uuid, version: i64, amount: u64) -> BoxResult<()> {
        let payload = serde_json::to_string(&Deposited { amount })?;
        sqlx::query(
            "INSERT INTO events (stream_id, version, event_type, payload) \
             VALUES ($1, $2, 'Deposited', $3::jsonb)",
        )
        .bind(id)
        .bind(version)
        .bind(payload)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn append(&self, id: Uuid, after: i64, events: &[(&str, String)]) -> BoxResult<()> {
        let versions: Vec<i64> = (1..=events.len() as i64).map(|k| after + k).collect();
        let types: Vec<&str> = events.iter().map(|(t, _)| *t).collect();
        let payloads: Vec<&str> = events.iter().map(|(_, p)| p.as_str()).collect();
        sqlx::query(
            "INSERT INTO events (stream_id, version, event_type, payload) \
             SELECT $1, v, t, p::jsonb FROM UNNEST($2::bigint[], $3::text[], $4::text[]) AS u(v, t, p)",
        )
        .bind(id)
        .bind(&versions)
        .bind(&types)
        .bind(&payloads)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Contender for RawSide {
    fn name(&self) -> &'static str {
        "raw sqlx"
    }

    async fn open(&self, id: Uuid) -> BoxResult<()> {
        self.append(id, 0, &[("Opened", r#"{"owner":"bench"}"#.to_owned())])
            .await
    }

    async fn deposit(&self, id: Uuid, amount: u64) -> BoxResult<()> {
        let (version, _) = self.load(id).await?;
        self.insert_deposit(id, version + 1, amount).await
    }

    async fn balance(&self, id: Uuid) -> BoxResult<u64> {
        Ok(self.load(id).await?.1)
    }

    async fn deposit_many(&self, id: Uuid, count: u64) -> BoxResult<()> {
        let (version, _) = self.load(id).await?;
        let payload = serde_json::to_string(&Deposited { amount: 1 })?;
        let events: Vec<(&str, String)> =
            (0..count).map(|_| ("Deposited", payload.clone())).collect();
        self.append(id, version, &events).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// The floor of a cached command: [`RawSide`]'s table and INSERT, each account's version kept
/// in memory (as an aggregate cache keeps it), so a command never reads.
pub struct RawInsertOnly {
    raw: RawSide,
    versions: Mutex<HashMap<Uuid, i64>>,
}

impl RawInsertOnly {
    pub async fn connect(url: &str) -> BoxResult<RawInsertOnly> {
        Ok(RawInsertOnly {
            raw: RawSide::connect(url).await?,
            versions: Mutex::new(HashMap::new()),
        })
    }

    fn version(&self, id: Uuid) -> Option<i64> {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }

    fn set_version(&self, id: Uuid, version: i64) {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, version);
    }
}

#[async_trait]
impl Contender for RawInsertOnly {
    fn name(&self) -> &'static str {
        "raw sqlx, INSERT only"
    }

    async fn open(&self, id: Uuid) -> BoxResult<()> {
        self.raw.open(id).await?;
        self.set_version(id, 1);
        Ok(())
    }

    async fn deposit(&self, id: Uuid, amount: u64) -> BoxResult<()> {
        let version = match self.version(id) {
            Some(version) => version,
            None => self.raw.load(id).await?.0,
        };
        self.raw.insert_deposit(id, version + 1, amount).await?;
        self.set_version(id, version + 1);
        Ok(())
    }

    async fn balance(&self, id: Uuid) -> BoxResult<u64> {
        self.raw.balance(id).await
    }

    async fn deposit_many(&self, id: Uuid, count: u64) -> BoxResult<()> {
        self.raw.deposit_many(id, count).await?;
        let (version, _) = self.raw.load(id).await?;
        self.set_version(id, version);
        Ok(())
    }

    async fn close(&self) {
        self.raw.close().await;
    }
}
