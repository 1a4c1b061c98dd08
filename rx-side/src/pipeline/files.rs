//! Stage `files`: file chunks → staging files → the output directory.
//!
//! ```text
//!  validate ──FileWork::Block (session, lane, seq, chunks)──> FileAssembler ──write_at──> <staging>/<session>-<id>.part
//!  decode ──FileWork::Lost (lost block range)─────────────────>     │
//!  tick (1 s) ──> poll_timeouts ──> incomplete: staging removed, counted, event ──> outbox (gaps topic)
//!                      complete ──> fsync, SHA-256, mtime ──link──> <output>/<name> (or <name>.1 …)
//! ```
//!
//! The decisions (is a name acceptable, which bytes arrived, is a file
//! whole, will it ever be) are the sans-IO [`FileAssembler`]'s; this shell
//! only writes, verifies and renames, on blocking threads.
//!
//! * **Idempotent writes.** A chunk is written at its offset (`pwrite`),
//!   never appended, so a block delivered again (an outbox rewind or a
//!   replay after a restart) rewrites the same bytes.
//! * **Nothing half-written in the output.** A file is assembled in the
//!   staging directory (on the output's filesystem) and appears in the
//!   output directory only after it was fsynced and its SHA-256 matched, by
//!   a hard link (atomic, never replaces an existing file).
//! * **No silent overwrite.** If `<name>` exists with the same content,
//!   the file had already been delivered (a replay): it is not written
//!   again (`files_duplicate`). If it exists with other content, the file
//!   is written as `<name>.1`, `<name>.2`, … up to `<name>.99`; past that
//!   it is refused and reported.
//! * **Every file that does not arrive is counted and reported** on the
//!   gaps topic: incomplete (which bytes are missing), corrupt (SHA-256
//!   mismatch) or refused (bad name, limits, I/O error). Its staging file is
//!   removed: a diode cannot ask for the missing bytes, and a resend is a
//!   new transfer.
//! * **Restarts.** The assembler's state is in memory: files in progress
//!   when the receiver stops are not resumed (their staging files are
//!   removed at start). A file whose fate was decided leaves a small
//!   `<session>-<id>.done` marker in the staging directory (kept 7 days),
//!   so chunks of it replayed from the outbox after a restart are ignored
//!   instead of starting the file again.
//!
//! Full-queue policy: `validate` waits for this stage (the backlog stays in
//! the outbox on disk); lost-block notices from `decode` never wait.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ring::digest::{Context as Sha256, SHA256};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Receiver, Sender, WeakSender};
use tokio::task::JoinSet;
use weir_shared::config::{ValidFiles, ValidRx};
use weir_shared::contract::rfc3339_ns;
use weir_shared::files::{
    ChunkOutcome, FileAssembler, FileError, FileKey, Incomplete, IncompleteCause,
};
use weir_shared::lane::Lane;
use weir_shared::reassembly::LostRange;
use weir_shared::record::{FileChunk, Record};
use weir_shared::wire::SessionId;

use super::outbox::Item;
use super::publish::Topics;
use super::{Message, OpenedBlock, StageError, now, send_event};
use crate::stats::{RxStats, add};

/// How often files are checked for timeouts.
const TICK: Duration = Duration::from_secs(1);

/// Outcome markers older than this are removed at start.
const MARKER_KEEP: Duration = Duration::from_hours(7 * 24);

/// Most `<name>.N` tried when `<name>` is taken.
const MAX_SUFFIX: u32 = 99;

/// Read buffer of the SHA-256 pass.
const HASH_READ_BYTES: usize = 1 << 20;

/// What the file stage is told.
#[derive(Debug)]
pub enum FileWork {
    /// A block passed `validate`, with the file chunks it carried (often
    /// none: the block itself tells the assembler what is no longer in
    /// transit).
    Block {
        /// Sender session.
        session: SessionId,
        /// Lane.
        lane: Lane,
        /// Block sequence number.
        seq: u64,
        /// The file chunks of the block.
        chunks: Vec<FileChunk>,
    },
    /// Blocks the reassembler declared lost.
    Lost(LostRange),
}

