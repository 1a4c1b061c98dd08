//! The audit log: an append-only, hash-chained record of what each side
//! did, one JSON object per line.
//!
//! Why a chain: a plain log can be edited after the fact without a trace.
//! Here every record carries the SHA-256 of the record before it
//! (`prev`) and its own (`hash`), computed over a canonical encoding of
//! its fields. Editing a field changes that record's hash; recomputing the
//! hash breaks the next record's `prev`; deleting or moving a line breaks
//! the sequence numbers. [`Verifier`] walks a file line by line and names
//! the first line that does not hold, and why.
//!
//! What it cannot show: someone able to rewrite the whole file can build
//! a new, valid chain, and cutting lines off the end leaves a shorter
//! valid chain. Only a head hash kept elsewhere (the shells log it) tells
//! those apart from the original.
//!
//! ```text
//!  line n:   {"seq":n,"ts":..,"kind":..,"body":{..},"prev":H(n-1),"hash":H(n)}
//!  H(n) = SHA-256("weir-audit-v1\n" seq "\n" ts "\n" kind "\n" canonical(body) "\n" prev)
//! ```
//!
//! Sans-IO: callers pass the wall-clock time and write the returned line
//! themselves (append, then fsync).

use ring::digest::{Context, SHA256};
use serde_json::Value;

/// The `prev` of the first record of a chain.
pub const GENESIS: [u8; 32] = [0; 32];

const DOMAIN: &[u8] = b"weir-audit-v1\n";

/// Lowercase hex of a hash.
pub fn hex(h: &[u8; 32]) -> String {
    hex_bytes(h)
}

/// Lowercase hex of any bytes (digests, fingerprints).
pub fn hex_bytes(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        if pair.iter().any(u8::is_ascii_uppercase) {
            return None;
        }
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The canonical JSON text of `v`: object keys sorted, no whitespace.
/// The hash covers this, so key order and spacing in the file do not
/// matter, while every value does.
pub fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        leaf => out.push_str(&leaf.to_string()),
    }
}

/// The hash of a record with these fields.
pub fn record_hash(seq: u64, ts: &str, kind: &str, body: &Value, prev: &[u8; 32]) -> [u8; 32] {
    let mut canon = String::new();
    canonical_json(body, &mut canon);
    let mut ctx = Context::new(&SHA256);
    ctx.update(DOMAIN);
    ctx.update(seq.to_string().as_bytes());
    ctx.update(b"\n");
    ctx.update(ts.as_bytes());
    ctx.update(b"\n");
    ctx.update(kind.as_bytes());
    ctx.update(b"\n");
    ctx.update(canon.as_bytes());
    ctx.update(b"\n");
    ctx.update(hex(prev).as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// One audit record, as read back from a line.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Position in the chain, from 0, without gaps.
    pub seq: u64,
    /// Wall-clock time it was written, RFC 3339.
    pub ts: String,
    /// What happened (`startup`, `blocks`, `gap`, ...).
    pub kind: String,
    /// The details, a JSON object.
    pub body: Value,
    /// The previous record's hash ([`GENESIS`] for the first).
    pub prev: [u8; 32],
    /// This record's hash.
    pub hash: [u8; 32],
}

/// Why a line is not an audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFault {
    /// Not a JSON object with `seq`, `ts`, `kind`, `body`, `prev`, `hash`
    /// of the right types.
    Json,
    /// `prev` or `hash` is not 64 lowercase hex digits.
    Hash,
}

impl AuditRecord {
    /// Read a line (without its newline).
    pub fn parse(line: &str) -> Result<Self, LineFault> {
        let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(line) else {
            return Err(LineFault::Json);
        };
        let text = |m: &serde_json::Map<String, Value>, k: &str| {
            m.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(LineFault::Json)
        };
        let seq = m
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or(LineFault::Json)?;
        let (ts, kind) = (text(&m, "ts")?, text(&m, "kind")?);
        let (prev, hash) = (text(&m, "prev")?, text(&m, "hash")?);
        let body = m.remove("body").ok_or(LineFault::Json)?;
        Ok(Self {
            seq,
            ts,
            kind,
            body,
            prev: unhex(&prev).ok_or(LineFault::Hash)?,
            hash: unhex(&hash).ok_or(LineFault::Hash)?,
        })
    }

