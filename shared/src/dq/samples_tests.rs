//! The DQ outcomes `samples/EXPECTED.md` names, on points read from the
//! real fixture files by the real parsers.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::formats::{Format, ParseContext, ignition, status};
use crate::record::Value;
use crate::testutil::ns;

const PROFICY: &[u8] = include_bytes!("../../../tests/fixtures/proficy_filecollector.csv");
const IGNITION: &[u8] = include_bytes!("../../../tests/fixtures/ignition_sqlt_data_1_2024_03.csv");
const IGNITION_TAGS: &[u8] = include_bytes!("../../../tests/fixtures/ignition_sqlth_te.csv");
const AVEVA: &[u8] = include_bytes!("../../../tests/fixtures/aveva_history.csv");
const PI: &[u8] = include_bytes!("../../../tests/fixtures/pi_webapi_recorded.json");

fn engine(cfg: serde_json::Value) -> Engine {
    let cfg: DqConfig = serde_json::from_value(cfg).expect("deserializes");
    Engine::new(cfg.validate().expect("valid"))
}

fn points(format: Format, bytes: &[u8], ctx: &ParseContext) -> Vec<Point> {
    let out = format.parse(bytes, ctx).expect("parses");
    out.points
}

fn chicago(file: &str) -> ParseContext {
    ParseContext {
        file: Some(file.into()),
        tz: Some(chrono_tz::America::Chicago),
        ..ParseContext::default()
    }
}

/// Every point through `engine` at receiver time `now`, in file order.
fn run(e: &mut Engine, pts: &[Point], now: i64) -> Vec<(Verdict, Vec<DqEvent>)> {
    pts.iter().map(|p| e.check(p, now)).collect()
}

fn f(v: &Verdict, c: Check) -> Option<u8> {
    v.flag(c).map(Flag::code)
}

#[test]
fn proficy_future_late_duplicate_and_ranged_sentinel() {
    let pts = points(
        Format::Proficy,
        PROFICY,
        &chicago("proficy_filecollector.csv"),
    );
    assert_eq!(pts.len(), 7);
    let mut e = engine(json!({
        "defaults": {"gap": "1m"},
        "tag": [{"tag": "TIGER.LINE2.TT_101.F_CV", "lo": -50.0, "hi": 200.0}]
    }));
    let r = run(&mut e, &pts, ns("2024-03-10T08:05:00Z"));

    // 1 → 2: 01:59:58 CST → 03:00:02 CDT is 4 s: no gap flag.
    assert_eq!(f(&r[0].0, Check::TsLocalAmbiguous), Some(1));
    assert_eq!(f(&r[1].0, Check::Gap), Some(1));
    assert!(r[1].1.is_empty());
    assert_eq!(r[1].0.worst, Flag::Pass);

    // 3: -9999 with Bad: Bad, and gross range fails.
    let v = &r[2].0;
    assert_eq!(f(v, Check::SourceQuality), Some(4));
    assert_eq!(f(v, Check::GrossRange), Some(4));
    assert_eq!(v.effective_status, 0x8000_0000);
    assert!(matches!(
        r[2].1[..],
        [DqEvent {
            kind: EventKind::RangeViolation {
                value: -9999.0,
                flag: Flag::Fail
            },
            ..
        }]
    ));

    // 4: Uncertain.
    assert_eq!(f(&r[3].0, Check::SourceQuality), Some(3));
    assert_eq!(r[3].0.effective_status, status::UNCERTAIN);

    // 5: out of order: suspect, late, still published.
    let v = &r[4].0;
    assert!(v.late);
    assert_eq!(f(v, Check::OutOfOrder), Some(3));
    assert_eq!(v.withhold, None);

    // 6: exact duplicate of 5: dropped.
    assert_eq!(r[5].0.withhold, Some(Withhold::Duplicate));

    // 7: 2035: future timestamp fails, quarantined.
    let v = &r[6].0;
    assert_eq!(f(v, Check::TsFuture), Some(4));
    assert_eq!(v.withhold, Some(Withhold::Quarantine(Check::TsFuture)));
    assert_eq!(v.effective_status, status::BAD);

    // Without a configured range the sentinel is only the source's Bad.
    let mut e = engine(json!({}));
    let r = run(&mut e, &pts, ns("2024-03-10T08:05:00Z"));
    assert_eq!(r[2].0.flag(Check::GrossRange), None);
    assert_eq!(r[2].0.effective_status, 0x8000_0000);
}

fn ignition_points() -> Vec<Point> {
    let ctx = ParseContext {
        file: Some("ignition_sqlt_data_1_2024_03.csv".into()),
        tag_table: Some(Arc::new(
            ignition::parse_tag_table(IGNITION_TAGS).expect("tag table"),
        )),
        ..ParseContext::default()
    };
    points(Format::Ignition, IGNITION, &ctx)
}

