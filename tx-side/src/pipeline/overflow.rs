//! Stage 1 (alert lane), `overflow`: the bounded durable queue behind the
//! alert channel.
//!
//! ```text
//!  sinks ─offer─┬─(channel has room, nothing waiting)───────────────────────> alert channel ──> batch
//!               │                                                                  ^
//!               └─(else) try_send─> spill ─> [writer] ─group commit─> file ─> [drainer]
//!                        └─ full: dropped     └─ max_bytes: dropped          send().await, then delete
//! ```
//!
//! A syslog sender cannot be slowed down and the alert channel is bounded,
//! so when alerts outrun the link they wait here, on disk, instead of being
//! dropped: the link catches up later, a crash or restart loses nothing
//! that was committed.
//!
//! - **Order.** While any alert is in the overflow path (spill channel,
//!   writer, file or the drainer's hands), a new alert goes to the back of
//!   it instead of into the channel: nothing overtakes an older alert.
//! - **The sinks never touch the disk.** They hand alerts to the writer over
//!   a bounded channel with `try_send`; if even that is full, the alert is
//!   dropped and counted.
//! - **Group commit.** The writer stores whatever arrived while its previous
//!   commit ran (up to `WRITE_GROUP_MAX` alerts) in one `Durability::Immediate`
//!   transaction: the batch grows with the load, with no timer in the way.
//! - **Delete after hand-over.** The drainer reads the oldest alerts, awaits
//!   room in the alert channel for each, and deletes them (one transaction
//!   per group) only once they were handed over. A crash between hand-over
//!   and delete sends that group again after the restart (at least once);
//!   an alert already in the channel is in memory, like any queued record.
//! - **Bounded.** At most `alert_queue.max_bytes` of stored alerts (their
//!   encoded size plus the 8-byte key; redb's pages come on top). An alert
//!   that does not fit is dropped, counted in `alerts_dropped` (carried in
//!   every heartbeat) and logged, at most once a second with the count.
//! - **Restart.** The file is created on the first spill, so a sender whose
//!   alerts never back up never writes it; its directory is created and
//!   checked writable at start, so a bad path stops startup. At start an
//!   existing file is opened, and what it holds is sent before any new
//!   alert. On shutdown the drainer stops handing alerts over; what is
//!   queued stays for the next start.
//! - **Counters.** `alerts` counts an alert once taken: into the channel or
//!   into the file. Alerts a previous run left are not counted again.
//!
//! Each entry is a one-record batch frame ([`BatchBuilder`], postcard inside
//! a versioned header), so entries of another frame version are refused one
//! by one (counted as dropped) rather than misread. redb calls block, so
//! they run on `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::Notify;
use tokio::sync::mpsc::{self, Receiver, Sender, error::TrySendError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_shared::config::AlertQueueConfig;
use weir_shared::lane::Lane;
use weir_shared::record::{Alert, BatchBuilder, DecodeLimits, Record, RecordError, decode_frame};

use super::{SourceItem, StageError, now};
use crate::telemetry::{Telemetry, add};

/// The queue's one table: arrival number → one-record batch frame.
const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("alerts");
/// Most alerts stored in one transaction.
const WRITE_GROUP_MAX: usize = 1024;
/// Most alerts read (and then deleted) at once: the drainer holds them
/// while the link takes them.
const READ_GROUP_MAX: usize = 256;
/// Most bytes read at once, beyond the first alert.
const READ_GROUP_BYTES: u64 = 4 * 1024 * 1024;
/// Alerts on their way from the sinks to the writer.
pub const SPILL_CAPACITY: usize = 4096;
/// Bytes an entry costs beside its frame: the key.
const ENTRY_OVERHEAD: u64 = 8;
/// redb's page cache (its default is 1 GiB).
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// At most one log line per kind of trouble in this interval.
const LOG_EVERY_MS: u64 = 1000;
/// Wait before reading the file again after a read failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why the queue file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// redb (or the file system under it) failed.
    #[error("alert queue: {0}")]
    Store(#[from] redb::Error),
    /// The blocking call panicked.
    #[error("alert queue task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The alert sinks' way into the alert lane. Cheap to clone: one per
/// listener, connection or followed file.
#[derive(Clone)]
pub struct Intake {
    to_batch: Sender<SourceItem>,
    to_writer: Sender<Record>,
    shared: Arc<Shared>,
}

/// What the sinks, the writer and the drainer share.
struct Shared {
    /// Alerts in the overflow path and not yet handed to the alert channel
    /// (spill channel, writer, file, drainer). While non-zero, a new alert
    /// queues behind them.
    waiting: AtomicU64,
    telemetry: Arc<Telemetry>,
    /// Dropped alerts, for the log.
    drops: RateLimit,
    /// Queue file failures, for the log.
    failures: RateLimit,
    /// Spills into an empty queue, for the log.
    backlogs: RateLimit,
    /// The writer stored something.
    stored: Notify,
}

impl Shared {
    /// `n` alerts left the overflow path without being handed over.
    fn lost(&self, n: u64, reason: &'static str) {
        if n == 0 {
            return;
        }
        self.waiting.fetch_sub(n, Ordering::AcqRel);
        add(&self.telemetry.alerts_dropped, n);
        if let Some(dropped) = self.drops.hit(n) {
            tracing::warn!(dropped, reason, "Alerts dropped (counted in heartbeats).");
        }
    }

    fn failed(&self, error: &dyn std::fmt::Display, what: &'static str) {
        if let Some(times) = self.failures.hit(1) {
            tracing::error!(%error, times, what, "Alert queue file failed.");
        }
    }
}

impl Intake {
    /// Hand one alert to the alert lane; never waits and never touches the
    /// disk. Straight into the alert channel when it has room and nothing
    /// waits in the overflow path, else to the back of the overflow path;
    /// dropped and counted only when that is full too.
    pub fn offer(&self, alert: Alert) -> Result<(), StageError> {
        let record = Record::Alert(Box::new(alert));
        // Acquire: pairs with the drainer's release after its last hand-over,
        // so a direct send here lands behind everything it handed over.
        if self.shared.waiting.load(Ordering::Acquire) == 0 {
            match self.to_batch.try_reserve() {
                Ok(permit) => {
                    permit.send(SourceItem::Record(Lane::Alert, record));
                    add(&self.shared.telemetry.alerts, 1);
                    return Ok(());
                }
                Err(TrySendError::Closed(())) => return Err(StageError::Closed("alerts")),
                Err(TrySendError::Full(())) => {}
            }
        }
        self.shared.waiting.fetch_add(1, Ordering::AcqRel);
        match self.to_writer.try_send(record) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.shared.lost(1, "spill channel full");
                Ok(())
            }
            Err(TrySendError::Closed(_)) => {
                self.shared.waiting.fetch_sub(1, Ordering::AcqRel);
                Err(StageError::Closed("overflow"))
            }
        }
    }

    /// Alerts waiting in the overflow path (on disk or on their way there).
    pub fn waiting(&self) -> u64 {
        self.shared.waiting.load(Ordering::Acquire)
    }
}

