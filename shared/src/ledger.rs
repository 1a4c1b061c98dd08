//! The loss ledger: what every block carried, so that a block the link
//! lost is still accounted for record by record.
//!
//! ```text
//!  sender:   records ──SummaryBuilder──> BlockSummary ──> trailer of this block
//!                                                     └─> trailer of the next HISTORY blocks,
//!                                                         and the heartbeat (tail)
//!  receiver: delivered blocks' trailers ─┐
//!            heartbeats (start, tail) ───┼─> Ledger ──> GapEntry (blocks, records, sources, time span)
//!            lost block ranges ──────────┘
//! ```
//!
//! Every record carries a per-lane sequence number (assigned by the
//! sender's batcher, persisted across sender restarts), so the records of
//! one lane form one unbroken run. A block's summary says which run of
//! records it carried, from which sources, over which time span. A lost
//! block is described by the trailers of the blocks after it (each block
//! repeats the summaries of the [`HISTORY`] blocks before it); a longer run
//! of lost blocks is still counted exactly from the record numbers of the
//! delivered blocks (or heartbeat marks) on either side of it.
//!
//! Block plaintext: `frame ‖ postcard(Vec<BlockSummary>) ‖ u16 trailer
//! length` (big-endian). The trailer is appended after the frame so the
//! sender never copies a block to add it and the receiver only truncates.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::lane::Lane;
use crate::record::Record;
use crate::wire::SessionId;

/// Blocks before this one described in each block's trailer.
pub const HISTORY: usize = 4;
/// Most distinct sources named in one summary; the rest are counted.
pub const MAX_SOURCES: usize = 4;
/// Longest source name kept in a summary, bytes.
pub const MAX_SOURCE_LEN: usize = 96;
/// Largest trailer accepted, bytes.
pub const MAX_TRAILER: usize = 8 * 1024;

/// What one block carried.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSummary {
    /// Block sequence number (within session and lane).
    pub block: u64,
    /// Record sequence number of the block's first record (or, for a
    /// block without records, the next record's).
    pub first_record: u64,
    /// Records in the block.
    pub records: u64,
    /// Earliest record time, ns since the epoch.
    pub t_min_ns: Option<i64>,
    /// Latest record time, ns since the epoch.
    pub t_max_ns: Option<i64>,
    /// Sources of the records (spool file, alert source and host, file
    /// name), at most [`MAX_SOURCES`].
    pub sources: Vec<String>,
    /// Further sources not named.
    pub more_sources: u32,
}

impl BlockSummary {
    /// The summary as bytes, to keep (the receiver's outbox).
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        postcard::to_allocvec(self).ok()
    }

    /// A summary kept by [`BlockSummary::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, LedgerError> {
        postcard::from_bytes(b).map_err(|_| LedgerError::Decode)
    }

    /// Record sequence number after the block's last record.
    pub fn end_record(&self) -> u64 {
        self.first_record.saturating_add(self.records)
    }
}

/// Why a block's trailer could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Shorter than its trailer claims, or the trailer is oversized.
    #[error("block trailer truncated or oversized")]
    Trailer,
    /// The trailer did not decode.
    #[error("block trailer undecodable")]
    Decode,
    /// Too large to encode.
    #[error("block trailer too large")]
    TooLarge,
}

/// Where a record came from, for the ledger: borrowed where the record
/// holds it (a point's file, a chunk's name), built only for alerts.
pub fn record_source(r: &Record) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let s: Cow<'_, str> = match r {
        Record::Point(p) => Cow::Borrowed(
            p.source
                .file
                .as_deref()
                .unwrap_or_else(|| p.source.system.as_str()),
        ),
        Record::Alert(a) => match &a.host {
            Some(h) => Cow::Owned(format!("{}:{h}", a.source.as_str())),
            None => Cow::Borrowed(a.source.as_str()),
        },
        Record::FileChunk(c) => Cow::Borrowed(&c.name),
    };
    if s.len() <= MAX_SOURCE_LEN {
        return s;
    }
    let mut cut = MAX_SOURCE_LEN;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(s[..cut].to_owned())
}

