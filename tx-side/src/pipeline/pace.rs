//! Stage 5, `pace`: order datagrams on the link and hold them to the rate.
//!
//! ```text
//!  alert blocks ──┐  strict priority
//!                 ├──> burst (≤ burst_datagrams and the tokens earned, one length) ──> send
//!  bulk blocks ───┘  symbols of up to `interleave_blocks` blocks round-robin
//! ```
//!
//! Interleaving spreads a burst of loss over several blocks, each of which
//! can repair a little, instead of wiping out one. Completions leave in
//! block order per lane, so a file is marked sent only once every block
//! before (and including) its last one has left.

use std::collections::VecDeque;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::config::ValidLane;
use weir_shared::lane::{LANES, Lane};
use weir_shared::pace::Pacer;

use super::{Burst, Completion, EncodedBlock, StageError, now};

struct Active {
    block: EncodedBlock,
    next: usize,
}

struct LaneQueue {
    rx: Receiver<EncodedBlock>,
    open: bool,
    depth: usize,
    active: VecDeque<Active>,
    /// Blocks started, in sequence order, with their completion once sent.
    order: VecDeque<(u64, Option<Completion>)>,
}

impl LaneQueue {
    fn admit(&mut self, block: EncodedBlock) {
        self.order.push_back((block.seq, None));
        self.active.push_back(Active { block, next: 0 });
    }

    fn refill(&mut self) {
        while self.open && self.active.len() < self.depth {
            match self.rx.try_recv() {
                Ok(b) => self.admit(b),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.open = false,
            }
        }
    }

    /// Up to `max` datagrams, round-robin over the active blocks.
    fn take(&mut self, max: usize, out: &mut Burst) {
        let mut i = 0;
        while out.buf.len() / out.segment.max(1) < max && !self.active.is_empty() {
            if i >= self.active.len() {
                i = 0;
            }
            let a = &mut self.active[i];
            let len = a.block.datagram_len;
            if out.segment == 0 {
                out.segment = len;
            }
            let start = a.next * len;
            out.buf.extend_from_slice(&a.block.buf[start..start + len]);
            a.next += 1;
            if a.next == a.block.datagrams() {
                if let Some(done) = self.active.remove(i) {
                    self.finish(done.block);
                }
            } else {
                i += 1;
            }
        }
        while let Some((_, Some(_))) = self.order.front() {
            if let Some((_, Some(c))) = self.order.pop_front() {
                out.done.push(c);
            }
        }
    }

    fn finish(&mut self, b: EncodedBlock) {
        let c = Completion {
            lane: b.lane,
            seq: b.seq,
            records: b.records,
            repair: b.repair,
            markers: b.markers,
        };
        if let Some(slot) = self.order.iter_mut().find(|(s, _)| *s == b.seq) {
            slot.1 = Some(c);
        }
    }
}

/// Run until every lane's channel has closed and drained.
pub async fn run(
    mut pacer: Pacer,
    burst_datagrams: usize,
    lanes: [ValidLane; LANES],
    from_encode: [Receiver<EncodedBlock>; LANES],
    to_send: Sender<Burst>,
) -> Result<(), StageError> {
    let mut queues: Vec<LaneQueue> = from_encode
        .into_iter()
        .zip(lanes)
        .map(|(rx, cfg)| LaneQueue {
            rx,
            open: true,
            depth: cfg.interleave_blocks,
            active: VecDeque::new(),
            order: VecDeque::new(),
        })
        .collect();
    loop {
        for q in &mut queues {
            q.refill();
        }
        // Strict priority: the first lane (alert) with work goes first.
        let Some(lane) = Lane::ALL
            .into_iter()
            .find(|l| !queues[l.index()].active.is_empty())
        else {
            if queues.iter().all(|q| !q.open) {
                return Ok(());
            }
            // Nothing to send: wait for any lane.
            let [alert, bulk] = &mut queues[..] else {
                return Ok(());
            };
            tokio::select! {
                biased;
                b = alert.rx.recv(), if alert.open => match b { Some(b) => alert.admit(b), None => alert.open = false },
                b = bulk.rx.recv(), if bulk.open => match b { Some(b) => bulk.admit(b), None => bulk.open = false },
            }
            continue;
        };
        // Size the burst from the tokens earned, waiting for one datagram's
        // worth first: a slow link sends single datagrams, so an alert
        // block arriving meanwhile waits behind one datagram, not a burst.
        let unit = queues[lane.index()]
            .active
            .front()
            .map_or(1, |a| a.block.datagram_len as u64);
        let budget = match pacer.poll_budget(now(), unit) {
            Ok(b) => b,
            Err(at) => {
                let [alert, _] = &mut queues[..] else {
                    return Ok(());
                };
                if lane == Lane::Alert || !alert.open {
                    tokio::time::sleep_until(at.into()).await;
                } else {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        b = alert.rx.recv() => match b {
                            Some(b) => alert.admit(b),
                            None => alert.open = false,
                        },
                    }
                }
                continue;
            }
        };
        let fits = usize::try_from(budget / unit.max(1)).unwrap_or(usize::MAX);
        let mut burst = Burst {
            buf: Vec::new(),
            segment: 0,
            done: Vec::new(),
        };
        queues[lane.index()].take(fits.clamp(1, burst_datagrams), &mut burst);
        pacer.consume(burst.buf.len() as u64);
        to_send
            .send(burst)
            .await
            .map_err(|_| StageError::Closed("pace"))?;
    }
}
