//! The receiver's FEC headroom meters: one per lane, kept in [`LinkState`],
//! fed by `decode`, read by `status` (see `weir_shared::headroom`).
//!
//! ```text
//!  decode: block rebuilt ──SymbolTally──┐
//!          blocks lost ───LostRange─────┼──> LinkState.headroom[lane] ──report──> status `fec`
//!          heartbeat ─────LaneFec───────┘
//!  decode ──> counters fec_symbols_missing, fec_repair_needed_max
//! ```
//!
//! The meters live in the link state because `decode` already updates it
//! per block and `status` already reads it; they cost one lock per block,
//! never one per datagram.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use weir_shared::fec::SymbolTally;
use weir_shared::headroom::{HeadroomMeter, HeadroomReport};
use weir_shared::heartbeat::LaneFec;
use weir_shared::lane::{LANES, Lane};
use weir_shared::reassembly::LostRange;

use super::LinkState;
use crate::stats::{RxStats, add};

/// One meter per lane.
#[derive(Debug, Clone, Default)]
pub struct Headroom {
    meters: [HeadroomMeter; LANES],
}

impl Headroom {
    /// The lanes' FEC settings, as a heartbeat announced them.
    pub fn handle_settings(&mut self, fec: &[LaneFec; LANES]) {
        for lane in Lane::ALL {
            self.meters[lane.index()].handle_settings(fec[lane.index()]);
        }
    }

    /// The report of every lane, as the status topic carries it.
    pub fn reports(&self) -> [HeadroomReport; LANES] {
        Lane::ALL.map(|l| self.meters[l.index()].report())
    }

    /// The status topic's `fec` object: `{"alert": report, "bulk": report}`.
    pub fn to_json(&self) -> serde_json::Value {
        let [alert, bulk] = self.reports();
        serde_json::json!({ Lane::Alert.as_str(): alert, Lane::Bulk.as_str(): bulk })
    }
}

/// Feed a rebuilt, authenticated block to its lane's meter and the counters.
pub(crate) fn record_block(stats: &RxStats, link: &mut LinkState, lane: Lane, tally: SymbolTally) {
    add(&stats.fec_symbols_missing, u64::from(tally.missing));
    stats
        .fec_repair_needed_max
        .fetch_max(u64::from(tally.repair_needed()), Ordering::Relaxed);
    link.headroom.meters[lane.index()].handle_block(tally);
}

/// Feed blocks declared lost to their lane's meter.
pub(crate) fn record_lost(link: &Mutex<LinkState>, lost: LostRange) {
    if let Ok(mut l) = link.lock() {
        l.headroom.meters[lost.lane.index()].handle_lost(lost.count());
    }
}

#[cfg(test)]
mod tests {
    use weir_shared::wire::SessionId;

    use super::*;

    #[test]
    fn blocks_and_losses_reach_their_lane_with_the_heartbeats_settings() {
        let s = SessionId([1; 16]);
        let bulk = LaneFec {
            repair_permille: 250,
            min_repair: 2,
            interleave: 4,
        };
        let link = Mutex::new(LinkState::default());
        if let Ok(mut l) = link.lock() {
            l.headroom.handle_settings(&[LaneFec::default(), bulk]);
        }
        let stats = RxStats::default();
        let tally = SymbolTally {
            source_symbols: 10,
            distinct: 10,
            highest_esi: Some(12),
            missing: 3,
            missing_runs: 1,
            longest_run: 3,
        };
        if let Ok(mut l) = link.lock() {
            record_block(&stats, &mut l, Lane::Bulk, tally);
            record_block(&stats, &mut l, Lane::Alert, SymbolTally::default());
        }
        record_lost(
            &link,
            LostRange {
                session: s,
                lane: Lane::Bulk,
                first: 1,
                last: 2,
            },
        );
        let snap = stats.snapshot();
        assert_eq!(snap.fec_symbols_missing, 3);
        assert_eq!(snap.fec_repair_needed_max, 3);
        let j = link.lock().expect("lock").headroom.to_json();
        assert_eq!(j["bulk"]["blocks"], 3);
        assert_eq!(j["bulk"]["blocks_lost"], 2);
        assert_eq!(j["bulk"]["symbols_missing"], 3);
        assert_eq!(j["bulk"]["ratio"], 0.25);
        assert_eq!(j["bulk"]["interleave"], 4);
        assert_eq!(j["alert"]["blocks"], 1);
        assert_eq!(
            j["alert"]["ratio"],
            serde_json::Value::Null,
            "all zeros: unknown"
        );
        assert_eq!(j["alert"]["pattern"], "none");
    }
}
