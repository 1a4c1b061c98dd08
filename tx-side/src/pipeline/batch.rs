//! Stage 2, `batch`: records → batch frames, per lane, by size or age.
//!
//! ```text
//!  SourceItem ──> [alert builder] ──(size | age)──> Frame ──> seal
//!             └─> [bulk builder ] ──(size | age)──┘
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
use weir_shared::record::BatchBuilder;

use super::{FileDone, Frame, SourceItem, StageError, now};

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

/// Run until the source channel closes, then flush what is left.
pub async fn run(
    lanes: [ValidLane; LANES],
    mut from_source: Receiver<SourceItem>,
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
                item = from_source.recv() => item,
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
            },
            None => from_source.recv().await,
        };
        let Some(item) = item else { break };
        let (lane, full) = match item {
            SourceItem::Record(lane, mut record) => {
                record.set_seq(next_seq);
                next_seq += 1;
                let b = &mut state[lane.index()];
                b.builder.push(&record)?;
                b.oldest.get_or_insert_with(now);
                (
                    lane,
                    b.builder.len_bytes() >= b.cfg.max_batch_bytes as usize,
                )
            }
            SourceItem::FileDone(lane, done) => {
                let b = &mut state[lane.index()];
                b.markers.push(done);
                b.oldest.get_or_insert_with(now);
                (lane, false)
            }
        };
        if full {
            let frame = state[lane.index()].flush(lane)?;
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
