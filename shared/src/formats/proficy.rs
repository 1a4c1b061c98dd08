//! GE Proficy Historian File-collector CSV.
//!
//! ```text
//! [Data]
//! Tagname,TimeStamp,Value,DataQuality
//! *exported from HIST01; local time America/Chicago
//! TIGER.LINE2.TT_101.F_CV,3/10/24 01:59:58,71.5,Good
//! TIGER.LINE2.TT_101.F_CV,3/10/24 03:00:12.250,-9999,Bad
//! ```
//!
//! A file is a list of sections, each opened by a `[Name]` line. Only
//! `[Data]` sections carry samples; the line after `[Data]` is its header,
//! whose columns are found by name in any order (`Tagname`, `TimeStamp`,
//! `Value` and `DataQuality` are required; unknown columns, such as a
//! `TimeZoneBias`, travel in `attrs` uninterpreted). Several `[Data]`
//! sections may follow each other, each with its own header.
//!
//! What is not data is skipped, not rejected: lines starting with `*` are
//! comments, blank lines (or lines of empty fields, as spreadsheets save
//! them) carry nothing, and the lines of every other section (`[Tags]`,
//! `[Messages]`, `[Alarms]`, …) are tag or event configuration that a data
//! diode does not forward. None of these count as records. Lines before
//! the first section header are not in any section and are rejected
//! (`Malformed`), and a file without any `[Data]` section is a
//! [`FormatError`]: a spool fed the wrong kind of file must not quietly
//! yield nothing.
//!
//! `TimeStamp` is local wall-clock time, `M/D/YY HH:MM[:SS[.fff]]` (a
//! four-digit year and a 12-hour clock with AM/PM are accepted too). It is
//! resolved with [`LocalClock`] in [`ParseContext::tz`], which is therefore
//! required, and kept as written in `ts_raw`. Two-digit years are read the
//! way chrono reads `%y`: 00–69 are 2000–2069, 70–99 are 1970–1999.
//!
//! Values: a number is `F64` (tags listed in
//! [`ParseContext::discrete_tags`] read `0`/`1` as `Bool`), other text is a
//! string tag's `Str`, and an empty value is `Null`. `DataQuality` `Good`,
//! `Bad` or `Uncertain` (any case) is Good, Bad or Uncertain, with the word
//! kept as [`NativeQuality::Text`]; any other quality text is a reject.
//! Sentinels such as `-9999`, out-of-order and future samples are passed on
//! as they are: judging them is the receiver's data-quality stage.

use chrono::NaiveDateTime;
use csv::{ByteRecord, ReaderBuilder};

use super::columns::{self, Columns, Dialect, Row};
use super::{FormatError, ParseContext, ParseOutput, Reject, RejectReason, text_quality_status};
use crate::localtime::LocalClock;
use crate::record::{NativeQuality, Point, PointFlags, SourceRef, SourceSystem, Value};

/// `[Data]` header columns, in [`Columns`] order; all required.
const KNOWN: [&str; 4] = ["Tagname", "TimeStamp", "Value", "DataQuality"];
const TAGNAME: usize = 0;
const TIMESTAMP: usize = 1;
const VALUE: usize = 2;
const DATA_QUALITY: usize = 3;
const REQUIRED: [usize; 4] = [TAGNAME, TIMESTAMP, VALUE, DATA_QUALITY];

/// Timestamp layouts by year width; `%.f` also accepts no fraction.
const LAYOUTS_YY: [&str; 4] = [
    "%m/%d/%y %H:%M:%S%.f",
    "%m/%d/%y %H:%M",
    "%m/%d/%y %I:%M:%S%.f %p",
    "%m/%d/%y %I:%M %p",
];
const LAYOUTS_YYYY: [&str; 4] = [
    "%m/%d/%Y %H:%M:%S%.f",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %I:%M:%S%.f %p",
    "%m/%d/%Y %I:%M %p",
];

/// Where the reader is in the file.
enum Section {
    /// Before any `[Section]` line.
    Preamble,
    /// In a section other than `[Data]`: its lines are skipped.
    Other,
    /// Just after `[Data]`: the next line is the header.
    DataHeader,
    /// In a `[Data]` section with a known header.
    Data(Columns),
}

