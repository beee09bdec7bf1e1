//! How the global stream is ordered, and why a reader following it never skips an event.
//!
//! # The problem
//!
//! Readers follow the stream by remembering the last position they handled and asking for
//! everything after it. With a plain `BIGSERIAL` position that is not safe: positions are
//! assigned when a row is inserted, but rows become visible when their transaction commits, and
//! transactions commit in any order. Transaction A takes position 10, transaction B takes 11
//! and commits first; a reader sees 11, remembers it, and never looks at 10 again once A
//! commits. The event is lost for that reader.
//!
//! # What this store does
//!
//! Every event row records `transaction_id`, the 64-bit id of the transaction that wrote it
//! (`pg_current_xact_id()`, the default of the column), next to its `sequence` (a
//! `BIGSERIAL`). The stream is ordered by `(transaction_id, sequence)`, and a reader only
//! reads rows whose transaction id is below a *horizon* computed from its statement's
//! snapshot:
//!
//! ```sql
//! SELECT ... FROM events
//! WHERE (transaction_id, sequence) > ($after_transaction, $after_sequence)
//!   AND transaction_id < horizon
//! ORDER BY transaction_id, sequence
//! LIMIT $n
//! ```
//!
//! In its simplest form the horizon is the snapshot's *xmin*
//! (`pg_snapshot_xmin(pg_current_snapshot())`): the oldest transaction that was still running
//! when the snapshot was taken. Every transaction with a smaller id has finished: it committed
//! (and its rows are visible to the statement) or it aborted (and it has no rows). So the set
//! of rows below the horizon is final: no row can ever appear there again, and a reader that
//! has read up to some position below the horizon has seen everything before it. A
//! transaction that is still running has an id at or above the horizon, so its rows, and the
//! rows of every transaction that came after it, are held back until it finishes, instead of
//! being skipped. In the example above, B's rows wait until A commits, and then A's are
//! delivered first.
//!
//! On a primary the store tightens that horizon without giving up exactness. Transaction ids
//! are cluster-wide, so the plain xmin would also wait for transactions of *other databases*
//! of the same server, which can never write to this database's tables (a PostgreSQL
//! transaction never changes database). The horizon is therefore the smallest id among the
//! snapshot's running transactions (`pg_snapshot_xip`) that are not proven harmless, or the
//! snapshot's xmax when all are. A running transaction is proven harmless when
//! `pg_stat_activity` shows it in a backend connected to another database, or in an autovacuum
//! worker (which never writes user tables). Everything it cannot identify (a prepared
//! transaction, a transaction that ended after the snapshot was taken) still holds the horizon
//! back. The look-up is an init-plan over the backend status array, computed once per
//! statement (a fraction of a millisecond). The horizon, and with it `head()`, can therefore
//! sit lower for a moment than an earlier statement saw (a transaction of another database
//! ended in between); consumers keep the furthest position they reached, so this only delays.
//!
//! That refinement is exact only because the running list is complete: every transaction that
//! could still write a row below xmax is in it. Its result lies between xmin and xmax, and it
//! reaches xmax when the list shows nothing that could write here. An incomplete list would
//! therefore not degrade to the plain xmin, it would read past a running writer and skip its
//! rows. That is exactly what happens on a hot standby, hence the next section. (On a primary,
//! a list that is empty means xmin = xmax, so nothing is lost by taking the xmin then.)
//!
//! # Across a crash: how far a short read may claim
//!
//! "Nothing can appear below the horizon later" holds for the transaction ids the server has
//! made durable. Ids are handed out in memory and reach the WAL only with the first record a
//! transaction writes; a transaction that commits asynchronously (the store's own lease
//! renewals run with `synchronous_commit = off`) or writes nothing may take an id that is
//! not in the flushed WAL when the server crashes, and recovery resumes handing out ids
//! after the last one its WAL recorded. So an xmax seen before a crash can be handed out
//! again after it, and an event committed then can sit below a horizon a reader already
//! trusted. A short batch therefore claims to have read only up to the *newest event's
//! transaction* below the horizon (`StreamBatch::scanned_to`), whose commit is durable (the
//! store's appends commit synchronously), never up to the horizon itself. The idle-subscriber
//! saving is kept: the claim still moves past every row of other types, up to the newest
//! row. `tests/server_restart.rs` (an immediate restart mid-stream) lost the first event
//! after the restart about one run in ten before the claim was narrowed;
//! `tests/store.rs` `a_short_batch_claims_no_further_than_the_newest_event` pins it. An event
//! an application commits with `synchronous_commit = off` (its own transaction around
//! `append_in`) can itself be lost in a crash, and is outside this guarantee.
//!
//! # On a hot standby
//!
//! A standby replays the primary's WAL; its transactions are the primary's. Its snapshots
//! know which of them are still running (PostgreSQL's `KnownAssignedXids`: every id seen in
//! the WAL, and every smaller id not seen yet, counts as running until its commit or abort
//! record is replayed), but `pg_current_snapshot()` lists none of them: in recovery the
//! running ids are kept where it does not show them, and its running list is always empty.
//! `pg_stat_activity` on the standby shows the standby's backends, not the primary's. So the
//! refinement above would see nothing running and answer xmax: a reader on the standby would
//! read past a transaction still open on the primary, remember a later position, and never
//! see that transaction's events once it commits.
//!
//! The horizon is therefore the plain xmin (`pg_snapshot_xmin(pg_current_snapshot())`)
//! whenever `pg_is_in_recovery()`, or whenever the snapshot lists no running transaction at
//! all (which also covers a standby promoted between the statement's snapshot and the test).
//! On a standby that is exact, by the same argument as on a primary: the snapshot's xmin is
//! the oldest id the standby still counts as running, and every smaller id has finished on the
//! primary with its commit or abort already replayed (WAL is replayed in order, and a commit
//! record is written before the transaction stops counting as running; an id pruned as
//! finished by a running-transactions record had its commit written before that record). Its
//! rows are visible now or never will be, so nothing can appear below the horizon later.
//! `eventuate-postgres/tests/replicas.rs` proves it on a real streaming replica.
//!
//! What it costs on a standby: the horizon waits for every transaction running on the primary,
//! in *any* database of the primary's cluster (the standby cannot tell them apart), and for
//! the replay lag. Delivery from a standby stalls, never skips, while such a transaction runs.
//!
//! # Physical moves only
//!
//! A position is `(transaction_id, sequence)` with the *writer's* transaction id, and the
//! horizon compares it with the running cluster's transaction ids. That holds together only
//! while the events stay in the cluster that wrote them, or in a physical copy of it, which
//! carries the transaction counter along: a streaming or file-based standby, a
//! `pg_basebackup`, a file-system snapshot, `pg_upgrade` (which keeps the counter).
//!
//! A *logical* move does not: `pg_dump`/`pg_restore` (or `COPY`) into another cluster, or
//! logical replication. The rows keep their `transaction_id` values, but the new cluster
//! counts its own transaction ids, usually far lower. New events then get positions *before*
//! the restored ones; subscribers, which continue after their checkpoints, never see them, and
//! the horizon of the new cluster means nothing for the old ids. (Reading the stream on a
//! logical replica is not safe either: its rows arrive in the publisher's commit order with
//! the publisher's ids, so a row can appear below a position a reader has already passed.)
//!
//! The store detects the common case and refuses it: when it connects, after `migrate`, and
//! before its first stream read (a dispatcher's first read), it compares the current
//! snapshot's xmax (`pg_snapshot_xmax(pg_current_snapshot())`, the next transaction id;
//! reading it assigns none) with the largest stored `transaction_id`. A store that never left
//! its cluster cannot fail that test: every row a snapshot sees was written by a transaction
//! that finished before it, below its xmax. When the xmax is at or below the largest stored
//! id, the store returns [`Error::LogicalMoveDetected`](crate::Error::LogicalMoveDetected)
//! (at a stream read: an [`eventuate_core::Error::Backend`] whose source is that error).
//!
//! What to do then: move the store physically instead, or move the new cluster's transaction
//! ids past the stored ones before anything writes to it. The transaction id is 64 bits: a
//! 32-bit epoch and a 32-bit counter. `pg_resetwal --epoch=E` on the cleanly stopped new
//! cluster, with `E` greater than the largest stored id shifted right by 32 bits (the error
//! message gives it), raises every future id above the stored ones without touching the
//! 32-bit counter that PostgreSQL's commit log is indexed by (the documentation of
//! `pg_resetwal` says any epoch works as far as the database itself is concerned; tried on
//! PostgreSQL 15). Take a backup first, and read that documentation: it is a repair tool. The check does not catch a logical copy
//! whose cluster happens to have counted past the stored ids already; such a copy works as
//! long as nothing writes to the old cluster any more.
//!
//! Inside one transaction, `sequence` orders the events; an append writes its events in
//! version order, so one entity's versions are always ascending in the stream. Across
//! transactions, the store's append is a single statement whose transaction id is assigned
//! after its snapshot saw the entity's previous version committed, so the later version has
//! the larger transaction id. (An append made inside a longer transaction with
//! [`PostgresEventStore::append_in`](crate::PostgresEventStore::append_in) could break that
//! if its transaction got its id before the previous version was written; the store refuses
//! that append instead, see its docs.)
//!
//! # Trade-offs
//!
//! - Writers take no lock: appends to different entities never wait for each other, and an
//!   append is one statement (one round trip).
//! - Exact: no timeout, no "gap" heuristics, nothing is ever skipped.
//! - The cost is latency under long transactions. Any transaction that holds a transaction id
//!   in the *same database* holds the horizon back while it runs, whatever it writes (a table
//!   unrelated to events, another tenant's schema, a forgotten `BEGIN` in a `psql` session that
//!   wrote something), and so does a prepared transaction that was never committed, in any
//!   database. Delivery to readers then stalls (it never skips) until that transaction ends.
//!   Appends still succeed and aggregates still load; only the stream waits. To find the
//!   culprit:
//!
//!   ```sql
//!   SELECT pid, datname, backend_xid, xact_start, state, query
//!   FROM pg_stat_activity
//!   WHERE backend_xid IS NOT NULL
//!   ORDER BY age(backend_xid) DESC;
//!   -- and prepared transactions:
//!   SELECT gid, transaction, database, prepared FROM pg_prepared_xacts;
//!   ```
//!
//!   Keep transactions short in an event store's database (`idle_in_transaction_session_timeout`
//!   helps).
//! - A reader does not always see its own writes at once: right after an append commits, a
//!   concurrent append with a smaller transaction id that is still in flight hides it for the
//!   few milliseconds until it commits. Subscribers do not care (they are woken again or poll);
//!   code that must read its own append should load the entity, which is never delayed.
//! - [`EventStore::head`](eventuate_core::EventStore::head) is the largest position below the
//!   horizon, i.e. what a reader can see now, not the last event written.
//! - On a hot standby the horizon is the plain xmin (see above): exact, but it waits for every
//!   transaction running on the primary, in any database, and for the replay lag. Read the
//!   stream from the primary when that matters.
//! - Only physical copies keep positions meaningful; a logical copy is refused (see "Physical
//!   moves only").
//! - The wake-up signal after an append (an in-process `watch` channel, and later
//!   `LISTEN/NOTIFY` sent outside the writers' transactions) is only a hint: a reader woken
//!   before a slower transaction below it finished simply reads nothing new and is woken, or
//!   polls, again.
