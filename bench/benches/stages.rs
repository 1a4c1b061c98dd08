//! Criterion micro-benchmarks of the sans-IO stages in `weir-shared`.
//!
//! ```text
//!  tx: parse (every format) ─> frame encode (postcard + zstd 1) ─> seal ─> FEC encode ─> wire emit ─> pace
//!  rx: wire parse + CRC ─> FEC decode (0 %, 5 % loss) ─> open ─> frame decode ─> MQTT topic + JSON
//! ```
//!
//! Sizes are the ones the pipeline sees with the default configuration:
//! 1500-byte MTU (1424-byte symbols, 1470-byte datagrams), 256 KiB bulk
//! batches, 25 % repair. Every benchmark reports bytes per second, so the
//! stages can be compared with each other and with the link rate; which
//! bytes are counted is said beside each one. Samples are few and short
//! (10 samples, 2 s) so that `cargo bench -p weir-bench` stays within a
//! few minutes on a two-core machine; re-run one stage with a filter
//! (`cargo bench -p weir-bench -- fec/`) for tighter intervals.
//!
//! The exception is `parse/`, which counts *points* per second (criterion's
//! `elem/s`) for every historian format, because a format's bytes per point
//! differ several-fold between dialects and points are what an operator
//! sizes a spool by: `cargo bench -p weir-bench --bench stages -- '^parse/'`.
//! Parsing is single-threaded, so the figure is one core's.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use weir_bench::synth;
use weir_shared::config::symbol_size_for_mtu;
use weir_shared::contract;
use weir_shared::fec::{BlockDecoder, BlockEncoder, repair_symbols, source_symbols};
use weir_shared::formats::Format;
use weir_shared::lane::Lane;
use weir_shared::pace::Pacer;
use weir_shared::record::{BatchBuilder, DecodeLimits, Record, decode_frame};
use weir_shared::seal::{KEY_LEN, Psk, SessionKey};
use weir_shared::wire::{self, Header, KeyId, Kind, SessionId};

/// Bulk-lane batch and block size.
const BLOCK_BYTES: usize = 256 * 1024;
/// Bulk-lane repair ratio, per mille.
const REPAIR_PERMILLE: u32 = 250;
/// Rows in the synthetic parser inputs.
const PARSER_ROWS: u64 = 10_000;
/// Records per synthetic file in the per-format `parse/` group.
const FORMAT_RECORDS: u64 = 5_000;
/// Wire rate the pacer is set to, bytes/s (5 Gbit/s).
const PACE_RATE: u64 = 625_000_000;
/// Pacer calls per iteration.
const PACE_CALLS: u64 = 1024;

fn symbol_size() -> u16 {
    symbol_size_for_mtu(1500, false).expect("1500 is a valid MTU")
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn header(symbol_size: u16, transfer_len: u32) -> Header {
    Header {
        kind: Kind::Symbol,
        key_id: KeyId(1),
        lane: Lane::Bulk,
        session: SessionId([7; 16]),
        seq: 42,
        transfer_len,
        symbol_size,
        payload_id: 17,
    }
}

fn session_key() -> SessionKey {
    Psk::new(KeyId(1), [0x5a; KEY_LEN]).session_key(SessionId([7; 16]))
}

/// Header emit + CRC + parse of one symbol datagram, and the CRC alone.
fn wire_stage(c: &mut Criterion) {
    let ss = symbol_size();
    let h = header(ss, BLOCK_BYTES as u32);
    let payload = random_bytes(usize::from(ss), 1);
    let mut slot = vec![0u8; h.datagram_len()];
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(h.datagram_len() as u64));
    g.bench_function("emit_parse_datagram", |b| {
        b.iter(|| {
            wire::emit_into(black_box(&h), black_box(&payload), &mut slot);
            let (parsed, body) = wire::parse(black_box(&slot)).expect("own datagram");
            black_box((parsed.payload_id, body.len()))
        });
    });
    wire::emit_into(&h, &payload, &mut slot);
    g.bench_function("crc32_datagram", |b| {
        b.iter(|| crc32fast::hash(black_box(&slot)));
    });
    g.finish();
}