/// The time a record speaks of, ns since the epoch.
pub fn record_time(r: &Record) -> Option<i64> {
    match r {
        Record::Point(p) => Some(p.ts_ns),
        Record::Alert(a) => Some(a.event_time_ns),
        Record::FileChunk(c) => Some(c.mtime_ns),
    }
}

/// Builds a block's summary as records are batched (sender side).
#[derive(Debug, Default)]
pub struct SummaryBuilder {
    first_record: Option<u64>,
    records: u64,
    t_min_ns: Option<i64>,
    t_max_ns: Option<i64>,
    sources: Vec<String>,
    more_sources: u32,
}

impl SummaryBuilder {
    /// Account for `record`, numbered `seq`.
    pub fn add(&mut self, seq: u64, record: &Record) {
        self.first_record.get_or_insert(seq);
        self.records += 1;
        if let Some(t) = record_time(record) {
            self.t_min_ns = Some(self.t_min_ns.map_or(t, |m| m.min(t)));
            self.t_max_ns = Some(self.t_max_ns.map_or(t, |m| m.max(t)));
        }
        // Records of one source come in runs: comparing borrowed names
        // allocates nothing for the records of a source already named.
        let source = record_source(record);
        if self.sources.iter().rev().any(|s| *s == source) {
            return;
        }
        if self.sources.len() < MAX_SOURCES {
            self.sources.push(source.into_owned());
        } else {
            self.more_sources = self.more_sources.saturating_add(1);
        }
    }

    /// The summary so far (block number 0: the seal stage numbers it);
    /// `next_record` is used as `first_record` of an empty block. Resets.
    pub fn finish(&mut self, next_record: u64) -> BlockSummary {
        let b = std::mem::take(self);
        BlockSummary {
            block: 0,
            first_record: b.first_record.unwrap_or(next_record),
            records: b.records,
            t_min_ns: b.t_min_ns,
            t_max_ns: b.t_max_ns,
            sources: b.sources,
            more_sources: b.more_sources,
        }
    }
}

/// Append the trailer (`summaries`, this block's first) to a block's
/// plaintext.
pub fn append_trailer(summaries: &[BlockSummary], plain: &mut Vec<u8>) -> Result<(), LedgerError> {
    let before = plain.len();
    let out = std::mem::take(plain);
    *plain = postcard::to_extend(summaries, out).map_err(|_| LedgerError::TooLarge)?;
    let len = plain.len() - before;
    if len > MAX_TRAILER {
        plain.truncate(before);
        return Err(LedgerError::TooLarge);
    }
    let len = u16::try_from(len).map_err(|_| LedgerError::TooLarge)?;
    plain.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Split a block's plaintext: the summaries of its trailer, and the length
/// of the frame before it.
pub fn split_trailer(plain: &[u8]) -> Result<(Vec<BlockSummary>, usize), LedgerError> {
    let (rest, len) = plain.split_last_chunk::<2>().ok_or(LedgerError::Trailer)?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len > MAX_TRAILER || len > rest.len() {
        return Err(LedgerError::Trailer);
    }
    let frame_len = rest.len() - len;
    let summaries: Vec<BlockSummary> =
        postcard::from_bytes(&rest[frame_len..]).map_err(|_| LedgerError::Decode)?;
    if summaries.len() > HISTORY + 1 || summaries.iter().any(|s| s.sources.len() > MAX_SOURCES) {
        return Err(LedgerError::Decode);
    }
    Ok((summaries, frame_len))
}

/// Why records were not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapCause {
    /// The link lost more than forward error correction could repair.
    Link,
    /// Sent while this receiver was not listening (stopped, restarting,
    /// or not yet started).
    ReceiverDown,
    /// Rebuilt, but shed because the receiver was overloaded.
    Shed,
    /// Authentic, but the outbox had no room for it (`outbox.max_bytes`).
    OutboxFull,
    /// Authentic, but the disk refused to store it (a full or failing disk).
    OutboxError,
}

impl GapCause {
    /// Name used in payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Link => "link",
            Self::ReceiverDown => "receiver_down",
            Self::Shed => "shed",
            Self::OutboxFull => "outbox_full",
            Self::OutboxError => "outbox_error",
        }
    }
}

