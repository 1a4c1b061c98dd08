//! End-to-end throughput: the real sender and receiver over loopback.
//!
//! ```text
//!  spool/incoming/*.csv ─> weir_tx::run ══UDP══> [LossyLink] ══> weir_rx::run ─> mosquitto
//!    (generated first)      runtime "weir-tx"      (optional)    runtime "weir-rx"  (throwaway)
//!                                 │                                     │
//!                            Telemetry ─────────── polled every 5 ms ── RxStats
//! ```
//!
//! The harness writes a spool of synthetic AVEVA CSV files *before* the
//! clock starts, starts a throwaway broker and the receiver, waits until
//! the receiver's first (status) publish is acknowledged so broker start-up
//! is not measured, then starts the sender with the spool already full and
//! polls both sides' counters:
//!
//! - **decoded**: the receiver's `records` counter reached the point count
//!   (blocks received, FEC-decoded, authenticated, frames decoded);
//! - **delivered**: additionally every publish was acknowledged by the
//!   broker. `acked` counts QoS 1 PUBACKs (the receiver bumps it when
//!   rumqttc resolves a publish's notice with the broker's PUBACK), in
//!   *messages*; `records` counts points. With `--batch-points` above 1 a
//!   message carries many points, so the two cannot be compared: instead
//!   the run is delivered at the first poll where every point was
//!   validated and `acked == published`, provided no more than one further
//!   message (a status message) is published in the next [`CONFIRM`]. That
//!   rules out the instant between the last block's records being counted
//!   and its messages reaching the publisher (a few ms), and makes the mark
//!   exact to within one poll.
//!
//! Figures are given in points/s and in messages/s acknowledged, over the
//! whole run and over the part after the sender finished (the receiver
//! then has the machine to itself apart from the broker). Messages include
//! the receiver's status (one every 2 s) and audit events, a handful.
//!
//! With `--drain` the broker is frozen (SIGSTOP) from the sender's start
//! until every block is committed to the receiver's outbox, and thawed
//! (SIGCONT) then: what follows is the receiver draining a backlog from
//! its outbox into MQTT with the machine to itself, as after a broker
//! outage. Rates and CPU are then measured from the thaw, so they are the
//! delivery path's alone (outbox read, validate, JSON, publish, PUBACK).
//! The MQTT connection survives the freeze as long as it stays well under
//! the 30 s keep-alive; the sender's part takes a few seconds per million
//! points.
//!
//! Every wait is bounded. Lost or shed blocks leave `records` short
//! forever: the run ends as `Incomplete` once every block is delivered,
//! shed or declared lost, as `Stalled` when no counter moved for `--stall-secs`,
//! and as `TimedOut` after `--timeout-secs`; the report is printed either
//! way. Ctrl-C or SIGTERM ends it through the same orderly shutdown (a
//! SIGKILL leaves the broker process behind).
//!
//! Sender and receiver share the machine here, unlike in production: on a
//! two-core host they compete with each other and with the broker, so the
//! figures are a floor. The report includes the CPU of other processes so
//! a run disturbed by, say, a concurrent build is recognisable.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use weir_rx::stats::RxSnapshot;
use weir_shared::config::{RxConfig, TxConfig, ValidRx, ValidTx};
use weir_shared::heartbeat::TxCounters;

use crate::broker::Mosquitto;
use crate::cpu::{self, CpuSample};
use crate::lossy::{self, LossyLink};
use crate::synth;

