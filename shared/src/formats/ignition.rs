//! Ignition Tag Historian partition tables (`sqlt_data_{drv}_{yyyy}_{mm}`)
//! exported as CSV.
//!
//! ```text
//! tagid,intvalue,floatvalue,stringvalue,datevalue,dataintegrity,t_stamp
//! 12,,71.532,,,192,1710057600000
//! 14,,,RUNNING,,192,1710057605000
//! ```
//!
//! A data row names its tag only by `tagid`; the tag path and the tag's
//! data type live in the `sqlth_te` table (`id,tagpath,scid,datatype,…`).
//! The sender reads that table's CSV export once, [`parse_tag_table`] turns
//! it into a map, and the map travels in [`ParseContext::tag_table`] (the
//! format cannot be parsed without it). A row whose `tagid` the table does
//! not know is rejected ([`RejectReason::UnknownTag`]): guessing a name
//! would publish data under the wrong tag. Retired `sqlth_te` rows are kept
//! in the map, since older partitions still refer to them.
//!
//! Values: the tag's `datatype` says which column holds the value — 0
//! integer (`intvalue` → `I64`), 1 float (`floatvalue` → `F64`), 2 string
//! (`stringvalue` → `Str`), 3 date (`datevalue`, kept as its text in `Str`:
//! the export's date text has no zone to resolve it with). An empty cell is
//! `Null`, whatever the quality (Ignition stores NULL for a value it did not
//! get). An unknown datatype takes the first non-empty value column in the
//! order above, read as that column's type. Ignition records booleans as
//! integers, so tags listed in [`ParseContext::discrete_tags`] (by tag path)
//! read `0`/`1` as `Bool`.
//!
//! Quality: `dataintegrity` 192 is Good and anything else Bad, as Ignition
//! documents for this column; the number itself is kept as
//! [`NativeQuality::OpcDa`] (or as text if it does not fit 16 bits, as an
//! Ignition 8 32-bit quality code may not). `t_stamp` is epoch milliseconds,
//! UTC, so timestamps are exact. The `tagid` is kept in `attrs` beside any
//! unknown column, since one path can have several ids over its history.

use std::collections::BTreeMap;

use csv::ReaderBuilder;

use super::columns::{self, Columns, Dialect, Row};
use super::{FormatError, ParseContext, ParseOutput, Reject, RejectReason, status};
use crate::record::{
    NativeQuality, Point, PointFlags, SourceRef, SourceSystem, TsResolution, Value,
};

/// Data table columns, in [`Columns`] order.
const KNOWN: [&str; 7] = [
    "tagid",
    "intvalue",
    "floatvalue",
    "stringvalue",
    "datevalue",
    "dataintegrity",
    "t_stamp",
];
const TAG_ID: usize = 0;
const INT_VALUE: usize = 1;
const FLOAT_VALUE: usize = 2;
const STRING_VALUE: usize = 3;
const DATE_VALUE: usize = 4;
const DATA_INTEGRITY: usize = 5;
const T_STAMP: usize = 6;
/// The value columns are optional: a missing one reads as empty.
const REQUIRED: [usize; 3] = [TAG_ID, DATA_INTEGRITY, T_STAMP];

/// `sqlth_te` columns the parser needs.
const TABLE_KNOWN: [&str; 3] = ["id", "tagpath", "datatype"];

/// Ignition `dataintegrity` for Good.
const GOOD: i64 = 192;

/// Ignition data types (`sqlth_te.datatype`).
const DATATYPE_INT: i32 = 0;
const DATATYPE_FLOAT: i32 = 1;
const DATATYPE_STRING: i32 = 2;
const DATATYPE_DATE: i32 = 3;

