//! Data-quality (DQ) validation: per-tag checks on every received point.
//!
//! Historian data crossing the diode arrives with the source's own quality,
//! but the source cannot tell a frozen transmitter from a calm process, a
//! clock set to 2035 from a real future, or a file replayed twice from new
//! data. The receiver runs the checks of FORMATS.md §5 on each point before
//! publishing it and *annotates* the point: QARTOD flags per check ([`Flag`]:
//! 1 pass, 2 not evaluated, 3 suspect, 4 fail, 9 missing), the worst of
//! them, and an effective OPC UA status that is the worse of the source
//! status and the DQ verdict. Checks never drop data; the only points they
//! withhold are exact duplicates (dropped and counted) and, when configured,
//! points the receiver should route to quarantine instead of the live topic
//! (a timestamp in the future, a value of the wrong type).
//!
//! The engine is sans-IO like the rest of `shared`: the receiver passes its
//! clock in (`now_ns`), calls [`Engine::tick`] for the time-driven stale
//! check, and persists [`Engine::snapshot`] itself.
//!
//! ```text
//!  point ──► Engine::check ──► Verdict (flags, effective status, late, withhold)
//!                 │        └─► DqEvent* (flatline, gap, conflict, spike …) ──► dq topic
//!  clock ──► Engine::tick  ──► DqEvent* (stale)
//! ```
//!
//! # Spike verdicts arrive one sample late
//!
//! The spike test compares sample *i* with the mean of its neighbours *i−1*
//! and *i+1*, so it cannot be decided when *i* arrives. Points are published
//! as they come (holding one back would delay every sparse tag by a whole
//! reporting interval), so the point's own [`Verdict`] reports `spike` as
//! 2 (not evaluated yet), and when *i+1* arrives a spike on *i* is reported
//! as a [`DqEvent`] of kind [`EventKind::Spike`] carrying *i*'s timestamp
//! and `seq`, for consumers to attach to the record they already have. A
//! sample that turns out not to be a spike produces no event.
//!
//! # What a tag's state costs
//!
//! Per tag the engine keeps a fixed-size `TagState` (about 20
//! words: newest and last-received sample keys, the last two values, the
//! flatline run, running `Δv` statistics, unit and status bits) in a
//! bounded LRU table (`max_tags`; the least recently seen tag is evicted and
//! counted). Checking a point of a known tag allocates nothing unless it
//! raises an event.

mod checks;
mod config;
mod glob;
mod json;
mod packed;
mod recent;
mod snapshot;
mod table;

#[cfg(test)]
mod samples_tests;
#[cfg(test)]
mod tests;

pub use config::{
    DqConfig, DqConfigError, DqRule, MAX_DUPLICATE_MEMORY, MAX_NAME_BYTES, MAX_STATES,
    MAX_TAGS_LIMIT, Scope, TagKind, ValidDqConfig,
};
pub use glob::glob_match;
pub use json::{event_json, verdict_json};
pub use packed::{VerdictsError, decode_verdicts, encode_verdicts};
pub use recent::{RecentPoints, fingerprint};
pub use snapshot::SnapshotError;

use std::cmp::Ordering;

use crate::record::Point;
use table::TagTable;

/// The checks of FORMATS.md §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Check {
    /// The value has the type the tag declares; a missing value is 9.
    Syntax,
    /// The source's own quality: Uncertain → 3, Bad → 4.
    SourceQuality,
    /// Timestamp later than receiver time plus tolerance → 4.
    TsFuture,
    /// Live timestamp older than `max_age` → 3.
    TsStaleOld,
    /// Epoch 0, 1900-01-01 or earlier, year 2100 or later → 4.
    TsSentinel,
    /// Local time resolved in a DST fold or gap → 3.
    TsLocalAmbiguous,
    /// Older than the tag's newest sample → 3, `late`.
    OutOfOrder,
    /// Exact duplicate → withheld (4); same timestamp, other reading → 3.
    Duplicate,
    /// Outside the fail band → 4, the suspect band → 3; NaN/±Inf → 4.
    GrossRange,
    /// Rate of change above `roc_max`, or `roc_sigma` standard deviations → 3.
    RateOfChange,
    /// Deviation from the neighbours' mean (reported one sample late).
    Spike,
    /// Unchanged for `flatline_n` samples and `flatline_time` → 3; 3× → 4.
    Flatline,
    /// No sample for `stale_factor × expected_interval` (events only).
    Stale,
    /// Step between samples above `gap` → 3.
    Gap,
    /// Unit differs from the configured one, or changed → 3.
    Unit,
    /// State code outside the tag's state set and not a SYSTEM state → 4.
    DigitalState,
    /// Timestamp before the tag's `ts_floor` (default 2000-01-01) → 4.
    TsFloor,
    /// Timestamp at least 100 times smaller, in ns since the epoch, than
    /// the tag's newest: seconds, milliseconds or microseconds (or a
    /// timestamp cut short) among nanosecond timestamps → 4.
    TsPrecision,
}

