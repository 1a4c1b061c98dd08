//! The points checked lately, remembered by fingerprint, so that an exact
//! duplicate of an older sample is recognised too.
//!
//! The per-tag state catches a repeat of a tag's newest or last sample. A
//! file sent twice repeats older samples as well: `weir-tx resend` filling
//! a gap, a spool file sent again after a sender crash, an export that
//! overlaps the one before. FORMATS.md §5 calls a point with the same tag,
//! timestamp, value and status a duplicate, to be withheld and counted;
//! this set lets the engine do that for the last `dq.duplicate_memory`
//! points, not only the last two of each tag.
//!
//! ```text
//!  point ──fingerprint (tag, ts, value, status → u64)──> seen? ── yes ─> duplicate, withheld
//!                                                          └─ no ──> checks, then remembered
//!  remembered: ring of the last N, oldest forgotten first; open-addressing index
//! ```
//!
//! Bounded and allocation-free after construction: a ring of `N`
//! fingerprints in arrival order and a linear-probing index of at least
//! 4/3·N slots (deletion by backward shift, so no tombstones), 16–24 bytes
//! per remembered point. A fingerprint is 64 bits: two different points
//! collide with probability about N / 2^64 (5·10⁻¹⁴ for a million), the
//! only way a new point could be taken for a duplicate.

use super::checks::{Fnv, value_key};
use crate::record::Point;

/// The fingerprint of a point for duplicate detection: tag, timestamp,
/// value and status, hashed to 64 bits (never 0).
pub fn fingerprint(p: &Point) -> u64 {
    let mut h = Fnv::default();
    h.write(&(p.tag.len() as u64).to_le_bytes());
    h.write(p.tag.as_bytes());
    h.write(&p.ts_ns.to_le_bytes());
    h.write(&value_key(&p.value).to_le_bytes());
    h.write(&p.status.to_le_bytes());
    // FNV-1a mixes its last bytes poorly into the high bits: finish with
    // splitmix64's finaliser, since the index uses the low bits.
    let mut x = h.0;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    x.max(1)
}

/// The last `capacity` fingerprints, oldest forgotten first.
#[derive(Debug, Clone)]
pub struct RecentPoints {
    /// Fingerprints in arrival order; `head` is the next to overwrite.
    ring: Vec<u64>,
    head: usize,
    len: usize,
    /// Linear-probing index; 0 marks an empty slot.
    slots: Vec<u64>,
    mask: usize,
}

impl RecentPoints {
    /// Room for `capacity` fingerprints (0: remember nothing).
    pub fn new(capacity: usize) -> Self {
        let slots = if capacity == 0 {
            0
        } else {
            (capacity.saturating_mul(4) / 3 + 1).next_power_of_two()
        };
        Self {
            ring: vec![0; capacity],
            head: 0,
            len: 0,
            slots: vec![0; slots],
            mask: slots.saturating_sub(1),
        }
    }

    /// How many fingerprints it can hold.
    pub fn capacity(&self) -> usize {
        self.ring.len()
    }

    /// How many it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `fp` is remembered.
    pub fn contains(&self, fp: u64) -> bool {
        self.find(fp).is_some()
    }

