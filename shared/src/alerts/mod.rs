//! Alert inputs (syslog, CEF, Suricata EVE, OPC UA Alarms & Conditions) to
//! [`Alert`] records.
//!
//! Alerts reach the sender as single messages: a syslog datagram, a frame
//! cut from a syslog TCP stream by [`SyslogFramer`], one EVE JSON line, one
//! OPC UA A&C event projected to JSON. Each parser takes the message bytes
//! plus an [`AlertContext`] (the receive time the shell read from its clock,
//! the zone configured for the source, the size limit) and returns one
//! [`Alert`] with `seq` 0 (the sender numbers records) or an [`AlertError`]
//! whose [`code`](AlertError::code) the shell counts. Nothing here reads a
//! clock: "now" is always `ctx.receive_time_ns`, so year inference and
//! missing timestamps are deterministic under test.
//!
//! Every alert keeps its raw bytes; where the text of a syslog field is not
//! UTF-8 it is read lossily (U+FFFD) and `raw` still has the original.
//!
//! Severities are normalised to the OPC UA scale 1–1000 by the functions
//! below (FORMATS.md §3, proposed) and the native value travels beside them.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone};
use chrono_tz::Tz;

use crate::localtime::LocalClock;
use crate::record::{Alert, AlertFlags, AlertKind, AlertSource};

pub mod cef;
pub mod eve;
pub mod framer;
mod json;
pub mod opcua_ac;
pub mod syslog;

pub use eve::{EveDeduper, parse_eve};
pub use framer::{Framing, Split, SyslogFramer, split_lf, split_octet_counted};
pub use opcua_ac::{AlarmBits, parse_opcua_ac};
pub use syslog::parse_syslog;

/// How far past the receive time an RFC 3164 timestamp may lie before its
/// inferred year is taken to be the previous one (a December message read in
/// January). One day absorbs sender clock skew and zone mistakes.
const YEAR_ROLLBACK_TOLERANCE_NS: i64 = 86_400 * 1_000_000_000;

/// What a parser knows besides the message bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertContext {
    /// When the sender received the message, ns since the Unix epoch, UTC.
    /// Also "now" for year inference.
    pub receive_time_ns: i64,
    /// Zone of timestamps written without one (RFC 3164, CEF `rt` text),
    /// configured per source.
    pub tz: Tz,
    /// Longest message accepted, in bytes.
    pub max_message_bytes: usize,
}

/// Why a message did not become an alert. [`AlertError::code`] is the
/// stable name used in counters and audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AlertError {
    /// The message is empty (or only line terminators).
    #[error("empty message")]
    Empty,
    /// The message (or a stream frame) is longer than the limit.
    #[error("message longer than {limit} bytes")]
    TooLong {
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// The syslog PRI is malformed or above 191.
    #[error("invalid syslog PRI")]
    InvalidPri,
    /// A timestamp is present but unreadable or out of range.
    #[error("unreadable or out-of-range timestamp")]
    BadTimestamp,
    /// A severity the normalisation table does not know.
    #[error("unknown severity")]
    BadSeverity,
    /// A required field is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// The message does not have the shape of its format; names the part.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A JSON line is not UTF-8.
    #[error("message is not UTF-8")]
    NotUtf8,
    /// A well-formed EVE event that is not an alert (flow, stats, …).
    #[error("not an alert event")]
    NotAnAlert,
    /// An alert already seen ([`EveDeduper`]).
    #[error("duplicate alert")]
    Duplicate,
    /// The input ended inside a message: a stream closed before a line's
    /// LF or inside an octet-counted frame, a followed file replaced while
    /// its last line had no newline. Never parsed, since a cut message may
    /// still read as a whole one. Names what was cut.
    #[error("truncated {0}")]
    Truncated(&'static str),
}

impl AlertError {
    /// Stable snake-case name, for counters and audit events.
    pub fn code(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong { .. } => "too_long",
            Self::InvalidPri => "invalid_pri",
            Self::BadTimestamp => "bad_timestamp",
            Self::BadSeverity => "bad_severity",
            Self::MissingField(_) => "missing_field",
            Self::Malformed(_) => "malformed",
            Self::NotUtf8 => "not_utf8",
            Self::NotAnAlert => "not_an_alert",
            Self::Duplicate => "duplicate",
            Self::Truncated(_) => "truncated",
        }
    }
}

/// Syslog severity 0 (Emergency) … 7 (Debug) to 1–1000:
/// 1000 / 900 / 800 / 700 / 500 / 300 / 100 / 1. Values above 7 cannot come
/// from a PRI; they read as Debug.
pub fn syslog_severity(severity: u8) -> u16 {
    match severity {
        0 => 1000,
        1 => 900,
        2 => 800,
        3 => 700,
        4 => 500,
        5 => 300,
        6 => 100,
        _ => 1,
    }
}