    /// The hash its fields call for.
    pub fn expected_hash(&self) -> [u8; 32] {
        record_hash(self.seq, &self.ts, &self.kind, &self.body, &self.prev)
    }
}

/// Builds a chain: numbers and hashes records, and renders their lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    next_seq: u64,
    head: [u8; 32],
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain {
    /// A new, empty chain.
    pub fn new() -> Self {
        Self {
            next_seq: 0,
            head: GENESIS,
        }
    }

    /// Continue the chain a [`Verifier`] accepted.
    pub fn resume(head: ChainHead) -> Self {
        Self {
            next_seq: head.count,
            head: head.head,
        }
    }

    /// Records so far.
    pub fn len(&self) -> u64 {
        self.next_seq
    }

    /// True before the first record.
    pub fn is_empty(&self) -> bool {
        self.next_seq == 0
    }

    /// The last record's hash ([`GENESIS`] when empty).
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    /// Append a record: its line, newline included, goes to `out` (cleared
    /// first). `ts` is the caller's wall-clock time, RFC 3339.
    pub fn append(&mut self, ts: &str, kind: &str, body: &Value, out: &mut String) {
        let seq = self.next_seq;
        let hash = record_hash(seq, ts, kind, body, &self.head);
        out.clear();
        out.push_str("{\"seq\":");
        out.push_str(&seq.to_string());
        out.push_str(",\"ts\":");
        out.push_str(&Value::String(ts.to_owned()).to_string());
        out.push_str(",\"kind\":");
        out.push_str(&Value::String(kind.to_owned()).to_string());
        out.push_str(",\"body\":");
        canonical_json(body, out);
        out.push_str(",\"prev\":\"");
        out.push_str(&hex(&self.head));
        out.push_str("\",\"hash\":\"");
        out.push_str(&hex(&hash));
        out.push_str("\"}\n");
        self.next_seq += 1;
        self.head = hash;
    }
}

/// An intact chain: how many records, and the last one's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Records in the chain.
    pub count: u64,
    /// The last record's hash ([`GENESIS`] when empty).
    pub head: [u8; 32],
}

/// The first line of a file that breaks the chain (lines count from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a JSON object with `seq`, `ts`, `kind`, `body`, `prev`, `hash`.
    #[error("line {line}: not an audit record (bad JSON or a field missing)")]
    Json {
        /// Line number.
        line: u64,
    },
    /// The last line ends without its newline: a torn or truncated write.
    #[error("line {line}: truncated (the last line is incomplete)")]
    Truncated {
        /// Line number.
        line: u64,
    },
    /// `hash` or `prev` is not 64 lowercase hex digits.
    #[error("line {line}: bad hash field (not 64 lowercase hex digits)")]
    BadHash {
        /// Line number.
        line: u64,
    },
    /// A sequence number was skipped: records deleted.
    #[error("line {line}: record {expected} missing (found {found}): lines deleted")]
    Missing {
        /// Line number.
        line: u64,
        /// The sequence number due here.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// The record due here comes on the next line: lines swapped or moved.
    #[error("line {line}: record {found} out of order (expected {expected}): lines reordered")]
    Reordered {
        /// Line number.
        line: u64,
        /// The sequence number due here.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// The record's fields do not give its hash: edited after writing.
    #[error("line {line}: record {seq} edited (its hash does not match its content)")]
    Edited {
        /// Line number.
        line: u64,
        /// The record's sequence number.
        seq: u64,
    },
    /// The record's own hash holds but its `prev` is not the previous
    /// record's hash: a record replaced, or one rewritten with its hash.
    #[error("line {line}: record {seq} does not chain to the record before it")]
    Unchained {
        /// Line number.
        line: u64,
        /// The record's sequence number.
        seq: u64,
    },
}

impl VerifyError {
    /// The line the error names.
    pub fn line(&self) -> u64 {
        match *self {
            Self::Json { line }
            | Self::Truncated { line }
            | Self::BadHash { line }
            | Self::Missing { line, .. }
            | Self::Reordered { line, .. }
            | Self::Edited { line, .. }
            | Self::Unchained { line, .. } => line,
        }
    }
}

/// Walks a chain line by line (so a large file need not fit in memory):
/// feed every line with [`Verifier::handle_line`], then [`Verifier::finish`].
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    line: u64,
    chain: ChainHead,
    /// A sequence number ran ahead on this line; the next line tells a
    /// deletion (it runs on) from a swap (it holds the missing one).
    ahead: Option<(u64, u64, u64)>,
}

