//! Stage 5, `pace`: order datagrams on the link and hold them to the rate.
//!
//! ```text
//!  alert blocks ───────┐  strict priority, first to last:
//!  alert repeats (due) ┤   1. fresh alert blocks
//!  bulk repeats (due) ─┼──> burst (≤ burst_datagrams and the tokens earned, one length) ──> send
//!  bulk blocks ────────┘   2. alert repeats   3. bulk repeats   4. fresh bulk blocks
//!                          symbols of up to `interleave_blocks` blocks round-robin
//! ```
//!
//! Interleaving spreads a burst of loss over several blocks, each of which
//! can repair a little, instead of wiping out one. A source slower than
//! the link would leave the pacer one block in hand, sent alone and whole
//! into any burst; so a lane sends fresh blocks only with
//! `interleave_blocks` of them in hand, or once none has arrived for
//! `interleave_wait` (or its input closed). Completions leave in block
//! order per lane, so a file is marked sent only once every block before
//! (and including) its last one has left.
//!
//! **Repeats** (`lanes.*.repeat_after`): a diode cannot ask for a block
//! again, so against link outages longer than FEC can bridge a lane may
//! send every block twice. Once a block's last datagram has left, its
//! datagrams are kept as they are (same session, lane, sequence and
//! symbols) and go out once more `repeat_after` later, paced and
//! interleaved like the rest. The receiver rebuilds a block from whichever
//! copy arrives first and drops the other as already resolved.
//!
//! The order above is deliberate. Nothing stands in front of a fresh alert.
//! A due repeat goes before *fresh* data of its own lane's priority class
//! only on the bulk lane, and for a reason: fresh bulk data can wait on disk
//! (the source is back-pressured), while a repeat is only worth sending
//! until the receiver declares its block lost (`limits.gap_timeout`). Under
//! a sustained backlog a fresh-first order would starve every repeat until
//! the buffer overflowed, dropping the protection exactly when the link is
//! busiest. The price is explicit: with repeats on, a lane needs twice its
//! data rate on the link.
//!
//! At most `repeat_buffer_bytes` of blocks wait for their repeat. When a
//! finished block does not fit, it is not repeated: counted
//! (`repeats_skipped`) and logged once per run of skips. When the lane's
//! input closes (shutdown), its waiting repeats are due at once, so the
//! sender flushes them before it stops instead of dropping them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{Receiver, Sender};
use weir_shared::config::ValidLane;
use weir_shared::lane::{LANES, Lane};
use weir_shared::pace::Pacer;

use super::{Burst, Completion, EncodedBlock, StageError, now};
use crate::telemetry::{Telemetry, add};

struct Active {
    block: EncodedBlock,
    next: usize,
}

/// Blocks whose datagrams leave interleaved, round-robin.
#[derive(Default)]
struct Interleave {
    active: VecDeque<Active>,
    /// The block whose datagram goes next: the round carries on across
    /// bursts, so a burst shorter than the round does not always start
    /// (and favour) the first blocks.
    cursor: usize,
}

impl Interleave {
    fn len(&self) -> usize {
        self.active.len()
    }

    fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    fn push(&mut self, block: EncodedBlock) {
        self.active.push_back(Active { block, next: 0 });
    }

    /// Length of the datagrams that would go next.
    fn datagram_len(&self) -> Option<usize> {
        self.active.front().map(|a| a.block.datagram_len)
    }

    /// Fill `out` up to `max` datagrams, round-robin over the blocks; a
    /// block whose last datagram left is handed to `finished`.
    fn take(&mut self, max: usize, out: &mut Burst, mut finished: impl FnMut(EncodedBlock)) {
        let mut i = self.cursor;
        while out.buf.len() / out.segment.max(1) < max && !self.active.is_empty() {
            if i >= self.active.len() {
                i = 0;
            }
            let a = &mut self.active[i];
            let len = a.block.datagram_len;
            if out.segment == 0 {
                out.segment = len;
            }
            let start = a.next * len;
            out.buf.extend_from_slice(&a.block.buf[start..start + len]);
            a.next += 1;
            if a.next == a.block.datagrams() {
                if let Some(done) = self.active.remove(i) {
                    finished(done.block);
                }
            } else {
                i += 1;
            }
        }
        self.cursor = i;
    }
}

