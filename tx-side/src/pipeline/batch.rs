//! Stage 2, `batch`: records → batch frames, per lane, by size or age.
//!
//! ```text
//!  alert items ──> [alert builder] ──(size | age)──> Frame ──> seal
//!  bulk items  ──> [bulk builder ] ──(size | age)──┘
//!  (alert input is always read first)
//! ```
//!
//! Every record gets the next per-session sequence number here. A
//! file-done marker rides with the batch holding the file's last records,
//! so the file is completed only after that block was sent. Full-queue
//! policy: await the seal stage.

use std::time::Instant;

use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::config::ValidLane;
use weir_shared::lane::{LANES, Lane};
use weir_shared::record::{BatchBuilder, Record};

use super::{FileDone, Frame, SourceItem, StageError, now};
use crate::telemetry::{Telemetry, add};

struct LaneBatch {
    cfg: ValidLane,
    builder: BatchBuilder,
    markers: Vec<FileDone>,
    oldest: Option<Instant>,
}

impl LaneBatch {
    fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.cfg.max_age)
    }

    fn has_work(&self) -> bool {
        !self.builder.is_empty() || !self.markers.is_empty()
    }

    fn flush(&mut self, lane: Lane) -> Result<Frame, StageError> {
        let records = self.builder.count();
        let mut bytes = Vec::with_capacity(self.builder.len_bytes() / 4 + 64);
        self.builder.finish(self.cfg.zstd_level, &mut bytes)?;
        self.oldest = None;
        Ok(Frame {
            lane,
            bytes,
            records,
            markers: std::mem::take(&mut self.markers),
        })
    }
}

/// The lanes' source channels, alert first; closed ones are skipped.
pub struct Inputs {
    rx: [Receiver<SourceItem>; LANES],
    open: [bool; LANES],
}

impl Inputs {
    /// Inputs from one channel per lane, indexed by [`Lane::index`].
    pub fn new(rx: [Receiver<SourceItem>; LANES]) -> Self {
        Self {
            rx,
            open: [true; LANES],
        }
    }

    /// The next item, alert lane first; `None` once every lane closed.
    async fn next(&mut self) -> Option<SourceItem> {
        loop {
            let [alert, bulk] = &mut self.rx;
            tokio::select! {
                biased;
                x = alert.recv(), if self.open[0] => match x {
                    Some(item) => return Some(item),
                    None => self.open[0] = false,
                },
                x = bulk.recv(), if self.open[1] => match x {
                    Some(item) => return Some(item),
                    None => self.open[1] = false,
                },
                else => return None,
            }
        }
    }
}

/// Run until every source channel closes, then flush what is left.
pub async fn run(
    lanes: [ValidLane; LANES],
    telemetry: std::sync::Arc<Telemetry>,
    mut inputs: Inputs,
    to_seal: Sender<Frame>,
) -> Result<(), StageError> {
    let mut state = lanes.map(|cfg| LaneBatch {
        cfg,
        builder: BatchBuilder::default(),
        markers: Vec::new(),
        oldest: None,
    });
    let mut next_seq = 0u64;
    loop {
        let deadline = state.iter().filter_map(LaneBatch::deadline).min();
        let item = match deadline {
            Some(at) => tokio::select! {
                biased;
                () = tokio::time::sleep_until(at.into()) => {
                    let t = now();
                    for lane in Lane::ALL {
                        let b = &mut state[lane.index()];
                        if b.has_work() && b.deadline().is_some_and(|d| d <= t) {
                            send(&to_seal, b.flush(lane)?).await?;
                        }
                    }
                    continue;
                }
                item = inputs.next() => item,
            },
            None => inputs.next().await,
        };
        let Some(item) = item else { break };
        let (lane, mut record) = match item {
            SourceItem::Record(lane, record) => (lane, record),
            // The chunk's budget permit is given back here: from now on its
            // bytes count against the batch, not the source's queue.
            SourceItem::Chunk(chunk, _budget) => (Lane::Bulk, Record::FileChunk(chunk)),
            SourceItem::FileDone(lane, done) => {
                let b = &mut state[lane.index()];
                b.markers.push(done);
                b.oldest.get_or_insert_with(now);
                continue;
            }
        };
        record.set_seq(next_seq);
        next_seq += 1;
        let b = &mut state[lane.index()];
        let size = b.builder.push(&record)?;
        if size > b.cfg.max_batch_bytes as usize {
            // One record larger than a whole batch would make a block the
            // receiver refuses: refuse it here, loudly.
            b.builder.pop_last(size);
            add(&telemetry.records_refused, 1);
            tracing::error!(
                lane = lane.as_str(),
                seq = next_seq - 1,
                size,
                "Record larger than the lane's max_batch_bytes refused."
            );
            continue;
        }
        b.oldest.get_or_insert_with(now);
        if b.builder.len_bytes() >= b.cfg.max_batch_bytes as usize {
            let frame = b.flush(lane)?;
            send(&to_seal, frame).await?;
        }
    }
    for lane in Lane::ALL {
        if state[lane.index()].has_work() {
            let frame = state[lane.index()].flush(lane)?;
            send(&to_seal, frame).await?;
        }
    }
    Ok(())
}

async fn send(to_seal: &Sender<Frame>, frame: Frame) -> Result<(), StageError> {
    to_seal
        .send(frame)
        .await
        .map_err(|_| StageError::Closed("batch"))
}
