//! OPC UA HistoryRead results as JSON lines: one `{NodeId, DataValue}`
//! object per line, the `DataValue` in the OPC UA JSON encoding
//! (OPC 10000-6 §5.4).
//!
//! ```text
//! {"NodeId":"nsu=urn:plant1:line2;s=TT101.PV","DataValue":{"UaType":11,"Value":71.5,
//!  "SourceTimestamp":"2024-03-10T08:00:00.123Z","SourcePicoseconds":1500,"ServerTimestamp":"…"}}
//! {"NodeId":"…","DataValue":{"Status":{"Code":2150694912,"Symbol":"BadNoCommunication"},"SourceTimestamp":"…"}}
//! ```
//!
//! Each line is its own record: a line that is not a JSON object of this
//! shape is a reject and the next line is read as usual. Blank lines are
//! skipped. A last line without its newline is a `Truncated` reject, never
//! parsed: the file was cut off there. The tag is the `NodeId` string as written.
//!
//! - **Time.** `SourceTimestamp` (RFC 3339, UTC) is the sample's time; a
//!   line without one is rejected, because the server's receive time is not
//!   the sample's time and the sender must not substitute one.
//!   `SourcePicoseconds` counts 10 ps units, so `1500` adds 15 ns; the raw
//!   count stays in `attrs` since digits below 1 ns cannot be kept in
//!   `ts_ns`. `ServerTimestamp`/`ServerPicoseconds` travel in `attrs`.
//! - **Quality.** `Status.Code` is the StatusCode, kept whole as the status
//!   and as [`NativeQuality::OpcUa`]; the encoding omits a Good status, so
//!   no `Status` is Good. A bare number is accepted as the code too (the
//!   1.04 reversible encoding). `Status.Symbol` goes to `attrs`. When the
//!   InfoType bits (10–11) say DataValue, the historian bits 0–1 `10`
//!   (Interpolated) set `flags.interpolated`; `01` (Calculated) has no flag
//!   in the record model and stays visible in the status only.
//! - **Values.** By `UaType` (the built-in type id): 1 Boolean → `Bool`;
//!   2/4/6/8 signed integers → `I64` and 3/5/7/9 unsigned → `U64`, range
//!   checked (64-bit ones may arrive as JSON strings, as the encoding
//!   requires); 10 Float and 11 Double → `F64`, including the encoding's
//!   `"NaN"`, `"Infinity"` and `"-Infinity"`; 12 String → `Str`. Any other
//!   type (DateTime, Guid, ByteString, LocalizedText, arrays, …) is kept as
//!   `Str`: the decoded string if it is one, else its JSON text. Without
//!   `UaType` the JSON type decides (integers stay integers). No `Value` (or
//!   `null`) is `Null`. Numbers are parsed from their text, so no value is
//!   rounded twice.
//!
//! Members not named here, in the line or in the `DataValue`, are kept in
//! `attrs` under their own names.

use std::ops::Range;

use chrono::DateTime;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::pi_webapi::{fraction_truncated, parse_number, scan};
use super::{
    FormatError, ParseContext, ParseOutput, Reject, RejectReason, status, unterminated_tail,
};
use crate::record::{
    NativeQuality, Point, PointFlags, SourceRef, SourceSystem, TsResolution, Value,
};

/// Built-in type ids (OPC 10000-6 §5.1.2).
mod ua_type {
    pub(super) const BOOLEAN: u32 = 1;
    pub(super) const SBYTE: u32 = 2;
    pub(super) const BYTE: u32 = 3;
    pub(super) const INT16: u32 = 4;
    pub(super) const UINT16: u32 = 5;
    pub(super) const INT32: u32 = 6;
    pub(super) const UINT32: u32 = 7;
    pub(super) const INT64: u32 = 8;
    pub(super) const UINT64: u32 = 9;
    pub(super) const FLOAT: u32 = 10;
    pub(super) const DOUBLE: u32 = 11;
    pub(super) const STRING: u32 = 12;
}

