//! `weir-tx send`: push files an operator names across the link, now.
//!
//! ```text
//!  PATH... ──source::take (opaque chunks, or --format: parsed points)──┐
//!                                          run_pushed: batch ─> … ─> send ─> UDP
//!  progress bar <── telemetry (records sent / taken, wire bytes) ──────┘
//! ```
//!
//! The same pipeline as `weir-tx run`, started without its configured
//! sources ([`crate::pipeline::run_pushed`]); the files go through the
//! spool's own [`source::take`], so they are chunked (or parsed) exactly
//! as a spool would, but left where they are. When the last file is
//! handed over, the input closes, the pipeline drains, its last heartbeats
//! tell the receiver how far every lane got, and the summary is printed.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use weir_shared::config::{ValidTx, valid_chunk_bytes};
use weir_shared::formats::Format;
use weir_shared::lane::Lane;
use weir_shared::seal::Keyring;

use crate::pipeline::source::{self, Chunker, Disposal, Intake, Taken, Taking};
use crate::telemetry::Telemetry;

/// What to push, and how.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The files, in order.
    pub paths: Vec<PathBuf>,
    /// Parse them as historian exports of this format; `None` sends them
    /// as opaque files.
    pub format: Option<Format>,
    /// Zone of local timestamps (formats that write local time need it).
    pub tz: Option<chrono_tz::Tz>,
    /// The exports are historical back-fill (points flagged historical).
    pub backfill: bool,
    /// Chunk size of opaque files, bytes.
    pub chunk_bytes: u32,
    /// Draw a progress bar on stderr (it stays hidden when stderr is not
    /// a terminal).
    pub progress: bool,
}

/// Files to push and how they become records: what `weir-tx send` and
/// `weir-tx resend` hand to [`push_job`].
#[derive(Debug)]
pub struct PushJob {
    /// The files, in order.
    pub paths: Vec<PathBuf>,
    /// Parsed as historian exports, or chunked as opaque files.
    pub intake: Intake,
    /// A larger file is refused.
    pub max_bytes: u64,
    /// Draw a progress bar on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq)]
pub struct PushSummary {
    /// Files named.
    pub files: u64,
    /// Files whose every block was sent.
    pub files_sent: u64,
    /// Files refused (unreadable, unparseable, changed while sent).
    pub files_failed: u64,
    /// Whether a signal stopped the push early.
    pub interrupted: bool,
    /// Records sent (file chunks or points).
    pub records: u64,
    /// Lines the parser rejected (historian files).
    pub lines_rejected: u64,
    /// Blocks sent.
    pub blocks: u64,
    /// Datagrams sent.
    pub datagrams: u64,
    /// Bytes sent on the wire (UDP payload).
    pub wire_bytes: u64,
    /// Blocks sent a second time (`lanes.*.repeat_after`).
    pub blocks_repeated: u64,
    /// Blocks not repeated because the repeat buffer was full.
    pub repeats_skipped: u64,
    /// From the pipeline's start to its last heartbeat.
    pub elapsed: Duration,
}

impl PushSummary {
    /// Whether every named file crossed.
    pub fn complete(&self) -> bool {
        !self.interrupted && self.files_failed == 0 && self.files_sent == self.files
    }

    /// Wire rate over the whole push, Mbit/s.
    pub fn mbit_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.wire_bytes as f64 * 8.0 / secs / 1e6
        } else {
            0.0
        }
    }
}

impl fmt::Display for PushSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} of {} files ({} failed{}): {} records, {} blocks, {} datagrams, {} bytes in {:.2} s, {:.1} Mbit/s",
            self.files_sent,
            self.files,
            self.files_failed,
            if self.interrupted {
                ", interrupted"
            } else {
                ""
            },
            self.records,
            self.blocks,
            self.datagrams,
            self.wire_bytes,
            self.elapsed.as_secs_f64(),
            self.mbit_per_sec(),
        )?;
        if self.lines_rejected > 0 {
            write!(f, ", {} lines rejected", self.lines_rejected)?;
        }
        if self.blocks_repeated > 0 || self.repeats_skipped > 0 {
            write!(
                f,
                ", {} blocks repeated ({} skipped)",
                self.blocks_repeated, self.repeats_skipped
            )?;
        }
        Ok(())
    }
}

/// Check what `weir-tx send` was asked against the config, before anything
/// starts: a typo must not leave half the files sent.
fn intake(opts: &PushOptions, cfg: &ValidTx) -> anyhow::Result<Intake> {
    match opts.format {
        Some(Format::Ignition | Format::GenericCsv) => anyhow::bail!(
            "--format {}: needs a tag table or column mapping; send such files through a spool",
            opts.format.map_or("", Format::as_str)
        ),
        Some(format) if format.local_time() && opts.tz.is_none() => {
            anyhow::bail!("--format {format} writes local wall-clock time: name its zone with --tz")
        }
        Some(format) => Ok(Intake::historian(format, opts.tz, opts.backfill)),
        None => {
            let bulk = cfg.lanes[Lane::Bulk.index()].max_batch_bytes;
            valid_chunk_bytes(opts.chunk_bytes, bulk, "--chunk-bytes").map_err(|e| {
                anyhow::anyhow!(
                    "--chunk-bytes {}: {} (here {bulk})",
                    opts.chunk_bytes,
                    e.reason
                )
            })?;
            Ok(Intake::Files(Chunker::new(opts.chunk_bytes as usize)))
        }
    }
}

