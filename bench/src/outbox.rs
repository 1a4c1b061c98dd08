//! Outbox throughput: durable group commits into the receiver's redb
//! outbox, then reading back and deleting, through the real stage tasks.
//!
//! ```text
//!  producer ──Item::Event──> outbox::write ──group commit (≤ 512), fsync──> redb file
//!                                  ▲                                          │
//!                                  └──acked EntryRef── consumer <──Entry── outbox::read (window)
//! ```
//!
//! Every decoded block passes through this file before anything made from
//! it is published, so its commit rate bounds what the receiver can take
//! in, and its read + delete rate bounds what it can hand to the publisher.
//! The benchmark drives the public stage functions exactly as
//! `weir_rx::pipeline::run` wires them (same channel capacities, the
//! reader's window of `outbox.window_blocks`), with a fresh outbox file
//! per entry size:
//!
//! 1. **commit, one at a time**: the next entry is sent only when the last
//!    one is committed, so every commit holds one entry: what an fsync
//!    costs, i.e. the rate of a trickle of alert blocks;
//! 2. **commit, back to back**: the producer keeps the writer's queue full,
//!    so the writer groups up to 512 entries per transaction: the most the
//!    outbox can absorb from decode;
//! 3. **read back** and **read back + delete**: the reader streams the
//!    table to a consumer that acknowledges each entry at once (as if the
//!    broker had acknowledged it instantly, with `retain_acked = 0`); the
//!    writer deletes in group commits. Timed until the last entry is read,
//!    and until the last deletion is committed;
//! 4. **all at once** (a second file): producer, reader and deletions run
//!    together, as in a receiver that keeps up: every commit both stores
//!    and deletes.
//!
//! Entries are events, not blocks: a block (`OpenedBlock`) can only be
//! made inside `weir-rx`, but an event entry of the same size takes the
//! same path (writer grouping, one `spawn_blocking` transaction with
//! `Durability::Immediate` per group, the same redb B-tree code, the same
//! reader) and differs only in its table (`events`, which is not held to
//! `max_bytes`) and in a 3-byte head plus the topic instead of a 26-byte
//! head. Payloads are random bytes, as sealed-then-opened frames are
//! incompressible zstd output.
//!
//! The file must sit on a real disk: on tmpfs an fsync costs nothing and
//! the figures would mean nothing, so a tmpfs directory is refused.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::{mpsc, watch};
use weir_rx::pipeline::Message;
use weir_rx::pipeline::outbox::{self, Body, Item, Outbox, Progress, Table, WriterIo};
use weir_rx::stats::RxStats;
use weir_shared::config::OutboxConfig;

use crate::cpu;

/// Capacity of decode's queue into the writer (as in `pipeline::run`).
const ITEM_QUEUE: usize = 1024;
/// Topic of the benchmark's entries (the gaps topic's length).
const TOPIC: &str = "diode/v1/bench/gw/gaps";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Entry payload sizes, bytes.
    pub sizes: Vec<usize>,
    /// Payload bytes per size for the back-to-back phases; the entry count
    /// is this divided by the size, within `min_count..=max_count`.
    pub bytes_per_size: u64,
    /// Fewest entries per back-to-back phase.
    pub min_count: u64,
    /// Most entries per back-to-back phase.
    pub max_count: u64,
    /// Entries committed one at a time.
    pub single: u64,
    /// Reader window (`outbox.window_blocks`).
    pub window: usize,
    /// Directory for the outbox files (a temporary directory is made in
    /// it); default: the system's temporary directory.
    pub dir: Option<PathBuf>,
}

impl Options {
    /// Entries per back-to-back phase for `size`.
    pub fn count(&self, size: usize) -> u64 {
        (self.bytes_per_size / size.max(1) as u64).clamp(self.min_count, self.max_count)
    }

    /// The command line that reproduces this run.
    pub fn command(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(ToString::to_string).collect();
        let mut c = format!(
            "cargo run --release -p weir-bench -- outbox --sizes {} --bytes-per-size {} --min-count {} --max-count {} --single {} --window {}",
            sizes.join(","),
            self.bytes_per_size,
            self.min_count,
            self.max_count,
            self.single,
            self.window
        );
        if let Some(d) = &self.dir {
            let _ = write!(c, " --dir {}", d.display());
        }
        c
    }
}