/// One entry of the gap ledger: records that will never be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapEntry {
    /// Sender session.
    pub session: SessionId,
    /// Lane.
    pub lane: Lane,
    /// First block not delivered.
    pub first_block: u64,
    /// Last block not delivered (inclusive).
    pub last_block: u64,
    /// First record not delivered, when known.
    pub first_record: Option<u64>,
    /// Records not delivered, when known (`None`: the blocks on both sides
    /// and the sender's heartbeats were lost too).
    pub records: Option<u64>,
    /// Earliest time the lost records can speak of (a bound when the
    /// blocks themselves were not described).
    pub t_first_ns: Option<i64>,
    /// Latest time the lost records can speak of.
    pub t_last_ns: Option<i64>,
    /// Sources of the lost records, as far as described.
    pub sources: Vec<String>,
    /// Whether `sources` is complete (every lost block was described).
    pub sources_complete: bool,
    /// Why.
    pub cause: GapCause,
    /// Why `records` is unknown, when it is.
    pub uncounted: Option<&'static str>,
}

/// Why a run's records cannot be counted: nothing that bounds it arrived.
pub const UNCOUNTED_NEIGHBOURS: &str =
    "the blocks on both sides of the run, and the heartbeats that name its ends, were lost too";
/// Why the end of a session the receiver was down for cannot be counted:
/// its successor does not carry how it ended.
pub const UNCOUNTED_SESSION_END: &str = "the sender session ended while this receiver was down, and how it ended is not known: it stopped uncleanly, or more sessions ran meanwhile than a heartbeat carries (4); from first_block on, what it sent is not known here";
/// Why a single block's records cannot be counted: it carried no summary.
pub const UNCOUNTED_NO_SUMMARY: &str = "the block carried no summary of its records";

impl GapEntry {
    /// One authentic block that will not be delivered, described by its
    /// own summary (from its trailer).
    pub fn for_block(
        session: SessionId,
        lane: Lane,
        seq: u64,
        summary: Option<&BlockSummary>,
        cause: GapCause,
    ) -> Self {
        Self {
            session,
            lane,
            first_block: seq,
            last_block: seq,
            first_record: summary.map(|s| s.first_record),
            records: summary.map(|s| s.records),
            t_first_ns: summary.and_then(|s| s.t_min_ns),
            t_last_ns: summary.and_then(|s| s.t_max_ns),
            sources: summary.map(|s| s.sources.clone()).unwrap_or_default(),
            sources_complete: summary.is_some_and(|s| s.more_sources == 0),
            cause,
            uncounted: summary.is_none().then_some(UNCOUNTED_NO_SUMMARY),
        }
    }

    /// Blocks in the entry.
    pub fn blocks(&self) -> u64 {
        self.last_block - self.first_block + 1
    }
}

/// Bounds of the receiver's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerLimits {
    /// Block summaries kept per (session, lane).
    pub max_summaries: usize,
    /// Sessions tracked.
    pub max_sessions: usize,
    /// A lost run still not countable after this long is reported with
    /// what is known.
    pub resolve_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    last: u64,
    cause: GapCause,
    since: Instant,
}

#[derive(Debug, Default)]
struct LaneLedger {
    /// Known summaries by block.
    summaries: BTreeMap<u64, BlockSummary>,
    /// Lost runs not yet reported: first block → run.
    runs: BTreeMap<u64, Run>,
    /// The session's first block and its first record (heartbeat).
    start: Option<(u64, u64)>,
    /// Last block sent and the record after it (heartbeat).
    tail: Option<(u64, u64)>,
    /// Record numbers where blocks start, known without their summaries:
    /// block → (record, time of the last record before it). From a
    /// restarted receiver's stored lane floors, and from runs already
    /// counted.
    anchors: BTreeMap<u64, (u64, Option<i64>)>,
}

/// Anchors kept per lane; the lowest go first.
const MAX_ANCHORS: usize = 64;

/// The receiver's ledger. Sans-IO: the caller passes `now`.
#[derive(Debug)]
pub struct Ledger {
    limits: LedgerLimits,
    lanes: HashMap<(SessionId, Lane), LaneLedger>,
    order: Vec<SessionId>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new(limits: LedgerLimits) -> Self {
        Self {
            limits,
            lanes: HashMap::new(),
            order: Vec::new(),
        }
    }

