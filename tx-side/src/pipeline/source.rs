//! Stage 1, `source`: files from a spool directory, either historian
//! exports parsed into points or opaque files sent byte for byte.
//!
//! ```text
//!  inotify on incoming/ ──(renamed in, created, written and closed; overflow)──> wake ─┐
//!  timer: scan_interval after the last scan, or when a pending file's interval is up ──┤
//!                                                                                      v
//!  incoming/ ──(scan: complete?)──> working/ ──historian: parse──> points ──> batch
//!                                      │   │                 └─ rejected lines ─> quarantine/NAME.rejects
//!                                      │   └──files: SHA-256 pass, then chunks──> FileChunks ──> batch
//!                                      └─ unreadable ─> quarantine/NAME + NAME.reason
//!  working/ ──(every block sent)──> done/   (or deleted)
//! ```
//!
//! A file is taken only when complete: either the watcher saw it renamed
//! into `incoming/` and not written to since (the recommended way to drop a
//! file: write under a temporary name, rename in), or its size and
//! modification time held steady for one scan interval. Names starting
//! with `.` or ending in `.tmp` / `.part` are never taken. Files found in
//! `working/` at start-up were interrupted by a crash and are sent again:
//! at-least-once, never silently dropped.
//!
//! The scan of `incoming/` is the source of truth: the watcher only wakes
//! it early and marks renamed-in names, it never hands a file over itself.
//! Data writes do not wake the scan (an appending writer would keep it
//! spinning); creating a file and closing it after writing do, so its
//! steady interval starts at once, and the scan runs again when that
//! interval is up. If the watcher cannot start, fails, or its queue
//! overflows (events lost), that is logged once, the rename marks are
//! dropped, and files fall back to the steady rule and the periodic scan.
//!
//! An opaque file is read twice and never held whole: a first pass hashes
//! it (SHA-256, carried in every chunk so the receiver can check the
//! reassembled file), a second one reads it chunk by chunk and sends. The
//! second pass hashes again and withholds the last chunk if the bytes
//! changed in between, so a receiver never completes a file that does not
//! match its hash. [`take`] is also what `weir-tx send` pushes files with.
//!
//! Full-queue policy: `send().await` on the batch channel, so a slow link
//! leaves files waiting in `incoming/`; file chunks additionally wait for
//! room in a byte budget, so the queue holds megabytes, not gigabytes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use ring::digest::{Context as Sha256, SHA256};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc::Sender;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use weir_shared::config::{MAX_FILE_NAME_BYTES, OnDone, SpoolConfig, SpoolKind};
use weir_shared::formats::{Format, ParseContext, ParseOutput, Reject};
use weir_shared::lane::Lane;
use weir_shared::record::{FileChunk, Record};

use super::{AfterSend, FileDone, SourceItem, StageError};
use crate::telemetry::{Telemetry, add};

/// Bytes of file chunks one source keeps queued toward the batcher, at
/// least (two chunks when chunks are larger).
const CHUNK_BUDGET_BYTES: usize = 8 * 1024 * 1024;
/// Read size of the hashing pass.
const HASH_READ_BYTES: usize = 1024 * 1024;

/// The four directories of a spool.
#[derive(Debug, Clone)]
pub struct SpoolDirs {
    /// Where writers drop files.
    pub incoming: PathBuf,
    /// Files being sent.
    pub working: PathBuf,
    /// Files fully sent.
    pub done: PathBuf,
    /// Files (or lines) that could not be read, with reasons.
    pub quarantine: PathBuf,
}

impl SpoolDirs {
    /// The directories under `base`, created if missing.
    pub fn create(base: &Path) -> std::io::Result<Self> {
        let d = Self {
            incoming: base.join("incoming"),
            working: base.join("working"),
            done: base.join("done"),
            quarantine: base.join("quarantine"),
        };
        for p in [&d.incoming, &d.working, &d.done, &d.quarantine] {
            std::fs::create_dir_all(p)?;
        }
        Ok(d)
    }
}

fn eligible_name(name: &str) -> bool {
    // Temporary suffixes match case-sensitively, as they always have:
    // `EXPORT.TMP` is taken like any finished file.
    let temporary = Path::new(name)
        .extension()
        .is_some_and(|ext| ext == "tmp" || ext == "part");
    !name.starts_with('.') && !temporary
}

/// Files in `dir` as (name, size, mtime), sorted oldest first.
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<(String, u64, SystemTime)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && eligible_name(&name) {
            out.push((
                name,
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ));
        }
    }
    out.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// Which files of `incoming/` are complete. Sans-IO: the shell lists the