impl Check {
    /// Number of checks.
    pub const COUNT: usize = 18;
    /// Every check, in index order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Syntax,
        Self::SourceQuality,
        Self::TsFuture,
        Self::TsStaleOld,
        Self::TsSentinel,
        Self::TsLocalAmbiguous,
        Self::OutOfOrder,
        Self::Duplicate,
        Self::GrossRange,
        Self::RateOfChange,
        Self::Spike,
        Self::Flatline,
        Self::Stale,
        Self::Gap,
        Self::Unit,
        Self::DigitalState,
        Self::TsFloor,
        Self::TsPrecision,
    ];

    /// Stable snake-case name, as used in JSON (`"roc"` for rate of change,
    /// as in FORMATS.md §4).
    pub fn name(self) -> &'static str {
        match self {
            Self::Syntax => "syntax",
            Self::SourceQuality => "source_quality",
            Self::TsFuture => "ts_future",
            Self::TsStaleOld => "ts_stale_old",
            Self::TsSentinel => "ts_sentinel",
            Self::TsLocalAmbiguous => "ts_local_ambiguous",
            Self::OutOfOrder => "out_of_order",
            Self::Duplicate => "duplicate",
            Self::GrossRange => "gross_range",
            Self::RateOfChange => "roc",
            Self::Spike => "spike",
            Self::Flatline => "flatline",
            Self::Stale => "stale",
            Self::Gap => "gap",
            Self::Unit => "unit",
            Self::DigitalState => "digital_state",
            Self::TsFloor => "ts_floor",
            Self::TsPrecision => "ts_precision",
        }
    }

    /// Position in [`Check::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A QARTOD flag. Ordered by severity ("worse of"): not evaluated < pass <
/// suspect < fail < missing, as in ioos_qartod's aggregation, so one check
/// that passed outranks one that could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Flag {
    /// 1: the check ran and passed.
    Pass = 1,
    /// 2: the check is on for the tag but could not be decided (first
    /// sample, warm-up, late point, verdict pending).
    NotEvaluated = 2,
    /// 3: suspect.
    Suspect = 3,
    /// 4: fail.
    Fail = 4,
    /// 9: the value is missing.
    Missing = 9,
}

impl Flag {
    /// The QARTOD code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The flag with QARTOD code `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Pass),
            2 => Some(Self::NotEvaluated),
            3 => Some(Self::Suspect),
            4 => Some(Self::Fail),
            9 => Some(Self::Missing),
            _ => None,
        }
    }

    fn rank(self) -> u8 {
        match self {
            Self::NotEvaluated => 0,
            Self::Pass => 1,
            Self::Suspect => 2,
            Self::Fail => 3,
            Self::Missing => 4,
        }
    }

    /// The worse of two flags.
    #[must_use]
    pub fn worse(self, other: Self) -> Self {
        self.max(other)
    }
}

impl Ord for Flag {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for Flag {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Why a point should not go to the live topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Withhold {
    /// Exact duplicate of a point already seen (same tag, timestamp, value
    /// and status): drop it and count it.
    Duplicate,
    /// Route to quarantine (and audit) because this check failed:
    /// [`Check::TsFuture`] or [`Check::Syntax`], per `quarantine_*`.
    Quarantine(Check),
}

/// The DQ result for one point. Small and `Copy`: returned by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    flags: [Option<Flag>; Check::COUNT],
    /// Worst reported flag ([`Flag::NotEvaluated`] if none ran).
    pub worst: Flag,
    /// Worse of the source status and the DQ verdict, as an OPC UA
    /// StatusCode: suspect → Uncertain, fail or missing → Bad (gross range:
    /// `UncertainEngineeringUnitsExceeded` / `BadOutOfRange`), with the
    /// source's info bits (low 16) kept. The source status is kept as is if
    /// it is at least as severe.
    pub effective_status: u32,
    /// Older than the tag's newest point: still published, marked late.
    pub late: bool,
    /// Set when the point must not be published live.
    pub withhold: Option<Withhold>,
}

impl Default for Verdict {
    fn default() -> Self {
        Self {
            flags: [None; Check::COUNT],
            worst: Flag::NotEvaluated,
            effective_status: 0,
            late: false,
            withhold: None,
        }
    }
}

impl Verdict {
    /// The flag `check` reported; `None` when the check is off for the tag
    /// or does not apply to the value.
    pub fn flag(&self, check: Check) -> Option<Flag> {
        self.flags[check.index()]
    }

