//! Sparkplug B output end to end: the real `weir-tx` and `weir-rx` (with
//! `[sparkplug]`, as `systemd/weir-rx.toml` shows it), a Mosquitto the test
//! starts, and what a subscriber to `spBv1.0/#` receives, decoded by a
//! third-party decoder (pysparkplug, `tests/sparkplug/decode.py`) the way a
//! host application reads it.
//!
//! ```text
//!  sample files ──> weir-tx ══UDP══> weir-rx ──spBv1.0/plant1/...──> mosquitto ──> subscriber ──> decode.py
//!                                      ▲                                 │
//!                                      └── NCMD, DCMD, STATE (built by tests/sparkplug/command.py, sent with mosquitto_pub)
//! ```
//!
//! Needs Mosquitto and its clients, and `python3` with
//! `pysparkplug==0.5.0` (CI's `.ci/run` installs all three). A missing
//! tool fails the test with the install hint; it never skips.
// Long, linear test scripts read best as they are.
#![allow(clippy::too_many_lines)]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use weir_tests::{
    Broker, Process, Received, Site, Subscriber, add_syslog, decode_sparkplug, fixture,
    free_udp_addr, free_udp_port, mosquitto_path, python, require_pysparkplug, sparkplug_script,
    start_rx, start_tx, stop_rx, wait_until, write_key,
};

const KEY: [u8; 32] = [0x5b; 32];
const MOSQUITTO_PUB: &str = "/usr/bin/mosquitto_pub";
const MOSQUITTO_SUB: &str = "/usr/bin/mosquitto_sub";
/// The example's ids.
const NODE: &str = "spBv1.0/plant1/";
const NCMD: &str = "spBv1.0/plant1/NCMD/weir01";
const DCMD_PI: &str = "spBv1.0/plant1/DCMD/weir01/pi";
const STATE: &str = "spBv1.0/STATE/scada";
const GATEWAY: &str = "diode/v1/plant1/weir01";
/// `TT101.PV` (the PI file's name) as a Sparkplug metric name.
const TT101: &str = "TT101_PV";
/// What the node publishes (not commands, not STATE).
const NODE_VERBS: [&str; 5] = ["NBIRTH", "NDEATH", "DBIRTH", "NDATA", "DDATA"];

/// Mosquitto, its clients and pysparkplug, or a loud failure.
fn require_tools() {
    assert!(
        mosquitto_path().is_some()
            && Path::new(MOSQUITTO_PUB).exists()
            && Path::new(MOSQUITTO_SUB).exists(),
        "this test needs Mosquitto and its clients: apt-get install mosquitto mosquitto-clients \
         (CI's .ci/run installs both)"
    );
    require_pysparkplug();
}

/// The commented `[sparkplug]` example of `systemd/weir-rx.toml`, as a
/// table: the test runs what the document shows.
fn sparkplug_example() -> toml::Table {
    let example = include_str!("../../systemd/weir-rx.toml");
    let start = example
        .find("# [sparkplug]")
        .expect("systemd/weir-rx.toml shows a commented [sparkplug] example");
    let text: Vec<&str> = example[start..]
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| !l.starts_with('#'))
        .collect();
    let parsed: toml::Table = toml::from_str(&text.join("\n")).expect("the example parses");
    parsed["sparkplug"]
        .as_table()
        .expect("[sparkplug] table")
        .clone()
}

/// A running pair with a subscriber to the Sparkplug and JSON topics.
struct Run {
    site: Site,
    broker: Broker,
    sub: Subscriber,
    rx: Process,
    rx_cfg: PathBuf,
    tx: Process,
    syslog_port: u16,
}