#[test]
fn ignition_repeated_value_flatlines_with_a_short_threshold() {
    let pts = ignition_points();
    assert_eq!(pts.len(), 8);
    let cfg = |t: &str| json!({"class": [{"match": "line2/tt*", "flatline_time": t}]});
    let now = ns("2024-03-10T08:06:00Z");

    // tagid 12: 71.532 five times over 4 minutes.
    let mut e = engine(cfg("4m"));
    let r = run(&mut e, &pts, now);
    let flat: Vec<_> = r[..5].iter().map(|(v, _)| f(v, Check::Flatline)).collect();
    assert_eq!(flat, [Some(2), Some(1), Some(1), Some(1), Some(3)]);
    assert_eq!(r[4].0.worst, Flag::Suspect);
    assert_eq!(r[4].0.effective_status, status::UNCERTAIN);
    assert!(matches!(
        r[4].1[..],
        [DqEvent { kind: EventKind::Flatline { samples: 5, flag: Flag::Suspect, since_ns }, .. }]
            if since_ns == ns("2024-03-10T08:00:00Z")
    ));
    // tagid 13 (int) and 14 (string): no flatline check.
    assert_eq!(r[6].0.flag(Check::Flatline), None);
    // Last row: Bad, no value: missing (9), and the flat run ends.
    let v = &r[7].0;
    assert_eq!(
        (f(v, Check::Syntax), f(v, Check::SourceQuality)),
        (Some(9), Some(4))
    );
    assert_eq!(v.effective_status, 0x8000_0000);
    assert!(matches!(
        r[7].1[..],
        [DqEvent {
            kind: EventKind::FlatlineEnded { samples: 5, .. },
            ..
        }]
    ));

    // With the default 30 minutes it is not flat yet.
    let mut e = engine(cfg("30m"));
    let r = run(&mut e, &pts, now);
    assert_eq!(r[4].0.flag(Check::Flatline), Some(Flag::Pass));
    assert!(r.iter().all(|(_, ev)| ev.is_empty()));
}

#[test]
fn aveva_fall_back_fold_is_suspect_without_a_conflict() {
    let mut ctx = chicago("aveva_history.csv");
    ctx.discrete_tags.insert("PUMP7.Running".into());
    let pts = points(Format::Aveva, AVEVA, &ctx);
    assert_eq!(pts.len(), 8);
    let mut e =
        engine(json!({"class": [{"match": "PUMP*.Running", "kind": "digital", "states": [0, 1]}]}));
    let r = run(&mut e, &pts, ns("2024-11-03T08:00:00Z"));
    for (v, _) in &r {
        assert_eq!(f(v, Check::TsLocalAmbiguous), Some(3));
        assert!(v.worst >= Flag::Suspect);
        assert!(v.effective_status >= status::UNCERTAIN);
    }
    // Rows 2 and 3 (the same 01:30:00 twice) were resolved to an hour
    // apart, so they are neither a duplicate nor a conflict.
    assert_eq!(f(&r[2].0, Check::Duplicate), Some(1));
    assert_eq!(f(&r[2].0, Check::OutOfOrder), Some(1));
    assert!(r[2].1.is_empty());
    // Row 4: NULL Bad. Row 5: doubtful. Row 6: discrete in its state set.
    assert_eq!(f(&r[3].0, Check::Syntax), Some(9));
    assert_eq!(f(&r[4].0, Check::SourceQuality), Some(3));
    assert_eq!(f(&r[5].0, Check::DigitalState), Some(1));
    assert_eq!(pts[6].value, Value::Str("B-2024-1103-07".into()));
    // Row 8: GoodLocalOverride is Good; DQ suspect keeps its sub-code bits out.
    assert_eq!(f(&r[7].0, Check::SourceQuality), Some(1));
    assert_eq!(r[7].0.effective_status, status::UNCERTAIN);
}

#[test]
fn pi_webapi_system_states_and_duplicate() {
    let ctx = ParseContext {
        file: Some("pi_webapi_recorded.json".into()),
        tag: Some("TT101.PV".into()),
        ..ParseContext::default()
    };
    let pts = points(Format::PiWebApi, PI, &ctx);
    assert_eq!(pts.len(), 7, "the Errors item is a reject, not a point");
    let mut e = engine(json!({"defaults": {"unit": "°C", "lo": 0.0, "hi": 150.0}}));
    let r = run(&mut e, &pts, ns("2024-03-10T08:10:00Z"));
    assert_eq!(r[0].0.worst, Flag::Pass);
    assert_eq!(f(&r[0].0, Check::Unit), Some(1));
    assert_eq!(f(&r[1].0, Check::SourceQuality), Some(3));
    // I/O Timeout: a recognised SYSTEM state, Bad at the source.
    let v = &r[2].0;
    assert_eq!(
        (f(v, Check::Syntax), f(v, Check::DigitalState)),
        (Some(1), Some(1))
    );
    assert_eq!(v.effective_status, status::BAD_NO_COMMUNICATION);
    assert_eq!(v.flag(Check::GrossRange), None);
    // Over Range, Shutdown: Bad at the source, kept as such.
    assert_eq!(r[4].0.effective_status, status::BAD_OUT_OF_RANGE);
    assert_eq!(r[5].0.effective_status, status::BAD_OUT_OF_SERVICE);
    // 7: exact duplicate of 6.
    assert_eq!(r[6].0.withhold, Some(Withhold::Duplicate));
    assert!(r[..6].iter().all(|(v, _)| v.withhold.is_none()));
}
