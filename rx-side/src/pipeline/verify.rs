//! Stage 2, `verify`: cheap per-datagram checks before any decoding work.
//!
//! ```text
//!  RecvBatch ──(CRC32, magic, version, kind, lane, flags, lengths)──> Verified ──> decode
//!            └─ anything else: counted (drop_crc / drop_malformed) and dropped
//! ```

use std::sync::Arc;

use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::wire::{WireError, parse};

use super::{RecvBatch, StageError, Verified};
use crate::stats::{RxStats, add, charge_cpu, thread_cpu};

/// Run until the recv channel closes.
pub async fn run(
    stats: Arc<RxStats>,
    mut from_recv: Receiver<RecvBatch>,
    to_decode: Sender<Verified>,
) -> Result<(), StageError> {
    while let Some(batch) = from_recv.recv().await {
        let cpu = thread_cpu();
        let mut items = Vec::with_capacity(batch.segs.len());
        let (mut crc, mut malformed) = (0u64, 0u64);
        for &(off, len) in &batch.segs {
            let dgram = &batch.buf[off..off + len];
            match parse(dgram) {
                Ok((header, payload)) => {
                    let start = off + weir_shared::wire::HEADER_LEN;
                    items.push((header, start, payload.len()));
                }
                Err(WireError::Crc) => crc += 1,
                Err(_) => malformed += 1,
            }
        }
        add(&stats.drop_crc, crc);
        add(&stats.drop_malformed, malformed);
        if crc + malformed > 0 {
            tracing::debug!(crc, malformed, "Datagrams dropped by verify.");
        }
        charge_cpu(&stats.link_cpu_ns, cpu);
        if !items.is_empty()
            && to_decode
                .send(Verified {
                    buf: batch.buf,
                    items,
                    held: batch.held,
                })
                .await
                .is_err()
        {
            return Err(StageError::Closed("verify"));
        }
    }
    Ok(())
}
