//! Stage 4, `open`: the AEAD gate.
//!
//! ```text
//!  CompletedBlock / heartbeat ──(session key from key id + session id)──> plaintext
//!                             └─ unknown key id, failed tag: counted, dropped
//! ```
//!
//! Session keys are derived on first use and cached only after a
//! successful open, so junk session ids cost a derivation each but never
//! memory.

use std::collections::HashMap;

use weir_shared::heartbeat::{Heartbeat, HeartbeatError, open_heartbeat};
use weir_shared::seal::{Keyring, SealError, SessionKey};
use weir_shared::wire::{Header, KeyId, Kind, SessionId};

/// Cached session keys beyond which the cache is cleared.
const CACHE_MAX: usize = 256;

/// Why something did not pass the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No loaded key has the header's key id.
    #[error("unknown key id {0}")]
    UnknownKey(u16),
    /// The key id was retired by the operator.
    #[error("retired key id {0}")]
    Retired(u16),
    /// Authentication failed.
    #[error("authentication failed")]
    Auth,
    /// Authentic heartbeat that did not decode.
    #[error("heartbeat undecodable")]
    Heartbeat,
}

/// The keyring and the session keys derived from it.
pub struct Gate {
    keyring: Keyring,
    retired: Vec<KeyId>,
    cache: HashMap<(SessionId, KeyId), SessionKey>,
}

impl Gate {
    /// A gate over the loaded keys.
    pub fn new(keyring: Keyring) -> Self {
        Self {
            keyring,
            retired: Vec::new(),
            cache: HashMap::new(),
        }
    }

    /// Refuse these key ids even though a loaded file has them.
    #[must_use]
    pub fn with_retired(mut self, retired: &[u16]) -> Self {
        self.retired = retired.iter().map(|&k| KeyId(k)).collect();
        self
    }

    fn with_key<T>(
        &mut self,
        header: &Header,
        f: impl FnOnce(&SessionKey) -> Result<T, OpenError>,
    ) -> Result<T, OpenError> {
        if self.retired.contains(&header.key_id) {
            return Err(OpenError::Retired(header.key_id.0));
        }
        let id = (header.session, header.key_id);
        if let Some(k) = self.cache.get(&id) {
            return f(k);
        }
        let psk = self
            .keyring
            .get(header.key_id)
            .map_err(|_| OpenError::UnknownKey(header.key_id.0))?;
        let key = psk.session_key(header.session);
        let out = f(&key)?;
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(id, key);
        Ok(out)
    }

    /// Authenticate and decrypt a rebuilt block in place; returns the
    /// plaintext length (the frame is `sealed[..len]`).
    pub fn open_block(&mut self, header: &Header, sealed: &mut [u8]) -> Result<usize, OpenError> {
        self.with_key(header, |k| {
            k.open(Kind::Symbol, header.lane, header.seq, &header.aad(), sealed)
                .map(|p| p.len())
                .map_err(|_: SealError| OpenError::Auth)
        })
    }

    /// Authenticate and decode a heartbeat.
    pub fn open_heartbeat(
        &mut self,
        header: &Header,
        payload: &[u8],
    ) -> Result<Heartbeat, OpenError> {
        self.with_key(header, |k| {
            open_heartbeat(k, header, payload).map_err(|e| match e {
                HeartbeatError::Decode => OpenError::Heartbeat,
                _ => OpenError::Auth,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_shared::lane::Lane;
    use weir_shared::seal::{Psk, sealed_len};

    #[test]
    fn a_retired_key_is_refused_though_loaded() {
        let psk = Psk::new(KeyId(3), [7; 32]);
        let session = SessionId([9; 16]);
        let mut body = b"a block".to_vec();
        let header = Header {
            kind: Kind::Symbol,
            key_id: KeyId(3),
            lane: Lane::Bulk,
            session,
            seq: 1,
            transfer_len: u32::try_from(sealed_len(body.len())).unwrap_or(0),
            symbol_size: 64,
            payload_id: 0,
        };
        psk.session_key(session)
            .seal(Kind::Symbol, Lane::Bulk, 1, &header.aad(), &mut body)
            .expect("seal");
        let mut open = Gate::new(Keyring::new([psk.clone()]));
        assert!(open.open_block(&header, &mut body.clone()).is_ok());
        let mut retired = Gate::new(Keyring::new([psk])).with_retired(&[3]);
        assert_eq!(
            retired.open_block(&header, &mut body),
            Err(OpenError::Retired(3))
        );
    }
}