/// Open the queue (sending what a previous run left in it first) and start
/// its writer and drainer. The returned intake is the sinks' way in; the
/// writer ends once every clone of it is dropped, the drainer on
/// cancellation. Opening an existing file blocks (once, at startup).
pub fn start(
    cfg: &AlertQueueConfig,
    telemetry: &Arc<Telemetry>,
    cancel: &CancellationToken,
    to_batch: &Sender<SourceItem>,
    tasks: &mut JoinSet<Result<(), StageError>>,
) -> anyhow::Result<Intake> {
    let (store, recovered) = Store::open(&cfg.path, cfg.max_bytes).with_context(|| {
        format!(
            "config key `alert_queue.path`: opening {}",
            cfg.path.display()
        )
    })?;
    if recovered > 0 {
        tracing::warn!(alerts = recovered, path = %cfg.path.display(),
            "Alerts queued by the previous run: sending them first.");
    }
    telemetry
        .alert_queue_bytes
        .store(store.lock().queued_bytes, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        waiting: AtomicU64::new(recovered),
        telemetry: telemetry.clone(),
        drops: RateLimit::new(),
        failures: RateLimit::new(),
        backlogs: RateLimit::new(),
        stored: Notify::new(),
    });
    let store = Arc::new(store);
    let (to_writer, from_sinks) = mpsc::channel(SPILL_CAPACITY);
    tasks.spawn(write(store.clone(), shared.clone(), from_sinks));
    tasks.spawn(drain(
        store,
        shared.clone(),
        to_batch.clone(),
        cancel.clone(),
    ));
    Ok(Intake {
        to_batch: to_batch.clone(),
        to_writer,
        shared,
    })
}

