//! The checks themselves: one function per check, run in a fixed order.
//!
//! ```text
//! syntax ─ source_quality ─ timestamps ─ ordering ─┬─ duplicate: withhold, stop
//!                                                  ├─ gross_range, unit, digital_state
//!                                                  └─ in order: gap, roc, spike, flatline
//! ```
//!
//! Only a point whose timestamp is usable (not a sentinel, not in the
//! future, type correct) and that is the tag's newest advances the tag's
//! sequence state. A 2035 timestamp must not make every later point "out of
//! order", and a late point must not be taken as the base of a rate of
//! change. Late and untimed points still get the checks that need no
//! sequence (range, unit, state).
//!
//! Duplicates and conflicts are recognised against two remembered samples
//! per tag, the newest and the last received, which catches a row repeated
//! (Proficy rows 5 and 6, PI items 6 and 7) and a re-sent newest value. An
//! older stretch sent again (a resend, a file sent twice) is recognised by
//! the engine's bounded memory of recent points ([`super::RecentPoints`],
//! `dq.duplicate_memory`) before these checks run; beyond that memory it is
//! reported as late (`out_of_order`), not dropped, and consumers
//! de-duplicate it. A different status at the same timestamp counts as a
//! conflict, like a different value.
//!
//! Thresholds: every "above" comparison is strict and every band inclusive,
//! so a value exactly at a threshold passes: `ts == now + tolerance` is not
//! in the future, `v == hi` is in range, `Δt == gap` is no gap, a rate equal
//! to `roc_max` passes. Durations that *trigger* (flatline `T`, `3T`,
//! `flatline_n`) are reached at equality: a run of exactly `T` is flat.

use crate::formats::status;
use crate::record::{Point, TsResolution, Value};

use super::config::{Params, TagKind};
use super::table::{Sample, TagState, bit};
use super::{Check, DqEvent, EventKind, Flag, Verdict, Withhold};

/// 1900-01-01T00:00:00Z: this instant and anything earlier is a sentinel
/// (covers OLE/Excel zero 1899-12-30 and `i64::MIN` "NaT").
const SENTINEL_1900_NS: i64 = -2_208_988_800_000_000_000;
/// 2100-01-01T00:00:00Z: this instant and anything later is a sentinel.
const SENTINEL_2100_NS: i64 = 4_102_444_800_000_000_000;
/// PI reserves state codes 193–320 for the SYSTEM set (FORMATS.md §2).
const SYSTEM_STATES: std::ops::RangeInclusive<i32> = 193..=320;
/// Decayed weight of `Δv` samples needed before the statistical rate of
/// change is judged.
const SIGMA_WARMUP: f64 = 10.0;
/// Relative part of the tolerance, FORMATS.md §5: `max(abs_tol, 1e-6·|v|)`.
const REL_TOL: f64 = 1e-6;

/// Config switches that are not per tag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) quarantine_future: bool,
    pub(crate) quarantine_syntax: bool,
}

/// How a point relates to the tag's earlier points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// The tag's first usable point.
    First,
    /// Newer than the newest.
    Next,
    /// Older than the newest.
    Late,
    /// Same timestamp as a remembered point, different value or status.
    Conflict,
    /// Same timestamp, value and status as a remembered point.
    Duplicate,
    /// Timestamp or type unusable: not placed in the sequence.
    Untimed,
}

/// One check run: the point, its parameters and where results go.
struct Run<'a> {
    point: &'a Point,
    params: &'a Params,
    now: i64,
    verdict: Verdict,
    events: &'a mut Vec<DqEvent>,
}

impl Run<'_> {
    fn set(&mut self, check: Check, flag: Flag) {
        self.verdict.set(check, flag);
    }

    fn event(&mut self, ts_ns: i64, seq: Option<u64>, kind: EventKind) {
        self.events.push(DqEvent {
            tag: self.point.tag.clone(),
            ts_ns,
            seq,
            kind,
        });
    }

    fn numeric(&self) -> Option<f64> {
        numeric(self.params.kind, &self.point.value)
    }
}

