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

    /// Applying the embedded migrations failed (no longer returned: the store runs its
    /// migrations itself, and reports a failed statement as [`Error::Database`]).
    #[error("cannot migrate the event store schema `{schema}`: {source}")]
    Migrate {
        /// The schema being migrated.
        schema: String,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// The schema was migrated by a newer release of eventuate-postgres: its migration
    /// history (`eventuate_migrations`) has versions this release does not know. Running this
    /// release against it could misread the newer tables; upgrade the application instead.
    #[error(
        "the event store schema `{schema}` was migrated by a newer release of \
         eventuate-postgres: it is at migration version {applied}, and this release knows \
         versions up to {known}; run a release that knows version {applied} (or newer)"
    )]
    SchemaFromNewerRelease {
        /// The schema.
        schema: String,
        /// The newest migration version applied to it.
        applied: i64,
        /// The newest migration version this release knows.
        known: i64,
    },

    /// A migration applied to the schema had another text than this release's migration of
    /// the same version (its checksum differs): the schema's tables may not be what this
    /// release expects.
    #[error(
        "the event store schema `{schema}` has migration {version} ({description}) applied \
         with another text than this release's (checksum mismatch)"
    )]
    MigrationChanged {
        /// The schema.
        schema: String,
        /// The migration's version.
        version: i64,
        /// The migration's description.
        description: &'static str,
    },

    /// The store holds events written by transactions whose ids this cluster has not
    /// reached yet: it was restored or replicated *logically* into another cluster (pg_dump
    /// and restore, logical replication). Stream positions are `(transaction id, sequence)`
    /// with the writer's transaction id, so events written from now on would sort before the
    /// stored ones and subscribers, which continue after their checkpoints, would never see
    /// them. Refused when the store connects or migrates and at its first stream read; see
    /// [`crate::ordering`] ("Physical moves only").
    #[error(
        "the event store in schema `{schema}` was restored or replicated logically into \
         another PostgreSQL cluster: its events were written by transactions up to id \
         {max_stored}, but this cluster's next transaction id is {current_xid}. Positions \
         depend on transaction ids, so events written from now on would sort before the stored \
         ones and subscribers would never see them. Move an event store physically \
         (pg_basebackup, physical replication, pg_upgrade), or, before using this cluster, \
         re-number it by moving the cluster's transaction ids past {max_stored} (pg_resetwal \
         --epoch={epoch} on the cleanly stopped cluster; see eventuate_postgres::ordering)",
        epoch = (*max_stored >> 32) + 1
    )]
    LogicalMoveDetected {
        /// The schema of the store.
        schema: String,
        /// This cluster's next transaction id (the xmax of a current snapshot).
        current_xid: u64,
        /// The largest transaction id among the stored events.
        max_stored: u64,
    },

    /// No stored state for this subscriber (an admin operation named it).
    #[error("no subscriber `{subscriber}` is stored in this schema")]
    UnknownSubscriber {
        /// The subscriber id.
        subscriber: String,
    },

    /// An operation shared with the runtime failed (reading subscription state, the stream).
    #[error(transparent)]
    Core(#[from] eventuate_core::Error),

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
