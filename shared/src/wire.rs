//! Datagram framing, protocol v2.
//!
//! One UDP datagram is a fixed 42-byte header, a payload, a 16-byte
//! datagram tag, and a CRC32 of everything before it. The CRC only catches
//! accidental corruption (a bad NIC, a flaky diode) cheaply; the tag
//! ([`crate::seal::DatagramKey`]: AES-256-GCM under the session's datagram
//! key, the whole header as associated data) proves the datagram came from
//! a key holder, so the receiver refuses forgeries before they cost a
//! pending block. The block AEAD in [`crate::seal`] stays the content
//! encryption, covering the block-level header fields as associated data.
//!
//! ```text
//!  0      2      3      4        6      7      8                24           32          36        38          42
//!  +------+------+------+--------+------+------+----------------+------------+-----------+---------+-----------+---------+-----+-------+
//!  |magic | ver  | kind | key id | lane | flags|   session id   |  sequence  | transfer  | symbol  | payload   | payload | tag | CRC32 |
//!  | "WR" | 0x02 |      |  u16   |  u8  |  0   | (see SessionId)|    u64     |  len u32  | size u16| id (u32)  | (sealed)| 16  |       |
//!  +------+------+------+--------+------+------+----------------+------------+-----------+---------+-----------+---------+-----+-------+
//! ```
//!
//! All integers are big-endian. The only way to read a datagram is
//! [`parse`], which checks every length against the buffer before use, so no
//! accessor of [`Header`] can panic on hostile input.

use crate::lane::Lane;

/// Magic bytes opening every Weir datagram.
pub const MAGIC: [u8; 2] = *b"WR";
/// Protocol version carried in byte 2.
pub const VERSION: u8 = 2;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 42;
/// Length of the datagram tag after the payload.
pub const TAG_LEN: usize = 16;
/// Length of the CRC trailer.
pub const CRC_LEN: usize = 4;
/// Total per-datagram overhead: header, tag and CRC.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN + CRC_LEN;
/// Bytes of the header covered by the AEAD as associated data: everything
/// but the per-symbol payload id.
pub const AAD_LEN: usize = 38;
/// IPv4 + UDP header bytes, subtracted from the MTU to size datagrams.
pub const IPV4_UDP_OVERHEAD: usize = 28;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// One RaptorQ encoding symbol of a sealed block.
    Symbol = 1,
    /// A sealed heartbeat (sender telemetry) in one datagram.
    Heartbeat = 2,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Symbol),
            2 => Some(Self::Heartbeat),
            _ => None,
        }
    }
}

/// 128-bit session id, new at every sender start.
///
/// ```text
///  0        2      3      4                 12             16
///  +--------+------+------+-----------------+--------------+
///  | sender | role |  0   |   epoch (u64)   | random (u32) |
///  +--------+------+------+-----------------+--------------+
/// ```
///
/// `epoch` only grows for one `(sender, role)`: the sender persists it and
/// starts every session above the last one (and above the Unix time in
/// seconds, so a sender whose state was wiped still moves forward). The
/// receiver refuses a session older than the newest it accepted from the
/// same `(sender, role)`, which is what stops a captured old session from
/// being replayed after the receiver restarts. The id is covered by the
/// AEAD (it is in the associated data and salts the session key), so none
/// of these fields can be forged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

/// Which kind of sender session: the daemon, or a one-shot push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Role {
    /// `weir-tx run`: spools, syslog, followed files.
    Daemon = 0,
    /// `weir-tx send` / `resend`: files an operator names.
    OneShot = 1,
}

impl SessionId {
    /// A session id from its parts.
    pub fn new(sender: u16, role: Role, epoch: u64, random: [u8; 4]) -> Self {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&sender.to_be_bytes());
        b[2] = role as u8;
        b[4..12].copy_from_slice(&epoch.to_be_bytes());
        b[12..16].copy_from_slice(&random);
        Self(b)
    }

    /// The sender id (from its config).
    pub fn sender(&self) -> u16 {
        u16::from_be_bytes([self.0[0], self.0[1]])
    }

    /// The role byte as sent (any value; only [`Role`]'s are produced).
    pub fn role(&self) -> u8 {
        self.0[2]
    }

    /// The session epoch: grows from session to session of one sender.
    pub fn epoch(&self) -> u64 {
        let mut e = [0u8; 8];
        e.copy_from_slice(&self.0[4..12]);
        u64::from_be_bytes(e)
    }

    /// Short printable form for logs and record ids: the low half of the
    /// epoch and the random part (bytes 8..16), hex.
    pub fn short_hex(&self) -> String {
        use std::fmt::Write;
        self.0[8..]
            .iter()
            .fold(String::with_capacity(16), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }
}

/// Identifier of a pre-shared key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u16);

