//! Hostile datagrams against a running `weir-rx` (issue "No silent loss").
//!
//! Whoever can reach the receiver's UDP port can send it anything. Every
//! such datagram must be bounded (memory), counted (under a reason) and
//! dropped, and must never publish anything or stop the receiver from
//! taking the real sender's data:
//!
//! * junk of every kind (random bytes of every length up to 9000, headers
//!   with a valid CRC and bad fields, datagrams with a valid CRC but no
//!   valid datagram tag: forged sessions and heartbeats, blocks sealed with
//!   the wrong key; unknown key ids; and, from a key holder whose sender is
//!   broken, impossible block geometry, garbage blocks, a flood of partial
//!   blocks filling the pending table), then a real `weir-tx` transfer
//!   that arrives whole;
//! * an unkeyed flood of valid-CRC datagrams at 10 000 a second during a
//!   real transfer: no record lost, bounded memory, no log line per
//!   datagram;
//! * captured traffic of an earlier sender session replayed into the
//!   receiver, while it still runs and after it restarted;
//! * empty datagrams (ignored: a known counting bug).
//!
//! The junk is made with `weir_shared`'s own wire, seal and FEC code, so
//! it passes exactly the checks it is meant to pass. Without the key, a
//! datagram with a valid CRC is refused at its datagram tag (`verify`):
//! only a key holder's datagrams reach reassembly.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value as Json;
use weir_shared::fec::BlockEncoder;
use weir_shared::lane::Lane;
use weir_shared::seal::{Psk, sealed_len};
use weir_shared::wire::{Header, KeyId, Kind, SessionId, TAG_LEN, emit_datagram, parse};
use weir_tests::{
    Broker, Impairment, LossyLink, Process, Site, Subscriber, aveva_export, aveva_export_row,
    free_udp_addr, latest_status, point_payloads, rss_kib, send_paced, start_rx, start_tx, stop_rx,
    udp_socket_drops, wait_until, write_key,
};

const KEY: [u8; 32] = [0x5a; 32];
const WRONG_KEY: [u8; 32] = [0xa5; 32];
const KEY_ID: u16 = 1;
const UNKNOWN_KEY_ID: u16 = 999;
/// The symbol size a 1500-byte MTU gives.
const SYMBOL: u16 = 1408;
/// `limits.max_block_bytes` of the example receiver config.
const MAX_BLOCK: u32 = 1 << 20;
/// `limits.max_pending_blocks` of the example receiver config.
const MAX_PENDING: u64 = 64;
/// Its slots for bulk blocks: all but the alert lane's eighth.
const BULK_SLOTS: u64 = MAX_PENDING - MAX_PENDING / 8;
/// Datagrams per burst, and the pause after each: about 30 000 datagrams
/// a second, which a debug-build receiver keeps up with.
const BURST: usize = 32;
const PAUSE: Duration = Duration::from_millis(1);
/// The example config's audit and gaps topics.
const AUDIT: &str = "diode/v1/plant1/weir01/audit";
const GAPS: &str = "diode/v1/plant1/weir01/gaps";

/// A receiver (no sender yet), its broker, and a subscriber to every topic.
struct Rig {
    _broker: Broker,
    sub: Subscriber,
    rx: Process,
    rx_addr: SocketAddr,
    rx_cfg: PathBuf,
    key: PathBuf,
}

fn start_rig(site: &Site) -> Rig {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["#"]);
    let key = site.path("weir.key");
    write_key(&key, KEY_ID, KEY);
    let rx_addr = free_udp_addr();
    let id = format!("weir-rx-hostile-{}", std::process::id());
    let rx_cfg = site.write_toml(
        "rx.toml",
        &site.rx_config(rx_addr, &key, broker.port(), &id),
    );
    let rx = start_rx(site, &rx_cfg, "rx.log");
    Rig {
        _broker: broker,
        sub,
        rx,
        rx_addr,
        rx_cfg,
        key,
    }
}

/// A sender config sending to `destination`, with small bulk blocks (so
/// a few thousand points make dozens of blocks).
fn tx_config(site: &Site, destination: SocketAddr, key: &Path) -> PathBuf {
    let mut cfg = site.tx_config(destination, key);
    cfg["lanes"]["bulk"]["max_batch_bytes"] = toml::Value::Integer(8 * 1024);
    site.write_toml("tx.toml", &cfg)
}

// ---------------------------------------------------------------------
// Making junk
// ---------------------------------------------------------------------

fn symbol_header(
    key_id: u16,
    session: SessionId,
    seq: u64,
    transfer_len: u32,
    symbol_size: u16,
) -> Header {
    Header {
        kind: Kind::Symbol,
        key_id: KeyId(key_id),
        lane: Lane::Bulk,
        session,
        seq,
        transfer_len,
        symbol_size,
        payload_id: 0,
    }
}

/// A datagram with a valid tag under the loaded key (`KEY`), whatever its
/// header says: what a key holder's broken sender could send.
fn datagram(header: &Header, payload: &[u8]) -> Vec<u8> {
    keyed(KEY, header, payload)
}

/// A datagram whose tag is made with `secret` (under the header's key id).
fn keyed(secret: [u8; 32], header: &Header, payload: &[u8]) -> Vec<u8> {
    let key = Psk::new(header.key_id, secret).datagram_key(header.session);
    let mut out = Vec::new();
    key.emit_datagram(header, payload, &mut out)
        .expect("datagram sealed");
    out
}

/// A datagram with a valid CRC and a random tag: what anyone without the
/// key can make.
fn unkeyed(rng: &mut StdRng, header: &Header, payload: &[u8]) -> Vec<u8> {
    let tag: [u8; TAG_LEN] = rng.random();
    let mut out = Vec::new();
    emit_datagram(header, payload, &tag, &mut out);
    out
}

