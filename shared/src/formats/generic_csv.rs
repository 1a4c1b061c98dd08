//! CSV of any layout, read through a column mapping from the config.
//!
//! ```toml
//! [[spool]]
//! format = "generic-csv"
//! csv = { tag = "Sensor", timestamp = "Time", value = "Reading", quality = "Q",
//!         unit = "EU", ts_format = { pattern = "%d.%m.%Y %H:%M:%S" }, delimiter = ";" }
//! ```
//!
//! For exports no dedicated parser knows. The [`CsvMapping`] names the
//! header columns holding the tag, timestamp and value (required) and,
//! optionally, quality and unit; columns are matched by name (trimmed,
//! case-insensitive) and every other column goes to `attrs`. A mapped column
//! missing from a file's header is a [`FormatError::MissingColumn`] naming
//! its role (`tag`, `timestamp`, `value`, `quality`, `unit`).
//!
//! Timestamps follow [`TsFormat`]: RFC 3339, epoch seconds, milliseconds or
//! nanoseconds (read as decimals, so `1710057602.25` s is exact), or a
//! chrono strftime pattern. A pattern with an offset (`%z`, `%:z`, `%#z`,
//! `%+`) is exact; one without is local wall-clock time, resolved with
//! [`LocalClock`] in [`ParseContext::tz`], which is then required
//! ([`TsFormat::is_local`]; config validation checks it, and the parser
//! fails the file without it). Pattern timestamps keep their text in
//! `ts_raw`.
//!
//! Values: a number is `F64` (tags in [`ParseContext::discrete_tags`] read
//! `0`/`1` as `Bool`), `true`/`false` (any case) is `Bool`, other text is
//! `Str` and an empty cell `Null`. Quality: a number up to 255 is an OPC DA
//! byte ([`opc_da_to_status`](super::opc_da_to_status), native `OpcDa`), a
//! larger one an OPC UA StatusCode (native `OpcUa`); the words `Good`,
//! `Bad`, `Uncertain` (any case) read as such (native `Text`); an empty
//! cell, or no quality column, is Good with native `None`; anything else is
//! a reject.

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDateTime};
use csv::ReaderBuilder;
use serde::{Deserialize, Deserializer};

use super::columns::{self, Columns, Dialect, Row};
use super::pi_webapi::fraction_truncated;
use super::{
    FormatError, ParseContext, ParseOutput, RejectReason, decimal_epoch_ns, numeric_quality,
    status, text_quality_status,
};
use crate::localtime::LocalClock;
use crate::record::{
    NativeQuality, Point, PointFlags, SourceRef, SourceSystem, TsResolution, Value,
};

/// Which column holds what, and how to read the timestamps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvMapping {
    /// Header name of the tag column.
    pub tag: String,
    /// Header name of the timestamp column.
    pub timestamp: String,
    /// Header name of the value column.
    pub value: String,
    /// Header name of the quality column, if any.
    #[serde(default)]
    pub quality: Option<String>,
    /// Header name of the unit column, if any.
    #[serde(default)]
    pub unit: Option<String>,
    /// How the timestamp column is written (default RFC 3339).
    #[serde(default)]
    pub ts_format: TsFormat,
    /// Field delimiter, one ASCII byte: `","` (default), `";"`, `"\t"`, or
    /// its code as a number.
    #[serde(default = "default_delimiter", deserialize_with = "de_delimiter")]
    pub delimiter: u8,
}

/// How a generic CSV writes timestamps. In TOML: `"rfc3339"`, `"epoch_s"`,
/// `"epoch_ms"`, `"epoch_ns"` or `{ pattern = "%Y-%m-%d %H:%M:%S%.f" }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TsFormat {
    /// RFC 3339 with an offset (`2024-03-10T08:00:02.25Z`).
    #[default]
    Rfc3339,
    /// Milliseconds since the Unix epoch, UTC; a fraction is allowed.
    EpochMs,
    /// Seconds since the Unix epoch, UTC; a fraction is allowed.
    EpochS,
    /// Nanoseconds since the Unix epoch, UTC.
    EpochNs,
    /// A chrono strftime pattern; local time in [`ParseContext::tz`] unless
    /// it has an offset specifier.
    Pattern(String),
}