impl Default for ChainHead {
    fn default() -> Self {
        Self {
            count: 0,
            head: GENESIS,
        }
    }
}

impl Verifier {
    /// A verifier at the start of a file.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next line, without its newline; `complete`: it ended with one.
    pub fn handle_line(&mut self, text: &str, complete: bool) -> Result<(), VerifyError> {
        self.line += 1;
        let line = self.line;
        let expected = self.chain.count;
        let rec = match AuditRecord::parse(text) {
            Ok(rec) => rec,
            Err(fault) => {
                self.settle_ahead(None)?;
                return Err(match (complete, fault) {
                    (false, _) => VerifyError::Truncated { line },
                    (true, LineFault::Json) => VerifyError::Json { line },
                    (true, LineFault::Hash) => VerifyError::BadHash { line },
                });
            }
        };
        self.settle_ahead(Some(rec.seq))?;
        if !complete {
            return Err(VerifyError::Truncated { line });
        }
        if rec.seq < expected {
            return Err(VerifyError::Reordered {
                line,
                expected,
                found: rec.seq,
            });
        }
        if rec.seq > expected {
            self.ahead = Some((line, expected, rec.seq));
            return Ok(());
        }
        if rec.expected_hash() != rec.hash {
            return Err(VerifyError::Edited { line, seq: rec.seq });
        }
        if rec.prev != self.chain.head {
            return Err(VerifyError::Unchained { line, seq: rec.seq });
        }
        self.chain = ChainHead {
            count: expected + 1,
            head: rec.hash,
        };
        Ok(())
    }

    /// A line ran ahead of the sequence: `next` is the following line's
    /// sequence number (`None`: no readable next line).
    fn settle_ahead(&mut self, next: Option<u64>) -> Result<(), VerifyError> {
        let Some((line, expected, found)) = self.ahead.take() else {
            return Ok(());
        };
        if next == Some(expected) {
            Err(VerifyError::Reordered {
                line,
                expected,
                found,
            })
        } else {
            Err(VerifyError::Missing {
                line,
                expected,
                found,
            })
        }
    }

    /// The end of the file: the chain's head, or the last line's fault.
    pub fn finish(mut self) -> Result<ChainHead, VerifyError> {
        self.settle_ahead(None)?;
        Ok(self.chain)
    }
}

