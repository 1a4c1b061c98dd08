//! The sender's persistent numbering: the session epoch, and per lane the
//! next block and record number.
//!
//! Numbers are never reused, even after `kill -9`: before numbers are
//! handed out, the file is written (and fsynced) with a *reservation* a
//! margin above them; a crash resumes at the reservation, skipping at
//! most the margin. A clean stop writes the exact numbers, so the next
//! session continues without a jump. The receiver needs the continuity to
//! count lost records across sender restarts, and the epoch to refuse old
//! sessions.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_shared::heartbeat::{Finished, FinishedLane};
use weir_shared::lane::{LANES, Lane};
use weir_shared::wire::SessionId;

/// Blocks reserved ahead of use.
const BLOCK_MARGIN: u64 = 1 << 24;
/// Records reserved ahead of use.
const RECORD_MARGIN: u64 = 1 << 32;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct StateFile {
    epoch: u64,
    next_block: [u64; LANES],
    next_record: [u64; LANES],
    clean: bool,
    /// The last sessions that stopped cleanly, kept across crashes of
    /// the sessions after them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    finished: Vec<Finished>,
}

/// The live numbers, shared by the batch (records) and seal (blocks)
/// stages, read by the checkpointing heartbeat.
#[derive(Debug, Default)]
pub struct Numbering {
    /// Session epoch.
    pub epoch: u64,
    /// The session's first block per lane.
    pub first_block: [u64; LANES],
    /// The session's first record per lane.
    pub first_record: [u64; LANES],
    /// Next block number per lane.
    pub next_block: [AtomicU64; LANES],
    /// Next record number per lane.
    pub next_record: [AtomicU64; LANES],
    /// The last sessions of this role that stopped cleanly, oldest first
    /// (for the heartbeat: the receiver counts what it missed of them).
    pub previous: Vec<Finished>,
}

impl Numbering {
    /// A fresh numbering from 0 (one-shot sessions), with epoch `epoch`.
    pub fn from_zero(epoch: u64) -> Self {
        Self {
            epoch,
            ..Self::default()
        }
    }

    fn from_file(s: &StateFile, epoch: u64) -> Self {
        Self {
            epoch,
            first_block: s.next_block,
            first_record: s.next_record,
            next_block: s.next_block.map(AtomicU64::new),
            next_record: s.next_record.map(AtomicU64::new),
            previous: s.finished.clone(),
        }
    }

    /// This session, numbered as far as it got: what the next session
    /// carries once this one stopped cleanly.
    pub fn finished(&self, session: SessionId) -> Finished {
        let (blocks, records) = self.current();
        Finished {
            session: session.0,
            lanes: Lane::ALL.map(|l| {
                let i = l.index();
                FinishedLane {
                    first_block: self.first_block[i],
                    first_record: self.first_record[i],
                    end_block: blocks[i],
                    end_record: records[i],
                }
            }),
        }
    }

    fn current(&self) -> ([u64; LANES], [u64; LANES]) {
        (
            Lane::ALL.map(|l| self.next_block[l.index()].load(Ordering::Relaxed)),
            Lane::ALL.map(|l| self.next_record[l.index()].load(Ordering::Relaxed)),
        )
    }
}

/// Seconds since the epoch (0 before 1970).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The state file of a daemon sender.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    reserved: StateFile,
}

