//! The receiver pipeline: stages, the messages between them, and `run`.
//!
//! ```text
//!  recv ──RecvBatch──> verify ──Verified──> decode(+open) ──OpenedBlock──> validate
//!    ──Vec<Message> (alert lane: own queue, served first; bulk)──> publish ──> MQTT
//!                                                  decode ──gap events──> publish
//!                                                   status ticker ──> publish (retained status)
//! ```
//!
//! `decode` and `open` share one task: the replay window may only move on
//! authenticated blocks, so the reassembler must learn each block's AEAD
//! verdict before it handles the next symbol. `open` stays its own module.
//!
//! Full-queue policy: `recv`, `verify` and `decode` await their successor
//! (all are CPU-bound and fast); `validate` never waits on `publish`: when
//! the publish queue is full it sheds the whole block, counts it and
//! reports it as a gap.

pub mod decode;
pub mod open;
pub mod publish;
pub mod recv;
pub mod validate;
pub mod verify;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use weir_shared::config::ValidRx;
use weir_shared::heartbeat::Heartbeat;
use weir_shared::lane::Lane;
use weir_shared::seal::Keyring;
use weir_shared::wire::{Header, SessionId};

use crate::stats::RxStats;

/// Why a stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The next stage went away.
    #[error("{0}: downstream channel closed")]
    Closed(&'static str),
    /// Socket error.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Datagrams from one receive call, back to back in `buf`.
#[derive(Debug)]
pub struct RecvBatch {
    buf: Vec<u8>,
    /// (offset, length) of each datagram.
    segs: Vec<(usize, usize)>,
}

/// Datagrams that passed the CRC and header checks.
#[derive(Debug)]
pub struct Verified {
    buf: Vec<u8>,
    /// Header and payload (offset, length) in `buf`.
    items: Vec<(Header, usize, usize)>,
}

/// An authenticated, decrypted block.
#[derive(Debug)]
pub struct OpenedBlock {
    session: SessionId,
    lane: Lane,
    seq: u64,
    frame: Vec<u8>,
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

/// What the receiver knows about the link, from heartbeats.
#[derive(Debug, Default, Clone)]
pub struct LinkState {
    /// Last heartbeat and when it arrived.
    pub last: Option<(Instant, SessionId, Heartbeat)>,
    /// Sender clock minus receiver clock at the last heartbeat, ms.
    pub skew_ms: i64,
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
}

impl RxHandle {
    /// Stop receiving, publish what was decoded, and wait.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.join().await
    }

    /// Wait for the pipeline to end.
    pub async fn join(&mut self) -> anyhow::Result<()> {
        while let Some(r) = self.tasks.join_next().await {
            r.map_err(|e| anyhow::anyhow!("stage panicked: {e}"))??;
        }
        Ok(())
    }

    /// The cancellation token; cancelling it starts an orderly shutdown.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// Queue a gap report without waiting; if the queue is full, a spawned
/// task waits for room, so the report is never lost.
pub(crate) fn send_gap(to_publish: &Sender<Vec<Message>>, msg: Message) {
    if let Err(TrySendError::Full(m)) = to_publish.try_send(vec![msg]) {
        let tx = to_publish.clone();
        tokio::spawn(async move { tx.send(m).await });
    }
}

/// `now` for the sans-IO cores.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Start the receiver. Must be called inside a tokio runtime.
pub async fn run(cfg: ValidRx, keyring: Keyring) -> anyhow::Result<RxHandle> {
    let socket = recv::open_socket(&cfg)?;
    let local_addr = socket.local_addr()?;
    let stats = Arc::new(RxStats::default());
    let link = Arc::new(Mutex::new(LinkState::default()));
    let cancel = CancellationToken::new();
    let (recv_tx, recv_rx) = mpsc::channel(64);
    let (ver_tx, ver_rx) = mpsc::channel(64);
    // One validate task per lane: an alert block never waits behind bulk
    // blocks being turned into JSON.
    let (alert_open_tx, alert_open_rx) = mpsc::channel(64);
    let (open_tx, open_rx) = mpsc::channel(64);
    let (pub_tx, pub_rx) = mpsc::channel(1024);
    let (alert_pub_tx, alert_pub_rx) = mpsc::channel(1024);
    let topics = publish::Topics::new(&cfg.raw.mqtt);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(recv::run(socket, stats.clone(), cancel.clone(), recv_tx));
    tasks.spawn(verify::run(stats.clone(), recv_rx, ver_tx));
    tasks.spawn(decode::run(
        decode::Core::new(cfg.reassembly, keyring),
        stats.clone(),
        link.clone(),
        topics.clone(),
        ver_rx,
        [alert_open_tx, open_tx],
        pub_tx.clone(),
    ));
    for from_decode in [alert_open_rx, open_rx] {
        tasks.spawn(validate::run(
            cfg.decode,
            topics.clone(),
            stats.clone(),
            from_decode,
            alert_pub_tx.clone(),
            pub_tx.clone(),
        ));
    }
    drop(alert_pub_tx);
    tasks.spawn(publish::status(
        topics.clone(),
        cfg.raw.link.link_timeout,
        stats.clone(),
        link.clone(),
        cancel.clone(),
        pub_tx,
    ));
    tasks.spawn(publish::run(
        cfg.raw.mqtt.clone(),
        topics,
        stats.clone(),
        alert_pub_rx,
        pub_rx,
    ));
    tracing::info!(listen = %local_addr, broker = %format!("{}:{}", cfg.raw.mqtt.host, cfg.raw.mqtt.port),
        "Receiver started.");
    Ok(RxHandle {
        stats,
        link,
        local_addr,
        cancel,
        tasks,
    })
}
