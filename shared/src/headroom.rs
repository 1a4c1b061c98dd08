//! FEC headroom: how much of its repair budget each block really needed.
//!
//! A lane's repair ratio and interleave depth are chosen when the link is
//! installed, and the link then changes (an ageing transceiver, a busy
//! switch in front of the diode). The sender cannot learn how its blocks
//! fared, a diode has no way back, so the receiver measures it: per lane,
//! a [`HeadroomMeter`] takes every rebuilt block's [`SymbolTally`] and every
//! lost block, and reports the loss the link imposed, how much repair the
//! blocks needed against what was sent, whether the loss comes in bursts,
//! and the ratio and interleave depth that would have carried the window.
//!
//! ```text
//!  rebuilt block ──SymbolTally──┐
//!  lost block ──────────────────┼──> HeadroomMeter (last N blocks) ──report()──> HeadroomReport
//!  heartbeat ───LaneFec─────────┘     loss, need p50/p99/max vs ratio, burstiness,
//!                                     recommended ratio and interleave depth
//! ```
//!
//! How a rebuilt block is read. The sender emits a block's symbols in ESI
//! order, so when the block is rebuilt, the sender had sent `highest ESI + 1`
//! of them, and those of them that did not arrive were lost on the wire.
//! The repair symbols the block *needed* are those sent beyond its `K`
//! source symbols: the losses, plus RaptorQ's occasional one or two extra.
//! What was *sent* is `R = max(⌈K · ratio⌉, min_repair)` from the lane's
//! [`LaneFec`] as the last heartbeat announced it; until a heartbeat has
//! (or from a sender that announces all zeros) the report has no "sent"
//! side and still reports what was needed.
//!
//! Burstiness. Under independent loss at rate `p`, a run of consecutive
//! missing ESIs has mean length `1 / (1 − p)`. The index is the observed
//! mean run length over that: about 1 for random loss, well above for
//! bursts. Interleaving spreads a burst on the wire over `depth` blocks, so
//! a run of `n` ESIs in one block stands for a burst of about `n · depth`
//! datagrams. A lost block says the budget was short, not by how much.
//!
//! The window is the last `N` blocks of the lane (rebuilt or lost), so the
//! report follows the link and memory is bounded. A meter mixes the
//! sessions of its lane (one sender per link is the normal case).

use std::collections::VecDeque;

use serde::Serialize;

use crate::fec::{SymbolTally, repair_symbols};
use crate::heartbeat::LaneFec;

/// Blocks a meter remembers by default.
pub const DEFAULT_WINDOW_BLOCKS: usize = 512;
/// Highest repair ratio a lane may be configured with.
pub const MAX_RATIO: f64 = 10.0;
/// Deepest interleave a lane may be configured with.
pub const MAX_INTERLEAVE: u16 = 64;
/// Recommended ratio: the p99 need times `1 + MARGIN_REL`, plus `MARGIN_ABS`.
const MARGIN_REL: f64 = 0.25;
/// See [`MARGIN_REL`].
const MARGIN_ABS: f64 = 0.01;
/// Burstiness index from which loss counts as bursty.
const BURST_INDEX: f64 = 1.5;
/// Fewest missing runs before loss may be called bursty (one long run of a
/// random loss is not a pattern).
const BURST_MIN_RUNS: u64 = 3;
/// Repair symbols of a block kept for RaptorQ's occasional extra ones when
/// deciding whether a burst fits.
const DECODE_SPARE: u32 = 2;

/// What the loss on a lane looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LossPattern {
    /// No symbol and no block lost in the window.
    None,
    /// Losses independent of each other.
    Random,
    /// Losses in runs (or whole blocks lost with nothing lost around them).
    Burst,
}