/// StatusCode bits 10–11: what the info bits mean.
const INFO_TYPE_MASK: u32 = 0x0C00;
/// InfoType = DataValue: bits 0–9 carry limit, overflow and historian bits.
const INFO_TYPE_DATA_VALUE: u32 = 0x0400;
/// Historian bits 0–1: the value type (00 Raw, 01 Calculated, 10 Interpolated).
const HISTORIAN_VALUE_TYPE: u32 = 0x0003;
const HISTORIAN_INTERPOLATED: u32 = 0x0002;
/// `SourcePicoseconds` is 0..=9999 units of 10 ps.
const MAX_PICOSECONDS: u16 = 9999;

/// Parse OPC UA HistoryRead JSON lines.
pub fn parse(bytes: &[u8], ctx: &ParseContext) -> Result<ParseOutput, FormatError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = ParseOutput::default();
    // A last line without its newline was cut off: never parsed.
    let tail = unterminated_tail(bytes);
    let complete = tail.map_or(bytes, |(start, _)| bytes.get(..start).unwrap_or_default());
    for (index, raw) in complete.split(|&b| b == b'\n').enumerate() {
        let line = index as u64 + 1;
        let result = std::str::from_utf8(raw)
            .map_err(|_| RejectReason::NotUtf8)
            .map(str::trim);
        match result {
            Ok("") => {}
            Ok(text) => super::columns::push(&mut out, line, parse_line(text, ctx, line)),
            Err(reason) => out.rejects.push(Reject { line, reason }),
        }
    }
    if let Some((_, line)) = tail {
        out.rejects.push(Reject {
            line,
            reason: RejectReason::Truncated,
        });
    }
    Ok(out)
}

/// Raw JSON text of the `DataValue` members, by name.
#[derive(Default)]
struct DataValueFields<'a> {
    ua_type: Option<&'a str>,
    value: Option<&'a str>,
    status: Option<&'a str>,
    source_ts: Option<&'a str>,
    source_ps: Option<&'a str>,
    other: Vec<(String, &'a str)>,
}

impl<'a> DataValueFields<'a> {
    fn collect(text: &'a str, span: Range<usize>) -> Result<Self, RejectReason> {
        let members = scan::members(text, span).ok_or(RejectReason::Malformed)?;
        let mut fields = Self::default();
        for member in members {
            let key = scan::key(text, member.key).ok_or(RejectReason::Malformed)?;
            let raw = text.get(member.value).ok_or(RejectReason::Malformed)?;
            let slot = match key.as_ref() {
                "UaType" => &mut fields.ua_type,
                "Value" => &mut fields.value,
                "Status" => &mut fields.status,
                "SourceTimestamp" => &mut fields.source_ts,
                "SourcePicoseconds" => &mut fields.source_ps,
                _ => {
                    fields.other.push((key.into_owned(), raw));
                    continue;
                }
            };
            if slot.replace(raw).is_some() {
                return Err(RejectReason::Malformed);
            }
        }
        Ok(fields)
    }
}

/// `Status` in the 1.05 encoding.
#[derive(Deserialize)]
struct StatusJson {
    #[serde(rename = "Code", default)]
    code: u32,
    #[serde(rename = "Symbol", default)]
    symbol: Option<String>,
}

