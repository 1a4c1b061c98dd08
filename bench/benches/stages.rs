//! Criterion micro-benchmarks of the sans-IO stages in `weir-shared`.
//!
//! ```text
//!  tx: parse (every format) ─> frame encode (postcard + zstd 1) ─> seal ─> FEC encode ─> wire emit (+ datagram tag) ─> pace
//!  rx: wire parse + CRC ─> datagram tag ─> FEC decode (0 %, 5 % loss) ─> open ─> frame decode ─> MQTT topic + JSON
//! ```
//!
//! Sizes are the ones the pipeline sees with the default configuration:
//! 1500-byte MTU (1408-byte symbols, 1470-byte datagrams), 256 KiB bulk
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
//!
//! `dq/` also counts points: `Engine::check_into` per point, over
//! 10 000 tags visited round-robin (one sample per tag per second, noisy
//! values), with the default check set and with every numeric check on,
//! and the defaults over 100 tags whose state stays in cache (the
//! difference is the cost of looking up cold tag state):
//! `cargo bench -p weir-bench --bench stages -- '^dq/'`; ns/point is
//! 10⁹ / (elem/s).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use weir_bench::synth;
use weir_shared::config::symbol_size_for_mtu;
use weir_shared::contract;
use weir_shared::dq::{Check, DqConfig, DqEvent, DqRule, Engine, TagKind, Verdict};
use weir_shared::fec::{BlockDecoder, BlockEncoder, repair_symbols, source_symbols};
use weir_shared::formats::Format;
use weir_shared::lane::Lane;
use weir_shared::pace::Pacer;
use weir_shared::record::{
    BatchBuilder, DecodeLimits, NativeQuality, Point, Record, SourceSystem, Value, decode_frame,
};
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
/// Tags the `dq/` engine tracks; each iteration checks one sample of each.
const DQ_TAGS: usize = 10_000;
/// Tags of the hot-cache comparison: all state fits in L1/L2, so the
/// difference to `DQ_TAGS` is the cost of cold tag state.
const DQ_FEW_TAGS: usize = 100;
/// Rounds run before timing, so every tag is past its first sample and the
/// statistical rate of change is warmed up (it needs 10 samples).
const DQ_WARMUP_ROUNDS: u32 = 20;
/// Noise samples cycled through (a power of two, fits in L1).
const DQ_NOISE: usize = 4096;

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

