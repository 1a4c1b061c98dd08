//! Drive a `Reassembler` with a sequence of symbol datagrams, heartbeats,
//! confirmations, session starts, restores and clock steps.
//!
//! Datagrams are built from fuzzed fields (a valid CRC would otherwise
//! stop almost every input at the door) and go through `wire::parse` like
//! received ones. The datagram tag is not checked here (it is the
//! `verify` stage's, before reassembly): the reassembler must hold up
//! against whatever a key holder sends. RaptorQ solves are held back and handed in later, in any
//! order, as the receiver's solve workers do. Small limits keep each run
//! fast; the property is that nothing panics or hangs, the pending-block
//! and session tables never outgrow their limits, and every rebuilt block
//! has its transfer length.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weir_shared::lane::{LANES, Lane};
use weir_shared::reassembly::{
    BlockKey, CompletedBlock, Ready, Reassembler, ReassemblyLimits, Solve,
};
use weir_shared::wire::{self, KeyId};

const LIMITS: ReassemblyLimits = ReassemblyLimits {
    max_block_bytes: 4096,
    max_pending_blocks: 8,
    block_timeout: Duration::from_millis(500),
    gap_timeout: Duration::from_millis(800),
    window_blocks: 64,
    max_sessions: 3,
};

/// A sequence number: mostly near the start, so blocks meet each other,
/// sometimes anywhere (a sender that numbers from a persisted counter).
#[derive(Debug, Arbitrary)]
enum Seq {
    Near(u8),
    Far(u64),
}

impl Seq {
    fn get(&self) -> u64 {
        match *self {
            Seq::Near(s) => u64::from(s),
            Seq::Far(s) => s,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// One symbol datagram; `confirm` says whether the AEAD would accept
    /// the block it completes.
    Symbol {
        session: u8,
        lane: u8,
        seq: Seq,
        transfer_len: u16,
        /// Symbol size in units of 8 bytes (0: an invalid size of 0).
        symbol_units: u8,
        payload_id: u32,
        fill: u8,
        confirm: bool,
    },
    /// Raw bytes straight from the line (almost always a CRC failure).
    Raw(Vec<u8>),
    /// An authenticated heartbeat.
    Heartbeat {
        session: u8,
        key_id: u16,
        last_sent: [Option<Seq>; LANES],
    },
    /// An authenticated delivery of any block.
    Confirm { session: u8, lane: u8, seq: Seq },
    /// An authenticated heartbeat's first block per lane.
    SessionStart {
        session: u8,
        first_block: [Seq; LANES],
    },
    /// Recovery after a restart: a lane resumes at a stored floor.
    Restore { session: u8, lane: u8, floor: Seq },
    /// Time passes; the shell's periodic poll runs.
    Advance { ms: u16 },
    /// One held-back solve runs and comes back.
    Solved { which: u8 },
}

/// A rebuilt block: checked, and confirmed if the AEAD would accept it.
fn completed(r: &mut Reassembler, now: Instant, block: &CompletedBlock, confirm: bool) {
    assert_eq!(block.sealed.len(), block.header.transfer_len as usize);
    let key = BlockKey {
        session: block.header.session,
        lane: block.header.lane,
        seq: block.header.seq,
    };
    if confirm && r.is_fresh(key) {
        r.confirm(now, key, block.header.key_id);
    }
}

/// What a symbol or a solve made ready: a block is taken, a solve held.
fn ready(
    r: &mut Reassembler,
    now: Instant,
    held: &mut Vec<Solve>,
    ready: Option<Ready>,
    confirm: bool,
) {
    match ready {
        Some(Ready::Block(block)) => completed(r, now, &block, confirm),
        Some(Ready::Solve(job)) => held.push(job),
        None => {}
    }
}

/// Five sessions against a cap of three, so eviction happens.
fn session_id(i: u8) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0] = i % 5;
    s[15] = 0xA5;
    s
}

fn lane(i: u8) -> Lane {
    Lane::ALL[usize::from(i) % LANES]
}

