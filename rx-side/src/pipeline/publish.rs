//! Stage 6, `publish`: MQTT at QoS 1; an outbox entry is done only when the
//! broker acknowledged every message made from it.
//!
//! ```text
//!  Delivery (urgent: events, alert lane; then bulk) ──publish_tracked──> broker ──PUBACK──> count down
//!      entry fully acknowledged ──EntryRef──> outbox (deleted after `retain_acked`)
//!  alert block from memory (the fast path) ──publish──> broker; its committed entry, read back, joins it:
//!      acknowledged already: done at once; still in flight: done with it; failed (rewind): published itself
//!  broker came back without our session, or a publish failed ──> rewind: the outbox is read again
//!  status (see `status`) ──(retained; last will "offline")──> diode/v1/{site}/{gw}/status
//!  with [sparkplug]: Delivery.points ──Batch──> sparkplug (own session) ──done (PUBACK; flushed at data_qos 0)──> count down
//! ```
//!
//! The client keeps a persistent session (`clean_session = false`), so a
//! broker that kept it gets the in-flight messages again from the client.
//! A broker that lost it (restart without persistence) also lost what it
//! had acknowledged but not delivered; the rewind publishes everything still
//! in the outbox again, under the same record ids, for consumers to
//! de-duplicate.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, PublishNotice, PublishOptions,
    QoS,
};
use tokio::sync::mpsc::{self, Receiver, UnboundedSender};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weir_shared::config::MqttConfig;
use weir_shared::contract::PayloadOptions;
use weir_shared::reassembly::BlockKey;

use super::outbox::EntryRef;
use super::{Delivery, Message, StageError, now};
use crate::stats::{RxStats, add};

/// The topics of one receiver.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Template for point topics.
    pub point_template: String,
    /// Site name.
    pub site: String,
    /// Retained link status.
    pub status: String,
    /// Gap (loss) events.
    pub gaps: String,
    /// Prefix of alert topics (`…/alerts/{source}`).
    pub alerts: String,
    /// Audit events (receiver start, sender sessions).
    pub audit: String,
    /// Data-quality events.
    pub dq: String,
    /// Points the data-quality checks keep off the live topics.
    pub quarantine: String,
    /// Point payload options.
    pub payload: PayloadOptions,
    /// Points per message (JSON array above 1).
    pub batch_points: usize,
}

impl Topics {
    /// Topics from the `[mqtt]` config.
    pub fn new(m: &MqttConfig) -> Self {
        let base = format!("diode/v1/{}/{}", m.site, m.gateway);
        Self {
            point_template: m.point_topic.clone(),
            site: m.site.clone(),
            status: format!("{base}/status"),
            gaps: format!("{base}/gaps"),
            alerts: format!("{base}/alerts"),
            audit: format!("{base}/audit"),
            dq: format!("{base}/dq"),
            quarantine: format!("{base}/quarantine"),
            payload: PayloadOptions { ts_ms: m.ts_ms },
            batch_points: m.batch_points,
        }
    }
}

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long the publisher waits for outstanding acknowledgements once its
/// inputs closed or the broker stopped answering.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How long a shutdown (SIGTERM) goes on publishing: everything not
/// acknowledged by then stays in the outbox and is published, under the
/// same record ids, at the next start. A stop takes seconds, not the time
/// a backlog takes to drain.
const STOP_DRAIN: Duration = Duration::from_secs(2);

fn offline_payload() -> Vec<u8> {
    serde_json::json!({"online": false})
        .to_string()
        .into_bytes()
}

