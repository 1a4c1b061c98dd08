//! PI Web API recorded-values JSON (`GET streams/{webId}/recorded`).
//!
//! ```json
//! {"Links": {}, "Items": [
//!   {"Timestamp": "2024-03-10T08:00:02.25Z", "Value": 71.9, "UnitsAbbreviation": "°C",
//!    "Good": true, "Questionable": true, "Substituted": false, "Annotated": false},
//!   {"Timestamp": "2024-03-10T08:00:12Z", "Value": {"Name": "I/O Timeout", "Value": 246, "IsSystem": true}, …},
//!   {"Timestamp": "2024-03-10T08:05:00Z", "Errors": ["…"]}]}
//! ```
//!
//! Two things make this more than `serde_json::from_slice`:
//!
//! - **Per-item rejects with line numbers.** One odd item must not sink the
//!   file, and the audit trail must say where it was. The whole file is
//!   first checked to be well-formed JSON (anything else is a
//!   [`FormatError`]); then a small scanner over the now-trusted text finds
//!   the byte span of every `Items` element and each item is read on its
//!   own, so its start line is known and its failure is its own.
//! - **Exact numbers.** serde_json's default float parser may be one ULP off
//!   (exact parsing is its opt-in `float_roundtrip` feature). Values are
//!   therefore parsed from their raw text with the standard library, which
//!   rounds correctly: integers become `I64`/`U64`, numbers with a fraction
//!   or exponent `F64`.
//!
//! The payload names no tag: it comes from [`ParseContext::tag`], else a
//! top-level `Path` or `Name`, else the file name without a `.json`
//! extension. Duplicates are parsed like any item; dropping them is the
//! receiver's job.

use std::borrow::Cow;
use std::ops::Range;

use chrono::DateTime;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{
    FormatError, ParseContext, ParseOutput, RejectReason, line_at, pi_system_state_to_status,
    status,
};
use crate::record::{
    NativeQuality, Point, PointFlags, SourceRef, SourceSystem, TsResolution, Value,
};

