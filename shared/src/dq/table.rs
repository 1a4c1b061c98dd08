//! Per-tag DQ state in a bounded, least-recently-seen table.
//!
//! A receiver may see hundreds of thousands of tags, and a misconfigured
//! source can invent new tag names without end, so the table is bounded by
//! `max_tags`. Eviction must be O(1) and allocation-free on the hot path, so
//! the table is a slab (`Vec<Slot>`) threaded by an intrusive doubly linked
//! recency list (`prev`/`next` slot indices), plus a map from tag name to
//! slot. Touching a known tag moves its slot to the front by relinking four
//! indices; a new tag past the limit takes over the tail slot in place, so
//! the slab never has holes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// "No slot".
const NIL: u32 = u32::MAX;

/// The identity of one sample for duplicate detection: timestamp, a hash of
/// the value and the status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sample {
    pub(crate) ts: i64,
    pub(crate) key: u64,
    pub(crate) status: u32,
}

/// Bits of [`TagState::bits`].
pub(crate) mod bit {
    /// `newest` holds a sample.
    pub(crate) const HAS_NEWEST: u16 = 1 << 0;
    /// `last_rx` holds a sample.
    pub(crate) const HAS_LAST_RX: u16 = 1 << 1;
    /// `v_prev` is the finite value of the in-order sample before `v_last`.
    pub(crate) const V_PREV_OK: u16 = 1 << 2;
    /// `v_last` is the finite value of the newest in-order sample.
    pub(crate) const V_LAST_OK: u16 = 1 << 3;
    /// A stale event was sent and no sample has come since.
    pub(crate) const STALE: u16 = 1 << 4;
    /// The newest in-order sample was historical (backfill): no stale check.
    pub(crate) const HISTORICAL: u16 = 1 << 5;
    /// `unit_key` holds the unit of an earlier sample.
    pub(crate) const HAS_UNIT: u16 = 1 << 6;
    /// A flat run is open (`flat_ref`, `flat_since`, `flat_n`).
    pub(crate) const HAS_FLAT: u16 = 1 << 7;
}

/// Everything the checks remember about one tag. Fixed size, `Copy`; it is
/// also the persisted form (see `snapshot`), so changing it means bumping
/// the snapshot version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TagState {
    /// Newest in-order sample (the order and gap reference).
    pub(crate) newest: Sample,
    /// Most recently received non-duplicate sample (catches a late sample
    /// sent twice).
    pub(crate) last_rx: Sample,
    /// Value of the in-order sample before the newest (spike's `v_{i−1}`).
    pub(crate) v_prev: f64,
    /// Value of the newest in-order sample (spike's `v_i`, roc's base).
    pub(crate) v_last: f64,
    /// `seq` of the newest in-order sample (for the late spike event).
    pub(crate) seq_last: u64,
    /// Value the current flat run started with.
    pub(crate) flat_ref: f64,
    /// Timestamp of the first sample of the flat run.
    pub(crate) flat_since: i64,
    /// Timestamp of the newest sample of the flat run.
    pub(crate) flat_until: i64,
    /// Samples in the flat run.
    pub(crate) flat_n: u32,
    /// Decayed weight, mean and sum of squared deviations of `Δv`.
    pub(crate) roc_w: f64,
    pub(crate) roc_mean: f64,
    pub(crate) roc_m2: f64,
    /// Hash of the last unit seen.
    pub(crate) unit_key: u64,
    /// [`bit`] flags.
    pub(crate) bits: u16,
    /// QARTOD code the flat run reached (0: not flagged).
    pub(crate) flat_level: u8,
    /// QARTOD code of the last gross-range result (0: in range).
    pub(crate) range_level: u8,
}

impl TagState {
    pub(crate) fn has(&self, b: u16) -> bool {
        self.bits & b != 0
    }

    pub(crate) fn put(&mut self, b: u16, on: bool) {
        if on {
            self.bits |= b;
        } else {
            self.bits &= !b;
        }
    }
}

/// One tag's entry.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) tag: Box<str>,
    pub(crate) state: TagState,
    /// Index of the tag's parameters in the config (not persisted: it is
    /// recomputed whenever the config changes).
    pub(crate) profile: u32,
    prev: u32,
    next: u32,
}

/// The bounded table.
#[derive(Debug, Clone)]
pub(crate) struct TagTable {
    map: HashMap<Box<str>, u32>,
    slots: Vec<Slot>,
    /// Most recently seen.
    head: u32,
    /// Least recently seen: the next to go.
    tail: u32,
    max: usize,
    evictions: u64,
}

