//! The receiver's outbox against a real Mosquitto: broker restarts without
//! persistence, a receiver killed with SIGKILL, and a full outbox.
//!
//! Mosquitto is required here (CI installs it): the embedded broker cannot
//! be restarted, so these tests fail loudly without it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value as Json;
use weir_tests::{
    Broker, Process, Site, Subscriber, aveva_export, free_udp_addr, mosquitto_path, start_rx,
    start_tx, stop_rx, wait_until, write_key,
};

const KEY: [u8; 32] = [0x33; 32];

struct Pair {
    broker: Broker,
    sub: Subscriber,
    rx: Process,
    rx_cfg: PathBuf,
    tx: Process,
}

/// Broker, subscriber, receiver and sender (no loss: every record sent
/// must arrive). `rx_tweak` adjusts the receiver config.
fn start(site: &Site, tx_rate_mbps: f64, rx_tweak: impl FnOnce(&mut toml::Table)) -> Pair {
    assert!(
        mosquitto_path().is_some(),
        "these tests need mosquitto (apt-get install mosquitto)"
    );
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["uns/#", "diode/#"]);
    let key = site.path("psk.key");
    write_key(&key, 1, KEY);
    let rx_addr = free_udp_addr();
    let mut rx_table = site.rx_config(rx_addr, &key, broker.port(), "weir-rx-outbox");
    rx_tweak(&mut rx_table);
    let rx_cfg = site.write_toml("rx.toml", &rx_table);
    let rx = start_rx(site, &rx_cfg, "rx.log");
    let mut tx_table = site.tx_config(rx_addr, &key);
    tx_table["link"]["rate_mbps"] = toml::Value::Float(tx_rate_mbps);
    tx_table["lanes"]["bulk"]["max_batch_bytes"] = toml::Value::Integer(64 * 1024);
    let tx_cfg = site.write_toml("tx.toml", &tx_table);
    let tx = start_tx(site, &tx_cfg, "tx.log");
    Pair {
        broker,
        sub,
        rx,
        rx_cfg,
        tx,
    }
}

/// Distinct (tag, timestamp) points and distinct record ids received.
fn distinct(sub: &Subscriber) -> (usize, usize) {
    let mut keys = HashSet::new();
    let mut ids = HashSet::new();
    for m in sub.on("uns/") {
        let j: Json = serde_json::from_slice(&m.payload).expect("point payload is JSON");
        keys.insert((j["tag"].to_string(), j["ts"].to_string()));
        ids.insert(j["id"].to_string());
    }
    (keys.len(), ids.len())
}

fn wait_points(pair: &Pair, at_least: usize, timeout: Duration) -> bool {
    wait_until(timeout, || distinct(&pair.sub).0 >= at_least)
}

fn gap_events(sub: &Subscriber) -> Vec<Json> {
    sub.on("diode/")
        .iter()
        .filter(|m| m.topic.ends_with("/gaps"))
        .map(|m| serde_json::from_slice(&m.payload).expect("gap payload is JSON"))
        .collect()
}

/// Restart the broker with both programs paused, so the subscriber is
/// subscribed again before the receiver can publish into the new broker
/// (a subscriber that is not there yet cannot receive; that is MQTT, not
/// the receiver). The paused pair keeps its UDP datagrams in the kernel's
/// buffers for the short pause.
fn restart_broker(pair: &mut Pair, round: u64) {
    pair.tx.signal("STOP");
    pair.rx.signal("STOP");
    pair.broker.stop();
    pair.broker.resume();
    assert!(
        pair.sub.wait_subscribed(round, Duration::from_secs(10)),
        "subscriber came back"
    );
    pair.rx.signal("CONT");
    pair.tx.signal("CONT");
}

#[test]
fn broker_restarts_without_persistence_lose_no_record() {
    let site = Site::new();
    // 20 Mbit/s: the receiver decodes faster than one broker connection
    // takes messages, so the outbox holds a backlog at each restart.
    let mut pair = start(&site, 20.0, |_| {});
    let rows = 50_000;
    site.drop_file("aveva", "day1.csv", aveva_export(1, rows).as_bytes());
    site.drop_file("aveva", "day2.csv", aveva_export(2, rows).as_bytes());
    let total = 2 * rows;

    assert!(
        wait_points(&pair, 20_000, Duration::from_mins(2)),
        "first 20 000 points; rx log:\n{}",
        pair.rx.log_text()
    );
    restart_broker(&mut pair, 2);
    assert!(
        wait_points(&pair, 60_000, Duration::from_mins(2)),
        "60 000 points after the first restart"
    );
    restart_broker(&mut pair, 3);
    let complete = wait_points(&pair, total, Duration::from_mins(3));
    let (points, ids) = distinct(&pair.sub);
    let _ = pair.tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut pair.rx);
    assert!(
        complete,
        "{points} of {total} points after two broker restarts; counters {c}"
    );
    assert_eq!(ids, total, "one record id per point");
    assert!(
        c["rewinds"].as_u64() >= Some(2),
        "each restart without our session made the outbox publish again: {c}"
    );
    assert_eq!(c["outbox_refused"], 0, "{c}");
    assert_eq!(c["blocks_lost"], 0, "{c}");
}

