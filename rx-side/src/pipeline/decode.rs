//! Stage 3, `decode`: symbols → rebuilt blocks; heartbeats → link state.
//!
//! ```text
//!  Verified ──symbols──> Reassembler ──CompletedBlock──> open ──OpenedBlock──> outbox
//!           └─heartbeats──────────────────────────────> open ──> link state, tail-loss window
//!  tick ──> expire pending blocks, declare lost blocks ──> gap events ──> outbox
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::contract::rfc3339_ns;
use weir_shared::reassembly::{BlockKey, DropReason, Reassembler, ReassemblyLimits};
use weir_shared::seal::Keyring;
use weir_shared::wire::{Header, Kind, SessionId};

use super::files::{FileWork, notify_lost};
use super::open::{Gate, OpenError};
use super::outbox::Item;
use super::publish::Topics;
use super::{LinkState, Message, OpenedBlock, StageError, Verified, now, send_event};
use crate::stats::{RxStats, add};

/// How often pending blocks are expired and lost blocks reported.
const TICK: Duration = Duration::from_millis(200);

/// The decode stage's state.
pub struct Core {
    reassembler: Reassembler,
    gate: Gate,
    /// Highest heartbeat sequence seen per session (heartbeat replay guard).
    hb_seq: HashMap<SessionId, u64>,
    /// Sender sessions already reported on the audit topic.
    seen: HashSet<SessionId>,
    max_sessions: usize,
    /// The file output, told of lost blocks (when `[files]` is configured).
    files: Option<Sender<FileWork>>,
}

impl Core {
    /// A core with these limits and keys.
    pub fn new(limits: ReassemblyLimits, keyring: Keyring) -> Self {
        Self {
            reassembler: Reassembler::new(limits),
            gate: Gate::new(keyring),
            hb_seq: HashMap::new(),
            seen: HashSet::new(),
            max_sessions: limits.max_sessions,
            files: None,
        }
    }

    /// Also tell the file output of lost blocks.
    #[must_use]
    pub fn with_files(mut self, to_files: Option<Sender<FileWork>>) -> Self {
        self.files = to_files;
        self
    }
}

fn count_open_error(stats: &RxStats, e: OpenError) {
    match e {
        OpenError::UnknownKey(_) => add(&stats.drop_unknown_key, 1),
        OpenError::Auth | OpenError::Heartbeat => add(&stats.drop_auth, 1),
    }
}