    /// Every reported check with its flag, in [`Check::ALL`] order.
    pub fn checks(&self) -> impl Iterator<Item = (Check, Flag)> + '_ {
        Check::ALL
            .iter()
            .zip(self.flags.iter())
            .filter_map(|(&c, f)| f.map(|f| (c, f)))
    }

    pub(crate) fn set(&mut self, check: Check, flag: Flag) {
        self.flags[check.index()] = Some(flag);
    }
}

/// Something the DQ stage reports on the `dq` topic rather than on a point.
#[derive(Debug, Clone, PartialEq)]
pub struct DqEvent {
    /// The tag, as the source spelled it.
    pub tag: String,
    /// The source timestamp the event is about (ns UTC); for
    /// [`EventKind::Stale`], the receiver time it was noticed.
    pub ts_ns: i64,
    /// `seq` of the point the event is about, when it is about one point.
    pub seq: Option<u64>,
    /// What happened.
    pub kind: EventKind,
}

/// What a [`DqEvent`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// The value has been flat since `since_ns` over `samples` samples; sent
    /// when the run becomes suspect and again when it escalates to fail.
    /// Earlier samples of the run were already published unflagged.
    Flatline {
        /// Timestamp of the first sample of the run.
        since_ns: i64,
        /// Samples in the run so far.
        samples: u32,
        /// Suspect or fail.
        flag: Flag,
    },
    /// A flagged flat run ended (the value moved, or stopped being numeric).
    FlatlineEnded {
        /// First sample of the run.
        since_ns: i64,
        /// Last sample of the run.
        until_ns: i64,
        /// Samples in the run.
        samples: u32,
    },
    /// No sample for longer than `stale_factor × expected_interval`. The
    /// receiver may republish the last value with `status`; it never gets a
    /// fabricated point from here.
    Stale {
        /// Timestamp of the newest sample.
        last_ts_ns: i64,
        /// Receiver time minus that timestamp.
        age_ns: i64,
        /// The newest sample's value, when it was numeric.
        last_value: Option<f64>,
        /// `UncertainLastUsableValue`.
        status: u32,
    },
    /// A stale tag reported again.
    Resumed {
        /// Timestamp of the sample before the silence.
        last_ts_ns: i64,
    },
    /// The value entered (or worsened within) a gross-range band.
    RangeViolation {
        /// The value.
        value: f64,
        /// Suspect or fail.
        flag: Flag,
    },
    /// The value is back within range.
    RangeCleared {
        /// The value.
        value: f64,
    },
    /// The step between two consecutive samples exceeded the gap threshold.
    Gap {
        /// Timestamp of the sample before the gap.
        from_ns: i64,
        /// Timestamp of the sample after it.
        to_ns: i64,
    },
    /// Same timestamp as an earlier point, different value or status.
    Conflict {
        /// Status of the earlier point.
        first_status: u32,
        /// Status of this one.
        status: u32,
    },
    /// The late spike verdict for the point named by `seq`/`ts_ns`.
    Spike {
        /// That point's value.
        value: f64,
        /// `|v_i − (v_{i−1}+v_{i+1})/2|`.
        deviation: f64,
        /// Suspect or fail.
        flag: Flag,
    },
    /// The unit differs from the configured one (first sight), or changed.
    Unit {
        /// The point's unit.
        unit: Option<String>,
        /// The configured unit.
        configured: Option<String>,
        /// Whether it differs from the tag's previous unit.
        changed: bool,
    },
}

impl EventKind {
    /// Stable snake-case name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Flatline { .. } => "flatline",
            Self::FlatlineEnded { .. } => "flatline_ended",
            Self::Stale { .. } => "stale",
            Self::Resumed { .. } => "resumed",
            Self::RangeViolation { .. } => "range_violation",
            Self::RangeCleared { .. } => "range_cleared",
            Self::Gap { .. } => "gap",
            Self::Conflict { .. } => "conflict",
            Self::Spike { .. } => "spike",
            Self::Unit { .. } => "unit",
        }
    }

    /// The check that raised it.
    pub fn check(&self) -> Check {
        match self {
            Self::Flatline { .. } | Self::FlatlineEnded { .. } => Check::Flatline,
            Self::Stale { .. } | Self::Resumed { .. } => Check::Stale,
            Self::RangeViolation { .. } | Self::RangeCleared { .. } => Check::GrossRange,
            Self::Gap { .. } => Check::Gap,
            Self::Conflict { .. } => Check::Duplicate,
            Self::Spike { .. } => Check::Spike,
            Self::Unit { .. } => Check::Unit,
        }
    }

    /// The flag the event stands for (pass for the "ended" kinds).
    pub fn flag(&self) -> Flag {
        match self {
            Self::Flatline { flag, .. }
            | Self::RangeViolation { flag, .. }
            | Self::Spike { flag, .. } => *flag,
            Self::Stale { .. } | Self::Gap { .. } | Self::Conflict { .. } | Self::Unit { .. } => {
                Flag::Suspect
            }
            Self::FlatlineEnded { .. } | Self::Resumed { .. } | Self::RangeCleared { .. } => {
                Flag::Pass
            }
        }
    }
}