/// Client options from the `[mqtt]` config (address, TLS and credentials
/// from `mqtt_tls`), with the retained "offline" status as last will.
fn mqtt_options(
    cfg: &MqttConfig,
    topics: &Topics,
    role: Role,
) -> Result<MqttOptions, super::mqtt_tls::SecurityError> {
    let security = super::mqtt_tls::Security::load(cfg)?;
    if role == Role::Urgent {
        security.log(cfg);
    }
    let mut cfg = cfg.clone();
    cfg.client_id.push_str(role.suffix());
    let mut opts = security.options(&cfg);
    opts.set_keep_alive(
        u16::try_from(cfg.keep_alive.as_secs())
            .unwrap_or(u16::MAX)
            .max(1),
    );
    opts.set_inflight(cfg.inflight);
    opts.set_clean_session(false);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    if role == Role::Urgent {
        opts.set_last_will(LastWill::new(
            topics.status.clone(),
            offline_payload(),
            QoS::AtLeastOnce,
            true,
        ));
    }
    Ok(opts)
}

/// The publisher's two MQTT sessions. Alerts, events and the status have a
/// connection of their own, so an alarm never queues behind thousands of
/// bulk points in the client, on the socket or in the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Alerts, gap/audit/dq events, status; carries the last will.
    Urgent = 0,
    /// Points.
    Bulk = 1,
}

impl Role {
    fn suffix(self) -> &'static str {
        match self {
            Role::Urgent => "",
            Role::Bulk => "-bulk",
        }
    }
}

/// The event loop drives the connection; it reconnects with backoff.
fn spawn_connection(
    mut eventloop: EventLoop,
    role: Role,
    connacks: UnboundedSender<(Role, Option<bool>)>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!(
                        session_present = ack.session_present,
                        connection = ?role,
                        "Connected to the MQTT broker."
                    );
                    let _ = connacks.send((role, Some(ack.session_present)));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = connacks.send((role, None));
                    // Exponential backoff with jitter: half the step fixed,
                    // half spread, so many receivers don't reconnect in step.
                    let spread = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos());
                    let wait = backoff / 2 + backoff / 2 * (spread % 1000) / 1000;
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT connection error.");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    })
}

/// Notices are awaited in order by a second task, which reports each
/// outcome back to the publish loop (or to the Sparkplug publisher).
pub(super) fn spawn_acker(
    mut notice_rx: Receiver<(PublishNotice, Option<u64>)>,
    done_tx: UnboundedSender<(Option<u64>, bool)>,
    ack_stats: Arc<RxStats>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((notice, id)) = notice_rx.recv().await {
            let ok = match notice.wait_async().await {
                Ok(_) => {
                    add(&ack_stats.acked, 1);
                    true
                }
                Err(e) => {
                    add(&ack_stats.publish_failed, 1);
                    tracing::debug!(error = %e, "Publish not acknowledged.");
                    false
                }
            };
            if done_tx.send((id, ok)).is_err() {
                break;
            }
        }
    })
}

/// The publisher's channels.
pub struct PublishIo {
    /// Alert-lane blocks and events: served first.
    pub urgent: Receiver<Delivery>,
    /// Bulk-lane blocks.
    pub bulk: Receiver<Delivery>,
    /// Messages outside the outbox (status, gap reports the disk refused).
    pub ephemeral: Receiver<Vec<Message>>,
    /// Entries the broker fully acknowledged.
    pub acked: UnboundedSender<EntryRef>,
    /// Bumped when every outbox entry must be published again.
    pub rewind: watch::Sender<u64>,
    /// Shutdown: from then on, at most `DRAIN_LIMIT` more.
    pub stop: CancellationToken,
    /// The Sparkplug publisher to start, with `[sparkplug]`: it takes the
    /// deliveries' points.
    pub sparkplug: Option<super::sparkplug::Shell>,
}

/// A delivery waiting for its acknowledgements.
struct Tracked {
    /// Its entry (`None`: an alert block published from memory).
    at: Option<EntryRef>,
    /// The alert-lane block it was made from.
    alert: Option<BlockKey>,
    remaining: usize,
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// Committed entries of the same block, read back while it was in
    /// flight: done when it is.
    joined: Vec<(EntryRef, tokio::sync::OwnedSemaphorePermit)>,
}