/// One lane's blocks waiting for, or in, their second sending.
struct Repeats {
    lane: Lane,
    after: Option<Duration>,
    cap: u64,
    /// Bytes of the blocks waiting or being repeated.
    held: u64,
    /// Sent once, oldest (and so first due) first.
    waiting: VecDeque<(Instant, EncodedBlock)>,
    sending: Interleave,
    /// Repeats skipped since the buffer last had room (0: not skipping).
    skipping: u64,
}

impl Repeats {
    fn new(lane: Lane, cfg: &ValidLane) -> Self {
        Self {
            lane,
            after: cfg.repeat_after,
            cap: cfg.repeat_buffer_bytes,
            held: 0,
            waiting: VecDeque::new(),
            sending: Interleave::default(),
            skipping: 0,
        }
    }

    /// Keep `block`, whose first sending ended at `now`, for its repeat if
    /// the lane repeats and the buffer has room; count it otherwise.
    fn hold(&mut self, now: Instant, block: EncodedBlock, telemetry: &Telemetry) {
        let Some(after) = self.after else { return };
        let size = block.buf.len() as u64;
        let lane = self.lane.as_str();
        if self.held.saturating_add(size) > self.cap {
            add(&telemetry.repeats_skipped, 1);
            if self.skipping == 0 {
                tracing::warn!(
                    lane,
                    held_bytes = self.held,
                    repeat_buffer_bytes = self.cap,
                    "Repeat buffer full: blocks are sent once until it drains."
                );
            }
            self.skipping += 1;
            return;
        }
        if self.skipping > 0 {
            tracing::info!(
                lane,
                skipped = self.skipping,
                "Repeat buffer has room again: blocks are repeated again."
            );
            self.skipping = 0;
        }
        self.held += size;
        self.waiting.push_back((now + after, block));
    }

    /// Start the repeats due at `now` (every one when `flush`), keeping at
    /// most `depth` of them interleaved at once.
    fn promote(&mut self, now: Instant, depth: usize, flush: bool) {
        while self.sending.len() < depth
            && self
                .waiting
                .front()
                .is_some_and(|(due, _)| flush || *due <= now)
        {
            if let Some((_, block)) = self.waiting.pop_front() {
                self.sending.push(block);
            }
        }
    }

    /// When the next waiting repeat falls due.
    fn next_due(&self) -> Option<Instant> {
        self.waiting.front().map(|(due, _)| *due)
    }

    fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.sending.is_empty()
    }

    /// Up to `max` datagrams of the repeats being sent.
    fn take(&mut self, max: usize, out: &mut Burst, telemetry: &Telemetry) {
        let (mut freed, mut blocks) = (0u64, 0u64);
        self.sending.take(max, out, |b| {
            freed += b.buf.len() as u64;
            blocks += 1;
        });
        self.held = self.held.saturating_sub(freed);
        add(&telemetry.blocks_repeated, blocks);
    }
}

struct LaneQueue {
    rx: Receiver<EncodedBlock>,
    open: bool,
    depth: usize,
    /// `interleave_wait`.
    wait: Duration,
    /// Since when fewer than `depth` fresh blocks are in hand and none has
    /// arrived.
    short_since: Option<Instant>,
    fresh: Interleave,
    /// Blocks started, in sequence order, with their completion once sent.
    order: VecDeque<(u64, Option<Completion>)>,
    repeats: Repeats,
}

impl LaneQueue {
    fn new(lane: Lane, rx: Receiver<EncodedBlock>, cfg: &ValidLane) -> Self {
        Self {
            rx,
            open: true,
            depth: cfg.interleave_blocks,
            wait: cfg.interleave_wait,
            short_since: None,
            fresh: Interleave::default(),
            order: VecDeque::new(),
            repeats: Repeats::new(lane, cfg),
        }
    }

    fn admit(&mut self, block: EncodedBlock) {
        self.order.push_back((block.seq, None));
        self.fresh.push(block);
        self.short_since = None;
    }

