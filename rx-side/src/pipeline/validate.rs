//! Stage 5, `validate`: plaintext frame → records → MQTT messages.
//!
//! ```text
//!  OpenedBlock ──(frame version, size limits, postcard schema)──> records ──> topic + JSON ──> publish
//!              └─ undecodable frame: counted (drop_frame) and reported
//! ```
//!
//! Full-queue policy: this stage never waits on the broker. If the publish
//! queue is full, the whole block is shed, counted (`blocks_shed`) and
//! reported on the gaps topic with its sequence number and record count.

use std::sync::Arc;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::contract::{alert_payload, point_payload, point_topic};
use weir_shared::lane::Lane;
use weir_shared::record::{DecodeLimits, Record, decode_frame};

use super::publish::Topics;
use super::{Message, OpenedBlock, StageError, send_gap};
use crate::stats::{RxStats, add};

/// Run until the decode channel closes.
pub async fn run(
    limits: DecodeLimits,
    topics: Topics,
    stats: Arc<RxStats>,
    mut from_decode: Receiver<OpenedBlock>,
    to_alert_lane: Sender<Vec<Message>>,
    to_publish: Sender<Vec<Message>>,
) -> Result<(), StageError> {
    while let Some(block) = from_decode.recv().await {
        let batch = match decode_frame(&block.frame, limits) {
            Ok(b) => b,
            Err(e) => {
                add(&stats.drop_frame, 1);
                tracing::warn!(seq = block.seq, lane = block.lane.as_str(), error = %e, "Authentic block with an undecodable frame.");
                continue;
            }
        };
        add(&stats.records, batch.records.len() as u64);
        let messages: Vec<Message> = batch
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Point(p) => Some(Message {
                    topic: point_topic(&topics.point_template, &topics.site, p),
                    payload: point_payload(block.session, p),
                    retain: false,
                }),
                Record::Alert(a) => Some(Message {
                    topic: format!("{}/{}", topics.alerts, a.source.as_str()),
                    payload: alert_payload(block.session, a),
                    retain: false,
                }),
                // Files are reassembled by the file output, not published.
                Record::FileChunk(_) => {
                    add(&stats.file_chunks, 1);
                    None
                }
            })
            .collect();
        let n = messages.len();
        // Alert-lane blocks have their own queue, which publish serves first.
        let out = if block.lane == Lane::Alert {
            &to_alert_lane
        } else {
            &to_publish
        };
        match out.try_send(messages) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                add(&stats.blocks_shed, 1);
                tracing::error!(
                    seq = block.seq,
                    lane = block.lane.as_str(),
                    records = n,
                    "Publish queue full: block shed and reported as a gap."
                );
                let body = serde_json::json!({"type": "block_shed", "session": block.session.short_hex(),
                    "lane": block.lane.as_str(), "first_block": block.seq, "last_block": block.seq, "records": n});
                let gap = Message {
                    topic: topics.gaps.clone(),
                    payload: body.to_string().into_bytes(),
                    retain: false,
                };
                send_gap(&to_publish, gap);
            }
            Err(TrySendError::Closed(_)) => return Err(StageError::Closed("validate")),
        }
    }
    Ok(())
}