fn start(tweak: impl FnOnce(&mut toml::Table)) -> Run {
    require_tools();
    let site = Site::new();
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["spBv1.0/#", "diode/#", "uns/#"]);
    let key = site.path("psk.key");
    write_key(&key, 1, KEY);
    let rx_addr = free_udp_addr();
    let mut rx_table = site.rx_config(rx_addr, &key, broker.port(), "weir-rx-sparkplug");
    let mut sp = sparkplug_example();
    tweak(&mut sp);
    rx_table.insert("sparkplug".into(), toml::Value::Table(sp));
    let rx_cfg = site.write_toml("rx.toml", &rx_table);
    let rx = start_rx(&site, &rx_cfg, "rx.log");
    let syslog_port = free_udp_port();
    let mut tx_table = site.tx_config(rx_addr, &key);
    add_syslog(&mut tx_table, Some(syslog_port), None);
    let tx_cfg = site.write_toml("tx.toml", &tx_table);
    let tx = start_tx(&site, &tx_cfg, "tx.log");
    Run {
        site,
        broker,
        sub,
        rx,
        rx_cfg,
        tx,
        syslog_port,
    }
}

impl Run {
    /// What the node published so far, in order.
    fn node_messages(&self) -> Vec<Received> {
        self.sub
            .on(NODE)
            .into_iter()
            .filter(|m| NODE_VERBS.contains(&verb(&m.topic)))
            .collect()
    }

    /// What the node published so far, decoded by pysparkplug.
    fn decoded(&self) -> Vec<Json> {
        decode(&self.node_messages())
    }

    /// Decode until `done` holds (or fail after `timeout`, with the logs).
    fn wait_decoded(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Json]) -> bool,
    ) -> Vec<Json> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.decoded();
            if done(&d) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; decoded:\n{}\nrx log:\n{}",
                serde_json::to_string_pretty(&d).unwrap_or_default(),
                self.rx.log_text()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn wait_log(&self, what: &str, count: usize, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.rx.log_text().matches(what).count()
                >= count),
            "rx did not log `{what}` {count} time(s):\n{}",
            self.rx.log_text()
        );
    }

    /// Publish `payload` on `topic` with the real `mosquitto_pub`.
    fn mqtt_pub(&self, topic: &str, payload: &[u8], retain: bool) {
        let file = self.site.path("mosquitto_pub.bin");
        std::fs::write(&file, payload).expect("payload file");
        let mut cmd = Command::new(MOSQUITTO_PUB);
        cmd.args(["-h", "127.0.0.1", "-p", &self.broker.port().to_string()])
            .args(["-q", "1", "-t", topic, "-f", &file.display().to_string()]);
        if retain {
            cmd.arg("-r");
        }
        let out = cmd.output().expect("running mosquitto_pub");
        assert!(
            out.status.success(),
            "mosquitto_pub failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Say the primary host `scada` is online (retained, as a host does).
    fn host_online(&self) {
        let ts = chrono::Utc::now().timestamp_millis();
        let state = json!({"online": true, "timestamp": ts}).to_string();
        self.mqtt_pub(STATE, state.as_bytes(), true);
    }
}

/// `spBv1.0/{group}/{VERB}/...` → `VERB`.
fn verb(topic: &str) -> &str {
    topic.split('/').nth(2).unwrap_or("")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// Decode messages, in order, with `decode.py`.
fn decode(messages: &[Received]) -> Vec<Json> {
    decode_sparkplug(
        messages
            .iter()
            .map(|m| (m.topic.as_str(), m.payload.as_slice())),
    )
}

/// A command payload built by pysparkplug (`command.py ARGS`).
fn command(args: &[&str]) -> Vec<u8> {
    let out = Command::new(python())
        .arg(sparkplug_script("command.py"))
        .args(args)
        .output()
        .expect("running command.py");
    assert!(
        out.status.success(),
        "command.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    unhex(String::from_utf8_lossy(&out.stdout).trim())
}

fn of_type<'a>(msgs: &'a [Json], ty: &str) -> Vec<&'a Json> {
    msgs.iter().filter(|m| m["type"] == ty).collect()
}

fn of_device<'a>(msgs: &'a [Json], ty: &str, device: &str) -> Vec<&'a Json> {
    msgs.iter()
        .filter(|m| m["type"] == ty && m["device"] == device)
        .collect()
}

