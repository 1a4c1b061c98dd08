//! Stage 3, `seal`: batch frame → AES-256-GCM sealed block.
//!
//! ```text
//!  Frame ──(next seq of its lane; header as AAD)──> SealedBlock ──> encode
//!                                                      └─ range (blocks, records, SHA-256) ──> audit log
//! ```
//!
//! The block sequence number is per lane and doubles as the nonce, so it
//! is assigned here, where the nonce is used, and nowhere else.
//!
//! Sealed blocks are also written to the audit log, a range at a time
//! (`crate::audit::SealedRange`: at most 1024 blocks or 10 s, and the
//! rest when the stage ends), so a reconciliation can count every block.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::ledger::{HISTORY, append_trailer};
use weir_shared::seal::{SessionKey, sealed_len};
use weir_shared::wire::{Header, KeyId, Kind, SessionId};

use super::{Frame, SealedBlock, StageError};
use crate::audit::SealedRange;
use crate::state::Numbering;
use crate::telemetry::Telemetry;

/// What every block of a session is sealed with.
pub struct Sealer {
    /// The session key.
    pub key: Arc<SessionKey>,
    /// Its key id.
    pub key_id: KeyId,
    /// The session.
    pub session: SessionId,
    /// RaptorQ symbol size.
    pub symbol_size: u16,
    /// Block numbers (persisted across sessions).
    pub numbering: Arc<Numbering>,
    /// Where block summaries wait until their block was sent.
    pub telemetry: Arc<Telemetry>,
}

/// Run until the batch channel closes. Each block's plaintext is its frame
/// and a trailer with its own summary and the summaries of the
/// [`HISTORY`] blocks before it (the receiver's loss ledger).
pub async fn run(
    s: Sealer,
    mut from_batch: Receiver<Frame>,
    to_encode: Sender<SealedBlock>,
) -> Result<(), StageError> {
    let mut history: VecDeque<weir_shared::ledger::BlockSummary> = VecDeque::new();
    // Sealed blocks not yet written to the audit log (one range per lane).
    let mut range: Option<SealedRange> = None;
    loop {
        let deadline = range.as_ref().map(SealedRange::deadline);
        let frame = tokio::select! {
            f = from_batch.recv() => match f {
                Some(f) => f,
                None => break,
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                if let Some(r) = range.take() {
                    r.flush(&s.telemetry.audit);
                }
                continue;
            }
        };
        let lane = frame.lane;
        let seq = s.numbering.next_block[lane.index()].fetch_add(1, Ordering::Relaxed);
        let mut summary = frame.summary;
        summary.block = seq;
        history.push_front(summary.clone());
        history.truncate(HISTORY + 1);
        let mut sealed = frame.bytes;
        append_trailer(history.make_contiguous(), &mut sealed)
            .map_err(|_| StageError::Record(weir_shared::record::RecordError::Encode))?;
        let header = Header {
            kind: Kind::Symbol,
            key_id: s.key_id,
            lane,
            session: s.session,
            seq,
            transfer_len: u32::try_from(sealed_len(sealed.len()))
                .map_err(|_| StageError::Fec(weir_shared::fec::FecError::BlockLength(u32::MAX)))?,
            symbol_size: s.symbol_size,
            payload_id: 0,
        };
        s.key
            .seal(Kind::Symbol, lane, seq, &header.aad(), &mut sealed)?;
        if range.as_ref().is_some_and(|r| r.lane() != lane)
            && let Some(r) = range.take()
        {
            r.flush(&s.telemetry.audit);
        }
        let t = super::now();
        SealedRange::note(&mut range, t, lane, &summary, &sealed);
        if range.as_ref().is_some_and(|r| r.due(t))
            && let Some(r) = range.take()
        {
            r.flush(&s.telemetry.audit);
        }
        s.telemetry.block_sealed(lane, summary);
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
    if let Some(r) = range.take() {
        r.flush(&s.telemetry.audit);
    }
    Ok(())
}

/// Sleep until `at` (forever when `None`; the select guard skips that).
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
