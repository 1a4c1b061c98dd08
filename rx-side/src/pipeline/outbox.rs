//! Stage 4, `outbox`: every authentic block is on disk before anything made
//! from it is published (alert blocks excepted: they are published while
//! they are committed), and stays there until the broker acknowledged all
//! of it.
//!
//! ```text
//!  decode ──Item (block | event)──> writer ──group commit, fsync──> redb: alert | bulk | events
//!                                                                     │  one reader per table:
//!             validate (alert, bulk) <──Entry + window permit─────────┤  cursor, `window_blocks`
//!             validate (events)      <──Entry + window permit─────────┘
//!  decode ──copy of each alert block──> read_fast ──Entry (no key) + permit──> validate ──> publish
//!  publish ──acked EntryRef──> writer: deleted once `retain_acked` has passed
//!  publish ──rewind (the broker lost its session)──> readers start again at the oldest entry
//! ```
//!
//! Alerts never wait on the disk. A group commit is fsynced, and an fsync
//! on a busy disk (the bulk lane's large groups, any other writer on the
//! same file system) takes from milliseconds to over a second; an alert
//! block handed over behind it would wait for all of it. So decode also
//! hands a copy of each alert block to the fast path ([`read_fast`]),
//! which publishes it from memory while the writer commits it. The
//! durability promise is unchanged: the block is committed as before, and
//! `publish` deletes its entry only once the broker acknowledged the
//! publish from memory (its committed entry, read back, joins that
//! publish instead of being published again; if that publish failed, the
//! entry is published itself). A receiver killed before the commit has
//! the block written down as lost on restart (`receiver_down`), even if
//! the broker already had it: over-reported, never lost silently. Records
//! keep their ids on both paths, so the rare copy published twice (the
//! fast path's memory of [`super::publish`] forgot it, or a rewind) is a
//! duplicate a consumer drops by `id`.
//!
//! Full-outbox policy: a block that would take the outbox over `max_bytes`
//! is not stored; it is counted (`outbox_refused`) and reported as a gap
//! event, which is stored (events are small and not held to `max_bytes`).
//! A failing disk is treated the same way, with the gap event handed to
//! the publisher directly. Nothing blocks the decoder: decode sheds a block
//! (counted, reported) only if the writer itself falls behind.
//!
//! Lane state, for a restarted receiver (see `decode`): the `lanes` table
//! holds each session lane's floor (every block below it was committed
//! here or written down in the gap ledger) and the `delivered` table the
//! blocks committed at or above it. Floors travel through the same queue
//! as the blocks, so a floor is stored only after every block handed over
//! before it; a block's `delivered` key is stored in the block's own
//! transaction. Together they say exactly which blocks a crash left
//! unresolved: a restarted receiver neither passes one over nor publishes
//! one twice.
//!
//! Acknowledged blocks are kept for `retain_acked`: a broker restarted
//! without persistence loses what it acknowledged but had not yet
//! delivered, so on such a restart everything still in the outbox is
//! published again under the same record ids, for consumers to de-duplicate.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Receiver, Sender, UnboundedReceiver, UnboundedSender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use weir_shared::config::OutboxConfig;
use weir_shared::lane::{LANES, Lane};
use weir_shared::ledger::{GapCause, GapEntry};
use weir_shared::wire::{KeyId, SessionId};

use super::{Message, OpenedBlock, StageError, now};
use crate::stats::{RxStats, add};

/// Why the outbox could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database refused an operation.
    #[error("outbox database: {0}")]
    Db(#[from] redb::Error),
    /// A stored entry could not be read back.
    #[error("outbox entry {key} in table {table} is malformed")]
    Malformed {
        /// Table name.
        table: &'static str,
        /// Entry key.
        key: u64,
    },
    /// The database could not be opened again after a failed write.
    #[error("outbox database is closed after a failed write and could not be opened again")]
    Closed,
    /// The blocking task running a database operation died.
    #[error("outbox task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

fn db_err(e: impl Into<redb::Error>) -> OutboxError {
    OutboxError::Db(e.into())
}

/// The outbox tables, in the order the publisher serves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Gap and audit events.
    Events,
    /// Alert-lane blocks.
    Alert,
    /// Bulk-lane blocks.
    Bulk,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 3] = [Table::Events, Table::Alert, Table::Bulk];

    fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Alert => "alert",
            Table::Bulk => "bulk",
        }
    }

    fn def(self) -> TableDefinition<'static, u64, &'static [u8]> {
        TableDefinition::new(self.name())
    }

    fn for_lane(lane: Lane) -> Self {
        match lane {
            Lane::Alert => Table::Alert,
            Lane::Bulk => Table::Bulk,
        }
    }
}

/// Where an entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryRef {
    /// Its table.
    pub table: Table,
    /// Its key (unique across tables, increasing in commit order).
    pub key: u64,
}

/// What decode hands to the outbox.
#[derive(Debug)]
pub enum Item {
    /// An authentic block.
    Block(OpenedBlock),
    /// A gap, audit or data-quality event.
    Event(Message),
    /// The data-quality engine's state, kept (replaced) for the next start.
    DqState(Vec<u8>),
    /// A session's lane floors: every block below one was handed over
    /// before this item or written down as lost.
    Floors(LaneFloors),
}

/// A session's lane floors (`None`: the lane has not started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneFloors {
    /// The session.
    pub session: SessionId,
    /// The key it authenticated with.
    pub key_id: KeyId,
    /// Per lane, by [`Lane::index`].
    pub floors: [Option<u64>; LANES],
    /// Per lane, the record number where the block at the floor starts,
    /// and the time of the record before it, when known: a restarted
    /// receiver counts a loss starting at the floor from it.
    pub records: [Option<(u64, Option<i64>)>; LANES],
}