/// One lane's FEC headroom over the meter's window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadroomReport {
    /// Blocks in the window (rebuilt and lost).
    pub blocks: u32,
    /// Rebuilt blocks that needed at least one repair symbol.
    pub blocks_repaired: u32,
    /// Blocks lost: more was lost than their repair symbols could make up.
    pub blocks_lost: u32,
    /// Symbols sent to rebuilt blocks until they were rebuilt.
    pub symbols_expected: u64,
    /// Of those, symbols that did not arrive.
    pub symbols_missing: u64,
    /// `symbols_missing / symbols_expected`: the link's symbol loss rate.
    pub loss: f64,
    /// Median repair symbols needed per rebuilt block, as a fraction of K.
    pub need_p50: f64,
    /// 99th percentile of the same.
    pub need_p99: f64,
    /// Most of the same.
    pub need_max: f64,
    /// Most repair symbols any rebuilt block needed.
    pub repair_needed_max: u32,
    /// The lane's repair ratio as last announced (`None`: not known yet).
    pub ratio: Option<f64>,
    /// The lane's `min_repair` as last announced.
    pub min_repair: Option<u32>,
    /// The lane's interleave depth as last announced.
    pub interleave: Option<u16>,
    /// Repair left over (sent − needed) as a fraction of K that 99 % of
    /// the rebuilt blocks had at least (`None`: settings or blocks unknown).
    pub headroom_p99: Option<f64>,
    /// Fewest repair symbols left over by a rebuilt block (sent − needed).
    pub headroom_min_symbols: Option<i64>,
    /// Mean length of a run of consecutive missing symbols in a block.
    pub mean_run: f64,
    /// Longest run of consecutive missing symbols in a block.
    pub longest_run: u32,
    /// Mean run over the mean independent loss would give (≈ 1: random).
    pub burstiness: f64,
    /// None, random or burst.
    pub pattern: LossPattern,
    /// A ratio that covers the window's p99 need (and at least
    /// `loss / (1 − loss)`, what large blocks need), with a margin, in
    /// 0..=10 (`None` while no block was rebuilt).
    pub recommended_ratio: Option<f64>,
    /// With bursty loss, the depth at which the longest burst seen, spread
    /// over that many blocks, fits a typical block's repair budget (never
    /// below the depth in use); otherwise the depth in use.
    pub recommended_interleave: Option<u16>,
}

#[derive(Debug, Clone, Copy)]
enum Observation {
    Rebuilt {
        tally: SymbolTally,
        fec: Option<LaneFec>,
    },
    Lost {
        fec: Option<LaneFec>,
    },
}

/// One lane's meter. Sans-IO and bounded: the last `window` blocks.
#[derive(Debug, Clone)]
pub struct HeadroomMeter {
    window: usize,
    recent: VecDeque<Observation>,
    fec: Option<LaneFec>,
}

impl Default for HeadroomMeter {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW_BLOCKS)
    }
}

/// The settings, unless they are the all-zero "not announced" value (a
/// real lane interleaves at least one block).
fn known(fec: LaneFec) -> Option<LaneFec> {
    (fec.interleave > 0).then_some(fec)
}

/// Repair symbols sent for `k` source symbols under `fec`.
fn sent(k: u32, fec: LaneFec) -> u32 {
    repair_symbols(k, fec.repair_permille, fec.min_repair)
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Nearest-rank percentile of sorted `v` (`q` in 0..=1); 0 when empty.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    // reason: q is in 0..=1, so the rank is in 0..=len.
    #[allow(clippy::cast_sign_loss)]
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// What the window adds up to.
#[derive(Debug, Default)]
struct Sums {
    rebuilt: u32,
    repaired: u32,
    lost: u32,
    expected: u64,
    missing: u64,
    runs: u64,
    longest_run: u32,
    /// Longest run times the depth it was seen at: the longest wire burst.
    burst_on_wire: u32,
    needed_max: u32,
    headroom_min: Option<i64>,
    /// (Sent − needed) / K of each rebuilt block whose settings are known.
    headroom: Vec<f64>,
    /// Source symbols of each rebuilt block.
    k: Vec<u32>,
    /// Repair needed / K of each rebuilt block.
    need: Vec<f64>,
}

impl Sums {
    fn of(recent: &VecDeque<Observation>) -> Self {
        let mut s = Self::default();
        for obs in recent {
            let (tally, fec) = match *obs {
                Observation::Lost { .. } => {
                    s.lost += 1;
                    continue;
                }
                Observation::Rebuilt { tally, fec } => (tally, fec),
            };
            let k = tally.source_symbols.max(1);
            let needed = tally.repair_needed();
            s.rebuilt += 1;
            s.repaired += u32::from(needed > 0);
            s.expected += u64::from(tally.sent_until_complete());
            s.missing += u64::from(tally.missing);
            s.runs += u64::from(tally.missing_runs);
            s.longest_run = s.longest_run.max(tally.longest_run);
            let depth = fec.map_or(1, |f| u32::from(f.interleave));
            s.burst_on_wire = s.burst_on_wire.max(tally.longest_run.saturating_mul(depth));
            s.needed_max = s.needed_max.max(needed);
            if let Some(f) = fec {
                let left = i64::from(sent(k, f)) - i64::from(needed);
                s.headroom_min = Some(s.headroom_min.map_or(left, |m| m.min(left)));
                s.headroom.push(left as f64 / f64::from(k));
            }
            s.k.push(k);
            s.need.push(f64::from(needed) / f64::from(k));
        }
        s.k.sort_unstable();
        s.need.sort_by(f64::total_cmp);
        s.headroom.sort_by(f64::total_cmp);
        s
    }

    fn loss(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.missing as f64 / self.expected as f64
        }
    }

    fn mean_run(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.missing as f64 / self.runs as f64
        }
    }

    fn burstiness(&self) -> f64 {
        self.mean_run() * (1.0 - self.loss())
    }

    fn pattern(&self) -> LossPattern {
        match (self.missing, self.lost) {
            (0, 0) => LossPattern::None,
            (0, _) => LossPattern::Burst,
            _ if self.runs >= BURST_MIN_RUNS && self.burstiness() >= BURST_INDEX => {
                LossPattern::Burst
            }
            _ => LossPattern::Random,
        }
    }

    /// Median K of the rebuilt blocks.
    fn typical_k(&self) -> Option<u32> {
        self.k.get(self.k.len() / 2).copied()
    }
}