    fn lane(&mut self, session: SessionId, lane: Lane) -> &mut LaneLedger {
        if !self.order.contains(&session) {
            if self.order.len() >= self.limits.max_sessions {
                let old = self.order.remove(0);
                self.lanes.retain(|(s, _), _| *s != old);
            }
            self.order.push(session);
        }
        self.lanes.entry((session, lane)).or_default()
    }

    /// The first block of the lowest lost run of a lane not yet reported,
    /// if any: a durable record of how far the lane is resolved must stay
    /// below it.
    pub fn pending_from(&self, session: SessionId, lane: Lane) -> Option<u64> {
        self.lanes
            .get(&(session, lane))
            .and_then(|l| l.runs.keys().next().copied())
    }

    /// A delivered block's trailer: its own summary and its predecessors'.
    pub fn describe(&mut self, session: SessionId, lane: Lane, summaries: &[BlockSummary]) {
        let max = self.limits.max_summaries;
        let l = self.lane(session, lane);
        for s in summaries {
            l.summaries.insert(s.block, s.clone());
        }
        // Keep what unresolved runs may still need, and the newest.
        while l.summaries.len() > max {
            let Some((&lowest, _)) = l.summaries.first_key_value() else {
                break;
            };
            let needed = l.runs.keys().next().is_some_and(|&f| lowest + 1 >= f);
            if needed && l.summaries.len() <= max * 2 {
                break;
            }
            l.summaries.remove(&lowest);
        }
    }

    /// Block `block` of a lane starts at record `record`, and the record
    /// before it was from `t_ns`: what a restarted receiver knows of the
    /// block at its stored floor.
    pub fn anchor(
        &mut self,
        session: SessionId,
        lane: Lane,
        block: u64,
        record: u64,
        t_ns: Option<i64>,
    ) {
        let l = self.lane(session, lane);
        l.anchors.insert(block, (record, t_ns));
        while l.anchors.len() > MAX_ANCHORS {
            l.anchors.pop_first();
        }
    }

    /// The record number where block `block` starts, and the time of the
    /// record before it, if known: what a lane floor at `block` is stored
    /// with, so that a restarted receiver counts a loss starting there.
    pub fn boundary(
        &self,
        session: SessionId,
        lane: Lane,
        block: u64,
    ) -> Option<(u64, Option<i64>)> {
        let l = self.lanes.get(&(session, lane))?;
        before(l, block).or_else(|| start_of(l, block).map(|(r, _)| (r, None)))
    }

    /// An authenticated heartbeat: the session's first block and record,
    /// and its last sent block with the record after it, for one lane.
    pub fn mark(
        &mut self,
        session: SessionId,
        lane: Lane,
        start: Option<(u64, u64)>,
        tail: Option<(u64, u64)>,
    ) {
        let l = self.lane(session, lane);
        if start.is_some() {
            l.start = start;
        }
        if let Some(t) = tail
            && l.tail.is_none_or(|old| t.0 >= old.0)
        {
            l.tail = Some(t);
        }
    }

    /// Blocks `first..=last` will not be delivered.
    pub fn lost(
        &mut self,
        now: Instant,
        session: SessionId,
        lane: Lane,
        first: u64,
        last: u64,
        cause: GapCause,
    ) {
        let l = self.lane(session, lane);
        // Merge with a run ending just before, of the same cause.
        if let Some((_, run)) = l.runs.range_mut(..first).next_back()
            && run.last.saturating_add(1) == first
            && run.cause == cause
        {
            run.last = run.last.max(last);
            return;
        }
        l.runs.insert(
            first,
            Run {
                last,
                cause,
                since: now,
            },
        );
    }