/// directory and says when; this remembers what each pending file looked
/// like and since when.
#[derive(Debug)]
struct Settling {
    /// How long a file's size and mtime must hold steady.
    interval: Duration,
    /// Files seen but not yet complete.
    pending: HashMap<String, Steady>,
}

/// A pending file's last seen size and mtime, and when it was first seen so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Steady {
    size: u64,
    mtime: SystemTime,
    since: Instant,
}

impl Settling {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            pending: HashMap::new(),
        }
    }

    /// One listing of `incoming/` (as from [`list`]) taken at `now`: the
    /// names that are complete, in listing order. They are forgotten, as is
    /// every pending file the listing no longer shows. `renamed_in` says
    /// whether the watcher saw a name renamed in (and not written since).
    ///
    /// Steadiness is measured in time, not in scans, so the extra scans a
    /// wake-up causes never shorten a file's interval.
    fn handle_listing(
        &mut self,
        now: Instant,
        files: Vec<(String, u64, SystemTime)>,
        renamed_in: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut ready = Vec::new();
        let mut pending = HashMap::with_capacity(files.len());
        for (name, size, mtime) in files {
            let since = match self.pending.remove(&name) {
                Some(seen) if seen.size == size && seen.mtime == mtime => seen.since,
                _ => now,
            };
            if renamed_in(&name) || now.saturating_duration_since(since) >= self.interval {
                ready.push(name);
            } else {
                pending.insert(name, Steady { size, mtime, since });
            }
        }
        self.pending = pending;
        ready
    }

    /// When the first pending file will have held steady for an interval,
    /// if nothing changes: the latest the next scan should run.
    fn poll_due(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|seen| seen.since + self.interval)
            .min()
    }
}

/// What the `incoming/` watcher has told the scan loop so far.
#[derive(Debug, Default)]
struct Marks {
    /// Eligible names renamed into `incoming/` and not written to since.
    renamed_in: HashSet<String>,
    /// A queue overflow was logged already.
    overflow_logged: bool,
    /// A watcher error was logged already.
    error_logged: bool,
}

impl Marks {
    /// Apply one watcher event for the directory `incoming`; whether it
    /// should wake the scan.
    fn handle_event(&mut self, incoming: &Path, event: &notify::Event) -> bool {
        if event.need_rescan() {
            // Events were lost: a mark could hide a write that followed it.
            self.renamed_in.clear();
            return true;
        }
        // Only entries of the directory, not the directory itself (the
        // scan's own `read_dir` opens and closes it).
        let names = event
            .paths
            .iter()
            .filter(|p| p.parent() == Some(incoming))
            .filter_map(|p| p.file_name()?.to_str())
            .filter(|name| eligible_name(name));
        match event.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                let mut any = false;
                for name in names {
                    self.renamed_in.insert(name.to_owned());
                    any = true;
                }
                any
            }
            // Written in place (created, or written after its rename):
            // the steady rule decides. A creation starts that clock.
            EventKind::Create(_) => {
                names.for_each(|name| {
                    self.renamed_in.remove(name);
                });
                true
            }
            EventKind::Modify(
                ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Name(RenameMode::From),
            )
            | EventKind::Remove(_) => {
                names.for_each(|name| {
                    self.renamed_in.remove(name);
                });
                false
            }
            // A writer finished: its steady interval can start now. Or a
            // rename the backend could not place (a `Both` comes with its
            // `To`, which marked it already).
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::Any | RenameMode::Other)) => true,
            _ => false,
        }
    }
}

/// Shared between the watcher's thread and the scan loop.
#[derive(Debug, Default)]
struct Hints {
    /// Wakes the scan loop; a wake-up while it is busy is kept for later.
    wake: Notify,
    marks: Mutex<Marks>,
}

impl Hints {
    /// The watcher callback (runs on the watcher's own thread).
    fn handle(&self, spool: &str, incoming: &Path, event: &notify::Result<notify::Event>) {
        let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        let wake = if let Ok(ev) = event {
            marks.handle_event(incoming, ev)
        } else {
            // Events may be lost: a mark could hide a later write.
            marks.renamed_in.clear();
            true
        };
        let logged = match event {
            Ok(ev) if ev.need_rescan() => Some(&mut marks.overflow_logged),
            Ok(_) => None,
            Err(_) => Some(&mut marks.error_logged),
        };
        let first = logged.is_some_and(|done| !std::mem::replace(done, true));
        drop(marks);
        if first {
            match event {
                Ok(_) => tracing::warn!(
                    spool,
                    "Spool watcher lost events (queue overflow): renamed files wait for the steady rule, the periodic scan still finds everything."
                ),
                Err(e) => tracing::warn!(
                    spool,
                    error = %e,
                    "Spool watcher failed: renamed files wait for the steady rule, the periodic scan still finds everything."
                ),
            }
        }
        if wake {
            self.wake.notify_one();
        }
    }
}

