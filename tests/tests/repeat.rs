//! End to end: block repeat (`lanes.bulk.repeat_after`) against a link
//! outage longer than FEC can bridge.
//!
//! A spool feeds files steadily while the relay cuts the link for 1.5 s.
//! With `repeat_after = "3s"` (and the receiver's `gap_timeout` of 6 s
//! above it), every block lost in the outage arrives as its repeat: every
//! point exactly once, nothing reported lost, the other repeats dropped by
//! the replay window. Without repeats, the same outage loses points, and
//! the loss is reported on the gaps topic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use weir_tests::{
    Broker, Impairment, LossyLink, Process, Site, Subscriber, aveva_export, free_udp_addr,
    start_rx, start_tx, stop_rx, write_key,
};

const KEY: [u8; 32] = [0x3c; 32];
const FILES: u32 = 16;
const ROWS: usize = 120;
const OUTAGE: Duration = Duration::from_millis(1500);

struct Run {
    sub: Subscriber,
    rx: Process,
    tx: Process,
    relay: LossyLink,
    _broker: Broker,
    _site: Site,
}

/// Start broker, receiver (gap_timeout 6 s), relay and sender (bulk lane
/// repeating after `repeat_after`, if any); feed `FILES` files of `ROWS`
/// rows, one every 250 ms, cutting the link for `OUTAGE` after the fifth.
fn run(repeat_after: Option<&str>, seed: u64) -> Run {
    let site = Site::new();
    let broker = Broker::start();
    let key = site.path("weir.key");
    write_key(&key, 1, KEY);
    let rx_addr = free_udp_addr();
    let id = format!("weir-rx-repeat-{seed}-{}", std::process::id());
    let mut rx_cfg = site.rx_config(rx_addr, &key, broker.port(), &id);
    rx_cfg["limits"]["gap_timeout"] = "6s".into();
    let rx_cfg = site.write_toml("rx.toml", &rx_cfg);
    let rx = start_rx(&site, &rx_cfg, "rx.log");
    let sub = Subscriber::start(broker.port(), &["uns/#", "diode/#"]);
    let relay = LossyLink::start(rx_addr, Impairment::clean(seed));
    let mut tx_cfg = site.tx_config(relay.input, &key);
    if let Some(after) = repeat_after {
        let bulk = tx_cfg["lanes"]["bulk"]
            .as_table_mut()
            .expect("[lanes.bulk] in the example config");
        bulk.insert("repeat_after".into(), after.into());
    }
    let tx_cfg = site.write_toml("tx.toml", &tx_cfg);
    let tx = start_tx(&site, &tx_cfg, "tx.log");

    for day in 1..=FILES {
        site.drop_file(
            "aveva",
            &format!("load_{day:02}.csv"),
            aveva_export(day, ROWS).as_bytes(),
        );
        if day == 1 {
            // The pipeline runs before the outage starts.
            assert!(
                sub.wait_for(Duration::from_secs(20), |m| m
                    .iter()
                    .any(|r| r.topic.starts_with("uns/"))),
                "first points did not arrive\nrx log:\n{}\ntx log:\n{}",
                rx.log_text(),
                tx.log_text()
            );
        }
        if day == 5 {
            relay.cut(OUTAGE);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Run {
        sub,
        rx,
        tx,
        relay,
        _broker: broker,
        _site: site,
    }
}

/// How many times each (tag, ts) was published.
fn published(sub: &Subscriber) -> HashMap<(String, i64), usize> {
    let mut seen = HashMap::new();
    for m in sub.on("uns/") {
        let p: Json = serde_json::from_slice(&m.payload).expect("point payload is JSON");
        let key = (
            p["tag"].as_str().expect("tag").to_owned(),
            p["ts_ns"].as_i64().expect("ts_ns"),
        );
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

/// Reports of lost blocks on the gaps topic.
fn losses(sub: &Subscriber) -> Vec<Json> {
    sub.on("diode/")
        .iter()
        .filter(|m| m.topic.ends_with("/gaps"))
        .map(|m| serde_json::from_slice::<Json>(&m.payload).expect("gap payload is JSON"))
        .filter(is_loss)
        .collect()
}

/// A gap event for blocks of the bulk lane the link lost.
fn is_loss(g: &Json) -> bool {
    (g["type"] == "blocks_lost" || g["type"] == "gap") && g["lane"] == "bulk"
}

#[test]
fn repeats_carry_a_transfer_across_an_outage_exactly_once() {
    let t0 = Instant::now();
    let mut r = run(Some("3s"), 11);
    let total = FILES as usize * ROWS;
    let all = r.sub.wait_for(Duration::from_secs(20), |m| {
        m.iter().filter(|x| x.topic.starts_with("uns/")).count() >= total
    });
    let outage_dropped = r
        .relay
        .stats
        .outage_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        all,
        "{} of {total} points arrived ({outage_dropped} datagrams dropped in the outage)\nrx log:\n{}\ntx log:\n{}",
        published(&r.sub).len(),
        r.rx.log_text(),
        r.tx.log_text()
    );
    // Repeats of delivered blocks keep coming for 3 s: none may show.
    std::thread::sleep(Duration::from_secs(4));
    let seen = published(&r.sub);
    assert_eq!(seen.len(), total, "every point arrived");
    assert!(
        seen.values().all(|&n| n == 1),
        "a point was published twice: {:?}",
        seen.iter()
            .filter(|(_, n)| **n > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    let _ = r.tx.terminate(Duration::from_secs(15));
    let stats = stop_rx(&mut r.rx);
    println!(
        "repeat: {total} points after {:?}; relay dropped {outage_dropped} datagrams in the outage; receiver {stats}",
        t0.elapsed()
    );
    assert!(outage_dropped > 0, "the outage hit the transfer");
    assert_eq!(stats["blocks_lost"], 0, "nothing declared lost");
    assert_eq!(
        stats["dq_duplicates"], 0,
        "repeats were stopped by the replay window, not by the duplicate check"
    );
    assert!(
        stats["drop_resolved"].as_u64() > Some(0),
        "repeats of delivered blocks were dropped as resolved"
    );
    assert!(losses(&r.sub).is_empty(), "no loss reported");
    let tx_log = plain(&r.tx.log_text());
    assert!(
        tx_log.contains("blocks_repeated=") && !tx_log.contains("blocks_repeated=0 "),
        "the sender's final log counts its repeats:\n{tx_log}"
    );
}

/// `text` without ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn without_repeats_the_outage_loses_points_and_reports_them() {
    let t0 = Instant::now();
    let mut r = run(None, 12);
    let total = FILES as usize * ROWS;
    // Blocks lost in the outage are declared after gap_timeout (6 s).
    let reported = r.sub.wait_for(Duration::from_secs(20), |m| {
        m.iter().any(|x| {
            x.topic.ends_with("/gaps")
                && serde_json::from_slice::<Json>(&x.payload).is_ok_and(|g| is_loss(&g))
        })
    });
    assert!(
        reported,
        "no blocks_lost gap event\nrx log:\n{}",
        r.rx.log_text()
    );
    let seen = published(&r.sub);
    assert!(seen.len() < total, "the outage lost points");
    assert!(seen.values().all(|&n| n == 1), "nothing published twice");
    let _ = r.tx.terminate(Duration::from_secs(15));
    let stats = stop_rx(&mut r.rx);
    println!(
        "no repeat: {} of {total} points after {:?}; receiver {stats}",
        seen.len(),
        t0.elapsed()
    );
    let reported: u64 = losses(&r.sub)
        .iter()
        .filter_map(|g| g["blocks"].as_u64())
        .sum();
    assert!(reported > 0, "the gap events count the lost blocks");
    assert!(stats["blocks_lost"].as_u64() >= Some(reported));
}