/// What the publisher knows of an alert-lane block published from memory
/// (or of one whose committed entry came first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fast {
    /// Published from memory as this delivery; not yet acknowledged.
    InFlight(u64),
    /// Published from memory and acknowledged: its entry is done at once.
    Acked,
    /// Its committed entry came first and was published: the copy from
    /// memory, if it comes, is dropped.
    Committed,
}

/// Alert blocks the fast path published, at most [`FAST_MEMORY`] of
/// them, the oldest forgotten first. Forgetting one costs at most a
/// second publish of its records under the same ids.
#[derive(Default)]
struct FastBlocks {
    by_block: HashMap<BlockKey, (u64, Fast)>,
    /// Insertion order, by serial (stale serials are skipped).
    order: VecDeque<(BlockKey, u64)>,
    serial: u64,
}

/// Alert blocks remembered by [`FastBlocks`]: the fast path's window and
/// the writer's queue ahead of a commit, with room to spare.
const FAST_MEMORY: usize = 4096;

impl FastBlocks {
    fn set(&mut self, key: BlockKey, f: Fast) {
        self.serial += 1;
        self.by_block.insert(key, (self.serial, f));
        self.order.push_back((key, self.serial));
        while self.by_block.len() > FAST_MEMORY {
            let Some((k, serial)) = self.order.pop_front() else {
                break;
            };
            if self.by_block.get(&k).is_some_and(|&(s, _)| s == serial) {
                self.by_block.remove(&k);
            }
        }
        if self.order.len() > 2 * FAST_MEMORY {
            let live = &self.by_block;
            self.order
                .retain(|(k, serial)| live.get(k).is_some_and(|&(s, _)| s == *serial));
        }
    }

    fn get(&self, key: BlockKey) -> Option<Fast> {
        self.by_block.get(&key).map(|&(_, f)| f)
    }

    fn remove(&mut self, key: BlockKey) -> Option<Fast> {
        self.by_block.remove(&key).map(|(_, f)| f)
    }

    fn clear(&mut self) {
        self.by_block.clear();
        self.order.clear();
    }
}

/// What the publish loop knows.
#[derive(Default)]
struct State {
    next_id: u64,
    tracked: HashMap<u64, Tracked>,
    /// Messages to publish, with their delivery id (none: ephemeral).
    urgent: VecDeque<(Option<u64>, Message)>,
    bulk: VecDeque<(Option<u64>, Message)>,
    /// Connects the broker acknowledged, per connection ([`Role`]).
    connects: [u64; 2],
    /// Connected now, per connection.
    connected: [bool; 2],
    /// A delivery failed while disconnected: rewind on the next connect.
    lost: bool,
    /// The Sparkplug publisher (with `[sparkplug]`).
    sparkplug: Option<super::sparkplug::Handle>,
    /// Alert blocks published from memory while being committed.
    fast: FastBlocks,
}

impl State {
    fn new(sparkplug: Option<super::sparkplug::Handle>) -> Self {
        Self {
            sparkplug,
            ..Self::default()
        }
    }