impl HeadroomMeter {
    /// A meter over the last `window_blocks` blocks (at least one).
    pub fn new(window_blocks: usize) -> Self {
        let window = window_blocks.max(1);
        Self {
            window,
            recent: VecDeque::with_capacity(window),
            fec: None,
        }
    }

    /// The lane's FEC settings, as a heartbeat announced them. All zeros
    /// means "not announced": the settings become unknown.
    pub fn handle_settings(&mut self, fec: LaneFec) {
        self.fec = known(fec);
    }

    /// The settings in use, if known.
    pub fn settings(&self) -> Option<LaneFec> {
        self.fec
    }

    /// A block was rebuilt after these symbols arrived.
    pub fn handle_block(&mut self, tally: SymbolTally) {
        self.push(Observation::Rebuilt {
            tally,
            fec: self.fec,
        });
    }

    /// `blocks` blocks were declared lost.
    pub fn handle_lost(&mut self, blocks: u64) {
        let n = usize::try_from(blocks)
            .unwrap_or(usize::MAX)
            .min(self.window);
        for _ in 0..n {
            self.push(Observation::Lost { fec: self.fec });
        }
    }

    fn push(&mut self, obs: Observation) {
        if self.recent.len() >= self.window {
            self.recent.pop_front();
        }
        self.recent.push_back(obs);
    }

    /// The report over the window.
    pub fn report(&self) -> HeadroomReport {
        let s = Sums::of(&self.recent);
        let need_p99 = percentile(&s.need, 0.99);
        let recommended_ratio = self.recommend_ratio(&s);
        HeadroomReport {
            blocks: s.rebuilt + s.lost,
            blocks_repaired: s.repaired,
            blocks_lost: s.lost,
            symbols_expected: s.expected,
            symbols_missing: s.missing,
            loss: round4(s.loss()),
            need_p50: round4(percentile(&s.need, 0.5)),
            need_p99: round4(need_p99),
            need_max: round4(s.need.last().copied().unwrap_or(0.0)),
            repair_needed_max: s.needed_max,
            ratio: self.fec.map(|f| f64::from(f.repair_permille) / 1000.0),
            min_repair: self.fec.map(|f| f.min_repair),
            interleave: self.fec.map(|f| f.interleave),
            headroom_p99: (!s.headroom.is_empty()).then(|| round4(percentile(&s.headroom, 0.01))),
            headroom_min_symbols: s.headroom_min,
            mean_run: round4(s.mean_run()),
            longest_run: s.longest_run,
            burstiness: round4(s.burstiness()),
            pattern: s.pattern(),
            recommended_ratio,
            recommended_interleave: self.recommend_interleave(&s, recommended_ratio),
        }
    }

    /// The smallest ratio that, with the lane's `min_repair`, would have
    /// covered 99 % of the window's blocks (and at least what large blocks
    /// need at the loss rate), plus the margin. A lost block needed at
    /// least one symbol more than a typical block was sent.
    fn recommend_ratio(&self, s: &Sums) -> Option<f64> {
        let k = s.typical_k()?;
        let min = self.fec.map_or(0, |f| f.min_repair);
        let need_max = s.need.last().copied().unwrap_or(0.0);
        let mut required: Vec<f64> = Vec::with_capacity(self.recent.len());
        for obs in &self.recent {
            let r = match *obs {
                Observation::Rebuilt { tally, .. } => {
                    let needed = tally.repair_needed();
                    if needed <= min {
                        0.0
                    } else {
                        f64::from(needed) / f64::from(tally.source_symbols.max(1))
                    }
                }
                Observation::Lost { fec } => fec.map_or(need_max + 1.0 / f64::from(k), |f| {
                    f64::from(sent(k, f).saturating_add(1)) / f64::from(k)
                }),
            };
            required.push(r);
        }
        required.sort_by(f64::total_cmp);
        // Small blocks can live on `min_repair` alone; a large one needs
        // about `loss / (1 − loss)` of repair, so never less than that.
        let loss = s.loss();
        let base = percentile(&required, 0.99).max(loss / (1.0 - loss));
        let ratio = base * (1.0 + MARGIN_REL) + MARGIN_ABS;
        Some(((ratio * 100.0).ceil() / 100.0).clamp(0.0, MAX_RATIO))
    }

