//! Receiver counters: every datagram, block and record that is not
//! delivered is counted under a reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use weir_shared::dq::{Check, Flag, Verdict};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Monotonic receiver counters (relaxed atomics).
        #[derive(Debug, Default)]
        pub struct RxStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Messages handed to the MQTT client that it then reported
            /// not acknowledged (connection or session lost): published
            /// again from the outbox. Exported as a metric only, so the
            /// status topic's `counters` keep their documented shape.
            pub publish_failed: AtomicU64,
            /// CPU time of the link stages (recv, verify, decode with
            /// open), ns: what turning datagrams into authenticated,
            /// decoded blocks costs, apart from storing and delivering
            /// them (metrics only).
            pub link_cpu_ns: AtomicU64,
            /// Points counted by data-quality flag (metrics only).
            pub dq_flags: DqFlagCounts,
            /// The audit log (empty when none is installed).
            pub audit: crate::audit::AuditSlot,
        }

        /// A point-in-time copy of [`RxStats`].
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct RxSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl RxStats {
            /// Copy every counter.
            pub fn snapshot(&self) -> RxSnapshot {
                RxSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Datagrams received.
    datagrams,
    /// Bytes received.
    bytes,
    /// Dropped: CRC mismatch (corruption on the way).
    drop_crc,
    /// Dropped: not a Weir v2 datagram (magic, version, kind, lane, flags, length).
    drop_malformed,
    /// Dropped at `verify`: the datagram tag failed (forged, or sealed
    /// under another key or for another header).
    drop_forged,
    /// Dropped at `verify`: the datagram named a session whose datagram
    /// key could not be derived yet (derivations are rate-limited, so a
    /// flood of invented session ids cannot burn the CPU).
    drop_unverified,
    /// Dropped: symbol of a block already delivered or declared lost.
    drop_resolved,
    /// Dropped: symbol older than the replay window.
    drop_too_old,
    /// Dropped: invalid block geometry.
    drop_geometry,
    /// Dropped: symbol disagrees with its block's other symbols.
    drop_inconsistent,
    /// Dropped: pending-block table full.
    drop_pending_full,
    /// Dropped: more symbols than a block can use.
    drop_excess,
    /// Datagrams (at `verify`) or blocks and heartbeats naming a key id
    /// that is not loaded.
    drop_unknown_key,
    /// Blocks or heartbeats that failed authentication.
    drop_auth,
    /// Authentic blocks already delivered (replays).
    drop_replay,
    /// Authentic blocks whose frame could not be decoded.
    drop_frame,
    /// Authentic blocks whose loss-ledger trailer could not be read.
    drop_trailer,
    /// Blocks or heartbeats of a session older than the newest accepted
    /// one of its sender (`ledger.allow_older_sessions`).
    drop_old_session,
    /// Blocks and heartbeats of a session not proven live: a heartbeat sent
    /// longer than `ledger.max_clock_skew` ago (a replay, or a stale
    /// clock), or a block of a session the book has no record of that
    /// started longer ago and has not yet sent a fresh heartbeat.
    drop_stale,
    /// Datagrams (at `verify`) or blocks and heartbeats under a retired
    /// key id (`keys.retired_key_ids`).
    drop_retired_key,
    /// Records written down as lost in the gap ledger (known counts).
    records_lost,
    /// Gap ledger entries.
    gap_entries,
    /// Gap ledger entries whose record count could not be known.
    gap_entries_uncounted,
    /// Blocks shed because the outbox writer fell behind.
    blocks_shed,
    /// Blocks delivered (authenticated, decoded).
    blocks_ok,
    /// Source symbols rebuilt from repair symbols.
    fec_repaired,
    /// Symbols of rebuilt blocks lost on the link before the block was
    /// rebuilt (the FEC headroom report's `symbols_missing`, all lanes).
    fec_symbols_missing,
    /// Most repair symbols a rebuilt block needed (a high-water mark).
    fec_repair_needed_max,
    /// Blocks declared lost.
    blocks_lost,
    /// Pending blocks expired without completing.
    pending_expired,
    /// Pending blocks given up so that another session had its fair share
    /// of the pending table (`limits.max_pending_blocks`).
    pending_evicted,
    /// Sender sessions evicted by `limits.max_sessions`.
    sessions_evicted,
    /// Heartbeats accepted.
    heartbeats,
    /// Records decoded.
    records,
    /// File chunks received (dropped when no `[files]` output is configured).
    file_chunks,
    /// File chunks refused (beyond the declared size, conflicting metadata).
    file_chunks_refused,
    /// Files written to the output directory.
    files_done,
    /// Files received again, identical to one already delivered (replays).
    files_duplicate,
    /// Files given up with bytes missing (reported as `file_incomplete`).
    files_incomplete,
    /// Files whose SHA-256 did not match (reported as `file_corrupt`).
    files_corrupt,
    /// Files refused: bad name, limits, output name taken, I/O error
    /// (reported as `file_refused`).
    files_refused,
    /// Messages handed to the MQTT client.
    published,
    /// Messages acknowledged by the broker (QoS 1 PUBACK).
    acked,
    /// Times the outbox was read again from the start because the broker
    /// lost its session or a publish failed.
    rewinds,
    /// Entries (blocks and events) committed to the outbox.
    outbox_committed,
    /// Blocks refused by a full (or failing) outbox: lost, reported as gaps.
    outbox_refused,
    /// Block bytes held in the outbox now (a gauge).
    outbox_bytes,
    /// Data-quality events (flatline, stale, range, gap, …) published.
    dq_events,
    /// Tags whose data-quality state is tracked now (a gauge).
    dq_tags,
    /// Points withheld as exact duplicates of points already published.
    dq_duplicates,
    /// Points sent to the quarantine topic instead of the live one.
    dq_quarantined,
    /// Points Sparkplug could not publish: beyond `sparkplug.max_devices`
    /// or `max_metrics_per_device` (their outbox entry is done).
    sparkplug_dropped,
}

/// Add `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The flags a point's verdict can carry, in the order of
/// [`DqFlagCounts::worst`].
pub const DQ_FLAGS: [Flag; 5] = [
    Flag::Pass,
    Flag::NotEvaluated,
    Flag::Suspect,
    Flag::Fail,
    Flag::Missing,
];

/// The flags counted per check, in the order of [`DqFlagCounts::checks`]:
/// those that say something is wrong.
pub const DQ_BAD_FLAGS: [Flag; 3] = [Flag::Suspect, Flag::Fail, Flag::Missing];

/// A flag's name, as in metrics labels.
pub fn flag_name(flag: Flag) -> &'static str {
    match flag {
        Flag::Pass => "pass",
        Flag::NotEvaluated => "not_evaluated",
        Flag::Suspect => "suspect",
        Flag::Fail => "fail",
        Flag::Missing => "missing",
    }
}