    /// Track a delivery: its messages are queued here, its points (if any)
    /// go to the Sparkplug publisher as one more thing to acknowledge.
    ///
    /// An alert block comes twice: from memory while it is committed (the
    /// fast path: `at` is `None`) and as its committed entry. Whichever
    /// comes first is published; the committed entry of a block published
    /// from memory is done once that publish is acknowledged, and a copy
    /// from memory behind its committed entry is dropped.
    fn take(&mut self, d: Delivery, urgent: bool, io: &PublishIo) {
        let Delivery {
            at,
            alert,
            messages,
            points,
            permit,
        } = d;
        if let Some(key) = alert {
            match (at, self.fast.get(key)) {
                (Some(at), Some(Fast::Acked)) => {
                    self.fast.remove(key);
                    let _ = io.acked.send(at);
                    return;
                }
                (Some(at), Some(Fast::InFlight(id))) => {
                    self.fast.remove(key);
                    if let Some(t) = self.tracked.get_mut(&id) {
                        t.joined.push((at, permit));
                        return;
                    }
                    // Its publish from memory failed: publish the entry.
                    self.fast.set(key, Fast::Committed);
                }
                (Some(_), Some(Fast::Committed) | None) => self.fast.set(key, Fast::Committed),
                (None, Some(_)) => return,
                (None, None) => {}
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut remaining = messages.len();
        if !points.is_empty() {
            if let Some(sp) = &self.sparkplug {
                sp.send(super::sparkplug::Batch {
                    id,
                    rewinds: *io.rewind.borrow(),
                    points,
                });
                remaining += 1;
            } else {
                tracing::error!("Points for Sparkplug without a Sparkplug publisher: dropped.");
            }
        }
        if remaining == 0 {
            if let Some(at) = at {
                let _ = io.acked.send(at);
            }
            return;
        }
        if let (None, Some(key)) = (at, alert) {
            self.fast.set(key, Fast::InFlight(id));
        }
        self.tracked.insert(
            id,
            Tracked {
                at,
                alert,
                remaining,
                _permit: permit,
                joined: Vec::new(),
            },
        );
        let q = if urgent {
            &mut self.urgent
        } else {
            &mut self.bulk
        };
        q.extend(messages.into_iter().map(|m| (Some(id), m)));
    }

    /// Take what the urgent inputs hold now. Alert-lane messages overtake
    /// the bulk backlog: an alarm must not wait behind thousands of
    /// historian points on their way out.
    fn take_urgent(&mut self, io: &mut PublishIo, urgent_open: &mut bool) {
        while *urgent_open {
            match io.urgent.try_recv() {
                Ok(d) => self.take(d, true, io),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => *urgent_open = false,
            }
        }
        while let Ok(ms) = io.ephemeral.try_recv() {
            self.urgent.extend(ms.into_iter().map(|m| (None, m)));
        }
    }

    /// Everything not yet acknowledged will come again from the outbox:
    /// forget it here so the readers' windows open.
    fn rewind(&mut self, io: &PublishIo, stats: &RxStats) {
        self.lost = false;
        add(&stats.rewinds, 1);
        tracing::warn!("The broker lost messages it held: publishing the outbox again.");
        self.tracked.clear();
        self.fast.clear();
        self.urgent.retain(|(id, _)| id.is_none());
        self.bulk.retain(|(id, _)| id.is_none());
        io.rewind.send_modify(|g| *g += 1);
    }

    /// The connection went up (`Some(session_present)`) or down. A broker
    /// that lost our session (after the first connect) also lost what it
    /// held for subscribers.
    fn connection(&mut self, role: Role, up: Option<bool>, io: &PublishIo, stats: &RxStats) {
        let i = role as usize;
        let Some(present) = up else {
            self.connected[i] = false;
            return;
        };
        self.connects[i] += 1;
        self.connected[i] = true;
        if (!present && self.connects[i] > 1) || self.lost {
            self.rewind(io, stats);
        }
    }

    fn done(&mut self, id: Option<u64>, ok: bool, io: &PublishIo, stats: &RxStats) {
        // Outcomes of deliveries a rewind already forgot, and of status
        // messages, change nothing.
        let Some(id) = id else { return };
        if !ok {
            if self.tracked.contains_key(&id) {
                if self.connected == [true; 2] {
                    self.rewind(io, stats);
                } else {
                    self.tracked.remove(&id);
                    self.lost = true;
                }
            }
            return;
        }
        if let Some(t) = self.tracked.get_mut(&id) {
            t.remaining -= 1;
            if t.remaining == 0 {
                let Some(t) = self.tracked.remove(&id) else {
                    return;
                };
                if let (None, Some(key)) = (t.at, t.alert)
                    && self.fast.get(key) == Some(Fast::InFlight(id))
                {
                    self.fast.set(key, Fast::Acked);
                }
                for at in
                    t.at.into_iter()
                        .chain(t.joined.into_iter().map(|(at, _)| at))
                {
                    let _ = io.acked.send(at);
                }
            }
        }
    }
}

/// Clean shutdown: say offline ourselves (the broker drops the will on a
/// clean disconnect), then disconnect.
async fn say_offline(client: &AsyncClient, topics: &Topics) {
    let _ = client
        .publish_tracked(
            topics.status.clone(),
            offline_payload(),
            PublishOptions::new(QoS::AtLeastOnce).retain(true),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = client.disconnect().await;
}

/// Shutdown, bounded: say offline, and let the Sparkplug publisher send
/// its death certificate.
async fn close(client: &AsyncClient, topics: &Topics, sparkplug: Option<super::sparkplug::Handle>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), say_offline(client, topics)).await;
    if let Some(sp) = sparkplug {
        let _ = tokio::time::timeout(Duration::from_secs(5), sp.finish()).await;
    }
}

/// Where connections report going up (`Some(session_present)`) or down.
type ConnEvents = UnboundedSender<(Role, Option<bool>)>;
/// Where ackers report each message's outcome.
type Outcomes = UnboundedSender<(Option<u64>, bool)>;

/// What the loop does after a publishing pass.
enum Pass {
    /// Go on.
    Next,
    /// Start the loop again (something was put back).
    Again,
    /// The session's acker is gone: stop.
    Stop,
}

/// Publish every urgent message now, awaiting the client if it is full
/// (never past `give_up`).
async fn publish_urgent(
    st: &mut State,
    s: &Session,
    give_up: &mut Option<Instant>,
    stop: &CancellationToken,
    stats: &RxStats,
) -> Pass {
    while let Some((id, msg)) = st.urgent.pop_front() {
        if id.is_some_and(|id| !st.tracked.contains_key(&id)) {
            continue; // rewound: it comes again from the outbox
        }
        let opts = PublishOptions::new(QoS::AtLeastOnce).retain(msg.retain);
        let publish = s
            .client
            .publish_tracked(msg.topic.clone(), msg.payload.clone(), opts);
        match bounded(publish, *give_up, stop).await {
            None => {
                st.urgent.push_front((id, msg));
                give_up.get_or_insert_with(|| now() + DRAIN_LIMIT);
                return Pass::Again;
            }
            Some(Ok(notice)) => {
                add(&stats.published, 1);
                if !track(s, notice, id, give_up, stop).await {
                    return Pass::Stop;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "MQTT client refused a publish; retrying.");
                st.urgent.push_front((id, msg));
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Pass::Again;
            }
        }
    }
    Pass::Next
}

/// Offer bulk messages until the client's queue is full; `Some(full)`.
async fn offer_bulk(
    st: &mut State,
    s: &Session,
    give_up: &mut Option<Instant>,
    stop: &CancellationToken,
    stats: &RxStats,
) -> Option<bool> {
    while let Some((id, msg)) = st.bulk.pop_front() {
        if id.is_some_and(|id| !st.tracked.contains_key(&id)) {
            continue;
        }
        let opts = PublishOptions::new(QoS::AtLeastOnce).retain(msg.retain);
        let Ok(notice) = s
            .client
            .try_publish_tracked(msg.topic.clone(), msg.payload.clone(), opts)
        else {
            st.bulk.push_front((id, msg));
            return Some(true);
        };
        add(&stats.published, 1);
        if !track(s, notice, id, give_up, stop).await {
            return None;
        }
    }
    Some(false)
}

/// One MQTT session: its client, connection task, and in-order acker.
struct Session {
    client: AsyncClient,
    connection: JoinHandle<()>,
    notices: mpsc::Sender<(PublishNotice, Option<u64>)>,
    acker: JoinHandle<()>,
}

impl Session {
    /// Build the client, start its connection and its acker.
    fn open(
        cfg: &MqttConfig,
        topics: &Topics,
        role: Role,
        (events, done): (&ConnEvents, &Outcomes),
        stats: &Arc<RxStats>,
    ) -> Result<Self, StageError> {
        // `main` loaded the same files before starting: this fails only if
        // they changed since.
        let opts = mqtt_options(cfg, topics, role).map_err(|e| {
            StageError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let (client, eventloop) = AsyncClient::builder(opts)
            .capacity(usize::from(cfg.inflight))
            .build();
        let (notices, notice_rx) = mpsc::channel(usize::from(cfg.inflight) * 2);
        Ok(Self {
            client,
            connection: spawn_connection(eventloop, role, events.clone()),
            notices,
            acker: spawn_acker(notice_rx, done.clone(), stats.clone()),
        })
    }

    async fn close(self) {
        drop(self.notices);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.acker).await;
        self.connection.abort();
    }
}

/// Hand a published message's notice to its session's acker.
async fn track(
    s: &Session,
    notice: PublishNotice,
    id: Option<u64>,
    give_up: &mut Option<Instant>,
    stop: &CancellationToken,
) -> bool {
    match bounded(s.notices.send((notice, id)), *give_up, stop).await {
        Some(Ok(())) => true,
        Some(Err(_)) => false,
        None => {
            give_up.get_or_insert_with(|| now() + DRAIN_LIMIT);
            true
        }
    }
}

/// Run until every input closed and everything taken was acknowledged
/// (or `DRAIN_LIMIT` passed: what is left stays in the outbox).
///
/// Urgent messages are published on their session as they come (awaiting
/// the client if it is full). Bulk messages are offered to theirs without
/// waiting: when its queue is full, the loop goes back to listening, so an
/// alert arriving meanwhile is never stuck behind the bulk backlog.
pub async fn run(
    cfg: MqttConfig,
    topics: Topics,
    stats: Arc<RxStats>,
    mut io: PublishIo,
) -> Result<(), StageError> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let urgent_s = Session::open(&cfg, &topics, Role::Urgent, (&events_tx, &done_tx), &stats)?;
    let bulk_s = Session::open(&cfg, &topics, Role::Bulk, (&events_tx, &done_tx), &stats)?;
    drop(events_tx);
    let sparkplug = io.sparkplug.take();
    let mut st = State::new(sparkplug.map(|sp| sp.spawn(done_tx.clone(), io.rewind.subscribe())));
    drop(done_tx);

