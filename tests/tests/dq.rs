//! Data-quality verdicts end to end: the real `weir-tx` and `weir-rx`, a
//! Mosquitto the test starts, and a subscriber reading what consumers read.
//!
//! The sample exports carry the cases of `tests/fixtures/EXPECTED.md` that
//! only the receiver's DQ stage can judge: a Proficy row stamped 2035 (to
//! quarantine, not the live topic), a Proficy row older than its tag's
//! newest (published, `late`), an Ignition value frozen for five samples
//! over four minutes (flatline, with a short threshold from a
//! `[[dq.class]]`), and exact duplicates in Proficy and PI (withheld,
//! counted). The second test changes `[dq]` under a running receiver
//! (SIGHUP) and checks that new verdicts apply while per-tag state, the
//! newest timestamp and the remembered samples, survives the reload.
//!
//! Mosquitto is required (CI installs it); these tests fail without it.
// Long, linear test scripts read best as they are.
#![allow(clippy::too_many_lines)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value as Json;
use weir_tests::{
    Broker, Process, Site, Subscriber, add_spool, fixture, free_udp_addr, mosquitto_path, start_rx,
    start_tx, stop_rx, wait_until, write_key,
};

const KEY: [u8; 32] = [0x44; 32];
/// 2024-03-10T08:00:00Z, ns: the fixtures' hour.
const T0: i64 = 1_710_057_600_000_000_000;
/// One second, ns.
const S: i64 = 1_000_000_000;
/// Where the receiver publishes DQ events and quarantined points.
const DQ_TOPIC: &str = "diode/v1/plant1/weir01/dq";
const QUARANTINE_TOPIC: &str = "diode/v1/plant1/weir01/quarantine";
const STATUS_TOPIC: &str = "diode/v1/plant1/weir01/status";
/// Bound on every wait for the pipeline.
const WAIT: Duration = Duration::from_mins(1);

const PROFICY_TT: &str = "TIGER.LINE2.TT_101.F_CV";
const PROFICY_PT: &str = "TIGER.LINE2.PT_204.F_CV";
const IGNITION_TT: &str = "line2/tt101";

/// The receiver's `[dq]`: a flatline threshold of 5 samples over 4 min
/// for the Ignition temperature class (EXPECTED.md: suspect "if threshold
/// <= 4 min/5 samples"), and a range and a gap threshold for the Proficy
/// temperature (its -9999 sentinel fails the range; its DST jump, 4 s of
/// real time, is no gap).
const DQ: &str = r#"
[[class]]
match = "line2/tt*"
flatline_n = 5
flatline_time = "4m"

[[tag]]
tag = "TIGER.LINE2.TT_101.F_CV"
lo = -50.0
hi = 200.0
gap = "30s"
"#;

/// What SIGHUP brings in: a high limit for the Proficy pressure, which its
/// samples (about 6) exceed.
const DQ_PT_HI: &str = r#"
[[tag]]
tag = "TIGER.LINE2.PT_204.F_CV"
hi = 5.0
"#;

struct Pair {
    _broker: Broker,
    sub: Subscriber,
    rx: Process,
    rx_table: toml::Table,
    rx_cfg: PathBuf,
    tx: Process,
}

/// Broker, subscriber, receiver with `[dq]` = `dq`, and a sender with the
/// example's `pi` spool plus `proficy` and `ignition` spools.
fn start(site: &Site, dq: &str) -> Pair {
    assert!(
        mosquitto_path().is_some(),
        "these tests need mosquitto (apt-get install mosquitto)"
    );
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port(), &["uns/#", "diode/#"]);
    let key = site.path("psk.key");
    write_key(&key, 1, KEY);
    let rx_addr = free_udp_addr();
    let id = format!("weir-rx-dq-{}", std::process::id());
    let mut rx_table = site.rx_config(rx_addr, &key, broker.port(), &id);
    rx_table.insert(
        "dq".into(),
        toml::Value::Table(toml::from_str(dq).expect("[dq] parses")),
    );
    let rx_cfg = site.write_toml("rx.toml", &rx_table);
    let rx = start_rx(site, &rx_cfg, "rx.log");

    let mut tx_table = site.tx_config(rx_addr, &key);
    add_spool(site, &mut tx_table, "proficy", "proficy-csv")
        .insert("tz".into(), "America/Chicago".into());
    let tag_table = site.path("ignition_sqlth_te.csv");
    std::fs::write(&tag_table, fixture("ignition_sqlth_te.csv")).expect("tag table");
    add_spool(site, &mut tx_table, "ignition", "ignition-csv")
        .insert("tag_table".into(), tag_table.display().to_string().into());
    let tx_cfg = site.write_toml("tx.toml", &tx_table);
    let tx = start_tx(site, &tx_cfg, "tx.log");
    Pair {
        _broker: broker,
        sub,
        rx,
        rx_table,
        rx_cfg,
        tx,
    }
}

