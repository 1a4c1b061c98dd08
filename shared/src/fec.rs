//! Forward error correction: one sealed block ↔ RaptorQ encoding symbols.
//!
//! A diode cannot ask for a retransmission, so every block is sent as its
//! `K` source symbols plus `R = max(ceil(K · ratio), min)` repair symbols
//! (RFC 6330); any `K` (rarely `K + 1` or `K + 2`) of them rebuild the block.
//! Each block is a single RaptorQ source block (SBN 0) whose transfer length
//! is the sealed block length.
//!
//! Generating the encoding plan dominates RaptorQ encode time for a given
//! `K`, so the encoder caches plans per source-symbol count: blocks of one
//! size share one plan.
//!
//! Neither side allocates per symbol while a block is clean. The code is
//! systematic: the source symbols *are* the block, cut into `symbol_size`
//! pieces. The encoder sends them straight from the padded block, and only
//! the repair symbols come out of raptorq. The decoder stores symbols in
//! one buffer reserved for `K` of them when the block is first seen. When
//! all `K` source symbols arrive, that buffer is the block (reordered if
//! they came out of order), and raptorq is never involved. Only once `K`
//! distinct symbols are in hand with some source symbol missing does the
//! decoder ask for a solve ([`Step::Solve`]): the symbols go to a raptorq
//! decoder, which takes every later symbol of the block. Adding a symbol
//! and solving are separate calls, so the receiver can solve on a worker
//! thread while symbols of other blocks keep coming.
//! `shared/tests/alloc.rs` holds both sides to this.
//!
//! The decoder also notes which encoding symbol ids (ESIs) arrived, one bit
//! each. The sender emits a block's symbols in ESI order, so an ESI missing
//! below the highest one received was lost on the wire before the block
//! could be rebuilt: a [`SymbolTally`] is the block's own loss pattern, what
//! the receiver's FEC headroom report ([`crate::headroom`]) is made of.

use std::collections::HashMap;

use raptorq::{
    EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockDecoder,
    SourceBlockEncoder, SourceBlockEncodingPlan,
};

/// Symbol alignment used for every block (bytes).
pub const SYMBOL_ALIGN: u16 = 8;
/// RFC 6330's largest source-symbol count per source block.
pub const MAX_SOURCE_SYMBOLS: u32 = 56_403;
/// Plans kept in the cache before it is cleared.
const PLAN_CACHE_MAX: usize = 64;
/// ESIs tracked per block: `TRACKED_PER_SOURCE · K + TRACKED_EXTRA`, that is
/// the source symbols and three times as many repair symbols (ratio 3 in
/// full; a block rebuilt beyond that has lost most of what was sent).
const TRACKED_PER_SOURCE: u32 = 4;
/// ESIs tracked beyond `TRACKED_PER_SOURCE · K` (small blocks: `min_repair`).
const TRACKED_EXTRA: u32 = 64;

/// Why FEC encode or decode setup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FecError {
    /// Block is empty or longer than the configured maximum.
    #[error("block length {0} out of range")]
    BlockLength(u32),
    /// Symbol size is zero, unaligned, or above the maximum.
    #[error("symbol size {0} invalid")]
    SymbolSize(u16),
    /// The block needs more source symbols than RaptorQ allows in one block.
    #[error("{0} source symbols exceed the RaptorQ limit")]
    TooManySymbols(u32),
    /// A symbol names a source block other than 0.
    #[error("source block number {0} is not 0")]
    SourceBlock(u8),
}

/// Number of source symbols for a block of `len` bytes.
pub fn source_symbols(len: u32, symbol_size: u16) -> u32 {
    len.div_ceil(u32::from(symbol_size))
}

/// Repair symbols to send for `k` source symbols: `max(ceil(k · ratio), min)`,
/// with `ratio` in per mille.
pub fn repair_symbols(k: u32, ratio_permille: u32, min: u32) -> u32 {
    let r = (u64::from(k) * u64::from(ratio_permille)).div_ceil(1000);
    u32::try_from(r).unwrap_or(u32::MAX).max(min)
}

fn oti(len: u32, symbol_size: u16) -> ObjectTransmissionInformation {
    ObjectTransmissionInformation::new(u64::from(len), symbol_size, 1, 1, SYMBOL_ALIGN as u8)
}