/// Thread-name prefix of the sender's runtime.
const TX_THREADS: &str = "weir-tx";
/// Thread-name prefix of the receiver's runtime.
const RX_THREADS: &str = "weir-rx";
/// The harness's own threads (the binary's name).
const MAIN_THREADS: &str = "weir-bench";
/// Rows per generated file unless `--files` says otherwise.
const ROWS_PER_FILE: u64 = 100_000;
/// Counter polling interval.
const POLL: Duration = Duration::from_millis(5);
/// How long "everything published is acknowledged" must hold, with no new
/// messages beyond one status message, before the run counts as delivered.
const CONFIRM: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Points (CSV rows) to send.
    pub points: u64,
    /// Spool files to spread them over (0: one per 100 000 points).
    pub files: u64,
    /// Sender pacing rate, Mbit/s on the wire.
    pub rate_mbps: f64,
    /// Datagrams the forwarder drops, percent (0: no forwarder).
    pub loss_pct: f64,
    /// MQTT publishes in flight.
    pub inflight: u16,
    /// Points per MQTT message (receiver `mqtt.batch_points`; 1: one
    /// message per point).
    pub batch_points: usize,
    /// Freeze the broker until every block is in the outbox, then time
    /// the drain alone.
    pub drain: bool,
    /// Worker threads per runtime (0: tokio's default, one per core).
    pub workers: usize,
    /// Generator and loss seed.
    pub seed: u64,
    /// Give up after this long.
    pub timeout: Duration,
    /// Give up when no counter moved for this long.
    pub stall: Duration,
}

impl Options {
    /// Files to write: as asked, or one per [`ROWS_PER_FILE`] points.
    pub fn file_count(&self) -> u64 {
        match self.files {
            0 => self.points.div_ceil(ROWS_PER_FILE).max(1),
            n => n.min(self.points.max(1)),
        }
    }

    /// The command line that reproduces this run.
    pub fn command(&self) -> String {
        let mut c = format!(
            "cargo run --release -p weir-bench -- e2e --points {} --files {} --rate-mbps {} --inflight {} --batch-points {} --seed {}",
            self.points,
            self.file_count(),
            self.rate_mbps,
            self.inflight,
            self.batch_points,
            self.seed
        );
        if self.loss_pct > 0.0 {
            let _ = write!(c, " --loss {}", self.loss_pct);
        }
        if self.workers > 0 {
            let _ = write!(c, " --workers {}", self.workers);
        }
        if self.drain {
            c.push_str(" --drain");
        }
        c
    }
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every point decoded, published and acknowledged.
    Complete,
    /// Every block was accounted for, but some were declared lost (FEC
    /// could not recover them) or shed by an overloaded receiver; every
    /// record that got through was acknowledged.
    Incomplete,
    /// No counter moved for the stall timeout.
    Stalled,
    /// Interrupted (Ctrl-C).
    Interrupted,
    /// The overall timeout passed.
    TimedOut,
}

/// Instants of interest, as offsets from the sender's start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Marks {
    /// First datagram on the wire.
    pub first_datagram: Option<Duration>,
    /// Sender's `records` reached the point count (last block sent).
    pub tx_done: Option<Duration>,
    /// Receiver's `records` reached the point count.
    pub decoded: Option<Duration>,
    /// Every publish acknowledged.
    pub delivered: Option<Duration>,
    /// With `--drain`: every block was in the outbox and the broker was
    /// thawed.
    pub released: Option<Duration>,
    /// When polling stopped.
    pub end: Duration,
}

/// The receiver's `acked` counter (broker PUBACKs, in messages) at the
/// instants of [`Marks`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AckedAt {
    /// When the sender started (the receiver's own start-up messages).
    pub start: u64,
    /// When the last block was sent.
    pub tx_done: Option<u64>,
    /// When the broker was thawed (`--drain`).
    pub released: Option<u64>,
    /// When everything was delivered.
    pub delivered: Option<u64>,
}

/// Everything measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was run.
    pub options: Options,
    /// How it ended.
    pub outcome: Outcome,
    /// Bytes of CSV in the spool.
    pub spool_bytes: u64,
    /// Time to generate the spool (not part of any rate).
    pub generate: Duration,
    /// Instants.
    pub marks: Marks,
    /// Messages acknowledged by then.
    pub acked_at: AckedAt,
    /// Sender counters at the end.
    pub tx: TxCounters,
    /// Sender repair symbols sent.
    pub tx_repair_symbols: u64,
    /// Sender send errors.
    pub tx_send_errors: u64,
    /// Wire bytes when the last block was sent.
    pub tx_wire_bytes_at_done: u64,
    /// Receiver counters at the end.
    pub rx: RxSnapshot,
    /// Forwarder (forwarded, dropped), when `--loss` was given.
    pub lossy: Option<(u64, u64)>,
    /// CPU used between the sender's start (with `--drain`: the broker's
    /// thaw) and the end of polling.
    pub cpu: CpuSample,
    /// Datagrams the kernel dropped because a UDP receive buffer was full
    /// (machine-wide `RcvbufErrors`, over the run).
    pub kernel_rcvbuf_drops: Option<u64>,
}