/// Read an `sqlth_te` CSV export into `id → (tag path, datatype)`.
///
/// The table is configuration rather than data, so any unreadable row, an
/// empty path or an id named twice fails the whole table.
pub fn parse_tag_table(bytes: &[u8]) -> Result<BTreeMap<i64, (String, i32)>, FormatError> {
    let mut reader = ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let header = reader
        .byte_headers()
        .map_err(|_| FormatError::Shape("unreadable tag table header"))?
        .clone();
    columns::check_header(&reader, &header, bytes, Dialect::CSV)?;
    let columns = Columns::from_header(&header, &TABLE_KNOWN, &TABLE_KNOWN, &[0, 1, 2])?;
    let mut table = BTreeMap::new();
    let mut out = ParseOutput::default();
    columns::for_each_record(
        &mut reader,
        bytes,
        Dialect::CSV,
        &mut out,
        |record, _, _| {
            let unreadable = FormatError::Shape("unreadable tag table row");
            let row = columns.row(record).map_err(|_| unreadable)?;
            let id = row
                .required(0)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or(unreadable)?;
            let path = row.required(1).map_err(|_| unreadable)?;
            let datatype = row
                .required(2)
                .ok()
                .and_then(|t| t.parse::<i32>().ok())
                .ok_or(unreadable)?;
            if table.insert(id, (path.to_owned(), datatype)).is_some() {
                return Err(FormatError::Shape("tag table names an id twice"));
            }
            Ok(())
        },
    )?;
    match out.rejects.first() {
        None => Ok(table),
        Some(&Reject {
            line,
            reason: RejectReason::Truncated,
        }) => Err(FormatError::Truncated { line }),
        Some(_) => Err(FormatError::Shape("unreadable tag table row")),
    }
}

/// Parse an Ignition `sqlt_data` CSV export.
pub fn parse(bytes: &[u8], ctx: &ParseContext) -> Result<ParseOutput, FormatError> {
    let table = ctx
        .tag_table
        .as_deref()
        .ok_or(FormatError::TagTableRequired)?;
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
    let mut out = ParseOutput::default();
    columns::for_each_record(
        &mut reader,
        bytes,
        Dialect::CSV,
        &mut out,
        |record, line, out| {
            let point = columns
                .row(record)
                .and_then(|row| parse_row(&row, table, ctx, line));
            columns::push(out, line, point);
            Ok(())
        },
    )?;
    Ok(out)
}

fn parse_row(
    row: &Row<'_>,
    table: &BTreeMap<i64, (String, i32)>,
    ctx: &ParseContext,
    line: u64,
) -> Result<Point, RejectReason> {
    let tag_id: i64 = row
        .required(TAG_ID)?
        .parse()
        .map_err(|_| RejectReason::Malformed)?;
    let (path, datatype) = table.get(&tag_id).ok_or(RejectReason::UnknownTag)?;
    let ts_ms: i64 = row
        .required(T_STAMP)?
        .parse()
        .map_err(|_| RejectReason::BadTimestamp)?;
    let ts_ns = ts_ms
        .checked_mul(1_000_000)
        .ok_or(RejectReason::BadTimestamp)?;
    let integrity: i64 = row
        .required(DATA_INTEGRITY)?
        .parse()
        .map_err(|_| RejectReason::BadQuality)?;
    let native_quality = u16::try_from(integrity).map_or_else(
        |_| NativeQuality::Text(integrity.to_string()),
        NativeQuality::OpcDa,
    );
    let status = if integrity == GOOD {
        status::GOOD
    } else {
        status::BAD
    };
    let value = parse_value(row, *datatype, ctx.discrete_tags.contains(path))?;
    let mut attrs = vec![("tagid".to_owned(), tag_id.to_string())];
    attrs.extend(row.extras()?);
    Ok(Point {
        seq: 0,
        tag: path.clone(),
        ts_ns,
        value,
        status,
        native_quality,
        unit: None,
        source: SourceRef {
            system: SourceSystem::Ignition,
            file: ctx.file.clone(),
            line: Some(line),
        },
        ts_raw: None,
        ts_resolution: TsResolution::Exact,
        flags: PointFlags::default(),
        attrs,
    })
}

