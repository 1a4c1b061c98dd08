//! The audit log file of either daemon: the shell around
//! `weir_shared::audit`. Each side keeps only its own records (the
//! sender's sealed ranges, the receiver's delivery evidence) and what its
//! closing record needs.
//!
//! ```text
//!  stages ──AuditSlot::record (try_send)──> bounded channel ──> writer thread ──> append + fsync
//!                 │ full: counted                                   └─ first: an `audit_dropped` record
//! ```
//!
//! Stages never wait for the disk: a record goes into a bounded channel
//! with `try_send`, and a dedicated thread appends each batch and fsyncs
//! once. If the channel is full, the record is counted, and the writer
//! writes an `audit_dropped` record with the count before the next one:
//! never silently. At start the whole file is verified; a broken chain
//! stops the daemon (the error names `audit.path`), so evidence is
//! never silently extended past a break.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use weir_shared::audit::{Chain, ChainHead, Verifier, VerifyError, hex};

/// Records waiting for the writer before new ones are dropped (counted).
const CAPACITY: usize = 4096;
/// How often the writer logs the chain head (for shipping off the host).
const HEAD_EVERY: Duration = Duration::from_mins(1);

enum Msg {
    Record(&'static str, Value),
    Close,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Record(k, _) => write!(f, "Record({k})"),
            Self::Close => write!(f, "Close"),
        }
    }
}

/// Where stages hand audit records (cheap to clone).
#[derive(Clone, Debug)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    /// The chain's head as last fsynced.
    head: Arc<Mutex<ChainHead>>,
}

impl Audit {
    /// Queue a record; never waits. A full queue counts it as dropped.
    pub fn record(&self, kind: &'static str, body: Value) {
        if self.tx.try_send(Msg::Record(kind, body)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The chain's head as last written to disk.
    pub fn head(&self) -> Option<ChainHead> {
        self.head.lock().ok().map(|h| *h)
    }
}

/// An audit handle that may not be installed (one-shot pushes, tests of
/// single stages): recording into an empty slot does nothing. It also
/// keeps the writer, for the pipeline's end to close, together with `C`:
/// whatever else that side's closing record needs (the receiver: its
/// outbox, whose backlog the record states; the sender: nothing).
pub struct AuditSlot<C = ()> {
    audit: OnceLock<Audit>,
    closing: Mutex<Option<(AuditWriter, C)>>,
}

impl<C> Default for AuditSlot<C> {
    fn default() -> Self {
        Self {
            audit: OnceLock::new(),
            closing: Mutex::new(None),
        }
    }
}

impl<C> std::fmt::Debug for AuditSlot<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AuditSlot").field(&self.audit).finish()
    }
}

impl<C> AuditSlot<C> {
    /// Install the writer (once), with what the closing record needs; its
    /// handle records from now on.
    pub fn install(&self, writer: AuditWriter, closing: C) {
        if self.audit.set(writer.handle()).is_ok()
            && let Ok(mut w) = self.closing.lock()
        {
            *w = Some((writer, closing));
        }
    }

    /// The writer and what the closing record needs, to close the log
    /// (once).
    pub fn take_writer(&self) -> Option<(AuditWriter, C)> {
        self.closing.lock().ok().and_then(|mut w| w.take())
    }

    /// Queue a record, if a log is installed.
    pub fn record(&self, kind: &'static str, body: Value) {
        if let Some(a) = self.audit.get() {
            a.record(kind, body);
        }
    }

    /// The chain's head as last written to disk (`None`: no log).
    pub fn head(&self) -> Option<ChainHead> {
        self.audit.get().and_then(Audit::head)
    }
}

/// The running writer.
pub struct AuditWriter {
    audit: Audit,
    thread: std::thread::JoinHandle<ChainHead>,
}

impl AuditWriter {
    /// The handle stages record through.
    pub fn handle(&self) -> Audit {
        self.audit.clone()
    }

    /// Write `kind` (the last record), then everything still queued, and
    /// stop. Returns the chain's head.
    pub async fn close(self, kind: &'static str, body: Value) -> ChainHead {
        let _ = self.audit.tx.send(Msg::Record(kind, body)).await;
        let _ = self.audit.tx.send(Msg::Close).await;
        tokio::task::spawn_blocking(move || self.thread.join())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }
}

/// Verify the file at `path`, streaming. A missing file is an empty chain.
pub fn verify_file(path: &Path) -> anyhow::Result<Result<ChainHead, VerifyError>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Ok(ChainHead::default()));
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut r = std::io::BufReader::new(file);
    let mut v = Verifier::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(v.finish());
        }
        let complete = buf.last() == Some(&b'\n');
        let line = if complete { &buf[..n - 1] } else { &buf[..] };
        // Not UTF-8 cannot be JSON: handed on as text that fails to parse.
        let text = std::str::from_utf8(line).unwrap_or("\u{0}");
        if let Err(e) = v.handle_line(text, complete) {
            return Ok(Err(e));
        }
    }
}

/// Cut a torn last line (no newline: a crash or a full disk in the middle
/// of an append) off the file; returns the bytes removed.
fn cut_torn_tail(path: &Path) -> anyhow::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("audit.path {}", path.display()))?;
    let len = f.metadata()?.len();
    // The last newline, searched backwards a block at a time.
    let mut end = len;
    let mut keep = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = usize::try_from(end - start).unwrap_or(buf.len());
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    f.set_len(keep)?;
    f.sync_all()?;
    Ok(len - keep)
}

