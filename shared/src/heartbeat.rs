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
use crate::wire::{Header, KeyId, Kind, SessionId, emit_datagram};

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

/// Seal `hb` into a complete datagram in `out`.
pub fn seal_heartbeat(
    key: &SessionKey,
    key_id: KeyId,
    session: SessionId,
    seq: u64,
    hb: &Heartbeat,
    out: &mut Vec<u8>,
) -> Result<(), HeartbeatError> {
    let mut body = postcard::to_allocvec(hb).map_err(|_| HeartbeatError::TooLarge)?;
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
    emit_datagram(&header, &body, out);
    Ok(())
}

/// Authenticate and decode a heartbeat datagram's payload.
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
    postcard::from_bytes(plain).map_err(|_| HeartbeatError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::Psk;
    use crate::wire::parse;

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
        };
        let mut dg = Vec::new();
        seal_heartbeat(&key, KeyId(1), session, 7, &hb, &mut dg).expect("seal");
        let (h, p) = parse(&dg).expect("parse");
        assert_eq!(open_heartbeat(&key, &h, p), Ok(hb));
        let forged = Header { seq: 8, ..h };
        assert!(open_heartbeat(&key, &forged, p).is_err());
    }
}
