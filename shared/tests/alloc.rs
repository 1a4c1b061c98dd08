//! The per-datagram hot paths leave the heap alone once warm.
//!
//! What is asserted, and why it is the right bound:
//!
//! - **Receiver, clean link** (`wire::parse` with its CRC check, the
//!   datagram tag checked and the payload decrypted in place, then
//!   `Reassembler::handle_symbol`, then `confirm` when a block completes):
//!   every datagram of a block except its first allocates *nothing*,
//!   including the one that completes the block (the decoder hands back
//!   the buffer its symbols were stored in). The first datagram sets up
//!   the block's decoder: a fixed number of allocations whatever the
//!   block's size, so a block of 700 symbols costs what a block of 4 does.
//! - **Receiver, lossy link**: collecting symbols allocates nothing; the
//!   datagram that lets raptorq rebuild the block allocates (raptorq's
//!   solver), once per block, plus at most a symbol or two more when the
//!   first attempt falls short (RaptorQ sometimes needs `K + 1`, `K + 2`).
//! - **Junk** (bad CRC, truncated, wrong version, a symbol of a block
//!   already delivered): nothing, so a flood costs counters only.
//! - **Sender**: writing a block's datagrams (`DatagramKey::emit_into`:
//!   header, sealed payload, tag and CRC into a slot of the block's GSO
//!   buffer) allocates nothing per
//!   datagram. `BlockEncoder::encode` with a cached plan allocates inside
//!   raptorq 2.0, whose `SourceBlockEncoder` keeps each source and repair
//!   symbol in a `Vec` of its own: that count is per block, is
//!   bounded here (`K + R + 16`: one per source and repair symbol plus a
//!   constant; 779 for `K = 700`, `R = 70`), and none of it falls between
//!   two emitted datagrams.
//!
//! The counting allocator needs `unsafe impl GlobalAlloc`; it lives in this
//! test binary only and counts per thread, so tests running in parallel do
//! not disturb each other's counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_shared::fec::{BlockEncoder, repair_symbols, source_symbols};
use weir_shared::lane::Lane;
use weir_shared::reassembly::{BlockKey, Reassembler, ReassemblyLimits};
use weir_shared::seal::{DatagramKey, Psk};
use weir_shared::wire::{
    CRC_LEN, HEADER_LEN, Header, KeyId, Kind, OVERHEAD, Role, SessionId, parse,
};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a const-initialised thread-local `Cell` that itself never
// allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

/// Symbol size of the targets: 1400-byte symbols.
const SYM: u16 = 1400;
/// Source-symbol counts measured: an alert-sized block, a small bulk block,
/// and a 980 000-byte block.
const KS: [u32; 3] = [4, 64, 700];
/// Allocations that set up one block's decoder on its first datagram
/// (ESI bitset, symbol store, ESI list), with slack for the pending map.
const FIRST_DATAGRAM_MAX: u64 = 4;
/// Allocations of `confirm` per delivered block (the lane's set of
/// delivered sequence numbers grows by a tree node now and then).
const CONFIRM_MAX: u64 = 2;

fn session() -> SessionId {
    SessionId::new(7, Role::Daemon, 1, [1, 2, 3, 4])
}

fn limits() -> ReassemblyLimits {
    ReassemblyLimits {
        max_block_bytes: 1 << 20,
        max_pending_blocks: 64,
        block_timeout: Duration::from_secs(5),
        gap_timeout: Duration::from_secs(10),
        window_blocks: 65_536,
        max_sessions: 4,
    }
}

fn header(seq: u64, transfer_len: u32) -> Header {
    Header {
        kind: Kind::Symbol,
        key_id: KeyId(1),
        lane: Lane::Bulk,
        session: session(),
        seq,
        transfer_len,
        symbol_size: SYM,
        payload_id: 0,
    }
}

/// A block of `k` source symbols (the last one short), as the sender's
/// encode stage lays it out: every datagram back to back in one buffer.
fn encoded_block(enc: &mut BlockEncoder, seq: u64, k: u32, ratio_permille: u32) -> Vec<u8> {
    let len = k * u32::from(SYM) - 100;
    let block: Vec<u8> = (0..len).map(|i| (i as u8) ^ (seq as u8)).collect();
    assert_eq!(source_symbols(len, SYM), k);
    let repair = repair_symbols(k, ratio_permille, 2);
    let dlen = OVERHEAD + usize::from(SYM);
    let mut buf = vec![0u8; (k + repair) as usize * dlen];
    let mut slots = buf.chunks_exact_mut(dlen);
    let key = datagram_key();
    enc.encode(&block, repair, |payload_id, symbol| {
        let slot = slots.next().expect("one slot per symbol");
        key.emit_into(
            &Header {
                payload_id,
                ..header(seq, len)
            },
            symbol,
            slot,
        )
        .expect("seal");
    })
    .expect("encode");
    buf
}