/// Where a restarted receiver resumes one session lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneResume {
    /// The session.
    pub session: SessionId,
    /// The key it authenticated with.
    pub key_id: KeyId,
    /// The lane.
    pub lane: Lane,
    /// Every block below it is resolved; `None` when the receiver stopped
    /// before it stored the lane's first floor (only its delivered blocks
    /// are known).
    pub floor: Option<u64>,
    /// Blocks at or above `floor` resolved (stored, or refused and
    /// reported), ascending.
    pub delivered: Vec<u64>,
    /// Where the block at `floor` starts (record number, and the time of
    /// the record before it), when known.
    pub records: Option<(u64, Option<i64>)>,
    /// What the stored blocks from just below `floor` on carried: the
    /// ledger counts a loss between them from these.
    pub summaries: Vec<weir_shared::ledger::BlockSummary>,
}

/// Table of single values kept beside the queue (not published).
const META: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("meta");
/// Key of the data-quality state in [`META`].
const DQ_STATE: &str = "dq_state";
/// Key of the Sparkplug bdSeq the next start connects with (u64 LE), in
/// [`META`].
const BD_SEQ: &str = "sparkplug_bd_seq";
/// Lane floors: key session (16) ‖ lane (1); value floor (u64 LE) ‖ key
/// id (u16 LE), then optionally (28 bytes in all) the record number where
/// the floor's block starts: flag (1) ‖ record (u64 LE) ‖ flag (1) ‖ time
/// of the record before it (i64 LE, ns).
const LANE_FLOORS: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("lanes");
/// Blocks resolved at or above their lane's floor (stored, or refused
/// and reported as a gap): key session (16) ‖ lane (1) ‖ seq (u64 BE, so
/// keys sort by sequence).
const DELIVERED: TableDefinition<'static, &'static [u8], ()> = TableDefinition::new("delivered");
/// The summaries (postcard) of the blocks stored at or above their lane's
/// floor, and of the one just below it; keys as [`DELIVERED`]. A restarted
/// receiver counts the records of a loss between them.
const SUMMARIES: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("summaries");

/// A [`LANE_FLOORS`] key.
fn lane_key(session: SessionId, lane: Lane) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..16].copy_from_slice(&session.0);
    k[16] = lane as u8;
    k
}

/// A [`DELIVERED`] key.
fn delivered_key(session: SessionId, lane: Lane, seq: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[..17].copy_from_slice(&lane_key(session, lane));
    k[17..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The session, lane and sequence of a [`DELIVERED`] key.
fn parse_delivered_key(k: &[u8]) -> Option<(SessionId, Lane, u64)> {
    let k: &[u8; 25] = k.try_into().ok()?;
    let (lk, seq) = k.split_at(17);
    let (session, lane) = parse_lane_key(lk)?;
    Some((session, lane, u64::from_be_bytes(seq.try_into().ok()?)))
}

/// A [`LANE_FLOORS`] value.
fn floor_value(floor: u64, key_id: KeyId, records: Option<(u64, Option<i64>)>) -> Vec<u8> {
    let mut v = Vec::with_capacity(28);
    v.extend_from_slice(&floor.to_le_bytes());
    v.extend_from_slice(&key_id.0.to_le_bytes());
    if let Some((record, t)) = records {
        v.push(1);
        v.extend_from_slice(&record.to_le_bytes());
        v.push(u8::from(t.is_some()));
        v.extend_from_slice(&t.unwrap_or(0).to_le_bytes());
    }
    v
}

/// Where a lane resumes, from a [`LANE_FLOORS`] value.
type StoredFloor = (u64, KeyId, Option<(u64, Option<i64>)>);

/// The floor, key id and floor record of a [`LANE_FLOORS`] value.
fn parse_floor(v: &[u8]) -> Option<StoredFloor> {
    let (head, rest) = v.split_first_chunk::<10>()?;
    let (floor, key_id) = head.split_at(8);
    let floor = u64::from_le_bytes(floor.try_into().ok()?);
    let key_id = KeyId(u16::from_le_bytes(key_id.try_into().ok()?));
    let records = match rest {
        [] => None,
        [1, r @ .., has_t, t0, t1, t2, t3, t4, t5, t6, t7] if r.len() == 8 => {
            let t = i64::from_le_bytes([*t0, *t1, *t2, *t3, *t4, *t5, *t6, *t7]);
            Some((
                u64::from_le_bytes(r.try_into().ok()?),
                (*has_t == 1).then_some(t),
            ))
        }
        _ => return None,
    };
    Some((floor, key_id, records))
}

/// The session and lane of a [`LANE_FLOORS`] key.
fn parse_lane_key(k: &[u8]) -> Option<(SessionId, Lane)> {
    let k: &[u8; 17] = k.try_into().ok()?;
    let session: [u8; 16] = k[..16].try_into().ok()?;
    Some((SessionId(session), Lane::from_u8(k[16])?))
}

/// What an entry holds.
#[derive(Debug)]
pub enum Body {
    /// A block, to validate and publish.
    Block(OpenedBlock),
    /// An event, to publish as it is.
    Event(Message),
}

/// An entry read back from the outbox. Its permit holds a place in the
/// reader's window until everything made from it is acknowledged.
#[derive(Debug)]
pub struct Entry {
    /// Where it lives (`None`: an alert block from memory, see
    /// [`read_fast`]).
    pub at: Option<EntryRef>,
    /// What it holds.
    pub body: Body,
    /// Window place; dropped when the entry is done.
    pub permit: OwnedSemaphorePermit,
}

/// Block entry layout: version (1), session (16), lane (1), seq (u64 LE),
/// then for version 1 the frame; for version 2 the verdicts' length (u32
/// LE), the verdicts, then the frame.
const BLOCK_HEAD: usize = 1 + 16 + 1 + 8;

/// What an entry stores: the inverse of [`decode_body`].
fn encode_body(body: &Body) -> (Table, Vec<u8>) {
    match body {
        Body::Block(b) => {
            let verdicts = b.verdicts.as_deref();
            let extra = verdicts.map_or(0, |d| 4 + d.len());
            let mut v = Vec::with_capacity(BLOCK_HEAD + extra + b.frame.len());
            v.push(if verdicts.is_some() { 2 } else { 1 });
            v.extend_from_slice(&b.session.0);
            v.push(b.lane as u8);
            v.extend_from_slice(&b.seq.to_le_bytes());
            if let Some(d) = verdicts {
                let len = u32::try_from(d.len()).unwrap_or(u32::MAX);
                v.extend_from_slice(&len.to_le_bytes());
                v.extend_from_slice(d);
            }
            v.extend_from_slice(&b.frame);
            (Table::for_lane(b.lane), v)
        }
        Body::Event(m) => {
            let topic = m.topic.as_bytes();
            let len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
            let mut v = Vec::with_capacity(3 + topic.len() + m.payload.len());
            v.push(u8::from(m.retain));
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(&topic[..usize::from(len)]);
            v.extend_from_slice(&m.payload);
            (Table::Events, v)
        }
    }
}

/// Read back a stored entry of `at.table` (the inverse of `encode_body`).
///
/// This is what recovery runs on every entry left in the outbox after a
/// restart, so the bytes are checked: a malformed entry is an
/// [`OutboxError::Malformed`], never a panic. Public for the fuzz target
/// (`shared/fuzz/fuzz_targets/outbox_recovery.rs`).
pub fn decode_body(at: EntryRef, v: &[u8]) -> Result<Body, OutboxError> {
    let bad = || OutboxError::Malformed {
        table: at.table.name(),
        key: at.key,
    };
    if at.table == Table::Events {
        let (&retain, rest) = v.split_first().ok_or_else(bad)?;
        let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
        let len = usize::from(u16::from_le_bytes(*len));
        let topic = rest.get(..len).ok_or_else(bad)?;
        let topic = String::from_utf8(topic.to_vec()).map_err(|_| bad())?;
        return Ok(Body::Event(Message {
            topic,
            payload: rest[len..].to_vec(),
            retain: retain != 0,
        }));
    }
    if v.len() < BLOCK_HEAD || !matches!(v[0], 1 | 2) {
        return Err(bad());
    }
    let mut session = [0u8; 16];
    session.copy_from_slice(&v[1..17]);
    let lane = Lane::from_u8(v[17]).ok_or_else(bad)?;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&v[18..26]);
    let rest = &v[BLOCK_HEAD..];
    let (verdicts, frame) = if v[0] == 2 {
        let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(bad());
        }
        let (d, frame) = rest.split_at(len);
        (Some(d.to_vec()), frame)
    } else {
        (None, rest)
    };
    Ok(Body::Block(OpenedBlock {
        session: SessionId(session),
        lane,
        seq: u64::from_le_bytes(seq),
        frame: frame.to_vec(),
        verdicts,
        held: None,
        summary: None,
    }))
}