/// The session of the key holder whose sender is broken.
const BROKEN: SessionId = SessionId([0xb0; 16]);

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

fn random_session(rng: &mut StdRng) -> SessionId {
    SessionId(rng.random())
}

/// Recompute the CRC trailer after a change, so only the change is wrong.
fn fix_crc(d: &mut [u8]) {
    let n = d.len() - 4;
    let crc = crc32fast::hash(&d[..n]);
    d[n..].copy_from_slice(&crc.to_be_bytes());
}

/// Junk of one kind, and what the receiver must count for it.
struct Junk {
    name: &'static str,
    datagrams: Vec<Vec<u8>>,
    /// Counters (summed) that must account for it.
    counters: &'static [&'static str],
    /// Events it must add to them at least: one per datagram refused on
    /// its own, one per block refused whole.
    events: u64,
}

impl Junk {
    fn new(name: &'static str, counters: &'static [&'static str], datagrams: Vec<Vec<u8>>) -> Self {
        let events = datagrams.len() as u64;
        Self {
            name,
            datagrams,
            counters,
            events,
        }
    }

    fn blocks(mut self, blocks: u64) -> Self {
        self.events = blocks;
        self
    }
}

/// Random bytes of every length from 1 to 9000: shorter than a header is
/// malformed, longer fails the CRC (a random CRC matches once in 2^32).
fn random_junk(rng: &mut StdRng) -> [Junk; 2] {
    let short = (1..weir_shared::wire::OVERHEAD)
        .map(|len| random_bytes(rng, len))
        .collect();
    let long = (weir_shared::wire::OVERHEAD..=9000)
        .map(|len| random_bytes(rng, len))
        .collect();
    [
        Junk::new("random, shorter than a header", &["drop_malformed"], short),
        Junk::new("random, 62..=9000 bytes", &["drop_crc"], long),
    ]
}

/// Valid CRC, one bad header field each: magic, version, kind, lane,
/// flags, a payload shorter than `symbol_size`, and a heartbeat whose
/// length field says 4 GiB.
fn malformed_junk(rng: &mut StdRng) -> Junk {
    let mut out = Vec::new();
    for i in 0..50u64 {
        let h = symbol_header(KEY_ID, random_session(rng), i, 4096, SYMBOL);
        let payload = random_bytes(rng, usize::from(SYMBOL));
        let good = unkeyed(rng, &h, &payload);
        for (at, value) in [(0, b'X'), (2, 1), (3, 9), (6, 7), (7, 1)] {
            let mut d = good.clone();
            d[at] = value;
            fix_crc(&mut d);
            out.push(d);
        }
        let mut short = good[..weir_shared::wire::HEADER_LEN + 100].to_vec();
        short.extend_from_slice(&[0; 4]);
        fix_crc(&mut short);
        out.push(short);
        let hb = Header {
            kind: Kind::Heartbeat,
            transfer_len: u32::MAX,
            symbol_size: 0,
            ..h
        };
        let body = random_bytes(rng, 64);
        out.push(unkeyed(rng, &hb, &body));
    }
    Junk::new("valid CRC, bad header field", &["drop_malformed"], out)
}

/// Well-formed symbols of impossible blocks, from a key holder: empty,
/// longer than `max_block_bytes` up to `u32::MAX`, a symbol size of 0,
/// unaligned, or 65 440 bytes (the largest that fits a UDP datagram with
/// the 62 bytes of overhead), more source symbols than RaptorQ allows.
fn geometry_junk(rng: &mut StdRng) -> Junk {
    let cases: [(u32, u16); 8] = [
        (0, SYMBOL),
        (MAX_BLOCK + 1, SYMBOL),
        (u32::MAX - 1, SYMBOL),
        (u32::MAX, 9000),
        (u32::MAX, 65_440),
        (4096, 0),
        (4096, 1001),
        (MAX_BLOCK, 8),
    ];
    let mut out = Vec::new();
    for i in 0..40u64 {
        for (len, size) in cases {
            let h = symbol_header(KEY_ID, BROKEN, i, len, size);
            out.push(datagram(&h, &random_bytes(rng, usize::from(size))));
        }
    }
    Junk::new("impossible block geometry", &["drop_geometry"], out)
}

/// Symbols naming a source block other than 0 (refused by the FEC
/// decoder), then symbols of that same block whose length disagrees; from
/// a key holder.
fn inconsistent_junk(rng: &mut StdRng) -> [Junk; 2] {
    let session = BROKEN;
    let h = symbol_header(KEY_ID, session, 7, 64 * 1024, SYMBOL);
    let sbn = (0..50u32)
        .map(|esi| {
            let h = Header {
                payload_id: (5 << 24) | esi,
                ..h
            };
            datagram(&h, &random_bytes(rng, usize::from(SYMBOL)))
        })
        .collect();
    let other = (0..50)
        .map(|_| {
            let h = Header {
                transfer_len: 32 * 1024,
                ..h
            };
            datagram(&h, &random_bytes(rng, usize::from(SYMBOL)))
        })
        .collect();
    [
        Junk::new("source block number 5", &["drop_geometry"], sbn),
        Junk::new("disagreeing block length", &["drop_inconsistent"], other),
    ]
}

/// One symbol sent 200 times to one block of 47 source symbols, by a key
/// holder: past its budget of 2K + 16 symbols, the rest are refused.
fn excess_junk(rng: &mut StdRng) -> Junk {
    let h = symbol_header(KEY_ID, BROKEN, 3, 64 * 1024, SYMBOL);
    let d = datagram(&h, &random_bytes(rng, usize::from(SYMBOL)));
    let k = (64 * 1024u64).div_ceil(u64::from(SYMBOL));
    let budget = 2 * k + 16;
    Junk::new("one symbol, 200 times", &["drop_excess"], vec![d; 200]).blocks(200 - budget)
}

/// Whole blocks of garbage symbols and garbage heartbeats with a valid CRC
/// and forged sessions: refused at the datagram tag (or, for sessions no
/// key was derived for yet, by the derivation rate limit). The same under
/// a key id no key has. And a key holder's garbage blocks: they rebuild,
/// so only the block AEAD can refuse them.
fn garbage_junk(rng: &mut StdRng) -> [Junk; 4] {
    let mut one = Vec::new();
    let mut unknown = Vec::new();
    for seq in 0..400u64 {
        let h = symbol_header(KEY_ID, random_session(rng), seq, 1000, SYMBOL);
        let body = random_bytes(rng, usize::from(SYMBOL));
        one.push(unkeyed(rng, &h, &body));
        let hb = Header {
            kind: Kind::Heartbeat,
            lane: Lane::Alert,
            transfer_len: 80,
            symbol_size: 0,
            ..h
        };
        let body = random_bytes(rng, 80);
        one.push(unkeyed(rng, &hb, &body));
        if seq % 4 == 0 {
            let h = Header {
                key_id: KeyId(UNKNOWN_KEY_ID),
                ..h
            };
            let body = random_bytes(rng, usize::from(SYMBOL));
            unknown.push(unkeyed(rng, &h, &body));
            let hb = Header {
                key_id: KeyId(UNKNOWN_KEY_ID),
                ..hb
            };
            let body = random_bytes(rng, 80);
            unknown.push(unkeyed(rng, &hb, &body));
        }
    }
    // Four source symbols each, forged: refused datagram by datagram.
    let mut four = Vec::new();
    // Four source symbols each, from a key holder: rebuilt without
    // decoding, then refused by the block AEAD.
    let mut keyed_four = Vec::new();
    for i in 0..100u64 {
        let h = symbol_header(
            KEY_ID,
            random_session(rng),
            i,
            4 * u32::from(SYMBOL),
            SYMBOL,
        );
        let broken = symbol_header(KEY_ID, BROKEN, 1000 + i, 4 * u32::from(SYMBOL), SYMBOL);
        for esi in 0..4 {
            let body = random_bytes(rng, usize::from(SYMBOL));
            four.push(unkeyed(
                rng,
                &Header {
                    payload_id: esi,
                    ..h
                },
                &body,
            ));
            let body = random_bytes(rng, usize::from(SYMBOL));
            keyed_four.push(datagram(
                &Header {
                    payload_id: esi,
                    ..broken
                },
                &body,
            ));
        }
    }
    [
        Junk::new(
            "garbage blocks and heartbeats, forged sessions, no key",
            &["drop_forged", "drop_unverified"],
            one,
        ),
        Junk::new(
            "garbage blocks of four symbols, no key",
            &["drop_forged", "drop_unverified"],
            four,
        ),
        Junk::new(
            "garbage blocks of four symbols from a key holder",
            &["drop_auth"],
            keyed_four,
        )
        .blocks(100),
        Junk::new(
            "blocks and heartbeats under an unknown key id",
            &["drop_unknown_key"],
            unknown,
        ),
    ]
}

/// A key holder's garbage blocks and heartbeats at the top of the sequence
/// space, under the loaded key id and an unknown one: refused as out of
/// range or by the AEAD, never wrapped around.
fn huge_seq_junk(rng: &mut StdRng) -> Junk {
    let mut out = Vec::new();
    for seq in [u64::MAX, u64::MAX - 1, u64::MAX - 2, 1 << 63, 1 << 48] {
        for key_id in [KEY_ID, UNKNOWN_KEY_ID] {
            for lane in [Lane::Alert, Lane::Bulk] {
                let h = Header {
                    lane,
                    ..symbol_header(key_id, BROKEN, seq, 1000, SYMBOL)
                };
                out.push(datagram(&h, &random_bytes(rng, usize::from(SYMBOL))));
                let hb = Header {
                    kind: Kind::Heartbeat,
                    transfer_len: 80,
                    symbol_size: 0,
                    ..h
                };
                out.push(datagram(&hb, &random_bytes(rng, 80)));
            }
        }
    }
    Junk::new(
        "sequence numbers near 2^64",
        &["drop_auth", "drop_too_old", "drop_unknown_key"],
        out,
    )
}

/// Real blocks and heartbeat envelopes, sealed, FEC-encoded and tagged the
/// way `weir-tx` does it, but with another secret under the loaded key's
/// id: refused at the datagram tag.
fn wrong_key_junk(rng: &mut StdRng) -> Junk {
    let psk = Psk::new(KeyId(KEY_ID), WRONG_KEY);
    let mut encoder = BlockEncoder::new(SYMBOL, MAX_BLOCK).expect("encoder");
    let mut out = Vec::new();
    let blocks = 60u64;
    for seq in 0..blocks {
        let session = random_session(rng);
        let key = psk.session_key(session);
        let mut body = random_bytes(rng, 3000);
        let h = symbol_header(
            KEY_ID,
            session,
            seq,
            u32::try_from(sealed_len(body.len())).expect("small"),
            SYMBOL,
        );
        key.seal(Kind::Symbol, Lane::Bulk, seq, &h.aad(), &mut body)
            .expect("seal");
        // Source symbols only: the block rebuilds exactly once.
        encoder
            .encode(&body, 0, |payload_id, symbol| {
                out.push(keyed(WRONG_KEY, &Header { payload_id, ..h }, symbol));
            })
            .expect("encode");
        let mut hb_body = random_bytes(rng, 60);
        let hb = Header {
            kind: Kind::Heartbeat,
            lane: Lane::Alert,
            transfer_len: u32::try_from(sealed_len(hb_body.len())).expect("small"),
            symbol_size: 0,
            ..h
        };
        key.seal(Kind::Heartbeat, Lane::Alert, seq, &hb.aad(), &mut hb_body)
            .expect("seal");
        out.push(keyed(WRONG_KEY, &hb, &hb_body));
    }
    Junk::new(
        "sealed with a wrong key",
        &["drop_forged", "drop_unverified"],
        out,
    )
}

/// `MAX_PENDING` blocks of 1 MiB from key holders, each one symbol short
/// of rebuilding: the most reassembly memory the example limits let a
/// key holder pin (until `block_timeout`). The bulk lane has 56 of the 64
/// slots; each block is its own session, so none takes another's slot.
fn memory_flood(rng: &mut StdRng) -> Junk {
    let k = MAX_BLOCK.div_ceil(u32::from(SYMBOL));
    let mut out = Vec::new();
    for seq in 0..MAX_PENDING {
        let h = symbol_header(KEY_ID, random_session(rng), seq, MAX_BLOCK, SYMBOL);
        for esi in 0..k - 1 {
            let h = Header {
                payload_id: esi,
                ..h
            };
            out.push(datagram(&h, &random_bytes(rng, usize::from(SYMBOL))));
        }
    }
    // Each block is refused whole (the table is full) or expires; a few
    // symbols may meet an empty derivation bucket first.
    Junk::new(
        "64 partial 1 MiB blocks",
        &["drop_pending_full", "pending_expired", "drop_unverified"],
        out,
    )
    .blocks(MAX_PENDING)
}

/// Thousands of distinct blocks from key holders, one symbol each, while
/// the table is full: a derivation each, most refused by the rate limit.
fn distinct_flood(rng: &mut StdRng) -> Junk {
    let out = (0..5000u64)
        .map(|seq| {
            let h = symbol_header(KEY_ID, random_session(rng), seq, 64 * 1024, SYMBOL);
            datagram(&h, &random_bytes(rng, usize::from(SYMBOL)))
        })
        .collect();
    Junk::new(
        "5000 distinct partial blocks",
        &["drop_pending_full", "pending_expired", "drop_unverified"],
        out,
    )
}

// ---------------------------------------------------------------------
// Checking what came out
// ---------------------------------------------------------------------

/// Every point is a row of the exports, each row at most once, each id
/// once; returns the rows.
fn check_points_once(sub: &Subscriber) -> HashSet<(i64, i64)> {
    let pts = point_payloads(sub);
    let mut rows = HashSet::new();
    let mut ids = HashSet::new();
    for p in &pts {
        let row = aveva_export_row(p).unwrap_or_else(|e| panic!("bogus point {p}: {e}"));
        assert!(rows.insert(row), "published twice: {p}");
        assert!(ids.insert(p["id"].to_string()), "id published twice: {p}");
    }
    rows
}

fn counter(c: &Json, name: &str) -> u64 {
    c[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {c}"))
}

/// Every counter named `drop_*`.
fn drops(c: &Json) -> BTreeMap<String, u64> {
    c.as_object()
        .expect("counters object")
        .iter()
        .filter(|(k, _)| k.starts_with("drop_"))
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

/// Sample a process's resident memory every 20 ms until stopped; the
/// highest value seen, KiB.
struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------
// The junk test
// ---------------------------------------------------------------------

/// All the junk, in an order where each kind meets the state it is meant
/// for: the floods that fill the pending table come last.
fn all_junk(seed: u64) -> Vec<Junk> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut junk = Vec::new();
    junk.extend(random_junk(&mut rng));
    junk.push(malformed_junk(&mut rng));
    junk.push(geometry_junk(&mut rng));
    junk.extend(inconsistent_junk(&mut rng));
    junk.push(excess_junk(&mut rng));
    junk.extend(garbage_junk(&mut rng));
    junk.push(huge_seq_junk(&mut rng));
    junk.push(wrong_key_junk(&mut rng));
    junk.push(memory_flood(&mut rng));
    junk.push(distinct_flood(&mut rng));
    junk
}

/// Send the junk; returns (datagrams sent, peak RSS KiB during it).
fn send_junk(rig: &Rig, junk: &[Junk]) -> (u64, u64) {
    let peak = RssPeak::start(rig.rx.id());
    let t0 = Instant::now();
    let mut sent = 0;
    for j in junk {
        let n = send_paced(&j.datagrams, rig.rx_addr, BURST, PAUSE);
        println!("sent {n:>6} datagrams: {} ({:?} in)", j.name, t0.elapsed());
        sent += n;
    }
    // Let the receiver drain its socket before the peak is read.
    std::thread::sleep(Duration::from_millis(500));
    (sent, peak.finish())
}

/// A real sender through a clean relay: two files, and forged symbols
/// carrying the real session id between them. Returns the relay (to keep
/// it running) and the sender.
fn legit_transfer(site: &Site, rig: &Rig, rows: [usize; 2]) -> (LossyLink, Process) {
    let link = LossyLink::start(rig.rx_addr, Impairment::clean(7));
    let tx = start_tx(site, &tx_config(site, link.input, &rig.key), "tx.log");
    site.drop_file("aveva", "day1.csv", aveva_export(1, rows[0]).as_bytes());
    assert!(
        rig.sub.wait_for(Duration::from_secs(30), |m| m
            .iter()
            .filter(|r| r.topic.starts_with("uns/"))
            .count()
            >= rows[0]),
        "the real sender's first file after the flood; rx log:\n{}",
        rig.rx.log_text()
    );
    // Garbage symbols carrying the real session id, far ahead of its
    // blocks, without the key: refused at the datagram tag, and they must
    // not move its windows.
    let session = {
        let cap = link.capture.lock().expect("capture");
        parse(&cap[0])
            .expect("the sender's datagram parses")
            .0
            .session
    };
    let mut rng = StdRng::seed_from_u64(99);
    let forged: Vec<Vec<u8>> = [10_000u64, 1 << 40, u64::MAX - 1]
        .iter()
        .flat_map(|&seq| {
            let h = symbol_header(KEY_ID, session, seq, 1000, SYMBOL);
            let body = random_bytes(&mut rng, usize::from(SYMBOL));
            let d = unkeyed(&mut rng, &h, &body);
            let body = random_bytes(&mut rng, usize::from(SYMBOL));
            let alert = unkeyed(
                &mut rng,
                &Header {
                    lane: Lane::Alert,
                    ..h
                },
                &body,
            );
            [d, alert]
        })
        .collect();
    send_paced(&forged, rig.rx_addr, BURST, PAUSE);
    site.drop_file("aveva", "day2.csv", aveva_export(2, rows[1]).as_bytes());
    (link, tx)
}

#[test]
fn junk_datagrams_are_counted_publish_nothing_and_leave_the_receiver_working() {
    let site = Site::new();
    let mut rig = start_rig(&site);
    let t0 = Instant::now();
    let junk = all_junk(0x5eed);
    let idle = rss_kib(rig.rx.id()).expect("rx RSS");
    let (sent, peak) = send_junk(&rig, &junk);
    let after = rss_kib(rig.rx.id()).expect("rx RSS");
    let kernel_drops = udp_socket_drops(rig.rx_addr.port()).unwrap_or(0);
    println!(
        "rx RSS: idle {} MiB, peak during the junk {} MiB, after it {} MiB; \
         {sent} junk datagrams, {kernel_drops} dropped by the kernel",
        idle / 1024,
        peak / 1024,
        after / 1024
    );
    assert!(
        rig.rx.running(),
        "rx survived the junk:\n{}",
        rig.rx.log_text()
    );
    // The flood's pending blocks expire after block_timeout (5 s).
    let expired = wait_until(Duration::from_secs(15), || {
        latest_status(&rig.sub)
            .is_some_and(|s| s["counters"]["pending_expired"].as_u64() >= Some(BULK_SLOTS))
    });
    assert!(
        expired,
        "flood blocks expired; status {:?}",
        latest_status(&rig.sub)
    );
    assert!(
        point_payloads(&rig.sub).is_empty(),
        "junk published points: {:?}",
        point_payloads(&rig.sub).first()
    );

    let rows = [3000, 300];
    let (_link, mut tx) = legit_transfer(&site, &rig, rows);
    let total = rows[0] + rows[1];
    let complete = rig.sub.wait_for(Duration::from_secs(30), |m| {
        m.iter().filter(|r| r.topic.starts_with("uns/")).count() >= total
    });
    assert!(complete, "rx log:\n{}", rig.rx.log_text());
    std::thread::sleep(Duration::from_secs(1));
    let _ = tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut rig.rx);
    println!("receiver counters: {c}\nafter {:?}", t0.elapsed());

    check_outputs(&rig.sub, total);
    check_counters(&c, &junk, sent, kernel_drops);
    check_memory(idle, peak);
}

/// Only the real sender's points, each once, valid; no alert, gap or
/// quarantine message; one sender session announced.
fn check_outputs(sub: &Subscriber, total: usize) {
    let rows = check_points_once(sub);
    assert_eq!(rows.len(), total, "every real point exactly once");
    let stray: Vec<String> = sub
        .on("")
        .iter()
        .map(|m| m.topic.clone())
        .filter(|t| {
            !t.starts_with("uns/")
                && !t.ends_with("/status")
                && !t.ends_with("/audit")
                && !t.ends_with("/dq")
        })
        .collect();
    assert!(
        stray.is_empty(),
        "messages beyond points and status: {stray:?}"
    );
    assert!(sub.on(GAPS).is_empty(), "no gap reported");
    let sessions = sub
        .on(AUDIT)
        .iter()
        .filter_map(|m| serde_json::from_slice::<Json>(&m.payload).ok())
        .filter(|a| a["type"] == "sender_session")
        .count();
    assert_eq!(sessions, 1, "only the real sender's session was announced");
}

/// Every kind of junk shows in its counters, and all of it together in
/// the sum of the drop counters.
fn check_counters(c: &Json, junk: &[Junk], sent: u64, kernel_drops: u64) {
    // Each kind must show in its counters; kinds counted under several
    // counters are checked against the sum of those, together with every
    // kind counted under a subset of them.
    let sets: HashSet<&[&str]> = junk.iter().map(|j| j.counters).collect();
    for set in sets {
        let within: Vec<&Junk> = junk
            .iter()
            .filter(|j| j.counters.iter().all(|n| set.contains(n)))
            .collect();
        let events: u64 = within.iter().map(|j| j.events).sum();
        let got: u64 = set.iter().map(|n| counter(c, n)).sum();
        let names: Vec<&str> = within.iter().map(|j| j.name).collect();
        println!("{set:?}: {got} counted, at least {events} expected ({names:?})");
        assert!(
            got + kernel_drops >= events,
            "{set:?} = {got} (+{kernel_drops} kernel drops) < {events} for {names:?}: {c}"
        );
    }
    for name in [
        "drop_crc",
        "drop_malformed",
        "drop_geometry",
        "drop_inconsistent",
        "drop_excess",
        "drop_pending_full",
        "drop_auth",
        "drop_unknown_key",
        "drop_forged",
        "drop_unverified",
    ] {
        assert!(counter(c, name) > 0, "{name} counted: {c}");
    }
    let all_events: u64 = junk.iter().map(|j| j.events).sum();
    let accounted: u64 = drops(c).values().sum::<u64>() + counter(c, "pending_expired");
    println!(
        "junk: {sent} datagrams, {all_events} refusals expected; drop counters + expiries = {accounted}"
    );
    assert!(
        accounted + kernel_drops >= all_events,
        "every piece of junk accounted: {accounted} < {all_events}"
    );
    assert!(
        counter(c, "datagrams") + kernel_drops >= sent,
        "every junk datagram received and counted: {c}"
    );
    assert_eq!(
        counter(c, "blocks_lost"),
        0,
        "forged sequence numbers declared nothing lost"
    );
    assert_eq!(
        counter(c, "drop_frame"),
        0,
        "nothing forged got past the AEAD"
    );
}

/// The flood pins 56 blocks (the bulk lane's slots) of 744 symbols (about
/// 58 MB of symbols); the example limits allow at most about 2 × 64 ×
/// 1 MiB of reassembly state (README, config comments). Measured on a debug build: 12 MiB idle, 79
/// MiB at the peak.
fn check_memory(idle_kib: u64, peak_kib: u64) {
    let growth = peak_kib.saturating_sub(idle_kib) / 1024;
    let documented = 2 * MAX_PENDING * u64::from(MAX_BLOCK) / (1 << 20);
    assert!(
        growth < 100 && growth <= documented,
        "RSS grew {growth} MiB under the flood (bound 100 MiB, limits {documented} MiB)"
    );
    assert!(peak_kib / 1024 < 200, "RSS peak {} MiB", peak_kib / 1024);
}

// ---------------------------------------------------------------------
// Replays of an earlier session
// ---------------------------------------------------------------------

/// What happens to the receiver between the two sessions and the replay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Before {
    /// Nothing: it runs on.
    Running,
    /// A clean restart.
    Restart,
    /// Restarted with its session book deleted (the outbox kept): what an
    /// operator does with a book the receiver says is unreadable.
    BookDeleted,
    /// Restarted with all of its state wiped (a reinstall, a new host),
    /// the replay coming later than `ledger.max_clock_skew`.
    StateWiped,
}

