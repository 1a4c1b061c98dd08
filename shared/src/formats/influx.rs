//! InfluxDB line protocol.
//!
//! ```text
//! # historian bridge output, precision=ns
//! process,site=plant1,tag=FIC101.PV value=42.17,quality=192i 1710057600000000000
//! process,site=plant1,tag=TT\ 205.PV value=88.4,quality=64i,units="degC" 1710057602000000000
//! ```
//!
//! One line is one record: `measurement[,tag=v…] field=v[,field=v…] [timestamp]`.
//! Lines starting with `#` and blank lines are skipped. A last line
//! without its newline is never parsed: the export was cut off, and a cut
//! timestamp (`1764000` for `1764000000000000000`) would still read as
//! one; it is rejected as `Truncated`. Escapes follow the
//! InfluxDB reference: in the measurement, tag keys, tag values and field
//! keys a backslash before a space, comma, `=` or backslash stands for that
//! character (any other backslash is literal); in a string field value
//! `\"` and `\\` stand for `"` and `\`. Field values are floats (`1`,
//! `-1.5e3`), integers (`1i` → `I64`), unsigned integers (`1u` → `U64`),
//! strings (`"x"` → `Str`) or booleans (`t`/`T`/`true`/`True`/`TRUE` and
//! the `f` forms → `Bool`).
//!
//! The protocol has no quality and a diode must never invent data, so:
//!
//! - A line without a timestamp is rejected (`MissingField("timestamp")`):
//!   a writer's ingest time is not the sample's time. Timestamps are read as
//!   nanoseconds, the protocol's default precision.
//! - A float that is not a finite number (`NaN`, `inf`, `1e999`) is
//!   rejected (`BadValue`): the protocol cannot express it, so the line was
//!   not written by a conforming writer.
//! - Quality follows the `quality=192i` convention: a number up to 255 is an
//!   OPC DA byte (→ [`opc_da_to_status`](super::opc_da_to_status), native
//!   `OpcDa`), a larger one an OPC UA StatusCode (native `OpcUa`), and the
//!   text `Good`/`Bad`/`Uncertain` reads as that (native `Text`). No
//!   quality field is Good with native `None`.
//!
//! **Which fields become points.** The fields `quality`, `units` and `unit`
//! describe the sample; every other field is a value, and each value field
//! becomes one point (so nothing on a line is dropped). The point's tag:
//!
//! - With a `tag` tag-key (`tag=FIC101.PV`): the fields `value`, `state` and
//!   `text` are *the* value of that tag and the point is named by it alone
//!   (`FIC101.PV`); any other field `f` is named `FIC101.PV.f`. A line with
//!   more than one of `value`/`state`/`text` would give one tag two values
//!   at one instant, and is rejected (`Malformed`).
//! - Without one: `measurement.field` (`process.value`).
//!
//! A tag name never depends on what else is on its line. `units`/`unit`
//! (string field or tag) is the unit. The measurement, every other tag and
//! the field key go to `attrs` as `_measurement`, the tag keys, and
//! `_field` (the names InfluxDB's own query language uses), so a point can
//! be written back as the line it came from.

use super::{
    FormatError, ParseContext, ParseOutput, Reject, RejectReason, numeric_quality, status,
    text_quality_status, unterminated_tail,
};
use crate::record::{
    NativeQuality, Point, PointFlags, SourceRef, SourceSystem, TsResolution, Value,
};

/// Field keys that describe the sample instead of being a value.
const QUALITY: &str = "quality";
const UNIT_KEYS: [&str; 2] = ["units", "unit"];
/// Field keys that are the value of the tag named by the `tag` tag-key.
const PRIMARY: [&str; 3] = ["value", "state", "text"];
/// The tag key that names the point.
const TAG_KEY: &str = "tag";