/// Run every check on `point` and update the tag's `state`.
pub(crate) fn evaluate(
    point: &Point,
    params: &Params,
    policy: Policy,
    now: i64,
    state: &mut TagState,
    events: &mut Vec<DqEvent>,
) -> Verdict {
    let mut run = Run {
        point,
        params,
        now,
        verdict: Verdict::default(),
        events,
    };
    let syntax = syntax(&mut run);
    source_quality(&mut run);
    let timed = timestamps(&mut run, state) && syntax != Flag::Fail;
    let order = ordering(&mut run, state, timed);
    if order != Order::Duplicate {
        gross_range(&mut run, state);
        unit(&mut run, state);
        digital_state(&mut run);
    }
    if matches!(order, Order::First | Order::Next) {
        sequence(&mut run, state, order == Order::First);
        state.newest = state.last_rx;
        state.put(bit::HAS_NEWEST, true);
    }
    finish(run.verdict, point.status, policy)
}

/// The value as a number, if the tag's kind gets numeric checks.
fn numeric(kind: TagKind, value: &Value) -> Option<f64> {
    if matches!(kind, TagKind::Digital | TagKind::String) {
        return None;
    }
    match *value {
        Value::F64(f) => Some(f),
        Value::I64(i) => Some(i as f64),
        Value::U64(u) => Some(u as f64),
        _ => None,
    }
}

/// The verdict of a point remembered as already checked (same tag, time,
/// value and status): withheld as a duplicate; no other check runs and the
/// tag's state is left alone.
pub(crate) fn remembered_duplicate(point: &Point, policy: Policy) -> Verdict {
    let mut v = Verdict::default();
    v.set(Check::Duplicate, Flag::Fail);
    v.withhold = Some(Withhold::Duplicate);
    finish(v, point.status, policy)
}

/// Worst flag, effective status, quarantine.
fn finish(mut v: Verdict, source: u32, policy: Policy) -> Verdict {
    v.worst = v
        .checks()
        .map(|(_, f)| f)
        .max()
        .unwrap_or(Flag::NotEvaluated);
    let range = v.flag(Check::GrossRange) == Some(v.worst);
    let dq = match v.worst {
        Flag::Pass | Flag::NotEvaluated => status::GOOD,
        Flag::Suspect if range => status::UNCERTAIN_ENGINEERING_UNITS_EXCEEDED,
        Flag::Suspect => status::UNCERTAIN,
        Flag::Fail if range => status::BAD_OUT_OF_RANGE,
        Flag::Fail | Flag::Missing => status::BAD,
    };
    v.effective_status = worse_status(source, dq);
    if v.withhold.is_none() {
        if policy.quarantine_syntax && v.flag(Check::Syntax) == Some(Flag::Fail) {
            v.withhold = Some(Withhold::Quarantine(Check::Syntax));
        } else if policy.quarantine_future && v.flag(Check::TsFuture) == Some(Flag::Fail) {
            v.withhold = Some(Withhold::Quarantine(Check::TsFuture));
        }
    }
    v
}

/// Severity of an OPC UA StatusCode: 0 Good, 1 Uncertain, 2 Bad (the
/// invalid `11` counts as Bad).
fn severity(code: u32) -> u32 {
    (code >> 30).min(2)
}

/// `dq` (with the source's info bits) if it is more severe than `source`,
/// else `source` unchanged.
fn worse_status(source: u32, dq: u32) -> u32 {
    if severity(dq) > severity(source) {
        dq | (source & 0xFFFF)
    } else {
        source
    }
}

/// Type against the declared kind; a missing value is 9.
fn syntax(run: &mut Run<'_>) -> Flag {
    let ok = match (run.params.kind, &run.point.value) {
        (_, Value::Null) => {
            run.set(Check::Syntax, Flag::Missing);
            return Flag::Missing;
        }
        (TagKind::Auto, _)
        | (TagKind::Analog | TagKind::Step, Value::F64(_) | Value::I64(_) | Value::U64(_))
        | (
            TagKind::Digital,
            Value::Bool(_) | Value::I64(_) | Value::U64(_) | Value::DigitalState { .. },
        )
        | (TagKind::String, Value::Str(_)) => true,
        (TagKind::Digital, Value::F64(f)) => f.is_finite() && f.fract() == 0.0,
        // A SYSTEM state (I/O Timeout…) may replace any tag's value.
        (_, Value::DigitalState { system, .. }) => *system,
        _ => false,
    };
    let flag = if ok { Flag::Pass } else { Flag::Fail };
    run.set(Check::Syntax, flag);
    flag
}

fn source_quality(run: &mut Run<'_>) {
    let flag = match severity(run.point.status) {
        0 => Flag::Pass,
        1 => Flag::Suspect,
        _ => Flag::Fail,
    };
    run.set(Check::SourceQuality, flag);
}