/// Run the whole thing once.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.points == 0 {
        bail!("--points must be positive");
    }
    let rx_rt = runtime(RX_THREADS, opts.workers)?;
    let tx_rt = runtime(TX_THREADS, opts.workers)?;
    // Ctrl-C or SIGTERM ends the run through the normal shutdown, so the
    // broker is stopped and the temporary directory removed.
    let interrupted = Arc::new(AtomicBool::new(false));
    rx_rt.spawn(interrupt_flag(interrupted.clone()));
    let dir = tempfile::Builder::new()
        .prefix("weir-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let broker = Mosquitto::start(dir.path(), Duration::from_secs(10))?;
    let key = dir.path().join("psk.key");
    weir_tx::keys::keygen(&key, 1)?;
    let keyring = weir_tx::keys::load_keyring(&[&key])?;

    let spool = dir.path().join("spool");
    let (spool_bytes, generate) = generate_spool(&spool, opts)?;

    let outbox = dir.path().join("rx-outbox.redb");
    let rx_cfg = rx_config(
        free_udp_port()?,
        &key,
        &outbox,
        broker.port(),
        opts.inflight,
        opts.batch_points,
    )?;
    let rx = rx_rt.block_on(weir_rx::run(rx_cfg, keyring.clone()))?;
    let proxy = (opts.loss_pct > 0.0)
        .then(|| LossyLink::start(rx.local_addr, opts.loss_pct, opts.seed))
        .transpose()
        .context("starting the lossy forwarder")?;
    let destination = proxy.as_ref().map_or(rx.local_addr, LossyLink::addr);
    wait_until(Duration::from_secs(15), || {
        rx.stats.acked.load(Ordering::Relaxed) > 0
    })
    .context("the receiver's first publish was never acknowledged by the broker")?;

    let tx_cfg = tx_config(destination, &key, &spool, opts.rate_mbps)?;
    let groups = [TX_THREADS, RX_THREADS, lossy::THREAD_NAME, MAIN_THREADS];
    if opts.drain {
        broker.freeze()?;
    }
    let cpu_start = cpu::sample(&groups, Some(broker.pid()));
    let rcvbuf_start = udp_rcvbuf_errors();
    let acked_at_start = rx.stats.acked.load(Ordering::Relaxed);
    let t0 = Instant::now();
    // On an error the broker is killed frozen or not.
    let tx = tx_rt.block_on(weir_tx::run(tx_cfg, keyring, *b"weirbnch"))?;

    let thaw = || {
        let at = cpu::sample(&groups, Some(broker.pid()));
        broker.thaw().map(|()| at)
    };
    let w = watch(
        opts,
        &tx,
        &rx,
        t0,
        &interrupted,
        opts.drain.then_some(&thaw),
    );
    // Thawed on every path, so shutdown can reach the broker.
    broker.thaw()?;
    let cpu = cpu::sample(&groups, Some(broker.pid()))
        .since(w.cpu_at_release.as_ref().unwrap_or(&cpu_start));
    let report = Report {
        options: opts.clone(),
        outcome: w.outcome,
        spool_bytes,
        generate,
        marks: Marks {
            end: t0.elapsed(),
            ..w.marks
        },
        acked_at: AckedAt {
            start: acked_at_start,
            ..w.acked_at
        },
        tx: tx.telemetry.counters(),
        tx_repair_symbols: tx.telemetry.repair_symbols.load(Ordering::Relaxed),
        tx_send_errors: tx.telemetry.send_errors.load(Ordering::Relaxed),
        tx_wire_bytes_at_done: w.wire_at_done,
        rx: rx.stats.snapshot(),
        lossy: proxy.as_ref().map(|p| {
            (
                p.stats.forwarded.load(Ordering::Relaxed),
                p.stats.dropped.load(Ordering::Relaxed),
            )
        }),
        cpu,
        kernel_rcvbuf_drops: udp_rcvbuf_errors()
            .zip(rcvbuf_start)
            .map(|(end, start)| end.saturating_sub(start)),
    };

    shutdown((tx_rt, tx), (rx_rt, rx), proxy)?;
    drop(broker);
    Ok(report)
}