/// Hand a block's file chunks to the file stage, from `validate`. Without a
/// file output (`to_files` is `None`) chunks are dropped, with one warning.
pub(crate) async fn forward(
    to_files: Option<&Sender<FileWork>>,
    block: &OpenedBlock,
    records: Vec<Record>,
) -> Result<(), StageError> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let chunks: Vec<FileChunk> = records
        .into_iter()
        .filter_map(|r| match r {
            Record::FileChunk(c) => Some(c),
            _ => None,
        })
        .collect();
    let Some(to_files) = to_files else {
        if !chunks.is_empty() && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "File chunks received but no [files] output is configured: they are counted \
                 (file_chunks) and dropped. This is logged once."
            );
        }
        return Ok(());
    };
    let hint_only = chunks.is_empty();
    if hint_only && block.lane != Lane::Bulk {
        return Ok(());
    }
    let work = FileWork::Block {
        session: block.session,
        lane: block.lane,
        seq: block.seq,
        chunks,
    };
    if hint_only {
        // A block without chunks only says how far the lane got: never
        // wait for it (a dropped hint at worst delays a verdict).
        return match to_files.try_send(work) {
            Err(TrySendError::Closed(_)) => Err(StageError::Closed("validate (files)")),
            Ok(()) | Err(TrySendError::Full(_)) => Ok(()),
        };
    }
    to_files
        .send(work)
        .await
        .map_err(|_| StageError::Closed("validate (files)"))
}

/// Tell the file stage of lost blocks, from `decode`, without waiting.
pub(crate) fn notify_lost(to_files: Option<&Sender<FileWork>>, lost: LostRange) {
    let Some(tx) = to_files else { return };
    if let Err(TrySendError::Full(w)) = tx.try_send(FileWork::Lost(lost)) {
        let tx = tx.clone();
        tokio::spawn(async move { tx.send(w).await });
    }
}

/// The file stage, ready to run: its directories exist and were swept.
pub struct FileStage {
    cfg: ValidFiles,
    input: Receiver<FileWork>,
}

/// When `[files]` is configured: prepare the stage and spawn it into
/// `tasks`; returns the sender `decode` and `validate` feed it through.
pub(crate) fn start(
    cfg: &ValidRx,
    tasks: &mut JoinSet<Result<(), StageError>>,
    topics: &Topics,
    stats: &Arc<RxStats>,
    to_outbox: &Sender<Item>,
) -> anyhow::Result<Option<Sender<FileWork>>> {
    let Some(files) = &cfg.files else {
        return Ok(None);
    };
    let (stage, tx) = prepare(files)?;
    tasks.spawn(run(
        stage,
        topics.clone(),
        stats.clone(),
        to_outbox.downgrade(),
    ));
    tracing::info!(output = %files.output_dir.display(), staging = %files.staging_dir.display(),
        "File output enabled.");
    Ok(Some(tx))
}

/// Create the file output's directories, check them, sweep what an earlier
/// run left in staging, and return the stage and the sender of its input.
pub fn prepare(cfg: &ValidFiles) -> anyhow::Result<(FileStage, Sender<FileWork>)> {
    std::fs::create_dir_all(&cfg.output_dir)
        .with_context(|| format!("files.output_dir {}", cfg.output_dir.display()))?;
    std::fs::create_dir_all(&cfg.staging_dir)
        .with_context(|| format!("files.staging_dir {}", cfg.staging_dir.display()))?;
    let out_dev = std::fs::metadata(&cfg.output_dir)?.dev();
    let staging_dev = std::fs::metadata(&cfg.staging_dir)?.dev();
    anyhow::ensure!(
        out_dev == staging_dev,
        "files.staging_dir {} is not on the filesystem of files.output_dir {}: finished files \
         are moved by a link, which cannot cross filesystems",
        cfg.staging_dir.display(),
        cfg.output_dir.display()
    );
    sweep_staging(&cfg.staging_dir)?;
    let (tx, input) = tokio::sync::mpsc::channel(64);
    Ok((
        FileStage {
            cfg: cfg.clone(),
            input,
        },
        tx,
    ))
}

