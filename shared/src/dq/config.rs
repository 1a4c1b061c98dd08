//! Data-quality configuration: defaults, tag classes, per-tag overrides.
//!
//! Thresholds are per tag because one plant's plausible is another's
//! broken: a stable pressure legitimately sits still for hours, a flow
//! meter that does so has frozen. The `[dq]` table therefore has three
//! layers, each a [`DqRule`] of optional keys:
//!
//! ```toml
//! [dq]
//! max_tags = 100000
//! duplicate_memory = 1000000    # recent points an exact duplicate is recognised against
//! [dq.defaults]                 # every tag
//! future_tolerance = "10m"
//! [[dq.class]]                  # first class whose glob matches wins
//! match = "PUMP*.Running"
//! kind = "digital"
//! states = [0, 1]
//! [[dq.tag]]                    # one tag, on top of its class
//! tag = "TIGER.LINE2.TT_101.F_CV"
//! lo = -50.0
//! hi = 200.0
//! ```
//!
//! A tag's effective parameters are the built-in defaults, overlaid with
//! `dq.defaults`, then with the first matching class, then with its own
//! `dq.tag` entry, key by key. [`DqConfig::validate`] resolves every layer
//! once into [`ValidDqConfig`] (durations in nanoseconds, products checked
//! for overflow) and names the offending key, e.g. ``dq.class[2].hi``.
//!
//! One struct serves all three layers because serde cannot combine
//! `flatten` with `deny_unknown_fields`; `match` is accepted only in a
//! class and `tag` only in an override, which `validate` enforces.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::glob::glob_match;

/// Largest accepted `duplicate_memory` (about 2.4 GB of fingerprints).
pub const MAX_DUPLICATE_MEMORY: usize = 100_000_000;
/// Largest accepted `max_tags`.
pub const MAX_TAGS_LIMIT: usize = 10_000_000;
/// Most codes in one `states` list.
pub const MAX_STATES: usize = 65_536;
/// Longest `match`, `tag` or `unit` string, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// `[dq]`: the receiver's data-quality checks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DqConfig {
    /// Tags whose state is tracked at once; beyond it the least recently
    /// seen tag is forgotten (and counted). Default 100 000.
    pub max_tags: usize,
    /// Withhold points whose timestamp fails `ts_future` from the live topic
    /// (the receiver routes them to quarantine). Default true.
    pub quarantine_future: bool,
    /// Withhold points that fail `syntax` (wrong value type for the tag's
    /// declared kind) from the live topic. Default true.
    pub quarantine_syntax: bool,
    /// Points remembered (by a 64-bit fingerprint of tag, timestamp, value
    /// and status) to recognise an exact duplicate of an older sample, such
    /// as a file sent again; 0 remembers none. Default 1 000 000 (about
    /// 24 MB).
    pub duplicate_memory: usize,
    /// Parameters for every tag.
    pub defaults: DqRule,
    /// Tag classes, `[[dq.class]]`; the first whose `match` glob matches wins.
    #[serde(rename = "class")]
    pub classes: Vec<DqRule>,
    /// Per-tag overrides, `[[dq.tag]]`, applied on top of the tag's class.
    #[serde(rename = "tag")]
    pub tags: Vec<DqRule>,
}

impl Default for DqConfig {
    fn default() -> Self {
        Self {
            max_tags: 100_000,
            quarantine_future: true,
            quarantine_syntax: true,
            duplicate_memory: 1_000_000,
            defaults: DqRule::default(),
            classes: Vec::new(),
            tags: Vec::new(),
        }
    }
}

/// What a tag carries, which decides the checks that apply to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagKind {
    /// Decide from each value: numbers get the numeric checks, digital
    /// states the state check; no type is enforced. The default.
    #[default]
    Auto,
    /// A continuous measurement: numbers (or a SYSTEM state) only.
    Analog,
    /// A numeric tag that legitimately holds still and jumps (setpoints,
    /// counters, modes): numbers only, no flatline and no statistical
    /// rate-of-change check.
    Step,
    /// Discrete states: booleans, integers or digital states; checked
    /// against `states`; no numeric checks.
    Digital,
    /// Text.
    String,
}

