//! The crypto envelope: AES-256-GCM with per-session keys.
//!
//! Long-term pre-shared keys (32 bytes, with a numeric key id) live in key
//! files on both hosts. At every start the sender draws a random 128-bit
//! session id; the session key is
//! `HKDF-SHA256(salt = session id, ikm = PSK).expand("weir/v1 data")`.
//! The nonce is `kind ‖ lane ‖ 0 0 ‖ sequence (u64)`, so within a session a
//! (key, nonce) pair never repeats, and across restarts the key itself is
//! new: no counter has to be persisted, and a VM snapshot restored twice
//! still never reuses a nonce (each boot draws a new session id).
//!
//! The block-level header fields (everything but the per-symbol payload id)
//! are the associated data, so a forged lane, sequence, length or key id
//! makes `open` fail.
//!
//! **Re-keying.** No key encrypts more than [`REKEY_BLOCKS`] sequence
//! numbers' worth of blocks: generation `g = seq >> REKEY_SHIFT` of a
//! session uses `HKDF(...).expand("weir/v1 data" ‖ "/rekey" ‖ g)` for
//! `g > 0` (generation 0 is the session key above). Both sides derive it
//! from the sequence number alone, so nothing is signalled on the wire.
//!
//! **Datagram tags (protocol v2).** Every datagram also carries a 16-byte
//! AES-256-GCM tag of its own ([`DatagramKey`]), so the receiver can refuse
//! a forged datagram before it costs a pending block: the payload is
//! sealed in place under the session's *datagram* key
//! (`HKDF(...).expand("weir/v2 datagram")`, re-keyed like the block key
//! with `"/rekey" ‖ g`), with the whole 42-byte header as associated data
//! and the nonce `kind ‖ lane ‖ payload id (u32) ‖ low 48 bits of seq`.
//! Its own label gives it its own nonce space: a block nonce and a
//! datagram nonce can never meet under one key. Within a key generation
//! the sequence numbers differ only in their low [`REKEY_SHIFT`] bits, so
//! 48 of them keep every `(seq, payload id)` of a lane and kind apart.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

use crate::lane::Lane;
use crate::wire::{AAD_LEN, HEADER_LEN, Header, KeyId, Kind, SessionId, put_crc};

/// Length of a pre-shared key.
pub const KEY_LEN: usize = 32;
/// Length of the authentication tag appended to every sealed payload (and
/// to every datagram's payload, [`crate::wire::TAG_LEN`]).
pub const TAG_LEN: usize = crate::wire::TAG_LEN;
/// HKDF info label; changing the protocol's crypto means changing it.
const HKDF_INFO: &[u8] = b"weir/v1 data";
/// HKDF info label of the datagram keys (protocol v2).
const HKDF_DATAGRAM: &[u8] = b"weir/v2 datagram";
/// Label of later key generations.
const HKDF_REKEY: &[u8] = b"/rekey";
/// A session moves to a new key every `2^REKEY_SHIFT` sequence numbers.
pub const REKEY_SHIFT: u32 = 20;
/// Sequence numbers (per lane and kind) sealed under one key generation.
pub const REKEY_BLOCKS: u64 = 1 << REKEY_SHIFT;
/// First line of a key file.
const KEY_FILE_MAGIC: &str = "weir-psk v1";

