//! Durable subscriptions over STOMP: SUBSCRIBE destinations, and one runtime per subscriber id.
//!
//! For each subscriber id with at least one subscribed client in this process, the registry
//! runs one [`Eventuate`] runtime over the server's stores, with one registered subscriber (a
//! [`Forwarder`]). Checkpoints, leases across processes, retries, parking and status are
//! therefore the runtime's. The forwarder hands each event to one of this process's clients
//! subscribed under the id (the partition's client: `partition % clients`, in the order they
//! subscribed), and completes the handler when the client has it (`auto`: once the MESSAGE is
//! written) or acknowledges it (`client`, `client-individual`). A NACK fails the handler (the
//! runtime retries with backoff, then parks the event). A client that leaves with an
//! unacknowledged message hands it to another client of the id; when none is left the
//! handler fails and the runtime is shut down, so the checkpoint stays before the message and
//! it is delivered again to the next client.
//!
//! The window: with `prefetch-count: 1` (the default) a partition delivers one event and waits
//! for its completion. With `n > 1` the subscription's `batch` is `n`: the runtime hands the
//! forwarder runs of up to `n` consecutive first deliveries of a partition
//! ([`Subscriber::handle_batch`]); the forwarder sends them all, in stream order, to the
//! partition's client, then waits for their outcomes in order, and reports how many from the
//! first were acknowledged. So at most `n` messages per partition are unacknowledged, the
//! checkpoint moves only over the contiguous acknowledged prefix of a run (and only once the
//! run is settled), and per-entity delivery order holds. A message after a NACKed (or
//! unacknowledged, when its client leaves) one is delivered again even if it was acknowledged
//! (at least once): the runtime retries the refused event alone and then offers the rest again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventuate_core::runtime::{
    LAG_COUNT_LIMIT, PartitionStatus, Running, RuntimeOptions, ShapeView,
};
use eventuate_core::store::{Partition, StreamFilter};
use eventuate_core::subscriber::{BatchOutcome, RetryPolicy, StartFrom};
use eventuate_core::subscription_store::SubscriptionStore;
use eventuate_core::{
    EventContext, EventEnvelope, EventStore, Eventuate, HandlerError, Subscriber, Subscription,
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// What a SUBSCRIBE destination asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// `None`: a transient subscription (an id is generated for the connection).
    pub(crate) subscriber_id: Option<String>,
    /// Entity type → the event types wanted of it (empty: all).
    pub(crate) types: BTreeMap<String, BTreeSet<String>>,
    /// Where to start without a checkpoint.
    pub(crate) start: StartFrom,
}

impl Wanted {
    /// Whether the client wants this event.
    pub(crate) fn wants(&self, entity_type: &str, event_type: &str) -> bool {
        self.types
            .get(entity_type)
            .is_some_and(|events| events.is_empty() || events.contains(event_type))
    }