    /// Entries that can be reported now: runs whose records can be counted,
    /// and runs that waited `resolve_timeout`.
    pub fn poll(&mut self, now: Instant) -> Vec<GapEntry> {
        let timeout = self.limits.resolve_timeout;
        let mut out = Vec::new();
        for ((session, lane), l) in &mut self.lanes {
            let firsts: Vec<u64> = l.runs.keys().copied().collect();
            for first in firsts {
                let Some(run) = l.runs.get(&first).copied() else {
                    continue;
                };
                let expired = now.saturating_duration_since(run.since) >= timeout;
                if let Some(e) = resolve(l, *session, *lane, first, run, expired) {
                    l.runs.remove(&first);
                    // The floor moves past the run: where the block after
                    // it starts stays known for the stored lane floor.
                    if let (Some(f), Some(n)) = (e.first_record, e.records) {
                        l.anchors.insert(
                            e.last_block.saturating_add(1),
                            (f.saturating_add(n), e.t_last_ns),
                        );
                        while l.anchors.len() > MAX_ANCHORS {
                            l.anchors.pop_first();
                        }
                    }
                    out.push(e);
                }
            }
        }
        out
    }

    /// Report every run now, with what is known (receiver shutdown).
    pub fn flush(&mut self) -> Vec<GapEntry> {
        let mut out = Vec::new();
        for ((session, lane), l) in &mut self.lanes {
            let runs = std::mem::take(&mut l.runs);
            for (first, run) in runs {
                if let Some(e) = resolve(l, *session, *lane, first, run, true) {
                    out.push(e);
                }
            }
        }
        out
    }
}

/// The record number where block `first` starts, from what came before
/// it (the session's start, the block before it, an anchor), with the
/// time of the record before it.
fn before(l: &LaneLedger, first: u64) -> Option<(u64, Option<i64>)> {
    match (first.checked_sub(1), l.start) {
        (_, Some((sb, sr))) if sb == first => Some((sr, None)),
        (Some(p), _) => end_of(l, p).or_else(|| l.anchors.get(&first).copied()),
        (None, _) => l.anchors.get(&first).copied(),
    }
}

/// The record number where block `b` starts, if known.
fn start_of(l: &LaneLedger, b: u64) -> Option<(u64, Option<i64>)> {
    if let Some(s) = l.summaries.get(&b) {
        return Some((s.first_record, s.t_min_ns));
    }
    if let Some(&(r, _)) = l.anchors.get(&b) {
        return Some((r, None));
    }
    if let Some((tb, tr)) = l.tail
        && tb.checked_add(1) == Some(b)
    {
        return Some((tr, None));
    }
    None
}

/// The record number after block `b`'s last, if known.
fn end_of(l: &LaneLedger, b: u64) -> Option<(u64, Option<i64>)> {
    if let Some(s) = l.summaries.get(&b) {
        return Some((s.end_record(), s.t_max_ns));
    }
    None
}