/// Parse a Proficy File-collector CSV file.
pub fn parse(bytes: &[u8], ctx: &ParseContext) -> Result<ParseOutput, FormatError> {
    let tz = ctx.tz.ok_or(FormatError::TimeZoneRequired)?;
    let mut clock = LocalClock::new(tz);
    // No header row: the header is the line after `[Data]`. `flexible`: a
    // row with the wrong field count is this parser's reject.
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'*'))
        .from_reader(bytes);
    let mut section = Section::Preamble;
    let mut saw_data = false;
    let mut out = ParseOutput::default();
    columns::for_each_record(
        &mut reader,
        bytes,
        Dialect {
            delimiter: b',',
            comment: Some(b'*'),
        },
        &mut out,
        |record, line, out| {
            if record.iter().all(|f| f.trim_ascii().is_empty()) {
                return Ok(());
            }
            if let Some(name) = section_name(record) {
                section = if name.eq_ignore_ascii_case(b"Data") {
                    saw_data = true;
                    Section::DataHeader
                } else {
                    Section::Other
                };
                return Ok(());
            }
            match &section {
                Section::Preamble => out.rejects.push(Reject {
                    line,
                    reason: RejectReason::Malformed,
                }),
                Section::Other => {}
                Section::DataHeader => {
                    section =
                        Section::Data(Columns::from_header(record, &KNOWN, &KNOWN, &REQUIRED)?);
                }
                Section::Data(columns) => {
                    let point = columns
                        .row(record)
                        .and_then(|row| parse_row(&row, &mut clock, ctx, line));
                    columns::push(out, line, point);
                }
            }
            Ok(())
        },
    )?;
    if !saw_data {
        return Err(FormatError::Shape("no [Data] section"));
    }
    Ok(out)
}

/// `Some(name)` if the record is a `[name]` section line (trailing empty
/// fields allowed).
fn section_name(record: &ByteRecord) -> Option<&[u8]> {
    let mut fields = record.iter();
    let first = fields.next()?.trim_ascii();
    if !fields.all(|f| f.trim_ascii().is_empty()) {
        return None;
    }
    first
        .strip_prefix(b"[")?
        .strip_suffix(b"]")
        .map(<[u8]>::trim_ascii)
}

fn parse_row(
    row: &Row<'_>,
    clock: &mut LocalClock,
    ctx: &ParseContext,
    line: u64,
) -> Result<Point, RejectReason> {
    let tag = row
        .raw(TAGNAME)?
        .filter(|t| !t.trim().is_empty())
        .ok_or(RejectReason::MissingField("Tagname"))?;
    let ts_text = row.required(TIMESTAMP)?;
    let naive = parse_timestamp(ts_text).ok_or(RejectReason::BadTimestamp)?;

    let value = match row.text(VALUE)? {
        None => Value::Null,
        Some(text) if ctx.discrete_tags.contains(tag) => match text.parse::<f64>() {
            Ok(0.0) => Value::Bool(false),
            Ok(1.0) => Value::Bool(true),
            _ => return Err(RejectReason::BadValue),
        },
        Some(text) => text
            .parse::<f64>()
            .map_or_else(|_| Value::Str(text.to_owned()), Value::F64),
    };

    let quality = row.required(DATA_QUALITY)?;
    let status = text_quality_status(quality).ok_or(RejectReason::BadQuality)?;
    let attrs = row.extras()?;

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
        native_quality: NativeQuality::Text(quality.to_owned()),
        unit: None,
        source: SourceRef {
            system: SourceSystem::Proficy,
            file: ctx.file.clone(),
            line: Some(line),
        },
        ts_raw: Some(ts_text.to_owned()),
        ts_resolution,
        flags: PointFlags::default(),
        attrs,
    })
}