/// One layer of parameters. Every key is optional; an absent key inherits
/// from the layer below (see the module docs). Durations are humantime
/// strings (`"90s"`, `"30m"`, `"7d"`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DqRule {
    /// Glob on the tag (`*`, `?`); only in `[[dq.class]]`, where it is required.
    #[serde(rename = "match")]
    pub pattern: Option<String>,
    /// The tag an override applies to; only in `[[dq.tag]]`, where it is required.
    pub tag: Option<String>,
    /// What the tag carries. Default `auto`.
    pub kind: Option<TagKind>,
    /// Gross range: a value below `lo` fails (4). Inclusive: `lo` itself passes.
    pub lo: Option<f64>,
    /// Gross range: a value above `hi` fails (4). Inclusive.
    pub hi: Option<f64>,
    /// Suspect band: a value below it (but within `lo`) is suspect (3).
    pub suspect_lo: Option<f64>,
    /// Suspect band: a value above it (but within `hi`) is suspect (3).
    pub suspect_hi: Option<f64>,
    /// Expected engineering unit; a point naming another is suspect.
    pub unit: Option<String>,
    /// How often the tag should report (PI: CompMax/ExcMax). Enables the
    /// stale check and, unless `gap` is set, the gap check.
    #[serde(default, with = "humantime_serde")]
    pub expected_interval: Option<Duration>,
    /// Stale after `stale_factor × expected_interval` without a sample. Default 3.
    pub stale_factor: Option<u32>,
    /// Flatline: samples in the flat run before it can count. Default 5; 0 turns the check off.
    pub flatline_n: Option<u32>,
    /// Flatline: run duration for suspect (fail at 3×). Default 30 min; 0 turns the check off.
    #[serde(default, with = "humantime_serde")]
    pub flatline_time: Option<Duration>,
    /// Flatline and rate-of-change tolerance floor; the tolerance is
    /// `max(flatline_abs_tol, 1e-6·|v|)`. Default 0.
    pub flatline_abs_tol: Option<f64>,
    /// Rate of change: `|Δv|/Δt` above this (units per second) is suspect. Default off.
    pub roc_max: Option<f64>,
    /// Statistical rate of change: `|Δv − mean|` above `roc_sigma·σ(Δv)` is
    /// suspect. Default 3; 0 turns it off.
    pub roc_sigma: Option<f64>,
    /// Time constant of the running `Δv` statistics. Default 25 h.
    #[serde(default, with = "humantime_serde")]
    pub roc_window: Option<Duration>,
    /// Spike: `|v_i − (v_{i−1}+v_{i+1})/2|` above this is suspect. Default off.
    pub spike_suspect: Option<f64>,
    /// Spike: deviation above this fails. Default off.
    pub spike_fail: Option<f64>,
    /// Gap: a step between consecutive samples longer than this is flagged.
    /// Default `stale_factor × expected_interval`, else off.
    #[serde(default, with = "humantime_serde")]
    pub gap: Option<Duration>,
    /// `ts_future`: a timestamp later than receiver time plus this fails. Default 10 min.
    #[serde(default, with = "humantime_serde")]
    pub future_tolerance: Option<Duration>,
    /// `ts_stale_old`: a live (not historical) timestamp older than this is
    /// suspect. Default 7 d; 0 turns it off.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Valid state codes of a digital tag (`kind = "digital"` or digital
    /// state values). Booleans count as 0 and 1.
    pub states: Option<Vec<i64>>,
    /// `ts_floor`: a timestamp before this instant fails, as RFC 3339
    /// (`"2000-01-01T00:00:00Z"`, the default). Between 1900 and 2100
    /// (`ts_sentinel` covers what lies beyond); set it earlier for a tag
    /// whose history really goes back further.
    pub ts_floor: Option<String>,
}

