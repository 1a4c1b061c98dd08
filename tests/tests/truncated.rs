//! A cut export end to end: the real `weir-tx` and `weir-rx`, a Mosquitto
//! the test starts, and a subscriber reading what consumers read.
//!
//! The field report: an InfluxDB line-protocol export whose last line was
//! cut inside its timestamp (`… quality=192i 1764000`, no newline) was
//! published as a Good point at 1970-01-01T00:00:00.001764Z. Here the
//! other lines must arrive, the cut one must not (not live, not on the
//! quarantine topic), and the spool's quarantine must name it with file,
//! line and reason. A second case writes the file in place, still cut, and
//! completes the line before the file has held steady: the sender must
//! wait for it and publish it whole.
//!
//! Mosquitto is required (CI installs it); these tests fail without it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use serde_json::Value as Json;
use weir_tests::{
    Broker, Process, Site, Subscriber, add_spool, free_udp_addr, mosquitto_path, start_rx,
    start_tx, wait_until, write_key,
};

const KEY: [u8; 32] = [0x55; 32];
/// 2024-03-10T08:00:00Z, ns.
const T0: i64 = 1_710_057_600_000_000_000;
/// One second, ns.
const S: i64 = 1_000_000_000;
const STATUS_TOPIC: &str = "diode/v1/plant1/weir01/status";
const QUARANTINE_TOPIC: &str = "diode/v1/plant1/weir01/quarantine";
/// Bound on every wait for the pipeline.
const WAIT: Duration = Duration::from_mins(1);

/// Four whole lines, then the field report's line cut inside its
/// timestamp, without a newline.
fn cut_export() -> String {
    let mut text = String::from("# historian bridge output, precision=ns\n");
    for (i, v) in [42.17, 42.31, 42.5, 42.9].into_iter().enumerate() {
        let ts = T0 + i64::try_from(i).expect("small") * S;
        let _ = writeln!(
            text,
            "process,site=plant1,tag=FIC101.PV value={v},quality=192i {ts}"
        );
    }
    text.push_str("process,site=plant1,tag=FIC101.PV value=12.938,quality=192i 1764000");
    text
}

struct Pair {
    _broker: Broker,
    sub: Subscriber,
    rx: Process,
    tx: Process,
}

/// Broker, subscriber, receiver, and a sender with one `influx` spool
/// scanned every `scan_interval`.
fn start(site: &Site, scan_interval: &str) -> Pair {
    assert!(
        mosquitto_path().is_some(),
        "these tests need mosquitto (apt-get install mosquitto)"
    );
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["uns/#", "diode/#"]);
    let key = site.path("psk.key");
    write_key(&key, 1, KEY);
    let rx_addr = free_udp_addr();
    let id = format!("weir-rx-trunc-{}", std::process::id());
    let rx_table = site.rx_config(rx_addr, &key, broker.port(), &id);
    let rx_cfg = site.write_toml("rx.toml", &rx_table);
    let rx = start_rx(site, &rx_cfg, "rx.log");

    let mut tx_table = site.tx_config(rx_addr, &key);
    add_spool(site, &mut tx_table, "influx", "influx-lp")
        .insert("scan_interval".into(), scan_interval.into());
    let tx_cfg = site.write_toml("tx.toml", &tx_table);
    let tx = start_tx(site, &tx_cfg, "tx.log");
    Pair {
        _broker: broker,
        sub,
        rx,
        tx,
    }
}

/// Every live point published.
fn points(sub: &Subscriber) -> Vec<Json> {
    sub.on("uns/")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("point payload is JSON"))
        .collect()
}

/// The sender's counters in the receiver's latest status.
fn sender_counters(sub: &Subscriber) -> Json {
    sub.on(STATUS_TOPIC)
        .iter()
        .filter(|m| m.topic == STATUS_TOPIC)
        .filter_map(|m| serde_json::from_slice::<Json>(&m.payload).ok())
        .next_back()
        .map_or(Json::Null, |s| s["sender"]["counters"].clone())
}

