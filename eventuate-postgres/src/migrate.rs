//! The embedded migrations and the schema-name rules. The SQL files under `migrations/` are
//! compiled into the crate, so a deployed binary needs nothing on disk to migrate.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType};
use sqlx::{Acquire, PgConnection};

use crate::store::quote;
use crate::{Error, Result};

/// Every migration, in order. Append new ones; never edit an applied one (the runner checks
/// their checksums and refuses to run against a database migrated with different text).
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
    (
        6,
        "schema version column",
        include_str!("../migrations/0006_schema_version_column.sql"),
    ),
];

/// The table, in the store's schema, that records which of [`MIGRATIONS`] are applied. Not
/// sqlx's `_sqlx_migrations`: an application that runs its own sqlx migrations in the same
/// schema keeps that table to itself.
pub const MIGRATIONS_TABLE: &str = "eventuate_migrations";

/// The newest migration version this release knows.
pub fn latest_migration() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Key of the advisory lock that serializes migrators of one schema (with the schema's name).
const LOCK_KEY: i64 = 7461;

/// A migration as the runner applies it: its SHA-384 checksum is sqlx's, so that a history
/// adopted from `_sqlx_migrations` compares equal.
struct Step {
    version: i64,
    description: &'static str,
    sql: &'static str,
    checksum: Vec<u8>,
}

fn steps() -> Vec<Step> {
    MIGRATIONS
        .iter()
        .map(|&(version, description, sql)| {
            let m = Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            );
            Step {
                version,
                description,
                sql,
                checksum: m.checksum.into_owned(),
            }
        })
        .collect()
}

/// What the history table says, compared with this release's migrations.
enum Plan {
    /// Every migration is applied, none changed, none unknown.
    UpToDate,
    /// Some are missing (or the history table does not exist yet).
    Pending,
}

fn database(schema: &str, context: &str) -> impl FnOnce(sqlx::Error) -> Error {
    let context = format!("{context} (schema `{schema}`)");
    move |source| Error::Database { context, source }
}

/// Reads the history (if the table exists) and compares it with ours. Read-only: what a
/// least-privilege role runs on every connect.
async fn plan(conn: &mut PgConnection, schema: &str, steps: &[Step]) -> Result<Plan> {
    let quoted = quote(schema);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{quoted}.{MIGRATIONS_TABLE}"))
        .fetch_one(&mut *conn)
        .await
        .map_err(database(schema, "look for the migration history"))?;
    if !exists {
        return Ok(Plan::Pending);
    }
    let applied: Vec<(i64, Vec<u8>)> = sqlx::query_as(&format!(
        "SELECT version, checksum FROM {quoted}.{MIGRATIONS_TABLE} ORDER BY version"
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(database(schema, "read the migration history"))?;
    compare(schema, steps, &applied)
}

fn compare(schema: &str, steps: &[Step], applied: &[(i64, Vec<u8>)]) -> Result<Plan> {
    let known = steps.last().map_or(0, |s| s.version);
    if let Some(&(newest, _)) = applied
        .iter()
        .rev()
        .find(|(v, _)| !steps.iter().any(|s| s.version == *v))
    {
        return Err(Error::SchemaFromNewerRelease {
            schema: schema.to_owned(),
            applied: applied.iter().map(|a| a.0).max().unwrap_or(newest),
            known,
        });
    }
    for (version, checksum) in applied {
        if let Some(step) = steps.iter().find(|s| s.version == *version) {
            if step.checksum != *checksum {
                return Err(Error::MigrationChanged {
                    schema: schema.to_owned(),
                    version: *version,
                    description: step.description,
                });
            }
        }
    }
    if steps
        .iter()
        .all(|s| applied.iter().any(|a| a.0 == s.version))
    {
        Ok(Plan::UpToDate)
    } else {
        Ok(Plan::Pending)
    }
}

/// Applies the migrations of this release that the schema lacks, on `conn` (which it leaves
/// with its session state untouched: every `search_path` change is transaction-local).
///
/// - **Nothing to do costs a read.** The history is read first, without any lock or DDL: a
///   role that may only read and write the store's tables connects with `migrate_on_connect`
///   as long as a deployment step migrated the schema.
/// - **Concurrent migrators** serialize on a session advisory lock keyed by the schema's name,
///   then read the history again.
/// - **One transaction per migration**, which records it in [`MIGRATIONS_TABLE`] with sqlx's
///   checksum; a migration whose text changed since it was applied is refused
///   ([`Error::MigrationChanged`]), and so is a history with versions this release does not
///   know ([`Error::SchemaFromNewerRelease`]).
/// - **Adoption.** A schema migrated by a release that used sqlx's `_sqlx_migrations` table
///   has its rows of our migrations (same version, same checksum) moved into
///   [`MIGRATIONS_TABLE`] in one transaction; nothing is run again, and the application's own
///   rows, if any, stay where they are.
pub(crate) async fn run(conn: &mut PgConnection, schema: &str) -> Result<()> {
    let steps = steps();
    if let Plan::UpToDate = plan(conn, schema, &steps).await? {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, $2))")
        .bind(schema)
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await
        .map_err(database(schema, "lock the schema against other migrators"))?;
    let outcome = run_locked(conn, schema, &steps).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, $2))")
        .bind(schema)
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await
        .map_err(database(schema, "unlock the schema"));
    outcome.and(unlocked.map(|_| ()))
}

