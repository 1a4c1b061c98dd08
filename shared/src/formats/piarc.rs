//! PI Data Archive `PIARC` table listings (piconfig) saved as CSV.
//!
//! ```text
//! TAG,Type,Value,TIME,TimeNum,Status,Flags,Annot
//! TT101.PV,Float32,71.9,10-Mar-24 03:00:02.2500,1710057602.25,0,Q,
//! TT101.PV,Float32,I/O Timeout,10-Mar-24 03:00:12.0000,1710057612,-246,,
//! ```
//!
//! Columns are the PIARC attributes, found by name in any order: `TAG` and
//! `Value` are required, and at least one of `TIME` and `TimeNum`; `Type`,
//! `Status`, `Flags` and `Annot` are optional and unknown columns (such as
//! `PointID`) travel in `attrs`.
//!
//! **Time.** `TimeNum` (seconds since 1970, UTC, with a fraction) is exact
//! and preferred; it is read as a decimal, not through `f64`. Without it the
//! row's `TIME` (`DD-MMM-YY hh:mm:ss.ssss`, the piconfig host's local
//! wall-clock time) is resolved with [`LocalClock`] in
//! [`ParseContext::tz`]: a file without a `TimeNum` column needs a zone (a
//! [`FormatError`] otherwise), and a row whose `TimeNum` is empty is
//! rejected if there is none. `TIME` is kept in `ts_raw` whenever present.
//!
//! **Values and states.** `Status` is PI's `istat`: 0 for a value; for a
//! numeric or string point, any other number is a SYSTEM digital state
//! (its absolute value is the state code, the `Value` column its name), so
//! the value is a [`Value::DigitalState`] with `system: true` and the status
//! comes from [`pi_system_state_to_status`]. For a `Digital` point a
//! non-negative `Status` is the state's offset in the point's own set
//! (`system: false`, status Good) and a negative one a SYSTEM state.
//! Otherwise `Type` decides: `Float16/32/64` → `F64`, `Int16/32` → `I64`
//! (`Bool` for tags in [`ParseContext::discrete_tags`]), `String`,
//! `Timestamp` and `Blob` → `Str`; an unknown or missing type reads a number
//! as `F64` and anything else as `Str`. An empty value is `Null`.
//!
//! **Flags.** `Q` (questionable) makes a value Uncertain; `M` (modified; `S`
//! is accepted too) sets `flags.substituted` and `A` (annotated)
//! `flags.annotated`, which a non-empty `Annot` also sets (its text goes to
//! `attrs` as `Annot`). The native quality is [`NativeQuality::Pi`].

use chrono::NaiveDateTime;
use csv::ReaderBuilder;

use super::columns::{self, Columns, Dialect, Row};
use super::{
    FormatError, ParseContext, ParseOutput, RejectReason, decimal_epoch_ns,
    pi_system_state_to_status, status,
};
use crate::localtime::LocalClock;
use crate::record::{
    NativeQuality, Point, PointFlags, SourceRef, SourceSystem, TsResolution, Value,
};

/// Known columns, in [`Columns`] order.
const KNOWN: [&str; 8] = [
    "TAG", "Type", "Value", "TIME", "TimeNum", "Status", "Flags", "Annot",
];
const TAG: usize = 0;
const TYPE: usize = 1;
const VALUE: usize = 2;
const TIME: usize = 3;
const TIME_NUM: usize = 4;
const STATUS: usize = 5;
const FLAGS: usize = 6;
const ANNOT: usize = 7;
const REQUIRED: [usize; 2] = [TAG, VALUE];

/// `TIME` layouts by year width; `%.f` also accepts no fraction.
const TIME_LAYOUT_YY: &str = "%d-%b-%y %H:%M:%S%.f";
const TIME_LAYOUT_YYYY: &str = "%d-%b-%Y %H:%M:%S%.f";

