//! End to end: the real `weir-tx` and `weir-rx` binaries, a lossy UDP relay
//! between them, and a real MQTT broker with a real subscriber.
// Long, linear test scripts and small numeric conversions read best as they are.
#![allow(clippy::too_many_lines, clippy::many_single_char_names)]

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;
use weir_tests::{
    Broker, Impairment, LossyLink, Process, Site, Subscriber, add_syslog, aveva_export, fixture,
    free_udp_port, start_rx, start_tx, stop_rx, wait_tcp, wait_until, write_key,
};

const KEY_A: [u8; 32] = [0x11; 32];
const KEY_B: [u8; 32] = [0x22; 32];
/// Rows of the generated bulk file.
const BIG: usize = 30_000;

/// The example configs under `systemd/`, with the addresses and paths of
/// this test put in.
fn tx_config_with(
    site: &Site,
    destination: SocketAddr,
    key: &Path,
    repair_ratio: f64,
    syslog: Option<(u16, u16)>,
) -> PathBuf {
    let mut cfg = site.tx_config(destination, key);
    if let Some((udp, tcp)) = syslog {
        add_syslog(&mut cfg, Some(udp), Some(tcp));
    }
    cfg["lanes"]["bulk"]["repair_ratio"] = toml::Value::Float(repair_ratio);
    // A file's last block can be a few symbols; at 5 % loss two repair
    // symbols leave it a rare but real chance of loss (seen once in CI).
    // Four keep the "every point exactly once" assertion within budget.
    cfg["lanes"]["bulk"]["min_repair"] = toml::Value::Integer(4);
    cfg["lanes"]["bulk"]["max_batch_bytes"] = toml::Value::Integer(64 * 1024);
    site.write_toml("tx.toml", &cfg)
}

struct Pair {
    _broker: Broker,
    sub: Subscriber,
    rx: Process,
    link: LossyLink,
    tx: Process,
    rx_port: u16,
}

fn start_pair(
    site: &Site,
    imp: Impairment,
    tx_key: [u8; 32],
    rx_key: [u8; 32],
    repair_ratio: f64,
) -> Pair {
    start_pair_with(site, imp, tx_key, rx_key, repair_ratio, None)
}

fn start_pair_with(
    site: &Site,
    imp: Impairment,
    tx_key: [u8; 32],
    rx_key: [u8; 32],
    repair_ratio: f64,
    syslog: Option<(u16, u16)>,
) -> Pair {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["uns/#", "diode/#"]);
    let (ktx, krx) = (site.path("tx.key"), site.path("rx.key"));
    write_key(&ktx, 1, tx_key);
    write_key(&krx, 1, rx_key);
    let rx_port = free_udp_port();
    let rx_addr = SocketAddr::from(([127, 0, 0, 1], rx_port));
    let id = format!("weir-rx-{}", std::process::id());
    let rx_cfg = site.write_toml(
        "rx.toml",
        &site.rx_config(rx_addr, &krx, broker.port(), &id),
    );
    let rx = start_rx(site, &rx_cfg, "rx.log");
    let link = LossyLink::start(rx_addr, imp);
    let tx_cfg = tx_config_with(site, link.input, &ktx, repair_ratio, syslog);
    let tx = start_tx(site, &tx_cfg, "tx.log");
    Pair {
        _broker: broker,
        sub,
        rx,
        link,
        tx,
        rx_port,
    }
}

fn points(sub: &Subscriber) -> Vec<Json> {
    sub.on("uns/")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("point payload is JSON"))
        .collect()
}

/// Stop the sender, then the receiver; the receiver's final counters.
fn stop(pair: &mut Pair) -> Json {
    let _ = pair.tx.terminate(Duration::from_secs(15));
    stop_rx(&mut pair.rx)
}