impl StateStore {
    /// Read the state (a missing file starts from zero), start a new epoch,
    /// and reserve numbers before any is used.
    pub fn open(path: &Path) -> anyhow::Result<(Self, Numbering)> {
        let old = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes).with_context(|| {
                format!(
                    "sender state {} is unreadable; it holds the session epoch and numbering \
                     (config key `sender.state_path`); move it away to start numbering afresh",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => {
                return Err(e).with_context(|| format!("reading sender state {}", path.display()));
            }
        };
        // Above the last epoch, and above the clock, so a sender whose state
        // was wiped still starts newer than its old sessions.
        let epoch = old.epoch.saturating_add(1).max(unix_secs());
        let numbering = Numbering::from_file(&old, epoch);
        let unclean = !old.clean && old != StateFile::default();
        let (blocks, records) = (old.next_block, old.next_record);
        let mut store = Self {
            path: path.to_owned(),
            reserved: old,
        };
        store.reserve(epoch, blocks, records)?;
        if unclean {
            tracing::warn!(state = %path.display(), "The last sender session did not stop cleanly: numbering resumes at its reservation.");
        }
        Ok((store, numbering))
    }

    fn reserve(
        &mut self,
        epoch: u64,
        blocks: [u64; LANES],
        records: [u64; LANES],
    ) -> anyhow::Result<()> {
        let next = StateFile {
            epoch,
            next_block: blocks.map(|b| b.saturating_add(BLOCK_MARGIN)),
            next_record: records.map(|r| r.saturating_add(RECORD_MARGIN)),
            clean: false,
            finished: self.reserved.finished.clone(),
        };
        write_atomic(&self.path, &next)?;
        self.reserved = next;
        Ok(())
    }

    /// Extend the reservation when the numbers in use come near it. Cheap
    /// when they do not; call every heartbeat.
    pub fn checkpoint(&mut self, n: &Numbering) -> anyhow::Result<()> {
        let (blocks, records) = n.current();
        let near = Lane::ALL.into_iter().any(|l| {
            let i = l.index();
            blocks[i].saturating_add(BLOCK_MARGIN / 2) >= self.reserved.next_block[i]
                || records[i].saturating_add(RECORD_MARGIN / 2) >= self.reserved.next_record[i]
        });
        if near {
            self.reserve(n.epoch, blocks, records)?;
        }
        Ok(())
    }

    /// A clean stop of `session`: store the exact numbers.
    pub fn close(&mut self, n: &Numbering, session: SessionId) -> anyhow::Result<()> {
        let (blocks, records) = n.current();
        let exact = StateFile {
            epoch: n.epoch,
            next_block: blocks,
            next_record: records,
            clean: true,
            finished: with_finished(&self.reserved.finished, n.finished(session)),
        };
        write_atomic(&self.path, &exact)?;
        self.reserved = exact;
        Ok(())
    }
}

/// The last one-shot push's epoch, kept beside the daemon's state.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PushFile {
    epoch: u64,
    /// The last pushes that finished (every block sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    finished: Vec<Finished>,
}

/// Where the last one-shot push's epoch is kept: beside `sender.state_path`.
pub fn push_state_path(state_path: &Path) -> PathBuf {
    state_path.with_extension("push.json")
}

/// The numbering of a new one-shot push (`weir-tx send`, `resend`): from
/// zero, in an epoch of the Unix time in ms, which must be newer than the
/// last push's. The receiver refuses a session older than the newest it
/// accepted from the same sender and role, so a push from a clock that
/// went back would be dropped whole: refused here instead, with the
/// reason. The epoch is recorded before anything is sent; the last push
/// that finished is carried on (`Numbering::previous`).
pub fn push_numbering(state_path: &Path, now_ms: u64) -> anyhow::Result<Numbering> {
    let path = push_state_path(state_path);
    let last = read_push_file(&path)?;
    if now_ms <= last.epoch {
        anyhow::bail!(
            "this host's clock ({now_ms} ms since 1970) is not past the last push's session epoch \
             ({}, in {}): the receiver refuses a session older than the newest it accepted \
             from this sender, so nothing of this push would be published. The clock went back \
             {:.1} s: correct it, or wait until it passes the last push",
            last.epoch,
            path.display(),
            (last.epoch - now_ms) as f64 / 1000.0
        );
    }
    write_push_file(
        &path,
        &PushFile {
            epoch: now_ms,
            finished: last.finished.clone(),
        },
    )?;
    Ok(Numbering {
        previous: last.finished,
        ..Numbering::from_zero(now_ms)
    })
}

/// A push finished (every block sent): the next pushes carry its
/// numbering. A push started meanwhile keeps its newer epoch.
pub fn push_finished(state_path: &Path, n: &Numbering, session: SessionId) -> anyhow::Result<()> {
    let path = push_state_path(state_path);
    let last = read_push_file(&path)?;
    write_push_file(
        &path,
        &PushFile {
            epoch: last.epoch.max(n.epoch),
            finished: with_finished(&last.finished, n.finished(session)),
        },
    )
}

/// `list` with `f` remembered (the newest few, oldest first).
fn with_finished(list: &[Finished], f: Finished) -> Vec<Finished> {
    let mut list = list.to_vec();
    weir_shared::heartbeat::remember_finished(&mut list, f);
    list
}

