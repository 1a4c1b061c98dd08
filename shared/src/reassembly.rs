//! Block reassembly and loss accounting on the receiver.
//!
//! Symbols of many blocks arrive interleaved, duplicated and reordered. The
//! reassembler keeps one [`BlockDecoder`] per pending `(session, lane, seq)`
//! and hands a block out as soon as RaptorQ can rebuild it. A block whose
//! source symbols all arrived comes out of [`Reassembler::take_symbol`] at
//! once; one that needs a RaptorQ solve comes out as a [`Solve`], to run on
//! any thread and come back through [`Reassembler::solved`], while the
//! block stays pending ("being solved") and keeps the symbols that still
//! arrive for it.
//!
//! Two kinds of state, with different trust:
//!
//! * **Pending blocks** are created by *unauthenticated* symbols, so they
//!   are strictly bounded (count, symbols per block) and expire after
//!   `block_timeout`. A flood of junk costs a counter and bounded memory.
//! * **Lane windows** (what was delivered, what is known to exist) move only
//!   on *authenticated* events: a block that passed the AEAD
//!   ([`Reassembler::confirm`]) or a heartbeat's "last block sent"
//!   ([`Reassembler::handle_heartbeat`]). So a forged sequence number can
//!   never make us declare real blocks lost, and a replayed symbol of a
//!   delivered block is recognised and dropped.
//!
//! A block known to exist but not delivered within `gap_timeout` is
//! reported through [`Reassembler::poll_lost`] with its sequence number:
//! nothing hangs, nothing is lost silently.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::fec::{BlockDecoder, FecError, Step, check_geometry, symbol_esi};
use crate::lane::{LANES, Lane};
use crate::wire::{Header, KeyId, SessionId};

/// Highest block sequence number a lane can use. `u64::MAX` is outside the
/// sequence space, so a lane's `floor` (one past its resolved blocks) always
/// fits in a `u64`; a symbol, delivery or heartbeat naming it is ignored
/// rather than allowed to overflow the window arithmetic.
const MAX_SEQ: u64 = u64::MAX - 1;

/// Bounds on reassembly state; all from validated config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Largest sealed block accepted.
    pub max_block_bytes: u32,
    /// Most blocks being reassembled at once.
    pub max_pending_blocks: usize,
    /// A pending block not rebuilt within this time is dropped.
    pub block_timeout: Duration,
    /// A block known to exist but not delivered within this time is lost.
    pub gap_timeout: Duration,
    /// Delivered sequence numbers remembered per lane (replay window).
    pub window_blocks: u64,
    /// Sender sessions tracked at once.
    pub max_sessions: usize,
}

/// Identity of a block on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// Sender session.
    pub session: SessionId,
    /// Lane.
    pub lane: Lane,
    /// Sequence within (session, lane).
    pub seq: u64,
}

/// A rebuilt (still sealed) block.
#[derive(Debug)]
pub struct CompletedBlock {
    /// Block-level header (payload id zeroed): the AEAD's associated data.
    pub header: Header,
    /// The sealed block.
    pub sealed: Vec<u8>,
    /// Source symbols `K`.
    pub source_symbols: u32,
    /// Symbols received until the block could be rebuilt.
    pub symbols_used: u32,
    /// Source symbols that were missing and rebuilt from repair symbols.
    pub repaired: u32,
    /// Which symbols arrived before the block was rebuilt (FEC headroom).
    pub tally: crate::fec::SymbolTally,
}

/// Why a symbol was not used. Every variant is counted by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// The block was already delivered or declared lost (extra repair
    /// symbols after completion, or a replay).
    #[error("block already resolved")]
    Resolved,
    /// Below the replay window of its session and lane.
    #[error("block older than the replay window")]
    TooOld,
    /// The geometry (length, symbol size) is invalid or over the limits.
    #[error("invalid block geometry: {0}")]
    Geometry(FecError),
    /// Header fields disagree with earlier symbols of the same block.
    #[error("symbol inconsistent with its block")]
    Inconsistent,
    /// Too many blocks pending; the symbol's block could not be started.
    #[error("pending-block table full")]
    PendingFull,
    /// More symbols than a block can use.
    #[error("symbol beyond the per-block budget")]
    Excess,
}

/// Blocks declared lost: `first..=last` of one lane of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostRange {
    /// Sender session.
    pub session: SessionId,
    /// Lane.
    pub lane: Lane,
    /// First lost sequence number.
    pub first: u64,
    /// Last lost sequence number (inclusive).
    pub last: u64,
}

impl LostRange {
    /// Number of blocks in the range.
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}

struct Pending {
    /// `None` while the block is being solved ([`Solve`]).
    decoder: Option<BlockDecoder>,
    /// Source symbols of the block.
    k: u32,
    /// Symbols taken, duplicates included (the per-block budget).
    received: u32,
    /// Symbols that came while the block was being solved.
    late: Vec<(u32, Vec<u8>)>,
    header: Header,
    first_seen: Instant,
    /// When its last symbol arrived: a block expires `block_timeout` after
    /// it stopped receiving, not after it started, so a receiver slowed by
    /// a busy CPU (symbols still coming, late) never drops a block that is
    /// still arriving. The 2K + 16 budget bounds how long that can last.
    last_seen: Instant,
}

/// What a symbol, or a solve, made ready.
#[derive(Debug)]
pub enum Ready {
    /// A rebuilt block.
    Block(CompletedBlock),
    /// A block RaptorQ must rebuild: [`Solve::run`] it, on any thread.
    Solve(Solve),
}

/// A block with enough symbols for RaptorQ to try, taken out of the
/// reassembler to be solved.
#[derive(Debug)]
pub struct Solve {
    key: BlockKey,
    header: Header,
    decoder: BlockDecoder,
}

impl Solve {
    /// The block being solved.
    pub fn key(&self) -> BlockKey {
        self.key
    }

    /// Run RaptorQ: the heavy step. Hand the result to
    /// [`Reassembler::solved`].
    #[must_use]
    pub fn run(mut self) -> Solved {
        let block = self.decoder.solve();
        Solved {
            key: self.key,
            header: self.header,
            decoder: self.decoder,
            block,
        }
    }
}

/// A [`Solve`] that has run.
#[derive(Debug)]
pub struct Solved {
    key: BlockKey,
    header: Header,
    decoder: BlockDecoder,
    block: Option<Vec<u8>>,
}

/// A rebuilt block with what its decoder saw.
fn completed(header: Header, decoder: &BlockDecoder, sealed: Vec<u8>) -> CompletedBlock {
    let k = decoder.source_symbols();
    CompletedBlock {
        header,
        sealed,
        source_symbols: k,
        symbols_used: decoder.received(),
        repaired: k.saturating_sub(decoder.source_received()),
        tally: decoder.tally(),
    }
}

