//! Stage 3, `decode`: symbols → rebuilt blocks; heartbeats → link state.
//!
//! ```text
//!  Verified ──symbols──> Reassembler ──CompletedBlock──> open ──OpenedBlock──> outbox
//!                            │   ▲
//!                       Solve│   │Solved     (a source symbol lost: RaptorQ, here or on `solve` threads)
//!                            ▼   │
//!                            Solver
//!           └─heartbeats──────────────────────────────> open ──> link state, tail-loss window
//!  tick ──> expire pending blocks, declare lost blocks ──> Ledger ──> gap entries ──> outbox, gaps file
//! ```
//!
//! Every block's trailer (its own summary and its predecessors') and every
//! heartbeat's marks feed the loss [`Ledger`], which turns lost block
//! ranges into counted, described gap entries. The session [`Book`]
//! refuses sessions older than the newest of their sender.
//!
//! Every [`TICK`] each lane's floor goes to the outbox behind the blocks
//! handed over before it ([`LaneFloors`]): below it, every block was handed
//! over or written down in the gap ledger. A restarted receiver resumes
//! each lane at its committed floor and marks the blocks the outbox
//! committed above it as delivered, so a block is neither published twice
//! nor passed over across a crash.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::contract::rfc3339_ns;
use weir_shared::heartbeat::{Finished, MAX_PREVIOUS};
use weir_shared::lane::Lane;
use weir_shared::ledger::{
    GapCause, GapEntry, Ledger, LedgerLimits, UNCOUNTED_SESSION_END, split_trailer,
};
use weir_shared::reassembly::{BlockKey, DropReason, Ready, Reassembler, ReassemblyLimits};
use weir_shared::wire::{Header, KeyId, Kind, SessionId};

use super::budget::Budget;
use super::files::{FileWork, notify_lost};
use super::ledger::{Admission, Book, Clock, GapLog, SafeMode, session_start_ms, write_gap};
use super::open::{Gate, OpenError};
use super::outbox::{Item, LaneFloors, Outbox};
use super::publish::Topics;
use super::solve::Solver;
use super::{LinkState, Message, OpenedBlock, StageError, Verified, now, send_event};
use crate::stats::{RxStats, add, charge_cpu, thread_cpu};

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
    ledger: Ledger,
    book: Book,
    /// The gap ledger file, shared with the outbox writer (blocks it
    /// refuses are written down there).
    gaps: Arc<Mutex<GapLog>>,
    /// Per session lane, the first block sent while this process was
    /// listening (the lowest it delivered, or the first after the
    /// heartbeat that first told it of the lane): lost blocks below it
    /// were sent while this receiver was not listening (`receiver_down`),
    /// those from it on were lost on the link.
    listening_from: HashMap<(SessionId, Lane), u64>,
    /// When this process started, ms since the Unix epoch, and
    /// `ledger.max_clock_skew` in ms: the freshness rule's inputs.
    started_ms: i64,
    max_skew_ms: i64,
    /// Said once at the first tick: the receiver started in safe mode.
    safe_mode_event: Option<serde_json::Value>,
    /// Stale heartbeats dropped since the last warning, and when it was.
    stale_heartbeats: (u64, Option<Instant>),
    /// The last write of the session book failed (said once).
    book_failing: bool,
    /// Lane floors last handed to the outbox.
    floors_sent: HashMap<SessionId, [Option<u64>; weir_shared::lane::LANES]>,
    /// What arrived and what the senders say, for the audit log.
    evidence: super::evidence::Evidence,
    /// Decoded blocks not yet committed by the outbox (`limits.max_queued_bytes`).
    queued: Budget,
    /// Threads for RaptorQ solves (`limits.solve_workers`); 0: solved here.
    solve_workers: usize,
    /// The alert fast path (`outbox::read_fast`): a copy of each alert
    /// block handed to the outbox, published while it is committed.
    fast: Option<Sender<OpenedBlock>>,
}