/// Where in `[dq]` a bad key sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `[dq]` itself.
    Top,
    /// `[dq.defaults]`.
    Defaults,
    /// The n-th `[[dq.class]]`, 0-based.
    Class(usize),
    /// The n-th `[[dq.tag]]`, 0-based.
    Tag(usize),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Top => f.write_str("dq."),
            Self::Defaults => f.write_str("dq.defaults."),
            Self::Class(i) => write!(f, "dq.class[{i}]."),
            Self::Tag(i) => write!(f, "dq.tag[{i}]."),
        }
    }
}

/// A `[dq]` value that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("config key `{scope}{key}`: {reason}")]
pub struct DqConfigError {
    /// The table the key is in.
    pub scope: Scope,
    /// The key (`hi`, `max_tags`, …).
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn bad(scope: Scope, key: &'static str, reason: &'static str) -> DqConfigError {
    DqConfigError { scope, key, reason }
}

/// A lo/hi band; either side may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Band {
    pub(crate) lo: Option<f64>,
    pub(crate) hi: Option<f64>,
}

impl Band {
    pub(crate) fn is_set(self) -> bool {
        self.lo.is_some() || self.hi.is_some()
    }

    /// Whether `x` lies outside. Bounds are inclusive: `x == lo` is inside.
    pub(crate) fn excludes(self, x: f64) -> bool {
        self.lo.is_some_and(|lo| x < lo) || self.hi.is_some_and(|hi| x > hi)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Flatline {
    pub(crate) n: u32,
    pub(crate) suspect_ns: i64,
    pub(crate) fail_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sigma {
    pub(crate) n: f64,
    pub(crate) window_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spike {
    pub(crate) suspect: Option<f64>,
    pub(crate) fail: Option<f64>,
}

/// One tag's resolved parameters (all layers applied, defaults filled in).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Params {
    pub(crate) kind: TagKind,
    pub(crate) range: Band,
    pub(crate) suspect: Band,
    pub(crate) unit: Option<String>,
    pub(crate) stale_after_ns: Option<i64>,
    pub(crate) gap_ns: Option<i64>,
    pub(crate) flatline: Option<Flatline>,
    pub(crate) abs_tol: f64,
    pub(crate) roc_max: Option<f64>,
    pub(crate) sigma: Option<Sigma>,
    pub(crate) spike: Option<Spike>,
    pub(crate) future_tol_ns: i64,
    pub(crate) max_age_ns: Option<i64>,
    /// `ts_floor` in ns since the epoch.
    pub(crate) ts_floor_ns: i64,
    /// Sorted, deduplicated.
    pub(crate) states: Option<Vec<i64>>,
}

/// `[dq]` checked and resolved: what [`Engine`](super::Engine) runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidDqConfig {
    pub(crate) max_tags: usize,
    pub(crate) duplicate_memory: usize,
    pub(crate) quarantine_future: bool,
    pub(crate) quarantine_syntax: bool,
    /// 0: defaults; 1..=classes: the classes in order; then the overrides.
    pub(crate) profiles: Vec<Params>,
    pub(crate) patterns: Vec<String>,
    pub(crate) overrides: HashMap<String, u32>,
}

impl Default for ValidDqConfig {
    fn default() -> Self {
        DqConfig::default()
            .validate()
            .unwrap_or_else(|_| unreachable!("the default config is valid"))
    }
}

impl ValidDqConfig {
    /// Tags tracked at once.
    pub fn max_tags(&self) -> usize {
        self.max_tags
    }

    /// Recent points remembered for the exact-duplicate check.
    pub fn duplicate_memory(&self) -> usize {
        self.duplicate_memory
    }

    /// Index of `tag`'s parameters: its override, else its first matching
    /// class, else the defaults.
    pub(crate) fn profile_for(&self, tag: &str) -> u32 {
        if let Some(&p) = self.overrides.get(tag) {
            return p;
        }
        self.class_for(tag).map_or(0, |i| i as u32 + 1)
    }

    fn class_for(&self, tag: &str) -> Option<usize> {
        self.patterns.iter().position(|p| glob_match(p, tag))
    }

    /// The parameters at `profile`, falling back to the defaults.
    pub(crate) fn params(&self, profile: u32) -> &Params {
        self.profiles
            .get(profile as usize)
            .unwrap_or_else(|| &self.profiles[0])
    }
}

impl DqConfig {
    /// Check every key and resolve each class and override into complete
    /// parameters. The error names the first bad key.
    pub fn validate(&self) -> Result<ValidDqConfig, DqConfigError> {
        if self.max_tags == 0 || self.max_tags > MAX_TAGS_LIMIT {
            return Err(bad(Scope::Top, "max_tags", "must be 1 to 10000000"));
        }
        if self.duplicate_memory > MAX_DUPLICATE_MEMORY {
            return Err(bad(
                Scope::Top,
                "duplicate_memory",
                "must be 0 (off) to 100000000",
            ));
        }
        check_rule(&self.defaults, Scope::Defaults)?;
        let mut profiles = vec![resolve(&self.defaults, Scope::Defaults)?];
        let mut patterns = Vec::with_capacity(self.classes.len());
        let mut class_rules = Vec::with_capacity(self.classes.len());
        for (i, class) in self.classes.iter().enumerate() {
            let scope = Scope::Class(i);
            check_rule(class, scope)?;
            let merged = overlay(&self.defaults, class);
            profiles.push(resolve(&merged, scope)?);
            patterns.push(class.pattern.clone().unwrap_or_default());
            class_rules.push(merged);
        }
        let mut overrides = HashMap::with_capacity(self.tags.len());
        for (i, rule) in self.tags.iter().enumerate() {
            let scope = Scope::Tag(i);
            check_rule(rule, scope)?;
            let name = rule.tag.clone().unwrap_or_default();
            let base = patterns
                .iter()
                .position(|p| glob_match(p, &name))
                .and_then(|c| class_rules.get(c))
                .unwrap_or(&self.defaults);
            let index = u32::try_from(profiles.len())
                .map_err(|_| bad(scope, "tag", "too many overrides"))?;
            profiles.push(resolve(&overlay(base, rule), scope)?);
            if overrides.insert(name, index).is_some() {
                return Err(bad(scope, "tag", "tag already has an override"));
            }
        }
        Ok(ValidDqConfig {
            max_tags: self.max_tags,
            duplicate_memory: self.duplicate_memory,
            quarantine_future: self.quarantine_future,
            quarantine_syntax: self.quarantine_syntax,
            profiles,
            patterns,
            overrides,
        })
    }
}

/// `top`'s keys where set, else `base`'s. `match` and `tag` are not inherited.
fn overlay(base: &DqRule, top: &DqRule) -> DqRule {
    macro_rules! pick {
        ($($field:ident),* $(,)?) => {
            DqRule {
                pattern: None,
                tag: None,
                $($field: top.$field.clone().or_else(|| base.$field.clone()),)*
            }
        };
    }
    pick!(
        kind,
        lo,
        hi,
        suspect_lo,
        suspect_hi,
        unit,
        expected_interval,
        stale_factor,
        flatline_n,
        flatline_time,
        flatline_abs_tol,
        roc_max,
        roc_sigma,
        roc_window,
        spike_suspect,
        spike_fail,
        gap,
        future_tolerance,
        max_age,
        states,
        ts_floor,
    )
}

/// Checks of one layer on its own: where `match`/`tag` may appear, and
/// each value's domain.
fn check_rule(rule: &DqRule, scope: Scope) -> Result<(), DqConfigError> {
    match scope {
        Scope::Class(_) => {
            if rule.tag.is_some() {
                return Err(bad(scope, "tag", "not allowed in a class (use match)"));
            }
            check_name(rule.pattern.as_deref(), scope, "match")?;
        }
        Scope::Tag(_) => {
            if rule.pattern.is_some() {
                return Err(bad(scope, "match", "not allowed in a tag override"));
            }
            check_name(rule.tag.as_deref(), scope, "tag")?;
        }
        Scope::Top | Scope::Defaults => {
            if rule.pattern.is_some() {
                return Err(bad(scope, "match", "only allowed in [[dq.class]]"));
            }
            if rule.tag.is_some() {
                return Err(bad(scope, "tag", "only allowed in [[dq.tag]]"));
            }
        }
    }
    check_numbers(rule, scope)?;
    check_durations(rule, scope)?;
    if let Some(unit) = &rule.unit
        && (unit.is_empty() || unit.len() > MAX_NAME_BYTES)
    {
        return Err(bad(scope, "unit", "must be 1 to 1024 bytes"));
    }
    if rule.states.as_ref().is_some_and(|s| s.len() > MAX_STATES) {
        return Err(bad(scope, "states", "more than 65536 codes"));
    }
    if rule.stale_factor == Some(0) {
        return Err(bad(scope, "stale_factor", "must be at least 1"));
    }
    ts_floor_ns(rule, scope)?;
    Ok(())
}

/// 2000-01-01T00:00:00Z: timestamps before it are not plausible for live
/// plant data (a clock reset to 1970, a timestamp read in the wrong unit or
/// cut short), unless a tag's `ts_floor` says otherwise.
const DEFAULT_TS_FLOOR_NS: i64 = 946_684_800_000_000_000;
/// The `ts_sentinel` bounds, which `ts_floor` must lie within.
const FLOOR_MIN_NS: i64 = -2_208_988_800_000_000_000;
const FLOOR_MAX_NS: i64 = 4_102_444_800_000_000_000;

/// The rule's `ts_floor` in ns, or the default.
fn ts_floor_ns(rule: &DqRule, scope: Scope) -> Result<i64, DqConfigError> {
    let Some(text) = rule.ts_floor.as_deref() else {
        return Ok(DEFAULT_TS_FLOOR_NS);
    };
    let ns = chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or(bad(
            scope,
            "ts_floor",
            "must be an RFC 3339 time, e.g. \"2000-01-01T00:00:00Z\"",
        ))?;
    if !(FLOOR_MIN_NS..FLOOR_MAX_NS).contains(&ns) {
        return Err(bad(
            scope,
            "ts_floor",
            "must lie between 1900-01-01 and 2100-01-01",
        ));
    }
    Ok(ns)
}

fn check_name(name: Option<&str>, scope: Scope, key: &'static str) -> Result<(), DqConfigError> {
    match name {
        None => Err(bad(scope, key, "required")),
        Some(n) if n.is_empty() || n.len() > MAX_NAME_BYTES => {
            Err(bad(scope, key, "must be 1 to 1024 bytes"))
        }
        Some(_) => Ok(()),
    }
}

fn check_numbers(rule: &DqRule, scope: Scope) -> Result<(), DqConfigError> {
    let finite = [
        ("lo", rule.lo),
        ("hi", rule.hi),
        ("suspect_lo", rule.suspect_lo),
        ("suspect_hi", rule.suspect_hi),
    ];
    for (key, v) in finite {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(bad(scope, key, "must be a finite number"));
        }
    }
    let positive = [
        ("roc_max", rule.roc_max),
        ("spike_suspect", rule.spike_suspect),
        ("spike_fail", rule.spike_fail),
    ];
    for (key, v) in positive {
        if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            return Err(bad(scope, key, "must be a finite number above 0"));
        }
    }
    let non_negative = [
        ("roc_sigma", rule.roc_sigma),
        ("flatline_abs_tol", rule.flatline_abs_tol),
    ];
    for (key, v) in non_negative {
        if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            return Err(bad(scope, key, "must be a finite number, 0 or above"));
        }
    }
    Ok(())
}

