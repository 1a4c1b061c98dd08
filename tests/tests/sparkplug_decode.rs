//! Third-party decoder check: the Sparkplug core's payloads, read back by
//! pysparkplug (`tests/sparkplug/decode.py`), must say what we meant:
//! names, aliases resolved through the births, datatypes, values,
//! timestamps, seq and bdSeq.
//!
//! Needs `python3` with `pysparkplug==0.5.0` (`.ci/run` installs it). A
//! missing decoder fails the test with the install hint; it never skips.

use serde_json::{Value as Json, json};
use weir_shared::record::{Point, SourceSystem, Value};
use weir_shared::sparkplug::{
    CommandOutcome, DiodeHealth, Message, Mode, SparkplugConfig, SparkplugNode,
};
use weir_tests::{decode_sparkplug, require_pysparkplug};

const NOW: u64 = 1_710_057_700_000;

fn point(system: SourceSystem, tag: &str, ts_ms: i64, value: Value, status: u32) -> Point {
    Point {
        seq: 100,
        status,
        ..Point::new(system, tag, ts_ms * 1_000_000 + 250_000, value)
    }
}

/// Decode them all, in order.
fn decode(messages: &[Message]) -> Vec<Json> {
    decode_sparkplug(
        messages
            .iter()
            .map(|m| (m.topic.as_str(), m.payload.as_slice())),
    )
}

fn metric<'a>(msg: &'a Json, name: &str) -> &'a Json {
    msg["metrics"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("metric {name} in {msg}"))
}

/// name, datatype, value, timestamp of every metric.
fn summary(msg: &Json) -> Vec<(String, String, Json, Json)> {
    msg["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("?").to_string(),
                m["datatype"].as_str().unwrap_or("?").to_string(),
                m["value"].clone(),
                m["timestamp"].clone(),
            )
        })
        .collect()
}

fn row(name: &str, datatype: &str, value: Json, ts: u64) -> (String, String, Json, Json) {
    (name.into(), datatype.into(), value, json!(ts))
}

/// One session: will, birth, three calls of points (new metrics, data with
/// quality, a backfill), then a rebirth request answered from the cache.
fn session() -> Vec<Message> {
    let mut node = SparkplugNode::new(SparkplugConfig::new("plant1", "gw01"), 7).expect("config");
    let mut messages = vec![node.will()];
    let health = DiodeHealth {
        link_up: true,
        last_seq: 41,
        gap_count: 2,
    };
    node.set_health(health, NOW);
    messages.extend(node.birth(NOW));

    let pi = SourceSystem::PiWebApi;
    let aveva = SourceSystem::Aveva;
    let state = |code, name: &str| Value::DigitalState {
        code,
        name: name.into(),
        system: false,
    };
    let mut hist = point(pi, TT101, 1_000, Value::F64(71.5), 0);
    hist.flags.historical = true;
    let first = [
        hist,
        point(
            pi,
            "BATCH.ID",
            1_001,
            Value::Str("B-2024-1103-07".into()),
            0,
        ),
        point(pi, "PUMP7.Running", 1_002, Value::Bool(true), 0),
        point(pi, "COUNT", 1_003, Value::I64(-42), 0),
        point(aveva, "FIC101.PV", 1_004, Value::U64(BIG), 0),
        point(aveva, "VALVE1", 1_005, state(1, "Open"), 0),
    ];
    let second = [
        point(pi, TT101, 2_000, Value::F64(71.9), UNCERTAIN_LUV),
        point(pi, TT101, 3_000, Value::Null, BAD_NO_DATA),
        point(pi, "COUNT", 2_003, Value::I64(7), 0),
        point(aveva, "VALVE1", 2_005, state(0, "Closed"), 0),
    ];
    let backfill = [point(pi, "PUMP7.Running", 500, Value::Bool(false), 0)];
    for (points, mode, now) in [
        (&first[..], Mode::Live, NOW + 1),
        (&second[..], Mode::Live, NOW + 2),
        (&backfill[..], Mode::Backfill, NOW + 3),
    ] {
        messages.extend(node.points(points, mode, now).expect("publishing").messages);
    }
    let outcome = node.command("spBv1.0/plant1/NCMD/gw01", &rebirth_payload(), NOW + 4);
    let CommandOutcome::Rebirth(again) = outcome else {
        panic!("rebirth refused: {outcome:?}");
    };
    messages.extend(again);
    messages
}