/// A parsed datagram header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Datagram kind.
    pub kind: Kind,
    /// Key the session key was derived from.
    pub key_id: KeyId,
    /// Lane (priority class) of the block.
    pub lane: Lane,
    /// Sender session.
    pub session: SessionId,
    /// Block sequence number within (session, lane); heartbeat counter for
    /// heartbeats.
    pub seq: u64,
    /// Length of the sealed block (or sealed heartbeat) in bytes.
    pub transfer_len: u32,
    /// RaptorQ symbol size; 0 for heartbeats.
    pub symbol_size: u16,
    /// RaptorQ payload id (source block number in the top byte, encoding
    /// symbol id in the low 24 bits); 0 for heartbeats.
    pub payload_id: u32,
}

/// Why a datagram was refused by [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than header and CRC.
    #[error("datagram truncated: {0} bytes")]
    Truncated(usize),
    /// CRC mismatch: accidental corruption.
    #[error("CRC mismatch")]
    Crc,
    /// Not a Weir datagram.
    #[error("bad magic")]
    Magic,
    /// Unknown protocol version.
    #[error("unsupported version {0}")]
    Version(u8),
    /// Unknown datagram kind.
    #[error("unknown kind {0}")]
    Kind(u8),
    /// Unknown lane.
    #[error("unknown lane {0}")]
    Lane(u8),
    /// Reserved flags set.
    #[error("reserved flags set: {0:#04x}")]
    Flags(u8),
    /// Payload length does not match the header.
    #[error("payload length {actual} does not match header ({expected})")]
    Length {
        /// Length the header implies.
        expected: usize,
        /// Length present.
        actual: usize,
    },
}

impl Header {
    /// Length of the payload this header announces.
    pub fn payload_len(&self) -> usize {
        match self.kind {
            Kind::Symbol => usize::from(self.symbol_size),
            Kind::Heartbeat => self.transfer_len as usize,
        }
    }

    /// Total datagram length for this header.
    pub fn datagram_len(&self) -> usize {
        OVERHEAD + self.payload_len()
    }

    /// Write the header into `out[..HEADER_LEN]`.
    pub fn emit(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = self.kind as u8;
        out[4..6].copy_from_slice(&self.key_id.0.to_be_bytes());
        out[6] = self.lane as u8;
        out[7] = 0;
        out[8..24].copy_from_slice(&self.session.0);
        out[24..32].copy_from_slice(&self.seq.to_be_bytes());
        out[32..36].copy_from_slice(&self.transfer_len.to_be_bytes());
        out[36..38].copy_from_slice(&self.symbol_size.to_be_bytes());
        out[38..42].copy_from_slice(&self.payload_id.to_be_bytes());
    }

    /// The associated data the AEAD authenticates for this header's block.
    pub fn aad(&self) -> [u8; AAD_LEN] {
        let mut full = [0u8; HEADER_LEN];
        self.emit(&mut full);
        let mut aad = [0u8; AAD_LEN];
        aad.copy_from_slice(&full[..AAD_LEN]);
        aad
    }

    fn from_bytes(h: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        if h[0..2] != MAGIC {
            return Err(WireError::Magic);
        }
        if h[2] != VERSION {
            return Err(WireError::Version(h[2]));
        }
        let kind = Kind::from_u8(h[3]).ok_or(WireError::Kind(h[3]))?;
        let lane = Lane::from_u8(h[6]).ok_or(WireError::Lane(h[6]))?;
        if h[7] != 0 {
            return Err(WireError::Flags(h[7]));
        }
        let mut session = [0u8; 16];
        session.copy_from_slice(&h[8..24]);
        let be8 = |r: &[u8]| r.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        Ok(Header {
            kind,
            key_id: KeyId(u16::from_be_bytes([h[4], h[5]])),
            lane,
            session: SessionId(session),
            seq: be8(&h[24..32]),
            transfer_len: u32::from_be_bytes([h[32], h[33], h[34], h[35]]),
            symbol_size: u16::from_be_bytes([h[36], h[37]]),
            payload_id: u32::from_be_bytes([h[38], h[39], h[40], h[41]]),
        })
    }
}

/// Parse one datagram: CRC first (cheapest rejection of line noise), then
/// header fields, then the payload length the header announces. Returns
/// the header and the payload as on the wire (still sealed under the
/// datagram key; its tag follows it, [`tag_of`]). Parsing proves nothing
/// about who sent it: that is the tag's job, checked in `verify`.
pub fn parse(buf: &[u8]) -> Result<(Header, &[u8]), WireError> {
    if buf.len() < OVERHEAD {
        return Err(WireError::Truncated(buf.len()));
    }
    let (body, crc) = buf.split_at(buf.len() - CRC_LEN);
    let wire_crc = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != wire_crc {
        return Err(WireError::Crc);
    }
    let (head, rest) = body
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(WireError::Truncated(buf.len()))?;
    let header = Header::from_bytes(head)?;
    let actual = rest.len().saturating_sub(TAG_LEN);
    if actual != header.payload_len() {
        return Err(WireError::Length {
            expected: header.payload_len(),
            actual,
        });
    }
    Ok((header, &rest[..actual]))
}