/// Parse a PIARC listing.
pub fn parse(bytes: &[u8], ctx: &ParseContext) -> Result<ParseOutput, FormatError> {
    let mut reader = ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let header = reader
        .byte_headers()
        .map_err(|_| FormatError::Shape("unreadable CSV header"))?
        .clone();
    columns::check_header(&reader, &header, bytes, Dialect::CSV)?;
    let columns = Columns::from_header(&header, &KNOWN, &KNOWN, &REQUIRED)?;
    if !columns.has(TIME_NUM) {
        if !columns.has(TIME) {
            return Err(FormatError::MissingColumn("TIME"));
        }
        if ctx.tz.is_none() {
            return Err(FormatError::TimeZoneRequired);
        }
    }
    let mut clock = ctx.tz.map(LocalClock::new);
    let mut out = ParseOutput::default();
    columns::for_each_record(
        &mut reader,
        bytes,
        Dialect::CSV,
        &mut out,
        |record, line, out| {
            let point = columns
                .row(record)
                .and_then(|row| parse_row(&row, clock.as_mut(), ctx, line));
            columns::push(out, line, point);
            Ok(())
        },
    )?;
    Ok(out)
}

/// PIARC `Flags` letters.
#[derive(Default)]
struct Flags {
    questionable: bool,
    modified: bool,
    annotated: bool,
}

fn parse_flags(text: Option<&str>) -> Result<Flags, RejectReason> {
    let mut flags = Flags::default();
    for c in text.unwrap_or("").chars() {
        match c.to_ascii_uppercase() {
            'Q' => flags.questionable = true,
            'M' | 'S' => flags.modified = true,
            'A' => flags.annotated = true,
            ' ' | '|' | '+' | ',' => {}
            _ => return Err(RejectReason::BadQuality),
        }
    }
    Ok(flags)
}

fn parse_row(
    row: &Row<'_>,
    clock: Option<&mut LocalClock>,
    ctx: &ParseContext,
    line: u64,
) -> Result<Point, RejectReason> {
    let tag = row
        .raw(TAG)?
        .filter(|t| !t.trim().is_empty())
        .ok_or(RejectReason::MissingField("TAG"))?;
    let istat: i32 = row
        .text(STATUS)?
        .map(str::parse)
        .transpose()
        .map_err(|_| RejectReason::BadQuality)?
        .unwrap_or(0);
    let flags = parse_flags(row.text(FLAGS)?)?;
    let annotation = row.raw(ANNOT)?.filter(|a| !a.trim().is_empty());
    let annotated = flags.annotated || annotation.is_some();

    let point_type = row.text(TYPE)?;
    let digital = point_type.is_some_and(|t| t.eq_ignore_ascii_case("Digital"));
    let value_text = row.text(VALUE)?;
    let system_state = istat < 0 || (istat > 0 && !digital);
    let value = if system_state || digital {
        let code = i32::try_from(istat.unsigned_abs()).map_err(|_| RejectReason::BadQuality)?;
        Value::DigitalState {
            code,
            name: value_text
                .ok_or(RejectReason::MissingField("Value"))?
                .to_owned(),
            system: system_state,
        }
    } else {
        typed_value(point_type, value_text, ctx.discrete_tags.contains(tag))?
    };
    let status = match &value {
        Value::DigitalState {
            code, system: true, ..
        } => pi_system_state_to_status(*code),
        _ if flags.questionable => status::UNCERTAIN,
        _ => status::GOOD,
    };

    let mut attrs = row.extras()?;
    if let Some(annotation) = annotation {
        attrs.push(("Annot".to_owned(), annotation.to_owned()));
    }
    let time_text = row.text(TIME)?;
    let (ts_ns, ts_resolution, ts_raw) = timestamp(row, time_text, clock)?;

    Ok(Point {
        seq: 0,
        tag: tag.to_owned(),
        ts_ns,
        value,
        status,
        native_quality: NativeQuality::Pi {
            good: !system_state,
            questionable: flags.questionable,
            substituted: flags.modified,
            annotated,
        },
        unit: None,
        source: SourceRef {
            system: SourceSystem::PiArc,
            file: ctx.file.clone(),
            line: Some(line),
        },
        ts_raw: time_text.map(str::to_owned).or(ts_raw),
        ts_resolution,
        flags: PointFlags {
            substituted: flags.modified,
            annotated,
            ..PointFlags::default()
        },
        attrs,
    })
}

