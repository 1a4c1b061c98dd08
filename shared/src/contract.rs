//! The MQTT contract: topic names and JSON payloads consumers rely on.
//!
//! Topics come from a template (`uns/v1/{site}/_unmapped/{source}/{tag}` by
//! default). A tag is one topic segment, so the characters MQTT gives
//! meaning to are percent-encoded: `/`, `+`, `#`, `%`, a leading `$` and
//! control characters. The raw tag always travels in the payload.
//!
//! The payload carries a record id (`{session}-{seq}`) that stays the same
//! if the record is published again, so consumers can de-duplicate.

use std::fmt::Write;

use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value as Json, json};

use crate::record::{Alert, NativeQuality, Point, TsResolution, Value};
use crate::wire::SessionId;

/// Percent-encode `s` for use as one MQTT topic segment.
pub fn escape_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.chars().enumerate() {
        let reserved = matches!(c, '/' | '+' | '#' | '%') || (i == 0 && c == '$') || c.is_control();
        if reserved {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// Fill a topic template. Unknown placeholders are left as they are.
pub fn point_topic(template: &str, site: &str, point: &Point) -> String {
    template
        .replace("{site}", &escape_segment(site))
        .replace("{source}", point.source.system.as_str())
        .replace("{tag}", &escape_segment(&point.tag))
}

/// Severity name from the top two bits of an OPC UA StatusCode.
pub fn severity(status: u32) -> &'static str {
    match status >> 30 {
        0 => "Good",
        1 => "Uncertain",
        _ => "Bad",
    }
}

/// RFC 3339 UTC text with as many fractional digits as needed (up to ns).
pub fn rfc3339_ns(ts_ns: i64) -> String {
    DateTime::from_timestamp_nanos(ts_ns).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The record id consumers de-duplicate on: session, lane letter (`a`
/// alert, `b` bulk: record numbers are per lane) and record number.
pub fn record_id(session: SessionId, lane: crate::lane::Lane, seq: u64) -> String {
    let l = match lane {
        crate::lane::Lane::Alert => 'a',
        crate::lane::Lane::Bulk => 'b',
    };
    format!("{}-{l}{seq}", session.short_hex())
}

fn value_json(v: &Value) -> (Json, &'static str) {
    match v {
        Value::Null => (Json::Null, "null"),
        Value::Bool(b) => (json!(b), "bool"),
        Value::I64(i) => (json!(i), "i64"),
        Value::U64(u) => (json!(u), "u64"),
        Value::F64(f) if f.is_finite() => (json!(f), "f64"),
        // JSON has no NaN or infinities; say what the value was.
        Value::F64(f) => (json!(f.to_string()), "f64"),
        Value::Str(s) => (json!(s), "string"),
        Value::DigitalState { code, name, system } => (
            json!({"state": name, "code": code, "system": system}),
            "digital",
        ),
    }
}

fn native_json(q: &NativeQuality) -> Json {
    match q {
        NativeQuality::None => Json::Null,
        NativeQuality::OpcDa(b) => json!({"opc_da": b}),
        NativeQuality::OpcUa(c) => json!({"opc_ua": c}),
        NativeQuality::Pi {
            good,
            questionable,
            substituted,
            annotated,
        } => json!({"pi": {
            "good": good, "questionable": questionable, "substituted": substituted, "annotated": annotated}}),
        NativeQuality::Aveva {
            quality,
            detail,
            opc,
        } => {
            json!({"aveva": {"quality": quality, "detail": detail, "opc": opc}})
        }
        NativeQuality::Text(t) => json!({"text": t}),
    }
}

fn resolution_str(r: TsResolution) -> &'static str {
    match r {
        TsResolution::Exact => "exact",
        TsResolution::Local => "local",
        TsResolution::AmbiguousEarlier => "ambiguous_earlier",
        TsResolution::AmbiguousLater => "ambiguous_later",
        TsResolution::GapShifted => "gap_shifted",
    }
}

/// Payload options from `[mqtt]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PayloadOptions {
    /// Also emit `ts_ms` (Unix milliseconds) for Telegraf's `json_v2` and
    /// similar consumers that cannot read RFC 3339 with nanoseconds.
    pub ts_ms: bool,
}

/// The JSON payload of one point, default options.
pub fn point_payload(session: SessionId, p: &Point) -> Vec<u8> {
    point_payload_with(session, p, PayloadOptions::default())
}

/// Group per-topic payloads into JSON arrays of at most `max_points`
/// elements and about `max_bytes` bytes, keeping each topic's order and
/// the order in which topics first appear. With `max_points` 1 every
/// payload stays a message of its own, unchanged.
pub fn batch_by_topic(
    items: Vec<(String, Vec<u8>)>,
    max_points: usize,
    max_bytes: usize,
) -> Vec<(String, Vec<u8>)> {
    if max_points <= 1 {
        return items;
    }
    let mut order: Vec<String> = Vec::new();
    let mut groups: std::collections::HashMap<String, Vec<Vec<u8>>> =
        std::collections::HashMap::new();
    for (topic, payload) in items {
        let g = groups.entry(topic).or_insert_with_key(|t| {
            order.push(t.clone());
            Vec::new()
        });
        g.push(payload);
    }
    let mut out = Vec::new();
    for topic in order {
        let Some(payloads) = groups.remove(&topic) else {
            continue;
        };
        let mut cur: Vec<u8> = Vec::new();
        let mut n = 0;
        for p in payloads {
            if n > 0 && (n == max_points || cur.len() + p.len() + 2 > max_bytes) {
                cur.push(b']');
                out.push((topic.clone(), std::mem::take(&mut cur)));
                n = 0;
            }
            cur.push(if n == 0 { b'[' } else { b',' });
            cur.extend_from_slice(&p);
            n += 1;
        }
        if n > 0 {
            cur.push(b']');
            out.push((topic, cur));
        }
    }
    out
}

/// The JSON payload of one point.
pub fn point_payload_with(session: SessionId, p: &Point, opts: PayloadOptions) -> Vec<u8> {
    serde_json::to_vec(&Json::Object(point_object(session, p, opts))).unwrap_or_default()
}

/// The JSON payload of one point with its data-quality verdict: `dq` holds
/// the worst flag, the flag of each check that ran, and the effective
/// quality (the worse of the source's and the checks'); `late` marks a
/// point older than its tag's newest.
pub fn point_payload_dq(
    session: SessionId,
    p: &Point,
    opts: PayloadOptions,
    verdict: &crate::dq::Verdict,
) -> Vec<u8> {
    let mut obj = point_object(session, p, opts);
    let mut dq = crate::dq::verdict_json(verdict);
    if let Json::Object(m) = &mut dq {
        m.insert(
            "q".into(),
            json!({"code": verdict.effective_status, "sev": severity(verdict.effective_status)}),
        );
    }
    obj.insert("dq".into(), dq);
    if verdict.late {
        obj.insert("late".into(), json!(true));
    }
    serde_json::to_vec(&Json::Object(obj)).unwrap_or_default()
}

fn point_object(session: SessionId, p: &Point, opts: PayloadOptions) -> Map<String, Json> {
    let (value, vtype) = value_json(&p.value);
    let mut src = Map::new();
    src.insert("sys".into(), json!(p.source.system.as_str()));
    if let Some(f) = &p.source.file {
        src.insert("file".into(), json!(f));
    }
    if let Some(l) = p.source.line {
        src.insert("line".into(), json!(l));
    }
    let mut obj = Map::new();
    obj.insert("v".into(), json!(1));
    obj.insert(
        "id".into(),
        json!(record_id(session, crate::lane::Lane::Bulk, p.seq)),
    );
    obj.insert("seq".into(), json!(p.seq));
    obj.insert("tag".into(), json!(p.tag));
    obj.insert("src".into(), Json::Object(src));
    obj.insert("ts".into(), json!(rfc3339_ns(p.ts_ns)));
    obj.insert("ts_ns".into(), json!(p.ts_ns));
    if opts.ts_ms {
        obj.insert("ts_ms".into(), json!(p.ts_ns.div_euclid(1_000_000)));
    }
    obj.insert("value".into(), value);
    obj.insert("type".into(), json!(vtype));
    if let Some(u) = &p.unit {
        obj.insert("unit".into(), json!(u));
    }
    obj.insert(
        "q".into(),
        json!({"code": p.status, "sev": severity(p.status), "native": native_json(&p.native_quality)}),
    );
    obj.insert("hist".into(), json!(p.flags.historical));
    let mut flags = Vec::new();
    for (on, name) in [
        (p.flags.substituted, "substituted"),
        (p.flags.annotated, "annotated"),
        (p.flags.interpolated, "interpolated"),
    ] {
        if on {
            flags.push(name);
        }
    }
    if !flags.is_empty() {
        obj.insert("flags".into(), json!(flags));
    }
    if p.ts_resolution != TsResolution::Exact {
        obj.insert(
            "ts_resolution".into(),
            json!(resolution_str(p.ts_resolution)),
        );
    }
    if let Some(raw) = &p.ts_raw {
        obj.insert("ts_raw".into(), json!(raw));
    }
    if !p.attrs.is_empty() {
        let attrs: Map<String, Json> = p.attrs.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        obj.insert("attrs".into(), Json::Object(attrs));
    }
    obj
}

/// Severity band of a 1–1000 severity (OPC UA A&C bands).
pub fn severity_band(sev: u16) -> &'static str {
    match sev {
        801.. => "high",
        601..=800 => "medium_high",
        401..=600 => "medium",
        201..=400 => "medium_low",
        _ => "low",
    }
}