/// Parse a PI Web API recorded-values document.
pub fn parse(bytes: &[u8], ctx: &ParseContext) -> Result<ParseOutput, FormatError> {
    let text = std::str::from_utf8(bytes).map_err(|_| FormatError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Validate the whole document first: from here on the scanner only has
    // to find boundaries in text known to be well-formed JSON.
    serde_json::from_str::<IgnoredAny>(text).map_err(|e| FormatError::NotJson {
        line: e.line(),
        column: e.column(),
    })?;

    let top = scan::members(text, 0..text.len())
        .ok_or(FormatError::Shape("top level is not an object"))?;
    let (mut items, mut name, mut path) = (None, None, None);
    for member in top {
        let key =
            scan::key(text, member.key.clone()).ok_or(FormatError::Shape("unreadable key"))?;
        let slot = match key.as_ref() {
            "Items" => &mut items,
            "Name" => &mut name,
            "Path" => &mut path,
            _ => continue,
        };
        if slot.replace(member.value).is_some() {
            return Err(FormatError::Shape(
                "duplicate top-level Items, Name or Path",
            ));
        }
    }
    let tag = resolve_tag(text, ctx, path, name)?;
    let items = items.ok_or(FormatError::Shape("no Items array"))?;
    let spans = scan::elements(text, items).ok_or(FormatError::Shape("Items is not an array"))?;

    let mut out = ParseOutput {
        points: Vec::with_capacity(spans.len()),
        rejects: Vec::new(),
    };
    let (mut at, mut line) = (0, 1);
    for span in spans {
        line = line_at(text.as_bytes(), at, line, span.start);
        at = span.start;
        super::columns::push(&mut out, line, parse_item(text, span, &tag, ctx, line));
    }
    Ok(out)
}

/// The tag for every item: configured, else `Path`, else `Name`, else the
/// file name without a `.json` extension.
fn resolve_tag(
    text: &str,
    ctx: &ParseContext,
    path: Option<Range<usize>>,
    name: Option<Range<usize>>,
) -> Result<String, FormatError> {
    if let Some(tag) = ctx.tag.as_ref().filter(|t| !t.is_empty()) {
        return Ok(tag.clone());
    }
    for span in [path, name].into_iter().flatten() {
        let raw = text
            .get(span)
            .ok_or(FormatError::Shape("unreadable Path or Name"))?;
        let value: String = serde_json::from_str(raw)
            .map_err(|_| FormatError::Shape("Path or Name is not a string"))?;
        if !value.is_empty() {
            return Ok(value);
        }
    }
    ctx.file
        .as_deref()
        .and_then(file_stem)
        .map(str::to_owned)
        .ok_or(FormatError::NoTag)
}

/// `dir/TT101.PV.json` → `TT101.PV`. Only a `.json` extension is removed, so
/// a tag with dots survives a file name without an extension.
fn file_stem(file: &str) -> Option<&str> {
    let name = file.rsplit(['/', '\\']).next().unwrap_or(file);
    let stem = match name
        .len()
        .checked_sub(5)
        .and_then(|i| name.split_at_checked(i))
    {
        Some((stem, ext)) if ext.eq_ignore_ascii_case(".json") => stem,
        _ => name,
    };
    (!stem.is_empty()).then_some(stem)
}

/// Raw JSON text of the members of one item, by name.
#[derive(Default)]
struct ItemFields<'a> {
    timestamp: Option<&'a str>,
    value: Option<&'a str>,
    units: Option<&'a str>,
    good: Option<&'a str>,
    questionable: Option<&'a str>,
    substituted: Option<&'a str>,
    annotated: Option<&'a str>,
    errors: Option<&'a str>,
    other: Vec<(String, &'a str)>,
}

impl<'a> ItemFields<'a> {
    fn collect(text: &'a str, span: Range<usize>) -> Result<Self, RejectReason> {
        let members = scan::members(text, span).ok_or(RejectReason::Malformed)?;
        let mut fields = Self::default();
        for member in members {
            let key = scan::key(text, member.key).ok_or(RejectReason::Malformed)?;
            let raw = text.get(member.value).ok_or(RejectReason::Malformed)?;
            let slot = match key.as_ref() {
                "Timestamp" => &mut fields.timestamp,
                "Value" => &mut fields.value,
                "UnitsAbbreviation" => &mut fields.units,
                "Good" => &mut fields.good,
                "Questionable" => &mut fields.questionable,
                "Substituted" => &mut fields.substituted,
                "Annotated" => &mut fields.annotated,
                "Errors" => &mut fields.errors,
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

/// A PI digital state: `{"Name": "I/O Timeout", "Value": 246, "IsSystem": true}`.
#[derive(Deserialize)]
struct DigitalState {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Value")]
    code: i32,
    #[serde(rename = "IsSystem", default)]
    system: bool,
}

fn parse_item(
    text: &str,
    span: Range<usize>,
    tag: &str,
    ctx: &ParseContext,
    line: u64,
) -> Result<Point, RejectReason> {
    let fields = ItemFields::collect(text, span)?;
    if fields
        .errors
        .is_some_and(|raw| !is_null_or_empty_array(raw))
    {
        return Err(RejectReason::SourceError);
    }

    let ts_json = fields
        .timestamp
        .ok_or(RejectReason::MissingField("Timestamp"))?;
    let ts_text: String = serde_json::from_str(ts_json).map_err(|_| RejectReason::BadTimestamp)?;
    let ts_ns = DateTime::parse_from_rfc3339(&ts_text)
        .ok()
        .and_then(|ts| ts.timestamp_nanos_opt())
        .ok_or(RejectReason::BadTimestamp)?;
    // RFC 3339 UTC is exact; keep the text only if chrono had to drop
    // sub-nanosecond digits.
    let ts_raw = fraction_truncated(&ts_text).then_some(ts_text);

    let value = parse_value(fields.value.ok_or(RejectReason::MissingField("Value"))?)?;

    let good = parse_flag(fields.good)?.ok_or(RejectReason::MissingField("Good"))?;
    let questionable = parse_flag(fields.questionable)?.unwrap_or(false);
    let substituted = parse_flag(fields.substituted)?.unwrap_or(false);
    let annotated = parse_flag(fields.annotated)?.unwrap_or(false);
    // A SYSTEM digital state is an error state, never a process value, so its
    // code decides the status even if `Good` says otherwise. Substituted and
    // Annotated keep the severity and only set flags.
    let status = match value {
        Value::DigitalState {
            code, system: true, ..
        } => pi_system_state_to_status(code),
        _ if !good => status::BAD,
        _ if questionable => status::UNCERTAIN,
        _ => status::GOOD,
    };

    let unit = match fields.units {
        None | Some("null") => None,
        Some(raw) => {
            let unit: String = serde_json::from_str(raw).map_err(|_| RejectReason::Malformed)?;
            (!unit.is_empty()).then_some(unit)
        }
    };
    let attrs = fields
        .other
        .into_iter()
        .map(|(key, raw)| {
            let text = serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_owned());
            (key, text)
        })
        .collect();

    Ok(Point {
        seq: 0,
        tag: tag.to_owned(),
        ts_ns,
        value,
        status,
        native_quality: NativeQuality::Pi {
            good,
            questionable,
            substituted,
            annotated,
        },
        unit,
        source: SourceRef {
            system: SourceSystem::PiWebApi,
            file: ctx.file.clone(),
            line: Some(line),
        },
        ts_raw,
        ts_resolution: TsResolution::Exact,
        flags: PointFlags {
            substituted,
            annotated,
            ..PointFlags::default()
        },
        attrs,
    })
}

/// `Errors: null` or `Errors: []` is not an error report.
fn is_null_or_empty_array(raw: &str) -> bool {
    raw == "null"
        || raw
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|inner| inner.trim().is_empty())
}

/// A JSON boolean member: absent → `None`; present but not a boolean → reject.
fn parse_flag(raw: Option<&str>) -> Result<Option<bool>, RejectReason> {
    match raw {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(RejectReason::BadQuality),
    }
}

fn parse_value(raw: &str) -> Result<Value, RejectReason> {
    match raw.as_bytes().first() {
        Some(b'{') => {
            let state: DigitalState =
                serde_json::from_str(raw).map_err(|_| RejectReason::BadValue)?;
            Ok(Value::DigitalState {
                code: state.code,
                name: state.name,
                system: state.system,
            })
        }
        Some(b'"') => serde_json::from_str(raw)
            .map(Value::Str)
            .map_err(|_| RejectReason::BadValue),
        Some(b'-' | b'0'..=b'9') => parse_number(raw),
        _ => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            "null" => Ok(Value::Null),
            _ => Err(RejectReason::BadValue),
        },
    }
}

/// A JSON number from its text: integers keep their integer type, anything
/// with a fraction or exponent (or beyond `u64`) is `F64`. Overflow to
/// infinity is a reject: JSON cannot express infinity.
pub(super) fn parse_number(raw: &str) -> Result<Value, RejectReason> {
    let integer = !raw.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'));
    if integer {
        if let Ok(i) = raw.parse::<i64>() {
            return Ok(Value::I64(i));
        }
        if let Ok(u) = raw.parse::<u64>() {
            return Ok(Value::U64(u));
        }
    }
    match raw.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Value::F64(f)),
        _ => Err(RejectReason::BadValue),
    }
}

