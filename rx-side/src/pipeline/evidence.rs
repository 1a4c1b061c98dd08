//! Audit evidence from the decode stage: what each sender says it sent,
//! and what arrived, per session lane, aggregated for the audit log.
//!
//! ```text
//!  decode: heartbeat ──marks──┐
//!          block handed to the outbox ──┴─> Evidence ──every 10 s, and at the end──> audit log
//!  ticker (30 s): drop counters (deltas by reason), outbox and broker counters ──> audit log
//! ```
//!
//! One record per flow and period keeps the log small; the counts add up,
//! so `weir-rx report` can reconcile a day from the audit log alone:
//! sent (the sender's marks) = received + lost (the gap ledger).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use weir_shared::audit::hex;
use weir_shared::contract::rfc3339_ns;
use weir_shared::heartbeat::Heartbeat;
use weir_shared::lane::{LANES, Lane};
use weir_shared::ledger::BlockSummary;
use weir_shared::wire::SessionId;

use super::outbox::{Item, Outbox, Table};
use super::{Message, StageError, send_event, unix_ns};
use crate::audit::AuditSlot;
use crate::stats::{RxSnapshot, RxStats};

/// How often received blocks and sender marks are written.
const FLUSH: Duration = Duration::from_secs(10);
/// Unchanged sender marks are written again after this long (a sender
/// that is up but idle still shows in every day's log).
const MARKS_AGAIN: Duration = Duration::from_mins(5);
/// Most sources (spool files, alert sources) named per flow and flush.
const MAX_SOURCES: usize = 64;
/// How often reject and delivery counters are written.
const TICK: Duration = Duration::from_secs(30);

/// Blocks received on one session lane since the last flush.
#[derive(Debug, Clone)]
struct Received {
    first_block: u64,
    last_block: u64,
    blocks: u64,
    first_record: Option<u64>,
    end_record: Option<u64>,
    records: u64,
    undescribed: u64,
    bytes: u64,
    /// Sources of its records (spool file names, alert sources).
    sources: BTreeSet<String>,
    /// Sources not named: beyond `MAX_SOURCES`, or beyond the sender's
    /// own summary limit.
    more_sources: u64,
}

/// The decode stage's evidence, between flushes.
#[derive(Debug)]
pub(crate) struct Evidence {
    received: BTreeMap<(SessionId, usize), Received>,
    marks: BTreeMap<SessionId, Value>,
    /// Per session: the lane marks last written, and when.
    written: BTreeMap<SessionId, (Value, Instant)>,
    flushed: Instant,
}

impl Default for Evidence {
    fn default() -> Self {
        Self {
            received: BTreeMap::new(),
            marks: BTreeMap::new(),
            written: BTreeMap::new(),
            flushed: Instant::now(),
        }
    }
}

impl Evidence {
    /// A block handed to the outbox (`frame` bytes), with the ledger's
    /// summary of it when the sender described it.
    pub(crate) fn block(
        &mut self,
        session: SessionId,
        lane: Lane,
        seq: u64,
        summary: Option<&BlockSummary>,
        bytes: usize,
    ) {
        let r = self
            .received
            .entry((session, lane.index()))
            .or_insert(Received {
                first_block: seq,
                last_block: seq,
                blocks: 0,
                first_record: None,
                end_record: None,
                records: 0,
                undescribed: 0,
                bytes: 0,
                sources: BTreeSet::new(),
                more_sources: 0,
            });
        r.first_block = r.first_block.min(seq);
        r.last_block = r.last_block.max(seq);
        r.blocks += 1;
        r.bytes += bytes as u64;
        match summary {
            Some(s) => {
                for src in &s.sources {
                    if r.sources.len() < MAX_SOURCES || r.sources.contains(src) {
                        r.sources.insert(src.clone());
                    } else {
                        r.more_sources += 1;
                    }
                }
                r.more_sources += u64::from(s.more_sources);
                r.records += s.records;
                r.first_record = Some(
                    r.first_record
                        .map_or(s.first_record, |f| f.min(s.first_record)),
                );
                r.end_record = Some(
                    r.end_record
                        .map_or(s.end_record(), |e| e.max(s.end_record())),
                );
            }
            None => r.undescribed += 1,
        }
    }

    /// A heartbeat of `session`: the sender's own account, kept until the
    /// next flush (the latest wins).
    pub(crate) fn heartbeat(&mut self, session: SessionId, hb: &Heartbeat) {
        let lanes: Vec<Value> = Lane::ALL
            .iter()
            .map(|lane| {
                let m = hb.marks[lane.index()];
                json!({
                    "lane": lane.as_str(), "first_block": m.first_block,
                    "first_record": m.first_record, "next_record": m.next_record,
                    "last_sent": hb.last_sent[lane.index()],
                })
            })
            .collect();
        let fp = weir_shared::audit::hex_bytes(&hb.config_fingerprint);
        self.marks.insert(
            session,
            json!({
                "session": session.short_hex(), "sender": session.sender(),
                "sent_unix_ms": hb.sent_unix_ms, "uptime_ms": hb.uptime_ms,
                "config_fingerprint": fp, "lanes": lanes,
                "counters": hb.counters, "health": hb.health,
            }),
        );
    }

