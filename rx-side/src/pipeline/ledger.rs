//! The decode stage's durable memory: the gap ledger file and the book of
//! sender sessions.
//!
//! ```text
//!  decode ──GapEntry──> gaps file (append-only JSON lines, fsynced) ──> `weir-rx gaps`
//!         └─session accepted──> sessions file (replaced atomically)
//! ```
//!
//! The book keeps, per `(sender, role)`, the newest session accepted. A
//! session older than the newest is refused (unless
//! `ledger.allow_older_sessions`), so traffic captured from an earlier
//! session cannot be replayed, even after the receiver restarts. How far
//! each lane of those sessions was resolved is kept in the outbox, in the
//! same transactions as the blocks (`outbox::LaneResume`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_shared::contract::rfc3339_ns;
use weir_shared::ledger::GapEntry;
use weir_shared::wire::{KeyId, SessionId};

/// Refused (or stale) sessions remembered, so their symbols are dropped
/// before any reassembly work; beyond this the set starts over.
const REFUSED_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BookEntry {
    epoch: u64,
    session: String,
    key_id: u16,
    /// The sender's clock minus this receiver's, ms, from its last fresh
    /// heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skew_ms: Option<i64>,
}

/// Whether a session may deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Accepted before, in this process.
    Known,
    /// Newly accepted: the newest of its sender, or the one the book names.
    New,
    /// Accepted from a fresh heartbeat, after this receiver lost its state
    /// (safe mode): the session began before this receiver had any record
    /// of it, so only what it sends from that heartbeat on is taken; what
    /// it sent before may have been delivered by an earlier installation.
    Adopt,
    /// Older than the newest of its sender: refused.
    Refused,
    /// Unknown to the book and started too long ago for its epoch alone to
    /// prove it live: refused until one of its heartbeats is fresh.
    Stale,
}

/// Why the receiver runs in safe mode: it has no trustworthy record of
/// the sessions it accepted before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SafeMode {
    /// No session book (a first start, or a lost file).
    Missing,
    /// The book could not be read; it was moved aside to this path.
    Unreadable(PathBuf),
}

/// The freshness rule's inputs: this receiver's clock, its start, and the
/// tolerance (`ledger.max_clock_skew`).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Now, ms since the Unix epoch (receiver clock).
    pub now_ms: i64,
    /// When this receiver started, ms since the Unix epoch.
    pub started_ms: i64,
    /// `ledger.max_clock_skew`, ms.
    pub max_skew_ms: i64,
}

/// When a session started, ms since the Unix epoch on its sender's clock:
/// a daemon's epoch counts seconds, a one-shot push's milliseconds
/// (`docs/PROTOCOL.md` §4.2).
pub fn session_start_ms(session: SessionId) -> i64 {
    let epoch = i64::try_from(session.epoch()).unwrap_or(i64::MAX);
    if session.role() == weir_shared::wire::Role::Daemon as u8 {
        epoch.saturating_mul(1000)
    } else {
        epoch
    }
}