/// A symbol datagram laid out as `wire` documents it.
fn datagram(
    session: [u8; 16],
    lane: Lane,
    seq: u64,
    len: u32,
    sym: u16,
    pid: u32,
    fill: u8,
) -> Vec<u8> {
    let mut d = Vec::with_capacity(wire::OVERHEAD + usize::from(sym));
    d.extend_from_slice(&wire::MAGIC);
    d.push(wire::VERSION);
    d.push(1); // Kind::Symbol
    d.extend_from_slice(&1u16.to_be_bytes()); // key id
    d.push(lane as u8);
    d.push(0); // flags
    d.extend_from_slice(&session);
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&sym.to_be_bytes());
    d.extend_from_slice(&pid.to_be_bytes());
    d.extend((0..sym).map(|i| fill.wrapping_add(i as u8)));
    d.extend_from_slice(&[fill; wire::TAG_LEN]);
    let crc = crc32fast::hash(&d);
    d.extend_from_slice(&crc.to_be_bytes());
    d
}

fuzz_target!(|ops: Vec<Op>| {
    let mut r = Reassembler::new(LIMITS);
    let t0 = Instant::now();
    let mut now = t0;
    let mut held = Vec::new();
    for op in ops.iter().take(512) {
        match op {
            Op::Symbol {
                session,
                lane: l,
                seq,
                transfer_len,
                symbol_units,
                payload_id,
                fill,
                confirm,
            } => {
                let sym = u16::from(*symbol_units % 16) * 8;
                let dg = datagram(
                    session_id(*session),
                    lane(*l),
                    seq.get(),
                    u32::from(*transfer_len),
                    sym,
                    *payload_id,
                    *fill,
                );
                // (If `parse` grows stricter than this layout, the datagram
                // is simply refused, as on the link.)
                let Ok((header, payload)) = wire::parse(&dg) else {
                    continue;
                };
                if let Ok(got) = r.take_symbol(now, &header, payload) {
                    ready(&mut r, now, &mut held, got, *confirm);
                }
            }
            Op::Raw(bytes) => {
                if let Ok((header, payload)) = wire::parse(bytes)
                    && header.kind == wire::Kind::Symbol
                {
                    if let Ok(got) = r.take_symbol(now, &header, payload) {
                        ready(&mut r, now, &mut held, got, true);
                    }
                }
            }
            Op::Heartbeat {
                session,
                key_id,
                last_sent,
            } => {
                let last = std::array::from_fn(|i| last_sent[i].as_ref().map(Seq::get));
                r.handle_heartbeat(
                    now,
                    wire::SessionId(session_id(*session)),
                    KeyId(*key_id),
                    last,
                );
            }
            Op::Confirm {
                session,
                lane: l,
                seq,
            } => {
                let key = BlockKey {
                    session: wire::SessionId(session_id(*session)),
                    lane: lane(*l),
                    seq: seq.get(),
                };
                r.confirm(now, key, KeyId(1));
            }
            Op::SessionStart {
                session,
                first_block,
            } => {
                let first = std::array::from_fn(|i| first_block[i].get());
                r.session_start(now, wire::SessionId(session_id(*session)), KeyId(1), first);
            }
            Op::Restore {
                session,
                lane: l,
                floor,
            } => {
                r.restore(
                    now,
                    wire::SessionId(session_id(*session)),
                    KeyId(1),
                    lane(*l),
                    floor.get(),
                );
            }
            Op::Advance { ms } => {
                now += Duration::from_millis(u64::from(*ms));
                r.poll_timeouts(now);
            }
            Op::Solved { which } => {
                if !held.is_empty() {
                    let job = held.swap_remove(usize::from(*which) % held.len());
                    let got = r.solved(job.run());
                    ready(&mut r, now, &mut held, got, true);
                }
            }
        }
        assert!(
            r.pending_len() <= LIMITS.max_pending_blocks,
            "pending table over its limit"
        );
        assert!(
            r.sessions_len() <= LIMITS.max_sessions,
            "session table over its limit"
        );
        while let Some(lost) = r.poll_lost() {
            assert!(lost.first <= lost.last, "empty lost range {lost:?}");
            assert!(lost.count() >= 1);
        }
    }
    // Every solve comes back; each may ask for one more.
    while let Some(job) = held.pop() {
        let got = r.solved(job.run());
        ready(&mut r, now, &mut held, got, true);
    }
});
