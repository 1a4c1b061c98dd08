//! Stage 4, `dq`: data-quality verdicts, computed once per point before its
//! block is stored.
//!
//! ```text
//!  decode ──Item──> dq ──Item (bulk blocks carry their verdicts)──> outbox
//!                    ├─ DQ events (flatline, range, gap, …) ──> outbox ──> diode/v1/{site}/{gw}/dq
//!  every 1 s ──tick (stale: the receiver's clock)──> events
//!  every 10 s and at the end ──engine snapshot──> outbox (meta), restored at start
//!  SIGHUP ──new [dq] config──> reconfigure (per-tag state kept)
//!  outbox ──frames of blocks it refused──> their points forgotten
//! ```
//!
//! Before the checks, each point is looked up among the last
//! `dq.duplicate_memory` points checked ([`RecentPoints`]): one seen before
//! with the same tag, timestamp, value and status is an exact duplicate
//! (a file sent again by `weir-tx resend`, or after a sender crash) and is
//! withheld. A block the outbox then refuses (full, or the disk failed) was
//! never published: the outbox hands its frame back and its points are
//! forgotten, so that sending them again fills the gap instead of being
//! taken for duplicates.
//!
//! Verdicts are stored beside the block, so a block published again after a
//! rewind or a restart carries the same verdicts instead of being judged a
//! duplicate of itself. Checks annotate; `validate` withholds only exact
//! duplicates (counted) and points the config sends to quarantine.
//!
//! Full-queue policy: this stage awaits the outbox writer; decode, before
//! it, sheds (counted, reported) if this stage falls behind.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{Receiver, Sender, UnboundedReceiver};
use tokio::sync::watch;
use weir_shared::dq::{
    DqEvent, Engine, RecentPoints, ValidDqConfig, encode_verdicts, event_json, fingerprint,
};
use weir_shared::lane::Lane;
use weir_shared::record::{DecodeLimits, Record, decode_frame};

use super::outbox::Item;
use super::publish::Topics;
use super::{Message, OpenedBlock, StageError, unix_ns};
use crate::stats::{DqTally, RxStats, add};

/// How often stale tags are looked for.
const TICK: Duration = Duration::from_secs(1);
/// How often the engine's state is stored.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(10);

/// Judge the points of a block; `None` for blocks with no points (or a
/// frame that does not decode: `validate` counts that).
fn judge(
    engine: &mut Engine,
    recent: &mut RecentPoints,
    block: &OpenedBlock,
    limits: DecodeLimits,
    events: &mut Vec<DqEvent>,
    tally: &mut DqTally,
) -> Option<Vec<u8>> {
    if block.lane != Lane::Bulk {
        return None;
    }
    let batch = decode_frame(&block.frame, limits).ok()?;
    let now = unix_ns();
    let verdicts: Vec<_> = batch
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Point(p) => Some(engine.check_recent_into(p, now, recent, events)),
            _ => None,
        })
        .inspect(|v| tally.handle(v))
        .collect();
    (!verdicts.is_empty()).then(|| encode_verdicts(&verdicts))
}

/// The points of a block the outbox refused were never published: forget
/// them, so that they are not taken for duplicates when sent again.
fn forget(recent: &mut RecentPoints, frame: &[u8], limits: DecodeLimits) {
    let Ok(batch) = decode_frame(frame, limits) else {
        return;
    };
    for r in &batch.records {
        if let Record::Point(p) = r {
            recent.forget(fingerprint(p));
        }
    }
}

/// DQ events as messages for the outbox.
fn event_items(topics: &Topics, stats: &RxStats, events: &mut Vec<DqEvent>) -> Vec<Item> {
    add(&stats.dq_events, events.len() as u64);
    events
        .drain(..)
        .map(|e| {
            Item::Event(Message {
                topic: topics.dq.clone(),
                payload: event_json(&e).to_string().into_bytes(),
                retain: false,
            })
        })
        .collect()
}

fn snapshot(engine: &Engine) -> Option<Item> {
    match engine.snapshot() {
        Ok(bytes) => Some(Item::DqState(bytes)),
        Err(e) => {
            tracing::error!(error = %e, "Data-quality state could not be saved.");
            None
        }
    }
}

/// The stage's channels.
pub struct DqIo {
    /// From decode.
    pub from_decode: Receiver<Item>,
    /// To the outbox writer.
    pub to_outbox: Sender<Item>,
    /// New `[dq]` configs (SIGHUP).
    pub reload: watch::Receiver<Option<ValidDqConfig>>,
    /// Frames of blocks the outbox refused.
    pub refused: UnboundedReceiver<Vec<u8>>,
}