/// A watcher on `incoming` feeding `hints`, or `None` (logged) if it cannot
/// be set up, in which case only the periodic scan finds files.
fn watch(spool: &str, incoming: &Path, hints: &Arc<Hints>) -> Option<notify::RecommendedWatcher> {
    let (name, dir, to) = (spool.to_owned(), incoming.to_owned(), Arc::clone(hints));
    let handler = move |event| to.handle(&name, &dir, &event);
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(incoming, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                spool,
                dir = %incoming.display(),
                error = %e,
                "Cannot watch the spool directory: files are found by the periodic scan only."
            );
            None
        }
    }
}

/// Run one spool until cancelled.
pub async fn run(
    spool: SpoolConfig,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
    to_batch: Sender<SourceItem>,
) -> Result<(), StageError> {
    let dirs = SpoolDirs::create(&spool.dir)?;
    let intake = Intake::for_spool(&spool)?;
    let taking = |name: &str| Taking {
        name: name.to_owned(),
        path: dirs.working.join(name),
        max_bytes: spool.max_file_bytes,
        disposal: Disposal::Spool {
            spool: &spool.name,
            dirs: &dirs,
            on_done: spool.on_done,
        },
    };
    // Watch before the first listing, so that no rename falls between the
    // two. Dropped (and stopped) when this returns.
    let hints = Arc::new(Hints::default());
    let _watcher = watch(&spool.name, &dirs.incoming, &hints);
    // Crash recovery: whatever is in working/ was never completed.
    for (name, ..) in list(&dirs.working)? {
        if cancel.is_cancelled() {
            return Ok(());
        }
        tracing::warn!(spool = %spool.name, file = %name, "Resending a file interrupted by a restart.");
        take(&intake, &taking(&name), &telemetry, &cancel, &to_batch).await?;
    }
    let mut settling = Settling::new(spool.scan_interval);
    let mut last_depth = (0u64, 0u64);
    let mut next_scan = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = hints.wake.notified() => {}
            () = tokio::time::sleep_until(next_scan) => {}
        }
        let now = tokio::time::Instant::now();
        next_scan = now + spool.scan_interval;
        let files = match list(&dirs.incoming) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(spool = %spool.name, error = %e, "Spool directory unreadable.");
                continue;
            }
        };
        // Spools share one depth counter (files, bytes): move it by this
        // spool's change.
        let depth = (files.len() as u64, files.iter().map(|f| f.1).sum::<u64>());
        for (counter, now, before) in [
            (&telemetry.spool_depth, depth.0, last_depth.0),
            (&telemetry.spool_bytes, depth.1, last_depth.1),
        ] {
            counter.fetch_add(now, std::sync::atomic::Ordering::Relaxed);
            counter.fetch_sub(before, std::sync::atomic::Ordering::Relaxed);
        }
        last_depth = depth;
        let ready = {
            let marks = hints.marks.lock().unwrap_or_else(PoisonError::into_inner);
            settling.handle_listing(now.into_std(), files, |name| {
                marks.renamed_in.contains(name)
            })
        };
        if let Some(due) = settling.poll_due() {
            next_scan = next_scan.min(tokio::time::Instant::from_std(due));
        }
        for name in ready {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let file = taking(&name);
            if let Err(e) = std::fs::rename(dirs.incoming.join(&name), &file.path) {
                tracing::error!(spool = %spool.name, file = %name, error = %e, "Could not move file to working/.");
                continue;
            }
            take(&intake, &file, &telemetry, &cancel, &to_batch).await?;
        }
    }
}

/// How a spool's files become records.
#[derive(Debug)]
pub enum Intake {
    /// Historian exports, parsed with this format and context.
    Historian(Format, Box<ParseContext>),
    /// Opaque files, sent byte for byte.
    Files(Chunker),
}

impl Intake {
    /// What a spool's config asks for (reads Ignition's tag table once).
    pub fn for_spool(spool: &SpoolConfig) -> Result<Self, StageError> {
        match (spool.kind, spool.format) {
            (SpoolKind::Files, _) => Ok(Self::Files(Chunker::new(spool.chunk_size() as usize))),
            (SpoolKind::Historian, Some(format)) => {
                Ok(Self::Historian(format, Box::new(base_context(spool)?)))
            }
            (SpoolKind::Historian, None) => Err(std::io::Error::other(format!(
                "spool `{}`: a historian spool needs a format",
                spool.name
            ))
            .into()),
        }
    }

