//! AVEVA (Wonderware) Historian `History` query results exported as CSV.
//!
//! ```text
//! DateTime,TagName,Value,vValue,Quality,QualityDetail,OPCQuality
//! 2024-11-03 01:30:00.0000000,FIC101.PV,42.31,42.31,0,192,192
//! 2024-11-03 01:32:00.0000000,BATCH.ID,,B-2024-1103-07,0,192,192
//! ```
//!
//! The historian stores UTC but *returns local time* (unless the query sets
//! `wwTimeZone`), so `DateTime` is wall-clock text in the server's zone,
//! 100 ns resolution. It is resolved with [`LocalClock`] in
//! [`ParseContext::tz`], which is therefore required, and the original text is
//! kept in `ts_raw`. A `wwTimeZone` column is not interpreted (its values are
//! Windows zone names); it travels in `attrs` like every unknown column, so
//! the config must name the zone the export was written in.
//!
//! Columns are found by name (case-insensitive), in any order. `DateTime`,
//! `TagName`, `Value`, `Quality` and `QualityDetail` are required (the native
//! quality is kept whole); `vValue` and `OPCQuality` are optional.
//!
//! Values: a number in `Value` is `F64`; an empty (or `NULL`) `Value` with
//! text in `vValue` is a string tag (`Str`); both empty is `Null`. The CSV
//! carries no tag type, so a discrete tag's `1` would read as 1.0: tags the
//! config lists in [`ParseContext::discrete_tags`] read `0`/`1` as `Bool`.
//!
//! Quality: `OPCQuality`, when present, is the OPC DA byte and decides the
//! status through [`opc_da_to_status`]; otherwise `Quality` 0 is Good, 16
//! (doubtful) Uncertain, and 1 (bad), -1 (none) or any other value Bad.

use chrono::NaiveDateTime;
use csv::{ByteRecord, ReaderBuilder};

use super::columns::{self, Dialect};
use super::{FormatError, ParseContext, ParseOutput, RejectReason, opc_da_to_status, status};
use crate::localtime::LocalClock;
use crate::record::{NativeQuality, Point, PointFlags, SourceRef, SourceSystem, Value};

/// `DateTime` layouts accepted; `%.f` also accepts no fraction.
const DATETIME_LAYOUTS: [&str; 2] = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"];

/// Known columns, in [`Columns::known`] order.
const KNOWN: [&str; 7] = [
    "DateTime",
    "TagName",
    "Value",
    "vValue",
    "Quality",
    "QualityDetail",
    "OPCQuality",
];
const DATE_TIME: usize = 0;
const TAG_NAME: usize = 1;
const VALUE: usize = 2;
const V_VALUE: usize = 3;
const QUALITY: usize = 4;
const QUALITY_DETAIL: usize = 5;
const OPC_QUALITY: usize = 6;
/// Known columns a file must have.
const REQUIRED: [usize; 5] = [DATE_TIME, TAG_NAME, VALUE, QUALITY, QUALITY_DETAIL];

/// Parse an AVEVA History CSV export.
pub fn parse(bytes: &[u8], ctx: &ParseContext) -> Result<ParseOutput, FormatError> {
    let tz = ctx.tz.ok_or(FormatError::TimeZoneRequired)?;
    let mut clock = LocalClock::new(tz);
    // `flexible`: a row with the wrong field count is this parser's reject,
    // not a reader error.
    let mut reader = ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let header = reader
        .byte_headers()
        .map_err(|_| FormatError::Shape("unreadable CSV header"))?
        .clone();
    columns::check_header(&reader, &header, bytes, Dialect::CSV)?;
    let columns = Columns::from_header(&header)?;

    let mut out = ParseOutput::default();
    columns::for_each_record(
        &mut reader,
        bytes,
        Dialect::CSV,
        &mut out,
        |record, line, out| {
            columns::push(
                out,
                line,
                parse_row(record, &columns, &mut clock, ctx, line),
            );
            Ok(())
        },
    )?;
    Ok(out)
}