/// CEF severity text to 1–1000: an integer 0–10 is ×100 (0 → 1); the words
/// `Low` 200, `Medium` 500, `High` 800, `Very-High` 1000 (any ASCII case).
/// `None` for anything else, including CEF's `Unknown`.
pub fn cef_severity(native: &str) -> Option<u16> {
    let native = native.trim();
    if let Ok(n) = native.parse::<u16>() {
        return match n {
            0 => Some(1),
            1..=10 => Some(n * 100),
            _ => None,
        };
    }
    [
        ("Low", 200),
        ("Medium", 500),
        ("High", 800),
        ("Very-High", 1000),
    ]
    .into_iter()
    .find(|(word, _)| native.eq_ignore_ascii_case(word))
    .map(|(_, sev)| sev)
}

/// Suricata alert severity (a rule priority, 1 = highest) to 1–1000:
/// 1 → 900, 2 → 600, 3 → 300, and the rarely used lower priorities 4–255
/// → 100. `None` for 0 and above 255, which Suricata does not produce.
pub fn suricata_severity(severity: u64) -> Option<u16> {
    match severity {
        1 => Some(900),
        2 => Some(600),
        3 => Some(300),
        4..=255 => Some(100),
        _ => None,
    }
}

/// OPC UA severity is already 1–1000; out-of-range values are clamped.
pub fn opcua_severity(severity: i64) -> u16 {
    // The clamp makes the conversion lossless.
    u16::try_from(severity.clamp(1, 1000)).unwrap_or(1000)
}

/// An alert with every optional field empty, for parsers to fill in.
pub(crate) fn blank_alert(
    source: AlertSource,
    kind: AlertKind,
    ctx: &AlertContext,
    raw: &[u8],
) -> Alert {
    Alert {
        seq: 0,
        source,
        kind,
        event_time_ns: ctx.receive_time_ns,
        receive_time_ns: ctx.receive_time_ns,
        event_id: None,
        severity: 1,
        severity_native: String::new(),
        facility: None,
        host: None,
        app: None,
        procid: None,
        msgid: None,
        source_name: None,
        condition: None,
        net: None,
        signature: None,
        message: String::new(),
        structured: Vec::new(),
        flags: AlertFlags::default(),
        raw: raw.to_vec(),
    }
}

/// Check the size limit and strip line terminators (`\n`, `\r`, and the NUL
/// some syslog senders append).
pub(crate) fn bounded_message<'a>(
    msg: &'a [u8],
    ctx: &AlertContext,
) -> Result<&'a [u8], AlertError> {
    if msg.len() > ctx.max_message_bytes {
        return Err(AlertError::TooLong {
            limit: ctx.max_message_bytes,
        });
    }
    let end = msg
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r' | b'\0'))
        .map_or(0, |i| i + 1);
    let msg = msg.get(..end).unwrap_or_default();
    if msg.is_empty() {
        return Err(AlertError::Empty);
    }
    Ok(msg)
}

/// RFC 3339 (any offset) to ns since the Unix epoch, UTC.
pub(crate) fn rfc3339_ns(text: &str) -> Result<i64, AlertError> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|dt| dt.timestamp_nanos_opt())
        .ok_or(AlertError::BadTimestamp)
}

/// A wall-clock reading `Mmm dd [yyyy] hh:mm:ss[.fff]` as written by BSD
/// syslog and CEF `rt`, before a year and zone are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WallClock {
    month: u32,
    day: u32,
    year: Option<i32>,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
}

impl WallClock {
    /// Read a wall-clock timestamp from the front of `text`; returns it and
    /// the bytes consumed. Only the shape is checked here; the calendar is
    /// checked when the instant is built.
    pub(crate) fn parse(text: &[u8]) -> Option<(Self, usize)> {
        let mut cur = Cursor { text, pos: 0 };
        let month = month_number(cur.take(3)?)?;
        cur.eat(b' ')?;
        // BSD syslog pads a one-digit day with a space ("Mar  1").
        let _ = cur.eat(b' ');
        let day = cur.digits(1, 2)?;
        cur.eat(b' ')?;
        let year = cur.year();
        let hour = cur.digits(2, 2)?;
        cur.eat(b':')?;
        let minute = cur.digits(2, 2)?;
        cur.eat(b':')?;
        let second = cur.digits(2, 2)?;
        let nanos = cur.fraction();
        Some((
            Self {
                month,
                day,
                year,
                hour,
                minute,
                second,
                nanos,
            },
            cur.pos,
        ))
    }