/// Remove staging files of an earlier run (they cannot be resumed) and old
/// outcome markers.
fn sweep_staging(dir: &Path) -> anyhow::Result<()> {
    let mut stale = 0u64;
    let wall = SystemTime::now();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let old_marker = path.extension().is_some_and(|e| e == "done")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| wall.duration_since(t).unwrap_or_default() > MARKER_KEEP);
        if !is_ours(&path) {
            continue;
        }
        if path.extension().is_some_and(|e| e == "part") {
            stale += 1;
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        } else if old_marker {
            let _ = std::fs::remove_file(&path);
        }
    }
    if stale > 0 {
        tracing::warn!(
            files = stale,
            dir = %dir.display(),
            "Removed partial files of an earlier run from staging: files in progress at a \
             restart are not resumed."
        );
    }
    Ok(())
}

/// An open staging file.
struct Staged {
    file: Arc<std::fs::File>,
    path: PathBuf,
}

/// What finishing a complete file did.
enum Finished {
    /// Linked into the output directory under this path.
    Placed(PathBuf),
    /// An identical file was already there (a replay).
    AlreadyThere(PathBuf),
    /// The SHA-256 of the assembled bytes did not match.
    Corrupt([u8; 32]),
    /// `<name>` and every `<name>.N` were taken.
    NoName,
}

/// A log line at most once a second.
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// Whether to log now; otherwise the event is counted as suppressed.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

struct Shell {
    core: FileAssembler,
    cfg: ValidFiles,
    open: HashMap<FileKey, Staged>,
    stats: Arc<RxStats>,
    topics: Topics,
    events: WeakSender<Item>,
    chunk_warn: RateLimit,
}

/// Run until every input (`validate`, `decode`) has closed.
///
/// Events go to the outbox through a weak sender: this stage ends after
/// the outbox's writer (it drains what the outbox's readers still hand
/// `validate`), so it must not keep the writer's input open.
pub async fn run(
    stage: FileStage,
    topics: Topics,
    stats: Arc<RxStats>,
    events: WeakSender<Item>,
) -> Result<(), StageError> {
    let FileStage { cfg, mut input } = stage;
    let mut shell = Shell {
        core: FileAssembler::new(cfg.limits),
        cfg,
        open: HashMap::new(),
        stats,
        topics,
        events,
        chunk_warn: RateLimit {
            last: None,
            suppressed: 0,
        },
    };
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            w = input.recv() => match w {
                Some(FileWork::Block { session, lane, seq, chunks }) => {
                    shell.block(session, lane, seq, chunks).await;
                }
                Some(FileWork::Lost(lost)) => shell.core.handle_lost(lost),
                None => break,
            },
            _ = tick.tick() => shell.poll().await,
        }
    }
    shell.poll().await;
    if shell.core.in_progress() > 0 {
        tracing::warn!(
            files = shell.core.in_progress(),
            "Stopping with files in progress: they are not resumed after a restart."
        );
    }
    Ok(())
}