    /// Historian exports of `format`, local times read in `tz`, flagged
    /// historical with `backfill` (what `weir-tx send --format` asks for:
    /// no tag, tag table or mapping).
    pub fn historian(format: Format, tz: Option<chrono_tz::Tz>, backfill: bool) -> Self {
        Self::Historian(
            format,
            Box::new(ParseContext {
                tz,
                historical: backfill,
                ..ParseContext::default()
            }),
        )
    }
}

/// What every file of this spool is parsed with: zone, tag, discrete
/// tags, the Ignition tag table (read once at start), the CSV mapping.
fn base_context(spool: &SpoolConfig) -> Result<ParseContext, StageError> {
    let tag_table = match &spool.tag_table {
        Some(path) => {
            let bytes = std::fs::read(path)?;
            let table = weir_shared::formats::ignition::parse_tag_table(&bytes).map_err(|e| {
                std::io::Error::other(format!(
                    "spool `{}`: tag table {}: {e}",
                    spool.name,
                    path.display()
                ))
            })?;
            Some(Arc::new(table))
        }
        None => None,
    };
    Ok(ParseContext {
        file: None,
        tz: spool.tz.as_deref().and_then(|t| t.parse().ok()),
        tag: spool.tag.clone(),
        discrete_tags: spool
            .discrete_tags
            .iter()
            .cloned()
            .collect::<BTreeSet<String>>(),
        tag_table,
        csv_map: spool.csv.clone(),
        historical: spool.backfill,
    })
}

/// One file to take, and what becomes of it.
#[derive(Debug)]
pub struct Taking<'a> {
    /// Its bare name, as records carry it.
    pub name: String,
    /// Where it is now (`working/`, or where an operator named it).
    pub path: PathBuf,
    /// A larger file is refused whole.
    pub max_bytes: u64,
    /// Where it goes once sent, and where refusals are written.
    pub disposal: Disposal<'a>,
}

/// Where a taken file goes, and where what cannot be sent is reported.
#[derive(Debug, Clone, Copy)]
pub enum Disposal<'a> {
    /// A spool file: moved to `done/` or deleted once sent; an unreadable
    /// file is quarantined, rejected lines are written beside it.
    Spool {
        /// Spool name, for logs.
        spool: &'a str,
        /// The spool's directories.
        dirs: &'a SpoolDirs,
        /// Move or delete once sent.
        on_done: OnDone,
    },
    /// An operator's file (`weir-tx send`): left where it is; refusals and
    /// rejected lines are logged.
    Keep,
}

/// What became of a taken file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Every record is with the batcher, and the done marker behind them.
    Handed,
    /// Not sent (or not completely): why. Already quarantined or logged.
    Refused(String),
    /// Cancelled half-way; a spool file stays in `working/` and is sent
    /// again whole after a restart.
    Interrupted,
}

/// Read one file and hand its records to the batcher, followed by the
/// marker that completes the file once they were sent.
pub async fn take(
    intake: &Intake,
    file: &Taking<'_>,
    telemetry: &Telemetry,
    cancel: &CancellationToken,
    to_batch: &Sender<SourceItem>,
) -> Result<Taken, StageError> {
    let taken = match intake {
        Intake::Historian(format, base) => {
            take_export(*format, base, file, telemetry, to_batch).await?
        }
        Intake::Files(chunker) => chunker.take(file, telemetry, cancel, to_batch).await?,
    };
    match (&taken, file.disposal) {
        (Taken::Handed, disposal) => {
            let then = match disposal {
                Disposal::Spool {
                    on_done: OnDone::Move,
                    dirs,
                    ..
                } => AfterSend::Move(dirs.done.join(&file.name)),
                Disposal::Spool {
                    on_done: OnDone::Delete,
                    ..
                } => AfterSend::Delete,
                Disposal::Keep => AfterSend::Keep,
            };
            let done = FileDone {
                working: file.path.clone(),
                then,
            };
            to_batch
                .send(SourceItem::FileDone(Lane::Bulk, done))
                .await
                .map_err(|_| StageError::Closed("source"))?;
        }
        (Taken::Refused(reason), Disposal::Spool { spool, dirs, .. }) => {
            quarantine_file(dirs, &file.name, &file.path, reason);
            add(&telemetry.files_quarantined, 1);
            telemetry.audit.record(
                "file_quarantined",
                serde_json::json!({"spool": spool, "file": file.name, "reason": reason}),
            );
            tracing::warn!(spool, file = %file.name, %reason, "File quarantined.");
        }
        (Taken::Refused(reason), Disposal::Keep) => {
            add(&telemetry.files_quarantined, 1);
            tracing::error!(file = %file.path.display(), %reason, "File not sent.");
        }
        (Taken::Interrupted, _) => {}
    }
    Ok(taken)
}