    /// Write what gathered, if `FLUSH` passed (or `force`).
    pub(crate) fn poll(&mut self, now: Instant, audit: &AuditSlot, force: bool) {
        if !force && now.duration_since(self.flushed) < FLUSH {
            return;
        }
        self.flushed = now;
        for (session, body) in std::mem::take(&mut self.marks) {
            // Unchanged marks (an idle sender) are written only now and then.
            if let Some((lanes, at)) = self.written.get(&session)
                && *lanes == body["lanes"]
                && now.duration_since(*at) < MARKS_AGAIN
                && !force
            {
                continue;
            }
            if self.written.len() > 64 {
                self.written.clear();
            }
            self.written.insert(session, (body["lanes"].clone(), now));
            audit.record("sender_marks", body);
        }
        for ((session, lane), r) in std::mem::take(&mut self.received) {
            audit.record(
                "blocks_received",
                json!({
                    "session": session.short_hex(), "lane": Lane::ALL[lane % LANES].as_str(),
                    "first_block": r.first_block, "last_block": r.last_block, "blocks": r.blocks,
                    "first_record": r.first_record, "end_record": r.end_record,
                    "records": r.records, "undescribed_blocks": r.undescribed, "bytes": r.bytes,
                    "sources": r.sources, "more_sources": r.more_sources,
                }),
            );
        }
    }
}

/// The drop counters, by reason.
fn drops(s: &RxSnapshot) -> [(&'static str, u64); 20] {
    [
        ("crc", s.drop_crc),
        ("malformed", s.drop_malformed),
        ("forged", s.drop_forged),
        ("unverified", s.drop_unverified),
        ("resolved", s.drop_resolved),
        ("too_old", s.drop_too_old),
        ("geometry", s.drop_geometry),
        ("inconsistent", s.drop_inconsistent),
        ("pending_full", s.drop_pending_full),
        ("excess", s.drop_excess),
        ("unknown_key", s.drop_unknown_key),
        ("auth", s.drop_auth),
        ("replay", s.drop_replay),
        ("frame", s.drop_frame),
        ("trailer", s.drop_trailer),
        ("old_session", s.drop_old_session),
        ("stale", s.drop_stale),
        ("retired_key", s.drop_retired_key),
        ("blocks_shed", s.blocks_shed),
        ("outbox_refused", s.outbox_refused),
    ]
}

/// What left the receiver: counters and the outbox backlog.
pub(crate) fn delivery_json(s: &RxSnapshot, store: &Outbox) -> Value {
    let backlog: u64 = Table::ALL.iter().map(|t| store.len(*t).unwrap_or(0)).sum();
    json!({
        "blocks_ok": s.blocks_ok, "records": s.records, "outbox_committed": s.outbox_committed,
        "published": s.published, "acked": s.acked, "outbox_entries": backlog,
        "files_done": s.files_done, "records_lost": s.records_lost, "gap_entries": s.gap_entries,
    })
}

/// Every `TICK`: the drop counters that moved (deltas, by reason) and the
/// delivery counters, until cancelled; and the audit chain's head, when it
/// moved, as an `audit_head` event on `audit_topic` (so the head is kept
/// off this host, by the broker and its subscribers).
pub(crate) async fn ticker(
    (stats, store): (Arc<RxStats>, Arc<Outbox>),
    cancel: CancellationToken,
    audit_topic: String,
    to_outbox: Sender<Item>,
) -> Result<(), StageError> {
    let mut last = stats.snapshot();
    let mut shipped = None;
    let mut tick = tokio::time::interval(TICK);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return Ok(()),
        }
        let now = stats.snapshot();
        let moved: serde_json::Map<String, Value> = drops(&now)
            .iter()
            .zip(drops(&last))
            .filter(|((_, a), (_, b))| a != b)
            .map(|((k, a), (_, b))| ((*k).to_owned(), json!(a - b)))
            .collect();
        if !moved.is_empty() {
            stats.audit.record("rejects", json!({ "delta": moved }));
        }
        if now != last {
            stats.audit.record("delivery", delivery_json(&now, &store));
        }
        last = now;
        if let Some(h) = stats.audit.head().filter(|h| Some(*h) != shipped) {
            shipped = Some(h);
            let ev = json!({"type": "audit_head", "records": h.count, "head": hex(&h.head),
                "ts": rfc3339_ns(unix_ns())});
            let payload = ev.to_string().into_bytes();
            let (topic, retain) = (audit_topic.clone(), false);
            send_event(
                &to_outbox,
                Message {
                    topic,
                    payload,
                    retain,
                },
            );
        }
    }
}