/// Payloads of the messages on exactly `topic`.
fn on_topic(sub: &Subscriber, topic: &str) -> Vec<Json> {
    sub.on(topic)
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| serde_json::from_slice(&m.payload).expect("payload is JSON"))
        .collect()
}

/// Every live point published.
fn points(sub: &Subscriber) -> Vec<Json> {
    sub.on("uns/")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("point payload is JSON"))
        .collect()
}

/// The live points of `tag` at `ts_ns` (more than one would be a bug).
fn points_at(pts: &[Json], tag: &str, ts_ns: i64) -> Vec<Json> {
    pts.iter()
        .filter(|p| p["tag"] == tag && p["ts_ns"] == ts_ns)
        .cloned()
        .collect()
}

/// The one live point of `tag` at `ts_ns`.
fn point(pts: &[Json], tag: &str, ts_ns: i64) -> Json {
    let mut found = points_at(pts, tag, ts_ns);
    assert_eq!(found.len(), 1, "{tag} at {ts_ns}: {found:?}");
    found.remove(0)
}

/// The receiver's counters in its latest retained status.
fn counters(sub: &Subscriber) -> Json {
    on_topic(sub, STATUS_TOPIC)
        .pop()
        .map_or(Json::Null, |s| s["counters"].clone())
}

/// Wait until `n` live points, with the logs if they do not come.
fn wait_points(pair: &Pair, n: usize) {
    let ok = wait_until(WAIT, || points(&pair.sub).len() >= n);
    assert!(
        ok,
        "{} of {n} points arrived\nrx log:\n{}\ntx log:\n{}",
        points(&pair.sub).len(),
        pair.rx.log_text(),
        pair.tx.log_text()
    );
}