fn metric<'a>(msg: &'a Json, name: &str) -> &'a Json {
    msg["metrics"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("metric {name} in {msg}"))
}

/// Every sample of `name` a device's births and data carried, in order.
fn samples<'a>(msgs: &[&'a Json], name: &str) -> Vec<&'a Json> {
    msgs.iter()
        .flat_map(|m| m["metrics"].as_array().into_iter().flatten())
        .filter(|m| m["name"] == name)
        .collect()
}

/// The births and data of one device in the first session (up to the
/// second NBIRTH).
fn first_session<'a>(msgs: &'a [Json], device: &str) -> Vec<&'a Json> {
    let second = msgs
        .iter()
        .enumerate()
        .filter(|(_, m)| m["type"] == "NBIRTH")
        .nth(1)
        .map_or(msgs.len(), |(i, _)| i);
    msgs[..second]
        .iter()
        .filter(|m| m["device"] == device && (m["type"] == "DBIRTH" || m["type"] == "DDATA"))
        .collect()
}

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("timestamp")
        .timestamp_millis()
}

/// Every message after an NBIRTH carries the next seq (mod 256), until
/// the next NBIRTH (seq 0) or NDEATH (none).
fn check_seq(msgs: &[Json]) {
    let mut expected: Option<u64> = None;
    for m in msgs {
        match m["type"].as_str() {
            Some("NBIRTH") => {
                assert_eq!(m["seq"], 0, "NBIRTH seq: {m}");
                expected = Some(1);
            }
            Some("NDEATH") => expected = None,
            _ => {
                let want = expected.unwrap_or_else(|| panic!("data before NBIRTH: {m}"));
                assert_eq!(m["seq"], want, "seq continues: {m}");
                expected = Some((want + 1) % 256);
            }
        }
    }
}

