//! Sparkplug B output: the thin shell around
//! [`SparkplugNode`](weir_shared::sparkplug::SparkplugNode), which decides
//! every byte; this task owns the node, its MQTT session and the clock.
//!
//! ```text
//!  publish ──Batch (delivery id, points)──> parked ──(node Publishing)──> node.points ──> [DBIRTH…] DDATA… ──> client ──> broker
//!          <──(delivery id, done)── once every message of the batch was PUBACKed (data_qos 1) or flushed (data_qos 0)
//!  connection ──CONNACK──> subscribe NCMD, DCMD, STATE (SUBACK awaited) ──> node.birth ──> NBIRTH DBIRTH…
//!             ──PUBLISH──> node.handle_message ──> rebirth, host ONLINE: births │ refused command: warn
//!             ──error──> node.disconnected() (bdSeq + 1) ──backoff──> new client whose will carries the new bdSeq
//!  every 2 s: link state, blocks_lost ──> node.set_health ──> NDATA (when something changed)
//! ```
//!
//! Why it looks like this:
//!
//! - **Its own MQTT session** (client id `{mqtt.client_id}-spb`). MQTT 3.1.1
//!   gives a connection one will: the JSON status needs its retained
//!   "offline", Sparkplug needs `NDEATH`. And Sparkplug wants its edge node
//!   on a clean session, where the JSON publisher keeps a persistent one so
//!   the broker holds its QoS 1 messages across reconnects.
//! - **Encoded when sent, here.** Every Sparkplug message after `NBIRTH`
//!   carries the next `seq`, and births, health `NDATA` and rebirths share
//!   that counter with `DDATA`. Encoding in `validate` (two tasks, one per
//!   lane, ahead of a queue) would put numbers on the wire out of order. So
//!   `validate` hands decoded points on, and this one task numbers and
//!   sends everything in order; it owns the node, no lock needed.
//! - **Parked, never dropped.** While the node is not publishing (no
//!   session yet, or the configured primary host is not online), batches
//!   wait here, each holding its delivery's outbox permit: the reader's
//!   window fills and the backlog stays in the outbox on disk. JSON
//!   deliveries (alerts, events, status) do not wait for Sparkplug.
//! - **A batch is done when all its messages are.** With `data_qos = 1`
//!   that is the broker's PUBACK, what lets the outbox count on delivery;
//!   with the spec's `data_qos = 0`, rumqttc's notice resolves once the
//!   publish was flushed to the socket, so a broker crash can still lose
//!   it. A batch whose messages did not all make it (the connection
//!   dropped) is encoded again in the next session, with new `seq`
//!   numbers: at least once, like the JSON path's rewinds.
//! - **A new client per connection.** The next CONNECT's will must carry
//!   the new bdSeq. rumqttc-v4-next lets a shell change
//!   `EventLoop::mqtt_options` (`set_last_will`) between polls, but the
//!   same event loop would also replay, on the new connection and ahead of
//!   its `NBIRTH`, requests queued while the old one was failing, numbered
//!   for the old session. A fresh client and event loop start empty; the
//!   old requests' notices fail and their batches are offered again.
//! - **bdSeq survives restarts** in the outbox's meta table. Before a
//!   CONNECT whose will carries bdSeq `b`, `b + 1` is stored for the next
//!   start, so a restart never reuses a bdSeq a host may still see a late
//!   `NDEATH` for.
//! - **Backfill.** A point whose timestamp is more than
//!   [`BACKFILL_AGE_MS`] older than the moment it is sent goes out as
//!   `Mode::Backfill` (`is_historical`), so a host stores it in history
//!   rather than showing it as the tag's current value; points flagged
//!   historical by their source are marked whatever their age. A minute is
//!   far above the diode's own latency and below any historian export
//!   cadence; a backlog replayed after an outage is marked historical too.
//! - **Primary host offline:** the node stays connected and waits for the
//!   host's next ONLINE (one broker: nowhere else to go).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, PublishNotice, PublishOptions,
    QoS, SubscribeFilterInput,
};
use tokio::sync::mpsc::{self, Sender, UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weir_shared::config::{MqttConfig, ValidRx};
use weir_shared::lane::Lane;
use weir_shared::record::Point;
use weir_shared::sparkplug::{
    CommandOutcome, DiodeHealth, HostOutcome, Inbound, Message as SpMessage, Mode, SessionState,
    SparkplugConfig, SparkplugNode,
};

use super::outbox::Outbox;
use super::{LinkState, unix_ns};
use crate::stats::{RxStats, add};

/// Points older than this when sent go out as backfill (`is_historical`).
pub const BACKFILL_AGE_MS: u64 = 60_000;
/// How often the diode's health is offered to the node.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long the SUBACK of the command and STATE subscriptions may take.
const SUBACK_WAIT: Duration = Duration::from_secs(10);
/// How long a clean shutdown waits for the `NDEATH`'s PUBACK.
const DEATH_WAIT: Duration = Duration::from_secs(2);
/// Largest outgoing packet: a `DBIRTH` lists every metric of a device.
const MAX_OUT_PACKET: usize = 64 << 20;
/// Suffix of the Sparkplug session's client id.
const CLIENT_ID_SUFFIX: &str = "-spb";
/// At most one refused-command warning per this long (the rest counted).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The points of one delivery, for the Sparkplug publisher.
#[derive(Debug)]
pub struct Batch {
    /// The delivery's id in the publish loop, reported back when done.
    pub id: u64,
    /// The publish loop's rewind count when it took the delivery: a later
    /// rewind forgets it (it comes again from the outbox).
    pub rewinds: u64,
    /// The points, in record order.
    pub points: Vec<Point>,
}

/// Everything the Sparkplug publisher needs, made (and checked) at start.
pub struct Shell {
    node: SparkplugNode,
    /// Client options without the will (set per connection).
    opts: MqttOptions,
    capacity: usize,
    store: Arc<Outbox>,
    link: Arc<Mutex<LinkState>>,
    link_timeout: Duration,
    stats: Arc<RxStats>,
}

impl Shell {
    /// The publisher `cfg` asks for (`[sparkplug]`), if any.
    pub fn for_config(
        cfg: &ValidRx,
        store: &Arc<Outbox>,
        link: &Arc<Mutex<LinkState>>,
        stats: &Arc<RxStats>,
    ) -> anyhow::Result<Option<Self>> {
        cfg.raw
            .sparkplug
            .as_ref()
            .map(|sp| {
                Self::new(
                    &cfg.raw.mqtt,
                    sp.clone(),
                    store.clone(),
                    (link.clone(), cfg.raw.link.link_timeout),
                    stats.clone(),
                )
            })
            .transpose()
    }

    /// The node, with the bdSeq the last run left in the outbox, and the
    /// client options of its session (the `[mqtt]` broker, TLS and
    /// credentials; clean session).
    pub fn new(
        mqtt: &MqttConfig,
        cfg: SparkplugConfig,
        store: Arc<Outbox>,
        (link, link_timeout): (Arc<Mutex<LinkState>>, Duration),
        stats: Arc<RxStats>,
    ) -> anyhow::Result<Self> {
        let bd_seq = store
            .bd_seq()
            .context("reading the Sparkplug bdSeq from the outbox")?
            .unwrap_or(0)
            % 256;
        let max_inbound = cfg.max_inbound_bytes;
        let node = SparkplugNode::new(cfg, bd_seq)?;
        let mut m = mqtt.clone();
        m.client_id = format!("{}{CLIENT_ID_SUFFIX}", mqtt.client_id);
        let security = super::mqtt_tls::Security::load(&m)?;
        let mut opts = security.options(&m);
        opts.set_keep_alive(
            u16::try_from(m.keep_alive.as_secs())
                .unwrap_or(u16::MAX)
                .max(1),
        );
        opts.set_inflight(m.inflight);
        // Sparkplug B 3.0: an edge node on MQTT 3.1.1 connects with Clean
        // Session set.
        opts.set_clean_session(true);
        // Commands and STATE larger than `max_inbound_bytes` reach the node
        // (which refuses them) up to 1 MiB; beyond, rumqttc drops the
        // connection. Restrict who may publish there with broker ACLs.
        opts.set_max_packet_size(max_inbound.max(1 << 20), MAX_OUT_PACKET);
        tracing::info!(client_id = %m.client_id, bd_seq, "Sparkplug B output enabled.");
        Ok(Self {
            node,
            opts,
            capacity: usize::from(m.inflight),
            store,
            link,
            link_timeout,
            stats,
        })
    }

    /// Start the publisher. It reports finished batches on `done`, as the
    /// JSON acker does, and forgets parked batches older than `rewind`.
    pub fn spawn(
        self,
        done: UnboundedSender<(Option<u64>, bool)>,
        rewind: watch::Receiver<u64>,
    ) -> Handle {
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (notice_tx, notice_rx) = mpsc::channel(self.capacity.max(1) * 2);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let acker = super::publish::spawn_acker(notice_rx, ack_tx, self.stats.clone());
        let task = Task {
            node: self.node,
            opts: self.opts,
            capacity: self.capacity,
            store: self.store,
            link: self.link,
            link_timeout: self.link_timeout,
            stats: self.stats,
            done,
            rewind,
            parked: BTreeMap::new(),
            sent: HashMap::new(),
            conn: None,
            conn_gen: 0,
            backoff: Duration::from_millis(100),
            retry_at: Instant::now(),
            events: event_tx,
            notices: notice_tx,
            refusals: Throttle::default(),
        };
        let task = tokio::spawn(async move {
            task.run(batch_rx, event_rx, ack_rx).await;
            let _ = acker.await;
        });
        Handle {
            batches: batch_tx,
            task,
        }
    }
}

/// The publish loop's side of the Sparkplug publisher.
pub struct Handle {
    batches: UnboundedSender<Batch>,
    task: JoinHandle<()>,
}

impl Handle {
    /// Hand over a delivery's points. Unbounded: every batch holds an
    /// outbox permit, so the readers' windows bound how many wait.
    pub fn send(&self, batch: Batch) {
        if self.batches.send(batch).is_err() {
            tracing::error!("Sparkplug publisher gone: points stay in the outbox.");
        }
    }

    /// No more batches: publish `NDEATH`, disconnect, and wait for it.
    /// What is still parked stays in the outbox.
    pub async fn finish(self) {
        drop(self.batches);
        let _ = self.task.await;
    }
}

/// What the connection task reports.
enum ConnEvent {
    /// CONNACK.
    Up,
    /// The connection (or the CONNECT) failed; the task ended.
    Down(String),
    /// A message on a subscribed topic.
    Inbound { topic: String, payload: Vec<u8> },
}

/// A batch whose messages are with the client.
struct Sent {
    batch: Batch,
    remaining: usize,
    failed: bool,
}

/// One MQTT connection (one client, one event loop).
struct Conn {
    client: AsyncClient,
    task: JoinHandle<()>,
}

/// Rate limit for a warning that the network can trigger at will.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed since the last one)` if a warning may go out now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

struct Task {
    node: SparkplugNode,
    opts: MqttOptions,
    capacity: usize,
    store: Arc<Outbox>,
    link: Arc<Mutex<LinkState>>,
    link_timeout: Duration,
    stats: Arc<RxStats>,
    done: UnboundedSender<(Option<u64>, bool)>,
    rewind: watch::Receiver<u64>,
    /// Batches waiting to be encoded, by delivery id (oldest first).
    parked: BTreeMap<u64, Batch>,
    /// Batches with the client, by delivery id.
    sent: HashMap<u64, Sent>,
    conn: Option<Conn>,
    /// Bumped per connection; events of older ones are ignored.
    conn_gen: u64,
    backoff: Duration,
    /// When to connect next (while `conn` is `None`).
    retry_at: Instant,
    events: UnboundedSender<(u64, ConnEvent)>,
    notices: Sender<(PublishNotice, Option<u64>)>,
    refusals: Throttle,
}

/// Unix milliseconds, for the node.
fn unix_ms() -> u64 {
    u64::try_from(unix_ns() / 1_000_000).unwrap_or(0)
}

impl Task {
    async fn run(
        mut self,
        mut batches: UnboundedReceiver<Batch>,
        mut events: UnboundedReceiver<(u64, ConnEvent)>,
        mut acks: UnboundedReceiver<(Option<u64>, bool)>,
    ) {
        let mut health = tokio::time::interval(HEALTH_EVERY);
        loop {
            let can_send = self.can_send();
            tokio::select! {
                biased;
                e = events.recv() => if let Some((conn, e)) = e {
                    self.on_event(conn, e).await;
                },
                a = acks.recv() => if let Some((id, ok)) = a {
                    self.on_ack(id, ok);
                },
                b = batches.recv() => match b {
                    Some(b) => {
                        self.parked.insert(b.id, b);
                    }
                    None => break,
                },
                _ = health.tick() => self.health().await,
                () = tokio::time::sleep_until(self.retry_at), if self.conn.is_none() => {
                    self.connect().await;
                },
                () = std::future::ready(()), if can_send => self.send_one().await,
            }
        }
        self.shutdown().await;
    }

    /// Whether a parked batch may be encoded and sent now.
    fn can_send(&mut self) -> bool {
        // Batches a rewind forgot come again from the outbox.
        let rewinds = *self.rewind.borrow();
        self.parked.retain(|_, b| b.rewinds >= rewinds);
        !self.parked.is_empty()
            && self.conn.is_some()
            && self.node.session() == SessionState::Publishing
    }

    /// Start a connection whose will carries the node's bdSeq.
    async fn connect(&mut self) {
        // The next start must not reuse this bdSeq: keep `b + 1` first.
        let next = (self.node.bd_seq() + 1) % 256;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.set_bd_seq(next)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Sparkplug bdSeq not kept in the outbox."),
            Err(e) => tracing::error!(error = %e, "Sparkplug bdSeq not kept in the outbox."),
        }
        let will = self.node.will();
        let mut opts = self.opts.clone();
        opts.set_last_will(LastWill::new(
            will.topic,
            will.payload,
            qos(will.qos),
            will.retain,
        ));
        let (client, eventloop) = AsyncClient::builder(opts)
            .capacity(self.capacity.max(1))
            .build();
        self.conn_gen += 1;
        let task = spawn_connection(eventloop, self.conn_gen, self.events.clone());
        self.conn = Some(Conn { client, task });
    }

    /// The connection is gone (or never came up): the next one gets a new
    /// bdSeq, after a backoff with jitter.
    fn lost_connection(&mut self) {
        if let Some(c) = self.conn.take() {
            c.task.abort();
        }
        self.conn_gen += 1;
        self.node.disconnected();
        let spread = (unix_ns() / 1000).rem_euclid(1000) as u32;
        let wait = self.backoff / 2 + self.backoff / 2 * spread / 1000;
        self.retry_at = Instant::now() + wait;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    async fn on_event(&mut self, conn: u64, e: ConnEvent) {
        if conn != self.conn_gen {
            return; // from a connection already given up
        }
        match e {
            ConnEvent::Up => self.session_up().await,
            ConnEvent::Down(error) => {
                self.lost_connection();
                tracing::warn!(%error, next_bd_seq = self.node.bd_seq(), "Sparkplug MQTT connection lost.");
            }
            ConnEvent::Inbound { topic, payload } => self.inbound(&topic, &payload).await,
        }
    }

    /// CONNACK: subscribe (and wait for the SUBACK, so commands and the
    /// host's STATE cannot be missed), then the births.
    async fn session_up(&mut self) {
        let Some(client) = self.conn.as_ref().map(|c| c.client.clone()) else {
            return;
        };
        let filters: Vec<SubscribeFilterInput> = self
            .node
            .subscriptions()
            .into_iter()
            .map(|f| SubscribeFilterInput::new(f, QoS::AtLeastOnce))
            .collect();
        let subscribed = match client.subscribe_many_tracked(filters).await {
            Ok(notice) => matches!(
                tokio::time::timeout(SUBACK_WAIT, notice.wait_async()).await,
                Ok(Ok(_))
            ),
            Err(_) => false,
        };
        if !subscribed {
            tracing::warn!("Sparkplug subscriptions not acknowledged; reconnecting.");
            self.lost_connection();
            return;
        }
        self.backoff = Duration::from_millis(100);
        let births = self.node.birth(unix_ms());
        if births.is_empty() {
            tracing::info!(
                bd_seq = self.node.bd_seq(),
                "Sparkplug session up; waiting for the primary host to be online."
            );
        } else {
            tracing::info!(
                bd_seq = self.node.bd_seq(),
                devices = births.len() - 1,
                "Sparkplug session up; births published."
            );
        }
        for m in births {
            self.publish(m, None).await;
        }
    }

    /// A message on a subscribed topic: commands and the host's STATE.
    async fn inbound(&mut self, topic: &str, payload: &[u8]) {
        match self.node.handle_message(topic, payload, unix_ms()) {
            Inbound::Command(CommandOutcome::Rebirth(births)) => {
                tracing::info!("Sparkplug rebirth requested: births re-sent from the cache.");
                for m in births {
                    self.publish(m, None).await;
                }
            }
            Inbound::Command(CommandOutcome::Refused(why)) => {
                if let Some(suppressed) = self.refusals.allow(Instant::now()) {
                    tracing::warn!(topic, reason = %why, suppressed, "Sparkplug command refused.");
                }
            }
            Inbound::Host(HostOutcome::Online(births)) => {
                tracing::info!("Sparkplug primary host online: publishing.");
                for m in births {
                    self.publish(m, None).await;
                }
            }
            Inbound::Host(HostOutcome::Offline) => tracing::warn!(
                "Sparkplug primary host offline: data waits in the outbox until it is back."
            ),
            Inbound::Host(HostOutcome::Ignored(why)) => {
                tracing::debug!(topic, reason = %why, "STATE message ignored.");
            }
        }
    }

    /// Offer the link's health; an `NDATA` goes out when it changed.
    async fn health(&mut self) {
        let h = {
            let Ok(link) = self.link.lock() else { return };
            let t = super::now();
            DiodeHealth {
                link_up: link
                    .last
                    .as_ref()
                    .is_some_and(|(at, ..)| t.duration_since(*at) < self.link_timeout),
                last_seq: link
                    .last
                    .as_ref()
                    .and_then(|(_, session, _)| link.delivered(*session, Lane::Bulk))
                    .unwrap_or(0),
                gap_count: self
                    .stats
                    .blocks_lost
                    .load(std::sync::atomic::Ordering::Relaxed),
            }
        };
        if let Some(m) = self.node.set_health(h, unix_ms()) {
            self.publish(m, None).await;
        }
    }

    /// Encode the oldest parked batch and hand its messages to the client.
    async fn send_one(&mut self) {
        let Some((id, batch)) = self.parked.pop_first() else {
            return;
        };
        let now_ms = unix_ms();
        let mut messages = Vec::new();
        let (mut device_limit, mut metric_limit) = (0, 0);
        for (mode, run) in runs(&batch.points, now_ms) {
            // `can_send` saw the node publishing, and nothing between there
            // and here changes that.
            let Ok(p) = self.node.points(run, mode, now_ms) else {
                self.parked.insert(id, batch);
                return;
            };
            messages.extend(p.messages);
            device_limit += p.dropped_device_limit;
            metric_limit += p.dropped_metric_limit;
        }
        if device_limit + metric_limit > 0 {
            add(
                &self.stats.sparkplug_dropped,
                (device_limit + metric_limit) as u64,
            );
            tracing::warn!(
                device_limit,
                metric_limit,
                "Sparkplug points dropped at sparkplug.max_devices / max_metrics_per_device."
            );
        }
        let n = messages.len();
        self.sent.insert(
            id,
            Sent {
                batch,
                remaining: n,
                failed: false,
            },
        );
        if n == 0 {
            self.finish_batch(id);
            return;
        }
        for m in messages {
            self.publish(m, Some(id)).await;
        }
    }

    /// Hand one message to the client; its notice goes to the acker
    /// (tagged with its batch, if any).
    async fn publish(&mut self, m: SpMessage, batch: Option<u64>) {
        let Some(client) = self.conn.as_ref().map(|c| c.client.clone()) else {
            self.on_ack(batch, false);
            return;
        };
        let opts = PublishOptions::new(qos(m.qos)).retain(m.retain);
        match client.publish_tracked(m.topic, m.payload, opts).await {
            Ok(notice) => {
                add(&self.stats.published, 1);
                if self.notices.send((notice, batch)).await.is_err() {
                    self.on_ack(batch, false);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, kind = m.kind.as_str(), "Sparkplug publish not queued.");
                self.on_ack(batch, false);
            }
        }
    }

    fn on_ack(&mut self, batch: Option<u64>, ok: bool) {
        let Some(id) = batch else { return };
        let Some(s) = self.sent.get_mut(&id) else {
            return;
        };
        s.remaining = s.remaining.saturating_sub(1);
        s.failed |= !ok;
        if s.remaining == 0 {
            self.finish_batch(id);
        }
    }

    /// Report a batch done, or park it again for the next session.
    fn finish_batch(&mut self, id: u64) {
        let Some(s) = self.sent.remove(&id) else {
            return;
        };
        if !s.failed {
            let _ = self.done.send((Some(id), true));
        } else if s.batch.rewinds >= *self.rewind.borrow() {
            tracing::debug!(
                points = s.batch.points.len(),
                "Sparkplug batch not fully delivered; offered again in the next session."
            );
            self.parked.insert(id, s.batch);
        }
    }

    /// Clean stop: the broker drops the will on DISCONNECT, so publish the
    /// `NDEATH` ourselves first.
    async fn shutdown(mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.node.session() == SessionState::Disconnected {
            conn.task.abort();
            return;
        }
        {
            let will = self.node.will();
            let opts = PublishOptions::new(qos(will.qos)).retain(will.retain);
            if let Ok(notice) = conn
                .client
                .publish_tracked(will.topic, will.payload, opts)
                .await
            {
                let _ = tokio::time::timeout(DEATH_WAIT, notice.wait_async()).await;
            }
            let _ = conn.client.disconnect().await;
            let mut task = conn.task;
            if tokio::time::timeout(Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
            tracing::info!(
                bd_seq = self.node.bd_seq(),
                "Sparkplug NDEATH published; disconnected."
            );
        }
    }
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Drive one connection until it fails; say so and end (the event loop,
/// and whatever it still held, goes with it).
fn spawn_connection(
    mut eventloop: EventLoop,
    conn: u64,
    events: UnboundedSender<(u64, ConnEvent)>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let e = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => ConnEvent::Up,
                Ok(Event::Incoming(Packet::Publish(p))) => ConnEvent::Inbound {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.to_vec(),
                },
                Ok(_) => continue,
                Err(e) => {
                    let _ = events.send((conn, ConnEvent::Down(e.to_string())));
                    return;
                }
            };
            if events.send((conn, e)).is_err() {
                return;
            }
        }
    })
}