impl TsFormat {
    /// Whether timestamps in this format are local wall-clock time, so the
    /// spool needs a time zone: a pattern without an offset specifier.
    /// (`%Z`, a zone *name*, cannot be parsed and does not count.)
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Pattern(p) if !has_offset(p))
    }
}

impl CsvMapping {
    /// The first problem with this mapping, as (config key, reason), for
    /// config validation; `None` if it can work.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        let mut names = vec![
            ("spool.csv.tag", self.tag.as_str()),
            ("spool.csv.timestamp", self.timestamp.as_str()),
            ("spool.csv.value", self.value.as_str()),
        ];
        names.extend(self.quality.as_deref().map(|q| ("spool.csv.quality", q)));
        names.extend(self.unit.as_deref().map(|u| ("spool.csv.unit", u)));
        if let Some((key, _)) = names.iter().find(|(_, name)| name.trim().is_empty()) {
            return Some((key, "must name a column"));
        }
        for (i, (key, name)) in names.iter().enumerate() {
            if names
                .iter()
                .skip(i + 1)
                .any(|(_, other)| other.trim().eq_ignore_ascii_case(name.trim()))
            {
                return Some((key, "names a column another role also uses"));
            }
        }
        if !delimiter_ok(self.delimiter) {
            return Some((
                "spool.csv.delimiter",
                "must be one ASCII character other than a quote or line break",
            ));
        }
        if let TsFormat::Pattern(p) = &self.ts_format
            && (p.trim().is_empty() || StrftimeItems::new(p).any(|i| matches!(i, Item::Error)))
        {
            return Some((
                "spool.csv.ts_format",
                "is not a valid chrono strftime pattern",
            ));
        }
        None
    }
}

fn default_delimiter() -> u8 {
    b','
}

fn delimiter_ok(d: u8) -> bool {
    d.is_ascii() && !matches!(d, b'"' | b'\n' | b'\r')
}

/// A delimiter written as a one-character string or as its byte value.
fn de_delimiter<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Delimiter {
        Byte(u8),
        Text(String),
    }
    match Delimiter::deserialize(d)? {
        Delimiter::Byte(b) => Ok(b),
        Delimiter::Text(s) => match s.as_bytes() {
            [b] if b.is_ascii() => Ok(*b),
            _ => Err(serde::de::Error::custom(
                "delimiter must be a single ASCII character",
            )),
        },
    }
}

/// Whether a strftime pattern has an offset specifier (`%z` in any of its
/// forms, or `%+`).
fn has_offset(pattern: &str) -> bool {
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        // Padding and width modifiers, then the specifier (`%%` included,
        // which is consumed here so its second `%` starts nothing).
        loop {
            match chars.next() {
                Some('-' | '_' | '0'..='9' | '#' | ':' | '.') => {}
                Some('z' | '+') => return true,
                _ => break,
            }
        }
    }
    false
}

/// Mapping roles, in [`Columns`] order (quality and unit only when mapped).
const TAG: usize = 0;
const TIMESTAMP: usize = 1;
const VALUE: usize = 2;
const ROLES: [&str; 5] = ["tag", "timestamp", "value", "quality", "unit"];

