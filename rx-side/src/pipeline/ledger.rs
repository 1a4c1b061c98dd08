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

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_shared::contract::rfc3339_ns;
use weir_shared::ledger::GapEntry;
use weir_shared::wire::{KeyId, SessionId};

/// Refused sessions remembered (so their symbols are dropped before any
/// reassembly work); beyond this the set starts over.
const REFUSED_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BookEntry {
    epoch: u64,
    session: String,
    key_id: u16,
}

/// Whether a session may deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Accepted before, in this process.
    Known,
    /// Newly accepted: the newest of its sender, or the one the book names.
    New,
    /// Older than the newest of its sender: refused.
    Refused,
}

/// The book of sender sessions.
#[derive(Debug)]
pub struct Book {
    path: PathBuf,
    allow_older: bool,
    entries: BTreeMap<String, BookEntry>,
    accepted: HashSet<SessionId>,
    refused: HashSet<SessionId>,
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

impl Book {
    /// Read the book (a missing file is an empty book).
    pub fn load(path: &Path, allow_older: bool) -> anyhow::Result<Self> {
        let entries = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "session book {} is unreadable (config key `ledger.sessions_path`); \
                     move it away to start afresh (older sessions are then accepted once)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("reading session book {}", path.display()));
            }
        };
        Ok(Self {
            path: path.to_owned(),
            allow_older,
            entries,
            accepted: HashSet::new(),
            refused: HashSet::new(),
            dirty: false,
        })
    }

    /// Whether symbols of `session` are already known to be refused.
    pub fn is_refused(&self, session: SessionId) -> bool {
        // Asked for every datagram: skip the hash while nothing is refused.
        !self.refused.is_empty() && self.refused.contains(&session)
    }

    /// Admit an authenticated session, or refuse it as older than the
    /// newest of its sender.
    pub fn admit(&mut self, session: SessionId, key_id: KeyId) -> Admission {
        if self.accepted.contains(&session) {
            return Admission::Known;
        }
        let key = sender_key(session);
        let newer = match self.entries.get(&key) {
            None => true,
            Some(e) if e.session == hex(&session.0) => false,
            Some(e) if session.epoch() > e.epoch => true,
            Some(e) if session.epoch() == e.epoch => {
                tracing::warn!(
                    sender = session.sender(),
                    epoch = e.epoch,
                    "Two sessions with one epoch: two senders share a sender id? Give each its own `sender.id`."
                );
                false
            }
            Some(_) if self.allow_older => false,
            Some(_) => {
                if self.refused.len() >= REFUSED_MAX {
                    self.refused.clear();
                }
                if self.refused.insert(session) {
                    tracing::warn!(session = %session.short_hex(), sender = session.sender(), epoch = session.epoch(),
                        "Session older than the newest of its sender refused (a replay, or a sender whose state was rolled back; see ledger.allow_older_sessions).");
                }
                return Admission::Refused;
            }
        };
        if newer {
            self.entries.insert(
                key,
                BookEntry {
                    epoch: session.epoch(),
                    session: hex(&session.0),
                    key_id: key_id.0,
                },
            );
            self.dirty = true;
        }
        self.accepted.insert(session);
        Admission::New
    }

    /// The newest session of every sender: the sessions whose lane
    /// state is kept.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.entries
            .values()
            .filter_map(|e| unhex(&e.session).map(SessionId))
            .collect()
    }

    /// Whether `session` is the newest of its sender.
    pub fn is_newest(&self, session: SessionId) -> bool {
        self.entries
            .get(&sender_key(session))
            .is_some_and(|e| e.session == hex(&session.0))
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
    })
}

/// The gap ledger file: append-only JSON lines.
#[derive(Debug)]
pub struct GapLog {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl GapLog {
    /// Open (create) the file for appending.
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
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    /// Append one entry and make it durable. A write error is logged: the
    /// entry still goes to the gaps topic and the counters.
    pub fn append(&mut self, entry: &serde_json::Value) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        let mut line = entry.to_string();
        line.push('\n');
        if let Err(e) = f.write_all(line.as_bytes()).and_then(|()| f.sync_data()) {
            tracing::error!(file = %self.path.display(), error = %e, "Gap ledger entry not written to disk (it is still published).");
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

    #[test]
    fn older_sessions_are_refused_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sessions.json");
        let old = SessionId::new(7, Role::Daemon, 100, [1; 4]);
        let new = SessionId::new(7, Role::Daemon, 101, [2; 4]);
        let other_role = SessionId::new(7, Role::OneShot, 5, [3; 4]);
        let mut b = Book::load(&path, false).expect("load");
        assert_eq!(b.admit(old, KeyId(1)), Admission::New);
        assert_eq!(b.admit(new, KeyId(1)), Admission::New);
        assert_eq!(
            b.admit(old, KeyId(1)),
            Admission::Known,
            "already running here"
        );
        assert_eq!(
            b.admit(other_role, KeyId(1)),
            Admission::New,
            "roles are ordered apart"
        );
        b.flush().expect("flush");

        let mut b = Book::load(&path, false).expect("reload");
        assert_eq!(
            b.admit(old, KeyId(1)),
            Admission::Refused,
            "a replay of the old session"
        );
        assert!(b.is_refused(old));
        assert_eq!(
            b.admit(new, KeyId(1)),
            Admission::New,
            "the stored newest resumes"
        );
        assert!(b.is_newest(new) && b.is_newest(other_role) && !b.is_newest(old));

        let mut lax = Book::load(&path, true).expect("reload");
        assert_eq!(
            lax.admit(old, KeyId(1)),
            Admission::New,
            "allowed by the operator"
        );
    }

    #[test]
    fn corrupt_book_names_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sessions.json");
        std::fs::write(&path, "[").expect("write");
        let e = Book::load(&path, false).expect_err("refused");
        assert!(format!("{e:#}").contains("ledger.sessions_path"));
    }
}
