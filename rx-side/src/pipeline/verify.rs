//! Stage 2, `verify`: per-datagram checks before any reassembly work.
//!
//! ```text
//!  RecvBatch ──(CRC32, magic, version, kind, lane, flags, lengths)──(datagram tag)──> Verified ──> decode
//!            └─ bad CRC or header: drop_crc / drop_malformed
//!            └─ unknown or retired key id: drop_unknown_key / drop_retired_key
//!            └─ no key derivation left this second: drop_unverified
//!            └─ failed tag: drop_forged          (a summary log line every few seconds at most)
//! ```
//!
//! Every datagram carries a tag under its session's datagram key
//! (`weir_shared::seal::DatagramKey`), so a datagram from anyone without
//! the key is refused here: it never reaches the pending-block table, is
//! never decoded, and costs one AES-GCM open of its payload at most.
//!
//! Keys of sessions that authenticated are kept in a small cache. A
//! datagram naming a session not in it costs an HKDF derivation, so those
//! are rate-limited by a token bucket ([`DERIVE_PER_SEC`]): a flood of
//! invented session ids spends the bucket, not the CPU. A session enters
//! the cache only once one of its datagrams passed the tag check, so junk
//! never costs memory beyond the bounded cache. A key derived for a
//! session whose datagram failed is kept aside ([`DERIVED_MAX`], the least
//! seen evicted first): forged copies of a new real session's id then
//! cost one derivation, and the real datagrams need no token of their own.
//! Half the bucket is kept for ids seen before ([`FIRST_SIGHT_RESERVE`]):
//! invented ids come once each, a real session's come again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::seal::{DatagramKey, Keyring};
use weir_shared::wire::{CRC_LEN, HEADER_LEN, Header, KeyId, SessionId, TAG_LEN, WireError, parse};

use super::{RecvBatch, StageError, Verified, now};
use crate::stats::{RxStats, add, charge_cpu, thread_cpu};

/// Datagram keys kept (sessions that authenticated); the least recently
/// used goes first.
const CACHE_MAX: usize = 64;
/// Datagram keys derived per second at most, for sessions not in the cache.
pub const DERIVE_PER_SEC: u32 = 2048;
/// Derivations that may be spent at once (the bucket's depth).
const DERIVE_BURST: u32 = 256;
/// Shortest time between two log lines about refused datagrams.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Why a datagram was refused at `verify` (after it parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No loaded key has the header's key id.
    #[error("unknown key id {0}")]
    UnknownKey(u16),
    /// The key id was retired by the operator.
    #[error("retired key id {0}")]
    Retired(u16),
    /// No derivation was left in the bucket for an unseen session.
    #[error("key derivation rate-limited")]
    Unverified,
    /// The datagram tag did not verify.
    #[error("datagram tag failed")]
    Forged,
}