    let (mut urgent_open, mut bulk_open, mut eph_open) = (true, true, true);
    // Set once the inputs closed or shutdown began: the last moment to
    // wait for the broker; what is left then stays in the outbox.
    let mut give_up: Option<Instant> = None;
    loop {
        if give_up.is_none() && io.stop.is_cancelled() {
            give_up = Some(now() + STOP_DRAIN);
        }
        if give_up.is_some_and(|t| now() >= t) {
            tracing::error!(
                unacknowledged_blocks = st.tracked.len(),
                "Stopping before the broker acknowledged everything; the rest stays in the outbox."
            );
            break;
        }
        while let Ok((role, up)) = events.try_recv() {
            st.connection(role, up, &io, &stats);
        }
        while let Ok((id, ok)) = done_rx.try_recv() {
            st.done(id, ok, &io, &stats);
        }
        st.take_urgent(&mut io, &mut urgent_open);
        // Urgent first, all of it; then bulk, as much as its client takes.
        match publish_urgent(&mut st, &urgent_s, &mut give_up, &io.stop, &stats).await {
            Pass::Next => {}
            Pass::Again => continue,
            Pass::Stop => break,
        }
        let Some(bulk_full) = offer_bulk(&mut st, &bulk_s, &mut give_up, &io.stop, &stats).await
        else {
            break;
        };
        let inputs_open = urgent_open || bulk_open;
        if !inputs_open && give_up.is_none() {
            give_up = Some(now() + DRAIN_LIMIT);
        }
        if !inputs_open && st.tracked.is_empty() && st.bulk.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            c = events.recv() => if let Some((role, up)) = c {
                st.connection(role, up, &io, &stats);
            },
            d = done_rx.recv() => if let Some((id, ok)) = d { st.done(id, ok, &io, &stats) },
            d = io.urgent.recv(), if urgent_open => match d {
                Some(d) => st.take(d, true, &io),
                None => urgent_open = false,
            },
            m = io.ephemeral.recv(), if eph_open => match m {
                Some(ms) => st.urgent.extend(ms.into_iter().map(|m| (None, m))),
                None => eph_open = false,
            },
            // Take more bulk only when the client has room for what we hold.
            d = io.bulk.recv(), if bulk_open && st.bulk.is_empty() => match d {
                Some(d) => st.take(d, false, &io),
                None => bulk_open = false,
            },
            () = io.stop.cancelled(), if give_up.is_none() => {}
            // The bulk client frees room as acknowledgements arrive.
            () = tokio::time::sleep(Duration::from_millis(1)), if bulk_full => {}
            () = tokio::time::sleep(Duration::from_millis(50)), if give_up.is_some() => {}
        }
    }
    close(&urgent_s.client, &topics, st.sparkplug.take()).await;
    let _ = bulk_s.client.disconnect().await;
    urgent_s.close().await;
    bulk_s.close().await;
    Ok(())
}