/// Verify a whole text (the file's contents).
pub fn verify_text(text: &str) -> Result<ChainHead, VerifyError> {
    let mut v = Verifier::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, complete, next) = match rest.find('\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, ""),
        };
        v.handle_line(line, complete)?;
        rest = next;
    }
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn chain_text(n: u64) -> (String, ChainHead) {
        let mut c = Chain::new();
        let mut text = String::new();
        let mut line = String::new();
        for i in 0..n {
            let body = json!({"lane": "bulk", "blocks": [i, i + 3], "bytes": i * 100, "z": {"b": 1, "a": "x"}});
            c.append(
                &format!("2026-01-01T00:00:{:02}Z", i % 60),
                "blocks",
                &body,
                &mut line,
            );
            text.push_str(&line);
        }
        (
            text,
            ChainHead {
                count: c.len(),
                head: c.head(),
            },
        )
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    fn join(l: &[String]) -> String {
        l.iter().fold(String::new(), |mut t, s| {
            t.push_str(s);
            t.push('\n');
            t
        })
    }

    #[test]
    fn an_intact_chain_verifies_and_resumes() {
        let (text, head) = chain_text(10);
        assert_eq!(verify_text(&text), Ok(head));
        assert_eq!(verify_text(""), Ok(ChainHead::default()));
        // Resume and extend: still one chain.
        let mut c = Chain::resume(head);
        let mut line = String::new();
        c.append("2026-01-02T00:00:00Z", "startup", &json!({}), &mut line);
        let more = format!("{text}{line}");
        assert_eq!(verify_text(&more).map(|h| h.count), Ok(11));
    }

    #[test]
    fn key_order_and_spacing_do_not_matter_values_do() {
        let (text, _) = chain_text(3);
        let mut l = lines(&text);
        let mut v: Value = serde_json::from_str(&l[1]).expect("json");
        // Re-serialised with other spacing: the same record.
        l[1] = serde_json::to_string_pretty(&v)
            .expect("json")
            .replace('\n', " ");
        assert!(verify_text(&join(&l)).is_ok());
        v["body"]["bytes"] = json!(101);
        l[1] = v.to_string();
        assert_eq!(
            verify_text(&join(&l)),
            Err(VerifyError::Edited { line: 2, seq: 1 })
        );
    }

    #[test]
    #[allow(clippy::many_single_char_names)] // one short name per tampered copy
    fn each_kind_of_tampering_is_named_with_its_line() {
        let (text, _) = chain_text(6);
        let l = lines(&text);
        // Deleted line 3 (seq 2).
        let mut d = l.clone();
        d.remove(2);
        assert_eq!(
            verify_text(&join(&d)),
            Err(VerifyError::Missing {
                line: 3,
                expected: 2,
                found: 3
            })
        );
        // Swapped lines 4 and 5.
        let mut s = l.clone();
        s.swap(3, 4);
        assert_eq!(
            verify_text(&join(&s)),
            Err(VerifyError::Reordered {
                line: 4,
                expected: 3,
                found: 4
            })
        );
        // Truncated last line.
        let cut = &text[..text.len() - 10];
        assert_eq!(verify_text(cut), Err(VerifyError::Truncated { line: 6 }));
        // Bad JSON in the middle.
        let mut j = l.clone();
        j[1] = "{\"seq\":1,".into();
        assert_eq!(verify_text(&join(&j)), Err(VerifyError::Json { line: 2 }));
        // A record rewritten with a fresh, valid hash no longer chains.
        let mut r = l.clone();
        let rec = AuditRecord::parse(&l[2]).expect("record");
        let mut forged = Chain::resume(ChainHead {
            count: 2,
            head: [7; 32],
        });
        let mut line = String::new();
        forged.append(&rec.ts, &rec.kind, &json!({"forged": true}), &mut line);
        r[2] = line.trim_end().to_owned();
        assert_eq!(
            verify_text(&join(&r)),
            Err(VerifyError::Unchained { line: 3, seq: 2 })
        );
        // A hash field that is not hex.
        let mut h = l;
        h[0] = h[0].replace("\"hash\":\"", "\"hash\":\"zz");
        assert_eq!(
            verify_text(&join(&h)),
            Err(VerifyError::BadHash { line: 1 })
        );
    }

    proptest! {
        #[test]
        fn any_single_byte_change_is_caught(n in 2u64..12, pick in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let (text, head) = chain_text(n);
            let mut bytes = text.clone().into_bytes();
            let i = pick.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            let Ok(changed) = String::from_utf8(bytes) else { return Ok(()) };
            // Either the chain is refused, or the change was one JSON
            // ignores (spacing): every line reads as the same JSON value
            // as before, and the very same chain is read back.
            let same_values = |a: &str, b: &str| {
                a.lines().count() == b.lines().count()
                    && a.lines().zip(b.lines()).all(|(x, y)| {
                        serde_json::from_str::<serde_json::Value>(x).ok()
                            == serde_json::from_str::<serde_json::Value>(y).ok()
                    })
            };
            match verify_text(&changed) {
                Ok(h) => {
                    prop_assert!(same_values(&text, &changed), "a changed value was accepted");
                    prop_assert_eq!(h, head);
                }
                Err(e) => prop_assert!(e.line() >= 1 && e.line() <= n + 1),
            }
        }

        #[test]
        fn deleting_or_swapping_lines_is_caught(n in 3u64..12, a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>()) {
            let (text, _) = chain_text(n);
            let l = lines(&text);
            let i = a.index(l.len() - 1);
            let mut d = l.clone();
            d.remove(i);
            prop_assert!(verify_text(&join(&d)).is_err());
            let j = b.index(l.len());
            prop_assume!(i != j);
            let mut s = l;
            s.swap(i, j);
            let e = verify_text(&join(&s)).expect_err("swap caught");
            prop_assert_eq!(e.line(), i.min(j) as u64 + 1);
        }
    }
}