/// Parse a historian export and hand its points over.
async fn take_export(
    format: Format,
    base: &ParseContext,
    file: &Taking<'_>,
    telemetry: &Telemetry,
    to_batch: &Sender<SourceItem>,
) -> Result<Taken, StageError> {
    let bytes = match std::fs::metadata(&file.path) {
        Ok(m) if m.len() > file.max_bytes => Err(format!(
            "file is {} bytes, above spool.max_file_bytes ({})",
            m.len(),
            file.max_bytes
        )),
        Ok(_) => std::fs::read(&file.path).map_err(|e| format!("unreadable: {e}")),
        Err(e) => Err(format!("unreadable: {e}")),
    };
    let ctx = ParseContext {
        file: Some(file.name.clone()),
        ..base.clone()
    };
    let parsed = bytes.and_then(|b| {
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &b);
        let out = format.parse(&b, &ctx).map_err(|e| e.to_string())?;
        Ok((out, sha256, b.len()))
    });
    let (ParseOutput { points, rejects }, sha256, size) = match parsed {
        Ok(out) => out,
        Err(reason) => return Ok(Taken::Refused(reason)),
    };
    if !rejects.is_empty() {
        add(&telemetry.lines_rejected, rejects.len() as u64);
        report_rejects(file, &rejects);
    }
    audit_taken(
        telemetry,
        file,
        (size as u64, sha256.as_ref()),
        points.len(),
        &rejects,
    );
    add(&telemetry.records_taken, points.len() as u64);
    for p in points {
        to_batch
            .send(SourceItem::Record(Lane::Bulk, Record::Point(p)))
            .await
            .map_err(|_| StageError::Closed("source"))?;
    }
    Ok(Taken::Handed)
}

/// The audit record of a historian export taken: its size and SHA-256,
/// records, and the lines quarantined (the first few, with their reasons).
fn audit_taken(
    telemetry: &Telemetry,
    file: &Taking<'_>,
    (size, sha256): (u64, &[u8]),
    records: usize,
    rejects: &[Reject],
) {
    let spool = match file.disposal {
        Disposal::Spool { spool, .. } => Some(spool),
        Disposal::Keep => None,
    };
    let first: Vec<serde_json::Value> = rejects
        .iter()
        .take(20)
        .map(|r| serde_json::json!({"line": r.line, "reason": r.reason.code()}))
        .collect();
    telemetry.audit.record(
        "file_taken",
        serde_json::json!({"spool": spool, "file": file.name, "kind": "historian", "bytes": size,
            "sha256": weir_shared::audit::hex(sha256.try_into().unwrap_or(&[0; 32])), "records": records}),
    );
    if !rejects.is_empty() {
        telemetry.audit.record(
            "quarantined_lines",
            serde_json::json!({"spool": spool, "file": file.name, "lines": rejects.len(), "first": first}),
        );
    }
}

/// Write rejected lines beside the quarantine (spool) or log them.
fn report_rejects(file: &Taking<'_>, rejects: &[Reject]) {
    let name = &file.name;
    let text = rejects.iter().fold(String::new(), |mut text, r| {
        // Writing to a String cannot fail.
        let _ = writeln!(
            text,
            "{name}:{}: {} ({})",
            r.line,
            r.reason,
            r.reason.code()
        );
        text
    });
    match file.disposal {
        Disposal::Spool { spool, dirs, .. } => {
            let path = dirs.quarantine.join(format!("{name}.rejects"));
            if let Err(e) = std::fs::write(&path, text) {
                tracing::error!(file = %path.display(), error = %e, "Could not write rejected lines.");
            }
            tracing::warn!(spool, file = %name, rejected = rejects.len(), "Lines quarantined.");
        }
        Disposal::Keep => {
            tracing::warn!(file = %file.path.display(), rejected = rejects.len(), lines = %text.trim_end(), "Lines rejected.");
        }
    }
}

/// Cuts opaque files into [`FileChunk`]s, keeping at most a byte budget of
/// them queued toward the batcher.
#[derive(Debug)]
pub struct Chunker {
    chunk_bytes: usize,
    budget: Arc<Semaphore>,
}

/// What the hashing pass learned about a file.
struct Hashed {
    sha256: [u8; 32],
    /// The file as it was before the hashing pass read it (its size is
    /// the size hashed).
    stamp: Stamp,
}

/// What changes whenever a file's content does: inode, size, modification
/// and change times. The change time cannot be set from user space, and
/// since Linux 6.13 a change right after a `stat` gets a fresh one even
/// within the same clock tick; a change it still misses shows at the
/// receiver, whose SHA-256 check of the whole file then fails (reported,
/// never delivered as good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Modification time, ns since the epoch (saturating).
    fn mtime_ns(&self) -> i64 {
        self.mtime
            .0
            .saturating_mul(1_000_000_000)
            .saturating_add(self.mtime.1)
    }
}