fn count_drop(stats: &RxStats, r: DropReason) {
    let c = match r {
        DropReason::Resolved => &stats.drop_resolved,
        DropReason::TooOld => &stats.drop_too_old,
        DropReason::Geometry(_) => &stats.drop_geometry,
        DropReason::Inconsistent => &stats.drop_inconsistent,
        DropReason::PendingFull => &stats.drop_pending_full,
        DropReason::Excess => &stats.drop_excess,
    };
    add(c, 1);
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Run until the verify channel closes.
pub async fn run(
    mut core: Core,
    stats: Arc<RxStats>,
    link: Arc<Mutex<LinkState>>,
    topics: Topics,
    mut from_verify: Receiver<Verified>,
    to_outbox: Sender<Item>,
) -> Result<(), StageError> {
    let mut tick = tokio::time::interval(TICK);
    loop {
        let batch = tokio::select! {
            b = from_verify.recv() => match b { Some(b) => b, None => break },
            _ = tick.tick() => {
                core.reassembler.poll_timeouts(now());
                report_lost(&mut core, &stats, &topics, &to_outbox);
                continue;
            }
        };
        let Verified { mut buf, items } = batch;
        for (header, start, len) in items {
            let payload = &mut buf[start..start + len];
            match header.kind {
                Kind::Heartbeat => {
                    if heartbeat(&mut core, &stats, &link, &header, payload) {
                        first_sight(&mut core, &topics, &to_outbox, &header);
                    }
                }
                Kind::Symbol => {
                    let t = now();
                    match core.reassembler.handle_symbol(t, &header, payload) {
                        Ok(None) => {}
                        Ok(Some(mut block)) => {
                            let key = BlockKey {
                                session: block.header.session,
                                lane: block.header.lane,
                                seq: block.header.seq,
                            };
                            if !core.reassembler.is_fresh(key) {
                                add(&stats.drop_replay, 1);
                                continue;
                            }
                            match core.gate.open_block(&block.header, &mut block.sealed) {
                                Ok(len) => {
                                    core.reassembler.confirm(t, key, block.header.key_id);
                                    first_sight(&mut core, &topics, &to_outbox, &block.header);
                                    if let Ok(mut l) = link.lock() {
                                        l.record_delivered(key.session, key.lane, key.seq);
                                    }
                                    add(&stats.blocks_ok, 1);
                                    add(&stats.fec_repaired, u64::from(block.repaired));
                                    block.sealed.truncate(len);
                                    let opened = OpenedBlock {
                                        session: key.session,
                                        lane: key.lane,
                                        seq: key.seq,
                                        frame: block.sealed,
                                        verdicts: None,
                                    };
                                    // Never wait on the outbox writer: a slow
                                    // disk must not hold up the next alert
                                    // symbol. A full queue sheds the block,
                                    // counted and reported as a gap.
                                    match to_outbox.try_send(Item::Block(opened)) {
                                        Err(TrySendError::Full(Item::Block(b))) => {
                                            shed(&stats, &topics, &to_outbox, &b);
                                        }
                                        Ok(()) | Err(TrySendError::Full(_)) => {}
                                        Err(TrySendError::Closed(_)) => {
                                            return Err(StageError::Closed("decode"));
                                        }
                                    }
                                }
                                Err(e) => {
                                    count_open_error(&stats, e);
                                    tracing::warn!(seq = key.seq, lane = key.lane.as_str(), error = %e, "Block refused by the AEAD gate.");
                                }
                            }
                        }
                        Err(r) => count_drop(&stats, r),
                    }
                }
            }
        }
    }
    // Input closed: report whatever is already known lost.
    core.reassembler.poll_timeouts(now());
    report_lost(&mut core, &stats, &topics, &to_outbox);
    Ok(())
}

fn heartbeat(
    core: &mut Core,
    stats: &RxStats,
    link: &Mutex<LinkState>,
    header: &Header,
    payload: &[u8],
) -> bool {
    let hb = match core.gate.open_heartbeat(header, payload) {
        Ok(hb) => hb,
        Err(e) => {
            count_open_error(stats, e);
            return false;
        }
    };
    if core
        .hb_seq
        .get(&header.session)
        .is_some_and(|&s| header.seq <= s)
    {
        add(&stats.drop_replay, 1);
        return false;
    }
    if core.hb_seq.len() >= core.max_sessions * 2 {
        core.hb_seq.clear();
    }
    core.hb_seq.insert(header.session, header.seq);
    add(&stats.heartbeats, 1);
    let t = now();
    core.reassembler
        .handle_heartbeat(t, header.session, header.key_id, hb.last_sent);
    if let Ok(mut l) = link.lock() {
        l.skew_ms = hb.sent_unix_ms - unix_ms();
        l.last = Some((t, header.session, hb));
    }
    true
}

/// Report a sender session the first time an authentic datagram of it
/// arrives (a sender restart, or a second sender on the link).
fn first_sight(core: &mut Core, topics: &Topics, to_outbox: &Sender<Item>, header: &Header) {
    if core.seen.contains(&header.session) {
        return;
    }
    if core.seen.len() >= core.max_sessions * 2 {
        core.seen.clear();
    }
    core.seen.insert(header.session);
    tracing::info!(session = %header.session.short_hex(), key_id = header.key_id.0, "New sender session.");
    let body = serde_json::json!({
        "type": "sender_session", "session": header.session.short_hex(), "key_id": header.key_id.0,
        "ts": rfc3339_ns(unix_ms().saturating_mul(1_000_000)),
    });
    let msg = Message {
        topic: topics.audit.clone(),
        payload: body.to_string().into_bytes(),
        retain: false,
    };
    send_event(to_outbox, msg);
}

fn shed(stats: &RxStats, topics: &Topics, to_outbox: &Sender<Item>, b: &OpenedBlock) {
    add(&stats.blocks_shed, 1);
    tracing::error!(
        seq = b.seq,
        lane = b.lane.as_str(),
        "Receiver overloaded: block shed and reported as a gap."
    );
    let body = serde_json::json!({"type": "block_shed", "session": b.session.short_hex(),
        "lane": b.lane.as_str(), "first_block": b.seq, "last_block": b.seq});
    let gap = Message {
        topic: topics.gaps.clone(),
        payload: body.to_string().into_bytes(),
        retain: false,
    };
    send_event(to_outbox, gap);
}

fn report_lost(core: &mut Core, stats: &RxStats, topics: &Topics, to_outbox: &Sender<Item>) {
    let s = core.reassembler.stats();
    stats
        .blocks_lost
        .store(s.blocks_lost, std::sync::atomic::Ordering::Relaxed);
    stats
        .pending_expired
        .store(s.pending_expired, std::sync::atomic::Ordering::Relaxed);
    stats
        .sessions_evicted
        .store(s.sessions_evicted, std::sync::atomic::Ordering::Relaxed);
    while let Some(lost) = core.reassembler.poll_lost() {
        notify_lost(core.files.as_ref(), lost);
        tracing::warn!(session = %lost.session.short_hex(), lane = lost.lane.as_str(), first = lost.first,
            last = lost.last, blocks = lost.count(), "Blocks lost: FEC could not recover them.");
        let ts = rfc3339_ns(unix_ms().saturating_mul(1_000_000));
        let body = serde_json::json!({
            "type": "blocks_lost", "session": lost.session.short_hex(), "lane": lost.lane.as_str(),
            "first_block": lost.first, "last_block": lost.last, "blocks": lost.count(), "ts": ts,
        });
        let msg = Message {
            topic: topics.gaps.clone(),
            payload: body.to_string().into_bytes(),
            retain: false,
        };
        send_event(to_outbox, msg);
    }
}