/// Parse InfluxDB line protocol.
pub fn parse(bytes: &[u8], ctx: &ParseContext) -> Result<ParseOutput, FormatError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = ParseOutput::default();
    // A last line without its newline was cut off (module docs of
    // `formats`): `… 1764000` may be the start of a longer timestamp.
    let tail = unterminated_tail(bytes);
    let complete = tail.map_or(bytes, |(start, _)| bytes.get(..start).unwrap_or_default());
    for (index, raw) in complete.split(|&b| b == b'\n').enumerate() {
        let line = index as u64 + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(text) = std::str::from_utf8(raw) else {
            out.rejects.push(Reject {
                line,
                reason: RejectReason::NotUtf8,
            });
            continue;
        };
        let text = text.trim_start();
        if text.trim_end().is_empty() || text.starts_with('#') {
            continue;
        }
        match parse_line(text, ctx, line) {
            Ok(points) => out.points.extend(points),
            Err(reason) => out.rejects.push(Reject { line, reason }),
        }
    }
    if let Some((start, line)) = tail {
        // A comment carries no record, cut or not.
        let comment = bytes
            .get(start..)
            .unwrap_or_default()
            .trim_ascii_start()
            .starts_with(b"#");
        if !comment {
            out.rejects.push(Reject {
                line,
                reason: RejectReason::Truncated,
            });
        }
    }
    Ok(out)
}

/// A field value as written.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    Float(f64),
    Int(i64),
    UInt(u64),
    Str(String),
    Bool(bool),
}

/// One line, split and unescaped.
struct Line {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, Field)>,
    timestamp: Option<i64>,
}

fn parse_line(text: &str, ctx: &ParseContext, line: u64) -> Result<Vec<Point>, RejectReason> {
    let parsed = split_line(text)?;
    let ts_ns = parsed
        .timestamp
        .ok_or(RejectReason::MissingField("timestamp"))?;

    let mut name = None;
    let mut unit = None;
    let mut attrs = vec![("_measurement".to_owned(), parsed.measurement.clone())];
    for (key, value) in parsed.tags {
        if key == TAG_KEY {
            name = Some(value);
        } else if UNIT_KEYS.contains(&key.as_str()) {
            unit = Some(value);
        } else {
            attrs.push((key, value));
        }
    }

    let (mut status, mut native_quality) = (status::GOOD, NativeQuality::None);
    let mut values = Vec::new();
    for (key, field) in parsed.fields {
        if key == QUALITY {
            (status, native_quality) = quality(field)?;
        } else if UNIT_KEYS.contains(&key.as_str()) {
            match field {
                Field::Str(s) => unit = Some(s),
                _ => return Err(RejectReason::BadValue),
            }
        } else {
            values.push((key, field));
        }
    }
    if values.is_empty() {
        return Err(RejectReason::MissingField("value"));
    }
    if name.is_some()
        && values
            .iter()
            .filter(|(k, _)| PRIMARY.contains(&k.as_str()))
            .count()
            > 1
    {
        return Err(RejectReason::Malformed);
    }

    Ok(values
        .into_iter()
        .map(|(key, field)| {
            let tag = match &name {
                Some(n) if PRIMARY.contains(&key.as_str()) => n.clone(),
                Some(n) => format!("{n}.{key}"),
                None => format!("{}.{key}", parsed.measurement),
            };
            let mut attrs = attrs.clone();
            attrs.push(("_field".to_owned(), key));
            Point {
                seq: 0,
                tag,
                ts_ns,
                value: match field {
                    Field::Float(f) => Value::F64(f),
                    Field::Int(i) => Value::I64(i),
                    Field::UInt(u) => Value::U64(u),
                    Field::Str(s) => Value::Str(s),
                    Field::Bool(b) => Value::Bool(b),
                },
                status,
                native_quality: native_quality.clone(),
                unit: unit.clone(),
                source: SourceRef {
                    system: SourceSystem::InfluxLp,
                    file: ctx.file.clone(),
                    line: Some(line),
                },
                ts_raw: None,
                ts_resolution: TsResolution::Exact,
                flags: PointFlags::default(),
                attrs,
            }
        })
        .collect())
}

/// The `quality` field to (StatusCode, native quality).
fn quality(field: Field) -> Result<(u32, NativeQuality), RejectReason> {
    let number = match field {
        Field::Int(i) => u64::try_from(i).ok(),
        Field::UInt(u) => Some(u),
        // An untyped `quality=192` is a float in the protocol.
        Field::Float(f) => whole_number(f),
        Field::Str(s) => {
            return text_quality_status(&s)
                .map(|code| (code, NativeQuality::Text(s)))
                .ok_or(RejectReason::BadQuality);
        }
        Field::Bool(_) => None,
    };
    number
        .and_then(numeric_quality)
        .ok_or(RejectReason::BadQuality)
}