impl Core {
    /// A core with these limits and this AEAD gate, its ledger file and
    /// session book, handing over at most `queued` bytes of blocks the
    /// outbox has not committed yet; resumes the newest session of every
    /// sender where the outbox says it stopped.
    pub fn new(
        (limits, queued): (ReassemblyLimits, Budget),
        gate: Gate,
        ledger: &weir_shared::config::LedgerConfig,
        outbox: &Outbox,
    ) -> anyhow::Result<Self> {
        let mut book = Book::load(&ledger.sessions_path, ledger.allow_older_sessions)?;
        let safe_mode_event = match book.safe_mode().cloned() {
            None => None,
            Some(mode) => {
                // Never an empty book: the sessions the outbox still holds
                // lane state of come back with their floors, so captured
                // traffic of them stays refused.
                let held = outbox
                    .lane_sessions()
                    .map_err(|e| anyhow::anyhow!("reading sessions from the outbox: {e}"))?;
                let recovered = book.recover(&held);
                book.flush()?;
                let (why, aside) = match &mode {
                    SafeMode::Missing => ("missing", None),
                    SafeMode::Unreadable(p) => ("unreadable", Some(p.display().to_string())),
                };
                // A missing book with nothing in the outbox is what a first
                // start looks like: said, audited, but not a warning.
                if matches!(mode, SafeMode::Missing) && recovered == 0 {
                    tracing::info!(book = %ledger.sessions_path.display(), why,
                        "No session book (a first start, or a lost one): safe mode. Sessions that ran before this start are taken only from a fresh heartbeat on.");
                } else {
                    tracing::warn!(book = %ledger.sessions_path.display(), why, recovered,
                        "Session book lost: safe mode. Sessions that ran before this start are taken only from a fresh heartbeat on.");
                }
                Some(serde_json::json!({"type": "session_book_lost", "why": why,
                    "book": ledger.sessions_path.display().to_string(), "moved_to": aside,
                    "sessions_recovered_from_outbox": recovered}))
            }
        };
        let gaps = Arc::new(Mutex::new(GapLog::open(&ledger.gaps_path)?));
        let mut reassembler = Reassembler::new(limits);
        let t = now();
        let resume = outbox
            .resume(|s| book.newest_key(s))
            .map_err(|e| anyhow::anyhow!("reading lane state from the outbox: {e}"))?;
        let mut ledger_core = Ledger::new(LedgerLimits {
            max_summaries: 4096,
            max_sessions: limits.max_sessions,
            resolve_timeout: ledger.resolve_timeout,
        });
        for r in resume {
            // What the stored blocks carried, and where the floor's block
            // starts: a loss across the restart is counted from them.
            ledger_core.describe(r.session, r.lane, &r.summaries);
            if let (Some(floor), Some((record, t_ns))) = (r.floor, r.records) {
                ledger_core.anchor(r.session, r.lane, floor, record, t_ns);
            }
            // Replays below the floor are refused; blocks the outbox
            // committed above it are not taken again. Every other block
            // is still open: delivered if its symbols come, else counted.
            // A lane stopped before its first floor was stored starts at
            // its lowest delivered block, until the session's start is
            // known (its heartbeat, or its successor's).
            if let Some(floor) = r.floor {
                reassembler.restore(t, r.session, r.key_id, r.lane, floor);
            }
            for seq in r.delivered {
                let key = BlockKey {
                    session: r.session,
                    lane: r.lane,
                    seq,
                };
                reassembler.confirm(t, key, r.key_id);
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
            listening_from: HashMap::new(),
            started_ms: unix_ms(),
            max_skew_ms: i64::try_from(ledger.max_clock_skew.as_millis()).unwrap_or(i64::MAX),
            safe_mode_event,
            stale_heartbeats: (0, None),
            book_failing: false,
            floors_sent: HashMap::new(),
            evidence: super::evidence::Evidence::default(),
            queued,
            solve_workers: 0,
            fast: None,
        })
    }

    /// The freshness rule's clock, now.
    fn clock(&self) -> Clock {
        Clock {
            now_ms: unix_ms(),
            started_ms: self.started_ms,
            max_skew_ms: self.max_skew_ms,
        }
    }

    /// Admit an authenticated session (see [`Book`]); counts a refusal.
    /// `fresh_heartbeat`: what is admitted is a heartbeat that passed the
    /// freshness rule.
    fn admit(&mut self, stats: &RxStats, header: &Header, fresh_heartbeat: bool) -> Admission {
        let clock = self.clock();
        let admission = self
            .book
            .admit(header.session, header.key_id, clock, fresh_heartbeat);
        match admission {
            Admission::Refused => add(&stats.drop_old_session, 1),
            Admission::Stale => add(&stats.drop_stale, 1),
            // Written before any of its blocks can be committed: a
            // restarted receiver keeps the lane state of the sessions the
            // book names.
            Admission::New | Admission::Adopt => {
                if let Err(e) = self.book.flush() {
                    tracing::error!(error = %format!("{e:#}"), "Session book not written.");
                }
            }
            Admission::Known => {}
        }
        admission
    }

    /// The gap ledger file, for the outbox writer.
    pub fn gap_log(&self) -> Arc<Mutex<GapLog>> {
        self.gaps.clone()
    }