fn parse_line(text: &str, ctx: &ParseContext, line: u64) -> Result<Point, RejectReason> {
    // Validate first: the scanner only finds boundaries in valid JSON.
    serde_json::from_str::<IgnoredAny>(text).map_err(|_| RejectReason::Malformed)?;
    let top = scan::members(text, 0..text.len()).ok_or(RejectReason::Malformed)?;
    let (mut node_id, mut data_value) = (None, None);
    let mut attrs = Vec::new();
    for member in top {
        let key = scan::key(text, member.key).ok_or(RejectReason::Malformed)?;
        let slot = match key.as_ref() {
            "NodeId" => &mut node_id,
            "DataValue" => &mut data_value,
            _ => {
                let raw = text.get(member.value).ok_or(RejectReason::Malformed)?;
                attrs.push((key.into_owned(), json_text(raw)));
                continue;
            }
        };
        if slot.replace(member.value).is_some() {
            return Err(RejectReason::Malformed);
        }
    }
    let node_id = node_id
        .and_then(|span| text.get(span))
        .ok_or(RejectReason::MissingField("NodeId"))?;
    let tag: String = serde_json::from_str(node_id).map_err(|_| RejectReason::Malformed)?;
    if tag.is_empty() {
        return Err(RejectReason::MissingField("NodeId"));
    }
    let fields = DataValueFields::collect(
        text,
        data_value.ok_or(RejectReason::MissingField("DataValue"))?,
    )?;

    let (ts_ns, ts_raw) = source_time(&fields)?;
    let (code, symbol) = parse_status(fields.status)?;
    let ua_type = fields
        .ua_type
        .map(serde_json::from_str::<u32>)
        .transpose()
        .map_err(|_| RejectReason::Malformed)?;
    let value = parse_value(ua_type, fields.value)?;

    if let Some(raw) = fields.source_ps {
        attrs.push(("SourcePicoseconds".to_owned(), raw.to_owned()));
    }
    if let Some(symbol) = symbol {
        attrs.push(("Status.Symbol".to_owned(), symbol));
    }
    attrs.extend(
        fields
            .other
            .into_iter()
            .map(|(key, raw)| (key, json_text(raw))),
    );

    let interpolated = code & INFO_TYPE_MASK == INFO_TYPE_DATA_VALUE
        && code & HISTORIAN_VALUE_TYPE == HISTORIAN_INTERPOLATED;
    Ok(Point {
        seq: 0,
        tag,
        ts_ns,
        value,
        status: code,
        native_quality: NativeQuality::OpcUa(code),
        unit: None,
        source: SourceRef {
            system: SourceSystem::OpcUa,
            file: ctx.file.clone(),
            line: Some(line),
        },
        ts_raw,
        ts_resolution: TsResolution::Exact,
        flags: PointFlags {
            interpolated,
            ..PointFlags::default()
        },
        attrs,
    })
}

/// `SourceTimestamp` plus `SourcePicoseconds`, in ns; the text is returned
/// too when digits below 1 ns had to be dropped from it.
fn source_time(fields: &DataValueFields<'_>) -> Result<(i64, Option<String>), RejectReason> {
    let raw = fields
        .source_ts
        .ok_or(RejectReason::MissingField("SourceTimestamp"))?;
    let text: String = serde_json::from_str(raw).map_err(|_| RejectReason::BadTimestamp)?;
    let ns = DateTime::parse_from_rfc3339(&text)
        .ok()
        .and_then(|ts| ts.timestamp_nanos_opt())
        .ok_or(RejectReason::BadTimestamp)?;
    let picos = match fields.source_ps {
        None | Some("null") => 0,
        Some(raw) => serde_json::from_str::<u16>(raw)
            .ok()
            .filter(|p| *p <= MAX_PICOSECONDS)
            .ok_or(RejectReason::BadTimestamp)?,
    };
    let ns = ns
        .checked_add(i64::from(picos / 100))
        .ok_or(RejectReason::BadTimestamp)?;
    Ok((ns, fraction_truncated(&text).then_some(text)))
}

/// `Status` to (code, symbol). Absent or `null` is Good.
fn parse_status(raw: Option<&str>) -> Result<(u32, Option<String>), RejectReason> {
    match raw {
        None | Some("null") => Ok((status::GOOD, None)),
        Some(raw) if raw.starts_with('{') => serde_json::from_str::<StatusJson>(raw)
            .map(|s| (s.code, s.symbol))
            .map_err(|_| RejectReason::BadQuality),
        Some(raw) => serde_json::from_str::<u32>(raw)
            .map(|code| (code, None))
            .map_err(|_| RejectReason::BadQuality),
    }
}

/// A JSON string decoded, anything else as its JSON text.
fn json_text(raw: &str) -> String {
    serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_owned())
}