/// The book of sender sessions.
#[derive(Debug)]
pub struct Book {
    path: PathBuf,
    allow_older: bool,
    entries: BTreeMap<String, BookEntry>,
    accepted: HashSet<SessionId>,
    refused: HashSet<SessionId>,
    stale: HashSet<SessionId>,
    /// A newly admitted session → the one it replaced as newest of its
    /// sender (taken by its first heartbeat, which may say how that one
    /// ended).
    superseded: HashMap<SessionId, (SessionId, KeyId)>,
    safe: Option<SafeMode>,
    dirty: bool,
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

fn sender_key(s: SessionId) -> String {
    format!("{}/{}", s.sender(), s.role())
}

fn remember(set: &mut HashSet<SessionId>, session: SessionId) -> bool {
    if set.len() >= REFUSED_MAX {
        set.clear();
    }
    set.insert(session)
}

impl Book {
    /// Read the book. A missing file, or one that cannot be parsed (moved
    /// aside, never overwritten), starts the receiver in safe mode
    /// ([`Book::safe_mode`]): never as an empty book that would accept a
    /// replay of any earlier session. A file that cannot be read at all
    /// (permissions) stops startup.
    pub fn load(path: &Path, allow_older: bool) -> anyhow::Result<Self> {
        let mut safe = None;
        let entries = match std::fs::read(path) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(e) => e,
                Err(e) => {
                    let aside = path.with_extension(format!("unreadable-{}", std::process::id()));
                    std::fs::rename(path, &aside).with_context(|| {
                        format!(
                            "session book {} is unreadable ({e}) and could not be moved aside \
                             (config key `ledger.sessions_path`)",
                            path.display()
                        )
                    })?;
                    tracing::error!(book = %path.display(), moved_to = %aside.display(), error = %e,
                        "Session book unreadable: moved aside; starting in safe mode.");
                    safe = Some(SafeMode::Unreadable(aside));
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                safe = Some(SafeMode::Missing);
                BTreeMap::new()
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "reading session book {} (config key `ledger.sessions_path`)",
                        path.display()
                    )
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            allow_older,
            entries,
            accepted: HashSet::new(),
            refused: HashSet::new(),
            stale: HashSet::new(),
            superseded: HashMap::new(),
            safe,
            dirty: false,
        })
    }

    /// Why the receiver runs in safe mode, if it does.
    pub fn safe_mode(&self) -> Option<&SafeMode> {
        self.safe.as_ref()
    }

    /// Safe mode: take back the sessions the outbox still holds lane state
    /// of (the newest of each sender), so their stored floors and
    /// delivered blocks keep refusing replays. Returns how many were taken.
    pub fn recover(&mut self, sessions: &[(SessionId, KeyId)]) -> usize {
        let mut n = 0;
        for &(session, key_id) in sessions {
            let key = sender_key(session);
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.epoch >= session.epoch())
            {
                continue;
            }
            self.set_newest(session, key_id);
            n += 1;
        }
        n
    }

    /// Make `session` the newest of its sender (the sender's measured
    /// skew carried over).
    fn set_newest(&mut self, session: SessionId, key_id: KeyId) {
        let key = sender_key(session);
        let skew_ms = self.entries.get(&key).and_then(|e| e.skew_ms);
        self.entries.insert(
            key,
            BookEntry {
                epoch: session.epoch(),
                session: hex(&session.0),
                key_id: key_id.0,
                skew_ms,
            },
        );
        self.dirty = true;
    }

    /// Whether symbols of `session` are already known to be refused.
    pub fn is_refused(&self, session: SessionId) -> bool {
        // Asked for every datagram: skip the hash while nothing is refused.
        !self.refused.is_empty() && self.refused.contains(&session)
    }

    /// Whether `session` waits for a fresh heartbeat (its symbols are
    /// dropped meanwhile).
    pub fn is_stale(&self, session: SessionId) -> bool {
        !self.stale.is_empty() && self.stale.contains(&session)
    }

    /// The sender's clock minus this receiver's, as last measured (0 if
    /// never).
    pub fn skew_ms(&self, session: SessionId) -> i64 {
        self.entries
            .get(&sender_key(session))
            .and_then(|e| e.skew_ms)
            .unwrap_or(0)
    }

    /// Whether a heartbeat sent at `sent_unix_ms` (sender clock) is fresh:
    /// sent no longer than `max_clock_skew` ago, once the measured skew is
    /// taken off. A stale one is a replay or a stale clock.
    pub fn is_fresh_heartbeat(&self, session: SessionId, sent_unix_ms: i64, clock: Clock) -> bool {
        let sent_here = sent_unix_ms.saturating_sub(self.skew_ms(session));
        clock.now_ms.saturating_sub(sent_here) <= clock.max_skew_ms
    }

    /// A fresh heartbeat of an admitted session measured its sender's
    /// clock: kept for the freshness rule (written with the next flush
    /// when it moved by more than a second).
    pub fn note_skew(&mut self, session: SessionId, skew_ms: i64) {
        if let Some(e) = self.entries.get_mut(&sender_key(session))
            && e.session == hex(&session.0)
            && e.skew_ms.is_none_or(|s| (s - skew_ms).abs() > 1000)
        {
            e.skew_ms = Some(skew_ms);
            self.dirty = true;
        }
    }

    /// Admit an authenticated session, or refuse it: as older than the
    /// newest of its sender, or (one the book has no record of) as stale
    /// until a heartbeat of it is fresh (`fresh_heartbeat`).
    pub fn admit(
        &mut self,
        session: SessionId,
        key_id: KeyId,
        clock: Clock,
        fresh_heartbeat: bool,
    ) -> Admission {
        if self.accepted.contains(&session) {
            return Admission::Known;
        }
        let key = sender_key(session);
        let admission = match self.entries.get(&key) {
            Some(e) if e.session == hex(&session.0) => Admission::New,
            Some(e) if session.epoch() == e.epoch => {
                tracing::warn!(
                    sender = session.sender(),
                    epoch = e.epoch,
                    "Two sessions with one epoch: two senders share a sender id? Give each its own `sender.id`."
                );
                self.accepted.insert(session);
                return Admission::New;
            }
            Some(e) if session.epoch() < e.epoch => {
                if self.allow_older {
                    self.accepted.insert(session);
                    return Admission::New;
                }
                if remember(&mut self.refused, session) {
                    tracing::warn!(session = %session.short_hex(), sender = session.sender(), epoch = session.epoch(),
                        "Session older than the newest of its sender refused (a replay, or a sender whose state was rolled back; see ledger.allow_older_sessions).");
                }
                return Admission::Refused;
            }
            _ => self.gate(session, clock, fresh_heartbeat),
        };
        if admission == Admission::Stale {
            if remember(&mut self.stale, session) {
                tracing::warn!(session = %session.short_hex(), sender = session.sender(), epoch = session.epoch(),
                    "Session unknown to the session book and started more than ledger.max_clock_skew ago: refused until a fresh heartbeat proves it live.");
            }
            return admission;
        }
        self.stale.remove(&session);
        match self.entries.get(&key) {
            Some(e) if e.session == hex(&session.0) => {}
            old => {
                let old = old.and_then(|e| Some((SessionId(unhex(&e.session)?), KeyId(e.key_id))));
                if let Some(old) = old {
                    if self.superseded.len() >= REFUSED_MAX {
                        self.superseded.clear();
                    }
                    self.superseded.insert(session, old);
                }
                self.set_newest(session, key_id);
            }
        }
        self.accepted.insert(session);
        admission
    }

    /// The freshness rule for a session the book has no record of.
    fn gate(&self, session: SessionId, clock: Clock, fresh_heartbeat: bool) -> Admission {
        let skew = self.skew_ms(session);
        // The session's start on this receiver's clock.
        let started_here = session_start_ms(session).saturating_sub(skew);
        // Began before this start by more than the clocks can disagree
        // (and a daemon's epoch, in whole seconds, can be early): a
        // session begun about when this receiver started is not one.
        let predates = started_here < clock.started_ms.saturating_sub(clock.max_skew_ms);
        if self.safe.is_some() && predates {
            // It ran before this receiver had state: what it sent then may
            // have been delivered already. Only a live sender is taken,
            // from its heartbeat on.
            return if fresh_heartbeat {
                Admission::Adopt
            } else {
                Admission::Stale
            };
        }
        if fresh_heartbeat || clock.now_ms.saturating_sub(started_here) <= clock.max_skew_ms {
            Admission::New
        } else {
            Admission::Stale
        }
    }

    /// The session `session` replaced as the newest of its sender when it
    /// was admitted, once.
    pub fn take_superseded(&mut self, session: SessionId) -> Option<(SessionId, KeyId)> {
        self.superseded.remove(&session)
    }

    /// The newest session of every sender: the sessions whose lane
    /// state is kept.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.entries
            .values()
            .filter_map(|e| unhex(&e.session).map(SessionId))
            .collect()
    }

    /// The key id of `session` if it is the newest of its sender.
    pub fn newest_key(&self, session: SessionId) -> Option<KeyId> {
        self.entries
            .get(&sender_key(session))
            .filter(|e| e.session == hex(&session.0))
            .map(|e| KeyId(e.key_id))
    }

    /// Write the book if it changed (replace atomically, fsync).
    pub fn flush(&mut self) -> anyhow::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let body = serde_json::to_vec_pretty(&self.entries)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("writing session book {}", tmp.display()))?;
        f.write_all(&body).and_then(|()| f.sync_all())?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing session book {}", self.path.display()))?;
        self.dirty = false;
        Ok(())
    }
}