/// A sender session delivers a file through a recording relay, a second
/// session (the sender restarted) delivers another, and then every
/// datagram of the first session is sent to the receiver again, after
/// `before`. Nothing may be published twice.
fn replay_earlier_session(before: Before) {
    let site = Site::new();
    let mut rig = start_rig(&site);
    if before == Before::StateWiped {
        let mut cfg: toml::Table =
            toml::from_str(&std::fs::read_to_string(&rig.rx_cfg).expect("rx config"))
                .expect("toml");
        cfg["ledger"]["max_clock_skew"] = toml::Value::String("5s".into());
        std::fs::write(&rig.rx_cfg, toml::to_string(&cfg).expect("toml")).expect("rx config");
        let _ = stop_rx(&mut rig.rx);
        rig.rx = start_rx(&site, &rig.rx_cfg, "rx1.log");
    }
    let link = LossyLink::start(rig.rx_addr, Impairment::clean(11));
    let tx_cfg = tx_config(&site, link.input, &rig.key);
    let rows = 1500;
    let wait_points = |sub: &Subscriber, n: usize| {
        sub.wait_for(Duration::from_secs(30), |m| {
            m.iter().filter(|r| r.topic.starts_with("uns/")).count() >= n
        })
    };

    let mut tx = start_tx(&site, &tx_cfg, "tx1.log");
    site.drop_file("aveva", "day1.csv", aveva_export(1, rows).as_bytes());
    assert!(wait_points(&rig.sub, rows), "first session delivered");
    let _ = tx.terminate(Duration::from_secs(15));
    let first: Vec<Vec<u8>> = link.capture.lock().expect("capture").clone();
    let sessions: HashSet<SessionId> = first
        .iter()
        .filter_map(|d| parse(d).ok().map(|(h, _)| h.session))
        .collect();
    assert_eq!(sessions.len(), 1, "one session captured");

    let mut tx = start_tx(&site, &tx_cfg, "tx2.log");
    site.drop_file("aveva", "day2.csv", aveva_export(2, rows).as_bytes());
    assert!(wait_points(&rig.sub, 2 * rows), "second session delivered");
    let _ = tx.terminate(Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(1));
    if before != Before::Running {
        let _ = stop_rx(&mut rig.rx);
        let cfg: toml::Table =
            toml::from_str(&std::fs::read_to_string(&rig.rx_cfg).expect("rx config"))
                .expect("toml");
        let state =
            |section: &str, key: &str| PathBuf::from(cfg[section][key].as_str().expect("path"));
        let mut wipe = Vec::new();
        if matches!(before, Before::BookDeleted | Before::StateWiped) {
            wipe.push(state("ledger", "sessions_path"));
        }
        if before == Before::StateWiped {
            wipe.extend([state("ledger", "gaps_path"), state("outbox", "path")]);
            // Later than max_clock_skew (5 s): the captured session and its
            // heartbeats are stale by then.
            std::thread::sleep(Duration::from_secs(6));
        }
        for p in wipe {
            std::fs::remove_file(&p).unwrap_or_else(|e| panic!("removing {}: {e}", p.display()));
        }
        rig.rx = start_rx(&site, &rig.rx_cfg, "rx2.log");
    }

    let sent = send_paced(&first, rig.rx_addr, BURST, PAUSE);
    std::thread::sleep(Duration::from_secs(3));
    let kernel_drops = udp_socket_drops(rig.rx_addr.port()).unwrap_or(0);
    let c = stop_rx(&mut rig.rx);
    println!("replayed {sent} datagrams ({kernel_drops} kernel drops); counters {c}");
    let rows_seen = check_points_once(&rig.sub);
    assert_eq!(rows_seen.len(), 2 * rows, "nothing published twice");
    let refused: u64 = drops(&c).values().sum();
    assert!(
        refused + kernel_drops >= sent,
        "every replayed datagram refused and counted: {refused} < {sent}: {c}"
    );
    if before != Before::Running {
        assert_eq!(
            counter(&c, "records"),
            0,
            "no record of the old session decoded: {c}"
        );
        assert_eq!(
            counter(&c, "heartbeats"),
            0,
            "no replayed heartbeat accepted: {c}"
        );
        let audit: Vec<Json> = rig
            .sub
            .on(AUDIT)
            .iter()
            .filter_map(|m| serde_json::from_slice::<Json>(&m.payload).ok())
            .collect();
        let fake = audit
            .iter()
            .filter(|e| e["type"] == "sender_session" || e["type"] == "link_up")
            .filter(|e| rx_started_after(e, &audit));
        assert_eq!(
            fake.count(),
            0,
            "no sender_session or link event from the replay: {audit:?}"
        );
    }
    if matches!(before, Before::BookDeleted | Before::StateWiped) {
        let lost = rig.sub.on(AUDIT).iter().any(|m| {
            serde_json::from_slice::<Json>(&m.payload)
                .is_ok_and(|e| e["type"] == "session_book_lost")
        });
        assert!(lost, "the lost book was audited");
    }
}