#[test]
fn fixture_dq_outcomes_reach_the_broker() {
    let site = Site::new();
    let mut pair = start(&site, DQ);
    site.drop_file(
        "proficy",
        "line2.csv",
        &fixture("proficy_filecollector.csv"),
    );
    site.drop_file(
        "ignition",
        "sqlt_data_1_2024_03.csv",
        &fixture("ignition_sqlt_data_1_2024_03.csv"),
    );
    site.drop_file("pi", "TT101.PV.json", &fixture("pi_webapi_recorded.json"));
    // Proficy: 7 rows, one exact duplicate withheld, one quarantined.
    // Ignition: 8 rows. PI: 7 points (item 8 is a reject), one duplicate.
    let live = 5 + 8 + 6;
    wait_points(&pair, live);
    let quarantined = wait_until(WAIT, || !on_topic(&pair.sub, QUARANTINE_TOPIC).is_empty());
    let flatline = wait_until(WAIT, || {
        on_topic(&pair.sub, DQ_TOPIC)
            .iter()
            .any(|e| e["tag"] == IGNITION_TT && e["kind"] == "flatline")
    });
    // The status (every 2 s) catches up with both withheld duplicates.
    let counted = wait_until(WAIT, || counters(&pair.sub)["dq_duplicates"] == 2);
    // Anything published twice would show up now.
    std::thread::sleep(Duration::from_millis(500));
    let pts = points(&pair.sub);
    let events = on_topic(&pair.sub, DQ_TOPIC);
    let quarantine = on_topic(&pair.sub, QUARANTINE_TOPIC);
    assert!(quarantined, "nothing on {QUARANTINE_TOPIC}");
    assert!(flatline, "no flatline event for {IGNITION_TT}: {events:#?}");
    assert!(
        counted,
        "status counters never showed 2 duplicates: {}",
        counters(&pair.sub)
    );
    assert_eq!(pts.len(), live, "every live point exactly once");
    assert!(
        pts.iter().all(|p| p["dq"]["flag"].is_u64()),
        "every point carries a verdict"
    );

    // Proficy 7: year 2035 fails ts_future and goes to quarantine only.
    assert_eq!(quarantine.len(), 1, "{quarantine:#?}");
    let q = &quarantine[0];
    assert_eq!(q["tag"], "TIGER.LINE2.FT_300.F_CV");
    assert!(
        q["ts"].as_str().is_some_and(|t| t.starts_with("2035-")),
        "{q}"
    );
    assert_eq!(q["dq"]["checks"]["ts_future"], 4, "{q}");
    assert_eq!(q["dq"]["flag"], 4, "{q}");
    assert!(
        pts.iter().all(|p| p["tag"] != "TIGER.LINE2.FT_300.F_CV"),
        "the 2035 point is not on the live topic"
    );

    // Proficy 5: older than PT_204's newest (row 4): suspect, late, published.
    let late = point(&pts, PROFICY_PT, T0 + 7 * S);
    assert_eq!(late["late"], true, "{late}");
    assert_eq!(late["dq"]["checks"]["out_of_order"], 3, "{late}");
    assert_eq!(late["value"], 6.01);
    let newest = point(&pts, PROFICY_PT, T0 + 12 * S);
    assert!(newest.get("late").is_none(), "{newest}");
    // Row 4 is PT_204's first sample: order not judged yet (2, left out).
    assert!(
        newest["dq"]["checks"].get("out_of_order").is_none(),
        "{newest}"
    );
    assert_eq!(newest["q"]["code"], 0x4000_0000u32, "row 4 is Uncertain");
    // Proficy 6: the exact duplicate of row 5 is withheld (counted above).
    assert_eq!(
        points_at(&pts, PROFICY_PT, T0 + 7 * S).len(),
        1,
        "the duplicate row is withheld"
    );
    // Proficy 1→2: 01:59:58 → 03:00:02 local is 4 s of real time: no gap.
    let after_jump = point(&pts, PROFICY_TT, T0 + 2 * S);
    assert_eq!(after_jump["dq"]["checks"]["gap"], 1, "{after_jump}");
    // Proficy 3: -9999 with Bad fails the configured range; the source's
    // Bad is kept as the effective status (it is already Bad).
    let sentinel = point(&pts, PROFICY_TT, T0 + 12 * S + 250_000_000);
    assert_eq!(sentinel["dq"]["checks"]["gross_range"], 4, "{sentinel}");
    assert_eq!(sentinel["dq"]["checks"]["source_quality"], 4, "{sentinel}");
    assert_eq!(sentinel["dq"]["q"]["code"], 0x8000_0000u32, "{sentinel}");

    // Ignition tagid 12: 71.532 five times over 4 min. The fifth sample
    // completes the flat run (5 samples, 4 min): suspect; the ones before
    // pass, and the first cannot be judged (left out of `checks`).
    let flat: Vec<Json> = (0..5)
        .map(|i| point(&pts, IGNITION_TT, T0 + i * 60 * S))
        .collect();
    assert!(
        flat[0]["dq"]["checks"].get("flatline").is_none(),
        "{}",
        flat[0]
    );
    for p in &flat[1..4] {
        assert_eq!(p["dq"]["checks"]["flatline"], 1, "{p}");
    }
    assert_eq!(flat[4]["dq"]["checks"]["flatline"], 3, "{}", flat[4]);
    let ev = events
        .iter()
        .find(|e| e["tag"] == IGNITION_TT && e["kind"] == "flatline")
        .expect("flatline event");
    assert_eq!(ev["check"], "flatline", "{ev}");
    assert_eq!(ev["flag"], 3, "{ev}");
    assert_eq!(ev["ts_ns"], T0 + 240 * S, "{ev}");
    assert_eq!(ev["detail"]["samples"], 5, "{ev}");
    assert_eq!(ev["detail"]["since"], "2024-03-10T08:00:00Z", "{ev}");
    // Its last row has no value: missing (9), Bad, and the flagged run ends.
    let empty = point(&pts, IGNITION_TT, T0 + 300 * S);
    assert_eq!(empty["value"], Json::Null, "{empty}");
    assert_eq!(empty["dq"]["checks"]["syntax"], 9, "{empty}");
    assert_eq!(empty["q"]["code"], 0x8000_0000u32, "{empty}");
    assert!(
        events
            .iter()
            .any(|e| e["tag"] == IGNITION_TT && e["kind"] == "flatline_ended"),
        "{events:#?}"
    );
    // The class matches only the temperature: the other tags' single
    // samples are judged by the defaults and raise no flatline.
    assert!(
        events
            .iter()
            .filter(|e| e["kind"] == "flatline")
            .all(|e| e["tag"] == IGNITION_TT),
        "{events:#?}"
    );

    // PI 7: exact duplicate of 6 is withheld.
    assert_eq!(
        points_at(&pts, "TT101.PV", T0 + 120 * S).len(),
        1,
        "the duplicate Shutdown item is withheld"
    );

    let _ = pair.tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut pair.rx);
    assert_eq!(c["dq_duplicates"], 2, "Proficy 6 and PI 7: {c}");
    assert_eq!(c["dq_quarantined"], 1, "Proficy 7: {c}");
    assert_eq!(c["blocks_lost"], 0, "{c}");
}

