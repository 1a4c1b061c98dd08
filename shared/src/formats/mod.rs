//! Historian export parsers: bytes of one spool file in, [`Point`]s out.
//!
//! Parsers are sans-IO: the sender's shell reads the file and hands the bytes
//! plus a [`ParseContext`] (file name, configured zone and tag, and for
//! Ignition and generic CSV the tag table or column mapping) to
//! [`Format::parse`]. A parser never drops data quietly. A line or item it
//! cannot read becomes a [`Reject`] (1-based line and a [`RejectReason`]) and
//! parsing carries on with the next one; only a file that cannot be read as
//! the format at all (not JSON, a CSV header without the required columns) is
//! an `Err(FormatError)`. Rejects are what the audit log reports as
//! "rejected" records, so every input record ends up counted exactly once.
//!
//! **A line is complete only with its newline.** Every line- or
//! record-oriented format (all but the PI Web API JSON document) ends each
//! record with a line break, so a file whose last line has none was cut
//! off: an export still being written, a copy that ran out of disk, a
//! transfer that stopped. `quality=192i 1764000` cut from
//! `quality=192i 1764000000000000000` still parses, as a Good point at
//! 1970. Such a last record is therefore never parsed: it becomes a
//! [`RejectReason::Truncated`] reject with its line, and the records before
//! it go on as usual; a file cut inside its header is a
//! [`FormatError::Truncated`]. A PI Web API document needs no final newline,
//! and one cut short is not JSON, so the whole file is refused
//! ([`FormatError::NotJson`]) and none of its items is published.
//!
//! Parsers do not deduplicate, reorder or judge plausibility: duplicates,
//! out-of-order samples and range checks are the receiver's data-quality
//! stage. They only normalise: UTC nanoseconds, an OPC UA StatusCode beside
//! the native quality, and the source's raw text wherever it had to be
//! interpreted.
//!
//! [`Point`]: crate::record::Point

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::record::{NativeQuality, Point, SourceSystem};

pub mod aveva;
mod columns;
pub mod generic_csv;
pub mod ignition;
pub mod influx;
pub mod opcua;
pub mod pi_webapi;
pub mod piarc;
pub mod proficy;

pub use generic_csv::{CsvMapping, TsFormat};

/// Well-known OPC UA StatusCodes (OPC 10000-4 §7.39; values from the OPC
/// Foundation `StatusCode.csv`).
pub mod status {
    /// Good.
    pub const GOOD: u32 = 0x0000_0000;
    /// Good, the value has been overridden locally.
    pub const GOOD_LOCAL_OVERRIDE: u32 = 0x0096_0000;
    /// Uncertain, no specific reason.
    pub const UNCERTAIN: u32 = 0x4000_0000;
    /// Uncertain: whatever was updating this value has stopped doing so.
    pub const UNCERTAIN_LAST_USABLE_VALUE: u32 = 0x4090_0000;
    /// Uncertain: a manually substituted value.
    pub const UNCERTAIN_SUBSTITUTE_VALUE: u32 = 0x4091_0000;
    /// Uncertain: the value is at one of the sensor limits.
    pub const UNCERTAIN_SENSOR_NOT_ACCURATE: u32 = 0x4093_0000;
    /// Uncertain: outside the range defined for the parameter.
    pub const UNCERTAIN_ENGINEERING_UNITS_EXCEEDED: u32 = 0x4094_0000;
    /// Uncertain: derived from fewer Good sources than required.
    pub const UNCERTAIN_SUB_NORMAL: u32 = 0x4095_0000;
    /// Bad, no specific reason.
    pub const BAD: u32 = 0x8000_0000;
    /// Bad: a timeout occurred (PI "Scan Timeout").
    pub const BAD_TIMEOUT: u32 = 0x800A_0000;
    /// Bad: communication with the data source is not established.
    pub const BAD_NO_COMMUNICATION: u32 = 0x8031_0000;
    /// Bad: waiting for the server to obtain values from the source.
    pub const BAD_WAITING_FOR_INITIAL_DATA: u32 = 0x8032_0000;
    /// Bad: the value was out of range.
    pub const BAD_OUT_OF_RANGE: u32 = 0x803C_0000;
    /// Bad: a configuration problem affects the value.
    pub const BAD_CONFIGURATION_ERROR: u32 = 0x8089_0000;
    /// Bad: the variable was never connected to its source.
    pub const BAD_NOT_CONNECTED: u32 = 0x808A_0000;
    /// Bad: the device generating the value failed.
    pub const BAD_DEVICE_FAILURE: u32 = 0x808B_0000;
    /// Bad: the sensor the value derives from failed.
    pub const BAD_SENSOR_FAILURE: u32 = 0x808C_0000;
    /// Bad: the source of the data is not operational.
    pub const BAD_OUT_OF_SERVICE: u32 = 0x808D_0000;
    /// Bad: no data exists for the requested time range.
    pub const BAD_NO_DATA: u32 = 0x809B_0000;
    /// Bad: data is missing because collection stopped or was lost.
    pub const BAD_DATA_LOST: u32 = 0x809D_0000;
}