    /// With bursty loss, the depth that spreads the longest burst seen
    /// thinly enough for a typical block's repair budget (the configured
    /// ratio's, or the recommended one's while the settings are unknown);
    /// never below the depth in use. Otherwise the depth in use.
    fn recommend_interleave(&self, s: &Sums, ratio: Option<f64>) -> Option<u16> {
        let current = self.fec.map(|f| f.interleave);
        if s.pattern() != LossPattern::Burst || s.burst_on_wire == 0 {
            return current;
        }
        let k = s.typical_k()?;
        let budget = match (self.fec, ratio) {
            (Some(f), _) => sent(k, f),
            (None, Some(r)) => {
                // reason: the ratio is clamped to 0..=10, so the permille
                // is a small non-negative integer.
                #[allow(clippy::cast_sign_loss)]
                let permille = (r * 1000.0).round() as u32;
                repair_symbols(k, permille, 0)
            }
            (None, None) => return None,
        }
        .saturating_sub(DECODE_SPARE)
        .max(1);
        let depth = s.burst_on_wire.div_ceil(budget);
        let depth = u16::try_from(depth)
            .unwrap_or(MAX_INTERLEAVE)
            .clamp(1, MAX_INTERLEAVE);
        Some(depth.max(current.unwrap_or(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const BULK: LaneFec = LaneFec {
        repair_permille: 250,
        min_repair: 2,
        interleave: 1,
    };

    /// Send a block of `k` source symbols and `r` repair symbols through
    /// `lose` (true: that symbol is lost); the tally when `k` distinct
    /// symbols arrived, or `None` if the block could not be rebuilt.
    fn simulate(k: u32, r: u32, mut lose: impl FnMut() -> bool) -> Option<SymbolTally> {
        let mut t = SymbolTally {
            source_symbols: k,
            ..SymbolTally::default()
        };
        let mut run = 0;
        for esi in 0..k + r {
            if lose() {
                t.missing += 1;
                if run == 0 {
                    t.missing_runs += 1;
                }
                run += 1;
                t.longest_run = t.longest_run.max(run);
                continue;
            }
            run = 0;
            t.distinct += 1;
            t.highest_esi = Some(esi);
            if t.distinct == k {
                return Some(t);
            }
        }
        None
    }

    fn feed(meter: &mut HeadroomMeter, blocks: usize, k: u32, mut lose: impl FnMut() -> bool) {
        let r = meter.settings().map_or(sent(k, BULK), |f| sent(k, f));
        for _ in 0..blocks {
            match simulate(k, r, &mut lose) {
                Some(t) => meter.handle_block(t),
                None => meter.handle_lost(1),
            }
        }
    }

    #[test]
    fn clean_link_recommends_no_increase() {
        let mut m = HeadroomMeter::default();
        m.handle_settings(BULK);
        feed(&mut m, 200, 46, || false);
        let r = m.report();
        assert_eq!(r.pattern, LossPattern::None);
        assert_eq!((r.blocks, r.blocks_repaired, r.blocks_lost), (200, 0, 0));
        assert_eq!(r.symbols_expected, 200 * 46);
        assert!(r.loss.abs() < 1e-12 && r.need_max.abs() < 1e-12, "{r:?}");
        assert_eq!(r.headroom_min_symbols, Some(12));
        assert!(r.recommended_ratio.is_some_and(|x| x <= 0.25), "{r:?}");
        assert_eq!(r.recommended_interleave, Some(1));
    }

    #[test]
    fn random_loss_of_5_percent_is_random_and_needs_more_than_5_percent() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut m = HeadroomMeter::default();
        m.handle_settings(BULK);
        feed(&mut m, 2000, 46, || rng.random_bool(0.05));
        let r = m.report();
        assert_eq!(r.blocks, DEFAULT_WINDOW_BLOCKS as u32, "windowed");
        assert_eq!(r.pattern, LossPattern::Random, "{r:?}");
        assert!((0.04..0.06).contains(&r.loss), "{r:?}");
        assert!((0.9..1.2).contains(&r.burstiness), "{r:?}");
        assert!(r.need_p50 < r.need_p99 && r.need_p99 <= r.need_max, "{r:?}");
        let rec = r.recommended_ratio.expect("a recommendation");
        assert!(rec > 0.05 && rec > r.need_p99, "{r:?}");
        assert_eq!(r.ratio, Some(0.25));
        assert!(r.headroom_p99.is_some_and(|h| h > 0.0), "{r:?}");
        assert_eq!(r.recommended_interleave, Some(1), "random: keep the depth");
    }

    #[test]
    fn bursts_are_bursts_and_ask_for_deeper_interleaving() {
        // Gilbert-like: a burst of 9 symbols starts at 1 % of symbols.
        let mut rng = StdRng::seed_from_u64(9);
        let mut left = 0u32;
        let mut lose = move || {
            if left == 0 && rng.random_bool(0.01) {
                left = 9;
            }
            if left > 0 {
                left -= 1;
                return true;
            }
            false
        };
        let mut m = HeadroomMeter::default();
        m.handle_settings(BULK);
        feed(&mut m, 600, 40, &mut lose);
        let r = m.report();
        assert_eq!(r.pattern, LossPattern::Burst, "{r:?}");
        assert!(r.burstiness > 3.0, "{r:?}");
        assert!(r.longest_run >= 9, "{r:?}");
        // K = 40: 10 repair symbols, 8 after the decode spare; a burst of
        // 9 (or two back to back) needs at least two blocks to spread over.
        assert!(r.recommended_interleave.is_some_and(|d| d > 1), "{r:?}");
    }

    #[test]
    fn unknown_settings_report_the_need_without_the_sent_side() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut m = HeadroomMeter::new(100);
        feed(&mut m, 100, 46, || rng.random_bool(0.05));
        let r = m.report();
        assert_eq!(r.blocks, 100);
        assert_eq!(r.pattern, LossPattern::Random);
        assert!(r.loss > 0.0);
        assert_eq!((r.ratio, r.min_repair, r.interleave), (None, None, None));
        assert_eq!((r.headroom_p99, r.headroom_min_symbols), (None, None));
        assert!(r.recommended_ratio.is_some_and(|x| x > 0.05));
        assert_eq!(r.recommended_interleave, None);
        // The all-zero value a sender without the field sends is "unknown".
        m.handle_settings(LaneFec::default());
        assert_eq!(m.settings(), None);
    }

    #[test]
    fn lost_blocks_count_as_needing_more_than_was_sent() {
        let mut m = HeadroomMeter::new(100);
        m.handle_settings(BULK);
        feed(&mut m, 90, 40, || false);
        m.handle_lost(10);
        let r = m.report();
        assert_eq!((r.blocks, r.blocks_lost), (100, 10));
        assert_eq!(r.pattern, LossPattern::Burst, "whole blocks, nothing else");
        // p99 falls on a lost block: 11 symbols for K = 40, plus margin.
        assert!(r.recommended_ratio.is_some_and(|x| x > 0.25), "{r:?}");
        // A huge loss range is bounded by the window.
        m.handle_lost(u64::MAX);
        assert_eq!(m.report().blocks_lost, 100);
        assert_eq!(m.report().recommended_ratio, None, "no rebuilt block");
    }

    #[test]
    fn small_blocks_lean_on_min_repair() {
        // Alert lane: K = 1, four repair symbols; one or two lost.
        let alert = LaneFec {
            repair_permille: 500,
            min_repair: 4,
            interleave: 1,
        };
        let mut m = HeadroomMeter::default();
        m.handle_settings(alert);
        let mut i = 0u32;
        feed(&mut m, 100, 1, || {
            i += 1;
            i.is_multiple_of(7)
        });
        let r = m.report();
        assert_eq!(r.pattern, LossPattern::Random);
        assert!(r.need_max >= 1.0, "a lost symbol is a whole K: {r:?}");
        // min_repair covers every block; large blocks would need the loss.
        let rec = r.recommended_ratio.expect("a recommendation");
        assert!(rec >= r.loss && rec < 0.5, "{r:?}");
        assert_eq!(r.headroom_min_symbols, Some(3));
        // Headroom counts min_repair: every block kept 3 of 4, i.e. 3 K.
        assert!(r.headroom_p99.is_some_and(|h| h > 2.9), "{r:?}");
    }
}