fn opt(obj: &mut Map<String, Json>, key: &str, v: Option<&String>) {
    if let Some(v) = v {
        obj.insert(key.into(), json!(v));
    }
}

/// The JSON payload of one alert.
pub fn alert_payload(session: SessionId, a: &Alert) -> Vec<u8> {
    let mut obj = Map::new();
    obj.insert("v".into(), json!(1));
    obj.insert(
        "id".into(),
        json!(record_id(session, crate::lane::Lane::Alert, a.seq)),
    );
    obj.insert("seq".into(), json!(a.seq));
    obj.insert("source".into(), json!(a.source.as_str()));
    obj.insert("format".into(), json!(format!("{:?}", a.source)));
    obj.insert("kind".into(), json!(format!("{:?}", a.kind)));
    obj.insert("ts".into(), json!(rfc3339_ns(a.event_time_ns)));
    obj.insert("received".into(), json!(rfc3339_ns(a.receive_time_ns)));
    obj.insert("severity".into(), json!(a.severity));
    obj.insert("severity_band".into(), json!(severity_band(a.severity)));
    obj.insert("severity_native".into(), json!(a.severity_native));
    if let Some(f) = a.facility {
        obj.insert("facility".into(), json!(f));
    }
    opt(&mut obj, "event_id", a.event_id.as_ref());
    opt(&mut obj, "host", a.host.as_ref());
    opt(&mut obj, "app", a.app.as_ref());
    opt(&mut obj, "procid", a.procid.as_ref());
    opt(&mut obj, "msgid", a.msgid.as_ref());
    opt(&mut obj, "source_name", a.source_name.as_ref());
    obj.insert("message".into(), json!(a.message));
    if let Some(c) = &a.condition {
        obj.insert(
            "condition".into(),
            json!({"name": c.name, "isa182": c.isa182.map(String::from), "active": c.active, "acked": c.acked,
                   "confirmed": c.confirmed, "retain": c.retain, "shelving": c.shelving,
                   "suppressed_or_shelved": c.suppressed_or_shelved, "out_of_service": c.out_of_service,
                   "latched": c.latched, "quality": c.quality, "comment": c.comment, "user": c.user,
                   "limit_state": c.limit_state}),
        );
    }
    if let Some(n) = &a.net {
        obj.insert(
            "net".into(),
            json!({"src_ip": n.src_ip, "src_port": n.src_port, "dst_ip": n.dst_ip, "dst_port": n.dst_port,
                   "proto": n.proto, "app_proto": n.app_proto, "flow_id": n.flow_id}),
        );
    }
    if let Some(g) = &a.signature {
        obj.insert(
            "signature".into(),
            json!({"gid": g.gid, "id": g.id, "rev": g.rev, "name": g.name, "category": g.category, "action": g.action}),
        );
    }
    if !a.structured.is_empty() {
        let sd: Map<String, Json> = a
            .structured
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        obj.insert("structured".into(), Json::Object(sd));
    }
    let mut flags = Vec::new();
    for (on, name) in [
        (a.flags.no_source_timestamp, "no_source_timestamp"),
        (a.flags.year_inferred, "year_inferred"),
        (a.flags.tz_assumed, "tz_assumed"),
    ] {
        if on {
            flags.push(name);
        }
    }
    if !flags.is_empty() {
        obj.insert("flags".into(), json!(flags));
    }
    serde_json::to_vec(&Json::Object(obj)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{PointFlags, SourceRef, SourceSystem};

    fn point() -> Point {
        Point {
            seq: 42,
            tag: "$SYS/a+b#c%d".into(),
            ts_ns: 1_710_057_602_250_000_000,
            value: Value::F64(71.9),
            status: 0x4000_0000,
            native_quality: NativeQuality::OpcDa(64),
            unit: Some("degC".into()),
            source: SourceRef {
                system: SourceSystem::Aveva,
                file: Some("f.csv".into()),
                line: Some(3),
            },
            ts_raw: Some("2024-03-10 02:00:02.25".into()),
            ts_resolution: TsResolution::Local,
            flags: PointFlags {
                substituted: true,
                ..PointFlags::default()
            },
            attrs: vec![],
        }
    }

    #[test]
    fn segments_escape_mqtt_specials() {
        assert_eq!(escape_segment("$SYS/a+b#c%d"), "%24SYS%2Fa%2Bb%23c%25d");
        assert_eq!(escape_segment("TT 205.PV"), "TT 205.PV");
        assert_eq!(escape_segment("a$b"), "a$b");
        assert_eq!(escape_segment("nul\0"), "nul%00");
        assert_eq!(escape_segment(""), "%00");
    }

    #[test]
    fn topic_is_built_from_the_template() {
        let t = point_topic("uns/v1/{site}/_unmapped/{source}/{tag}", "plant1", &point());
        assert_eq!(t, "uns/v1/plant1/_unmapped/aveva/%24SYS%2Fa%2Bb%23c%25d");
    }

    #[test]
    fn payload_carries_id_ts_quality_and_raw_tag() {
        let body = point_payload(SessionId([0xab; 16]), &point());
        let v: Json = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["id"], "abababababababab-b42");
        assert_eq!(v["tag"], "$SYS/a+b#c%d");
        assert_eq!(v["ts"], "2024-03-10T08:00:02.250Z");
        assert_eq!(v["value"], 71.9);
        assert_eq!(v["q"]["code"], 0x4000_0000u32);
        assert_eq!(v["q"]["sev"], "Uncertain");
        assert_eq!(v["q"]["native"]["opc_da"], 64);
        assert_eq!(v["flags"][0], "substituted");
        assert_eq!(v["ts_resolution"], "local");
    }

    #[test]
    fn nanoseconds_survive_in_text() {
        assert_eq!(
            rfc3339_ns(1_710_057_600_000_000_015),
            "2024-03-10T08:00:00.000000015Z"
        );
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn ts_ms_is_optional_and_floors_negative_times() {
        let mut p = point();
        p.ts_ns = -1;
        let plain: Json =
            serde_json::from_slice(&point_payload(SessionId([1; 16]), &p)).expect("json");
        assert!(plain.get("ts_ms").is_none());
        let opts = PayloadOptions { ts_ms: true };
        let v: Json = serde_json::from_slice(&point_payload_with(SessionId([1; 16]), &p, opts))
            .expect("json");
        assert_eq!(v["ts_ms"], -1);
    }

    #[test]
    fn batches_keep_topic_order_and_bounds() {
        let items: Vec<(String, Vec<u8>)> =
            [("a", "1"), ("b", "2"), ("a", "3"), ("a", "4"), ("b", "5")]
                .iter()
                .map(|(t, p)| ((*t).to_owned(), p.as_bytes().to_vec()))
                .collect();
        assert_eq!(batch_by_topic(items.clone(), 1, 1 << 20), items);
        let text = |v: Vec<(String, Vec<u8>)>| -> Vec<(String, String)> {
            v.into_iter()
                .map(|(t, p)| (t, String::from_utf8(p).expect("utf8")))
                .collect()
        };
        let by2 = text(batch_by_topic(items.clone(), 2, 1 << 20));
        let want = [("a", "[1,3]"), ("a", "[4]"), ("b", "[2,5]")];
        assert_eq!(by2, want.map(|(t, p)| (t.to_owned(), p.to_owned())));
        // A byte bound splits too, but never below one element.
        let small = text(batch_by_topic(items, 100, 4));
        assert_eq!(small.len(), 5);
        assert!(
            small
                .iter()
                .all(|(_, p)| p.starts_with('[') && p.ends_with(']'))
        );
    }
}
