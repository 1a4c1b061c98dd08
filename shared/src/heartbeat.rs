//! Heartbeats: authenticated sender telemetry, one datagram each.
//!
//! Every second the sender seals a [`Heartbeat`] with the session key
//! (nonce domain `Kind::Heartbeat`, so it can never collide with a block
//! nonce) and sends it on its own. The receiver learns from it that the link
//! is up, how far each lane has been sent (tail-loss detection when the
//! link then goes quiet), the sender's counters, and the clock skew.

use serde::{Deserialize, Serialize};

use crate::lane::{LANES, Lane};
use crate::seal::{SealError, SessionKey, sealed_len};
use crate::wire::{Header, KeyId, Kind, SessionId};

/// Sender counters carried in every heartbeat (monotonic within a session).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxCounters {
    /// Records sent.
    pub records: u64,
    /// Blocks sent.
    pub blocks: u64,
    /// Datagrams sent.
    pub datagrams: u64,
    /// Bytes sent on the wire.
    pub wire_bytes: u64,
    /// Spool files fully sent.
    pub files_done: u64,
    /// Spool files quarantined whole.
    pub files_quarantined: u64,
    /// Lines or items quarantined.
    pub lines_rejected: u64,
    /// Alerts taken (syslog, followed files).
    pub alerts: u64,
    /// Alert messages refused (invalid PRI, oversized, malformed).
    pub alerts_rejected: u64,
    /// Alerts dropped because the sender's alert queue was full.
    pub alerts_dropped: u64,
}

/// Sender health figures carried in the heartbeat trailer, for the
/// receiver to export as `weir_sender_*` metrics (the OT sender's health,
/// seen from the IT side). Counters are monotonic within a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxHealth {
    /// Repair symbols sent (FEC overhead actually spent).
    pub repair_symbols: u64,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
    /// Records refused because one alone exceeded a batch.
    pub records_refused: u64,
    /// Blocks sent a second time (`repeat_after`).
    pub blocks_repeated: u64,
    /// Blocks not repeated because the repeat buffer was full.
    pub repeats_skipped: u64,
    /// Bytes of the files waiting in the spools' `incoming/`.
    pub spool_bytes: u64,
    /// Bytes held in the alert queue on disk.
    pub alert_queue_bytes: u64,
    /// The pacer's rate, bytes per second of datagrams.
    pub rate_bytes_per_sec: u64,
}

/// Most bytes [`TxHealth`] takes on the wire: 8 varint `u64`s of at most
/// 10 bytes each.
pub const MAX_HEALTH_BYTES: usize = 8 * 10;

/// A lane's forward error correction, as the sender applies it (so the
/// receiver can report how much of it the link actually needed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneFec {
    /// Repair symbols per source symbol, in thousandths.
    pub repair_permille: u32,
    /// Fewest repair symbols per block.
    pub min_repair: u32,
    /// Blocks interleaved on the wire.
    pub interleave: u16,
}

/// Where a lane's numbering stands, for the receiver's loss ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneMarks {
    /// The session's first block on this lane, and its first record.
    pub first_block: u64,
    /// Record sequence number the session started this lane at.
    pub first_record: u64,
    /// Record sequence number after the last record of the last block
    /// fully sent (`Heartbeat::last_sent`).
    pub next_record: u64,
}

/// A lane of a finished session: its numbering from first to last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedLane {
    /// The session's first block on this lane, and its first record.
    pub first_block: u64,
    /// The record the session started this lane at.
    pub first_record: u64,
    /// The block after the last one sent (`first_block`: none sent).
    pub end_block: u64,
    /// The record after the last one sent.
    pub end_record: u64,
}

impl FinishedLane {
    /// The last block sent, if any.
    pub fn last_block(&self) -> Option<u64> {
        (self.end_block > self.first_block).then(|| self.end_block - 1)
    }
}

/// A session of the sender's, of the same role, that stopped cleanly, and
/// how far it numbered: the last [`MAX_PREVIOUS`] are carried by every
/// heartbeat of the next session, so a receiver that missed their end
/// (down, or their last heartbeats lost) or all of them counts what it
/// never received, to the record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// The finished session's id.
    pub session: [u8; 16],
    /// Per lane, its numbering.
    pub lanes: [FinishedLane; LANES],
}

/// Finished sessions a heartbeat carries.
pub const MAX_PREVIOUS: usize = 4;

/// Keep `f` among `list`'s sessions (oldest first, by epoch), at most
/// [`MAX_PREVIOUS`], the newest.
pub fn remember_finished(list: &mut Vec<Finished>, f: Finished) {
    let epoch = |f: &Finished| crate::wire::SessionId(f.session).epoch();
    list.retain(|o| o.session != f.session);
    list.push(f);
    list.sort_by_key(epoch);
    let extra = list.len().saturating_sub(MAX_PREVIOUS);
    list.drain(..extra);
}