/// `f` as an integer, if it is a whole number in `0..=u32::MAX`.
#[expect(
    clippy::cast_sign_loss,
    reason = "checked to be a non-negative whole number in u32 range"
)]
fn whole_number(f: f64) -> Option<u64> {
    ((0.0..=f64::from(u32::MAX)).contains(&f) && f.fract() == 0.0).then_some(f as u64)
}

/// Split a line into its parts; structural problems are `Malformed`,
/// unreadable field values `BadValue`, an unreadable timestamp
/// `BadTimestamp`.
fn split_line(text: &str) -> Result<Line, RejectReason> {
    let mut cur = Cursor { text, pos: 0 };
    let measurement = cur.key(&[',', ' '])?;
    let mut tags = Vec::new();
    while cur.eat(',') {
        let key = cur.key(&['='])?;
        if !cur.eat('=') {
            return Err(RejectReason::Malformed);
        }
        let value = cur.key(&[',', ' '])?;
        tags.push((key, value));
    }
    if !cur.skip_spaces() {
        return Err(RejectReason::Malformed);
    }
    let mut fields: Vec<(String, Field)> = Vec::new();
    loop {
        let key = cur.key(&['='])?;
        if !cur.eat('=') {
            return Err(RejectReason::Malformed);
        }
        let value = cur.field_value()?;
        if fields.iter().any(|(k, _)| *k == key) {
            return Err(RejectReason::Malformed);
        }
        fields.push((key, value));
        if !cur.eat(',') {
            break;
        }
    }
    let timestamp = if cur.skip_spaces() && !cur.rest().trim_end().is_empty() {
        let token = cur.token();
        Some(parse_timestamp(token)?)
    } else {
        None
    };
    if !cur.rest().trim_end().is_empty() {
        return Err(RejectReason::Malformed);
    }
    Ok(Line {
        measurement,
        tags,
        fields,
        timestamp,
    })
}

/// A timestamp: a signed integer count of nanoseconds.
fn parse_timestamp(token: &str) -> Result<i64, RejectReason> {
    let digits = token.strip_prefix('-').unwrap_or(token);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RejectReason::BadTimestamp);
    }
    token.parse().map_err(|_| RejectReason::BadTimestamp)
}

/// A field value that is not a string.
fn parse_scalar(token: &str) -> Result<Field, RejectReason> {
    match token {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Field::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Field::Bool(false)),
        _ => {}
    }
    if let Some(int) = token.strip_suffix('i') {
        return int
            .parse()
            .map(Field::Int)
            .map_err(|_| RejectReason::BadValue);
    }
    if let Some(uint) = token.strip_suffix('u') {
        return uint
            .parse()
            .map(Field::UInt)
            .map_err(|_| RejectReason::BadValue);
    }
    // Only the characters of a decimal float: this keeps out the `NaN`,
    // `inf` and `infinity` spellings Rust's parser would accept.
    let numeric = token
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !numeric || !token.bytes().any(|b| b.is_ascii_digit()) {
        return Err(RejectReason::BadValue);
    }
    match token.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Field::Float(f)),
        _ => Err(RejectReason::BadValue),
    }
}