impl Shell {
    async fn block(&mut self, session: SessionId, lane: Lane, seq: u64, chunks: Vec<FileChunk>) {
        self.core.handle_block(session, lane, seq);
        let mut writes = Vec::new();
        let mut complete = Vec::new();
        for c in chunks {
            let key = FileKey {
                session,
                file_id: c.file_id,
            };
            if !self.core.knows(key)
                && tokio::fs::try_exists(marker(&self.cfg.staging_dir, key))
                    .await
                    .unwrap_or(false)
            {
                // Decided before a restart; these are replayed chunks.
                self.core.abandon(key);
            }
            match self.core.handle_chunk(now(), session, lane, seq, &c) {
                Ok(ChunkOutcome::Accepted {
                    new_file,
                    complete: done,
                    ..
                }) => {
                    if new_file && let Err(e) = self.create(key, &c).await {
                        self.fail(key, &c.name, c.size, &format!("staging file: {e}"))
                            .await;
                        continue;
                    }
                    let Some(staged) = self.open.get(&key) else {
                        continue;
                    };
                    if done {
                        complete.push((key, c.name.clone(), c.size, c.sha256, c.mtime_ns));
                    }
                    writes.push((key, c.name, c.size, staged.file.clone(), c.offset, c.data));
                }
                Ok(ChunkOutcome::Duplicate | ChunkOutcome::Finished) => {}
                Err(e) => self.refused(key, &c, e).await,
            }
        }
        if !writes.is_empty() {
            let files: Vec<(FileKey, String, u64)> = writes
                .iter()
                .map(|(k, name, size, ..)| (*k, name.clone(), *size))
                .collect();
            let failed = tokio::task::spawn_blocking(move || {
                let mut failed = Vec::new();
                for (i, (_, _, _, file, offset, data)) in writes.into_iter().enumerate() {
                    if let Err(e) = file.write_all_at(&data, offset) {
                        failed.push((i, e.to_string()));
                    }
                }
                failed
            })
            .await
            .unwrap_or_else(|e| (0..files.len()).map(|i| (i, e.to_string())).collect());
            for (i, e) in failed {
                let Some((key, name, size)) = files.get(i) else {
                    continue;
                };
                if self.open.contains_key(key) {
                    self.fail(*key, name, *size, &format!("write failed: {e}"))
                        .await;
                }
                complete.retain(|(k, ..)| k != key);
            }
        }
        for (key, name, size, sha256, mtime_ns) in complete {
            self.finish(key, name, size, sha256, mtime_ns).await;
        }
    }