/// Why sealing, opening or reading a key failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Authentication failed: wrong key, forged or corrupted data.
    #[error("authentication failed")]
    Open,
    /// Sealing failed (input too long for GCM).
    #[error("seal failed")]
    Seal,
    /// Key file does not start with the expected first line.
    #[error("key file: first line must be `weir-psk v1`")]
    KeyFileMagic,
    /// Key file lacks a field.
    #[error("key file: missing `{0}`")]
    KeyFileMissing(&'static str),
    /// Key file has a malformed field.
    #[error("key file: malformed `{0}`")]
    KeyFileMalformed(&'static str),
    /// No key with this id is loaded.
    #[error("no key with id {0}")]
    UnknownKey(u16),
}

/// A long-term pre-shared key. `Debug` never prints the secret.
#[derive(Clone)]
pub struct Psk {
    id: KeyId,
    secret: [u8; KEY_LEN],
}

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Psk")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Psk {
    /// A key from its id and secret bytes.
    pub fn new(id: KeyId, secret: [u8; KEY_LEN]) -> Self {
        Self { id, secret }
    }

    /// A fresh key drawn from `rng`.
    pub fn generate(id: KeyId, rng: &dyn ring::rand::SecureRandom) -> Result<Self, SealError> {
        let mut secret = [0u8; KEY_LEN];
        rng.fill(&mut secret).map_err(|_| SealError::Seal)?;
        Ok(Self { id, secret })
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Key file text: a magic line, `id = N`, `key = <64 hex digits>`.
    pub fn to_file_text(&self) -> String {
        use std::fmt::Write as _;
        let hex = self
            .secret
            .iter()
            .fold(String::with_capacity(2 * KEY_LEN), |mut s, b| {
                // Writing to a String cannot fail.
                let _ = write!(s, "{b:02x}");
                s
            });
        format!(
            "{KEY_FILE_MAGIC}\n# Weir pre-shared key. Keep it secret: mode 0600, owner the service user.\nid = {}\nkey = {hex}\n",
            self.id.0
        )
    }

    /// Parse key file text written by [`Psk::to_file_text`].
    pub fn from_file_text(text: &str) -> Result<Self, SealError> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        if lines.next() != Some(KEY_FILE_MAGIC) {
            return Err(SealError::KeyFileMagic);
        }
        let (mut id, mut secret) = (None, None);
        for line in lines {
            let (k, v) = line
                .split_once('=')
                .ok_or(SealError::KeyFileMalformed("line"))?;
            match k.trim() {
                "id" => {
                    id = Some(KeyId(
                        v.trim()
                            .parse()
                            .map_err(|_| SealError::KeyFileMalformed("id"))?,
                    ));
                }
                "key" => {
                    secret = Some(parse_hex32(v.trim()).ok_or(SealError::KeyFileMalformed("key"))?);
                }
                _ => return Err(SealError::KeyFileMalformed("line")),
            }
        }
        Ok(Self {
            id: id.ok_or(SealError::KeyFileMissing("id"))?,
            secret: secret.ok_or(SealError::KeyFileMissing("key"))?,
        })
    }

    fn prk(&self, session: SessionId) -> hkdf::Prk {
        hkdf::Salt::new(hkdf::HKDF_SHA256, &session.0).extract(&self.secret)
    }

    /// Derive the session key for `session` (block AEAD and datagram tags).
    pub fn session_key(&self, session: SessionId) -> SessionKey {
        let prk = self.prk(session);
        SessionKey {
            datagram: DatagramKey(Schedule::new(prk.clone(), HKDF_DATAGRAM)),
            blocks: Schedule::new(prk, HKDF_INFO),
        }
    }

    /// Derive only the datagram key of `session`: what the receiver's
    /// `verify` stage needs to check a datagram's tag.
    pub fn datagram_key(&self, session: SessionId) -> DatagramKey {
        DatagramKey(Schedule::new(self.prk(session), HKDF_DATAGRAM))
    }
}

/// The AES key of generation `generation` of a session, for one label.
fn derive(prk: &hkdf::Prk, label: &'static [u8], generation: u64) -> LessSafeKey {
    let g = generation.to_be_bytes();
    let later = [label, HKDF_REKEY, &g];
    let info: &[&[u8]] = if generation == 0 { &[label] } else { &later };
    let mut key = [0u8; KEY_LEN];
    // `expand` and `fill` only fail when the requested length exceeds
    // 255 hash lengths; 32 bytes never does.
    if let Ok(okm) = prk.expand(info, &AES_256_GCM) {
        let _ = okm.fill(&mut key);
    }
    let unbound =
        UnboundKey::new(&AES_256_GCM, &key).unwrap_or_else(|_| unreachable!("32-byte key"));
    LessSafeKey::new(unbound)
}