/// Whether `p` came from the cut line (by its value or its 1970 time).
fn from_the_cut_line(p: &Json) -> bool {
    p["value"] == 12.938
        || p["ts_ns"].as_i64().is_some_and(|ts| ts < T0)
        || p["ts"].as_str().is_some_and(|t| t.starts_with("1970"))
}

#[test]
fn an_export_cut_inside_its_last_timestamp_publishes_the_rest_and_quarantines_the_line() {
    let site = Site::new();
    let pair = start(&site, "100ms");
    site.drop_file("influx", "plant.lp", cut_export().as_bytes());

    let done = site.path("spool/influx/done/plant.lp");
    let rejects = site.path("spool/influx/quarantine/plant.lp.rejects");
    let arrived = wait_until(WAIT, || points(&pair.sub).len() >= 4 && done.exists());
    assert!(
        arrived,
        "{} of 4 points, done/ {}\nrx log:\n{}\ntx log:\n{}",
        points(&pair.sub).len(),
        done.exists(),
        pair.rx.log_text(),
        pair.tx.log_text()
    );
    // The heartbeat (carried in the receiver's status) counts the line.
    let counted = wait_until(WAIT, || sender_counters(&pair.sub)["lines_rejected"] == 1);
    // A fifth point, had the cut line been sent, would be here by now.
    std::thread::sleep(Duration::from_millis(500));

    let pts = points(&pair.sub);
    let values: Vec<_> = pts.iter().map(|p| p["value"].clone()).collect();
    assert_eq!(pts.len(), 4, "the four whole lines, once each: {values:?}");
    assert!(
        !pts.iter().any(from_the_cut_line),
        "the cut line was published: {pts:#?}"
    );
    for p in &pts {
        assert_eq!(p["tag"], "FIC101.PV");
        assert_eq!(p["src"]["file"], "plant.lp");
        assert!(p["ts_ns"].as_i64().is_some_and(|ts| ts >= T0), "{p}");
    }
    let quarantined: Vec<Json> = pair
        .sub
        .on(QUARANTINE_TOPIC)
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect();
    assert!(
        !quarantined.iter().any(from_the_cut_line),
        "the cut line crossed the diode: {quarantined:#?}"
    );

    let text = std::fs::read_to_string(&rejects).unwrap_or_else(|e| {
        panic!(
            "no {}: {e}\ntx log:\n{}",
            rejects.display(),
            pair.tx.log_text()
        )
    });
    assert_eq!(
        text.trim_end(),
        "plant.lp:6: last line has no newline: truncated export (truncated)",
        "file, line and reason"
    );
    assert!(
        counted,
        "the sender's lines_rejected never reached 1: {}",
        sender_counters(&pair.sub)
    );
}

#[test]
fn a_cut_line_still_being_written_is_held_until_it_is_whole() {
    let site = Site::new();
    // Long enough that the test's second write lands within the interval
    // on a busy machine.
    let pair = start(&site, "3s");
    let incoming = site.path("spool/influx/incoming");
    std::fs::create_dir_all(&incoming).expect("incoming dir");
    // Written in place, like a writer that does not rename: the sender
    // sees the cut file and must wait for it to hold steady.
    let path = incoming.join("live.lp");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(cut_export().as_bytes()).expect("write");
    f.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(300));
    // The writer finishes the line: the timestamp and its newline.
    f.write_all(b"000000000000\n").expect("append");
    drop(f);

    let done = site.path("spool/influx/done/live.lp");
    let arrived = wait_until(WAIT, || points(&pair.sub).len() >= 5 && done.exists());
    assert!(
        arrived,
        "{} of 5 points, done/ {}\nrx log:\n{}\ntx log:\n{}",
        points(&pair.sub).len(),
        done.exists(),
        pair.rx.log_text(),
        pair.tx.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    let pts = points(&pair.sub);
    assert_eq!(pts.len(), 5, "{pts:#?}");
    let whole: Vec<&Json> = pts.iter().filter(|p| p["value"] == 12.938).collect();
    assert_eq!(whole.len(), 1, "{pts:#?}");
    assert_eq!(whole[0]["ts_ns"], 1_764_000_000_000_000_000_i64);
    assert!(
        !site
            .path("spool/influx/quarantine/live.lp.rejects")
            .exists(),
        "nothing was cut"
    );
}