/// The outbox file.
///
/// After a failed write the database refuses every later one until it is
/// opened again (a full disk, say): the next operation to meet that refusal
/// opens it again ([`Outbox::reopen`]), which succeeds once the disk has
/// room again.
pub struct Outbox {
    path: std::path::PathBuf,
    /// `None` only while being opened again, or if that failed.
    db: std::sync::RwLock<Option<Database>>,
}

/// The database's own page cache. Blocks are read back once, soon after
/// they are written, while the kernel's page cache still holds them: a
/// second copy in this process buys nothing (redb's default is 1 GiB, most
/// of the receiver's memory at full rate). Half of it is the write buffer,
/// which holds one commit group ([`GROUP_BYTES`]).
const DB_CACHE_BYTES: usize = 2 * GROUP_BYTES;

/// Open (or create) the database file and its tables.
fn open_db(path: &Path) -> Result<Database, OutboxError> {
    let db = redb::Builder::new()
        .set_cache_size(DB_CACHE_BYTES)
        .create(path)
        .map_err(db_err)?;
    let txn = db.begin_write().map_err(db_err)?;
    for t in Table::ALL {
        txn.open_table(t.def()).map_err(db_err)?;
    }
    txn.open_table(META).map_err(db_err)?;
    txn.open_table(LANE_FLOORS).map_err(db_err)?;
    txn.open_table(DELIVERED).map_err(db_err)?;
    txn.commit().map_err(db_err)?;
    Ok(db)
}

