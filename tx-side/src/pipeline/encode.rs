//! Stage 4, `encode`: sealed block → RaptorQ symbols → whole datagrams.
//!
//! ```text
//!  SealedBlock ──(K source + R repair symbols, header + CRC each)──> EncodedBlock ──> pace (per lane)
//! ```
//!
//! All datagrams of a block have one length (symbols are padded), laid
//! back to back in one buffer, so `send` can hand runs of them to the
//! kernel in one GSO call.

use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::config::ValidLane;
use weir_shared::fec::{BlockEncoder, repair_symbols, source_symbols};
use weir_shared::lane::LANES;
use weir_shared::wire::{Header, OVERHEAD, emit_into};

use super::{EncodedBlock, SealedBlock, StageError};

/// Run until the seal channel closes.
pub async fn run(
    symbol_size: u16,
    max_block_bytes: u32,
    lanes: [ValidLane; LANES],
    mut from_seal: Receiver<SealedBlock>,
    to_pace: [Sender<EncodedBlock>; LANES],
) -> Result<(), StageError> {
    let mut encoder = BlockEncoder::new(symbol_size, max_block_bytes)?;
    let datagram_len = OVERHEAD + usize::from(symbol_size);
    while let Some(block) = from_seal.recv().await {
        let lane = block.header.lane;
        let cfg = lanes[lane.index()];
        let k = source_symbols(block.header.transfer_len, symbol_size);
        let repair = repair_symbols(k, cfg.repair_permille, cfg.min_repair);
        let mut buf = vec![0u8; (k + repair) as usize * datagram_len];
        let mut slots = buf.chunks_exact_mut(datagram_len);
        // RaptorQ encoding is CPU work of a millisecond or so per block;
        // `block_in_place` keeps it off the reactor's other tasks.
        tokio::task::block_in_place(|| {
            encoder.encode(&block.sealed, repair, |payload_id, symbol| {
                if let Some(slot) = slots.next() {
                    emit_into(
                        &Header {
                            payload_id,
                            ..block.header
                        },
                        symbol,
                        slot,
                    );
                }
            })
        })?;
        let encoded = EncodedBlock {
            lane,
            seq: block.header.seq,
            datagram_len,
            buf,
            repair,
            records: block.records,
            markers: block.markers,
        };
        to_pace[lane.index()]
            .send(encoded)
            .await
            .map_err(|_| StageError::Closed("encode"))?;
    }
    Ok(())
}