/// Split points into consecutive runs of one mode: older than
/// [`BACKFILL_AGE_MS`] at `now_ms` → backfill, else live.
fn runs(points: &[Point], now_ms: u64) -> Vec<(Mode, &[Point])> {
    let cutoff_ns = i64::try_from(now_ms.saturating_sub(BACKFILL_AGE_MS))
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000);
    let mode = |p: &Point| {
        if p.ts_ns < cutoff_ns {
            Mode::Backfill
        } else {
            Mode::Live
        }
    };
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=points.len() {
        if i == points.len() || mode(&points[i]) != mode(&points[start]) {
            out.push((mode(&points[start]), &points[start..i]));
            start = i;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use weir_shared::record::{SourceSystem, Value};

    use super::*;

    fn at(ts_ms: i64) -> Point {
        Point {
            seq: 1,
            ..Point::new(
                SourceSystem::PiWebApi,
                "T",
                ts_ms * 1_000_000,
                Value::F64(1.0),
            )
        }
    }

    #[test]
    fn old_points_are_backfill_in_runs() {
        let now = 1_000_000_u64;
        let old = 1_000_000 - 60_001;
        let pts = [at(old), at(old), at(999_000), at(old), at(1_000_500)];
        let modes: Vec<(Mode, usize)> =
            runs(&pts, now).iter().map(|(m, r)| (*m, r.len())).collect();
        assert_eq!(
            modes,
            [
                (Mode::Backfill, 2),
                (Mode::Live, 1),
                (Mode::Backfill, 1),
                (Mode::Live, 1)
            ]
        );
        assert!(runs(&[], now).is_empty());
    }

    #[test]
    fn refusal_warnings_are_rate_limited() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(t.allow(t0 + REFUSAL_LOG_EVERY), Some(2));
    }
}