#[test]
fn sighup_reloads_dq_config_and_keeps_tag_state() {
    let site = Site::new();
    let mut pair = start(&site, DQ);
    site.drop_file(
        "proficy",
        "line2.csv",
        &fixture("proficy_filecollector.csv"),
    );
    wait_points(&pair, 5);
    let pts = points(&pair.sub);
    for ts in [T0 + 12 * S, T0 + 7 * S] {
        let p = point(&pts, PROFICY_PT, ts);
        assert!(
            p["dq"]["checks"].get("gross_range").is_none(),
            "no range for PT_204 yet: {p}"
        );
    }

    // A high limit for PT_204, then SIGHUP; wait until the DQ stage says
    // it took the new config (so the next file is judged by it).
    let dq: toml::Table = toml::from_str(&format!("{DQ}{DQ_PT_HI}")).expect("[dq] parses");
    pair.rx_table.insert("dq".into(), toml::Value::Table(dq));
    std::fs::write(
        &pair.rx_cfg,
        toml::to_string(&pair.rx_table).expect("rx config"),
    )
    .expect("rewrite rx config");
    pair.rx.signal("HUP");
    let reloaded = wait_until(WAIT, || {
        pair.rx
            .log_text()
            .contains("Data-quality config reloaded; per-tag state kept.")
    });
    assert!(reloaded, "no reload logged:\n{}", pair.rx.log_text());
    assert!(pair.rx.running(), "SIGHUP must not stop the receiver");

    // PT_204's newest is 03:00:12 local (08:00:12Z), from the first file.
    // 1: older than that, so late: only known from the kept state (a
    //    fresh engine would take it as the tag's first sample);
    // 2: the exact repeat of that newest sample: withheld, again only
    //    from the kept state;
    // 3: in order, above the new `hi`: gross range fails;
    // 4: back within range.
    site.drop_file(
        "proficy",
        "line2_more.csv",
        b"[Data]\n\
          Tagname,TimeStamp,Value,DataQuality\n\
          TIGER.LINE2.PT_204.F_CV,3/10/24 03:00:10,6.00,Good\n\
          TIGER.LINE2.PT_204.F_CV,3/10/24 03:00:12,6.02,Uncertain\n\
          TIGER.LINE2.PT_204.F_CV,3/10/24 03:00:20,6.03,Good\n\
          TIGER.LINE2.PT_204.F_CV,3/10/24 03:00:25,4.50,Good\n",
    );
    wait_points(&pair, 5 + 3);
    let cleared = wait_until(WAIT, || {
        on_topic(&pair.sub, DQ_TOPIC)
            .iter()
            .any(|e| e["tag"] == PROFICY_PT && e["kind"] == "range_cleared")
    });
    std::thread::sleep(Duration::from_millis(500));
    let pts = points(&pair.sub);
    let events = on_topic(&pair.sub, DQ_TOPIC);
    assert!(cleared, "no range_cleared event: {events:#?}");
    assert_eq!(pts.len(), 5 + 3, "the repeated sample is withheld");

    let late = point(&pts, PROFICY_PT, T0 + 10 * S);
    assert_eq!(late["late"], true, "state survived the reload: {late}");
    assert_eq!(late["dq"]["checks"]["out_of_order"], 3, "{late}");
    assert_eq!(
        late["dq"]["checks"]["gross_range"], 4,
        "new hi applies: {late}"
    );
    assert_eq!(
        points_at(&pts, PROFICY_PT, T0 + 12 * S).len(),
        1,
        "the repeat of the newest sample is withheld"
    );
    let high = point(&pts, PROFICY_PT, T0 + 20 * S);
    assert!(high.get("late").is_none(), "{high}");
    assert_eq!(high["dq"]["checks"]["out_of_order"], 1, "{high}");
    assert_eq!(high["dq"]["checks"]["gross_range"], 4, "{high}");
    assert_eq!(high["dq"]["flag"], 4, "{high}");
    assert_eq!(
        high["dq"]["q"]["code"], 0x803C_0000u32,
        "BadOutOfRange: {high}"
    );
    assert_eq!(
        high["q"]["code"], 0,
        "the source's own status is kept: {high}"
    );
    let back = point(&pts, PROFICY_PT, T0 + 25 * S);
    assert_eq!(back["dq"]["checks"]["gross_range"], 1, "{back}");
    let violation = events
        .iter()
        .find(|e| e["tag"] == PROFICY_PT && e["kind"] == "range_violation")
        .expect("range_violation event");
    assert_eq!(violation["flag"], 4, "{violation}");
    assert_eq!(violation["ts_ns"], T0 + 10 * S, "{violation}");
    let _ = pair.tx.terminate(Duration::from_secs(15));
    let c = stop_rx(&mut pair.rx);
    assert_eq!(
        c["dq_duplicates"], 2,
        "Proficy row 6, and the repeat after the reload: {c}"
    );
    assert_eq!(c["dq_quarantined"], 1, "{c}");
}