    /// Create (or reopen: a replay writes the same bytes) the staging file.
    async fn create(&mut self, key: FileKey, c: &FileChunk) -> std::io::Result<()> {
        let path = self.cfg.staging_dir.join(format!("{}.part", stem(key)));
        let size = c.size;
        let p = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)?;
            f.set_len(size)?;
            Ok::<_, std::io::Error>(f)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.open.insert(
            key,
            Staged {
                file: Arc::new(file),
                path,
            },
        );
        Ok(())
    }

    /// Verify a complete file and move it into the output directory.
    async fn finish(
        &mut self,
        key: FileKey,
        name: String,
        size: u64,
        sha256: [u8; 32],
        mtime_ns: i64,
    ) {
        let Some(staged) = self.open.remove(&key) else {
            return;
        };
        let out_dir = self.cfg.output_dir.clone();
        let n = name.clone();
        let result = tokio::task::spawn_blocking(move || {
            finish_file(&staged, &out_dir, &n, size, &sha256, mtime_ns)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let stem = stem(key);
        match result {
            Ok(Finished::Placed(path)) => {
                add(&self.stats.files_done, 1);
                tracing::info!(file = ?name, bytes = size, path = %path.display(), "File received.");
                self.stats.audit.record(
                    "file_delivered",
                    serde_json::json!({"session": key.session.short_hex(), "file_id": key.file_id,
                        "name": name, "bytes": size, "sha256": weir_shared::audit::hex(&sha256)}),
                );
            }
            Ok(Finished::AlreadyThere(path)) => {
                add(&self.stats.files_duplicate, 1);
                tracing::info!(file = ?name, path = %path.display(),
                    "File received again (a replay): identical to the one already delivered.");
            }
            Ok(Finished::Corrupt(actual)) => {
                add(&self.stats.files_corrupt, 1);
                tracing::error!(file = ?name, bytes = size, "File refused: SHA-256 mismatch.");
                self.event(serde_json::json!({
                    "type": "file_corrupt", "session": key.session.short_hex(), "file_id": key.file_id,
                    "name": name, "size": size, "sha256_expected": hex(&sha256), "sha256_actual": hex(&actual),
                }));
            }
            Ok(Finished::NoName) => {
                add(&self.stats.files_refused, 1);
                tracing::error!(file = ?name, "File refused: the name and {MAX_SUFFIX} numbered variants exist.");
                self.event(refused_body(
                    key,
                    &name,
                    size,
                    "output name and its numbered variants taken",
                ));
            }
            Err(e) => {
                add(&self.stats.files_refused, 1);
                tracing::error!(file = ?name, error = %e, "File could not be finished.");
                self.event(refused_body(
                    key,
                    &name,
                    size,
                    &format!("finishing failed: {e}"),
                ));
            }
        }
        let staging = self.cfg.staging_dir.join(format!("{stem}.part"));
        let _ = tokio::fs::remove_file(&staging).await;
        self.mark(key).await;
    }

    /// A chunk (or its whole file) the assembler refused.
    async fn refused(&mut self, key: FileKey, c: &FileChunk, e: FileError) {
        if matches!(
            e,
            FileError::Name(_) | FileError::TooManyFiles { .. } | FileError::TooLarge { .. }
        ) {
            add(&self.stats.files_refused, 1);
            tracing::error!(session = %key.session.short_hex(), file_id = key.file_id, file = ?shorten(&c.name),
                size = c.size, error = %e, "File refused.");
            self.event(refused_body(key, &shorten(&c.name), c.size, &e.to_string()));
            self.mark(key).await;
            return;
        }
        add(&self.stats.file_chunks_refused, 1);
        if let Some(suppressed) = self.chunk_warn.allow(now()) {
            tracing::warn!(session = %key.session.short_hex(), file_id = key.file_id, offset = c.offset,
                error = %e, suppressed, "File chunk refused.");
        }
    }

    /// A file that cannot continue: stop it, remove its staging file,
    /// count and report it.
    async fn fail(&mut self, key: FileKey, name: &str, size: u64, reason: &str) {
        self.core.abandon(key);
        if let Some(s) = self.open.remove(&key) {
            let _ = tokio::fs::remove_file(&s.path).await;
        }
        add(&self.stats.files_refused, 1);
        tracing::error!(session = %key.session.short_hex(), file_id = key.file_id, file = ?name, %reason,
            "File given up.");
        self.event(refused_body(key, name, size, reason));
        self.mark(key).await;
    }

    /// Give up files that will not complete.
    async fn poll(&mut self) {
        self.core.poll_timeouts(now());
        while let Some(inc) = self.core.poll_incomplete() {
            if let Some(s) = self.open.remove(&inc.key) {
                let _ = tokio::fs::remove_file(&s.path).await;
            }
            add(&self.stats.files_incomplete, 1);
            tracing::warn!(session = %inc.key.session.short_hex(), file_id = inc.key.file_id, file = ?inc.name,
                size = inc.size, missing_bytes = inc.missing_bytes, missing_ranges = inc.missing_ranges,
                "File incomplete: bytes missing; not written to the output directory.");
            self.event(incomplete_body(&inc));
            self.mark(inc.key).await;
        }
    }

    /// Leave the outcome marker of a decided file.
    async fn mark(&self, key: FileKey) {
        let path = marker(&self.cfg.staging_dir, key);
        if let Err(e) = tokio::fs::write(&path, b"").await {
            tracing::debug!(path = %path.display(), error = %e, "Could not write a file outcome marker.");
        }
    }

    /// Publish an event on the gaps topic, through the outbox.
    fn event(&self, mut body: serde_json::Value) {
        let unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        body["ts"] = serde_json::Value::String(rfc3339_ns(unix_ns));
        let msg = Message::event(&self.topics.gaps, &body);
        if let Some(tx) = self.events.upgrade() {
            send_event(&tx, msg);
        } else {
            tracing::error!(event = %body, "Receiver stopping: file event not published.");
        }
    }
}

/// `<session hex>-<file id>`: the staging name of a transfer.
fn stem(key: FileKey) -> String {
    format!("{}-{}", hex(&key.session.0), key.file_id)
}

/// Whether `path` is named like a staging file or marker of ours
/// (`<32 hex>-<digits>.part|.done`): a shared staging directory keeps
/// everything else.
fn is_ours(path: &Path) -> bool {
    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
        return false;
    };
    let Some((session, id)) = stem.split_once('-') else {
        return false;
    };
    session.len() == 32
        && session.bytes().all(|b| b.is_ascii_hexdigit())
        && !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
}