/// Parse a CSV file with the mapping in [`ParseContext::csv_map`].
pub fn parse(bytes: &[u8], ctx: &ParseContext) -> Result<ParseOutput, FormatError> {
    let map = ctx.csv_map.as_ref().ok_or(FormatError::MappingRequired)?;
    let mut clock = if map.ts_format.is_local() {
        Some(LocalClock::new(
            ctx.tz.ok_or(FormatError::TimeZoneRequired)?,
        ))
    } else {
        None
    };
    let mut names = vec![map.tag.as_str(), map.timestamp.as_str(), map.value.as_str()];
    let mut labels = vec![ROLES[0], ROLES[1], ROLES[2]];
    let mut quality_at = None;
    let mut unit_at = None;
    for (at, role, name) in [
        (&mut quality_at, ROLES[3], map.quality.as_deref()),
        (&mut unit_at, ROLES[4], map.unit.as_deref()),
    ] {
        if let Some(name) = name {
            *at = Some(names.len());
            names.push(name);
            labels.push(role);
        }
    }
    let required: Vec<usize> = (0..names.len()).collect();

    let mut reader = ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .delimiter(map.delimiter)
        .from_reader(bytes);
    let header = reader
        .byte_headers()
        .map_err(|_| FormatError::Shape("unreadable CSV header"))?
        .clone();
    let dialect = Dialect {
        delimiter: map.delimiter,
        comment: None,
    };
    columns::check_header(&reader, &header, bytes, dialect)?;
    let columns = Columns::from_header(&header, &names, &labels, &required)?;
    let layout = Layout {
        ts_format: &map.ts_format,
        quality: quality_at,
        unit: unit_at,
    };
    let mut out = ParseOutput::default();
    columns::for_each_record(
        &mut reader,
        bytes,
        dialect,
        &mut out,
        |record, line, out| {
            let point = columns
                .row(record)
                .and_then(|row| parse_row(&row, &layout, clock.as_mut(), ctx, line));
            columns::push(out, line, point);
            Ok(())
        },
    )?;
    Ok(out)
}

/// What a row needs from the mapping.
struct Layout<'a> {
    ts_format: &'a TsFormat,
    quality: Option<usize>,
    unit: Option<usize>,
}

fn parse_row(
    row: &Row<'_>,
    layout: &Layout<'_>,
    clock: Option<&mut LocalClock>,
    ctx: &ParseContext,
    line: u64,
) -> Result<Point, RejectReason> {
    let tag = row
        .raw(TAG)?
        .filter(|t| !t.trim().is_empty())
        .ok_or(RejectReason::MissingField("tag"))?;
    let ts_text = row.required(TIMESTAMP)?;
    let value = match row.text(VALUE)? {
        None => Value::Null,
        Some(text) if ctx.discrete_tags.contains(tag) => match text.parse::<f64>() {
            Ok(0.0) => Value::Bool(false),
            Ok(1.0) => Value::Bool(true),
            _ => return Err(RejectReason::BadValue),
        },
        Some(text) => match text.parse::<f64>() {
            Ok(f) => Value::F64(f),
            Err(_) if text.eq_ignore_ascii_case("true") => Value::Bool(true),
            Err(_) if text.eq_ignore_ascii_case("false") => Value::Bool(false),
            Err(_) => Value::Str(row.raw(VALUE)?.unwrap_or(text).to_owned()),
        },
    };
    let quality_text = match layout.quality {
        Some(k) => row.text(k)?,
        None => None,
    };
    let (status, native_quality) =
        quality_text.map_or(Ok((status::GOOD, NativeQuality::None)), quality)?;
    let unit = match layout.unit {
        Some(k) => row.text(k)?.map(str::to_owned),
        None => None,
    };
    let attrs = row.extras()?;
    // Last, so that only rows that become points move the file's clock.
    let (ts_ns, ts_resolution, ts_raw) = timestamp(ts_text, layout.ts_format, clock)?;
    Ok(Point {
        seq: 0,
        tag: tag.to_owned(),
        ts_ns,
        value,
        status,
        native_quality,
        unit,
        source: SourceRef {
            system: SourceSystem::GenericCsv,
            file: ctx.file.clone(),
            line: Some(line),
        },
        ts_raw,
        ts_resolution,
        flags: PointFlags::default(),
        attrs,
    })
}

/// A quality cell: a number (DA byte or UA code) or a quality word.
fn quality(text: &str) -> Result<(u32, NativeQuality), RejectReason> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .ok()
            .and_then(numeric_quality)
            .ok_or(RejectReason::BadQuality);
    }
    text_quality_status(text)
        .map(|code| (code, NativeQuality::Text(text.to_owned())))
        .ok_or(RejectReason::BadQuality)
}