/// Set `flag` on Ctrl-C (SIGINT) or SIGTERM.
pub(crate) async fn interrupt_flag(flag: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    flag.store(true, Ordering::Relaxed);
}

/// What [`watch`] saw.
struct Watched {
    outcome: Outcome,
    marks: Marks,
    acked_at: AckedAt,
    /// Wire bytes when the last block was sent.
    wire_at_done: u64,
    /// CPU when the broker was thawed (`--drain`).
    cpu_at_release: Option<CpuSample>,
}

/// Poll both sides' counters until everything was delivered or accounted
/// as lost, nothing moved for `opts.stall`, `opts.timeout` passed, or the
/// user interrupted. With `release` (`--drain`), call it once every block
/// the sender sent is committed to the outbox.
fn watch(
    opts: &Options,
    tx: &weir_tx::TxHandle,
    rx: &weir_rx::RxHandle,
    t0: Instant,
    interrupted: &AtomicBool,
    release: Option<&dyn Fn() -> anyhow::Result<CpuSample>>,
) -> Watched {
    let mut cpu_at_release = None;
    let mut marks = Marks::default();
    let mut acked_at = AckedAt::default();
    let mut wire_at_done = 0;
    // First poll of the current "all published messages acknowledged"
    // stretch: (offset, published then, acked then).
    let mut quiet_since: Option<(Duration, u64, u64)> = None;
    let mut last_progress = (t0, 0u64);
    // When the receiver's output (records decoded, records acked) last moved.
    let mut last_output = (t0, (0u64, 0u64));
    let mut last_print = t0;
    let outcome = loop {
        std::thread::sleep(POLL);
        let now = Instant::now();
        let at = now.duration_since(t0);
        let t = tx.telemetry.counters();
        let r = rx.stats.snapshot();
        if marks.first_datagram.is_none() && t.datagrams > 0 {
            marks.first_datagram = Some(at);
        }
        if marks.tx_done.is_none() && t.records >= opts.points {
            marks.tx_done = Some(at);
            acked_at.tx_done = Some(r.acked);
            wire_at_done = t.wire_bytes;
        }
        // Every block the sender sent is authentic (or shed, or lost) and
        // every kept one committed (events are committed too, so this can
        // run a couple of entries early: far under a millisecond).
        let all_stored = marks.tx_done.is_some()
            && r.blocks_ok + r.blocks_lost >= t.blocks
            && r.outbox_committed + r.blocks_shed >= r.blocks_ok;
        if let Some(release) = release
            && marks.released.is_none()
            && all_stored
        {
            match release() {
                Ok(cpu) => cpu_at_release = Some(cpu),
                Err(e) => eprintln!("warning: {e:#}"),
            }
            marks.released = Some(t0.elapsed());
            acked_at.released = Some(rx.stats.acked.load(Ordering::Relaxed));
        }
        if marks.decoded.is_none() && r.records >= opts.points {
            marks.decoded = Some(at);
        }
        let all_acked = r.acked == r.published;
        // More than one new message (a status message) since the stretch
        // began: it was a pause between blocks, not the end.
        if quiet_since.is_some_and(|(_, published, _)| r.published > published + 1) {
            quiet_since = None;
        }
        if r.records >= opts.points && all_acked {
            let (since, _, acked) = *quiet_since.get_or_insert((at, r.published, r.acked));
            if at.saturating_sub(since) >= CONFIRM {
                marks.delivered = Some(since);
                acked_at.delivered = Some(acked);
                break Outcome::Complete;
            }
        }
        // Acks beyond `records` are the periodic status message: not
        // progress. Nor are datagram counts, which heartbeats keep moving.
        let output = (r.records, r.acked.min(r.records));
        if output != last_output.1 {
            last_output = (now, output);
        }
        // Shed blocks were authenticated first, so they are in `blocks_ok`.
        if marks.tx_done.is_some()
            && r.blocks_lost + r.blocks_shed > 0
            && r.blocks_ok + r.blocks_lost >= t.blocks
            && all_acked
            && now.duration_since(last_output.0) >= Duration::from_secs(2)
        {
            break Outcome::Incomplete;
        }
        if interrupted.load(Ordering::Relaxed) {
            break Outcome::Interrupted;
        }
        let progress = t.records + t.blocks + r.blocks_ok + r.blocks_lost + output.0 + output.1;
        if progress != last_progress.1 {
            last_progress = (now, progress);
        } else if now.duration_since(last_progress.0) > opts.stall {
            break Outcome::Stalled;
        }
        if at > opts.timeout {
            break Outcome::TimedOut;
        }
        if now.duration_since(last_print) >= Duration::from_secs(2) {
            last_print = now;
            eprintln!(
                "{:6.1} s  tx records {:>9}  rx records {:>9}  published {:>9}  acked {:>9}  lost blocks {}  shed {}",
                at.as_secs_f64(),
                t.records,
                r.records,
                r.published,
                r.acked,
                r.blocks_lost,
                r.blocks_shed
            );
        }
    };
    Watched {
        outcome,
        marks,
        acked_at,
        wire_at_done,
        cpu_at_release,
    }
}

