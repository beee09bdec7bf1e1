//! The embedded migrations and the schema-name rules. The SQL files under `migrations/` are
//! compiled into the crate, so a deployed binary needs nothing on disk to migrate.

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};

use crate::{Error, Result};

/// Every migration, in order. Append new ones; never edit an applied one (sqlx checks their
/// checksums and refuses to run against a database migrated with different text).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "event store",
        include_str!("../migrations/0001_event_store.sql"),
    ),
    (
        2,
        "subscriptions",
        include_str!("../migrations/0002_subscriptions.sql"),
    ),
    (
        3,
        "subscription protocol",
        include_str!("../migrations/0003_subscription_protocol.sql"),
    ),
    (
        4,
        "command fingerprints",
        include_str!("../migrations/0004_command_fingerprints.sql"),
    ),
    (
        5,
        "stream horizon function",
        include_str!("../migrations/0005_stream_horizon.sql"),
    ),
];

/// The migrations as a sqlx source, built from the embedded text instead of a directory.
#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

pub(crate) async fn migrator() -> Result<Migrator, MigrateError> {
    Migrator::new(Embedded).await
}

/// Checks a schema name: ASCII letter or `_` first, then ASCII letters, digits and `_`, at
/// most 63 bytes (PostgreSQL's identifier limit), not `pg_...` (reserved for the system).
pub fn validate_schema(name: &str) -> Result<()> {
    let invalid = |reason| {
        let mut shown = name.chars().take(64).collect::<String>();
        if shown.len() < name.len() {
            shown.push_str("...");
        }
        Err(Error::InvalidSchema {
            name: shown,
            reason,
        })
    };
    let Some(first) = name.chars().next() else {
        return invalid("it is empty");
    };
    if name.len() > 63 {
        return invalid("it is longer than 63 bytes, PostgreSQL's limit for names");
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return invalid("it must start with an ASCII letter or `_`");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return invalid("only ASCII letters, digits and `_` are allowed");
    }
    if name.to_ascii_lowercase().starts_with("pg_") {
        return invalid("names starting with `pg_` are reserved for PostgreSQL's own schemas");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for good in ["public", "tenant_a", "_x", "T1", &"a".repeat(63)] {
            assert!(validate_schema(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "a-b",
            "a\"b",
            "a b",
            "tenant;drop",
            "pg_catalog",
            "é",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(validate_schema(bad), Err(Error::InvalidSchema { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn migrations_are_ordered() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
    }
}