fn read_push_file(path: &Path) -> anyhow::Result<PushFile> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice::<PushFile>(&b).with_context(|| {
            format!(
                "{} is unreadable (it holds the last push's session epoch, beside \
                 `sender.state_path`); move it away if the receiver's state was reset too",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PushFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_push_file(path: &Path, file: &PushFile) -> anyhow::Result<()> {
    let body = serde_json::to_vec(file).context("encoding push state")?;
    write_bytes_atomic(path, &body)
}

fn write_atomic(path: &Path, state: &StateFile) -> anyhow::Result<()> {
    let body = serde_json::to_vec_pretty(state).context("encoding sender state")?;
    write_bytes_atomic(path, &body)
}

fn write_bytes_atomic(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)
        .with_context(|| format!("writing sender state {}", tmp.display()))?;
    f.write_all(body)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing sender state {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("replacing sender state {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable only once the directory is.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one finished session a numbering carries: its id, and its bulk
    /// lane's last block and end record.
    fn carried(n: &Numbering) -> ([u8; 16], Option<u64>, u64) {
        let [f] = n.previous[..] else {
            panic!("one finished session: {:?}", n.previous);
        };
        (f.session, f.lanes[1].last_block(), f.lanes[1].end_record)
    }

    #[test]
    fn numbers_continue_after_a_clean_stop_and_skip_after_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let (mut store, n) = StateStore::open(&path).expect("open");
        assert!(n.epoch >= unix_secs());
        n.next_block[1].store(10, Ordering::Relaxed);
        n.next_record[1].store(500, Ordering::Relaxed);
        let first = SessionId([1; 16]);
        store.close(&n, first).expect("close");

        let (_crashed, n2) = StateStore::open(&path).expect("reopen");
        assert!(n2.epoch > n.epoch);
        assert_eq!((n2.first_block[1], n2.first_record[1]), (10, 500));
        assert_eq!(carried(&n2), (first.0, Some(9), 500), "the clean stop");
        n2.next_record[1].store(900, Ordering::Relaxed);
        // No close: a crash. The next session starts at the reservation,
        // above anything the crashed one may have used.
        let (_, n3) = StateStore::open(&path).expect("after crash");
        assert!(n3.epoch > n2.epoch);
        assert_eq!(n3.first_record[1], 500 + RECORD_MARGIN);
        assert_eq!(n3.first_block[1], 10 + BLOCK_MARGIN);
        assert_eq!(
            n3.previous.iter().map(|p| p.session).collect::<Vec<_>>(),
            [first.0],
            "the last clean stop survives a crash after it"
        );
    }

    #[test]
    fn checkpoint_extends_the_reservation_before_it_runs_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let (mut store, n) = StateStore::open(&path).expect("open");
        n.next_record[0].store(RECORD_MARGIN - 1, Ordering::Relaxed);
        store.checkpoint(&n).expect("checkpoint");
        let (_, after) = StateStore::open(&path).expect("reopen");
        assert!(after.first_record[0] >= 2 * RECORD_MARGIN - 1);
    }

    #[test]
    fn corrupt_state_names_the_file_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").expect("write");
        let e = StateStore::open(&path).expect_err("refused");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("state.json") && msg.contains("sender.state_path"),
            "{msg}"
        );
    }

    #[test]
    fn a_push_from_a_clock_that_went_back_is_refused_before_it_sends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state.json");
        let epoch = |now| push_numbering(&state, now).map(|n| n.epoch);
        assert_eq!(epoch(1_000).expect("first"), 1_000);
        assert_eq!(epoch(2_000).expect("later"), 2_000);
        let e = epoch(1_500).expect_err("the clock went back");
        let msg = format!("{e:#}");
        assert!(msg.contains("refuses a session older"), "{msg}");
        assert!(msg.contains("0.5 s"), "{msg}");
        assert!(epoch(2_000).is_err(), "not newer");
        assert_eq!(epoch(2_001).expect("newer"), 2_001);
    }

    #[test]
    fn a_finished_push_is_carried_by_the_next_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state.json");
        let a = push_numbering(&state, 1_000).expect("a");
        assert!(a.previous.is_empty());
        a.next_block[1].store(3, Ordering::Relaxed);
        a.next_record[1].store(30, Ordering::Relaxed);
        let a_id = SessionId::new(7, weir_shared::wire::Role::OneShot, a.epoch, [1; 4]);
        // A later push started before `a` finished keeps its epoch.
        let b = push_numbering(&state, 2_000).expect("b");
        push_finished(&state, &a, a_id).expect("a finished");
        assert!(push_numbering(&state, 1_500).is_err(), "b's epoch kept");
        drop(b);
        // `b` never finished: the next push carries `a`, and so does the one after.
        for now in [3_000, 4_000] {
            let n = push_numbering(&state, now).expect("next");
            assert_eq!(carried(&n), (a_id.0, Some(2), 30), "a is carried");
            assert_eq!(n.previous[0].lanes[0].last_block(), None);
        }
        // The newest few are carried, oldest first.
        let mut epochs = Vec::new();
        for now in 5_000..5_010 {
            let n = push_numbering(&state, now).expect("push");
            let id = SessionId::new(7, weir_shared::wire::Role::OneShot, now, [2; 4]);
            push_finished(&state, &n, id).expect("finished");
            epochs = n
                .previous
                .iter()
                .map(|f| SessionId(f.session).epoch())
                .collect();
        }
        assert_eq!(epochs, [5_005, 5_006, 5_007, 5_008]);
    }
}