/// Header emit + CRC + parse of one symbol datagram, and the CRC alone;
/// then the same with the datagram tag (protocol v2): every datagram of a
/// 256 KiB block sealed as the sender writes it, and checked and
/// decrypted in place as `verify` does. Bytes counted: the block's.
fn wire_stage(c: &mut Criterion) {
    let ss = symbol_size();
    let h = header(ss, BLOCK_BYTES as u32);
    let payload = random_bytes(usize::from(ss), 1);
    let mut slot = vec![0u8; h.datagram_len()];
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(h.datagram_len() as u64));
    g.bench_function("emit_parse_datagram", |b| {
        b.iter(|| {
            wire::emit_into(
                black_box(&h),
                black_box(&payload),
                &[0; wire::TAG_LEN],
                &mut slot,
            );
            let (parsed, body) = wire::parse(black_box(&slot)).expect("own datagram");
            black_box((parsed.payload_id, body.len()))
        });
    });
    wire::emit_into(&h, &payload, &[0; wire::TAG_LEN], &mut slot);
    g.bench_function("crc32_datagram", |b| {
        b.iter(|| crc32fast::hash(black_box(&slot)));
    });
    // A block's worth of datagrams: emitted with and without the tag,
    // and parsed with and without checking it.
    let key = session_key();
    let dkey = key.datagram();
    let n = BLOCK_BYTES.div_ceil(usize::from(ss));
    let dlen = h.datagram_len();
    let symbols = random_bytes(n * usize::from(ss), 3);
    let mut buf = vec![0u8; n * dlen];
    g.throughput(Throughput::Bytes(BLOCK_BYTES as u64));
    g.bench_function("emit_256KiB_untagged", |b| {
        b.iter(|| {
            for (i, (slot, sym)) in buf
                .chunks_exact_mut(dlen)
                .zip(symbols.chunks_exact(usize::from(ss)))
                .enumerate()
            {
                let h = Header {
                    payload_id: i as u32,
                    ..h
                };
                wire::emit_into(&h, black_box(sym), &[0; wire::TAG_LEN], slot);
            }
        });
    });
    g.bench_function("emit_256KiB_tagged", |b| {
        b.iter(|| {
            for (i, (slot, sym)) in buf
                .chunks_exact_mut(dlen)
                .zip(symbols.chunks_exact(usize::from(ss)))
                .enumerate()
            {
                let h = Header {
                    payload_id: i as u32,
                    ..h
                };
                dkey.emit_into(&h, black_box(sym), slot).expect("seal");
            }
        });
    });
    let tagged = buf.clone();
    g.bench_function("parse_256KiB_untagged", |b| {
        b.iter(|| {
            for d in tagged.chunks_exact(dlen) {
                black_box(wire::parse(black_box(d)).is_ok());
            }
        });
    });
    g.bench_function("parse_open_256KiB_tagged", |b| {
        b.iter_batched_ref(
            || tagged.clone(),
            |work| {
                for d in work.chunks_exact_mut(dlen) {
                    let (h, _) = wire::parse(d).expect("own datagram");
                    let (head, body) = d[..dlen - wire::CRC_LEN].split_at_mut(wire::HEADER_LEN);
                    let head: &[u8; wire::HEADER_LEN] = (&*head).try_into().expect("header");
                    black_box(dkey.open(&h, head, body).expect("authentic").len());
                }
            },
            BatchSize::LargeInput,
        );
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

/// The `dq/` workload: analog tags reporting once a second,
/// visited round-robin (so tag state is as cold in cache as it is in a
/// receiver with many tags), each value the tag's level plus noise.
struct DqFeed {
    points: Vec<Point>,
    levels: Vec<f64>,
    noise: Vec<f64>,
    /// The next round's second, ns since the epoch (from 2024-03-10T08:00:00Z).
    second_ns: i64,
    /// Where the next round starts in `noise`.
    stride: usize,
    events: Vec<DqEvent>,
}

impl DqFeed {
    fn new(tags: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let points = (0..tags)
            .map(|i| Point {
                seq: i as u64,
                native_quality: NativeQuality::OpcDa(192),
                unit: Some("degC".into()),
                ..Point::new(
                    SourceSystem::PiWebApi,
                    format!("TIGER.LINE{}.TT_{i:05}.F_CV", i % 8),
                    0,
                    Value::F64(0.0),
                )
            })
            .collect();
        let levels = (0..tags).map(|_| rng.random_range(20.0..200.0)).collect();
        // Roughly normal (Irwin–Hall of 4), σ ≈ 0.29: never flat, rarely a
        // 3σ rate-of-change outlier, as a real transmitter.
        let noise = (0..DQ_NOISE)
            .map(|_| (0..4).map(|_| rng.random::<f64>()).sum::<f64>() - 2.0)
            .collect();
        Self {
            points,
            levels,
            noise,
            second_ns: 1_710_057_600_000_000_000,
            stride: 0,
            events: Vec::new(),
        }
    }

    /// Check one sample of every tag (each verdict goes to `seen`); the
    /// next call is one second later. Returns the number of events.
    fn round(&mut self, engine: &mut Engine, mut seen: impl FnMut(&Verdict)) -> usize {
        // The receiver sees the round 1 s after its second began.
        let now = self.second_ns + 1_000_000_000;
        let tags = self.points.len() as u64;
        // Samples 50 µs apart (10 000 tags: the first half of the second).
        let mut ts = self.second_ns;
        for (i, p) in self.points.iter_mut().enumerate() {
            p.ts_ns = ts;
            ts += 50_000;
            p.seq += tags;
            let n = self.noise[(self.stride + i) & (DQ_NOISE - 1)];
            p.value = Value::F64(self.levels[i] + n);
            let v = engine.check_into(black_box(p), now, &mut self.events);
            seen(&v);
        }
        self.second_ns += 1_000_000_000;
        self.stride = self.stride.wrapping_add(7);
        let n = self.events.len();
        self.events.clear();
        n
    }
}

/// Every numeric check on, through a class matching every tag: ranges and
/// suspect bands (wide), absolute and statistical rate of change, spike
/// thresholds, flatline (explicit), unit, expected interval (gap).
fn dq_everything_on() -> DqConfig {
    let class = DqRule {
        pattern: Some("TIGER.LINE*.TT_*.F_CV".into()),
        kind: Some(TagKind::Analog),
        lo: Some(-50.0),
        hi: Some(400.0),
        suspect_lo: Some(0.0),
        suspect_hi: Some(300.0),
        unit: Some("degC".into()),
        expected_interval: Some(Duration::from_secs(1)),
        flatline_n: Some(5),
        flatline_time: Some(Duration::from_mins(30)),
        flatline_abs_tol: Some(0.001),
        roc_max: Some(50.0),
        roc_sigma: Some(3.0),
        spike_suspect: Some(5.0),
        spike_fail: Some(20.0),
        ..DqRule::default()
    };
    DqConfig {
        classes: vec![class],
        ..DqConfig::default()
    }
}

/// `Engine::check_into` per point, steady state: the default check set,
/// then every check on. Elements counted: points checked.
fn dq_stage(c: &mut Criterion) {
    let mut g = c.benchmark_group("dq");
    // The checks each case must really run (reported, not off).
    let default_checks = [
        Check::TsFuture,
        Check::OutOfOrder,
        Check::RateOfChange,
        Check::Flatline,
    ];
    let all_checks = [
        Check::GrossRange,
        Check::RateOfChange,
        Check::Spike,
        Check::Flatline,
        Check::Gap,
        Check::Unit,
    ];
    for (name, tags, cfg, checks) in [
        (
            "check_default_10k_tags",
            DQ_TAGS,
            DqConfig::default(),
            &default_checks[..],
        ),
        (
            "check_everything_on_10k_tags",
            DQ_TAGS,
            dq_everything_on(),
            &all_checks[..],
        ),
        (
            "check_default_100_tags",
            DQ_FEW_TAGS,
            DqConfig::default(),
            &default_checks[..],
        ),
    ] {
        let mut engine = Engine::new(cfg.validate().expect("dq bench config is valid"));
        let mut feed = DqFeed::new(tags, 9);
        for _ in 0..DQ_WARMUP_ROUNDS {
            feed.round(&mut engine, |_| {});
        }
        // One more round, counted: the timed rounds must be the common
        // path (mostly pass), not the first-sample or the event path.
        let mut by_flag = [0usize; 10];
        let mut all_ran = true;
        let events = feed.round(&mut engine, |v| {
            by_flag[usize::from(v.worst.code())] += 1;
            all_ran &= checks.iter().all(|&c| v.flag(c).is_some());
        });
        assert_eq!(engine.stats().tags, tags);
        assert!(all_ran, "{name}: every point reports {checks:?}");
        assert!(
            by_flag[1] > tags * 9 / 10,
            "{name}: most points should pass, got {by_flag:?}"
        );
        eprintln!(
            "dq: {name}: {tags} tags; one round: pass {}, suspect {}, fail {}, {events} events",
            by_flag[1], by_flag[3], by_flag[4]
        );
        g.throughput(Throughput::Elements(tags as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                feed.round(&mut engine, |v| {
                    black_box(v.worst);
                })
            });
        });
    }
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
    targets = wire_stage, seal_stage, fec_stage, record_stage, contract_stage, formats_stage, parse_stage, pace_stage, dq_stage
}
criterion_main!(stages);