/// A value read by the point `Type`.
fn typed_value(
    point_type: Option<&str>,
    text: Option<&str>,
    discrete: bool,
) -> Result<Value, RejectReason> {
    let Some(text) = text else {
        return Ok(Value::Null);
    };
    let kind = point_type.unwrap_or("").to_ascii_lowercase();
    match kind.as_str() {
        "float16" | "float32" | "float64" => text
            .parse()
            .map(Value::F64)
            .map_err(|_| RejectReason::BadValue),
        "int16" | "int32" if discrete => match text {
            "0" => Ok(Value::Bool(false)),
            "1" => Ok(Value::Bool(true)),
            _ => Err(RejectReason::BadValue),
        },
        "int16" | "int32" => text
            .parse()
            .map(Value::I64)
            .map_err(|_| RejectReason::BadValue),
        "string" | "timestamp" | "blob" => Ok(Value::Str(text.to_owned())),
        _ => Ok(text
            .parse()
            .map_or_else(|_| Value::Str(text.to_owned()), Value::F64)),
    }
}

/// `TimeNum` if the row has one, else `TIME` in the clock's zone. The third
/// element is `TimeNum`'s text when sub-nanosecond digits were dropped.
fn timestamp(
    row: &Row<'_>,
    time_text: Option<&str>,
    clock: Option<&mut LocalClock>,
) -> Result<(i64, TsResolution, Option<String>), RejectReason> {
    if let Some(num) = row.text(TIME_NUM)? {
        let (ns, truncated) = decimal_epoch_ns(num, 9).ok_or(RejectReason::BadTimestamp)?;
        return Ok((ns, TsResolution::Exact, truncated.then(|| num.to_owned())));
    }
    let clock = clock.ok_or(RejectReason::MissingField("TimeNum"))?;
    let text = time_text.ok_or(RejectReason::MissingField("TIME"))?;
    let naive = parse_time(text).ok_or(RejectReason::BadTimestamp)?;
    let (ns, how) = clock
        .resolve(naive)
        .map_err(|_| RejectReason::BadTimestamp)?;
    Ok((ns, how, None))
}