/// Orderly shutdown, sender first; each step bounded.
pub(crate) fn shutdown(
    (tx_rt, tx): (tokio::runtime::Runtime, weir_tx::TxHandle),
    (rx_rt, rx): (tokio::runtime::Runtime, weir_rx::RxHandle),
    proxy: Option<LossyLink>,
) -> anyhow::Result<()> {
    let bounded = Duration::from_secs(30);
    match tx_rt.block_on(async { tokio::time::timeout(bounded, tx.shutdown()).await }) {
        Ok(r) => r.context("sender shutdown")?,
        Err(_) => eprintln!("warning: sender did not stop within {bounded:?}"),
    }
    drop(proxy);
    match rx_rt.block_on(async { tokio::time::timeout(bounded, rx.shutdown()).await }) {
        Ok(r) => r.context("receiver shutdown")?,
        Err(_) => eprintln!("warning: receiver did not stop within {bounded:?}"),
    }
    tx_rt.shutdown_timeout(Duration::from_secs(2));
    rx_rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// [`write_spool`], timed and reported on stderr: (bytes, time taken).
fn generate_spool(spool: &Path, opts: &Options) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let bytes = write_spool(spool, opts)?;
    let took = started.elapsed();
    eprintln!(
        "spool: {} points in {} files, {:.1} MB, generated in {:.1} s",
        opts.points,
        opts.file_count(),
        f(bytes) / 1e6,
        took.as_secs_f64()
    );
    Ok((bytes, took))
}

/// Write `opts.points` rows of AVEVA CSV into `spool/incoming/`, each file
/// under a temporary name first and renamed in whole, as a well-behaved
/// exporter does. Returns the bytes written.
fn write_spool(spool: &Path, opts: &Options) -> anyhow::Result<u64> {
    let incoming = spool.join("incoming");
    std::fs::create_dir_all(&incoming)
        .with_context(|| format!("creating {}", incoming.display()))?;
    let files = opts.file_count();
    let mut bytes = 0u64;
    let mut first = 0u64;
    for i in 0..files {
        // Spread the remainder over the first files.
        let rows = opts.points / files + u64::from(i < opts.points % files);
        let text = synth::aveva_csv(first, rows, opts.seed);
        first += rows;
        let name = format!("history_{i:05}.csv");
        let tmp = incoming.join(format!("{name}.tmp"));
        std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, incoming.join(&name))?;
        bytes += text.len() as u64;
    }
    Ok(bytes)
}

/// A multi-threaded runtime whose threads are all named `name`.
pub(crate) fn runtime(name: &str, workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    // Blocking-pool threads (the sender's encoder runs under
    // `block_in_place`) normally exit after 10 s idle, taking their CPU
    // time out of the per-thread accounting: keep them for the whole run.
    b.enable_all()
        .thread_name(name)
        .thread_keep_alive(Duration::from_hours(1));
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.build()
        .with_context(|| format!("building the {name} runtime"))
}

/// A UDP port that was free a moment ago (the receiver's config needs a
/// concrete port before it binds).
pub(crate) fn free_udp_port() -> anyhow::Result<u16> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free UDP port")?;
    Ok(s.local_addr()?.port())
}