#[derive(Debug, Default)]
struct LaneWindow {
    /// Every sequence number below `floor` is resolved.
    floor: u64,
    /// Delivered sequence numbers at or above `floor`.
    delivered: BTreeSet<u64>,
    /// Highest sequence number known (authenticated) to exist.
    known_upto: Option<u64>,
    /// When each stretch of sequence numbers became known to exist:
    /// `(upto, when)`, `upto` ascending. A block `b` has been known (and,
    /// undelivered, known missing) since the first mark with `upto >= b`,
    /// so every block gets its own `gap_timeout`, counted from when it was
    /// first known, however many runs are lost before it.
    known_at: VecDeque<(u64, Instant)>,
    /// Whether the window has been anchored by a first authenticated event.
    anchored: bool,
    /// Anchored by a block before any heartbeat said where the session
    /// started: the first heartbeat may still lower the floor to the
    /// session's first block, so blocks sent before we listened are
    /// accounted for.
    lowerable: bool,
    /// Where a lowerable window was anchored.
    anchor: u64,
}

struct SessionState {
    lanes: [LaneWindow; LANES],
    last_auth: Instant,
    key_id: KeyId,
}

/// Counters of the reassembler (monotonic).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Pending blocks dropped by `block_timeout`.
    pub pending_expired: u64,
    /// Blocks declared lost.
    pub blocks_lost: u64,
    /// Sessions evicted by the session cap.
    pub sessions_evicted: u64,
    /// Pending blocks given up to let another session have its fair share
    /// of the pending table.
    pub pending_evicted: u64,
}

/// The receiver's reassembly core. Sans-IO: the caller passes `now`.
pub struct Reassembler {
    limits: ReassemblyLimits,
    pending: HashMap<BlockKey, Pending>,
    sessions: HashMap<SessionId, SessionState>,
    lost: VecDeque<LostRange>,
    stats: ReassemblyStats,
}

impl Reassembler {
    /// A reassembler bounded by `limits`.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            limits,
            pending: HashMap::new(),
            sessions: HashMap::new(),
            lost: VecDeque::new(),
            stats: ReassemblyStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Blocks currently pending.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Sessions currently tracked.
    pub fn sessions_len(&self) -> usize {
        self.sessions.len()
    }

    /// Feed one symbol datagram (already CRC-checked and parsed), and
    /// solve on the spot when RaptorQ is needed: the block once rebuilt.
    /// [`Reassembler::take_symbol`] and [`Reassembler::solved`] split the
    /// same work so solves can run elsewhere.
    pub fn handle_symbol(
        &mut self,
        now: Instant,
        header: &Header,
        symbol: &[u8],
    ) -> Result<Option<CompletedBlock>, DropReason> {
        let mut ready = self.take_symbol(now, header, symbol)?;
        loop {
            match ready {
                None => return Ok(None),
                Some(Ready::Block(b)) => return Ok(Some(b)),
                Some(Ready::Solve(job)) => ready = self.solved(job.run()),
            }
        }
    }

    /// Feed one symbol datagram (already CRC-checked and parsed). Cheap:
    /// a block rebuilt from its source symbols comes back at once; one
    /// that needs RaptorQ comes back as a [`Solve`] to run anywhere and
    /// hand to [`Reassembler::solved`]. Until then the block stays pending
    /// ("being solved"): its later symbols are kept for the case the solve
    /// falls short, counted against the same per-block budget.
    pub fn take_symbol(
        &mut self,
        now: Instant,
        header: &Header,
        symbol: &[u8],
    ) -> Result<Option<Ready>, DropReason> {
        let key = BlockKey {
            session: header.session,
            lane: header.lane,
            seq: header.seq,
        };
        if header.seq > MAX_SEQ {
            return Err(DropReason::TooOld);
        }
        if let Some(state) = self.sessions.get(&header.session) {
            let w = &state.lanes[header.lane.index()];
            if w.anchored {
                if header.seq < w.floor {
                    return Err(if w.floor - header.seq <= self.limits.window_blocks {
                        DropReason::Resolved
                    } else {
                        DropReason::TooOld
                    });
                }
                if w.delivered.contains(&header.seq) {
                    return Err(DropReason::Resolved);
                }
            }
        }
        let block_header = Header {
            payload_id: 0,
            ..*header
        };
        let pending = if let Some(p) = self.pending.get_mut(&key) {
            if p.header != block_header {
                return Err(DropReason::Inconsistent);
            }
            p
        } else {
            // Geometry first (cheap), so an impossible block never takes
            // another block's slot.
            check_geometry(
                header.transfer_len,
                header.symbol_size,
                self.limits.max_block_bytes,
            )
            .map_err(DropReason::Geometry)?;
            self.admit(now, key)?;
            let decoder = BlockDecoder::new(
                header.transfer_len,
                header.symbol_size,
                self.limits.max_block_bytes,
            )
            .map_err(DropReason::Geometry)?;
            self.pending.entry(key).or_insert(Pending {
                k: decoder.source_symbols(),
                decoder: Some(decoder),
                received: 0,
                late: Vec::new(),
                header: block_header,
                first_seen: now,
                last_seen: now,
            })
        };
        // A block never needs more than 2K + 16 symbols; anything beyond is
        // a flood against one block.
        if pending.received >= pending.k.saturating_mul(2).saturating_add(16) {
            return Err(DropReason::Excess);
        }
        let Some(decoder) = &mut pending.decoder else {
            // Being solved: kept for the case the solve falls short.
            symbol_esi(header.payload_id, symbol.len(), header.symbol_size)
                .map_err(DropReason::Geometry)?;
            pending.received += 1;
            pending.last_seen = now;
            pending.late.push((header.payload_id, symbol.to_vec()));
            return Ok(None);
        };
        let step = decoder
            .add(header.payload_id, symbol)
            .map_err(DropReason::Geometry)?;
        pending.received += 1;
        pending.last_seen = now;
        Ok(match step {
            Step::Wait => None,
            Step::Block(sealed) => {
                let p = self.pending.remove(&key).ok_or(DropReason::Resolved)?;
                let decoder = p.decoder.ok_or(DropReason::Resolved)?;
                Some(Ready::Block(completed(p.header, &decoder, sealed)))
            }
            Step::Solve => pending.decoder.take().map(|decoder| {
                Ready::Solve(Solve {
                    key,
                    header: pending.header,
                    decoder,
                })
            }),
        })
    }

    /// A solve is back. Rebuilt: the block, and its pending state is gone.
    /// Short of symbols: the symbols that came meanwhile go in, and if
    /// any was new, another [`Solve`]; else the block waits for more. A
    /// block that expired while it was out is dropped with it (or handed
    /// out, if rebuilt: the caller's replay check still applies).
    pub fn solved(&mut self, done: Solved) -> Option<Ready> {
        let Solved {
            key,
            header,
            mut decoder,
            block,
        } = done;
        if let Some(sealed) = block {
            self.pending.remove(&key);
            return Some(Ready::Block(completed(header, &decoder, sealed)));
        }
        let p = self.pending.get_mut(&key)?;
        if p.decoder.is_some() || p.header != header {
            // Expired and begun again meanwhile: the newer state stands.
            return None;
        }
        // After a solve raptorq holds the block, so a symbol is new
        // (`Step::Solve`) or a duplicate, never a block by itself; each was
        // checked when taken.
        let late = std::mem::take(&mut p.late);
        let again = late.iter().fold(false, |again, (payload_id, symbol)| {
            matches!(decoder.add(*payload_id, symbol), Ok(Step::Solve)) || again
        });
        if again {
            return Some(Ready::Solve(Solve {
                key,
                header,
                decoder,
            }));
        }
        if let Some(p) = self.pending.get_mut(&key) {
            p.decoder = Some(decoder);
        }
        None
    }