fn marker(staging: &Path, key: FileKey) -> PathBuf {
    staging.join(format!("{}.done", stem(key)))
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// An untrusted name cut to a loggable length.
fn shorten(name: &str) -> String {
    if name.len() <= 255 {
        return name.to_owned();
    }
    let mut end = 255;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

fn refused_body(key: FileKey, name: &str, size: u64, reason: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "file_refused", "session": key.session.short_hex(), "file_id": key.file_id,
        "name": name, "size": size, "reason": reason,
    })
}

fn incomplete_body(inc: &Incomplete) -> serde_json::Value {
    let mut body = serde_json::json!({
        "type": "file_incomplete", "session": inc.key.session.short_hex(), "file_id": inc.key.file_id,
        "name": inc.name, "size": inc.size, "received_bytes": inc.received_bytes,
        "missing_bytes": inc.missing_bytes, "missing_ranges": inc.missing_ranges,
        "missing": inc.missing.iter().map(|(s, e)| [s, e]).collect::<Vec<_>>(),
    });
    match inc.cause {
        IncompleteCause::BlocksLost { lane, first, last } => {
            body["cause"] = "blocks_lost".into();
            body["lane"] = lane.as_str().into();
            body["first_block"] = first.into();
            body["last_block"] = last.into();
        }
        IncompleteCause::NoProgress { idle } => {
            body["cause"] = "no_progress".into();
            body["idle_ms"] = (idle.as_millis() as u64).into();
        }
    }
    body
}

