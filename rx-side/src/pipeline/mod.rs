//! The receiver pipeline: stages, the messages between them, and `run`.
//!
//! ```text
//!  recv ──RecvBatch──> verify (datagram tags) ──Verified──> decode(+open) ──Item (block | gap event)──> dq ──> outbox (redb)
//!                                            decode ──Solve──> solve (`limits.solve_workers` threads) ──Solved──> decode
//!    outbox readers ──Entry──> validate (events, alert, bulk) ──Delivery──> publish ──> MQTT
//!    decode ──copy of each alert block──> outbox::read_fast ──Entry──> validate ──Delivery──> publish
//!        (an alert is published from memory while it is committed; its entry joins that publish)
//!    publish ──acked entries, rewinds──> outbox
//!    status ticker ──> publish (retained status, outside the outbox); link up/down ──> outbox
//!    with [sparkplug]: validate ──points──> publish ──> sparkplug (own MQTT session) ──> spBv1.0/...
//!    validate ──file chunks──> files ──> staging ──> output dir  (decode ──lost blocks──> files)
//!    decode, files, ticker ──records (never waiting)──> audit log writer thread (`crate::audit`)
//! ```
//!
//! `decode` and `open` share one task: the replay window may only move on
//! authenticated blocks, so the reassembler must learn each block's AEAD
//! verdict before it handles the next symbol. `open` stays its own module.
//! RaptorQ solves are the exception that proves it: a block being solved
//! stays pending in the reassembler, keeping the symbols that arrive
//! meanwhile, until its solve comes back to the decode task.
//!
//! Full-queue policy: `recv`, `verify` and `decode` await their successor
//! (all are CPU-bound and fast), except that decode never waits on the
//! outbox writer: if the disk falls behind, a block is shed, counted and
//! reported as a gap. Everything after the outbox waits: the backlog is on
//! disk, bounded by `outbox.max_bytes`.

pub mod budget;
pub mod decode;
pub mod dq;
mod evidence;
pub mod files;
pub mod headroom;
pub mod ledger;
pub mod mqtt_tls;
pub mod open;
pub mod outbox;
pub mod publish;
pub mod recv;
pub mod solve;
pub mod sparkplug;
pub mod status;
pub mod validate;
pub mod verify;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use weir_shared::config::ValidRx;
use weir_shared::dq::{Engine, ValidDqConfig};
use weir_shared::heartbeat::Heartbeat;
use weir_shared::lane::{LANES, Lane};
use weir_shared::seal::Keyring;
use weir_shared::wire::{Header, SessionId};

use crate::stats::RxStats;

/// Alert blocks on the fast path (decode to publish, from memory) at
/// once; beyond it an alert waits for its commit like any block.
const FAST_WINDOW: usize = 64;

/// Received datagrams waiting for decode, bytes: four full receive calls.
/// Beyond it they wait in the kernel's socket buffer (`link.recv_buffer_bytes`).
const RECEIVE_BUDGET: usize = 8 << 20;

/// Why a stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The next stage went away.
    #[error("{0}: downstream channel closed")]
    Closed(&'static str),
    /// Socket error.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The outbox failed.
    #[error("{0}")]
    Outbox(String),
}

/// Datagrams from one receive call, back to back in `buf`.
#[derive(Debug)]
pub struct RecvBatch {
    buf: Vec<u8>,
    /// (offset, length) of each datagram.
    segs: Vec<(usize, usize)>,
    /// Its share of the receive budget.
    held: budget::Held,
}

/// Datagrams that passed the CRC, header and datagram-tag checks; their
/// payloads decrypted in place (a symbol of a sealed block, or a sealed
/// heartbeat).
#[derive(Debug)]
pub struct Verified {
    buf: Vec<u8>,
    /// Header and payload (offset, length) in `buf`.
    items: Vec<(Header, usize, usize)>,
    /// Its share of the receive budget, returned once decoded.
    held: budget::Held,
}