    /// Whether a rebuilt block may still be delivered (not a replay).
    pub fn is_fresh(&self, key: BlockKey) -> bool {
        self.sessions.get(&key.session).is_none_or(|s| {
            let w = &s.lanes[key.lane.index()];
            !w.anchored || (key.seq >= w.floor && !w.delivered.contains(&key.seq))
        })
    }

    /// An authenticated block was delivered. Moves the lane window.
    pub fn confirm(&mut self, now: Instant, key: BlockKey, key_id: KeyId) {
        if key.seq > MAX_SEQ {
            return;
        }
        let pending_min = self.pending_min(key.session, key.lane);
        let window = self.limits.window_blocks;
        let gap_timeout = self.limits.gap_timeout;
        let state = Self::session_entry(
            &mut self.sessions,
            &mut self.stats,
            self.limits.max_sessions,
            now,
            key.session,
            key_id,
        );
        let w = &mut state.lanes[key.lane.index()];
        if !w.anchored {
            // Joining mid-stream: start at the first block we see (or still
            // have in reassembly) until a heartbeat says where the session
            // started ([`Reassembler::session_start`]).
            w.floor = pending_min.map_or(key.seq, |m| m.min(key.seq));
            w.anchored = true;
            w.lowerable = true;
            w.anchor = w.floor;
        }
        if key.seq < w.floor {
            return;
        }
        w.delivered.insert(key.seq);
        w.note_known(now, key.seq);
        // Keep the window bounded: a delivery far ahead forces the floor up,
        // and whatever is skipped is reported lost at once.
        if key.seq >= w.floor.saturating_add(window) {
            let new_floor = (key.seq - window).saturating_add(1);
            Self::force_floor(
                w,
                key.session,
                key.lane,
                new_floor,
                &mut self.lost,
                &mut self.stats,
            );
        }
        Self::advance(
            w,
            now,
            gap_timeout,
            key.session,
            key.lane,
            &mut self.lost,
            &mut self.stats,
        );
    }

    /// An authenticated heartbeat: `last_sent[lane]` is the highest block
    /// sequence the sender has fully sent on that lane, if any.
    pub fn handle_heartbeat(
        &mut self,
        now: Instant,
        session: SessionId,
        key_id: KeyId,
        last_sent: [Option<u64>; LANES],
    ) {
        let mins: [Option<u64>; LANES] = Lane::ALL.map(|l| self.pending_min(session, l));
        let gap_timeout = self.limits.gap_timeout;
        let state = Self::session_entry(
            &mut self.sessions,
            &mut self.stats,
            self.limits.max_sessions,
            now,
            session,
            key_id,
        );
        for lane in Lane::ALL {
            let Some(last) = last_sent[lane.index()] else {
                continue;
            };
            let last = last.min(MAX_SEQ);
            let w = &mut state.lanes[lane.index()];
            if !w.anchored {
                w.floor = mins[lane.index()]
                    .map_or(last.saturating_add(1), |m| m.min(last.saturating_add(1)));
                w.anchored = true;
            }
            w.note_known(now, last);
            Self::advance(
                w,
                now,
                gap_timeout,
                session,
                lane,
                &mut self.lost,
                &mut self.stats,
            );
        }
    }

    /// An authenticated heartbeat's first block per lane: where the session
    /// started. A lane not yet anchored starts there; a lane anchored by a
    /// block (nothing below it was delivered here) is lowered to it once.
    /// Either way the blocks sent before this receiver listened are then
    /// declared lost after `gap_timeout`, never passed over in silence.
    pub fn session_start(
        &mut self,
        now: Instant,
        session: SessionId,
        key_id: KeyId,
        first_block: [u64; LANES],
    ) {
        let state = Self::session_entry(
            &mut self.sessions,
            &mut self.stats,
            self.limits.max_sessions,
            now,
            session,
            key_id,
        );
        for lane in Lane::ALL {
            let w = &mut state.lanes[lane.index()];
            let first = first_block[lane.index()];
            if !w.anchored {
                w.floor = first;
                w.anchored = true;
            } else if w.lowerable && first < w.anchor {
                // Everything from the anchor up to the floor was resolved
                // here already; below the anchor nothing was seen.
                if w.floor - w.anchor <= self.limits.window_blocks {
                    w.delivered.extend(w.anchor..w.floor);
                    w.floor = first;
                } else {
                    Self::push_lost_run(
                        &mut self.lost,
                        &mut self.stats,
                        session,
                        lane,
                        first,
                        w.anchor - 1,
                    );
                }
            }
            w.lowerable = false;
        }
    }

    /// Resume a session's lane at `floor` (every block below it was
    /// resolved before this receiver restarted): replays below it are
    /// refused, and blocks from it on are accounted for.
    pub fn restore(
        &mut self,
        now: Instant,
        session: SessionId,
        key_id: KeyId,
        lane: Lane,
        floor: u64,
    ) {
        let state = Self::session_entry(
            &mut self.sessions,
            &mut self.stats,
            self.limits.max_sessions,
            now,
            session,
            key_id,
        );
        let w = &mut state.lanes[lane.index()];
        if !w.anchored || w.floor < floor {
            w.floor = floor;
            w.delivered.retain(|&s| s >= floor);
            w.anchored = true;
            w.lowerable = false;
        }
    }

    /// Every block below `floor` of a lane is resolved (delivered or
    /// declared lost); `None` for a lane not yet anchored.
    pub fn floors(&self, session: SessionId) -> Option<[Option<u64>; LANES]> {
        self.sessions.get(&session).map(|s| {
            Lane::ALL.map(|l| {
                let w = &s.lanes[l.index()];
                w.anchored.then_some(w.floor)
            })
        })
    }

    /// Drop pending blocks older than `block_timeout` and declare lost every
    /// block known missing for longer than `gap_timeout`. Call periodically.
    pub fn poll_timeouts(&mut self, now: Instant) {
        self.expire(now);
        let gap = self.limits.gap_timeout;
        for (session, state) in &mut self.sessions {
            for lane in Lane::ALL {
                let w = &mut state.lanes[lane.index()];
                Self::advance(w, now, gap, *session, lane, &mut self.lost, &mut self.stats);
            }
        }
    }

    /// Next range of blocks declared lost, if any.
    pub fn poll_lost(&mut self) -> Option<LostRange> {
        self.lost.pop_front()
    }