/// Run until decode closes.
pub async fn run(
    mut engine: Engine,
    limits: DecodeLimits,
    topics: Topics,
    stats: Arc<RxStats>,
    mut io: DqIo,
) -> Result<(), StageError> {
    let mut tick = tokio::time::interval(TICK);
    let mut save = tokio::time::interval(SNAPSHOT_EVERY);
    let mut events = Vec::new();
    let mut out: Vec<Item> = Vec::new();
    let mut recent = RecentPoints::new(engine.config().duplicate_memory());
    let mut refused_open = true;
    let mut tally = DqTally::default();
    loop {
        tokio::select! {
            item = io.from_decode.recv() => match item {
                Some(Item::Block(mut b)) => {
                    b.verdicts = judge(&mut engine, &mut recent, &b, limits, &mut events, &mut tally);
                    tally.flush(&stats.dq_flags);
                    out.push(Item::Block(b));
                }
                Some(other) => out.push(other),
                None => break,
            },
            frame = io.refused.recv(), if refused_open => match frame {
                Some(frame) => forget(&mut recent, &frame, limits),
                None => refused_open = false,
            },
            _ = tick.tick() => engine.tick_into(unix_ns(), &mut events),
            _ = save.tick() => out.extend(snapshot(&engine)),
            r = io.reload.changed() => {
                if r.is_ok()
                    && let Some(cfg) = io.reload.borrow_and_update().clone()
                {
                    recent.set_capacity(cfg.duplicate_memory());
                    engine.reconfigure(cfg);
                    tracing::info!("Data-quality config reloaded; per-tag state kept.");
                }
            }
        }
        out.extend(event_items(&topics, &stats, &mut events));
        let s = engine.stats();
        stats
            .dq_tags
            .store(s.tags as u64, std::sync::atomic::Ordering::Relaxed);
        for item in out.drain(..) {
            io.to_outbox
                .send(item)
                .await
                .map_err(|_| StageError::Closed("dq"))?;
        }
    }
    if let Some(s) = snapshot(&engine) {
        io.to_outbox
            .send(s)
            .await
            .map_err(|_| StageError::Closed("dq"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use weir_shared::dq::{DqConfig, decode_verdicts};
    use weir_shared::record::{Batch, NativeQuality, Point, SourceSystem, Value, encode_frame};
    use weir_shared::wire::SessionId;

    use super::*;

    fn point(tag: &str, ts_ns: i64, v: f64) -> Record {
        Record::Point(Point {
            native_quality: NativeQuality::Text("good".into()),
            ..Point::new(SourceSystem::PiWebApi, tag, ts_ns, Value::F64(v))
        })
    }

    #[test]
    fn bulk_points_get_one_verdict_each_and_alert_blocks_none() {
        let cfg = DqConfig::default().validate().expect("default dq config");
        let mut engine = Engine::new(cfg);
        let now = unix_ns();
        let batch = Batch {
            records: vec![
                point("a", now - 2_000_000_000, 1.0),
                point("a", now - 1_000_000_000, 2.0),
            ],
        };
        let mut frame = Vec::new();
        encode_frame(&batch, None, &mut frame).expect("frame");
        let mut block = OpenedBlock {
            session: SessionId([1; 16]),
            lane: Lane::Bulk,
            seq: 0,
            frame,
            verdicts: None,
            held: None,
            summary: None,
        };
        let limits = DecodeLimits {
            max_body_bytes: 1 << 20,
            max_records: 1000,
        };
        let mut events = Vec::new();
        let mut recent = RecentPoints::new(16);
        let mut tally = DqTally::default();
        let v = judge(
            &mut engine,
            &mut recent,
            &block,
            limits,
            &mut events,
            &mut tally,
        )
        .expect("verdicts");
        assert_eq!(decode_verdicts(&v, 2).expect("decode").len(), 2);
        let counts = crate::stats::DqFlagCounts::default();
        tally.flush(&counts);
        let judged: u64 = counts
            .worst
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        assert_eq!(judged, 2, "one worst flag per point");
        block.lane = Lane::Alert;
        assert!(
            judge(
                &mut engine,
                &mut recent,
                &block,
                limits,
                &mut events,
                &mut tally
            )
            .is_none()
        );
    }

    #[test]
    fn a_block_sent_again_is_withheld_unless_the_outbox_refused_it() {
        use weir_shared::dq::Withhold;
        let mut engine = Engine::new(DqConfig::default().validate().expect("valid"));
        let now = unix_ns();
        let batch = Batch {
            records: (0..4)
                .map(|i| point("b", now - (10 - i) * 1_000_000_000, i as f64))
                .collect(),
        };
        let mut frame = Vec::new();
        encode_frame(&batch, None, &mut frame).expect("frame");
        let block = OpenedBlock {
            session: SessionId([2; 16]),
            lane: Lane::Bulk,
            seq: 0,
            frame,
            verdicts: None,
            held: None,
            summary: None,
        };
        let limits = DecodeLimits {
            max_body_bytes: 1 << 20,
            max_records: 1000,
        };
        let (mut recent, mut events) = (RecentPoints::new(100), Vec::new());
        let mut tally = DqTally::default();
        let mut withheld = |engine: &mut Engine, recent: &mut RecentPoints| {
            let v =
                judge(engine, recent, &block, limits, &mut events, &mut tally).expect("verdicts");
            let v = decode_verdicts(&v, 4).expect("decode");
            v.iter()
                .map(|v| v.withhold == Some(Withhold::Duplicate))
                .collect::<Vec<_>>()
        };
        assert_eq!(withheld(&mut engine, &mut recent), [false; 4]);
        assert_eq!(withheld(&mut engine, &mut recent), [true; 4]);
        // Refused by the outbox: its points are new again (all but the
        // tag's newest, which the per-tag state still holds).
        forget(&mut recent, &block.frame, limits);
        assert_eq!(
            withheld(&mut engine, &mut recent),
            [false, false, false, true]
        );
    }
}