/// A gap ledger entry as JSON: the one shape of the gaps topic, the gaps
/// file and `weir-rx gaps --json`.
pub fn gap_json(e: &GapEntry, ts_ns: i64) -> serde_json::Value {
    serde_json::json!({
        "type": "gap",
        "ts": rfc3339_ns(ts_ns),
        "cause": e.cause.as_str(),
        "session": e.session.short_hex(),
        "sender": e.session.sender(),
        "epoch": e.session.epoch(),
        "lane": e.lane.as_str(),
        "first_block": e.first_block,
        "last_block": e.last_block,
        "blocks": e.blocks(),
        "first_record": e.first_record,
        "records": e.records,
        "t_first": e.t_first_ns.map(rfc3339_ns),
        "t_last": e.t_last_ns.map(rfc3339_ns),
        "sources": e.sources,
        "sources_complete": e.sources_complete,
        "records_unknown_because": e.uncounted,
    })
}

/// Write a gap entry down: the gaps file, the counters, the audit log.
/// Returns its gaps-topic message, for the caller to publish by its path
/// (the outbox, or straight to the publisher when the disk failed).
pub fn write_gap(
    log: Option<&std::sync::Mutex<GapLog>>,
    stats: &crate::stats::RxStats,
    topic: &str,
    e: &GapEntry,
) -> super::Message {
    use crate::stats::add;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let body = gap_json(e, ts);
    tracing::warn!(session = %e.session.short_hex(), lane = e.lane.as_str(), first_block = e.first_block,
        last_block = e.last_block, records = ?e.records, cause = e.cause.as_str(), "Records lost: written down in the gap ledger.");
    add(&stats.gap_entries, 1);
    match e.records {
        Some(n) => add(&stats.records_lost, n),
        None => add(&stats.gap_entries_uncounted, 1),
    }
    if let Some(log) = log {
        log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .append(&body);
    }
    stats.audit.record("gap", body.clone());
    super::Message::event(topic, &body)
}

