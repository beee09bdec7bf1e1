//! The error of this crate's own operations: connecting, migrating and running a throwaway
//! server. The [`eventuate_core::EventStore`] methods return [`eventuate_core::Error`] instead,
//! so that code written against the trait never sees a backend-specific type.

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while setting up a PostgreSQL event store or a throwaway server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The schema name cannot be used: it is spliced into SQL, so only plain identifiers pass.
    #[error("invalid schema name `{name}`: {reason}")]
    InvalidSchema {
        /// The refused name (truncated when very long).
        name: String,
        /// Why.
        reason: &'static str,
    },

    /// The connection pool could not connect.
    #[error("cannot connect to PostgreSQL: {source}")]
    Connect {
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The connection pool size given to
    /// [`PostgresEventStoreBuilder::max_connections`](crate::PostgresEventStoreBuilder::max_connections)
    /// cannot work.
    #[error(
        "max_connections({requested}) is invalid: the event store's pool needs at least \
         {minimum} connection (the LISTEN connection that wakes subscribers is opened outside \
         the pool and is not counted)"
    )]
    InvalidMaxConnections {
        /// The refused size.
        requested: u32,
        /// The smallest size accepted.
        minimum: u32,
    },

    /// Applying the embedded migrations failed.
    #[error("cannot migrate the event store schema `{schema}`: {source}")]
    Migrate {
        /// The schema being migrated.
        schema: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// A statement failed.
    #[error("{context}: {source}")]
    Database {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// No PostgreSQL server binaries were found for a throwaway server.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in {searched}; {hint}"
    )]
    ServerBinariesNotFound {
        /// Where they were searched.
        searched: String,
        /// How to install them.
        hint: &'static str,
    },

    /// A throwaway server could not be created, started or stopped.
    #[error("throwaway PostgreSQL server: {what} failed: {detail}")]
    Server {
        /// The step that failed (`initdb`, `pg_ctl`, `start`, ...).
        what: &'static str,
        /// The tool's output or the server log.
        detail: String,
    },

    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
