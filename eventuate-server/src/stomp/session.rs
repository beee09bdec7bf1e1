//! One STOMP connection: CONNECT and version negotiation, heart-beats, receipts, SUBSCRIBE /
//! UNSUBSCRIBE, ACK / NACK, DISCONNECT, and ERROR-then-close on protocol errors.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::StompOptions;
use super::frame::{Decoded, Frame, decode};
use super::subscriptions::{AckMode, Delivery, Member, Outcome, Registry, parse_destination};
use super::transport::{Incoming, Outgoing};

const SUPPORTED: [&str; 3] = ["1.0", "1.1", "1.2"];
/// How much later than negotiated a client's heart-beat may arrive.
const HEART_BEAT_TOLERANCE: u32 = 2;

/// Bytes for the writer task, and who to tell once they are written (`auto` deliveries).
struct Out {
    bytes: Vec<u8>,
    written: Option<oneshot::Sender<Outcome>>,
}

struct Subscribed {
    subscriber_id: String,
    destination: String,
    ack: AckMode,
}

struct Pending {
    subscription: String,
    done: oneshot::Sender<Outcome>,
}

/// What handling a frame asks of the connection.
enum Next {
    Continue,
    /// Close after what was queued is written.
    Close,
}

/// A protocol error: ERROR with this message (and the frame's receipt), then close.
struct Fatal {
    message: String,
    detail: String,
}

fn fatal(message: impl Into<String>, detail: impl Into<String>) -> Fatal {
    Fatal {
        message: message.into(),
        detail: detail.into(),
    }
}

struct Session {
    serial: u64,
    name: String,
    options: Arc<StompOptions>,
    registry: Arc<Registry>,
    out: mpsc::UnboundedSender<Out>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    connected: bool,
    subscriptions: HashMap<String, Subscribed>,
    pending: BTreeMap<u64, Pending>,
    next_message: u64,
    /// Longest the client may stay silent (heart-beats or the idle limit).
    read_allowance: Duration,
    /// Whether writes count as activity (no heart-beats negotiated: the idle limit).
    idle_counts_writes: bool,
    heart_beat_out: Option<Duration>,
    implied_version: Option<&'static str>,
}