/// Bytes kept allocated past the end of the gap ledger file (about 3000
/// entries), so that entries are still written when the disk is full: a
/// full disk is when blocks are refused and the ledger matters most.
const RESERVE: u64 = 1 << 20;

/// The gap ledger file: append-only JSON lines.
#[derive(Debug)]
pub struct GapLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Lines a write refused (the reserve was spent): written first next
    /// time, so the file keeps every entry in order once space is back.
    unwritten: String,
    /// Whether the last reservation failed (said once).
    reserve_failed: bool,
}

impl GapLog {
    /// Open (create) the file for appending, with space reserved past its
    /// end.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| {
                format!(
                    "opening the gap ledger {} (config key `ledger.gaps_path`)",
                    path.display()
                )
            })?;
        let mut log = Self {
            path: path.to_owned(),
            file: Some(file),
            unwritten: String::new(),
            reserve_failed: false,
        };
        log.reserve();
        Ok(log)
    }

    /// Keep [`RESERVE`] bytes allocated past the end of the file (the file
    /// size does not change). Appends then land in blocks already
    /// allocated, so they succeed on a full disk.
    fn reserve(&mut self) {
        let Some(f) = self.file.as_ref() else {
            return;
        };
        let end = f.metadata().map_or(0, |m| m.len());
        match rustix::fs::fallocate(f, rustix::fs::FallocateFlags::KEEP_SIZE, end, RESERVE) {
            Ok(()) => self.reserve_failed = false,
            Err(e) => {
                if !self.reserve_failed {
                    tracing::warn!(file = %self.path.display(), error = %e,
                        "No space reserved for the gap ledger: on a full disk its entries wait in memory.");
                }
                self.reserve_failed = true;
            }
        }
    }

    /// Append one entry and make it durable. A write error is logged and
    /// the entry kept for the next append; it still goes to the gaps
    /// topic and the counters.
    pub fn append(&mut self, entry: &serde_json::Value) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        self.unwritten.push_str(&entry.to_string());
        self.unwritten.push('\n');
        let before = f.metadata().map(|m| m.len());
        match f
            .write_all(self.unwritten.as_bytes())
            .and_then(|()| f.sync_data())
        {
            Ok(()) => {
                self.unwritten.clear();
                self.reserve();
            }
            Err(e) => {
                // No cut line is left behind: the file goes back to its
                // last whole entry, and the lines are written again later.
                if let Ok(len) = before {
                    let _ = f.set_len(len);
                }
                tracing::error!(file = %self.path.display(), error = %e,
                    "Gap ledger entry not written to disk yet (it is published; it is written once there is space).");
            }
        }
    }
}

