//! Engine tests, one or more per check, driven by a fake receiver clock.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::formats::status;
use crate::record::{SourceSystem, TsResolution, Value};

/// 2024-03-10T08:00:00Z.
const T0: i64 = 1_710_057_600_000_000_000;
const S: i64 = 1_000_000_000;
const MIN: i64 = 60 * S;

fn pt(tag: &str, ts_ns: i64, value: Value) -> Point {
    Point::new(SourceSystem::Other, tag, ts_ns, value)
}

/// `i` seconds, in ns.
fn secs(i: usize) -> i64 {
    i64::try_from(i).expect("small") * S
}

fn f(tag: &str, ts_ns: i64, v: f64) -> Point {
    pt(tag, ts_ns, Value::F64(v))
}

fn engine(cfg: serde_json::Value) -> Engine {
    let cfg: DqConfig = serde_json::from_value(cfg).expect("deserializes");
    Engine::new(cfg.validate().expect("valid"))
}

/// Defaults without the statistical roc and flatline, so a test sees only
/// the check it is about.
fn quiet(extra: &serde_json::Value) -> Engine {
    let mut defaults = json!({"roc_sigma": 0.0, "flatline_n": 0});
    if let (Some(d), Some(e)) = (defaults.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    engine(json!({ "defaults": defaults }))
}

/// Check at a receiver clock just after the point.
fn check(e: &mut Engine, p: &Point) -> (Verdict, Vec<DqEvent>) {
    e.check(p, p.ts_ns + S)
}

fn flag(v: &Verdict, c: Check) -> Option<u8> {
    v.flag(c).map(Flag::code)
}

#[test]
fn flag_order_is_worse_of() {
    use Flag::*;
    assert!(NotEvaluated < Pass && Pass < Suspect && Suspect < Fail && Fail < Missing);
    assert_eq!(Pass.worse(NotEvaluated), Pass);
    assert_eq!(Suspect.worse(Fail), Fail);
    assert_eq!(Missing.worse(Fail), Missing);
    for f in [Pass, NotEvaluated, Suspect, Fail, Missing] {
        assert_eq!(Flag::from_code(f.code()), Some(f));
    }
    assert_eq!(Flag::from_code(0), None);
    assert_eq!(Check::ALL.len(), Check::COUNT);
    for (i, c) in Check::ALL.iter().enumerate() {
        assert_eq!(c.index(), i);
    }
}

#[test]
fn first_sample_of_a_tag_is_not_evaluated() {
    let mut e = engine(json!({"defaults": {"roc_max": 1.0, "spike_suspect": 1.0, "gap": "1m"}}));
    let (v, ev) = check(&mut e, &f("T", T0, 5.0));
    for c in [
        Check::OutOfOrder,
        Check::Duplicate,
        Check::RateOfChange,
        Check::Spike,
        Check::Flatline,
        Check::Gap,
    ] {
        assert_eq!(v.flag(c), Some(Flag::NotEvaluated), "{c:?}");
    }
    assert_eq!(flag(&v, Check::Syntax), Some(1));
    assert_eq!(flag(&v, Check::SourceQuality), Some(1));
    assert_eq!(flag(&v, Check::TsFuture), Some(1));
    // Off or not applicable: not reported at all.
    assert_eq!(v.flag(Check::GrossRange), None);
    assert_eq!(v.flag(Check::Unit), None);
    assert_eq!(v.flag(Check::TsLocalAmbiguous), None);
    assert_eq!(v.worst, Flag::Pass);
    assert_eq!(v.effective_status, status::GOOD);
    assert!(!v.late && v.withhold.is_none() && ev.is_empty());
    let (v, _) = check(&mut e, &f("T", T0 + S, 5.5));
    assert_eq!(flag(&v, Check::OutOfOrder), Some(1));
    assert_eq!(flag(&v, Check::RateOfChange), Some(1));
    assert_eq!(flag(&v, Check::Gap), Some(1));
}

#[test]
fn source_quality_and_effective_status() {
    let mut e = quiet(&json!({}));
    let mut p = f("T", T0, 1.0);
    p.status = status::UNCERTAIN_SUBSTITUTE_VALUE;
    let (v, _) = check(&mut e, &p);
    assert_eq!(flag(&v, Check::SourceQuality), Some(3));
    // Already Uncertain: the source's more specific code is kept.
    assert_eq!(v.effective_status, status::UNCERTAIN_SUBSTITUTE_VALUE);
    p.ts_ns += S;
    p.status = status::BAD_SENSOR_FAILURE;
    let (v, _) = check(&mut e, &p);
    assert_eq!(flag(&v, Check::SourceQuality), Some(4));
    assert_eq!(v.effective_status, status::BAD_SENSOR_FAILURE);
    // Severity bits 11 are invalid and read as Bad.
    p.ts_ns += S;
    p.status = 0xC000_0000;
    assert_eq!(flag(&check(&mut e, &p).0, Check::SourceQuality), Some(4));
}

#[test]
fn dq_suspect_raises_good_to_uncertain_keeping_info_bits() {
    let mut e = quiet(&json!({}));
    let mut p = f("T", T0, 1.0);
    // Good, InfoType=DataValue, historian bits Interpolated.
    p.status = 0x0000_0402;
    p.ts_resolution = TsResolution::AmbiguousLater;
    let (v, _) = check(&mut e, &p);
    assert_eq!(v.worst, Flag::Suspect);
    assert_eq!(v.effective_status, 0x4000_0402);
    // A Bad source outranks a DQ suspect.
    p.ts_ns += S;
    p.status = status::BAD_NO_COMMUNICATION;
    let (v, _) = check(&mut e, &p);
    assert_eq!(v.effective_status, status::BAD_NO_COMMUNICATION);
}

#[test]
fn ts_future_boundary_is_inclusive_of_the_tolerance() {
    let mut e = quiet(&json!({}));
    let now = T0;
    let (v, _) = e.check(&f("T", now + 10 * MIN, 1.0), now);
    assert_eq!(flag(&v, Check::TsFuture), Some(1));
    assert!(v.withhold.is_none());
    let (v, _) = e.check(&f("T", now + 10 * MIN + 1, 1.0), now);
    assert_eq!(flag(&v, Check::TsFuture), Some(4));
    assert_eq!(v.withhold, Some(Withhold::Quarantine(Check::TsFuture)));
    assert_eq!(v.effective_status, status::BAD);
    let mut e = engine(json!({"quarantine_future": false}));
    let (v, _) = e.check(&f("T", now + 11 * MIN, 1.0), now);
    assert_eq!((flag(&v, Check::TsFuture), v.withhold), (Some(4), None));
}

#[test]
fn future_point_does_not_poison_the_order() {
    let mut e = quiet(&json!({}));
    let now = T0 + MIN;
    e.check(&f("T", T0, 1.0), now);
    let (v, _) = e.check(&f("T", T0 + 3_000 * 86_400 * S, 2.0), now);
    assert_eq!(flag(&v, Check::TsFuture), Some(4));
    assert_eq!(v.flag(Check::OutOfOrder), None);
    let (v, _) = e.check(&f("T", T0 + S, 3.0), now);
    assert_eq!(flag(&v, Check::OutOfOrder), Some(1));
    assert!(!v.late);
}

#[test]
fn ts_stale_old_only_in_live_mode() {
    let mut e = quiet(&json!({}));
    let now = T0;
    let week = 7 * 86_400 * S;
    let (v, _) = e.check(&f("A", now - week, 1.0), now);
    assert_eq!(
        flag(&v, Check::TsStaleOld),
        Some(1),
        "exactly max_age passes"
    );
    let (v, _) = e.check(&f("B", now - week - 1, 1.0), now);
    assert_eq!(flag(&v, Check::TsStaleOld), Some(3));
    assert_eq!(v.effective_status, status::UNCERTAIN);
    let mut old = f("C", now - 30 * week, 1.0);
    old.flags.historical = true;
    let (v, _) = e.check(&old, now);
    assert_eq!(v.flag(Check::TsStaleOld), None);
    assert_eq!(v.worst, Flag::Pass);
}

#[test]
fn ts_sentinels_fail() {
    let mut e = quiet(&json!({"max_age": "0s"}));
    let now = T0;
    let y1900 = -2_208_988_800 * S;
    let y2100 = 4_102_444_800 * S;
    for (ts, want) in [
        (0, 4),
        (y1900, 4),
        (y1900 - 86_400 * S, 4),
        (i64::MIN, 4),
        (y1900 + S, 1),
        (T0, 1),
        (y2100 - S, 1),
        (y2100, 4),
        (i64::MAX, 4),
    ] {
        let (v, _) = e.check(&f(&format!("T{ts}"), ts, 1.0), now);
        assert_eq!(flag(&v, Check::TsSentinel), Some(want), "{ts}");
    }
}

/// The cut influx line of the field report: `quality=192i 1764000`, the
/// start of a 19-digit timestamp, read as 1970-01-01T00:00:00.001764Z.
const CUT_TS: i64 = 1_764_000;
/// 2000-01-01T00:00:00Z, the default `ts_floor`.
const Y2000: i64 = 946_684_800 * S;

#[test]
fn ts_before_the_floor_is_bad() {
    let mut e = quiet(&json!({"max_age": "0s"}));
    for (ts, want) in [(CUT_TS, 4), (Y2000 - 1, 4), (-S, 4), (Y2000, 1), (T0, 1)] {
        let (v, _) = e.check(&f(&format!("T{ts}"), ts, 12.938), T0);
        assert_eq!(flag(&v, Check::TsFloor), Some(want), "{ts}");
        if want == 4 {
            assert_eq!(v.worst, Flag::Fail, "{ts}");
            assert_eq!(v.effective_status, status::BAD, "{ts}: Bad, not Good");
            assert_eq!(verdict_json(&v)["checks"]["ts_floor"], 4, "{ts}");
        }
    }
    // Below the floor is no place in the tag's sequence: the next point is
    // the tag's first, not "newer than 1970".
    let (v, _) = e.check(&f("Cut", CUT_TS, 1.0), T0);
    assert_eq!(flag(&v, Check::OutOfOrder), None);
    let (v, _) = e.check(&f("Cut", T0, 2.0), T0);
    assert_eq!(flag(&v, Check::OutOfOrder), Some(2), "first usable point");
    assert_eq!(
        flag(&v, Check::TsPrecision),
        Some(2),
        "no newest to compare with"
    );
    // A class with a history before 2000 sets its own floor.
    let mut e = engine(json!({"defaults": {"max_age": "0s"},
        "class": [{"match": "OLD*", "ts_floor": "1990-01-01T00:00:00Z"}]}));
    let y1995 = 788_918_400 * S;
    let (v, _) = e.check(&f("OLD.1", y1995, 1.0), T0);
    assert_eq!(flag(&v, Check::TsFloor), Some(1));
    let (v, _) = e.check(&f("NEW.1", y1995, 1.0), T0);
    assert_eq!(flag(&v, Check::TsFloor), Some(4));
}

#[test]
fn ts_of_a_coarser_unit_than_its_neighbours_is_bad() {
    // The floor as low as it goes, so only the precision check can tell.
    let mut e = quiet(&json!({"max_age": "0s", "ts_floor": "1900-01-01T00:00:00Z"}));
    let (first, _) = e.check(&f("T", T0, 1.0), T0);
    assert_eq!(
        flag(&first, Check::TsPrecision),
        Some(2),
        "first: not evaluated"
    );
    assert!(verdict_json(&first)["checks"].get("ts_precision").is_none());
    let (v, _) = e.check(&f("T", T0 + S, 1.1), T0);
    assert_eq!(flag(&v, Check::TsPrecision), Some(1));
    let newest = T0 + S;
    for (what, ts, want) in [
        ("seconds", 1_710_057_602, 4),
        ("milliseconds", 1_710_057_602_000, 4),
        ("microseconds", 1_710_057_602_000_000, 4),
        ("cut short", CUT_TS, 4),
        ("exactly 100 times smaller", newest / 100, 4),
        ("less than 100 times smaller", newest / 100 + 1, 1),
        ("next second", T0 + 2 * S, 1),
    ] {
        let (v, _) = e.check(&f("T", ts, 1.2), T0);
        assert_eq!(flag(&v, Check::TsPrecision), Some(want), "{what}");
        assert_eq!(flag(&v, Check::TsFloor), Some(1), "{what}: floor passes");
        if want == 4 {
            assert_eq!(v.effective_status, status::BAD, "{what}");
            assert!(!v.late, "{what}: unusable, so not late either");
        }
    }
    // A mis-scaled point never became the tag's newest.
    let (v, _) = e.check(&f("T", T0 + 3 * S, 1.3), T0);
    assert_eq!(flag(&v, Check::OutOfOrder), Some(1));
    // A tag whose first point was the small one: the good points after it
    // are not condemned.
    let (_, _) = e.check(&f("U", CUT_TS, 1.0), T0);
    let (v, _) = e.check(&f("U", T0, 1.0), T0);
    assert_eq!(flag(&v, Check::TsPrecision), Some(1));
    assert_eq!(v.worst, Flag::Pass);
}

#[test]
fn dst_fold_and_gap_are_suspect() {
    let mut e = quiet(&json!({}));
    for (i, (res, want)) in [
        (TsResolution::Local, Some(1)),
        (TsResolution::AmbiguousEarlier, Some(3)),
        (TsResolution::AmbiguousLater, Some(3)),
        (TsResolution::GapShifted, Some(3)),
        (TsResolution::Exact, None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = f("T", T0 + secs(i), 1.0);
        p.ts_resolution = res;
        let (v, _) = check(&mut e, &p);
        assert_eq!(flag(&v, Check::TsLocalAmbiguous), want, "{res:?}");
    }
}

#[test]
fn out_of_order_is_late_and_still_published() {
    let mut e = quiet(&json!({"roc_max": 1.0}));
    check(&mut e, &f("T", T0 + 10 * S, 1.0));
    let (v, ev) = check(&mut e, &f("T", T0 + 5 * S, 100.0));
    assert!(v.late);
    assert_eq!(flag(&v, Check::OutOfOrder), Some(3));
    assert_eq!(v.withhold, None);
    assert_eq!(v.effective_status, status::UNCERTAIN);
    // A late point is not a base for the rate of change, in either direction.
    assert_eq!(v.flag(Check::RateOfChange), None);
    assert!(ev.is_empty());
    let (v, _) = check(&mut e, &f("T", T0 + 11 * S, 1.5));
    assert_eq!(flag(&v, Check::RateOfChange), Some(1));
    assert!(!v.late);
}

#[test]
fn exact_duplicate_is_withheld_also_when_late() {
    let mut e = quiet(&json!({}));
    let p = f("T", T0, 1.0);
    check(&mut e, &p);
    let (v, ev) = check(&mut e, &p);
    assert_eq!(v.withhold, Some(Withhold::Duplicate));
    assert_eq!(flag(&v, Check::Duplicate), Some(4));
    assert!(ev.is_empty());
    // Late sample sent twice (Proficy rows 5 and 6).
    check(&mut e, &f("T", T0 + 10 * S, 2.0));
    let late = f("T", T0 + 5 * S, 1.5);
    assert_eq!(check(&mut e, &late).0.withhold, None);
    assert_eq!(check(&mut e, &late).0.withhold, Some(Withhold::Duplicate));
    // Same value and time but another status is not an exact duplicate.
    let mut other = late.clone();
    other.status = status::UNCERTAIN;
    let (v, _) = check(&mut e, &other);
    assert_eq!(v.withhold, None);
    assert_eq!(flag(&v, Check::Duplicate), Some(3));
}

#[test]
fn same_timestamp_other_value_is_a_conflict() {
    let mut e = quiet(&json!({}));
    check(&mut e, &f("T", T0, 42.31));
    let mut p = f("T", T0, 41.95);
    p.seq = 3;
    let (v, ev) = check(&mut e, &p);
    assert_eq!(flag(&v, Check::Duplicate), Some(3));
    assert_eq!(flag(&v, Check::OutOfOrder), Some(1));
    assert!(!v.late && v.withhold.is_none());
    assert_eq!(v.effective_status, status::UNCERTAIN);
    assert_eq!(
        ev,
        [DqEvent {
            tag: "T".into(),
            ts_ns: T0,
            seq: Some(3),
            kind: EventKind::Conflict {
                first_status: 0,
                status: 0
            }
        }]
    );
}

#[test]
fn gross_range_bands_are_inclusive_and_non_finite_fails() {
    let mut e = quiet(&json!({"lo": -50.0, "hi": 200.0, "suspect_lo": 0.0, "suspect_hi": 150.0}));
    let cases = [
        (-50.0, 3),
        (-50.000_001, 4),
        (0.0, 1),
        (150.0, 1),
        (150.1, 3),
        (200.0, 3),
        (200.1, 4),
        (f64::NAN, 4),
        (f64::INFINITY, 4),
        (f64::NEG_INFINITY, 4),
    ];
    for (i, (x, want)) in cases.into_iter().enumerate() {
        let (v, _) = check(&mut e, &f("T", T0 + secs(i), x));
        assert_eq!(flag(&v, Check::GrossRange), Some(want), "{x}");
    }
    let (v, _) = check(&mut e, &f("T", T0 + 100 * S, 500.0));
    assert_eq!(v.effective_status, status::BAD_OUT_OF_RANGE);
    let (v, _) = check(&mut e, &f("T", T0 + 101 * S, 160.0));
    assert_eq!(
        v.effective_status,
        status::UNCERTAIN_ENGINEERING_UNITS_EXCEEDED
    );
    // With no range configured only non-finite values are judged.
    let mut e = quiet(&json!({}));
    assert_eq!(
        check(&mut e, &f("U", T0, 1e300)).0.flag(Check::GrossRange),
        None
    );
    let (v, _) = check(&mut e, &f("U", T0 + S, f64::NAN));
    assert_eq!(flag(&v, Check::GrossRange), Some(4));
    // Integers are numbers too.
    let mut e = quiet(&json!({"hi": 10.0}));
    assert_eq!(
        flag(
            &check(&mut e, &pt("I", T0, Value::I64(11))).0,
            Check::GrossRange
        ),
        Some(4)
    );
}

#[test]
fn range_events_on_entering_and_leaving() {
    let mut e = quiet(&json!({"hi": 10.0, "suspect_hi": 5.0}));
    let kinds = |ev: Vec<DqEvent>| ev.into_iter().map(|e| e.kind.name()).collect::<Vec<_>>();
    assert!(check(&mut e, &f("T", T0, 1.0)).1.is_empty());
    assert_eq!(
        kinds(check(&mut e, &f("T", T0 + S, 6.0)).1),
        ["range_violation"]
    );
    assert!(check(&mut e, &f("T", T0 + 2 * S, 7.0)).1.is_empty());
    assert_eq!(
        kinds(check(&mut e, &f("T", T0 + 3 * S, 11.0)).1),
        ["range_violation"]
    );
    assert!(check(&mut e, &f("T", T0 + 4 * S, 6.0)).1.is_empty());
    assert_eq!(
        kinds(check(&mut e, &f("T", T0 + 5 * S, 1.0)).1),
        ["range_cleared"]
    );
}

#[test]
fn rate_of_change_absolute_boundary() {
    // 2 units per second.
    let mut e = quiet(&json!({"roc_max": 2.0}));
    check(&mut e, &f("T", T0, 0.0));
    let (v, _) = check(&mut e, &f("T", T0 + 10 * S, 20.0));
    assert_eq!(
        flag(&v, Check::RateOfChange),
        Some(1),
        "exactly roc_max passes"
    );
    let (v, _) = check(&mut e, &f("T", T0 + 20 * S, 40.5));
    assert_eq!(flag(&v, Check::RateOfChange), Some(3));
    assert_eq!(v.effective_status, status::UNCERTAIN);
    let (v, _) = check(&mut e, &f("T", T0 + 30 * S, 20.5));
    assert_eq!(
        flag(&v, Check::RateOfChange),
        Some(1),
        "falling at the limit"
    );
    assert_eq!(verdict_json(&v)["checks"]["roc"], 1);
}

#[test]
fn rate_of_change_statistical_after_warm_up() {
    let mut e = engine(json!({"defaults": {"flatline_n": 0}}));
    let mut t = T0;
    let mut x = 50.0;
    // A noisy signal: steps of +0.5 and -0.4. The decayed weight reaches
    // the warm-up of 10 at the 12th step.
    for i in 0..40 {
        t += 10 * S;
        x += if i % 2 == 0 { 0.5 } else { -0.4 };
        let (v, _) = check(&mut e, &f("T", t, x));
        let want = if i < 12 {
            Flag::NotEvaluated
        } else {
            Flag::Pass
        };
        assert_eq!(v.flag(Check::RateOfChange), Some(want), "step {i}");
    }
    t += 10 * S;
    let (v, _) = check(&mut e, &f("T", t, x + 5.0));
    assert_eq!(flag(&v, Check::RateOfChange), Some(3));
    // A step tag is exempt from the statistical test.
    let mut e = engine(json!({"class": [{"match": "SP*", "kind": "step"}]}));
    for i in 0..40 {
        let x = if i == 39 { 1000.0 } else { f64::from(i % 2) };
        let (v, _) = check(&mut e, &f("SP1", T0 + i64::from(i) * S, x));
        assert_eq!(v.flag(Check::RateOfChange), None);
    }
}

#[test]
fn spike_verdict_arrives_with_the_next_sample() {
    let mut e = quiet(&json!({"spike_suspect": 5.0, "spike_fail": 20.0}));
    let mut seq = 0;
    let mut run = |e: &mut Engine, t: i64, x: f64| {
        seq += 1;
        let mut p = f("T", T0 + t * S, x);
        p.seq = seq;
        check(e, &p)
    };
    let (v, ev) = run(&mut e, 0, 10.0);
    assert_eq!(v.flag(Check::Spike), Some(Flag::NotEvaluated));
    assert!(ev.is_empty());
    run(&mut e, 1, 10.0);
    // seq 3 is 6 above its neighbours' mean: decided when seq 4 arrives.
    let (v, ev) = run(&mut e, 2, 16.0);
    assert_eq!(
        (v.flag(Check::Spike), ev.len()),
        (Some(Flag::NotEvaluated), 0)
    );
    let (v, ev) = run(&mut e, 3, 10.0);
    assert_eq!(v.flag(Check::Spike), Some(Flag::NotEvaluated));
    assert_eq!(
        v.worst,
        Flag::Pass,
        "the late verdict does not touch this point"
    );
    assert_eq!(
        ev,
        [DqEvent {
            tag: "T".into(),
            ts_ns: T0 + 2 * S,
            seq: Some(3),
            kind: EventKind::Spike {
                value: 16.0,
                deviation: 6.0,
                flag: Flag::Suspect
            }
        }]
    );
    // Exactly at the threshold is not a spike; above the fail threshold fails.
    run(&mut e, 4, 15.0);
    assert!(
        run(&mut e, 5, 10.0).1.is_empty(),
        "deviation 5.0 == spike_suspect"
    );
    run(&mut e, 6, -30.0);
    let (_, ev) = run(&mut e, 7, 10.0);
    assert!(matches!(
        ev[..],
        [DqEvent {
            seq: Some(7),
            kind: EventKind::Spike {
                flag: Flag::Fail,
                ..
            },
            ..
        }]
    ));
}

fn flat_engine(t: &str) -> Engine {
    engine(json!({"defaults": {"roc_sigma": 0.0, "flatline_n": 5, "flatline_time": t}}))
}

#[test]
fn flatline_time_based_with_sparse_samples() {
    // 5 identical samples one minute apart span 4 minutes.
    for (t, want) in [
        ("3m", Flag::Suspect),
        ("4m", Flag::Suspect),
        ("30m", Flag::Pass),
    ] {
        let mut e = flat_engine(t);
        let mut last = None;
        for i in 0..5 {
            last = Some(check(&mut e, &f("T", T0 + i * MIN, 71.532)));
        }
        let (v, ev) = last.expect("ran");
        assert_eq!(v.flag(Check::Flatline), Some(want), "T = {t}");
        assert_eq!(ev.len(), usize::from(want == Flag::Suspect));
    }
    // Long enough in time but only 4 samples: not yet.
    let mut e = flat_engine("1m");
    for i in 0..4 {
        let (v, _) = check(&mut e, &f("T", T0 + i * 10 * MIN, 1.0));
        assert_ne!(v.flag(Check::Flatline), Some(Flag::Suspect));
    }
    let (v, _) = check(&mut e, &f("T", T0 + 40 * MIN, 1.0));
    assert_eq!(
        v.flag(Check::Flatline),
        Some(Flag::Fail),
        "5 samples over 40 min ≥ 3×1 min"
    );
}

#[test]
fn flatline_escalates_at_three_t_and_reports_its_end() {
    let mut e = flat_engine("10m");
    let mut kinds = Vec::new();
    let mut flags = Vec::new();
    for i in 0..=7 {
        // Within tolerance 1e-6·|v|.
        let x = 100.0 + if i % 2 == 0 { 0.0 } else { 5e-5 };
        let (v, ev) = check(&mut e, &f("T", T0 + i * 5 * MIN, x));
        flags.push(v.flag(Check::Flatline).map(Flag::code));
        kinds.extend(
            ev.into_iter()
                .map(|e| (e.kind.name(), e.kind.flag().code())),
        );
    }
    // Runs of 0..35 min: n reaches 5 at 20 min (≥ T), 30 min = 3T fails.
    let (pass, suspect, fail) = (Some(1), Some(3), Some(4));
    assert_eq!(
        flags,
        [Some(2), pass, pass, pass, suspect, suspect, fail, fail]
    );
    assert_eq!(kinds, [("flatline", 3), ("flatline", 4)]);
    let (v, ev) = check(&mut e, &f("T", T0 + 40 * MIN, 101.0));
    assert_eq!(v.flag(Check::Flatline), Some(Flag::Pass));
    assert_eq!(
        ev.first().map(|e| e.kind.clone()),
        Some(EventKind::FlatlineEnded {
            since_ns: T0,
            until_ns: T0 + 35 * MIN,
            samples: 8
        })
    );
    // abs_tol widens the tolerance.
    let mut e = engine(json!({"defaults": {"roc_sigma": 0.0, "flatline_n": 2,
        "flatline_time": "1m", "flatline_abs_tol": 0.5}}));
    check(&mut e, &f("T", T0, 10.0));
    let (v, _) = check(&mut e, &f("T", T0 + MIN, 10.5));
    assert_eq!(
        v.flag(Check::Flatline),
        Some(Flag::Suspect),
        "|Δ| == abs_tol is flat"
    );
}

#[test]
fn flatline_skips_digital_step_bool_and_string_tags() {
    let mut e = engine(json!({
        "defaults": {"flatline_n": 2, "flatline_time": "1m", "roc_sigma": 0.0},
        "class": [{"match": "SP*", "kind": "step"}, {"match": "PUMP*", "kind": "digital"}]
    }));
    let values = [
        ("SP1", Value::F64(5.0)),
        ("PUMP1", Value::I64(1)),
        ("B", Value::Bool(true)),
        ("S", Value::Str("RUNNING".into())),
        (
            "D",
            Value::DigitalState {
                code: 1,
                name: "On".into(),
                system: false,
            },
        ),
    ];
    for (tag, value) in values {
        for i in 0..10 {
            let (v, ev) = check(&mut e, &pt(tag, T0 + i * 10 * MIN, value.clone()));
            assert_eq!(v.flag(Check::Flatline), None, "{tag}");
            assert!(ev.is_empty());
        }
    }
}

#[test]
fn stale_via_tick_once_per_silence() {
    let mut e = quiet(&json!({"expected_interval": "10s"}));
    let mut p = f("T", T0, 7.5);
    p.seq = 1;
    e.check(&p, T0);
    e.check(&pt("N", T0, Value::Bool(true)), T0);
    assert!(
        e.tick(T0 + 30 * S).is_empty(),
        "exactly 3 × 10 s is not stale"
    );
    let ev = e.tick(T0 + 30 * S + 1);
    assert_eq!(ev.len(), 2);
    let t = ev.iter().find(|e| e.tag == "T").expect("T stale");
    assert_eq!(
        t.kind,
        EventKind::Stale {
            last_ts_ns: T0,
            age_ns: 30 * S + 1,
            last_value: Some(7.5),
            status: status::UNCERTAIN_LAST_USABLE_VALUE
        }
    );
    assert_eq!((t.ts_ns, t.seq), (T0 + 30 * S + 1, None));
    assert!(ev.iter().any(|e| e.tag == "N"
        && matches!(
            e.kind,
            EventKind::Stale {
                last_value: None,
                ..
            }
        )));
    assert!(e.tick(T0 + 60 * S).is_empty(), "reported once");
    let (_, ev) = e.check(&f("T", T0 + 61 * S, 7.6), T0 + 61 * S);
    assert_eq!(
        ev.iter().map(|e| e.kind.name()).collect::<Vec<_>>(),
        ["gap", "resumed"]
    );
    assert_eq!(e.tick(T0 + 62 * S).len(), 0, "N stays reported");
    assert_eq!(e.tick(T0 + 92 * S).len(), 1, "T stale again");
    // Tags without expected_interval, and backfill, are never stale.
    let mut e = quiet(&json!({}));
    e.check(&f("T", T0, 1.0), T0);
    assert!(e.tick(T0 + 86_400 * S).is_empty());
    let mut e = quiet(&json!({"expected_interval": "10s"}));
    let mut h = f("H", T0, 1.0);
    h.flags.historical = true;
    e.check(&h, T0);
    assert!(e.tick(T0 + 86_400 * S).is_empty());
}

#[test]
fn gap_boundary_is_exclusive() {
    let mut e = quiet(&json!({"gap": "1m"}));
    check(&mut e, &f("T", T0, 1.0));
    let (v, ev) = check(&mut e, &f("T", T0 + MIN, 1.0));
    assert_eq!((flag(&v, Check::Gap), ev.len()), (Some(1), 0));
    let (v, ev) = check(&mut e, &f("T", T0 + 2 * MIN + 1, 1.0));
    assert_eq!(flag(&v, Check::Gap), Some(3));
    assert_eq!(
        ev[0].kind,
        EventKind::Gap {
            from_ns: T0 + MIN,
            to_ns: T0 + 2 * MIN + 1
        }
    );
    assert_eq!(event_json(&ev[0])["detail"]["gap_ms"], 60_000);
}

#[test]
fn unit_mismatch_and_change_mid_stream() {
    let mut e = quiet(&json!({"unit": "degC"}));
    let with = |ts: i64, u: Option<&str>| {
        let mut p = f("T", T0 + ts * S, 1.0);
        p.unit = u.map(str::to_owned);
        p
    };
    let (v, ev) = check(&mut e, &with(0, Some("degC")));
    assert_eq!((flag(&v, Check::Unit), ev.len()), (Some(1), 0));
    let (v, _) = check(&mut e, &with(1, None));
    assert_eq!(flag(&v, Check::Unit), Some(2));
    let (v, ev) = check(&mut e, &with(2, Some("°F")));
    assert_eq!(flag(&v, Check::Unit), Some(3));
    assert!(
        matches!(&ev[0].kind, EventKind::Unit { changed: true, unit: Some(u), .. } if u == "°F")
    );
    let (v, ev) = check(&mut e, &with(3, Some("°F")));
    assert_eq!(
        (flag(&v, Check::Unit), ev.len()),
        (Some(3), 0),
        "still not the configured unit"
    );
    // No configured unit: only a change is suspect.
    let mut e = quiet(&json!({}));
    let (v, _) = check(&mut e, &with(0, Some("°C")));
    assert_eq!(flag(&v, Check::Unit), Some(1));
    assert_eq!(
        flag(&check(&mut e, &with(1, Some("°C"))).0, Check::Unit),
        Some(1)
    );
    assert_eq!(
        flag(&check(&mut e, &with(2, Some("K"))).0, Check::Unit),
        Some(3)
    );
    assert_eq!(
        flag(&check(&mut e, &with(3, Some("K"))).0, Check::Unit),
        Some(1)
    );
    assert_eq!(check(&mut e, &with(4, None)).0.flag(Check::Unit), None);
}

#[test]
fn digital_state_in_set_or_system() {
    let mut e = engine(json!({"class": [{"match": "PUMP*", "kind": "digital", "states": [0, 1]}]}));
    let state = |code, system| Value::DigitalState {
        code,
        name: "x".into(),
        system,
    };
    let cases = [
        (Value::Bool(true), 1),
        (Value::I64(1), 1),
        (Value::I64(2), 4),
        (Value::F64(0.0), 1),
        (Value::F64(0.5), 4),
        (state(1, false), 1),
        (state(7, false), 4),
        (state(246, true), 1),
        (state(999, true), 4),
    ];
    for (i, (value, want)) in cases.into_iter().enumerate() {
        let (v, _) = check(&mut e, &pt("PUMP7", T0 + secs(i), value.clone()));
        assert_eq!(flag(&v, Check::DigitalState), Some(want), "{value:?}");
    }
    // No set configured: a non-system state cannot be judged.
    let mut e = quiet(&json!({}));
    let (v, _) = check(&mut e, &pt("X", T0, state(3, false)));
    assert_eq!(flag(&v, Check::DigitalState), Some(2));
    let (v, _) = check(&mut e, &pt("X", T0 + S, state(246, true)));
    assert_eq!(flag(&v, Check::DigitalState), Some(1));
    assert_eq!(
        check(&mut e, &f("X", T0 + 2 * S, 1.0))
            .0
            .flag(Check::DigitalState),
        None
    );
}

#[test]
fn syntax_type_mismatch_is_quarantined_and_missing_is_nine() {
    let mut e = engine(json!({"class": [
        {"match": "TT*", "kind": "analog"},
        {"match": "BATCH*", "kind": "string"}]}));
    let (v, _) = check(&mut e, &pt("TT1", T0, Value::Str("oops".into())));
    assert_eq!(flag(&v, Check::Syntax), Some(4));
    assert_eq!(v.withhold, Some(Withhold::Quarantine(Check::Syntax)));
    assert_eq!(
        v.flag(Check::OutOfOrder),
        None,
        "a quarantined point is not sequenced"
    );
    let io = Value::DigitalState {
        code: 246,
        name: "I/O Timeout".into(),
        system: true,
    };
    assert_eq!(
        flag(&check(&mut e, &pt("TT1", T0 + S, io)).0, Check::Syntax),
        Some(1)
    );
    assert_eq!(
        flag(
            &check(&mut e, &pt("BATCH.ID", T0, Value::F64(1.0))).0,
            Check::Syntax
        ),
        Some(4)
    );
    let (v, _) = check(&mut e, &pt("TT2", T0, Value::Null));
    assert_eq!(flag(&v, Check::Syntax), Some(9));
    assert_eq!((v.worst, v.withhold), (Flag::Missing, None));
    assert_eq!(v.effective_status, status::BAD);
    let mut e =
        engine(json!({"quarantine_syntax": false, "class": [{"match": "TT*", "kind": "analog"}]}));
    assert_eq!(
        check(&mut e, &pt("TT1", T0, Value::Bool(true))).0.withhold,
        None
    );
}

#[test]
fn reconfigure_keeps_state_and_rematches_classes() {
    let mut e = flat_engine("30m");
    for i in 0..4 {
        check(&mut e, &f("T", T0 + i * MIN, 5.0));
    }
    let cfg: DqConfig = serde_json::from_value(json!({"defaults":
        {"roc_sigma": 0.0, "flatline_n": 5, "flatline_time": "3m"},
        "class": [{"match": "T", "hi": 1.0}]}))
    .expect("deserializes");
    e.reconfigure(cfg.validate().expect("valid"));
    let (v, ev) = check(&mut e, &f("T", T0 + 4 * MIN, 5.0));
    assert_eq!(
        v.flag(Check::Flatline),
        Some(Flag::Suspect),
        "the flat run kept its clock"
    );
    assert_eq!(
        flag(&v, Check::GrossRange),
        Some(4),
        "the new class applies"
    );
    assert_eq!(flag(&v, Check::OutOfOrder), Some(1), "order state kept");
    assert_eq!(
        ev.iter().map(|e| e.kind.name()).collect::<Vec<_>>(),
        ["range_violation", "flatline"]
    );
    // Shrinking max_tags evicts the least recently seen.
    check(&mut e, &f("U", T0, 1.0));
    let cfg = DqConfig {
        max_tags: 1,
        ..DqConfig::default()
    };
    e.reconfigure(cfg.validate().expect("valid"));
    assert_eq!(
        e.stats(),
        DqStats {
            tags: 1,
            evictions: 1
        }
    );
}

#[test]
fn max_tags_evicts_and_counts() {
    let mut e = Engine::new(
        DqConfig {
            max_tags: 2,
            ..DqConfig::default()
        }
        .validate()
        .expect("valid"),
    );
    check(&mut e, &f("A", T0, 1.0));
    check(&mut e, &f("B", T0, 1.0));
    check(&mut e, &f("A", T0 + S, 1.0));
    check(&mut e, &f("C", T0, 1.0));
    assert_eq!(
        e.stats(),
        DqStats {
            tags: 2,
            evictions: 1
        }
    );
    // B was evicted: its next point is a first sample again.
    let (v, _) = check(&mut e, &f("B", T0 + S, 1.0));
    assert_eq!(v.flag(Check::OutOfOrder), Some(Flag::NotEvaluated));
    let (v, _) = check(&mut e, &f("A", T0 + 2 * S, 1.0));
    assert_eq!(
        v.flag(Check::OutOfOrder),
        Some(Flag::NotEvaluated),
        "A went too"
    );
    assert_eq!(e.stats().evictions, 3);
}

#[test]
fn snapshot_restore_keeps_the_flatline_clock_and_order() {
    let cfg = |t: &str| {
        serde_json::from_value::<DqConfig>(json!({"defaults":
            {"roc_sigma": 0.0, "flatline_n": 5, "flatline_time": t, "expected_interval": "1m"}}))
        .expect("deserializes")
        .validate()
        .expect("valid")
    };
    let mut e = Engine::new(cfg("3m"));
    for i in 0..3 {
        check(&mut e, &f("T", T0 + i * MIN, 71.532));
    }
    check(&mut e, &f("Other", T0, 1.0));
    let bytes = e.snapshot().expect("encodes");
    let mut back = Engine::restore(cfg("3m"), &bytes).expect("restores");
    assert_eq!(back.stats(), e.stats());
    check(&mut back, &f("T", T0 + 3 * MIN, 71.532));
    let (v, ev) = check(&mut back, &f("T", T0 + 4 * MIN, 71.532));
    assert_eq!(v.flag(Check::Flatline), Some(Flag::Suspect));
    assert!(matches!(
        ev[..],
        [DqEvent {
            kind: EventKind::Flatline {
                since_ns: T0,
                samples: 5,
                ..
            },
            ..
        }]
    ));
    // The order survived too: a replayed point is a duplicate.
    let (v, _) = check(&mut back, &f("T", T0 + MIN, 71.532));
    assert_eq!(
        v.withhold, None,
        "not the newest or last sample: late, not dropped"
    );
    assert!(v.late);
    let (v, _) = check(&mut back, &f("T", T0 + 4 * MIN, 71.532));
    assert_eq!(v.withhold, Some(Withhold::Duplicate));
    // Restoring into a smaller table keeps the most recently seen.
    let small = DqConfig {
        max_tags: 1,
        ..DqConfig::default()
    }
    .validate()
    .expect("valid");
    let one = Engine::restore(small, &bytes).expect("restores");
    assert_eq!(one.stats().tags, 1);
    assert!(Engine::restore(cfg("3m"), b"garbage").is_err());
}

#[test]
fn verdict_and_event_json_shapes() {
    let mut e = quiet(&json!({"roc_max": 0.1}));
    check(&mut e, &f("T", T0, 1.0));
    let mut p = f("T", T0 + S, 71.9);
    p.status = status::UNCERTAIN;
    let (v, _) = check(&mut e, &p);
    assert_eq!(
        verdict_json(&v),
        json!({"flag": 3, "checks": {"syntax": 1, "source_quality": 3, "ts_future": 1,
            "ts_stale_old": 1, "ts_sentinel": 1, "ts_floor": 1, "ts_precision": 1,
            "out_of_order": 1, "duplicate": 1, "roc": 3}})
    );
    // Not-evaluated checks are left out.
    let (v, _) = check(&mut e, &f("New", T0, 1.0));
    let j = verdict_json(&v);
    assert_eq!(j["flag"], 1);
    assert!(j["checks"].get("roc").is_none() && j["checks"].get("out_of_order").is_none());
    let ev = DqEvent {
        tag: "T".into(),
        ts_ns: T0 + 250_000_000,
        seq: Some(9),
        kind: EventKind::Flatline {
            since_ns: T0,
            samples: 5,
            flag: Flag::Suspect,
        },
    };
    assert_eq!(
        event_json(&ev),
        json!({"tag": "T", "ts": "2024-03-10T08:00:00.250Z", "ts_ns": T0 + 250_000_000,
            "seq": 9, "check": "flatline", "kind": "flatline", "flag": 3,
            "detail": {"since": "2024-03-10T08:00:00Z", "samples": 5}})
    );
    let nan = DqEvent {
        seq: None,
        kind: EventKind::RangeViolation {
            value: f64::NAN,
            flag: Flag::Fail,
        },
        ..ev
    };
    let j = event_json(&nan);
    assert_eq!(
        (
            j["detail"]["value"].as_str(),
            j["seq"].is_null(),
            &j["flag"]
        ),
        (Some("NaN"), true, &json!(4))
    );
}

#[test]
fn steady_state_check_raises_no_events() {
    let mut e = engine(json!({"defaults": {"lo": 0.0, "hi": 100.0, "roc_max": 10.0,
        "spike_suspect": 50.0, "gap": "1h", "expected_interval": "10s"}}));
    let mut events = Vec::new();
    for i in 0..1_000 {
        // A triangle wave: 50, 51, … 56, 55, … 50, …
        let x = 50.0 + (6 - (i % 12 - 6_i64).abs()) as f64;
        let v = e.check_into(&f("T", T0 + i * S, x), T0 + i * S, &mut events);
        assert!(v.worst <= Flag::Pass, "{v:?}");
    }
    assert!(events.is_empty());
    assert_eq!(events.capacity(), 0, "nothing was allocated for events");
}

fn arb_state() -> impl Strategy<Value = table::TagState> {
    let sample = (any::<i64>(), any::<u64>(), any::<u32>())
        .prop_map(|(ts, key, status)| table::Sample { ts, key, status });
    (
        (
            sample.clone(),
            sample,
            any::<f64>(),
            any::<f64>(),
            any::<u64>(),
        ),
        (any::<f64>(), any::<i64>(), any::<i64>(), any::<u32>()),
        (
            any::<f64>(),
            any::<f64>(),
            any::<f64>(),
            any::<u64>(),
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
        ),
    )
        .prop_map(|(a, b, c)| table::TagState {
            newest: a.0,
            last_rx: a.1,
            v_prev: a.2,
            v_last: a.3,
            seq_last: a.4,
            flat_ref: b.0,
            flat_since: b.1,
            flat_until: b.2,
            flat_n: b.3,
            roc_w: c.0,
            roc_mean: c.1,
            roc_m2: c.2,
            unit_key: c.3,
            bits: c.4,
            flat_level: c.5,
            range_level: c.6,
        })
}

proptest! {
    /// Whatever state a snapshot brings back, checking and ticking cannot panic.
    #[test]
    fn restored_nonsense_state_never_panics(
        state in arb_state(),
        ts in any::<i64>(),
        now in any::<i64>(),
        x in any::<f64>(),
    ) {
        let body = (0u64, vec![("T", state)]);
        let bytes = postcard::to_extend(&body, b"WDQS\x01".to_vec()).expect("encodes");
        let cfg: DqConfig = serde_json::from_value(json!({"defaults": {
            "lo": 0.0, "hi": 1.0, "roc_max": 1.0, "spike_suspect": 1.0, "gap": "1s",
            "expected_interval": "1s", "unit": "m"}})).expect("deserializes");
        let mut e = Engine::restore(cfg.validate().expect("valid"), &bytes).expect("restores");
        let mut p = f("T", ts, x);
        p.unit = Some("m".into());
        let _ = e.check(&p, now);
        let _ = e.check(&f("T", ts.wrapping_add(1), x), now);
        let _ = e.tick(now);
    }
}