/// Serves one connection until it closes, the client errs, or `stop` turns true.
/// `implied_version`: the STOMP version a WebSocket subprotocol named (`v12.stomp`), taken as
/// the `accept-version` of a CONNECT that has none.
pub(crate) async fn run(
    mut incoming: impl Incoming,
    mut outgoing: impl Outgoing,
    serial: u64,
    options: Arc<StompOptions>,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
    implied_version: Option<&'static str>,
) {
    let (out, mut out_rx) = mpsc::unbounded_channel::<Out>();
    let (deliveries, mut deliveries_rx) = mpsc::unbounded_channel::<Delivery>();
    let clock = Instant::now();
    let last_write = Arc::new(AtomicU64::new(0));
    let (beat_tx, mut beat_rx) = watch::channel::<Option<Duration>>(None);
    let write_timeout = options.write_timeout;
    let written_at = last_write.clone();
    let mut writer_task = tokio::spawn(async move {
        // Once the session drops its end, the heart-beat setting no longer changes.
        let mut beat_fixed = false;
        loop {
            let beat = *beat_rx.borrow_and_update();
            let next = match beat {
                Some(every) => tokio::select! {
                    next = out_rx.recv() => next,
                    changed = beat_rx.changed(), if !beat_fixed => {
                        beat_fixed = changed.is_err();
                        continue;
                    }
                    () = tokio::time::sleep(every) => Some(Out { bytes: b"\n".to_vec(), written: None }),
                },
                None => tokio::select! {
                    next = out_rx.recv() => next,
                    changed = beat_rx.changed(), if !beat_fixed => {
                        beat_fixed = changed.is_err();
                        continue;
                    }
                },
            };
            let Some(Out { bytes, written }) = next else {
                break;
            };
            match tokio::time::timeout(write_timeout, outgoing.write(bytes)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
            let now = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
            written_at.store(now, Ordering::Relaxed);
            if let Some(written) = written {
                let _ = written.send(Outcome::Acked);
            }
        }
        let _ = tokio::time::timeout(write_timeout, outgoing.close()).await;
    });
    let mut session = Session {
        serial,
        name: format!("{}", uuid::Uuid::new_v4().simple()),
        read_allowance: options.idle_timeout,
        idle_counts_writes: false,
        heart_beat_out: None,
        options,
        registry,
        out,
        deliveries,
        connected: false,
        subscriptions: HashMap::new(),
        pending: BTreeMap::new(),
        next_message: 1,
        implied_version,
    };
    if *stop.borrow_and_update() {
        session.error(
            fatal(
                "the server is shutting down",
                "reconnect to another server or later",
            ),
            None,
        );
    }
    let mut buffer = Vec::with_capacity(4096);
    let mut last_read = Instant::now();
    let mut writer_done = false;
    'connection: loop {
        if *stop.borrow() {
            break 'connection;
        }
        let mut last_activity = last_read;
        if session.idle_counts_writes {
            let written = clock + Duration::from_millis(last_write.load(Ordering::Relaxed));
            last_activity = last_activity.max(written);
        }
        let deadline = last_activity + session.read_allowance;
        tokio::select! {
            read = incoming.next() => {
                let Some(bytes) = read else {
                    break 'connection;
                };
                last_read = Instant::now();
                buffer.extend_from_slice(&bytes);
                loop {
                    match decode(&buffer, &session.options.limits) {
                        Ok(Decoded::Incomplete) => break,
                        Ok(Decoded::HeartBeat(used)) => {
                            buffer.drain(..used);
                        }
                        Ok(Decoded::Frame(frame, used)) => {
                            buffer.drain(..used);
                            let receipt = frame.get("receipt").map(str::to_owned);
                            match session.handle(frame).await {
                                Ok(Next::Continue) => {}
                                Ok(Next::Close) => break 'connection,
                                Err(f) => {
                                    session.error(f, receipt.as_deref());
                                    break 'connection;
                                }
                            }
                            let beat = session.heart_beat_out;
                            beat_tx.send_if_modified(|b| std::mem::replace(b, beat) != beat);
                        }
                        Err(e) => {
                            session.error(fatal("malformed frame", e.0), None);
                            break 'connection;
                        }
                    }
                }
            }
            Some(delivery) = deliveries_rx.recv() => session.deliver(delivery),
            () = tokio::time::sleep_until(deadline) => {
                if session.connected {
                    tracing::debug!(session = %session.name, "STOMP client silent for too long; closing");
                } else {
                    session.error(fatal("no CONNECT frame in time", ""), None);
                }
                break 'connection;
            }
            _ = stop.changed() => {
                session.error(fatal("the server is shutting down", "reconnect to another server or later"), None);
                break 'connection;
            }
            _ = &mut writer_task => {
                writer_done = true;
                break 'connection;
            }
        }
    }
    session.close().await;
    drop(deliveries_rx);
    drop(session);
    drop(beat_tx);
    if !writer_done {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut writer_task).await;
        writer_task.abort();
    }
}

impl Session {
    fn send(&self, frame: &Frame) {
        let _ = self.out.send(Out {
            bytes: frame.encode(),
            written: None,
        });
    }

    fn error(&self, fatal: Fatal, receipt: Option<&str>) {
        let mut frame = Frame::new("ERROR").header("message", fatal.message);
        if let Some(receipt) = receipt {
            frame = frame.header("receipt-id", receipt);
        }
        if !self.connected {
            frame = frame.header("version", SUPPORTED.join(","));
        }
        let frame = frame
            .header("content-type", "text/plain")
            .body(fatal.detail.into_bytes());
        self.send(&frame);
    }

