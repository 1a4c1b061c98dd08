//! The sender pipeline: stages, the messages between them, and `run`.
//!
//! ```text
//!  source ──SourceItem──> batch ──Frame──> seal ──SealedBlock──> encode   (one chain per lane)
//!    ──EncodedBlock (per lane)──> pace ──Burst──> send ──> socket
//!  heartbeat ───────────────────────────────────────────> socket
//! ```
//!
//! [`run`] feeds the pipeline from the configured sources (spools, syslog,
//! followed files); [`run_pushed`] starts the same pipeline without them
//! and hands the caller the bulk lane's input instead (`weir-tx send`).
//!
//! Heartbeats bypass the pacer (a hundred bytes a second) so that they keep
//! flowing while bulk data is queued, and a last one goes out after the
//! pipeline has drained, telling the receiver how far every lane got.
//!
//! Channels are bounded. Full-queue policy: every stage awaits its
//! successor, so a slow link back-pressures the source, which stops taking
//! spool files (they wait on disk). Shutdown flows downstream: the source
//! stops on cancellation, every other stage drains its input until the
//! channel closes, and `send` finishes the last datagram of the last block.

pub mod alerts;
pub mod batch;
pub mod encode;
pub mod overflow;
pub mod pace;
pub mod seal;
pub mod send;
pub mod source;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use weir_shared::config::ValidTx;
use weir_shared::heartbeat::{Heartbeat, LaneFec, seal_heartbeat};
use weir_shared::lane::{LANES, Lane};
use weir_shared::ledger::BlockSummary;
use weir_shared::record::{FileChunk, Record};
use weir_shared::seal::{Keyring, SessionKey};
use weir_shared::wire::{KeyId, Role, SessionId};

use crate::state::{Numbering, StateStore};
use crate::telemetry::Telemetry;