fn parse_hex32(s: &str) -> Option<[u8; KEY_LEN]> {
    let b = s.as_bytes();
    if b.len() != KEY_LEN * 2 {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The AES-256-GCM keys of one label of one session: generation 0, and
/// the latest later generation used (derived when the sequence number
/// crosses into it, [`REKEY_SHIFT`]).
struct Schedule {
    prk: hkdf::Prk,
    label: &'static [u8],
    gen0: LessSafeKey,
    later: std::sync::Mutex<Option<(u64, LessSafeKey)>>,
}

impl Schedule {
    fn new(prk: hkdf::Prk, label: &'static [u8]) -> Self {
        Self {
            gen0: derive(&prk, label, 0),
            prk,
            label,
            later: std::sync::Mutex::new(None),
        }
    }

    /// Run `f` with the key of `seq`'s generation.
    fn with_generation<T>(&self, seq: u64, f: impl FnOnce(&LessSafeKey) -> T) -> T {
        let generation = seq >> REKEY_SHIFT;
        if generation == 0 {
            return f(&self.gen0);
        }
        let Ok(mut later) = self.later.lock() else {
            // A poisoned lock only means another thread panicked mid-call;
            // derive afresh.
            return f(&derive(&self.prk, self.label, generation));
        };
        match &*later {
            Some((g, k)) if *g == generation => f(k),
            _ => {
                let k = derive(&self.prk, self.label, generation);
                let out = f(&k);
                *later = Some((generation, k));
                out
            }
        }
    }
}

/// The keys of one session: the block AEAD's (content encryption) and the
/// datagram tags' ([`DatagramKey`]).
pub struct SessionKey {
    blocks: Schedule,
    datagram: DatagramKey,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

fn nonce(kind: Kind, lane: Lane, seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = kind as u8;
    n[1] = lane as u8;
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

impl SessionKey {
    /// The session's datagram key (tags on every datagram).
    pub fn datagram(&self) -> &DatagramKey {
        &self.datagram
    }

    /// Encrypt `buf` in place and append the tag.
    pub fn seal(
        &self,
        kind: Kind,
        lane: Lane,
        seq: u64,
        aad: &[u8; AAD_LEN],
        buf: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let tag = self
            .blocks
            .with_generation(seq, |k| {
                k.seal_in_place_separate_tag(nonce(kind, lane, seq), Aad::from(aad), buf)
            })
            .map_err(|_| SealError::Seal)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Authenticate and decrypt `buf` in place; returns the plaintext.
    pub fn open<'a>(
        &self,
        kind: Kind,
        lane: Lane,
        seq: u64,
        aad: &[u8; AAD_LEN],
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], SealError> {
        self.blocks
            .with_generation(seq, |k| {
                k.open_in_place(nonce(kind, lane, seq), Aad::from(aad), buf)
            })
            .map_err(|_| SealError::Open)
    }
}

/// The key of one session's datagram tags: every datagram's payload is
/// sealed under it with the whole header as associated data, so the
/// receiver can check a datagram alone, before it reaches reassembly.
pub struct DatagramKey(Schedule);

impl std::fmt::Debug for DatagramKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatagramKey(..)")
    }
}

/// A datagram's nonce: `kind ‖ lane ‖ payload id ‖ low 48 bits of seq`.
/// Unique per datagram within a key: the key changes with `seq >>
/// REKEY_SHIFT`, so inside one generation the low bits tell every
/// sequence number apart.
fn datagram_nonce(header: &Header) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = header.kind as u8;
    n[1] = header.lane as u8;
    n[2..6].copy_from_slice(&header.payload_id.to_be_bytes());
    n[6..].copy_from_slice(&header.seq.to_be_bytes()[2..]);
    Nonce::assume_unique_for_key(n)
}

impl DatagramKey {
    /// Write a whole datagram into `slot` (exactly `header.datagram_len()`
    /// bytes): header, `payload` sealed in place, its tag, the CRC.
    pub fn emit_into(
        &self,
        header: &Header,
        payload: &[u8],
        slot: &mut [u8],
    ) -> Result<(), SealError> {
        if slot.len() != header.datagram_len() || payload.len() != header.payload_len() {
            return Err(SealError::Seal);
        }
        let (head, rest) = slot.split_at_mut(HEADER_LEN);
        let mut h = [0u8; HEADER_LEN];
        header.emit(&mut h);
        head.copy_from_slice(&h);
        let (body, rest) = rest.split_at_mut(payload.len());
        body.copy_from_slice(payload);
        let tag = self
            .0
            .with_generation(header.seq, |k| {
                k.seal_in_place_separate_tag(datagram_nonce(header), Aad::from(&h), body)
            })
            .map_err(|_| SealError::Seal)?;
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
        put_crc(slot);
        Ok(())
    }

    /// [`DatagramKey::emit_into`] a cleared `out`; returns the length.
    pub fn emit_datagram(
        &self,
        header: &Header,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, SealError> {
        out.clear();
        out.resize(header.datagram_len(), 0);
        self.emit_into(header, payload, out)?;
        Ok(out.len())
    }

    /// Check the tag of a parsed datagram and decrypt its payload in
    /// place. `head` is the datagram's header as received (the associated
    /// data), `body` its payload followed by its tag; returns the payload.
    pub fn open<'a>(
        &self,
        header: &Header,
        head: &[u8; HEADER_LEN],
        body: &'a mut [u8],
    ) -> Result<&'a mut [u8], SealError> {
        self.0
            .with_generation(header.seq, |k| {
                k.open_in_place(datagram_nonce(header), Aad::from(head), body)
            })
            .map_err(|_| SealError::Open)
    }
}