    /// Remember `fp`, forgetting the oldest when full. Already remembered:
    /// nothing changes.
    pub fn insert(&mut self, fp: u64) {
        let cap = self.ring.len();
        if cap == 0 || fp == 0 || self.contains(fp) {
            return;
        }
        if self.len == cap {
            let oldest = self.ring[self.head];
            self.forget(oldest);
        } else {
            self.len += 1;
        }
        self.ring[self.head] = fp;
        self.head = (self.head + 1) % cap;
        let mut i = self.home(fp);
        while self.slots[i] != 0 {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = fp;
    }

    /// Stop remembering `fp` (a point that was refused after all). Its
    /// place in the ring stays until overwritten.
    pub fn forget(&mut self, fp: u64) {
        let Some(mut hole) = self.find(fp) else {
            return;
        };
        // Backward-shift deletion: move later entries of the probe run into
        // the hole unless their home lies cyclically in (hole, j].
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let v = self.slots[j];
            if v == 0 {
                break;
            }
            let home = self.home(v);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = v;
                hole = j;
            }
        }
        self.slots[hole] = 0;
    }

    /// Change the capacity, keeping the newest fingerprints that fit.
    pub fn set_capacity(&mut self, capacity: usize) {
        if capacity == self.capacity() {
            return;
        }
        let mut next = Self::new(capacity);
        let cap = self.ring.len();
        let oldest = if self.len == cap { self.head } else { 0 };
        let keep = self.len.min(capacity);
        for k in self.len - keep..self.len {
            next.insert(self.ring[(oldest + k) % cap]);
        }
        *self = next;
    }

    fn home(&self, fp: u64) -> usize {
        // The low bits of a mixed 64-bit hash; truncation is the point.
        #[allow(clippy::cast_possible_truncation)]
        let low = fp as usize;
        low & self.mask
    }

    fn find(&self, fp: u64) -> Option<usize> {
        if self.slots.is_empty() || fp == 0 {
            return None;
        }
        let mut i = self.home(fp);
        loop {
            match self.slots[i] {
                0 => return None,
                v if v == fp => return Some(i),
                _ => i = (i + 1) & self.mask,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{SourceSystem, Value};

    #[test]
    fn fingerprints_tell_tag_time_value_and_status_apart() {
        let p = Point::new(SourceSystem::Aveva, "TT1", 1_000, Value::F64(1.5));
        let fp = fingerprint(&p);
        assert_eq!(fp, fingerprint(&p.clone()));
        let other = [
            Point::new(SourceSystem::Aveva, "TT2", 1_000, Value::F64(1.5)),
            Point::new(SourceSystem::Aveva, "TT1", 1_001, Value::F64(1.5)),
            Point::new(SourceSystem::Aveva, "TT1", 1_000, Value::F64(1.6)),
            Point {
                status: 0x4000_0000,
                ..p.clone()
            },
        ];
        for o in &other {
            assert_ne!(fingerprint(o), fp, "{o:?}");
        }
        // Where it came from and its sequence number do not matter.
        let resent = Point {
            seq: 99,
            source: crate::record::SourceRef {
                system: SourceSystem::Aveva,
                file: Some("x.csv".into()),
                line: Some(3),
            },
            flags: crate::record::PointFlags {
                historical: true,
                ..Default::default()
            },
            ..p.clone()
        };
        assert_eq!(fingerprint(&resent), fp);
    }

    #[test]
    fn the_oldest_is_forgotten_first() {
        let mut r = RecentPoints::new(3);
        for fp in 1..=3 {
            r.insert(fp);
        }
        assert!((1..=3).all(|fp| r.contains(fp)));
        r.insert(2); // already there: nothing moves
        r.insert(4);
        assert!(!r.contains(1));
        assert!((2..=4).all(|fp| r.contains(fp)));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn forget_keeps_every_other_entry_findable() {
        // Many colliding homes in a small index exercise the shift.
        let mut r = RecentPoints::new(48);
        let fps: Vec<u64> = (1..=48u64).map(|i| i << 6 | (i % 3)).collect();
        for &fp in &fps {
            r.insert(fp);
        }
        for (k, &fp) in fps.iter().enumerate().filter(|(k, _)| k % 3 == 0) {
            r.forget(fp);
            assert!(!r.contains(fp), "{k}");
        }
        for (k, &fp) in fps.iter().enumerate() {
            assert_eq!(r.contains(fp), k % 3 != 0, "{k}");
        }
    }

    #[test]
    fn a_long_stream_stays_exact_and_bounded() {
        let mut r = RecentPoints::new(1000);
        let fp = |i: i64| fingerprint(&Point::new(SourceSystem::Other, "T", i, Value::Null));
        for i in 0..10_000 {
            r.insert(fp(i));
            if i % 7 == 0 {
                r.forget(fp(i));
            }
        }
        assert_eq!(r.capacity(), 1000);
        for i in 9_000..10_000 {
            assert_eq!(r.contains(fp(i)), i % 7 != 0, "{i}");
        }
        assert!((0..8_990).all(|i| !r.contains(fp(i))));
    }

    #[test]
    fn the_engine_withholds_an_older_sample_sent_again_and_only_that() {
        use crate::dq::{DqConfig, Engine, Withhold};
        const T0: i64 = 1_710_057_600_000_000_000;
        const S: i64 = 1_000_000_000;
        let sample =
            |i: i64| Point::new(SourceSystem::Aveva, "FT1", T0 + i * S, Value::F64(i as f64));
        let now = T0 + 100 * S;
        let mut events = Vec::new();
        for memory in [100, 0] {
            let mut e = Engine::new(DqConfig::default().validate().expect("valid"));
            let mut r = RecentPoints::new(memory);
            // Sample 3 is lost the first time.
            for i in (0..6).filter(|&i| i != 3) {
                let v = e.check_recent_into(&sample(i), now, &mut r, &mut events);
                assert_eq!(v.withhold, None);
            }
            // Sent again: what was there is a duplicate, 3 is new (late).
            let again: Vec<_> = (0..6)
                .map(|i| e.check_recent_into(&sample(i), now, &mut r, &mut events))
                .collect();
            if memory > 0 {
                for (i, v) in again.iter().enumerate() {
                    let dup = (i != 3).then_some(Withhold::Duplicate);
                    assert_eq!(v.withhold, dup, "sample {i}");
                }
                assert!(again[3].late);
            } else {
                // Without the memory only the newest is recognised.
                let withheld = again.iter().filter(|v| v.withhold.is_some()).count();
                assert_eq!(withheld, 1);
            }
        }
    }

    #[test]
    fn resizing_keeps_the_newest() {
        let mut r = RecentPoints::new(10);
        for fp in 1..=15 {
            r.insert(fp);
        }
        r.set_capacity(4);
        assert!((12..=15).all(|fp| r.contains(fp)));
        assert!(!r.contains(11));
        r.set_capacity(0);
        assert!(r.is_empty());
        r.insert(1);
        assert!(!r.contains(1), "capacity 0 remembers nothing");
    }
}