/// Whether an RFC 3339 timestamp has non-zero digits beyond nanoseconds.
pub(super) fn fraction_truncated(ts: &str) -> bool {
    ts.split_once('.').is_some_and(|(_, rest)| {
        rest.bytes()
            .take_while(u8::is_ascii_digit)
            .skip(9)
            .any(|d| d != b'0')
    })
}

/// Boundaries of JSON values in text that serde_json has already validated.
///
/// It finds where members and elements start and end; it decodes nothing but
/// keys. On text that is not valid JSON it returns `None` rather than
/// panicking, but its answers are only meaningful on validated text. The
/// OPC UA JSON-lines parser uses it too.
pub(super) mod scan {
    use super::{Cow, Range};

    /// One `"key": value` member, as byte ranges into the text.
    pub(in crate::formats) struct Member {
        /// The key, including its quotes.
        pub(in crate::formats) key: Range<usize>,
        /// The value.
        pub(in crate::formats) value: Range<usize>,
    }

    struct Scanner<'a> {
        bytes: &'a [u8],
        pos: usize,
        end: usize,
    }

    impl Scanner<'_> {
        fn peek(&self) -> Option<u8> {
            if self.pos < self.end {
                self.bytes.get(self.pos).copied()
            } else {
                None
            }
        }

        fn eat(&mut self, byte: u8) -> bool {
            let hit = self.peek() == Some(byte);
            if hit {
                self.pos += 1;
            }
            hit
        }

        fn skip_ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.pos += 1;
            }
        }

        /// At an opening quote: move past the closing one.
        fn skip_string(&mut self) -> Option<()> {
            if !self.eat(b'"') {
                return None;
            }
            loop {
                match self.peek()? {
                    // The escaped character can be a quote: step over both.
                    b'\\' => self.pos += 2,
                    b'"' => {
                        self.pos += 1;
                        return Some(());
                    }
                    _ => self.pos += 1,
                }
            }
        }

        /// At the first byte of a value: move past it and return its span.
        fn skip_value(&mut self) -> Option<Range<usize>> {
            let start = self.pos;
            match self.peek()? {
                b'"' => self.skip_string()?,
                b'{' | b'[' => {
                    // Iterative, so depth costs no stack.
                    let mut depth = 0_usize;
                    loop {
                        match self.peek()? {
                            b'"' => {
                                self.skip_string()?;
                                continue;
                            }
                            b'{' | b'[' => depth += 1,
                            b'}' | b']' => {
                                depth = depth.checked_sub(1)?;
                                if depth == 0 {
                                    self.pos += 1;
                                    break;
                                }
                            }
                            _ => {}
                        }
                        self.pos += 1;
                    }
                }
                _ => {
                    while self.peek().is_some_and(|b| {
                        !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                    }) {
                        self.pos += 1;
                    }
                    if self.pos == start {
                        return None;
                    }
                }
            }
            Some(start..self.pos)
        }

        /// A comma-separated sequence between `open` and `close`, calling
        /// `each` at the start of every entry.
        fn sequence(
            &mut self,
            open: u8,
            close: u8,
            mut each: impl FnMut(&mut Self) -> Option<()>,
        ) -> Option<()> {
            self.skip_ws();
            if !self.eat(open) {
                return None;
            }
            self.skip_ws();
            if self.eat(close) {
                return Some(());
            }
            loop {
                self.skip_ws();
                each(self)?;
                self.skip_ws();
                if self.eat(b',') {
                    continue;
                }
                return self.eat(close).then_some(());
            }
        }
    }

    fn scanner(text: &str, span: Range<usize>) -> Scanner<'_> {
        Scanner {
            bytes: text.as_bytes(),
            pos: span.start,
            end: span.end.min(text.len()),
        }
    }

    /// The members of the object spanning `span`; `None` if it is not one.
    pub(in crate::formats) fn members(text: &str, span: Range<usize>) -> Option<Vec<Member>> {
        let mut s = scanner(text, span);
        let mut out = Vec::new();
        s.sequence(b'{', b'}', |s| {
            let start = s.pos;
            s.skip_string()?;
            let key = start..s.pos;
            s.skip_ws();
            if !s.eat(b':') {
                return None;
            }
            s.skip_ws();
            let value = s.skip_value()?;
            out.push(Member { key, value });
            Some(())
        })?;
        Some(out)
    }

    /// The element spans of the array spanning `span`; `None` if it is not one.
    pub(super) fn elements(text: &str, span: Range<usize>) -> Option<Vec<Range<usize>>> {
        let mut s = scanner(text, span);
        let mut out = Vec::new();
        s.sequence(b'[', b']', |s| {
            out.push(s.skip_value()?);
            Some(())
        })?;
        Some(out)
    }

    /// The decoded key at `span` (quotes included). Borrowed unless it has
    /// escapes.
    pub(in crate::formats) fn key(text: &str, span: Range<usize>) -> Option<Cow<'_, str>> {
        let raw = text.get(span)?;
        let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
        if inner.contains('\\') {
            serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(inner))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::Reject;
    use crate::testutil::ns;
    use proptest::prelude::*;

    const SAMPLE: &[u8] = include_bytes!("../../../tests/fixtures/pi_webapi_recorded.json");

    /// A whole JSON document needs no final newline, and one cut short is
    /// not JSON: refused whole, never partly published.
    #[test]
    fn a_cut_document_is_refused_whole_and_a_whole_one_needs_no_newline() {
        let ctx = ParseContext {
            file: Some("TT101.PV.json".into()),
            ..ParseContext::default()
        };
        let all = parse(SAMPLE, &ctx).expect("parses");
        assert!(!all.points.is_empty());
        let body = SAMPLE.trim_ascii_end();
        for cut in 1..body.len() {
            match parse(&SAMPLE[..cut], &ctx) {
                Err(FormatError::NotJson { .. } | FormatError::NotUtf8) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        assert_eq!(parse(body, &ctx), Ok(all));
    }

    fn ctx(tag: Option<&str>) -> ParseContext {
        ParseContext {
            file: Some("pi_webapi_recorded.json".into()),
            tag: tag.map(str::to_owned),
            ..ParseContext::default()
        }
    }

    /// `[Good, Questionable, Substituted, Annotated]`.
    fn pi([good, questionable, substituted, annotated]: [bool; 4]) -> NativeQuality {
        NativeQuality::Pi {
            good,
            questionable,
            substituted,
            annotated,
        }
    }

    fn system_state(code: i32, name: &str) -> Value {
        Value::DigitalState {
            code,
            name: name.into(),
            system: true,
        }
    }

    fn parse_str(json: &str) -> ParseOutput {
        parse(json.as_bytes(), &ctx(Some("T"))).expect("document parses")
    }

    #[test]
    fn sample_matches_expected() {
        let out = super::super::Format::PiWebApi
            .parse(SAMPLE, &ctx(Some("TT101.PV")))
            .expect("parses");
        let p = &out.points;
        assert_eq!(p.len(), 7, "{out:#?}");

        // 1: Good, 71.5 °C.
        assert_eq!(p[0].tag, "TT101.PV");
        assert_eq!(p[0].seq, 0);
        assert_eq!(p[0].ts_ns, ns("2024-03-10T07:59:58Z"));
        assert_eq!(p[0].value, Value::F64(71.5));
        assert_eq!(p[0].unit.as_deref(), Some("°C"));
        assert_eq!(p[0].status, 0x0000_0000);
        assert_eq!(p[0].native_quality, pi([true, false, false, false]));
        assert_eq!(p[0].ts_resolution, TsResolution::Exact);
        assert_eq!(p[0].ts_raw, None);
        assert_eq!(
            p[0].source,
            SourceRef {
                system: SourceSystem::PiWebApi,
                file: Some("pi_webapi_recorded.json".into()),
                line: Some(4)
            }
        );

        // 2: Questionable → Uncertain; the .25 s survives.
        assert_eq!(p[1].ts_ns, 1_710_057_602_250_000_000);
        assert_eq!(p[1].value, Value::F64(71.9));
        assert_eq!(p[1].status, 0x4000_0000);
        assert_eq!(p[1].native_quality, pi([true, true, false, false]));

        // 3: SYSTEM state I/O Timeout → BadNoCommunication.
        assert_eq!(p[2].value, system_state(246, "I/O Timeout"));
        assert_eq!(p[2].status, 0x8031_0000);

        // 4: Substituted + Annotated keep Good and set flags.
        assert_eq!(p[3].value, Value::F64(72.4));
        assert_eq!(p[3].status, 0x0000_0000);
        assert_eq!(
            p[3].flags,
            PointFlags {
                substituted: true,
                annotated: true,
                ..PointFlags::default()
            }
        );
        assert_eq!(p[3].native_quality, pi([true, false, true, true]));

        // 5: Over Range → BadOutOfRange.
        assert_eq!(p[4].value, system_state(252, "Over Range"));
        assert_eq!(p[4].status, 0x803C_0000);

        // 6 and 7: Shutdown → BadOutOfService; the exact duplicate is still
        // parsed (the receiver drops it).
        assert_eq!(p[5].value, system_state(254, "Shutdown"));
        assert_eq!(p[5].status, 0x808D_0000);
        assert_eq!(p[5].native_quality, pi([false, false, false, false]));
        let mut dup = p[6].clone();
        assert_eq!(dup.source.line, Some(10));
        dup.source.line = p[5].source.line;
        assert_eq!(dup, p[5]);

        // 8: Errors → rejected, with its line.
        assert_eq!(
            out.rejects,
            vec![Reject {
                line: 11,
                reason: RejectReason::SourceError
            }]
        );
        let lines: Vec<_> = p.iter().map(|pt| pt.source.line).collect();
        assert_eq!(lines, [4, 5, 6, 7, 8, 9, 10].map(Some));
    }

    #[test]
    fn tag_comes_from_config_then_path_then_name_then_file() {
        let doc = r#"{"Path": "\\\\PISRV01\\TT101.PV", "Name": "TT101.PV", "Items": [
            {"Timestamp": "2024-03-10T08:00:00Z", "Value": 1.5, "Good": true}]}"#;
        let tag = |ctx: &ParseContext, doc: &str| {
            parse(doc.as_bytes(), ctx).map(|o| o.points[0].tag.clone())
        };
        assert_eq!(tag(&ctx(Some("CFG")), doc), Ok("CFG".into()));
        assert_eq!(tag(&ctx(None), doc), Ok("\\\\PISRV01\\TT101.PV".into()));
        let named = doc.replace(r#""Path": "\\\\PISRV01\\TT101.PV","#, "");
        assert_eq!(tag(&ctx(None), &named), Ok("TT101.PV".into()));
        let bare =
            r#"{"Items": [{"Timestamp": "2024-03-10T08:00:00Z", "Value": 1.5, "Good": true}]}"#;
        let by_file = ParseContext {
            file: Some("spool/in/FIC101.PV.JSON".into()),
            ..ParseContext::default()
        };
        assert_eq!(tag(&by_file, bare), Ok("FIC101.PV".into()));
        let no_ext = ParseContext {
            file: Some("FIC101.PV".into()),
            ..ParseContext::default()
        };
        assert_eq!(tag(&no_ext, bare), Ok("FIC101.PV".into()));
        assert_eq!(tag(&ParseContext::default(), bare), Err(FormatError::NoTag));
    }

    #[test]
    fn value_types() {
        let out = parse_str(
            r#"{"Items": [
            {"Timestamp": "2024-03-10T08:00:00Z", "Value": 42, "Good": true},
            {"Timestamp": "2024-03-10T08:00:01Z", "Value": -7, "Good": true},
            {"Timestamp": "2024-03-10T08:00:02Z", "Value": 18446744073709551615, "Good": true},
            {"Timestamp": "2024-03-10T08:00:03Z", "Value": 42.0, "Good": true},
            {"Timestamp": "2024-03-10T08:00:04Z", "Value": 1e3, "Good": true},
            {"Timestamp": "2024-03-10T08:00:05Z", "Value": "RUNNING", "Good": true},
            {"Timestamp": "2024-03-10T08:00:06Z", "Value": true, "Good": true},
            {"Timestamp": "2024-03-10T08:00:07Z", "Value": null, "Good": false},
            {"Timestamp": "2024-03-10T08:00:08Z", "Value": {"Name": "Running", "Value": 1, "IsSystem": false}, "Good": true},
            {"Timestamp": "2024-03-10T08:00:09Z", "Value": 0.1, "Good": true, "UnitsAbbreviation": ""},
            {"Timestamp": "2024-03-10T08:00:10Z", "Value": 2.2250738585072011e-308, "Good": true}
            ]}"#,
        );
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let values: Vec<_> = out.points.iter().map(|p| p.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                Value::I64(42),
                Value::I64(-7),
                Value::U64(u64::MAX),
                Value::F64(42.0),
                Value::F64(1000.0),
                Value::Str("RUNNING".into()),
                Value::Bool(true),
                Value::Null,
                Value::DigitalState {
                    code: 1,
                    name: "Running".into(),
                    system: false
                },
                Value::F64(0.1),
                Value::F64("2.2250738585072011e-308".parse().expect("float")),
            ]
        );
        let statuses: Vec<_> = out.points.iter().map(|p| p.status).collect();
        assert_eq!(statuses, [0, 0, 0, 0, 0, 0, 0, status::BAD, 0, 0, 0]);
        // Missing optional flags default to false; empty units are no unit.
        assert_eq!(
            out.points[0].native_quality,
            pi([true, false, false, false])
        );
        assert_eq!(out.points[9].unit, None);
    }

    #[test]
    fn bad_items_are_rejected_and_the_rest_parses() {
        let doc = concat!(
            "{\"Items\": [\n",
            "  {\"Timestamp\": \"2024-03-10T08:00:00Z\", \"Value\": 1, \"Good\": true},\n", // 2 ok
            "  42,\n",                                                                      // 3
            "  {\"Value\": 1, \"Good\": true},\n",                                          // 4
            "  {\"Timestamp\": \"not-a-date\", \"Value\": 1, \"Good\": true},\n",           // 5
            "  {\"Timestamp\": \"2024-03-10T08:00:00Z\", \"Good\": true},\n",               // 6
            "  {\"Timestamp\": \"2024-03-10T08:00:00Z\", \"Value\": [1], \"Good\": true},\n", // 7
            "  {\"Timestamp\": \"2024-03-10T08:00:00Z\", \"Value\": 1, \"Good\": \"yes\"},\n", // 8
            "  {\"Timestamp\": \"2024-03-10T08:00:00Z\", \"Value\": 1},\n",                 // 9
            "  {\"Timestamp\": \"2024-03-10T08:00:00Z\", \"Value\": 1, \"Value\": 2, \"Good\": true},\n", // 10
            "  {\"Timestamp\": \"2024-03-10T08:00:00Z\", \"Value\": {\"Name\": \"x\"}, \"Good\": true},\n", // 11
            "  {\"Timestamp\": \"2024-03-10T08:00:00Z\", \"Value\": 1e999, \"Good\": true},\n", // 12
            "  {\"Timestamp\": \"2024-03-10T08:00:00Z\",\n   \"Errors\": [{\"Message\": \"x\"}]},\n", // 13-14
            "  {\"Timestamp\": \"9999-03-10T08:00:00Z\", \"Value\": 1, \"Good\": true},\n", // 15
            "  {\"Timestamp\": \"2024-03-10T08:00:09Z\", \"Value\": 9, \"Good\": true, \"Errors\": []}\n", // 16 ok
            "]}\n",
        );
        let out = parse_str(doc);
        let rejects: Vec<_> = out.rejects.iter().map(|r| (r.line, r.reason)).collect();
        assert_eq!(
            rejects,
            vec![
                (3, RejectReason::Malformed),
                (4, RejectReason::MissingField("Timestamp")),
                (5, RejectReason::BadTimestamp),
                (6, RejectReason::MissingField("Value")),
                (7, RejectReason::BadValue),
                (8, RejectReason::BadQuality),
                (9, RejectReason::MissingField("Good")),
                (10, RejectReason::Malformed),
                (11, RejectReason::BadValue),
                (12, RejectReason::BadValue),
                (13, RejectReason::SourceError),
                (15, RejectReason::BadTimestamp),
            ]
        );
        assert_eq!(out.points.len(), 2);
        assert_eq!(out.points[1].source.line, Some(16));
        assert_eq!(out.points[1].value, Value::I64(9));
    }

    #[test]
    fn unknown_item_fields_are_kept_as_attrs() {
        let out = parse_str(
            r#"{"Items": [{"Timestamp": "2024-03-10T08:00:00Z", "Value": 1, "Good": true,
                "Annotation": "cal check", "Extra": {"a": 1}}]}"#,
        );
        assert_eq!(
            out.points[0].attrs,
            vec![
                ("Annotation".into(), "cal check".into()),
                ("Extra".into(), r#"{"a": 1}"#.into())
            ]
        );
    }

    #[test]
    fn timestamps_keep_full_precision() {
        let out = parse_str(
            r#"{"Items": [
            {"Timestamp": "2024-03-10T08:00:00.1234567Z", "Value": 1, "Good": true},
            {"Timestamp": "2024-03-10T02:00:00.5-06:00", "Value": 1, "Good": true},
            {"Timestamp": "2024-03-10T08:00:00.1234567891Z", "Value": 1, "Good": true}]}"#,
        );
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        assert_eq!(out.points[0].ts_ns % 1_000_000_000, 123_456_700);
        assert_eq!(out.points[0].ts_raw, None);
        assert_eq!(out.points[1].ts_ns, ns("2024-03-10T08:00:00.5Z"));
        // Beyond nanoseconds: the instant is truncated, the text kept.
        assert_eq!(out.points[2].ts_ns % 1_000_000_000, 123_456_789);
        assert_eq!(
            out.points[2].ts_raw.as_deref(),
            Some("2024-03-10T08:00:00.1234567891Z")
        );
    }

    #[test]
    fn whole_file_errors() {
        let c = ctx(Some("T"));
        assert!(matches!(
            parse(b"Items: nope", &c),
            Err(FormatError::NotJson { line: 1, .. })
        ));
        assert!(matches!(
            parse(b"{\"Items\": [", &c),
            Err(FormatError::NotJson { .. })
        ));
        assert_eq!(parse(b"\xff\xfe{}", &c), Err(FormatError::NotUtf8));
        assert!(matches!(parse(b"[1, 2]", &c), Err(FormatError::Shape(_))));
        assert!(matches!(
            parse(b"{\"Links\": {}}", &c),
            Err(FormatError::Shape(_))
        ));
        assert!(matches!(
            parse(b"{\"Items\": {}}", &c),
            Err(FormatError::Shape(_))
        ));
        assert!(matches!(
            parse(b"{\"Items\": [], \"Items\": []}", &c),
            Err(FormatError::Shape(_))
        ));
        // An empty page and a BOM are fine.
        assert_eq!(
            parse("\u{feff}{\"Items\": []}".as_bytes(), &c),
            Ok(ParseOutput::default())
        );
    }

    #[test]
    fn escaped_keys_and_strings_do_not_confuse_the_scanner() {
        let out = parse_str(
            r#"{"It\u0065ms": [{"Timestamp": "2024-03-10T08:00:00Z", "Value": "a \"]}, {\" b", "Good": true},
              {"Timestamp": "2024-03-10T08:00:01Z", "V\u0061lue": "[{", "Good": true}]}"#,
        );
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        assert_eq!(out.points[0].value, Value::Str("a \"]}, {\" b".into()));
        assert_eq!(out.points[1].value, Value::Str("[{".into()));
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[ -~\\PC]{0,12}".prop_map(serde_json::Value::String),
            prop_oneof![
                Just("Timestamp"),
                Just("Value"),
                Just("Good"),
                Just("2024-03-10T08:00:00Z"),
                Just("Errors")
            ]
            .prop_map(|s| serde_json::Value::String(s.into())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("Timestamp".to_owned()),
                            Just("Value".to_owned()),
                            Just("Good".to_owned()),
                            Just("Name".to_owned()),
                            "[a-z\\\\\"]{0,6}"
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&b, &ctx(None));
        }

        #[test]
        fn never_panics_on_a_mutated_sample(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut b = SAMPLE.to_vec();
            for (at, byte) in edits {
                let i = at.index(b.len());
                b[i] = byte;
            }
            let _ = parse(&b, &ctx(None));
        }

        /// On any well-formed page, every item becomes a point or a reject.
        #[test]
        fn every_item_is_accounted_for(items in prop::collection::vec(arb_json(), 0..12), pretty in any::<bool>()) {
            let doc = serde_json::json!({ "Items": items });
            let text = if pretty { serde_json::to_string_pretty(&doc) } else { serde_json::to_string(&doc) }
                .expect("serialises");
            let out = parse(text.as_bytes(), &ctx(Some("T"))).expect("well-formed page");
            prop_assert_eq!(out.points.len() + out.rejects.len(), items.len());
        }
    }
}