/// Store spilled alerts, a group per transaction, until every intake is
/// gone.
async fn write(
    store: Arc<Store>,
    shared: Arc<Shared>,
    mut from_sinks: Receiver<Record>,
) -> Result<(), StageError> {
    let mut group = Vec::with_capacity(WRITE_GROUP_MAX);
    let mut builder = BatchBuilder::default();
    // What arrived while the last commit ran is the next group.
    while from_sinks.recv_many(&mut group, WRITE_GROUP_MAX).await > 0 {
        let mut frames = Vec::with_capacity(group.len());
        for record in group.drain(..) {
            match encode(&mut builder, &record) {
                Ok(frame) => frames.push(frame),
                Err(e) => {
                    shared.failed(&e, "encode");
                    shared.lost(1, "alert unencodable");
                }
            }
        }
        let count = frames.len() as u64;
        match blocking(&store, move |s| s.append(&frames)).await {
            Ok(appended) => {
                add(&shared.telemetry.alerts, appended.stored);
                shared
                    .telemetry
                    .alert_queue_bytes
                    .store(appended.queued_bytes, Ordering::Relaxed);
                shared.lost(appended.refused, "queue full (alert_queue.max_bytes)");
                if appended.was_empty && appended.stored > 0 && shared.backlogs.hit(1).is_some() {
                    tracing::warn!(
                        "Alert lane backed up: alerts wait in the queue file until the link takes them."
                    );
                }
                if appended.stored > 0 {
                    shared.stored.notify_one();
                }
            }
            Err(e) => {
                shared.failed(&e, "write");
                shared.lost(count, "queue file unwritable");
            }
        }
    }
    Ok(())
}

/// Move stored alerts, oldest first, into the alert channel as it makes
/// room; delete them once handed over. Stops on cancellation.
async fn drain(
    store: Arc<Store>,
    shared: Arc<Shared>,
    to_batch: Sender<SourceItem>,
    cancel: CancellationToken,
) -> Result<(), StageError> {
    // An entry is never larger than the whole queue.
    let limits = DecodeLimits {
        max_body_bytes: u32::try_from(store.max_bytes).unwrap_or(u32::MAX),
        max_records: 1,
    };
    // The first key not yet handed over: a failed delete must not make the
    // drainer hand the same alerts over twice.
    let mut cursor = 0u64;
    loop {
        let entries = match blocking(&store, move |s| s.read_from(cursor, READ_GROUP_MAX)).await {
            Ok(entries) => entries,
            Err(e) => {
                shared.failed(&e, "read");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(RETRY_AFTER) => continue,
                }
            }
        };
        if entries.is_empty() {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = shared.stored.notified() => continue,
            }
        }
        let mut handed = None;
        let mut stopped = false;
        for (key, frame) in entries {
            if let Some(record) = decode(&frame, limits) {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {
                        stopped = true;
                        break;
                    }
                    sent = to_batch.send(SourceItem::Record(Lane::Alert, record)) => {
                        sent.map_err(|_| StageError::Closed("overflow"))?;
                    }
                }
                // Release: see `Intake::offer`.
                shared.waiting.fetch_sub(1, Ordering::AcqRel);
            } else {
                shared.lost(1, "stored alert unreadable");
            }
            handed = Some(key);
            cursor = key.saturating_add(1);
        }
        if let Some(last) = handed {
            match blocking(&store, move |s| s.remove_through(last)).await {
                Ok(queued) => shared
                    .telemetry
                    .alert_queue_bytes
                    .store(queued, Ordering::Relaxed),
                Err(e) => shared.failed(&e, "delete"),
            }
        }
        if stopped {
            return Ok(());
        }
    }
}

/// Run a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    call: impl FnOnce(&Store) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(&store)).await?
}

/// One alert as a one-record batch frame, uncompressed.
fn encode(builder: &mut BatchBuilder, record: &Record) -> Result<Vec<u8>, RecordError> {
    let mut frame = Vec::new();
    let built = builder
        .push(record)
        .and_then(|_| builder.finish(None, &mut frame));
    if built.is_err() {
        // Never carry a half-built frame into the next alert.
        *builder = BatchBuilder::default();
    }
    built.map(|()| frame)
}

/// The alert a stored frame holds; `None` if it holds anything else.
fn decode(frame: &[u8], limits: DecodeLimits) -> Option<Record> {
    let mut records = decode_frame(frame, limits).ok()?.records.into_iter();
    match (records.next(), records.next()) {
        (Some(record @ Record::Alert(_)), None) => Some(record),
        _ => None,
    }
}

fn cost(frame_len: usize) -> u64 {
    frame_len as u64 + ENTRY_OVERHEAD
}