#[test]
fn receiver_killed_mid_stream_loses_nothing_it_committed() {
    let site = Site::new();
    // A fast link: the outbox runs well ahead of the broker.
    let mut pair = start(&site, 100.0, |_| {});
    let rows = 60_000;
    site.drop_file("aveva", "day3.csv", aveva_export(3, rows).as_bytes());
    assert!(
        wait_points(&pair, 5_000, Duration::from_mins(2)),
        "first points; rx log:\n{}",
        pair.rx.log_text()
    );
    // Hold the sender so nothing is on the wire while the receiver is
    // down; let the receiver commit what it already has, then crash it.
    pair.tx.signal("STOP");
    std::thread::sleep(Duration::from_secs(1));
    pair.rx.kill();
    let before = distinct(&pair.sub).0;
    assert!(
        before < rows,
        "the receiver was killed with a backlog ({before} of {rows} published)"
    );
    let outbox = site.path("weir-rx-outbox.redb");
    assert!(outbox.exists(), "the outbox file survived the crash");
    pair.rx = start_rx(&site, &pair.rx_cfg, "rx2.log");
    pair.tx.signal("CONT");
    let complete = wait_points(&pair, rows, Duration::from_mins(3));
    let (points, ids) = distinct(&pair.sub);
    let _ = pair.tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut pair.rx);
    assert!(
        complete,
        "{points} of {rows} points after a SIGKILL with {before} published; counters {c}; log:\n{}",
        pair.rx.log_text()
    );
    assert_eq!(ids, rows, "record ids are stable across the restart");
}

#[test]
fn full_outbox_counts_and_reports_lost_blocks_and_recovers() {
    let site = Site::new();
    // 64 KiB blocks, an outbox of four of them, and no broker at first.
    let mut pair = start(&site, 50.0, |t| {
        t["limits"]["max_block_bytes"] = toml::Value::Integer(64 * 1024);
        t["outbox"]["max_bytes"] = toml::Value::Integer(4 * 64 * 1024);
    });
    pair.broker.stop();
    site.drop_file("aveva", "day4.csv", aveva_export(4, 40_000).as_bytes());
    // Wait for the sender to finish the file (it lands in done/).
    let done = site.path("spool/aveva/done/day4.csv");
    assert!(
        wait_until(Duration::from_mins(2), || done.exists()),
        "sender finished the file"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(pair.rx.running(), "receiver survived a full outbox");

    // As in `restart_broker`: the subscriber first, then the receiver.
    pair.rx.signal("STOP");
    pair.broker.resume();
    assert!(
        pair.sub.wait_subscribed(2, Duration::from_secs(10)),
        "subscriber came back"
    );
    pair.rx.signal("CONT");
    // What the outbox held is published, and so are the gap reports.
    let reported = pair.sub.wait_for(Duration::from_mins(1), |m| {
        m.iter().any(|r| r.topic.ends_with("/gaps"))
    });
    assert!(
        reported,
        "gap events published; rx log:\n{}",
        pair.rx.log_text()
    );
    // Recovery: a new file after the broker is back arrives whole.
    let before = distinct(&pair.sub).0;
    site.drop_file("aveva", "day5.csv", aveva_export(5, 3_000).as_bytes());
    assert!(
        wait_points(&pair, before + 3_000, Duration::from_mins(1)),
        "points after recovery"
    );
    let _ = pair.tx.terminate(Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(1));
    let gaps = gap_events(&pair.sub);
    let c = stop_rx(&mut pair.rx);
    let refused = c["outbox_refused"].as_u64().expect("outbox_refused");
    assert!(refused > 0, "blocks refused by the full outbox: {c}");
    let full: Vec<&Json> = gaps
        .iter()
        .filter(|g| g["type"] == "gap" && g["cause"] == "outbox_full")
        .collect();
    // Events are at least once (a rewind publishes the outbox again): one
    // distinct event per refused block.
    let distinct: HashSet<(String, u64)> = full
        .iter()
        .map(|g| {
            (
                g["session"].to_string(),
                g["first_block"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    assert_eq!(
        distinct.len() as u64,
        refused,
        "one gap event per refused block: {gaps:?}"
    );
    assert!(
        full.iter()
            .all(|g| g["lane"] == "bulk" && g["first_block"].is_u64() && g["records"].is_u64()),
        "each refused block is a gap entry counted from its summary: {full:?}"
    );
}
