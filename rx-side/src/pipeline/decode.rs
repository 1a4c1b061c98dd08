//! Stage 3, `decode`: symbols → rebuilt blocks; heartbeats → link state.
//!
//! ```text
//!  Verified ──symbols──> Reassembler ──CompletedBlock──> open ──OpenedBlock──> outbox
//!           └─heartbeats──────────────────────────────> open ──> link state, tail-loss window
//!  tick ──> expire pending blocks, declare lost blocks ──> Ledger ──> gap entries ──> outbox, gaps file
//! ```
//!
//! Every block's trailer (its own summary and its predecessors') and every
//! heartbeat's marks feed the loss [`Ledger`], which turns lost block
//! ranges into counted, described gap entries. The session [`Book`]
//! refuses sessions older than the newest of their sender, and lets a
//! restarted receiver resume where it stopped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::contract::rfc3339_ns;
use weir_shared::lane::Lane;
use weir_shared::ledger::{GapCause, Ledger, LedgerLimits, split_trailer};
use weir_shared::reassembly::{BlockKey, DropReason, Reassembler, ReassemblyLimits};
use weir_shared::wire::{Header, Kind, SessionId};

use super::files::{FileWork, notify_lost};
use super::ledger::{Admission, Book, GapLog, gap_json};
use super::open::{Gate, OpenError};
use super::outbox::Item;
use super::publish::Topics;
use super::{LinkState, Message, OpenedBlock, StageError, Verified, now, send_event};
use crate::stats::{RxStats, add};

/// How often pending blocks are expired and lost blocks reported.
const TICK: Duration = Duration::from_millis(200);
/// How often the session book is written (when it changed).
const BOOK_EVERY: Duration = TICK;

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
    ledger: Ledger,
    book: Book,
    gaps: GapLog,
    /// First block delivered in this process per session lane: lost blocks
    /// below it were sent while this receiver was not listening.
    first_seen: HashMap<(SessionId, Lane), u64>,
    book_written: Instant,
    /// Lane floors at the last book save (stored at the next one).
    floors_seen: HashMap<SessionId, [Option<u64>; weir_shared::lane::LANES]>,
}

impl Core {
    /// A core with these limits and this AEAD gate, its ledger file and
    /// session book; resumes the sessions the book names.
    pub fn new(
        limits: ReassemblyLimits,
        gate: Gate,
        ledger: &weir_shared::config::LedgerConfig,
    ) -> anyhow::Result<Self> {
        let book = Book::load(&ledger.sessions_path, ledger.allow_older_sessions)?;
        let gaps = GapLog::open(&ledger.gaps_path)?;
        let mut reassembler = Reassembler::new(limits);
        let t = now();
        let mut ledger_core = Ledger::new(LedgerLimits {
            max_summaries: 4096,
            max_sessions: limits.max_sessions,
            resolve_timeout: ledger.resolve_timeout,
        });
        for p in book.resume_points() {
            for lane in Lane::ALL {
                let Some(floor) = p.floors[lane.index()] else {
                    continue;
                };
                // Replays below the floor are refused. Blocks delivered
                // since the save before may not have been committed when
                // the receiver stopped: written down as (possible) losses,
                // so a crash never passes one over.
                reassembler.restore(t, p.session, p.key_id, lane, floor);
                if let Some(unsure) = p.unsure[lane.index()].filter(|&u| u < floor) {
                    ledger_core.lost(
                        t,
                        p.session,
                        lane,
                        unsure,
                        floor - 1,
                        GapCause::ReceiverDown,
                    );
                }
            }
        }
        Ok(Self {
            reassembler,
            gate,
            hb_seq: HashMap::new(),
            seen: HashSet::new(),
            max_sessions: limits.max_sessions,
            files: None,
            ledger: ledger_core,
            book,
            gaps,
            first_seen: HashMap::new(),
            book_written: t,
            floors_seen: HashMap::new(),
        })
    }

