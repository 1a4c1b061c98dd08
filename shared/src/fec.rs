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
        for p in enc
            .source_packets()
            .iter()
            .chain(enc.repair_packets(0, repair).iter())
        {
            emit(payload_id_u32(p.payload_id()), p.data());
        }
        Ok(k)
    }
}

fn payload_id_u32(p: &PayloadId) -> u32 {
    u32::from_be_bytes(p.serialize())
}

/// Rebuilds one block from whatever symbols arrive, in any order.
pub struct BlockDecoder {
    inner: SourceBlockDecoder,
    k: u32,
    len: u32,
    symbol_size: u16,
    received: u32,
    source_received: u32,
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
        let inner = SourceBlockDecoder::new(0, &oti(len, symbol_size), u64::from(len));
        Ok(Self {
            inner,
            k,
            len,
            symbol_size,
            received: 0,
            source_received: 0,
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

    /// Add one symbol; returns the block once it can be rebuilt.
    /// `symbol` must be exactly `symbol_size` long (the wire parser
    /// guarantees it).
    pub fn push(&mut self, payload_id: u32, symbol: &[u8]) -> Result<Option<Vec<u8>>, FecError> {
        let pid = PayloadId::deserialize(&payload_id.to_be_bytes());
        if pid.source_block_number() != 0 {
            return Err(FecError::SourceBlock(pid.source_block_number()));
        }
        if symbol.len() != usize::from(self.symbol_size) {
            return Err(FecError::SymbolSize(
                u16::try_from(symbol.len()).unwrap_or(u16::MAX),
            ));
        }
        self.received += 1;
        if pid.encoding_symbol_id() < self.k {
            self.source_received += 1;
        }
        let block = self
            .inner
            .decode(std::iter::once(EncodingPacket::new(pid, symbol.to_vec())));
        // raptorq returns whole symbols; the tail is padding.
        Ok(block.map(|mut b| {
            b.truncate(self.len as usize);
            b
        }))
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
