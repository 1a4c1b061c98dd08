//! Stage 5, `validate`: an outbox entry → records → MQTT messages.
//!
//! ```text
//!  Entry(block) ──(frame version, size limits, postcard schema)──> records ──> topic + JSON ──> Delivery ──> publish
//!  Entry(event) ──────────────────────────────────────────────────────────────────────────────> Delivery ──> publish
//!               └─ undecodable frame: counted (drop_frame), delivered empty so the outbox lets it go
//!  records ──file chunks (and, on the bulk lane, the block's seq)──> files
//! ```
//!
//! Full-queue policy: this stage waits on `publish` and on `files`; the
//! backlog stays in the outbox on disk, bounded by the reader's window.

use std::sync::Arc;

use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::contract::{alert_payload, point_payload, point_topic};
use weir_shared::record::{DecodeLimits, Record, decode_frame};

use super::files::{self, FileWork};
use super::outbox::{Body, Entry};
use super::publish::Topics;
use super::{Delivery, Message, StageError};
use crate::stats::{RxStats, add};

/// Run until the outbox reader closes.
pub async fn run(
    limits: DecodeLimits,
    topics: Topics,
    stats: Arc<RxStats>,
    mut from_outbox: Receiver<Entry>,
    to_publish: Sender<Delivery>,
    to_files: Option<Sender<FileWork>>,
) -> Result<(), StageError> {
    while let Some(entry) = from_outbox.recv().await {
        let Entry { at, body, permit } = entry;
        let messages = match body {
            Body::Event(m) => vec![m],
            Body::Block(block) => match decode_frame(&block.frame, limits) {
                Ok(batch) => {
                    add(&stats.records, batch.records.len() as u64);
                    let messages = batch
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
                    files::forward(to_files.as_ref(), &block, batch.records).await?;
                    messages
                }
                Err(e) => {
                    add(&stats.drop_frame, 1);
                    tracing::warn!(seq = block.seq, lane = block.lane.as_str(), error = %e,
                        "Authentic block with an undecodable frame.");
                    Vec::new()
                }
            },
        };
        let d = Delivery {
            at,
            messages,
            permit,
        };
        if to_publish.send(d).await.is_err() {
            return Err(StageError::Closed("validate"));
        }
    }
    Ok(())
}