    /// Solve on `n` threads beside the decode task (0: on it).
    #[must_use]
    pub fn with_solve_workers(mut self, n: usize) -> Self {
        self.solve_workers = n;
        self
    }

    /// Also tell the file output of lost blocks.
    #[must_use]
    pub fn with_files(mut self, to_files: Option<Sender<FileWork>>) -> Self {
        self.files = to_files;
        self
    }

    /// Also hand a copy of each alert block to the fast path.
    #[must_use]
    pub fn with_fast_path(mut self, fast: Sender<OpenedBlock>) -> Self {
        self.fast = Some(fast);
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
    let mut solver = Solver::new(core.solve_workers, stats.clone());
    if let Some(ev) = core.safe_mode_event.take() {
        stats.audit.record("session_book_lost", ev.clone());
        send_event(&to_outbox, Message::event(&topics.audit, &ev));
    }
    loop {
        let batch = tokio::select! {
            biased;
            done = solver.next(), if !solver.is_idle() => {
                let cpu = thread_cpu();
                let ready = core.reassembler.solved(done?);
                take_ready(&mut core, &out, &mut solver, ready)?;
                charge_cpu(&stats.link_cpu_ns, cpu);
                continue;
            }
            b = from_verify.recv(), if !solver.is_full() => match b { Some(b) => b, None => break },
            _ = tick.tick() => {
                core.reassembler.poll_timeouts(now());
                report_lost(&mut core, &out);
                core.evidence.poll(now(), &stats.audit, false);
                continue;
            }
        };
        let cpu = thread_cpu();
        // The batch's share of the receive budget goes back once its
        // datagrams are handled.
        let Verified {
            mut buf,
            items,
            held: _held,
        } = batch;
        for (header, start, len) in items {
            let payload = &mut buf[start..start + len];
            if core.book.is_refused(header.session) {
                add(&stats.drop_old_session, 1);
                continue;
            }
            // A session waiting for a fresh heartbeat: its symbols cost
            // nothing meanwhile; its heartbeats are what can prove it live.
            if header.kind == Kind::Symbol && core.book.is_stale(header.session) {
                add(&stats.drop_stale, 1);
                continue;
            }
            match header.kind {
                Kind::Heartbeat => {
                    if heartbeat(&mut core, &out, &header, payload) {
                        first_sight(&mut core, &out, &header);
                    }
                }
                Kind::Symbol => match core.reassembler.take_symbol(now(), &header, payload) {
                    Ok(ready) => take_ready(&mut core, &out, &mut solver, ready)?,
                    Err(r) => count_drop(&stats, r),
                },
            }
        }
        charge_cpu(&stats.link_cpu_ns, cpu);
    }
    // Input closed: the solves still out come back first; then report
    // what is known lost and can be counted. A run that cannot be counted
    // yet stays open: the stored floors stay below it, so the next start
    // counts it from what arrives then. The final floors wait for room.
    while !solver.is_idle() {
        let ready = core.reassembler.solved(solver.next().await?);
        take_ready(&mut core, &out, &mut solver, ready)?;
    }
    core.reassembler.poll_timeouts(now());
    report_lost(&mut core, &out);
    core.evidence.poll(now(), &stats.audit, true);
    for f in moved_floors(&mut core) {
        to_outbox
            .send(Item::Floors(f))
            .await
            .map_err(|_| StageError::Closed("decode"))?;
    }
    Ok(())
}

/// A rebuilt block goes on to [`deliver`]; one that needs RaptorQ to a
/// solve worker.
fn take_ready(
    core: &mut Core,
    out: &Out<'_>,
    solver: &mut Solver,
    ready: Option<Ready>,
) -> Result<(), StageError> {
    match ready {
        None => Ok(()),
        Some(Ready::Block(block)) => deliver(core, out, now(), block),
        Some(Ready::Solve(job)) if solver.is_inline() => {
            let again = core.reassembler.solved(job.run());
            take_ready(core, out, solver, again)
        }
        Some(Ready::Solve(job)) => {
            solver.submit(job);
            Ok(())
        }
    }
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
    if !matches!(
        core.admit(stats, &block.header, false),
        Admission::New | Admission::Known
    ) {
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
    let summary = summaries.iter().find(|s| s.block == key.seq);
    core.reassembler.confirm(t, key, block.header.key_id);
    core.listening_from
        .entry((key.session, key.lane))
        .and_modify(|f| *f = (*f).min(key.seq))
        .or_insert(key.seq);
    first_sight(core, out, &block.header);
    if let Ok(mut l) = out.link.lock() {
        l.record_delivered(key.session, key.lane, key.seq);
        super::headroom::record_block(stats, &mut l, key.lane, block.tally);
    }
    add(&stats.blocks_ok, 1);
    add(&stats.fec_repaired, u64::from(block.repaired));
    block.sealed.truncate(frame_len);
    // Never wait on the outbox writer: a slow disk must not hold up the
    // next alert symbol. A spent budget or a full queue sheds the block,
    // counted and written down in the gap ledger.
    let Ok(held) = take_room(&core.queued, key.lane, frame_len) else {
        shed(core, stats, t, key);
        return Ok(());
    };
    let opened = OpenedBlock {
        session: key.session,
        lane: key.lane,
        seq: key.seq,
        frame: block.sealed,
        verdicts: None,
        held,
        summary: summary.cloned(),
    };
    // An alert is published from memory while it is committed; a full
    // fast path leaves it to the outbox alone.
    let fast = core.fast.as_ref().filter(|_| key.lane == Lane::Alert);
    let copy = fast.map(|_| opened.copy());
    match out.to_outbox.try_send(Item::Block(opened)) {
        Ok(()) => {
            core.evidence
                .block(key.session, key.lane, key.seq, summary, frame_len);
            if let (Some(fast), Some(copy)) = (fast, copy) {
                let _ = fast.try_send(copy);
            }
        }
        Err(TrySendError::Full(_)) => shed(core, stats, t, key),
        Err(TrySendError::Closed(_)) => return Err(StageError::Closed("decode")),
    }
    Ok(())
}

/// Room for a decoded block of `len` bytes in the queue budget. Bulk
/// blocks are shed (`Err`) when it is spent; alert blocks are small and
/// go on without a share (`Ok(None)`), bounded by the queue's length, so
/// a backlog of bulk blocks on a slow disk never costs an alarm.
fn take_room(queued: &Budget, lane: Lane, len: usize) -> Result<Option<super::budget::Held>, ()> {
    match queued.try_take(len) {
        Some(held) => Ok(Some(held)),
        None if lane == Lane::Alert => Ok(None),
        None => Err(()),
    }
}

/// A rebuilt block the outbox has no room for: counted and written down
/// in the gap ledger.
fn shed(core: &mut Core, stats: &RxStats, t: Instant, key: BlockKey) {
    add(&stats.blocks_shed, 1);
    tracing::error!(
        seq = key.seq,
        lane = key.lane.as_str(),
        "Receiver overloaded: block shed and written down as a gap."
    );
    core.ledger
        .lost(t, key.session, key.lane, key.seq, key.seq, GapCause::Shed);
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
    let clock = core.clock();
    // A later heartbeat of a session already heard from in this run is new
    // by its sequence number, whatever either wall clock did meanwhile (an
    // NTP step, a clock set by hand): the skew follows it. Freshness by
    // the clock guards the first one heard, which a replay could be.
    let heard = core.hb_seq.contains_key(&header.session);
    if !heard
        && !core
            .book
            .is_fresh_heartbeat(header.session, hb.sent_unix_ms, clock)
    {
        stale_heartbeat(core, stats, header, hb.sent_unix_ms, clock);
        return false;
    }
    let admission = core.admit(stats, header, true);
    if matches!(admission, Admission::Refused | Admission::Stale) {
        return false;
    }
    let first_heartbeat = !heard;
    if core.hb_seq.len() >= core.max_sessions * 2 {
        core.hb_seq.clear();
    }
    core.hb_seq.insert(header.session, header.seq);
    add(&stats.heartbeats, 1);
    let t = now();
    let skew_ms = hb.sent_unix_ms - clock.now_ms;
    core.book.note_skew(header.session, skew_ms);
    if let Some(old) = core.book.take_superseded(header.session) {
        close_previous(core, out, header, old, &hb.previous, t);
    }
    if admission == Admission::Adopt {
        adopt(core, out, header, &hb, t);
    } else {
        let first_block = hb.marks.map(|m| m.first_block);
        core.reassembler
            .session_start(t, header.session, header.key_id, first_block);
    }
    if first_heartbeat {
        note_listening(core, header.session, &hb, skew_ms);
    }
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
    core.evidence.heartbeat(header.session, &hb);
    if let Ok(mut l) = out.link.lock() {
        l.skew_ms = skew_ms;
        l.headroom.handle_settings(&hb.fec);
        l.last = Some((t, header.session, hb));
    }
    true
}

/// A heartbeat sent longer than `ledger.max_clock_skew` ago: a replay (or
/// a sender clock far off). Ignored, counted, and warned about at most
/// once a minute.
fn stale_heartbeat(core: &mut Core, stats: &RxStats, header: &Header, sent_ms: i64, clock: Clock) {
    add(&stats.drop_stale, 1);
    let t = now();
    let (n, last) = &mut core.stale_heartbeats;
    *n += 1;
    if last.is_none_or(|l| t.saturating_duration_since(l) >= Duration::from_mins(1)) {
        let behind_s = (clock.now_ms + core.book.skew_ms(header.session) - sent_ms) / 1000;
        tracing::warn!(session = %header.session.short_hex(), sender = header.session.sender(), behind_s, dropped = *n,
            "Stale heartbeats ignored: sent longer ago than ledger.max_clock_skew (a replay, or the sender's clock is off: synchronise the clocks).");
        *n = 0;
        *last = Some(t);
    }
}

/// Safe mode: a session that ran before this receiver had any record of
/// it is taken from this fresh heartbeat on. Each lane starts after the
/// last block the heartbeat says was sent; what was sent before is not
/// accounted here (an earlier installation may have delivered it), and
/// the audit log says so, with the records it covers.
fn adopt(
    core: &mut Core,
    out: &Out<'_>,
    header: &Header,
    hb: &weir_shared::heartbeat::Heartbeat,
    t: Instant,
) {
    let mut lanes = serde_json::Map::new();
    for lane in Lane::ALL {
        let m = hb.marks[lane.index()];
        let floor = hb.last_sent[lane.index()].map_or(m.first_block, |b| b.saturating_add(1));
        core.reassembler
            .restore(t, header.session, header.key_id, lane, floor);
        lanes.insert(
            lane.as_str().to_owned(),
            serde_json::json!({"from_block": floor, "blocks_before": floor.saturating_sub(m.first_block),
                "records_before": m.next_record.saturating_sub(m.first_record)}),
        );
    }
    let body = serde_json::json!({"type": "session_adopted", "session": header.session.short_hex(),
        "sender": header.session.sender(), "epoch": header.session.epoch(), "lanes": lanes,
        "ts": rfc3339_ns(unix_ms().saturating_mul(1_000_000))});
    tracing::warn!(session = %header.session.short_hex(), "Session adopted from a fresh heartbeat after the session book was lost: earlier blocks are not accounted here.");
    out.stats.audit.record("session_adopted", body.clone());
    send_event(out.to_outbox, Message::event(&out.topics.audit, &body));
}

/// A new session of a sender replaced `old` as its newest here, and its
/// heartbeat says how the sender's last sessions of this role that
/// stopped cleanly were numbered (`previous`, oldest first). What of them
/// never arrived here is counted, to the record: `old`'s tail when this
/// receiver was down at its end or its last heartbeats were lost, and
/// the whole of each later one this receiver never heard. Blocks
/// already resolved here stay so.
fn close_previous(
    core: &mut Core,
    out: &Out<'_>,
    header: &Header,
    (old, old_key): (SessionId, KeyId),
    previous: &[Finished],
    t: Instant,
) {
    let same_sender = |s: SessionId| s.sender() == old.sender() && s.role() == old.role();
    let later: Vec<&Finished> = previous
        .iter()
        .skip(previous.len().saturating_sub(MAX_PREVIOUS))
        .filter(|f| {
            let s = SessionId(f.session);
            same_sender(s) && s.epoch() >= old.epoch()
        })
        .collect();
    if later.is_empty() {
        return;
    }
    if later.iter().all(|f| f.session != old.0) {
        // `old` stopped uncleanly, or more sessions were missed here
        // than a heartbeat carries: `old`'s tail is not known.
        if core.seen.contains(&old) {
            // Heard in this run: its heartbeats said how far it got.
            tracing::warn!(session = %old.short_hex(),
                "The previous sender session stopped uncleanly: what it sent after its last heartbeat is not known.");
        } else {
            end_unknown(core, out, old);
        }
    }
    for f in later {
        let finished = SessionId(f.session);
        let whole = finished != old;
        if !whole && core.reassembler.floors(old).is_none() && core.seen.contains(&old) {
            // Heard in this run but no longer tracked (more sessions than
            // `limits.max_sessions`): where it stood is unknown here.
            tracing::warn!(session = %old.short_hex(),
                "The previous session's end is known, but not what arrived of it: its tail is not counted.");
            continue;
        }
        if whole {
            session_missed(core, out, header, f);
        }
        let key_id = if whole { header.key_id } else { old_key };
        core.reassembler
            .session_start(t, finished, key_id, f.lanes.map(|l| l.first_block));
        core.reassembler
            .handle_heartbeat(t, finished, key_id, f.lanes.map(|l| l.last_block()));
        for lane in Lane::ALL {
            let l = f.lanes[lane.index()];
            core.ledger.mark(
                finished,
                lane,
                Some((l.first_block, l.first_record)),
                l.last_block().map(|b| (b, l.end_record)),
            );
        }
    }
}

/// `old` ran when this receiver stopped, and its successor does not say
/// how it ended: from each lane's stored floor on, what it sent is not
/// known. Written down as a gap entry whose count is unknown, with the
/// reason, never passed over.
fn end_unknown(core: &mut Core, out: &Out<'_>, old: SessionId) {
    let Some(floors) = core.reassembler.floors(old) else {
        return;
    };
    for lane in Lane::ALL {
        let Some(floor) = floors[lane.index()] else {
            continue;
        };
        let boundary = core.ledger.boundary(old, lane, floor);
        let e = GapEntry {
            session: old,
            lane,
            first_block: floor,
            last_block: floor,
            first_record: boundary.map(|(r, _)| r),
            records: None,
            t_first_ns: boundary.and_then(|(_, t)| t),
            t_last_ns: None,
            sources: Vec::new(),
            sources_complete: false,
            cause: GapCause::ReceiverDown,
            uncounted: Some(UNCOUNTED_SESSION_END),
        };
        let msg = write_gap(Some(&core.gaps), out.stats, &out.topics.gaps, &e);
        send_event(out.to_outbox, msg);
    }
}

/// A whole session of a sender never reached this receiver (said by its
/// successor): audited, and its loss labelled the link's when it began
/// while this receiver listened.
fn session_missed(core: &mut Core, out: &Out<'_>, header: &Header, f: &Finished) {
    let finished = SessionId(f.session);
    let began_here = session_start_ms(finished).saturating_sub(core.book.skew_ms(finished));
    if began_here >= core.started_ms {
        for lane in Lane::ALL {
            core.listening_from
                .insert((finished, lane), f.lanes[lane.index()].first_block);
        }
    }
    let records: u64 = f
        .lanes
        .iter()
        .map(|l| l.end_record.saturating_sub(l.first_record))
        .sum();
    let body = serde_json::json!({"type": "session_missed", "session": finished.short_hex(),
        "sender": finished.sender(), "epoch": finished.epoch(), "records": records,
        "reported_by": header.session.short_hex(),
        "ts": rfc3339_ns(unix_ms().saturating_mul(1_000_000))});
    tracing::warn!(session = %finished.short_hex(), records,
        "A whole sender session never reached this receiver: counted as lost, from its successor's heartbeat.");
    out.stats.audit.record("session_missed", body.clone());
    send_event(out.to_outbox, Message::event(&out.topics.audit, &body));
}

/// The first heartbeat of a session in this process: from which block on
/// each lane was sent while this receiver listened. A session that began
/// after this process started was heard from its first block; else the
/// blocks after the heartbeat's `last_sent` were.
fn note_listening(
    core: &mut Core,
    session: SessionId,
    hb: &weir_shared::heartbeat::Heartbeat,
    skew_ms: i64,
) {
    let began_here = hb
        .sent_unix_ms
        .saturating_sub(i64::try_from(hb.uptime_ms).unwrap_or(i64::MAX))
        .saturating_sub(skew_ms);
    if core.listening_from.len() >= core.max_sessions * 4 {
        // Bounded like the other per-session maps (it only labels causes).
        core.listening_from.clear();
    }
    for lane in Lane::ALL {
        let i = lane.index();
        let from = if began_here >= core.started_ms {
            hb.marks[i].first_block
        } else {
            // The blocks after `last_sent` that the sender interleaves
            // were on the wire already, partly before this start: their
            // loss is this receiver's down-time, not the link's.
            let interleaved = u64::from(hb.fec[i].interleave.max(1));
            hb.last_sent[i].map_or(0, |b| b.saturating_add(1).saturating_add(interleaved))
        };
        core.listening_from
            .entry((session, lane))
            .and_modify(|f| *f = (*f).min(from))
            .or_insert(from);
    }
}

/// Report a sender session the first time an authentic datagram of it
/// arrives (a sender restart, or a second sender on the link).
fn first_sight(core: &mut Core, out: &Out<'_>, header: &Header) {
    let (stats, topics, to_outbox) = (out.stats, out.topics, out.to_outbox);
    if core.seen.contains(&header.session) {
        return;
    }
    if core.seen.len() >= core.max_sessions * 2 {
        core.seen.clear();
    }
    core.seen.insert(header.session);
    tracing::info!(session = %header.session.short_hex(), key_id = header.key_id.0, "New sender session.");
    stats.audit.record(
        "sender_session",
        serde_json::json!({"session": header.session.short_hex(), "sender": header.session.sender(),
            "epoch": header.session.epoch(), "key_id": header.key_id.0}),
    );
    let body = serde_json::json!({
        "type": "sender_session", "session": header.session.short_hex(), "key_id": header.key_id.0,
        "ts": rfc3339_ns(unix_ms().saturating_mul(1_000_000)),
    });
    let msg = Message::event(&topics.audit, &body);
    send_event(to_outbox, msg);
}

/// Lost block ranges into the ledger; the ledger's countable entries (and
/// those that waited `ledger.resolve_timeout`) out to the gaps topic, the
/// gaps file and the counters.
fn report_lost(core: &mut Core, out: &Out<'_>) {
    let stats = out.stats;
    let s = core.reassembler.stats();
    stats
        .blocks_lost
        .store(s.blocks_lost, std::sync::atomic::Ordering::Relaxed);
    stats
        .pending_expired
        .store(s.pending_expired, std::sync::atomic::Ordering::Relaxed);
    stats
        .pending_evicted
        .store(s.pending_evicted, std::sync::atomic::Ordering::Relaxed);
    stats
        .sessions_evicted
        .store(s.sessions_evicted, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut l) = out.link.lock()
        && let Some(session) = l.last.as_ref().map(|(_, s, _)| *s)
    {
        let unresolved = core.reassembler.unresolved(session);
        l.record_unresolved(session, unresolved);
    }
    let t = now();
    while let Some(lost) = core.reassembler.poll_lost() {
        notify_lost(core.files.as_ref(), lost);
        let cause = match core.listening_from.get(&(lost.session, lost.lane)) {
            Some(&first) if lost.first >= first => GapCause::Link,
            _ => GapCause::ReceiverDown,
        };
        if matches!(cause, GapCause::Link) {
            super::headroom::record_lost(out.link, lost);
        }
        core.ledger
            .lost(t, lost.session, lost.lane, lost.first, lost.last, cause);
    }
    // A measured clock skew that moved is kept (rarely: by over a second);
    // a failing disk is said once, not every tick.
    match core.book.flush() {
        Ok(()) => core.book_failing = false,
        Err(e) if !core.book_failing => {
            core.book_failing = true;
            tracing::error!(error = %format!("{e:#}"), "Session book not written.");
        }
        Err(_) => {}
    }
    for e in core.ledger.poll(t) {
        let msg = write_gap(Some(&core.gaps), stats, &out.topics.gaps, &e);
        send_event(out.to_outbox, msg);
    }
    send_floors(core, out.to_outbox);
}

/// The lane floors of the newest sessions that moved since last handed
/// over. A lane's floor stays below a lost block until its gap entry is
/// written down, so the outbox never stores a floor past a loss the gaps
/// file does not have yet.
fn moved_floors(core: &mut Core) -> Vec<LaneFloors> {
    let mut out = Vec::new();
    for session in core.book.sessions() {
        let (Some(mut floors), Some(key_id)) = (
            core.reassembler.floors(session),
            core.reassembler.session_key_id(session),
        ) else {
            continue;
        };
        for lane in Lane::ALL {
            let i = lane.index();
            if let (Some(f), Some(p)) = (floors[i], core.ledger.pending_from(session, lane)) {
                floors[i] = Some(f.min(p));
            }
        }
        if core.floors_sent.get(&session) != Some(&floors) {
            let records = Lane::ALL
                .map(|l| floors[l.index()].and_then(|f| core.ledger.boundary(session, l, f)));
            out.push(LaneFloors {
                session,
                key_id,
                floors,
                records,
            });
        }
    }
    out
}

/// Hand the lane floors that moved to the outbox, behind the blocks
/// already handed over. A full queue: tried again next tick.
fn send_floors(core: &mut Core, to_outbox: &Sender<Item>) {
    for f in moved_floors(core) {
        if to_outbox.try_send(Item::Floors(f)).is_ok() {
            if core.floors_sent.len() >= core.max_sessions * 2 {
                core.floors_sent.clear();
            }
            core.floors_sent.insert(f.session, f.floors);
        }
    }
}

#[cfg(test)]
mod tests {
    use weir_shared::lane::Lane;
    use weir_shared::seal::Keyring;
    use weir_shared::wire::{KeyId, Role};

    use super::*;

    fn limits() -> ReassemblyLimits {
        ReassemblyLimits {
            max_block_bytes: 1 << 20,
            max_pending_blocks: 16,
            block_timeout: Duration::from_secs(2),
            gap_timeout: Duration::from_secs(3),
            window_blocks: 1024,
            max_sessions: 4,
        }
    }

    #[test]
    fn blocks_interleaved_on_the_wire_at_a_restart_are_down_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = weir_shared::config::LedgerConfig {
            gaps_path: dir.path().join("gaps.jsonl"),
            sessions_path: dir.path().join("sessions.json"),
            ..Default::default()
        };
        std::fs::write(&ledger.sessions_path, "{}").expect("book");
        let outbox = Outbox::open(&dir.path().join("outbox.redb")).expect("outbox");
        let mut core = Core::new(
            (limits(), Budget::new(1 << 20)),
            Gate::new(Keyring::default()),
            &ledger,
            &outbox,
        )
        .expect("core");
        // A session begun an hour before this receiver: bulk block 5 fully
        // sent, blocks 6..=9 interleaved on the wire when it came up.
        let session = SessionId::new(3, Role::Daemon, 100, [9; 4]);
        let mut fec = [weir_shared::heartbeat::LaneFec::default(); 2];
        fec[Lane::Bulk.index()].interleave = 4;
        let hb = weir_shared::heartbeat::Heartbeat {
            sent_unix_ms: core.started_ms,
            uptime_ms: 3_600_000,
            last_sent: [None, Some(5)],
            counters: weir_shared::heartbeat::TxCounters::default(),
            spool_depth: 0,
            config_fingerprint: [0; 8],
            marks: Default::default(),
            fec,
            recent: Vec::new(),
            previous: Vec::new(),
            health: None,
        };
        note_listening(&mut core, session, &hb, 0);
        assert_eq!(
            core.listening_from.get(&(session, Lane::Bulk)),
            Some(&10),
            "a loss of blocks 6..=9 is receiver_down, from 10 on the link's"
        );
    }

    #[test]
    fn a_restarted_core_takes_no_committed_block_again_and_keeps_the_rest_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let session = SessionId::new(3, Role::Daemon, 100, [9; 4]);
        let older = SessionId::new(3, Role::Daemon, 99, [8; 4]);
        let ledger = weir_shared::config::LedgerConfig {
            gaps_path: dir.path().join("gaps.jsonl"),
            sessions_path: dir.path().join("sessions.json"),
            ..Default::default()
        };
        std::fs::write(&ledger.sessions_path, "{}").expect("book");
        let mut book = Book::load(&ledger.sessions_path, false).expect("book");
        let clock = Clock {
            now_ms: 100_000,
            started_ms: 0,
            max_skew_ms: 300_000,
        };
        book.admit(older, KeyId(1), clock, true);
        book.admit(session, KeyId(1), clock, true);
        book.flush().expect("flush");
        let outbox = Outbox::open(&dir.path().join("outbox.redb")).expect("outbox");
        // The killed receiver: bulk resolved below 10; 10 and 12 committed
        // above it, 11 and 13 still in flight.
        let floors = |session| LaneFloors {
            session,
            key_id: KeyId(1),
            floors: [None, Some(10)],
            records: [None, None],
        };
        outbox
            .commit_lane_state(floors(session), &[(Lane::Bulk, 10), (Lane::Bulk, 12)])
            .expect("commit");
        outbox
            .commit_lane_state(floors(older), &[(Lane::Bulk, 10)])
            .expect("commit");
        let core = Core::new(
            (limits(), Budget::new(1 << 20)),
            Gate::new(Keyring::default()),
            &ledger,
            &outbox,
        )
        .expect("core");
        let fresh = |seq| {
            core.reassembler.is_fresh(BlockKey {
                session,
                lane: Lane::Bulk,
                seq,
            })
        };
        assert!(!fresh(9), "below the floor: a replay");
        assert!(!fresh(10) && !fresh(12), "committed: never taken again");
        assert!(fresh(11) && fresh(13), "not committed: still open");
        assert_eq!(
            core.reassembler.floors(older),
            None,
            "only the newest resumes"
        );
        assert_eq!(
            outbox.resume(|_| Some(KeyId(1))).expect("resume").len(),
            1,
            "the older session's state is gone"
        );
    }

    #[test]
    fn a_spent_budget_sheds_bulk_blocks_but_never_alerts() {
        let queued = Budget::new(64 * 1024);
        let first = take_room(&queued, Lane::Bulk, 64 * 1024).expect("room");
        assert!(first.is_some());
        assert!(take_room(&queued, Lane::Bulk, 1024).is_err(), "bulk shed");
        assert!(
            matches!(take_room(&queued, Lane::Alert, 1024), Ok(None)),
            "an alert goes on without a share"
        );
        drop(first);
        assert!(matches!(take_room(&queued, Lane::Alert, 1024), Ok(Some(_))));
    }
}