/// Sentinel, floor, precision, future, too old, ambiguous local time.
/// Returns whether the timestamp can place the point in the tag's sequence.
fn timestamps(run: &mut Run<'_>, st: &TagState) -> bool {
    let ts = run.point.ts_ns;
    let sentinel = ts == 0 || ts <= SENTINEL_1900_NS || ts >= SENTINEL_2100_NS;
    run.set(Check::TsSentinel, fail_if(sentinel));
    let below_floor = ts < run.params.ts_floor_ns;
    run.set(Check::TsFloor, fail_if(below_floor));
    let coarser = st
        .has(bit::HAS_NEWEST)
        .then(|| coarser_unit(ts, st.newest.ts));
    run.set(
        Check::TsPrecision,
        coarser.map_or(Flag::NotEvaluated, fail_if),
    );
    let future = ts > run.now.saturating_add(run.params.future_tol_ns);
    run.set(Check::TsFuture, fail_if(future));
    if let Some(max_age) = run.params.max_age_ns
        && !run.point.flags.historical
    {
        let old = ts < run.now.saturating_sub(max_age);
        run.set(Check::TsStaleOld, suspect_if(old));
    }
    match run.point.ts_resolution {
        TsResolution::Exact => {}
        TsResolution::Local => run.set(Check::TsLocalAmbiguous, Flag::Pass),
        TsResolution::AmbiguousEarlier
        | TsResolution::AmbiguousLater
        | TsResolution::GapShifted => run.set(Check::TsLocalAmbiguous, Flag::Suspect),
    }
    !(sentinel || future || below_floor || coarser == Some(true))
}

/// Whether `ts` has the magnitude of a coarser unit than `newest`, the
/// tag's newest timestamp: at least 100 times smaller, both counted in ns
/// since the epoch. That is what seconds, milliseconds or microseconds
/// read as nanoseconds look like (a writer's precision changed, a column
/// in the wrong unit): a unit step is a factor of 1000, and the margin
/// keeps a later instant in the coarser unit caught. So is a timestamp cut
/// short by two digits or more. Within one unit, a tag's timestamps after
/// 1970 never differ that much (100 times smaller than 2024 is 1970-06).
/// Only the smaller side is judged: a finer unit read as a coarser one
/// lands beyond 2100 (`ts_sentinel`) or overflows in the parser, and a
/// newest that was itself too small must not condemn the good points after
/// it.
fn coarser_unit(ts: i64, newest: i64) -> bool {
    ts > 0 && newest > 0 && ts <= newest / 100
}

fn fail_if(bad: bool) -> Flag {
    if bad { Flag::Fail } else { Flag::Pass }
}

fn suspect_if(bad: bool) -> Flag {
    if bad { Flag::Suspect } else { Flag::Pass }
}

/// Duplicate, conflict and order, against the newest and the last received
/// sample. Updates `last_rx`; the caller advances `newest`.
fn ordering(run: &mut Run<'_>, st: &mut TagState, timed: bool) -> Order {
    let p = run.point;
    let s = Sample {
        ts: p.ts_ns,
        key: value_key(&p.value),
        status: p.status,
    };
    let newest = st.has(bit::HAS_NEWEST).then_some(st.newest);
    let last = st.has(bit::HAS_LAST_RX).then_some(st.last_rx);
    if newest == Some(s) || last == Some(s) {
        run.set(Check::Duplicate, Flag::Fail);
        run.verdict.withhold = Some(Withhold::Duplicate);
        return Order::Duplicate;
    }
    st.last_rx = s;
    st.put(bit::HAS_LAST_RX, true);
    let late = timed && newest.is_some_and(|n| s.ts < n.ts);
    if late {
        run.set(Check::OutOfOrder, Flag::Suspect);
        run.verdict.late = true;
    }
    if let Some(earlier) = [newest, last].into_iter().flatten().find(|o| o.ts == s.ts) {
        run.set(Check::Duplicate, Flag::Suspect);
        let kind = EventKind::Conflict {
            first_status: earlier.status,
            status: s.status,
        };
        run.event(s.ts, Some(p.seq), kind);
        if timed && !late {
            run.set(Check::OutOfOrder, Flag::Pass);
        }
        return Order::Conflict;
    }
    if !timed {
        run.set(Check::Duplicate, Flag::Pass);
        return Order::Untimed;
    }
    match newest {
        None => {
            run.set(Check::OutOfOrder, Flag::NotEvaluated);
            run.set(Check::Duplicate, Flag::NotEvaluated);
            Order::First
        }
        Some(_) if late => {
            run.set(Check::Duplicate, Flag::Pass);
            Order::Late
        }
        Some(_) => {
            run.set(Check::OutOfOrder, Flag::Pass);
            run.set(Check::Duplicate, Flag::Pass);
            Order::Next
        }
    }
}