    /// Admit an authenticated session (see [`Book`]); counts a refusal.
    fn admit(&mut self, stats: &RxStats, header: &Header) -> bool {
        if self.book.admit(header.session, header.key_id) == Admission::Refused {
            add(&stats.drop_old_session, 1);
            return false;
        }
        true
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
        OpenError::Retired(_) => add(&stats.drop_retired_key, 1),
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

/// Where the decode stage sends what it learns.
struct Out<'a> {
    stats: &'a RxStats,
    link: &'a Mutex<LinkState>,
    topics: &'a Topics,
    to_outbox: &'a Sender<Item>,
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
    let out = Out {
        stats: &stats,
        link: &link,
        topics: &topics,
        to_outbox: &to_outbox,
    };
    let mut tick = tokio::time::interval(TICK);
    loop {
        let batch = tokio::select! {
            b = from_verify.recv() => match b { Some(b) => b, None => break },
            _ = tick.tick() => {
                core.reassembler.poll_timeouts(now());
                report_lost(&mut core, &out, false);
                continue;
            }
        };
        let Verified { mut buf, items } = batch;
        for (header, start, len) in items {
            let payload = &mut buf[start..start + len];
            if core.book.is_refused(header.session) {
                add(&stats.drop_old_session, 1);
                continue;
            }
            match header.kind {
                Kind::Heartbeat => {
                    if heartbeat(&mut core, &out, &header, payload) {
                        first_sight(&mut core, &topics, &to_outbox, &header);
                    }
                }
                Kind::Symbol => {
                    let t = now();
                    match core.reassembler.handle_symbol(t, &header, payload) {
                        Ok(None) => {}
                        Ok(Some(block)) => deliver(&mut core, &out, t, block)?,
                        Err(r) => count_drop(&stats, r),
                    }
                }
            }
        }
    }
    // Input closed: report whatever is already known lost, and what is
    // still waiting to be counted.
    core.reassembler.poll_timeouts(now());
    report_lost(&mut core, &out, true);
    Ok(())
}

/// A rebuilt block: open it, account for it, and hand it to the outbox.
fn deliver(
    core: &mut Core,
    out: &Out<'_>,
    t: Instant,
    mut block: weir_shared::reassembly::CompletedBlock,
) -> Result<(), StageError> {
    let stats = out.stats;
    let key = BlockKey {
        session: block.header.session,
        lane: block.header.lane,
        seq: block.header.seq,
    };
    if !core.reassembler.is_fresh(key) {
        add(&stats.drop_replay, 1);
        return Ok(());
    }
    let len = match core.gate.open_block(&block.header, &mut block.sealed) {
        Ok(len) => len,
        Err(e) => {
            count_open_error(stats, e);
            tracing::warn!(seq = key.seq, lane = key.lane.as_str(), error = %e, "Block refused by the AEAD gate.");
            return Ok(());
        }
    };
    if !core.admit(stats, &block.header) {
        return Ok(());
    }
    let Ok((summaries, frame_len)) = split_trailer(&block.sealed[..len]) else {
        // Authentic but unreadable: a sender speaking another version. Not
        // confirmed, so the block is declared lost and accounted for.
        add(&stats.drop_trailer, 1);
        tracing::error!(
            seq = key.seq,
            lane = key.lane.as_str(),
            "Authentic block without a readable ledger trailer."
        );
        return Ok(());
    };
    core.ledger.describe(key.session, key.lane, &summaries);
    core.reassembler.confirm(t, key, block.header.key_id);
    core.first_seen
        .entry((key.session, key.lane))
        .or_insert(key.seq);
    first_sight(core, out.topics, out.to_outbox, &block.header);
    if let Ok(mut l) = out.link.lock() {
        l.record_delivered(key.session, key.lane, key.seq);
        super::headroom::record_block(stats, &mut l, key.lane, block.tally);
    }
    add(&stats.blocks_ok, 1);
    add(&stats.fec_repaired, u64::from(block.repaired));
    block.sealed.truncate(frame_len);
    let opened = OpenedBlock {
        session: key.session,
        lane: key.lane,
        seq: key.seq,
        frame: block.sealed,
        verdicts: None,
    };
    // Never wait on the outbox writer: a slow disk must not hold up the
    // next alert symbol. A full queue sheds the block, counted and written
    // down in the gap ledger.
    match out.to_outbox.try_send(Item::Block(opened)) {
        Err(TrySendError::Full(Item::Block(b))) => {
            add(&stats.blocks_shed, 1);
            tracing::error!(
                seq = b.seq,
                lane = b.lane.as_str(),
                "Receiver overloaded: block shed and written down as a gap."
            );
            core.ledger
                .lost(t, b.session, b.lane, b.seq, b.seq, GapCause::Shed);
        }
        Ok(()) | Err(TrySendError::Full(_)) => {}
        Err(TrySendError::Closed(_)) => return Err(StageError::Closed("decode")),
    }
    Ok(())
}

fn heartbeat(core: &mut Core, out: &Out<'_>, header: &Header, payload: &[u8]) -> bool {
    let stats = out.stats;
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
    if !core.admit(stats, header) {
        return false;
    }
    if core.hb_seq.len() >= core.max_sessions * 2 {
        core.hb_seq.clear();
    }
    core.hb_seq.insert(header.session, header.seq);
    add(&stats.heartbeats, 1);
    let t = now();
    let first_block = hb.marks.map(|m| m.first_block);
    core.reassembler
        .session_start(t, header.session, header.key_id, first_block);
    core.reassembler
        .handle_heartbeat(t, header.session, header.key_id, hb.last_sent);
    for lane in Lane::ALL {
        let m = hb.marks[lane.index()];
        let tail = hb.last_sent[lane.index()].map(|b| (b, m.next_record));
        core.ledger.mark(
            header.session,
            lane,
            Some((m.first_block, m.first_record)),
            tail,
        );
    }
    for (lane, summary) in &hb.recent {
        core.ledger
            .describe(header.session, *lane, std::slice::from_ref(summary));
    }
    if let Ok(mut l) = out.link.lock() {
        l.skew_ms = hb.sent_unix_ms - unix_ms();
        l.headroom.handle_settings(&hb.fec);
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

/// Lost block ranges into the ledger; the ledger's countable entries out
/// to the gaps topic, the gaps file and the counters. `last`: the input
/// closed, report everything still waiting.
fn report_lost(core: &mut Core, out: &Out<'_>, last: bool) {
    let stats = out.stats;
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
    let t = now();
    while let Some(lost) = core.reassembler.poll_lost() {
        notify_lost(core.files.as_ref(), lost);
        let cause = match core.first_seen.get(&(lost.session, lost.lane)) {
            Some(&first) if lost.first >= first => GapCause::Link,
            _ => GapCause::ReceiverDown,
        };
        if matches!(cause, GapCause::Link) {
            super::headroom::record_lost(out.link, lost);
        }
        core.ledger
            .lost(t, lost.session, lost.lane, lost.first, lost.last, cause);
    }
    let entries = if last {
        core.ledger.flush()
    } else {
        core.ledger.poll(t)
    };
    for e in entries {
        let ts = unix_ms().saturating_mul(1_000_000);
        let body = gap_json(&e, ts);
        tracing::warn!(session = %e.session.short_hex(), lane = e.lane.as_str(), first_block = e.first_block,
            last_block = e.last_block, records = ?e.records, cause = e.cause.as_str(), "Records lost: written down in the gap ledger.");
        add(&stats.gap_entries, 1);
        match e.records {
            Some(n) => add(&stats.records_lost, n),
            None => add(&stats.gap_entries_uncounted, 1),
        }
        core.gaps.append(&body);
        let msg = Message {
            topic: out.topics.gaps.clone(),
            payload: body.to_string().into_bytes(),
            retain: false,
        };
        send_event(out.to_outbox, msg);
    }
    save_book(core, t, last);
}

/// Keep the book's lane floors current, and write it at most every
/// [`BOOK_EVERY`] (and at the end).
fn save_book(core: &mut Core, t: Instant, last: bool) {
    if !last && t.saturating_duration_since(core.book_written) < BOOK_EVERY {
        return;
    }
    core.book_written = t;
    // Today's floors refuse replays after a restart; the floors of the
    // save before mark where delivery is unsure (a block below today's
    // floor may still wait for its outbox commit). At the end the outbox
    // commits everything handed to it before it stops: nothing is unsure.
    for session in core.book.sessions() {
        let Some(floors) = core.reassembler.floors(session) else {
            continue;
        };
        let before = core.floors_seen.insert(session, floors);
        let unsure = if last {
            floors
        } else {
            before.unwrap_or(floors)
        };
        core.book.set_floors(session, floors, unsure);
    }
    if core.floors_seen.len() > core.max_sessions * 2 {
        core.floors_seen.clear();
    }
    if let Err(e) = core.book.flush() {
        tracing::error!(error = %format!("{e:#}"), "Session book not written.");
    }
}