fn parse_value(ua_type: Option<u32>, raw: Option<&str>) -> Result<Value, RejectReason> {
    let Some(raw) = raw.filter(|r| *r != "null") else {
        return Ok(Value::Null);
    };
    let string = || serde_json::from_str::<String>(raw).ok();
    match ua_type {
        None => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ if is_number(raw) => parse_number(raw),
            _ => Ok(Value::Str(json_text(raw))),
        },
        Some(ua_type::BOOLEAN) => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(RejectReason::BadValue),
        },
        Some(t @ (ua_type::SBYTE | ua_type::INT16 | ua_type::INT32 | ua_type::INT64)) => {
            let text = integer_text(raw).ok_or(RejectReason::BadValue)?;
            let v: i64 = text.parse().map_err(|_| RejectReason::BadValue)?;
            let fits = match t {
                ua_type::SBYTE => i8::try_from(v).is_ok(),
                ua_type::INT16 => i16::try_from(v).is_ok(),
                ua_type::INT32 => i32::try_from(v).is_ok(),
                _ => true,
            };
            fits.then_some(Value::I64(v)).ok_or(RejectReason::BadValue)
        }
        Some(t @ (ua_type::BYTE | ua_type::UINT16 | ua_type::UINT32 | ua_type::UINT64)) => {
            let text = integer_text(raw).ok_or(RejectReason::BadValue)?;
            let v: u64 = text.parse().map_err(|_| RejectReason::BadValue)?;
            let fits = match t {
                ua_type::BYTE => u8::try_from(v).is_ok(),
                ua_type::UINT16 => u16::try_from(v).is_ok(),
                ua_type::UINT32 => u32::try_from(v).is_ok(),
                _ => true,
            };
            fits.then_some(Value::U64(v)).ok_or(RejectReason::BadValue)
        }
        Some(ua_type::FLOAT | ua_type::DOUBLE) => {
            if is_number(raw) {
                return match raw.parse::<f64>() {
                    Ok(f) if f.is_finite() => Ok(Value::F64(f)),
                    _ => Err(RejectReason::BadValue),
                };
            }
            match string().as_deref() {
                Some("NaN") => Ok(Value::F64(f64::NAN)),
                Some("Infinity") => Ok(Value::F64(f64::INFINITY)),
                Some("-Infinity") => Ok(Value::F64(f64::NEG_INFINITY)),
                _ => Err(RejectReason::BadValue),
            }
        }
        Some(ua_type::STRING) => string().map(Value::Str).ok_or(RejectReason::BadValue),
        Some(_) => Ok(Value::Str(json_text(raw))),
    }
}