impl Chunker {
    /// Chunks of `chunk_bytes` (validated against the bulk lane already).
    pub fn new(chunk_bytes: usize) -> Self {
        let chunk_bytes = chunk_bytes.max(1);
        let budget = CHUNK_BUDGET_BYTES.max(2 * chunk_bytes);
        Self {
            chunk_bytes,
            budget: Arc::new(Semaphore::new(budget)),
        }
    }

    /// How many chunks a file of `size` bytes makes (an empty file makes
    /// one empty chunk, so it still arrives).
    pub fn chunks_for(&self, size: u64) -> u64 {
        size.div_ceil(self.chunk_bytes as u64).max(1)
    }

    async fn take(
        &self,
        file: &Taking<'_>,
        telemetry: &Telemetry,
        cancel: &CancellationToken,
        to_batch: &Sender<SourceItem>,
    ) -> Result<Taken, StageError> {
        if file.name.len() > MAX_FILE_NAME_BYTES {
            return Ok(Taken::Refused(format!(
                "file name longer than {MAX_FILE_NAME_BYTES} bytes"
            )));
        }
        // Pass 1: size, mtime and SHA-256, read on a blocking thread.
        let (path, max, stop) = (file.path.clone(), file.max_bytes, cancel.clone());
        let hashed = tokio::task::spawn_blocking(move || hash_file(&path, max, &stop))
            .await
            .map_err(|e| std::io::Error::other(format!("hashing task: {e}")))?;
        let hashed = match hashed {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(Taken::Interrupted),
            Err(reason) => return Ok(Taken::Refused(reason)),
        };
        let Ok(chunks) = u32::try_from(self.chunks_for(hashed.stamp.len)) else {
            return Ok(Taken::Refused(format!(
                "file of {} bytes makes more than 2^32 chunks of {} bytes",
                hashed.stamp.len, self.chunk_bytes
            )));
        };
        // Pass 2: the chunks. Before the last leaves, the file must be as
        // the hashing pass found it (a second hash would cost as much
        // again as the first).
        let mut reader = match tokio::fs::File::open(&file.path).await {
            Ok(f) => f,
            Err(e) => return Ok(Taken::Refused(format!("unreadable: {e}"))),
        };
        let file_id = telemetry.file_transfers.fetch_add(1, Ordering::Relaxed);
        add(&telemetry.records_taken, u64::from(chunks));
        telemetry.audit.record(
            "file_taken",
            serde_json::json!({"file": file.name, "kind": "files", "file_id": file_id,
                "bytes": hashed.stamp.len, "sha256": weir_shared::audit::hex(&hashed.sha256), "chunks": chunks}),
        );
        for index in 0..chunks {
            if cancel.is_cancelled() {
                return Ok(Taken::Interrupted);
            }
            let offset = u64::from(index) * self.chunk_bytes as u64;
            // Below chunk_bytes, so it fits a usize.
            let len = (hashed.stamp.len - offset).min(self.chunk_bytes as u64) as usize;
            let permit = self
                .budget
                .clone()
                .acquire_many_owned(u32::try_from(len.max(1)).unwrap_or(u32::MAX))
                .await
                .map_err(|_| StageError::Closed("source"))?;
            let mut data = vec![0; len];
            if let Err(e) = reader.read_exact(&mut data).await {
                return Ok(Taken::Refused(format!(
                    "read failed at offset {offset} (sent {index} of {chunks} chunks): {e}"
                )));
            }
            if index + 1 == chunks {
                let now = reader.metadata().await.map(|m| Stamp::of(&m));
                if now.ok() != Some(hashed.stamp) {
                    return Ok(Taken::Refused(format!(
                        "file changed while being sent (last of {chunks} chunks withheld)"
                    )));
                }
            }
            let chunk = FileChunk {
                seq: 0,
                file_id,
                name: file.name.clone(),
                size: hashed.stamp.len,
                mtime_ns: hashed.stamp.mtime_ns(),
                sha256: hashed.sha256,
                offset,
                index,
                chunks,
                data,
            };
            to_batch
                .send(SourceItem::Chunk(chunk, permit))
                .await
                .map_err(|_| StageError::Closed("source"))?;
        }
        Ok(Taken::Handed)
    }
}

