//! Sender counters, shared by the stages and read by the heartbeat.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use weir_shared::heartbeat::{LaneMarks, TxCounters, TxHealth};
use weir_shared::lane::{LANES, Lane};
use weir_shared::ledger::BlockSummary;

/// Monotonic sender counters (relaxed atomics: each is independent).
#[derive(Debug)]
pub struct Telemetry {
    /// Records sent.
    pub records: AtomicU64,
    /// Records handed to the batcher (sent, queued or refused).
    pub records_taken: AtomicU64,
    /// Blocks sent.
    pub blocks: AtomicU64,
    /// Datagrams sent.
    pub datagrams: AtomicU64,
    /// Bytes sent.
    pub wire_bytes: AtomicU64,
    /// Repair symbols sent.
    pub repair_symbols: AtomicU64,
    /// Spool files fully sent.
    pub files_done: AtomicU64,
    /// Spool files quarantined (or, for `weir-tx send`, refused).
    pub files_quarantined: AtomicU64,
    /// Opaque file transfers started; also the next transfer's file id.
    pub file_transfers: AtomicU64,
    /// Lines or items quarantined.
    pub lines_rejected: AtomicU64,
    /// Files waiting in spools.
    pub spool_depth: AtomicU64,
    /// Bytes of the files waiting in spools.
    pub spool_bytes: AtomicU64,
    /// Bytes held in the alert queue on disk (a gauge).
    pub alert_queue_bytes: AtomicU64,
    /// Send errors (datagrams the kernel refused).
    pub send_errors: AtomicU64,
    /// Records refused because one alone exceeded a batch.
    pub records_refused: AtomicU64,
    /// Alerts taken.
    pub alerts: AtomicU64,
    /// Alert messages refused by the parsers.
    pub alerts_rejected: AtomicU64,
    /// Alerts dropped on a full alert queue.
    pub alerts_dropped: AtomicU64,
    /// Blocks sent a second time (`lanes.*.repeat_after`); their datagrams
    /// count in `datagrams` and `wire_bytes`, not in `blocks`.
    pub blocks_repeated: AtomicU64,
    /// Blocks not repeated because the lane's repeat buffer was full.
    pub repeats_skipped: AtomicU64,
    /// Highest block sequence fully sent per lane, plus one (0: none).
    last_sent: [AtomicU64; LANES],
    /// What the heartbeat tells the receiver's loss ledger.
    marks: Mutex<Marks>,
    /// The audit log (empty when none is installed).
    pub audit: crate::audit::AuditSlot,
}

/// Block summaries between seal and send, and what was last sent.
#[derive(Debug, Default)]
struct Marks {
    in_flight: BTreeMap<(usize, u64), BlockSummary>,
    lanes: [LaneMarks; LANES],
    recent: [Option<BlockSummary>; LANES],
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            records: AtomicU64::new(0),
            records_taken: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
            datagrams: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            repair_symbols: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            files_quarantined: AtomicU64::new(0),
            file_transfers: AtomicU64::new(0),
            lines_rejected: AtomicU64::new(0),
            spool_depth: AtomicU64::new(0),
            spool_bytes: AtomicU64::new(0),
            alert_queue_bytes: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            records_refused: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            alerts_rejected: AtomicU64::new(0),
            alerts_dropped: AtomicU64::new(0),
            blocks_repeated: AtomicU64::new(0),
            repeats_skipped: AtomicU64::new(0),
            last_sent: [AtomicU64::new(0), AtomicU64::new(0)],
            marks: Mutex::new(Marks::default()),
            audit: crate::audit::AuditSlot::default(),
        }
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Telemetry {
    /// Record that block `seq` of `lane` has been fully sent.
    pub fn block_sent(&self, lane: Lane, seq: u64) {
        // Stored as seq + 1, so 0 means "nothing sent yet".
        self.last_sent[lane.index()].fetch_max(seq.saturating_add(1), Ordering::Relaxed);
        if let Ok(mut m) = self.marks.lock() {
            let i = lane.index();
            // Blocks of a lane complete in order; everything up to `seq`
            // has now left.
            let done: Vec<(usize, u64)> = m
                .in_flight
                .range((i, 0)..=(i, seq))
                .map(|(k, _)| *k)
                .collect();
            for k in done {
                if let Some(s) = m.in_flight.remove(&k) {
                    m.lanes[i].next_record = s.end_record();
                    m.recent[i] = Some(s);
                }
            }
        }
    }

    /// The session's numbering starts here (for the heartbeat's marks).
    pub fn start_marks(&self, first_block: [u64; LANES], first_record: [u64; LANES]) {
        if let Ok(mut m) = self.marks.lock() {
            for l in Lane::ALL {
                let i = l.index();
                m.lanes[i] = LaneMarks {
                    first_block: first_block[i],
                    first_record: first_record[i],
                    next_record: first_record[i],
                };
            }
        }
    }

    /// A block was sealed: remember its summary until it has been sent.
    pub fn block_sealed(&self, lane: Lane, summary: BlockSummary) {
        if let Ok(mut m) = self.marks.lock() {
            m.in_flight.insert((lane.index(), summary.block), summary);
        }
    }

    /// The heartbeat's marks and the last sent block of each lane.
    pub fn marks(&self) -> ([LaneMarks; LANES], Vec<(Lane, BlockSummary)>) {
        let Ok(m) = self.marks.lock() else {
            return (Default::default(), Vec::new());
        };
        let marks = m.lanes;
        let recent = Lane::ALL
            .into_iter()
            .filter_map(|l| m.recent[l.index()].clone().map(|s| (l, s)))
            .collect();
        (marks, recent)
    }

    /// Highest block sequence fully sent, per lane.
    pub fn last_sent(&self) -> [Option<u64>; LANES] {
        Lane::ALL.map(|l| match get(&self.last_sent[l.index()]) {
            0 => None,
            v => Some(v - 1),
        })
    }

    /// Snapshot for the heartbeat.
    pub fn counters(&self) -> TxCounters {
        TxCounters {
            records: get(&self.records),
            blocks: get(&self.blocks),
            datagrams: get(&self.datagrams),
            wire_bytes: get(&self.wire_bytes),
            files_done: get(&self.files_done),
            files_quarantined: get(&self.files_quarantined),
            lines_rejected: get(&self.lines_rejected),
            alerts: get(&self.alerts),
            alerts_rejected: get(&self.alerts_rejected),
            alerts_dropped: get(&self.alerts_dropped),
        }
    }

    /// The heartbeat's health trailer; `rate_bytes_per_sec` is the pacer's
    /// configured rate.
    pub fn health(&self, rate_bytes_per_sec: u64) -> TxHealth {
        TxHealth {
            repair_symbols: get(&self.repair_symbols),
            send_errors: get(&self.send_errors),
            records_refused: get(&self.records_refused),
            blocks_repeated: get(&self.blocks_repeated),
            repeats_skipped: get(&self.repeats_skipped),
            spool_bytes: get(&self.spool_bytes),
            alert_queue_bytes: get(&self.alert_queue_bytes),
            rate_bytes_per_sec,
        }
    }
}

/// Add `n` to a counter.
pub fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}