fn check_durations(rule: &DqRule, scope: Scope) -> Result<(), DqConfigError> {
    let positive = [
        ("expected_interval", rule.expected_interval),
        ("roc_window", rule.roc_window),
        ("gap", rule.gap),
    ];
    for (key, d) in positive {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(bad(scope, key, "must be longer than 0"));
        }
    }
    Ok(())
}

fn nanos(d: Duration, scope: Scope, key: &'static str) -> Result<i64, DqConfigError> {
    i64::try_from(d.as_nanos()).map_err(|_| bad(scope, key, "too long"))
}

/// Apply the built-in defaults to a merged rule and check the keys that
/// only make sense together (a class's `lo` with an override's `hi`).
fn resolve(rule: &DqRule, scope: Scope) -> Result<Params, DqConfigError> {
    let range = Band {
        lo: rule.lo,
        hi: rule.hi,
    };
    let suspect = Band {
        lo: rule.suspect_lo,
        hi: rule.suspect_hi,
    };
    check_bands(range, suspect, scope)?;
    let spike = match (rule.spike_suspect, rule.spike_fail) {
        (Some(s), Some(f)) if s > f => {
            return Err(bad(scope, "spike_suspect", "above spike_fail"));
        }
        (None, None) => None,
        (suspect, fail) => Some(Spike { suspect, fail }),
    };
    let factor = i64::from(rule.stale_factor.unwrap_or(3));
    let stale_after_ns = match rule.expected_interval {
        Some(d) => Some(
            nanos(d, scope, "expected_interval")?
                .checked_mul(factor)
                .ok_or(bad(
                    scope,
                    "expected_interval",
                    "times stale_factor too long",
                ))?,
        ),
        None => None,
    };
    let gap_ns = match rule.gap {
        Some(d) => Some(nanos(d, scope, "gap")?),
        None => stale_after_ns,
    };
    let max_age = rule.max_age.unwrap_or(Duration::from_hours(7 * 24));
    let max_age_ns = Some(nanos(max_age, scope, "max_age")?).filter(|&n| n > 0);
    let future = rule.future_tolerance.unwrap_or(Duration::from_mins(10));
    let sigma_n = rule.roc_sigma.unwrap_or(3.0);
    let window = rule.roc_window.unwrap_or(Duration::from_hours(25));
    let sigma = (sigma_n > 0.0)
        .then(|| {
            nanos(window, scope, "roc_window").map(|window_ns| Sigma {
                n: sigma_n,
                window_ns,
            })
        })
        .transpose()?;
    let mut states = rule.states.clone();
    if let Some(s) = states.as_mut() {
        s.sort_unstable();
        s.dedup();
    }
    Ok(Params {
        kind: rule.kind.unwrap_or_default(),
        range,
        suspect,
        unit: rule.unit.clone(),
        stale_after_ns,
        gap_ns,
        flatline: resolve_flatline(rule, scope)?,
        abs_tol: rule.flatline_abs_tol.unwrap_or(0.0),
        roc_max: rule.roc_max,
        sigma,
        spike,
        future_tol_ns: nanos(future, scope, "future_tolerance")?,
        max_age_ns,
        ts_floor_ns: ts_floor_ns(rule, scope)?,
        states,
    })
}