/// What a parser knows about the file besides its bytes (from the config and
/// the spool file name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseContext {
    /// Spool file name, copied into every point's [`SourceRef`](crate::record::SourceRef).
    /// PI Web API files without a configured or embedded tag fall back to its
    /// stem (`TT101.PV.json` → `TT101.PV`).
    pub file: Option<String>,
    /// Zone of local wall-clock timestamps. Required by formats that write
    /// local time ([`Format::local_time`]; and generic CSV with a local
    /// [`TsFormat::Pattern`]).
    pub tz: Option<chrono_tz::Tz>,
    /// Tag of a single-tag export (PI Web API `recorded` carries no tag).
    /// Overrides the file's own `Path`/`Name` and the file stem.
    pub tag: Option<String>,
    /// Tags the config declares discrete (boolean). CSV exports carry no type,
    /// so a discrete tag's `1`/`0` would otherwise read as the number 1.0/0.0.
    pub discrete_tags: BTreeSet<String>,
    /// Ignition `sqlth_te` table: tag id → (tag path, datatype), from
    /// [`ignition::parse_tag_table`]. Required by `ignition-csv`, whose rows
    /// carry only the numeric id. Shared, because every file of a spool
    /// uses the same table.
    pub tag_table: Option<Arc<BTreeMap<i64, (String, i32)>>>,
    /// Column mapping of a `generic-csv` spool (required by that format).
    pub csv_map: Option<CsvMapping>,
    /// The file is historical back-fill, not live data: every point gets
    /// [`PointFlags::historical`](crate::record::PointFlags), so the
    /// receiver's too-old check leaves it alone and Sparkplug marks it
    /// `is_historical`.
    pub historical: bool,
}

/// What one file yielded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParseOutput {
    /// Parsed points in file order, `seq` 0 (the sender numbers them later).
    pub points: Vec<Point>,
    /// Lines or items that could not be parsed, in file order.
    pub rejects: Vec<Reject>,
}

/// A line or item the parser could not turn into a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// 1-based line in the file where the record starts.
    pub line: u64,
    /// Why it was rejected.
    pub reason: RejectReason,
}

/// Why one record was rejected. [`RejectReason::code`] is the stable name
/// used in audit events and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RejectReason {
    /// The source itself reported an error for this record (PI `Errors`).
    #[error("the source reported an error for this record")]
    SourceError,
    /// The timestamp is missing its layout, invalid or out of range.
    #[error("unreadable or out-of-range timestamp")]
    BadTimestamp,
    /// The value does not parse as the expected type.
    #[error("unreadable value")]
    BadValue,
    /// The quality fields do not parse.
    #[error("unreadable quality")]
    BadQuality,
    /// A required field is absent or empty.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// The record is not text in UTF-8.
    #[error("record is not UTF-8")]
    NotUtf8,
    /// The record does not have the shape of the format (not an object,
    /// wrong field count, duplicate field, wrong field type).
    #[error("malformed record")]
    Malformed,
    /// The record names a tag id the tag table does not know (Ignition
    /// `tagid` absent from `sqlth_te`).
    #[error("tag id not in the tag table")]
    UnknownTag,
    /// The file's last record is not ended by a newline (or ends inside a
    /// quoted CSV field): the export was cut off, so the record may be too.
    #[error("last line has no newline: truncated export")]
    Truncated,
}