/// The queue file. Every call blocks: call it from `spawn_blocking`.
struct Store {
    path: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// `None` until the first spill (or an existing file at start).
    db: Option<Database>,
    /// Key of the next alert stored.
    next_key: u64,
    /// Bytes stored, as counted against `max_bytes`.
    queued_bytes: u64,
}

/// What [`Store::append`] did.
struct Appended {
    stored: u64,
    /// Did not fit under `max_bytes`.
    refused: u64,
    /// The queue held nothing before.
    was_empty: bool,
    /// Bytes stored now.
    queued_bytes: u64,
}

impl Store {
    /// Open the file if it exists; returns the store and how many alerts it
    /// holds. A missing file is created on the first append.
    fn open(path: &Path, max_bytes: u64) -> Result<(Self, u64), QueueError> {
        let mut inner = Inner {
            db: None,
            next_key: 0,
            queued_bytes: 0,
        };
        let mut held = 0;
        if path.exists() {
            let (db, scan) = open_db(path)?;
            inner.db = Some(db);
            inner.next_key = scan.next_key;
            inner.queued_bytes = scan.bytes;
            held = scan.entries;
        } else {
            // The file comes with the first spill; its directory must be
            // writable now, or that spill would only find out then.
            probe_dir(path).map_err(|e| QueueError::Store(redb::StorageError::Io(e).into()))?;
        }
        let store = Self {
            path: path.to_owned(),
            max_bytes,
            inner: Mutex::new(inner),
        };
        Ok((store, held))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is a handful of counters, consistent after every
        // statement: a panic elsewhere leaves nothing half-done to fear.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Store `frames` in order, in one transaction, as far as they fit.
    fn append(&self, frames: &[Vec<u8>]) -> Result<Appended, QueueError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let db = match &mut inner.db {
            slot @ None => {
                let (db, scan) = open_db(&self.path)?;
                inner.next_key = scan.next_key;
                inner.queued_bytes = scan.bytes;
                slot.insert(db)
            }
            Some(db) => db,
        };
        let was_empty = inner.queued_bytes == 0;
        let (key, bytes, refused) = insert_fitting(
            db,
            (inner.next_key, inner.queued_bytes),
            self.max_bytes,
            frames,
        )?;
        let stored = key - inner.next_key;
        inner.next_key = key;
        inner.queued_bytes = bytes;
        Ok(Appended {
            stored,
            refused,
            was_empty,
            queued_bytes: bytes,
        })
    }

    /// Up to `max` entries from key `from` on, oldest first.
    fn read_from(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, QueueError> {
        let inner = self.lock();
        match &inner.db {
            Some(db) => Ok(read_range(db, from, max)?),
            None => Ok(Vec::new()),
        }
    }

    /// Delete every entry up to and including `last`; returns the bytes
    /// still stored.
    fn remove_through(&self, last: u64) -> Result<u64, QueueError> {
        let mut inner = self.lock();
        if let Some(db) = &inner.db {
            let freed = remove_range(db, last)?;
            inner.queued_bytes = inner.queued_bytes.saturating_sub(freed);
        }
        Ok(inner.queued_bytes)
    }
}

/// Insert `frames` from key `next_key` on, in one durable transaction, as
/// far as each fits under `max_bytes` beside the `queued` bytes. Returns
/// the next key, the bytes now queued and how many frames did not fit.
fn insert_fitting(
    db: &Database,
    (next_key, queued): (u64, u64),
    max_bytes: u64,
    frames: &[Vec<u8>],
) -> Result<(u64, u64, u64), redb::Error> {
    let (mut key, mut bytes, mut refused) = (next_key, queued, 0);
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    {
        let mut table = tx.open_table(TABLE)?;
        for frame in frames {
            let c = cost(frame.len());
            if bytes.saturating_add(c) > max_bytes {
                refused += 1;
                continue;
            }
            table.insert(key, frame.as_slice())?;
            key += 1;
            bytes += c;
        }
    }
    if key == next_key {
        tx.abort()?;
    } else {
        tx.commit()?;
    }
    Ok((key, bytes, refused))
}

/// Up to `max` entries (and [`READ_GROUP_BYTES`] beyond the first) from
/// key `from` on, oldest first.
fn read_range(db: &Database, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, redb::Error> {
    let tx = db.begin_read()?;
    let table = tx.open_table(TABLE)?;
    let (mut out, mut bytes) = (Vec::new(), 0);
    for entry in table.range(from..)?.take(max) {
        if bytes >= READ_GROUP_BYTES {
            break;
        }
        let (k, v) = entry?;
        let frame = v.value().to_vec();
        bytes += cost(frame.len());
        out.push((k.value(), frame));
    }
    Ok(out)
}

/// Delete every entry up to and including `last`, durably; returns the
/// bytes freed.
fn remove_range(db: &Database, last: u64) -> Result<u64, redb::Error> {
    let mut freed = 0;
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    {
        let mut table = tx.open_table(TABLE)?;
        table.retain_in(..=last, |_, v| {
            freed += cost(v.len());
            false
        })?;
    }
    tx.commit()?;
    Ok(freed)
}

/// What an opened file holds.
struct Scan {
    next_key: u64,
    bytes: u64,
    entries: u64,
}

/// Open (or create) the file, its directory and its table.
/// Create the queue file's directory and check a file can be made in it.
fn probe_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".weir-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

fn open_db(path: &Path) -> Result<(Database, Scan), redb::Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)?;
    let tx = db.begin_write()?;
    tx.open_table(TABLE)?;
    tx.commit()?;
    let tx = db.begin_read()?;
    let table = tx.open_table(TABLE)?;
    let next_key = table
        .last()?
        .map_or(0, |(k, _)| k.value().saturating_add(1));
    let (mut bytes, mut entries) = (0, 0);
    for entry in table.iter()? {
        let (_, v) = entry?;
        bytes += cost(v.value().len());
        entries += 1;
    }
    drop(table);
    drop(tx);
    Ok((
        db,
        Scan {
            next_key,
            bytes,
            entries,
        },
    ))
}

