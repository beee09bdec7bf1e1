//! The shared `EventStore` behaviour suite of eventuate-core, run against PostgreSQL: each case
//! on a fresh database of the throwaway server, so the PostgreSQL and in-memory stores cannot
//! drift apart.

use eventuate_postgres::PostgresEventStore;
use eventuate_postgres::embedded::test_database;

eventuate_core::store_behaviour_suite!(async {
    let db = test_database().await;
    PostgresEventStore::builder()
        .migrate_on_connect(true)
        .connect(&db.url)
        .await
        .expect("connect to the test database")
});