/// Check a block geometry before handing it to raptorq (whose constructors
/// assert on bad input).
pub fn check_geometry(len: u32, symbol_size: u16, max_len: u32) -> Result<u32, FecError> {
    if len == 0 || len > max_len {
        return Err(FecError::BlockLength(len));
    }
    if symbol_size == 0 || !symbol_size.is_multiple_of(SYMBOL_ALIGN) {
        return Err(FecError::SymbolSize(symbol_size));
    }
    let k = source_symbols(len, symbol_size);
    if k > MAX_SOURCE_SYMBOLS {
        return Err(FecError::TooManySymbols(k));
    }
    Ok(k)
}

/// Encodes sealed blocks into symbols, caching plans per symbol count.
#[derive(Debug)]
pub struct BlockEncoder {
    symbol_size: u16,
    max_block_len: u32,
    plans: HashMap<u32, SourceBlockEncodingPlan>,
    /// The block zero-padded to whole symbols (raptorq wants that), reused.
    padded: Vec<u8>,
}

/// One encoded symbol: its payload id and bytes (`symbol_size` long).
pub type Symbol = EncodingPacket;

impl BlockEncoder {
    /// An encoder for `symbol_size`-byte symbols and blocks up to
    /// `max_block_len` bytes.
    pub fn new(symbol_size: u16, max_block_len: u32) -> Result<Self, FecError> {
        check_geometry(1, symbol_size, max_block_len)?;
        Ok(Self {
            symbol_size,
            max_block_len,
            plans: HashMap::new(),
            padded: Vec::new(),
        })
    }

    /// Symbol size in bytes.
    pub fn symbol_size(&self) -> u16 {
        self.symbol_size
    }

    /// Encode `block` into its source symbols followed by `repair` repair
    /// symbols, calling `emit(payload_id, symbol)` for each in ESI order.
    /// Returns the source-symbol count `K`.
    pub fn encode(
        &mut self,
        block: &[u8],
        repair: u32,
        mut emit: impl FnMut(u32, &[u8]),
    ) -> Result<u32, FecError> {
        let len = u32::try_from(block.len()).map_err(|_| FecError::BlockLength(u32::MAX))?;
        let k = check_geometry(len, self.symbol_size, self.max_block_len)?;
        if self.plans.len() >= PLAN_CACHE_MAX && !self.plans.contains_key(&k) {
            self.plans.clear();
        }
        let plan = self
            .plans
            .entry(k)
            .or_insert_with(|| SourceBlockEncodingPlan::generate(k as u16));
        self.padded.clear();
        self.padded.extend_from_slice(block);
        self.padded
            .resize(k as usize * usize::from(self.symbol_size), 0);
        let enc = SourceBlockEncoder::with_encoding_plan(
            0,
            &oti(len, self.symbol_size),
            &self.padded,
            plan,
        );
        // Systematic code: source symbol `i` is the `i`-th piece of the
        // padded block, byte for byte what `enc.source_packets()` would
        // copy out of it.
        for (esi, symbol) in (0u32..).zip(self.padded.chunks_exact(usize::from(self.symbol_size))) {
            emit(payload_id_u32(&PayloadId::new(0, esi)), symbol);
        }
        for p in &enc.repair_packets(0, repair) {
            emit(payload_id_u32(p.payload_id()), p.data());
        }
        Ok(k)
    }
}

fn payload_id_u32(p: &PayloadId) -> u32 {
    u32::from_be_bytes(p.serialize())
}

/// Which symbols of one block arrived before it was rebuilt.
///
/// ESIs above the tracked span (`4K + 64`) count as received, but the gaps
/// between them are not resolved: `missing` and the runs cover the span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SymbolTally {
    /// Source symbols `K`.
    pub source_symbols: u32,
    /// Distinct symbols received (duplicates not counted).
    pub distinct: u32,
    /// Highest ESI received, if any.
    pub highest_esi: Option<u32>,
    /// ESIs below the highest received that did not arrive: lost on the
    /// wire (or still on their way, reordered) when the block completed.
    pub missing: u32,
    /// Runs of consecutive missing ESIs.
    pub missing_runs: u32,
    /// The longest run of consecutive missing ESIs.
    pub longest_run: u32,
}

impl SymbolTally {
    /// Symbols the sender had sent up to the highest one received.
    pub fn sent_until_complete(&self) -> u32 {
        self.highest_esi.map_or(0, |h| h.saturating_add(1))
    }