/// Run `f` until it ends, or `None` once `give_up` passes or, before any
/// limit is set, shutdown begins.
async fn bounded<F: std::future::Future>(
    f: F,
    give_up: Option<Instant>,
    stop: &CancellationToken,
) -> Option<F::Output> {
    if let Some(t) = give_up {
        return tokio::time::timeout_at(t.into(), f).await.ok();
    }
    tokio::select! {
        r = f => Some(r),
        () = stop.cancelled() => None,
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;
    use weir_shared::lane::Lane;
    use weir_shared::wire::SessionId;

    use super::*;
    use crate::pipeline::outbox::Table;

    struct Harness {
        io: PublishIo,
        acked: mpsc::UnboundedReceiver<EntryRef>,
        permits: Arc<Semaphore>,
    }

    fn harness() -> Harness {
        let (_, urgent) = mpsc::channel(1);
        let (_, bulk) = mpsc::channel(1);
        let (_, ephemeral) = mpsc::channel(1);
        let (acked_tx, acked) = mpsc::unbounded_channel();
        Harness {
            io: PublishIo {
                urgent,
                bulk,
                ephemeral,
                acked: acked_tx,
                rewind: watch::channel(0).0,
                stop: CancellationToken::new(),
                sparkplug: None,
            },
            acked,
            permits: Arc::new(Semaphore::new(64)),
        }
    }

    fn key(seq: u64) -> BlockKey {
        BlockKey {
            session: SessionId([5; 16]),
            lane: Lane::Alert,
            seq,
        }
    }

    fn entry(k: u64) -> EntryRef {
        EntryRef {
            table: Table::Alert,
            key: k,
        }
    }

    /// Alert block `seq` with one message: from memory (`at` `None`) or
    /// as committed entry `at`.
    fn alert(io: &Harness, seq: u64, at: Option<u64>) -> Delivery {
        Delivery {
            at: at.map(entry),
            alert: Some(key(seq)),
            messages: vec![Message {
                topic: "diode/v1/s/g/alerts/syslog".into(),
                payload: format!("alert {seq}").into_bytes(),
                retain: false,
            }],
            points: Vec::new(),
            permit: io.permits.clone().try_acquire_owned().expect("permit"),
        }
    }

    fn queued(st: &State) -> Vec<String> {
        st.urgent
            .iter()
            .map(|(_, m)| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }

    fn acked(io: &mut Harness) -> Vec<EntryRef> {
        std::iter::from_fn(|| io.acked.try_recv().ok()).collect()
    }

    #[test]
    fn a_committed_alert_published_from_memory_is_done_with_that_publish() {
        let mut io = harness();
        let stats = RxStats::default();
        let mut st = State::default();
        // Published from memory; its entry, committed meanwhile, joins it.
        st.take(alert(&io, 1, None), true, &io.io);
        st.take(alert(&io, 1, Some(10)), true, &io.io);
        assert_eq!(queued(&st), ["alert 1"], "published once");
        assert!(
            acked(&mut io).is_empty(),
            "not done before the broker says so"
        );
        st.done(Some(0), true, &io.io, &stats);
        assert_eq!(acked(&mut io), [entry(10)]);
        // Acknowledged before its entry came: the entry is done at once.
        st.take(alert(&io, 2, None), true, &io.io);
        st.done(Some(1), true, &io.io, &stats);
        assert!(acked(&mut io).is_empty(), "nothing committed to delete yet");
        st.take(alert(&io, 2, Some(11)), true, &io.io);
        assert_eq!(acked(&mut io), [entry(11)]);
        assert_eq!(queued(&st), ["alert 1", "alert 2"]);
        assert!(st.tracked.is_empty() && st.fast.by_block.is_empty());
        // Their windows' places came back.
        assert_eq!(io.permits.available_permits(), 64);
    }

    #[test]
    fn a_failed_publish_from_memory_leaves_its_entry_to_be_published() {
        let mut io = harness();
        let stats = RxStats::default();
        let mut st = State::default();
        st.take(alert(&io, 1, None), true, &io.io);
        st.urgent.clear(); // handed to the client
        st.done(Some(0), false, &io.io, &stats);
        assert!(st.lost, "disconnected: published again on the next connect");
        st.take(alert(&io, 1, Some(10)), true, &io.io);
        assert_eq!(queued(&st), ["alert 1"], "the committed entry is published");
        let (id, _) = st.urgent[0];
        st.done(id, true, &io.io, &stats);
        assert_eq!(acked(&mut io), [entry(10)]);
        // An entry that joined a publish that then failed is not done: the
        // rewind publishes it again from the outbox.
        st.connected = [true; 2];
        st.take(alert(&io, 2, None), true, &io.io);
        let (id, _) = st.urgent[1];
        st.take(alert(&io, 2, Some(11)), true, &io.io);
        st.done(id, false, &io.io, &stats);
        assert!(acked(&mut io).is_empty());
        assert!(st.tracked.is_empty() && st.fast.by_block.is_empty());
        assert_eq!(*io.io.rewind.borrow(), 1);
    }

    #[test]
    fn a_copy_from_memory_behind_its_committed_entry_is_dropped() {
        let mut io = harness();
        let stats = RxStats::default();
        let mut st = State::default();
        st.take(alert(&io, 1, Some(10)), true, &io.io);
        st.take(alert(&io, 1, None), true, &io.io);
        assert_eq!(queued(&st), ["alert 1"]);
        st.done(Some(0), true, &io.io, &stats);
        assert_eq!(acked(&mut io), [entry(10)]);
        // After a rewind every entry is published again, even one whose
        // block was published from memory.
        st.take(alert(&io, 2, None), true, &io.io);
        st.rewind(&io.io, &stats);
        st.take(alert(&io, 2, Some(11)), true, &io.io);
        assert_eq!(queued(&st), ["alert 2"], "the rewind forgot what it held");
    }

    #[test]
    fn the_memory_of_blocks_published_from_memory_is_bounded() {
        let mut f = FastBlocks::default();
        let n = FAST_MEMORY as u64 + 10;
        for seq in 0..n {
            f.set(key(seq), Fast::Acked);
            // Entries joined meanwhile leave stale places in the order.
            if seq % 2 == 1 {
                f.remove(key(seq));
            }
        }
        for seq in 0..n {
            f.set(key(seq), Fast::Committed);
        }
        assert_eq!(f.by_block.len(), FAST_MEMORY);
        assert!(f.order.len() <= 2 * FAST_MEMORY);
        assert_eq!(f.get(key(0)), None, "the oldest is forgotten");
        assert_eq!(f.get(key(n - 1)), Some(Fast::Committed));
    }
}
