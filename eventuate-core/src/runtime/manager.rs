//! The lease manager: one task per runtime that, every third of the lease TTL, renews the
//! leases of its consumers (stopping ones included, until they have exited; all of them in one
//! call, [`crate::subscription_store::SubscriptionStore::renew_all`]), heartbeats its
//! membership, checks each subscriber's stored shape, and takes or gives back partitions.
//!
//! - **Fair share per subscriber.** Only members that run a subscriber (with the stored shape)
//!   count for it: each takes up to `ceil(partitions / members)`, and gives back partitions
//!   above that only while another member holds fewer than its share.
//! - **Liveness backstop.** A partition nobody has held for longer than the TTL is taken by
//!   any member that runs the subscriber, above its share if need be.
//! - **One local consumer per partition.** A partition is never acquired while a consumer of
//!   it still runs in this process; a consumer asked to stop keeps its lease renewed until it
//!   has exited.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::consumer::{Consumer, Validity};
use super::{ConsumerHandle, Registered, ShapeView, Shared};
use crate::subscriber::StartFrom;
use crate::subscription_store::{Lease, Member, PartitionKey, SubscriberState};
use crate::{Position, Result};

pub(super) async fn manage(shared: Arc<Shared>) {
    let ttl = shared.options.lease_ttl;
    let tick = (ttl / 3).max(Duration::from_millis(10));
    let mut stop = shared.stop.subscribe();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        if let Err(e) = balance(&shared).await {
            tracing::warn!(node = %shared.options.node_id, error = %e, "lease maintenance failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.changed() => {}
        }
    }
    // Shutdown: every consumer finishes its handler, saves and releases; until it has, its
    // lease is renewed, or another node could start on the partition under a slow handler.
    let mut consumers = shared.consumers.lock().await;
    for handle in consumers.values_mut() {
        handle.stop();
    }
    let deadline = Instant::now() + shared.options.shutdown_timeout;
    loop {
        consumers.retain(|_, h| !h.task.is_finished());
        if consumers.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for ((id, partition), handle) in consumers.drain() {
                tracing::warn!(subscriber = %id, partition, "handler still running at the shutdown timeout; aborting it");
                handle.task.abort();
            }
            break;
        }
        renew(&shared, &mut consumers).await;
        let next = (Instant::now() + tick).min(deadline);
        let finished =
            futures_util::future::select_all(consumers.values_mut().map(|h| Box::pin(&mut h.task)));
        let _ = tokio::time::timeout_at(next, finished).await;
    }
    if let Err(e) = shared.subscriptions.leave(shared.incarnation).await {
        tracing::warn!(node = %shared.options.node_id, error = %e, "could not deregister node");
    }
}

/// One round of lease maintenance.
pub(super) async fn balance(shared: &Arc<Shared>) -> Result<()> {
    let ttl = shared.options.lease_ttl;
    let mut consumers = shared.consumers.lock().await;
    consumers.retain(|_, h| !h.task.is_finished());
    renew(shared, &mut consumers).await;
    // The heartbeat and the subscribers' stored states are independent: read side by side
    // (what a start-up waits for before its first lease; the states one after the other, so
    // that many subscribers do not take as many connections at once).
    let member = shared.member();
    let (members, states) = tokio::join!(shared.subscriptions.heartbeat(&member, ttl), async {
        let mut states = Vec::with_capacity(shared.subscribers.len());
        for registered in &shared.subscribers {
            states.push(
                shared
                    .subscriptions
                    .subscriber(&registered.subscription.id)
                    .await?,
            );
        }
        Ok::<_, crate::Error>(states)
    });
    let (members, states) = (members?, states?);
    for (registered, state) in shared.subscribers.iter().zip(states) {
        let id = &registered.subscription.id;
        let Some((generation, reshaped)) = agree_on_shape(shared, registered, &state).await? else {
            for handle in consumers
                .values_mut()
                .filter(|h| h.lease.key.subscriber_id == *id)
            {
                handle.stop();
            }
            continue;
        };
        // A reshape migrated what it could in its own transaction: read what it left, and
        // migrate only if something is still pending.
        let state = if reshaped {
            shared.subscriptions.subscriber(id).await?
        } else {
            state
        };
        let state = if state.migration_pending
            || state.shape.as_ref().map(|s| s.generation) != Some(generation)
        {
            if !shared.subscriptions.migrate(id).await? {
                shared.set_view(id, ShapeView::Reshaping);
                continue;
            }
            shared.subscriptions.subscriber(id).await?
        } else {
            state
        };
        shared.set_view(id, ShapeView::Agreed { generation });
        let others: Vec<&Member> = members
            .iter()
            .filter(|m| m.incarnation != shared.incarnation && m.subscribers.contains(id))
            .collect();
        let partitions = registered.subscription.partitions;
        let fair = partitions.div_ceil(others.len() as u32 + 1);
        let mut mine: Vec<u32> = consumers
            .iter()
            .filter(|((sid, _), h)| sid == id && !h.stopping)
            .map(|((_, p), _)| *p)
            .collect();
        mine.sort_unstable();
        let starved = others.iter().any(|m| {
            let held = state
                .partitions
                .iter()
                .filter(|l| l.owner.is_some_and(|(holder, _)| holder == m.incarnation))
                .count();
            (held as u32) < fair
        });
        if mine.len() as u32 > fair && starved {
            // Give the highest partitions back so that a member below its share takes them.
            for partition in mine.iter().rev().take(mine.len() - fair as usize) {
                if let Some(h) = consumers.get_mut(&(id.clone(), *partition)) {
                    h.stop();
                }
            }
            continue;
        }
        let mut count = mine.len() as u32;
        for lease in &state.partitions {
            if lease.owner.is_some() || consumers.contains_key(&(id.clone(), lease.partition)) {
                continue;
            }
            let abandoned = lease.unowned_for.is_some_and(|d| d >= ttl);
            if count >= fair && !abandoned {
                continue;
            }
            let key = PartitionKey {
                subscriber_id: id.clone(),
                partition: lease.partition,
                partitions,
            };
            let sent = Instant::now();
            let span =
                tracing::info_span!("lease_acquire", subscriber = %id, partition = lease.partition);
            let Some(claim) = shared
                .subscriptions
                .try_acquire(&key, &shared.member(), generation, ttl)
                .instrument(span.clone())
                .await?
            else {
                continue;
            };
            tracing::info!(parent: &span, recovered = claim.recovered, "partition taken");
            crate::telemetry::lease_acquired(id, claim.recovered);
            if abandoned && count >= fair {
                tracing::warn!(subscriber = %id, partition = lease.partition, "taking a partition nobody held for longer than the lease TTL, above this node's share");
            }
            let validity = Validity::until(sent + ttl);
            let (stop, stop_rx) = watch::channel(false);
            let lease = claim.lease.clone();
            let consumer =
                Consumer::new(shared.clone(), registered.clone(), claim, validity.clone());
            let task = tokio::spawn(consumer.run(stop_rx));
            shared.track(&task);
            consumers.insert(
                (id.clone(), lease.key.partition),
                ConsumerHandle {
                    stop,
                    task,
                    lease,
                    validity,
                    stopping: false,
                },
            );
            count += 1;
        }
    }
    Ok(())
}