/// The PI sample file's points 1–6 (7 is an exact duplicate of 6, withheld
/// by the data-quality checks): the first declares the metric in the
/// DBIRTH, the others travel in DDATA.
fn check_pi_points(session: &[&Json]) {
    let tt = samples(session, TT101);
    let got: Vec<(Json, Json, Json)> = tt
        .iter()
        .map(|m| {
            (
                m["value"].clone(),
                m["timestamp"].clone(),
                m["is_null"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (json!(71.5), json!(ms("2024-03-10T07:59:58Z")), json!(false)),
            (
                json!(71.9),
                json!(ms("2024-03-10T08:00:02.250Z")),
                json!(false)
            ),
            (Json::Null, json!(ms("2024-03-10T08:00:12Z")), json!(true)),
            (json!(72.4), json!(ms("2024-03-10T08:01:00Z")), json!(false)),
            (Json::Null, json!(ms("2024-03-10T08:01:30Z")), json!(true)),
            (Json::Null, json!(ms("2024-03-10T08:02:00Z")), json!(true)),
        ],
        "TT101.PV samples: {tt:?}"
    );
    let birth = session
        .iter()
        .find(|m| m["type"] == "DBIRTH")
        .expect("DBIRTH pi");
    let declared = metric(birth, TT101);
    assert_eq!(declared["datatype"], "DOUBLE");
    assert_eq!(declared["properties"]["Tag"], "TT101.PV");
    assert_eq!(declared["properties"]["engUnit"], "°C");
    assert!(declared["properties"].get("Quality").is_none(), "Good");
    // 2024 data, sent now: backfill.
    assert!(tt.iter().all(|m| m["is_historical"] == true), "{tt:?}");
    // Questionable → Uncertain → Quality 500, StatusCode kept.
    let uncertain = tt[1];
    assert_eq!(uncertain["properties"]["Quality"], 500);
    assert_eq!(
        uncertain["properties"]["StatusCode"]
            .as_u64()
            .map(|c| c >> 30),
        Some(1),
        "{uncertain}"
    );
    // SYSTEM digital states on a float tag: null, Bad, the state named.
    for (m, state, code) in [
        (tt[2], "I/O Timeout", 246),
        (tt[4], "Over Range", 252),
        (tt[5], "Shutdown", 254),
    ] {
        assert_eq!(m["properties"]["Quality"], 0, "{m}");
        assert_eq!(m["properties"]["State"], state, "{m}");
        assert_eq!(m["properties"]["StateCode"], code, "{m}");
    }
    assert_eq!(tt[2]["properties"]["StatusCode"], 0x8031_0000u32);
    assert!(
        tt[3]["properties"].get("Quality").is_none(),
        "substituted, Good"
    );
    // DDATA resolves its aliases through the DBIRTH.
    assert!(tt.iter().all(|m| m["alias"] == declared["alias"]));
}

/// The AVEVA sample file: a Bad point without a value, an Uncertain one,
/// a discrete tag and a string tag.
fn check_aveva_points(session: &[&Json]) {
    let birth = session
        .iter()
        .find(|m| m["type"] == "DBIRTH")
        .expect("DBIRTH aveva");
    let kinds: Vec<(String, String)> = birth["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("?").to_owned(),
                m["datatype"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    let kinds: Vec<(&str, &str)> = kinds
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("FIC101_PV", "DOUBLE"),
            ("TI205_PV", "DOUBLE"),
            ("PUMP7_Running", "BOOLEAN"),
            ("BATCH_ID", "STRING"),
        ]
    );
    let fic: Vec<Json> = samples(session, "FIC101_PV")
        .iter()
        .map(|m| m["value"].clone())
        .collect();
    assert_eq!(
        fic,
        [json!(42.17), json!(42.31), json!(41.95), json!(42.31)]
    );
    let ti = samples(session, "TI205_PV");
    assert_eq!(ti.len(), 2, "{ti:?}");
    // Quality=1 with no value: Bad, null.
    assert_eq!(
        (ti[0]["is_null"].clone(), ti[0]["value"].clone()),
        (json!(true), Json::Null),
        "{}",
        ti[0]
    );
    assert_eq!(ti[0]["timestamp"], ms("2024-11-03T07:30:30Z"));
    assert_eq!(ti[0]["properties"]["Quality"], 0);
    assert_eq!(ti[0]["properties"]["StatusCode"], 0x8000_0000u32);
    // Doubtful: Uncertain.
    assert_eq!(ti[1]["value"], 88.4);
    assert_eq!(ti[1]["properties"]["Quality"], 500);
    assert_eq!(metric(birth, "PUMP7_Running")["value"], true);
    assert_eq!(metric(birth, "BATCH_ID")["value"], "B-2024-1103-07");
}

#[test]
fn births_data_rebirth_and_refused_commands_from_the_sample_files() {
    let mut run = start(|sp| {
        sp.remove("primary_host_id");
    });
    run.site
        .drop_file("pi", "TT101.PV.json", &fixture("pi_webapi_recorded.json"));
    run.site
        .drop_file("aveva", "aveva_history.csv", &fixture("aveva_history.csv"));
    let msgs = run.wait_decoded(
        "the sample files as Sparkplug",
        Duration::from_mins(1),
        |d| {
            samples(&first_session(d, "pi"), TT101).len() >= 6
                && samples(&first_session(d, "aveva"), "FIC101_PV").len() >= 4
        },
    );
    // Stragglers (a duplicate would show up now).
    std::thread::sleep(Duration::from_millis(500));
    let msgs = {
        let again = run.decoded();
        let not_health = |d: &[Json]| d.iter().filter(|m| m["type"] != "NDATA").count();
        assert_eq!(
            not_health(&again),
            not_health(&msgs),
            "nothing more: {again:?}"
        );
        again
    };
    for m in &msgs {
        assert!(m.get("error").is_none(), "decodes: {m}");
        assert_eq!(
            (m["group"].clone(), m["edge"].clone()),
            (json!("plant1"), json!("weir01"))
        );
    }
    check_seq(&msgs);

    // NBIRTH: bdSeq 0 (a fresh outbox), seq 0, the node metrics.
    let nbirth = of_type(&msgs, "NBIRTH");
    assert_eq!(nbirth.len(), 1, "one NBIRTH: {msgs:?}");
    let nbirth = nbirth[0];
    assert_eq!(
        (nbirth["bdSeq"].clone(), nbirth["seq"].clone()),
        (json!(0), json!(0))
    );
    for (name, datatype) in [
        ("bdSeq", "INT64"),
        ("Node Control/Rebirth", "BOOLEAN"),
        ("Diode/LinkUp", "BOOLEAN"),
        ("Diode/LastSeq", "UINT64"),
        ("Diode/GapCount", "UINT64"),
    ] {
        assert_eq!(metric(nbirth, name)["datatype"], datatype, "{name}");
    }
    assert_eq!(metric(nbirth, "Node Control/Rebirth")["value"], false);
    // One DBIRTH per source system, then data.
    assert_eq!(of_device(&msgs, "DBIRTH", "pi").len(), 1);
    assert_eq!(of_device(&msgs, "DBIRTH", "aveva").len(), 1);
    assert!(!of_device(&msgs, "DDATA", "pi").is_empty());
    check_pi_points(&first_session(&msgs, "pi"));
    check_aveva_points(&first_session(&msgs, "aveva"));
    // Points went to Sparkplug, not to the JSON point topics; the JSON
    // gateway topics carry on.
    assert!(run.sub.on("uns/").is_empty(), "no JSON points");
    assert!(
        wait_until(Duration::from_secs(10), || {
            run.sub
                .on(GATEWAY)
                .iter()
                .any(|m| m.topic.ends_with("/status"))
        }),
        "JSON status still published"
    );

    // A host asks for a rebirth: births again from the cache, same bdSeq.
    let before = msgs.len();
    run.mqtt_pub(NCMD, &command(&["rebirth"]), false);
    let msgs = run.wait_decoded("the rebirth", Duration::from_secs(20), |d| {
        of_type(d, "NBIRTH").len() >= 2 && of_type(d, "DBIRTH").len() >= 4
    });
    check_seq(&msgs);
    // (Health NDATA may come at any time.)
    let rebirth: Vec<&Json> = msgs[before..]
        .iter()
        .filter(|m| m["type"] != "NDATA")
        .collect();
    let kinds: Vec<(&str, &str)> = rebirth
        .iter()
        .map(|m| {
            (
                m["type"].as_str().unwrap_or("?"),
                m["device"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(kinds[0], ("NBIRTH", ""), "{kinds:?}");
    assert!(kinds.contains(&("DBIRTH", "pi")) && kinds.contains(&("DBIRTH", "aveva")));
    assert_eq!(
        rebirth[0]["bdSeq"], 0,
        "a rebirth keeps the session's bdSeq"
    );
    let pi_birth = rebirth
        .iter()
        .find(|m| m["type"] == "DBIRTH" && m["device"] == "pi")
        .expect("DBIRTH pi again");
    let last = metric(pi_birth, TT101);
    assert_eq!(
        (last["is_null"].clone(), last["timestamp"].clone()),
        (json!(true), json!(ms("2024-03-10T08:02:00Z"))),
        "the last sample: {last}"
    );
    let first_pi_birth = of_device(&msgs, "DBIRTH", "pi")[0];
    assert_eq!(
        last["alias"],
        metric(first_pi_birth, TT101)["alias"],
        "same alias"
    );

    // A device command never crosses the diode: refused, logged, and
    // nothing published in answer.
    let before = run.node_messages().len();
    run.mqtt_pub(DCMD_PI, &command(&["write", TT101, "0"]), false);
    run.wait_log("Sparkplug command refused.", 1, Duration::from_secs(10));
    let log = run.rx.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("Sparkplug command refused."))
        .expect("refusal logged");
    assert!(
        line.contains("WARN") && line.contains("DCMD") && line.contains(DCMD_PI),
        "{line}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let after: Vec<String> = run.node_messages()[before..]
        .iter()
        .map(|m| m.topic.clone())
        .filter(|t| verb(t) != "NDATA")
        .collect();
    assert!(after.is_empty(), "nothing answers a DCMD: {after:?}");

    // A clean stop publishes NDEATH with the session's bdSeq; the next
    // start connects with the next bdSeq, kept in the outbox.
    let _ = stop_rx(&mut run.rx);
    let msgs = run.wait_decoded("the NDEATH", Duration::from_secs(10), |d| {
        !of_type(d, "NDEATH").is_empty()
    });
    assert_eq!(of_type(&msgs, "NDEATH")[0]["bdSeq"], 0);
    run.rx = start_rx(&run.site, &run.rx_cfg, "rx2.log");
    let msgs = run.wait_decoded("the NBIRTH after a restart", Duration::from_secs(20), |d| {
        of_type(d, "NBIRTH").len() >= 3
    });
    check_seq(&msgs);
    assert_eq!(
        of_type(&msgs, "NBIRTH")[2]["bdSeq"],
        1,
        "bdSeq kept across restarts"
    );
    let _ = run.tx.terminate(Duration::from_secs(15));
    let _ = stop_rx(&mut run.rx);
}

/// A `mosquitto_sub -F '%q %t'` on `spBv1.0/plant1/#`, subscribed (its
/// persistent session made and acknowledged) before this returns.
struct QosSub {
    child: Child,
    out: PathBuf,
}

impl QosSub {
    fn start(site: &Site, port: u16) -> Self {
        let id = format!("weir-sparkplug-qos-{}", std::process::id());
        let conn = ["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "-i", &id];
        let status = Command::new(MOSQUITTO_SUB)
            .args(conn)
            .args(["-q", "1", "-t", "spBv1.0/plant1/#", "-E", "-W", "10"])
            .stdout(Stdio::null())
            .status()
            .expect("running mosquitto_sub -E");
        assert!(status.success(), "mosquitto_sub -E (subscribe) failed");
        let out = site.path("qos.out");
        let child = Command::new(MOSQUITTO_SUB)
            .args(conn)
            .args(["-q", "1", "-t", "spBv1.0/plant1/#", "-F", "%q %t"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("sub output"))
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto_sub");
        Self { child, out }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for QosSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn data_waits_for_the_primary_host_and_the_will_follows_reconnects() {
    // The example's primary host, and DDATA at QoS 1.
    let mut run = start(|sp| {
        sp.insert("data_qos".into(), toml::Value::Integer(1));
    });
    run.wait_log("waiting for the primary host", 1, Duration::from_secs(20));
    run.site
        .drop_file("pi", "TT101.PV.json", &fixture("pi_webapi_recorded.json"));
    let sent = run.site.path("spool/pi/done/TT101.PV.json");
    assert!(
        wait_until(Duration::from_secs(30), || sent.exists()),
        "the sender sent the PI file"
    );
    // The alert path does not wait for Sparkplug.
    std::thread::sleep(Duration::from_secs(1));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("socket");
    sock.send_to(
        b"<134>1 2024-03-10T08:00:05.123Z eng-ws01 historian-agent 4321 EXPORT_OK - export complete",
        ("127.0.0.1", run.syslog_port),
    )
    .expect("send syslog");
    assert!(
        wait_until(Duration::from_secs(30), || {
            !run.sub.on(&format!("{GATEWAY}/alerts/")).is_empty()
        }),
        "the alert arrived while Sparkplug waits; rx log:\n{}",
        run.rx.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        run.node_messages().is_empty(),
        "nothing published before the primary host is online: {:?}",
        run.node_messages()
    );

    // The host comes online: births, then the points that waited.
    let qos = QosSub::start(&run.site, run.broker.port());
    run.host_online();
    let msgs = run.wait_decoded("the points that waited", Duration::from_secs(30), |d| {
        samples(&first_session(d, "pi"), TT101).len() >= 6
    });
    check_seq(&msgs);
    assert_eq!(of_type(&msgs, "NBIRTH")[0]["bdSeq"], 0);
    check_pi_points(&first_session(&msgs, "pi"));
    // Births at QoS 0, DDATA at the configured QoS 1.
    assert!(
        wait_until(Duration::from_secs(5), || {
            qos.lines().iter().any(|l| l.contains("/DDATA/"))
        }),
        "QoS subscriber saw the DDATA"
    );
    for l in qos.lines() {
        let (q, topic) = l.split_once(' ').expect("`qos topic`");
        let want = match verb(topic) {
            "NBIRTH" | "DBIRTH" => "0",
            "DDATA" | "NDATA" => "1",
            _ => continue,
        };
        assert_eq!(q, want, "{l}");
    }
    drop(qos);

    // The broker restarts (without persistence: the host's retained STATE
    // is gone). The receiver reconnects with the next bdSeq in its will,
    // and waits for the host again.
    let b0 = of_type(&msgs, "NBIRTH")[0]["bdSeq"]
        .as_u64()
        .expect("bdSeq");
    run.rx.signal("STOP");
    run.broker.stop();
    run.broker.resume();
    assert!(
        run.sub.wait_subscribed(2, Duration::from_secs(10)),
        "subscriber came back"
    );
    run.rx.signal("CONT");
    run.wait_log("waiting for the primary host", 2, Duration::from_secs(30));
    run.host_online();
    let msgs = run.wait_decoded(
        "the NBIRTH after the restart",
        Duration::from_secs(20),
        |d| of_type(d, "NBIRTH").len() >= 2,
    );
    check_seq(&msgs);
    let b1 = of_type(&msgs, "NBIRTH")[1]["bdSeq"]
        .as_u64()
        .expect("bdSeq");
    assert!(b1 > b0, "a new session, a new bdSeq ({b0} then {b1})");

    // A crash: the broker publishes the will, NDEATH with that bdSeq (and
    // the JSON session's retained "offline" status, its own will).
    run.rx.kill();
    let msgs = run.wait_decoded("the will", Duration::from_secs(20), |d| {
        !of_type(d, "NDEATH").is_empty()
    });
    assert_eq!(
        of_type(&msgs, "NDEATH")[0]["bdSeq"],
        b1,
        "the will follows the session"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            run.sub.on(&format!("{GATEWAY}/status")).iter().any(|m| {
                serde_json::from_slice::<Json>(&m.payload)
                    .is_ok_and(|j| j == json!({"online": false}))
            })
        }),
        "the JSON status will too"
    );
    let _ = run.tx.terminate(Duration::from_secs(15));
}

#[test]
fn points_beyond_the_device_limit_are_counted_not_published() {
    let mut run = start(|sp| {
        sp.remove("primary_host_id");
        sp.insert("max_devices".into(), toml::Value::Integer(1));
    });
    run.site
        .drop_file("pi", "TT101.PV.json", &fixture("pi_webapi_recorded.json"));
    run.wait_decoded("the PI points as Sparkplug", Duration::from_mins(1), |d| {
        samples(&first_session(d, "pi"), TT101).len() >= 6
    });
    // A second source system would be a second device: over the limit.
    run.site
        .drop_file("aveva", "aveva_history.csv", &fixture("aveva_history.csv"));
    run.wait_log("Sparkplug points dropped", 1, Duration::from_mins(1));
    let _ = run.tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut run.rx);
    assert!(
        c["sparkplug_dropped"].as_u64() >= Some(1),
        "dropped points are counted: {c}"
    );
    assert!(
        of_device(&run.decoded(), "DBIRTH", "aveva").is_empty(),
        "no device beyond the limit was born"
    );
}