/// A path as a TOML literal string.
pub(crate) fn toml_path(p: &Path) -> anyhow::Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))?;
    if s.contains(['\'', '\n', '\r']) {
        bail!("{s}: path cannot be written as a TOML literal string");
    }
    Ok(format!("'{s}'"))
}

fn rx_config(
    port: u16,
    key: &Path,
    outbox: &Path,
    mqtt_port: u16,
    inflight: u16,
    batch_points: usize,
) -> anyhow::Result<ValidRx> {
    let text = format!(
        r#"
[link]
listen = "127.0.0.1:{port}"

[keys]
files = [{key}]

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "weir-bench-rx"
site = "bench"
inflight = {inflight}
batch_points = {batch_points}

[outbox]
path = {outbox}

[ledger]
gaps_path = {gaps}
sessions_path = {sessions}
"#,
        key = toml_path(key)?,
        outbox = toml_path(outbox)?,
        gaps = toml_path(&outbox.with_extension("gaps.jsonl"))?,
        sessions = toml_path(&outbox.with_extension("sessions.json"))?,
    );
    let raw: RxConfig = toml::from_str(&text).context("receiver config")?;
    Ok(raw.validate()?)
}

fn tx_config(
    destination: SocketAddr,
    key: &Path,
    spool: &Path,
    rate_mbps: f64,
) -> anyhow::Result<ValidTx> {
    let text = format!(
        r#"
[link]
destination = "{destination}"
bind = "127.0.0.1:0"
rate_mbps = {rate_mbps:?}

[keys]
files = [{key}]
active_key_id = 1

[sender]
state_path = {state}

[[spool]]
name = "bench"
dir = {spool}
format = "aveva-csv"
tz = "UTC"
on_done = "delete"
scan_interval = "50ms"
"#,
        key = toml_path(key)?,
        spool = toml_path(spool)?,
        state = toml_path(&spool.with_extension("tx-state.json"))?,
    );
    let raw: TxConfig = toml::from_str(&text).context("sender config")?;
    Ok(raw.validate()?)
}

/// The kernel's machine-wide count of UDP datagrams dropped for a full
/// receive buffer (`Udp: … RcvbufErrors` in `/proc/net/snmp`).
pub(crate) fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names
        .split_ascii_whitespace()
        .position(|n| n == "RcvbufErrors")?;
    values.split_ascii_whitespace().nth(at)?.parse().ok()
}

/// Poll `done` every 10 ms for at most `limit`.
pub(crate) fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("gave up after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A counter as a float, for display; counters stay far below 2^52.
#[expect(clippy::cast_precision_loss, reason = "display of counters < 2^52")]
fn f(n: u64) -> f64 {
    n as f64
}

fn rate(count: u64, over: Option<Duration>) -> Option<f64> {
    over.filter(|d| !d.is_zero())
        .map(|d| f(count) / d.as_secs_f64())
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.3} s", d.as_secs_f64()))
}

fn per_sec(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} {unit}"))
}

impl Report {
    /// Points per second until the receiver had decoded them all.
    pub fn decode_rate(&self) -> Option<f64> {
        rate(self.options.points, self.marks.decoded)
    }

    /// Points per second until the broker had acknowledged them all.
    pub fn delivered_rate(&self) -> Option<f64> {
        rate(self.options.points, self.marks.delivered)
    }

    /// Messages the broker acknowledged during the run (PUBACKs, status
    /// and audit messages included).
    pub fn messages_acked(&self) -> Option<u64> {
        self.acked_at
            .delivered
            .map(|n| n.saturating_sub(self.acked_at.start))
    }

    /// Messages per second until the broker had acknowledged them all.
    pub fn delivered_message_rate(&self) -> Option<f64> {
        rate(self.messages_acked()?, self.marks.delivered)
    }

    /// Points per acknowledged message, over the run.
    pub fn points_per_message(&self) -> Option<f64> {
        self.messages_acked()
            .filter(|&n| n > 0)
            .map(|n| f(self.options.points) / f(n))
    }

