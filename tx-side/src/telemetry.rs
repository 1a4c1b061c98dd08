//! Sender counters, shared by the stages and read by the heartbeat.

use std::sync::atomic::{AtomicU64, Ordering};

use weir_shared::heartbeat::TxCounters;
use weir_shared::lane::{LANES, Lane};

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
    /// Highest block sequence fully sent per lane, plus one (0: none).
    last_sent: [AtomicU64; LANES],
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
            send_errors: AtomicU64::new(0),
            records_refused: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            alerts_rejected: AtomicU64::new(0),
            alerts_dropped: AtomicU64::new(0),
            last_sent: [AtomicU64::new(0), AtomicU64::new(0)],
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
}

/// Add `n` to a counter.
pub fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}