#[test]
fn sample_exports_cross_a_lossy_link_exactly_once() {
    let site = Site::new();
    let imp = Impairment {
        seed: 42,
        drop: 0.05,
        duplicate: 0.02,
        reorder: 0.02,
        burst: 0.0,
        burst_len: 0,
        burst_at: None,
        corrupt: 0.001,
    };
    let t0 = std::time::Instant::now();
    let mut pair = start_pair(&site, imp, KEY_A, KEY_A, 0.25);
    println!("pair started after {:?}", t0.elapsed());
    site.drop_file("pi", "TT101.PV.json", &fixture("pi_webapi_recorded.json"));
    site.drop_file("aveva", "aveva_history.csv", &fixture("aveva_history.csv"));
    site.drop_file("aveva", "bulk_0001.csv", aveva_export(1, BIG).as_bytes());
    // PI line 7 is an exact duplicate of line 6: the data-quality checks
    // withhold it (EXPECTED.md), and count it.
    let expected = 7 + 8 + BIG - 1;

    let arrived = pair.sub.wait_for(Duration::from_mins(2), |m| {
        m.iter().filter(|r| r.topic.starts_with("uns/")).count() >= expected
    });
    let pts = points(&pair.sub);
    println!("{} points arrived after {:?}", pts.len(), t0.elapsed());
    assert!(
        arrived,
        "only {} of {expected} points arrived\nrx log:\n{}\ntx log:\n{}",
        pts.len(),
        pair.rx.log_text(),
        pair.tx.log_text()
    );
    // Give stragglers (duplicates would show up now) a moment.
    std::thread::sleep(Duration::from_millis(500));
    let pts = points(&pair.sub);
    let ids: HashSet<&str> = pts.iter().map(|p| p["id"].as_str().expect("id")).collect();
    assert_eq!(pts.len(), expected, "every point exactly once");
    assert_eq!(ids.len(), expected, "ids unique");

    // Values, timestamps and quality of the sample files, as EXPECTED.md reads them.
    let by_tag_ts: BTreeMap<(String, String), Vec<&Json>> =
        pts.iter().fold(BTreeMap::new(), |mut m, p| {
            let key = (
                p["tag"].as_str().unwrap_or("").to_owned(),
                p["ts"].as_str().unwrap_or("").to_owned(),
            );
            m.entry(key).or_insert_with(Vec::new).push(p);
            m
        });
    let one = |tag: &str, ts: &str| -> &Json {
        let v = by_tag_ts
            .get(&(tag.to_owned(), ts.to_owned()))
            .unwrap_or_else(|| panic!("{tag} at {ts} missing"));
        v[0]
    };
    let p = one("TT101.PV", "2024-03-10T08:00:02.250Z");
    assert_eq!(p["value"], 71.9);
    assert_eq!(p["q"]["code"], 0x4000_0000u32);
    assert_eq!(p["unit"], "°C");
    let p = one("TT101.PV", "2024-03-10T08:00:12Z");
    assert_eq!(p["value"]["state"], "I/O Timeout");
    assert_eq!(p["value"]["code"], 246);
    assert_eq!(p["q"]["code"], 0x8031_0000u32);
    assert_eq!(
        by_tag_ts[&("TT101.PV".into(), "2024-03-10T08:02:00Z".into())].len(),
        1,
        "the exact duplicate Shutdown row is withheld"
    );
    // Every point carries its data-quality verdict.
    assert!(
        pts.iter()
            .all(|p| p["dq"]["flag"].is_u64() && p["dq"]["q"]["code"].is_u64())
    );
    // AVEVA: fall-back hour resolved by file order.
    assert_eq!(one("FIC101.PV", "2024-11-03T06:30:00Z")["value"], 42.31);
    assert_eq!(one("FIC101.PV", "2024-11-03T07:30:00Z")["value"], 41.95);
    assert_eq!(
        one("FIC101.PV", "2024-11-03T07:30:00Z")["ts_resolution"],
        "ambiguous_later"
    );
    let bad = one("TI205.PV", "2024-11-03T07:30:30Z");
    assert_eq!(bad["value"], Json::Null);
    assert_eq!(bad["q"]["code"], 0x8000_0000u32);
    assert_eq!(
        one("BATCH.ID", "2024-11-03T07:32:00Z")["value"],
        "B-2024-1103-07"
    );
    assert_eq!(one("PUMP7.Running", "2024-11-03T07:31:30Z")["value"], true);
    assert_eq!(
        one("FIC101.PV", "2024-11-03T07:32:30Z")["q"]["code"],
        0x0096_0000u32
    );
    // The generated bulk file (local time America/Chicago, CST = UTC-6).
    for i in [0usize, 1, 12_345, BIG - 1] {
        let (h, m, s) = (i / 3600 + 6, i / 60 % 60, i % 60);
        let p = one(
            &format!("LOAD.T{}", i % 3),
            &format!("2024-03-01T{h:02}:{m:02}:{s:02}Z"),
        );
        assert_eq!(p["value"].as_f64(), Some(i as f64 * 0.5));
    }
    // Topic escaping: the raw tag is in the payload, the topic is one segment per tag.
    let topics: HashSet<String> = pair.sub.on("uns/").into_iter().map(|m| m.topic).collect();
    assert!(
        topics.contains("uns/v1/plant1/_unmapped/pi/TT101.PV"),
        "{topics:?}"
    );

    let link_dropped = pair
        .link
        .stats
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    let stats = stop(&mut pair);
    println!("relay dropped {link_dropped} datagrams; receiver counters: {stats}");
    assert!(link_dropped > 0, "the relay really dropped datagrams");
    assert_eq!(stats["blocks_lost"], 0, "FEC recovered every block");
    assert!(
        stats["fec_repaired"].as_u64() > Some(0),
        "repair symbols were needed and used"
    );
    assert_eq!(stats["records"].as_u64(), Some(expected as u64 + 1));
    assert_eq!(
        stats["dq_duplicates"], 1,
        "the withheld duplicate is counted"
    );
    assert!(
        stats["acked"].as_u64() >= Some(expected as u64),
        "every point acknowledged by the broker"
    );
    // Spool lifecycle: every file sent and moved to done/.
    for (spool, name) in [
        ("pi", "TT101.PV.json"),
        ("aveva", "aveva_history.csv"),
        ("aveva", "bulk_0001.csv"),
    ] {
        assert!(
            site.path(&format!("spool/{spool}/done/{name}")).exists(),
            "{name} in done/"
        );
    }
    // The PI `Errors` item is quarantined with file, line and reason.
    let rejects = std::fs::read_to_string(site.path("spool/pi/quarantine/TT101.PV.json.rejects"))
        .expect("rejects file");
    assert!(
        rejects.contains("TT101.PV.json:11:") && rejects.contains("source_error"),
        "{rejects}"
    );
}