    fn receipt(&self, frame: &Frame) {
        if let Some(receipt) = frame.get("receipt") {
            self.send(&Frame::new("RECEIPT").header("receipt-id", receipt));
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<Next, Fatal> {
        let command = frame.command.as_str();
        if !self.connected {
            return match command {
                "CONNECT" | "STOMP" => self.connect(&frame),
                other => Err(fatal(
                    format!("{other} before CONNECT"),
                    "the first frame of a STOMP connection is CONNECT (or STOMP)",
                )),
            };
        }
        match command {
            "SUBSCRIBE" => self.subscribe(&frame).await?,
            "UNSUBSCRIBE" => {
                let id = required(&frame, "id")?;
                let Some(subscribed) = self.subscriptions.remove(id) else {
                    return Err(fatal(
                        format!("no subscription `{id}` on this connection"),
                        "UNSUBSCRIBE names the id of an earlier SUBSCRIBE",
                    ));
                };
                self.registry
                    .leave(&subscribed.subscriber_id, self.serial, id)
                    .await;
                // Unacknowledged messages of it go to another client (or come again later).
                self.pending.retain(|_, p| p.subscription != id);
            }
            "ACK" | "NACK" => self.ack(&frame)?,
            "DISCONNECT" => {
                self.receipt(&frame);
                return Ok(Next::Close);
            }
            "SEND" => {
                return Err(fatal(
                    "SEND is not supported",
                    "this server delivers events over STOMP; events are appended over its REST \
                     API (POST /entities/{entityType} and /entities/{entityType}/{entityId})",
                ));
            }
            "BEGIN" | "COMMIT" | "ABORT" => {
                return Err(fatal(
                    format!("{command} is not supported"),
                    "this server has no STOMP transactions (acknowledge messages one by one)",
                ));
            }
            "CONNECT" | "STOMP" => {
                return Err(fatal(
                    "already connected",
                    "CONNECT is sent once per connection",
                ));
            }
            other => {
                return Err(fatal(
                    format!("unknown command {other}"),
                    "known: CONNECT, STOMP, SUBSCRIBE, UNSUBSCRIBE, ACK, NACK, DISCONNECT",
                ));
            }
        }
        self.receipt(&frame);
        Ok(Next::Continue)
    }

    fn connect(&mut self, frame: &Frame) -> Result<Next, Fatal> {
        let version = match frame.get("accept-version").or(self.implied_version) {
            None => "1.0",
            Some(accepted) => {
                let accepted: Vec<&str> = accepted.split(',').map(str::trim).collect();
                match SUPPORTED.iter().rev().find(|v| accepted.contains(v)) {
                    Some(v) => v,
                    None => {
                        return Err(fatal(
                            "no common STOMP version",
                            format!(
                                "the client accepts {}; this server supports {}",
                                accepted.join(", "),
                                SUPPORTED.join(", ")
                            ),
                        ));
                    }
                }
            }
        };
        let (cx, cy) = match frame.get("heart-beat") {
            None => (0, 0),
            Some(text) => parse_heart_beat(text).ok_or_else(|| {
                fatal(
                    format!("heart-beat `{text}` is not two numbers of milliseconds"),
                    "e.g. heart-beat:10000,10000",
                )
            })?,
        };
        let (sx, sy) = self.options.heart_beat;
        let (sx, sy) = (millis(sx), millis(sy));
        // We send every max(sx, cy), the client every max(cx, sy); 0 disables either.
        if sx > 0 && cy > 0 {
            self.heart_beat_out = Some(Duration::from_millis(sx.max(cy)));
        }
        if cx > 0 && sy > 0 {
            self.read_allowance = Duration::from_millis(cx.max(sy)) * HEART_BEAT_TOLERANCE;
        } else {
            self.read_allowance = self.options.idle_timeout;
            self.idle_counts_writes = true;
        }
        self.connected = true;
        self.send(
            &Frame::new("CONNECTED")
                .header("version", version)
                .header("heart-beat", format!("{sx},{sy}"))
                .header("session", self.name.clone())
                .header(
                    "server",
                    format!("eventuate-server/{}", env!("CARGO_PKG_VERSION")),
                ),
        );
        Ok(Next::Continue)
    }

    async fn subscribe(&mut self, frame: &Frame) -> Result<(), Fatal> {
        let id = required(frame, "id")?.to_owned();
        if self.subscriptions.contains_key(&id) {
            return Err(fatal(
                format!("subscription id `{id}` is already used on this connection"),
                "each SUBSCRIBE of a connection needs its own id",
            ));
        }
        let ack = match frame.get("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => {
                return Err(fatal(
                    format!("ack mode `{other}` is unknown"),
                    "ack is auto, client or client-individual",
                ));
            }
        };
        let destination = required(frame, "destination")?.to_owned();
        let wanted = parse_destination(&destination)
            .map_err(|e| fatal("bad subscription destination", e))?;
        let partitions = match frame.get("partitions") {
            None => 1,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| {
                    fatal(
                        format!("partitions `{text}` is not a number from 1 to 1024"),
                        "partitions splits a subscriber id's events by entity id",
                    )
                })?,
        };
        let max_prefetch = self.options.max_prefetch.max(1);
        let prefetch = match frame.get("prefetch-count") {
            None => 1,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max_prefetch).contains(n))
                .ok_or_else(|| {
                    fatal(
                        format!("prefetch-count `{text}` is not a number from 1 to {max_prefetch}"),
                        "prefetch-count is how many unacknowledged messages a partition may have out",
                    )
                })?,
        };
        let subscriber_id = wanted
            .subscriber_id
            .clone()
            .unwrap_or_else(|| format!("stomp-transient-{}", uuid::Uuid::new_v4().simple()));
        let member = Member {
            session: self.serial,
            subscription: id.clone(),
            tx: self.deliveries.clone(),
        };
        self.subscriptions.insert(
            id.clone(),
            Subscribed {
                subscriber_id: subscriber_id.clone(),
                destination,
                ack,
            },
        );
        if let Err(e) = self
            .registry
            .join(&subscriber_id, &wanted, partitions, prefetch, member)
            .await
        {
            self.subscriptions.remove(&id);
            return Err(fatal("cannot subscribe", e));
        }
        Ok(())
    }

    fn ack(&mut self, frame: &Frame) -> Result<(), Fatal> {
        let nack = frame.command == "NACK";
        let Some(ack_id) = frame.get("id").or_else(|| frame.get("message-id")) else {
            return Err(fatal(
                format!("{} without an id", frame.command),
                "ACK and NACK carry the MESSAGE's ack header as `id`",
            ));
        };
        let number = ack_id
            .rsplit_once('-')
            .filter(|(session, _)| *session == self.name)
            .and_then(|(_, n)| n.parse::<u64>().ok());
        let Some(number) = number.filter(|n| *n < self.next_message) else {
            return Err(fatal(
                format!("{} of unknown message `{ack_id}`", frame.command),
                "acknowledge with the ack header of a MESSAGE received on this connection",
            ));
        };
        let Some(subscription) = self.pending.get(&number).map(|p| p.subscription.clone()) else {
            // Already acknowledged (a repeated ACK, or one covered by a cumulative ACK).
            return Ok(());
        };
        let cumulative = self
            .subscriptions
            .get(&subscription)
            .is_some_and(|s| s.ack == AckMode::Client);
        let covered: Vec<u64> = if cumulative {
            self.pending
                .range(..=number)
                .filter(|(_, p)| p.subscription == subscription)
                .map(|(n, _)| *n)
                .collect()
        } else {
            vec![number]
        };
        for n in covered {
            if let Some(pending) = self.pending.remove(&n) {
                let outcome = if nack {
                    Outcome::Nacked
                } else {
                    Outcome::Acked
                };
                let _ = pending.done.send(outcome);
            }
        }
        Ok(())
    }

    fn deliver(&mut self, delivery: Delivery) {
        let Some(subscribed) = self.subscriptions.get(&delivery.subscription) else {
            // Unsubscribed meanwhile: dropping `done` hands the event to another client.
            return;
        };
        let number = self.next_message;
        self.next_message += 1;
        // Messages whose run was settled without them (a NACK before them): nobody waits for
        // their outcome any more, and an ACK of them is taken as a repeated one.
        if number.is_multiple_of(256) {
            self.pending.retain(|_, p| !p.done.is_closed());
        }
        let message_id = format!("{}-{number}", self.name);
        let body = crate::entities::event_json(&delivery.event).to_string();
        let mut frame = Frame::new("MESSAGE")
            .header("destination", subscribed.destination.clone())
            .header("message-id", message_id.clone())
            .header("subscription", delivery.subscription.clone());
        if subscribed.ack != AckMode::Auto {
            frame = frame.header("ack", message_id);
        }
        let frame = frame
            .header("content-type", "application/json")
            .header("content-length", body.len().to_string())
            .body(body.into_bytes());
        let bytes = frame.encode();
        if subscribed.ack == AckMode::Auto {
            let _ = self.out.send(Out {
                bytes,
                written: Some(delivery.done),
            });
        } else {
            self.pending.insert(
                number,
                Pending {
                    subscription: delivery.subscription,
                    done: delivery.done,
                },
            );
            let _ = self.out.send(Out {
                bytes,
                written: None,
            });
        }
    }

    /// Leaves every group; unacknowledged messages go to other clients or come again later.
    async fn close(&mut self) {
        for (id, subscribed) in self.subscriptions.drain() {
            self.registry
                .leave(&subscribed.subscriber_id, self.serial, &id)
                .await;
        }
        self.pending.clear();
    }
}

fn required<'a>(frame: &'a Frame, name: &str) -> Result<&'a str, Fatal> {
    frame.get(name).ok_or_else(|| {
        fatal(
            format!("{} without `{name}`", frame.command),
            format!("{} needs a `{name}` header", frame.command),
        )
    })
}

fn parse_heart_beat(text: &str) -> Option<(u64, u64)> {
    let (x, y) = text.split_once(',')?;
    Some((x.trim().parse().ok()?, y.trim().parse().ok()?))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