/// Renews the lease of every consumer that still runs (stopping ones too); stops those whose
/// lease another member took. A failed renewal is logged and left to the next round: the
/// consumer's validity runs out meanwhile, so it starts no handler on a lease it may have lost.
async fn renew(shared: &Shared, consumers: &mut HashMap<(String, u32), ConsumerHandle>) {
    if consumers.is_empty() {
        return;
    }
    let ttl = shared.options.lease_ttl;
    let mut handles: Vec<&mut ConsumerHandle> = consumers.values_mut().collect();
    let leases: Vec<Lease> = handles.iter().map(|h| h.lease.clone()).collect();
    // Taken before the statement: a lease is trusted for at most the TTL from here.
    let sent = Instant::now();
    let span = tracing::debug_span!("lease_renew", leases = leases.len());
    let held = match shared
        .subscriptions
        .renew_all(&leases, ttl)
        .instrument(span)
        .await
    {
        Ok(held) if held.len() == leases.len() => held,
        Ok(held) => {
            tracing::warn!(
                asked = leases.len(),
                answered = held.len(),
                "the subscription store answered a lease renewal for another number of leases; retrying"
            );
            return;
        }
        Err(e) => {
            tracing::warn!(leases = leases.len(), error = %e, "leases not renewed; retrying");
            return;
        }
    };
    for (handle, held) in handles.iter_mut().zip(held) {
        if held {
            handle.validity.extend_to(sent + ttl);
            continue;
        }
        if !handle.stopping {
            let key = &handle.lease.key;
            crate::telemetry::lease_lost(&key.subscriber_id);
            tracing::warn!(subscriber = %key.subscriber_id, partition = key.partition, "lease taken by another member; stopping consumer");
            handle.stop();
        }
        handle.validity.end();
    }
}

/// Whether this runtime consumes the subscriber, under which generation, and whether it
/// stored that generation itself just now (a reshape, after which `state` is stale). The first time
/// (at start) it declares its shape: stored as the first generation when there is none, and
/// adopted when only the types differ (an old-shape consumer is fenced off at once and stops,
/// so nothing is skipped). A different partition count is never adopted implicitly: the
/// runtime does not consume the subscriber and says why until [`super::Running::reshape`]
/// is called.
async fn agree_on_shape(
    shared: &Arc<Shared>,
    registered: &Registered,
    state: &SubscriberState,
) -> Result<Option<(u64, bool)>> {
    let id = &registered.subscription.id;
    let ours = &registered.shape;
    let first = shared.first_declaration(id);
    match &state.shape {
        Some(stored) if stored.shape == *ours => Ok(Some((stored.generation, false))),
        Some(stored) if !first || stored.shape.repartitions(ours) => {
            if shared.set_view(
                id,
                ShapeView::Mismatch {
                    stored: stored.shape.clone(),
                },
            ) {
                tracing::error!(
                    subscriber = %id,
                    stored = %stored.shape,
                    ours = %ours,
                    "{}", super::mismatch_message(id, &stored.shape, ours)
                );
            }
            Ok(None)
        }
        _ => {
            let start = match registered.subscription.start {
                StartFrom::Beginning => Position::START,
                StartFrom::Now => shared.store.head().await?,
            };
            let stored = shared.subscriptions.reshape(id, ours, start).await?;
            if state.shape.is_some() {
                tracing::info!(subscriber = %id, shape = %ours, generation = stored.generation, "adopted this node's shape");
            }
            Ok(Some((stored.generation, true)))
        }
    }
}