/// One timed phase.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Entry payload size, bytes.
    pub size: usize,
    /// What was timed.
    pub name: &'static str,
    /// Entries.
    pub entries: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Transactions that stored entries (none: not counted).
    pub commits: Option<u64>,
    /// CPU time of this process over the phase.
    pub cpu: Duration,
}

impl Phase {
    /// Entries per second.
    pub fn rate(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload MiB per second.
    pub fn mib_per_sec(&self) -> f64 {
        self.rate() * self.size as f64 / f64::from(1u32 << 20)
    }
}

/// Everything measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was run.
    pub options: Options,
    /// Where the files were, and on what.
    pub storage: String,
    /// Phases, in run order.
    pub phases: Vec<Phase>,
}

/// Run every size.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.sizes.is_empty() || opts.sizes.contains(&0) {
        bail!("--sizes must list positive sizes");
    }
    if opts.min_count == 0 || opts.min_count > opts.max_count {
        bail!("--min-count must be positive and at most --max-count");
    }
    if !(1..=4096).contains(&opts.window) {
        bail!("--window must be between 1 and 4096");
    }
    let parent = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    let storage = filesystem(&parent)?;
    let dir = tempfile::Builder::new()
        .prefix("weir-outbox-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let storage = format!("{} on {storage}", dir.path().display());
    eprintln!("outbox files in {storage}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let mut phases = Vec::new();
    for (i, &size) in opts.sizes.iter().enumerate() {
        let count = opts.count(size);
        let payload = random_bytes(size, i as u64);
        let file = dir.path().join(format!("outbox-{size}.redb"));
        phases.extend(rt.block_on(store_then_drain(&file, &payload, count, opts))?);
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        let file = dir.path().join(format!("outbox-{size}-together.redb"));
        phases.push(rt.block_on(all_at_once(&file, &payload, count, opts.window))?);
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
        for p in phases.iter().filter(|p| p.size == size) {
            eprintln!("{}", row(p));
        }
    }
    Ok(Report {
        options: opts.clone(),
        storage,
        phases,
    })
}

/// The writer and its inputs, as `pipeline::run` wires them.
struct Rig {
    outbox: Arc<Outbox>,
    stats: Arc<RxStats>,
    items: Option<mpsc::Sender<Item>>,
    acked: Option<mpsc::UnboundedSender<outbox::EntryRef>>,
    progress: watch::Receiver<Progress>,
    writer: tokio::task::JoinHandle<Result<(), weir_rx::pipeline::StageError>>,
    /// Gap reports for blocks a failing disk refused: must stay empty.
    fallback: mpsc::Receiver<Vec<Message>>,
}

impl Rig {
    fn start(path: &Path) -> anyhow::Result<Self> {
        let outbox =
            Arc::new(Outbox::open(path).with_context(|| format!("opening {}", path.display()))?);
        let stats = Arc::new(RxStats::default());
        let (items_tx, items_rx) = mpsc::channel(ITEM_QUEUE);
        let (acked_tx, acked_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress) = watch::channel(Progress::default());
        let (fallback_tx, fallback) = mpsc::channel(64);
        let cfg = OutboxConfig {
            path: path.to_owned(),
            max_bytes: u64::MAX / 2,
            // Delete as soon as acknowledged: the deletions are what is timed.
            retain_acked: Duration::ZERO,
            ..OutboxConfig::default()
        };
        let writer = tokio::spawn(outbox::write(
            outbox.clone(),
            cfg,
            stats.clone(),
            WriterIo::new(items_rx, acked_rx, progress_tx, fallback_tx),
        ));
        Ok(Self {
            outbox,
            stats,
            items: Some(items_tx),
            acked: Some(acked_tx),
            progress,
            writer,
            fallback,
        })
    }

    fn committed(&self) -> u64 {
        self.stats.outbox_committed.load(Ordering::Relaxed)
    }

    fn commits(&self) -> u64 {
        self.progress.borrow().commits
    }

    /// Wait until `n` entries in all were committed.
    async fn committed_at_least(&mut self, n: u64) -> anyhow::Result<()> {
        while self.committed() < n {
            self.progress
                .changed()
                .await
                .context("the outbox writer stopped")?;
        }
        Ok(())
    }

    fn sender(&self) -> anyhow::Result<mpsc::Sender<Item>> {
        self.items.clone().context("items already closed")
    }

    /// Start a reader of the events table and a consumer that acknowledges
    /// every entry at once; the consumer returns (entries, payload bytes)
    /// once it has seen `n`, and the instant it did.
    fn drain(
        &self,
        n: u64,
        size: usize,
        window: usize,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Instant>>> {
        let (entry_tx, mut entry_rx) = mpsc::channel(window);
        // Never rewound; the reader stops when its rewind sender is gone,
        // so the consumer holds it.
        let (rewind_tx, rewind_rx) = watch::channel(0u64);
        tokio::spawn(outbox::read(
            self.outbox.clone(),
            Table::Events,
            window,
            self.progress.clone(),
            rewind_rx,
            entry_tx,
        ));
        let acked = self.acked.clone().context("acks already closed")?;
        Ok(tokio::spawn(async move {
            let _rewind = rewind_tx;
            let mut seen = 0;
            while seen < n {
                let e = entry_rx
                    .recv()
                    .await
                    .with_context(|| format!("reader ended after {seen} of {n} entries"))?;
                let at =
                    e.at.context("the outbox reader gave an entry without a key")?;
                match &e.body {
                    Body::Event(m) if m.payload.len() == size => {}
                    _ => bail!("entry {} read back wrong", at.key),
                }
                acked.send(at).context("the outbox writer stopped")?;
                seen += 1;
            }
            Ok(Instant::now())
        }))
    }

    /// Close both inputs and wait for the writer to commit what is left.
    async fn finish(mut self) -> anyhow::Result<Arc<Outbox>> {
        self.items = None;
        self.acked = None;
        self.writer.await.context("outbox writer")??;
        if let Ok(lost) = self.fallback.try_recv() {
            bail!("the outbox refused entries ({} gap reports)", lost.len());
        }
        Ok(self.outbox)
    }
}

fn item(payload: &[u8]) -> Item {
    Item::Event(Message {
        topic: TOPIC.to_owned(),
        payload: payload.to_vec(),
        retain: false,
    })
}

/// Send `count` entries from a task of their own, as fast as the writer's
/// queue takes them.
fn produce(
    to_writer: mpsc::Sender<Item>,
    payload: &[u8],
    count: u64,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let payload = payload.to_vec();
    tokio::spawn(async move {
        for _ in 0..count {
            to_writer
                .send(item(&payload))
                .await
                .map_err(|_| anyhow::anyhow!("the outbox writer stopped"))?;
        }
        Ok(())
    })
}

/// Phases 1–3 on one file.
async fn store_then_drain(
    path: &Path,
    payload: &[u8],
    count: u64,
    opts: &Options,
) -> anyhow::Result<Vec<Phase>> {
    let size = payload.len();
    let mut rig = Rig::start(path)?;
    let mut phases = Vec::new();

    // 1. One at a time.
    let to_writer = rig.sender()?;
    let timer = Timer::start();
    let commits = rig.commits();
    for i in 1..=opts.single {
        to_writer
            .send(item(payload))
            .await
            .map_err(|_| anyhow::anyhow!("the outbox writer stopped"))?;
        rig.committed_at_least(i).await?;
    }
    phases.push(timer.phase(
        size,
        "commit, one entry at a time",
        opts.single,
        Some(rig.commits() - commits),
    ));

    // 2. Back to back.
    let timer = Timer::start();
    let commits = rig.commits();
    let producer = produce(to_writer, payload, count);
    rig.committed_at_least(opts.single + count).await?;
    producer.await??;
    phases.push(timer.phase(
        size,
        "commit, back to back",
        count,
        Some(rig.commits() - commits),
    ));

    // 3. Read back, acknowledge, delete.
    let total = opts.single + count;
    let timer = Timer::start();
    let consumer = rig.drain(total, size, opts.window)?;
    let read_done = consumer.await??;
    let mut read = timer.phase(size, "read back", total, None);
    read.elapsed = read_done.duration_since(timer.wall);
    phases.push(read);
    let outbox = rig.finish().await?;
    phases.push(timer.phase(size, "read back + delete", total, None));
    let left = tokio::task::spawn_blocking(move || outbox.len(Table::Events)).await??;
    if left != 0 {
        bail!("{left} entries left in the outbox after deleting");
    }
    Ok(phases)
}

/// Phase 4: store, read back and delete at once, on a fresh file.
async fn all_at_once(
    path: &Path,
    payload: &[u8],
    count: u64,
    window: usize,
) -> anyhow::Result<Phase> {
    let rig = Rig::start(path)?;
    let timer = Timer::start();
    let commits = rig.commits();
    let consumer = rig.drain(count, payload.len(), window)?;
    let producer = produce(rig.sender()?, payload, count);
    consumer.await??;
    producer.await??;
    let stored_commits = rig.commits() - commits;
    rig.finish().await?;
    Ok(timer.phase(
        payload.len(),
        "store + read + delete at once",
        count,
        Some(stored_commits),
    ))
}

/// Wall and CPU time since a start.
struct Timer {
    wall: Instant,
    cpu: Duration,
}

impl Timer {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu(),
        }
    }

    fn phase(&self, size: usize, name: &'static str, entries: u64, commits: Option<u64>) -> Phase {
        Phase {
            size,
            name,
            entries,
            elapsed: self.wall.elapsed(),
            commits,
            cpu: process_cpu().saturating_sub(self.cpu),
        }
    }
}