/// What a heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender wall clock, ms since the Unix epoch (for skew estimation).
    pub sent_unix_ms: i64,
    /// Milliseconds since the sender session started.
    pub uptime_ms: u64,
    /// Highest block sequence fully sent, per lane.
    pub last_sent: [Option<u64>; LANES],
    /// Sender counters.
    pub counters: TxCounters,
    /// Files waiting in the sender's spools.
    pub spool_depth: u64,
    /// First 8 bytes of the SHA-256 of the sender's config file.
    pub config_fingerprint: [u8; 8],
    /// Per lane: block and record numbering (loss ledger).
    pub marks: [LaneMarks; LANES],
    /// Per lane: FEC settings (headroom report).
    pub fec: [LaneFec; LANES],
    /// Summary of the last block fully sent, per lane that sent one: a
    /// lost tail block is still described.
    pub recent: Vec<(Lane, crate::ledger::BlockSummary)>,
    /// The sender's last cleanly stopped sessions of this role, oldest
    /// first (at most [`MAX_PREVIOUS`]).
    pub previous: Vec<Finished>,
    /// Sender health (the body's trailer; `None` from a sender that sends
    /// none).
    #[serde(skip)]
    pub health: Option<TxHealth>,
}

/// Why a heartbeat could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// AEAD refused it.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Authentic but undecodable (a newer sender?).
    #[error("heartbeat body undecodable")]
    Decode,
    /// Too large to encode.
    #[error("heartbeat too large")]
    TooLarge,
}

/// Seal `hb` into a complete datagram in `out` (sealed with the block key,
/// then tagged with the datagram key like every datagram).
pub fn seal_heartbeat(
    key: &SessionKey,
    key_id: KeyId,
    session: SessionId,
    seq: u64,
    hb: &Heartbeat,
    out: &mut Vec<u8>,
) -> Result<(), HeartbeatError> {
    let mut body = postcard::to_allocvec(hb).map_err(|_| HeartbeatError::TooLarge)?;
    if let Some(health) = &hb.health {
        body = postcard::to_extend(health, body).map_err(|_| HeartbeatError::TooLarge)?;
    }
    let header = Header {
        kind: Kind::Heartbeat,
        key_id,
        lane: Lane::Alert,
        session,
        seq,
        transfer_len: u32::try_from(sealed_len(body.len()))
            .map_err(|_| HeartbeatError::TooLarge)?,
        symbol_size: 0,
        payload_id: 0,
    };
    key.seal(Kind::Heartbeat, Lane::Alert, seq, &header.aad(), &mut body)?;
    key.datagram().emit_datagram(&header, &body, out)?;
    Ok(())
}

/// Authenticate and decode a heartbeat datagram's payload (its datagram
/// tag already checked and removed by `verify`).
pub fn open_heartbeat(
    key: &SessionKey,
    header: &Header,
    payload: &[u8],
) -> Result<Heartbeat, HeartbeatError> {
    let mut buf = payload.to_vec();
    let plain = key.open(
        Kind::Heartbeat,
        header.lane,
        header.seq,
        &header.aad(),
        &mut buf,
    )?;
    decode_body(plain)
}