/// The hashing pass: `Ok(None)` when cancelled, `Err` with a reason when
/// the file cannot be sent.
fn hash_file(
    path: &Path,
    max_bytes: u64,
    cancel: &CancellationToken,
) -> Result<Option<Hashed>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("unreadable: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("unreadable: {e}"))?;
    if meta.len() > max_bytes {
        return Err(format!(
            "file is {} bytes, above spool.max_file_bytes ({max_bytes})",
            meta.len()
        ));
    }
    let stamp = Stamp::of(&meta);
    let mut ctx = Sha256::new(&SHA256);
    let mut buf = vec![0; HASH_READ_BYTES];
    let mut size = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read failed at offset {size}: {e}")),
        };
        ctx.update(&buf[..n]);
        size += n as u64;
        if size > max_bytes {
            return Err(format!(
                "file grew above spool.max_file_bytes ({max_bytes}) while being read"
            ));
        }
    }
    let mut sha256 = [0; 32];
    sha256.copy_from_slice(ctx.finish().as_ref());
    if size != stamp.len {
        return Err(format!(
            "file is {size} bytes but was {} bytes when opened: changed while being read",
            stamp.len
        ));
    }
    Ok(Some(Hashed { sha256, stamp }))
}

fn quarantine_file(dirs: &SpoolDirs, name: &str, working: &Path, reason: &str) {
    let to = dirs.quarantine.join(name);
    if let Err(e) = std::fs::rename(working, &to) {
        tracing::error!(file = %working.display(), error = %e, "Could not quarantine file.");
    }
    let why = dirs.quarantine.join(format!("{name}.reason"));
    if let Err(e) = std::fs::write(&why, format!("{reason}\n")) {
        tracing::error!(file = %why.display(), error = %e, "Could not write quarantine reason.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use notify::event::{CreateKind, DataChange, Flag, RemoveKind};
    use std::time::UNIX_EPOCH;

    #[test]
    fn temporary_names_are_never_taken() {
        assert!(eligible_name("export_0800.json"));
        assert!(!eligible_name(".export_0800.json"));
        assert!(!eligible_name("export.json.tmp"));
        assert!(!eligible_name("export.json.part"));
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn file(name: &str, size: u64, mtime_s: u64) -> (String, u64, SystemTime) {
        (
            name.to_owned(),
            size,
            UNIX_EPOCH + Duration::from_secs(mtime_s),
        )
    }

    #[test]
    fn a_file_is_complete_once_steady_for_an_interval() {
        let t0 = Instant::now();
        let mut s = Settling::new(30 * SECOND);
        let no = |_: &str| false;
        assert!(s.handle_listing(t0, vec![file("a", 10, 1)], no).is_empty());
        assert_eq!(s.poll_due(), Some(t0 + 30 * SECOND));
        // Wake-up scans in between do not shorten the interval.
        for k in 1..30 {
            let at = t0 + k * SECOND;
            assert!(s.handle_listing(at, vec![file("a", 10, 1)], no).is_empty());
        }
        assert_eq!(s.poll_due(), Some(t0 + 30 * SECOND));
        assert_eq!(
            s.handle_listing(t0 + 30 * SECOND, vec![file("a", 10, 1)], no),
            vec!["a".to_owned()]
        );
        assert_eq!(s.poll_due(), None);
    }

    #[test]
    fn a_change_restarts_the_interval_and_gone_files_are_forgotten() {
        let t0 = Instant::now();
        let mut s = Settling::new(SECOND);
        let no = |_: &str| false;
        let listing = |size, mtime| vec![file("a", size, mtime), file("b", 5, 1)];
        assert!(s.handle_listing(t0, listing(10, 1), no).is_empty());
        // `a` grew, `b` did not.
        let t1 = t0 + SECOND;
        assert_eq!(
            s.handle_listing(t1, listing(20, 1), no),
            vec!["b".to_owned()]
        );
        assert_eq!(s.poll_due(), Some(t1 + SECOND));
        // Touched: same size, new mtime.
        let t2 = t1 + SECOND;
        assert!(s.handle_listing(t2, vec![file("a", 20, 2)], no).is_empty());
        // Gone, then back: seen anew.
        assert!(s.handle_listing(t2 + SECOND, vec![], no).is_empty());
        assert_eq!(s.poll_due(), None);
        let t3 = t2 + 2 * SECOND;
        assert!(s.handle_listing(t3, vec![file("a", 20, 2)], no).is_empty());
        assert_eq!(s.poll_due(), Some(t3 + SECOND));
    }

    #[test]
    fn a_renamed_in_file_is_complete_at_once() {
        let t0 = Instant::now();
        let mut s = Settling::new(30 * SECOND);
        let ready = s.handle_listing(t0, vec![file("a", 10, 1), file("b", 10, 1)], |n| n == "b");
        assert_eq!(ready, vec!["b".to_owned()]);
        assert_eq!(s.pending.keys().collect::<Vec<_>>(), vec!["a"]);
    }

    fn event(kind: EventKind, path: &Path) -> notify::Event {
        notify::Event::new(kind).add_path(path.to_owned())
    }

    #[test]
    fn watcher_events_mark_renames_and_wake_only_when_useful() {
        let dir = Path::new("/spool/incoming");
        let a = dir.join("a.csv");
        let mut m = Marks::default();
        let renamed_to = EventKind::Modify(ModifyKind::Name(RenameMode::To));

        // Renamed in: marked, wakes.
        assert!(m.handle_event(dir, &event(renamed_to, &a)));
        assert!(m.renamed_in.contains("a.csv"));
        // Written after the rename: unmarked, no wake-up per write.
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(!m.handle_event(dir, &event(write, &a)));
        assert!(m.renamed_in.is_empty());
        // Created in place: wakes (its interval starts), never marked.
        assert!(m.handle_event(dir, &event(EventKind::Create(CreateKind::File), &a)));
        assert!(m.renamed_in.is_empty());
        // Closed after writing: wakes.
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(m.handle_event(dir, &event(closed, &a)));
        // Renamed away (by the scan itself) or removed: unmarked, no wake.
        assert!(m.handle_event(dir, &event(renamed_to, &a)));
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert!(!m.handle_event(dir, &event(from, &a)));
        assert!(m.renamed_in.is_empty());
        assert!(m.handle_event(dir, &event(renamed_to, &a)));
        let removed = EventKind::Remove(RemoveKind::File);
        assert!(!m.handle_event(dir, &event(removed, &a)));
        assert!(m.renamed_in.is_empty());
    }

    #[test]
    fn the_scan_does_not_wake_itself_and_temporary_names_are_ignored() {
        let dir = Path::new("/spool/incoming");
        let mut m = Marks::default();
        // `read_dir` opens and closes the directory itself.
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!m.handle_event(dir, &event(kind, dir)));
        }
        let renamed_to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(!m.handle_event(dir, &event(renamed_to, &dir.join("a.csv.part"))));
        assert!(!m.handle_event(dir, &event(renamed_to, &dir.join(".hidden"))));
        // The directory itself renamed: not an entry.
        assert!(!m.handle_event(dir, &event(renamed_to, dir)));
        assert!(m.renamed_in.is_empty());
    }

    #[test]
    fn an_overflow_drops_every_mark_and_wakes() {
        let dir = Path::new("/spool/incoming");
        let mut m = Marks::default();
        let renamed_to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(m.handle_event(dir, &event(renamed_to, &dir.join("a.csv"))));
        let overflow = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert!(m.handle_event(dir, &overflow));
        assert!(m.renamed_in.is_empty());
    }

    #[test]
    fn watcher_errors_drop_marks_wake_and_are_logged_once() {
        let dir = Path::new("/spool/incoming");
        let hints = Hints::default();
        let renamed_to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        hints.handle("s", dir, &Ok(event(renamed_to, &dir.join("a.csv"))));
        assert!(
            hints
                .marks
                .lock()
                .expect("lock")
                .renamed_in
                .contains("a.csv")
        );
        for _ in 0..3 {
            hints.handle("s", dir, &Err(notify::Error::generic("boom")));
        }
        let marks = hints.marks.lock().expect("lock");
        assert!(marks.renamed_in.is_empty());
        assert!(marks.error_logged);
        assert!(!marks.overflow_logged);
    }

    #[tokio::test]
    async fn a_file_changed_after_hashing_is_refused_before_its_last_chunk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data.bin");
        std::fs::write(&path, vec![7u8; 4096]).expect("write");
        let chunker = Chunker::new(1024);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let telemetry = Telemetry::default();
        let cancel = CancellationToken::new();
        let file = Taking {
            name: "data.bin".into(),
            path: path.clone(),
            max_bytes: 1 << 20,
            disposal: Disposal::Keep,
        };
        let take = chunker.take(&file, &telemetry, &cancel, &tx);
        let change = async {
            // The first chunk is out, so the file was hashed; with room for
            // one chunk in the queue the last one has not been read yet.
            let first = rx.recv().await;
            assert!(matches!(first, Some(SourceItem::Chunk(..))));
            // Rewritten in place: same size, no truncation on the way.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open for writing");
            std::io::Write::write_all(&mut f, &[8u8; 4096]).expect("rewrite");
            let mut more = 0;
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            {
                more += 1;
            }
            more
        };
        let (taken, more) = tokio::join!(take, change);
        match taken.expect("take") {
            Taken::Refused(why) => assert!(why.contains("changed while being sent"), "{why}"),
            _ => panic!("a changed file was handed whole"),
        }
        assert!(more < 3, "the last chunk was withheld ({more} more chunks)");
    }
}