    /// With `--drain`: (points/s, messages/s) from the broker's thaw to the
    /// last acknowledgement. Exact: nothing was acknowledged while the
    /// broker was frozen.
    pub fn drain_rates(&self) -> Option<(f64, f64)> {
        let over = self.marks.delivered?.checked_sub(self.marks.released?)?;
        let n = self
            .acked_at
            .delivered?
            .checked_sub(self.acked_at.released?)?;
        Some((rate(self.options.points, Some(over))?, rate(n, Some(over))?))
    }

    /// Messages per second acknowledged between the last block sent and
    /// the last acknowledgement: the receiver's delivery rate without the
    /// sender competing for the CPU (none if that stretch is too short to
    /// time, under 100 ms).
    pub fn receiver_alone_message_rate(&self) -> Option<f64> {
        let over = self
            .marks
            .delivered?
            .checked_sub(self.marks.tx_done?)
            .filter(|d| *d >= Duration::from_millis(100))?;
        let n = self
            .acked_at
            .delivered?
            .checked_sub(self.acked_at.tx_done?)?;
        rate(n, Some(over))
    }

    /// Wire Mbit/s while the sender was sending (first datagram to last
    /// block), from its `wire_bytes` counter.
    pub fn wire_mbps(&self) -> Option<f64> {
        let from = self.marks.first_datagram?;
        let to = self.marks.tx_done?;
        rate(self.tx_wire_bytes_at_done * 8, to.checked_sub(from)).map(|b| b / 1e6)
    }

    /// The result as an aligned two-column table, then the command.
    pub fn table(&self) -> String {
        let mut rows = self.rate_rows();
        rows.extend(self.counter_rows());
        rows.extend(self.cpu_rows());
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        let _ = writeln!(out, "\ncommand: {}", self.options.command());
        out
    }