impl RejectReason {
    /// Stable snake-case name, for audit events and per-reason counters.
    pub fn code(self) -> &'static str {
        match self {
            Self::SourceError => "source_error",
            Self::BadTimestamp => "bad_timestamp",
            Self::BadValue => "bad_value",
            Self::BadQuality => "bad_quality",
            Self::MissingField(_) => "missing_field",
            Self::NotUtf8 => "not_utf8",
            Self::Malformed => "malformed",
            Self::UnknownTag => "unknown_tag",
            Self::Truncated => "truncated",
        }
    }
}

/// Why a whole file could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The file is not UTF-8 text.
    #[error("file is not UTF-8")]
    NotUtf8,
    /// The file is not well-formed JSON.
    #[error("not JSON: syntax error at line {line}, column {column}")]
    NotJson {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// The file is well-formed but not shaped like the format.
    #[error("unexpected file structure: {0}")]
    Shape(&'static str),
    /// No tag name: neither configured, nor in the file, nor a file name.
    #[error("no tag name: configure one or name the file after the tag")]
    NoTag,
    /// The format writes local time and the context names no time zone.
    #[error("a time zone is required for this format's local timestamps")]
    TimeZoneRequired,
    /// The CSV header lacks a required column.
    #[error("CSV header lacks required column {0}")]
    MissingColumn(&'static str),
    /// The CSV header names a known column twice.
    #[error("CSV header names column {0} twice")]
    DuplicateColumn(&'static str),
    /// A format name that is not one of [`Format`]'s.
    #[error("unknown format name")]
    UnknownFormat,
    /// The format resolves tag ids through a tag table and the context has
    /// none (Ignition: [`ParseContext::tag_table`]).
    #[error("a tag table is required to resolve this format's tag ids")]
    TagTableRequired,
    /// Generic CSV without a column mapping ([`ParseContext::csv_map`]).
    #[error("a CSV column mapping is required for generic CSV")]
    MappingRequired,
    /// The file ends inside the line a parser needs whole before any record
    /// (a CSV header, a tag table row): a truncated export.
    #[error("line {line} has no newline: truncated export")]
    Truncated {
        /// 1-based line that was cut off.
        line: u64,
    },
}

/// Export dialects with a parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Format {
    /// PI Web API `streams/{webId}/recorded` JSON.
    #[serde(rename = "pi-webapi-json")]
    PiWebApi,
    /// AVEVA (Wonderware) Historian `History` query exported as CSV.
    #[serde(rename = "aveva-csv")]
    Aveva,
    /// Ignition Tag Historian `sqlt_data_*` table exported as CSV.
    #[serde(rename = "ignition-csv")]
    Ignition,
    /// GE Proficy Historian File-collector CSV.
    #[serde(rename = "proficy-csv")]
    Proficy,
    /// InfluxDB line protocol.
    #[serde(rename = "influx-lp")]
    InfluxLp,
    /// OPC UA HistoryRead results as JSON lines.
    #[serde(rename = "opcua-jsonl")]
    OpcUa,
    /// PI piconfig `PIARC` table listing as CSV.
    #[serde(rename = "piarc-csv")]
    PiArc,
    /// CSV with a configured column mapping.
    #[serde(rename = "generic-csv")]
    GenericCsv,
}

impl Format {
    /// Every format, for help texts and exhaustive tests.
    pub const ALL: [Self; 8] = [
        Self::PiWebApi,
        Self::Aveva,
        Self::Ignition,
        Self::Proficy,
        Self::InfluxLp,
        Self::OpcUa,
        Self::PiArc,
        Self::GenericCsv,
    ];

    /// The config name (`pi-webapi-json`, `aveva-csv`, `ignition-csv`,
    /// `proficy-csv`, `influx-lp`, `opcua-jsonl`, `piarc-csv`, `generic-csv`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PiWebApi => "pi-webapi-json",
            Self::Aveva => "aveva-csv",
            Self::Ignition => "ignition-csv",
            Self::Proficy => "proficy-csv",
            Self::InfluxLp => "influx-lp",
            Self::OpcUa => "opcua-jsonl",
            Self::PiArc => "piarc-csv",
            Self::GenericCsv => "generic-csv",
        }
    }

    /// The source system its points are attributed to.
    pub fn source_system(self) -> SourceSystem {
        match self {
            Self::PiWebApi => SourceSystem::PiWebApi,
            Self::Aveva => SourceSystem::Aveva,
            Self::Ignition => SourceSystem::Ignition,
            Self::Proficy => SourceSystem::Proficy,
            Self::InfluxLp => SourceSystem::InfluxLp,
            Self::OpcUa => SourceSystem::OpcUa,
            Self::PiArc => SourceSystem::PiArc,
            Self::GenericCsv => SourceSystem::GenericCsv,
        }
    }

    /// Whether files of this format carry local wall-clock timestamps, so a
    /// spool of it needs a time zone ([`ParseContext::tz`]).
    ///
    /// True for AVEVA, Proficy and PIARC. PIARC is counted as local even
    /// though a file with a `TimeNum` column needs no zone, because a
    /// listing without it does and the config cannot know which it will get.
    /// Generic CSV is `false` here: whether it is local depends on its
    /// mapping ([`TsFormat::is_local`]), which config validation checks.
    pub fn local_time(self) -> bool {
        match self {
            Self::Aveva | Self::Proficy | Self::PiArc => true,
            Self::PiWebApi | Self::Ignition | Self::InfluxLp | Self::OpcUa | Self::GenericCsv => {
                false
            }
        }
    }

    /// Parse one file's bytes.
    pub fn parse(self, bytes: &[u8], ctx: &ParseContext) -> Result<ParseOutput, FormatError> {
        let mut out = self.parse_as_exported(bytes, ctx)?;
        if ctx.historical {
            for p in &mut out.points {
                p.flags.historical = true;
            }
        }
        Ok(out)
    }

    fn parse_as_exported(
        self,
        bytes: &[u8],
        ctx: &ParseContext,
    ) -> Result<ParseOutput, FormatError> {
        match self {
            Self::PiWebApi => pi_webapi::parse(bytes, ctx),
            Self::Aveva => aveva::parse(bytes, ctx),
            Self::Ignition => ignition::parse(bytes, ctx),
            Self::Proficy => proficy::parse(bytes, ctx),
            Self::InfluxLp => influx::parse(bytes, ctx),
            Self::OpcUa => opcua::parse(bytes, ctx),
            Self::PiArc => piarc::parse(bytes, ctx),
            Self::GenericCsv => generic_csv::parse(bytes, ctx),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or(FormatError::UnknownFormat)
    }
}

/// OPC DA quality (`QQSSSSLL` in the low byte) to an OPC UA StatusCode,
/// per OPC 10000-8 A.3.2.3, with the limit bits `LL` moved to bits 8–9.
///
/// The high byte of the DA quality word is vendor-specific and ignored. A
/// sub-status the table does not list keeps its severity (`QQ`); the
/// reserved `QQ = 10` is treated as Bad.
pub fn opc_da_to_status(da: u16) -> u32 {
    let byte = da & 0x00FF;
    let limit = u32::from(byte & 0x03) << 8;
    let quality_substatus = byte & 0xFC;
    let code = match quality_substatus {
        0xC0 => status::GOOD,
        0xD8 => status::GOOD_LOCAL_OVERRIDE,
        0x40 => status::UNCERTAIN,
        0x44 => status::UNCERTAIN_LAST_USABLE_VALUE,
        0x50 => status::UNCERTAIN_SENSOR_NOT_ACCURATE,
        0x54 => status::UNCERTAIN_ENGINEERING_UNITS_EXCEEDED,
        0x58 => status::UNCERTAIN_SUB_NORMAL,
        0x00 => status::BAD,
        0x04 => status::BAD_CONFIGURATION_ERROR,
        0x08 => status::BAD_NOT_CONNECTED,
        0x0C => status::BAD_DEVICE_FAILURE,
        0x10 => status::BAD_SENSOR_FAILURE,
        // DA "last known value": the spec table maps it to Bad_OutOfService.
        0x14 | 0x1C => status::BAD_OUT_OF_SERVICE,
        0x18 => status::BAD_NO_COMMUNICATION,
        0x20 => status::BAD_WAITING_FOR_INITIAL_DATA,
        other => match other & 0xC0 {
            0xC0 => status::GOOD,
            0x40 => status::UNCERTAIN,
            _ => status::BAD,
        },
    };
    code | limit
}

/// PI SYSTEM digital state code to an OPC UA StatusCode (FORMATS.md §2,
/// proposed mapping). Codes not listed map to plain Bad.
pub fn pi_system_state_to_status(code: i32) -> u32 {
    match code {
        246 | 313 => status::BAD_NO_COMMUNICATION,
        314 => status::BAD_NOT_CONNECTED,
        251 | 252 => status::BAD_OUT_OF_RANGE,
        254 | 238 | 311 | 312 => status::BAD_OUT_OF_SERVICE,
        253 => status::BAD_WAITING_FOR_INITIAL_DATA,
        248 => status::BAD_NO_DATA,
        300 => status::BAD_TIMEOUT,
        _ => status::BAD,
    }
}

/// 1-based line number of byte `offset` in `text`, counting from a known
/// earlier point (`from`, `from_line`) so that numbering many records in
/// order stays linear in the file size.
#[expect(
    clippy::naive_bytecount,
    reason = "one pass per file; not worth a dependency"
)]
pub(crate) fn line_at(text: &[u8], from: usize, from_line: u64, offset: usize) -> u64 {
    let newlines = text
        .get(from..offset)
        .map_or(0, |span| span.iter().filter(|&&b| b == b'\n').count());
    from_line + newlines as u64
}