    /// Repair symbols the block needed: those sent, up to the highest one
    /// received, beyond its `K` source symbols (the symbols lost plus
    /// RaptorQ's occasional one or two extra).
    pub fn repair_needed(&self) -> u32 {
        self.sent_until_complete()
            .saturating_sub(self.source_symbols)
    }
}

/// One bit per ESI in `0..TRACKED_PER_SOURCE · K + TRACKED_EXTRA`.
#[derive(Debug, Clone)]
struct EsiSet {
    words: Vec<u64>,
    distinct: u32,
    /// Symbols with an ESI above the tracked span (duplicates included).
    beyond: u32,
    highest: Option<u32>,
}

impl EsiSet {
    fn new(k: u32) -> Self {
        let bits = k
            .saturating_mul(TRACKED_PER_SOURCE)
            .saturating_add(TRACKED_EXTRA);
        Self {
            words: vec![0; bits.div_ceil(64) as usize],
            distinct: 0,
            beyond: 0,
            highest: None,
        }
    }

    /// Note one ESI: a bit test and set. False for a duplicate within the
    /// tracked span (above it duplicates cannot be told apart: true).
    fn insert(&mut self, esi: u32) -> bool {
        self.highest = Some(self.highest.map_or(esi, |h| h.max(esi)));
        let bit = 1u64 << (esi % 64);
        match self.words.get_mut((esi / 64) as usize) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                self.distinct += 1;
                true
            }
            Some(_) => false,
            None => {
                self.beyond = self.beyond.saturating_add(1);
                true
            }
        }
    }

    fn tracked_bits(&self) -> u32 {
        u32::try_from(self.words.len() * 64).unwrap_or(u32::MAX)
    }

    /// Missing ESIs below the highest received: (missing, runs, longest).
    fn gaps(&self) -> (u32, u32, u32) {
        let Some(highest) = self.highest else {
            return (0, 0, 0);
        };
        let end = highest.min(self.tracked_bits().saturating_sub(1));
        let (mut missing, mut runs, mut longest, mut run) = (0u32, 0u32, 0u32, 0u32);
        let mut esi = 0u32;
        while esi <= end {
            let word = self.words[(esi / 64) as usize];
            // A whole word received: no gap in it.
            if esi.is_multiple_of(64) && word == u64::MAX && esi + 63 <= end {
                run = 0;
                esi += 64;
                continue;
            }
            if word & (1u64 << (esi % 64)) == 0 {
                missing += 1;
                if run == 0 {
                    runs += 1;
                }
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
            esi += 1;
        }
        if highest > end {
            // Above the span: only the count is known.
            let above = (highest - end).saturating_sub(self.beyond);
            if above > 0 {
                missing += above;
                runs += 1;
                longest = longest.max(above);
            }
        }
        (missing, runs, longest)
    }
}

/// The encoding symbol id of a symbol of a block cut in `symbol_size`
/// pieces: refused if it names another source block or has another length.
pub fn symbol_esi(payload_id: u32, len: usize, symbol_size: u16) -> Result<u32, FecError> {
    let pid = PayloadId::deserialize(&payload_id.to_be_bytes());
    if pid.source_block_number() != 0 {
        return Err(FecError::SourceBlock(pid.source_block_number()));
    }
    if len != usize::from(symbol_size) {
        return Err(FecError::SymbolSize(u16::try_from(len).unwrap_or(u16::MAX)));
    }
    Ok(pid.encoding_symbol_id())
}

/// What one added symbol did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not enough symbols yet.
    Wait,
    /// The block, from its source symbols alone.
    Block(Vec<u8>),
    /// Enough symbols for RaptorQ to try: call [`BlockDecoder::solve`].
    Solve,
}

/// Rebuilds one block from whatever symbols arrive, in any order.
pub struct BlockDecoder {
    k: u32,
    len: u32,
    symbol_size: u16,
    received: u32,
    source_received: u32,
    esis: EsiSet,
    /// Distinct symbols in arrival order not yet handed to raptorq,
    /// `symbol_size` bytes each; room for `K` is reserved up front, and it
    /// never holds more (see [`BlockDecoder::add`]).
    stored: Vec<u8>,
    /// ESI of each symbol in `stored`.
    stored_esis: Vec<u32>,
    /// Distinct source symbols in `stored`.
    stored_source: u32,
    /// `stored` holds ESIs `0, 1, 2, …` in that order so far: once all `K`
    /// are in, it is the block as it stands.
    in_order: bool,
    /// Set by the first [`BlockDecoder::solve`]: from then on raptorq
    /// holds the block's symbols.
    inner: Option<SourceBlockDecoder>,
}