fn resolve(
    l: &LaneLedger,
    session: SessionId,
    lane: Lane,
    first: u64,
    run: Run,
    expired: bool,
) -> Option<GapEntry> {
    let described: Vec<&BlockSummary> = l
        .summaries
        .range(first..=run.last)
        .map(|(_, s)| s)
        .collect();
    let all_described = described.len() as u64 == run.last - first + 1;
    let before = before(l, first);
    let after = run.last.checked_add(1).and_then(|n| start_of(l, n));
    let (first_record, records) = if all_described {
        let f = described.first().map(|s| s.first_record);
        let e = described.last().map(|s| s.end_record());
        (f, f.zip(e).map(|(f, e)| e.saturating_sub(f)))
    } else if let (Some((b, _)), Some((a, _))) = (before, after) {
        (Some(b), Some(a.saturating_sub(b)))
    } else if expired {
        (before.map(|b| b.0), None)
    } else {
        return None;
    };
    let mut sources: Vec<String> = Vec::new();
    // Described blocks give the exact span; otherwise the neighbours bound it.
    let (mut t_first, mut t_last) = if all_described {
        (None, None)
    } else {
        (before.and_then(|b| b.1), after.and_then(|a| a.1))
    };
    for s in &described {
        for src in &s.sources {
            if !sources.contains(src) {
                sources.push(src.clone());
            }
        }
        t_first = min_opt(t_first, s.t_min_ns);
        t_last = max_opt(t_last, s.t_max_ns);
    }
    Some(GapEntry {
        session,
        lane,
        first_block: first,
        last_block: run.last,
        first_record,
        records,
        t_first_ns: t_first,
        t_last_ns: t_last,
        sources,
        sources_complete: all_described && described.iter().all(|s| s.more_sources == 0),
        cause: run.cause,
        uncounted: records.is_none().then_some(UNCOUNTED_NEIGHBOURS),
    })
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Point, SourceSystem, Value};

    fn point(file: &str, ts: i64) -> Record {
        let mut p = Point::new(SourceSystem::Aveva, "T1", ts, Value::F64(1.0));
        p.source.file = Some(file.into());
        Record::Point(p)
    }

    fn summary(block: u64, first: u64, records: u64, file: &str) -> BlockSummary {
        BlockSummary {
            block,
            first_record: first,
            records,
            t_min_ns: Some(i64::try_from(block).unwrap_or(0) * 10),
            t_max_ns: Some(i64::try_from(block).unwrap_or(0) * 10 + 9),
            sources: vec![file.into()],
            more_sources: 0,
        }
    }

    const LIMITS: LedgerLimits = LedgerLimits {
        max_summaries: 64,
        max_sessions: 4,
        resolve_timeout: Duration::from_secs(10),
    };

    #[test]
    fn builder_counts_times_and_bounds_sources() {
        let mut b = SummaryBuilder::default();
        for i in 0..10 {
            b.add(
                100 + i,
                &point(&format!("f{}", i % 6), i64::try_from(i).unwrap_or(0)),
            );
        }
        let s = b.finish(0);
        assert_eq!((s.first_record, s.records), (100, 10));
        assert_eq!((s.t_min_ns, s.t_max_ns), (Some(0), Some(9)));
        assert_eq!(s.sources.len(), MAX_SOURCES);
        assert_eq!(s.more_sources, 2);
        let empty = b.finish(110);
        assert_eq!((empty.first_record, empty.records), (110, 0));
    }

    #[test]
    fn trailer_roundtrips_and_garbage_is_refused() {
        let mut plain = b"frame bytes".to_vec();
        let sums = vec![summary(5, 50, 10, "a.csv"), summary(4, 40, 10, "a.csv")];
        append_trailer(&sums, &mut plain).expect("append");
        let (got, frame_len) = split_trailer(&plain).expect("split");
        assert_eq!(got, sums);
        assert_eq!(&plain[..frame_len], b"frame bytes");
        assert_eq!(split_trailer(&[]), Err(LedgerError::Trailer));
        assert_eq!(split_trailer(&[0xFF, 0xFF]), Err(LedgerError::Trailer));
        let mut bad = b"xx".to_vec();
        bad.extend_from_slice(&[0xFF, 0x00, 0x02]);
        assert!(split_trailer(&bad).is_err());
    }

    proptest::proptest! {
        #[test]
        fn split_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = split_trailer(&b);
        }
    }

    #[test]
    fn lost_block_described_by_a_later_one_is_exact() {
        let t = Instant::now();
        let s = SessionId([1; 16]);
        let mut l = Ledger::new(LIMITS);
        l.lost(t, s, Lane::Bulk, 3, 3, GapCause::Link);
        assert!(l.poll(t).is_empty(), "nothing known about block 3 yet");
        assert_eq!(l.pending_from(s, Lane::Bulk), Some(3), "not yet reported");
        assert_eq!(l.pending_from(s, Lane::Alert), None);
        l.describe(
            s,
            Lane::Bulk,
            &[summary(4, 40, 10, "b.csv"), summary(3, 30, 10, "a.csv")],
        );
        let e = l.poll(t);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].first_record, e[0].records), (Some(30), Some(10)));
        assert_eq!(e[0].sources, vec!["a.csv".to_owned()]);
        assert!(e[0].sources_complete);
        assert_eq!((e[0].t_first_ns, e[0].t_last_ns), (Some(30), Some(39)));
        assert!(l.poll(t).is_empty(), "reported once");
        assert_eq!(l.pending_from(s, Lane::Bulk), None, "reported");
    }

    #[test]
    fn long_run_is_counted_from_its_neighbours() {
        let t = Instant::now();
        let s = SessionId([1; 16]);
        let mut l = Ledger::new(LIMITS);
        l.describe(s, Lane::Bulk, &[summary(1, 10, 10, "a")]);
        l.lost(t, s, Lane::Bulk, 2, 5, GapCause::Link);
        l.lost(t, s, Lane::Bulk, 6, 9, GapCause::Link);
        // Block 10 arrives; its trailer describes 6..9 only.
        l.describe(
            s,
            Lane::Bulk,
            &[
                summary(10, 100, 10, "z"),
                summary(9, 90, 10, "y"),
                summary(8, 80, 10, "y"),
                summary(7, 70, 10, "y"),
                summary(6, 60, 10, "x"),
            ],
        );
        let e = l.poll(t);
        assert_eq!(e.len(), 1, "the two adjacent runs are one entry");
        assert_eq!((e[0].first_block, e[0].last_block), (2, 9));
        assert_eq!((e[0].first_record, e[0].records), (Some(20), Some(80)));
        assert!(!e[0].sources_complete);
    }

    #[test]
    fn a_restarted_receiver_counts_the_loss_from_its_stored_floor() {
        // The receiver stopped with bulk resolved below block 50, whose
        // first record is 5000 (the stored floor). While it was down,
        // blocks 50..=69 were sent; it comes back at 70, whose trailer
        // describes 66..=70 only.
        let t = Instant::now();
        let s = SessionId([3; 16]);
        let mut l = Ledger::new(LIMITS);
        l.anchor(s, Lane::Bulk, 50, 5000, Some(499));
        l.lost(t, s, Lane::Bulk, 50, 69, GapCause::ReceiverDown);
        l.describe(
            s,
            Lane::Bulk,
            &(66..=70)
                .rev()
                .map(|b| summary(b, b * 100, 100, "late.csv"))
                .collect::<Vec<_>>(),
        );
        let e = l.poll(t);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].first_record, e[0].records), (Some(5000), Some(2000)));
        assert_eq!(e[0].uncounted, None);
        assert_eq!(e[0].t_first_ns, Some(499), "bounded by the record before");
        assert!(!e[0].sources_complete, "blocks 50..=65 were not described");
        // Its end is known now: the next stored floor (70) starts there.
        assert_eq!(l.boundary(s, Lane::Bulk, 70), Some((7000, Some(699))));
        // Without the stored floor, the same loss is not countable.
        let mut blind = Ledger::new(LIMITS);
        blind.lost(t, s, Lane::Bulk, 50, 69, GapCause::ReceiverDown);
        assert!(blind.poll(t).is_empty());
        let e = blind.flush();
        assert_eq!(e[0].records, None);
        assert_eq!(e[0].uncounted, Some(UNCOUNTED_NEIGHBOURS));
    }

    #[test]
    fn tail_and_start_come_from_heartbeats() {
        let t = Instant::now();
        let s = SessionId([2; 16]);
        let mut l = Ledger::new(LIMITS);
        // Blocks 0..=1 lost at the start, 7..=8 at the tail.
        l.describe(s, Lane::Alert, &[summary(2, 1000, 5, "syslog")]);
        l.describe(s, Lane::Alert, &[summary(6, 1020, 5, "syslog")]);
        l.lost(t, s, Lane::Alert, 0, 1, GapCause::ReceiverDown);
        l.lost(t, s, Lane::Alert, 7, 8, GapCause::Link);
        assert!(l.poll(t).is_empty());
        l.mark(s, Lane::Alert, Some((0, 990)), Some((8, 1040)));
        let mut e = l.poll(t);
        e.sort_by_key(|e| e.first_block);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].records, e[0].cause),
            (Some(10), GapCause::ReceiverDown)
        );
        assert_eq!(e[1].records, Some(15));
    }

    #[test]
    fn unknowable_run_is_reported_after_the_timeout() {
        let t = Instant::now();
        let s = SessionId([3; 16]);
        let mut l = Ledger::new(LIMITS);
        l.describe(s, Lane::Bulk, &[summary(1, 10, 10, "a")]);
        l.lost(t, s, Lane::Bulk, 2, 3, GapCause::Link);
        assert!(l.poll(t + Duration::from_secs(1)).is_empty());
        let e = l.poll(t + Duration::from_secs(11));
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].first_record, e[0].records), (Some(20), None));
        assert!(l.flush().is_empty());
    }
}
