//! The sender's audit records of its own: sealed block ranges. The log
//! itself (writer thread, chain resumed and verified at start, `audit
//! verify`) is the common one, `weir_service::audit`.

use std::time::{Duration, Instant};

use serde_json::json;

/// The sender's audit handle: the writer alone (its closing record needs
/// nothing else).
pub type AuditSlot = weir_service::audit::AuditSlot;

/// Blocks a lane sealed since the last record: contiguous block and
/// record ranges, and the SHA-256 of the blocks' AEAD tags, in order.
///
/// The tag is the block's fingerprint: it authenticates every byte of the
/// sealed block under the key, so a digest of the tags pins the blocks as
/// surely as a digest of all their bytes, at a 16-byte cost per block
/// instead of a second pass over the payload.
pub(crate) struct SealedRange {
    lane: weir_shared::lane::Lane,
    first_block: u64,
    last_block: u64,
    first_record: u64,
    end_record: u64,
    records: u64,
    bytes: u64,
    tags_sha256: ring::digest::Context,
    since: Instant,
}

/// A range is written after this many blocks, or this long after its
/// first block.
pub(crate) const RANGE_BLOCKS: u64 = 1024;
/// See [`RANGE_BLOCKS`].
pub(crate) const RANGE_AGE: Duration = Duration::from_secs(10);

impl SealedRange {
    /// Add a sealed block to `range` (starting one if empty).
    pub(crate) fn note(
        range: &mut Option<SealedRange>,
        now: Instant,
        lane: weir_shared::lane::Lane,
        summary: &weir_shared::ledger::BlockSummary,
        sealed: &[u8],
    ) {
        let r = range.get_or_insert_with(|| SealedRange {
            lane,
            first_block: summary.block,
            last_block: summary.block,
            first_record: summary.first_record,
            end_record: summary.first_record,
            records: 0,
            bytes: 0,
            tags_sha256: ring::digest::Context::new(&ring::digest::SHA256),
            since: now,
        });
        r.last_block = summary.block;
        r.end_record = summary.end_record();
        r.records += summary.records;
        r.bytes += sealed.len() as u64;
        let tag = sealed.len().saturating_sub(weir_shared::seal::TAG_LEN);
        r.tags_sha256.update(&sealed[tag..]);
    }

    /// True when the range should be written now.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.last_block - self.first_block + 1 >= RANGE_BLOCKS
            || now.saturating_duration_since(self.since) >= RANGE_AGE
    }

    /// The lane it counts.
    pub(crate) fn lane(&self) -> weir_shared::lane::Lane {
        self.lane
    }

    /// The instant the range is due by age.
    pub(crate) fn deadline(&self) -> Instant {
        self.since + RANGE_AGE
    }

    /// Write it as a `blocks_sealed` record.
    pub(crate) fn flush(self, audit: &AuditSlot) {
        audit.record(
            "blocks_sealed",
            json!({
                "lane": self.lane.as_str(), "first_block": self.first_block, "last_block": self.last_block,
                "blocks": self.last_block - self.first_block + 1,
                "first_record": self.first_record, "end_record": self.end_record, "records": self.records,
                "bytes": self.bytes, "tags_sha256": weir_shared::audit::hex_bytes(self.tags_sha256.finish().as_ref()),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_shared::lane::Lane;
    use weir_shared::ledger::BlockSummary;

    #[test]
    fn a_range_pins_its_blocks_by_their_tags_in_order() {
        let summary = |block| BlockSummary {
            block,
            first_record: block * 10,
            records: 10,
            ..BlockSummary::default()
        };
        let a = [[1u8; 40].as_slice(), &[0xa; 16]].concat();
        let b = [[2u8; 70].as_slice(), &[0xb; 16]].concat();
        let t = Instant::now();
        let mut range = None;
        SealedRange::note(&mut range, t, Lane::Bulk, &summary(4), &a);
        SealedRange::note(&mut range, t, Lane::Bulk, &summary(5), &b);
        let r = range.expect("a range");
        assert_eq!((r.first_block, r.last_block, r.records), (4, 5, 20));
        assert_eq!((r.first_record, r.end_record, r.bytes), (40, 60, 56 + 86));
        let want = ring::digest::digest(&ring::digest::SHA256, &[[0xa; 16], [0xb; 16]].concat());
        assert_eq!(r.tags_sha256.finish().as_ref(), want.as_ref());
    }
}