/// AES-256-GCM seal and open of a 256 KiB block, in place.
fn seal_stage(c: &mut Criterion) {
    let key = session_key();
    let h = header(symbol_size(), BLOCK_BYTES as u32);
    let aad = h.aad();
    let plain = random_bytes(BLOCK_BYTES, 2);
    let mut sealed = plain.clone();
    key.seal(h.kind, h.lane, h.seq, &aad, &mut sealed)
        .expect("seal");
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Bytes(BLOCK_BYTES as u64));
    g.bench_function("seal_256KiB", |b| {
        b.iter_batched_ref(
            || {
                let mut v = Vec::with_capacity(BLOCK_BYTES + 16);
                v.extend_from_slice(&plain);
                v
            },
            |buf| key.seal(h.kind, h.lane, h.seq, &aad, buf).expect("seal"),
            BatchSize::LargeInput,
        );
    });
    g.bench_function("open_256KiB", |b| {
        b.iter_batched_ref(
            || sealed.clone(),
            |buf| {
                key.open(h.kind, h.lane, h.seq, &aad, buf)
                    .expect("open")
                    .len()
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

/// RaptorQ encode (cached and cold plan) and decode of a 256 KiB sealed
/// block with 25 % repair.
fn fec_stage(c: &mut Criterion) {
    let ss = symbol_size();
    let block = random_bytes(BLOCK_BYTES, 3);
    let len = BLOCK_BYTES as u32;
    let k = source_symbols(len, ss);
    let repair = repair_symbols(k, REPAIR_PERMILLE, 2);
    let max_len = 2 * len;
    let mut symbols: Vec<(u32, Vec<u8>)> = Vec::new();
    BlockEncoder::new(ss, max_len)
        .expect("encoder")
        .encode(&block, repair, |pid, s| symbols.push((pid, s.to_vec())))
        .expect("encode");
    // 5 % of all K + R symbols lost, chosen at random (fixed seed).
    let mut rng = StdRng::seed_from_u64(4);
    let lossy: Vec<(u32, Vec<u8>)> = symbols
        .iter()
        .filter(|_| !rng.random_bool(0.05))
        .cloned()
        .collect();
    let decode = |input: &[(u32, Vec<u8>)]| {
        let mut dec = BlockDecoder::new(len, ss, max_len).expect("decoder");
        for (pid, s) in input {
            if let Some(b) = dec.push(*pid, s).expect("symbol") {
                return b.len();
            }
        }
        0
    };
    assert_eq!(decode(&lossy), BLOCK_BYTES, "5 % loss must decode");
    eprintln!(
        "fec: K = {k} source + {repair} repair symbols of {ss} B; 5 % case keeps {} of {}",
        lossy.len(),
        symbols.len()
    );

    let mut g = c.benchmark_group("fec");
    g.throughput(Throughput::Bytes(BLOCK_BYTES as u64));
    let mut enc = BlockEncoder::new(ss, max_len).expect("encoder");
    g.bench_function("encode_256KiB_r25", |b| {
        b.iter(|| {
            let mut n = 0usize;
            enc.encode(black_box(&block), repair, |_, s| n += s.len())
                .expect("encode");
            n
        });
    });
    g.bench_function("encode_256KiB_r25_cold_plan", |b| {
        b.iter(|| {
            let mut n = 0usize;
            BlockEncoder::new(ss, max_len)
                .expect("encoder")
                .encode(black_box(&block), repair, |_, s| n += s.len())
                .expect("encode");
            n
        });
    });
    g.bench_function("decode_256KiB_no_loss", |b| b.iter(|| decode(&symbols)));
    g.bench_function("decode_256KiB_5pct_loss", |b| b.iter(|| decode(&lossy)));
    g.finish();
}

/// Batch frame encode (postcard + zstd 1) and decode of a bulk batch of
/// real parsed points. Bytes counted: the postcard body (plaintext).
fn record_stage(c: &mut Criterion) {
    let points = synth::aveva_points(PARSER_ROWS, 5).expect("synthetic points");
    let mut builder = BatchBuilder::default();
    let mut records = Vec::new();
    for p in points {
        if builder.len_bytes() >= BLOCK_BYTES {
            break;
        }
        let r = Record::Point(p);
        builder.push(&r).expect("push");
        records.push(r);
    }
    let body = builder.len_bytes();
    let mut frame = Vec::new();
    builder.finish(Some(1), &mut frame).expect("finish");
    eprintln!(
        "record: {} points, {body} B postcard, {} B zstd-1 frame (~{} B/point)",
        records.len(),
        frame.len(),
        frame.len() / records.len().max(1)
    );
    let limits = DecodeLimits {
        max_body_bytes: 64 << 20,
        max_records: 1_000_000,
    };

    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Bytes(body as u64));
    let mut out = Vec::new();
    g.bench_function("encode_frame_zstd1", |b| {
        b.iter(|| {
            for r in &records {
                builder.push(black_box(r)).expect("push");
            }
            builder.finish(Some(1), &mut out).expect("finish");
            out.len()
        });
    });
    g.bench_function("decode_frame_zstd1", |b| {
        b.iter(|| {
            decode_frame(black_box(&frame), limits)
                .expect("decode")
                .records
                .len()
        });
    });
    g.finish();
}

/// The receiver's per-point MQTT work for one bulk block: topic from the
/// template and JSON payload, as `validate` builds them. Bytes counted: the
/// block's postcard body, so the figure compares with `record/decode_*`.
fn contract_stage(c: &mut Criterion) {
    let points = synth::aveva_points(PARSER_ROWS, 5).expect("synthetic points");
    let mut builder = BatchBuilder::default();
    let mut block = Vec::new();
    for p in points {
        if builder.len_bytes() >= BLOCK_BYTES {
            break;
        }
        builder.push(&Record::Point(p.clone())).expect("push");
        block.push(p);
    }
    let body = builder.len_bytes();
    let session = SessionId([7; 16]);
    let template = "uns/v1/{site}/_unmapped/{source}/{tag}";
    let payload_bytes: usize = block
        .iter()
        .map(|p| contract::point_payload(session, p).len())
        .sum();
    eprintln!(
        "contract: {} points per block, ~{} B JSON payload per point",
        block.len(),
        payload_bytes / block.len().max(1)
    );
    let mut g = c.benchmark_group("contract");
    g.throughput(Throughput::Bytes(body as u64));
    g.bench_function("point_messages_block", |b| {
        b.iter(|| {
            block
                .iter()
                .map(|p| {
                    contract::point_topic(template, "bench", p).len()
                        + contract::point_payload(session, black_box(p)).len()
                })
                .sum::<usize>()
        });
    });
    g.finish();
}

/// The two historian parsers on ~10 000-row synthetic files. Bytes
/// counted: the file.
fn formats_stage(c: &mut Criterion) {
    let csv = synth::aveva_csv(0, PARSER_ROWS, 6);
    let json = synth::pi_webapi_json(PARSER_ROWS, 6);
    let aveva_ctx = synth::aveva_context("history.csv");
    let pi_ctx = synth::pi_context("TT101.PV.json");
    let mut g = c.benchmark_group("formats");
    g.throughput(Throughput::Bytes(csv.len() as u64));
    g.bench_function("aveva_csv_10k_rows", |b| {
        b.iter(|| {
            Format::Aveva
                .parse(black_box(csv.as_bytes()), &aveva_ctx)
                .expect("parses")
                .points
                .len()
        });
    });
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("pi_webapi_json_10k_items", |b| {
        b.iter(|| {
            Format::PiWebApi
                .parse(black_box(json.as_bytes()), &pi_ctx)
                .expect("parses")
                .points
                .len()
        });
    });
    g.finish();
}

/// Every historian format the sender supports, one ~5 000-record synthetic
/// file each ([`synth::export`]: the fixtures' dialects, a mix of tags,
/// values and qualities, local-time formats in a real zone). Elements
/// counted: the points the file yields, so criterion reports points/s.
///
/// Setup checks, outside the timed loop, that every record parses into its
/// points with no rejects: a generator drifting from its parser must fail
/// the bench, not quietly time the reject path.
fn parse_stage(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for format in Format::ALL {
        let export = synth::export(format, FORMAT_RECORDS, 8)
            .unwrap_or_else(|e| panic!("{format}: synthetic export: {e}"));
        let out = format
            .parse(export.text.as_bytes(), &export.ctx)
            .unwrap_or_else(|e| panic!("{format}: synthetic export does not parse: {e}"));
        assert!(
            out.rejects.is_empty(),
            "{format}: {} of {} records rejected, first {:?}",
            out.rejects.len(),
            export.records,
            out.rejects.first()
        );
        assert_eq!(
            out.points.len() as u64,
            export.points,
            "{format}: every record must become its points"
        );
        eprintln!(
            "parse: {format}: {} records, {} points, {} B (~{} B/point)",
            export.records,
            export.points,
            export.text.len(),
            export.text.len() as u64 / export.points.max(1)
        );
        g.throughput(Throughput::Elements(export.points));
        g.bench_function(format.as_str(), |b| {
            b.iter(|| {
                format
                    .parse(black_box(export.text.as_bytes()), &export.ctx)
                    .expect("parses")
                    .points
                    .len()
            });
        });
    }
    g.finish();
}

/// Pacer arithmetic: `PACE_CALLS` datagrams admitted at 5 Gbit/s on a fake
/// clock that jumps to each retry instant. Bytes counted: those admitted.
fn pace_stage(c: &mut Criterion) {
    let dgram = u64::from(symbol_size()) + wire::OVERHEAD as u64;
    let t0 = Instant::now();
    let mut pacer = Pacer::new(t0, PACE_RATE, 16 * dgram);
    let mut now = t0;
    let mut g = c.benchmark_group("pace");
    g.throughput(Throughput::Bytes(PACE_CALLS * dgram));
    g.bench_function("poll_send_1024_datagrams", |b| {
        b.iter(|| {
            for _ in 0..PACE_CALLS {
                while let Err(at) = pacer.poll_send(black_box(now), dgram) {
                    now = at;
                }
            }
        });
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = stages;
    config = config();
    targets = wire_stage, seal_stage, fec_stage, record_stage, contract_stage, formats_stage, parse_stage, pace_stage
}
criterion_main!(stages);