/// Points judged by the data-quality stage, by flag (monotonic).
#[derive(Debug, Default)]
pub struct DqFlagCounts {
    /// Per point, its worst flag ([`DQ_FLAGS`] order).
    pub worst: [AtomicU64; DQ_FLAGS.len()],
    /// Per check ([`Check::index`]), the points it flagged suspect, fail or
    /// missing ([`DQ_BAD_FLAGS`] order).
    pub checks: [[AtomicU64; DQ_BAD_FLAGS.len()]; Check::COUNT],
}

/// The same counts for one block, kept locally and added to
/// [`DqFlagCounts`] once per block (never one atomic per point).
#[derive(Debug, Default)]
pub struct DqTally {
    worst: [u64; DQ_FLAGS.len()],
    checks: [[u64; DQ_BAD_FLAGS.len()]; Check::COUNT],
}

impl DqTally {
    /// Count one point's verdict.
    pub fn handle(&mut self, v: &Verdict) {
        if let Some(i) = DQ_FLAGS.iter().position(|f| *f == v.worst) {
            self.worst[i] += 1;
        }
        for (check, flag) in v.checks() {
            if let Some(i) = DQ_BAD_FLAGS.iter().position(|f| *f == flag) {
                self.checks[check.index()][i] += 1;
            }
        }
    }

    /// Add the counts to `to` and start again from zero.
    pub fn flush(&mut self, to: &DqFlagCounts) {
        for (n, c) in self.worst.iter_mut().zip(&to.worst) {
            if *n > 0 {
                add(c, std::mem::take(n));
            }
        }
        for (row, counters) in self.checks.iter_mut().zip(&to.checks) {
            for (n, c) in row.iter_mut().zip(counters) {
                if *n > 0 {
                    add(c, std::mem::take(n));
                }
            }
        }
    }
}

/// CPU time this thread has used so far.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Add the CPU time this thread used since `start` (a [`thread_cpu`]
/// reading) to `counter`, in ns. Call it before the next `.await`: a task
/// may resume on another thread.
pub fn charge_cpu(counter: &AtomicU64, start: Duration) {
    let used = thread_cpu().saturating_sub(start);
    add(counter, u64::try_from(used.as_nanos()).unwrap_or(u64::MAX));
}

#[cfg(test)]
mod tests {
    use weir_shared::dq::{DqConfig, Engine};
    use weir_shared::record::{Point, SourceSystem, Value};

    use super::*;

    #[test]
    fn a_tally_counts_worst_flags_and_bad_checks_once_per_flush() {
        let mut engine = Engine::new(DqConfig::default().validate().expect("valid"));
        let now = 1_710_000_000_000_000_000;
        let mut tally = DqTally::default();
        for (i, v) in [(0i64, 1.0), (1, f64::NAN), (2, 2.0)] {
            let p = Point::new(SourceSystem::PiWebApi, "t", now - 3 + i, Value::F64(v));
            tally.handle(&engine.check(&p, now).0);
        }
        let counts = DqFlagCounts::default();
        tally.flush(&counts);
        tally.flush(&counts);
        let worst: Vec<u64> = counts
            .worst
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(worst.iter().sum::<u64>(), 3, "{worst:?}");
        let fail = DQ_BAD_FLAGS
            .iter()
            .position(|f| *f == Flag::Fail)
            .expect("fail");
        assert_eq!(
            counts.checks[Check::GrossRange.index()][fail].load(Ordering::Relaxed),
            1,
            "NaN fails the range check"
        );
        assert_eq!(flag_name(Flag::NotEvaluated), "not_evaluated");
    }

    #[test]
    fn cpu_spent_on_this_thread_is_charged() {
        let counter = AtomicU64::new(0);
        let start = thread_cpu();
        let mut x = 0u64;
        while thread_cpu().saturating_sub(start) < Duration::from_millis(5) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        charge_cpu(&counter, start);
        let ns = counter.load(Ordering::Relaxed);
        assert!(ns >= 5_000_000, "charged {ns} ns");
        // Sleeping costs no CPU.
        let start = thread_cpu();
        std::thread::sleep(Duration::from_millis(50));
        charge_cpu(&counter, start);
        assert!(counter.load(Ordering::Relaxed) - ns < 20_000_000);
    }
}
