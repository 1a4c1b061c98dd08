//! One syslog message (RFC 5424 or RFC 3164, CEF inside either) to an
//! [`Alert`].
//!
//! ```text
//! <134>1 2024-03-10T08:00:05.123Z eng-ws01 historian-agent 4321 EXPORT_OK [export@32473 files="3"] msg
//! <12>Mar 10 03:00:07 plc-gw02 fwd[812]: Modbus exception 0x02 from unit 7
//! Mar 10 08:00:09 ids01 CEF:0|Acme|OTSensor|3.2.1|1001|Modbus write|8|rt=1710057609123 src=10.20.9.15
//! ```
//!
//! The two syslog dialects share only the `<PRI>`. After it, `1 ` means RFC
//! 5424 (the only version defined); anything else is read as BSD syslog, the
//! way relays do (RFC 3164 §4.3). That reading is deliberately forgiving,
//! because BSD syslog was never really a standard:
//!
//! - No PRI at all: PRI 13 (user.notice), as a relay would add (§4.3.3).
//! - No readable timestamp: the whole rest is the message and the event
//!   time is the receive time (§4.3.2), flagged `no_source_timestamp`.
//! - The timestamp has no year and no zone: the zone is the source's
//!   configured one (`tz_assumed`) and the year is the receive year, or the
//!   previous one if that would put the message more than a day in the
//!   future (`year_inferred`; December logs read in January). A year written
//!   after the day (`Mar 10 2024 08:00:11`, Cisco style) or an RFC 3339
//!   timestamp in place of the BSD one is used as given.
//! - `HOST TAG[PID]: MSG`: a first word that already looks like a tag
//!   (`app:` or `app[12]:`) means the host was left out.
//!
//! RFC 5424 is read strictly: a header field out of place is
//! [`AlertError::Malformed`], an unreadable timestamp
//! [`AlertError::BadTimestamp`]. A PRI above 191 or not a plain number is
//! [`AlertError::InvalidPri`] in both dialects.
//!
//! A message (after the header, and after a UTF-8 BOM) starting with `CEF:`
//! is ArcSight CEF and becomes a security alert; see [`super::cef`].

use std::borrow::Cow;

use super::{
    AlertContext, AlertError, WallClock, blank_alert, bounded_message, cef, rfc3339_ns,
    syslog_severity,
};
use crate::record::{Alert, AlertFlags, AlertKind, AlertSource};

/// PRI assumed for a message without one: facility user (1), severity
/// notice (5) (RFC 3164 §4.3.3).
pub const DEFAULT_PRI: u8 = 13;
/// Highest valid PRI: facility 23 (local7), severity 7.
pub const MAX_PRI: u8 = 191;

const BOM: &[u8] = b"\xEF\xBB\xBF";
const NIL: &[u8] = b"-";

/// Parse one syslog message (without framing; trailing `\n`, `\r` and NUL
/// are ignored). The alert's `raw` is the message without those.
pub fn parse_syslog(msg: &[u8], ctx: &AlertContext) -> Result<Alert, AlertError> {
    let msg = bounded_message(msg, ctx)?;
    let (pri, rest) = split_pri(msg)?;
    let head = match (pri, rest.strip_prefix(b"1 ")) {
        (Some(_), Some(after_version)) => parse_5424(after_version)?,
        _ => parse_3164(rest, ctx)?,
    };
    let pri = pri.unwrap_or(DEFAULT_PRI);
    let (facility, severity) = (pri >> 3, pri & 7);

    let mut alert = blank_alert(head.source, AlertKind::SystemEvent, ctx, msg);
    match head.time {
        Some((ns, flags)) => {
            alert.event_time_ns = ns;
            alert.flags = flags;
        }
        None => alert.flags.no_source_timestamp = true,
    }
    alert.severity = syslog_severity(severity);
    alert.severity_native = severity.to_string();
    alert.facility = Some(facility);
    alert.event_id.clone_from(&head.msgid);
    alert.host = head.host;
    alert.app = head.app;
    alert.procid = head.procid;
    alert.msgid = head.msgid;
    alert.structured = head.structured;

    let body = head.msg.strip_prefix(BOM).unwrap_or(head.msg);
    let body = String::from_utf8_lossy(body);
    if body.starts_with("CEF:") {
        cef::parse_cef(&body)?.apply(&mut alert, ctx);
    } else {
        alert.message = body.into_owned();
    }
    Ok(alert)
}