/// Counters of the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DqStats {
    /// Tags tracked now.
    pub tags: usize,
    /// Tags forgotten to stay within `max_tags`, since the state began
    /// (carried across snapshots).
    pub evictions: u64,
}

/// The DQ engine: configuration plus per-tag state.
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: ValidDqConfig,
    table: TagTable,
}

impl Engine {
    /// An engine with no tag state.
    pub fn new(config: ValidDqConfig) -> Self {
        let table = TagTable::new(config.max_tags);
        Self { cfg: config, table }
    }

    /// Swap in a new configuration, keeping every tag's state (flatline
    /// clocks, last values, order). Tags are re-matched against the new
    /// classes; if `max_tags` shrank, the least recently seen are evicted.
    pub fn reconfigure(&mut self, config: ValidDqConfig) {
        self.cfg = config;
        let cfg = &self.cfg;
        self.table.reprofile(|tag| cfg.profile_for(tag));
        self.table.set_max(cfg.max_tags);
    }

    /// The configuration in force.
    pub fn config(&self) -> &ValidDqConfig {
        &self.cfg
    }

    /// Check one point at receiver time `now_ns` (ns since the Unix epoch).
    /// Events go to a fresh `Vec`, which allocates only if there are any;
    /// see [`Engine::check_into`] to reuse a buffer.
    pub fn check(&mut self, point: &Point, now_ns: i64) -> (Verdict, Vec<DqEvent>) {
        let mut events = Vec::new();
        let verdict = self.check_into(point, now_ns, &mut events);
        (verdict, events)
    }

    /// [`Engine::check_into`], first against `recent`: a point it
    /// remembers (same tag, timestamp, value and status as one checked
    /// before) is an exact duplicate, withheld without running the checks
    /// or touching the tag's state; any other point is checked, then
    /// remembered.
    pub fn check_recent_into(
        &mut self,
        point: &Point,
        now_ns: i64,
        recent: &mut RecentPoints,
        events: &mut Vec<DqEvent>,
    ) -> Verdict {
        let fp = fingerprint(point);
        if recent.contains(fp) {
            let policy = checks::Policy {
                quarantine_future: self.cfg.quarantine_future,
                quarantine_syntax: self.cfg.quarantine_syntax,
            };
            return checks::remembered_duplicate(point, policy);
        }
        let verdict = self.check_into(point, now_ns, events);
        recent.insert(fp);
        verdict
    }

    /// [`Engine::check`], appending events to `events`.
    pub fn check_into(&mut self, point: &Point, now_ns: i64, events: &mut Vec<DqEvent>) -> Verdict {
        let cfg = &self.cfg;
        let slot = self.table.touch(&point.tag, |tag| cfg.profile_for(tag));
        let policy = checks::Policy {
            quarantine_future: cfg.quarantine_future,
            quarantine_syntax: cfg.quarantine_syntax,
        };
        let params = cfg.params(slot.profile);
        checks::evaluate(point, params, policy, now_ns, &mut slot.state, events)
    }

    /// Time-driven checks at receiver time `now_ns`: reports each tag that
    /// went stale since the last tick (once per silence).
    pub fn tick(&mut self, now_ns: i64) -> Vec<DqEvent> {
        let mut events = Vec::new();
        self.tick_into(now_ns, &mut events);
        events
    }

    /// [`Engine::tick`], appending events to `events`.
    pub fn tick_into(&mut self, now_ns: i64, events: &mut Vec<DqEvent>) {
        let cfg = &self.cfg;
        for slot in self.table.slots_mut() {
            let params = cfg.params(slot.profile);
            checks::stale(&slot.tag, params, now_ns, &mut slot.state, events);
        }
    }

    /// Counters.
    pub fn stats(&self) -> DqStats {
        DqStats {
            tags: self.table.len(),
            evictions: self.table.evictions(),
        }
    }

    /// The per-tag state as bytes, for the receiver to persist.
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        snapshot::encode(&self.table)
    }

    /// An engine with `config` and the state in `bytes` (from
    /// [`Engine::snapshot`], possibly of an older config). The bytes are
    /// checked: garbage is an error, never a panic, and at most `max_tags`
    /// tags (the most recently seen) are taken.
    pub fn restore(config: ValidDqConfig, bytes: &[u8]) -> Result<Self, SnapshotError> {
        let cfg = &config;
        let table = snapshot::decode(bytes, config.max_tags, |tag| cfg.profile_for(tag))?;
        Ok(Self { cfg: config, table })
    }
}