impl Outbox {
    /// Open (or create) the outbox file and its tables.
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| db_err(redb::StorageError::Io(e)))?;
        }
        let db = open_db(path)?;
        Ok(Self {
            path: path.to_owned(),
            db: std::sync::RwLock::new(Some(db)),
        })
    }

    /// Close the database and open it again (recovering it if needed):
    /// the way out of a failed write.
    pub fn reopen(&self) -> Result<(), OutboxError> {
        let mut db = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The file stays locked until the old handle is gone.
        drop(db.take());
        *db = Some(open_db(&self.path)?);
        Ok(())
    }

    /// The open database (`None`: closed after a failed write).
    fn db(&self) -> std::sync::RwLockReadGuard<'_, Option<Database>> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The sessions whose lane state the outbox holds, with their key ids
    /// (read only): what a receiver that lost its session book recovers
    /// it from.
    pub fn lane_sessions(&self) -> Result<Vec<(SessionId, KeyId)>, OutboxError> {
        self.on_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let lanes = match txn.open_table(LANE_FLOORS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(db_err(e)),
            };
            let mut out: Vec<(SessionId, KeyId)> = Vec::new();
            for r in lanes.iter().map_err(db_err)? {
                let (k, v) = r.map_err(db_err)?;
                if let Some(((session, _), (_, key_id, _))) =
                    parse_lane_key(k.value()).zip(parse_floor(v.value()))
                    && !out.iter().any(|(s, _)| *s == session)
                {
                    out.push((session, key_id));
                }
            }
            Ok(out)
        })
    }

    /// The lanes a restarted receiver resumes: those of the sessions
    /// `keep` names with the key id they authenticated with (a lane
    /// with delivered blocks but no stored floor yet takes that key id).
    /// The state of every other session is deleted.
    pub fn resume(
        &self,
        keep: impl Fn(SessionId) -> Option<KeyId>,
    ) -> Result<Vec<LaneResume>, OutboxError> {
        let db = self.db();
        let db = db.as_ref().ok_or(OutboxError::Closed)?;
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let mut out = Vec::new();
        {
            let mut lanes = txn.open_table(LANE_FLOORS).map_err(db_err)?;
            let mut delivered = txn.open_table(DELIVERED).map_err(db_err)?;
            let mut stale = Vec::new();
            for r in lanes.iter().map_err(db_err)? {
                let (k, v) = r.map_err(db_err)?;
                let parsed = parse_lane_key(k.value()).zip(parse_floor(v.value()));
                match parsed {
                    Some(((session, lane), (floor, key_id, records)))
                        if keep(session).is_some() =>
                    {
                        out.push(LaneResume {
                            session,
                            key_id,
                            lane,
                            floor: Some(floor),
                            delivered: Vec::new(),
                            records,
                            summaries: Vec::new(),
                        });
                    }
                    _ => stale.push(k.value().to_vec()),
                }
            }
            for k in &stale {
                lanes.remove(k.as_slice()).map_err(db_err)?;
            }
            // Keep the `delivered` keys of kept lanes at or above their
            // floor (all of them where no floor was stored yet); everything
            // else is of no further use.
            let mut kept: std::collections::HashMap<(SessionId, Lane), usize> = out
                .iter()
                .enumerate()
                .map(|(i, r)| ((r.session, r.lane), i))
                .collect();
            delivered
                .retain(|k, ()| {
                    let Some((session, lane, seq)) = parse_delivered_key(k) else {
                        return false;
                    };
                    let i = if let Some(&i) = kept.get(&(session, lane)) {
                        i
                    } else {
                        let Some(key_id) = keep(session) else {
                            return false;
                        };
                        out.push(LaneResume {
                            session,
                            key_id,
                            lane,
                            floor: None,
                            delivered: Vec::new(),
                            records: None,
                            summaries: Vec::new(),
                        });
                        kept.insert((session, lane), out.len() - 1);
                        out.len() - 1
                    };
                    let r = &mut out[i];
                    let above = r.floor.is_none_or(|f| seq >= f);
                    if above {
                        r.delivered.push(seq);
                    }
                    above
                })
                .map_err(db_err)?;
            let mut summaries = txn.open_table(SUMMARIES).map_err(db_err)?;
            summaries
                .retain(|k, v| {
                    let Some((session, lane, seq)) = parse_delivered_key(k) else {
                        return false;
                    };
                    let Some(r) = kept.get(&(session, lane)).map(|&i| &mut out[i]) else {
                        return false;
                    };
                    if r.floor.is_some_and(|f| seq.saturating_add(1) < f) {
                        return false;
                    }
                    if let Ok(s) = weir_shared::ledger::BlockSummary::from_bytes(v) {
                        r.summaries.push(s);
                    }
                    true
                })
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(out)
    }

    /// The data-quality state the last run kept, if any.
    pub fn dq_state(&self) -> Result<Option<Vec<u8>>, OutboxError> {
        let db = self.db();
        let db = db.as_ref().ok_or(OutboxError::Closed)?;
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(META).map_err(db_err)?;
        Ok(t.get(DQ_STATE).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    /// The Sparkplug bdSeq the next start connects with, if one was kept.
    pub fn bd_seq(&self) -> Result<Option<u64>, OutboxError> {
        let db = self.db();
        let db = db.as_ref().ok_or(OutboxError::Closed)?;
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(META).map_err(db_err)?;
        let v = t.get(BD_SEQ).map_err(db_err)?;
        Ok(v.and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes)))
    }

    /// Keep (durably) the Sparkplug bdSeq the next start connects with.
    pub fn set_bd_seq(&self, bd_seq: u64) -> Result<(), OutboxError> {
        let db = self.db();
        let db = db.as_ref().ok_or(OutboxError::Closed)?;
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert(BD_SEQ, bd_seq.to_le_bytes().as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Next free key and the bytes held by block tables.
    fn scan(&self) -> Result<(u64, u64), OutboxError> {
        let db = self.db();
        let db = db.as_ref().ok_or(OutboxError::Closed)?;
        let txn = db.begin_read().map_err(db_err)?;
        let mut next = 0;
        let mut bytes = 0;
        for t in Table::ALL {
            let table = txn.open_table(t.def()).map_err(db_err)?;
            if let Some((k, _)) = table.last().map_err(db_err)? {
                next = next.max(k.value() + 1);
            }
            if t != Table::Events {
                for r in table.iter().map_err(db_err)? {
                    let (_, v) = r.map_err(db_err)?;
                    bytes += v.value().len() as u64;
                }
            }
        }
        Ok((next, bytes))
    }

    /// Store a group in one durable transaction: its entries, deletions,
    /// data-quality state, delivered block keys and lane floors. Returns
    /// the block bytes the deletions freed (an entry already gone frees
    /// nothing, so acknowledging twice is harmless).
    fn commit(&self, g: &Group) -> Result<u64, OutboxError> {
        self.on_db(|db| Self::commit_on(db, g))
    }

    fn commit_on(db: &Database, g: &Group) -> Result<u64, OutboxError> {
        let mut txn = db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        if let Some(state) = &g.dq_state {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert(DQ_STATE, state.as_slice()).map_err(db_err)?;
        }
        let mut freed = 0;
        for t in Table::ALL {
            let mut table = txn.open_table(t.def()).map_err(db_err)?;
            for (at, v) in g.puts.iter().filter(|(at, _)| at.table == t) {
                table.insert(at.key, v.as_slice()).map_err(db_err)?;
            }
            for at in g.dels.iter().filter(|at| at.table == t) {
                if let Some(old) = table.remove(at.key).map_err(db_err)?
                    && t != Table::Events
                {
                    freed += old.value().len() as u64;
                }
            }
        }
        {
            let mut delivered = txn.open_table(DELIVERED).map_err(db_err)?;
            for k in &g.delivered {
                delivered.insert(k.as_slice(), ()).map_err(db_err)?;
            }
            let mut summaries = txn.open_table(SUMMARIES).map_err(db_err)?;
            for (k, v) in &g.summaries {
                summaries
                    .insert(k.as_slice(), v.as_slice())
                    .map_err(db_err)?;
            }
            let mut lanes = txn.open_table(LANE_FLOORS).map_err(db_err)?;
            for f in &g.floors {
                for lane in Lane::ALL {
                    let Some(floor) = f.floors[lane.index()] else {
                        continue;
                    };
                    let v = floor_value(floor, f.key_id, f.records[lane.index()]);
                    lanes
                        .insert(lane_key(f.session, lane).as_slice(), v.as_slice())
                        .map_err(db_err)?;
                    let below =
                        delivered_key(f.session, lane, 0)..delivered_key(f.session, lane, floor);
                    delivered
                        .retain_in(below.start.as_slice()..below.end.as_slice(), |_, ()| false)
                        .map_err(db_err)?;
                    // The summary just below the floor stays: it bounds a
                    // loss starting at the floor.
                    let below = delivered_key(f.session, lane, 0)
                        ..delivered_key(f.session, lane, floor.saturating_sub(1));
                    summaries
                        .retain_in(below.start.as_slice()..below.end.as_slice(), |_, _| false)
                        .map_err(db_err)?;
                }
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(freed)
    }

    /// Commit lane state alone: what the writer does for blocks and
    /// floors (for tests of the stages that resume from it).
    #[cfg(test)]
    pub(super) fn commit_lane_state(
        &self,
        floors: LaneFloors,
        resolved: &[(Lane, u64)],
    ) -> Result<(), OutboxError> {
        let g = Group {
            delivered: resolved
                .iter()
                .map(|&(lane, seq)| delivered_key(floors.session, lane, seq))
                .collect(),
            floors: vec![floors],
            ..Group::default()
        };
        self.commit(&g).map(|_| ())
    }

    /// Up to `n` entries of `table` after `after` (from the start if `None`).
    fn read(
        &self,
        table: Table,
        after: Option<u64>,
        n: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        self.on_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(table.def()).map_err(db_err)?;
            let from = after.map_or(0, |k| k.saturating_add(1));
            let mut out = Vec::with_capacity(n);
            for r in t.range(from..).map_err(db_err)?.take(n) {
                let (k, v) = r.map_err(db_err)?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// Run `f` on the database; when it refuses because an earlier write
    /// failed (a full disk), open it again and retry once. Readers and the
    /// writer alike: whoever meets the refusal first reopens.
    fn on_db<T>(&self, f: impl Fn(&Database) -> Result<T, OutboxError>) -> Result<T, OutboxError> {
        let first = {
            let db = self.db();
            db.as_ref().map_or(Err(OutboxError::Closed), &f)
        };
        match first {
            Err(OutboxError::Closed | OutboxError::Db(redb::Error::PreviousIo)) => {
                self.reopen()?;
                let db = self.db();
                db.as_ref().map_or(Err(OutboxError::Closed), &f)
            }
            r => r,
        }
    }

    /// Entries held in `table`.
    pub fn len(&self, table: Table) -> Result<u64, OutboxError> {
        use redb::ReadableTableMetadata;
        self.on_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(table.def()).map_err(db_err)?;
            t.len().map_err(db_err)
        })
    }
}

/// How long a reader waits before reading a failing outbox again.
const READ_RETRY: Duration = Duration::from_millis(200);

/// Commit progress the readers wait on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bumped after every commit that stored something.
    pub commits: u64,
    /// No more entries will be stored.
    pub closed: bool,
}

/// Most entries in one group commit.
const GROUP: usize = 512;
/// Most bytes in one group commit: a bigger transaction only costs more
/// copying per byte.
const GROUP_BYTES: usize = 8 << 20;

fn item_bytes(i: &Item) -> usize {
    match i {
        Item::Block(b) => b.frame.len(),
        Item::Event(m) => m.payload.len(),
        Item::DqState(s) => s.len(),
        Item::Floors(_) => 0,
    }
}
/// How often acknowledged entries past their retention are deleted.
const SWEEP: Duration = Duration::from_millis(100);

/// The writer's channels.
pub struct WriterIo {
    /// Blocks and events from decode.
    pub items: Receiver<Item>,
    /// Entries whose every message the broker acknowledged.
    pub acked: UnboundedReceiver<EntryRef>,
    /// Commit progress, for the readers.
    pub progress: watch::Sender<Progress>,
    /// Direct path to the publisher for a gap report the disk refused.
    pub fallback: Sender<Vec<Message>>,
    /// The gaps topic.
    pub gaps_topic: String,
    /// Where the frames of bulk blocks the outbox refused go (the
    /// data-quality stage, to forget their points: they were never
    /// published).
    pub refused: Option<UnboundedSender<Vec<u8>>>,
    /// The gap ledger file: a block the outbox refuses is written down
    /// there, counted from its own summary, like any other lost block
    /// (`None`: counted and reported only).
    pub gap_log: Option<Arc<std::sync::Mutex<super::ledger::GapLog>>>,
}

impl WriterIo {
    /// The writer's channels, with no gap ledger file of its own yet
    /// ([`WriterIo::with_gaps`]) and no refused-frame path.
    pub fn new(
        items: Receiver<Item>,
        acked: UnboundedReceiver<EntryRef>,
        progress: watch::Sender<Progress>,
        fallback: Sender<Vec<Message>>,
    ) -> Self {
        Self {
            items,
            acked,
            progress,
            fallback,
            gaps_topic: String::new(),
            refused: None,
            gap_log: None,
        }
    }

    /// Write refused blocks down in this gap ledger file, and report them
    /// on this topic.
    #[must_use]
    pub fn with_gaps(
        mut self,
        topic: String,
        log: Arc<std::sync::Mutex<super::ledger::GapLog>>,
    ) -> Self {
        self.gaps_topic = topic;
        self.gap_log = Some(log);
        self
    }

    /// Hand refused bulk frames to the data-quality stage.
    #[must_use]
    pub fn with_refused(mut self, refused: UnboundedSender<Vec<u8>>) -> Self {
        self.refused = Some(refused);
        self
    }
}

/// The writer's state between commits.
struct Writer {
    outbox: Arc<Outbox>,
    cfg: OutboxConfig,
    stats: Arc<RxStats>,
    next_key: u64,
    /// Block bytes held.
    bytes: u64,
    /// Acknowledged entries, oldest first, with when.
    retained: VecDeque<(Instant, EntryRef)>,
    /// See [`WriterIo::refused`].
    refused: Option<UnboundedSender<Vec<u8>>>,
    /// The last commit failed (for saying when it works again).
    failing: bool,
    /// See [`WriterIo::gap_log`].
    gap_log: Option<Arc<std::sync::Mutex<super::ledger::GapLog>>>,
}

/// One group commit, planned.
#[derive(Default)]
struct Group {
    puts: Vec<(EntryRef, Vec<u8>)>,
    dels: Vec<EntryRef>,
    added: u64,
    /// The newest data-quality state in the batch.
    dq_state: Option<Vec<u8>>,
    /// [`DELIVERED`] keys of the blocks stored or refused.
    delivered: Vec<[u8; 25]>,
    /// [`SUMMARIES`] rows of the blocks stored or refused.
    summaries: Vec<([u8; 25], Vec<u8>)>,
    /// Lane floors, in the order handed over.
    floors: Vec<LaneFloors>,
    /// The blocks' shares of the decode budget, given back once committed.
    held: Vec<super::budget::Held>,
    /// The blocks put, with their summaries: a failed commit writes each
    /// down in the gap ledger.
    blocks: Vec<(EntryRef, GapEntry)>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.puts.is_empty()
            && self.dels.is_empty()
            && self.dq_state.is_none()
            && self.floors.is_empty()
    }
}

impl Writer {
    /// Hand a refused bulk block's frame back (see [`WriterIo::refused`]).
    fn forget(&self, b: &OpenedBlock) {
        if b.lane == Lane::Bulk
            && let Some(tx) = &self.refused
        {
            let _ = tx.send(b.frame.clone());
        }
    }

    /// A block the outbox refuses: written down in the gap ledger with
    /// the records its summary counts; its gaps-topic message back.
    fn refuse(&self, entry: &GapEntry, gaps_topic: &str) -> Message {
        add(&self.stats.outbox_refused, 1);
        super::ledger::write_gap(self.gap_log.as_deref(), &self.stats, gaps_topic, entry)
    }

    fn next(&mut self, table: Table) -> EntryRef {
        let key = self.next_key;
        self.next_key += 1;
        EntryRef { table, key }
    }

    /// Place `batch` within `max_bytes` (a refused block becomes a gap
    /// event) and pick the acknowledged entries due for deletion.
    fn plan(&mut self, batch: Vec<Item>, draining: bool, gaps_topic: &str) -> Group {
        let mut g = Group::default();
        let t = now();
        while let Some(&(at, r)) = self.retained.front() {
            if !draining && t.duration_since(at) < self.cfg.retain_acked {
                break;
            }
            self.retained.pop_front();
            g.dels.push(r);
        }
        for item in batch {
            let item = match item {
                Item::DqState(s) => {
                    g.dq_state = Some(s);
                    continue;
                }
                Item::Floors(f) => {
                    g.floors.push(f);
                    continue;
                }
                Item::Block(mut b) => {
                    let key = delivered_key(b.session, b.lane, b.seq);
                    g.delivered.push(key);
                    if let Some(v) = b
                        .summary
                        .as_ref()
                        .and_then(weir_shared::ledger::BlockSummary::to_bytes)
                    {
                        g.summaries.push((key, v));
                    }
                    g.held.extend(b.held.take());
                    Body::Block(b)
                }
                Item::Event(m) => Body::Event(m),
            };
            let (table, v) = encode_body(&item);
            let n = v.len() as u64;
            if table != Table::Events && self.bytes + g.added + n > self.cfg.max_bytes {
                if let Body::Block(b) = &item {
                    self.forget(b);
                    tracing::error!(
                        seq = b.seq,
                        lane = b.lane.as_str(),
                        "Outbox full: block written down as lost in the gap ledger."
                    );
                    let msg = self.refuse(&lost_block(b, GapCause::OutboxFull), gaps_topic);
                    let (_, ev) = encode_body(&Body::Event(msg));
                    let at = self.next(Table::Events);
                    g.puts.push((at, ev));
                }
                continue;
            }
            if table != Table::Events {
                g.added += n;
            }
            let at = self.next(table);
            if let Body::Block(b) = &item {
                g.blocks.push((at, lost_block(b, GapCause::OutboxError)));
            }
            g.puts.push((at, v));
        }
        g
    }

    /// Commit a group; on failure its blocks are lost (counted, reported
    /// through `fallback`) and its deletions retried later.
    async fn commit(&mut self, g: Group, io: &WriterIo) -> Result<(), StageError> {
        let stored = g.puts.len() as u64;
        let added = g.added;
        let db = self.outbox.clone();
        let (
            r,
            Group {
                puts, dels, blocks, ..
            },
        ) = tokio::task::spawn_blocking(move || {
            let r = db.commit(&g);
            (r, g)
        })
        .await
        .map_err(|e| StageError::Outbox(e.to_string()))?;
        match r {
            Ok(freed) => {
                if self.failing {
                    tracing::warn!("Outbox writable again.");
                }
                self.failing = false;
                self.bytes = (self.bytes + added).saturating_sub(freed);
                add(&self.stats.outbox_committed, stored);
                if stored > 0 {
                    io.progress.send_modify(|p| p.commits += 1);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "Outbox commit failed: blocks counted as lost.");
                self.failing = true;
                for (at, v) in &puts {
                    // Blocks become gap reports; events (gap, audit) go to
                    // the publisher as they are.
                    let msg = match decode_body(*at, v) {
                        Ok(Body::Block(b)) => {
                            self.forget(&b);
                            let Some((_, entry)) = blocks.iter().find(|(r, _)| r == at) else {
                                continue;
                            };
                            self.refuse(entry, &io.gaps_topic)
                        }
                        Ok(Body::Event(m)) => m,
                        Err(_) => continue,
                    };
                    // The publisher's queue is full: wait for room apart.
                    if let Err(TrySendError::Full(m)) = io.fallback.try_send(vec![msg]) {
                        let tx = io.fallback.clone();
                        tokio::spawn(async move { tx.send(m).await });
                    }
                }
                let t = now();
                for d in dels {
                    self.retained.push_front((t, d));
                }
            }
        }
        self.stats
            .outbox_bytes
            .store(self.bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Run the writer until decode and publish are both gone.
pub async fn write(
    outbox: Arc<Outbox>,
    cfg: OutboxConfig,
    stats: Arc<RxStats>,
    mut io: WriterIo,
) -> Result<(), StageError> {
    let scan = outbox.clone();
    let (next_key, bytes) = tokio::task::spawn_blocking(move || scan.scan())
        .await
        .map_err(OutboxError::from)
        .and_then(|r| r)
        .map_err(|e| StageError::Outbox(e.to_string()))?;
    let mut w = Writer {
        outbox,
        cfg,
        stats,
        next_key,
        bytes,
        retained: VecDeque::new(),
        refused: io.refused.take(),
        failing: false,
        gap_log: io.gap_log.clone(),
    };
    let mut items_open = true;
    let mut acks_open = true;
    let mut said_closed = false;
    let mut sweep = tokio::time::interval(SWEEP);
    while items_open || acks_open {
        if !items_open && !said_closed {
            // Everything decode gave is committed: readers may finish.
            said_closed = true;
            io.progress.send_modify(|p| p.closed = true);
        }
        let mut batch: Vec<Item> = Vec::new();
        tokio::select! {
            i = io.items.recv(), if items_open => match i {
                Some(i) => batch.push(i),
                None => items_open = false,
            },
            a = io.acked.recv(), if acks_open => match a {
                Some(a) => w.retained.push_back((now(), a)),
                None => acks_open = false,
            },
            _ = sweep.tick() => {}
        }
        let mut bytes: usize = batch.iter().map(item_bytes).sum();
        while batch.len() < GROUP && bytes < GROUP_BYTES {
            match io.items.try_recv() {
                Ok(i) => {
                    bytes += item_bytes(&i);
                    batch.push(i);
                }
                Err(_) => break,
            }
        }
        while let Ok(a) = io.acked.try_recv() {
            w.retained.push_back((now(), a));
        }
        let g = w.plan(batch, !items_open, &io.gaps_topic);
        if !g.is_empty() {
            w.commit(g, &io).await?;
        }
    }
    io.progress.send_modify(|p| p.closed = true);
    Ok(())
}

/// A block the outbox could not keep, as a gap entry of `cause`.
fn lost_block(b: &OpenedBlock, cause: GapCause) -> GapEntry {
    GapEntry::for_block(b.session, b.lane, b.seq, b.summary.as_ref(), cause)
}

/// Read `table` in key order into `out`, at most `window` entries not yet
/// done at once; start again from the oldest entry when `rewind` moves.
/// Ends once the writer is closed and the table read to its end.
pub async fn read(
    outbox: Arc<Outbox>,
    table: Table,
    window: usize,
    mut progress: watch::Receiver<Progress>,
    mut rewind: watch::Receiver<u64>,
    out: Sender<Entry>,
) -> Result<(), StageError> {
    let sem = Arc::new(Semaphore::new(window));
    let mut cursor: Option<u64> = None;
    loop {
        if rewind.has_changed().unwrap_or(false) {
            rewind.mark_unchanged();
            cursor = None;
        }
        let seen = *progress.borrow_and_update();
        let Ok(first) = sem.clone().acquire_owned().await else {
            return Ok(());
        };
        let mut permits = vec![first];
        while permits.len() < GROUP {
            match sem.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let db = outbox.clone();
        let n = permits.len();
        let rows = match tokio::task::spawn_blocking(move || db.read(table, cursor, n))
            .await
            .map_err(OutboxError::from)
            .and_then(|r| r)
        {
            Ok(rows) => rows,
            Err(e) => {
                // A failing disk: what is stored stays stored; read again
                // once the database can be opened again.
                tracing::error!(table = table.name(), error = %e, "Outbox not readable; retrying.");
                drop(permits);
                tokio::time::sleep(READ_RETRY).await;
                continue;
            }
        };
        let got = rows.len();
        for ((key, v), permit) in rows.into_iter().zip(permits.drain(..got)) {
            cursor = Some(key);
            let at = EntryRef { table, key };
            match decode_body(at, &v) {
                Ok(body) => {
                    let entry = Entry {
                        at: Some(at),
                        body,
                        permit,
                    };
                    if out.send(entry).await.is_err() {
                        return Err(StageError::Closed("outbox"));
                    }
                }
                Err(e) => {
                    // Kept on disk for inspection; skipped here.
                    tracing::error!(error = %e, "Skipping an unreadable outbox entry.");
                }
            }
        }
        drop(permits);
        if got == 0 {
            if seen.closed {
                return Ok(());
            }
            tokio::select! {
                r = progress.changed() => if r.is_err() { return Ok(()) },
                r = rewind.changed() => match r {
                    Ok(()) => cursor = None,
                    Err(_) => return Ok(()),
                },
            }
        }
    }
}

/// The alert lane's fast path: the alert blocks decode handed to the
/// writer, as they were handed over, into `out` while the writer commits
/// them, at most `window` not yet done at once. Their committed entries
/// follow through [`read`]; `publish` publishes whichever comes first and
/// lets the entry join (see the module docs).
pub async fn read_fast(
    mut from_decode: Receiver<OpenedBlock>,
    window: usize,
    out: Sender<Entry>,
) -> Result<(), StageError> {
    let sem = Arc::new(Semaphore::new(window));
    while let Some(block) = from_decode.recv().await {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            return Ok(());
        };
        let entry = Entry {
            at: None,
            body: Body::Block(block),
            permit,
        };
        if out.send(entry).await.is_err() {
            return Err(StageError::Closed("outbox fast path"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(lane: Lane, seq: u64, frame: &[u8]) -> Body {
        Body::Block(OpenedBlock {
            session: SessionId([7; 16]),
            lane,
            seq,
            frame: frame.to_vec(),
            verdicts: (lane == Lane::Bulk).then(|| b"dq".to_vec()),
            held: None,
            summary: None,
        })
    }

    #[test]
    fn entries_round_trip_and_malformed_ones_are_refused() {
        let at = EntryRef {
            table: Table::Bulk,
            key: 3,
        };
        let (t, v) = encode_body(&block(Lane::Bulk, 42, b"frame"));
        assert_eq!(t, Table::Bulk);
        let Ok(Body::Block(b)) = decode_body(at, &v) else {
            panic!("block entry did not decode");
        };
        assert_eq!(
            (b.seq, b.lane, b.frame.as_slice()),
            (42, Lane::Bulk, &b"frame"[..])
        );
        assert!(decode_body(at, &v[..10]).is_err());
        let ev = Body::Event(Message {
            topic: "a/b".into(),
            payload: b"{}".to_vec(),
            retain: true,
        });
        let (t, v) = encode_body(&ev);
        let at = EntryRef { table: t, key: 4 };
        let Ok(Body::Event(m)) = decode_body(at, &v) else {
            panic!("event entry did not decode");
        };
        assert_eq!(
            (m.topic.as_str(), m.payload.as_slice(), m.retain),
            ("a/b", &b"{}"[..], true)
        );
        assert!(decode_body(at, &[0, 9, 0, b'a']).is_err());
    }

    #[test]
    fn commits_survive_reopening_and_deletes_free_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.redb");
        let a = EntryRef {
            table: Table::Alert,
            key: 0,
        };
        let b = EntryRef {
            table: Table::Bulk,
            key: 1,
        };
        {
            let o = Outbox::open(&path).expect("open");
            let (_, va) = encode_body(&block(Lane::Alert, 1, b"alert"));
            let (_, vb) = encode_body(&block(Lane::Bulk, 1, b"bulk!!"));
            let g = Group {
                puts: vec![(a, va), (b, vb)],
                dq_state: Some(b"state".to_vec()),
                ..Group::default()
            };
            o.commit(&g).expect("commit");
        }
        let o = Outbox::open(&path).expect("reopen");
        let (next, bytes) = o.scan().expect("scan");
        assert_eq!(next, 2);
        // The bulk block carries 2 bytes of verdicts behind a 4-byte length.
        assert_eq!(bytes, (2 * BLOCK_HEAD + 11 + 6) as u64);
        assert_eq!(o.read(Table::Bulk, None, 10).expect("read").len(), 1);
        assert_eq!(o.read(Table::Bulk, Some(1), 10).expect("read").len(), 0);
        let g = Group {
            dels: vec![a],
            ..Group::default()
        };
        o.commit(&g).expect("delete");
        assert_eq!(o.dq_state().expect("meta").as_deref(), Some(&b"state"[..]));
        assert_eq!(o.bd_seq().expect("meta"), None);
        o.set_bd_seq(201).expect("bd_seq");
        drop(o);
        let o = Outbox::open(&path).expect("reopen");
        assert_eq!(o.bd_seq().expect("meta"), Some(201));
        assert_eq!(o.len(Table::Alert).expect("len"), 0);
        assert_eq!(o.scan().expect("scan").1, (BLOCK_HEAD + 6 + 6) as u64);
    }

    #[test]
    fn lane_state_resumes_exactly_and_forgets_other_sessions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.redb");
        let (s1, s2, s3) = (SessionId([1; 16]), SessionId([2; 16]), SessionId([3; 16]));
        let floors = |session, alert, bulk: Option<u64>| LaneFloors {
            session,
            key_id: KeyId(7),
            floors: [alert, bulk],
            records: [None, bulk.map(|b| (b * 100, Some(-5)))],
        };
        let summary = |block: u64| weir_shared::ledger::BlockSummary {
            block,
            first_record: block * 100,
            records: 100,
            sources: vec![format!("f{block}")],
            ..Default::default()
        };
        let row = |session, q| {
            (
                delivered_key(session, Lane::Bulk, q),
                summary(q).to_bytes().expect("summary"),
            )
        };
        {
            let o = Outbox::open(&path).expect("open");
            // Blocks 10..=14 of s1's bulk lane resolved, then a floor of
            // 12: keys below it go, the rest stay.
            let g = Group {
                delivered: (10..=14)
                    .map(|q| delivered_key(s1, Lane::Bulk, q))
                    .chain([delivered_key(s2, Lane::Alert, 3)])
                    .collect(),
                summaries: (10..=14).map(|q| row(s1, q)).collect(),
                floors: vec![floors(s1, None, Some(12)), floors(s2, Some(3), None)],
                ..Group::default()
            };
            o.commit(&g).expect("commit");
            // A later floor for the same lane replaces the first.
            let g = Group {
                delivered: vec![delivered_key(s1, Lane::Bulk, 20)],
                summaries: vec![row(s1, 20)],
                floors: vec![floors(s1, None, Some(13))],
                ..Group::default()
            };
            o.commit(&g).expect("commit");
            // s3 stored blocks, but stopped before its first floor.
            let g = Group {
                delivered: vec![
                    delivered_key(s3, Lane::Bulk, 5),
                    delivered_key(s3, Lane::Bulk, 2),
                ],
                summaries: vec![row(s3, 2), row(s3, 5)],
                ..Group::default()
            };
            o.commit(&g).expect("commit");
        }
        let o = Outbox::open(&path).expect("reopen");
        let keep = |s| (s == s1 || s == s3).then_some(KeyId(9));
        let r = o.resume(keep).expect("resume");
        assert_eq!(
            r,
            vec![
                LaneResume {
                    session: s1,
                    key_id: KeyId(7),
                    lane: Lane::Bulk,
                    floor: Some(13),
                    delivered: vec![13, 14, 20],
                    records: Some((1300, Some(-5))),
                    // The one just below the floor stays: it bounds a loss
                    // starting there.
                    summaries: vec![summary(12), summary(13), summary(14), summary(20)],
                },
                // Its delivered blocks are still known, with their summaries.
                LaneResume {
                    session: s3,
                    key_id: KeyId(9),
                    lane: Lane::Bulk,
                    floor: None,
                    delivered: vec![2, 5],
                    records: None,
                    summaries: vec![summary(2), summary(5)],
                },
            ]
        );
        // s2 was not kept: its state is gone for good.
        assert_eq!(o.resume(|_| Some(KeyId(9))).expect("resume"), r);
        assert_eq!(parse_delivered_key(&[0; 24]), None);
        assert_eq!(parse_lane_key(&[0; 18]), None);
    }
}