    /// Per lane, blocks of `session` known to exist (delivered past, or
    /// named by a heartbeat) and not yet resolved: still on their way, or
    /// lost and waiting out `gap_timeout`.
    pub fn unresolved(&self, session: SessionId) -> [u64; LANES] {
        self.sessions.get(&session).map_or([0; LANES], |s| {
            Lane::ALL.map(|l| s.lanes[l.index()].unresolved())
        })
    }

    /// The key id a session authenticated with, if the session is known.
    pub fn session_key_id(&self, session: SessionId) -> Option<KeyId> {
        self.sessions.get(&session).map(|s| s.key_id)
    }

    fn expire(&mut self, now: Instant) {
        let timeout = self.limits.block_timeout;
        let before = self.pending.len();
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.last_seen) < timeout);
        self.stats.pending_expired += (before - self.pending.len()) as u64;
    }

    /// Pending blocks of `lane`, per session: counted from the pending
    /// table (at most `max_pending_blocks` long) when a new block asks for
    /// a slot, never on a symbol of a block already pending.
    fn held(&self, lane: Lane) -> HashMap<SessionId, usize> {
        let mut held = HashMap::new();
        for k in self.pending.keys().filter(|k| k.lane == lane) {
            *held.entry(k.session).or_insert(0) += 1;
        }
        held
    }

    /// Pending-table slots of a lane: the alert lane has its own
    /// `max_pending_blocks / 8` (at least one), the bulk lane the rest, so
    /// no amount of bulk blocks can take an alert's place, nor the
    /// reverse.
    fn lane_slots(&self, lane: Lane) -> usize {
        let max = self.limits.max_pending_blocks;
        let alert = (max / 8).clamp(1, max.max(1));
        match lane {
            Lane::Alert => alert,
            Lane::Bulk => max.saturating_sub(alert).max(1),
        }
    }

    fn has_room(&self, lane: Lane) -> bool {
        self.pending.len() < self.limits.max_pending_blocks
            && self.pending.keys().filter(|k| k.lane == lane).count() < self.lane_slots(lane)
    }

    /// Room for a new pending block `key`. Within its lane's slots every
    /// session pending there has a fair share (the slots over the number
    /// of such sessions, the newcomer included): when the lane is full, a
    /// session under its share takes the slot of the oldest block of the
    /// session holding the most, if that one is over its share; else the
    /// block is refused. So a key holder whose sender leaves blocks
    /// half-sent (or a flood it makes) cannot keep another session out.
    fn admit(&mut self, now: Instant, key: BlockKey) -> Result<(), DropReason> {
        if self.has_room(key.lane) {
            return Ok(());
        }
        self.expire(now);
        if self.has_room(key.lane) {
            return Ok(());
        }
        let slots = self.lane_slots(key.lane);
        let held = self.held(key.lane);
        let mine = held.get(&key.session).copied().unwrap_or(0);
        let sessions = held.len() + usize::from(mine == 0);
        let fair = slots / sessions.max(1);
        if mine >= fair {
            return Err(DropReason::PendingFull);
        }
        let Some((hog, held)) = held.into_iter().max_by_key(|(_, n)| *n) else {
            return Err(DropReason::PendingFull);
        };
        if held <= fair {
            return Err(DropReason::PendingFull);
        }
        let victim = self
            .pending
            .iter()
            .filter(|(k, _)| k.session == hog && k.lane == key.lane)
            .min_by_key(|(_, p)| p.first_seen)
            .map(|(k, _)| *k)
            .ok_or(DropReason::PendingFull)?;
        self.pending.remove(&victim);
        self.stats.pending_evicted += 1;
        Ok(())
    }

    fn pending_min(&self, session: SessionId, lane: Lane) -> Option<u64> {
        self.pending
            .keys()
            .filter(|k| k.session == session && k.lane == lane)
            .map(|k| k.seq)
            .min()
    }

    fn session_entry<'a>(
        sessions: &'a mut HashMap<SessionId, SessionState>,
        stats: &mut ReassemblyStats,
        max_sessions: usize,
        now: Instant,
        session: SessionId,
        key_id: KeyId,
    ) -> &'a mut SessionState {
        if !sessions.contains_key(&session) && sessions.len() >= max_sessions {
            // Evict the session that authenticated least recently.
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_auth)
                .map(|(id, _)| *id)
            {
                sessions.remove(&oldest);
                stats.sessions_evicted += 1;
            }
        }
        let state = sessions.entry(session).or_insert_with(|| SessionState {
            lanes: Default::default(),
            last_auth: now,
            key_id,
        });
        state.last_auth = now;
        state
    }

    fn push_lost_run(
        lost: &mut VecDeque<LostRange>,
        stats: &mut ReassemblyStats,
        session: SessionId,
        lane: Lane,
        first: u64,
        last: u64,
    ) {
        // Saturating: a run can span most of the sequence space.
        stats.blocks_lost = stats.blocks_lost.saturating_add(last - first + 1);
        if let Some(prev) = lost.back_mut()
            && prev.session == session
            && prev.lane == lane
            && prev.last + 1 == first
        {
            prev.last = last;
            return;
        }
        lost.push_back(LostRange {
            session,
            lane,
            first,
            last,
        });
    }

    fn force_floor(
        w: &mut LaneWindow,
        session: SessionId,
        lane: Lane,
        new_floor: u64,
        lost: &mut VecDeque<LostRange>,
        stats: &mut ReassemblyStats,
    ) {
        // Whole runs at a time: the skipped span may be huge (a receiver
        // joining a long-running session), the delivered set is not.
        while w.floor < new_floor {
            if w.delivered.remove(&w.floor) {
                w.floor += 1;
                continue;
            }
            let next = w
                .delivered
                .range(w.floor..)
                .next()
                .copied()
                .unwrap_or(new_floor)
                .min(new_floor);
            Self::push_lost_run(lost, stats, session, lane, w.floor, next - 1);
            w.floor = next;
        }
        w.prune_known();
    }

    fn advance(
        w: &mut LaneWindow,
        now: Instant,
        gap_timeout: Duration,
        session: SessionId,
        lane: Lane,
        lost: &mut VecDeque<LostRange>,
        stats: &mut ReassemblyStats,
    ) {
        if !w.anchored {
            return;
        }
        loop {
            if w.delivered.remove(&w.floor) {
                w.floor += 1;
                continue;
            }
            match w.known_upto {
                Some(upto) if w.floor <= upto => {}
                _ => break,
            }
            let since = w.known_since(w.floor).unwrap_or(now);
            if now.saturating_duration_since(since) < gap_timeout {
                break;
            }
            // Declare the whole run up to the next delivered (or last
            // known) block at once; the blocks after it are judged by
            // their own marks on the next turn of the loop.
            let end = w
                .delivered
                .range(w.floor..)
                .next()
                .map_or(upto_or(w.known_upto, w.floor), |&d| d - 1);
            Self::push_lost_run(lost, stats, session, lane, w.floor, end);
            w.floor = end + 1;
        }
        w.prune_known();
    }
}