/// Why a stage stopped early.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The next stage went away.
    #[error("{0}: downstream channel closed")]
    Closed(&'static str),
    /// A socket error that cannot be retried.
    #[error("send socket: {0}")]
    Io(#[from] std::io::Error),
    /// Sealing failed.
    #[error("seal: {0}")]
    Seal(#[from] weir_shared::seal::SealError),
    /// FEC encoding failed.
    #[error("encode: {0}")]
    Fec(#[from] weir_shared::fec::FecError),
    /// A record could not be encoded.
    #[error("batch: {0}")]
    Record(#[from] weir_shared::record::RecordError),
}

/// A file whose records are all in flight; completed (moved to `done/`,
/// deleted or left alone) once the last block carrying them has been sent.
#[derive(Debug)]
pub struct FileDone {
    /// The file, in `working/` (or where an operator named it).
    pub working: PathBuf,
    /// What happens to it once sent.
    pub then: AfterSend,
}

/// What becomes of a file once its last block was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterSend {
    /// Move it here (a spool's `done/`).
    Move(PathBuf),
    /// Delete it.
    Delete,
    /// Leave it where it is (`weir-tx send`); only counted.
    Keep,
}

impl FileDone {
    fn complete(&self, telemetry: &Telemetry) {
        let result = match &self.then {
            AfterSend::Move(to) => std::fs::rename(&self.working, to),
            AfterSend::Delete => std::fs::remove_file(&self.working),
            AfterSend::Keep => Ok(()),
        };
        let name = self
            .working
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        telemetry.audit.record(
            "file_done",
            serde_json::json!({"file": name, "then": match &self.then {
                AfterSend::Move(to) => to.display().to_string(),
                AfterSend::Delete => "deleted".to_owned(),
                AfterSend::Keep => "kept".to_owned(),
            }, "error": result.as_ref().err().map(ToString::to_string)}),
        );
        match result {
            Ok(()) => crate::telemetry::add(&telemetry.files_done, 1),
            Err(e) => {
                tracing::error!(file = %self.working.display(), error = %e, "Sent file could not be completed.");
            }
        }
    }
}

/// What the source hands to the batcher.
#[derive(Debug)]
pub enum SourceItem {
    /// One record for a lane.
    Record(Lane, Record),
    /// A piece of an opaque file, for the bulk lane. The permit is its
    /// share of the file source's byte budget, given back when the batcher
    /// takes the chunk: a multi-gigabyte file never waits in the queue
    /// whole.
    Chunk(FileChunk, OwnedSemaphorePermit),
    /// Every record of a file has been handed over.
    FileDone(Lane, FileDone),
}

/// A batch frame ready to seal.
#[derive(Debug)]
pub struct Frame {
    lane: Lane,
    bytes: Vec<u8>,
    records: u64,
    summary: BlockSummary,
    markers: Vec<FileDone>,
}

/// A sealed block.
#[derive(Debug)]
pub struct SealedBlock {
    header: weir_shared::wire::Header,
    sealed: Vec<u8>,
    records: u64,
    markers: Vec<FileDone>,
}

/// A block as ready-to-send datagrams, all of one length, back to back.
#[derive(Debug)]
pub struct EncodedBlock {
    lane: Lane,
    seq: u64,
    datagram_len: usize,
    buf: Vec<u8>,
    repair: u32,
    records: u64,
    markers: Vec<FileDone>,
}

impl EncodedBlock {
    fn datagrams(&self) -> usize {
        self.buf.len() / self.datagram_len
    }
}

/// A block fully handed to the socket.
#[derive(Debug)]
pub struct Completion {
    lane: Lane,
    seq: u64,
    records: u64,
    repair: u32,
    markers: Vec<FileDone>,
}

/// Datagrams of one length to send in one GSO call, and the blocks whose
/// last datagram is among them.
#[derive(Debug)]
pub struct Burst {
    buf: Vec<u8>,
    segment: usize,
    done: Vec<Completion>,
}

/// A running sender.
pub struct TxHandle {
    /// Counters, live.
    pub telemetry: Arc<Telemetry>,
    /// The session id drawn at start.
    pub session: SessionId,
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<Result<(), StageError>>,
}

impl TxHandle {
    /// Stop taking new input and wait until everything taken was sent.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.join().await
    }

    /// Wait for the pipeline to end (after cancellation or a stage error).
    pub async fn join(&mut self) -> anyhow::Result<()> {
        let r = self.join_stages().await;
        if let Some((writer, ())) = self.telemetry.audit.take_writer() {
            let t = &self.telemetry;
            let body = serde_json::json!({
                "session": self.session.short_hex(), "counters": t.counters(),
                "last_sent": t.last_sent(), "marks": t.marks().0,
                "error": r.as_ref().err().map(|e| format!("{e:#}")),
            });
            writer.close("shutdown", body).await;
        }
        r
    }

    async fn join_stages(&mut self) -> anyhow::Result<()> {
        while let Some(r) = self.tasks.join_next().await {
            r.context("stage panicked")?.context("stage failed")?;
        }
        Ok(())
    }

    /// The cancellation token; cancelling it starts an orderly shutdown.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `now` for the sans-IO cores (tokio's clock, so paused-time tests work).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Where a pipeline's input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sources {
    /// The configured spools, syslog listeners and followed files.
    Configured,
    /// Only the caller, through the bulk sender [`start`] returns.
    Pushed,
}

/// Start the sender pipeline fed by its configured sources. Must be called
/// inside a tokio runtime.
pub async fn run(
    cfg: ValidTx,
    keyring: Keyring,
    config_fingerprint: [u8; 8],
) -> anyhow::Result<TxHandle> {
    let (handle, _) = start(cfg, keyring, config_fingerprint, Sources::Configured).await?;
    Ok(handle)
}

/// Start the sender pipeline with no configured source (no spool, syslog
/// or followed file): the caller pushes bulk items ([`source::take`]) into
/// the returned sender and drops it when done. The pipeline then drains,
/// sends its last heartbeats and ends ([`TxHandle::join`]). Must be called
/// inside a tokio runtime.
pub async fn run_pushed(
    cfg: ValidTx,
    keyring: Keyring,
    config_fingerprint: [u8; 8],
) -> anyhow::Result<(TxHandle, mpsc::Sender<SourceItem>)> {
    let (handle, bulk) = start(cfg, keyring, config_fingerprint, Sources::Pushed).await?;
    let bulk = bulk.context("pushed pipeline without a bulk input")?;
    Ok((handle, bulk))
}

/// The pacer wakes at most once a millisecond: a burst smaller than a
/// millisecond of the rate caps the rate below the configured one. Said
/// once, at start.
fn warn_if_burst_caps_rate(cfg: &ValidTx) {
    let reachable = cfg.burst_bytes.saturating_mul(1000);
    if cfg.rate_bytes_per_sec > reachable {
        tracing::warn!(
            burst_datagrams = cfg.burst_datagrams,
            rate_mbps = cfg.raw.link.rate_mbps,
            reachable_mbps = reachable.saturating_mul(8) / 1_000_000,
            "link.burst_datagrams is too small for link.rate_mbps: at most one burst leaves per millisecond. Raise it, or leave it unset to size it from the rate."
        );
    }
}

async fn start(
    cfg: ValidTx,
    keyring: Keyring,
    config_fingerprint: [u8; 8],
    sources: Sources,
) -> anyhow::Result<(TxHandle, Option<mpsc::Sender<SourceItem>>)> {
    let key_id = KeyId(cfg.raw.keys.active_key_id);
    let psk = keyring.get(key_id).with_context(|| {
        format!(
            "config key `keys.active_key_id`: no loaded key has id {}",
            key_id.0
        )
    })?;
    let (store, numbering, session) = open_session(&cfg, sources)?;
    let key = Arc::new(psk.session_key(session));
    let socket = send::open_socket(&cfg).await?;
    let telemetry = session_started(
        (&cfg, &keyring, sources),
        (session, &numbering, config_fingerprint),
    )?;
    let cancel = CancellationToken::new();
    // One source channel per lane, so an alert never queues behind bulk
    // records (the batch stage reads the alert channel first).
    let (alert_tx, alert_rx) = mpsc::channel(4096);
    let (bulk_tx, bulk_rx) = mpsc::channel(4096);
    // Room for a whole interleave's worth of encoded blocks: the pacer
    // can only spread a burst over the blocks it has in hand.
    let (lane_txs, lane_rxs): (Vec<_>, Vec<_>) = cfg
        .lanes
        .iter()
        .map(|l| mpsc::channel(l.interleave_blocks.max(4)))
        .unzip();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    let (burst_tx, burst_rx) = mpsc::channel(8);

    let mut tasks = tokio::task::JoinSet::new();
    let pushed = spawn_sources(
        sources,
        &cfg,
        &telemetry,
        &cancel,
        [alert_tx, bulk_tx],
        &mut tasks,
    )?;
    let lane_txs: [mpsc::Sender<EncodedBlock>; LANES] = lane_txs
        .try_into()
        .map_err(|_| anyhow::anyhow!("lane channels"))?;
    let lane_rxs: [mpsc::Receiver<EncodedBlock>; LANES] = lane_rxs
        .try_into()
        .map_err(|_| anyhow::anyhow!("lane channels"))?;
    spawn_lanes(
        &cfg,
        &telemetry,
        &numbering,
        &key,
        key_id,
        session,
        [alert_rx, bulk_rx],
        &lane_txs,
        &mut tasks,
    )?;
    drop(lane_txs);
    warn_if_burst_caps_rate(&cfg);
    let pacer = weir_shared::pace::Pacer::new(now(), cfg.rate_bytes_per_sec, cfg.burst_bytes);
    tasks.spawn(pace::run(
        pacer,
        cfg.burst_datagrams,
        cfg.lanes,
        lane_rxs,
        burst_tx,
        telemetry.clone(),
    ));
    let socket = Arc::new(socket);
    tasks.spawn(send::run(
        socket.clone(),
        cfg.raw.link.destination,
        telemetry.clone(),
        burst_rx,
        drained_tx,
    ));
    let beat = Beat {
        key,
        key_id,
        session,
        config_fingerprint,
        telemetry: telemetry.clone(),
        fec: cfg.lanes.map(|l| LaneFec {
            repair_permille: l.repair_permille,
            min_repair: l.min_repair,
            interleave: u16::try_from(l.interleave_blocks).unwrap_or(u16::MAX),
        }),
        rate_bytes_per_sec: cfg.rate_bytes_per_sec,
        numbering,
        store,
    };
    tasks.spawn(heartbeat(
        beat,
        cfg.raw.link.heartbeat_interval,
        socket,
        cfg.raw.link.destination,
        drained_rx,
    ));
    let handle = TxHandle {
        telemetry,
        session,
        cancel,
        tasks,
    };
    Ok((handle, pushed))
}

/// The session's telemetry, with the audit log (`audit.path`) opened,
/// its chain continued, and a `startup` record: the session, its
/// numbering, and the key ids (never key material). Only the daemon keeps
/// an audit log: a one-shot push does not share the daemon's file.
fn session_started(
    (cfg, keyring, sources): (&ValidTx, &Keyring, Sources),
    (session, numbering, config_fingerprint): (SessionId, &Numbering, [u8; 8]),
) -> anyhow::Result<Arc<Telemetry>> {
    tracing::info!(session = %session.short_hex(), sender = cfg.raw.sender.id, epoch = numbering.epoch,
        key_id = cfg.raw.keys.active_key_id, symbol_size = cfg.symbol_size,
        destination = %cfg.raw.link.destination, "Sender session started.");
    let telemetry = Arc::new(Telemetry::default());
    telemetry.start_marks(numbering.first_block, numbering.first_record);
    if sources == Sources::Pushed {
        return Ok(telemetry);
    }
    let writer = weir_service::audit::start(&cfg.raw.audit_path())?;
    let audit = &telemetry.audit;
    audit.install(writer, ());
    let fp = weir_shared::audit::hex_bytes(&config_fingerprint);
    let lanes: Vec<serde_json::Value> = Lane::ALL
        .iter()
        .map(|l| {
            serde_json::json!({"lane": l.as_str(), "first_block": numbering.first_block[l.index()],
                "first_record": numbering.first_record[l.index()]})
        })
        .collect();
    audit.record(
        "startup",
        serde_json::json!({
            "program": "weir-tx", "version": env!("CARGO_PKG_VERSION"),
            "session": session.short_hex(), "sender": cfg.raw.sender.id, "epoch": numbering.epoch,
            "config_fingerprint": fp, "key_ids": keyring.ids().map(|k| k.0).collect::<Vec<_>>(),
            "active_key_id": cfg.raw.keys.active_key_id,
            "destination": cfg.raw.link.destination.to_string(), "lanes": lanes,
        }),
    );
    Ok(telemetry)
}

/// Where a session's numbering is kept: the daemon's state file, or the
/// one-shot pushes' file beside it.
enum Persist {
    Daemon(StateStore),
    Push(PathBuf),
}

/// The session's numbering (the daemon's persisted state, or a one-shot
/// push's own from zero) and its id.
fn open_session(
    cfg: &ValidTx,
    sources: Sources,
) -> anyhow::Result<(Persist, Arc<Numbering>, SessionId)> {
    let state_path = &cfg.raw.sender.state_path;
    let (store, numbering, role) = match sources {
        Sources::Configured => {
            let (store, n) = StateStore::open(state_path)?;
            (Persist::Daemon(store), n, Role::Daemon)
        }
        // A one-shot push numbers from zero in an epoch of its own role,
        // newer than the last push's (or it is refused, with the reason).
        Sources::Pushed => (
            Persist::Push(state_path.clone()),
            crate::state::push_numbering(state_path, u64::try_from(unix_ms()).unwrap_or(0))?,
            Role::OneShot,
        ),
    };
    let mut random = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| anyhow::anyhow!("drawing a session id"))?;
    let session = SessionId::new(cfg.raw.sender.id, role, numbering.epoch, random);
    Ok((store, Arc::new(numbering), session))
}

/// Spawn the configured sources onto the lanes' inputs (alert, bulk), or
/// hand the bulk input back for the caller to push into. The inputs are
/// taken by value: once every holder dropped its sender, the batcher drains.
fn spawn_sources(
    sources: Sources,
    cfg: &ValidTx,
    telemetry: &Arc<Telemetry>,
    cancel: &CancellationToken,
    [alert_tx, bulk_tx]: [mpsc::Sender<SourceItem>; LANES],
    tasks: &mut tokio::task::JoinSet<Result<(), StageError>>,
) -> anyhow::Result<Option<mpsc::Sender<SourceItem>>> {
    match sources {
        Sources::Configured => {
            // Parsing a backlog is bulk work: on the bulk runtime, never
            // on the threads that carry alerts (`weir_service::priority`).
            let bulk = weir_service::priority::bulk()?;
            for spool in cfg.raw.spools.clone() {
                tasks.spawn_on(
                    source::run(spool, telemetry.clone(), cancel.clone(), bulk_tx.clone()),
                    &bulk,
                );
            }
            alerts::spawn(&cfg.raw, telemetry, cancel, &alert_tx, tasks)?;
            Ok(None)
        }
        Sources::Pushed => Ok(Some(bulk_tx)),
    }
}

/// What a heartbeat is made from.
struct Beat {
    key: Arc<SessionKey>,
    key_id: KeyId,
    session: SessionId,
    config_fingerprint: [u8; 8],
    telemetry: Arc<Telemetry>,
    fec: [LaneFec; LANES],
    /// The pacer's rate, for the health trailer.
    rate_bytes_per_sec: u64,
    numbering: Arc<Numbering>,
    /// Where the numbering is kept.
    store: Persist,
}

impl Beat {
    /// Extend the numbering reservation (every heartbeat), or store the
    /// exact numbers (`last`, after the pipeline drained) for the next
    /// session to carry.
    fn persist(&mut self, last: bool) {
        let r = match &mut self.store {
            Persist::Daemon(store) if last => store.close(&self.numbering, self.session),
            Persist::Daemon(store) => store.checkpoint(&self.numbering),
            Persist::Push(path) if last => {
                crate::state::push_finished(path, &self.numbering, self.session)
            }
            Persist::Push(_) => Ok(()),
        };
        if let Err(e) = r {
            tracing::error!(error = %format!("{e:#}"), "Sender numbering could not be stored.");
        }
    }

    fn datagram(&self, started: Instant, seq: u64) -> Option<Vec<u8>> {
        let (marks, recent) = self.telemetry.marks();
        let hb = Heartbeat {
            sent_unix_ms: unix_ms(),
            uptime_ms: now().duration_since(started).as_millis() as u64,
            last_sent: self.telemetry.last_sent(),
            counters: self.telemetry.counters(),
            spool_depth: self
                .telemetry
                .spool_depth
                .load(std::sync::atomic::Ordering::Relaxed),
            config_fingerprint: self.config_fingerprint,
            marks,
            fec: self.fec,
            recent,
            previous: self.numbering.previous.clone(),
            health: Some(self.telemetry.health(self.rate_bytes_per_sec)),
        };
        let mut dgram = Vec::new();
        match seal_heartbeat(&self.key, self.key_id, self.session, seq, &hb, &mut dgram) {
            Ok(()) => Some(dgram),
            Err(e) => {
                tracing::error!(error = %e, "Heartbeat could not be sealed.");
                None
            }
        }
    }
}

/// Every interval, seal the sender's telemetry into a heartbeat datagram.
/// When the pipeline has drained, send three last ones (a lost heartbeat
/// must not hide tail loss) and stop.
async fn heartbeat(
    mut beat: Beat,
    interval: std::time::Duration,
    socket: Arc<tokio::net::UdpSocket>,
    destination: std::net::SocketAddr,
    mut drained: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), StageError> {
    let started = now();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let send = async |beat: &Beat, seq: &mut u64| {
        if let Some(d) = beat.datagram(started, *seq) {
            *seq += 1;
            if let Err(e) = socket.send_to(&d, destination).await {
                tracing::warn!(error = %e, "Heartbeat send failed.");
            }
        }
    };
    loop {
        tokio::select! {
            _ = &mut drained => break,
            _ = tick.tick() => {
                beat.persist(false);
                send(&beat, &mut seq).await;
            }
        }
    }
    beat.persist(true);
    for _ in 0..3 {
        send(&beat, &mut seq).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Each lane runs its own batch → seal → encode tasks up to the pacer,
/// which merges them with strict priority: nothing of the bulk lane can
/// stand in front of an alert.
#[allow(clippy::too_many_arguments)]
fn spawn_lanes(
    cfg: &ValidTx,
    telemetry: &Arc<Telemetry>,
    numbering: &Arc<Numbering>,
    key: &Arc<SessionKey>,
    key_id: KeyId,
    session: SessionId,
    from_sources: [mpsc::Receiver<SourceItem>; LANES],
    lane_txs: &[mpsc::Sender<EncodedBlock>; LANES],
    tasks: &mut tokio::task::JoinSet<Result<(), StageError>>,
) -> anyhow::Result<()> {
    // The bulk lane's compression, sealing and encoding run on the bulk
    // runtime (`weir_service::priority`), so an alert's tasks never wait
    // behind them for one of the main runtime's threads.
    let bulk = weir_service::priority::bulk()?;
    for (lane, from_source) in Lane::ALL.into_iter().zip(from_sources) {
        let (frame_tx, frame_rx) = mpsc::channel(4);
        let (sealed_tx, sealed_rx) = mpsc::channel(4);
        let lane_cfg = cfg.lanes[lane.index()];
        let current = tokio::runtime::Handle::current();
        let runtime = if lane == Lane::Bulk { &bulk } else { &current };
        tasks.spawn_on(
            batch::run(
                lane,
                lane_cfg,
                telemetry.clone(),
                numbering.clone(),
                from_source,
                frame_tx,
            ),
            runtime,
        );
        let sealer = seal::Sealer {
            key: key.clone(),
            key_id,
            session,
            symbol_size: cfg.symbol_size,
            numbering: numbering.clone(),
            telemetry: telemetry.clone(),
        };
        tasks.spawn_on(seal::run(sealer, frame_rx, sealed_tx), runtime);
        tasks.spawn_on(
            encode::run(
                key.clone(),
                cfg.symbol_size,
                cfg.max_block_bytes,
                cfg.lanes,
                sealed_rx,
                lane_txs.clone(),
            ),
            runtime,
        );
    }
    Ok(())
}