    /// Start (or stop) the wait for company at `now`.
    fn note_short(&mut self, now: Instant) {
        if self.fresh.is_empty() || self.fresh.len() >= self.depth || !self.open {
            self.short_since = None;
        } else if self.short_since.is_none() {
            self.short_since = Some(now);
        }
    }

    /// Whether fresh blocks may go at `now`.
    fn fresh_ready(&self, now: Instant) -> bool {
        !self.fresh.is_empty()
            && self
                .short_since
                .is_none_or(|s| now.saturating_duration_since(s) >= self.wait)
    }

    /// When fresh blocks waiting for company go anyway.
    fn fresh_due(&self) -> Option<Instant> {
        self.short_since.map(|s| s + self.wait)
    }

    /// What a `recv` on the lane's input gave.
    fn input(&mut self, block: Option<EncodedBlock>) {
        match block {
            Some(b) => self.admit(b),
            None => self.open = false,
        }
    }

    fn refill(&mut self) {
        while self.open && self.fresh.len() < self.depth {
            match self.rx.try_recv() {
                Ok(b) => self.admit(b),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.open = false,
            }
        }
    }

    /// Up to `max` fresh datagrams; blocks finished on the way complete in
    /// sequence order and are kept for their repeat.
    fn take_fresh(&mut self, now: Instant, max: usize, out: &mut Burst, telemetry: &Telemetry) {
        let Self {
            fresh,
            order,
            repeats,
            ..
        } = self;
        fresh.take(max, out, |mut b| {
            let c = Completion {
                lane: b.lane,
                seq: b.seq,
                records: b.records,
                repair: b.repair,
                markers: std::mem::take(&mut b.markers),
            };
            if let Some(slot) = order.iter_mut().find(|(s, _)| *s == b.seq) {
                slot.1 = Some(c);
            }
            repeats.hold(now, b, telemetry);
        });
        while let Some((_, Some(_))) = order.front() {
            if let Some((_, Some(c))) = order.pop_front() {
                out.done.push(c);
            }
        }
    }
}

/// Where the next burst comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A lane's blocks sent for the first time.
    Fresh(Lane),
    /// A lane's blocks sent the second time.
    Repeat(Lane),
}

/// Strict priority, first to last (see the module docs for the reasons).
const PRIORITY: [Source; 4] = [
    Source::Fresh(Lane::Alert),
    Source::Repeat(Lane::Alert),
    Source::Repeat(Lane::Bulk),
    Source::Fresh(Lane::Bulk),
];

/// The source the next burst comes from at `now`, and its datagram length.
fn pick(queues: &[LaneQueue], now: Instant) -> Option<(Source, usize)> {
    PRIORITY.into_iter().find_map(|s| {
        let len = match s {
            Source::Fresh(l) => {
                let q = queues.get(l.index())?;
                q.fresh_ready(now).then(|| q.fresh.datagram_len()).flatten()
            }
            Source::Repeat(l) => queues.get(l.index())?.repeats.sending.datagram_len(),
        };
        len.map(|len| (s, len))
    })
}

/// Take in what arrived and start the repeats that are due (all of them on
/// a lane whose input has closed).
fn prepare(queues: &mut [LaneQueue], now: Instant) {
    for q in queues {
        q.refill();
        q.note_short(now);
        let flush = !q.open;
        q.repeats.promote(now, q.depth, flush);
    }
}

/// Nothing can be sent now: wait for a block on either lane, for the next
/// repeat to fall due, or for blocks waiting for company to go anyway.
async fn wait_for_work(queues: &mut [LaneQueue]) {
    let due = queues
        .iter()
        .flat_map(|q| [q.repeats.next_due(), q.fresh_due()])
        .flatten()
        .min();
    let [alert, bulk] = queues else { return };
    let wake = due.map_or_else(
        || tokio::time::Instant::now() + Duration::from_hours(1),
        tokio::time::Instant::from_std,
    );
    tokio::select! {
        biased;
        b = alert.rx.recv(), if alert.open => alert.input(b),
        b = bulk.rx.recv(), if bulk.open => bulk.input(b),
        () = tokio::time::sleep_until(wake), if due.is_some() => {}
        else => {}
    }
}