/// Whether audit event `e` came after the last receiver start of `audit`.
fn rx_started_after(e: &Json, audit: &[Json]) -> bool {
    let starts: Vec<usize> = audit
        .iter()
        .enumerate()
        .filter(|(_, a)| a["type"] == "receiver_started")
        .map(|(i, _)| i)
        .collect();
    let pos = audit.iter().position(|a| a == e).unwrap_or(0);
    starts.last().is_some_and(|&s| pos > s)
}

#[test]
fn replayed_earlier_session_into_the_running_receiver_publishes_nothing() {
    replay_earlier_session(Before::Running);
}

#[test]
fn replayed_earlier_session_after_a_receiver_restart_publishes_nothing() {
    replay_earlier_session(Before::Restart);
}

#[test]
fn replayed_earlier_session_after_the_session_book_is_deleted_publishes_nothing() {
    replay_earlier_session(Before::BookDeleted);
}

#[test]
fn replayed_earlier_session_after_all_receiver_state_is_wiped_publishes_nothing() {
    replay_earlier_session(Before::StateWiped);
}

/// An empty UDP datagram is a datagram too: it must be counted (received,
/// and dropped as malformed) like any other.
#[test]
fn empty_datagrams_are_counted() {
    let site = Site::new();
    let mut rig = start_rig(&site);
    let empty = vec![Vec::<u8>::new(); 10];
    let sent =
        send_paced(&empty, rig.rx_addr, BURST, PAUSE) + send_paced([[0u8]], rig.rx_addr, 1, PAUSE);
    // The one-byte datagram, sent last, shows the receiver got this far.
    let seen = wait_until(Duration::from_secs(10), || {
        latest_status(&rig.sub).is_some_and(|s| s["counters"]["drop_malformed"].as_u64() >= Some(1))
    });
    assert!(seen, "the receiver counted the one-byte datagram");
    let c = stop_rx(&mut rig.rx);
    assert_eq!(counter(&c, "datagrams"), sent, "{c}");
    assert_eq!(counter(&c, "drop_malformed"), sent, "{c}");
}