/// Where the last line of `bytes` starts if it has content but no newline
/// (the file was cut off there), with its 1-based line number; `None` if
/// the file ends with a newline, is empty, or ends in blanks only.
pub(crate) fn unterminated_tail(bytes: &[u8]) -> Option<(usize, u64)> {
    let start = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |lf| lf + 1);
    let tail = bytes.get(start..)?;
    if tail.trim_ascii().is_empty() {
        return None;
    }
    Some((start, line_at(bytes, 0, 1, start)))
}

/// `Good`, `Bad` or `Uncertain` (any case, surrounding blanks ignored) to
/// an OPC UA StatusCode; `None` for any other text.
pub(crate) fn text_quality_status(text: &str) -> Option<u32> {
    let text = text.trim();
    [
        ("Good", status::GOOD),
        ("Bad", status::BAD),
        ("Uncertain", status::UNCERTAIN),
    ]
    .into_iter()
    .find_map(|(word, code)| word.eq_ignore_ascii_case(text).then_some(code))
}

/// A numeric quality of a source without its own scheme (the InfluxDB
/// `quality=192i` convention, a generic CSV column): up to 255 it is an OPC
/// DA byte, above that an OPC UA StatusCode. `None` above `u32::MAX`.
pub(crate) fn numeric_quality(n: u64) -> Option<(u32, NativeQuality)> {
    match u16::try_from(n) {
        Ok(da) if da <= 0xFF => Some((opc_da_to_status(da), NativeQuality::OpcDa(da))),
        _ => u32::try_from(n)
            .ok()
            .map(|code| (code, NativeQuality::OpcUa(code))),
    }
}