fn datagram_key() -> DatagramKey {
    Psk::new(KeyId(1), [0x33; 32]).datagram_key(session())
}

/// What `verify` does: copy the datagram into the batch buffer
/// (`scratch`), parse it, check its tag and decrypt the payload in place.
fn verify<'a>(key: &DatagramKey, scratch: &'a mut [u8], dgram: &[u8]) -> (Header, &'a [u8]) {
    scratch.copy_from_slice(dgram);
    let (h, _) = parse(scratch).expect("valid datagram");
    let n = scratch.len() - CRC_LEN;
    let (head, body) = scratch[..n].split_at_mut(HEADER_LEN);
    let head: &[u8; HEADER_LEN] = (&*head).try_into().expect("header");
    let plain = key.open(&h, head, body).expect("authentic");
    (h, plain)
}

/// What one block cost the receiver, datagram by datagram.
#[derive(Debug, Default)]
struct BlockCost {
    first: u64,
    /// Allocations of every later datagram, in order.
    later: Vec<u64>,
    confirm: u64,
    completed: bool,
}

/// Feed the datagrams of `buf` (those `keep` lets through) to `r` the way
/// the receiver does, counting allocations per datagram.
fn receive(
    r: &mut Reassembler,
    now: Instant,
    buf: &[u8],
    keep: impl Fn(usize) -> bool,
) -> BlockCost {
    let dlen = OVERHEAD + usize::from(SYM);
    let n = buf.len() / dlen;
    let mut cost = BlockCost {
        later: Vec::with_capacity(n),
        ..BlockCost::default()
    };
    let mut first = true;
    let key = datagram_key();
    let mut scratch = vec![0u8; dlen];
    for (i, dgram) in buf.chunks_exact(dlen).enumerate() {
        if !keep(i) || cost.completed {
            continue;
        }
        let before = allocations();
        let (h, symbol) = verify(&key, &mut scratch, dgram);
        let done = r.handle_symbol(now, &h, symbol).expect("accepted");
        let spent = allocations() - before;
        if first {
            cost.first = spent;
            first = false;
        } else {
            cost.later.push(spent);
        }
        if let Some(block) = done {
            let before = allocations();
            let key = BlockKey {
                session: h.session,
                lane: h.lane,
                seq: h.seq,
            };
            r.confirm(now, key, KeyId(1));
            cost.confirm = allocations() - before;
            cost.completed = true;
            drop(block);
        }
    }
    cost
}

#[test]
fn receiver_allocates_per_block_not_per_datagram_on_a_clean_link() {
    let mut enc = BlockEncoder::new(SYM, 1 << 20).expect("encoder");
    let mut r = Reassembler::new(limits());
    let now = Instant::now();
    let blocks: Vec<Vec<u8>> = (0..30u64)
        .map(|seq| encoded_block(&mut enc, seq, KS[seq as usize % KS.len()], 100))
        .collect();
    // Warm-up: the session, its lane window and the pending map are set up.
    for buf in &blocks[..KS.len()] {
        assert!(receive(&mut r, now, buf, |_| true).completed);
    }
    let mut per_k = [None; KS.len()];
    for (seq, buf) in blocks.iter().enumerate().skip(KS.len()) {
        let cost = receive(&mut r, now, buf, |_| true);
        let k = KS[seq % KS.len()];
        assert!(cost.completed, "block {seq} of K = {k} not rebuilt");
        assert_eq!(cost.later.len(), k as usize - 1, "clean: K datagrams used");
        assert!(
            cost.later.iter().all(|&a| a == 0),
            "K = {k}: a datagram after the first allocated: {:?}",
            cost.later
        );
        assert!(cost.first <= FIRST_DATAGRAM_MAX, "K = {k}: {cost:?}");
        assert!(cost.confirm <= CONFIRM_MAX, "K = {k}: {cost:?}");
        per_k[seq % KS.len()].get_or_insert(cost.first);
    }
    // The block's set-up does not grow with its size.
    assert!(per_k.iter().all(|&a| a == per_k[0]), "{per_k:?}");
}