    /// Resolve to ns UTC in `tz`, inferring a missing year from the receive
    /// time: the receive year, or the year before when that would put the
    /// instant more than a day after the receive time.
    ///
    /// Returns the instant and whether the year was inferred.
    pub(crate) fn resolve(self, tz: Tz, receive_time_ns: i64) -> Result<(i64, bool), AlertError> {
        if let Some(year) = self.year {
            return Ok((self.local_ns(tz, year)?, false));
        }
        let receive_year = DateTime::from_timestamp_nanos(receive_time_ns)
            .with_timezone(&tz)
            .year();
        let horizon = receive_time_ns.saturating_add(YEAR_ROLLBACK_TOLERANCE_NS);
        match self.local_ns(tz, receive_year) {
            Ok(ns) if ns <= horizon => Ok((ns, true)),
            // In the future, or a date the receive year lacks (29 February).
            _ => Ok((self.local_ns(tz, receive_year - 1)?, true)),
        }
    }

    fn local_ns(self, tz: Tz, year: i32) -> Result<i64, AlertError> {
        let naive = NaiveDate::from_ymd_opt(year, self.month, self.day)
            .and_then(|d| d.and_hms_nano_opt(self.hour, self.minute, self.second, self.nanos))
            .ok_or(AlertError::BadTimestamp)?;
        LocalClock::new(tz)
            .resolve(naive)
            .map(|(ns, _)| ns)
            .map_err(|_| AlertError::BadTimestamp)
    }
}

/// Resolve `wall` in the zone written after it in a CEF timestamp (`UTC`,
/// `GMT`, `Z`, `+01:00`, `-0600`, an IANA name); a missing year is inferred
/// as in [`WallClock::resolve`]. `None` if the zone text is none of those.
pub(crate) fn zone_ns(wall: WallClock, zone: &str, receive_time_ns: i64) -> Option<i64> {
    if matches!(zone, "UTC" | "GMT" | "Z") {
        return wall
            .resolve(chrono_tz::UTC, receive_time_ns)
            .ok()
            .map(|r| r.0);
    }
    if let Ok(tz) = zone.parse::<Tz>() {
        return wall.resolve(tz, receive_time_ns).ok().map(|r| r.0);
    }
    let offset_s = parse_offset(zone)?;
    let (utc_ns, _) = wall.resolve(chrono_tz::UTC, receive_time_ns).ok()?;
    let offset = chrono::FixedOffset::east_opt(offset_s)?;
    // Same wall reading, read at the offset instead of UTC.
    let utc = DateTime::from_timestamp_nanos(utc_ns).naive_utc();
    offset
        .from_local_datetime(&utc)
        .single()?
        .timestamp_nanos_opt()
}

/// `±hh:mm` or `±hhmm` to seconds east of UTC.
fn parse_offset(text: &str) -> Option<i32> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, text.get(1..)?),
        b'-' => (-1, text.get(1..)?),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits.get(..2)?.parse().ok()?;
    let minutes: i32 = digits.get(2..)?.parse().ok()?;
    (hours <= 23 && minutes <= 59).then_some(sign * (hours * 3600 + minutes * 60))
}

/// English month abbreviation (any ASCII case) to 1–12.
fn month_number(abbr: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let pos = MONTHS
        .iter()
        .position(|m| abbr.eq_ignore_ascii_case(&m[..]))?;
    u32::try_from(pos + 1).ok()
}

