//! The FEC headroom report end to end: the real `weir-tx` and `weir-rx`
//! over a `LossyLink` with random or bursty loss; the retained status
//! topic's `fec` object must describe the loss the relay imposed.
//!
//! ```text
//!  aveva file ──> weir-tx ══UDP══> LossyLink (5 % random | bursts of 10) ══> weir-rx ──> broker ──> status.fec.bulk
//! ```
// Long, linear test scripts read best as they are.
#![allow(clippy::too_many_lines)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value as Json;
use weir_tests::{
    Broker, Impairment, LossyLink, Site, Subscriber, aveva_export, free_udp_port, latest_status,
    start_rx, start_tx, stop_rx, wait_until, write_key,
};

const KEY: [u8; 32] = [0x5a; 32];
/// Rows of the bulk file: enough blocks for a loss estimate within a point
/// or two of the relay's.
const ROWS: usize = 30_000;

/// What one run saw: the bulk lane's `fec` report from the last status,
/// the whole status, the receiver's final counters, and the relay's
/// dropped / seen datagrams.
struct Outcome {
    bulk: Json,
    status: Json,
    counters: Json,
    relay_loss: f64,
}

fn run(imp: Impairment) -> Outcome {
    let site = Site::new();
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["diode/#"]);
    let (ktx, krx) = (site.path("tx.key"), site.path("rx.key"));
    write_key(&ktx, 1, KEY);
    write_key(&krx, 1, KEY);
    let rx_addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let id = format!("weir-rx-headroom-{}-{}", std::process::id(), imp.seed);
    let rx_cfg = site.write_toml(
        "rx.toml",
        &site.rx_config(rx_addr, &krx, broker.port(), &id),
    );
    let mut rx = start_rx(&site, &rx_cfg, "rx.log");
    let link = LossyLink::start(rx_addr, imp);
    let mut tx_cfg = site.tx_config(link.input, &ktx);
    tx_cfg["lanes"]["bulk"]["repair_ratio"] = toml::Value::Float(0.25);
    tx_cfg["lanes"]["bulk"]["min_repair"] = toml::Value::Integer(4);
    tx_cfg["lanes"]["bulk"]["max_batch_bytes"] = toml::Value::Integer(64 * 1024);
    // Uncompressed: full-size blocks (K ≈ 46) and enough symbols for a
    // loss estimate within a point of the relay's.
    tx_cfg["lanes"]["bulk"]["zstd_level"] = toml::Value::Integer(0);
    let tx_cfg = site.write_toml("tx.toml", &tx_cfg);
    let mut tx = start_tx(&site, &tx_cfg, "tx.log");
    site.drop_file("aveva", "bulk_0001.csv", aveva_export(1, ROWS).as_bytes());

    let sent = wait_until(Duration::from_mins(2), || {
        site.path("spool/aveva/done/bulk_0001.csv").exists()
    });
    assert!(
        sent,
        "the sender never finished the file:\n{}",
        tx.log_text()
    );
    // Every block sent is delivered, or declared lost after `gap_timeout`
    // (5 s); then one more status.
    let settled = wait_until(Duration::from_secs(30), || {
        latest_status(&sub).is_some_and(|s| s["sender"]["lag_blocks"]["bulk"] == 0)
    });
    assert!(settled, "bulk lane never caught up:\n{}", rx.log_text());
    std::thread::sleep(Duration::from_secs(8));
    let status = latest_status(&sub).expect("a status");
    let seen = link.stats.seen.load(Ordering::Relaxed).max(1);
    let dropped = link.stats.dropped.load(Ordering::Relaxed);
    let _ = tx.terminate(Duration::from_secs(15));
    let counters = stop_rx(&mut rx);
    println!(
        "relay dropped {dropped} of {seen}; status fec: {}; counters: {counters}",
        status["fec"]
    );
    Outcome {
        bulk: status["fec"]["bulk"].clone(),
        status,
        counters,
        relay_loss: dropped as f64 / seen as f64,
    }
}

fn f(v: &Json) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

/// Assertions that need the sender to announce its lanes' FEC settings in
/// its heartbeats (`Heartbeat::fec`).
fn check_sent_side(o: &Outcome) {
    let b = &o.bulk;
    assert_eq!(b["ratio"], 0.25, "the bulk ratio, as announced: {b}");
    assert_eq!(b["min_repair"], 4, "{b}");
    assert_eq!(b["interleave"], 4, "{b}");
    assert!(
        b["headroom_min_symbols"].is_i64(),
        "headroom needs the sent side: {b}"
    );
    assert!(b["headroom_p99"].is_f64(), "{b}");
}

#[test]
fn random_loss_is_measured_as_random_with_enough_ratio() {
    let o = run(Impairment {
        seed: 505,
        drop: 0.05,
        ..Impairment::clean(505)
    });
    let b = &o.bulk;
    assert!(b["blocks"].as_u64() > Some(20), "{b}");
    assert!(b["symbols_expected"].as_u64() > Some(1000), "{b}");
    let loss = f(&b["loss"]);
    assert!(
        (loss - 0.05).abs() < 0.02 && (loss - o.relay_loss).abs() < 0.02,
        "measured loss {loss}, relay {}: {b}",
        o.relay_loss
    );
    assert_eq!(b["pattern"], "random", "{b}");
    assert!(f(&b["burstiness"]) < 1.5, "{b}");
    assert!(f(&b["recommended_ratio"]) >= loss, "{b}");
    assert!(f(&b["need_p99"]) >= f(&b["need_p50"]), "{b}");
    assert!(b["repair_needed_max"].as_u64() > Some(0), "{b}");
    // No alert was sent: the alert lane saw nothing.
    assert_eq!(o.status["fec"]["alert"]["blocks"], 0);
    assert_eq!(o.status["fec"]["alert"]["pattern"], "none");
    // The counters: every missing symbol, the worst block.
    assert!(
        o.counters["fec_symbols_missing"].as_u64() >= b["symbols_missing"].as_u64(),
        "{}",
        o.counters
    );
    assert!(o.counters["fec_repair_needed_max"].as_u64() >= b["repair_needed_max"].as_u64());
    check_sent_side(&o);
    // At 5 % random loss the 0.25 ratio has room to spare.
    assert!(f(&b["headroom_p99"]) > 0.0, "{b}");
    assert_eq!(
        b["recommended_interleave"], 4,
        "random: keep the depth: {b}"
    );
}

#[test]
fn burst_loss_is_measured_as_burst() {
    let o = run(Impairment {
        seed: 707,
        burst: 0.005,
        burst_len: 10,
        ..Impairment::clean(707)
    });
    let b = &o.bulk;
    assert!(b["blocks"].as_u64() > Some(20), "{b}");
    assert!(b["symbols_missing"].as_u64() > Some(0), "{b}");
    assert_eq!(b["pattern"], "burst", "{b}");
    assert!(f(&b["burstiness"]) >= 1.5, "{b}");
    assert!(b["longest_run"].as_u64() >= Some(2), "{b}");
    check_sent_side(&o);
    assert!(
        b["recommended_interleave"].as_u64() >= Some(4),
        "never below the depth in use: {b}"
    );
}
