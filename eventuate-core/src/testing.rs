//! The shared behaviour suite that every [`EventStore`] must pass (feature `testing`). The
//! in-memory store and the PostgreSQL store run the same cases, so they cannot drift apart.
//!
//! In a store's test crate:
//!
//! ```text
//! eventuate_core::store_behaviour_suite!(async { MyStore::connect(..).await.unwrap() });
//! ```
//!
//! Each case gets a fresh store from the expression and is its own `#[tokio::test]`. Stores
//! must be built with the default maximum payload (1 MiB).
//!
//! A store may make an event readable in the stream a little after its append returned (the
//! PostgreSQL store waits until older concurrent transactions, even other databases', have
//! finished); it must never skip one. So the cases wait for their own writes to become
//! readable ([`settle`]) instead of treating the first empty read as the end of the stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use uuid::Uuid;

use crate::store::{
    AppendOutcome, AppendRequest, EventStore, ExpectedVersion, IdempotencyKey, Partition,
    StreamFilter,
};
use crate::{Error, EventEnvelope, EventMetadata, NewEvent, Position, Snapshot};

/// Generates one `#[tokio::test]` per suite case, each on a fresh store from `$factory`
/// (an expression evaluating to a future of the store).
#[macro_export]
macro_rules! store_behaviour_suite {
    ($factory:expr) => {
        $crate::store_behaviour_suite!(@cases $factory;
            append_and_load, create_existing_entity_fails, expected_version_is_enforced,
            update_of_missing_entity_fails, bad_input_is_rejected_and_changes_nothing,
            idempotent_appends, concurrent_appends_one_winner, concurrent_idempotent_appends,
            idempotency_key_mismatch_is_reported,
            stream_order_filter_and_partitions, head_and_count, snapshots,
            duplicate_event_ids_are_rejected, load_with_snapshot, load_under_types,
            concurrent_writers_reader_sees_everything_once,
            external_command_ids_are_applied_once, appends_after_a_load);
    };
    (@cases $factory:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $factory.await;
                $crate::testing::$case(&store).await;
            }
        )*
    };
}

/// An event with a JSON payload `{"n": n}`.
pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.to_owned(),
        payload: format!("{{\"n\":{n}}}"),
        metadata: EventMetadata {
            command_id: Some(Uuid::new_v4()),
            command_type: Some("Test".into()),
            causation_id: Some(Uuid::new_v4()),
            correlation_id: Some(Uuid::new_v4()),
            headers: BTreeMap::from([("user".to_owned(), "ann".to_owned())]),
            ..EventMetadata::default()
        },
    }
}