/// Marks closer together than this are merged (bounds the marks a lane
/// keeps to about `gap_timeout / KNOWN_MERGE`).
const KNOWN_MERGE: Duration = Duration::from_millis(100);

impl LaneWindow {
    /// Blocks up to `upto` are known to exist from `now` on (if not before).
    fn note_known(&mut self, now: Instant, upto: u64) {
        if self.known_upto.is_some_and(|u| u >= upto) {
            return;
        }
        self.known_upto = Some(upto);
        match self.known_at.back_mut() {
            Some((last, at)) if now.saturating_duration_since(*at) < KNOWN_MERGE => *last = upto,
            _ => self.known_at.push_back((upto, now)),
        }
    }

    /// Since when block `seq` has been known to exist.
    fn known_since(&self, seq: u64) -> Option<Instant> {
        self.known_at
            .iter()
            .find(|(upto, _)| *upto >= seq)
            .map(|(_, at)| *at)
    }

    /// Forget the marks wholly below the floor, but the newest: a floor
    /// lowered later (the session's first heartbeat) still finds a time,
    /// the latest, so a block is never declared early.
    fn prune_known(&mut self) {
        while self.known_at.len() > 1
            && self
                .known_at
                .front()
                .is_some_and(|(upto, _)| *upto < self.floor)
        {
            self.known_at.pop_front();
        }
    }

    /// Blocks known to exist and not yet resolved: at or above the floor,
    /// up to the highest known, and not delivered.
    fn unresolved(&self) -> u64 {
        match self.known_upto {
            Some(upto) if self.anchored && upto >= self.floor => {
                let span = upto - self.floor + 1;
                span.saturating_sub(self.delivered.range(self.floor..=upto).count() as u64)
            }
            _ => 0,
        }
    }
}