/// The pre-shared keys one side has loaded.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    keys: Vec<Psk>,
}

impl Keyring {
    /// A keyring from loaded keys; a later duplicate id replaces an earlier.
    pub fn new(keys: impl IntoIterator<Item = Psk>) -> Self {
        let mut ring = Self::default();
        for k in keys {
            ring.keys.retain(|old| old.id != k.id);
            ring.keys.push(k);
        }
        ring
    }

    /// The key with this id.
    pub fn get(&self, id: KeyId) -> Result<&Psk, SealError> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(SealError::UnknownKey(id.0))
    }

    /// Ids of every loaded key.
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(|k| k.id)
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why a key file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// Group or others may read or write it.
    #[error("is readable or writable by group or others (mode {0:o}); run `chmod 600` on it")]
    Permissions(u32),
    /// Its contents are not a key.
    #[error("{0}")]
    Content(#[from] SealError),
}

/// Check a key file's Unix mode bits and parse its text. The shell reads
/// both; the rule lives here so both programs apply the same one.
pub fn load_key_file(mode: u32, text: &str) -> Result<Psk, KeyFileError> {
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions(mode & 0o777));
    }
    Ok(Psk::from_file_text(text)?)
}

/// Sealed length for a plaintext of `len` bytes.
pub const fn sealed_len(len: usize) -> usize {
    len + TAG_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(seq: u64, len: u32) -> Header {
        Header {
            kind: Kind::Symbol,
            key_id: KeyId(7),
            lane: Lane::Bulk,
            session: SessionId([3; 16]),
            seq,
            transfer_len: len,
            symbol_size: 1024,
            payload_id: 0,
        }
    }

    fn key() -> Psk {
        Psk::new(KeyId(7), [0x42; KEY_LEN])
    }

    #[test]
    fn key_file_roundtrips_and_rejects_garbage() {
        let k = key();
        let parsed = Psk::from_file_text(&k.to_file_text()).expect("parses");
        assert_eq!(parsed.id(), k.id());
        assert_eq!(parsed.secret, k.secret);
        assert!(matches!(
            Psk::from_file_text("hello"),
            Err(SealError::KeyFileMagic)
        ));
        assert!(matches!(
            Psk::from_file_text("weir-psk v1\nid = 1\nkey = zz\n"),
            Err(SealError::KeyFileMalformed("key"))
        ));
        assert!(matches!(
            Psk::from_file_text("weir-psk v1\nid = 1\n"),
            Err(SealError::KeyFileMissing("key"))
        ));
    }

    #[test]
    fn group_or_world_readable_key_files_are_refused() {
        let text = key().to_file_text();
        assert!(load_key_file(0o100_600, &text).is_ok());
        assert!(load_key_file(0o400, &text).is_ok());
        assert_eq!(
            load_key_file(0o640, &text).map(|k| k.id()),
            Err(KeyFileError::Permissions(0o640))
        );
        assert_eq!(
            load_key_file(0o604, &text).map(|k| k.id()),
            Err(KeyFileError::Permissions(0o604))
        );
    }

    #[test]
    fn debug_never_prints_the_secret() {
        assert!(!format!("{:?}", key()).contains("42"));
    }

    #[test]
    fn later_generations_use_new_keys_and_both_sides_agree() {
        let session = SessionId([4; 16]);
        let tx = key().session_key(session);
        let rx = key().session_key(session);
        for seq in [
            REKEY_BLOCKS - 1,
            REKEY_BLOCKS,
            3 * REKEY_BLOCKS + 7,
            u64::MAX,
        ] {
            let h = header(seq, 64);
            let mut buf = b"sixteen byte msg".to_vec();
            tx.seal(Kind::Symbol, Lane::Bulk, seq, &h.aad(), &mut buf)
                .expect("seal");
            // Generation 0's key does not open a later generation's block.
            let mut with_gen0 = buf.clone();
            let opened_by_gen0 = tx
                .blocks
                .gen0
                .open_in_place(
                    nonce(Kind::Symbol, Lane::Bulk, seq),
                    Aad::from(&h.aad()),
                    &mut with_gen0,
                )
                .is_ok();
            assert_eq!(opened_by_gen0, seq < REKEY_BLOCKS, "seq {seq}");
            let plain = rx
                .open(Kind::Symbol, Lane::Bulk, seq, &h.aad(), &mut buf)
                .expect("open");
            assert_eq!(plain, b"sixteen byte msg");
        }
    }

    #[test]
    fn seal_open_roundtrip_and_wrong_key_fails() {
        let h = header(5, 32);
        let sk = key().session_key(h.session);
        let mut buf = b"hello historian".to_vec();
        sk.seal(h.kind, h.lane, h.seq, &h.aad(), &mut buf)
            .expect("seal");
        let mut copy = buf.clone();
        let plain = sk
            .open(h.kind, h.lane, h.seq, &h.aad(), &mut copy)
            .expect("open");
        assert_eq!(plain, b"hello historian");

        let other = Psk::new(KeyId(7), [0x43; KEY_LEN]).session_key(h.session);
        let mut copy = buf.clone();
        assert_eq!(
            other
                .open(h.kind, h.lane, h.seq, &h.aad(), &mut copy)
                .map(|_| ()),
            Err(SealError::Open)
        );

        // Another session derives another key from the same PSK.
        let other_session = key().session_key(SessionId([4; 16]));
        let mut copy = buf.clone();
        assert!(
            other_session
                .open(h.kind, h.lane, h.seq, &h.aad(), &mut copy)
                .is_err()
        );

        // A different sequence (nonce) fails.
        let mut copy = buf;
        assert!(
            sk.open(h.kind, h.lane, h.seq + 1, &h.aad(), &mut copy)
                .is_err()
        );
    }

    /// Check a datagram as the receiver does: parse, then the tag with
    /// `key`; the plaintext payload.
    fn open_datagram(key: &DatagramKey, dg: &[u8]) -> Result<Vec<u8>, SealError> {
        let (h, p) = crate::wire::parse(dg).map_err(|_| SealError::Open)?;
        let n = p.len();
        let mut dg = dg.to_vec();
        let (head, body) = dg.split_at_mut(HEADER_LEN);
        let head: [u8; HEADER_LEN] = (&*head).try_into().map_err(|_| SealError::Open)?;
        key.open(&h, &head, &mut body[..n + TAG_LEN])
            .map(|p| p.to_vec())
    }

    fn symbol(session: SessionId, lane: Lane, seq: u64, esi: u32) -> Header {
        Header {
            kind: Kind::Symbol,
            key_id: KeyId(7),
            lane,
            session,
            seq,
            transfer_len: 5000,
            symbol_size: 64,
            payload_id: esi,
        }
    }

    #[test]
    fn a_datagram_opens_with_its_own_key_and_header_only() {
        let s = SessionId([3; 16]);
        let h = symbol(s, Lane::Bulk, 9, 4);
        let key = key().datagram_key(s);
        let payload: Vec<u8> = (0..64).collect();
        let mut dg = Vec::new();
        key.emit_datagram(&h, &payload, &mut dg).expect("seal");
        assert_eq!(dg.len(), h.datagram_len());
        assert_ne!(
            &dg[HEADER_LEN..HEADER_LEN + 64],
            &payload[..],
            "sealed on the wire"
        );
        assert_eq!(open_datagram(&key, &dg), Ok(payload.clone()));
        // The session key's datagram key is the same key.
        assert_eq!(
            open_datagram(self::key().session_key(s).datagram(), &dg),
            Ok(payload.clone())
        );
        // The same payload and tag under another header (each field of
        // the identity moved: session, key id, kind, lane, seq, ESI,
        // source block, lengths), with a valid CRC: refused.
        let others = [
            Header {
                session: SessionId([4; 16]),
                ..h
            },
            Header {
                key_id: KeyId(8),
                ..h
            },
            Header {
                lane: Lane::Alert,
                ..h
            },
            Header { seq: 10, ..h },
            Header {
                seq: 9 + (1 << 48),
                ..h
            },
            Header { payload_id: 5, ..h },
            Header {
                payload_id: 4 | (1 << 24),
                ..h
            },
            Header {
                transfer_len: 5001,
                ..h
            },
            Header {
                kind: Kind::Heartbeat,
                transfer_len: 64,
                symbol_size: 0,
                payload_id: 0,
                ..h
            },
        ];
        for other in others {
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(crate::wire::tag_of(&dg).expect("tag"));
            let mut moved = Vec::new();
            crate::wire::emit_datagram(&other, &dg[HEADER_LEN..HEADER_LEN + 64], &tag, &mut moved);
            assert!(crate::wire::parse(&moved).is_ok(), "{other:?} parses");
            assert_eq!(
                open_datagram(&key, &moved),
                Err(SealError::Open),
                "{other:?}"
            );
        }
        // Another PSK, or another session's key from the same PSK.
        let wrong = Psk::new(KeyId(7), [0x43; KEY_LEN]).datagram_key(s);
        assert_eq!(open_datagram(&wrong, &dg), Err(SealError::Open));
        let other_session = self::key().datagram_key(SessionId([5; 16]));
        assert_eq!(open_datagram(&other_session, &dg), Err(SealError::Open));
        // The block key is not the datagram key.
        let mut as_block = dg[HEADER_LEN..HEADER_LEN + 64 + TAG_LEN].to_vec();
        assert!(
            self::key()
                .session_key(s)
                .open(h.kind, h.lane, h.seq, &h.aad(), &mut as_block)
                .is_err()
        );
    }

    /// Every datagram of a session has its own nonce: the same payload
    /// under any other kind, lane, seq or payload id gives another
    /// keystream (a repeated nonce would give the same ciphertext).
    #[test]
    fn each_datagram_of_a_session_has_its_own_nonce() {
        let s = SessionId([7; 16]);
        let key = key().datagram_key(s);
        let body = |h: &Header| {
            let mut dg = Vec::new();
            key.emit_datagram(h, &[0; 64], &mut dg).expect("seal");
            dg[HEADER_LEN..HEADER_LEN + 64].to_vec()
        };
        let h = symbol(s, Lane::Bulk, 3, 0);
        let mut seen = std::collections::HashSet::new();
        for other in [
            h,
            Header { payload_id: 1, ..h },
            Header {
                payload_id: 1 << 24,
                ..h
            },
            Header {
                lane: Lane::Alert,
                ..h
            },
            Header { seq: 4, ..h },
            Header {
                seq: 3 + (1 << 40),
                ..h
            },
            Header {
                kind: Kind::Heartbeat,
                transfer_len: 64,
                symbol_size: 0,
                ..h
            },
        ] {
            assert!(seen.insert(body(&other)), "{other:?} repeats a keystream");
        }
        // A repeat (`repeat_after`) is the same datagram, byte for byte.
        assert_eq!(body(&h), body(&h));
    }

    #[test]
    fn datagram_keys_change_with_the_generation_and_both_sides_agree() {
        let s = SessionId([6; 16]);
        let (tx, rx) = (key().datagram_key(s), key().datagram_key(s));
        for seq in [
            0,
            REKEY_BLOCKS - 1,
            REKEY_BLOCKS,
            5 * REKEY_BLOCKS + 1,
            u64::MAX,
        ] {
            let h = symbol(s, Lane::Alert, seq, 0);
            let mut dg = Vec::new();
            tx.emit_datagram(&h, &[9; 64], &mut dg).expect("seal");
            assert_eq!(open_datagram(&rx, &dg), Ok(vec![9; 64]), "seq {seq}");
            // Generation 0's key opens only generation 0's datagrams.
            let mut body = dg[HEADER_LEN..HEADER_LEN + 64 + TAG_LEN].to_vec();
            let head: [u8; HEADER_LEN] = dg[..HEADER_LEN].try_into().expect("head");
            let by_gen0 =
                rx.0.gen0
                    .open_in_place(datagram_nonce(&h), Aad::from(&head), &mut body)
                    .is_ok();
            assert_eq!(by_gen0, seq < REKEY_BLOCKS, "seq {seq}");
        }
    }

    proptest! {
        #[test]
        fn any_bit_flip_anywhere_in_a_datagram_is_refused(
            payload in proptest::collection::vec(any::<u8>(), 64),
            seq in any::<u64>(),
            esi in 0u32..(1 << 24),
            bit in any::<usize>(),
        ) {
            let s = SessionId([8; 16]);
            let key = key().datagram_key(s);
            let h = symbol(s, Lane::Bulk, seq, esi);
            let mut dg = Vec::new();
            key.emit_datagram(&h, &payload, &mut dg).expect("seal");
            prop_assert_eq!(open_datagram(&key, &dg), Ok(payload));
            let bit = bit % (dg.len() * 8);
            dg[bit / 8] ^= 1 << (bit % 8);
            // With the CRC mended too, so only the tag can catch it.
            let mut mended = dg.clone();
            crate::wire::put_crc(&mut mended);
            prop_assert!(open_datagram(&key, &dg).is_err());
            prop_assert!(
                open_datagram(&key, &mended).is_err() || bit >= (dg.len() - crate::wire::CRC_LEN) * 8,
                "bit {} passed with a mended CRC", bit
            );
        }

        #[test]
        fn any_bit_flip_in_aad_or_ciphertext_fails_open(
            plain in proptest::collection::vec(any::<u8>(), 0..300),
            bit in any::<usize>(),
        ) {
            let h = header(11, 0);
            let sk = key().session_key(h.session);
            let aad = h.aad();
            let mut sealed = plain.clone();
            sk.seal(h.kind, h.lane, h.seq, &aad, &mut sealed).expect("seal");
            let total_bits = (AAD_LEN + sealed.len()) * 8;
            let bit = bit % total_bits;
            let mut aad2 = aad;
            let mut sealed2 = sealed.clone();
            if bit < AAD_LEN * 8 {
                aad2[bit / 8] ^= 1 << (bit % 8);
            } else {
                let b = bit - AAD_LEN * 8;
                sealed2[b / 8] ^= 1 << (b % 8);
            }
            prop_assert!(sk.open(h.kind, h.lane, h.seq, &aad2, &mut sealed2).is_err());
        }
    }
}