#[test]
fn receiver_collects_a_lossy_blocks_symbols_without_allocating() {
    let mut enc = BlockEncoder::new(SYM, 1 << 20).expect("encoder");
    let mut r = Reassembler::new(limits());
    let now = Instant::now();
    let mut rng = StdRng::seed_from_u64(5);
    for seq in 0..24u64 {
        let k = KS[seq as usize % KS.len()];
        // 25 % repair, 5 % random loss (never the first datagram, so the
        // first one measured is the block's first).
        let buf = encoded_block(&mut enc, seq, k, 250);
        let n = buf.len() / (OVERHEAD + usize::from(SYM));
        let lost: Vec<bool> = (0..n).map(|i| i > 0 && rng.random_bool(0.05)).collect();
        let cost = receive(&mut r, now, &buf, |i| !lost[i]);
        assert!(cost.completed, "block {seq} (K = {k}) not rebuilt");
        if seq < 3 {
            continue; // warm-up
        }
        assert!(cost.first <= FIRST_DATAGRAM_MAX, "K = {k}: {cost:?}");
        // Until the decode step, nothing; then raptorq's solver, on at
        // most three datagrams (K, K + 1, K + 2 symbols in hand).
        let allocating = cost.later.iter().filter(|&&a| a > 0).count();
        assert!(
            allocating <= 3,
            "K = {k}: {allocating} datagrams allocated: {:?}",
            cost.later
        );
        let collecting = cost.later.len().saturating_sub(3);
        assert!(
            cost.later[..collecting].iter().all(|&a| a == 0),
            "K = {k}: a datagram allocated before the decode step: {:?}",
            cost.later
        );
    }
}

#[test]
fn junk_and_replayed_datagrams_do_not_allocate() {
    let mut enc = BlockEncoder::new(SYM, 1 << 20).expect("encoder");
    let mut r = Reassembler::new(limits());
    let now = Instant::now();
    let delivered = encoded_block(&mut enc, 0, 64, 100);
    assert!(receive(&mut r, now, &delivered, |_| true).completed);
    let dlen = OVERHEAD + usize::from(SYM);
    let mut rng = StdRng::seed_from_u64(9);
    let mut noise = vec![0u8; dlen];
    let mut bad_crc = delivered[..dlen].to_vec();
    bad_crc[50] ^= 1;
    let key = datagram_key();
    let mut scratch = vec![0u8; dlen];
    // Valid CRC, forged tag: refused by the tag check.
    let mut forged = delivered[..dlen].to_vec();
    forged[HEADER_LEN] ^= 1;
    weir_shared::wire::put_crc(&mut forged);
    let before = allocations();
    for _ in 0..1000 {
        rng.fill(&mut noise[..]);
        assert!(parse(&noise).is_err());
        assert!(parse(&bad_crc).is_err());
        assert!(parse(&noise[..10]).is_err());
        scratch.copy_from_slice(&forged);
        let (h, _) = parse(&scratch).expect("parses");
        let (head, body) = scratch[..dlen - CRC_LEN].split_at_mut(HEADER_LEN);
        let head: &[u8; HEADER_LEN] = (&*head).try_into().expect("header");
        assert!(key.open(&h, head, body).is_err());
        // A replayed symbol of the block already delivered.
        for dgram in delivered.chunks_exact(dlen).take(8) {
            let (h, symbol) = verify(&key, &mut scratch, dgram);
            assert!(r.handle_symbol(now, &h, symbol).is_err());
        }
    }
    assert_eq!(allocations() - before, 0);
}

#[test]
fn sender_emits_datagrams_without_allocating() {
    let mut enc = BlockEncoder::new(SYM, 1 << 20).expect("encoder");
    let dlen = OVERHEAD + usize::from(SYM);
    for k in KS {
        // Warm-up: the plan for this K is generated and cached.
        let _ = encoded_block(&mut enc, 0, k, 100);
        let len = k * u32::from(SYM) - 100;
        let block = vec![0x5a; len as usize];
        let repair = repair_symbols(k, 100, 2);
        let mut buf = vec![0u8; (k + repair) as usize * dlen];
        let mut slots = buf.chunks_exact_mut(dlen);
        // Allocations between two emitted datagrams, and in all.
        let mut between = Vec::with_capacity((k + repair) as usize);
        let mut last: Option<u64> = None;
        let key = datagram_key();
        let start = allocations();
        enc.encode(&block, repair, |payload_id, symbol| {
            let now = allocations();
            if let Some(l) = last {
                between.push(now - l);
            }
            let slot = slots.next().expect("one slot per symbol");
            key.emit_into(
                &Header {
                    payload_id,
                    ..header(1, len)
                },
                symbol,
                slot,
            )
            .expect("seal");
            last = Some(allocations());
        })
        .expect("encode");
        let total = allocations() - start;
        // Between consecutive datagrams: nothing, except once where
        // raptorq makes the repair symbols (after the K source symbols,
        // which come straight from the block).
        let nonzero: Vec<usize> = (0..between.len()).filter(|&i| between[i] > 0).collect();
        assert!(
            nonzero.is_empty() || nonzero == [k as usize - 1],
            "K = {k}: allocations between datagrams at {nonzero:?}"
        );
        // raptorq 2.0 copies the block into one `Vec` per source symbol
        // and makes one per repair symbol, plus a few for the solver.
        let bound = u64::from(k + repair) + 16;
        assert!(total <= bound, "K = {k}: {total} allocations > {bound}");
        eprintln!("encode K = {k}, R = {repair}: {total} allocations per block");
    }
}
