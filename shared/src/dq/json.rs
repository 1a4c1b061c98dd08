//! JSON shapes of DQ results, as FORMATS.md §4 shows them.
//!
//! A point's payload carries `"dq":{"flag":3,"checks":{"roc":3}}`: the
//! worst flag and every check that was *evaluated* for the point (flags 1,
//! 3, 4, 9). Checks that are off for the tag, do not apply to the value, or
//! could not be decided (2) are left out to keep payloads small; `flag` is
//! still 2 when nothing could be decided. Events go to the `dq` topic as
//! `{"tag","ts","ts_ns","seq","check","kind","flag","detail"}`.

use serde_json::{Map, Value as Json, json};

use super::{DqEvent, EventKind, Flag, Verdict};
use crate::contract::rfc3339_ns;

/// `{"flag": worst, "checks": {"roc": 3, …}}` for the evaluated checks.
pub fn verdict_json(v: &Verdict) -> Json {
    let checks: Map<String, Json> = v
        .checks()
        .filter(|&(_, f)| f != Flag::NotEvaluated)
        .map(|(c, f)| (c.name().to_owned(), json!(f.code())))
        .collect();
    json!({"flag": v.worst.code(), "checks": checks})
}

/// A finite number as a JSON number; NaN and infinities as text, since
/// JSON has none (the same convention as point payloads).
fn num(f: f64) -> Json {
    if f.is_finite() {
        json!(f)
    } else {
        json!(f.to_string())
    }
}

/// The event as published on the `dq` topic.
pub fn event_json(e: &DqEvent) -> Json {
    let detail = match &e.kind {
        EventKind::Flatline {
            since_ns,
            samples,
            flag: _,
        } => json!({"since": rfc3339_ns(*since_ns), "samples": samples}),
        EventKind::FlatlineEnded {
            since_ns,
            until_ns,
            samples,
        } => json!({"since": rfc3339_ns(*since_ns), "until": rfc3339_ns(*until_ns),
                    "samples": samples}),
        EventKind::Stale {
            last_ts_ns,
            age_ns,
            last_value,
            status,
        } => json!({"last_ts": rfc3339_ns(*last_ts_ns), "age_ms": age_ns / 1_000_000,
                    "last_value": last_value.map(num), "status": status}),
        EventKind::Resumed { last_ts_ns } => json!({"last_ts": rfc3339_ns(*last_ts_ns)}),
        EventKind::RangeViolation { value, flag: _ } | EventKind::RangeCleared { value } => {
            json!({"value": num(*value)})
        }
        EventKind::Gap { from_ns, to_ns } => json!({"from": rfc3339_ns(*from_ns),
            "to": rfc3339_ns(*to_ns), "gap_ms": to_ns.saturating_sub(*from_ns) / 1_000_000}),
        EventKind::Conflict {
            first_status,
            status,
        } => json!({"first_status": first_status, "status": status}),
        EventKind::Spike {
            value,
            deviation,
            flag: _,
        } => json!({"value": num(*value), "deviation": num(*deviation)}),
        EventKind::Unit {
            unit,
            configured,
            changed,
        } => json!({"unit": unit, "configured": configured, "changed": changed}),
    };
    json!({
        "tag": e.tag,
        "ts": rfc3339_ns(e.ts_ns),
        "ts_ns": e.ts_ns,
        "seq": e.seq,
        "check": e.kind.check().name(),
        "kind": e.kind.name(),
        "flag": e.kind.flag().code(),
        "detail": detail,
    })
}