/// The files' bare names and, for opaque files, the chunks they make.
fn inspect(paths: &[PathBuf], intake: &Intake) -> anyhow::Result<(Vec<String>, u64)> {
    let mut names = Vec::with_capacity(paths.len());
    let mut chunks = 0u64;
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        anyhow::ensure!(meta.is_file(), "{}: not a regular file", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: the file name is not UTF-8", path.display()))?;
        names.push(name.to_owned());
        if let Intake::Files(chunker) = intake {
            chunks += chunker.chunks_for(meta.len());
        }
    }
    Ok((names, chunks))
}

/// `weir-tx send`: check `opts` against the config, then [`push_job`].
pub async fn push(
    cfg: ValidTx,
    keyring: Keyring,
    config_fingerprint: [u8; 8],
    opts: PushOptions,
    cancel: CancellationToken,
) -> anyhow::Result<PushSummary> {
    let job = PushJob {
        intake: intake(&opts, &cfg)?,
        paths: opts.paths,
        max_bytes: u64::MAX,
        progress: opts.progress,
    };
    push_job(cfg, keyring, config_fingerprint, job, cancel).await
}

/// Push `job.paths` across as a one-shot session and wait until every
/// block and the last heartbeats were sent. `cancel` (a signal) stops
/// taking new chunks or files; what was taken is still sent.
pub async fn push_job(
    cfg: ValidTx,
    keyring: Keyring,
    config_fingerprint: [u8; 8],
    job: PushJob,
    cancel: CancellationToken,
) -> anyhow::Result<PushSummary> {
    let PushJob {
        paths,
        intake,
        max_bytes,
        progress,
    } = job;
    let (names, expected_chunks) = inspect(&paths, &intake)?;
    let started = Instant::now();
    let (mut handle, to_batch) =
        crate::pipeline::run_pushed(cfg, keyring, config_fingerprint).await?;
    let telemetry = handle.telemetry.clone();
    let bar = Progress::start(progress, expected_chunks, telemetry.clone());

    let mut interrupted = false;
    for (path, name) in paths.iter().zip(names) {
        if cancel.is_cancelled() {
            interrupted = true;
            break;
        }
        bar.file(&name);
        let file = Taking {
            name,
            path: path.clone(),
            max_bytes,
            disposal: Disposal::Keep,
        };
        match source::take(&intake, &file, &telemetry, &cancel, &to_batch).await? {
            Taken::Handed | Taken::Refused(_) => {}
            Taken::Interrupted => {
                interrupted = true;
                break;
            }
        }
    }
    // Closing the input drains the pipeline; `join` returns after the last
    // block and the last heartbeats went out.
    drop(to_batch);
    bar.draining();
    let joined = handle.join().await;
    bar.finish();
    joined?;
    let t = telemetry.counters();
    Ok(PushSummary {
        files: paths.len() as u64,
        files_sent: t.files_done,
        files_failed: t.files_quarantined,
        interrupted,
        records: t.records,
        lines_rejected: t.lines_rejected,
        blocks: t.blocks,
        datagrams: t.datagrams,
        wire_bytes: t.wire_bytes,
        blocks_repeated: telemetry.blocks_repeated.load(Ordering::Relaxed),
        repeats_skipped: telemetry.repeats_skipped.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// The progress bar: records sent out of records known (opaque files'
/// chunks are known up front; parsed points once their file is parsed),
/// redrawn from the telemetry ten times a second.
struct Progress {
    bar: ProgressBar,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(visible: bool, expected: u64, telemetry: std::sync::Arc<Telemetry>) -> Self {
        let bar = if visible {
            ProgressBar::new(expected)
        } else {
            ProgressBar::hidden()
        };
        // The template is a literal: it cannot fail to parse.
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {elapsed:>4} [{wide_bar}] {human_pos}/{human_len} records · {prefix} · {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        let ticker = visible.then(|| {
            let bar = bar.clone();
            tokio::spawn(async move {
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    let done = get(&telemetry.records) + get(&telemetry.records_refused);
                    bar.set_length(expected.max(get(&telemetry.records_taken)));
                    bar.set_position(done);
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    let wire = get(&telemetry.wire_bytes) as f64;
                    bar.set_prefix(format!(
                        "{:.1} MB, {:.1} Mbit/s",
                        wire / 1e6,
                        wire * 8.0 / secs / 1e6
                    ));
                }
            })
        });
        Self { bar, ticker }
    }

    fn file(&self, name: &str) {
        self.bar.set_message(name.to_owned());
    }

    fn draining(&self) {
        self.bar.set_message("draining the pipeline");
    }

    fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}