/// At most one log line per [`LOG_EVERY_MS`], carrying how many events it
/// stands for: a flood of drops must not become a flood of log lines.
struct RateLimit {
    epoch: Instant,
    /// Milliseconds after `epoch` when the next line may go out.
    next_ms: AtomicU64,
    /// Events since the last line.
    unlogged: AtomicU64,
}

impl RateLimit {
    fn new() -> Self {
        Self {
            epoch: now(),
            next_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Count `n` events; `Some(events since the last line)` if a line is due.
    fn hit(&self, n: u64) -> Option<u64> {
        let at_ms = now().saturating_duration_since(self.epoch).as_millis() as u64;
        self.hit_at(at_ms, n)
    }

    /// [`Self::hit`] at `at` milliseconds after the epoch.
    fn hit_at(&self, at: u64, n: u64) -> Option<u64> {
        self.unlogged.fetch_add(n, Ordering::Relaxed);
        let due = self.next_ms.load(Ordering::Relaxed);
        let mine = at >= due
            && self
                .next_ms
                .compare_exchange(due, at + LOG_EVERY_MS, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        mine.then(|| self.unlogged.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_queue_directory_is_found_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        // The queue's directory would have to be inside a regular file.
        assert!(Store::open(&file.join("q.redb"), 1 << 20).is_err());
        let ok = dir.path().join("spool/q.redb");
        let (_, held) = Store::open(&ok, 1 << 20).expect("a fresh directory is fine");
        assert_eq!(held, 0);
        assert!(
            !ok.exists(),
            "the file itself still waits for the first spill"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("spool"))
                .expect("dir")
                .count(),
            0
        );
    }

    #[test]
    fn rate_limit_logs_once_per_interval_with_the_count() {
        let r = RateLimit::new();
        assert_eq!(r.hit_at(0, 1), Some(1));
        assert_eq!(r.hit_at(1, 1), None);
        assert_eq!(r.hit_at(LOG_EVERY_MS - 1, 3), None);
        assert_eq!(r.hit_at(LOG_EVERY_MS, 1), Some(5));
        assert_eq!(r.hit_at(LOG_EVERY_MS + 1, 1), None);
        assert_eq!(r.hit_at(10 * LOG_EVERY_MS, 2), Some(3));
    }

    #[test]
    fn a_frame_holding_anything_but_one_alert_is_refused() {
        let limits = DecodeLimits {
            max_body_bytes: 1 << 20,
            max_records: 1,
        };
        assert!(decode(b"", limits).is_none());
        assert!(decode(&[0xff; 32], limits).is_none());
        let mut b = BatchBuilder::default();
        let chunk = Record::FileChunk(weir_shared::record::FileChunk {
            seq: 0,
            file_id: 0,
            name: "f".into(),
            size: 1,
            mtime_ns: 0,
            sha256: [0; 32],
            offset: 0,
            index: 0,
            chunks: 1,
            data: vec![1],
        });
        let frame = encode(&mut b, &chunk).expect("encodes");
        assert!(decode(&frame, limits).is_none());
    }
}