/// The datagram tag of a datagram [`parse`] accepted.
pub fn tag_of(buf: &[u8]) -> Option<&[u8]> {
    let end = buf.len().checked_sub(CRC_LEN)?;
    buf.get(end.checked_sub(TAG_LEN)?..end)
}

/// Write the CRC trailer of a datagram whose other bytes are in place.
pub fn put_crc(datagram: &mut [u8]) {
    let Some(n) = datagram.len().checked_sub(CRC_LEN) else {
        return;
    };
    let (body, crc) = datagram.split_at_mut(n);
    crc.copy_from_slice(&crc32fast::hash(body).to_be_bytes());
}

/// Write a whole datagram (header, payload, `tag`, CRC) into `out`, which
/// is cleared first; returns the datagram length. The bytes go out as
/// given: a real sender writes through
/// [`crate::seal::DatagramKey::emit_datagram`], which seals the payload and
/// makes the tag; this one is for tests and fuzzing.
pub fn emit_datagram(
    header: &Header,
    payload: &[u8],
    tag: &[u8; TAG_LEN],
    out: &mut Vec<u8>,
) -> usize {
    out.clear();
    out.resize(HEADER_LEN + payload.len() + TAG_LEN + CRC_LEN, 0);
    emit_into(header, payload, tag, out);
    out.len()
}

/// [`emit_datagram`] into a slot of exactly `HEADER_LEN + payload.len() +
/// TAG_LEN + CRC_LEN` bytes (shorter: the slot is left as it is).
pub fn emit_into(header: &Header, payload: &[u8], tag: &[u8; TAG_LEN], slot: &mut [u8]) {
    if slot.len() != HEADER_LEN + payload.len() + TAG_LEN + CRC_LEN {
        return;
    }
    let (head, rest) = slot.split_at_mut(HEADER_LEN);
    let mut h = [0u8; HEADER_LEN];
    header.emit(&mut h);
    head.copy_from_slice(&h);
    let (pl, rest) = rest.split_at_mut(payload.len());
    pl.copy_from_slice(payload);
    rest[..TAG_LEN].copy_from_slice(tag);
    put_crc(slot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_header() -> impl Strategy<Value = Header> {
        (
            any::<bool>(),
            any::<u16>(),
            prop_oneof![Just(Lane::Alert), Just(Lane::Bulk)],
            any::<[u8; 16]>(),
            any::<u64>(),
            0u32..4096,
            1u16..2048,
            any::<u32>(),
        )
            .prop_map(|(sym, key, lane, s, seq, tl, ss, pid)| Header {
                kind: if sym { Kind::Symbol } else { Kind::Heartbeat },
                key_id: KeyId(key),
                lane,
                session: SessionId(s),
                seq,
                transfer_len: tl,
                symbol_size: if sym { ss } else { 0 },
                payload_id: if sym { pid } else { 0 },
            })
    }

    proptest! {
        #[test]
        fn header_roundtrips(h in arb_header(), fill in any::<u8>()) {
            let payload = vec![fill; h.payload_len()];
            let mut buf = Vec::new();
            emit_datagram(&h, &payload, &[fill ^ 0x5a; TAG_LEN], &mut buf);
            prop_assert_eq!(buf.len(), h.datagram_len());
            let (parsed, pl) = parse(&buf).expect("own datagram parses");
            prop_assert_eq!(parsed, h);
            prop_assert_eq!(pl, &payload[..]);
            prop_assert_eq!(tag_of(&buf), Some(&[fill ^ 0x5a; TAG_LEN][..]));
            let mut slot = vec![0u8; h.datagram_len()];
            emit_into(&h, &payload, &[fill ^ 0x5a; TAG_LEN], &mut slot);
            prop_assert_eq!(slot, buf);
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&b);
        }

        #[test]
        fn any_bit_flip_is_caught(h in arb_header(), bit in any::<usize>()) {
            let payload = vec![7u8; h.payload_len()];
            let mut buf = Vec::new();
            emit_datagram(&h, &payload, &[1; TAG_LEN], &mut buf);
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(parse(&buf).is_err());
        }
    }

    #[test]
    fn header_is_42_bytes_and_overhead_62() {
        assert_eq!(HEADER_LEN, 42);
        assert_eq!(OVERHEAD, 62);
    }

    #[test]
    fn valid_crc_with_wrong_length_is_refused() {
        let h = Header {
            kind: Kind::Symbol,
            key_id: KeyId(1),
            lane: Lane::Bulk,
            session: SessionId([1; 16]),
            seq: 9,
            transfer_len: 100,
            symbol_size: 64,
            payload_id: 0,
        };
        let mut buf = Vec::new();
        emit_datagram(&h, &[0u8; 10], &[0; TAG_LEN], &mut buf);
        assert_eq!(
            parse(&buf),
            Err(WireError::Length {
                expected: 64,
                actual: 10
            })
        );
    }
}