/// A token bucket of key derivations. Sans-IO: the caller passes `now`.
#[derive(Debug)]
struct Bucket {
    tokens: u32,
    /// Nanoseconds of refill earned but not yet a whole token.
    carry_ns: u64,
    last: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            tokens: DERIVE_BURST,
            carry_ns: 0,
            last: now,
        }
    }

    /// Take a token if more than `reserve` are left.
    fn try_take(&mut self, now: Instant, reserve: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        let ns = u64::try_from(elapsed.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(self.carry_ns);
        let per_token = 1_000_000_000 / u64::from(DERIVE_PER_SEC);
        let earned = ns / per_token;
        self.carry_ns = ns % per_token;
        self.tokens = u32::try_from(u64::from(self.tokens).saturating_add(earned))
            .unwrap_or(u32::MAX)
            .min(DERIVE_BURST);
        if self.tokens == DERIVE_BURST {
            self.carry_ns = 0;
        }
        if self.tokens <= reserve {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

struct Cached {
    key: DatagramKey,
    used: Instant,
}

/// A key derived for a session none of whose datagrams has passed yet:
/// kept, so that a flood copying a real session's id (every copy fails
/// its tag) does not throw the real session's key away again and again
/// while the real datagrams wait for a token.
struct Derived {
    key: DatagramKey,
    /// Datagrams of the session seen since: a flood of invented ids (one
    /// datagram each) is evicted first, a real session's id stays.
    hits: u32,
}

/// Derived keys kept for sessions not yet verified.
const DERIVED_MAX: usize = 64;
/// Session ids seen before without a cached key; beyond this the set
/// starts over.
const SEEN_MAX: usize = 4096;
/// Tokens a session id seen for the first time may not take: a flood of
/// invented ids (each seen once) leaves them to ids that come again, as a
/// real session's do.
const FIRST_SIGHT_RESERVE: u32 = DERIVE_BURST / 2;

/// Insert into a map of at most `max` entries, evicting the one `rank`
/// puts lowest first.
fn insert_bounded<V, R: Ord>(
    map: &mut HashMap<(SessionId, KeyId), V>,
    max: usize,
    id: (SessionId, KeyId),
    v: V,
    rank: impl Fn(&V) -> R,
) {
    if map.len() >= max
        && let Some(lowest) = map.iter().min_by_key(|(_, v)| rank(v)).map(|(id, _)| *id)
    {
        map.remove(&lowest);
    }
    map.insert(id, v);
}

/// Refusals not yet logged.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Failed tags.
    pub forged: u64,
    /// Unknown key ids.
    pub unknown_key: u64,
    /// Retired key ids.
    pub retired_key: u64,
    /// Rate-limited derivations.
    pub unverified: u64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.forged + self.unknown_key + self.retired_key + self.unverified
    }
}

/// The datagram gate: keyring, retired key ids, cached datagram keys and
/// the derivation bucket.
pub struct Verifier {
    keyring: Keyring,
    retired: Vec<KeyId>,
    cache: HashMap<(SessionId, KeyId), Cached>,
    derived: HashMap<(SessionId, KeyId), Derived>,
    /// Sessions seen before without a cached key.
    seen: std::collections::HashSet<(SessionId, KeyId)>,
    bucket: Bucket,
    unlogged: Tally,
    next_log: Instant,
}

impl Verifier {
    /// A gate over the loaded keys, refusing the retired ids.
    pub fn new(now: Instant, keyring: Keyring, retired: &[u16]) -> Self {
        Self {
            keyring,
            retired: retired.iter().map(|&k| KeyId(k)).collect(),
            cache: HashMap::new(),
            derived: HashMap::new(),
            seen: std::collections::HashSet::new(),
            bucket: Bucket::new(now),
            unlogged: Tally::default(),
            next_log: now,
        }
    }

    /// Sessions whose datagram key is cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Check the tag of a parsed datagram (`head` its header as received,
    /// `body` its payload and tag) and decrypt the payload in place.
    pub fn check(
        &mut self,
        now: Instant,
        header: &Header,
        head: &[u8; HEADER_LEN],
        body: &mut [u8],
    ) -> Result<(), Refusal> {
        let r = self.check_inner(now, header, head, body);
        if let Err(e) = r {
            let t = &mut self.unlogged;
            match e {
                Refusal::Forged => t.forged += 1,
                Refusal::UnknownKey(_) => t.unknown_key += 1,
                Refusal::Retired(_) => t.retired_key += 1,
                Refusal::Unverified => t.unverified += 1,
            }
        }
        r
    }

    fn check_inner(
        &mut self,
        now: Instant,
        header: &Header,
        head: &[u8; HEADER_LEN],
        body: &mut [u8],
    ) -> Result<(), Refusal> {
        if self.retired.contains(&header.key_id) {
            return Err(Refusal::Retired(header.key_id.0));
        }
        let id = (header.session, header.key_id);
        if let Some(c) = self.cache.get_mut(&id) {
            c.key
                .open(header, head, body)
                .map_err(|_| Refusal::Forged)?;
            c.used = now;
            return Ok(());
        }
        let psk = self
            .keyring
            .get(header.key_id)
            .map_err(|_| Refusal::UnknownKey(header.key_id.0))?;
        if self.seen.len() >= SEEN_MAX {
            self.seen.clear();
        }
        let reserve = if self.seen.insert(id) {
            FIRST_SIGHT_RESERVE
        } else {
            0
        };
        let key = match self.derived.remove(&id) {
            Some(d) => d,
            None if self.bucket.try_take(now, reserve) => Derived {
                key: psk.datagram_key(header.session),
                hits: 0,
            },
            None => return Err(Refusal::Unverified),
        };
        if key.key.open(header, head, body).is_err() {
            self.keep_derived(id, key);
            return Err(Refusal::Forged);
        }
        let cached = Cached {
            key: key.key,
            used: now,
        };
        insert_bounded(&mut self.cache, CACHE_MAX, id, cached, |c| c.used);
        Ok(())
    }

    /// Keep a derived key whose datagram failed: the least seen goes first.
    fn keep_derived(&mut self, id: (SessionId, KeyId), mut d: Derived) {
        d.hits = d.hits.saturating_add(1);
        insert_bounded(&mut self.derived, DERIVED_MAX, id, d, |d| d.hits);
    }

    /// The refusals since the last summary, when one is due (at most one
    /// every [`LOG_EVERY`]); they then count as logged.
    pub fn poll_summary(&mut self, now: Instant) -> Option<Tally> {
        if self.unlogged.total() == 0 || now < self.next_log {
            return None;
        }
        self.next_log = now + LOG_EVERY;
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Run until the recv channel closes.
pub async fn run(
    mut gate: Verifier,
    stats: Arc<RxStats>,
    mut from_recv: Receiver<RecvBatch>,
    to_decode: Sender<Verified>,
) -> Result<(), StageError> {
    while let Some(batch) = from_recv.recv().await {
        let cpu = thread_cpu();
        let t = now();
        let RecvBatch {
            mut buf,
            segs,
            held,
        } = batch;
        let mut items = Vec::with_capacity(segs.len());
        let (mut crc, mut malformed) = (0u64, 0u64);
        let before = gate.unlogged;
        for (off, len) in segs {
            let header = match parse(&buf[off..off + len]) {
                Ok((header, _)) => header,
                Err(WireError::Crc) => {
                    crc += 1;
                    continue;
                }
                Err(_) => {
                    malformed += 1;
                    continue;
                }
            };
            // Parsed: the header, payload and tag lengths are as the
            // header says.
            let (head, body) = buf[off..off + len - CRC_LEN].split_at_mut(HEADER_LEN);
            let Ok(head) = <&[u8; HEADER_LEN]>::try_from(&*head) else {
                malformed += 1;
                continue;
            };
            if gate.check(t, &header, head, body).is_ok() {
                let start = off + HEADER_LEN;
                items.push((header, start, body.len() - TAG_LEN));
            }
        }
        add(&stats.drop_crc, crc);
        add(&stats.drop_malformed, malformed);
        let after = gate.unlogged;
        add(&stats.drop_forged, after.forged - before.forged);
        add(
            &stats.drop_unknown_key,
            after.unknown_key - before.unknown_key,
        );
        add(
            &stats.drop_retired_key,
            after.retired_key - before.retired_key,
        );
        add(&stats.drop_unverified, after.unverified - before.unverified);
        if let Some(s) = gate.poll_summary(t) {
            tracing::warn!(
                forged = s.forged,
                unknown_key = s.unknown_key,
                retired_key = s.retired_key,
                rate_limited = s.unverified,
                "Datagrams refused at verify since the last report (not from a key holder, or under a key id not accepted)."
            );
        }
        if crc + malformed > 0 {
            tracing::debug!(crc, malformed, "Datagrams dropped by verify.");
        }
        charge_cpu(&stats.link_cpu_ns, cpu);
        if !items.is_empty() && to_decode.send(Verified { buf, items, held }).await.is_err() {
            return Err(StageError::Closed("verify"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use weir_shared::lane::Lane;
    use weir_shared::seal::Psk;
    use weir_shared::wire::{Kind, Role};

    use super::*;

    const KEY: [u8; 32] = [0x11; 32];

    fn header(session: SessionId, seq: u64) -> Header {
        Header {
            kind: Kind::Symbol,
            key_id: KeyId(1),
            lane: Lane::Bulk,
            session,
            seq,
            transfer_len: 1000,
            symbol_size: 64,
            payload_id: 3,
        }
    }

    /// A datagram sealed with `secret`, split as `verify` sees it.
    fn datagram(secret: [u8; 32], h: &Header) -> Vec<u8> {
        let key = Psk::new(KeyId(1), secret).datagram_key(h.session);
        let mut out = Vec::new();
        key.emit_datagram(h, &[7u8; 64], &mut out).expect("seal");
        out
    }

    fn check(v: &mut Verifier, t: Instant, mut dgram: Vec<u8>) -> Result<Vec<u8>, Refusal> {
        let (header, _) = parse(&dgram).expect("parses");
        let end = dgram.len() - CRC_LEN;
        let (head, body) = dgram[..end].split_at_mut(HEADER_LEN);
        let head: [u8; HEADER_LEN] = head.try_into().expect("head");
        v.check(t, &header, &head, body)?;
        Ok(body[..body.len() - TAG_LEN].to_vec())
    }

    fn gate(t: Instant) -> Verifier {
        Verifier::new(t, Keyring::new([Psk::new(KeyId(1), KEY)]), &[])
    }

    #[test]
    fn a_key_holders_datagram_passes_and_its_payload_comes_out_plain() {
        let t = Instant::now();
        let mut v = gate(t);
        let s = SessionId::new(1, Role::Daemon, 5, [1; 4]);
        assert_eq!(
            check(&mut v, t, datagram(KEY, &header(s, 1))),
            Ok(vec![7; 64])
        );
        assert_eq!(v.cached(), 1);
        // From the cache now.
        assert_eq!(
            check(&mut v, t, datagram(KEY, &header(s, 2))),
            Ok(vec![7; 64])
        );
    }

    #[test]
    fn forged_unknown_and_retired_datagrams_are_refused_and_never_cached() {
        let t = Instant::now();
        let mut v = gate(t);
        let s = SessionId([4; 16]);
        assert_eq!(
            check(&mut v, t, datagram([0x22; 32], &header(s, 1))),
            Err(Refusal::Forged)
        );
        let unknown = Header {
            key_id: KeyId(9),
            ..header(s, 1)
        };
        let mut d = datagram(KEY, &header(s, 1));
        d[4..6].copy_from_slice(&9u16.to_be_bytes());
        weir_shared::wire::put_crc(&mut d);
        assert_eq!(parse(&d).map(|(h, _)| h), Ok(unknown));
        assert_eq!(check(&mut v, t, d), Err(Refusal::UnknownKey(9)));
        assert_eq!(v.cached(), 0, "nothing that failed is cached");
        // A good datagram of a known session, its payload changed: forged.
        let mut good = datagram(KEY, &header(s, 2));
        check(&mut v, t, good.clone()).expect("authentic");
        good[HEADER_LEN] ^= 1;
        weir_shared::wire::put_crc(&mut good);
        assert_eq!(check(&mut v, t, good), Err(Refusal::Forged));
        let mut retired = Verifier::new(t, Keyring::new([Psk::new(KeyId(1), KEY)]), &[1]);
        assert_eq!(
            check(&mut retired, t, datagram(KEY, &header(s, 3))),
            Err(Refusal::Retired(1))
        );
        let tally = v.poll_summary(t).expect("a summary is due");
        assert_eq!((tally.forged, tally.unknown_key), (2, 1));
        assert_eq!(v.poll_summary(t), None, "nothing new to say");
    }

    #[test]
    fn a_flood_copying_a_new_sessions_id_does_not_keep_its_key_away() {
        // The bucket spent by invented sessions, a flood of forged copies
        // of a new real session's id: the key derived for the first copy
        // is kept, and the real datagram passes without another token.
        let t0 = Instant::now();
        let mut v = gate(t0);
        let real = SessionId([7; 16]);
        assert_eq!(
            check(&mut v, t0, datagram([0x33; 32], &header(real, 0))),
            Err(Refusal::Forged)
        );
        for i in 0..2000u32 {
            let mut s = [0u8; 16];
            s[..4].copy_from_slice(&i.to_be_bytes());
            let _ = check(&mut v, t0, datagram([0x33; 32], &header(SessionId(s), 1)));
            if i % 4 == 0 {
                let _ = check(&mut v, t0, datagram([0x33; 32], &header(real, 1)));
            }
        }
        assert_eq!(
            check(
                &mut v,
                t0,
                datagram([0x33; 32], &header(SessionId([9; 16]), 1))
            ),
            Err(Refusal::Unverified),
            "the bucket is spent"
        );
        assert!(check(&mut v, t0, datagram(KEY, &header(real, 2))).is_ok());
        assert_eq!(v.cached(), 1);
    }

    #[test]
    fn derivations_for_unseen_sessions_are_rate_limited_but_cached_ones_are_not() {
        let t0 = Instant::now();
        let mut v = gate(t0);
        let known = SessionId([1; 16]);
        check(&mut v, t0, datagram(KEY, &header(known, 0))).expect("authentic");
        // A flood of invented sessions spends the bucket...
        let mut limited = 0;
        for i in 0..2000u32 {
            let mut s = [0u8; 16];
            s[..4].copy_from_slice(&i.to_be_bytes());
            let r = check(&mut v, t0, datagram([0x33; 32], &header(SessionId(s), 1)));
            if r == Err(Refusal::Unverified) {
                limited += 1;
            } else {
                assert_eq!(r, Err(Refusal::Forged));
            }
        }
        // (Half the bucket is kept for ids seen before.)
        assert_eq!(limited, 2000 - (u64::from(FIRST_SIGHT_RESERVE) - 1));
        // ...but never a cached session's datagrams,
        assert!(check(&mut v, t0, datagram(KEY, &header(known, 1))).is_ok());
        // nor the reserve: a new real session's datagram that comes again
        // (invented ids come once) gets a derivation.
        let real = SessionId([4; 16]);
        assert_eq!(
            check(&mut v, t0, datagram(KEY, &header(real, 0))),
            Err(Refusal::Unverified),
            "first sight: the reserve is not for it"
        );
        assert!(check(&mut v, t0, datagram(KEY, &header(real, 1))).is_ok());
        // A second later the bucket is full again, never fuller.
        let t1 = t0 + Duration::from_secs(1);
        let fresh = |i: u32| {
            let mut s = [0xee; 16];
            s[..4].copy_from_slice(&i.to_be_bytes());
            header(SessionId(s), 1)
        };
        let passed = (0..1000)
            .filter(|&i| check(&mut v, t1, datagram(KEY, &fresh(i))).is_ok())
            .count();
        assert_eq!(passed, (DERIVE_BURST - FIRST_SIGHT_RESERVE) as usize);
        assert!(v.cached() <= CACHE_MAX, "the cache stays bounded");
        // Refilled at DERIVE_PER_SEC: 10 ms later, 20 more derivations.
        let t2 = t1 + Duration::from_millis(10);
        let passed = (1000..1100)
            .filter(|&i| check(&mut v, t2, datagram(KEY, &fresh(i))).is_ok())
            .count();
        assert_eq!(passed, (DERIVE_PER_SEC / 100) as usize);
    }

    #[test]
    fn the_summary_comes_at_most_every_few_seconds() {
        let t = Instant::now();
        let mut v = gate(t);
        let forged = || datagram([0x44; 32], &header(SessionId([5; 16]), 1));
        assert!(check(&mut v, t, forged()).is_err());
        assert_eq!(v.poll_summary(t).map(|s| s.forged), Some(1));
        for _ in 0..100 {
            assert!(check(&mut v, t, forged()).is_err());
        }
        assert_eq!(v.poll_summary(t + Duration::from_secs(1)), None);
        assert_eq!(v.poll_summary(t + LOG_EVERY).map(|s| s.forged), Some(100));
    }
}