async fn run_locked(conn: &mut PgConnection, schema: &str, steps: &[Step]) -> Result<()> {
    let quoted = quote(schema);
    let history = format!("{quoted}.{MIGRATIONS_TABLE}");
    {
        let mut tx = conn.begin().await.map_err(database(schema, "begin"))?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
            .execute(&mut *tx)
            .await
            .map_err(database(schema, "create the schema"))?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {history} (\
               version        BIGINT PRIMARY KEY, \
               description    TEXT NOT NULL, \
               checksum       BYTEA NOT NULL, \
               installed_on   TIMESTAMPTZ NOT NULL DEFAULT now(), \
               execution_ms   BIGINT NOT NULL)"
        ))
        .execute(&mut *tx)
        .await
        .map_err(database(schema, "create the migration history table"))?;
        adopt(&mut tx, schema, steps).await?;
        tx.commit()
            .await
            .map_err(database(schema, "commit the migration history table"))?;
    }
    // Another migrator may have finished while we waited for the lock.
    let applied: Vec<(i64, Vec<u8>)> = sqlx::query_as(&format!(
        "SELECT version, checksum FROM {history} ORDER BY version"
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(database(schema, "read the migration history"))?;
    compare(schema, steps, &applied)?;
    for step in steps {
        if applied.iter().any(|a| a.0 == step.version) {
            continue;
        }
        let context = format!("apply migration {} ({})", step.version, step.description);
        let started = std::time::Instant::now();
        let mut tx = conn.begin().await.map_err(database(schema, &context))?;
        // The migration SQL is static and unqualified: it lands in the schema.
        sqlx::query(&format!("SET LOCAL search_path TO {quoted}"))
            .execute(&mut *tx)
            .await
            .map_err(database(schema, &context))?;
        sqlx::raw_sql(step.sql)
            .execute(&mut *tx)
            .await
            .map_err(database(schema, &context))?;
        sqlx::query(&format!(
            "INSERT INTO {history} (version, description, checksum, execution_ms) \
             VALUES ($1, $2, $3, $4)"
        ))
        .bind(step.version)
        .bind(step.description)
        .bind(&step.checksum)
        .bind(i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(database(schema, &context))?;
        tx.commit().await.map_err(database(schema, &context))?;
    }
    Ok(())
}

/// Moves our rows of a `_sqlx_migrations` table in the schema (left by a release that ran
/// sqlx's migrator) into the history, once: only when the history is still empty, and only
/// rows of our versions with our checksums (an application's rows never match both).
async fn adopt(tx: &mut PgConnection, schema: &str, steps: &[Step]) -> Result<()> {
    let quoted = quote(schema);
    let history = format!("{quoted}.{MIGRATIONS_TABLE}");
    let empty: bool = sqlx::query_scalar(&format!("SELECT NOT EXISTS (SELECT 1 FROM {history})"))
        .fetch_one(&mut *tx)
        .await
        .map_err(database(schema, "read the migration history"))?;
    let legacy_exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{quoted}._sqlx_migrations"))
        .fetch_one(&mut *tx)
        .await
        .map_err(database(schema, "look for a sqlx migration history"))?;
    if !empty || !legacy_exists {
        return Ok(());
    }
    let legacy: Vec<(i64, Vec<u8>)> = sqlx::query_as(&format!(
        "SELECT version, checksum FROM {quoted}._sqlx_migrations WHERE success ORDER BY version"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(database(schema, "read the sqlx migration history"))?;
    for (version, checksum) in legacy {
        let Some(step) = steps
            .iter()
            .find(|s| s.version == version && s.checksum == checksum)
        else {
            continue;
        };
        sqlx::query(&format!(
            "INSERT INTO {history} (version, description, checksum, installed_on, execution_ms) \
             SELECT version, $2, checksum, installed_on, execution_time / 1000000 \
             FROM {quoted}._sqlx_migrations WHERE version = $1"
        ))
        .bind(version)
        .bind(step.description)
        .execute(&mut *tx)
        .await
        .map_err(database(schema, "adopt the sqlx migration history"))?;
        // Left there, our rows would make the application's own sqlx migrator (in this schema)
        // report versions it does not know.
        sqlx::query(&format!(
            "DELETE FROM {quoted}._sqlx_migrations WHERE version = $1"
        ))
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(database(schema, "adopt the sqlx migration history"))?;
    }
    Ok(())
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
