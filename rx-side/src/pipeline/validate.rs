//! Stage 5, `validate`: an outbox entry → records → MQTT messages.
//!
//! ```text
//!  Entry(block) ──(frame version, size limits, postcard schema)──> records ──> topic + JSON ──> Delivery ──> publish
//!                                                   with [sparkplug]: points ──> Delivery.points ──> publish ──> sparkplug
//!  Entry(event) ──────────────────────────────────────────────────────────────────────────────> Delivery ──> publish
//!               └─ undecodable frame: counted (drop_frame), delivered empty so the outbox lets it go
//!  alert block from memory (the fast path, `outbox::read_fast`) ──> the same, not counted, no file chunks ──> publish
//!  records ──file chunks (and, on the bulk lane, the block's seq)──> files
//! ```
//!
//! With `[sparkplug]`, points are not turned into JSON here: they travel in
//! the delivery, as decoded, to the Sparkplug publisher, which encodes them
//! when it sends them (`super::sparkplug` says why). The data-quality
//! verdicts apply the same way on both paths: duplicates are withheld,
//! quarantined points go to the JSON quarantine topic.
//!
//! Full-queue policy: this stage waits on `publish` and on `files`; the
//! backlog stays in the outbox on disk, bounded by the reader's window.

use std::sync::Arc;

use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::contract::{
    alert_payload, batch_by_topic, point_payload_dq, point_payload_with, point_topic,
};
use weir_shared::dq::{Withhold, decode_verdicts};
use weir_shared::lane::Lane;
use weir_shared::reassembly::BlockKey;
use weir_shared::record::{DecodeLimits, Point, Record, decode_frame};

use super::files::{self, FileWork};
use super::outbox::{Body, Entry};
use super::publish::Topics;
use super::{Delivery, Message, OpenedBlock, StageError};
use crate::stats::{RxStats, add};

/// Largest batched point message, bytes (well under the client's 1 MiB).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What a block's records become.
struct Made {
    /// JSON messages: points (unless Sparkplug takes them), quarantined
    /// points, alerts.
    messages: Vec<Message>,
    /// Points for the Sparkplug publisher (with `[sparkplug]` only).
    points: Vec<Point>,
    /// The records left for the file output (file chunks).
    rest: Vec<Record>,
}

/// The MQTT messages of a block's records: points (batched per topic when
/// configured; or, with `sparkplug`, handed on as they are), then alerts,
/// in record order within each. Points carry the verdicts stored with the
/// block; an exact duplicate is withheld (counted) and a point the checks
/// quarantine goes to the quarantine topic.
fn messages(
    topics: &Topics,
    stats: &RxStats,
    block: &OpenedBlock,
    records: Vec<Record>,
    sparkplug: bool,
) -> Made {
    let n_points = records
        .iter()
        .filter(|r| matches!(r, Record::Point(_)))
        .count();
    let verdicts = block
        .verdicts
        .as_deref()
        .and_then(|d| match decode_verdicts(d, n_points) {
            Ok(v) if v.len() == n_points => Some(v),
            Ok(_) | Err(_) => {
                tracing::error!(
                    seq = block.seq,
                    "Stored verdicts do not match the block; published without them."
                );
                None
            }
        });
    let mut verdicts = verdicts.into_iter().flatten();
    let mut points = Vec::new();
    let mut sparkplug_points = Vec::new();
    let mut out = Vec::new();
    let mut rest = Vec::new();
    for r in records {
        match r {
            Record::Point(p) => {
                let Some(v) = verdicts.next() else {
                    if sparkplug {
                        sparkplug_points.push(p);
                    } else {
                        points.push((
                            point_topic(&topics.point_template, &topics.site, &p),
                            point_payload_with(block.session, &p, topics.payload),
                        ));
                    }
                    continue;
                };
                match v.withhold {
                    None if sparkplug => sparkplug_points.push(p),
                    None => points.push((
                        point_topic(&topics.point_template, &topics.site, &p),
                        point_payload_dq(block.session, &p, topics.payload, &v),
                    )),
                    Some(Withhold::Duplicate) => add(&stats.dq_duplicates, 1),
                    Some(Withhold::Quarantine(_)) => {
                        add(&stats.dq_quarantined, 1);
                        out.push(Message {
                            topic: topics.quarantine.clone(),
                            payload: point_payload_dq(block.session, &p, topics.payload, &v),
                            retain: false,
                        });
                    }
                }
            }
            Record::Alert(a) => out.push(Message {
                topic: format!("{}/{}", topics.alerts, a.source.as_str()),
                payload: alert_payload(block.session, &a),
                retain: false,
            }),
            // Files are reassembled by the file output, not published.
            chunk @ Record::FileChunk(_) => {
                add(&stats.file_chunks, 1);
                rest.push(chunk);
            }
        }
    }
    let points = batch_by_topic(points, topics.batch_points, MAX_BATCH_BYTES);
    let mut all: Vec<Message> = points
        .into_iter()
        .map(|(topic, payload)| Message {
            topic,
            payload,
            retain: false,
        })
        .collect();
    all.append(&mut out);
    Made {
        messages: all,
        points: sparkplug_points,
        rest,
    }
}

/// Run until the outbox reader closes. With `sparkplug`, points go to the
/// Sparkplug publisher instead of the JSON point topics.
pub async fn run(
    limits: DecodeLimits,
    topics: Topics,
    stats: Arc<RxStats>,
    sparkplug: bool,
    mut from_outbox: Receiver<Entry>,
    to_publish: Sender<Delivery>,
    to_files: Option<Sender<FileWork>>,
) -> Result<(), StageError> {
    while let Some(entry) = from_outbox.recv().await {
        let Entry { at, body, permit } = entry;
        let mut alert = None;
        let (messages, points) = match body {
            Body::Event(m) => (vec![m], Vec::new()),
            Body::Block(block) => match decode_frame(&block.frame, limits) {
                Ok(batch) => {
                    alert = (block.lane == Lane::Alert).then_some(BlockKey {
                        session: block.session,
                        lane: block.lane,
                        seq: block.seq,
                    });
                    // A block from memory (the alert fast path) is counted
                    // and its file chunks handed on when its committed
                    // entry comes.
                    if at.is_some() {
                        add(&stats.records, batch.records.len() as u64);
                    }
                    let made = messages(&topics, &stats, &block, batch.records, sparkplug);
                    if at.is_some() {
                        files::forward(to_files.as_ref(), &block, made.rest).await?;
                    }
                    (made.messages, made.points)
                }
                Err(e) => {
                    add(&stats.drop_frame, 1);
                    tracing::warn!(seq = block.seq, lane = block.lane.as_str(), error = %e,
                        "Authentic block with an undecodable frame.");
                    (Vec::new(), Vec::new())
                }
            },
        };
        let d = Delivery {
            at,
            alert,
            messages,
            points,
            permit,
        };
        if to_publish.send(d).await.is_err() {
            return Err(StageError::Closed("validate"));
        }
    }
    Ok(())
}
