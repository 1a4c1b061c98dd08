//! Stage 3, `seal`: batch frame → AES-256-GCM sealed block.
//!
//! ```text
//!  Frame ──(next seq of its lane; header as AAD)──> SealedBlock ──> encode
//! ```
//!
//! The block sequence number is per lane and doubles as the nonce, so it
//! is assigned here, where the nonce is used, and nowhere else.

use std::sync::Arc;

use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::lane::LANES;
use weir_shared::seal::{SessionKey, sealed_len};
use weir_shared::wire::{Header, KeyId, Kind, SessionId};

use super::{Frame, SealedBlock, StageError};

/// Run until the batch channel closes.
pub async fn run(
    key: Arc<SessionKey>,
    key_id: KeyId,
    session: SessionId,
    symbol_size: u16,
    mut from_batch: Receiver<Frame>,
    to_encode: Sender<SealedBlock>,
) -> Result<(), StageError> {
    let mut next_seq = [0u64; LANES];
    while let Some(frame) = from_batch.recv().await {
        let seq = next_seq[frame.lane.index()];
        next_seq[frame.lane.index()] += 1;
        let header = Header {
            kind: Kind::Symbol,
            key_id,
            lane: frame.lane,
            session,
            seq,
            transfer_len: u32::try_from(sealed_len(frame.bytes.len()))
                .map_err(|_| StageError::Fec(weir_shared::fec::FecError::BlockLength(u32::MAX)))?,
            symbol_size,
            payload_id: 0,
        };
        let mut sealed = frame.bytes;
        key.seal(Kind::Symbol, frame.lane, seq, &header.aad(), &mut sealed)?;
        let block = SealedBlock {
            header,
            sealed,
            records: frame.records,
            markers: frame.markers,
        };
        to_encode
            .send(block)
            .await
            .map_err(|_| StageError::Closed("seal"))?;
    }
    Ok(())
}