/// The value from the column `datatype` names.
fn parse_value(row: &Row<'_>, datatype: i32, discrete: bool) -> Result<Value, RejectReason> {
    let column = match datatype {
        DATATYPE_INT => INT_VALUE,
        DATATYPE_FLOAT => FLOAT_VALUE,
        DATATYPE_STRING => STRING_VALUE,
        DATATYPE_DATE => DATE_VALUE,
        _ => {
            // Unknown type: the first filled value column decides.
            let mut filled = None;
            for k in [INT_VALUE, FLOAT_VALUE, STRING_VALUE, DATE_VALUE] {
                if row.text(k)?.is_some() {
                    filled = Some(k);
                    break;
                }
            }
            match filled {
                Some(k) => k,
                None => return Ok(Value::Null),
            }
        }
    };
    let Some(text) = row.text(column)? else {
        return Ok(Value::Null);
    };
    match column {
        INT_VALUE if discrete => match text {
            "0" => Ok(Value::Bool(false)),
            "1" => Ok(Value::Bool(true)),
            _ => Err(RejectReason::BadValue),
        },
        INT_VALUE => text
            .parse()
            .map(Value::I64)
            .map_err(|_| RejectReason::BadValue),
        FLOAT_VALUE => text
            .parse()
            .map(Value::F64)
            .map_err(|_| RejectReason::BadValue),
        // Strings keep their blanks: only emptiness was tested trimmed.
        STRING_VALUE => Ok(Value::Str(
            row.raw(STRING_VALUE)?.unwrap_or(text).to_owned(),
        )),
        _ => Ok(Value::Str(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Format;
    use proptest::prelude::*;
    use std::sync::Arc;

    const SAMPLE: &[u8] =
        include_bytes!("../../../tests/fixtures/ignition_sqlt_data_1_2024_03.csv");
    const TAGS: &[u8] = include_bytes!("../../../tests/fixtures/ignition_sqlth_te.csv");
    const HEADER: &str = "tagid,intvalue,floatvalue,stringvalue,datevalue,dataintegrity,t_stamp\n";

    fn ctx() -> ParseContext {
        ParseContext {
            file: Some("ignition_sqlt_data_1_2024_03.csv".into()),
            tag_table: Some(Arc::new(parse_tag_table(TAGS).expect("tag table"))),
            ..ParseContext::default()
        }
    }

    #[test]
    fn a_cut_last_row_or_header_is_truncated_never_a_point() {
        crate::formats::assert_cut_last_line_is_never_a_point(
            Format::Ignition,
            SAMPLE,
            &ctx(),
            true,
        );
    }

    #[test]
    fn a_cut_tag_table_is_refused_whole() {
        let lines = crate::formats::line_at(TAGS, 0, 0, TAGS.len());
        let last_start = TAGS[..TAGS.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .expect("rows")
            + 1;
        // A cut path (`[default]Line2/TT_1` of `…/TT_101`) would name
        // every point of that id wrongly.
        for cut in last_start + 1..TAGS.len() {
            assert_eq!(
                parse_tag_table(&TAGS[..cut]),
                Err(FormatError::Truncated { line: lines }),
                "cut at {cut}"
            );
        }
        assert_eq!(
            parse_tag_table(b"id,tagpath,data"),
            Err(FormatError::Truncated { line: 1 })
        );
        assert!(parse_tag_table(&TAGS[..last_start]).is_ok());
    }

    #[test]
    fn tag_table_reads_the_sample() {
        let table = parse_tag_table(TAGS).expect("parses");
        assert_eq!(table.len(), 3);
        assert_eq!(table.get(&12), Some(&("line2/tt101".to_owned(), 1)));
        assert_eq!(table.get(&13), Some(&("line2/pump7/running".to_owned(), 0)));
        assert_eq!(table.get(&14), Some(&("line2/batch/state".to_owned(), 2)));
    }

    #[test]
    fn tag_table_problems_fail_the_table() {
        assert_eq!(
            parse_tag_table(b"id,tagpath\n1,a\n"),
            Err(FormatError::MissingColumn("datatype"))
        );
        assert_eq!(
            parse_tag_table(b"id,tagpath,datatype\n1,a,1\n1,b,1\n"),
            Err(FormatError::Shape("tag table names an id twice"))
        );
        for bad in ["x,a,1\n", "1,,1\n", "1,a,float\n", "1,a\n"] {
            let table = format!("id,tagpath,datatype\n{bad}");
            assert_eq!(
                parse_tag_table(table.as_bytes()),
                Err(FormatError::Shape("unreadable tag table row")),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_tag_table(b"ID,TagPath,DataType\n"),
            Ok(BTreeMap::new())
        );
    }

    #[test]
    fn sample_matches_expected() {
        let out = Format::Ignition.parse(SAMPLE, &ctx()).expect("parses");
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let p = &out.points;
        assert_eq!(p.len(), 8);

        // tagid 12: 71.532 five times, one minute apart, all Good.
        for (i, point) in p.iter().take(5).enumerate() {
            assert_eq!(point.tag, "line2/tt101");
            assert_eq!(point.value, Value::F64(71.532));
            assert_eq!(point.status, status::GOOD);
            assert_eq!(point.native_quality, NativeQuality::OpcDa(192));
            let minutes = i64::try_from(i).expect("small");
            assert_eq!(point.ts_ns, (1_710_057_600 + 60 * minutes) * 1_000_000_000);
            assert_eq!(point.ts_resolution, TsResolution::Exact);
            assert_eq!(
                point.source.line,
                Some(u64::try_from(i).expect("small") + 2)
            );
        }
        // 2024-03-10T08:00:00Z.
        assert_eq!(p[0].ts_ns, 1_710_057_600_000_000_000);
        assert_eq!(
            p[0].source,
            SourceRef {
                system: SourceSystem::Ignition,
                file: Some("ignition_sqlt_data_1_2024_03.csv".into()),
                line: Some(2)
            }
        );
        assert_eq!(p[0].attrs, vec![("tagid".into(), "12".into())]);

        // tagid 13: datatype 0, intvalue 1.
        assert_eq!(p[5].tag, "line2/pump7/running");
        assert_eq!(p[5].value, Value::I64(1));
        assert_eq!(p[5].status, status::GOOD);

        // tagid 14: datatype 2, stringvalue RUNNING.
        assert_eq!(p[6].tag, "line2/batch/state");
        assert_eq!(p[6].value, Value::Str("RUNNING".into()));
        assert_eq!(p[6].ts_ns, 1_710_057_605_000_000_000);

        // Last row: dataintegrity 0, no value → Bad, Null.
        assert_eq!(p[7].tag, "line2/tt101");
        assert_eq!(p[7].value, Value::Null);
        assert_eq!(p[7].status, 0x8000_0000);
        assert_eq!(p[7].native_quality, NativeQuality::OpcDa(0));
        assert_eq!(p[7].source.line, Some(9));
    }

    #[test]
    fn discrete_tags_read_int_as_bool() {
        let mut c = ctx();
        c.discrete_tags.insert("line2/pump7/running".into());
        let out = parse(SAMPLE, &c).expect("parses");
        assert_eq!(out.points[5].value, Value::Bool(true));
    }

    #[test]
    fn a_tag_table_is_required() {
        let c = ParseContext {
            tag_table: None,
            ..ctx()
        };
        assert_eq!(parse(SAMPLE, &c), Err(FormatError::TagTableRequired));
    }

    #[test]
    fn bad_rows_are_rejected_and_later_rows_still_parse() {
        let csv = format!(
            "{HEADER}{}",
            concat!(
                "12,,1.5,,,192,1710057600000\n",       // 2 ok
                "99,,1.5,,,192,1710057600000\n",       // 3 unknown tag
                "12,,abc,,,192,1710057600000\n",       // 4
                "12,,1.5,,,good,1710057600000\n",      // 5
                "12,,1.5,,,192,yesterday\n",           // 6
                "12,,1.5,,,192\n",                     // 7
                ",,1.5,,,192,1710057600000\n",         // 8
                "13,1.5,,,,192,1710057600000\n",       // 9 int tag, float text
                "12,,1.5,,,192,9223372036854775\n",    // 10 beyond i64 ns
                "14,,,,,-2147483136,1710057660000\n",  // 11 ok: Ignition 8 Bad
                "12,,1.6,,,192,1710057720000,extra\n", // 12
                "12,,1.7,,,64,1710057780000\n",        // 13 ok: not 192 → Bad
            )
        );
        let out = parse(csv.as_bytes(), &ctx()).expect("parses");
        let rejects: Vec<_> = out.rejects.iter().map(|r| (r.line, r.reason)).collect();
        assert_eq!(
            rejects,
            vec![
                (3, RejectReason::UnknownTag),
                (4, RejectReason::BadValue),
                (5, RejectReason::BadQuality),
                (6, RejectReason::BadTimestamp),
                (7, RejectReason::Malformed),
                (8, RejectReason::MissingField("tagid")),
                (9, RejectReason::BadValue),
                (10, RejectReason::BadTimestamp),
                (12, RejectReason::Malformed),
            ]
        );
        let lines: Vec<_> = out.points.iter().map(|p| p.source.line).collect();
        assert_eq!(lines, vec![Some(2), Some(11), Some(13)]);
        assert_eq!(out.points[1].value, Value::Null);
        assert_eq!(out.points[1].status, status::BAD);
        assert_eq!(
            out.points[1].native_quality,
            NativeQuality::Text("-2147483136".into())
        );
        assert_eq!(out.points[2].status, status::BAD);
        assert_eq!(out.points[2].native_quality, NativeQuality::OpcDa(64));
    }

    #[test]
    fn datatypes_pick_their_column_and_extras_are_kept() {
        let table: BTreeMap<i64, (String, i32)> = [
            (1, ("d".to_owned(), 3)),
            (2, ("u".to_owned(), 7)),
            (3, ("s".to_owned(), 2)),
        ]
        .into_iter()
        .collect();
        let c = ParseContext {
            tag_table: Some(Arc::new(table)),
            ..ParseContext::default()
        };
        let csv = "T_STAMP,tagid,dataintegrity,datevalue,floatvalue,stringvalue,intvalue,note\n\
                   1,1,192,2024-03-10 08:00:00,,,,a\n\
                   2,2,192,,2.5,,,\n\
                   3,2,192,,,,,\n\
                   4,3,192,,,\" padded \",,\n";
        let out = parse(csv.as_bytes(), &c).expect("parses");
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let values: Vec<_> = out.points.iter().map(|p| p.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                Value::Str("2024-03-10 08:00:00".into()),
                Value::F64(2.5),
                Value::Null,
                Value::Str(" padded ".into()),
            ]
        );
        assert_eq!(
            out.points[0].attrs,
            vec![("tagid".into(), "1".into()), ("note".into(), "a".into())]
        );
        assert_eq!(out.points[0].ts_ns, 1_000_000);
    }

    #[test]
    fn header_problems_are_file_errors() {
        let c = ctx();
        assert_eq!(parse(b"", &c), Err(FormatError::MissingColumn("tagid")));
        assert_eq!(
            parse(b"tagid,floatvalue,t_stamp\n", &c),
            Err(FormatError::MissingColumn("dataintegrity"))
        );
        assert_eq!(
            parse(format!("\u{feff}{HEADER}").as_bytes(), &c),
            Ok(ParseOutput::default())
        );
        assert_eq!(
            parse(b"tagid,TagID,dataintegrity,t_stamp\n", &c),
            Err(FormatError::DuplicateColumn("tagid"))
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&b, &ctx());
            let _ = parse_tag_table(&b);
        }

        #[test]
        fn never_panics_on_arbitrary_rows(rows in prop::collection::vec("[0-9a-zA-Z:. ,\"\n-]{0,80}", 0..20)) {
            let csv = format!("{HEADER}{}", rows.join("\n"));
            let out = parse(csv.as_bytes(), &ctx()).expect("the header is valid");
            prop_assert!(out.points.iter().all(|p| p.source.line.is_some_and(|l| l >= 2)));
        }
    }
}