fn process_cpu() -> Duration {
    cpu::sample(&[], None).process
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// The filesystem `dir` is on, from `/proc/self/mounts`; a tmpfs (where
/// fsync costs nothing) is refused.
fn filesystem(dir: &Path) -> anyhow::Result<String> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{} must exist", dir.display()))?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_ascii_whitespace();
            let (dev, at, fs) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(at).then_some((at.len(), dev, at, fs))
        })
        .max_by_key(|(len, ..)| *len);
    let Some((_, dev, at, fs)) = best else {
        return Ok("an unknown filesystem".to_owned());
    };
    if matches!(fs, "tmpfs" | "ramfs") {
        bail!(
            "{} is on {fs}, where fsync costs nothing: pass --dir on a real disk",
            dir.display()
        );
    }
    Ok(format!("{fs} ({dev} mounted on {at})"))
}

fn size_text(size: usize) -> String {
    if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{} MiB", size >> 20)
    } else if size >= 1 << 10 && size.is_multiple_of(1 << 10) {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

fn row(p: &Phase) -> String {
    let group = p.commits.map_or_else(
        || "-".to_owned(),
        |c| format!("{c} ({:.1}/commit)", p.entries as f64 / c.max(1) as f64),
    );
    format!(
        "{:>8}  {:<30} {:>7}  {:>9.3} s  {:>10.0}/s  {:>8.1} MiB/s  {:>18}  {:>6.2} s",
        size_text(p.size),
        p.name,
        p.entries,
        p.elapsed.as_secs_f64(),
        p.rate(),
        p.mib_per_sec(),
        group,
        p.cpu.as_secs_f64()
    )
}

impl Report {
    /// The result as a table, then the command.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "outbox: {}\nevery commit is durable (redb Durability::Immediate: fsync); MiB = 2^20 payload bytes\n",
            self.storage
        );
        let _ = writeln!(
            out,
            "{:>8}  {:<30} {:>7}  {:>11}  {:>12}  {:>14}  {:>18}  {:>8}",
            "entry", "phase", "entries", "time", "entries/s", "payload", "commits", "cpu"
        );
        for p in &self.phases {
            let _ = writeln!(out, "{}", row(p));
        }
        let _ = writeln!(out, "\ncommand: {}", self.options.command());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sizes_read_well() {
        let opts = Options {
            sizes: vec![1024],
            bytes_per_size: 1 << 20,
            min_count: 10,
            max_count: 100,
            single: 1,
            window: 16,
            dir: None,
        };
        assert_eq!(opts.count(1024), 100);
        assert_eq!(opts.count(1 << 20), 10);
        assert_eq!(size_text(1024), "1 KiB");
        assert_eq!(size_text(1 << 20), "1 MiB");
        assert_eq!(size_text(1000), "1000 B");
    }

    #[test]
    fn a_small_run_stores_reads_and_deletes_everything() {
        let opts = Options {
            sizes: vec![512, 4096],
            bytes_per_size: 0,
            min_count: 40,
            max_count: 40,
            single: 3,
            window: 4,
            dir: None,
        };
        let report = match run(&opts) {
            Ok(r) => r,
            // No disk-backed temporary directory here: nothing to measure.
            Err(e) if e.to_string().contains("fsync costs nothing") => return,
            Err(e) => panic!("{e:#}"),
        };
        assert_eq!(report.phases.len(), 10);
        let entries: Vec<u64> = report.phases.iter().map(|p| p.entries).collect();
        assert_eq!(entries[..5], [3, 40, 43, 43, 40]);
        assert!(report.table().contains("read back + delete"));
    }
}