/// An authenticated, decrypted block.
#[derive(Debug)]
pub struct OpenedBlock {
    session: SessionId,
    lane: Lane,
    seq: u64,
    frame: Vec<u8>,
    /// Data-quality verdicts of its points (`weir_shared::dq::encode_verdicts`),
    /// computed once before the block is stored.
    verdicts: Option<Vec<u8>>,
    /// Its share of the decoded-block budget until committed (`None`: read
    /// back from the outbox).
    held: Option<budget::Held>,
    /// What it carried (from its trailer), for the gap ledger should the
    /// outbox refuse it (`None`: read back from the outbox).
    summary: Option<weir_shared::ledger::BlockSummary>,
}

impl OpenedBlock {
    /// The block without its share of the decoded-block budget.
    fn copy(&self) -> Self {
        Self {
            session: self.session,
            lane: self.lane,
            seq: self.seq,
            frame: self.frame.clone(),
            verdicts: self.verdicts.clone(),
            held: None,
            summary: None,
        }
    }
}

/// The messages made from one outbox entry; the entry is done when the
/// broker acknowledged all of them.
#[derive(Debug)]
pub struct Delivery {
    /// The entry (`None`: an alert-lane block published from memory while
    /// it is being committed, see [`outbox::read_fast`]).
    pub at: Option<outbox::EntryRef>,
    /// The alert-lane block it was made from: `publish` lets a block's
    /// committed entry join its publish from memory.
    pub alert: Option<weir_shared::reassembly::BlockKey>,
    /// Its messages (may be empty).
    pub messages: Vec<Message>,
    /// Its points for the Sparkplug publisher (empty without `[sparkplug]`).
    pub points: Vec<weir_shared::record::Point>,
    /// Its place in the outbox reader's window.
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// One MQTT message to publish.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retained flag.
    pub retain: bool,
}

impl Message {
    /// A JSON event (gap, audit, file), not retained.
    pub fn event(topic: &str, body: &serde_json::Value) -> Self {
        Self {
            topic: topic.to_owned(),
            payload: body.to_string().into_bytes(),
            retain: false,
        }
    }
}

/// What the receiver knows about the link, from heartbeats and deliveries.
#[derive(Debug, Default, Clone)]
pub struct LinkState {
    /// Last heartbeat and when it arrived.
    pub last: Option<(Instant, SessionId, Heartbeat)>,
    /// Sender clock minus receiver clock at the last heartbeat, ms.
    pub skew_ms: i64,
    /// Last block delivered per lane, for the most recent session.
    delivered: Option<(SessionId, [Option<u64>; LANES])>,
    /// FEC headroom meters, per lane.
    pub headroom: headroom::Headroom,
    /// Blocks known to exist and not yet resolved per lane, for the most
    /// recent session (from the reassembler, every decode tick).
    unresolved: Option<(SessionId, [u64; LANES])>,
}

impl LinkState {
    /// Note a delivered block.
    pub fn record_delivered(&mut self, session: SessionId, lane: Lane, seq: u64) {
        let d = match &mut self.delivered {
            Some((s, d)) if *s == session => d,
            other => &mut other.insert((session, [None; LANES])).1,
        };
        let slot = &mut d[lane.index()];
        *slot = Some(slot.map_or(seq, |s| s.max(seq)));
    }

    /// Note the blocks of `session` not yet resolved, per lane.
    pub fn record_unresolved(&mut self, session: SessionId, unresolved: [u64; LANES]) {
        self.unresolved = Some((session, unresolved));
    }

    /// Blocks of `lane` of `session` known to exist and not yet resolved.
    pub fn unresolved(&self, session: SessionId, lane: Lane) -> u64 {
        self.unresolved
            .as_ref()
            .filter(|(s, _)| *s == session)
            .map_or(0, |(_, u)| u[lane.index()])
    }

    /// The last block delivered on `lane` of `session`.
    pub fn delivered(&self, session: SessionId, lane: Lane) -> Option<u64> {
        self.delivered
            .as_ref()
            .filter(|(s, _)| *s == session)
            .and_then(|(_, d)| d[lane.index()])
    }
}