/// Where each column is.
struct Columns {
    /// Index of each [`KNOWN`] column, if present.
    known: [Option<usize>; KNOWN.len()],
    /// Unknown columns: index and header name.
    extra: Vec<(usize, String)>,
    /// Number of header fields; every row must have as many.
    count: usize,
}

impl Columns {
    fn from_header(header: &ByteRecord) -> Result<Self, FormatError> {
        let mut known = [None; KNOWN.len()];
        let mut extra = Vec::new();
        for (index, raw) in header.iter().enumerate() {
            let name = std::str::from_utf8(raw).map_err(|_| FormatError::NotUtf8)?;
            match KNOWN
                .iter()
                .position(|k| k.eq_ignore_ascii_case(name.trim()))
            {
                Some(k) => {
                    if known[k].replace(index).is_some() {
                        return Err(FormatError::DuplicateColumn(KNOWN[k]));
                    }
                }
                None => extra.push((index, name.to_owned())),
            }
        }
        if let Some(&missing) = REQUIRED.iter().find(|&&k| known[k].is_none()) {
            return Err(FormatError::MissingColumn(KNOWN[missing]));
        }
        Ok(Self {
            known,
            extra,
            count: header.len(),
        })
    }
}

/// Field access for one row.
struct Row<'a> {
    record: &'a ByteRecord,
    columns: &'a Columns,
}

impl<'a> Row<'a> {
    fn at(&self, index: usize) -> Result<&'a str, RejectReason> {
        let raw = self.record.get(index).ok_or(RejectReason::Malformed)?;
        std::str::from_utf8(raw).map_err(|_| RejectReason::NotUtf8)
    }

    /// A known column's text; `None` if the file has no such column.
    fn known(&self, column: usize) -> Result<Option<&'a str>, RejectReason> {
        self.columns
            .known
            .get(column)
            .copied()
            .flatten()
            .map(|i| self.at(i))
            .transpose()
    }

    /// A required column's text, trimmed; empty is a reject.
    fn required(&self, column: usize) -> Result<&'a str, RejectReason> {
        let name = KNOWN.get(column).copied().unwrap_or("?");
        self.known(column)?
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(RejectReason::MissingField(name))
    }
}

fn parse_row(
    record: &ByteRecord,
    columns: &Columns,
    clock: &mut LocalClock,
    ctx: &ParseContext,
    line: u64,
) -> Result<Point, RejectReason> {
    if record.len() != columns.count {
        return Err(RejectReason::Malformed);
    }
    let row = Row { record, columns };

    // `ts_raw` keeps the text exactly as written; parsing ignores padding.
    let ts_text = row
        .known(DATE_TIME)?
        .filter(|t| !t.trim().is_empty())
        .ok_or(RejectReason::MissingField("DateTime"))?;
    let naive = parse_datetime(ts_text.trim()).ok_or(RejectReason::BadTimestamp)?;
    let tag = row
        .known(TAG_NAME)?
        .filter(|t| !t.is_empty())
        .ok_or(RejectReason::MissingField("TagName"))?;

    let value_text = row.known(VALUE)?.map(str::trim).filter(|v| !is_null(v));
    let v_value = row.known(V_VALUE)?.filter(|v| !is_null(v));
    let value = match value_text {
        Some(text) if ctx.discrete_tags.contains(tag) => parse_discrete(text)?,
        Some(text) => Value::F64(text.parse().map_err(|_| RejectReason::BadValue)?),
        None => v_value.map_or(Value::Null, |text| Value::Str(text.to_owned())),
    };

    let quality: i16 = row
        .required(QUALITY)?
        .parse()
        .map_err(|_| RejectReason::BadQuality)?;
    let detail: i32 = row
        .required(QUALITY_DETAIL)?
        .parse()
        .map_err(|_| RejectReason::BadQuality)?;
    let opc = row
        .known(OPC_QUALITY)?
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse::<u16>)
        .transpose()
        .map_err(|_| RejectReason::BadQuality)?;
    let status = opc.map_or_else(|| quality_status(quality), opc_da_to_status);

    let attrs = columns
        .extra
        .iter()
        .map(|(index, name)| Ok((name.clone(), row.at(*index)?.to_owned())))
        .collect::<Result<Vec<_>, RejectReason>>()?;

    // Last, so that only rows that become points move the file's clock.
    let (ts_ns, ts_resolution) = clock
        .resolve(naive)
        .map_err(|_| RejectReason::BadTimestamp)?;

    Ok(Point {
        seq: 0,
        tag: tag.to_owned(),
        ts_ns,
        value,
        status,
        native_quality: NativeQuality::Aveva {
            quality,
            detail,
            opc,
        },
        unit: None,
        source: SourceRef {
            system: SourceSystem::Aveva,
            file: ctx.file.clone(),
            line: Some(line),
        },
        ts_raw: Some(ts_text.to_owned()),
        ts_resolution,
        flags: PointFlags::default(),
        attrs,
    })
}