fn check_bands(range: Band, suspect: Band, scope: Scope) -> Result<(), DqConfigError> {
    if let (Some(lo), Some(hi)) = (range.lo, range.hi)
        && lo > hi
    {
        return Err(bad(scope, "hi", "below lo"));
    }
    if let (Some(lo), Some(hi)) = (suspect.lo, suspect.hi)
        && lo > hi
    {
        return Err(bad(scope, "suspect_hi", "below suspect_lo"));
    }
    if let (Some(lo), Some(s)) = (range.lo, suspect.lo)
        && s < lo
    {
        return Err(bad(scope, "suspect_lo", "below lo"));
    }
    if let (Some(hi), Some(s)) = (range.hi, suspect.hi)
        && s > hi
    {
        return Err(bad(scope, "suspect_hi", "above hi"));
    }
    Ok(())
}

fn resolve_flatline(rule: &DqRule, scope: Scope) -> Result<Option<Flatline>, DqConfigError> {
    let n = rule.flatline_n.unwrap_or(5);
    let time = rule.flatline_time.unwrap_or(Duration::from_mins(30));
    if n == 0 || time.is_zero() {
        return Ok(None);
    }
    let suspect_ns = nanos(time, scope, "flatline_time")?;
    let fail_ns = suspect_ns
        .checked_mul(3)
        .ok_or(bad(scope, "flatline_time", "too long"))?;
    Ok(Some(Flatline {
        n,
        suspect_ns,
        fail_ns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<DqConfig, serde_json::Error> {
        serde_json::from_value(v)
    }

    fn err(v: serde_json::Value) -> String {
        let cfg = parse(v).expect("deserializes");
        cfg.validate().expect_err("invalid").to_string()
    }

    #[test]
    fn dq_config_defaults_follow_formats_md() {
        let v = DqConfig::default().validate().expect("valid");
        assert_eq!(v.max_tags(), 100_000);
        assert_eq!(v.duplicate_memory(), 1_000_000);
        assert!(v.quarantine_future && v.quarantine_syntax);
        let p = v.params(0);
        assert_eq!(p.kind, TagKind::Auto);
        assert_eq!(p.future_tol_ns, 600_000_000_000);
        assert_eq!(p.max_age_ns, Some(7 * 86_400 * 1_000_000_000));
        // 2000-01-01T00:00:00Z.
        assert_eq!(p.ts_floor_ns, 946_684_800_000_000_000);
        assert_eq!(
            p.flatline,
            Some(Flatline {
                n: 5,
                suspect_ns: 1_800_000_000_000,
                fail_ns: 5_400_000_000_000
            })
        );
        assert_eq!(
            p.sigma,
            Some(Sigma {
                n: 3.0,
                window_ns: 25 * 3_600_000_000_000
            })
        );
        assert!(!p.range.is_set() && !p.suspect.is_set());
        assert_eq!((p.roc_max, p.spike, p.gap_ns), (None, None, None));
        assert_eq!(
            (p.stale_after_ns, p.unit.as_ref(), p.states.as_ref()),
            (None, None, None)
        );
        assert_eq!(v, ValidDqConfig::default());
    }

    #[test]
    fn dq_config_layers_first_class_wins_and_override_sits_on_its_class() {
        let cfg = parse(json!({
            "defaults": {"future_tolerance": "1m", "expected_interval": "10s"},
            "class": [
                {"match": "PUMP*.Running", "kind": "digital", "states": [1, 0, 1]},
                {"match": "PUMP*", "kind": "step"},
                {"match": "TT*", "lo": -50.0, "hi": 200.0, "stale_factor": 2,
                 "ts_floor": "1990-01-01T01:00:00+01:00"}
            ],
            "tag": [{"tag": "TT101.PV", "hi": 150.0, "max_age": "0s", "gap": "1m"}]
        }))
        .expect("deserializes");
        let v = cfg.validate().expect("valid");
        let pump = v.params(v.profile_for("PUMP7.Running"));
        assert_eq!(pump.kind, TagKind::Digital);
        assert_eq!(pump.states.as_deref(), Some(&[0, 1][..]));
        assert_eq!(pump.future_tol_ns, 60_000_000_000);
        assert_eq!(pump.stale_after_ns, Some(30_000_000_000));
        assert_eq!(pump.gap_ns, Some(30_000_000_000));
        assert_eq!(v.params(v.profile_for("PUMP7.Speed")).kind, TagKind::Step);
        assert_eq!(v.profile_for("FIC101.PV"), 0);
        let tt = v.params(v.profile_for("TT101.PV"));
        assert_eq!((tt.range.lo, tt.range.hi), (Some(-50.0), Some(150.0)));
        assert_eq!(tt.max_age_ns, None);
        assert_eq!(tt.stale_after_ns, Some(20_000_000_000));
        assert_eq!(tt.gap_ns, Some(60_000_000_000));
        let other_tt = v.params(v.profile_for("TT102.PV"));
        assert_eq!(other_tt.range.hi, Some(200.0));
        // 1990-01-01T00:00:00Z, inherited by the override; others keep 2000.
        assert_eq!(tt.ts_floor_ns, 631_152_000_000_000_000);
        assert_eq!(other_tt.ts_floor_ns, 631_152_000_000_000_000);
        assert_eq!(pump.ts_floor_ns, 946_684_800_000_000_000);
    }

    #[test]
    fn dq_config_errors_name_the_key() {
        let cases = [
            (json!({"max_tags": 0}), "config key `dq.max_tags`"),
            (
                json!({"duplicate_memory": 100_000_001}),
                "config key `dq.duplicate_memory`",
            ),
            (
                json!({"defaults": {"lo": 5.0, "hi": 1.0}}),
                "`dq.defaults.hi`: below lo",
            ),
            (
                json!({"class": [{"kind": "analog"}]}),
                "`dq.class[0].match`: required",
            ),
            (json!({"class": [{"match": ""}]}), "`dq.class[0].match`"),
            (
                json!({"class": [{"match": "a"}, {"match": "b", "tag": "x"}]}),
                "`dq.class[1].tag`",
            ),
            (json!({"tag": [{"hi": 1.0}]}), "`dq.tag[0].tag`: required"),
            (
                json!({"tag": [{"tag": "a", "match": "a*"}]}),
                "`dq.tag[0].match`",
            ),
            (
                json!({"tag": [{"tag": "a"}, {"tag": "a"}]}),
                "`dq.tag[1].tag`: tag already has an override",
            ),
            (json!({"defaults": {"match": "x"}}), "`dq.defaults.match`"),
            (
                json!({"defaults": {"roc_max": 0.0}}),
                "`dq.defaults.roc_max`",
            ),
            (
                json!({"defaults": {"roc_sigma": -1.0}}),
                "`dq.defaults.roc_sigma`",
            ),
            (
                json!({"defaults": {"spike_suspect": 5.0, "spike_fail": 2.0}}),
                "`dq.defaults.spike_suspect`",
            ),
            (
                json!({"defaults": {"suspect_lo": -10.0, "lo": 0.0}}),
                "`dq.defaults.suspect_lo`: below lo",
            ),
            (
                json!({"defaults": {"suspect_hi": 10.0, "hi": 5.0}}),
                "`dq.defaults.suspect_hi`: above hi",
            ),
            (
                json!({"defaults": {"stale_factor": 0}}),
                "`dq.defaults.stale_factor`",
            ),
            (
                json!({"defaults": {"expected_interval": "0s"}}),
                "`dq.defaults.expected_interval`",
            ),
            (json!({"defaults": {"unit": ""}}), "`dq.defaults.unit`"),
            (
                json!({"defaults": {"ts_floor": "2000-01-01"}}),
                "`dq.defaults.ts_floor`: must be an RFC 3339 time",
            ),
            (
                json!({"class": [{"match": "a*", "ts_floor": "1899-12-31T23:59:59Z"}]}),
                "`dq.class[0].ts_floor`: must lie between 1900-01-01 and 2100-01-01",
            ),
            (
                json!({"tag": [{"tag": "a", "ts_floor": "2100-01-01T00:00:00Z"}]}),
                "`dq.tag[0].ts_floor`: must lie between",
            ),
            (
                json!({"defaults": {"flatline_time": "100000000d"}}),
                "`dq.defaults.flatline_time`: too long",
            ),
            // The inconsistency appears only once the layers are merged.
            (
                json!({"class": [{"match": "TT*", "lo": 0.0}], "tag": [{"tag": "TT1", "hi": -1.0}]}),
                "`dq.tag[0].hi`: below lo",
            ),
        ];
        for (cfg, want) in cases {
            let got = err(cfg.clone());
            assert!(got.contains(want), "{cfg}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn dq_config_unknown_keys_are_refused() {
        assert!(parse(json!({"defaults": {"lo_": 1.0}})).is_err());
        assert!(parse(json!({"class": [{"match": "a", "hi_limit": 1.0}]})).is_err());
        assert!(parse(json!({"maxtags": 5})).is_err());
        assert!(parse(json!({"defaults": {"kind": "float"}})).is_err());
        assert!(parse(json!({"defaults": {"max_age": "soon"}})).is_err());
    }

    #[test]
    fn dq_config_zero_turns_optional_checks_off() {
        let v = parse(json!({"defaults": {
            "flatline_n": 0, "roc_sigma": 0.0, "max_age": "0s"}}))
        .expect("deserializes")
        .validate()
        .expect("valid");
        let p = v.params(0);
        assert_eq!((p.flatline, p.sigma, p.max_age_ns), (None, None, None));
        let v = parse(json!({"defaults": {"flatline_time": "0s"}}))
            .expect("deserializes")
            .validate()
            .expect("valid");
        assert_eq!(v.params(0).flatline, None);
    }
}