/// A JSON number's text (validated JSON: a leading `-` or digit is one).
fn is_number(raw: &str) -> bool {
    matches!(raw.as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

/// An integer as a JSON number or, for 64-bit types, a JSON string.
fn integer_text(raw: &str) -> Option<String> {
    if is_number(raw) {
        Some(raw.to_owned())
    } else {
        serde_json::from_str::<String>(raw).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Format;
    use crate::testutil::ns;
    use proptest::prelude::*;

    const SAMPLE: &[u8] = include_bytes!("../../../tests/fixtures/opcua_historyread.jsonl");

    fn ctx() -> ParseContext {
        ParseContext {
            file: Some("opcua_historyread.jsonl".into()),
            ..ParseContext::default()
        }
    }

    fn line(dv: &str) -> Result<Point, RejectReason> {
        let json = format!("{{\"NodeId\":\"ns=2;s=X\",\"DataValue\":{{{dv}}}}}\n");
        let out = parse(json.as_bytes(), &ctx()).expect("never a file error");
        match (out.points.into_iter().next(), out.rejects.first()) {
            (Some(p), None) => Ok(p),
            (None, Some(r)) => Err(r.reason),
            other => panic!("one record expected: {other:?}"),
        }
    }

    fn value(dv: &str) -> Result<Value, RejectReason> {
        line(&format!(r#"{dv},"SourceTimestamp":"2024-03-10T08:00:00Z""#)).map(|p| p.value)
    }

    #[test]
    fn sample_matches_expected() {
        let out = Format::OpcUa.parse(SAMPLE, &ctx()).expect("parses");
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let p = &out.points;
        assert_eq!(p.len(), 6);
        let lines: Vec<_> = p.iter().map(|pt| pt.source.line).collect();
        assert_eq!(lines, (1..=6).map(Some).collect::<Vec<_>>());

        // 1: Good (Status omitted), SourcePicoseconds 1500 → +15 ns.
        assert_eq!(p[0].tag, "nsu=urn:plant1:line2;s=TT101.PV");
        assert_eq!(p[0].ts_ns, ns("2024-03-10T08:00:00.123Z") + 15);
        assert_eq!(p[0].value, Value::F64(71.5));
        assert_eq!(p[0].status, status::GOOD);
        assert_eq!(p[0].native_quality, NativeQuality::OpcUa(0));
        assert_eq!(p[0].flags, PointFlags::default());
        assert_eq!(p[0].ts_resolution, TsResolution::Exact);
        assert_eq!(p[0].ts_raw, None);
        assert_eq!(
            p[0].attrs,
            vec![
                ("SourcePicoseconds".into(), "1500".into()),
                ("ServerTimestamp".into(), "2024-03-10T08:00:00.180Z".into()),
            ]
        );
        assert_eq!(
            p[0].source,
            SourceRef {
                system: SourceSystem::OpcUa,
                file: Some("opcua_historyread.jsonl".into()),
                line: Some(1)
            }
        );

        // 2: 0x402 = Good, InfoType DataValue, historian bits Interpolated.
        assert_eq!(p[1].status, 0x0000_0402);
        assert_eq!(p[1].status >> 30, 0, "severity Good");
        assert!(p[1].flags.interpolated);
        assert_eq!(p[1].native_quality, NativeQuality::OpcUa(1026));
        assert_eq!(p[1].value, Value::F64(71.6));
        assert_eq!(p[1].ts_ns, ns("2024-03-10T08:00:10Z"));

        // 3: UncertainLastUsableValue.
        assert_eq!(p[2].status, 0x4090_0000);
        assert!(!p[2].flags.interpolated);
        assert_eq!(
            p[2].attrs,
            vec![("Status.Symbol".into(), "UncertainLastUsableValue".into())]
        );

        // 4: BadNoCommunication, no Value → Null.
        assert_eq!(p[3].status, 0x8031_0000);
        assert_eq!(p[3].value, Value::Null);
        assert_eq!(p[3].ts_ns, ns("2024-03-10T08:00:30Z"));

        // 5: BadSensorFailure + InfoType + LimitHigh.
        assert_eq!(p[4].tag, "nsu=urn:plant1:line2;s=PT204.PV");
        assert_eq!(p[4].status, 0x808C_0600);
        assert_eq!(p[4].status >> 30, 0b10, "severity Bad");
        assert_eq!(p[4].status & 0xFFFF_0000, status::BAD_SENSOR_FAILURE);
        assert_eq!((p[4].status >> 8) & 0b11, 0b10, "limit High");
        assert!(!p[4].flags.interpolated, "historian bits Raw");
        assert_eq!(p[4].value, Value::F64(9.99));

        // 6: Boolean true, Good.
        assert_eq!(p[5].tag, "nsu=urn:plant1:line2;s=PUMP7.Running");
        assert_eq!(p[5].value, Value::Bool(true));
        assert_eq!(p[5].status, status::GOOD);
    }

    #[test]
    fn a_last_line_without_newline_is_truncated_never_a_point() {
        crate::formats::assert_cut_last_line_is_never_a_point(Format::OpcUa, SAMPLE, &ctx(), false);
        let whole = SAMPLE;
        let all = parse(whole, &ctx()).expect("parses");
        let last = all.points.last().expect("points").clone();
        let lines = crate::formats::line_at(whole, 0, 0, whole.len());
        // Every cut inside the last line, even one that leaves valid JSON
        // with a shorter value, and the whole line without its newline.
        let start = whole[..whole.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .expect("several lines")
            + 1;
        for cut in start + 1..whole.len() {
            let out = parse(&whole[..cut], &ctx()).expect("never a file error");
            assert_eq!(
                out.points.len(),
                all.points.len() - 1,
                "cut at {cut}: the cut line is not a point"
            );
            assert!(!out.points.contains(&last), "cut at {cut}");
            assert_eq!(
                out.rejects.last(),
                Some(&Reject {
                    line: lines,
                    reason: RejectReason::Truncated
                }),
                "cut at {cut}"
            );
        }
        // Cut right after a newline: nothing is truncated; trailing blanks
        // are no line.
        let out = parse(&whole[..start], &ctx()).expect("parses");
        assert!(
            out.rejects
                .iter()
                .all(|r| r.reason != RejectReason::Truncated)
        );
        let mut padded = whole.to_vec();
        padded.extend_from_slice(b"  \t");
        assert_eq!(parse(&padded, &ctx()), Ok(all));
    }

    #[test]
    fn bad_lines_are_rejected_and_later_lines_still_parse() {
        let ts = r#""SourceTimestamp":"2024-03-10T08:00:00Z""#;
        let mut text = String::new();
        for l in [
            format!(r#"{{"NodeId":"A","DataValue":{{"Value":1,{ts}}}}}"#), // 1 ok
            r#"{"NodeId":"A","DataValue":{"Value":1"#.to_owned(),          // 2 truncated
            "[1,2]".to_owned(),                                            // 3
            format!(r#"{{"DataValue":{{"Value":1,{ts}}}}}"#),              // 4
            r#"{"NodeId":"A"}"#.to_owned(),                                // 5
            r#"{"NodeId":"A","DataValue":{"Value":1}}"#.to_owned(),        // 6
            format!(r#"{{"NodeId":"A","DataValue":{{"Value":1,"Status":{{"Code":-1}},{ts}}}}}"#), // 7
            format!(r#"{{"NodeId":7,"DataValue":{{"Value":1,{ts}}}}}"#), // 8
            format!(r#"{{"NodeId":"A","NodeId":"B","DataValue":{{{ts}}}}}"#), // 9
            String::new(),                                               // 10 blank
            format!(r#"{{"NodeId":"B","DataValue":{{"Value":2,{ts}}}}}"#), // 11 ok
        ] {
            text.push_str(&l);
            text.push('\n');
        }
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"{\"NodeId\":\"\xff\"}\n"); // 12
        let out = parse(&bytes, &ctx()).expect("parses");
        let rejects: Vec<_> = out.rejects.iter().map(|r| (r.line, r.reason)).collect();
        assert_eq!(
            rejects,
            vec![
                (2, RejectReason::Malformed),
                (3, RejectReason::Malformed),
                (4, RejectReason::MissingField("NodeId")),
                (5, RejectReason::MissingField("DataValue")),
                (6, RejectReason::MissingField("SourceTimestamp")),
                (7, RejectReason::BadQuality),
                (8, RejectReason::Malformed),
                (9, RejectReason::Malformed),
                (12, RejectReason::NotUtf8),
            ]
        );
        let got: Vec<_> = out
            .points
            .iter()
            .map(|p| (p.source.line, p.tag.as_str(), p.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(1), "A", Value::I64(1)),
                (Some(11), "B", Value::I64(2)),
            ]
        );
    }

    #[test]
    fn values_by_ua_type() {
        assert_eq!(value(r#""UaType":2,"Value":-128"#), Ok(Value::I64(-128)));
        assert_eq!(
            value(r#""UaType":2,"Value":128"#),
            Err(RejectReason::BadValue)
        );
        assert_eq!(value(r#""UaType":3,"Value":255"#), Ok(Value::U64(255)));
        assert_eq!(
            value(r#""UaType":3,"Value":-1"#),
            Err(RejectReason::BadValue)
        );
        assert_eq!(
            value(r#""UaType":6,"Value":1.5"#),
            Err(RejectReason::BadValue)
        );
        assert_eq!(
            value(r#""UaType":8,"Value":"-9223372036854775808""#),
            Ok(Value::I64(i64::MIN))
        );
        assert_eq!(
            value(r#""UaType":9,"Value":"18446744073709551615""#),
            Ok(Value::U64(u64::MAX))
        );
        assert_eq!(
            value(r#""UaType":7,"Value":4294967296"#),
            Err(RejectReason::BadValue)
        );
        assert_eq!(value(r#""UaType":11,"Value":1"#), Ok(Value::F64(1.0)));
        assert_eq!(
            value(r#""UaType":11,"Value":1e999"#),
            Err(RejectReason::BadValue)
        );
        assert_eq!(
            value(r#""UaType":11,"Value":"-Infinity""#),
            Ok(Value::F64(f64::NEG_INFINITY))
        );
        assert!(matches!(
            value(r#""UaType":10,"Value":"NaN""#),
            Ok(Value::F64(f)) if f.is_nan()
        ));
        assert_eq!(
            value(r#""UaType":11,"Value":"x""#),
            Err(RejectReason::BadValue)
        );
        assert_eq!(
            value(r#""UaType":1,"Value":1"#),
            Err(RejectReason::BadValue)
        );
        assert_eq!(
            value(r#""UaType":12,"Value":"a\"b""#),
            Ok(Value::Str("a\"b".into()))
        );
        assert_eq!(
            value(r#""UaType":12,"Value":5"#),
            Err(RejectReason::BadValue)
        );
        assert_eq!(
            value(r#""UaType":21,"Value":{"Locale":"en","Text":"hi"}"#),
            Ok(Value::Str(r#"{"Locale":"en","Text":"hi"}"#.into()))
        );
        assert_eq!(
            value(r#""UaType":13,"Value":"2024-03-10T08:00:00Z""#),
            Ok(Value::Str("2024-03-10T08:00:00Z".into()))
        );
        assert_eq!(value(r#""Value":"free""#), Ok(Value::Str("free".into())));
        assert_eq!(value(r#""Value":-2.5"#), Ok(Value::F64(-2.5)));
        assert_eq!(value(r#""UaType":11,"Value":null"#), Ok(Value::Null));
        assert_eq!(
            value(r#""UaType":"x","Value":1"#),
            Err(RejectReason::Malformed)
        );
    }

    #[test]
    fn status_and_time_details() {
        let ts = r#""SourceTimestamp":"2024-03-10T08:00:00.1234567891Z""#;
        // A bare numeric status; calculated historian bits set no flag.
        let p = line(&format!(r#""Value":1,"Status":1025,{ts}"#)).expect("parses");
        assert_eq!(p.status, 0x401);
        assert!(!p.flags.interpolated);
        // Sub-nanosecond digits dropped: the text is kept.
        assert_eq!(p.ts_raw.as_deref(), Some("2024-03-10T08:00:00.1234567891Z"));
        // Interpolated bits without InfoType DataValue mean nothing.
        let p = line(&format!(r#""Value":1,"Status":2,{ts}"#)).expect("parses");
        assert!(!p.flags.interpolated);
        // Picoseconds: 9999 → +99 ns; 10000 is out of range.
        let p = line(&format!(r#""Value":1,"SourcePicoseconds":9999,{ts}"#)).expect("parses");
        assert_eq!(p.ts_ns, ns("2024-03-10T08:00:00.123456789Z") + 99);
        assert_eq!(
            line(&format!(r#""Value":1,"SourcePicoseconds":10000,{ts}"#)).map(|_| ()),
            Err(RejectReason::BadTimestamp)
        );
        assert_eq!(
            line(&format!(r#""Value":1,"SourcePicoseconds":"x",{ts}"#)).map(|_| ()),
            Err(RejectReason::BadTimestamp)
        );
        assert_eq!(
            line(r#""Value":1,"SourceTimestamp":"yesterday""#).map(|_| ()),
            Err(RejectReason::BadTimestamp)
        );
        // Extra members are kept; a null Status is Good.
        let p = line(&format!(
            r#""Value":1,"Status":null,"ServerPicoseconds":5,{ts}"#
        ))
        .expect("parses");
        assert_eq!(p.status, status::GOOD);
        assert_eq!(p.attrs, vec![("ServerPicoseconds".into(), "5".into())]);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&b, &ctx());
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