// ---------------------------------------------------------------------
// An unkeyed flood during a real transfer
// ---------------------------------------------------------------------

/// Datagrams the flood sends per millisecond: 10 000 a second.
const FLOOD_PER_MS: usize = 10;

/// Send unkeyed datagrams with valid CRCs at 10 000 a second until `stop`:
/// half with random session ids (1 MiB blocks, symbols and heartbeats, both
/// lanes), half copying a real datagram's header (its session id, lane,
/// length, a sequence number near its own) once `capture` holds one, with
/// random payloads and tags. Returns how many were sent.
fn unkeyed_flood(
    to: SocketAddr,
    capture: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("flood socket");
        let mut rng = StdRng::seed_from_u64(0xf100d);
        let mut real: Option<Header> = None;
        let mut sent = 0u64;
        let start = Instant::now();
        let mut tick = 0u32;
        while !stop.load(Ordering::Relaxed) {
            if real.is_none() {
                let cap = capture.lock().expect("capture");
                real = cap
                    .iter()
                    .filter_map(|d| parse(d).ok().map(|(h, _)| h))
                    .find(|h| h.kind == Kind::Symbol);
            }
            for i in 0..FLOOD_PER_MS {
                let h = match real {
                    Some(r) if i % 2 == 1 => Header {
                        lane: if rng.random_bool(0.5) {
                            Lane::Alert
                        } else {
                            r.lane
                        },
                        seq: r.seq + rng.random_range(0..64),
                        payload_id: rng.random_range(0..64),
                        ..r
                    },
                    _ => {
                        let h = symbol_header(
                            KEY_ID,
                            random_session(&mut rng),
                            rng.random_range(0..1 << 20),
                            MAX_BLOCK,
                            SYMBOL,
                        );
                        match rng.random_range(0..4) {
                            0 => Header {
                                kind: Kind::Heartbeat,
                                lane: Lane::Alert,
                                transfer_len: 120,
                                symbol_size: 0,
                                ..h
                            },
                            1 => Header {
                                lane: Lane::Alert,
                                ..h
                            },
                            _ => h,
                        }
                    }
                };
                let body = random_bytes(&mut rng, h.payload_len());
                let d = unkeyed(&mut rng, &h, &body);
                if sock.send_to(&d, to).is_ok() {
                    sent += 1;
                }
            }
            tick += 1;
            let next = start + Duration::from_millis(u64::from(tick));
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        sent
    })
}