/// Decode a heartbeat body: the heartbeat, then the optional health
/// trailer. Bytes after a complete trailer are ignored (a newer sender may
/// append fields); a trailer cut short is an error.
fn decode_body(plain: &[u8]) -> Result<Heartbeat, HeartbeatError> {
    let (mut hb, rest): (Heartbeat, &[u8]) =
        postcard::take_from_bytes(plain).map_err(|_| HeartbeatError::Decode)?;
    if !rest.is_empty() {
        hb.health = Some(postcard::from_bytes(rest).map_err(|_| HeartbeatError::Decode)?);
    }
    Ok(hb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::Psk;
    use crate::wire::{HEADER_LEN, parse};

    /// Check a datagram's tag as `verify` does; the header and payload.
    fn untag(key: &SessionKey, dg: &[u8]) -> (Header, Vec<u8>) {
        let (h, p) = parse(dg).expect("parse");
        let n = p.len();
        let mut dg = dg.to_vec();
        let (head, body) = dg.split_at_mut(HEADER_LEN);
        let head: [u8; HEADER_LEN] = head.try_into().expect("header");
        let plain = key
            .datagram()
            .open(&h, &head, &mut body[..n + crate::wire::TAG_LEN])
            .expect("datagram tag");
        (h, plain.to_vec())
    }

    #[test]
    fn heartbeat_roundtrips_and_tamper_fails() {
        let psk = Psk::new(KeyId(1), [9; 32]);
        let session = SessionId([8; 16]);
        let key = psk.session_key(session);
        let hb = Heartbeat {
            sent_unix_ms: 1_710_057_600_000,
            uptime_ms: 5000,
            last_sent: [None, Some(41)],
            counters: TxCounters {
                records: 10,
                ..TxCounters::default()
            },
            spool_depth: 3,
            config_fingerprint: [1; 8],
            marks: [LaneMarks::default(); LANES],
            fec: [LaneFec::default(); LANES],
            recent: Vec::new(),
            previous: Vec::new(),
            health: None,
        };
        let mut dg = Vec::new();
        seal_heartbeat(&key, KeyId(1), session, 7, &hb, &mut dg).expect("seal");
        let (h, p) = untag(&key, &dg);
        assert_eq!(open_heartbeat(&key, &h, &p), Ok(hb));
        let forged = Header { seq: 8, ..h };
        assert!(open_heartbeat(&key, &forged, &p).is_err());
    }

    fn full(health: Option<TxHealth>) -> Heartbeat {
        Heartbeat {
            sent_unix_ms: i64::MIN,
            uptime_ms: u64::MAX,
            last_sent: [Some(u64::MAX), Some(u64::MAX)],
            counters: TxCounters {
                records: u64::MAX,
                blocks: 7,
                datagrams: 70,
                ..TxCounters::default()
            },
            spool_depth: 2,
            config_fingerprint: [0xab; 8],
            marks: [LaneMarks::default(); LANES],
            fec: [LaneFec::default(); LANES],
            recent: Vec::new(),
            previous: vec![
                Finished {
                    session: [0xff; 16],
                    lanes: [FinishedLane {
                        first_block: u64::MAX,
                        first_record: u64::MAX,
                        end_block: u64::MAX,
                        end_record: u64::MAX,
                    }; LANES],
                };
                MAX_PREVIOUS
            ],
            health,
        }
    }

    #[test]
    fn health_trailer_roundtrips_and_stays_bounded() {
        let psk = Psk::new(KeyId(1), [9; 32]);
        let session = SessionId([8; 16]);
        let key = psk.session_key(session);
        let most = TxHealth {
            repair_symbols: u64::MAX,
            send_errors: u64::MAX,
            records_refused: u64::MAX,
            blocks_repeated: u64::MAX,
            repeats_skipped: u64::MAX,
            spool_bytes: u64::MAX,
            alert_queue_bytes: u64::MAX,
            rate_bytes_per_sec: u64::MAX,
        };
        assert_eq!(
            postcard::to_allocvec(&most).expect("encode").len(),
            MAX_HEALTH_BYTES
        );
        for health in [None, Some(TxHealth::default()), Some(most)] {
            let hb = full(health);
            let mut dg = Vec::new();
            seal_heartbeat(&key, KeyId(1), session, 3, &hb, &mut dg).expect("seal");
            let (h, p) = untag(&key, &dg);
            assert_eq!(open_heartbeat(&key, &h, &p), Ok(hb));
        }
        // The largest heartbeat with its trailer still fits one datagram
        // at IPv6's minimum MTU (1280, less 48 bytes of IPv6 and UDP
        // headers), with room to spare.
        let mut dg = Vec::new();
        seal_heartbeat(&key, KeyId(1), session, 3, &full(Some(most)), &mut dg).expect("seal");
        assert!(dg.len() <= 1280 - 48 - 400, "{} bytes", dg.len());
    }

    #[test]
    fn old_and_new_bodies_decode_both_ways() {
        let with = full(Some(TxHealth {
            send_errors: 5,
            spool_bytes: 1 << 40,
            ..TxHealth::default()
        }));
        let core = postcard::to_allocvec(&with).expect("encode");
        let core_len = core.len();
        let direct =
            postcard::to_extend(&with.health.expect("health"), core.clone()).expect("trailer");
        // A receiver that knows no trailer reads the heartbeat and stops.
        let old: Heartbeat = postcard::from_bytes(&direct).expect("old reader");
        assert_eq!(
            old,
            Heartbeat {
                health: None,
                ..with.clone()
            }
        );
        // A body from a sender that sends no trailer: no health.
        assert_eq!(
            decode_body(&core),
            Ok(Heartbeat {
                health: None,
                ..with.clone()
            })
        );
        // Both parts: the health as sent.
        assert_eq!(decode_body(&direct), Ok(with.clone()));
        // A newer sender's longer trailer: the known fields are read.
        let mut longer = direct.clone();
        longer.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_body(&longer), Ok(with));
        // A trailer cut short is refused, never half-read.
        for cut in core_len + 1..direct.len() {
            assert_eq!(
                decode_body(&direct[..cut]),
                Err(HeartbeatError::Decode),
                "cut at {cut}"
            );
        }
    }
}
