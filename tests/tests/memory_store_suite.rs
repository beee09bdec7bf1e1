//! The shared EventStore behaviour suite, run against the in-memory store.

eventuate_core::store_behaviour_suite!(async { eventuate_core::InMemoryEventStore::new() });