/// `weir-rx gaps`: read the ledger file, entries at or after `since_ns`.
pub fn read_gaps(path: &Path, since_ns: Option<i64>) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a gap entry", path.display(), i + 1))?;
        let ts = v["ts"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .and_then(|t| t.timestamp_nanos_opt());
        if since_ns.is_some_and(|s| ts.is_some_and(|t| t < s)) {
            continue;
        }
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_shared::wire::Role;

    /// An empty book (not a missing one) in a fresh directory.
    fn empty_book() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sessions.json");
        std::fs::write(&path, "{}").expect("empty book");
        (dir, path)
    }

    /// A clock 10 s after epoch 100 000 s, the receiver started 1010 s
    /// before it.
    fn clock() -> Clock {
        Clock {
            now_ms: 100_010_000,
            started_ms: 99_000_000,
            max_skew_ms: 300_000,
        }
    }

    #[test]
    fn older_sessions_are_refused_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sessions.json");
        std::fs::write(&path, "{}").expect("an empty book, not a missing one");
        let old = SessionId::new(7, Role::Daemon, 100_000, [1; 4]);
        let new = SessionId::new(7, Role::Daemon, 100_001, [2; 4]);
        let other_role = SessionId::new(7, Role::OneShot, 100_000_000, [3; 4]);
        let c = clock();
        let mut b = Book::load(&path, false).expect("load");
        assert_eq!(b.safe_mode(), None);
        assert_eq!(b.admit(old, KeyId(1), c, false), Admission::New);
        assert_eq!(b.admit(new, KeyId(1), c, false), Admission::New);
        assert_eq!(
            b.admit(old, KeyId(1), c, false),
            Admission::Known,
            "already running here"
        );
        assert_eq!(
            b.admit(other_role, KeyId(1), c, false),
            Admission::New,
            "roles are ordered apart"
        );
        b.flush().expect("flush");

        let mut b = Book::load(&path, false).expect("reload");
        assert_eq!(
            b.admit(old, KeyId(1), c, true),
            Admission::Refused,
            "a replay of the old session, even with a fresh-looking heartbeat"
        );
        assert!(b.is_refused(old));
        let much_later = Clock {
            now_ms: c.now_ms + 86_400_000,
            ..c
        };
        assert_eq!(
            b.admit(new, KeyId(1), much_later, false),
            Admission::New,
            "the stored newest resumes, however long it has run"
        );
        let newest = |s| b.newest_key(s).is_some();
        assert!(newest(new) && newest(other_role) && !newest(old));

        let mut lax = Book::load(&path, true).expect("reload");
        assert_eq!(
            lax.admit(old, KeyId(1), c, false),
            Admission::New,
            "allowed by the operator"
        );
    }

    #[test]
    fn a_session_the_book_does_not_know_needs_a_fresh_start_or_a_fresh_heartbeat() {
        let (_dir, path) = empty_book();
        let c = clock();
        // Started 510 s ago, beyond max_clock_skew (300 s).
        let old = SessionId::new(8, Role::Daemon, 99_500, [1; 4]);
        // A push started 10 s ago.
        let recent = SessionId::new(9, Role::OneShot, 100_000_000, [2; 4]);
        let mut b = Book::load(&path, false).expect("load");
        assert_eq!(b.admit(old, KeyId(1), c, false), Admission::Stale);
        assert!(b.is_stale(old), "its symbols are dropped early");
        assert_eq!(b.admit(old, KeyId(1), c, true), Admission::New);
        assert!(!b.is_stale(old));
        assert_eq!(b.admit(recent, KeyId(1), c, false), Admission::New);
    }

    #[test]
    fn heartbeats_are_fresh_within_the_skew_measured() {
        let (_dir, path) = empty_book();
        let c = clock();
        let s = SessionId::new(8, Role::Daemon, 100_005, [1; 4]);
        let mut b = Book::load(&path, false).expect("load");
        assert!(b.is_fresh_heartbeat(s, c.now_ms, c));
        assert!(b.is_fresh_heartbeat(s, c.now_ms - 299_000, c));
        assert!(!b.is_fresh_heartbeat(s, c.now_ms - 301_000, c), "a replay");
        assert!(
            b.is_fresh_heartbeat(s, c.now_ms + 3_600_000, c),
            "ahead: no replay"
        );
        assert_eq!(b.admit(s, KeyId(1), c, true), Admission::New);
        // Its clock runs 10 min behind ours: measured, then allowed for.
        b.note_skew(s, -600_000);
        assert!(b.is_fresh_heartbeat(s, c.now_ms - 600_000, c));
        assert!(!b.is_fresh_heartbeat(s, c.now_ms - 901_000, c));
        b.flush().expect("flush");
        let b = Book::load(&path, false).expect("reload");
        assert_eq!(b.skew_ms(s), -600_000, "kept across restarts");
    }

    #[test]
    fn a_lost_book_starts_safe_mode_and_never_accepts_an_old_session_as_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sessions.json");
        let c = clock();
        // Started before this receiver did (started_ms 99 000 000).
        let before = SessionId::new(8, Role::OneShot, 98_000_000, [1; 4]);
        let held = SessionId::new(5, Role::Daemon, 90_000, [2; 4]);
        let after = SessionId::new(9, Role::OneShot, 100_005_000, [3; 4]);

        let mut b = Book::load(&path, false).expect("missing: safe mode");
        assert_eq!(b.safe_mode(), Some(&SafeMode::Missing));
        assert_eq!(b.admit(before, KeyId(1), c, false), Admission::Stale);
        assert_eq!(
            b.admit(before, KeyId(1), c, true),
            Admission::Adopt,
            "taken from its fresh heartbeat on"
        );
        assert_eq!(b.admit(after, KeyId(1), c, false), Admission::New);
        // A daemon begun in the second this receiver started (its epoch
        // counts whole seconds) did not run before it.
        let same_second = SessionId::new(6, Role::Daemon, 98_999, [5; 4]);
        let started_then = Clock {
            now_ms: 99_000_500,
            started_ms: 99_000_400,
            ..c
        };
        assert_eq!(
            b.admit(same_second, KeyId(1), started_then, false),
            Admission::New
        );
        // What the outbox still held comes back into the book.
        assert_eq!(b.recover(&[(held, KeyId(1))]), 1);
        assert_eq!(
            b.admit(held, KeyId(1), c, false),
            Admission::New,
            "resumed at its stored floors"
        );
        let older = SessionId::new(5, Role::Daemon, 89_000, [4; 4]);
        assert_eq!(b.admit(older, KeyId(1), c, true), Admission::Refused);

        std::fs::write(&path, "[").expect("write");
        let b = Book::load(&path, false).expect("unreadable: safe mode");
        let Some(SafeMode::Unreadable(aside)) = b.safe_mode() else {
            panic!("safe mode expected");
        };
        assert_eq!(
            std::fs::read_to_string(aside).expect("moved aside"),
            "[",
            "kept for the operator, never overwritten"
        );
        assert!(!path.exists());
    }
}