/// An event time (ns UTC) and how it was read.
type Stamp = (i64, AlertFlags);

/// What the syslog header said, before the alert is built.
struct Header<'a> {
    source: AlertSource,
    /// Event time and how it was read; `None` when the message had none.
    time: Option<Stamp>,
    host: Option<String>,
    app: Option<String>,
    procid: Option<String>,
    msgid: Option<String>,
    structured: Vec<(String, String)>,
    msg: &'a [u8],
}

impl<'a> Header<'a> {
    fn new(source: AlertSource, msg: &'a [u8]) -> Self {
        Self {
            source,
            time: None,
            host: None,
            app: None,
            procid: None,
            msgid: None,
            structured: Vec::new(),
            msg,
        }
    }
}

/// `<PRI>` from the front of `msg`: `None` if the message has no PRI.
fn split_pri(msg: &[u8]) -> Result<(Option<u8>, &[u8]), AlertError> {
    let Some(rest) = msg.strip_prefix(b"<") else {
        return Ok((None, msg));
    };
    let close = rest
        .iter()
        .take(4)
        .position(|&b| b == b'>')
        .ok_or(AlertError::InvalidPri)?;
    let (digits, tail) = rest.split_at(close);
    let valid = match digits {
        [] | [b'0', _, ..] => false, // empty, or a leading zero
        _ => digits.iter().all(u8::is_ascii_digit),
    };
    if !valid {
        return Err(AlertError::InvalidPri);
    }
    let value = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    let pri = u8::try_from(value)
        .ok()
        .filter(|p| *p <= MAX_PRI)
        .ok_or(AlertError::InvalidPri)?;
    Ok((Some(pri), tail.get(1..).unwrap_or_default()))
}

/// RFC 5424 after `<PRI>1 `:
/// `TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]`.
fn parse_5424(rest: &[u8]) -> Result<Header<'_>, AlertError> {
    let mut cur = rest;
    let mut fields = [None::<&[u8]>; 5];
    for slot in &mut fields {
        *slot = Some(next_token(&mut cur).ok_or(AlertError::Malformed("RFC 5424 header"))?);
    }
    let [ts, host, app, procid, msgid] = fields.map(|f| f.unwrap_or(NIL));

    let mut head = Header::new(AlertSource::Syslog5424, &[]);
    if ts != NIL {
        let text = std::str::from_utf8(ts).map_err(|_| AlertError::BadTimestamp)?;
        head.time = Some((rfc3339_ns(text)?, AlertFlags::default()));
    }
    head.host = nil_or_text(host);
    head.app = nil_or_text(app);
    head.procid = nil_or_text(procid);
    head.msgid = nil_or_text(msgid);
    let after_sd = parse_structured_data(cur, &mut head.structured)?;
    head.msg = match after_sd {
        [] => &[],
        [b' ', msg @ ..] => msg,
        _ => return Err(AlertError::Malformed("RFC 5424 structured data")),
    };
    Ok(head)
}

/// The next space-terminated, non-empty header token; advances past the space.
fn next_token<'a>(cur: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = cur.iter().position(|&b| b == b' ')?;
    let (token, rest) = cur.split_at(end);
    if token.is_empty() {
        return None;
    }
    *cur = rest.get(1..)?;
    Some(token)
}

fn nil_or_text(token: &[u8]) -> Option<String> {
    (token != NIL).then(|| String::from_utf8_lossy(token).into_owned())
}

/// `-` or one or more `[SD-ID (SP PARAM="VALUE")*]`, each param flattened
/// into `out` as `sdid.param`. Returns what follows the structured data.
fn parse_structured_data<'a>(
    input: &'a [u8],
    out: &mut Vec<(String, String)>,
) -> Result<&'a [u8], AlertError> {
    const BAD: AlertError = AlertError::Malformed("RFC 5424 structured data");
    if let Some(rest) = input.strip_prefix(NIL) {
        return Ok(rest);
    }
    let mut cur = input.strip_prefix(b"[").ok_or(BAD)?;
    loop {
        let id = sd_name(&mut cur).ok_or(BAD)?;
        loop {
            match cur {
                [b']', rest @ ..] => {
                    cur = rest;
                    break;
                }
                [b' ', rest @ ..] => {
                    cur = rest;
                    let name = sd_name(&mut cur).ok_or(BAD)?;
                    cur = cur.strip_prefix(b"=\"").ok_or(BAD)?;
                    let value = sd_value(&mut cur).ok_or(BAD)?;
                    out.push((format!("{id}.{name}"), value));
                }
                _ => return Err(BAD),
            }
        }
        match cur.strip_prefix(b"[") {
            Some(rest) => cur = rest,
            None => return Ok(cur),
        }
    }
}