    fn rate_rows(&self) -> Vec<(&'static str, String)> {
        let m = &self.marks;
        vec![
            ("outcome", format!("{:?}", self.outcome)),
            ("points", self.options.points.to_string()),
            (
                "spool",
                format!(
                    "{} AVEVA CSV files, {:.1} MB",
                    self.options.file_count(),
                    f(self.spool_bytes) / 1e6
                ),
            ),
            ("pacing rate", format!("{} Mbit/s", self.options.rate_mbps)),
            ("first datagram at", secs(m.first_datagram)),
            ("last block sent at", secs(m.tx_done)),
            ("all decoded at", secs(m.decoded)),
            ("broker thawed at", secs(m.released)),
            ("all acked at", secs(m.delivered)),
            (
                "decode rate",
                per_sec(self.decode_rate(), "points/s (rx records)"),
            ),
            (
                "MQTT batching",
                format!(
                    "batch_points {}, inflight {}",
                    self.options.batch_points, self.options.inflight
                ),
            ),
            (
                "acked messages",
                self.messages_acked().map_or_else(
                    || "-".to_owned(),
                    |n| {
                        format!(
                            "{n} broker PUBACKs ({:.1} points/message; incl. status and audit messages)",
                            self.points_per_message().unwrap_or(0.0)
                        )
                    },
                ),
            ),
            (
                "published+acked rate",
                match (self.delivered_rate(), self.delivered_message_rate()) {
                    (Some(p), Some(m)) if self.options.drain => format!(
                        "{p:.0} points/s, {m:.0} messages/s (from the sender's start: includes the frozen broker)"
                    ),
                    (Some(p), Some(m)) => format!("{p:.0} points/s, {m:.0} messages/s"),
                    _ => "-".to_owned(),
                },
            ),
            (
                "  after last block sent",
                match (
                    self.receiver_alone_message_rate(),
                    self.points_per_message(),
                ) {
                    (Some(m), Some(ppm)) => format!(
                        "{m:.0} messages/s ≈ {:.0} points/s (receiver without the sender running)",
                        m * ppm
                    ),
                    _ => "- (stretch under 100 ms)".to_owned(),
                },
            ),
            (
                "outbox drain rate",
                self.drain_rates().map_or_else(
                    || "- (only with --drain)".to_owned(),
                    |(p, m)| {
                        format!(
                            "{p:.0} points/s, {m:.0} messages/s (thaw to last PUBACK, receiver alone)"
                        )
                    },
                ),
            ),
            (
                "sender rate",
                per_sec(rate(self.options.points, m.tx_done), "points/s"),
            ),
            (
                "wire rate",
                self.wire_mbps()
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.1} Mbit/s")),
            ),
        ]
    }

    fn counter_rows(&self) -> Vec<(&'static str, String)> {
        let (t, r) = (&self.tx, &self.rx);
        let drops = r.drop_crc
            + r.drop_malformed
            + r.drop_too_old
            + r.drop_geometry
            + r.drop_inconsistent
            + r.drop_pending_full
            + r.drop_excess
            + r.drop_unknown_key
            + r.drop_auth
            + r.drop_replay
            + r.drop_frame;
        let mut rows = vec![
            (
                "wire bytes",
                format!(
                    "{} ({:.1} B/point)",
                    t.wire_bytes,
                    f(t.wire_bytes) / f(self.options.points)
                ),
            ),
            ("tx blocks", t.blocks.to_string()),
            (
                "tx datagrams",
                format!(
                    "{} ({} repair symbols)",
                    t.datagrams, self.tx_repair_symbols
                ),
            ),
            (
                "tx send errors / rejected lines",
                format!("{} / {}", self.tx_send_errors, t.lines_rejected),
            ),
            ("rx datagrams", r.datagrams.to_string()),
            ("rx blocks ok", r.blocks_ok.to_string()),
            ("rx FEC-repaired symbols", r.fec_repaired.to_string()),
            (
                "rx blocks lost / shed",
                format!("{} / {}", r.blocks_lost, r.blocks_shed),
            ),
            (
                "rx late symbols",
                format!("{} (block already decoded: unused repair)", r.drop_resolved),
            ),
            ("rx datagrams dropped", drops.to_string()),
            (
                "kernel UDP rcvbuf drops",
                self.kernel_rcvbuf_drops.map_or_else(
                    || "-".into(),
                    |n| format!("{n} (machine-wide: receive socket overflowed)"),
                ),
            ),
            ("rx records", r.records.to_string()),
            (
                "rx published / acked",
                format!("{} / {} (incl. status messages)", r.published, r.acked),
            ),
        ];
        if let Some((fwd, dropped)) = self.lossy {
            rows.push((
                "forwarder",
                format!(
                    "{fwd} forwarded, {dropped} dropped ({:.2} %)",
                    100.0 * f(dropped) / f((fwd + dropped).max(1))
                ),
            ));
        }
        rows
    }

    fn cpu_rows(&self) -> Vec<(&'static str, String)> {
        // With `--drain`, CPU is sampled from the thaw on.
        let wall = self
            .marks
            .end
            .saturating_sub(self.marks.released.unwrap_or_default())
            .as_secs_f64();
        let points = f(self.options.points);
        let row = |d: Duration| {
            format!(
                "{:.2} s ({:.0} % of one core over {wall:.1} s, {:.2} µs/point)",
                d.as_secs_f64(),
                100.0 * d.as_secs_f64() / wall,
                d.as_secs_f64() * 1e6 / points
            )
        };
        let c = &self.cpu;
        let mut rows = vec![
            ("cpu weir-tx", row(c.thread_group(TX_THREADS))),
            ("cpu weir-rx", row(c.thread_group(RX_THREADS))),
        ];
        if self.lossy.is_some() {
            rows.push(("cpu forwarder", row(c.thread_group(lossy::THREAD_NAME))));
        }
        let named = [TX_THREADS, RX_THREADS, lossy::THREAD_NAME]
            .iter()
            .map(|g| c.thread_group(g))
            .sum::<Duration>();
        rows.push(("cpu harness + other", row(c.process.saturating_sub(named))));
        rows.push(("cpu mosquitto", c.broker.map_or_else(|| "-".into(), row)));
        let ours = c.process + c.broker.unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        rows.push((
            "cpu other processes",
            format!(
                "{:.2} s (machine busy {:.0} % of {cores} cores; others' load disturbs the figures)",
                c.machine.saturating_sub(ours).as_secs_f64(),
                100.0 * c.machine.as_secs_f64() / (wall * f(cores as u64)),
            ),
        ));
        rows
    }
}