/// The last known block, or `floor` when none is known.
fn upto_or(known_upto: Option<u64>, floor: u64) -> u64 {
    known_upto.unwrap_or(floor).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fec::{BlockEncoder, repair_symbols, source_symbols};
    use crate::wire::Kind;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    const SYM: u16 = 128;

    fn limits() -> ReassemblyLimits {
        ReassemblyLimits {
            max_block_bytes: 1 << 20,
            max_pending_blocks: 64,
            block_timeout: Duration::from_secs(2),
            gap_timeout: Duration::from_secs(3),
            window_blocks: 1024,
            max_sessions: 4,
        }
    }

    fn datagrams(
        session: SessionId,
        lane: Lane,
        seq: u64,
        block: &[u8],
        ratio: u32,
    ) -> Vec<(Header, Vec<u8>)> {
        let mut enc = BlockEncoder::new(SYM, 1 << 20).expect("enc");
        let k = source_symbols(block.len() as u32, SYM);
        let mut out = Vec::new();
        enc.encode(block, repair_symbols(k, ratio, 2), |pid, s| {
            out.push((
                Header {
                    kind: Kind::Symbol,
                    key_id: KeyId(1),
                    lane,
                    session,
                    seq,
                    transfer_len: block.len() as u32,
                    symbol_size: SYM,
                    payload_id: pid,
                },
                s.to_vec(),
            ));
        })
        .expect("encode");
        out
    }

    fn block(seq: u64) -> Vec<u8> {
        (0..1000 + seq as usize * 7)
            .map(|i| (i as u64 * 31 + seq) as u8)
            .collect()
    }

    #[test]
    fn interleaved_duplicated_reordered_blocks_all_complete_once() {
        let s = SessionId([1; 16]);
        let mut rng = StdRng::seed_from_u64(7);
        let mut all: Vec<(Header, Vec<u8>)> = (0..20)
            .flat_map(|seq| datagrams(s, Lane::Bulk, seq, &block(seq), 250))
            .collect();
        let dups: Vec<_> = all
            .iter()
            .filter(|_| rng.random_bool(0.2))
            .cloned()
            .collect();
        all.extend(dups);
        all.shuffle(&mut rng);
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        let mut done = std::collections::BTreeMap::new();
        for (h, sym) in &all {
            match r.handle_symbol(t0, h, sym) {
                Ok(Some(b)) => {
                    let key = BlockKey {
                        session: s,
                        lane: Lane::Bulk,
                        seq: b.header.seq,
                    };
                    assert!(r.is_fresh(key));
                    r.confirm(t0, key, KeyId(1));
                    assert!(
                        done.insert(b.header.seq, b.sealed).is_none(),
                        "block delivered twice"
                    );
                }
                Ok(None) | Err(DropReason::Resolved) => {}
                Err(e) => panic!("unexpected drop {e:?}"),
            }
        }
        assert_eq!(done.len(), 20);
        for (seq, data) in done {
            assert_eq!(data, block(seq));
        }
        assert_eq!(r.pending_len(), 0);
        r.poll_timeouts(t0 + Duration::from_mins(1));
        assert_eq!(r.poll_lost(), None);
    }

    /// Symbols of block `seq` (its length and one to three first source
    /// symbols lost chosen by `seq`), in an order of the seed `seq`: the
    /// block needs a solve.
    fn lossy(seq: u64) -> (usize, Vec<(Header, Vec<u8>)>) {
        let len = 500 + (seq as usize * 37) % 2500;
        let mut dg = datagrams(SessionId([6; 16]), Lane::Bulk, seq, &data(seq, len), 1000);
        dg.drain(..=(seq as usize % 3));
        dg.shuffle(&mut StdRng::seed_from_u64(seq));
        (len, dg)
    }

    /// A block of [`lossy`] whose first solve, with what [`until_solve`]
    /// feeds, falls short (about one in a hundred): searched, so every
    /// test that needs one has one.
    fn short_block() -> u64 {
        (0..3000u64)
            .find(|&seq| {
                let mut r = Reassembler::new(limits());
                let (job, _) = until_solve(&mut r, Instant::now(), &lossy(seq).1);
                r.solved(job.run()).is_none()
            })
            .expect("a short solve in 3000 blocks")
    }

    fn data(seq: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + seq as usize) as u8).collect()
    }

    /// Feed symbols until the block asks for a solve; the rest are left.
    fn until_solve<'a>(
        r: &mut Reassembler,
        t: Instant,
        dg: &'a [(Header, Vec<u8>)],
    ) -> (Solve, &'a [(Header, Vec<u8>)]) {
        for (i, (h, sym)) in dg.iter().enumerate() {
            match r.take_symbol(t, h, sym) {
                Ok(None) => {}
                Ok(Some(Ready::Solve(job))) => return (job, &dg[i + 1..]),
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("no solve asked for");
    }

    /// A block out being solved stays pending: its later symbols are kept,
    /// not refused and not a new block, and a solve that falls short (one
    /// in about a hundred with exactly `K` symbols) takes them and asks
    /// again. Seeds are searched for such a solve, so the test always
    /// holds one.
    #[test]
    fn a_short_solve_takes_the_symbols_that_came_while_it_was_out() {
        let t0 = Instant::now();
        let mut short = 0;
        for seq in 0..3000u64 {
            let (len, dg) = lossy(seq);
            let mut r = Reassembler::new(limits());
            let (job, rest) = until_solve(&mut r, t0, &dg);
            assert_eq!(job.key().seq, seq);
            for (h, sym) in rest {
                assert!(
                    matches!(r.take_symbol(t0, h, sym), Ok(None)),
                    "kept, seq {seq}"
                );
            }
            assert_eq!(r.pending_len(), 1, "still one block pending");
            let b = match r.solved(job.run()) {
                Some(Ready::Block(b)) => b,
                Some(Ready::Solve(again)) => {
                    short += 1;
                    match r.solved(again.run()) {
                        Some(Ready::Block(b)) => b,
                        other => panic!("seq {seq}: not rebuilt with every symbol: {other:?}"),
                    }
                }
                None => panic!("seq {seq}: new symbols came, yet no solve"),
            };
            assert_eq!(b.sealed, data(seq, len), "seq {seq}");
            assert_eq!(r.pending_len(), 0);
            if short >= 3 {
                return;
            }
        }
        panic!("only {short} short solves in 3000 blocks");
    }

    /// A short solve with nothing new meanwhile leaves the block waiting,
    /// and the next new symbol asks again.
    #[test]
    fn a_short_solve_with_nothing_new_waits_for_the_next_symbol() {
        let t0 = Instant::now();
        let seq = short_block();
        let (len, dg) = lossy(seq);
        let mut r = Reassembler::new(limits());
        let (job, rest) = until_solve(&mut r, t0, &dg);
        assert!(r.solved(job.run()).is_none(), "short, nothing new: waits");
        assert_eq!(r.pending_len(), 1);
        let mut block = None;
        for (h, sym) in rest {
            match r.take_symbol(t0, h, sym) {
                Ok(Some(Ready::Solve(job))) => match r.solved(job.run()) {
                    Some(Ready::Block(b)) => {
                        block = Some(b.sealed);
                        break;
                    }
                    None => {}
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("every new symbol asks for a solve: {other:?}"),
            }
        }
        assert_eq!(block, Some(data(seq, len)));
        assert_eq!(r.pending_len(), 0);
    }

    /// While a block is being solved, every symbol of it counts against
    /// its 2K + 16 budget; repeats of a symbol it already had add nothing.
    #[test]
    fn a_block_being_solved_counts_its_symbols_against_the_budget() {
        let t0 = Instant::now();
        let seq = short_block();
        let (len, dg) = lossy(seq);
        let mut r = Reassembler::new(limits());
        let (job, _) = until_solve(&mut r, t0, &dg);
        let k = source_symbols(len as u32, SYM);
        // K taken before the solve; then repeats of the first one.
        let mut taken = k;
        let (h, sym) = &dg[0];
        for _ in 0..4 * k + 64 {
            match r.take_symbol(t0, h, sym) {
                Ok(None) => taken += 1,
                Err(DropReason::Excess) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(taken, 2 * k + 16);
        assert!(r.solved(job.run()).is_none(), "repeats asked for no solve");
        assert_eq!(r.pending_len(), 1);
        assert_eq!(
            r.take_symbol(t0, h, sym).map(|_| ()),
            Err(DropReason::Excess)
        );
    }

    /// A block that expires while out is dropped with it if the solve
    /// falls short, and handed out if rebuilt (the caller's replay check
    /// still applies).
    #[test]
    fn a_block_expired_while_being_solved_comes_back_only_if_rebuilt() {
        let t0 = Instant::now();
        let short = short_block();
        // Every block before the first short one rebuilds.
        let rebuilt = u64::from(short == 0);
        for seq in [short, rebuilt] {
            let mut r = Reassembler::new(limits());
            let (job, _) = until_solve(&mut r, t0, &lossy(seq).1);
            r.poll_timeouts(t0 + Duration::from_secs(10));
            assert_eq!(r.pending_len(), 0);
            assert_eq!(r.stats().pending_expired, 1);
            match r.solved(job.run()) {
                Some(Ready::Block(b)) => assert_eq!(b.header.seq, rebuilt),
                None => assert_eq!(seq, short, "a rebuilt block is handed out"),
                Some(Ready::Solve(_)) => panic!("an expired block asked for a solve"),
            }
            assert_eq!(r.pending_len(), 0);
        }
    }

    #[test]
    fn replayed_symbols_of_a_delivered_block_are_refused() {
        let s = SessionId([2; 16]);
        let dg = datagrams(s, Lane::Alert, 0, &block(0), 500);
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        let mut delivered = 0;
        for (h, sym) in &dg {
            if let Ok(Some(b)) = r.handle_symbol(t0, h, sym) {
                r.confirm(
                    t0,
                    BlockKey {
                        session: s,
                        lane: Lane::Alert,
                        seq: b.header.seq,
                    },
                    KeyId(1),
                );
                delivered += 1;
            }
        }
        assert_eq!(delivered, 1);
        for (h, sym) in &dg {
            assert_eq!(
                r.handle_symbol(t0, h, sym).map(|b| b.is_some()),
                Err(DropReason::Resolved)
            );
        }
    }

    #[test]
    fn a_block_still_receiving_symbols_does_not_expire() {
        // A slow receiver: the symbols of one block trickle in, one every
        // 1.5 s, over longer than block_timeout (2 s) in all.
        let s = SessionId([8; 16]);
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        let dg = datagrams(s, Lane::Bulk, 0, &block(0), 100);
        let mut done = None;
        for (i, (h, sym)) in dg.iter().enumerate() {
            let t = t0 + Duration::from_millis(1500 * i as u64);
            r.poll_timeouts(t);
            if let Ok(Some(b)) = r.handle_symbol(t, h, sym) {
                done = Some(b);
                break;
            }
        }
        assert!(
            done.is_some(),
            "rebuilt though it took {} symbols",
            dg.len()
        );
        assert_eq!(r.stats().pending_expired, 0);
        // One that stops receiving still expires.
        let one = &datagrams(s, Lane::Bulk, 1, &block(1), 100)[0];
        assert!(r.handle_symbol(t0, &one.0, &one.1).is_ok());
        r.poll_timeouts(t0 + Duration::from_secs(2));
        assert_eq!(r.pending_len(), 0);
        assert_eq!(r.stats().pending_expired, 1);
    }

    #[test]
    fn block_that_cannot_complete_times_out_and_is_reported_lost() {
        let s = SessionId([3; 16]);
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        // Block 0 arrives whole; block 1 only one symbol; block 2 whole.
        for seq in [0u64, 2] {
            for (h, sym) in &datagrams(s, Lane::Bulk, seq, &block(seq), 100) {
                if let Ok(Some(_)) = r.handle_symbol(t0, h, sym) {
                    r.confirm(
                        t0,
                        BlockKey {
                            session: s,
                            lane: Lane::Bulk,
                            seq,
                        },
                        KeyId(1),
                    );
                }
            }
        }
        let one = &datagrams(s, Lane::Bulk, 1, &block(1), 100)[0];
        assert_eq!(
            r.handle_symbol(t0, &one.0, &one.1).map(|b| b.is_some()),
            Ok(false)
        );
        r.poll_timeouts(t0 + Duration::from_secs(1));
        assert_eq!(r.poll_lost(), None, "not yet: within gap timeout");
        r.poll_timeouts(t0 + Duration::from_secs(4));
        assert_eq!(
            r.poll_lost(),
            Some(LostRange {
                session: s,
                lane: Lane::Bulk,
                first: 1,
                last: 1
            })
        );
        assert_eq!(r.pending_len(), 0, "the stuck block was expired");
        assert_eq!(r.stats().blocks_lost, 1);
    }

    #[test]
    fn heartbeat_reveals_tail_loss() {
        let s = SessionId([4; 16]);
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        for (h, sym) in &datagrams(s, Lane::Bulk, 0, &block(0), 100) {
            if let Ok(Some(_)) = r.handle_symbol(t0, h, sym) {
                r.confirm(
                    t0,
                    BlockKey {
                        session: s,
                        lane: Lane::Bulk,
                        seq: 0,
                    },
                    KeyId(1),
                );
            }
        }
        // Blocks 1..=3 were sent but nothing of them arrived.
        r.handle_heartbeat(t0, s, KeyId(1), [None, Some(3)]);
        r.poll_timeouts(t0 + Duration::from_secs(10));
        assert_eq!(
            r.poll_lost(),
            Some(LostRange {
                session: s,
                lane: Lane::Bulk,
                first: 1,
                last: 3
            })
        );
    }

    #[test]
    fn many_lost_runs_are_all_reported_one_gap_timeout_after_they_were_known() {
        // Every other block of 0..40 delivered, the rest lost: 20 runs of
        // one block each, all known missing at t0. Each run must come out
        // one gap_timeout after t0, not one gap_timeout after the run
        // before it was declared.
        let s = SessionId([5; 16]);
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        let key = |seq| BlockKey {
            session: s,
            lane: Lane::Bulk,
            seq,
        };
        r.session_start(t0, s, KeyId(1), [0, 0]);
        for seq in (1..40).step_by(2) {
            r.confirm(t0, key(seq), KeyId(1));
        }
        r.handle_heartbeat(t0, s, KeyId(1), [None, Some(39)]);
        assert_eq!(
            r.unresolved(s),
            [0, 20],
            "the lost blocks lag until reported"
        );
        let gap = limits().gap_timeout;
        r.poll_timeouts(t0 + gap.saturating_sub(Duration::from_millis(1)));
        assert_eq!(r.poll_lost(), None, "not before gap_timeout");
        r.poll_timeouts(t0 + gap);
        let lost: Vec<u64> = std::iter::from_fn(|| r.poll_lost())
            .map(|l| l.first)
            .collect();
        assert_eq!(lost, (0..40).step_by(2).collect::<Vec<_>>());
        assert_eq!(r.unresolved(s), [0, 0]);
        // A block known later gets its own full timeout.
        r.handle_heartbeat(t0 + gap, s, KeyId(1), [None, Some(41)]);
        r.poll_timeouts(t0 + gap + gap / 2);
        assert_eq!(r.poll_lost(), None);
        r.poll_timeouts(t0 + gap * 2);
        assert_eq!(r.poll_lost().map(|l| (l.first, l.last)), Some((40, 41)));
    }

    #[test]
    fn session_start_accounts_for_blocks_sent_before_we_listened() {
        let s = SessionId([6; 16]);
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        let key = |seq| BlockKey {
            session: s,
            lane: Lane::Bulk,
            seq,
        };
        // Blocks 5 and 6 arrive first; 6 while 5 is still pending.
        for seq in [5, 6] {
            for (h, sym) in &datagrams(s, Lane::Bulk, seq, &block(seq), 100) {
                if let Ok(Some(_)) = r.handle_symbol(t0, h, sym) {
                    r.confirm(t0, key(seq), KeyId(1));
                }
            }
        }
        // The first heartbeat says the session started at block 2: blocks
        // 2..=4 were sent before we listened and are owed; 5 and 6 were
        // delivered and must not be reported.
        r.session_start(t0, s, KeyId(1), [0, 2]);
        r.handle_heartbeat(t0, s, KeyId(1), [None, Some(6)]);
        assert!(!r.is_fresh(key(5)), "a replay of block 5 is still refused");
        r.poll_timeouts(t0 + Duration::from_secs(10));
        assert_eq!(
            r.poll_lost(),
            Some(LostRange {
                session: s,
                lane: Lane::Bulk,
                first: 2,
                last: 4
            })
        );
        assert_eq!(r.poll_lost(), None);
        // A restarted receiver resumes at a stored floor: below it is old.
        let mut again = Reassembler::new(limits());
        again.restore(t0, s, KeyId(1), Lane::Bulk, 7);
        again.session_start(t0, s, KeyId(1), [0, 2]);
        assert!(!again.is_fresh(key(6)), "below the stored floor");
        assert!(again.is_fresh(key(7)));
    }

    #[test]
    fn junk_flood_is_bounded() {
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let mut full = 0;
        for i in 0..10_000u64 {
            let mut s = [0u8; 16];
            rng.fill(&mut s);
            let h = Header {
                kind: Kind::Symbol,
                key_id: KeyId(1),
                lane: Lane::Bulk,
                session: SessionId(s),
                seq: i,
                transfer_len: 100_000,
                symbol_size: SYM,
                payload_id: 0,
            };
            if matches!(
                r.handle_symbol(t0, &h, &[0u8; SYM as usize]),
                Err(DropReason::PendingFull)
            ) {
                full += 1;
            }
        }
        // The bulk lane's slots: 64 less the alert lane's 8.
        assert_eq!(r.pending_len(), 56);
        assert_eq!(full, 10_000 - 56);
        assert_eq!(r.stats().pending_evicted, 0, "one block each: all fair");
        // After the timeout the table frees itself.
        r.poll_timeouts(t0 + Duration::from_secs(3));
        assert_eq!(r.pending_len(), 0);
        assert_eq!(r.stats().pending_expired, 56);
    }

    /// A symbol of block `seq` of `session` on `lane` that never
    /// completes it (the first of 800 source symbols).
    fn partial(session: SessionId, lane: Lane, seq: u64) -> Header {
        Header {
            kind: Kind::Symbol,
            key_id: KeyId(1),
            lane,
            session,
            seq,
            transfer_len: 100_000,
            symbol_size: SYM,
            payload_id: 0,
        }
    }

    #[test]
    fn a_bulk_flood_never_takes_the_alert_lanes_slots_nor_the_reverse() {
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        let hog = SessionId([1; 16]);
        let sym = [0u8; SYM as usize];
        let refused = (0..1000)
            .filter(|&seq| {
                r.take_symbol(t0, &partial(hog, Lane::Bulk, seq), &sym)
                    .is_err()
            })
            .count();
        assert_eq!(refused, 1000 - 56);
        // The alert lane still has its 8 slots: another session's alert
        // blocks complete.
        let real = SessionId([2; 16]);
        for seq in 0..8 {
            let mut done = None;
            for (h, s) in datagrams(real, Lane::Alert, seq, &block(seq), 100) {
                if let Ok(Some(Ready::Block(b))) = r.take_symbol(t0, &h, &s) {
                    let key = BlockKey {
                        session: real,
                        lane: Lane::Alert,
                        seq,
                    };
                    r.confirm(t0, key, KeyId(1));
                    done = Some(b);
                }
            }
            assert_eq!(done.map(|b| b.sealed), Some(block(seq)), "alert {seq}");
        }
        // And a flood of alert blocks stays within its 8.
        let alert_hog = SessionId([3; 16]);
        let refused = (0..100)
            .filter(|&seq| {
                r.take_symbol(t0, &partial(alert_hog, Lane::Alert, seq), &sym)
                    .is_err()
            })
            .count();
        assert_eq!(refused, 100 - 8);
        assert_eq!(r.pending_len(), 64);
    }

    #[test]
    fn a_session_hogging_the_table_yields_a_fair_share_to_another() {
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        let hog = SessionId([1; 16]);
        let sym = [0u8; SYM as usize];
        // Alone, a session may use every bulk slot.
        for seq in 0..56 {
            let t = t0 + Duration::from_millis(seq);
            assert!(matches!(
                r.take_symbol(t, &partial(hog, Lane::Bulk, seq), &sym),
                Ok(None)
            ));
        }
        assert_eq!(
            r.take_symbol(t0, &partial(hog, Lane::Bulk, 56), &sym)
                .map(|_| ()),
            Err(DropReason::PendingFull)
        );
        // Another session's blocks still complete: each takes the slot of
        // the hog's oldest block while the hog is over its share.
        let real = SessionId([2; 16]);
        let t1 = t0 + Duration::from_millis(500);
        let admitted: Vec<u64> = (0..40)
            .filter(|&seq| {
                let dg = datagrams(real, Lane::Bulk, seq, &block(seq), 0);
                matches!(r.take_symbol(t1, &dg[0].0, &dg[0].1), Ok(None))
            })
            .collect();
        // Half each: the newcomer's 28 in place of the hog's 28 oldest;
        // beyond its half it is refused like anyone.
        assert_eq!(admitted, (0..28).collect::<Vec<_>>());
        assert_eq!(r.stats().pending_evicted, 28);
        assert_eq!(r.pending_len(), 56);
        assert!(
            r.pending
                .keys()
                .filter(|k| k.session == hog)
                .all(|k| k.seq >= 28),
            "the hog's newest blocks are the ones left"
        );
        // The newcomer's blocks complete.
        let mut delivered = 0;
        for &seq in &admitted {
            for (h, s) in datagrams(real, Lane::Bulk, seq, &block(seq), 0)
                .iter()
                .skip(1)
            {
                if let Ok(Some(Ready::Block(b))) = r.take_symbol(t1, h, s) {
                    assert_eq!(b.sealed, block(seq));
                    delivered += 1;
                }
            }
        }
        assert_eq!(delivered, 28);
        // The hog's blocks expire at block_timeout like any.
        r.poll_timeouts(t1 + Duration::from_secs(3));
        assert_eq!(r.pending_len(), 0);
    }

    #[test]
    fn inconsistent_header_for_pending_block_is_refused() {
        let s = SessionId([5; 16]);
        let dg = datagrams(s, Lane::Bulk, 0, &block(0), 100);
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        assert_eq!(
            r.handle_symbol(t0, &dg[0].0, &dg[0].1).map(|b| b.is_some()),
            Ok(false)
        );
        let forged = Header {
            transfer_len: dg[1].0.transfer_len + 8,
            ..dg[1].0
        };
        assert_eq!(
            r.handle_symbol(t0, &forged, &dg[1].1).map(|b| b.is_some()),
            Err(DropReason::Inconsistent)
        );
    }

    #[test]
    fn session_cap_evicts_least_recent() {
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        for i in 0..10u8 {
            r.handle_heartbeat(
                t0 + Duration::from_secs(u64::from(i)),
                SessionId([i; 16]),
                KeyId(1),
                [Some(0), Some(0)],
            );
        }
        assert_eq!(r.sessions_len(), 4);
        assert_eq!(r.stats().sessions_evicted, 6);
        assert!(r.session_key_id(SessionId([9; 16])).is_some());
        assert!(r.session_key_id(SessionId([0; 16])).is_none());
    }

    /// Found by the `reassembly` fuzz target: sequence numbers at the top
    /// of the `u64` range overflowed the window arithmetic (a panic in
    /// debug builds, a wrapped window in release).
    #[test]
    fn sequence_numbers_at_the_top_of_the_range_do_not_overflow() {
        let s = SessionId([5; 16]);
        let key = |seq| BlockKey {
            session: s,
            lane: Lane::Bulk,
            seq,
        };
        let t0 = Instant::now();
        let mut r = Reassembler::new(limits());
        r.confirm(t0, key(5), KeyId(1));
        // Was `key.seq + 1 - window`.
        r.confirm(t0, key(u64::MAX), KeyId(1));
        // Was `end + 1` on the last missing run.
        r.handle_heartbeat(t0, s, KeyId(1), [None, Some(u64::MAX)]);
        r.poll_timeouts(t0 + Duration::from_secs(10));
        let lost = r.poll_lost().expect("the announced blocks are lost");
        assert_eq!((lost.first, lost.last), (6, u64::MAX - 1));
        assert_eq!(lost.count(), u64::MAX - 6);
        assert_eq!(r.poll_lost(), None);
        // Was `blocks_lost += count`: a second run that size overflowed it.
        let s2 = SessionId([6; 16]);
        r.handle_heartbeat(t0, s2, KeyId(1), [Some(0), None]);
        r.handle_heartbeat(t0, s2, KeyId(1), [Some(u64::MAX), None]);
        r.poll_timeouts(t0 + Duration::from_secs(20));
        assert_eq!(r.stats().blocks_lost, u64::MAX);

        // A lane whose window sits at the top of the range.
        let mut r = Reassembler::new(limits());
        r.confirm(t0, key(u64::MAX - 1), KeyId(1));
        let dg = datagrams(s, Lane::Bulk, u64::MAX - 10, &block(0), 100);
        // Was `header.seq + window_blocks`.
        assert_eq!(
            r.handle_symbol(t0, &dg[0].0, &dg[0].1).map(|b| b.is_some()),
            Err(DropReason::Resolved)
        );
        let dg = datagrams(s, Lane::Bulk, u64::MAX, &block(0), 100);
        assert_eq!(
            r.handle_symbol(t0, &dg[0].0, &dg[0].1).map(|b| b.is_some()),
            Err(DropReason::TooOld)
        );
        assert!(!r.is_fresh(key(u64::MAX - 2)));
    }
}