/// SD-NAME: printable US-ASCII except `=`, space, `]` and `"`.
fn sd_name<'a>(cur: &mut &'a [u8]) -> Option<Cow<'a, str>> {
    let len = cur
        .iter()
        .take_while(|&&b| (33..=126).contains(&b) && !matches!(b, b'=' | b']' | b'"'))
        .count();
    if len == 0 {
        return None;
    }
    let (name, rest) = cur.split_at(len);
    *cur = rest;
    Some(String::from_utf8_lossy(name))
}

/// PARAM-VALUE up to the closing `"`, which is consumed. `\"`, `\\` and `\]`
/// are escapes; a backslash before anything else is kept (RFC 5424 §6.3.3).
fn sd_value(cur: &mut &[u8]) -> Option<String> {
    let mut value = Vec::new();
    let mut i = 0;
    loop {
        match (cur.get(i)?, cur.get(i + 1)) {
            (b'"', _) => break,
            (b'\\', Some(&escaped @ (b'"' | b'\\' | b']'))) => {
                value.push(escaped);
                i += 2;
            }
            (&b, _) => {
                value.push(b);
                i += 1;
            }
        }
    }
    *cur = cur.get(i + 1..)?;
    Some(String::from_utf8_lossy(&value).into_owned())
}

/// BSD syslog after the (optional) PRI.
fn parse_3164<'a>(rest: &'a [u8], ctx: &AlertContext) -> Result<Header<'a>, AlertError> {
    let Some((time, after)) = bsd_timestamp(rest, ctx)? else {
        // No timestamp: no header either; everything is the message.
        return Ok(Header::new(AlertSource::Syslog3164, rest));
    };
    let mut head = Header::new(AlertSource::Syslog3164, after);
    head.time = Some(time);
    if after.starts_with(b"CEF:") {
        return Ok(head);
    }
    let (first, after_first) = match after.iter().position(|&b| b == b' ') {
        Some(i) => (
            after.get(..i).unwrap_or_default(),
            after.get(i + 1..).unwrap_or_default(),
        ),
        None => (after, &[][..]),
    };
    let content = if first.is_empty() || split_tag(first).is_some() {
        after // host left out; the first word is the tag
    } else {
        head.host = Some(String::from_utf8_lossy(first).into_owned());
        after_first
    };
    head.msg = content;
    if content.starts_with(b"CEF:") {
        return Ok(head);
    }
    let word_end = content
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(content.len());
    if let Some((tag, pid)) = content.get(..word_end).and_then(split_tag) {
        head.app = Some(String::from_utf8_lossy(tag).into_owned());
        head.procid = pid.map(|p| String::from_utf8_lossy(p).into_owned());
        head.msg = content.get(word_end + 1..).unwrap_or_default();
    }
    Ok(head)
}

/// A BSD timestamp (or an RFC 3339 one) at the front of `rest`, followed by
/// a space or the end. `Ok(None)` if there is none; the event time with its
/// flags and the bytes after the space otherwise.
fn bsd_timestamp<'a>(
    rest: &'a [u8],
    ctx: &AlertContext,
) -> Result<Option<(Stamp, &'a [u8])>, AlertError> {
    let after = |n: usize| match rest.get(n..) {
        Some([]) => Some(&[][..]),
        Some([b' ', tail @ ..]) => Some(tail),
        _ => None,
    };
    if let Some((wall, n)) = WallClock::parse(rest)
        && let Some(tail) = after(n)
    {
        let (ns, year_inferred) = wall.resolve(ctx.tz, ctx.receive_time_ns)?;
        let flags = AlertFlags {
            no_source_timestamp: false,
            year_inferred,
            tz_assumed: true,
        };
        return Ok(Some(((ns, flags), tail)));
    }
    // rsyslog's "high-precision" BSD variant: an RFC 3339 timestamp.
    if rest.first().is_some_and(u8::is_ascii_digit) {
        let n = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let text = std::str::from_utf8(rest.get(..n).unwrap_or_default()).unwrap_or_default();
        if let (Ok(ns), Some(tail)) = (rfc3339_ns(text), after(n)) {
            return Ok(Some(((ns, AlertFlags::default()), tail)));
        }
    }
    Ok(None)
}