impl TagTable {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            max: max.clamp(1, NIL as usize),
            evictions: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }

    pub(crate) fn set_evictions(&mut self, n: u64) {
        self.evictions = n;
    }

    /// The slot of `tag`, created (with `profile(tag)`) if new, and marked
    /// most recently seen. A new tag beyond `max` evicts the least recently
    /// seen one and reuses its slot.
    pub(crate) fn touch(&mut self, tag: &str, profile: impl FnOnce(&str) -> u32) -> &mut Slot {
        let i = if let Some(&i) = self.map.get(tag) {
            self.move_to_front(i);
            i
        } else {
            let slot = Slot {
                tag: tag.into(),
                state: TagState::default(),
                profile: profile(tag),
                prev: NIL,
                next: NIL,
            };
            self.insert_front(slot)
        };
        &mut self.slots[i as usize]
    }

    fn insert_front(&mut self, slot: Slot) -> u32 {
        let i = if self.slots.len() >= self.max && self.tail != NIL {
            let victim = self.tail;
            self.unlink(victim);
            let old = std::mem::replace(&mut self.slots[victim as usize], slot);
            self.map.remove(&old.tag);
            self.evictions += 1;
            victim
        } else {
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        };
        self.map.insert(self.slots[i as usize].tag.clone(), i);
        self.link_front(i);
        i
    }

    /// Append `tag` as the least recently seen entry, unless it is already
    /// present or the table is full (restoring, most recent first).
    pub(crate) fn push_back(&mut self, tag: &str, state: TagState, profile: u32) -> bool {
        if self.slots.len() >= self.max || self.map.contains_key(tag) {
            return false;
        }
        let i = self.slots.len() as u32;
        self.slots.push(Slot {
            tag: tag.into(),
            state,
            profile,
            prev: self.tail,
            next: NIL,
        });
        self.map.insert(tag.into(), i);
        if self.tail == NIL {
            self.head = i;
        } else {
            self.slots[self.tail as usize].next = i;
        }
        self.tail = i;
        true
    }

    fn move_to_front(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.link_front(i);
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    fn link_front(&mut self, i: u32) {
        let old_head = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old_head;
        }
        if old_head == NIL {
            self.tail = i;
        } else {
            self.slots[old_head as usize].prev = i;
        }
        self.head = i;
    }

    /// Slots from most to least recently seen.
    pub(crate) fn iter_recent(&self) -> impl Iterator<Item = &Slot> {
        let mut i = self.head;
        std::iter::from_fn(move || {
            let slot = self.slots.get(i as usize)?;
            i = slot.next;
            Some(slot)
        })
    }

    /// Every slot, in no particular order.
    pub(crate) fn slots_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut()
    }

    /// Recompute every tag's parameter index (after a config change).
    pub(crate) fn reprofile(&mut self, profile: impl Fn(&str) -> u32) {
        for slot in &mut self.slots {
            slot.profile = profile(&slot.tag);
        }
    }

    /// Change the bound; shrinking keeps the most recently seen tags and
    /// counts the rest as evictions.
    pub(crate) fn set_max(&mut self, max: usize) {
        let max = max.clamp(1, NIL as usize);
        if self.slots.len() > max {
            let mut kept = TagTable::new(max);
            for slot in self.iter_recent().take(max) {
                kept.push_back(&slot.tag, slot.state, slot.profile);
            }
            kept.evictions = self.evictions + (self.slots.len() - max) as u64;
            *self = kept;
        }
        self.max = max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(t: &TagTable) -> Vec<&str> {
        t.iter_recent().map(|s| &*s.tag).collect()
    }

    #[test]
    fn dq_table_evicts_least_recently_seen() {
        let mut t = TagTable::new(3);
        for tag in ["a", "b", "c"] {
            t.touch(tag, |_| 0);
        }
        assert_eq!(order(&t), ["c", "b", "a"]);
        t.touch("a", |_| 0).state.seq_last = 7;
        assert_eq!(order(&t), ["a", "c", "b"]);
        t.touch("d", |_| 0);
        assert_eq!(order(&t), ["d", "a", "c"]);
        assert_eq!((t.len(), t.evictions()), (3, 1));
        assert_eq!(t.touch("a", |_| 9).state.seq_last, 7);
        // "b" was evicted: it comes back with fresh state.
        assert_eq!(t.touch("b", |_| 0).state, TagState::default());
        assert_eq!(order(&t), ["b", "a", "d"]);
        assert_eq!(t.evictions(), 2);
        assert_eq!(t.map.len(), 3);
    }

    #[test]
    fn dq_table_shrinks_keeping_the_most_recent() {
        let mut t = TagTable::new(5);
        for tag in ["a", "b", "c", "d", "e"] {
            t.touch(tag, |_| 0);
        }
        t.set_max(2);
        assert_eq!(order(&t), ["e", "d"]);
        assert_eq!(t.evictions(), 3);
        t.touch("f", |_| 0);
        assert_eq!(order(&t), ["f", "e"]);
        t.set_max(4);
        t.touch("g", |_| 0);
        assert_eq!(order(&t), ["g", "f", "e"]);
    }

    #[test]
    fn dq_table_single_slot() {
        let mut t = TagTable::new(1);
        t.touch("a", |_| 0);
        t.touch("a", |_| 0);
        t.touch("b", |_| 0);
        assert_eq!(order(&t), ["b"]);
        assert_eq!(t.evictions(), 1);
    }
}