/// A read position in untrusted bytes; every step is checked.
struct Cursor<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.text.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.text.get(self.pos) == Some(&byte)).then(|| self.pos += 1)
    }

    /// Between `min` and `max` ASCII digits as a number.
    fn digits(&mut self, min: usize, max: usize) -> Option<u32> {
        let run = self
            .text
            .get(self.pos..)?
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if run < min {
            return None;
        }
        let digits = self.take(run)?;
        Some(
            digits
                .iter()
                .fold(0, |acc, d| acc * 10 + u32::from(d - b'0')),
        )
    }

    /// An optional four-digit year followed by a space.
    fn year(&mut self) -> Option<i32> {
        let four = self.text.get(self.pos..self.pos.checked_add(5)?)?;
        let (digits, space) = four.split_at(4);
        if space != b" " || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let year = self.digits(4, 4)?;
        self.pos += 1;
        i32::try_from(year).ok()
    }

    /// An optional `.` and 1–9 fraction digits, as nanoseconds.
    fn fraction(&mut self) -> u32 {
        let start = self.pos;
        if self.eat(b'.').is_none() {
            return 0;
        }
        let run = self
            .text
            .get(self.pos..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if run == 0 || run > 9 {
            self.pos = start;
            return 0;
        }
        let Some(digits) = self.take(run) else {
            self.pos = start;
            return 0;
        };
        let value = digits
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        value * 10u32.pow(9 - u32::try_from(run).unwrap_or(9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ns;

    #[test]
    fn syslog_severity_table() {
        let got: Vec<u16> = (0..=7).map(syslog_severity).collect();
        assert_eq!(got, [1000, 900, 800, 700, 500, 300, 100, 1]);
        assert_eq!(syslog_severity(200), 1);
    }

    #[test]
    fn cef_severity_table() {
        assert_eq!(cef_severity("0"), Some(1));
        assert_eq!(cef_severity("1"), Some(100));
        assert_eq!(cef_severity("8"), Some(800));
        assert_eq!(cef_severity("10"), Some(1000));
        assert_eq!(cef_severity("11"), None);
        assert_eq!(cef_severity("Low"), Some(200));
        assert_eq!(cef_severity("Medium"), Some(500));
        assert_eq!(cef_severity("High"), Some(800));
        assert_eq!(cef_severity("very-high"), Some(1000));
        assert_eq!(cef_severity("Unknown"), None);
        assert_eq!(cef_severity(""), None);
    }

    #[test]
    fn suricata_and_opcua_severity() {
        assert_eq!(suricata_severity(1), Some(900));
        assert_eq!(suricata_severity(2), Some(600));
        assert_eq!(suricata_severity(3), Some(300));
        assert_eq!(suricata_severity(4), Some(100));
        assert_eq!(suricata_severity(0), None);
        assert_eq!(suricata_severity(256), None);
        assert_eq!(opcua_severity(700), 700);
        assert_eq!(opcua_severity(0), 1);
        assert_eq!(opcua_severity(-5), 1);
        assert_eq!(opcua_severity(5000), 1000);
    }

    #[test]
    fn error_codes_are_stable() {
        assert_eq!(AlertError::InvalidPri.code(), "invalid_pri");
        assert_eq!(AlertError::TooLong { limit: 1 }.code(), "too_long");
        assert_eq!(AlertError::NotAnAlert.code(), "not_an_alert");
        assert_eq!(AlertError::Duplicate.code(), "duplicate");
        assert_eq!(
            AlertError::MissingField("Severity").to_string(),
            "missing field Severity"
        );
    }

    #[test]
    fn wall_clock_shapes() {
        let (w, n) = WallClock::parse(b"Mar 10 03:00:07 host").expect("parses");
        assert_eq!(n, 15);
        assert_eq!((w.month, w.day, w.year, w.hour), (3, 10, None, 3));
        let (w, n) = WallClock::parse(b"Mar  1 03:00:07.25").expect("parses");
        assert_eq!((w.day, w.nanos, n), (1, 250_000_000, 18));
        let (w, _) = WallClock::parse(b"mar 10 2024 08:00:11").expect("parses");
        assert_eq!(w.year, Some(2024));
        assert!(WallClock::parse(b"Foo 10 03:00:07").is_none());
        assert!(WallClock::parse(b"Mar 10 3:00:07").is_none());
        assert!(WallClock::parse(b"Mar").is_none());
    }

    #[test]
    fn year_is_inferred_and_rolled_back_in_january() {
        let (w, _) = WallClock::parse(b"Dec 31 23:59:00").expect("parses");
        let receive = ns("2025-01-01T00:10:00Z");
        assert_eq!(
            w.resolve(chrono_tz::UTC, receive),
            Ok((ns("2024-12-31T23:59:00Z"), true))
        );
        // Within a day of the receive time: same year (sender clock ahead).
        let (w, _) = WallClock::parse(b"Jan  1 12:00:00").expect("parses");
        assert_eq!(
            w.resolve(chrono_tz::UTC, receive),
            Ok((ns("2025-01-01T12:00:00Z"), true))
        );
        // 29 February in a non-leap receive year: the leap year before.
        let (w, _) = WallClock::parse(b"Feb 29 10:00:00").expect("parses");
        assert_eq!(
            w.resolve(chrono_tz::UTC, ns("2025-03-01T00:00:00Z")),
            Ok((ns("2024-02-29T10:00:00Z"), true))
        );
        let (w, _) = WallClock::parse(b"Feb 30 10:00:00").expect("parses");
        assert_eq!(
            w.resolve(chrono_tz::UTC, receive),
            Err(AlertError::BadTimestamp)
        );
    }

    #[test]
    fn zones_after_a_cef_timestamp() {
        let (w, _) = WallClock::parse(b"Mar 10 2024 08:00:11").expect("parses");
        let t = ns("2024-03-10T08:00:11Z");
        assert_eq!(zone_ns(w, "UTC", 0), Some(t));
        assert_eq!(zone_ns(w, "+01:00", 0), Some(t - 3_600_000_000_000));
        assert_eq!(zone_ns(w, "-0600", 0), Some(t + 6 * 3_600_000_000_000));
        assert_eq!(
            zone_ns(w, "America/Chicago", 0),
            Some(ns("2024-03-10T13:00:11Z"))
        );
        assert_eq!(zone_ns(w, "Mars/Olympus", 0), None);
        assert_eq!(zone_ns(w, "+99:00", 0), None);
    }
}