/// `TAG:` or `TAG[PID]:` (the colon optional after `]`): the tag and pid.
fn split_tag(word: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let end = word.iter().position(|&b| b == b'[' || b == b':')?;
    let (tag, rest) = word.split_at(end);
    if tag.is_empty() {
        return None;
    }
    match rest {
        [b':'] => Some((tag, None)),
        [b'[', inner @ ..] => {
            let inner = inner.strip_suffix(b":").unwrap_or(inner);
            let pid = inner.strip_suffix(b"]")?;
            (!pid.is_empty() && !pid.contains(&b']')).then_some((tag, Some(pid)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{NetInfo, Signature};
    use crate::testutil::ns;

    const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/syslog_mixed.log");

    fn line(n: usize) -> &'static [u8] {
        FIXTURE
            .split(|&b| b == b'\n')
            .nth(n - 1)
            .expect("fixture line")
    }

    /// The sender read these at 08:00:30Z; `tz` is the source's zone.
    fn ctx(tz: chrono_tz::Tz) -> AlertContext {
        AlertContext {
            receive_time_ns: ns("2024-03-10T08:00:30Z"),
            tz,
            max_message_bytes: 8192,
        }
    }

    fn utc() -> AlertContext {
        ctx(chrono_tz::UTC)
    }

    fn sd(alert: &Alert) -> Vec<(&str, &str)> {
        alert
            .structured
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn get<'a>(alert: &'a Alert, key: &str) -> Option<&'a str> {
        alert
            .structured
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn line1_rfc5424_with_structured_data() {
        let a = parse_syslog(line(1), &utc()).expect("parses");
        assert_eq!(a.seq, 0);
        assert_eq!(a.source, AlertSource::Syslog5424);
        assert_eq!(a.kind, AlertKind::SystemEvent);
        assert_eq!((a.facility, a.severity_native.as_str()), (Some(16), "6"));
        assert_eq!(a.severity, 100);
        assert_eq!(a.event_time_ns, ns("2024-03-10T08:00:05.123Z"));
        assert_eq!(a.receive_time_ns, ns("2024-03-10T08:00:30Z"));
        assert_eq!(a.host.as_deref(), Some("eng-ws01"));
        assert_eq!(a.app.as_deref(), Some("historian-agent"));
        assert_eq!(a.procid.as_deref(), Some("4321"));
        assert_eq!(a.msgid.as_deref(), Some("EXPORT_OK"));
        assert_eq!(a.event_id.as_deref(), Some("EXPORT_OK"));
        assert_eq!(
            sd(&a),
            [
                ("export@32473.files", "3"),
                ("export@32473.records", "1440")
            ]
        );
        assert_eq!(a.message, "hourly export complete");
        assert_eq!(a.flags, AlertFlags::default());
        assert_eq!(a.raw, line(1));
    }

    #[test]
    fn line2_rfc3164_year_and_zone_from_context() {
        let a = parse_syslog(line(2), &ctx(chrono_tz::America::Chicago)).expect("parses");
        assert_eq!(a.source, AlertSource::Syslog3164);
        assert_eq!((a.facility, a.severity_native.as_str()), (Some(1), "4"));
        assert_eq!(a.severity, 500);
        // 03:00:07 CDT, minutes after the spring-forward change.
        assert_eq!(a.event_time_ns, ns("2024-03-10T08:00:07Z"));
        assert!(a.flags.year_inferred && a.flags.tz_assumed);
        assert!(!a.flags.no_source_timestamp);
        assert_eq!(a.host.as_deref(), Some("plc-gw02"));
        assert_eq!(a.app.as_deref(), Some("fwd"));
        assert_eq!(a.procid.as_deref(), Some("812"));
        assert_eq!(a.msgid, None);
        assert_eq!(
            a.message,
            "Modbus exception 0x02 from unit 7 (illegal data address)"
        );
    }

    #[test]
    fn line3_offset_timestamp_to_utc() {
        let a = parse_syslog(line(3), &utc()).expect("parses");
        assert_eq!(a.event_time_ns, ns("2024-03-10T08:00:09.5Z"));
        assert_eq!((a.facility, a.severity), (Some(4), 100));
        assert_eq!(a.severity_native, "6");
        assert_eq!(
            sd(&a),
            [
                ("meta@32473.user", "operator2"),
                ("meta@32473.src", "10.20.3.44")
            ]
        );
        assert_eq!(a.message, "Failed password for operator2");
    }

    #[test]
    fn line4_all_nil_header_uses_receive_time() {
        let c = utc();
        let a = parse_syslog(line(4), &c).expect("parses");
        assert_eq!(a.source, AlertSource::Syslog5424);
        assert_eq!(a.event_time_ns, c.receive_time_ns);
        assert!(a.flags.no_source_timestamp);
        assert_eq!((a.facility, a.severity), (Some(1), 300));
        assert_eq!((a.host, a.app, a.procid, a.msgid), (None, None, None, None));
        assert!(a.structured.is_empty());
        assert_eq!(a.message, "bare message with all-NIL header");
    }

    #[test]
    fn line5_rfc5424_local7_notice() {
        let a = parse_syslog(line(5), &utc()).expect("parses");
        assert_eq!((a.facility, a.severity_native.as_str()), (Some(20), "5"));
        assert_eq!(a.severity, 300);
        assert_eq!(a.event_time_ns, ns("2024-03-10T08:01:00.000003Z"));
        assert_eq!(a.procid, None);
        assert_eq!(a.msgid.as_deref(), Some("ID47"));
        assert_eq!(
            sd(&a),
            [
                ("exampleSDID@32473.iut", "3"),
                ("exampleSDID@32473.eventSource", "Sensor"),
                ("exampleSDID@32473.eventID", "1011"),
            ]
        );
        assert_eq!(a.message, "BOM-less message");
    }

    #[test]
    fn line6_pri_999_is_rejected() {
        assert_eq!(parse_syslog(line(6), &utc()), Err(AlertError::InvalidPri));
    }

    #[test]
    fn line7_cef_without_pri() {
        let a = parse_syslog(line(7), &utc()).expect("parses");
        assert_eq!(a.source, AlertSource::Cef);
        assert_eq!(a.kind, AlertKind::SecurityAlert);
        // No PRI: user.notice.
        assert_eq!(a.facility, Some(1));
        assert_eq!((a.severity, a.severity_native.as_str()), (800, "8"));
        // rt is epoch milliseconds and wins over the BSD header time.
        assert_eq!(a.event_time_ns, ns("2024-03-10T08:00:09.123Z"));
        assert_eq!(a.flags, AlertFlags::default());
        assert_eq!(a.host.as_deref(), Some("ids01"));
        assert_eq!(
            a.signature,
            Some(Signature {
                id: Some("1001".into()),
                name: Some("Modbus write from non-engineering host".into()),
                action: Some("alert".into()),
                ..Signature::default()
            })
        );
        assert_eq!(
            a.net,
            Some(NetInfo {
                src_ip: Some("10.20.9.15".into()),
                src_port: Some(49822),
                dst_ip: Some("10.20.1.10".into()),
                dst_port: Some(502),
                proto: Some("TCP".into()),
                app_proto: Some("modbus".into()),
                flow_id: None,
            })
        );
        assert_eq!(
            get(&a, "cef.msg"),
            Some("Write Single Coil fc=5 addr 0x0010")
        );
        assert_eq!(get(&a, "cef.rt"), Some("1710057609123"));
        assert_eq!(get(&a, "cef.cs1Label"), Some("zone"));
        assert_eq!(get(&a, "cef.cs1"), Some("L2-Cell3"));
        assert_eq!(get(&a, "cef.deviceVendor"), Some("Acme"));
        assert_eq!(get(&a, "cef.deviceProduct"), Some("OTSensor"));
        assert_eq!(get(&a, "cef.deviceVersion"), Some("3.2.1"));
        assert_eq!(get(&a, "cef.version"), Some("0"));
        assert_eq!(a.message, "Modbus write from non-engineering host");
    }

    #[test]
    fn line8_cef_inside_rfc5424() {
        let a = parse_syslog(line(8), &utc()).expect("parses");
        assert_eq!(a.source, AlertSource::Cef);
        assert_eq!((a.facility, a.severity), (Some(16), 800));
        assert_eq!(a.severity_native, "High");
        let sig = a.signature.as_ref().expect("signature");
        assert_eq!(sig.id.as_deref(), Some("2002"));
        assert_eq!(
            sig.name.as_deref(),
            Some("New device seen | unknown vendor")
        );
        // rt text in the source's zone (UTC here), no year inference.
        assert_eq!(a.event_time_ns, ns("2024-03-10T08:00:11Z"));
        assert!(a.flags.tz_assumed && !a.flags.year_inferred);
        assert_eq!(get(&a, "cef.rt"), Some("Mar 10 2024 08:00:11"));
        assert_eq!(get(&a, "cef.smac"), Some("00:1d:9c:aa:bb:cc"));
        assert_eq!(get(&a, "cef.msg"), Some("first seen on L2 switch port 14"));
        let net = a.net.as_ref().expect("net");
        assert_eq!(net.src_ip.as_deref(), Some("10.20.1.77"));
        assert_eq!(net.dst_ip, None);
        assert_eq!(a.host.as_deref(), Some("ids01"));
        assert_eq!(a.app.as_deref(), Some("otsensor"));
    }

    #[test]
    fn cef_rt_text_uses_the_source_zone() {
        let a = parse_syslog(line(8), &ctx(chrono_tz::America::Chicago)).expect("parses");
        assert_eq!(a.event_time_ns, ns("2024-03-10T13:00:11Z"));
    }

    #[test]
    fn every_fixture_line_is_read_or_rejected() {
        let c = ctx(chrono_tz::UTC);
        let results: Vec<_> = FIXTURE
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse_syslog(l, &c).map(|a| a.source))
            .collect();
        assert_eq!(
            results,
            [
                Ok(AlertSource::Syslog5424),
                Ok(AlertSource::Syslog3164),
                Ok(AlertSource::Syslog5424),
                Ok(AlertSource::Syslog5424),
                Ok(AlertSource::Syslog5424),
                Err(AlertError::InvalidPri),
                Ok(AlertSource::Cef),
                Ok(AlertSource::Cef),
            ]
        );
    }

    #[test]
    fn pri_edge_cases() {
        let c = utc();
        for bad in [
            &b"<192>1 - - - - - - x"[..],
            b"<>x",
            b"<1a>x",
            b"<007>x",
            b"<1000>x",
            b"<13",
        ] {
            assert_eq!(
                parse_syslog(bad, &c),
                Err(AlertError::InvalidPri),
                "{bad:?}"
            );
        }
        let a = parse_syslog(b"<0>1 - - - - - - x", &c).expect("parses");
        assert_eq!((a.facility, a.severity), (Some(0), 1000));
        let a = parse_syslog(b"<191>1 - - - - - - x", &c).expect("parses");
        assert_eq!((a.facility, a.severity), (Some(23), 1));
    }

    #[test]
    fn too_long_and_empty() {
        let mut c = utc();
        c.max_message_bytes = 16;
        assert_eq!(
            parse_syslog(b"<13>1 - - - - - - 0123456789", &c),
            Err(AlertError::TooLong { limit: 16 })
        );
        assert_eq!(parse_syslog(b"\r\n", &c), Err(AlertError::Empty));
    }

    #[test]
    fn sd_escapes_and_bom() {
        let msg = b"<13>1 2024-03-10T08:00:00Z h a p m [x@1 a=\"q\\\"b\\\\c\\]d\\e\"][y@2 z=\"\"] \xEF\xBB\xBFhello\n";
        let a = parse_syslog(msg, &utc()).expect("parses");
        assert_eq!(sd(&a), [("x@1.a", "q\"b\\c]d\\e"), ("y@2.z", "")]);
        assert_eq!(a.message, "hello");
        assert_eq!(a.raw, &msg[..msg.len() - 1]);
    }

    #[test]
    fn malformed_rfc5424() {
        let c = utc();
        for (bad, err) in [
            (&b"<13>1 - - - -"[..], "RFC 5424 header"),
            (b"<13>1 - h  a p m - x", "RFC 5424 header"),
            (b"<13>1 - - - - - [x@1 a=\"b\"", "RFC 5424 structured data"),
            (b"<13>1 - - - - - [x@1 a=b] m", "RFC 5424 structured data"),
            (b"<13>1 - - - - - [x@1]m", "RFC 5424 structured data"),
            (b"<13>1 - - - - - x m", "RFC 5424 structured data"),
        ] {
            assert_eq!(
                parse_syslog(bad, &c),
                Err(AlertError::Malformed(err)),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_syslog(b"<13>1 2024-13-10T08:00:00Z - - - - - x", &c),
            Err(AlertError::BadTimestamp)
        );
        // No MSG at all is fine.
        let a = parse_syslog(b"<13>1 - - - - - [x@1]", &c).expect("parses");
        assert_eq!((a.message.as_str(), sd(&a).len()), ("", 0));
    }

    #[test]
    fn december_message_read_in_january_is_last_year() {
        let c = AlertContext {
            receive_time_ns: ns("2025-01-01T00:00:05Z"),
            tz: chrono_tz::UTC,
            max_message_bytes: 1024,
        };
        let a = parse_syslog(b"<13>Dec 31 23:59:58 h app: late", &c).expect("parses");
        assert_eq!(a.event_time_ns, ns("2024-12-31T23:59:58Z"));
        assert!(a.flags.year_inferred);
    }

    #[test]
    fn bsd_variants() {
        let c = utc();
        // No timestamp: all message, receive time.
        let a = parse_syslog(b"<13>hello: world", &c).expect("parses");
        assert_eq!(a.message, "hello: world");
        assert!(a.flags.no_source_timestamp);
        assert_eq!(a.event_time_ns, c.receive_time_ns);
        // Host left out; the first word is a tag.
        let a = parse_syslog(b"<13>Mar 10 08:00:00 sshd[7]: hi", &c).expect("parses");
        assert_eq!((a.host, a.app.as_deref()), (None, Some("sshd")));
        assert_eq!((a.procid.as_deref(), a.message.as_str()), (Some("7"), "hi"));
        // No tag: the content is the message.
        let a = parse_syslog(b"<13>Mar  1 08:00:00 h just text", &c).expect("parses");
        assert_eq!((a.host.as_deref(), a.app), (Some("h"), None));
        assert_eq!(a.message, "just text");
        // Year written out; RFC 3339 in place of the BSD timestamp.
        let a = parse_syslog(b"<13>Mar 10 2023 08:00:00 h t: x", &c).expect("parses");
        assert_eq!(a.event_time_ns, ns("2023-03-10T08:00:00Z"));
        assert!(!a.flags.year_inferred && a.flags.tz_assumed);
        let a = parse_syslog(b"<13>2024-03-10T09:00:00+01:00 h t: x", &c).expect("parses");
        assert_eq!(a.event_time_ns, ns("2024-03-10T08:00:00Z"));
        assert_eq!(a.flags, AlertFlags::default());
        // Shape of a timestamp but not a date.
        assert_eq!(
            parse_syslog(b"<13>Feb 30 08:00:00 h t: x", &c),
            Err(AlertError::BadTimestamp)
        );
        // Not UTF-8: read lossily, raw kept.
        let a = parse_syslog(b"<13>Mar 10 08:00:00 h t: caf\xE9", &c).expect("parses");
        assert_eq!(a.message, "caf\u{FFFD}");
        assert_eq!(a.raw.last(), Some(&0xE9));
    }

    #[test]
    fn tags() {
        assert_eq!(
            split_tag(b"fwd[812]:"),
            Some((&b"fwd"[..], Some(&b"812"[..])))
        );
        assert_eq!(
            split_tag(b"fwd[812]"),
            Some((&b"fwd"[..], Some(&b"812"[..])))
        );
        assert_eq!(split_tag(b"app:"), Some((&b"app"[..], None)));
        assert_eq!(split_tag(b"app"), None);
        assert_eq!(split_tag(b"a:b"), None);
        assert_eq!(split_tag(b"[1]:"), None);
        assert_eq!(split_tag(b"a[]:"), None);
        assert_eq!(split_tag(b"a[1]x"), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_syslog(&b, &utc());
        }

        #[test]
        fn parse_never_panics_on_syslog_like_text(s in "(<[0-9]{1,3}>)?(1 )?[ -~]{0,200}") {
            let _ = parse_syslog(s.as_bytes(), &utc());
        }
    }
}