/// A running receiver.
pub struct RxHandle {
    /// Counters, live.
    pub stats: Arc<RxStats>,
    /// Link state, live.
    pub link: Arc<Mutex<LinkState>>,
    /// The address the receive socket is bound to.
    pub local_addr: std::net::SocketAddr,
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<Result<(), StageError>>,
    dq_reload: DqReload,
}

/// Applies a new `[dq]` config to a running receiver; per-tag state is kept.
#[derive(Clone)]
pub struct DqReload(Arc<watch::Sender<Option<ValidDqConfig>>>);

impl DqReload {
    /// Apply `cfg`.
    pub fn apply(&self, cfg: ValidDqConfig) {
        self.0.send_replace(Some(cfg));
    }
}

impl RxHandle {
    /// A handle to reload the `[dq]` config (on SIGHUP).
    pub fn dq_reload(&self) -> DqReload {
        self.dq_reload.clone()
    }

    /// Stop receiving, publish what was decoded, and wait.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.join().await
    }

    /// Wait for the pipeline to end. After a shutdown that gave up on the
    /// broker, stages finding their successor gone is expected, not an error.
    pub async fn join(&mut self) -> anyhow::Result<()> {
        let r = self.join_stages().await;
        if let Some((writer, store)) = self.stats.audit.take_writer() {
            let mut body = evidence::delivery_json(&self.stats.snapshot(), &store);
            body["error"] = r.as_ref().err().map(|e| format!("{e:#}")).into();
            writer.close("shutdown", body).await;
        }
        r
    }

    async fn join_stages(&mut self) -> anyhow::Result<()> {
        while let Some(r) = self.tasks.join_next().await {
            match r.map_err(|e| anyhow::anyhow!("stage panicked: {e}"))? {
                Err(StageError::Closed(stage)) if self.cancel.is_cancelled() => {
                    tracing::debug!(stage, "Stage stopped with its successor gone.");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// The cancellation token; cancelling it starts an orderly shutdown.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// Hand an event (gap, audit) to the outbox without waiting; if its queue
/// is full, a spawned task waits for room, so the report is never lost.
pub(crate) fn send_event(to_outbox: &Sender<outbox::Item>, msg: Message) {
    if let Err(TrySendError::Full(m)) = to_outbox.try_send(outbox::Item::Event(msg)) {
        let tx = to_outbox.clone();
        tokio::spawn(async move { tx.send(m).await });
    }
}

/// Wall-clock time, Unix ns.
pub(crate) fn unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `now` for the sans-IO cores.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The audit event a receiver start publishes.
fn started_event(
    cfg: &ValidRx,
    keyring: &Keyring,
    listen: std::net::SocketAddr,
    topics: &publish::Topics,
) -> Message {
    let body = serde_json::json!({
        "type": "receiver_started", "version": env!("CARGO_PKG_VERSION"),
        "listen": listen.to_string(), "key_ids": keyring.ids().map(|k| k.0).collect::<Vec<_>>(),
        "outbox": cfg.raw.outbox.path.display().to_string(),
        "ts": weir_shared::contract::rfc3339_ns(unix_ns()),
    });
    Message::event(&topics.audit, &body)
}

/// One outbox reader and one validate task per table: an alert block
/// never waits behind bulk blocks being turned into JSON. The alert fast
/// path has a validate task of its own: an alert never waits for the disk.
#[allow(clippy::too_many_arguments)] // the stage's channel ends, named at the call site
fn spawn_readers(
    tasks: &mut tokio::task::JoinSet<Result<(), StageError>>,
    cfg: &ValidRx,
    store: &Arc<outbox::Outbox>,
    (topics, stats): (&publish::Topics, &Arc<RxStats>),
    (progress, rewind): (watch::Receiver<outbox::Progress>, watch::Receiver<u64>),
    (urgent, bulk): (Sender<Delivery>, Sender<Delivery>),
    fast: mpsc::Receiver<OpenedBlock>,
    files: Option<&Sender<files::FileWork>>,
) {
    let (entry_tx, entry_rx) = mpsc::channel(FAST_WINDOW);
    tasks.spawn(outbox::read_fast(fast, FAST_WINDOW, entry_tx));
    tasks.spawn(validate::run(
        cfg.decode,
        topics.clone(),
        stats.clone(),
        cfg.raw.sparkplug.is_some(),
        entry_rx,
        urgent.clone(),
        None,
    ));
    for table in outbox::Table::ALL {
        let (entry_tx, entry_rx) = mpsc::channel(cfg.raw.outbox.window_blocks);
        tasks.spawn(outbox::read(
            store.clone(),
            table,
            cfg.raw.outbox.window_blocks,
            progress.clone(),
            rewind.clone(),
            entry_tx,
        ));
        let out = if table == outbox::Table::Bulk {
            bulk.clone()
        } else {
            urgent.clone()
        };
        let run = validate::run(
            cfg.decode,
            topics.clone(),
            stats.clone(),
            cfg.raw.sparkplug.is_some(),
            entry_rx,
            out,
            files.cloned(),
        );
        if table == outbox::Table::Bulk {
            // Turning a backlog of points into JSON is the receiver's
            // heaviest work: it runs on its own thread, below the alert
            // path's priority, so the runtime's workers stay free for it
            // and get a core first (`weir_service::priority`).
            let rt = tokio::runtime::Handle::current();
            tasks.spawn_blocking(move || {
                weir_service::priority::lower_this_thread();
                rt.block_on(run)
            });
        } else {
            tasks.spawn(run);
        }
    }
}

/// The reporting tasks: the retained status every two seconds, and, with
/// `[metrics]`, the metrics exporter (detached: the endpoint keeps showing
/// the final counters until the process exits).
fn spawn_reporting(
    tasks: &mut tokio::task::JoinSet<Result<(), StageError>>,
    cfg: &ValidRx,
    (stats, link, store): (&Arc<RxStats>, &Arc<Mutex<LinkState>>, &Arc<outbox::Outbox>),
    topics: &publish::Topics,
    cancel: &CancellationToken,
    (to_publish, to_outbox): (Sender<Vec<Message>>, Sender<outbox::Item>),
) {
    tokio::spawn(evidence::ticker(
        (stats.clone(), store.clone()),
        cancel.clone(),
        topics.audit.clone(),
        to_outbox.clone(),
    ));
    tasks.spawn(status::run(
        topics.clone(),
        cfg.raw.link.link_timeout,
        stats.clone(),
        link.clone(),
        cancel.clone(),
        to_publish,
        to_outbox,
    ));
    if cfg.metrics.is_some() {
        tokio::spawn(crate::metrics::export(crate::metrics::Sources {
            stats: stats.clone(),
            link: link.clone(),
            store: store.clone(),
            link_timeout: cfg.raw.link.link_timeout,
        }));
    }
}

/// Start the receiver. Must be called inside a tokio runtime.
#[allow(clippy::too_many_lines)] // every stage's wiring, in pipeline order
pub async fn run(cfg: ValidRx, keyring: Keyring) -> anyhow::Result<RxHandle> {
    let store = Arc::new(
        outbox::Outbox::open(&cfg.raw.outbox.path)
            .with_context(|| format!("outbox.path {}", cfg.raw.outbox.path.display()))?,
    );
    let socket = recv::open_socket(&cfg)?;
    let local_addr = socket.local_addr()?;
    let stats = new_stats(&cfg, &keyring, local_addr, &store)?;
    let link = Arc::new(Mutex::new(LinkState::default()));
    let cancel = CancellationToken::new();
    let (item_tx, item_rx) = mpsc::channel(1024);
    let (ephemeral_tx, ephemeral_rx) = mpsc::channel(64);
    let (acked_tx, acked_rx) = mpsc::unbounded_channel();
    let (progress_tx, progress_rx) = watch::channel(outbox::Progress::default());
    let (rewind_tx, rewind_rx) = watch::channel(0u64);
    let (urgent_tx, urgent_rx) = mpsc::channel(64);
    let (bulk_tx, bulk_rx) = mpsc::channel(64);
    let (fast_tx, fast_rx) = mpsc::channel(FAST_WINDOW);
    let topics = publish::Topics::new(&cfg.raw.mqtt);
    let sparkplug = sparkplug::Shell::for_config(&cfg, &store, &link, &stats)?;

    send_event(&item_tx, started_event(&cfg, &keyring, local_addr, &topics));
    let status_events = item_tx.clone();

    let mut tasks = tokio::task::JoinSet::new();
    let ver_rx = spawn_link(&mut tasks, socket, (&cfg, &keyring), &stats, &cancel);
    let files_tx = files::start(&cfg, &mut tasks, &topics, &stats, &item_tx)?;
    let (dq_tx, dq_reload, refused) =
        start_dq(&cfg, &store, &mut tasks, (&topics, &stats), &item_tx)?;
    let (core, gap_log) = decode_core(&cfg, keyring, &store, files_tx.clone())?;
    tasks.spawn(decode::run(
        core.with_fast_path(fast_tx),
        stats.clone(),
        link.clone(),
        topics.clone(),
        ver_rx,
        dq_tx,
    ));
    drop(item_tx);
    tasks.spawn(outbox::write(
        store.clone(),
        cfg.raw.outbox.clone(),
        stats.clone(),
        outbox::WriterIo::new(item_rx, acked_rx, progress_tx, ephemeral_tx.clone())
            .with_gaps(topics.gaps.clone(), gap_log)
            .with_refused(refused),
    ));
    spawn_readers(
        &mut tasks,
        &cfg,
        &store,
        (&topics, &stats),
        (progress_rx, rewind_rx),
        (urgent_tx, bulk_tx),
        fast_rx,
        files_tx.as_ref(),
    );
    drop(files_tx);
    spawn_reporting(
        &mut tasks,
        &cfg,
        (&stats, &link, &store),
        &topics,
        &cancel,
        (ephemeral_tx, status_events),
    );
    tasks.spawn(publish::run(
        cfg.raw.mqtt.clone(),
        topics,
        stats.clone(),
        publish::PublishIo {
            urgent: urgent_rx,
            bulk: bulk_rx,
            ephemeral: ephemeral_rx,
            acked: acked_tx,
            rewind: rewind_tx,
            stop: cancel.clone(),
            sparkplug,
        },
    ));
    tracing::info!(listen = %local_addr, broker = %format!("{}:{}", cfg.raw.mqtt.host, cfg.raw.mqtt.port),
        outbox = %cfg.raw.outbox.path.display(), "Receiver started.");
    Ok(RxHandle {
        stats,
        link,
        local_addr,
        cancel,
        tasks,
        dq_reload: DqReload(Arc::new(dq_reload)),
    })
}

/// The link stages: `recv`, and `verify` checking every datagram's tag
/// with the loaded keys (retired ones refused); returns verify's output.
fn spawn_link(
    tasks: &mut tokio::task::JoinSet<Result<(), StageError>>,
    socket: tokio::net::UdpSocket,
    (cfg, keyring): (&ValidRx, &Keyring),
    stats: &Arc<RxStats>,
    cancel: &CancellationToken,
) -> mpsc::Receiver<Verified> {
    let (recv_tx, recv_rx) = mpsc::channel(64);
    let (ver_tx, ver_rx) = mpsc::channel(64);
    tasks.spawn(recv::run(
        socket,
        stats.clone(),
        cancel.clone(),
        budget::Budget::new(RECEIVE_BUDGET),
        recv_tx,
    ));
    let gate = verify::Verifier::new(now(), keyring.clone(), &cfg.raw.keys.retired_key_ids);
    tasks.spawn(verify::run(gate, stats.clone(), recv_rx, ver_tx));
    ver_rx
}

/// The decode stage's core: reassembly limits, the AEAD gate with the
/// loaded and retired keys, the queue budget, the ledger, the outbox's
/// lane state.
/// The decode stage's core, and its gap ledger file (shared with the
/// outbox writer).
fn decode_core(
    cfg: &ValidRx,
    keyring: Keyring,
    store: &outbox::Outbox,
    files: Option<mpsc::Sender<files::FileWork>>,
) -> anyhow::Result<(decode::Core, Arc<Mutex<ledger::GapLog>>)> {
    let queued = usize::try_from(cfg.raw.limits.max_queued_bytes).unwrap_or(usize::MAX);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let core = decode::Core::new(
        (cfg.reassembly, budget::Budget::new(queued)),
        open::Gate::new(keyring).with_retired(&cfg.raw.keys.retired_key_ids),
        &cfg.raw.ledger,
        store,
    )?
    .with_solve_workers(cfg.raw.limits.solve_workers_for(cores))
    .with_files(files);
    let gap_log = core.gap_log();
    Ok((core, gap_log))
}

/// The counters, with the audit log (`audit.path`) opened, its chain
/// continued, and a `startup` record: what this receiver runs with (key
/// ids, never keys).
fn new_stats(
    cfg: &ValidRx,
    keyring: &Keyring,
    listen: std::net::SocketAddr,
    store: &Arc<outbox::Outbox>,
) -> anyhow::Result<Arc<RxStats>> {
    let stats = Arc::new(RxStats::default());
    let writer = weir_service::audit::start(&cfg.raw.audit_path())?;
    stats.audit.install(writer, store.clone());
    stats.audit.record(
        "startup",
        serde_json::json!({
            "program": "weir-rx", "version": env!("CARGO_PKG_VERSION"),
            "listen": listen.to_string(), "key_ids": keyring.ids().map(|k| k.0).collect::<Vec<_>>(),
            "retired_key_ids": cfg.raw.keys.retired_key_ids,
            "outbox": cfg.raw.outbox.path.display().to_string(),
            "gaps": cfg.raw.ledger.gaps_path.display().to_string(),
        }),
    );
    Ok(stats)
}

/// The data-quality stage, its engine restored from the state the outbox
/// kept; returns its input, its reload handle and where the outbox hands
/// back the frames of blocks it refused.
#[allow(clippy::type_complexity)] // two channel ends, named at the call site
fn start_dq(
    cfg: &ValidRx,
    store: &outbox::Outbox,
    tasks: &mut tokio::task::JoinSet<Result<(), StageError>>,
    (topics, stats): (&publish::Topics, &Arc<RxStats>),
    to_outbox: &Sender<outbox::Item>,
) -> anyhow::Result<(
    Sender<outbox::Item>,
    watch::Sender<Option<ValidDqConfig>>,
    mpsc::UnboundedSender<Vec<u8>>,
)> {
    let dq_cfg = cfg.raw.dq.validate()?;
    let engine = match store.dq_state() {
        Ok(Some(bytes)) => Engine::restore(dq_cfg.clone(), &bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "Data-quality state not restored; starting afresh.");
            Engine::new(dq_cfg)
        }),
        Ok(None) => Engine::new(dq_cfg),
        Err(e) => return Err(e).context("reading the data-quality state from the outbox"),
    };
    let (tx, rx) = mpsc::channel(1024);
    let (reload_tx, reload_rx) = watch::channel(None);
    let (refused_tx, refused) = mpsc::unbounded_channel();
    tasks.spawn(dq::run(
        engine,
        cfg.decode,
        topics.clone(),
        stats.clone(),
        dq::DqIo {
            from_decode: rx,
            to_outbox: to_outbox.clone(),
            reload: reload_rx,
            refused,
        },
    ));
    Ok((tx, reload_tx, refused_tx))
}
