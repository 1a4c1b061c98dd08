//! The MQTT contract as a consumer sees it: the real `weir-tx` and `weir-rx`,
//! a Mosquitto on a free port, and the real `mosquitto_sub` client.
//!
//! ```text
//!  sample files, syslog ──> weir-tx ══UDP══> weir-rx ──QoS 1──> mosquitto ──> mosquitto_sub -v   (contract + docs)
//!                                                                         └─> mosquitto_sub -F   (QoS of each message)
//!                                            later: mosquitto_sub --retained-only               (what is retained)
//! ```
//!
//! The first case also keeps `docs/MQTT.md` honest: its block between the
//! `generated:mosquitto_sub` markers is this run's `mosquitto_sub` output
//! (a representative subset). With `WEIR_REGENERATE_DOCS=1` the block is
//! rewritten; otherwise every topic kind and payload shape shown there must
//! still appear in this run's output, so the document cannot go stale
//! silently.
//!
//! Both Mosquitto and `mosquitto_sub` are required (CI installs them): a
//! contract test against a stand-in client would prove little.
// Long, linear test scripts read best as they are.
#![allow(clippy::too_many_lines, clippy::many_single_char_names)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use weir_tests::{
    Broker, Process, Site, add_syslog, aveva_export, fixture, free_udp_addr, free_udp_port,
    mosquitto_path, start_rx, start_tx, write_key,
};

const KEY: [u8; 32] = [0x44; 32];
const POINT_PREFIX: &str = "uns/v1/plant1/_unmapped/";
const GATEWAY: &str = "diode/v1/plant1/weir01";
const MOSQUITTO_SUB: &str = "/usr/bin/mosquitto_sub";
const DOC_BEGIN: &str = "<!-- generated:mosquitto_sub begin -->";
const DOC_END: &str = "<!-- generated:mosquitto_sub end -->";
/// Rows of the generated file of the batching case.
const ROWS: usize = 300;
/// Most lines the document shows per topic kind.
const DOC_LINES_PER_KIND: usize = 8;

/// What the live subscriber prints (after the connection options).
const LIVE_ARGS: [&str; 7] = ["-v", "-q", "1", "-t", "uns/#", "-t", "diode/#"];
/// What a late subscriber prints: retain flag, QoS, topic, payload.
const RETAINED_ARGS: [&str; 12] = [
    "-q",
    "1",
    "-t",
    "uns/#",
    "-t",
    "diode/#",
    "--retained-only",
    "-W",
    "2",
    "-F",
    "%r %q %t %p",
    "--quiet",
];

/// An AVEVA export whose tags need escaping in a topic (and one that does
/// not, beyond being UTF-8).
const AWKWARD_TAGS_CSV: &str = "DateTime,TagName,Value,vValue,Quality,QualityDetail,OPCQuality\n\
2024-11-04 10:00:00.0000000,$Area 1/TT+101#a%b,12.5,12.5,0,192,192\n\
2024-11-04 10:00:00.0000000,Kühler.T1,-3.25,-3.25,0,192,192\n";

/// RFC 5424 messages from `tests/fixtures/syslog_mixed.log` (lines 1, 3).
const SYSLOG_5424: [&str; 2] = [
    "<134>1 2024-03-10T08:00:05.123Z eng-ws01 historian-agent 4321 EXPORT_OK [export@32473 files=\"3\" records=\"1440\"] hourly export complete",
    "<38>1 2024-03-10T02:00:09.5-06:00 hmi-03 sshd 2211 AUTHFAIL [meta@32473 user=\"operator2\" src=\"10.20.3.44\"] Failed password for operator2",
];

fn mosquitto_sub() -> &'static Path {
    let p = Path::new(MOSQUITTO_SUB);
    assert!(
        p.exists() && mosquitto_path().is_some(),
        "this test needs Mosquitto and its clients: apt-get install mosquitto mosquitto-clients \
         (CI's .ci/run installs both)"
    );
    p
}

/// A `mosquitto_sub` started by this test, its stdout in a file; stopped
/// (SIGTERM, then SIGKILL) when dropped.
struct Sub {
    child: Option<Child>,
    out: PathBuf,
}