    /// The runtime's subscription for it: the event types are the union (all, if any entity
    /// type wants all); the forwarder filters the rest.
    pub(crate) fn subscription(
        &self,
        id: &str,
        partitions: u32,
        prefetch: usize,
        retry: RetryPolicy,
    ) -> Subscription {
        let all = self.types.values().any(BTreeSet::is_empty);
        let events: BTreeSet<&String> = if all {
            BTreeSet::new()
        } else {
            self.types.values().flatten().collect()
        };
        Subscription::new(id, self.types.keys().cloned())
            .event_types(events)
            .start_from(self.start)
            .partitions(partitions)
            .retry(retry)
            .batch(prefetch)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JsonDestination {
    subscriber_id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    space: Option<String>,
    entity_types_and_events: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    options: JsonOptions,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JsonOptions {
    read_from: Option<String>,
    durability: Option<String>,
}

const DESTINATION_FORMS: &str = "`/subscriptions/{subscriberId}?types=Order,Customer\
&events=OrderCreated&from=beginning|end` or Eventuate's JSON `{\"subscriberId\", \
\"entityTypesAndEvents\": {\"Order\": [\"OrderCreated\"]}, \"options\": {\"readFrom\": \
\"BEGINNING|END\", \"durability\": \"DURABLE|TRANSIENT\"}}`";

fn start_from(text: &str) -> Result<StartFrom, String> {
    match text.to_ascii_lowercase().as_str() {
        "beginning" => Ok(StartFrom::Beginning),
        "end" => Ok(StartFrom::Now),
        other => Err(format!(
            "where to start, `{other}`, is neither `beginning` nor `end`"
        )),
    }
}

/// Parses a SUBSCRIBE destination (see [`DESTINATION_FORMS`]).
pub(crate) fn parse_destination(destination: &str) -> Result<Wanted, String> {
    let trimmed = destination.trim_start();
    if trimmed.starts_with('{') {
        let json: JsonDestination = serde_json::from_str(trimmed).map_err(|e| {
            format!("the JSON destination does not parse ({e}); expected {DESTINATION_FORMS}")
        })?;
        let transient = match json
            .options
            .durability
            .as_deref()
            .map(str::to_ascii_uppercase)
        {
            None => false,
            Some(d) if d == "DURABLE" => false,
            Some(d) if d == "TRANSIENT" => true,
            Some(d) => return Err(format!("durability `{d}` is neither DURABLE nor TRANSIENT")),
        };
        let start = match json.options.read_from.as_deref() {
            Some(from) => start_from(from)?,
            None if transient => StartFrom::Now,
            None => StartFrom::Beginning,
        };
        let subscriber_id = match (transient, json.subscriber_id) {
            (true, _) => None,
            (false, Some(id)) => Some(id),
            (false, None) => {
                return Err("a durable subscription needs a `subscriberId`".into());
            }
        };
        let types = json
            .entity_types_and_events
            .into_iter()
            .map(|(t, events)| (t, events.into_iter().collect()))
            .collect();
        return finish(Wanted {
            subscriber_id,
            types,
            start,
        });
    }
    let Some(rest) = destination.strip_prefix("/subscriptions/") else {
        return Err(format!(
            "destination `{destination}` is not a subscription; expected {DESTINATION_FORMS}"
        ));
    };
    let (id, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut entity_types = Vec::new();
    let mut events = BTreeSet::new();
    let mut start = None;
    let mut transient = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let list = || {
            value
                .split(',')
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        match name {
            "types" => entity_types.extend(list()),
            "events" => events.extend(list()),
            "from" => start = Some(start_from(value)?),
            "durability" => match value.to_ascii_lowercase().as_str() {
                "durable" => transient = false,
                "transient" => transient = true,
                other => {
                    return Err(format!(
                        "durability `{other}` is neither durable nor transient"
                    ));
                }
            },
            other => {
                return Err(format!(
                    "unknown destination parameter `{other}` (known: types, events, from, durability)"
                ));
            }
        }
    }
    if id.is_empty() && !transient {
        return Err(format!(
            "the destination names no subscriber id; expected {DESTINATION_FORMS}"
        ));
    }
    let start = start.unwrap_or(if transient {
        StartFrom::Now
    } else {
        StartFrom::Beginning
    });
    finish(Wanted {
        subscriber_id: (!transient).then(|| id.to_owned()),
        types: entity_types
            .into_iter()
            .map(|t| (t, events.clone()))
            .collect(),
        start,
    })
}

fn finish(wanted: Wanted) -> Result<Wanted, String> {
    if wanted.types.is_empty() {
        return Err(format!(
            "the destination names no entity type; expected {DESTINATION_FORMS}"
        ));
    }
    Ok(wanted)
}

/// How a client acknowledges.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

/// An event for a session to send, and where to say it was handled.
pub(crate) struct Delivery {
    pub(crate) subscription: String,
    pub(crate) event: EventEnvelope,
    pub(crate) done: oneshot::Sender<Outcome>,
}

/// What became of a delivered message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Written (`auto`) or acknowledged.
    Acked,
    /// Refused by the client.
    Nacked,
}

/// One client subscription, as a group sees it.
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) session: u64,
    pub(crate) subscription: String,
    pub(crate) tx: mpsc::UnboundedSender<Delivery>,
}

/// The clients of one subscriber id in this process, and its runtime.
pub(crate) struct Group {
    id: String,
    wanted: Wanted,
    partitions: u32,
    prefetch: usize,
    members: Mutex<Vec<Member>>,
    changed: watch::Sender<u64>,
    stopping: AtomicBool,
    running: tokio::sync::Mutex<Option<Running>>,
}

impl Group {
    fn pick(&self, partition: u32) -> Option<Member> {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if members.is_empty() {
            return None;
        }
        members.get(partition as usize % members.len()).cloned()
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The runtime's subscriber: forwards each event to a client of the group.
struct Forwarder {
    group: Arc<Group>,
    subscription: Subscription,
}

impl Subscriber for Forwarder {
    fn subscription(&self) -> Subscription {
        self.subscription.clone()
    }

    async fn handle(&self, ctx: &EventContext) -> Result<(), HandlerError> {
        if !self.wants(ctx.event()) {
            return Ok(());
        }
        self.deliver(ctx.event()).await
    }

    async fn handle_batch(&self, contexts: &[EventContext]) -> BatchOutcome {
        // Send the run at once, in stream order, as long as a client is there to take it; an
        // event that finds none (and every one after it, to keep the order) is delivered
        // alone below, when its turn comes.
        let mut offered = Vec::with_capacity(contexts.len());
        let mut sending = true;
        for ctx in contexts {
            let event = ctx.event();
            if !self.wants(event) {
                offered.push(Offered::Unwanted);
                continue;
            }
            let sent = if sending { self.offer(event) } else { None };
            sending = sent.is_some();
            offered.push(sent.map_or(Offered::Later, Offered::Sent));
        }
        for (handled, (ctx, offered)) in contexts.iter().zip(offered).enumerate() {
            let outcome = match offered {
                Offered::Unwanted => Ok(()),
                Offered::Sent((subscription, outcome)) => match outcome.await {
                    Ok(Outcome::Acked) => Ok(()),
                    Ok(Outcome::Nacked) => Err(nacked(&subscription)),
                    // The client left or unsubscribed first: another one gets it.
                    Err(_) => self.deliver(ctx.event()).await,
                },
                Offered::Later => self.deliver(ctx.event()).await,
            };
            if let Err(error) = outcome {
                return BatchOutcome {
                    handled,
                    error: Some(error),
                };
            }
        }
        BatchOutcome {
            handled: contexts.len(),
            error: None,
        }
    }
}

/// What became of an event of a run when it was offered.
enum Offered {
    /// The client does not want it: handled.
    Unwanted,
    /// Sent on this client subscription; the outcome comes.
    Sent((String, oneshot::Receiver<Outcome>)),
    /// No client took it: delivered alone in its turn.
    Later,
}

fn nacked(subscription: &str) -> HandlerError {
    HandlerError::msg(format!(
        "the STOMP client refused the event (NACK) on subscription `{subscription}`"
    ))
}

impl Forwarder {
    fn wants(&self, event: &EventEnvelope) -> bool {
        self.group
            .wanted
            .wants(&event.entity_type, &event.event_type)
    }

    /// Sends `event` to its partition's client without waiting; `None` when there is none.
    fn offer(&self, event: &EventEnvelope) -> Option<(String, oneshot::Receiver<Outcome>)> {
        let partition = eventuate_core::name::partition_of(&event.entity_id, self.group.partitions);
        let member = self.group.pick(partition)?;
        let (done, outcome) = oneshot::channel();
        let delivery = Delivery {
            subscription: member.subscription.clone(),
            event: event.clone(),
            done,
        };
        member.tx.send(delivery).ok()?;
        Some((member.subscription, outcome))
    }

    /// Delivers one event to a client of the group and waits for its outcome, waiting for a
    /// client while there is none (unless the group is stopping).
    async fn deliver(&self, event: &EventEnvelope) -> Result<(), HandlerError> {
        let mut changes = self.group.changed.subscribe();
        loop {
            changes.borrow_and_update();
            let Some((subscription, outcome)) = self.offer(event) else {
                if self.group.stopping.load(Ordering::Acquire) {
                    return Err(HandlerError::msg(format!(
                        "no STOMP client is subscribed as `{}` any more; delivered again when one subscribes",
                        self.group.id
                    )));
                }
                if self.group.pick(0).is_none() {
                    if changes.changed().await.is_err() {
                        return Err(HandlerError::msg("the subscription is stopping"));
                    }
                } else {
                    // A client whose session is closing: it leaves the group soon.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                continue;
            };
            match outcome.await {
                Ok(Outcome::Acked) => return Ok(()),
                Ok(Outcome::Nacked) => return Err(nacked(&subscription)),
                // The client left or unsubscribed first: another one gets it.
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The groups of this process.
pub(crate) struct Registry {
    store: Arc<dyn EventStore>,
    subscriptions: Arc<dyn SubscriptionStore>,
    runtime: RuntimeOptions,
    retry: RetryPolicy,
    groups: tokio::sync::Mutex<HashMap<String, Arc<Group>>>,
    stopping: Mutex<HashMap<String, JoinHandle<()>>>,
    /// The durable subscriptions subscribed in this process since it started, by id (the
    /// operations routes list them, with or without a client now).
    seen: Mutex<BTreeMap<String, Subscription>>,
}

/// A STOMP subscriber as the operations routes show it.
pub(crate) struct Listed {
    /// Its runtime's status while a client is subscribed here, else its stored partitions.
    pub(crate) partitions: Vec<PartitionStatus>,
    /// Clients subscribed in this process now.
    pub(crate) clients: usize,
}

impl Registry {
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        subscriptions: Arc<dyn SubscriptionStore>,
        runtime: RuntimeOptions,
        retry: RetryPolicy,
    ) -> Self {
        Registry {
            store,
            subscriptions,
            runtime,
            retry,
            groups: tokio::sync::Mutex::new(HashMap::new()),
            stopping: Mutex::new(HashMap::new()),
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// The subscription store the subscribers' state is kept in.
    pub(crate) fn subscription_store(&self) -> &Arc<dyn SubscriptionStore> {
        &self.subscriptions
    }

    /// Whether `id` is a durable subscriber subscribed in this process since it started.
    pub(crate) fn knows(&self, id: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// Every durable subscriber subscribed in this process since it started: with a client
    /// now, its runtime's status; without, its stored partitions (checkpoint, lease holder,
    /// lag up to [`LAG_COUNT_LIMIT`]).
    pub(crate) async fn list(&self) -> eventuate_core::Result<BTreeMap<String, Listed>> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let groups: HashMap<String, Arc<Group>> = self.groups.lock().await.clone();
        let mut out = BTreeMap::new();
        for (id, subscription) in seen {
            if let Some(group) = groups.get(&id) {
                let clients = group
                    .members
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len();
                let running = group.running.lock().await;
                if let Some(running) = running.as_ref() {
                    let partitions = running.status().await?;
                    out.insert(
                        id,
                        Listed {
                            partitions,
                            clients,
                        },
                    );
                    continue;
                }
            }
            let state = self.subscriptions.subscriber(&id).await?;
            let shape = match &state.shape {
                None => ShapeView::Unknown,
                Some(_) if state.migration_pending => ShapeView::Reshaping,
                Some(stored) => ShapeView::Agreed {
                    generation: stored.generation,
                },
            };
            let mut partitions = Vec::new();
            for lease in &state.partitions {
                let filter = StreamFilter {
                    entity_types: subscription.entity_types.clone(),
                    partition: (subscription.partitions > 1).then_some(Partition {
                        index: lease.partition,
                        count: subscription.partitions,
                    }),
                };
                let lag = self
                    .store
                    .count_after(lease.checkpoint, &filter, LAG_COUNT_LIMIT)
                    .await?;
                partitions.push(PartitionStatus {
                    subscriber_id: id.clone(),
                    partition: lease.partition,
                    owned: false,
                    owner: lease.owner.map(|(_, node)| node),
                    unowned_for: lease.unowned_for,
                    shape: shape.clone(),
                    position: lease.checkpoint,
                    lag,
                    delivered: 0,
                    retried: 0,
                    parked: 0,
                    unknown_entity_types: Vec::new(),
                });
            }
            out.insert(
                id,
                Listed {
                    partitions,
                    clients: 0,
                },
            );
        }
        Ok(out)
    }

    /// Adds a client to the group of `id`, starting the group's runtime if it is the first.
    pub(crate) async fn join(
        &self,
        id: &str,
        wanted: &Wanted,
        partitions: u32,
        prefetch: usize,
        member: Member,
    ) -> Result<(), String> {
        let mut groups = self.groups.lock().await;
        if let Some(group) = groups.get(id) {
            if group.wanted.types != wanted.types
                || group.partitions != partitions
                || group.prefetch != prefetch
            {
                return Err(format!(
                    "subscriber `{id}` is already subscribed in this server with other types, \
                     partitions or prefetch-count ({:?}, {} partition(s), prefetch-count {}); \
                     every client of one subscriber id must ask for the same",
                    group.wanted.types, group.partitions, group.prefetch
                ));
            }
            group
                .members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(member);
            group.notify();
            return Ok(());
        }
        // A runtime of this id still shutting down: let it save its checkpoints first.
        let previous = self
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        let subscription = wanted.subscription(id, partitions, prefetch, self.retry);
        subscription.validate().map_err(|e| e.to_string())?;
        let stored = self
            .subscriptions
            .subscriber(id)
            .await
            .map_err(|e| format!("the subscription store is unavailable: {e}"))?;
        if let Some(stored) = stored.shape.filter(|s| s.shape.partitions != partitions) {
            return Err(format!(
                "subscriber `{id}` is stored with {} partition(s), not {partitions}; subscribe \
                 with `partitions:{}` (changing it is an operator's reshape)",
                stored.shape.partitions, stored.shape.partitions
            ));
        }
        let (changed, _) = watch::channel(0);
        let group = Arc::new(Group {
            id: id.to_owned(),
            wanted: wanted.clone(),
            partitions,
            prefetch,
            members: Mutex::new(vec![member]),
            changed,
            stopping: AtomicBool::new(false),
            running: tokio::sync::Mutex::new(None),
        });
        let running = Eventuate::from_parts(self.store.clone(), self.subscriptions.clone())
            .options(self.runtime.clone())
            .subscriber(Forwarder {
                group: group.clone(),
                subscription: subscription.clone(),
            })
            .start()
            .map_err(|e| e.to_string())?;
        *group.running.lock().await = Some(running);
        if wanted.subscriber_id.is_some() {
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_owned(), subscription);
        }
        groups.insert(id.to_owned(), group);
        drop(groups);
        self.wait_stored(id, partitions).await;
        Ok(())
    }

    /// Waits (boundedly) until the runtime has stored the subscriber's partitions, so that a
    /// `from=end` subscription's start is fixed when its RECEIPT is sent.
    async fn wait_stored(&self, id: &str, partitions: u32) {
        let deadline = tokio::time::Instant::now() + self.runtime.lease_ttl * 2;
        while tokio::time::Instant::now() < deadline {
            let stored = self.subscriptions.subscriber(id).await.is_ok_and(|state| {
                state.partitions.len() as u32 >= partitions
                    && state.partitions.iter().all(|p| p.owner.is_some())
            });
            if stored {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Removes a client subscription; the last one of an id shuts its runtime down.
    pub(crate) async fn leave(&self, id: &str, session: u64, subscription: &str) {
        let mut groups = self.groups.lock().await;
        let Some(group) = groups.get(id).cloned() else {
            return;
        };
        let empty = {
            let mut members = group.members.lock().unwrap_or_else(|p| p.into_inner());
            members.retain(|m| !(m.session == session && m.subscription == subscription));
            members.is_empty()
        };
        if !empty {
            group.notify();
            return;
        }
        groups.remove(id);
        group.stopping.store(true, Ordering::Release);
        group.notify();
        let running = group.running.lock().await.take();
        let id_owned = id.to_owned();
        let task = tokio::spawn(async move {
            if let Some(running) = running
                && let Err(e) = running.shutdown().await
            {
                tracing::warn!(subscriber = %id_owned, error = %e, "STOMP subscriber runtime did not shut down cleanly");
            }
        });
        self.stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), task);
    }

    /// Waits for every runtime shutting down (after the sessions have left).
    pub(crate) async fn drain(&self) {
        let tasks: Vec<_> = self
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, t)| t)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_destinations() {
        let w = parse_destination(
            "/subscriptions/billing?types=Order,Customer&events=OrderCreated&from=end",
        )
        .unwrap();
        assert_eq!(w.subscriber_id.as_deref(), Some("billing"));
        assert_eq!(w.start, StartFrom::Now);
        assert!(w.wants("Order", "OrderCreated"));
        assert!(w.wants("Customer", "OrderCreated"));
        assert!(!w.wants("Order", "OrderShipped"));
        assert!(!w.wants("Invoice", "OrderCreated"));
        let all = parse_destination("/subscriptions/b?types=Order").unwrap();
        assert_eq!(all.start, StartFrom::Beginning);
        assert!(all.wants("Order", "Anything"));
        let transient =
            parse_destination("/subscriptions/?types=Order&durability=transient").unwrap();
        assert_eq!(transient.subscriber_id, None);
        assert_eq!(transient.start, StartFrom::Now);
        assert!(parse_destination("/subscriptions/b").is_err(), "no types");
        assert!(parse_destination("/queue/x").is_err());
        assert!(parse_destination("/subscriptions/b?types=A&from=yesterday").is_err());
        assert!(parse_destination("/subscriptions/b?types=A&colour=red").is_err());
    }

    #[test]
    fn json_destinations() {
        let w = parse_destination(
            r#"{"subscriberId":"s","entityTypesAndEvents":{"Order":["OrderCreated"],"Customer":[]},"options":{"readFrom":"END"}}"#,
        )
        .unwrap();
        assert_eq!(w.subscriber_id.as_deref(), Some("s"));
        assert_eq!(w.start, StartFrom::Now);
        assert!(w.wants("Order", "OrderCreated"));
        assert!(!w.wants("Order", "OrderShipped"));
        assert!(w.wants("Customer", "CustomerCreated"));
        let sub = w.subscription("s", 1, 1, RetryPolicy::default());
        assert!(
            sub.event_types.is_empty(),
            "Customer wants all, so the runtime reads all"
        );
        let t = parse_destination(
            r#"{"entityTypesAndEvents":{"Order":["A"]},"options":{"durability":"TRANSIENT"}}"#,
        )
        .unwrap();
        assert_eq!((t.subscriber_id, t.start), (None, StartFrom::Now));
        assert!(parse_destination(r#"{"entityTypesAndEvents":{"Order":[]}}"#).is_err());
        assert!(parse_destination(r#"{"subscriberId":"s","entityTypesAndEvents":{}}"#).is_err());
    }
}