/// An append request.
pub fn request(
    entity_type: &str,
    entity_id: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> AppendRequest {
    AppendRequest {
        entity_type: entity_type.to_owned(),
        entity_id: entity_id.to_owned(),
        expected,
        events,
        idempotency: None,
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

async fn read_all(
    store: &dyn EventStore,
    filter: &StreamFilter,
    batch: usize,
) -> Vec<EventEnvelope> {
    let (mut out, mut after) = (Vec::new(), Position::START);
    loop {
        let events = store
            .read_stream(after, filter, batch)
            .await
            .expect("read_stream");
        assert!(
            events.len() <= batch,
            "read_stream returned more than the limit"
        );
        let Some(last) = events.last() else {
            return out;
        };
        after = last.position;
        out.extend(events);
    }
}

/// Waits until the stream's head has reached `target` (the position of a write this test
/// made), so that reads see everything written so far, and returns it. Panics after 20 s: a
/// store whose stream never reaches its own committed writes is broken.
///
/// The head may also sit lower for a moment than a read before it saw: PostgreSQL's horizon
/// is conservative when a transaction of another database ends between a statement's
/// snapshot and its look at `pg_stat_activity` (never skipping, sometimes waiting). Tests
/// therefore read "the head now" through this, with the last position they know of.
pub async fn settle(store: &dyn EventStore, target: Position) -> Position {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let head = store.head().await.expect("head");
        if head >= target {
            return head;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream head stayed at {head}, never reaching the committed position {target}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn append_settled(store: &dyn EventStore, request: AppendRequest) -> Vec<Position> {
    match store.append(request).await.expect("append") {
        AppendOutcome::Appended { positions, .. } => {
            if let Some(last) = positions.last() {
                settle(store, *last).await;
            }
            positions
        }
        AppendOutcome::Duplicate => panic!("unexpected duplicate"),
    }
}

/// Every event of the store, read until two reads in a row agree: one read may stop short for
/// a moment (see [`settle`]).
async fn snapshot_of_store(store: &dyn EventStore) -> Vec<EventEnvelope> {
    let mut last = read_all(store, &StreamFilter::default(), 1000).await;
    for _ in 0..100 {
        let again = read_all(store, &StreamFilter::default(), 1000).await;
        if again == last {
            break;
        }
        last = again;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    last
}

/// Create, append, load: versions, ids, payloads and metadata come back as written.
pub async fn append_and_load(store: &dyn EventStore) {
    let id = unique("o");
    let first = vec![event("OrderCreated", 1), event("OrderNoted", 2)];
    let outcome = store
        .append(request("Order", &id, ExpectedVersion::New, first.clone()))
        .await
        .expect("create");
    let AppendOutcome::Appended { version, positions } = outcome else {
        panic!("create reported a duplicate")
    };
    assert_eq!(version, 2);
    assert_eq!(positions.len(), 2);
    assert!(
        positions[0] < positions[1],
        "positions ascend within an append"
    );
    let second = vec![event("OrderApproved", 3)];
    let outcome = store
        .append(request(
            "Order",
            &id,
            ExpectedVersion::Exactly(2),
            second.clone(),
        ))
        .await
        .expect("append");
    assert!(matches!(
        outcome,
        AppendOutcome::Appended { version: 3, .. }
    ));

    let loaded = store.load("Order", &id, 0).await.expect("load");
    assert_eq!(loaded.len(), 3);
    for (i, (stored, written)) in loaded.iter().zip(first.iter().chain(&second)).enumerate() {
        assert_eq!(stored.entity_version, i as u64 + 1);
        assert_eq!(stored.entity_type, "Order");
        assert_eq!(stored.entity_id, id);
        assert_eq!(stored.event_id, written.event_id);
        assert_eq!(stored.event_type, written.event_type);
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&stored.payload).expect("stored payload is JSON"),
            serde_json::from_str(&written.payload).expect("payload is JSON"),
        );
        assert_eq!(a, b);
        assert_eq!(stored.metadata.command_id, written.metadata.command_id);
        assert_eq!(stored.metadata.causation_id, written.metadata.causation_id);
        assert_eq!(
            stored.metadata.correlation_id,
            written.metadata.correlation_id
        );
        assert_eq!(stored.metadata.headers, written.metadata.headers);
    }
    assert_eq!(loaded[0].position, positions[0]);
    let after = store.load("Order", &id, 2).await.expect("load after");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].entity_version, 3);
    // The events of one command share their metadata (a store may send it once).
    let mut shared = vec![event("OrderShipped", 4), event("OrderInvoiced", 5)];
    shared[1].metadata = shared[0].metadata.clone();
    store
        .append(request(
            "Order",
            &id,
            ExpectedVersion::Exactly(3),
            shared.clone(),
        ))
        .await
        .expect("append events with shared metadata");
    let loaded = store.load("Order", &id, 3).await.expect("load shared");
    assert_eq!(loaded.len(), 2);
    for (stored, written) in loaded.iter().zip(&shared) {
        assert_eq!(stored.event_type, written.event_type);
        assert_eq!(stored.payload, written.payload);
        assert_eq!(stored.metadata.command_id, written.metadata.command_id);
        assert_eq!(stored.metadata.causation_id, written.metadata.causation_id);
        assert_eq!(stored.metadata.headers, written.metadata.headers);
    }
    assert!(
        store
            .load("Order", &unique("none"), 0)
            .await
            .expect("load")
            .is_empty()
    );
    assert!(
        store
            .load("Customer", &id, 0)
            .await
            .expect("load")
            .is_empty(),
        "types are separate"
    );
}

/// Creating an entity that exists is `EntityExists`, and writes nothing.
pub async fn create_existing_entity_fails(store: &dyn EventStore) {
    let id = unique("o");
    append_settled(
        store,
        request("Order", &id, ExpectedVersion::New, vec![event("A", 1)]),
    )
    .await;
    let before = snapshot_of_store(store).await;
    let err = store
        .append(request(
            "Order",
            &id,
            ExpectedVersion::New,
            vec![event("A", 2)],
        ))
        .await
        .expect_err("second create must fail");
    match err {
        Error::EntityExists {
            entity_type,
            entity_id,
            version,
        } => {
            assert_eq!(
                (entity_type.as_str(), entity_id.as_str(), version),
                ("Order", id.as_str(), 1)
            );
        }
        other => panic!("expected EntityExists, got {other:?}"),
    }
    assert_eq!(snapshot_of_store(store).await, before);
}

/// A stale or invented expected version is a `Conflict` naming both versions; no gap appears.
pub async fn expected_version_is_enforced(store: &dyn EventStore) {
    let id = unique("o");
    store
        .append(request(
            "Order",
            &id,
            ExpectedVersion::New,
            vec![event("A", 1), event("A", 2)],
        ))
        .await
        .expect("create");
    for expected in [1, 3, 7] {
        let err = store
            .append(request(
                "Order",
                &id,
                ExpectedVersion::Exactly(expected),
                vec![event("B", 3)],
            ))
            .await
            .expect_err("wrong expected version must fail");
        match err {
            Error::Conflict {
                entity_type,
                entity_id,
                expected: e,
                actual,
            } => {
                assert_eq!(entity_type, "Order");
                assert_eq!(entity_id, id);
                assert_eq!(e, expected);
                assert_eq!(actual, 2);
            }
            other => panic!("expected Conflict for expected version {expected}, got {other:?}"),
        }
    }
    let loaded = store.load("Order", &id, 0).await.expect("load");
    assert_eq!(
        loaded.iter().map(|e| e.entity_version).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

/// Appending to an entity that does not exist is `EntityNotFound`.
pub async fn update_of_missing_entity_fails(store: &dyn EventStore) {
    let id = unique("missing");
    let err = store
        .append(request(
            "Order",
            &id,
            ExpectedVersion::Exactly(1),
            vec![event("A", 1)],
        ))
        .await
        .expect_err("update of a missing entity must fail");
    assert!(matches!(err, Error::EntityNotFound { .. }), "got {err:?}");
    assert!(store.load("Order", &id, 0).await.expect("load").is_empty());
}

/// Empty appends, invalid names, invalid JSON, oversized payloads and `Exactly(0)` are typed
/// errors, and none of them changes the store, even when only the last event is bad.
pub async fn bad_input_is_rejected_and_changes_nothing(store: &dyn EventStore) {
    let id = unique("o");
    let written = append_settled(
        store,
        request("Order", &id, ExpectedVersion::New, vec![event("A", 1)]),
    )
    .await;
    let before = snapshot_of_store(store).await;
    let head = settle(store, written[0]).await;

    let mut bad_json = event("A", 2);
    bad_json.payload = "{not json".into();
    let mut huge = event("A", 3);
    huge.payload = format!("\"{}\"", "x".repeat(1 << 20));
    type Case<'a> = (&'a str, AppendRequest, fn(&Error) -> bool);
    let cases: Vec<Case<'_>> = vec![
        (
            "empty",
            request("Order", &id, ExpectedVersion::Exactly(1), vec![]),
            |e| matches!(e, Error::EmptyAppend { .. }),
        ),
        (
            "bad entity type",
            request("Or der", &id, ExpectedVersion::New, vec![event("A", 1)]),
            |e| {
                matches!(
                    e,
                    Error::InvalidName {
                        kind: "entity type",
                        ..
                    }
                )
            },
        ),
        (
            "empty entity id",
            request("Order", "", ExpectedVersion::New, vec![event("A", 1)]),
            |e| {
                matches!(
                    e,
                    Error::InvalidName {
                        kind: "entity id",
                        ..
                    }
                )
            },
        ),
        (
            "bad event type",
            request(
                "Order",
                &id,
                ExpectedVersion::Exactly(1),
                vec![event("A;drop", 1)],
            ),
            |e| {
                matches!(
                    e,
                    Error::InvalidName {
                        kind: "event type",
                        ..
                    }
                )
            },
        ),
        (
            "invalid json last",
            request(
                "Order",
                &id,
                ExpectedVersion::Exactly(1),
                vec![event("A", 2), bad_json],
            ),
            |e| matches!(e, Error::InvalidPayload { .. }),
        ),
        (
            "too large last",
            request(
                "Order",
                &id,
                ExpectedVersion::Exactly(1),
                vec![event("A", 2), huge],
            ),
            |e| matches!(e, Error::PayloadTooLarge { max: 1_048_576, .. }),
        ),
        (
            "exactly zero",
            request(
                "Order",
                &id,
                ExpectedVersion::Exactly(0),
                vec![event("A", 1)],
            ),
            |e| matches!(e, Error::Config(_)),
        ),
        (
            "command type with a NUL",
            AppendRequest {
                idempotency: Some(IdempotencyKey {
                    subscriber_id: "s".into(),
                    triggering_event_id: Uuid::new_v4(),
                    sequence: 0,
                    command_type: "Bad\0".into(),
                }),
                ..request(
                    "Order",
                    &id,
                    ExpectedVersion::Exactly(1),
                    vec![event("A", 1)],
                )
            },
            |e| {
                matches!(
                    e,
                    Error::InvalidName {
                        kind: "command type",
                        ..
                    }
                )
            },
        ),
    ];
    for (name, req, check) in cases {
        let err = store.append(req).await.expect_err(name);
        assert!(check(&err), "{name}: unexpected error {err:?}");
        let message = err.to_string();
        assert!(!message.is_empty(), "{name}: error message is empty");
    }
    assert_eq!(
        snapshot_of_store(store).await,
        before,
        "a rejected append changed the store"
    );
    assert_eq!(settle(store, head).await, head);
    assert_eq!(store.load("Order", &id, 0).await.expect("load").len(), 1);
}

/// A repeated idempotency key is `Duplicate` and writes nothing; a re-delivered create is a
/// duplicate, not `EntityExists`; another sequence number is a different command.
pub async fn idempotent_appends(store: &dyn EventStore) {
    let id = unique("c");
    let key = IdempotencyKey {
        subscriber_id: "customer-workflow".into(),
        triggering_event_id: Uuid::new_v4(),
        sequence: 0,
        command_type: "Test".into(),
    };
    let mut create = request(
        "Customer",
        &id,
        ExpectedVersion::New,
        vec![event("Created", 1)],
    );
    create.idempotency = Some(key.clone());
    assert!(matches!(
        store.append(create.clone()).await.expect("create"),
        AppendOutcome::Appended { version: 1, .. }
    ));
    create.events = vec![event("Created", 1)];
    assert_eq!(
        store.append(create).await.expect("repeat create"),
        AppendOutcome::Duplicate
    );

    let update_key = IdempotencyKey {
        triggering_event_id: Uuid::new_v4(),
        ..key.clone()
    };
    let mut update = request(
        "Customer",
        &id,
        ExpectedVersion::Exactly(1),
        vec![event("Reserved", 2)],
    );
    update.idempotency = Some(update_key.clone());
    assert!(matches!(
        store.append(update.clone()).await.expect("update"),
        AppendOutcome::Appended { version: 2, .. }
    ));
    // The retry carries a stale expected version: the duplicate check comes first.
    update.events = vec![event("Reserved", 2)];
    assert_eq!(
        store.append(update.clone()).await.expect("repeat"),
        AppendOutcome::Duplicate
    );

    let mut second = update.clone();
    second.expected = ExpectedVersion::Exactly(2);
    second.events = vec![event("Reserved", 3)];
    second.idempotency = Some(IdempotencyKey {
        sequence: 1,
        ..update_key.clone()
    });
    assert!(matches!(
        store.append(second).await.expect("second command"),
        AppendOutcome::Appended { version: 3, .. }
    ));
    let mut other_subscriber = update;
    other_subscriber.expected = ExpectedVersion::Exactly(3);
    other_subscriber.events = vec![event("Reserved", 4)];
    other_subscriber.idempotency = Some(IdempotencyKey {
        subscriber_id: "other".into(),
        ..update_key
    });
    assert!(matches!(
        store
            .append(other_subscriber)
            .await
            .expect("other subscriber"),
        AppendOutcome::Appended { version: 4, .. }
    ));
    assert_eq!(store.load("Customer", &id, 0).await.expect("load").len(), 4);
}

/// Many concurrent appends with one expected version: exactly one wins.
pub async fn concurrent_appends_one_winner(store: &dyn EventStore) {
    let id = unique("o");
    store
        .append(request(
            "Order",
            &id,
            ExpectedVersion::New,
            vec![event("A", 0)],
        ))
        .await
        .expect("create");
    let results = futures_util::future::join_all((0..12).map(|i| {
        store.append(request(
            "Order",
            &id,
            ExpectedVersion::Exactly(1),
            vec![event("B", i), event("C", i)],
        ))
    }))
    .await;
    one_winner_and_typed_conflicts(&results, 1, 3);
    let loaded = store.load("Order", &id, 0).await.expect("load");
    assert_eq!(
        loaded.iter().map(|e| e.entity_version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

/// Of concurrent appends that all expected `expected`: exactly one appended (up to `actual`),
/// and every other one is a `Conflict` naming `expected` and `actual`.
fn one_winner_and_typed_conflicts(
    results: &[crate::Result<AppendOutcome>],
    expected: u64,
    actual: u64,
) {
    let wins = results
        .iter()
        .filter(|r| matches!(r, Ok(AppendOutcome::Appended { version, .. }) if *version == actual))
        .count();
    let conflicts = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(Error::Conflict { expected: e, actual: a, .. }) if *e == expected && *a == actual
            )
        })
        .count();
    assert_eq!(wins, 1, "exactly one writer wins: {results:?}");
    assert_eq!(
        conflicts,
        results.len() - 1,
        "every loser gets a typed conflict: {results:?}"
    );
}

/// [`EventStore::append_after_load`], with versions read from the store as the repository
/// uses it: concurrent writers from one loaded version have one winner and typed conflicts
/// (the unique version, not the skipped existence check, decides), a stale version is a
/// conflict, a repeated idempotency key is a duplicate that writes nothing, and the versions
/// stay 1, 2, 3, ... with no gap.
pub async fn appends_after_a_load(store: &dyn EventStore) {
    let id = unique("o");
    store
        .append(request(
            "Order",
            &id,
            ExpectedVersion::New,
            vec![event("A", 0)],
        ))
        .await
        .expect("create");
    let loaded = store.load("Order", &id, 0).await.expect("load");
    let version = loaded.last().expect("one event").entity_version;
    let results = futures_util::future::join_all((0..12).map(|i| {
        store.append_after_load(request(
            "Order",
            &id,
            ExpectedVersion::Exactly(version),
            vec![event("B", i), event("C", i)],
        ))
    }))
    .await;
    one_winner_and_typed_conflicts(&results, 1, 3);
    // A version read earlier and overtaken since: a conflict naming the current version.
    let stale = store
        .append_after_load(request(
            "Order",
            &id,
            ExpectedVersion::Exactly(2),
            vec![event("D", 0)],
        ))
        .await
        .expect_err("a stale version must conflict");
    assert!(
        matches!(
            stale,
            Error::Conflict {
                expected: 2,
                actual: 3,
                ..
            }
        ),
        "got {stale:?}"
    );
    // With an idempotency key: applied once, then a duplicate that writes nothing.
    let keyed = |version| AppendRequest {
        idempotency: Some(IdempotencyKey {
            subscriber_id: "after-load".into(),
            triggering_event_id: Uuid::nil(),
            sequence: 0,
            command_type: "Ship".into(),
        }),
        ..request(
            "Order",
            &id,
            ExpectedVersion::Exactly(version),
            vec![event("E", 0)],
        )
    };
    let first = store
        .append_after_load(keyed(3))
        .await
        .expect("keyed append");
    assert!(
        matches!(first, AppendOutcome::Appended { version: 4, .. }),
        "got {first:?}"
    );
    let again = store
        .append_after_load(keyed(4))
        .await
        .expect("repeated key");
    assert!(matches!(again, AppendOutcome::Duplicate), "got {again:?}");
    let loaded = store.load("Order", &id, 0).await.expect("load");
    assert_eq!(
        loaded.iter().map(|e| e.entity_version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

/// Concurrent appends with one idempotency key: one is stored. When they all carry the same
/// command (a re-delivery racing itself), the rest are duplicates; when they carry different
/// commands (here: different targets), the rest are `IdempotencyMismatch`, never dropped as
/// duplicates.
pub async fn concurrent_idempotent_appends(store: &dyn EventStore) {
    let key = IdempotencyKey {
        subscriber_id: "s".into(),
        triggering_event_id: Uuid::new_v4(),
        sequence: 0,
        command_type: "Create".into(),
    };
    let id = unique("t");
    let results = futures_util::future::join_all((0..8).map(|_| {
        let mut req = request("Order", &id, ExpectedVersion::New, vec![event("A", 1)]);
        req.idempotency = Some(key.clone());
        store.append(req)
    }))
    .await;
    let appended = results
        .iter()
        .filter(|r| matches!(r, Ok(AppendOutcome::Appended { .. })))
        .count();
    let duplicates = results
        .iter()
        .filter(|r| matches!(r, Ok(AppendOutcome::Duplicate)))
        .count();
    assert_eq!((appended, duplicates), (1, 7), "{results:?}");
    assert_eq!(store.load("Order", &id, 0).await.expect("load").len(), 1);

    let key = IdempotencyKey {
        triggering_event_id: Uuid::new_v4(),
        ..key
    };
    let ids: Vec<String> = (0..8).map(|_| unique("t")).collect();
    let results = futures_util::future::join_all(ids.iter().map(|id| {
        let mut req = request("Order", id, ExpectedVersion::New, vec![event("A", 1)]);
        req.idempotency = Some(key.clone());
        store.append(req)
    }))
    .await;
    let winner: Vec<&String> = ids
        .iter()
        .zip(&results)
        .filter(|(_, r)| matches!(r, Ok(AppendOutcome::Appended { .. })))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(winner.len(), 1, "{results:?}");
    for (id, result) in ids.iter().zip(&results) {
        if id == winner[0] {
            continue;
        }
        match result {
            Err(Error::IdempotencyMismatch {
                recorded,
                attempted,
                ..
            }) => {
                assert_eq!(&recorded.entity_id, winner[0]);
                assert_eq!(&attempted.entity_id, id);
            }
            other => panic!("a different command under a taken key: {other:?}"),
        }
    }
    let mut stored = 0;
    for id in &ids {
        stored += store.load("Order", id, 0).await.expect("load").len();
    }
    assert_eq!(stored, 1);
}

/// A key that comes back with another command (another entity id, entity type or command
/// type) is `IdempotencyMismatch`, permanent, naming both commands, and writes nothing; the
/// same command under the key is still a duplicate. The key is checked before the version.
pub async fn idempotency_key_mismatch_is_reported(store: &dyn EventStore) {
    let (id, other_id) = (unique("c"), unique("c"));
    let key = IdempotencyKey {
        subscriber_id: "order-saga".into(),
        triggering_event_id: Uuid::new_v4(),
        sequence: 1,
        command_type: "ReserveCredit".into(),
    };
    let keyed = |entity_type: &str, id: &str, expected, command_type: &str| {
        let mut req = request(entity_type, id, expected, vec![event("Reserved", 1)]);
        req.idempotency = Some(IdempotencyKey {
            command_type: command_type.to_owned(),
            ..key.clone()
        });
        req
    };
    append_settled(
        store,
        request("Customer", &id, ExpectedVersion::New, vec![event("A", 0)]),
    )
    .await;
    let written = append_settled(
        store,
        keyed(
            "Customer",
            &id,
            ExpectedVersion::Exactly(1),
            "ReserveCredit",
        ),
    )
    .await;
    let before = snapshot_of_store(store).await;
    let head = settle(store, written[0]).await;

    // The same command again, even with a stale expected version: a duplicate.
    assert_eq!(
        store
            .append(keyed(
                "Customer",
                &id,
                ExpectedVersion::Exactly(1),
                "ReserveCredit"
            ))
            .await
            .expect("repeat"),
        AppendOutcome::Duplicate
    );
    let recorded = crate::CommandFingerprint {
        entity_type: "Customer".into(),
        entity_id: id.clone(),
        command_type: "ReserveCredit".into(),
    };
    let cases = [
        (
            "another entity id",
            keyed("Customer", &other_id, ExpectedVersion::New, "ReserveCredit"),
        ),
        (
            "another entity type",
            keyed("Account", &id, ExpectedVersion::New, "ReserveCredit"),
        ),
        (
            "another command type",
            keyed(
                "Customer",
                &id,
                ExpectedVersion::Exactly(2),
                "ReleaseCredit",
            ),
        ),
        (
            "another command type, stale version",
            keyed(
                "Customer",
                &id,
                ExpectedVersion::Exactly(1),
                "ReleaseCredit",
            ),
        ),
    ];
    for (name, req) in cases {
        let attempted = req.fingerprint().expect("keyed");
        let err = store.append(req).await.expect_err(name);
        match &err {
            Error::IdempotencyMismatch {
                subscriber,
                triggering_event_id,
                sequence,
                recorded: r,
                attempted: a,
            } => {
                assert_eq!(subscriber, "order-saga", "{name}");
                assert_eq!(*triggering_event_id, key.triggering_event_id, "{name}");
                assert_eq!(*sequence, 1, "{name}");
                assert_eq!(r, &recorded, "{name}");
                assert_eq!(a, &attempted, "{name}");
            }
            other => panic!("{name}: expected IdempotencyMismatch, got {other:?}"),
        }
        assert!(err.is_permanent(), "{name}");
        let message = err.to_string();
        assert!(message.contains(&recorded.to_string()), "{name}: {message}");
        assert!(
            message.contains(&attempted.to_string()),
            "{name}: {message}"
        );
    }
    assert_eq!(
        snapshot_of_store(store).await,
        before,
        "a refused command changed the store"
    );
    assert_eq!(settle(store, head).await, head);
    assert!(
        store
            .load("Customer", &other_id, 0)
            .await
            .expect("load")
            .is_empty()
    );
    assert!(
        store
            .load("Account", &id, 0)
            .await
            .expect("load")
            .is_empty()
    );
}

/// The stream: every event once, in position order, per-entity versions ascending; entity
/// type filters; partitions split the entities disjointly and completely.
pub async fn stream_order_filter_and_partitions(store: &dyn EventStore) {
    let start = store.head().await.expect("head");
    let mut written = Vec::new();
    for round in 0..4u64 {
        for (t, id) in [
            ("Order", "o1"),
            ("Customer", "c1"),
            ("Order", "o2"),
            ("Order", "o3"),
        ] {
            let id = format!("{id}-{start}");
            let expected = if round == 0 {
                ExpectedVersion::New
            } else {
                ExpectedVersion::Exactly(round)
            };
            let e = event("E", round);
            written.push(e.event_id);
            append_settled(store, request(t, &id, expected, vec![e])).await;
        }
    }
    let all: Vec<EventEnvelope> = read_all(store, &StreamFilter::default(), 3)
        .await
        .into_iter()
        .filter(|e| e.position > start)
        .collect();
    assert_eq!(
        all.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        written,
        "stream order = commit order here"
    );
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let orders: Vec<_> = read_all(store, &StreamFilter::entity_types(["Order"]), 2)
        .await
        .into_iter()
        .filter(|e| e.position > start)
        .collect();
    assert_eq!(orders.len(), 12);
    assert!(orders.iter().all(|e| e.entity_type == "Order"));
    let mut seen = HashSet::new();
    for index in 0..3 {
        let filter = StreamFilter {
            entity_types: vec!["Order".into(), "Customer".into()],
            partition: Some(Partition { index, count: 3 }),
        };
        for e in read_all(store, &filter, 5)
            .await
            .into_iter()
            .filter(|e| e.position > start)
        {
            assert_eq!(crate::name::partition_of(&e.entity_id, 3), index);
            assert!(seen.insert(e.event_id), "an event is in two partitions");
        }
    }
    assert_eq!(seen.len(), 16, "partitions cover every event");
}

/// `head` is the last readable position; `count_after` counts the filtered stream, up to its
/// limit.
pub async fn head_and_count(store: &dyn EventStore) {
    let before = store.head().await.expect("head");
    let types = StreamFilter::entity_types([unique("T").replace('-', "_")]);
    assert_eq!(
        store
            .count_after(before, &types, u64::MAX)
            .await
            .expect("count"),
        0
    );
    let ty = types.entity_types[0].clone();
    let positions = append_settled(
        store,
        request(
            &ty,
            "x",
            ExpectedVersion::New,
            vec![event("A", 1), event("A", 2)],
        ),
    )
    .await;
    let head = settle(store, positions[1]).await;
    assert_eq!(head, positions[1]);
    assert!(head > before);
    assert_eq!(
        store
            .count_after(before, &types, u64::MAX)
            .await
            .expect("count"),
        2
    );
    assert_eq!(
        store.count_after(before, &types, 1).await.expect("count"),
        1,
        "a count stops at its limit"
    );
    assert_eq!(
        store
            .count_after(positions[0], &types, u64::MAX)
            .await
            .expect("count"),
        1
    );
    assert_eq!(
        store
            .count_after(head, &StreamFilter::default(), u64::MAX)
            .await
            .expect("count"),
        0
    );
}

/// Snapshots: latest wins, an older entity version never replaces a newer one, and another
/// snapshot format version is invisible.
pub async fn snapshots(store: &dyn EventStore) {
    let id = unique("s");
    let snap = |version: u64, format: u32, payload: &str| Snapshot {
        entity_type: "Order".into(),
        entity_id: id.clone(),
        entity_version: version,
        snapshot_version: format,
        payload: payload.into(),
    };
    assert_eq!(
        store.load_snapshot("Order", &id, 1).await.expect("load"),
        None
    );
    store
        .save_snapshot(snap(10, 1, "{\"v\":10}"))
        .await
        .expect("save");
    store
        .save_snapshot(snap(20, 1, "{\"v\":20}"))
        .await
        .expect("save");
    store
        .save_snapshot(snap(15, 1, "{\"v\":15}"))
        .await
        .expect("save older");
    let loaded = store
        .load_snapshot("Order", &id, 1)
        .await
        .expect("load")
        .expect("some");
    assert_eq!(loaded.entity_version, 20);
    let payload: serde_json::Value = serde_json::from_str(&loaded.payload).expect("json");
    assert_eq!(payload, serde_json::json!({"v": 20}));
    assert_eq!(
        store.load_snapshot("Order", &id, 2).await.expect("load"),
        None
    );
    store
        .save_snapshot(snap(5, 2, "{\"v\":5}"))
        .await
        .expect("save v2");
    assert_eq!(
        store
            .load_snapshot("Order", &id, 2)
            .await
            .expect("load")
            .map(|s| s.entity_version),
        Some(5)
    );
    assert_eq!(
        store
            .load_snapshot("Order", &id, 1)
            .await
            .expect("load")
            .map(|s| s.entity_version),
        Some(20)
    );
}

/// 8 concurrent writers x 40 appends while a reader follows the stream from a checkpoint:
/// every event exactly once, per-entity versions ascending, nothing missing.
pub async fn concurrent_writers_reader_sees_everything_once(store: &dyn EventStore) {
    let run = unique("w").replace('-', "_");
    let ty = format!("W_{run}");
    let filter = StreamFilter::entity_types([ty.clone()]);
    let writers = 8u64;
    let per_writer = 40u64;
    let seen: Arc<std::sync::Mutex<Vec<EventEnvelope>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let last_written: Arc<std::sync::Mutex<Vec<Position>>> = Arc::default();
    let reader = async {
        let mut after = Position::START;
        let mut idle_after_done = 0;
        loop {
            let batch = store.read_stream(after, &filter, 50).await.expect("read");
            if let Some(last) = batch.last() {
                assert!(last.position > after, "reader position went backwards");
                after = last.position;
                seen.lock().unwrap_or_else(|p| p.into_inner()).extend(batch);
                idle_after_done = 0;
            } else if done.load(std::sync::atomic::Ordering::Acquire) {
                // Everything is committed: wait for the stream to reach it, then drain.
                if idle_after_done == 0 {
                    let last = last_written
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .copied()
                        .max();
                    if let Some(last) = last {
                        settle(store, last).await;
                    }
                }
                idle_after_done += 1;
                if idle_after_done > 2 {
                    break;
                }
            } else {
                tokio::task::yield_now().await;
            }
        }
    };
    let writers_fut = async {
        futures_util::future::join_all((0..writers).map(|w| {
            let ty = ty.clone();
            let last_written = last_written.clone();
            async move {
                for i in 0..per_writer {
                    let id = format!("e{}", (w * 3 + i % 3));
                    let mut version = store.load(&ty, &id, 0).await.expect("load").len() as u64;
                    loop {
                        let expected = if version == 0 {
                            ExpectedVersion::New
                        } else {
                            ExpectedVersion::Exactly(version)
                        };
                        match store
                            .append(request(&ty, &id, expected, vec![event("A", i)]))
                            .await
                        {
                            Ok(AppendOutcome::Appended { positions, .. }) => {
                                last_written
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .extend(positions);
                                break;
                            }
                            Ok(AppendOutcome::Duplicate) => panic!("unexpected duplicate"),
                            Err(Error::Conflict { actual, .. }) => version = actual,
                            Err(Error::EntityExists { version: v, .. }) => version = v,
                            Err(e) => panic!("append failed: {e}"),
                        }
                    }
                }
            }
        }))
        .await;
        done.store(true, std::sync::atomic::Ordering::Release);
    };
    tokio::join!(reader, writers_fut);
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), seen.len(), "an event was delivered twice");
    assert_eq!(
        seen.len() as u64,
        writers * per_writer,
        "events were missed"
    );
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for e in &seen {
        let last = versions.entry(&e.entity_id).or_insert(0);
        assert_eq!(
            e.entity_version,
            *last + 1,
            "per-entity order broken for {}",
            e.entity_id
        );
        *last = e.entity_version;
    }
}

/// Reusing an event id, across appends or within one, is `DuplicateEventId` naming it, and
/// writes nothing.
pub async fn duplicate_event_ids_are_rejected(store: &dyn EventStore) {
    let id = unique("d");
    let first = event("A", 1);
    let taken = first.event_id;
    append_settled(
        store,
        request("Order", &id, ExpectedVersion::New, vec![first.clone()]),
    )
    .await;
    let before = snapshot_of_store(store).await;
    let mut again = event("A", 2);
    again.event_id = taken;
    let other = unique("d");
    for req in [
        request(
            "Order",
            &other,
            ExpectedVersion::New,
            vec![event("A", 1), again.clone()],
        ),
        request("Order", &id, ExpectedVersion::Exactly(1), vec![again]),
    ] {
        let err = store
            .append(req)
            .await
            .expect_err("a reused event id must be refused");
        match err {
            Error::DuplicateEventId { event_id, .. } => assert_eq!(event_id, taken),
            other => panic!("expected DuplicateEventId, got {other:?}"),
        }
    }
    let twice = event("A", 3);
    let err = store
        .append(request(
            "Order",
            &other,
            ExpectedVersion::New,
            vec![twice.clone(), twice.clone()],
        ))
        .await
        .expect_err("an id twice in one append must be refused");
    assert!(
        matches!(err, Error::DuplicateEventId { event_id, .. } if event_id == twice.event_id),
        "{err:?}"
    );
    assert_eq!(
        snapshot_of_store(store).await,
        before,
        "nothing was written"
    );
    assert!(
        store
            .load("Order", &other, 0)
            .await
            .expect("load")
            .is_empty()
    );
}

/// `load_with_snapshot`: the requested snapshot format's latest snapshot and only the events
/// after it; all events when there is none; `load_for_fold` agrees with `load`, and
/// `fold_events` with `load_for_fold`.
pub async fn load_with_snapshot(store: &dyn EventStore) {
    let id = unique("s");
    let events: Vec<NewEvent> = (1..=5).map(|n| event("A", n)).collect();
    append_settled(store, request("Order", &id, ExpectedVersion::New, events)).await;
    let versions =
        |events: &[crate::StoredEvent]| events.iter().map(|e| e.entity_version).collect::<Vec<_>>();
    let (none, all) = store
        .load_with_snapshot("Order", &id, 1)
        .await
        .expect("load");
    assert_eq!(none, None);
    assert_eq!(versions(&all), vec![1, 2, 3, 4, 5]);
    let full = store.load("Order", &id, 0).await.expect("load");
    for (folded, envelope) in all.iter().zip(&full) {
        assert_eq!(folded.event_type, envelope.event_type);
        assert_eq!(folded.payload, envelope.payload);
    }
    assert_eq!(
        versions(&store.load_for_fold("Order", &id, 3).await.expect("fold")),
        vec![4, 5]
    );
    // `fold_events` hands over what `load_for_fold` returns, in order, and stops at the
    // first error of its callback.
    for after in [0, 3, 5] {
        let expected = store
            .load_for_fold("Order", &id, after)
            .await
            .expect("fold");
        let mut seen = Vec::new();
        store
            .fold_events("Order", &id, after, &mut |e| {
                seen.push(crate::StoredEvent {
                    entity_version: e.entity_version,
                    event_type: e.event_type.to_owned(),
                    payload: e.payload.to_owned(),
                    schema_version: e.schema_version,
                });
                Ok(())
            })
            .await
            .expect("fold_events");
        assert_eq!(seen, expected, "fold_events after version {after}");
    }
    let mut calls = 0;
    let stopped = store
        .fold_events("Order", &id, 0, &mut |e| {
            calls += 1;
            if e.entity_version == 2 {
                return Err(crate::Error::Config("stop here".into()));
            }
            Ok(())
        })
        .await;
    assert!(
        matches!(&stopped, Err(crate::Error::Config(m)) if m == "stop here"),
        "{stopped:?}"
    );
    assert_eq!(calls, 2, "no event after the error");
    // The connection the stopped read used serves the next read.
    assert_eq!(
        versions(&store.load_for_fold("Order", &id, 0).await.expect("fold")),
        vec![1, 2, 3, 4, 5]
    );
    store
        .save_snapshot(Snapshot {
            entity_type: "Order".into(),
            entity_id: id.clone(),
            entity_version: 3,
            snapshot_version: 1,
            payload: "{\"at\":3}".into(),
        })
        .await
        .expect("save");
    let (snapshot, rest) = store
        .load_with_snapshot("Order", &id, 1)
        .await
        .expect("load");
    let snapshot = snapshot.expect("the snapshot");
    assert_eq!((snapshot.entity_version, snapshot.snapshot_version), (3, 1));
    let payload: serde_json::Value = serde_json::from_str(&snapshot.payload).expect("json");
    assert_eq!(payload, serde_json::json!({"at": 3}));
    assert_eq!(versions(&rest), vec![4, 5]);
    let (other_format, all) = store
        .load_with_snapshot("Order", &id, 2)
        .await
        .expect("load");
    assert_eq!(other_format, None);
    assert_eq!(versions(&all), vec![1, 2, 3, 4, 5]);
    let (none, nothing) = store
        .load_with_snapshot("Order", &unique("missing"), 1)
        .await
        .expect("load");
    assert!(none.is_none() && nothing.is_empty());
}

/// [`EventStore::load_under_types`]: an entity looked up under several entity type names
/// (a renamed aggregate's current name and aliases) is found under the one it is stored under,
/// with that name's own snapshot; an id stored under two names comes back twice, in the order
/// the names were asked in; names not asked for are not read.
pub async fn load_under_types(store: &dyn EventStore) {
    let id = unique("renamed");
    let events: Vec<NewEvent> = (1..=3).map(|n| event("A", n)).collect();
    append_settled(
        store,
        request("PurchaseOrder", &id, ExpectedVersion::New, events),
    )
    .await;
    let snapshot = |entity_type: &str, entity_version: u64| Snapshot {
        entity_type: entity_type.into(),
        entity_id: id.clone(),
        entity_version,
        snapshot_version: 1,
        payload: format!("{{\"at\":{entity_version}}}"),
    };
    store
        .save_snapshot(snapshot("PurchaseOrder", 2))
        .await
        .expect("save");
    let summary = |found: Vec<crate::TypedHistory>| {
        found
            .into_iter()
            .map(|h| {
                (
                    h.entity_type,
                    h.snapshot.map(|s| (s.entity_type, s.entity_version)),
                    h.events
                        .iter()
                        .map(|e| e.entity_version)
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    let names = ["Order", "PurchaseOrder"];
    let load = |names: &'static [&'static str], v: Option<u32>| {
        let id = id.clone();
        async move {
            store
                .load_under_types(names, &id, v)
                .await
                .expect("load under types")
        }
    };
    let old = || "PurchaseOrder".to_owned();
    assert_eq!(
        summary(load(&["Order", "PurchaseOrder"], None).await),
        vec![(old(), None, vec![1, 2, 3])]
    );
    assert_eq!(
        summary(load(&["Order", "PurchaseOrder"], Some(1)).await),
        vec![(old(), Some((old(), 2)), vec![3])]
    );
    assert_eq!(
        summary(load(&["Order", "PurchaseOrder"], Some(2)).await),
        vec![(old(), None, vec![1, 2, 3])],
        "a snapshot of another format is not used"
    );
    assert!(
        load(&["Order"], Some(1)).await.is_empty(),
        "only the names asked for"
    );
    let full = load(&["PurchaseOrder"], None).await;
    let envelopes = store.load("PurchaseOrder", &id, 0).await.expect("load");
    for (folded, envelope) in full[0].events.iter().zip(&envelopes) {
        assert_eq!(folded.event_type, envelope.event_type);
        assert_eq!(folded.payload, envelope.payload);
        assert_eq!(folded.schema_version, envelope.metadata.schema_version);
    }
    // The same id created under the other name too: both come back, each with its own
    // snapshot and its own events.
    append_settled(
        store,
        request(
            "Order",
            &id,
            ExpectedVersion::New,
            vec![event("B", 1), event("B", 2)],
        ),
    )
    .await;
    store
        .save_snapshot(snapshot("Order", 1))
        .await
        .expect("save");
    let current = || "Order".to_owned();
    assert_eq!(
        summary(load(&["Order", "PurchaseOrder"], Some(1)).await),
        vec![
            (current(), Some((current(), 1)), vec![2]),
            (old(), Some((old(), 2)), vec![3]),
        ]
    );
    assert_eq!(
        summary(load(&["PurchaseOrder", "Order"], None).await),
        vec![(old(), None, vec![1, 2, 3]), (current(), None, vec![1, 2])],
        "in the order the names were asked in"
    );
    let missing = unique("missing");
    assert!(
        store
            .load_under_types(&names, &missing, Some(1))
            .await
            .expect("load")
            .is_empty()
    );
}

/// The subscriber of [`nul_in_handler_errors`]: fails on the events of entity `bad` with an
/// error whose message holds a NUL byte (until `fixed`), and records every event it handled.
#[derive(Clone)]
struct NulInError {
    bad: String,
    fixed: Arc<std::sync::atomic::AtomicBool>,
    bad_calls: Arc<std::sync::atomic::AtomicU32>,
    log: Arc<std::sync::Mutex<Vec<EventEnvelope>>>,
}

impl NulInError {
    const ID: &'static str = "nul-in-error";

    /// The versions of `entity` handled successfully, in delivery order.
    fn delivered(&self, entity: &str) -> Vec<u64> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|e| e.entity_id == entity)
            .map(|e| e.entity_version)
            .collect()
    }
}

impl crate::Subscriber for NulInError {
    fn subscription(&self) -> crate::Subscription {
        crate::Subscription::new(Self::ID, ["Counter"]).retry(crate::RetryPolicy {
            max_attempts: 2,
            initial_backoff: std::time::Duration::from_millis(1),
            max_backoff: std::time::Duration::from_millis(5),
        })
    }

    async fn handle(&self, ctx: &crate::EventContext) -> Result<(), crate::HandlerError> {
        use std::sync::atomic::Ordering;
        if ctx.entity_id() == self.bad {
            self.bad_calls.fetch_add(1, Ordering::SeqCst);
            if !self.fixed.load(Ordering::SeqCst) {
                return Err(crate::HandlerError::msg("bad\u{0}byte"));
            }
        }
        self.log.lock().expect("log").push(ctx.event().clone());
        Ok(())
    }
}

/// Appends version `version` of Counter `id` (a `Tick` with `n` = version) and waits until
/// the stream has it.
async fn tick_version(store: &dyn EventStore, id: &str, version: u64) {
    let expected = match version {
        1 => ExpectedVersion::New,
        v => ExpectedVersion::Exactly(v - 1),
    };
    append_settled(
        store,
        request("Counter", id, expected, vec![event("Tick", version)]),
    )
    .await;
}

/// Polls `check` every 10 ms until it holds; panics after 15 s.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A handler error holding a NUL byte (which PostgreSQL `text` refuses) parks the event with
/// the error escaped by [`crate::subscription_store::storable_text`], in every store: the
/// event is parked after its attempts, the entity's later events behind it, other entities
/// flow. A replay requested while the handler still fails makes exactly one more attempt,
/// records it (escaped again) and clears the request, and wedges nothing; once the handler
/// is fixed, a replay delivers the entity's events in order and empties the parked list.
///
/// Runs a dispatcher on `store` (a fresh one: the subscriber id is fixed).
pub async fn nul_in_handler_errors<S>(store: S)
where
    S: EventStore + crate::runtime::SubscriptionStore + Clone,
{
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let (good, bad) = (unique("good"), unique("bad"));
    let subscriber = NulInError {
        bad: bad.clone(),
        fixed: Arc::default(),
        bad_calls: Arc::default(),
        log: Arc::default(),
    };
    let poll = Duration::from_millis(50);
    let runtime = crate::Eventuate::new(store.clone())
        .options(crate::runtime::RuntimeOptions {
            poll_interval: poll,
            lease_ttl: Duration::from_millis(900),
            batch_size: 16,
            ..crate::runtime::RuntimeOptions::default()
        })
        .subscriber(subscriber.clone())
        .start()
        .expect("start");
    let id = NulInError::ID;
    let caught_up = || runtime.wait_caught_up(Duration::from_secs(15));

    tick_version(&store, &good, 1).await;
    tick_version(&store, &bad, 1).await; // fails twice: parked
    tick_version(&store, &bad, 2).await; // parked behind it
    tick_version(&store, &good, 2).await; // flows
    caught_up().await.expect("caught up with a parked entity");
    let parked = runtime.parked(id).await.expect("parked");
    let summary = |parked: &[crate::runtime::ParkedEvent]| {
        parked
            .iter()
            .map(|p| {
                (
                    p.event.entity_id.clone(),
                    p.event.entity_version,
                    p.attempts,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        summary(&parked),
        vec![(bad.clone(), 1, 2), (bad.clone(), 2, 0)],
        "the failing event after its 2 attempts, the next one behind it without an attempt"
    );
    assert!(
        parked[0].error.contains("bad\\u0000byte") && !parked[0].error.contains('\0'),
        "the stored error keeps the handler's message with the NUL escaped: {:?}",
        parked[0].error
    );
    assert!(
        parked[1].error.contains("waiting behind"),
        "{:?}",
        parked[1].error
    );
    assert_eq!(subscriber.delivered(&good), vec![1, 2]);
    assert!(subscriber.delivered(&bad).is_empty());
    assert_eq!(subscriber.bad_calls.load(Ordering::SeqCst), 2);

    // A replay while the handler still fails: one more attempt, recorded, request cleared.
    assert_eq!(runtime.replay(id, None).await.expect("replay"), 2);
    until("the failed replay is recorded", || async {
        let parked = runtime.parked(id).await.expect("parked");
        parked[0].attempts == 3 && !parked[0].replay_requested
    })
    .await;
    // Nothing is wedged: other entities still flow, the failing one still parks behind.
    tick_version(&store, &good, 3).await;
    tick_version(&store, &bad, 3).await;
    caught_up().await.expect("caught up after a failed replay");
    assert_eq!(subscriber.delivered(&good), vec![1, 2, 3]);
    // Several replay checks of the consumer (one per poll interval) pass meanwhile: the one
    // request made one attempt, not one per check.
    tokio::time::sleep(poll * 10).await;
    let parked = runtime.parked(id).await.expect("parked");
    assert_eq!(
        summary(&parked),
        vec![
            (bad.clone(), 1, 3),
            (bad.clone(), 2, 0),
            (bad.clone(), 3, 0)
        ],
        "one replay request, one more attempt; the later events still parked behind \
         (replay requests: {:?})",
        parked
            .iter()
            .map(|p| p.replay_requested)
            .collect::<Vec<_>>()
    );
    assert!(!parked[0].replay_requested);
    assert!(
        parked[0].error.contains("bad\\u0000byte") && !parked[0].error.contains('\0'),
        "the replay's error is stored escaped too: {:?}",
        parked[0].error
    );
    assert_eq!(
        subscriber.bad_calls.load(Ordering::SeqCst),
        3,
        "the handler ran once for the one replay request"
    );
    assert!(subscriber.delivered(&bad).is_empty());

    // Fixed: a replay delivers the entity's events in order, and the entity flows again.
    subscriber.fixed.store(true, Ordering::SeqCst);
    assert_eq!(runtime.replay(id, None).await.expect("replay"), 3);
    until("the parked list is empty", || async {
        runtime.parked(id).await.expect("parked").is_empty()
    })
    .await;
    assert_eq!(subscriber.delivered(&bad), vec![1, 2, 3]);
    tick_version(&store, &bad, 4).await;
    caught_up().await.expect("caught up after the replay");
    assert_eq!(subscriber.delivered(&bad), vec![1, 2, 3, 4]);
    assert_eq!(subscriber.delivered(&good), vec![1, 2, 3]);
    runtime.shutdown().await.expect("shutdown");
}

/// A wallet that cannot go below zero: the aggregate of
/// [`external_command_ids_are_applied_once`], written against the traits.
#[derive(Debug, Default)]
struct Wallet {
    balance: u64,
}

#[derive(Debug)]
enum WalletEvent {
    Credited(u64),
    Debited(u64),
}

impl crate::aggregate::EventSet for WalletEvent {
    const EVENT_TYPES: &'static [&'static str] = &["Credited", "Debited"];
    fn event_type(&self) -> &'static str {
        match self {
            WalletEvent::Credited(_) => "Credited",
            WalletEvent::Debited(_) => "Debited",
        }
    }
    fn encode(&self) -> Result<String, serde_json::Error> {
        match self {
            WalletEvent::Credited(n) | WalletEvent::Debited(n) => {
                serde_json::to_string(&serde_json::json!({ "n": n }))
            }
        }
    }
    fn decode(event_type: &str, payload: &str) -> Result<Self, crate::aggregate::DecodeError> {
        let value: serde_json::Value =
            serde_json::from_str(payload).map_err(crate::aggregate::DecodeError::Json)?;
        let n = value["n"].as_u64().unwrap_or(0);
        match event_type {
            "Credited" => Ok(WalletEvent::Credited(n)),
            "Debited" => Ok(WalletEvent::Debited(n)),
            _ => Err(crate::aggregate::DecodeError::UnknownType),
        }
    }
}

impl crate::Aggregate for Wallet {
    const ENTITY_TYPE: &'static str = "Wallet";
    type Event = WalletEvent;
    fn initial() -> Self {
        Self::default()
    }
    fn apply(&mut self, event: &WalletEvent) {
        match event {
            WalletEvent::Credited(n) => self.balance += n,
            WalletEvent::Debited(n) => self.balance -= n,
        }
    }
}

struct Credit(u64);
struct Debit(u64);

#[derive(Debug, thiserror::Error)]
#[error("insufficient funds")]
struct InsufficientFunds;

impl crate::aggregate::HandleCommand<Credit> for Wallet {
    type Error = InsufficientFunds;
    fn handle(&self, c: &Credit) -> Result<Vec<WalletEvent>, InsufficientFunds> {
        Ok(vec![WalletEvent::Credited(c.0)])
    }
}

impl crate::aggregate::HandleCommand<Debit> for Wallet {
    type Error = InsufficientFunds;
    fn handle(&self, c: &Debit) -> Result<Vec<WalletEvent>, InsufficientFunds> {
        if c.0 > self.balance {
            return Err(InsufficientFunds);
        }
        Ok(vec![WalletEvent::Debited(c.0)])
    }
}

/// A command sent with a caller-chosen command id (an HTTP idempotency key) is applied at most
/// once: sent again, it writes nothing and answers a duplicate with the current state, also
/// when it would now be rejected (the second debit finds the balance it left); a create sent
/// again is a duplicate, not "entity exists"; the same id with another command is an
/// [`Error::IdempotencyMismatch`] under [`crate::EXTERNAL_COMMANDS`].
///
/// Generic (the repository needs an owned store): stores that run the suite are `Clone`.
pub async fn external_command_ids_are_applied_once<S: EventStore + Clone>(store: &S) {
    use crate::repository::{CommandOptions, Repository};
    let repo = Repository::new(store.clone());
    let id = unique("wallet");
    let (create, debit) = (Uuid::new_v4(), Uuid::new_v4());
    for round in 0..2 {
        let created = repo
            .create_with::<Wallet>(
                Some(id.clone()),
                Credit(10),
                CommandOptions::with_command_id(create),
            )
            .await
            .expect("create");
        assert_eq!((created.version, created.duplicate), (1, round == 1));
    }
    for round in 0..2 {
        let debited = repo
            .update_with::<Wallet>(&id, Debit(7), CommandOptions::with_command_id(debit))
            .await
            .expect("the same debit twice is one debit, not a rejection");
        assert_eq!(
            (debited.version, debited.state.balance, debited.duplicate),
            (2, 3, round == 1)
        );
    }
    let events = store.load("Wallet", &id, 0).await.expect("load");
    assert_eq!(events.len(), 2, "each command applied once");
    assert_eq!(events[1].metadata.command_id, Some(debit));
    // Another command under a used id is refused, not dropped as a duplicate.
    let err = repo
        .update_with::<Wallet>(&id, Credit(1), CommandOptions::with_command_id(debit))
        .await
        .expect_err("another command under a used id");
    assert!(
        matches!(&err, Error::IdempotencyMismatch { subscriber, .. } if subscriber == crate::EXTERNAL_COMMANDS),
        "{err:?}"
    );
    // A rejected command records nothing: the same id may be sent again once it can succeed.
    let retry = Uuid::new_v4();
    let err = repo
        .update_with::<Wallet>(&id, Debit(5), CommandOptions::with_command_id(retry))
        .await
        .expect_err("insufficient funds");
    assert!(matches!(err, Error::Rejected { .. }), "{err:?}");
    repo.update::<Wallet>(&id, Credit(5)).await.expect("credit");
    let ok = repo
        .update_with::<Wallet>(&id, Debit(5), CommandOptions::with_command_id(retry))
        .await
        .expect("now it succeeds");
    assert_eq!((ok.state.balance, ok.duplicate), (3, false));
    // Commands without an id are never deduplicated.
    repo.update::<Wallet>(&id, Credit(1)).await.expect("credit");
    repo.update::<Wallet>(&id, Credit(1)).await.expect("credit");
    assert_eq!(
        repo.load::<Wallet>(&id).await.expect("load").state.balance,
        5
    );
}

/// [`crate::runtime::SubscriptionStore::renew_all`] answers per lease, in order: `true` and
/// the lease extended for the leases their holder still holds, `false` for one another member
/// holds; no leases, no answers.
pub async fn renewing_several_leases<S>(store: &S)
where
    S: crate::runtime::SubscriptionStore,
{
    use std::time::Duration;

    use crate::subscription_store::{Member, PartitionKey, Shape};

    let id = unique("renew-all");
    let generation = store
        .reshape(
            &id,
            &Shape::new(3, &["Thing".to_owned()], &[]),
            Position::START,
        )
        .await
        .expect("reshape")
        .generation;
    let member = |name: &str| Member {
        incarnation: Uuid::new_v4(),
        node: Uuid::new_v4(),
        subscribers: vec![name.to_owned()],
    };
    let (a, b) = (member(&id), member(&id));
    let key = |partition| PartitionKey {
        subscriber_id: id.clone(),
        partition,
        partitions: 3,
    };
    let short = Duration::from_millis(400);
    let mut leases = Vec::new();
    for (partition, holder) in [(0, &a), (1, &b), (2, &a)] {
        leases.push(
            store
                .try_acquire(&key(partition), holder, generation, short)
                .await
                .expect("try_acquire")
                .expect("a free partition")
                .lease,
        );
    }
    // A lease A does not hold: partition 1 is B's.
    let mut asked = leases.clone();
    asked[1].holder = a.incarnation;
    let held = store
        .renew_all(&asked, Duration::from_secs(60))
        .await
        .expect("renew_all");
    assert_eq!(held, vec![true, false, true]);
    assert!(
        store
            .renew_all(&[], Duration::from_secs(60))
            .await
            .expect("renew nothing")
            .is_empty()
    );
    // Past the short TTL: the renewed leases are still A's, B's (not renewed) has expired.
    tokio::time::sleep(short + Duration::from_millis(300)).await;
    let owners: Vec<Option<Uuid>> = store
        .subscriber(&id)
        .await
        .expect("subscriber")
        .partitions
        .iter()
        .map(|p| p.owner.map(|(holder, _)| holder))
        .collect();
    assert_eq!(owners, vec![Some(a.incarnation), None, Some(a.incarnation)]);
}