/// Open the log at `path`, continuing its chain, and start the writer.
///
/// A torn last line (the only fault a crash or a full disk can leave) is
/// cut off, and the chain's next record (`audit_torn_tail`) says so, with
/// the line and the bytes removed; any other fault stops the start.
pub fn start(path: &Path) -> anyhow::Result<AuditWriter> {
    let mut torn = None;
    let verified = match verify_file(path)? {
        Err(VerifyError::Truncated { line }) => {
            let bytes = cut_torn_tail(path)?;
            tracing::warn!(path = %path.display(), line, bytes, "Audit log ended in a torn line (a crash or a full disk); cut off and recorded.");
            torn = Some((line, bytes));
            verify_file(path)?
        }
        other => other,
    };
    let head = verified.map_err(|e| {
        anyhow::anyhow!(
            "audit.path {}: {e}. The audit chain is broken, so it is not continued: \
             check it with `audit verify --path {}`, move the file aside as evidence, and start again (a new chain)",
            path.display(),
            path.display()
        )
    })?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("audit.path {}", path.display()))?;
    let (tx, rx) = mpsc::channel(CAPACITY);
    let dropped = Arc::new(AtomicU64::new(0));
    let chain = Chain::resume(head);
    let shared = Arc::new(Mutex::new(head));
    let (d, h) = (dropped.clone(), shared.clone());
    let p = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("audit".into())
        .spawn(move || write_loop(&p, file, chain, rx, (&d, &h)))
        .context("starting the audit writer")?;
    let writer = AuditWriter {
        audit: Audit {
            tx,
            dropped,
            head: shared,
        },
        thread,
    };
    if let Some((line, bytes)) = torn {
        writer
            .handle()
            .record("audit_torn_tail", json!({ "line": line, "bytes": bytes }));
    }
    Ok(writer)
}

fn ts_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Append batches until closed; fsync once per batch.
fn write_loop(
    path: &Path,
    mut file: std::fs::File,
    mut chain: Chain,
    mut rx: mpsc::Receiver<Msg>,
    (dropped, written): (&AtomicU64, &Mutex<ChainHead>),
) -> ChainHead {
    let mut line = String::new();
    let mut out = String::new();
    let mut logged = Instant::now();
    let mut closing = false;
    while !closing {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        out.clear();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            let n = dropped.swap(0, Ordering::Relaxed);
            if n > 0 {
                chain.append(
                    &ts_now(),
                    "audit_dropped",
                    &json!({ "records": n }),
                    &mut line,
                );
                out.push_str(&line);
            }
            match msg {
                Msg::Record(kind, body) => {
                    chain.append(&ts_now(), kind, &body, &mut line);
                    out.push_str(&line);
                }
                Msg::Close => closing = true,
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = file
            .write_all(out.as_bytes())
            .and_then(|()| file.sync_data())
        {
            // The chain in memory ran ahead of the file: the next start
            // finds the break and says so.
            tracing::error!(path = %path.display(), error = %e, "Audit log not written; it stops here.");
            break;
        }
        if let Ok(mut w) = written.lock() {
            *w = ChainHead {
                count: chain.len(),
                head: chain.head(),
            };
        }
        if closing || logged.elapsed() >= HEAD_EVERY {
            logged = Instant::now();
            tracing::info!(audit_head = %hex(&chain.head()), records = chain.len(), path = %path.display(), "Audit chain head.");
        }
    }
    ChainHead {
        count: chain.len(),
        head: chain.head(),
    }
}

/// `audit verify`: print the count and head, or name the first bad line.
pub fn verify_command(path: &Path) -> anyhow::Result<()> {
    match verify_file(path)? {
        Ok(h) => {
            println!(
                "{}: ok, {} records, head {}",
                path.display(),
                h.count,
                hex(&h.head)
            );
            Ok(())
        }
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_restart_continues_the_chain_and_a_broken_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let w = start(&path).expect("start");
        w.handle().record("startup", json!({"n": 1}));
        let first = w.close("shutdown", json!({})).await;
        assert_eq!(first.count, 2);
        let w = start(&path).expect("restart");
        w.handle().record("startup", json!({"n": 2}));
        let second = w.close("shutdown", json!({})).await;
        assert_eq!(second.count, 4);
        assert_eq!(verify_file(&path).expect("read"), Ok(second));
        // Line 2 deleted: not continued, and the error names the key.
        let text = std::fs::read_to_string(&path).expect("read");
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(&path, kept.join("\n") + "\n").expect("write");
        let e = start(&path).err().expect("refused").to_string();
        assert!(e.contains("audit.path") && e.contains("line 2:"), "{e}");
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off_and_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let w = start(&path).expect("start");
        w.handle().record("startup", json!({"n": 1}));
        w.close("shutdown", json!({})).await;
        // A full disk in the middle of the next append.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(br#"{"seq":2,"ts":"2026-"#);
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            verify_file(&path).expect("read"),
            Err(VerifyError::Truncated { line: 3 })
        ));
        let w = start(&path).expect("a torn tail does not stop the start");
        let head = w.close("shutdown", json!({})).await;
        assert_eq!(verify_file(&path).expect("read"), Ok(head));
        let text = std::fs::read_to_string(&path).expect("read");
        let torn = text.lines().nth(2).expect("record 3");
        assert!(
            torn.contains("audit_torn_tail") && torn.contains(r#""bytes":20"#),
            "{torn}"
        );
    }

    #[tokio::test]
    async fn a_slot_keeps_the_head_and_hands_back_the_writer_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let slot: AuditSlot<u8> = AuditSlot::default();
        slot.record("ignored", json!({}));
        assert_eq!(slot.head(), None);
        slot.install(start(&path).expect("start"), 7);
        slot.record("startup", json!({}));
        let (w, closing) = slot.take_writer().expect("installed");
        assert_eq!(closing, 7);
        assert!(slot.take_writer().is_none());
        let head = w.close("shutdown", json!({})).await;
        assert_eq!(head.count, 2);
        assert_eq!(slot.head(), Some(head));
    }
}