const TT101: &str = r"\\PISRV01\TT101.PV";
const TT101_NAME: &str = "PISRV01/TT101_PV";
const BIG: u64 = 18_000_000_000_000_000_000;
const UNCERTAIN_LUV: u32 = 0x4090_0000;
const BAD_NO_DATA: u32 = 0x809B_0000;

#[test]
fn sparkplug_payloads_decode_with_pysparkplug() {
    require_pysparkplug();
    let messages = session();
    let kinds: Vec<&str> = messages.iter().map(|m| m.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "NDEATH", "NBIRTH", "DBIRTH", "DBIRTH", "DDATA", "DDATA", "DDATA", "NBIRTH", "DBIRTH",
            "DBIRTH"
        ]
    );
    let decoded = decode(&messages);
    assert_eq!(decoded.len(), messages.len());
    for (d, m) in decoded.iter().zip(&messages) {
        assert_eq!(d["type"], m.kind.as_str(), "{d}");
        assert_eq!(d["group"], "plant1");
        assert_eq!(d["edge"], "gw01");
    }
    let [
        death,
        nbirth,
        pi_birth,
        av_birth,
        pi_data,
        av_data,
        pi_back,
        nbirth2,
        pi_birth2,
        _,
    ] = &decoded[..]
    else {
        panic!("ten messages");
    };
    check_node(death, nbirth);
    check_births(pi_birth, av_birth);
    check_data(pi_data, av_data, pi_back, metric(pi_birth, TT101_NAME));
    check_rebirth(nbirth2, pi_birth2, metric(pi_birth, TT101_NAME));
}

/// NDEATH: only bdSeq, no seq; NBIRTH: the same bdSeq, seq 0, node metrics.
fn check_node(death: &Json, nbirth: &Json) {
    assert_eq!(death["bdSeq"], 7);
    assert_eq!(death["seq"], Json::Null);
    assert_eq!(death["metrics"].as_array().map(Vec::len), Some(1));
    assert_eq!(nbirth["seq"], 0);
    assert_eq!(nbirth["bdSeq"], 7);
    assert_eq!(nbirth["timestamp"], NOW);
    assert_eq!(
        summary(nbirth),
        [
            row("bdSeq", "INT64", json!(7), NOW),
            row("Node Control/Rebirth", "BOOLEAN", json!(false), NOW),
            row("Diode/LinkUp", "BOOLEAN", json!(true), NOW),
            row("Diode/LastSeq", "UINT64", json!(41), NOW),
            row("Diode/GapCount", "UINT64", json!(2), NOW),
        ]
    );
}

/// DBIRTHs: every metric with name, alias, datatype and the value that
/// declared it; seq continues after NBIRTH.
fn check_births(pi_birth: &Json, av_birth: &Json) {
    assert_eq!(pi_birth["device"], "pi");
    assert_eq!(pi_birth["seq"], 1);
    assert_eq!(
        summary(pi_birth),
        [
            row(TT101_NAME, "DOUBLE", json!(71.5), 1_000),
            row("BATCH_ID", "STRING", json!("B-2024-1103-07"), 1_001),
            row("PUMP7_Running", "BOOLEAN", json!(true), 1_002),
            row("COUNT", "INT64", json!(-42), 1_003),
        ]
    );
    let tt = metric(pi_birth, TT101_NAME);
    assert_eq!(tt["is_historical"], true);
    assert_eq!(tt["properties"]["Tag"], TT101);
    assert_eq!(tt["properties"]["ts_ns"], 1_000_250_000);
    assert_eq!(tt["properties"]["record_seq"], 100);
    assert!(tt["alias"].is_u64());
    assert_eq!(av_birth["device"], "aveva");
    assert_eq!(av_birth["seq"], 2);
    assert_eq!(
        summary(av_birth),
        [
            row("FIC101_PV", "UINT64", json!(BIG), 1_004),
            row("VALVE1", "STRING", json!("Open"), 1_005),
        ]
    );
    assert_eq!(metric(av_birth, "VALVE1")["properties"]["StateCode"], 1);
}