impl std::fmt::Debug for BlockDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDecoder")
            .field("k", &self.k)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl BlockDecoder {
    /// A decoder for a block of `len` bytes in `symbol_size`-byte symbols;
    /// the geometry is checked against `max_len` first.
    pub fn new(len: u32, symbol_size: u16, max_len: u32) -> Result<Self, FecError> {
        let k = check_geometry(len, symbol_size, max_len)?;
        Ok(Self {
            k,
            len,
            symbol_size,
            received: 0,
            source_received: 0,
            esis: EsiSet::new(k),
            // Reserved, not written: pages are touched as symbols arrive.
            stored: Vec::with_capacity(k as usize * usize::from(symbol_size)),
            stored_esis: Vec::with_capacity(k as usize),
            stored_source: 0,
            in_order: true,
            inner: None,
        })
    }

    /// Source symbols in this block.
    pub fn source_symbols(&self) -> u32 {
        self.k
    }

    /// Symbols handed in so far (duplicates included).
    pub fn received(&self) -> u32 {
        self.received
    }

    /// Source (systematic) symbols handed in so far.
    pub fn source_received(&self) -> u32 {
        self.source_received
    }

    /// Which symbols arrived so far, and the gaps between them. Scans the
    /// ESI bitset: call it once, when the block is rebuilt.
    pub fn tally(&self) -> SymbolTally {
        let (missing, missing_runs, longest_run) = self.esis.gaps();
        SymbolTally {
            source_symbols: self.k,
            distinct: self.esis.distinct.saturating_add(self.esis.beyond),
            highest_esi: self.esis.highest,
            missing,
            missing_runs,
            longest_run,
        }
    }

    /// Add one symbol and solve at once when RaptorQ is needed: the block
    /// once it can be rebuilt. `symbol` must be exactly `symbol_size` long
    /// (the wire parser guarantees it). [`BlockDecoder::add`] and
    /// [`BlockDecoder::solve`] split the same work so the solve can run
    /// elsewhere.
    pub fn push(&mut self, payload_id: u32, symbol: &[u8]) -> Result<Option<Vec<u8>>, FecError> {
        Ok(match self.add(payload_id, symbol)? {
            Step::Wait => None,
            Step::Block(b) => Some(b),
            Step::Solve => self.solve(),
        })
    }

    /// Add one symbol. Cheap: copies it, and hands the block out when its
    /// `K` source symbols are in. [`Step::Solve`] when RaptorQ has to
    /// rebuild a missing source symbol: call [`BlockDecoder::solve`].
    pub fn add(&mut self, payload_id: u32, symbol: &[u8]) -> Result<Step, FecError> {
        let esi = symbol_esi(payload_id, symbol.len(), self.symbol_size)?;
        self.received += 1;
        if esi < self.k {
            self.source_received += 1;
        }
        if !self.esis.insert(esi) {
            return Ok(Step::Wait);
        }
        self.in_order &= esi as usize == self.stored_esis.len();
        self.stored.extend_from_slice(symbol);
        self.stored_esis.push(esi);
        if self.inner.is_some() {
            // A solve fell short: every new symbol is worth another.
            return Ok(Step::Solve);
        }
        if esi < self.k {
            self.stored_source += 1;
        }
        if self.stored_source == self.k {
            return Ok(Step::Block(self.source_block()));
        }
        // `K` distinct symbols but a source symbol missing: RaptorQ may
        // rebuild the block now or after a symbol or two more. `stored`
        // therefore never grows past `K` symbols before the first solve.
        Ok(if self.stored_esis.len() >= self.k as usize {
            Step::Solve
        } else {
            Step::Wait
        })
    }

    /// Hand the symbols added since the last solve to RaptorQ and try to
    /// rebuild the block: the heavy step, `O(K²)` at worst. `None` when the
    /// symbols so far are not enough (about one block in a hundred with
    /// exactly `K`); every later [`BlockDecoder::add`] then asks for
    /// another solve.
    pub fn solve(&mut self) -> Option<Vec<u8>> {
        let (len, ss) = (self.len, usize::from(self.symbol_size));
        let inner = self.inner.get_or_insert_with(|| {
            SourceBlockDecoder::new(0, &oti(len, self.symbol_size), u64::from(len))
        });
        let packets = self
            .stored
            .chunks_exact(ss)
            .zip(&self.stored_esis)
            .map(|(s, &esi)| EncodingPacket::new(PayloadId::new(0, esi), s.to_vec()));
        let block = inner.decode(packets);
        self.stored.clear();
        self.stored_esis.clear();
        // raptorq returns whole symbols; the tail is padding.
        block.map(|mut b| {
            b.truncate(len as usize);
            b
        })
    }

    /// The block from its `K` stored source symbols (none of them repair:
    /// `stored` reached `K` source symbols before it reached `K` symbols).
    fn source_block(&mut self) -> Vec<u8> {
        let ss = usize::from(self.symbol_size);
        let mut block = if self.in_order {
            std::mem::take(&mut self.stored)
        } else {
            let mut block = vec![0; self.k as usize * ss];
            for (s, &esi) in self.stored.chunks_exact(ss).zip(&self.stored_esis) {
                let at = esi as usize * ss;
                block[at..at + ss].copy_from_slice(s);
            }
            block
        };
        block.truncate(self.len as usize);
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn encode_all(block: &[u8], repair: u32) -> Vec<(u32, Vec<u8>)> {
        let mut enc = BlockEncoder::new(256, 1 << 20).expect("encoder");
        let mut out = Vec::new();
        enc.encode(block, repair, |pid, s| out.push((pid, s.to_vec())))
            .expect("encode");
        out
    }

    #[test]
    fn repair_count_rounds_up_with_minimum() {
        assert_eq!(repair_symbols(10, 250, 2), 3);
        assert_eq!(repair_symbols(1, 100, 4), 4);
        assert_eq!(repair_symbols(100, 100, 2), 10);
        assert_eq!(repair_symbols(0, 0, 0), 0);
    }

    #[test]
    fn geometry_checks_refuse_what_raptorq_would_assert_on() {
        assert_eq!(check_geometry(0, 256, 1000), Err(FecError::BlockLength(0)));
        assert_eq!(
            check_geometry(2000, 256, 1000),
            Err(FecError::BlockLength(2000))
        );
        assert_eq!(
            check_geometry(100, 255, 1000),
            Err(FecError::SymbolSize(255))
        );
        assert_eq!(check_geometry(100, 0, 1000), Err(FecError::SymbolSize(0)));
        assert_eq!(
            check_geometry(u32::MAX, 8, u32::MAX),
            Err(FecError::TooManySymbols(536_870_912))
        );
    }

    #[test]
    fn nonzero_source_block_is_refused_not_asserted() {
        let mut dec = BlockDecoder::new(1000, 256, 1 << 20).expect("decoder");
        assert_eq!(
            dec.push(0x0100_0000, &[0; 256]),
            Err(FecError::SourceBlock(1))
        );
    }

    /// Random loss within the repair budget always decodes (fixed seeds:
    /// RaptorQ failure is probabilistic, ~1e-2 at exactly K, far less with
    /// one or two extra symbols).
    #[test]
    fn random_loss_within_budget_decodes() {
        for seed in 0..40u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let len = rng.random_range(1..40_000usize);
            let block: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let k = source_symbols(len as u32, 256);
            let repair = repair_symbols(k, 250, 4);
            let mut symbols = encode_all(&block, repair);
            // Drop up to `repair - 2` symbols at random: 2 spare for the
            // RaptorQ overhead.
            let drop = rng.random_range(0..=repair.saturating_sub(2)) as usize;
            for _ in 0..drop {
                let i = rng.random_range(0..symbols.len());
                symbols.swap_remove(i);
            }
            let mut dec = BlockDecoder::new(len as u32, 256, 1 << 20).expect("decoder");
            let mut out = None;
            for (pid, s) in &symbols {
                if let Some(b) = dec.push(*pid, s).expect("push") {
                    out = Some(b);
                    break;
                }
            }
            assert_eq!(out.as_deref(), Some(&block[..]), "seed {seed}");
        }
    }

    /// Feed `symbols` except those whose ESI is in `lost`, until rebuilt.
    fn tally_after_losing(len: u32, repair: u32, lost: &[u32]) -> SymbolTally {
        let block: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut dec = BlockDecoder::new(len, 256, 1 << 20).expect("decoder");
        for (pid, s) in encode_all(&block, repair) {
            if lost.contains(&(pid & 0x00ff_ffff)) {
                continue;
            }
            if dec.push(pid, &s).expect("push").is_some() {
                return dec.tally();
            }
        }
        panic!("block not rebuilt with {lost:?} lost");
    }

    #[test]
    fn clean_block_needs_no_repair() {
        let t = tally_after_losing(10 * 256, 4, &[]);
        assert_eq!(t.source_symbols, 10);
        assert_eq!(t.distinct, 10);
        assert_eq!(t.highest_esi, Some(9));
        assert_eq!((t.missing, t.missing_runs, t.longest_run), (0, 0, 0));
        assert_eq!(t.repair_needed(), 0);
    }

    #[test]
    fn tally_counts_missing_esis_and_runs_below_the_highest() {
        // K = 20; lose 2, 3, 4 (a run of 3) and 11 (a run of 1).
        let t = tally_after_losing(20 * 256, 10, &[2, 3, 4, 11]);
        assert_eq!(t.source_symbols, 20);
        assert_eq!(t.missing, 4);
        assert_eq!(t.missing_runs, 2);
        assert_eq!(t.longest_run, 3);
        // At least four repair symbols were needed, rarely one or two more.
        assert!((4..=6).contains(&t.repair_needed()), "{t:?}");
        assert_eq!(t.sent_until_complete(), t.distinct + t.missing);
    }

    #[test]
    fn duplicates_count_once_and_whole_words_are_skipped() {
        let mut dec = BlockDecoder::new(200 * 256, 256, 1 << 20).expect("decoder");
        let block = vec![3u8; 200 * 256];
        let symbols = encode_all(&block, 60);
        // Source symbols 0..130 twice each, then the rest but 150..=159.
        for (pid, s) in symbols.iter().take(130) {
            assert_eq!(dec.push(*pid, s).expect("push"), None);
            assert_eq!(dec.push(*pid, s).expect("push"), None);
        }
        let mut done = false;
        for (pid, s) in symbols.iter().skip(130) {
            let esi = pid & 0x00ff_ffff;
            if (150..160).contains(&esi) {
                continue;
            }
            if dec.push(*pid, s).expect("push").is_some() {
                done = true;
                break;
            }
        }
        assert!(done);
        let t = dec.tally();
        assert_eq!(dec.received(), t.distinct + 130);
        assert_eq!((t.missing, t.missing_runs, t.longest_run), (10, 1, 10));
    }

    #[test]
    fn esis_above_the_tracked_span_are_counted_not_resolved() {
        let mut set = EsiSet::new(1);
        let span = set.tracked_bits();
        assert_eq!(span, 128, "4 · 1 + 64 rounded up to whole words");
        set.insert(0);
        set.insert(span + 9);
        set.insert(span + 9);
        // 1..span missing (one run), then span..=span+9 of which two arrivals
        // (one a duplicate) are known: 8 more missing, as one run.
        let (missing, runs, longest) = set.gaps();
        assert_eq!(missing, span - 1 + 8);
        assert_eq!(runs, 2);
        assert_eq!(longest, span - 1);
    }

    /// The encoder's source symbols are raptorq's, byte for byte, and the
    /// decoder rebuilds a block from its source symbols in any order.
    #[test]
    fn source_symbols_are_raptorqs_and_any_order_rebuilds() {
        let block: Vec<u8> = (0..5000u32).map(|i| (i * 31) as u8).collect();
        let symbols = encode_all(&block, 3);
        let mut padded = block.clone();
        padded.resize(20 * 256, 0);
        let reference = SourceBlockEncoder::new(0, &oti(5000, 256), &padded);
        for (p, (pid, s)) in reference.source_packets().iter().zip(&symbols) {
            assert_eq!((payload_id_u32(p.payload_id()), p.data()), (*pid, &s[..]));
        }
        let mut dec = BlockDecoder::new(5000, 256, 1 << 20).expect("decoder");
        let mut out = None;
        for (pid, s) in symbols.iter().take(20).rev() {
            assert!(out.is_none());
            out = dec.push(*pid, s).expect("push");
        }
        assert_eq!(out.as_deref(), Some(&block[..]));
    }

    #[test]
    fn too_much_loss_does_not_decode() {
        let block = vec![9u8; 10_000];
        let symbols = encode_all(&block, 2);
        let k = source_symbols(10_000, 256) as usize;
        let mut dec = BlockDecoder::new(10_000, 256, 1 << 20).expect("decoder");
        for (pid, s) in symbols.iter().take(k - 1) {
            assert_eq!(dec.push(*pid, s).expect("push"), None);
        }
    }
}