fn system_time(ns: i64) -> Option<SystemTime> {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

/// SHA-256 of a file's first `size` bytes.
fn sha256_of(file: &std::fs::File, size: u64) -> std::io::Result<[u8; 32]> {
    let mut ctx = Sha256::new(&SHA256);
    let mut buf = vec![0; HASH_READ_BYTES];
    let mut at = 0u64;
    while at < size {
        let want = (size - at).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "file shorter than its declared size",
            ));
        }
        ctx.update(&buf[..n]);
        at += n as u64;
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// Fsync, verify, stamp and link a complete staging file into `out_dir`.
/// Blocking.
fn finish_file(
    staged: &Staged,
    out_dir: &Path,
    name: &str,
    size: u64,
    sha256: &[u8; 32],
    mtime_ns: i64,
) -> std::io::Result<Finished> {
    let file = &staged.file;
    file.sync_all()?;
    let actual = sha256_of(file, size)?;
    if &actual != sha256 {
        return Ok(Finished::Corrupt(actual));
    }
    if let Some(t) = system_time(mtime_ns) {
        file.set_modified(t)?;
    }
    for n in 0..=MAX_SUFFIX {
        let dest = if n == 0 {
            out_dir.join(name)
        } else {
            out_dir.join(format!("{name}.{n}"))
        };
        match std::fs::hard_link(&staged.path, &dest) {
            Ok(()) => {
                std::fs::File::open(out_dir)?.sync_all()?;
                return Ok(Finished::Placed(dest));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if same_content(&dest, size, sha256) {
                    return Ok(Finished::AlreadyThere(dest));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Finished::NoName)
}

/// Whether `path` is a regular file of `size` bytes with this SHA-256.
fn same_content(path: &Path, size: u64, sha256: &[u8; 32]) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() != size {
        return false;
    }
    std::fs::File::open(path)
        .and_then(|f| sha256_of(&f, size))
        .is_ok_and(|h| &h == sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(dir: &Path, name: &str, data: &[u8]) -> Staged {
        let path = dir.join(name);
        std::fs::write(&path, data).expect("staging write");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        Staged {
            file: Arc::new(file),
            path,
        }
    }

    fn sha(data: &[u8]) -> [u8; 32] {
        let mut out = [0; 32];
        out.copy_from_slice(ring::digest::digest(&SHA256, data).as_ref());
        out
    }

    #[test]
    fn finishing_never_replaces_an_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (staging, out) = (dir.path().join("s"), dir.path().join("o"));
        std::fs::create_dir_all(&staging).expect("mkdir");
        std::fs::create_dir_all(&out).expect("mkdir");
        let mtime = 1_700_000_000_123_456_789;
        let finish = |part: &str, data: &[u8], claimed: [u8; 32]| {
            let s = staged(&staging, part, data);
            finish_file(&s, &out, "a.bin", data.len() as u64, &claimed, mtime).expect("finish")
        };
        // First: placed under its name, with its mtime.
        assert!(
            matches!(finish("1.part", b"one", sha(b"one")), Finished::Placed(p) if p == out.join("a.bin"))
        );
        let m = std::fs::metadata(out.join("a.bin")).and_then(|m| m.modified());
        assert_eq!(m.ok(), system_time(mtime));
        // The same bytes again: a replay, not written twice.
        assert!(
            matches!(finish("2.part", b"one", sha(b"one")), Finished::AlreadyThere(p) if p == out.join("a.bin"))
        );
        // Other bytes under the same name: numbered, the first one kept.
        assert!(
            matches!(finish("3.part", b"two", sha(b"two")), Finished::Placed(p) if p == out.join("a.bin.1"))
        );
        assert!(
            matches!(finish("4.part", b"two", sha(b"two")), Finished::AlreadyThere(p) if p == out.join("a.bin.1"))
        );
        assert_eq!(std::fs::read(out.join("a.bin")).expect("kept"), b"one");
        // A hash mismatch is never placed.
        assert!(
            matches!(finish("5.part", b"three", sha(b"tree")), Finished::Corrupt(h) if h == sha(b"three"))
        );
        assert!(!out.join("a.bin.2").exists());
    }

    #[test]
    fn only_our_staging_names_are_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = FileKey {
            session: SessionId([0xab; 16]),
            file_id: 42,
        };
        let ours = dir.path().join(format!("{}.part", stem(key)));
        let theirs = dir.path().join("upload.part");
        std::fs::write(&ours, b"x").expect("write");
        std::fs::write(&theirs, b"x").expect("write");
        std::fs::write(marker(dir.path(), key), b"").expect("marker");
        sweep_staging(dir.path()).expect("sweep");
        assert!(!ours.exists(), "a partial file of ours is removed");
        assert!(theirs.exists(), "someone else's file is kept");
        assert!(marker(dir.path(), key).exists(), "a fresh marker is kept");
    }

    #[test]
    fn long_names_are_shortened_on_a_char_boundary() {
        let name = "é".repeat(200);
        let s = shorten(&name);
        assert!(s.len() <= 255 + "…".len());
        assert!(s.ends_with('…'));
        assert_eq!(shorten("short"), "short");
        assert_eq!(
            system_time(-1_500_000_000),
            UNIX_EPOCH.checked_sub(Duration::from_millis(1500))
        );
    }
}