/// A timestamp cell in `format`: (ns, resolution, text kept as `ts_raw`).
fn timestamp(
    text: &str,
    format: &TsFormat,
    clock: Option<&mut LocalClock>,
) -> Result<(i64, TsResolution, Option<String>), RejectReason> {
    let epoch = |digits| {
        decimal_epoch_ns(text, digits)
            .map(|(ns, truncated)| (ns, TsResolution::Exact, truncated.then(|| text.to_owned())))
            .ok_or(RejectReason::BadTimestamp)
    };
    match format {
        TsFormat::Rfc3339 => {
            let ns = DateTime::parse_from_rfc3339(text)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .ok_or(RejectReason::BadTimestamp)?;
            let raw = fraction_truncated(text).then(|| text.to_owned());
            Ok((ns, TsResolution::Exact, raw))
        }
        TsFormat::EpochS => epoch(9),
        TsFormat::EpochMs => epoch(6),
        TsFormat::EpochNs => epoch(0),
        TsFormat::Pattern(pattern) => {
            let (ns, how) = if let Some(clock) = clock {
                let naive = NaiveDateTime::parse_from_str(text, pattern)
                    .map_err(|_| RejectReason::BadTimestamp)?;
                clock
                    .resolve(naive)
                    .map_err(|_| RejectReason::BadTimestamp)?
            } else {
                let ns = DateTime::parse_from_str(text, pattern)
                    .ok()
                    .and_then(|t| t.timestamp_nanos_opt())
                    .ok_or(RejectReason::BadTimestamp)?;
                (ns, TsResolution::Exact)
            };
            Ok((ns, how, Some(text.to_owned())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Format;
    use crate::testutil::ns;
    use proptest::prelude::*;

    fn mapping(ts_format: TsFormat) -> CsvMapping {
        CsvMapping {
            tag: "Sensor".into(),
            timestamp: "Time".into(),
            value: "Reading".into(),
            quality: Some("Q".into()),
            unit: Some("EU".into()),
            ts_format,
            delimiter: b';',
        }
    }

    fn ctx(ts_format: TsFormat) -> ParseContext {
        ParseContext {
            file: Some("export.csv".into()),
            tz: Some(chrono_tz::Europe::Berlin),
            csv_map: Some(mapping(ts_format)),
            ..ParseContext::default()
        }
    }

    /// A European export: `;`, day-first local time, extra column.
    const EXPORT: &str = "\
Time;Sensor;Reading;Q;EU;Line
31.03.2024 01:59:59;TT101.PV;71.5;192;degC;L2
31.03.2024 03:00:00;TT101.PV;71.9;Uncertain;degC;L2
31.03.2024 03:00:01;PT204.PV;;0;bar;L2
31.03.2024 03:00:02;PUMP7.Running;true;;;L2
31.03.2024 03:00:03;BATCH.ID;B-07;1083179008;;L2
";

    #[test]
    fn a_cut_last_row_or_header_is_truncated_never_a_point() {
        let c = ctx(TsFormat::Pattern("%d.%m.%Y %H:%M:%S".into()));
        crate::formats::assert_cut_last_line_is_never_a_point(
            Format::GenericCsv,
            EXPORT.as_bytes(),
            &c,
            true,
        );
    }

    #[test]
    fn a_mapped_export_reads_as_expected() {
        let c = ctx(TsFormat::Pattern("%d.%m.%Y %H:%M:%S".into()));
        let out = Format::GenericCsv
            .parse(EXPORT.as_bytes(), &c)
            .expect("parses");
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let p = &out.points;
        assert_eq!(p.len(), 5);
        // Berlin springs forward 02:00 CET → 03:00 CEST on 2024-03-31.
        assert_eq!(p[0].tag, "TT101.PV");
        assert_eq!(p[0].ts_ns, ns("2024-03-31T00:59:59Z"));
        assert_eq!(p[0].ts_resolution, TsResolution::Local);
        assert_eq!(p[0].ts_raw.as_deref(), Some("31.03.2024 01:59:59"));
        assert_eq!(p[0].value, Value::F64(71.5));
        assert_eq!(p[0].status, status::GOOD);
        assert_eq!(p[0].native_quality, NativeQuality::OpcDa(192));
        assert_eq!(p[0].unit.as_deref(), Some("degC"));
        assert_eq!(p[0].attrs, vec![("Line".into(), "L2".into())]);
        assert_eq!(
            p[0].source,
            SourceRef {
                system: SourceSystem::GenericCsv,
                file: Some("export.csv".into()),
                line: Some(2)
            }
        );
        assert_eq!(p[1].ts_ns, ns("2024-03-31T01:00:00Z"));
        assert_eq!(p[1].status, status::UNCERTAIN);
        assert_eq!(p[1].native_quality, NativeQuality::Text("Uncertain".into()));
        assert_eq!(p[2].value, Value::Null);
        assert_eq!(p[2].status, status::BAD);
        assert_eq!(p[3].value, Value::Bool(true));
        assert_eq!(p[3].native_quality, NativeQuality::None);
        assert_eq!(p[3].unit, None);
        assert_eq!(p[4].value, Value::Str("B-07".into()));
        assert_eq!(p[4].status, 0x4090_0000);
        assert_eq!(p[4].native_quality, NativeQuality::OpcUa(0x4090_0000));
    }

    #[test]
    fn every_timestamp_format() {
        let cases = [
            (
                TsFormat::Rfc3339,
                "2024-03-10T08:00:02.25Z",
                TsResolution::Exact,
            ),
            (
                TsFormat::Rfc3339,
                "2024-03-10T02:00:02.25-06:00",
                TsResolution::Exact,
            ),
            (TsFormat::EpochS, "1710057602.25", TsResolution::Exact),
            (TsFormat::EpochMs, "1710057602250", TsResolution::Exact),
            (
                TsFormat::EpochNs,
                "1710057602250000000",
                TsResolution::Exact,
            ),
            (
                TsFormat::Pattern("%Y-%m-%d %H:%M:%S%.f %z".into()),
                "2024-03-10 09:00:02.250 +0100",
                TsResolution::Exact,
            ),
            (
                TsFormat::Pattern("%Y-%m-%d %H:%M:%S%.f".into()),
                "2024-03-10 09:00:02.250",
                TsResolution::Local,
            ),
        ];
        for (format, text, how) in cases {
            let csv = format!("Time;Sensor;Reading;Q;EU\n{text};A;1;;\n");
            let out = parse(csv.as_bytes(), &ctx(format.clone())).expect("parses");
            assert!(out.rejects.is_empty(), "{format:?}: {:?}", out.rejects);
            assert_eq!(
                out.points[0].ts_ns,
                ns("2024-03-10T08:00:02.25Z"),
                "{format:?}"
            );
            assert_eq!(out.points[0].ts_resolution, how, "{format:?}");
        }
    }

    #[test]
    fn bad_rows_are_rejected_and_later_rows_still_parse() {
        let csv = concat!(
            "Time;Sensor;Reading;Q;EU\n",
            "1710057600;A;1.5;192;\n",        // 2 ok
            "yesterday;A;1.5;192;\n",         // 3
            "1710057602;A;1.5;Fine;\n",       // 4
            "1710057603;A;1.5;-1;\n",         // 5
            "1710057604;A;1.5\n",             // 6
            "1710057605;;1.5;192;\n",         // 7
            ";A;1.5;192;\n",                  // 8
            "1710057607;A;1.5;4294967296;\n", // 9
            "1710057608;A;2.5;;\n",           // 10 ok
        );
        let out = parse(csv.as_bytes(), &ctx(TsFormat::EpochS)).expect("parses");
        let rejects: Vec<_> = out.rejects.iter().map(|r| (r.line, r.reason)).collect();
        assert_eq!(
            rejects,
            vec![
                (3, RejectReason::BadTimestamp),
                (4, RejectReason::BadQuality),
                (5, RejectReason::BadQuality),
                (6, RejectReason::Malformed),
                (7, RejectReason::MissingField("tag")),
                (8, RejectReason::MissingField("timestamp")),
                (9, RejectReason::BadQuality),
            ]
        );
        let got: Vec<_> = out
            .points
            .iter()
            .map(|p| (p.source.line, p.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(Some(2), Value::F64(1.5)), (Some(10), Value::F64(2.5))]
        );
    }

    #[test]
    fn file_level_errors() {
        let c = ParseContext {
            csv_map: None,
            ..ctx(TsFormat::EpochS)
        };
        assert_eq!(parse(b"", &c), Err(FormatError::MappingRequired));
        let c = ParseContext {
            tz: None,
            ..ctx(TsFormat::Pattern("%Y-%m-%d %H:%M".into()))
        };
        assert_eq!(parse(b"", &c), Err(FormatError::TimeZoneRequired));
        let c = ctx(TsFormat::EpochS);
        assert_eq!(
            parse(b"Time;Sensor;Reading;Q\n", &c),
            Err(FormatError::MissingColumn("unit"))
        );
        assert_eq!(
            parse(b"Time,Sensor,Reading,Q,EU\n", &c),
            Err(FormatError::MissingColumn("tag"))
        );
        assert_eq!(
            parse(b"time;SENSOR;reading;q;eu\n", &c),
            Ok(ParseOutput::default())
        );
    }

    #[test]
    fn mapping_checks_and_offset_detection() {
        assert_eq!(mapping(TsFormat::Rfc3339).problem(), None);
        let mut m = mapping(TsFormat::Rfc3339);
        m.value = " ".into();
        assert_eq!(m.problem().map(|p| p.0), Some("spool.csv.value"));
        let mut m = mapping(TsFormat::Rfc3339);
        m.unit = Some("sensor".into());
        assert_eq!(m.problem().map(|p| p.0), Some("spool.csv.tag"));
        let mut m = mapping(TsFormat::Rfc3339);
        m.delimiter = b'"';
        assert_eq!(m.problem().map(|p| p.0), Some("spool.csv.delimiter"));
        let m = mapping(TsFormat::Pattern("%Y-%Q".into()));
        assert_eq!(m.problem().map(|p| p.0), Some("spool.csv.ts_format"));

        for (pattern, local) in [
            ("%Y-%m-%d %H:%M:%S", true),
            ("%Y-%m-%d %H:%M:%S%z", false),
            ("%Y-%m-%d %H:%M:%S %:z", false),
            ("%Y-%m-%d %H:%M:%S %#z", false),
            ("%+", false),
            ("%Y-%m-%d %H:%M:%S%%z", true),
            ("%Y-%m-%d %H:%M:%S%.3f %Z", true),
        ] {
            assert_eq!(
                TsFormat::Pattern(pattern.into()).is_local(),
                local,
                "{pattern}"
            );
        }
        assert!(!TsFormat::EpochMs.is_local());
    }

    #[test]
    fn mapping_deserialises() {
        let m: CsvMapping = serde_json::from_str(
            r#"{"tag":"T","timestamp":"S","value":"V","ts_format":{"pattern":"%F %T"},"delimiter":"\t"}"#,
        )
        .expect("deserialises");
        assert_eq!(m.ts_format, TsFormat::Pattern("%F %T".into()));
        assert_eq!(m.delimiter, b'\t');
        assert_eq!(m.quality, None);
        let m: CsvMapping = serde_json::from_str(
            r#"{"tag":"T","timestamp":"S","value":"V","ts_format":"epoch_ms","delimiter":59}"#,
        )
        .expect("deserialises");
        assert_eq!((m.ts_format, m.delimiter), (TsFormat::EpochMs, b';'));
        let m: CsvMapping =
            serde_json::from_str(r#"{"tag":"T","timestamp":"S","value":"V"}"#).expect("defaults");
        assert_eq!((m.ts_format, m.delimiter), (TsFormat::Rfc3339, b','));
        assert!(
            serde_json::from_str::<CsvMapping>(
                r#"{"tag":"T","timestamp":"S","value":"V","delimiter":";;"}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<CsvMapping>(
                r#"{"tag":"T","timestamp":"S","value":"V","extra":1}"#
            )
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&b, &ctx(TsFormat::Pattern("%d.%m.%Y %H:%M:%S".into())));
            let _ = parse(&b, &ctx(TsFormat::EpochMs));
        }

        #[test]
        fn never_panics_on_arbitrary_rows(rows in prop::collection::vec("[0-9a-zA-Z:.; \"\n-]{0,80}", 0..20)) {
            let csv = format!("Time;Sensor;Reading;Q;EU\n{}", rows.join("\n"));
            for format in [TsFormat::Rfc3339, TsFormat::EpochS, TsFormat::Pattern("%d.%m.%Y %H:%M:%S".into())] {
                let out = parse(csv.as_bytes(), &ctx(format)).expect("the header is valid");
                prop_assert!(out.points.iter().all(|p| p.source.line.is_some_and(|l| l >= 2)));
            }
        }
    }
}