/// The acceptance test of datagram authentication: during a real
/// transfer, anyone without the key sends 10 000 valid-CRC datagrams a
/// second (random sessions, and copies of the real session's headers).
/// Every row is published exactly once, nothing is written down as lost,
/// the receiver's memory stays near idle, and the log holds no line per
/// datagram: the flood is refused at `verify`, counted as `drop_forged`
/// or `drop_unverified`, with at most a summary line every few seconds.
#[test]
fn an_unkeyed_flood_during_a_transfer_costs_no_record() {
    let site = Site::new();
    let mut rig = start_rig(&site);
    let idle = rss_kib(rig.rx.id()).expect("rx RSS");
    let link = LossyLink::start(rig.rx_addr, Impairment::clean(5));
    let stop = Arc::new(AtomicBool::new(false));
    let peak = RssPeak::start(rig.rx.id());
    let t0 = Instant::now();
    let flood = unkeyed_flood(rig.rx_addr, link.capture.clone(), stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let mut cfg = site.tx_config(link.input, &rig.key);
    cfg["lanes"]["bulk"]["max_batch_bytes"] = toml::Value::Integer(8 * 1024);
    cfg["link"]["rate_mbps"] = toml::Value::Float(4.0);
    let mut tx = start_tx(&site, &site.write_toml("tx.toml", &cfg), "tx.log");
    let files = 4;
    let rows = 4000;
    for day in 1..=files {
        site.drop_file(
            "aveva",
            &format!("day{day}.csv"),
            aveva_export(day, rows).as_bytes(),
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let total = files as usize * rows;
    let complete = rig.sub.wait_for(Duration::from_mins(1), |m| {
        m.iter().filter(|r| r.topic.starts_with("uns/")).count() >= total
    });
    // The flood goes on past the last block and the sender's last
    // heartbeats, then stops.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let sent = flood.join().expect("flood thread");
    let flood_secs = t0.elapsed().as_secs();
    let peak = peak.finish();
    assert!(
        complete,
        "every row arrived; rx log:\n{}",
        rig.rx.log_text()
    );
    std::thread::sleep(Duration::from_secs(6));
    let _ = tx.terminate(Duration::from_secs(15));
    let kernel_drops = udp_socket_drops(rig.rx_addr.port()).unwrap_or(0);
    let c = stop_rx(&mut rig.rx);
    println!(
        "flood: {sent} datagrams in {flood_secs} s ({kernel_drops} kernel drops); rx RSS idle {idle} KiB, peak {peak} KiB; counters {c}"
    );
    assert!(
        sent >= 8_000 * flood_secs.saturating_sub(1),
        "the flood kept its rate: {sent} in {flood_secs} s"
    );

    // Zero records cost: every row exactly once, nothing lost.
    let published = check_points_once(&rig.sub);
    assert_eq!(published.len(), total, "every row published exactly once");
    assert!(rig.sub.on(GAPS).is_empty(), "no gap reported");
    for name in ["records_lost", "blocks_lost", "gap_entries", "blocks_shed"] {
        assert_eq!(counter(&c, name), 0, "{name}: {c}");
    }
    let gaps = std::fs::read_to_string(site.path(&format!(
        "weir-rx-hostile-{}-gaps.jsonl",
        std::process::id()
    )))
    .unwrap_or_default();
    assert!(gaps.trim().is_empty(), "gap ledger: {gaps}");

    // Refused at verify, none of it in reassembly or the AEAD gate.
    let refused = counter(&c, "drop_forged") + counter(&c, "drop_unverified");
    assert!(
        refused + kernel_drops >= sent,
        "every flood datagram refused at verify: {refused} < {sent}: {c}"
    );
    for name in [
        "drop_auth",
        "drop_pending_full",
        "drop_inconsistent",
        "pending_expired",
    ] {
        assert_eq!(counter(&c, name), 0, "{name}: {c}");
    }

    // Bounded memory: the flood costs nothing the idle receiver does not
    // hold, beyond the transfer itself.
    let growth_mib = peak.saturating_sub(idle) / 1024;
    assert!(
        growth_mib < 32,
        "rx RSS grew {growth_mib} MiB under the flood (idle {idle} KiB, peak {peak} KiB)"
    );

    check_quiet_log(&rig.rx.log_text(), flood_secs);
}

/// No line per datagram or per block: at most a summary of the refusals
/// every five seconds, and nothing from the AEAD gate.
fn check_quiet_log(log: &str, flood_secs: u64) {
    let summaries = log
        .lines()
        .filter(|l| l.contains("Datagrams refused at verify"))
        .count() as u64;
    let gate = log
        .lines()
        .filter(|l| {
            l.contains("AEAD gate") || (l.contains("pipeline::decode") && l.contains("WARN"))
        })
        .count();
    let noisy = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count() as u64;
    assert!(
        summaries >= 1
            && summaries <= flood_secs / 5 + 2
            && gate == 0
            && noisy <= flood_secs / 5 + 8,
        "{summaries} refusal summaries, {gate} gate lines, {noisy} warnings in {flood_secs} s of flood:\n{log}"
    );
}