/// `DD-MMM-YY hh:mm:ss.ssss` (or a four-digit year).
fn parse_time(text: &str) -> Option<NaiveDateTime> {
    let date = text.split_whitespace().next()?;
    let layout = if date.rsplit('-').next()?.len() == 4 {
        TIME_LAYOUT_YYYY
    } else {
        TIME_LAYOUT_YY
    };
    NaiveDateTime::parse_from_str(text, layout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Format;
    use crate::testutil::ns;
    use proptest::prelude::*;

    /// A piconfig PIARC listing (`@ostr tag,type,value,time,timenum,status,
    /// flags,annot`) around the 2024 spring-forward in America/Chicago.
    const LISTING: &str = "\
TAG,Type,Value,TIME,TimeNum,Status,Flags,Annot
TT101.PV,Float32,71.5,10-Mar-24 01:59:58.0000,1710057598,0,,
TT101.PV,Float32,71.9,10-Mar-24 03:00:02.2500,1710057602.25,0,Q,
TT101.PV,Float32,I/O Timeout,10-Mar-24 03:00:12.0000,1710057612,-246,,
TT101.PV,Float32,72.4,10-Mar-24 03:05:00.0000,1710057900,0,MA,\"Lab value, see shift log\"
FIC101.MODE,Digital,AUTO,10-Mar-24 03:05:00.0000,1710057900,2,,
BATCH.ID,String,B-2024-0310-07,10-Mar-24 03:06:00.0000,1710057960,0,,
PT204.PV,Float32,Shutdown,10-Mar-24 03:10:00.0000,1710058200,-254,,
FT300.TOT,Int32,12034,10-Mar-24 03:10:00.0000,1710058200,0,,
";

    fn ctx() -> ParseContext {
        ParseContext {
            file: Some("piarc_tt101.csv".into()),
            tz: Some(chrono_tz::America::Chicago),
            ..ParseContext::default()
        }
    }

    fn pi([good, questionable, substituted, annotated]: [bool; 4]) -> NativeQuality {
        NativeQuality::Pi {
            good,
            questionable,
            substituted,
            annotated,
        }
    }

    fn state(code: i32, name: &str, system: bool) -> Value {
        Value::DigitalState {
            code,
            name: name.into(),
            system,
        }
    }

    #[test]
    fn a_cut_last_row_or_header_is_truncated_never_a_point() {
        crate::formats::assert_cut_last_line_is_never_a_point(
            Format::PiArc,
            LISTING.as_bytes(),
            &ctx(),
            true,
        );
    }

    #[test]
    fn listing_reads_as_expected() {
        let out = Format::PiArc
            .parse(LISTING.as_bytes(), &ctx())
            .expect("parses");
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let p = &out.points;
        assert_eq!(p.len(), 8);

        assert_eq!(p[0].tag, "TT101.PV");
        assert_eq!(p[0].ts_ns, ns("2024-03-10T07:59:58Z"));
        assert_eq!(p[0].ts_resolution, TsResolution::Exact);
        assert_eq!(p[0].ts_raw.as_deref(), Some("10-Mar-24 01:59:58.0000"));
        assert_eq!(p[0].value, Value::F64(71.5));
        assert_eq!(p[0].status, status::GOOD);
        assert_eq!(p[0].native_quality, pi([true, false, false, false]));
        assert_eq!(
            p[0].source,
            SourceRef {
                system: SourceSystem::PiArc,
                file: Some("piarc_tt101.csv".into()),
                line: Some(2)
            }
        );

        // Q → Uncertain; TimeNum's fraction is exact.
        assert_eq!(p[1].ts_ns, ns("2024-03-10T08:00:02.25Z"));
        assert_eq!(p[1].status, status::UNCERTAIN);
        assert_eq!(p[1].native_quality, pi([true, true, false, false]));

        // A SYSTEM state on a Float32 point.
        assert_eq!(p[2].value, state(246, "I/O Timeout", true));
        assert_eq!(p[2].status, status::BAD_NO_COMMUNICATION);
        assert_eq!(p[2].native_quality, pi([false, false, false, false]));

        // M and A flags, the annotation kept.
        assert_eq!(p[3].value, Value::F64(72.4));
        assert_eq!(p[3].status, status::GOOD);
        assert!(p[3].flags.substituted && p[3].flags.annotated);
        assert_eq!(p[3].native_quality, pi([true, false, true, true]));
        assert_eq!(
            p[3].attrs,
            vec![("Annot".into(), "Lab value, see shift log".into())]
        );

        // A digital point's own state: offset 2, Good.
        assert_eq!(p[4].value, state(2, "AUTO", false));
        assert_eq!(p[4].status, status::GOOD);

        assert_eq!(p[5].value, Value::Str("B-2024-0310-07".into()));
        assert_eq!(p[6].value, state(254, "Shutdown", true));
        assert_eq!(p[6].status, status::BAD_OUT_OF_SERVICE);
        assert_eq!(p[7].value, Value::I64(12034));
        assert_eq!(p[7].ts_ns, ns("2024-03-10T08:10:00Z"));
    }

    #[test]
    fn time_column_alone_gives_the_same_instants() {
        // Drop the TimeNum column: TIME is resolved in America/Chicago.
        let without: String = LISTING
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.splitn(6, ',').collect();
                f.remove(4);
                f.join(",") + "\n"
            })
            .collect();
        let exact = parse(LISTING.as_bytes(), &ctx()).expect("parses");
        let local = parse(without.as_bytes(), &ctx()).expect("parses");
        assert!(local.rejects.is_empty(), "{:?}", local.rejects);
        let a: Vec<_> = exact.points.iter().map(|p| p.ts_ns).collect();
        let b: Vec<_> = local.points.iter().map(|p| p.ts_ns).collect();
        assert_eq!(a, b);
        assert_eq!(local.points[0].ts_resolution, TsResolution::Local);
        // Without a zone such a file cannot be read at all.
        let c = ParseContext { tz: None, ..ctx() };
        assert_eq!(
            parse(without.as_bytes(), &c),
            Err(FormatError::TimeZoneRequired)
        );
        // With TimeNum it can.
        assert!(parse(LISTING.as_bytes(), &c).is_ok());
    }

    #[test]
    fn bad_rows_are_rejected_and_later_rows_still_parse() {
        let csv = concat!(
            "TAG,Type,Value,TIME,TimeNum,Status,Flags\n",
            "A,Float32,1.5,,1710057600,0,\n",         // 2 ok
            "A,Float32,abc,,1710057601,0,\n",         // 3
            "A,Float32,1.5,,yesterday,0,\n",          // 4
            "A,Float32,1.5,,1710057603,x,\n",         // 5
            "A,Float32,1.5,,1710057604,0,Z\n",        // 6
            "A,Float32,1.5\n",                        // 7
            ",Float32,1.5,,1710057605,0,\n",          // 8
            "A,Float32,,,1710057606,-246,\n",         // 9
            "A,Int32,1.5,,1710057607,0,\n",           // 10
            "A,Float32,1.5,32-Mar-24 00:00:00,,0,\n", // 11
            "A,Float32,1.6,,,0,\n",                   // 12 no TimeNum, no TIME
            "A,Float32,,,1710057610,0,\n",            // 13 ok: Null
        );
        let out = parse(csv.as_bytes(), &ctx()).expect("parses");
        let rejects: Vec<_> = out.rejects.iter().map(|r| (r.line, r.reason)).collect();
        assert_eq!(
            rejects,
            vec![
                (3, RejectReason::BadValue),
                (4, RejectReason::BadTimestamp),
                (5, RejectReason::BadQuality),
                (6, RejectReason::BadQuality),
                (7, RejectReason::Malformed),
                (8, RejectReason::MissingField("TAG")),
                (9, RejectReason::MissingField("Value")),
                (10, RejectReason::BadValue),
                (11, RejectReason::BadTimestamp),
                (12, RejectReason::MissingField("TIME")),
            ]
        );
        let got: Vec<_> = out
            .points
            .iter()
            .map(|p| (p.source.line, p.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(Some(2), Value::F64(1.5)), (Some(13), Value::Null)]
        );
        // A row without TimeNum needs the zone.
        let c = ParseContext { tz: None, ..ctx() };
        let out = parse(b"TAG,Value,TIME,TimeNum\nA,1,10-Mar-24 01:00:00,\n", &c).expect("parses");
        assert_eq!(out.rejects[0].reason, RejectReason::MissingField("TimeNum"));
    }

    #[test]
    fn header_problems_are_file_errors() {
        let c = ctx();
        assert_eq!(parse(b"", &c), Err(FormatError::MissingColumn("TAG")));
        assert_eq!(
            parse(b"TAG,Value,Status\n", &c),
            Err(FormatError::MissingColumn("TIME"))
        );
        assert_eq!(
            parse(b"tag,value,timenum,PointID\nA,1,0.5,42\n", &c)
                .map(|o| o.points[0].attrs.clone()),
            Ok(vec![("PointID".into(), "42".into())])
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&b, &ctx());
        }

        #[test]
        fn never_panics_on_arbitrary_rows(rows in prop::collection::vec("[0-9a-zA-Z:. ,\"\n-]{0,80}", 0..20)) {
            let csv = format!("TAG,Type,Value,TIME,TimeNum,Status,Flags,Annot\n{}", rows.join("\n"));
            let out = parse(csv.as_bytes(), &ctx()).expect("the header is valid");
            prop_assert!(out.points.iter().all(|p| p.source.line.is_some_and(|l| l >= 2)));
        }
    }
}
