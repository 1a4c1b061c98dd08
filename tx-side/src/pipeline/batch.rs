//! Stage 2, `batch`: records → batch frames, per lane, by size or age.
//!
//! ```text
//!  lane items ──> [builder] ──(size | age)──> Frame ──> seal (of the same lane)
//!  (one batcher per lane)
//! ```
//!
//! The alert lane flushes as soon as no other alert is queued behind the
//! one it took (`max_age` only bounds a burst); the bulk lane fills blocks
//! up to `max_batch_bytes` or `max_age`.
//!
//! Every record gets the next record number of its lane here (numbers
//! persist across sender restarts, [`crate::state`]), and the block's
//! summary for the receiver's loss ledger is built beside it. A
//! file-done marker rides with the batch holding the file's last records,
//! so the file is completed only after that block was sent. Full-queue
//! policy: await the seal stage.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::config::ValidLane;
use weir_shared::lane::Lane;
use weir_shared::ledger::SummaryBuilder;
use weir_shared::record::{BatchBuilder, Record};

use super::{FileDone, Frame, SourceItem, StageError, now};
use crate::state::Numbering;
use crate::telemetry::{Telemetry, add};

struct LaneBatch {
    cfg: ValidLane,
    builder: BatchBuilder,
    summary: SummaryBuilder,
    next_record: u64,
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
            summary: self.summary.finish(self.next_record),
            markers: std::mem::take(&mut self.markers),
        })
    }
}

/// Run one lane's batcher until its source channel closes, then flush
/// what is left. Each lane has its own batcher (and seal and encode tasks),
/// so a bulk backlog waiting on the link never holds an alert up.
pub async fn run(
    lane: Lane,
    cfg: ValidLane,
    telemetry: Arc<Telemetry>,
    numbering: Arc<Numbering>,
    mut from_source: Receiver<SourceItem>,
    to_seal: Sender<Frame>,
) -> Result<(), StageError> {
    let published = &numbering.next_record[lane.index()];
    let mut b = LaneBatch {
        cfg,
        builder: BatchBuilder::default(),
        summary: SummaryBuilder::default(),
        next_record: published.load(Ordering::Relaxed),
        markers: Vec::new(),
        oldest: None,
    };
    loop {
        let item = match b.deadline() {
            Some(at) => tokio::select! {
                biased;
                () = tokio::time::sleep_until(at.into()) => {
                    if b.has_work() {
                        send(&to_seal, b.flush(lane)?).await?;
                    }
                    continue;
                }
                item = from_source.recv() => item,
            },
            None => from_source.recv().await,
        };
        let Some(item) = item else { break };
        let mut record = match item {
            SourceItem::Record(_, record) => record,
            // The chunk's budget permit is given back here: from now on its
            // bytes count against the batch, not the source's queue.
            SourceItem::Chunk(chunk, _budget) => Record::FileChunk(chunk),
            SourceItem::FileDone(_, done) => {
                b.markers.push(done);
                b.oldest.get_or_insert_with(now);
                continue;
            }
        };
        let seq = b.next_record;
        record.set_seq(seq);
        let size = b.builder.push(&record)?;
        if size > b.cfg.max_batch_bytes as usize {
            // One record larger than a whole batch would make a block the
            // receiver refuses: refuse it here, loudly.
            b.builder.pop_last(size);
            add(&telemetry.records_refused, 1);
            tracing::error!(
                lane = lane.as_str(),
                seq,
                size,
                "Record larger than the lane's max_batch_bytes refused."
            );
            continue;
        }
        b.summary.add(seq, &record);
        b.next_record += 1;
        published.store(b.next_record, Ordering::Relaxed);
        b.oldest.get_or_insert_with(now);
        let full = b.builder.len_bytes() >= b.cfg.max_batch_bytes as usize;
        // The alert lane does not wait for company: once nothing more is
        // queued behind this alert, it leaves (a burst still shares blocks).
        let alone = lane == Lane::Alert && from_source.is_empty();
        if full || alone {
            send(&to_seal, b.flush(lane)?).await?;
        }
    }
    if b.has_work() {
        send(&to_seal, b.flush(lane)?).await?;
    }
    Ok(())
}

async fn send(to_seal: &Sender<Frame>, frame: Frame) -> Result<(), StageError> {
    to_seal
        .send(frame)
        .await
        .map_err(|_| StageError::Closed("batch"))
}