impl Sub {
    /// Subscribe `id` (a persistent session) to `uns/#` and `diode/#` and
    /// wait for the broker's SUBACK, then keep a client of that session
    /// running with `args`. Messages published in between wait in the
    /// session, so nothing the receiver publishes after this returns is
    /// missed.
    fn start(site: &Site, port: u16, id: &str, args: &[&str]) -> Self {
        let conn = ["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "-i", id];
        let status = Command::new(mosquitto_sub())
            .args(conn)
            .args(["-q", "1", "-t", "uns/#", "-t", "diode/#", "-E", "-W", "10"])
            .stdout(Stdio::null())
            .status()
            .expect("running mosquitto_sub -E");
        assert!(status.success(), "mosquitto_sub -E (subscribe) failed");
        let out = site.path(&format!("{id}.out"));
        let child = Command::new(mosquitto_sub())
            .args(conn)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("sub output"))
            .stderr(std::fs::File::create(site.path(&format!("{id}.err"))).expect("sub log"))
            .spawn()
            .expect("starting mosquitto_sub");
        Self {
            child: Some(child),
            out,
        }
    }

    /// Complete lines printed so far.
    fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .map(str::to_owned)
            .collect()
    }

    /// Stop it and return everything it printed.
    fn stop(&mut self) -> Vec<String> {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.lines()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A late subscriber: the retained messages it is given, as
/// `retain qos topic payload` lines.
fn retained(port: u16) -> Vec<String> {
    let out = Command::new(mosquitto_sub())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(RETAINED_ARGS)
        .stdin(Stdio::null())
        .output()
        .expect("running mosquitto_sub --retained-only");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// One message as `mosquitto_sub -v` printed it.
#[derive(Debug, Clone)]
struct Msg {
    line: String,
    topic: String,
    payload: Json,
}

/// Split a `topic payload` line. Topics may hold spaces (tags do), so the
/// payload starts at the first space after which the rest is JSON.
fn parse_verbose(line: &str) -> Option<Msg> {
    line.match_indices(' ').find_map(|(i, _)| {
        let payload: Json = serde_json::from_str(&line[i + 1..]).ok()?;
        Some(Msg {
            line: line.to_owned(),
            topic: line[..i].to_owned(),
            payload,
        })
    })
}

fn parse_all(lines: &[String]) -> Vec<Msg> {
    lines.iter().filter_map(|l| parse_verbose(l)).collect()
}

/// What a topic is, for the document: `point:<source>`, `status`,
/// `alerts/<source>`, `audit:<type>`, `gaps:<type>`.
fn kind(m: &Msg) -> String {
    if let Some(rest) = m.topic.strip_prefix(POINT_PREFIX) {
        let source = rest.split('/').next().unwrap_or("");
        return format!("point:{source}");
    }
    let Some(rest) = m.topic.strip_prefix(&format!("{GATEWAY}/")) else {
        return format!("other:{}", m.topic);
    };
    match rest {
        "audit" | "gaps" => format!("{rest}:{}", m.payload["type"].as_str().unwrap_or("?")),
        _ => rest.to_owned(),
    }
}

/// Top-level payload keys (of the first element of a batch).
fn keys(payload: &Json) -> String {
    let obj = match payload {
        Json::Array(a) => a.first().and_then(Json::as_object),
        other => other.as_object(),
    };
    obj.map(|o| o.keys().cloned().collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// The shape of a message: its kind and its payload's keys.
fn shape(m: &Msg) -> (String, String) {
    (kind(m), keys(&m.payload))
}

/// What makes a message worth showing beside others of its shape.
fn detail(m: &Msg) -> String {
    let p = &m.payload;
    match kind(m).split(':').next().unwrap_or("") {
        "point" => format!(
            "{} {} {}",
            p["type"],
            p["q"]["sev"],
            p.get("ts_resolution").unwrap_or(&Json::Null)
        ),
        "status" => format!("{} {}", p["online"], p["link_up"]),
        k if k.starts_with("alerts/") => format!("{} {}", p["severity"], p["host"]),
        _ => String::new(),
    }
}

/// The topic segment a tag must become: `/ + # %`, a leading `$` and
/// control characters percent-encoded (UTF-8 bytes, upper-case hex).
fn expected_segment(tag: &str) -> String {
    if tag.is_empty() {
        return "%00".into();
    }
    let mut out = String::new();
    for (i, c) in tag.chars().enumerate() {
        if matches!(c, '/' | '+' | '#' | '%') || (i == 0 && c == '$') || c.is_control() {
            for b in c.to_string().bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Check one point object against the contract; returns its id.
fn check_point(topic: &str, p: &Json, ts_ms: bool) -> String {
    let ctx = || format!("{topic} {p}");
    assert_eq!(p["v"], 1, "payload version: {}", ctx());
    let tag = p["tag"]
        .as_str()
        .unwrap_or_else(|| panic!("tag: {}", ctx()));
    let sys = p["src"]["sys"]
        .as_str()
        .unwrap_or_else(|| panic!("src.sys: {}", ctx()));
    assert_eq!(
        topic,
        format!("{POINT_PREFIX}{sys}/{}", expected_segment(tag)),
        "topic follows the template with the tag escaped"
    );
    let seq = p["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("seq: {}", ctx()));
    let id = p["id"].as_str().unwrap_or_else(|| panic!("id: {}", ctx()));
    let (session, id_seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("id: {}", ctx()));
    assert!(
        session.len() == 16
            && session
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "id is {{16 lower-case hex}}-{{lane}}{{seq}}: {}",
        ctx()
    );
    assert_eq!(
        id_seq,
        format!("b{seq}"),
        "a point's id ends in b (bulk) and its seq: {}",
        ctx()
    );
    let ts = p["ts"].as_str().unwrap_or_else(|| panic!("ts: {}", ctx()));
    let ts_ns = p["ts_ns"]
        .as_i64()
        .unwrap_or_else(|| panic!("ts_ns: {}", ctx()));
    assert!(ts.ends_with('Z'), "ts is UTC: {}", ctx());
    let parsed = chrono::DateTime::parse_from_rfc3339(ts)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt());
    assert_eq!(parsed, Some(ts_ns), "ts and ts_ns agree: {}", ctx());
    if ts_ms {
        assert_eq!(
            p["ts_ms"].as_i64(),
            Some(ts_ns.div_euclid(1_000_000)),
            "ts_ms == floor(ts_ns / 1e6): {}",
            ctx()
        );
    } else {
        assert!(p.get("ts_ms").is_none(), "no ts_ms by default: {}", ctx());
    }
    let value = p.get("value").unwrap_or_else(|| panic!("value: {}", ctx()));
    let type_ok = match p["type"].as_str() {
        Some("null") => value.is_null(),
        Some("bool") => value.is_boolean(),
        Some("i64") => value.is_i64(),
        Some("u64") => value.is_u64(),
        Some("f64") => value.is_number() || value.is_string(),
        Some("string") => value.is_string(),
        Some("digital") => {
            value["state"].is_string() && value["code"].is_i64() && value["system"].is_boolean()
        }
        _ => false,
    };
    assert!(type_ok, "type names the value's shape: {}", ctx());
    let code = p["q"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("q.code: {}", ctx()));
    let sev = match code >> 30 {
        0 => "Good",
        1 => "Uncertain",
        _ => "Bad",
    };
    assert_eq!(p["q"]["sev"], sev, "q.sev from the StatusCode: {}", ctx());
    assert!(p["q"].get("native").is_some(), "q.native: {}", ctx());
    assert!(p["hist"].is_boolean(), "hist: {}", ctx());
    id.to_owned()
}

/// A running pair with its subscribers.
struct Run {
    verbose: Sub,
    qos: Sub,
    tx: Process,
    rx: Process,
    broker: Broker,
    syslog_port: u16,
    site: Site,
}

fn start(name: &str, rx_tweak: impl FnOnce(&mut toml::Table)) -> Run {
    mosquitto_sub();
    let site = Site::new();
    let broker = Broker::start();
    let port = broker.port();
    let id = format!("{name}-{}", std::process::id());
    let verbose = Sub::start(&site, port, &format!("{id}-v"), &LIVE_ARGS);
    let qos = Sub::start(
        &site,
        port,
        &format!("{id}-q"),
        &["-q", "1", "-t", "uns/#", "-t", "diode/#", "-F", "%q %r %t"],
    );
    let key = site.path("psk.key");
    write_key(&key, 1, KEY);
    let rx_addr = free_udp_addr();
    let mut rx_table = site.rx_config(rx_addr, &key, port, &format!("weir-rx-{id}"));
    rx_tweak(&mut rx_table);
    let rx_cfg = site.write_toml("rx.toml", &rx_table);
    let rx = start_rx(&site, &rx_cfg, "rx.log");
    let syslog_port = free_udp_port();
    let mut tx_table = site.tx_config(rx_addr, &key);
    add_syslog(&mut tx_table, Some(syslog_port), None);
    let tx_cfg = site.write_toml("tx.toml", &tx_table);
    let tx = start_tx(&site, &tx_cfg, "tx.log");
    Run {
        verbose,
        qos,
        tx,
        rx,
        broker,
        syslog_port,
        site,
    }
}

impl Run {
    fn wait(&self, what: &str, timeout: Duration, mut done: impl FnMut(&[Msg]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let msgs = parse_all(&self.verbose.lines());
            if done(&msgs) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; {} messages:\n{}\nrx log:\n{}\ntx log:\n{}",
                msgs.len(),
                msgs.iter()
                    .map(|m| m.line.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.rx.log_text(),
                self.tx.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Send the syslog messages, each exactly once, when the sender's
    /// listener is up: its log says so (or, with `WEIR_TEST_LOG` quieter
    /// than `info`, after a few seconds).
    fn send_syslog(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.tx.log_text().contains("Syslog UDP listener up.") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let sock = UdpSocket::bind("127.0.0.1:0").expect("socket");
        for m in SYSLOG_5424 {
            sock.send_to(m.as_bytes(), ("127.0.0.1", self.syslog_port))
                .expect("send syslog");
        }
    }
}

fn count_points(msgs: &[Msg]) -> usize {
    msgs.iter()
        .filter(|m| m.topic.starts_with(POINT_PREFIX))
        .map(|m| m.payload.as_array().map_or(1, Vec::len))
        .sum()
}

fn on<'a>(msgs: &'a [Msg], suffix: &str) -> Vec<&'a Msg> {
    let topic = format!("{GATEWAY}/{suffix}");
    msgs.iter().filter(|m| m.topic == topic).collect()
}

fn event<'a>(msgs: &'a [Msg], suffix: &str, ty: &str) -> Option<&'a Msg> {
    on(msgs, suffix)
        .into_iter()
        .find(|m| m.payload["type"] == ty)
}

#[test]
fn every_topic_and_payload_follows_the_contract() {
    let t0 = Instant::now();
    let mut run = start("contract", |_| {});
    run.site
        .drop_file("pi", "TT101.PV.json", &fixture("pi_webapi_recorded.json"));
    run.site
        .drop_file("aveva", "aveva_history.csv", &fixture("aveva_history.csv"));
    run.site
        .drop_file("aveva", "awkward_tags.csv", AWKWARD_TAGS_CSV.as_bytes());
    run.send_syslog();
    // PI: 7 points (the `Errors` item is quarantined) less the exact
    // duplicate the data-quality checks withhold; AVEVA: 8 + 2.
    let expected_points = 6 + 8 + 2;
    run.wait(
        "points, alerts, audit and a live link",
        Duration::from_mins(1),
        |m| {
            count_points(m) >= expected_points
                && on(m, "alerts/syslog").len() >= SYSLOG_5424.len()
                && event(m, "audit", "receiver_started").is_some()
                && event(m, "audit", "sender_session").is_some()
                && event(m, "audit", "link_up").is_some()
                && on(m, "status").iter().any(|s| s.payload["link_up"] == true)
        },
    );
    // Stragglers (a duplicate would show up now).
    std::thread::sleep(Duration::from_millis(500));

    // What a subscriber joining now is given: the status, nothing else.
    let retained_running = retained(run.broker.port());
    // A crash: the broker publishes the last will.
    run.rx.kill();
    run.wait("the last will", Duration::from_secs(20), |m| {
        on(m, "status")
            .iter()
            .any(|s| s.payload == serde_json::json!({"online": false}))
    });
    let retained_dead = retained(run.broker.port());
    let _ = run.tx.terminate(Duration::from_secs(15));
    let lines = run.verbose.stop();
    let qos_lines = run.qos.stop();
    let msgs = parse_all(&lines);
    println!("{} messages after {:?}", msgs.len(), t0.elapsed());
    assert_eq!(msgs.len(), lines.len(), "every line is `topic JSON`");

    // Every message at QoS 1.
    assert_eq!(
        qos_lines.len(),
        lines.len(),
        "both subscribers saw everything"
    );
    for l in &qos_lines {
        assert!(l.starts_with("1 "), "delivered at QoS 1: {l}");
    }
    // Retained: the status only, online while the receiver runs, offline
    // (the will) after it died.
    let status_topic = format!("{GATEWAY}/status");
    for (lines, online) in [(&retained_running, true), (&retained_dead, false)] {
        assert_eq!(lines.len(), 1, "only the status is retained: {lines:?}");
        let rest = lines[0]
            .strip_prefix(&format!("1 1 {status_topic} "))
            .unwrap_or_else(|| panic!("retained status at QoS 1: {lines:?}"));
        let j: Json = serde_json::from_str(rest).expect("status JSON");
        assert_eq!(j["online"], online, "{j}");
    }

    // Audit: the receiver's start and the sender's session.
    let started = event(&msgs, "audit", "receiver_started").expect("receiver_started");
    let p = &started.payload;
    assert!(p["version"].is_string() && p["listen"].is_string() && p["outbox"].is_string());
    assert_eq!(p["key_ids"], serde_json::json!([1]));
    assert!(p["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    let session_ev = event(&msgs, "audit", "sender_session").expect("sender_session");
    let session = session_ev.payload["session"]
        .as_str()
        .expect("session")
        .to_owned();
    assert_eq!(session.len(), 16);
    assert_eq!(session_ev.payload["key_id"], 1);
    let up = event(&msgs, "audit", "link_up").expect("link_up");
    assert_eq!(up.payload["sender"]["session"], session.as_str());
    assert!(
        event(&msgs, "audit", "link_down").is_none(),
        "the link stayed up"
    );
    assert!(on(&msgs, "gaps").is_empty(), "no gaps on a clean link");

    // Status: online, link up, the sender's session and counters.
    let live = on(&msgs, "status")
        .into_iter()
        .find(|s| s.payload["link_up"] == true)
        .expect("a status with the link up");
    let s = &live.payload;
    assert_eq!(s["online"], true);
    assert!(s["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(s["sender"]["session"], session.as_str());
    for k in [
        "heartbeat_age_ms",
        "uptime_ms",
        "last_block_sent",
        "last_block_delivered",
        "lag_blocks",
        "counters",
        "spool_depth",
        "config_fingerprint",
        "clock_skew_ms",
    ] {
        assert!(s["sender"].get(k).is_some(), "status sender.{k}: {s}");
    }
    assert!(s["counters"]["acked"].is_u64(), "receiver counters: {s}");

    // Points: one object per message, every one valid, ids unique.
    let points: Vec<&Msg> = msgs
        .iter()
        .filter(|m| m.topic.starts_with(POINT_PREFIX))
        .collect();
    assert_eq!(points.len(), expected_points, "every point exactly once");
    let mut ids = HashSet::new();
    for m in &points {
        assert!(m.payload.is_object(), "batch_points = 1: {}", m.line);
        let id = check_point(&m.topic, &m.payload, false);
        assert!(
            id.starts_with(&format!("{session}-")),
            "id carries the session"
        );
        assert!(ids.insert(id), "ids unique: {}", m.line);
    }
    let point = |tag: &str, ts: &str| -> &Json {
        &points
            .iter()
            .find(|m| m.payload["tag"] == tag && m.payload["ts"] == ts)
            .unwrap_or_else(|| panic!("{tag} at {ts} missing"))
            .payload
    };
    // Escaping: the raw tag in the payload, one segment in the topic.
    let awkward = points
        .iter()
        .find(|m| m.payload["tag"] == "$Area 1/TT+101#a%b")
        .expect("awkward tag");
    assert_eq!(
        awkward.topic,
        "uns/v1/plant1/_unmapped/aveva/%24Area 1%2FTT%2B101%23a%25b"
    );
    assert!(
        points
            .iter()
            .any(|m| m.topic == "uns/v1/plant1/_unmapped/aveva/Kühler.T1")
    );
    // A digital state, Bad.
    let d = point("TT101.PV", "2024-03-10T08:00:12Z");
    assert_eq!(
        d["value"],
        serde_json::json!({"state": "I/O Timeout", "code": 246, "system": true})
    );
    assert_eq!(d["type"], "digital");
    assert_eq!(d["q"]["code"], 0x8031_0000u32);
    assert_eq!(d["q"]["native"]["pi"]["good"], false);
    // PI Questionable: Uncertain; fractional seconds kept.
    let u = point("TT101.PV", "2024-03-10T08:00:02.250Z");
    assert_eq!(u["q"]["sev"], "Uncertain");
    assert_eq!(u["unit"], "°C");
    let f = point("TT101.PV", "2024-03-10T08:01:00Z");
    assert_eq!(f["flags"], serde_json::json!(["substituted", "annotated"]));
    // AVEVA: Bad with no value, and local time in the DST fall-back hour.
    let bad = point("TI205.PV", "2024-11-03T07:30:30Z");
    assert_eq!(
        (bad["value"].clone(), bad["type"].clone()),
        (Json::Null, "null".into())
    );
    assert_eq!(bad["q"]["code"], 0x8000_0000u32);
    assert_eq!(
        bad["q"]["native"]["aveva"],
        serde_json::json!({"quality": 1, "detail": 24, "opc": 0})
    );
    let late = point("FIC101.PV", "2024-11-03T07:30:00Z");
    assert_eq!(late["ts_resolution"], "ambiguous_later");
    assert_eq!(late["ts_raw"], "2024-11-03 01:30:00.0000000");
    assert_eq!(
        point("FIC101.PV", "2024-11-03T06:30:00Z")["ts_resolution"],
        "ambiguous_earlier"
    );
    assert_eq!(
        point("FIC101.PV", "2024-11-03T06:29:30Z")["ts_resolution"],
        "ambiguous_earlier"
    );
    assert_eq!(awkward.payload["ts_resolution"], "local");
    assert_eq!(
        awkward.payload["ts"], "2024-11-04T16:00:00Z",
        "CST is UTC-6"
    );

    // Alerts on alerts/syslog, with the severity mapped and kept native.
    let alerts = on(&msgs, "alerts/syslog");
    assert_eq!(alerts.len(), SYSLOG_5424.len(), "each alert once");
    for a in &alerts {
        let p = &a.payload;
        for k in ["v", "id", "seq", "ts", "received", "message", "facility"] {
            assert!(p.get(k).is_some(), "alert {k}: {p}");
        }
        assert_eq!(
            (p["source"].clone(), p["format"].clone()),
            ("syslog".into(), "Syslog5424".into())
        );
        assert_eq!(p["kind"], "SystemEvent");
        let sev = p["severity"].as_u64().expect("severity");
        assert!((1..=1000).contains(&sev));
        assert!(p["severity_band"].is_string() && p["severity_native"].is_string());
        let id = p["id"].as_str().expect("alert id");
        assert_eq!(
            id,
            format!("{session}-a{}", p["seq"]),
            "an alert id ends in a (alert lane) and its seq"
        );
        assert!(
            ids.insert(id.to_owned()),
            "alert ids unique among all records"
        );
    }
    let auth = alerts
        .iter()
        .find(|a| a.payload["msgid"] == "AUTHFAIL")
        .map(|a| &a.payload)
        .expect("AUTHFAIL alert");
    assert_eq!(auth["ts"], "2024-03-10T08:00:09.500Z", "offset applied");
    assert_eq!(
        (
            auth["severity"].clone(),
            auth["severity_band"].clone(),
            auth["severity_native"].clone()
        ),
        (100.into(), "low".into(), "6".into()),
        "info (6) -> 100"
    );
    assert_eq!(auth["facility"], 4);
    assert_eq!(
        (
            auth["host"].clone(),
            auth["app"].clone(),
            auth["procid"].clone(),
            auth["event_id"].clone()
        ),
        (
            "hmi-03".into(),
            "sshd".into(),
            "2211".into(),
            "AUTHFAIL".into()
        )
    );
    assert_eq!(auth["structured"]["meta@32473.user"], "operator2");

    // The document.
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/MQTT.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("{}: {e}", doc_path.display()));
    let (head, _, tail) = split_doc(&doc);
    if std::env::var("WEIR_REGENERATE_DOCS").is_ok_and(|v| v == "1") {
        let block = doc_block(&msgs, &retained_running, &retained_dead);
        let text = format!("{head}{DOC_BEGIN}\n{block}{DOC_END}{tail}");
        std::fs::write(&doc_path, text).expect("writing docs/MQTT.md");
        println!("regenerated {}", doc_path.display());
    } else {
        check_doc(&doc, &msgs, &retained_running, &retained_dead);
    }
}

/// The document around its generated block, and the block.
fn split_doc(doc: &str) -> (&str, &str, &str) {
    let stale = "docs/MQTT.md must hold the generated:mosquitto_sub markers, begin before end";
    let b = doc.find(DOC_BEGIN).expect(stale);
    let e = doc.find(DOC_END).expect(stale);
    assert!(b < e, "{stale}");
    (
        &doc[..b],
        &doc[b + DOC_BEGIN.len()..e],
        &doc[e + DOC_END.len()..],
    )
}

/// Shell-quote an argument for the document.
fn quoted(arg: &str) -> String {
    if arg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    {
        arg.to_owned()
    } else {
        format!("'{arg}'")
    }
}

fn command(args: &[&str]) -> String {
    let mut s = String::from("$ mosquitto_sub -h localhost");
    for a in args {
        s.push(' ');
        s.push_str(&quoted(a));
    }
    s
}

/// A representative subset of the run: per topic kind, the first message
/// of each payload shape and detail, at most `DOC_LINES_PER_KIND`.
fn doc_block(msgs: &[Msg], retained_running: &[String], retained_dead: &[String]) -> String {
    let mut seen = HashSet::new();
    let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut shown = Vec::new();
    for m in msgs {
        let (k, ks) = shape(m);
        if !seen.insert((k.clone(), ks, detail(m))) {
            continue;
        }
        let n = per_kind.entry(k).or_default();
        if *n < DOC_LINES_PER_KIND {
            *n += 1;
            shown.push(m.line.as_str());
        }
    }
    let mut live_args = vec!["-c", "-i", "weir-doc"];
    live_args.extend(LIVE_ARGS);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!-- Written by tests/tests/mqtt_contract.rs; regenerate with \
         WEIR_REGENERATE_DOCS=1 cargo test -p weir-tests --test mqtt_contract -->\n"
    );
    let _ = writeln!(
        s,
        "A subscriber started before the receiver, while the test sent the PI Web API and \
         AVEVA fixtures, an AVEVA file with awkward tag names and two RFC 5424 syslog \
         messages, then killed the receiver (SIGKILL). {} of the {} lines it printed are \
         shown: the first of each payload shape per topic kind.\n",
        shown.len(),
        msgs.len()
    );
    let _ = writeln!(s, "```console\n{}", command(&live_args));
    for l in shown {
        let _ = writeln!(s, "{l}");
    }
    let _ = writeln!(s, "```\n");
    let _ = writeln!(
        s,
        "A subscriber joining later is given the retained status only (`%r` is the retain \
         flag, `%q` the QoS); first while the receiver ran, then after it was killed:\n"
    );
    let _ = writeln!(s, "```console\n{}", command(&RETAINED_ARGS));
    for l in retained_running {
        let _ = writeln!(s, "{l}");
    }
    let _ = writeln!(s, "{}", command(&RETAINED_ARGS));
    for l in retained_dead {
        let _ = writeln!(s, "{l}");
    }
    let _ = writeln!(s, "```");
    s
}

/// Every message shape shown in the document's generated block must be
/// in this run's output, and the retained lines must be of the same kind.
fn check_doc(doc: &str, msgs: &[Msg], retained_running: &[String], retained_dead: &[String]) {
    let (_, block, _) = split_doc(doc);
    let run_shapes: BTreeSet<(String, String)> = msgs.iter().map(shape).collect();
    let retained_now: Vec<String> = retained_running
        .iter()
        .chain(retained_dead)
        .map(|l| retained_shape(l))
        .collect();
    let regenerate = "docs/MQTT.md is stale; regenerate its example output with \
                      WEIR_REGENERATE_DOCS=1 cargo test -p weir-tests --test mqtt_contract";
    let mut shown = 0;
    for line in block.lines() {
        if line.starts_with("uns/") || line.starts_with("diode/") {
            let m = parse_verbose(line)
                .unwrap_or_else(|| panic!("{regenerate}: unreadable line {line}"));
            let sh = shape(&m);
            assert!(
                run_shapes.contains(&sh),
                "{regenerate}: the document shows {sh:?}, this run published no such message"
            );
            shown += 1;
        } else if line.starts_with("0 ") || line.starts_with("1 ") {
            assert!(
                retained_now.contains(&retained_shape(line)),
                "{regenerate}: retained line {line} not seen in this run ({retained_now:?})"
            );
        }
    }
    assert!(
        shown > 0,
        "{regenerate}: the generated block shows no message"
    );
}

/// `retain qos topic keys` of a late subscriber's line.
fn retained_shape(line: &str) -> String {
    let mut parts = line.splitn(3, ' ');
    let (r, q, rest) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let m = parse_verbose(rest);
    format!(
        "{r} {q} {} {}",
        m.as_ref().map_or("", |m| m.topic.as_str()),
        m.as_ref().map(|m| keys(&m.payload)).unwrap_or_default()
    )
}

#[test]
fn batched_points_are_arrays_of_valid_points_with_ts_ms() {
    let t0 = Instant::now();
    let mut run = start("batched", |cfg| {
        let mqtt = cfg["mqtt"].as_table_mut().expect("[mqtt]");
        mqtt.insert("batch_points".into(), toml::Value::Integer(50));
        mqtt.insert("ts_ms".into(), toml::Value::Boolean(true));
    });
    run.site
        .drop_file("aveva", "aveva_history.csv", &fixture("aveva_history.csv"));
    run.site
        .drop_file("aveva", "bulk.csv", aveva_export(2, ROWS).as_bytes());
    let expected = 8 + ROWS;
    run.wait("every point", Duration::from_mins(1), |m| {
        count_points(m) >= expected
    });
    std::thread::sleep(Duration::from_millis(500));
    let _ = run.tx.terminate(Duration::from_secs(15));
    let _ = run.rx.terminate(Duration::from_secs(20));
    let lines = run.verbose.stop();
    let msgs = parse_all(&lines);
    println!("{} messages after {:?}", msgs.len(), t0.elapsed());

    let mut ids = HashSet::new();
    let mut total = 0;
    let mut largest = 0;
    for m in msgs.iter().filter(|m| m.topic.starts_with(POINT_PREFIX)) {
        let elems = m
            .payload
            .as_array()
            .unwrap_or_else(|| panic!("batched payload is an array: {}", m.line));
        assert!(
            (1..=50).contains(&elems.len()),
            "1 to batch_points elements: {}",
            m.line
        );
        let mut last_seq = None;
        for p in elems {
            assert!(p.is_object(), "every element a point: {}", m.line);
            // Also: every element belongs on this message's (per-tag) topic.
            let id = check_point(&m.topic, p, true);
            assert!(ids.insert(id), "ids unique: {p}");
            let seq = p["seq"].as_u64();
            assert!(seq > last_seq, "a topic's points keep their order");
            last_seq = seq;
        }
        total += elems.len();
        largest = largest.max(elems.len());
    }
    assert_eq!(total, expected, "every point exactly once");
    assert_eq!(largest, 50, "batches fill up to batch_points");
}