/// A position in one line.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(c);
        if hit {
            self.pos += c.len_utf8();
        }
        hit
    }

    /// Skip one or more spaces; `false` if there was none.
    fn skip_spaces(&mut self) -> bool {
        let start = self.pos;
        while self.eat(' ') {}
        self.pos > start
    }

    /// Up to the next space or the end, unescaped.
    fn token(&mut self) -> &'a str {
        let rest = self.rest();
        let len = rest.find(' ').unwrap_or(rest.len());
        self.pos += len;
        rest.get(..len).unwrap_or("")
    }

    /// A measurement, tag key, tag value or field key: up to an unescaped
    /// character in `stops` (or a space, which always ends it), with the
    /// escapes `\ ` `\,` `\=` `\\` resolved. Empty is `Malformed`.
    fn key(&mut self, stops: &[char]) -> Result<String, RejectReason> {
        let mut out = String::new();
        let mut chars = self.rest().char_indices().peekable();
        let mut used = self.rest().len();
        while let Some((i, c)) = chars.next() {
            if c == '\\' {
                match chars.peek() {
                    Some(&(_, next)) if matches!(next, ' ' | ',' | '=' | '\\') => {
                        out.push(next);
                        chars.next();
                    }
                    _ => out.push('\\'),
                }
            } else if c == ' ' || stops.contains(&c) {
                used = i;
                break;
            } else {
                out.push(c);
            }
        }
        self.pos += used;
        if out.is_empty() {
            return Err(RejectReason::Malformed);
        }
        Ok(out)
    }

    /// A field value: a quoted string (escapes `\"` and `\\`) or a scalar up
    /// to the next `,` or space.
    fn field_value(&mut self) -> Result<Field, RejectReason> {
        if !self.eat('"') {
            let rest = self.rest();
            let len = rest.find([',', ' ']).unwrap_or(rest.len());
            self.pos += len;
            return parse_scalar(rest.get(..len).unwrap_or(""));
        }
        let mut out = String::new();
        let mut chars = self.rest().char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.peek() {
                    Some(&(_, next)) if matches!(next, '"' | '\\') => {
                        out.push(next);
                        chars.next();
                    }
                    _ => out.push('\\'),
                },
                '"' => {
                    self.pos += i + 1;
                    return Ok(Field::Str(out));
                }
                _ => out.push(c),
            }
        }
        // No closing quote.
        Err(RejectReason::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Format;
    use proptest::prelude::*;

    const SAMPLE: &[u8] = include_bytes!("../../../tests/fixtures/influx_lp.txt");
    /// The sample's first six lines: its last line is a point.
    const SAMPLE_HEAD: &str = concat!(
        "# historian bridge output, precision=ns\n",
        "process,site=plant1,tag=FIC101.PV value=42.17,quality=192i 1710057600000000000\n",
        "process,site=plant1,tag=TT\\ 205.PV value=88.4,quality=64i,units=\"degC\" 1710057602000000000\n",
    );

    fn ctx() -> ParseContext {
        ParseContext {
            file: Some("influx_lp.txt".into()),
            ..ParseContext::default()
        }
    }

    fn one(line: &str) -> Result<Vec<Point>, RejectReason> {
        let out = parse(format!("{line}\n").as_bytes(), &ctx()).expect("never a file error");
        match out.rejects.first() {
            Some(r) => Err(r.reason),
            None => Ok(out.points),
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn sample_matches_expected() {
        let out = Format::InfluxLp.parse(SAMPLE, &ctx()).expect("parses");
        let p = &out.points;
        assert_eq!(p.len(), 5, "{out:#?}");
        // Line 1 is a comment; lines 2-6 are points.
        let lines: Vec<_> = p.iter().map(|pt| pt.source.line).collect();
        assert_eq!(lines, (2..=6).map(Some).collect::<Vec<_>>());

        assert_eq!(p[0].tag, "FIC101.PV");
        assert_eq!(p[0].ts_ns, 1_710_057_600_000_000_000);
        assert_eq!(p[0].value, Value::F64(42.17));
        assert_eq!(p[0].status, status::GOOD);
        assert_eq!(p[0].native_quality, NativeQuality::OpcDa(192));
        assert_eq!(p[0].ts_resolution, TsResolution::Exact);
        assert_eq!(
            p[0].attrs,
            attrs(&[
                ("_measurement", "process"),
                ("site", "plant1"),
                ("area", "utilities"),
                ("_field", "value"),
            ])
        );
        assert_eq!(
            p[0].source,
            SourceRef {
                system: SourceSystem::InfluxLp,
                file: Some("influx_lp.txt".into()),
                line: Some(2)
            }
        );
        assert_eq!(p[1].value, Value::F64(42.31));

        // `TT\ 205.PV` unescapes; 64i is Uncertain; units is the unit.
        assert_eq!(p[2].tag, "TT 205.PV");
        assert_eq!(p[2].value, Value::F64(88.4));
        assert_eq!(p[2].status, 0x4000_0000);
        assert_eq!(p[2].native_quality, NativeQuality::OpcDa(64));
        assert_eq!(p[2].unit.as_deref(), Some("degC"));
        assert_eq!(p[2].ts_ns, 1_710_057_602_000_000_000);

        assert_eq!(p[3].tag, "PUMP7.Running");
        assert_eq!(p[3].value, Value::Bool(true));
        assert_eq!(p[3].status, status::GOOD);
        assert_eq!(p[4].tag, "BATCH.ID");
        assert_eq!(p[4].value, Value::Str("B-2024-03-10-07".into()));

        // Line 7: no timestamp; line 8: NaN.
        assert_eq!(
            out.rejects,
            vec![
                Reject {
                    line: 7,
                    reason: RejectReason::MissingField("timestamp")
                },
                Reject {
                    line: 8,
                    reason: RejectReason::BadValue
                },
            ]
        );
    }

    #[test]
    fn bad_lines_are_rejected_and_later_lines_still_parse() {
        let text = concat!(
            "m value=1 1\n",                      // 1 ok
            "m value=abc 2\n",                    // 2
            "m value=1 yesterday\n",              // 3
            "m 3\n",                              // 4
            "m,tag value=1 4\n",                  // 5
            "m value=\"open 5\n",                 // 6
            "m value=1 6 7\n",                    // 7
            "m value=inf 8\n",                    // 8
            "m value=1e999 9\n",                  // 9
            "m value=1,value=2 10\n",             // 10
            "m quality=192i 11\n",                // 11
            "m,tag=T value=1,state=t 12\n",       // 12
            "m value=1,quality=300.5 13\n",       // 13
            "m value=1,quality=-1i 14\n",         // 14
            "m value=1,units=3 15\n",             // 15
            "m value=99999999999999999999i 16\n", // 16
        );
        let mut bytes = text.as_bytes().to_vec();
        bytes.extend_from_slice(b"m value=\"\xff\" 17\r\n"); // 17
        bytes.extend_from_slice(b"  m value=2 18\r\n"); // 18 ok
        let out = parse(&bytes, &ctx()).expect("parses");
        let rejects: Vec<_> = out.rejects.iter().map(|r| (r.line, r.reason)).collect();
        assert_eq!(
            rejects,
            vec![
                (2, RejectReason::BadValue),
                (3, RejectReason::BadTimestamp),
                (4, RejectReason::Malformed),
                (5, RejectReason::Malformed),
                (6, RejectReason::Malformed),
                (7, RejectReason::Malformed),
                (8, RejectReason::BadValue),
                (9, RejectReason::BadValue),
                (10, RejectReason::Malformed),
                (11, RejectReason::MissingField("value")),
                (12, RejectReason::Malformed),
                (13, RejectReason::BadQuality),
                (14, RejectReason::BadQuality),
                (15, RejectReason::BadValue),
                (16, RejectReason::BadValue),
                (17, RejectReason::NotUtf8),
            ]
        );
        let got: Vec<_> = out
            .points
            .iter()
            .map(|p| (p.source.line, p.tag.as_str(), p.value.clone(), p.ts_ns))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(1), "m.value", Value::F64(1.0), 1),
                (Some(18), "m.value", Value::F64(2.0), 18),
            ]
        );
    }

    #[test]
    fn field_types_and_string_escapes() {
        let p = one(r#"m i=-3i,u=7u,f=-1.5e3,s="a \"q\" \\ b\n",b=F,t=TRUE -5"#).expect("parses");
        let values: Vec<_> = p
            .iter()
            .map(|pt| (pt.tag.as_str(), pt.value.clone()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("m.i", Value::I64(-3)),
                ("m.u", Value::U64(7)),
                ("m.f", Value::F64(-1500.0)),
                ("m.s", Value::Str(r#"a "q" \ b\n"#.into())),
                ("m.b", Value::Bool(false)),
                ("m.t", Value::Bool(true)),
            ]
        );
        assert!(
            p.iter()
                .all(|pt| pt.ts_ns == -5 && pt.status == status::GOOD)
        );
        assert!(p.iter().all(|pt| pt.native_quality == NativeQuality::None));
        // A string with spaces and commas does not end the field set.
        let p = one(r#"m s="x, y z",n=1 9"#).expect("parses");
        assert_eq!(p[0].value, Value::Str("x, y z".into()));
        assert_eq!(p[1].value, Value::F64(1.0));
    }

    #[test]
    fn key_escapes() {
        let p = one(r"my\ meas,k\=1=v\,2,tag=a\\b\x c\=d=1 7").expect("parses");
        assert_eq!(p[0].tag, r"a\b\x.c=d");
        assert_eq!(
            p[0].attrs,
            attrs(&[
                ("_measurement", "my meas"),
                ("k=1", "v,2"),
                ("_field", "c=d")
            ])
        );
        let p = one(r"my\ meas,k=v c=1 7").expect("parses");
        assert_eq!(p[0].tag, "my meas.c");
    }

    #[test]
    fn naming_with_and_without_a_tag_key() {
        let p = one("m,tag=T,units=bar value=1,hi=2,quality=\"Bad\" 1").expect("parses");
        let names: Vec<_> = p.iter().map(|pt| pt.tag.as_str()).collect();
        assert_eq!(names, vec!["T", "T.hi"]);
        assert!(p.iter().all(|pt| pt.unit.as_deref() == Some("bar")));
        assert!(p.iter().all(|pt| pt.status == status::BAD));
        assert!(
            p.iter()
                .all(|pt| pt.native_quality == NativeQuality::Text("Bad".into()))
        );
        let p = one("m value=1,quality=1083179008u 1").expect("parses");
        assert_eq!(p[0].status, 0x4090_0000);
        assert_eq!(p[0].native_quality, NativeQuality::OpcUa(0x4090_0000));
        let p = one("m value=1,quality=192 1").expect("parses");
        assert_eq!(p[0].native_quality, NativeQuality::OpcDa(192));
    }

    /// The field report: the last line cut inside its timestamp, no newline.
    #[test]
    fn a_last_line_cut_in_its_timestamp_is_truncated_never_a_point() {
        let text = concat!(
            "m,tag=A value=1.5,quality=192i 1764000000000000000\n",
            "m,tag=B value=12.938,quality=192i 1764000",
        );
        let out = Format::InfluxLp
            .parse(text.as_bytes(), &ctx())
            .expect("parses");
        let tags: Vec<_> = out.points.iter().map(|p| p.tag.as_str()).collect();
        assert_eq!(tags, vec!["A"]);
        assert_eq!(
            out.rejects,
            vec![Reject {
                line: 2,
                reason: RejectReason::Truncated
            }]
        );
        assert_eq!(
            RejectReason::Truncated.to_string(),
            "last line has no newline: truncated export"
        );
        assert_eq!(RejectReason::Truncated.code(), "truncated");
        // Every cut of the sample's last point line (line 6) that leaves
        // something: never a point from it, always a `Truncated` reject.
        let body = SAMPLE
            .split(|&b| b == b'\n')
            .take(5)
            .map(<[u8]>::len)
            .sum::<usize>()
            + 5;
        let line6_end = body
            + SAMPLE[body..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("line 6");
        for cut in body + 1..line6_end {
            let out = parse(&SAMPLE[..cut], &ctx()).expect("parses");
            assert!(
                out.points.iter().all(|p| p.source.line < Some(6)),
                "cut at {cut}: {:?}",
                out.points.last()
            );
            assert_eq!(
                out.rejects,
                vec![Reject {
                    line: 6,
                    reason: RejectReason::Truncated
                }],
                "cut at {cut}"
            );
        }
        let points_last = format!("{}\n", &SAMPLE_HEAD.trim_end());
        crate::formats::assert_cut_last_line_is_never_a_point(
            Format::InfluxLp,
            points_last.as_bytes(),
            &ctx(),
            false,
        );
        // With its newline the same line is a point; a cut comment is none.
        let whole = format!("{text}000000000000\n");
        assert_eq!(
            parse(whole.as_bytes(), &ctx())
                .expect("parses")
                .points
                .len(),
            2
        );
        let out = parse(b"m v=1 1\n# trailing comm", &ctx()).expect("parses");
        assert_eq!((out.points.len(), out.rejects.len()), (1, 0));
    }

    #[test]
    fn comments_blank_lines_and_bom() {
        let out = parse(b"\xEF\xBB\xBF# c\n\n   \n\t# c2\nm v=1 1\n", &ctx()).expect("parses");
        assert!(out.rejects.is_empty());
        assert_eq!(out.points.len(), 1);
        assert_eq!(out.points[0].source.line, Some(5));
        assert_eq!(parse(b"", &ctx()), Ok(ParseOutput::default()));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&b, &ctx());
        }

        #[test]
        fn never_panics_on_lp_like_lines(lines in prop::collection::vec("[a-z0-9\\\\ ,=\"#.iutf-]{0,60}", 0..20)) {
            let text = lines.join("\n");
            let out = parse(text.as_bytes(), &ctx()).expect("never a file error");
            prop_assert!(out.points.iter().all(|p| p.source.line.is_some()));
        }
    }
}