/// FNV-1a over a type byte and the value's bytes: stable across builds, so
/// it can be persisted.
pub(super) fn value_key(v: &Value) -> u64 {
    let mut h = Fnv::default();
    match v {
        Value::Null => h.write(&[0]),
        Value::Bool(b) => h.write(&[1, u8::from(*b)]),
        Value::I64(i) => {
            h.write(&[2]);
            h.write(&i.to_le_bytes());
        }
        Value::U64(u) => {
            h.write(&[3]);
            h.write(&u.to_le_bytes());
        }
        Value::F64(f) => {
            h.write(&[4]);
            h.write(&f.to_bits().to_le_bytes());
        }
        Value::Str(s) => {
            h.write(&[5]);
            h.write(s.as_bytes());
        }
        Value::DigitalState { code, name, system } => {
            h.write(&[6, u8::from(*system)]);
            h.write(&code.to_le_bytes());
            h.write(name.as_bytes());
        }
    }
    h.0
}

/// Key of a unit string (never 0, which stands for "none").
fn unit_key(unit: &str) -> u64 {
    let mut h = Fnv::default();
    h.write(unit.as_bytes());
    h.0 | 1
}

pub(super) struct Fnv(pub(super) u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(super) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Fail and suspect bands; NaN and ±Inf always fail. Events on entering,
/// worsening and leaving a band.
fn gross_range(run: &mut Run<'_>, st: &mut TagState) {
    let Some(x) = run.numeric() else { return };
    let (range, suspect) = (run.params.range, run.params.suspect);
    let flag = if !x.is_finite() || range.excludes(x) {
        Flag::Fail
    } else if suspect.excludes(x) {
        Flag::Suspect
    } else if range.is_set() || suspect.is_set() {
        Flag::Pass
    } else {
        return;
    };
    run.set(Check::GrossRange, flag);
    let level = if flag == Flag::Pass { 0 } else { flag.code() };
    let ts = run.point.ts_ns;
    let seq = Some(run.point.seq);
    if level > st.range_level {
        run.event(ts, seq, EventKind::RangeViolation { value: x, flag });
    } else if level == 0 && st.range_level != 0 {
        run.event(ts, seq, EventKind::RangeCleared { value: x });
    }
    st.range_level = level;
}

/// Unit against the configured one and against the tag's previous unit.
fn unit(run: &mut Run<'_>, st: &mut TagState) {
    let configured = run.params.unit.as_deref();
    let Some(unit) = run.point.unit.as_deref() else {
        // Most sources send no unit; nothing to compare.
        if configured.is_some() {
            run.set(Check::Unit, Flag::NotEvaluated);
        }
        return;
    };
    let key = unit_key(unit);
    let mismatch = configured.is_some_and(|c| c != unit);
    let changed = st.has(bit::HAS_UNIT) && st.unit_key != key;
    run.set(Check::Unit, suspect_if(mismatch || changed));
    if changed || (mismatch && !st.has(bit::HAS_UNIT)) {
        let kind = EventKind::Unit {
            unit: Some(unit.to_owned()),
            configured: configured.map(str::to_owned),
            changed,
        };
        run.event(run.point.ts_ns, Some(run.point.seq), kind);
    }
    st.unit_key = key;
    st.put(bit::HAS_UNIT, true);
}

/// State code in the tag's set, or a recognised SYSTEM state.
fn digital_state(run: &mut Run<'_>) {
    let states = run.params.states.as_deref();
    let digital = run.params.kind == TagKind::Digital;
    let code = match run.point.value {
        Value::DigitalState { code, system, .. } => {
            if system && SYSTEM_STATES.contains(&code) {
                run.set(Check::DigitalState, Flag::Pass);
                return;
            }
            if system {
                // Claims to be a SYSTEM state but is not one PI defines.
                run.set(Check::DigitalState, Flag::Fail);
                return;
            }
            Some(i64::from(code))
        }
        Value::Bool(b) if digital => Some(i64::from(b)),
        Value::I64(i) if digital => Some(i),
        Value::U64(u) if digital => Some(i64::try_from(u).unwrap_or(i64::MAX)),
        Value::F64(f) if digital => (f.is_finite() && f.fract() == 0.0).then_some(f as i64),
        _ if digital => None,
        _ => return,
    };
    let flag = match (code, states) {
        (_, None) => Flag::NotEvaluated,
        (Some(c), Some(set)) if set.binary_search(&c).is_ok() => Flag::Pass,
        _ => Flag::Fail,
    };
    run.set(Check::DigitalState, flag);
}

/// Checks that compare the point with the tag's previous in-order point,
/// then shift it into the state. `first`: there is none.
fn sequence(run: &mut Run<'_>, st: &mut TagState, first: bool) {
    let ts = run.point.ts_ns;
    let prev_ts = st.newest.ts;
    if let Some(gap_ns) = run.params.gap_ns {
        if first {
            run.set(Check::Gap, Flag::NotEvaluated);
        } else if ts.saturating_sub(prev_ts) > gap_ns {
            run.set(Check::Gap, Flag::Suspect);
            let kind = EventKind::Gap {
                from_ns: prev_ts,
                to_ns: ts,
            };
            run.event(ts, Some(run.point.seq), kind);
        } else {
            run.set(Check::Gap, Flag::Pass);
        }
    }
    if st.has(bit::STALE) {
        st.put(bit::STALE, false);
        run.event(
            ts,
            Some(run.point.seq),
            EventKind::Resumed {
                last_ts_ns: prev_ts,
            },
        );
    }
    st.put(bit::HISTORICAL, run.point.flags.historical);
    let x = run.numeric();
    match x {
        Some(x) if x.is_finite() => {
            rate_of_change(run, st, first, prev_ts, x);
            spike(run, st, prev_ts, x);
            flatline(run, st, first, x);
        }
        Some(_) => {
            // NaN/±Inf: gross range failed it; the sequence checks cannot run.
            for (check, on) in [
                (Check::RateOfChange, roc_on(run.params)),
                (Check::Spike, run.params.spike.is_some()),
                (Check::Flatline, flatline_on(run.params)),
            ] {
                if on {
                    run.set(check, Flag::NotEvaluated);
                }
            }
            end_flat(run, st);
        }
        None => end_flat(run, st),
    }
    let finite = x.filter(|v| v.is_finite());
    st.v_prev = st.v_last;
    st.put(bit::V_PREV_OK, st.has(bit::V_LAST_OK));
    st.v_last = finite.unwrap_or(0.0);
    st.put(bit::V_LAST_OK, finite.is_some());
    st.seq_last = run.point.seq;
}

fn roc_on(p: &Params) -> bool {
    p.roc_max.is_some() || (p.sigma.is_some() && p.kind != TagKind::Step)
}

fn flatline_on(p: &Params) -> bool {
    p.flatline.is_some() && matches!(p.kind, TagKind::Auto | TagKind::Analog)
}

/// `max(abs_tol, 1e-6·|x|)`.
fn tolerance(p: &Params, x: f64) -> f64 {
    p.abs_tol.max(REL_TOL * x.abs())
}

/// Absolute (`roc_max`, per second) and statistical (`roc_sigma`) rate of
/// change; the flag is the worse of the two.
fn rate_of_change(run: &mut Run<'_>, st: &mut TagState, first: bool, prev_ts: i64, x: f64) {
    let p = run.params;
    if !roc_on(p) {
        return;
    }
    if first || !st.has(bit::V_LAST_OK) {
        run.set(Check::RateOfChange, Flag::NotEvaluated);
        return;
    }
    let dv = x - st.v_last;
    // In order means strictly newer, so dt ≥ 1 ns.
    let dt_ns = run.point.ts_ns.saturating_sub(prev_ts).max(1);
    let mut flag = Flag::NotEvaluated;
    if let Some(max) = p.roc_max {
        let rate = dv.abs() / (dt_ns as f64 / 1e9);
        flag = flag.worse(suspect_if(rate > max));
    }
    if let Some(sigma) = p.sigma.filter(|_| p.kind != TagKind::Step) {
        // Judge against the statistics *before* this step, so a jump cannot
        // hide by inflating its own σ; then fold it in.
        if st.roc_w >= SIGMA_WARMUP {
            let sd = (st.roc_m2 / st.roc_w).max(0.0).sqrt();
            let limit = (sigma.n * sd).max(tolerance(p, x));
            flag = flag.worse(suspect_if((dv - st.roc_mean).abs() > limit));
        }
        // Exponentially time-weighted mean and variance (West's update with
        // old weights decayed by e^(−Δt/window)): O(1) state for a window.
        let decay = (-(dt_ns as f64) / sigma.window_ns as f64).exp();
        let w = st.roc_w * decay + 1.0;
        let delta = dv - st.roc_mean;
        let mean = st.roc_mean + delta / w;
        st.roc_m2 = st.roc_m2 * decay + delta * (dv - mean);
        st.roc_mean = mean;
        st.roc_w = w;
    }
    run.set(Check::RateOfChange, flag);
}

/// The point's own spike verdict is pending (2); the previous point's is
/// decided now and reported as an event if it is a spike.
fn spike(run: &mut Run<'_>, st: &TagState, prev_ts: i64, x: f64) {
    let Some(sp) = run.params.spike else { return };
    run.set(Check::Spike, Flag::NotEvaluated);
    if !(st.has(bit::V_PREV_OK) && st.has(bit::V_LAST_OK)) {
        return;
    }
    let deviation = (st.v_last - f64::midpoint(st.v_prev, x)).abs();
    let flag = if sp.fail.is_some_and(|f| deviation > f) {
        Flag::Fail
    } else if sp.suspect.is_some_and(|s| deviation > s) {
        Flag::Suspect
    } else {
        return;
    };
    let kind = EventKind::Spike {
        value: st.v_last,
        deviation,
        flag,
    };
    run.event(prev_ts, Some(st.seq_last), kind);
}

/// Time- and count-based flatline: the value stays within tolerance of the
/// run's first value for at least `n` samples and at least `T` (suspect),
/// `3T` (fail). Sparse samples (historian compression) count by time.
fn flatline(run: &mut Run<'_>, st: &mut TagState, first: bool, x: f64) {
    let Some(fl) = run.params.flatline.filter(|_| flatline_on(run.params)) else {
        return;
    };
    let ts = run.point.ts_ns;
    if st.has(bit::HAS_FLAT) && (x - st.flat_ref).abs() <= tolerance(run.params, x) {
        st.flat_n = st.flat_n.saturating_add(1);
    } else {
        end_flat(run, st);
        st.flat_ref = x;
        st.flat_since = ts;
        st.flat_n = 1;
        st.put(bit::HAS_FLAT, true);
    }
    st.flat_until = ts;
    if first {
        run.set(Check::Flatline, Flag::NotEvaluated);
        return;
    }
    let long = ts.saturating_sub(st.flat_since);
    let enough = st.flat_n >= fl.n;
    let flag = if enough && long >= fl.fail_ns {
        Flag::Fail
    } else if enough && long >= fl.suspect_ns {
        Flag::Suspect
    } else {
        Flag::Pass
    };
    let level = if flag == Flag::Pass { 0 } else { flag.code() };
    if level > st.flat_level {
        let kind = EventKind::Flatline {
            since_ns: st.flat_since,
            samples: st.flat_n,
            flag,
        };
        run.event(ts, Some(run.point.seq), kind);
    }
    st.flat_level = level;
    run.set(Check::Flatline, flag);
}

/// Close the open flat run, reporting its end if it had been flagged.
fn end_flat(run: &mut Run<'_>, st: &mut TagState) {
    if st.has(bit::HAS_FLAT) && st.flat_level != 0 {
        let kind = EventKind::FlatlineEnded {
            since_ns: st.flat_since,
            until_ns: st.flat_until,
            samples: st.flat_n,
        };
        run.event(run.point.ts_ns, Some(run.point.seq), kind);
    }
    st.put(bit::HAS_FLAT, false);
    st.flat_level = 0;
    st.flat_n = 0;
}

/// The stale check for one tag at receiver time `now`: once per silence.
pub(crate) fn stale(
    tag: &str,
    params: &Params,
    now: i64,
    st: &mut TagState,
    events: &mut Vec<DqEvent>,
) {
    let Some(after) = params.stale_after_ns else {
        return;
    };
    if !st.has(bit::HAS_NEWEST) || st.has(bit::STALE) || st.has(bit::HISTORICAL) {
        return;
    }
    let age_ns = now.saturating_sub(st.newest.ts);
    if age_ns <= after {
        return;
    }
    st.put(bit::STALE, true);
    events.push(DqEvent {
        tag: tag.to_owned(),
        ts_ns: now,
        seq: None,
        kind: EventKind::Stale {
            last_ts_ns: st.newest.ts,
            age_ns,
            last_value: st.has(bit::V_LAST_OK).then_some(st.v_last),
            status: status::UNCERTAIN_LAST_USABLE_VALUE,
        },
    });
}