/// `M/D/YY HH:MM[:SS[.fff]]` (or a four-digit year, or AM/PM).
fn parse_timestamp(text: &str) -> Option<NaiveDateTime> {
    let date = text.split_whitespace().next()?;
    let year = date.rsplit('/').next()?;
    let layouts = if year.len() == 4 {
        LAYOUTS_YYYY
    } else {
        LAYOUTS_YY
    };
    layouts
        .iter()
        .find_map(|layout| NaiveDateTime::parse_from_str(text, layout).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::{Format, status};
    use crate::record::TsResolution;
    use crate::testutil::ns;
    use proptest::prelude::*;

    const SAMPLE: &[u8] = include_bytes!("../../../tests/fixtures/proficy_filecollector.csv");

    #[test]
    fn a_cut_last_row_is_truncated_never_a_point() {
        crate::formats::assert_cut_last_line_is_never_a_point(
            Format::Proficy,
            SAMPLE,
            &ctx(),
            false,
        );
    }
    const HEAD: &str = "[Data]\nTagname,TimeStamp,Value,DataQuality\n";

    fn ctx() -> ParseContext {
        ParseContext {
            file: Some("proficy_filecollector.csv".into()),
            tz: Some(chrono_tz::America::Chicago),
            ..ParseContext::default()
        }
    }

    fn text(q: &str) -> NativeQuality {
        NativeQuality::Text(q.into())
    }

    #[test]
    fn sample_matches_expected() {
        let out = Format::Proficy.parse(SAMPLE, &ctx()).expect("parses");
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let p = &out.points;
        assert_eq!(p.len(), 7);
        // The comment on line 3 is skipped; data starts on line 4.
        let lines: Vec<_> = p.iter().map(|pt| pt.source.line).collect();
        assert_eq!(lines, (4..=10).map(Some).collect::<Vec<_>>());

        // 1 → 2: 01:59:58 CST → 03:00:02 CDT is 4 s of real time.
        assert_eq!(p[0].tag, "TIGER.LINE2.TT_101.F_CV");
        assert_eq!(p[0].ts_ns, ns("2024-03-10T07:59:58Z"));
        assert_eq!(p[0].ts_resolution, TsResolution::Local);
        assert_eq!(p[0].ts_raw.as_deref(), Some("3/10/24 01:59:58"));
        assert_eq!(p[0].value, Value::F64(71.5));
        assert_eq!(p[0].status, status::GOOD);
        assert_eq!(p[0].native_quality, text("Good"));
        assert_eq!(
            p[0].source,
            SourceRef {
                system: SourceSystem::Proficy,
                file: Some("proficy_filecollector.csv".into()),
                line: Some(4)
            }
        );
        assert_eq!(p[1].ts_ns, ns("2024-03-10T08:00:02Z"));
        assert_eq!(p[1].ts_ns - p[0].ts_ns, 4_000_000_000);
        assert_eq!(p[1].value, Value::F64(71.9));

        // 3: -9999 Bad, fractional seconds kept.
        assert_eq!(p[2].ts_ns, ns("2024-03-10T08:00:12.250Z"));
        assert_eq!(p[2].value, Value::F64(-9999.0));
        assert_eq!(p[2].status, 0x8000_0000);
        assert_eq!(p[2].native_quality, text("Bad"));

        // 4: Uncertain.
        assert_eq!(p[3].tag, "TIGER.LINE2.PT_204.F_CV");
        assert_eq!(p[3].ts_ns, ns("2024-03-10T08:00:12Z"));
        assert_eq!(p[3].value, Value::F64(6.02));
        assert_eq!(p[3].status, 0x4000_0000);
        assert_eq!(p[3].native_quality, text("Uncertain"));

        // 5, 6: out of order and an exact duplicate: both parsed as written.
        assert_eq!(p[4].ts_ns, ns("2024-03-10T08:00:07Z"));
        assert_eq!(p[4].value, Value::F64(6.01));
        assert_eq!(p[4].status, status::GOOD);
        assert_eq!(
            (&p[5].tag, p[5].ts_ns, &p[5].value),
            (&p[4].tag, p[4].ts_ns, &p[4].value)
        );

        // 7: year 2035 is parsed; the receiver judges it.
        assert_eq!(p[6].tag, "TIGER.LINE2.FT_300.F_CV");
        assert_eq!(p[6].ts_ns, ns("2035-01-01T06:00:00Z"));
        assert_eq!(p[6].value, Value::F64(12.0));
        assert!(p.iter().all(|pt| pt.attrs.is_empty() && pt.unit.is_none()));
    }

    #[test]
    fn a_time_zone_is_required() {
        let c = ParseContext { tz: None, ..ctx() };
        assert_eq!(parse(SAMPLE, &c), Err(FormatError::TimeZoneRequired));
    }

    #[test]
    fn bad_rows_are_rejected_and_later_rows_still_parse() {
        let csv = format!(
            "{HEAD}{}",
            concat!(
                "A,3/10/24 01:00:00,1.5,Good\n",  // 3 ok
                "A,yesterday,1.6,Good\n",         // 4
                "A,3/10/24 01:00:02,1.7,Fine\n",  // 5
                "A,3/10/24 01:00:03\n",           // 6
                ",3/10/24 01:00:04,1.8,Good\n",   // 7
                "A,,1.8,Good\n",                  // 8
                "A,13/10/24 01:00:05,1.8,Good\n", // 9
                "A,3/10/24 01:00:06,1.9,\n",      // 10
                "A,3/10/24 01:00:07,2.0,good\n",  // 11 ok
            )
        );
        let out = parse(csv.as_bytes(), &ctx()).expect("parses");
        let rejects: Vec<_> = out.rejects.iter().map(|r| (r.line, r.reason)).collect();
        assert_eq!(
            rejects,
            vec![
                (4, RejectReason::BadTimestamp),
                (5, RejectReason::BadQuality),
                (6, RejectReason::Malformed),
                (7, RejectReason::MissingField("Tagname")),
                (8, RejectReason::MissingField("TimeStamp")),
                (9, RejectReason::BadTimestamp),
                (10, RejectReason::MissingField("DataQuality")),
            ]
        );
        let lines: Vec<_> = out.points.iter().map(|p| p.source.line).collect();
        assert_eq!(lines, vec![Some(3), Some(11)]);
        assert_eq!(out.points[1].native_quality, text("good"));
    }

    #[test]
    fn sections_comments_and_header_order() {
        let csv = concat!(
            "stray line\n",                                       // 1 rejected
            "* comment\n",                                        // 2
            "[Tags]\n",                                           // 3
            "Tagname,Description\n",                              // 4 ignored
            "A,Pump flow\n",                                      // 5 ignored
            "\n",                                                 // 6
            "[Data],,,\n",                                        // 7
            "DataQuality,Value,TimeZoneBias,TimeStamp,Tagname\n", // 8
            "Uncertain,running,0,7/20/2001 11:07 AM,S\n",         // 9
            ",,,,\n",                                             // 10 blank
            "Good,,0,7/20/01 11:07,N\n",                          // 11
            "[Messages]\n",                                       // 12
            "anything,at,all\n",                                  // 13 ignored
            "[ data ]\n",                                         // 14
            "Tagname,TimeStamp,Value,DataQuality\n",              // 15
            "D,7/20/01 23:07:00.5,1,Bad\n",                       // 16
        );
        let mut c = ctx();
        c.discrete_tags.insert("D".into());
        let out = parse(csv.as_bytes(), &c).expect("parses");
        assert_eq!(
            out.rejects,
            vec![Reject {
                line: 1,
                reason: RejectReason::Malformed
            }]
        );
        let p = &out.points;
        let got: Vec<_> = p
            .iter()
            .map(|pt| (pt.source.line, pt.tag.as_str(), pt.value.clone(), pt.status))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    Some(9),
                    "S",
                    Value::Str("running".into()),
                    status::UNCERTAIN
                ),
                (Some(11), "N", Value::Null, status::GOOD),
                (Some(16), "D", Value::Bool(true), status::BAD),
            ]
        );
        assert_eq!(p[0].attrs, vec![("TimeZoneBias".into(), "0".into())]);
        // 11:07 CDT = 16:07Z; 23:07:00.5 CDT = 04:07:00.5Z next day.
        assert_eq!(p[0].ts_ns, ns("2001-07-20T16:07:00Z"));
        assert_eq!(p[1].ts_ns, ns("2001-07-20T16:07:00Z"));
        assert_eq!(p[2].ts_ns, ns("2001-07-21T04:07:00.5Z"));
    }

    #[test]
    fn file_level_errors() {
        let c = ctx();
        assert_eq!(parse(b"", &c), Err(FormatError::Shape("no [Data] section")));
        assert_eq!(
            parse(b"[Tags]\nTagname\nA\n", &c),
            Err(FormatError::Shape("no [Data] section"))
        );
        assert_eq!(
            parse(b"[Data]\nTagname,TimeStamp,Value\n", &c),
            Err(FormatError::MissingColumn("DataQuality"))
        );
        assert_eq!(
            parse(b"[Data]\nTagname,TimeStamp,Value,DataQuality,tagname\n", &c),
            Err(FormatError::DuplicateColumn("Tagname"))
        );
        assert_eq!(
            parse(format!("\u{feff}{HEAD}").as_bytes(), &c),
            Ok(ParseOutput::default())
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&b, &ctx());
        }

        #[test]
        fn never_panics_on_arbitrary_rows(rows in prop::collection::vec("[0-9a-zA-Z:/. ,*\\[\\]\"\n-]{0,80}", 0..20)) {
            let csv = format!("{HEAD}{}", rows.join("\n"));
            let _ = parse(csv.as_bytes(), &ctx());
        }
    }
}
