//! Persisting the per-tag state across receiver restarts.
//!
//! Without it a restart forgets every flatline clock (a sensor frozen for
//! 50 minutes would need another 30 before it is suspect again), every
//! tag's newest timestamp (so a replayed file would pass as new data) and
//! the `Δv` statistics. The format is a 4-byte magic, a version byte and the
//! postcard encoding of the tags from most to least recently seen:
//!
//! ```text
//! "WDQS" | version (1) | postcard { evictions: u64, tags: [(tag, TagState)] }
//! ```
//!
//! The bytes come from disk, so decoding is checked: wrong magic or
//! version, truncation and trailing bytes are errors; postcard refuses a
//! length prefix longer than the remaining input instead of allocating it;
//! at most `max_tags` tags are taken; a tag listed twice keeps its first
//! (most recent) entry. Tag state values are not trusted either: the checks
//! use saturating arithmetic, so a nonsense timestamp cannot panic them.

use serde::{Deserialize, Serialize};

use super::table::{TagState, TagTable};

const MAGIC: [u8; 4] = *b"WDQS";
/// Snapshot version written by this build.
const VERSION: u8 = 1;

/// Why a snapshot could not be written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Shorter than the header.
    #[error("DQ snapshot truncated: {0} bytes")]
    Truncated(usize),
    /// Not a DQ snapshot.
    #[error("not a DQ snapshot (bad magic)")]
    Magic,
    /// A version this build does not read.
    #[error("unknown DQ snapshot version {0}")]
    Version(u8),
    /// The body does not decode.
    #[error("DQ snapshot body undecodable")]
    Decode,
    /// Bytes after the body.
    #[error("{0} trailing bytes after the DQ snapshot body")]
    Trailing(usize),
    /// The state could not be encoded.
    #[error("DQ snapshot encode error")]
    Encode,
}

#[derive(Serialize)]
struct Out<'a> {
    evictions: u64,
    tags: Vec<(&'a str, &'a TagState)>,
}

#[derive(Deserialize)]
struct In {
    evictions: u64,
    tags: Vec<(String, TagState)>,
}

pub(crate) fn encode(table: &TagTable) -> Result<Vec<u8>, SnapshotError> {
    let body = Out {
        evictions: table.evictions(),
        tags: table.iter_recent().map(|s| (&*s.tag, &s.state)).collect(),
    };
    let mut out = Vec::with_capacity(5 + table.len() * 128);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    postcard::to_extend(&body, out).map_err(|_| SnapshotError::Encode)
}

pub(crate) fn decode(
    bytes: &[u8],
    max_tags: usize,
    profile: impl Fn(&str) -> u32,
) -> Result<TagTable, SnapshotError> {
    let (head, body) = bytes
        .split_first_chunk::<5>()
        .ok_or(SnapshotError::Truncated(bytes.len()))?;
    if head[..4] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    if head[4] != VERSION {
        return Err(SnapshotError::Version(head[4]));
    }
    let (snap, rest): (In, _) =
        postcard::take_from_bytes(body).map_err(|_| SnapshotError::Decode)?;
    if !rest.is_empty() {
        return Err(SnapshotError::Trailing(rest.len()));
    }
    let mut table = TagTable::new(max_tags);
    for (tag, state) in &snap.tags {
        if table.len() >= max_tags {
            break;
        }
        table.push_back(tag, *state, profile(tag));
    }
    table.set_evictions(snap.evictions);
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table() -> TagTable {
        let mut t = TagTable::new(10);
        for (i, tag) in ["a", "b", "c"].into_iter().enumerate() {
            t.touch(tag, |_| 0).state.seq_last = i as u64;
        }
        t
    }

    fn tags(t: &TagTable) -> Vec<(String, u64)> {
        t.iter_recent()
            .map(|s| (s.tag.to_string(), s.state.seq_last))
            .collect()
    }

    #[test]
    fn dq_snapshot_roundtrips_in_recency_order() {
        let t = table();
        let bytes = encode(&t).expect("encodes");
        assert_eq!(&bytes[..5], b"WDQS\x01");
        let back = decode(&bytes, 10, |_| 0).expect("decodes");
        assert_eq!(tags(&back), tags(&t));
        let few = decode(&bytes, 2, |_| 0).expect("decodes");
        assert_eq!(tags(&few), [("c".to_owned(), 2), ("b".to_owned(), 1)]);
    }

    #[test]
    fn dq_snapshot_rejects_damage() {
        let bytes = encode(&table()).expect("encodes");
        assert_eq!(
            decode(&bytes[..3], 10, |_| 0).err(),
            Some(SnapshotError::Truncated(3))
        );
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic, 10, |_| 0).err(), Some(SnapshotError::Magic));
        let mut version = bytes.clone();
        version[4] = 9;
        assert_eq!(
            decode(&version, 10, |_| 0).err(),
            Some(SnapshotError::Version(9))
        );
        assert_eq!(
            decode(&bytes[..bytes.len() - 1], 10, |_| 0).err(),
            Some(SnapshotError::Decode)
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            decode(&trailing, 10, |_| 0).err(),
            Some(SnapshotError::Trailing(1))
        );
        // A body claiming u32::MAX tags with no bytes behind it.
        let mut hostile = b"WDQS\x01\x00".to_vec();
        hostile.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        assert_eq!(
            decode(&hostile, 10, |_| 0).err(),
            Some(SnapshotError::Decode)
        );
    }

    #[test]
    fn dq_snapshot_duplicate_tag_keeps_most_recent() {
        let a = TagState {
            seq_last: 1,
            ..TagState::default()
        };
        let b = TagState {
            seq_last: 2,
            ..TagState::default()
        };
        let body = (0u64, vec![("x", a), ("x", b), ("y", b)]);
        let mut bytes = b"WDQS\x01".to_vec();
        bytes = postcard::to_extend(&body, bytes).expect("encodes");
        let t = decode(&bytes, 10, |_| 0).expect("decodes");
        assert_eq!(tags(&t), [("x".to_owned(), 1), ("y".to_owned(), 2)]);
    }

    proptest! {
        #[test]
        fn dq_snapshot_decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let mut bytes = b"WDQS\x01".to_vec();
            bytes.extend_from_slice(&b);
            let _ = decode(&bytes, 100, |_| 0);
            let _ = decode(&b, 100, |_| 0);
        }
    }
}