/// SQL `NULL` exported as empty text or as the word.
fn is_null(text: &str) -> bool {
    text.is_empty() || text == "NULL"
}

fn parse_datetime(text: &str) -> Option<NaiveDateTime> {
    DATETIME_LAYOUTS
        .iter()
        .find_map(|layout| NaiveDateTime::parse_from_str(text, layout).ok())
}

/// A discrete tag's value: 0 or 1 (any numeric spelling).
fn parse_discrete(text: &str) -> Result<Value, RejectReason> {
    match text.parse::<f64>() {
        Ok(0.0) => Ok(Value::Bool(false)),
        Ok(1.0) => Ok(Value::Bool(true)),
        _ => Err(RejectReason::BadValue),
    }
}

/// AVEVA `Quality` to a StatusCode, when there is no `OPCQuality`.
fn quality_status(quality: i16) -> u32 {
    match quality {
        0 => status::GOOD,
        16 => status::UNCERTAIN,
        // 1 bad, -1 no quality, and anything unknown: not to be trusted.
        _ => status::BAD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Reject;
    use crate::record::TsResolution;
    use crate::testutil::ns;
    use proptest::prelude::*;

    const SAMPLE: &[u8] = include_bytes!("../../../tests/fixtures/aveva_history.csv");

    #[test]
    fn a_cut_last_row_or_header_is_truncated_never_a_point() {
        crate::formats::assert_cut_last_line_is_never_a_point(
            crate::formats::Format::Aveva,
            SAMPLE,
            &ctx(),
            true,
        );
    }
    const HEADER: &str = "DateTime,TagName,Value,vValue,Quality,QualityDetail,OPCQuality\n";

    fn ctx() -> ParseContext {
        ParseContext {
            file: Some("aveva_history.csv".into()),
            tz: Some(chrono_tz::America::Chicago),
            ..ParseContext::default()
        }
    }

    fn aveva(quality: i16, detail: i32, opc: Option<u16>) -> NativeQuality {
        NativeQuality::Aveva {
            quality,
            detail,
            opc,
        }
    }

    #[test]
    fn sample_matches_expected() {
        let mut c = ctx();
        c.discrete_tags.insert("PUMP7.Running".into());
        let out = super::super::Format::Aveva
            .parse(SAMPLE, &c)
            .expect("parses");
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let p = &out.points;
        assert_eq!(p.len(), 8);

        // 1: 01:29:30 CDT, first pass of the fold.
        assert_eq!(p[0].tag, "FIC101.PV");
        assert_eq!(p[0].seq, 0);
        assert_eq!(p[0].ts_ns, ns("2024-11-03T06:29:30Z"));
        assert_eq!(p[0].ts_resolution, TsResolution::AmbiguousEarlier);
        assert_eq!(p[0].ts_raw.as_deref(), Some("2024-11-03 01:29:30.0000000"));
        assert_eq!(p[0].value, Value::F64(42.17));
        assert_eq!(p[0].status, 0);
        assert_eq!(p[0].native_quality, aveva(0, 192, Some(192)));
        assert_eq!(
            p[0].source,
            SourceRef {
                system: SourceSystem::Aveva,
                file: Some("aveva_history.csv".into()),
                line: Some(2)
            }
        );

        // 2, 3: the same local 01:30:00 twice → 06:30Z, then 07:30Z.
        assert_eq!(p[1].ts_ns, ns("2024-11-03T06:30:00Z"));
        assert_eq!(p[1].ts_resolution, TsResolution::AmbiguousEarlier);
        assert_eq!(p[1].value, Value::F64(42.31));
        assert_eq!(p[2].ts_ns, ns("2024-11-03T07:30:00Z"));
        assert_eq!(p[2].ts_resolution, TsResolution::AmbiguousLater);
        assert_eq!(p[2].value, Value::F64(41.95));

        // 4: Quality 1 / QD 24, NULL value → Bad, Null. The file is now in
        // the second pass of the fold, so 01:30:30 is CST.
        assert_eq!(p[3].tag, "TI205.PV");
        assert_eq!(p[3].value, Value::Null);
        assert_eq!(p[3].status, 0x8000_0000);
        assert_eq!(p[3].native_quality, aveva(1, 24, Some(0)));
        assert_eq!(p[3].ts_ns, ns("2024-11-03T07:30:30Z"));
        assert_eq!(p[3].ts_resolution, TsResolution::AmbiguousLater);

        // 5: doubtful, OPCQuality 64 → Uncertain.
        assert_eq!(p[4].value, Value::F64(88.4));
        assert_eq!(p[4].status, 0x4000_0000);
        assert_eq!(p[4].native_quality, aveva(16, 64, Some(64)));

        // 6: discrete 1 → Bool true (the tag is declared discrete).
        assert_eq!(p[5].tag, "PUMP7.Running");
        assert_eq!(p[5].value, Value::Bool(true));

        // 7: string tag.
        assert_eq!(p[6].tag, "BATCH.ID");
        assert_eq!(p[6].value, Value::Str("B-2024-1103-07".into()));
        assert_eq!(p[6].status, 0);

        // 8: OPCQuality 216 → GoodLocalOverride.
        assert_eq!(p[7].status, 0x0096_0000);
        assert_eq!(p[7].ts_ns, ns("2024-11-03T07:32:30Z"));

        let lines: Vec<_> = p.iter().map(|pt| pt.source.line).collect();
        assert_eq!(lines, (2..=9).map(Some).collect::<Vec<_>>());
        assert!(p.iter().all(|pt| pt.unit.is_none() && pt.attrs.is_empty()));
    }

    #[test]
    fn undeclared_discrete_tag_stays_numeric() {
        let out = parse(SAMPLE, &ctx()).expect("parses");
        assert_eq!(out.points[5].value, Value::F64(1.0));
    }

    #[test]
    fn discrete_tag_rejects_other_numbers() {
        let mut c = ctx();
        c.discrete_tags.insert("P".into());
        let csv = format!(
            "{HEADER}2024-07-01 12:00:00,P,0,0,0,192,192\n2024-07-01 12:00:01,P,2,2,0,192,192\n2024-07-01 12:00:02,P,1.0,1,0,192,192\n"
        );
        let out = parse(csv.as_bytes(), &c).expect("parses");
        let values: Vec<_> = out.points.iter().map(|p| p.value.clone()).collect();
        assert_eq!(values, vec![Value::Bool(false), Value::Bool(true)]);
        assert_eq!(
            out.rejects,
            vec![Reject {
                line: 3,
                reason: RejectReason::BadValue
            }]
        );
    }

    #[test]
    fn a_time_zone_is_required() {
        let c = ParseContext { tz: None, ..ctx() };
        assert_eq!(parse(SAMPLE, &c), Err(FormatError::TimeZoneRequired));
    }

    #[test]
    fn bad_rows_are_rejected_and_later_rows_still_parse() {
        let mut csv = HEADER.as_bytes().to_vec();
        csv.extend_from_slice(
            concat!(
                "2024-07-01 12:00:00.0000000,A,1.5,1.5,0,192,192\n", // 2 ok
                "not-a-date,A,1.6,1.6,0,192,192\n",                  // 3
                "2024-07-01 12:00:02.0000000,A,abc,abc,0,192,192\n", // 4
                "2024-07-01 12:00:03.0000000,A,1.7,1.7,x,192,192\n", // 5
                "2024-07-01 12:00:04.0000000,A,1.7,1.7,0,192,999999\n", // 6
                "2024-07-01 12:00:05.0000000,A,1.8\n",               // 7
                ",A,1.9,1.9,0,192,192\n",                            // 8
                "2024-07-01 12:00:07.0000000,,1.9,1.9,0,192,192\n",  // 9
                "2024-07-01 12:00:08.0000000,A,2.0,2.0,,192,192\n",  // 10
                "2024-02-30 12:00:00.0000000,A,2.0,2.0,0,192,192\n", // 11
                "2300-01-01 00:00:00.0000000,A,2.0,2.0,0,192,192\n", // 12
            )
            .as_bytes(),
        );
        csv.extend_from_slice(b"2024-07-01 12:00:09.0000000,\xff\xfe,2.1,2.1,0,192,192\n"); // 13
        csv.extend_from_slice(b"\"2024-07-01 12:00:10.0000000\",\"A\nB\",2.2,2.2,0,192,192\n"); // 14-15
        csv.extend_from_slice(b"2024-07-01 12:00:11.0000000,A,2.3,2.3,0,192,192\n"); // 16 ok
        let out = parse(&csv, &ctx()).expect("parses");
        let rejects: Vec<_> = out.rejects.iter().map(|r| (r.line, r.reason)).collect();
        assert_eq!(
            rejects,
            vec![
                (3, RejectReason::BadTimestamp),
                (4, RejectReason::BadValue),
                (5, RejectReason::BadQuality),
                (6, RejectReason::BadQuality),
                (7, RejectReason::Malformed),
                (8, RejectReason::MissingField("DateTime")),
                (9, RejectReason::MissingField("TagName")),
                (10, RejectReason::MissingField("Quality")),
                (11, RejectReason::BadTimestamp),
                (12, RejectReason::BadTimestamp),
                (13, RejectReason::NotUtf8),
            ]
        );
        let parsed: Vec<_> = out
            .points
            .iter()
            .map(|p| (p.source.line, p.tag.as_str(), p.value.clone()))
            .collect();
        assert_eq!(
            parsed,
            vec![
                (Some(2), "A", Value::F64(1.5)),
                (Some(14), "A\nB", Value::F64(2.2)),
                (Some(16), "A", Value::F64(2.3)),
            ]
        );
    }

    #[test]
    fn columns_by_name_in_any_order_with_extras_kept() {
        let csv = "opcquality,wwTimeZone,Quality,TagName,QualityDetail,DateTime,Value,Note\n\
                   ,Central Standard Time,16,T1,64,2024-07-01 12:00:00.1234567,3.5,hi\n\
                   ,,-1,T2,0,2024-07-01 12:00:01,4.5,\n\
                   ,,1,T3,24,2024-07-01T12:00:02,,\n\
                   ,,0,T4,192,2024-07-01 12:00:03,NULL,\n";
        let out = parse(csv.as_bytes(), &ctx()).expect("parses");
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let p = &out.points;
        assert_eq!(p[0].tag, "T1");
        // 12:00 CDT = 17:00Z, 100 ns digits kept.
        assert_eq!(p[0].ts_ns, ns("2024-07-01T17:00:00.1234567Z"));
        assert_eq!(p[0].ts_resolution, TsResolution::Local);
        assert_eq!(p[0].value, Value::F64(3.5));
        assert_eq!(p[0].status, status::UNCERTAIN);
        assert_eq!(p[0].native_quality, aveva(16, 64, None));
        assert_eq!(
            p[0].attrs,
            vec![
                ("wwTimeZone".into(), "Central Standard Time".into()),
                ("Note".into(), "hi".into())
            ]
        );
        // Without OPCQuality: -1 and 1 are Bad, 0 Good; no vValue column.
        assert_eq!(p[1].status, status::BAD);
        assert_eq!(p[2].status, status::BAD);
        assert_eq!(p[2].value, Value::Null);
        assert_eq!(p[3].status, status::GOOD);
        assert_eq!(p[3].value, Value::Null);
    }

    #[test]
    fn line_numbers_count_blank_lines() {
        let csv = format!(
            "{HEADER}\n2024-07-01 12:00:00,A,1,1,0,192,192\n\n\r\n2024-07-01 12:00:01,A,x,x,0,192,192\n"
        );
        let out = parse(csv.as_bytes(), &ctx()).expect("parses");
        assert_eq!(out.points[0].source.line, Some(3));
        assert_eq!(
            out.rejects,
            vec![Reject {
                line: 6,
                reason: RejectReason::BadValue
            }]
        );
    }

    #[test]
    fn spring_forward_gap_is_shifted() {
        let csv = format!("{HEADER}2024-03-10 02:30:00.0000000,A,1,1,0,192,192\n");
        let out = parse(csv.as_bytes(), &ctx()).expect("parses");
        assert_eq!(out.points[0].ts_ns, ns("2024-03-10T08:30:00Z"));
        assert_eq!(out.points[0].ts_resolution, TsResolution::GapShifted);
    }

    #[test]
    fn header_problems_are_file_errors() {
        let c = ctx();
        assert_eq!(parse(b"", &c), Err(FormatError::MissingColumn("DateTime")));
        assert_eq!(
            parse(b"DateTime,TagName,Value,Quality\n", &c),
            Err(FormatError::MissingColumn("QualityDetail"))
        );
        assert_eq!(
            parse(
                b"DateTime,TagName,Value,Quality,QualityDetail,datetime\n",
                &c
            ),
            Err(FormatError::DuplicateColumn("DateTime"))
        );
        assert_eq!(
            parse(b"DateTime,\xff,Value\n", &c),
            Err(FormatError::NotUtf8)
        );
        // A header alone (and a BOM) is an empty, valid export.
        assert_eq!(
            parse(format!("\u{feff}{HEADER}").as_bytes(), &c),
            Ok(ParseOutput::default())
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&b, &ctx());
        }

        #[test]
        fn never_panics_on_arbitrary_rows(rows in prop::collection::vec("[0-9a-zA-Z:. ,\"\n-]{0,80}", 0..20)) {
            let csv = format!("{HEADER}{}", rows.join("\n"));
            let out = parse(csv.as_bytes(), &ctx()).expect("the header is valid");
            // Every line the reader saw is a point or a reject, in order.
            let lines: Vec<u64> = out.points.iter().filter_map(|p| p.source.line)
                .chain(out.rejects.iter().map(|r| r.line)).collect();
            prop_assert!(lines.iter().all(|&l| l >= 2));
        }

        #[test]
        fn never_panics_on_a_mutated_sample(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut b = SAMPLE.to_vec();
            for (at, byte) in edits {
                let i = at.index(b.len());
                b[i] = byte;
            }
            let _ = parse(&b, &ctx());
        }
    }
}
