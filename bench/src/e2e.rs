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
//! - **delivered**: additionally every publish was acknowledged
//!   (`acked == published` and `acked ≥ records`). `acked` also counts the
//!   receiver's retained status message (one every 2 s), so this is exact
//!   to within a handful of messages, i.e. microseconds.
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
            "cargo run --release -p weir-bench -- e2e --points {} --files {} --rate-mbps {} --inflight {} --seed {}",
            self.points,
            self.file_count(),
            self.rate_mbps,
            self.inflight,
            self.seed
        );
        if self.loss_pct > 0.0 {
            let _ = write!(c, " --loss {}", self.loss_pct);
        }
        if self.workers > 0 {
            let _ = write!(c, " --workers {}", self.workers);
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
    /// When polling stopped.
    pub end: Duration,
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
    /// CPU used between the sender's start and the end of polling.
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
    let generated = Instant::now();
    let spool_bytes = write_spool(&spool, opts)?;
    let generate = generated.elapsed();
    eprintln!(
        "spool: {} points in {} files, {:.1} MB, generated in {:.1} s",
        opts.points,
        opts.file_count(),
        f(spool_bytes) / 1e6,
        generate.as_secs_f64()
    );

    let outbox = dir.path().join("rx-outbox.redb");
    let rx_cfg = rx_config(
        free_udp_port()?,
        &key,
        &outbox,
        broker.port(),
        opts.inflight,
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
    let cpu_start = cpu::sample(&groups, Some(broker.pid()));
    let rcvbuf_start = udp_rcvbuf_errors();
    let t0 = Instant::now();
    let tx = tx_rt.block_on(weir_tx::run(tx_cfg, keyring, *b"weirbnch"))?;

    let (outcome, mut marks, wire_at_done) = watch(opts, &tx, &rx, t0, &interrupted);
    marks.end = t0.elapsed();
    let cpu = cpu::sample(&groups, Some(broker.pid())).since(&cpu_start);
    let report = Report {
        options: opts.clone(),
        outcome,
        spool_bytes,
        generate,
        marks,
        tx: tx.telemetry.counters(),
        tx_repair_symbols: tx.telemetry.repair_symbols.load(Ordering::Relaxed),
        tx_send_errors: tx.telemetry.send_errors.load(Ordering::Relaxed),
        tx_wire_bytes_at_done: wire_at_done,
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
async fn interrupt_flag(flag: Arc<AtomicBool>) {
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

/// Poll both sides' counters until everything was delivered or accounted
/// as lost, nothing moved for `opts.stall`, `opts.timeout` passed, or the
/// user interrupted. Returns how it ended, the instants seen and the wire
/// bytes when the last block was sent.
fn watch(
    opts: &Options,
    tx: &weir_tx::TxHandle,
    rx: &weir_rx::RxHandle,
    t0: Instant,
    interrupted: &AtomicBool,
) -> (Outcome, Marks, u64) {
    let mut marks = Marks::default();
    let mut wire_at_done = 0;
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
            wire_at_done = t.wire_bytes;
        }
        if marks.decoded.is_none() && r.records >= opts.points {
            marks.decoded = Some(at);
        }
        let all_acked = r.acked >= r.records && r.acked == r.published;
        if r.records >= opts.points && all_acked {
            marks.delivered = Some(at);
            break Outcome::Complete;
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
                "{:6.1} s  tx records {:>9}  rx records {:>9}  acked {:>9}  lost blocks {}  shed {}",
                at.as_secs_f64(),
                t.records,
                r.records,
                r.acked,
                r.blocks_lost,
                r.blocks_shed
            );
        }
    };
    (outcome, marks, wire_at_done)
}

/// Orderly shutdown, sender first; each step bounded.
fn shutdown(
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
fn runtime(name: &str, workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
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
fn free_udp_port() -> anyhow::Result<u16> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free UDP port")?;
    Ok(s.local_addr()?.port())
}

/// A path as a TOML literal string.
fn toml_path(p: &Path) -> anyhow::Result<String> {
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

[outbox]
path = {outbox}
"#,
        key = toml_path(key)?,
        outbox = toml_path(outbox)?,
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
    );
    let raw: TxConfig = toml::from_str(&text).context("sender config")?;
    Ok(raw.validate()?)
}

/// The kernel's machine-wide count of UDP datagrams dropped for a full
/// receive buffer (`Udp: … RcvbufErrors` in `/proc/net/snmp`).
fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names
        .split_ascii_whitespace()
        .position(|n| n == "RcvbufErrors")?;
    values.split_ascii_whitespace().nth(at)?.parse().ok()
}

/// Poll `done` every 10 ms for at most `limit`.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
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
            ("all acked at", secs(m.delivered)),
            (
                "decode rate",
                per_sec(self.decode_rate(), "points/s (rx records)"),
            ),
            (
                "published+acked rate",
                per_sec(self.delivered_rate(), "points/s"),
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
        let wall = self.marks.end.as_secs_f64();
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