/// A decimal count of some unit since the Unix epoch (`1710057602.25` s) to
/// nanoseconds, exactly: no trip through `f64`. `unit_digits` is log10 of
/// the nanoseconds in one unit (9 for seconds, 6 for milliseconds, 0 for
/// nanoseconds). Also says whether non-zero digits below 1 ns were dropped.
/// `None` if the text is not `[+-]digits[.digits]` or out of `i64` range.
pub(crate) fn decimal_epoch_ns(text: &str, unit_digits: u32) -> Option<(i64, bool)> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, text.get(1..)?),
        b'+' => (false, text.get(1..)?),
        _ => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let scale = 10_i128.checked_pow(unit_digits)?;
    // Leading zeros cannot overflow; anything longer than i64 digits can.
    let int = int.trim_start_matches('0');
    if int.len() > 19 {
        return None;
    }
    let whole: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let kept = frac.get(..frac.len().min(unit_digits as usize))?;
    let truncated = frac
        .get(kept.len()..)
        .is_some_and(|rest| rest.bytes().any(|d| d != b'0'));
    let mut part: i128 = if kept.is_empty() {
        0
    } else {
        kept.parse().ok()?
    };
    for _ in kept.len()..unit_digits as usize {
        part *= 10;
    }
    let magnitude = whole.checked_mul(scale)?.checked_add(part)?;
    let ns = if negative { -magnitude } else { magnitude };
    Some((i64::try_from(ns).ok()?, truncated))
}

