//! Stage 4, `encode`: sealed block → RaptorQ symbols → whole datagrams.
//!
//! ```text
//!  SealedBlock ──> one worker per core (own encoder, own plan cache) ──> in arrival order
//!              ──(K source + R repair symbols; header, datagram tag, CRC each)──> EncodedBlock ──> pace (per lane)
//! ```
//!
//! RaptorQ encoding is the sender's heaviest work per byte, and blocks are
//! independent: up to one block per core is encoded at once, on the
//! blocking pool (never on the reactor), and the results are handed on in
//! the order the blocks came, so each lane's blocks reach `pace` in
//! sequence.
//!
//! All datagrams of a block have one length (symbols are padded), laid
//! back to back in one buffer, so `send` can hand runs of them to the
//! kernel in one GSO call. Each symbol is sealed in place under the
//! session's datagram key as it is written ([`DatagramKey::emit_into`]):
//! the tag lets the receiver refuse forged datagrams before reassembly.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc::{Receiver, Sender};
use tokio::task::{JoinError, JoinHandle};
use weir_shared::config::ValidLane;
use weir_shared::fec::{BlockEncoder, repair_symbols, source_symbols};
use weir_shared::lane::LANES;
use weir_shared::seal::{DatagramKey, SessionKey};
use weir_shared::wire::{Header, OVERHEAD};

use super::{EncodedBlock, SealedBlock, StageError};

/// Most blocks encoded at once, whatever the core count.
const MAX_WORKERS: usize = 8;

/// A worker's encoder back, with what it made.
type Encoded = (BlockEncoder, Result<EncodedBlock, StageError>);

/// What the stage waits for next.
enum Event {
    /// The oldest block in work is done.
    Done(Result<Encoded, JoinError>),
    /// A sealed block, or `None`: the input closed.
    Block(Option<SealedBlock>),
}

/// Encode one block into whole datagrams.
fn encode_block(
    encoder: &mut BlockEncoder,
    key: &DatagramKey,
    block: SealedBlock,
    lane_cfg: ValidLane,
    symbol_size: u16,
) -> Result<EncodedBlock, StageError> {
    let datagram_len = OVERHEAD + usize::from(symbol_size);
    let k = source_symbols(block.header.transfer_len, symbol_size);
    let repair = repair_symbols(k, lane_cfg.repair_permille, lane_cfg.min_repair);
    let mut buf = vec![0u8; (k + repair) as usize * datagram_len];
    let mut slots = buf.chunks_exact_mut(datagram_len);
    let mut sealed = Ok(());
    encoder.encode(&block.sealed, repair, |payload_id, symbol| {
        if let Some(slot) = slots.next() {
            let h = Header {
                payload_id,
                ..block.header
            };
            if let Err(e) = key.emit_into(&h, symbol, slot) {
                sealed = Err(e);
            }
        }
    })?;
    sealed?;
    Ok(EncodedBlock {
        lane: block.header.lane,
        seq: block.header.seq,
        datagram_len,
        buf,
        repair,
        records: block.records,
        markers: block.markers,
    })
}

/// Run until the seal channel closes and every block in work is handed on.
pub async fn run(
    key: Arc<SessionKey>,
    symbol_size: u16,
    max_block_bytes: u32,
    lanes: [ValidLane; LANES],
    mut from_seal: Receiver<SealedBlock>,
    to_pace: [Sender<EncodedBlock>; LANES],
) -> Result<(), StageError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_WORKERS);
    let mut idle = (0..workers)
        .map(|_| BlockEncoder::new(symbol_size, max_block_bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let mut busy: VecDeque<JoinHandle<Encoded>> = VecDeque::new();
    let mut open = true;
    loop {
        // The oldest block goes first, so blocks leave in the order they
        // came; a new one is taken only while a worker is idle.
        let event = match (busy.front_mut(), open && !idle.is_empty()) {
            (None, false) => break,
            (Some(oldest), true) => tokio::select! {
                biased;
                r = oldest => Event::Done(r),
                b = from_seal.recv() => Event::Block(b),
            },
            (Some(oldest), false) => Event::Done(oldest.await),
            (None, true) => Event::Block(from_seal.recv().await),
        };
        match event {
            Event::Done(r) => {
                busy.pop_front();
                let (encoder, encoded) = r.map_err(|_| StageError::Closed("encode worker"))?;
                idle.push(encoder);
                let encoded = encoded?;
                to_pace[encoded.lane.index()]
                    .send(encoded)
                    .await
                    .map_err(|_| StageError::Closed("encode"))?;
            }
            Event::Block(Some(block)) => {
                // Taken only while a worker is idle: a new encoder is
                // never needed, but costs nothing but its plan cache.
                let mut encoder = match idle.pop() {
                    Some(e) => e,
                    None => BlockEncoder::new(symbol_size, max_block_bytes)?,
                };
                let cfg = lanes[block.header.lane.index()];
                let key = key.clone();
                busy.push_back(tokio::task::spawn_blocking(move || {
                    let r = encode_block(&mut encoder, key.datagram(), block, cfg, symbol_size);
                    (encoder, r)
                }));
            }
            Event::Block(None) => open = false,
        }
    }
    Ok(())
}