/// DDATA: pysparkplug resolves names and datatypes from the births.
fn check_data(pi_data: &Json, av_data: &Json, pi_back: &Json, tt_birth: &Json) {
    assert_eq!(pi_data["seq"], 3);
    assert_eq!(pi_data["timestamp"], NOW + 2);
    assert_eq!(
        summary(pi_data),
        [
            row(TT101_NAME, "DOUBLE", json!(71.9), 2_000),
            row(TT101_NAME, "DOUBLE", Json::Null, 3_000),
            row("COUNT", "INT64", json!(7), 2_003),
        ]
    );
    let ms = pi_data["metrics"].as_array().expect("metrics");
    assert_eq!(ms[0]["alias"], tt_birth["alias"]);
    assert_eq!(ms[0]["is_null"], false);
    assert_eq!(ms[0]["is_historical"], false);
    assert_eq!(ms[0]["properties"]["Quality"], 500);
    assert_eq!(ms[0]["properties"]["StatusCode"], UNCERTAIN_LUV);
    assert_eq!(ms[1]["is_null"], true);
    assert_eq!(ms[1]["properties"]["Quality"], 0);
    assert_eq!(ms[1]["properties"]["StatusCode"], BAD_NO_DATA);
    assert!(ms[2]["properties"].get("Quality").is_none());
    assert_eq!(av_data["seq"], 4);
    assert_eq!(
        summary(av_data),
        [row("VALVE1", "STRING", json!("Closed"), 2_005)]
    );
    assert_eq!(pi_back["seq"], 5);
    assert_eq!(
        summary(pi_back),
        [row("PUMP7_Running", "BOOLEAN", json!(false), 500)]
    );
    assert_eq!(pi_back["metrics"][0]["is_historical"], true);
}

/// Rebirth from the cache: same bdSeq, seq back to 0, last values, same
/// aliases.
fn check_rebirth(nbirth2: &Json, pi_birth2: &Json, tt_birth: &Json) {
    assert_eq!(nbirth2["seq"], 0);
    assert_eq!(nbirth2["bdSeq"], 7);
    assert_eq!(pi_birth2["seq"], 1);
    assert_eq!(
        summary(pi_birth2),
        [
            row(TT101_NAME, "DOUBLE", Json::Null, 3_000),
            row("BATCH_ID", "STRING", json!("B-2024-1103-07"), 1_001),
            row("PUMP7_Running", "BOOLEAN", json!(false), 500),
            row("COUNT", "INT64", json!(7), 2_003),
        ]
    );
    let tt = metric(pi_birth2, TT101_NAME);
    assert_eq!(tt["alias"], tt_birth["alias"]);
    assert_eq!(tt["properties"]["Quality"], 0);
}

fn rebirth_payload() -> Vec<u8> {
    // Built by hand so the test does not depend on the protobuf crate:
    // Payload { timestamp: 1 (field 1), metrics: [Metric { name (1),
    // datatype (4) = 11 Boolean, boolean_value (14) = true }] (field 2) }.
    let name = b"Node Control/Rebirth";
    let mut metric = vec![0x0A, name.len() as u8];
    metric.extend_from_slice(name);
    metric.extend_from_slice(&[0x20, 11, 0x70, 1]);
    let mut payload = vec![0x08, 1, 0x12, metric.len() as u8];
    payload.extend_from_slice(&metric);
    payload
}