/// For the parsers' tests: `whole` (ending with a newline, its last line
/// a point) cut at every byte of its last line, the newline included, gives
/// the points of the earlier lines and a `Truncated` reject for that line,
/// never a point from it. With `header`, every cut inside the first line is
/// a [`FormatError::Truncated`] file error.
#[cfg(test)]
pub(crate) fn assert_cut_last_line_is_never_a_point(
    format: Format,
    whole: &[u8],
    ctx: &ParseContext,
    header: bool,
) {
    assert!(
        whole.ends_with(b"\n"),
        "{format}: sample must end with a newline"
    );
    let all = format.parse(whole, ctx).expect("the whole file parses");
    let start = whole
        .get(..whole.len() - 1)
        .and_then(|body| body.iter().rposition(|&b| b == b'\n'))
        .map_or(0, |lf| lf + 1);
    let last = line_at(whole, 0, 1, start);
    let before: Vec<&Point> = all
        .points
        .iter()
        .filter(|p| p.source.line < Some(last))
        .collect();
    assert!(
        all.points.len() > before.len(),
        "{format}: the whole last line must be a point, or the test proves nothing"
    );
    let truncated = Reject {
        line: last,
        reason: RejectReason::Truncated,
    };
    for cut in start + 1..whole.len() {
        let out = format
            .parse(&whole[..cut], ctx)
            .unwrap_or_else(|e| panic!("{format}, cut at {cut}: {e}"));
        let points: Vec<&Point> = out.points.iter().collect();
        assert_eq!(points, before, "{format}, cut at {cut}: points");
        assert_eq!(
            out.rejects.last(),
            Some(&truncated),
            "{format}, cut at {cut}"
        );
        let cuts = out
            .rejects
            .iter()
            .filter(|r| r.reason == RejectReason::Truncated);
        assert_eq!(cuts.count(), 1, "{format}, cut at {cut}");
    }
    if header {
        let first_lf = whole.iter().position(|&b| b == b'\n').unwrap_or(0);
        for cut in 1..=first_lf {
            assert_eq!(
                format.parse(&whole[..cut], ctx),
                Err(FormatError::Truncated { line: 1 }),
                "{format}: header cut at {cut}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opc_da_table() {
        let table = [
            (0xC0, status::GOOD),
            (0xD8, status::GOOD_LOCAL_OVERRIDE),
            (0x40, status::UNCERTAIN),
            (0x44, status::UNCERTAIN_LAST_USABLE_VALUE),
            (0x50, status::UNCERTAIN_SENSOR_NOT_ACCURATE),
            (0x54, status::UNCERTAIN_ENGINEERING_UNITS_EXCEEDED),
            (0x58, status::UNCERTAIN_SUB_NORMAL),
            (0x00, status::BAD),
            (0x04, status::BAD_CONFIGURATION_ERROR),
            (0x08, status::BAD_NOT_CONNECTED),
            (0x0C, status::BAD_DEVICE_FAILURE),
            (0x10, status::BAD_SENSOR_FAILURE),
            (0x14, status::BAD_OUT_OF_SERVICE),
            (0x18, status::BAD_NO_COMMUNICATION),
            (0x1C, status::BAD_OUT_OF_SERVICE),
            (0x20, status::BAD_WAITING_FOR_INITIAL_DATA),
        ];
        for (da, ua) in table {
            assert_eq!(opc_da_to_status(da), ua, "DA {da:#04x}");
        }
        // AVEVA sample values.
        assert_eq!(opc_da_to_status(192), 0);
        assert_eq!(opc_da_to_status(64), 0x4000_0000);
        assert_eq!(opc_da_to_status(216), 0x0096_0000);
    }

    #[test]
    fn opc_da_limit_bits_move_to_8_and_9() {
        // Good, limit high (LL = 10).
        assert_eq!(opc_da_to_status(0xC2), 0x0000_0200);
        // Uncertain engineering units exceeded, limit low (01).
        assert_eq!(opc_da_to_status(0x55), 0x4094_0100);
        // Bad sensor failure, constant (11).
        assert_eq!(opc_da_to_status(0x13), 0x808C_0300);
    }

    #[test]
    fn opc_da_unknown_substatus_keeps_severity() {
        assert_eq!(opc_da_to_status(0xC4), status::GOOD);
        assert_eq!(opc_da_to_status(0x48), status::UNCERTAIN);
        assert_eq!(opc_da_to_status(0x3C), status::BAD);
        // Reserved QQ = 10.
        assert_eq!(opc_da_to_status(0x80), status::BAD);
        // Vendor high byte ignored.
        assert_eq!(opc_da_to_status(0xAB_C0), status::GOOD);
    }

    #[test]
    fn pi_system_states() {
        assert_eq!(pi_system_state_to_status(246), 0x8031_0000);
        assert_eq!(pi_system_state_to_status(313), 0x8031_0000);
        assert_eq!(pi_system_state_to_status(314), 0x808A_0000);
        assert_eq!(pi_system_state_to_status(251), 0x803C_0000);
        assert_eq!(pi_system_state_to_status(252), 0x803C_0000);
        for code in [254, 238, 311, 312] {
            assert_eq!(pi_system_state_to_status(code), 0x808D_0000);
        }
        assert_eq!(pi_system_state_to_status(253), 0x8032_0000);
        assert_eq!(pi_system_state_to_status(248), 0x809B_0000);
        assert_eq!(pi_system_state_to_status(300), 0x800A_0000);
        for code in [255, 249, 0, -1, 9999] {
            assert_eq!(pi_system_state_to_status(code), status::BAD);
        }
    }

    #[test]
    fn format_names_roundtrip() {
        for f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>(), Ok(f));
            assert_eq!(f.to_string(), f.as_str());
            let json = serde_json::to_string(&f).expect("serialises");
            assert_eq!(json, format!("\"{}\"", f.as_str()));
            assert_eq!(
                serde_json::from_str::<Format>(&json).expect("deserialises"),
                f
            );
        }
        assert_eq!("pi".parse::<Format>(), Err(FormatError::UnknownFormat));
        assert_eq!(Format::PiWebApi.source_system(), SourceSystem::PiWebApi);
        assert_eq!(Format::Aveva.source_system(), SourceSystem::Aveva);
        assert_eq!(Format::Ignition.source_system(), SourceSystem::Ignition);
        assert_eq!(Format::Proficy.source_system(), SourceSystem::Proficy);
        assert_eq!(Format::InfluxLp.source_system(), SourceSystem::InfluxLp);
        assert_eq!(Format::OpcUa.source_system(), SourceSystem::OpcUa);
        assert_eq!(Format::PiArc.source_system(), SourceSystem::PiArc);
        assert_eq!(Format::GenericCsv.source_system(), SourceSystem::GenericCsv);
        let names: BTreeSet<_> = Format::ALL.into_iter().map(Format::as_str).collect();
        assert_eq!(names.len(), Format::ALL.len());
    }

    #[test]
    fn reject_reason_codes_and_text() {
        assert_eq!(RejectReason::SourceError.code(), "source_error");
        assert_eq!(RejectReason::UnknownTag.code(), "unknown_tag");
        assert_eq!(
            RejectReason::MissingField("Timestamp").to_string(),
            "missing field Timestamp"
        );
    }

    #[test]
    fn backfill_flags_every_point_historical() {
        let bytes = b"m,tag=T v=1 1700000000000000000\nm,tag=T v=2 1700000001000000000\n";
        let live = Format::InfluxLp
            .parse(bytes, &ParseContext::default())
            .expect("parse");
        assert_eq!(live.points.len(), 2);
        assert!(live.points.iter().all(|p| !p.flags.historical));
        let ctx = ParseContext {
            historical: true,
            ..ParseContext::default()
        };
        let back = Format::InfluxLp.parse(bytes, &ctx).expect("parse");
        assert_eq!(back.points.len(), 2);
        assert!(back.points.iter().all(|p| p.flags.historical));
    }

    #[test]
    fn local_time_formats() {
        let local: Vec<_> = Format::ALL.into_iter().filter(|f| f.local_time()).collect();
        assert_eq!(local, vec![Format::Aveva, Format::Proficy, Format::PiArc]);
    }

    #[test]
    fn text_and_numeric_quality() {
        assert_eq!(text_quality_status(" good "), Some(status::GOOD));
        assert_eq!(text_quality_status("BAD"), Some(status::BAD));
        assert_eq!(text_quality_status("Uncertain"), Some(status::UNCERTAIN));
        assert_eq!(text_quality_status("Doubtful"), None);
        assert_eq!(
            numeric_quality(192),
            Some((status::GOOD, NativeQuality::OpcDa(192)))
        );
        assert_eq!(
            numeric_quality(64),
            Some((status::UNCERTAIN, NativeQuality::OpcDa(64)))
        );
        assert_eq!(
            numeric_quality(0x4090_0000),
            Some((0x4090_0000, NativeQuality::OpcUa(0x4090_0000)))
        );
        assert_eq!(numeric_quality(256), Some((256, NativeQuality::OpcUa(256))));
        assert_eq!(numeric_quality(u64::from(u32::MAX) + 1), None);
    }

    #[test]
    fn decimal_epochs_are_exact() {
        assert_eq!(
            decimal_epoch_ns("1710057602.25", 9),
            Some((1_710_057_602_250_000_000, false))
        );
        assert_eq!(
            decimal_epoch_ns("1710057600000", 6),
            Some((1_710_057_600_000_000_000, false))
        );
        assert_eq!(decimal_epoch_ns("1.5", 6), Some((1_500_000, false)));
        assert_eq!(decimal_epoch_ns("-1.5", 9), Some((-1_500_000_000, false)));
        assert_eq!(decimal_epoch_ns("+2", 0), Some((2, false)));
        assert_eq!(decimal_epoch_ns(".5", 9), Some((500_000_000, false)));
        assert_eq!(
            decimal_epoch_ns("1.0000000001", 9),
            Some((1_000_000_000, true))
        );
        assert_eq!(
            decimal_epoch_ns("1.0000000010", 9),
            Some((1_000_000_001, false))
        );
        assert_eq!(
            decimal_epoch_ns("000000000000000000000001", 9),
            Some((1_000_000_000, false))
        );
        for bad in [
            "",
            "-",
            ".",
            "1e9",
            "1.2.3",
            "NaN",
            " 1",
            "1,5",
            "99999999999",
            "9223372036854775808",
        ] {
            let digits = if bad == "9223372036854775808" { 0 } else { 9 };
            assert_eq!(decimal_epoch_ns(bad, digits), None, "{bad:?}");
        }
        assert_eq!(
            decimal_epoch_ns("9223372036854775807", 0),
            Some((i64::MAX, false))
        );
    }

    #[test]
    fn line_numbers_count_newlines() {
        let text = b"a\nb\n\nc";
        assert_eq!(line_at(text, 0, 1, 0), 1);
        assert_eq!(line_at(text, 0, 1, 2), 2);
        assert_eq!(line_at(text, 2, 2, 5), 4);
        assert_eq!(line_at(text, 0, 1, 99), 1);
    }
}