#[test]
fn wrong_key_publishes_nothing_and_is_counted() {
    let site = Site::new();
    let mut pair = start_pair(&site, Impairment::clean(1), KEY_B, KEY_A, 0.25);
    site.drop_file("aveva", "aveva_history.csv", &fixture("aveva_history.csv"));
    // Wait until the sender has sent the file and a few heartbeats.
    assert!(
        wait_until(Duration::from_secs(30), || site
            .path("spool/aveva/done/aveva_history.csv")
            .exists()),
        "sender never finished the file"
    );
    std::thread::sleep(Duration::from_secs(2));
    let stats = stop(&mut pair);
    assert_eq!(
        points(&pair.sub).len(),
        0,
        "nothing published under a wrong key"
    );
    assert_eq!(stats["records"], 0);
    assert!(
        stats["drop_forged"].as_u64() >= Some(2),
        "symbols and heartbeats refused at their datagram tag: {stats}"
    );
    assert_eq!(stats["blocks_ok"], 0, "{stats}");
}

#[test]
fn replayed_and_corrupted_datagrams_publish_nothing_new() {
    let site = Site::new();
    let mut pair = start_pair(&site, Impairment::clean(2), KEY_A, KEY_A, 0.25);
    site.drop_file("aveva", "aveva_history.csv", &fixture("aveva_history.csv"));
    assert!(pair.sub.wait_for(Duration::from_mins(1), |m| {
        m.iter().filter(|r| r.topic.starts_with("uns/")).count() >= 8
    }));
    std::thread::sleep(Duration::from_secs(1));
    let before = points(&pair.sub).len();
    assert_eq!(before, 8);

    // Replay every captured datagram, then corrupted copies of them: one
    // with a flipped bit (CRC catches it) and one with a flipped bit and a
    // recomputed CRC (the datagram tag catches it).
    let captured = pair.link.capture.lock().expect("capture").clone();
    let out = UdpSocket::bind("127.0.0.1:0").expect("socket");
    let target = SocketAddr::from(([127, 0, 0, 1], pair.rx_port));
    for d in &captured {
        let _ = out.send_to(d, target);
        let mut bad = d.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        let _ = out.send_to(&bad, target);
        let n = bad.len() - 4;
        let crc = crc32fast::hash(&bad[..n]);
        bad[n..].copy_from_slice(&crc.to_be_bytes());
        let _ = out.send_to(&bad, target);
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let stats = stop(&mut pair);
    assert_eq!(
        points(&pair.sub).len(),
        before,
        "replays and forgeries published nothing"
    );
    let n = captured.len() as u64;
    let crc = stats["drop_crc"].as_u64().unwrap_or(0);
    assert!(
        crc >= n,
        "every bit-flipped datagram counted as a CRC drop: {crc} < {n}"
    );
    let forged = stats["drop_forged"].as_u64().unwrap_or(0);
    assert!(
        forged >= n,
        "every forged copy refused at its datagram tag: {forged} < {n}; {stats}"
    );
    let stale = [
        "drop_resolved",
        "drop_too_old",
        "drop_replay",
        "drop_auth",
        "drop_inconsistent",
    ]
    .iter()
    .map(|k| stats[k].as_u64().unwrap_or(0))
    .sum::<u64>();
    assert!(
        stale >= n,
        "every replayed symbol and forged copy counted: {stale} < {n}; {stats}"
    );
}

#[test]
fn syslog_from_logger_arrives_with_severity_and_time() {
    let site = Site::new();
    let (udp, tcp) = (free_udp_port(), weir_tests::free_tcp_port());
    let imp = Impairment {
        seed: 9,
        drop: 0.05,
        ..Impairment::clean(9)
    };
    let mut pair = start_pair_with(&site, imp, KEY_A, KEY_A, 0.25, Some((udp, tcp)));
    // Wait for the listeners (the sender binds them at start).
    assert!(wait_tcp(tcp, Duration::from_secs(20)));
    let before = chrono_now_ns();
    let logger = |args: &[&str]| {
        let st = std::process::Command::new("logger")
            .args(args)
            .status()
            .expect("logger (util-linux) runs");
        assert!(st.success(), "logger {args:?}");
    };
    let (u, t) = (udp.to_string(), tcp.to_string());
    logger(&[
        "--server",
        "127.0.0.1",
        "--port",
        &u,
        "--udp",
        "--rfc5424",
        "--priority",
        "local4.warning",
        "-t",
        "hmi-agent",
        "--msgid",
        "TEST5424",
        "weir test rfc5424 over udp",
    ]);
    logger(&[
        "--server",
        "127.0.0.1",
        "--port",
        &u,
        "--udp",
        "--rfc3164",
        "--priority",
        "auth.crit",
        "-t",
        "sshd",
        "weir test rfc3164 over udp",
    ]);
    logger(&[
        "--server",
        "127.0.0.1",
        "--port",
        &t,
        "--tcp",
        "--octet-count",
        "--rfc5424",
        "--priority",
        "daemon.err",
        "-t",
        "plc-gw",
        "weir test rfc5424 over tcp",
    ]);
    // A raw datagram with an invalid PRI is refused and counted.
    let raw = UdpSocket::bind("127.0.0.1:0").expect("socket");
    raw.send_to(
        b"<999>1 2024-03-10T08:01:01Z host app - - - PRI out of range",
        ("127.0.0.1", udp),
    )
    .expect("send");
    let on_alerts =
        |m: &[weir_tests::Received]| m.iter().filter(|r| r.topic.contains("/alerts/")).count() >= 3;
    let arrived = pair.sub.wait_for(Duration::from_secs(30), on_alerts);
    let alerts: Vec<Json> = pair
        .sub
        .on("diode/v1/plant1/weir01/alerts/syslog")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("alert JSON"))
        .collect();
    assert!(
        arrived,
        "alerts: {alerts:?}\ntx log:\n{}",
        pair.tx.log_text()
    );
    let find = |text: &str| {
        alerts
            .iter()
            .find(|a| a["message"].as_str().is_some_and(|m| m.contains(text)))
            .unwrap_or_else(|| panic!("{text} not in {alerts:?}"))
    };
    let a = find("rfc5424 over udp");
    assert_eq!(a["severity"], 500, "warning (4) -> 500");
    assert_eq!(a["facility"], 20);
    assert_eq!(a["app"], "hmi-agent");
    assert_eq!(a["msgid"], "TEST5424");
    let b = find("rfc3164 over udp");
    assert_eq!(b["severity"], 800, "crit (2) -> 800");
    assert_eq!(b["facility"], 4);
    let c = find("rfc5424 over tcp");
    assert_eq!(c["severity"], 700, "err (3) -> 700");
    for x in [a, b, c] {
        let ts = chrono::DateTime::parse_from_rfc3339(x["ts"].as_str().expect("ts"))
            .expect("rfc3339")
            .timestamp_nanos_opt()
            .unwrap_or(0);
        // logger stamps the current time (RFC 3164 to the second, in the
        // configured zone, UTC here).
        assert!(
            (ts - before).abs() < 120_000_000_000,
            "event time near now: {x}"
        );
    }
    let rejected = |m: &[weir_tests::Received]| {
        m.iter()
            .filter(|r| r.topic.ends_with("/status"))
            .filter_map(|r| serde_json::from_slice::<Json>(&r.payload).ok())
            .filter_map(|j| j["sender"]["counters"]["alerts_rejected"].as_u64())
            .max()
    };
    pair.sub.wait_for(Duration::from_secs(10), |m| {
        rejected(m).is_some_and(|r| r >= 1)
    });
    let seen = pair
        .sub
        .messages
        .lock()
        .map(|m| rejected(m.as_slice()))
        .unwrap_or_default();
    assert_eq!(
        seen,
        Some(1),
        "the invalid PRI was counted by the sender and reported in its heartbeat"
    );
    let stats = stop(&mut pair);
    assert_eq!(stats["blocks_lost"], 0);
}

fn chrono_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(0))
}