/// Wait until the pacer has tokens at `at`; anything but a fresh alert
/// stops waiting when an alert arrives, so that it goes first.
async fn wait_for_tokens(queues: &mut [LaneQueue], source: Source, at: Instant) {
    let [alert, _] = queues else { return };
    if source == Source::Fresh(Lane::Alert) || !alert.open {
        tokio::time::sleep_until(at.into()).await;
    } else {
        tokio::select! {
            () = tokio::time::sleep_until(at.into()) => {}
            b = alert.rx.recv() => alert.input(b),
        }
    }
}

/// Run until every lane's channel has closed and its blocks (and their
/// repeats) have left.
pub async fn run(
    mut pacer: Pacer,
    burst_datagrams: usize,
    lanes: [ValidLane; LANES],
    from_encode: [Receiver<EncodedBlock>; LANES],
    to_send: Sender<Burst>,
    telemetry: Arc<Telemetry>,
) -> Result<(), StageError> {
    let mut queues: Vec<LaneQueue> = Lane::ALL
        .into_iter()
        .zip(from_encode)
        .zip(lanes)
        .map(|((lane, rx), cfg)| LaneQueue::new(lane, rx, &cfg))
        .collect();
    loop {
        let t = now();
        prepare(&mut queues, t);
        let Some((source, unit)) = pick(&queues, t) else {
            if queues.iter().all(|q| !q.open && q.repeats.is_idle()) {
                return Ok(());
            }
            wait_for_work(&mut queues).await;
            continue;
        };
        // Size the burst from the tokens earned, waiting for one datagram's
        // worth first: a slow link sends single datagrams, so an alert
        // block arriving meanwhile waits behind one datagram, not a burst.
        let unit = unit.max(1) as u64;
        let budget = match pacer.poll_budget(now(), unit) {
            Ok(b) => b,
            Err(at) => {
                wait_for_tokens(&mut queues, source, at).await;
                continue;
            }
        };
        let fits = usize::try_from(budget / unit)
            .unwrap_or(usize::MAX)
            .clamp(1, burst_datagrams);
        // Sized once: grown datagram by datagram, the buffer would be
        // copied over and over on its way to a full burst.
        let mut burst = Burst {
            buf: Vec::with_capacity(fits.saturating_mul(usize::try_from(unit).unwrap_or(0))),
            segment: 0,
            done: Vec::new(),
        };
        match source {
            Source::Fresh(l) => {
                queues[l.index()].take_fresh(now(), fits, &mut burst, &telemetry);
            }
            Source::Repeat(l) => queues[l.index()].repeats.take(fits, &mut burst, &telemetry),
        }
        pacer.consume(burst.buf.len() as u64);
        to_send
            .send(burst)
            .await
            .map_err(|_| StageError::Closed("pace"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    const DGRAM: usize = 8;

    fn lane_cfg(repeat_after: Option<Duration>, cap: u64, depth: usize) -> ValidLane {
        ValidLane {
            repair_permille: 0,
            min_repair: 0,
            max_batch_bytes: 1024,
            max_age: Duration::from_millis(1),
            zstd_level: None,
            interleave_blocks: depth,
            interleave_wait: Duration::ZERO,
            repeat_after,
            repeat_buffer_bytes: cap,
        }
    }

    /// A block of `n` datagrams whose bytes name its lane, sequence and
    /// datagram index.
    fn block(lane: Lane, seq: u64, n: usize) -> EncodedBlock {
        let mut buf = Vec::new();
        for i in 0..n {
            buf.extend_from_slice(&[lane as u8, seq as u8, i as u8, 0, 0, 0, 0, 0]);
        }
        EncodedBlock {
            lane,
            seq,
            datagram_len: DGRAM,
            buf,
            repair: 0,
            records: 1,
            markers: Vec::new(),
        }
    }

    fn burst() -> Burst {
        Burst {
            buf: Vec::new(),
            segment: 0,
            done: Vec::new(),
        }
    }

    /// (lane, seq) of each datagram of a burst.
    fn sent(b: &Burst) -> Vec<(u8, u8)> {
        b.buf.chunks(DGRAM).map(|d| (d[0], d[1])).collect()
    }

    fn queues(
        alert: ValidLane,
        bulk: ValidLane,
    ) -> (Vec<LaneQueue>, [mpsc::Sender<EncodedBlock>; LANES]) {
        let (a_tx, a_rx) = mpsc::channel(16);
        let (b_tx, b_rx) = mpsc::channel(16);
        let q = vec![
            LaneQueue::new(Lane::Alert, a_rx, &alert),
            LaneQueue::new(Lane::Bulk, b_rx, &bulk),
        ];
        (q, [a_tx, b_tx])
    }

    /// One burst of at most `max` datagrams from whatever `pick` chooses.
    fn step(queues: &mut [LaneQueue], t: Instant, max: usize, tel: &Telemetry) -> Option<Burst> {
        prepare(queues, t);
        let (source, _) = pick(queues, t)?;
        let mut b = burst();
        match source {
            Source::Fresh(l) => queues[l.index()].take_fresh(t, max, &mut b, tel),
            Source::Repeat(l) => queues[l.index()].repeats.take(max, &mut b, tel),
        }
        Some(b)
    }

    #[test]
    fn a_block_goes_out_again_after_repeat_after_with_identical_datagrams() {
        let after = Duration::from_secs(3);
        let (mut q, [_a, b]) = queues(
            lane_cfg(None, 1 << 20, 1),
            lane_cfg(Some(after), 1 << 20, 2),
        );
        let tel = Telemetry::default();
        let original = block(Lane::Bulk, 0, 3);
        let bytes = original.buf.clone();
        b.try_send(original).expect("queue");
        let t0 = Instant::now();
        let first = step(&mut q, t0, 16, &tel).expect("fresh block");
        assert_eq!(first.buf, bytes);
        assert_eq!(first.done.len(), 1, "the first sending completes the block");
        // Nothing until it is due.
        assert!(step(&mut q, t0 + Duration::from_millis(2999), 16, &tel).is_none());
        assert_eq!(q[1].repeats.next_due(), Some(t0 + after));
        let again = step(&mut q, t0 + after, 16, &tel).expect("repeat");
        assert_eq!(again.buf, bytes, "same datagrams, byte for byte");
        assert!(again.done.is_empty(), "a repeat completes nothing again");
        assert_eq!(
            tel.blocks_repeated
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert!(q[1].repeats.is_idle());
        assert_eq!(q[1].repeats.held, 0);
    }

    #[test]
    fn priority_is_fresh_alert_then_alert_repeat_then_bulk_repeat_then_fresh_bulk() {
        let after = Duration::from_secs(1);
        let (mut q, [a, b]) = queues(
            lane_cfg(Some(after), 1 << 20, 1),
            lane_cfg(Some(after), 1 << 20, 1),
        );
        let tel = Telemetry::default();
        let t0 = Instant::now();
        a.try_send(block(Lane::Alert, 0, 1)).expect("queue");
        b.try_send(block(Lane::Bulk, 0, 1)).expect("queue");
        assert_eq!(sent(&step(&mut q, t0, 16, &tel).expect("a")), [(0, 0)]);
        assert_eq!(sent(&step(&mut q, t0, 16, &tel).expect("b")), [(1, 0)]);
        // Both are due for their repeat; a fresh alert and fresh bulk wait too.
        let t1 = t0 + after;
        a.try_send(block(Lane::Alert, 1, 1)).expect("queue");
        b.try_send(block(Lane::Bulk, 1, 1)).expect("queue");
        let order: Vec<_> = (0..4)
            .map(|_| sent(&step(&mut q, t1, 16, &tel).expect("burst"))[0])
            .collect();
        assert_eq!(order, [(0, 1), (0, 0), (1, 0), (1, 1)]);
    }

    #[test]
    fn a_full_buffer_skips_the_repeat_and_counts_it() {
        // Room for one 3-datagram block only.
        let (mut q, [_a, b]) = queues(
            lane_cfg(None, 1 << 20, 1),
            lane_cfg(Some(Duration::from_secs(1)), 3 * DGRAM as u64, 1),
        );
        let tel = Telemetry::default();
        let t0 = Instant::now();
        for seq in 0..3 {
            b.try_send(block(Lane::Bulk, seq, 3)).expect("queue");
        }
        for _ in 0..3 {
            step(&mut q, t0, 16, &tel).expect("fresh");
        }
        let skipped = tel
            .repeats_skipped
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(skipped, 2);
        assert_eq!(q[1].repeats.skipping, 2, "one run of skips, logged once");
        assert_eq!(q[1].repeats.held, 3 * DGRAM as u64);
        let again = step(&mut q, t0 + Duration::from_secs(1), 16, &tel).expect("repeat");
        assert_eq!(sent(&again), [(1, 0), (1, 0), (1, 0)]);
        // Room again: the next block is held, and the run of skips ends.
        b.try_send(block(Lane::Bulk, 3, 3)).expect("queue");
        step(&mut q, t0 + Duration::from_secs(2), 16, &tel).expect("fresh");
        assert_eq!(q[1].repeats.skipping, 0);
        assert_eq!(q[1].repeats.waiting.len(), 1);
    }

    #[test]
    fn a_closed_lane_flushes_its_repeats_at_once() {
        let (mut q, [a, b]) = queues(
            lane_cfg(None, 1 << 20, 1),
            lane_cfg(Some(Duration::from_mins(1)), 1 << 20, 2),
        );
        let tel = Telemetry::default();
        let t0 = Instant::now();
        for seq in 0..3 {
            b.try_send(block(Lane::Bulk, seq, 2)).expect("queue");
        }
        drop((a, b));
        let mut out = Vec::new();
        while let Some(burst) = step(&mut q, t0, 16, &tel) {
            out.extend(sent(&burst));
        }
        // Fresh blocks (interleaved two at a time), then every repeat at
        // once rather than a minute later.
        assert_eq!(out.len(), 12);
        assert_eq!(
            tel.blocks_repeated
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        assert!(q.iter().all(|q| !q.open && q.repeats.is_idle()));
    }

    #[test]
    fn without_repeat_after_nothing_is_held() {
        let (mut q, [_a, b]) = queues(lane_cfg(None, 1 << 20, 1), lane_cfg(None, 1 << 20, 1));
        let tel = Telemetry::default();
        b.try_send(block(Lane::Bulk, 0, 2)).expect("queue");
        let t0 = Instant::now();
        step(&mut q, t0, 16, &tel).expect("fresh");
        assert!(q[1].repeats.is_idle());
        assert!(step(&mut q, t0 + Duration::from_hours(1), 16, &tel).is_none());
        assert_eq!(
            tel.repeats_skipped
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn a_short_lane_waits_for_company_then_goes_interleaved() {
        let wait = Duration::from_millis(500);
        let bulk = ValidLane {
            interleave_wait: wait,
            ..lane_cfg(None, 1 << 20, 3)
        };
        let (mut q, [_a, b]) = queues(lane_cfg(None, 1 << 20, 1), bulk);
        let tel = Telemetry::default();
        let t0 = Instant::now();
        b.try_send(block(Lane::Bulk, 0, 2)).expect("queue");
        assert!(step(&mut q, t0, 16, &tel).is_none(), "one block waits");
        b.try_send(block(Lane::Bulk, 1, 2)).expect("queue");
        // An arrival starts the wait again.
        let t1 = t0 + Duration::from_millis(400);
        assert!(step(&mut q, t1, 16, &tel).is_none(), "two blocks wait");
        assert_eq!(q[1].fresh_due(), Some(t1 + wait));
        b.try_send(block(Lane::Bulk, 2, 2)).expect("queue");
        let full = step(&mut q, t1, 16, &tel).expect("three go at once");
        assert_eq!(
            sent(&full),
            [(1, 0), (1, 1), (1, 2), (1, 0), (1, 1), (1, 2)],
            "interleaved round-robin"
        );
        // Alone again: it goes once the wait is over.
        b.try_send(block(Lane::Bulk, 3, 2)).expect("queue");
        let t2 = t1 + Duration::from_millis(10);
        assert!(step(&mut q, t2, 16, &tel).is_none());
        let almost = t2 + wait.saturating_sub(Duration::from_millis(1));
        assert!(step(&mut q, almost, 16, &tel).is_none());
        let late = step(&mut q, t2 + wait, 16, &tel).expect("after the wait");
        assert_eq!(sent(&late), [(1, 3), (1, 3)]);
    }
}
