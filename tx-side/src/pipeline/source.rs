//! Stage 1, `source`: historian export files from a spool directory.
//!
//! ```text
//!  incoming/ ──(complete?)──> working/ ──parse──> records ──> batch
//!                                │                      └─ rejected lines ─> quarantine/NAME.rejects
//!                                └─ unreadable ─> quarantine/NAME + NAME.reason
//!  working/ ──(every block sent)──> done/   (or deleted)
//! ```
//!
//! A file is taken only when complete: its size and modification time held
//! steady across one scan interval (a writer that renames its file in with
//! the final name is seen complete on the next scan). Names starting with
//! `.` or ending in `.tmp` / `.part` are never taken. Files found in
//! `working/` at start-up were interrupted by a crash and are sent again:
//! at-least-once, never silently dropped.
//!
//! Full-queue policy: `send().await` on the batch channel, so a slow link
//! leaves files waiting in `incoming/`.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use weir_shared::config::{OnDone, SpoolConfig};
use weir_shared::formats::{ParseContext, ParseOutput};
use weir_shared::lane::Lane;
use weir_shared::record::Record;

use super::{FileDone, SourceItem, StageError};
use crate::telemetry::{Telemetry, add};

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
fn list(dir: &Path) -> std::io::Result<Vec<(String, u64, SystemTime)>> {
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

/// Run one spool until cancelled.
pub async fn run(
    spool: SpoolConfig,
    telemetry: Arc<Telemetry>,
    cancel: CancellationToken,
    to_batch: Sender<SourceItem>,
) -> Result<(), StageError> {
    let dirs = SpoolDirs::create(&spool.dir)?;
    let base = base_context(&spool)?;
    // Crash recovery: whatever is in working/ was never completed.
    for (name, ..) in list(&dirs.working)? {
        tracing::warn!(spool = %spool.name, file = %name, "Resending a file interrupted by a restart.");
        take(
            &spool,
            &dirs,
            &base,
            &name,
            &dirs.working.join(&name),
            &telemetry,
            &to_batch,
        )
        .await?;
    }
    let mut seen: HashMap<String, (u64, SystemTime)> = HashMap::new();
    let mut last_depth = 0u64;
    let mut tick = tokio::time::interval(spool.scan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let files = match list(&dirs.incoming) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(spool = %spool.name, error = %e, "Spool directory unreadable.");
                continue;
            }
        };
        // Spools share one depth counter: move it by this spool's change.
        let depth = files.len() as u64;
        telemetry
            .spool_depth
            .fetch_add(depth, std::sync::atomic::Ordering::Relaxed);
        telemetry
            .spool_depth
            .fetch_sub(last_depth, std::sync::atomic::Ordering::Relaxed);
        last_depth = depth;
        let mut next_seen = HashMap::with_capacity(files.len());
        for (name, size, mtime) in files {
            let steady = seen.get(&name) == Some(&(size, mtime));
            if !steady {
                next_seen.insert(name, (size, mtime));
                continue;
            }
            if cancel.is_cancelled() {
                return Ok(());
            }
            let working = dirs.working.join(&name);
            if let Err(e) = std::fs::rename(dirs.incoming.join(&name), &working) {
                tracing::error!(spool = %spool.name, file = %name, error = %e, "Could not move file to working/.");
                continue;
            }
            take(&spool, &dirs, &base, &name, &working, &telemetry, &to_batch).await?;
        }
        seen = next_seen;
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
    })
}

/// Parse one file in `working/` and hand its records to the batcher.
#[allow(clippy::too_many_arguments)]
async fn take(
    spool: &SpoolConfig,
    dirs: &SpoolDirs,
    base: &ParseContext,
    name: &str,
    working: &Path,
    telemetry: &Telemetry,
    to_batch: &Sender<SourceItem>,
) -> Result<(), StageError> {
    let bytes = match std::fs::metadata(working) {
        Ok(m) if m.len() > spool.max_file_bytes => Err(format!(
            "file is {} bytes, above spool.max_file_bytes ({})",
            m.len(),
            spool.max_file_bytes
        )),
        Ok(_) => std::fs::read(working).map_err(|e| format!("unreadable: {e}")),
        Err(e) => Err(format!("unreadable: {e}")),
    };
    let ctx = ParseContext {
        file: Some(name.to_owned()),
        ..base.clone()
    };
    let parsed = bytes.and_then(|b| spool.format.parse(&b, &ctx).map_err(|e| e.to_string()));
    let ParseOutput { points, rejects } = match parsed {
        Ok(out) => out,
        Err(reason) => {
            quarantine_file(dirs, name, working, &reason);
            add(&telemetry.files_quarantined, 1);
            tracing::warn!(spool = %spool.name, file = %name, %reason, "File quarantined.");
            return Ok(());
        }
    };
    if !rejects.is_empty() {
        add(&telemetry.lines_rejected, rejects.len() as u64);
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
        let path = dirs.quarantine.join(format!("{name}.rejects"));
        if let Err(e) = std::fs::write(&path, text) {
            tracing::error!(file = %path.display(), error = %e, "Could not write rejected lines.");
        }
        tracing::warn!(spool = %spool.name, file = %name, rejected = rejects.len(), "Lines quarantined.");
    }
    for p in points {
        to_batch
            .send(SourceItem::Record(Lane::Bulk, Record::Point(p)))
            .await
            .map_err(|_| StageError::Closed("source"))?;
    }
    let done = FileDone {
        working: working.to_owned(),
        done: (spool.on_done == OnDone::Move).then(|| dirs.done.join(name)),
    };
    to_batch
        .send(SourceItem::FileDone(Lane::Bulk, done))
        .await
        .map_err(|_| StageError::Closed("source"))
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

    #[test]
    fn temporary_names_are_never_taken() {
        assert!(eligible_name("export_0800.json"));
        assert!(!eligible_name(".export_0800.json"));
        assert!(!eligible_name("export.json.tmp"));
        assert!(!eligible_name("export.json.part"));
    }
}
