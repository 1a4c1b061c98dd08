//! OPC UA Alarms & Conditions events, as JSON lines (one event's selected
//! fields per line), to process alarms.
//!
//! ```json
//! {"EventId":"AAECAwQFBgcICQoLDA0ODw==","EventType":"ExclusiveLevelAlarmType","SourceName":"Line2/TT101",
//!  "Time":"2024-03-10T08:00:20.000Z","Message":{"Locale":"en-US","Text":"TT101 temperature high"},
//!  "Severity":700,"ConditionName":"HighLimit","Retain":true,"ActiveState":{"Id":true,"Text":"Active"},
//!  "LimitState":"High","AckedState":{"Id":false},"ShelvingState":"Unshelved","Quality":0}
//! ```
//!
//! Field names are the OPC UA browse names (OPC 10000-9). The projection is
//! forgiving about *encoding*, because gateways differ: a two-state variable
//! may be `{"Id": bool, …}` or a bare bool; a state machine (`ShelvingState`,
//! `LimitState`) a string, `{"Text": …}` or `{"CurrentState": …}`; a
//! LocalizedText `{"Text": …}` or a string; `Quality` a number or
//! `{"Code": n}`. It is strict about *types*: a bool where a string belongs
//! is [`AlertError::Malformed`].
//!
//! `EventId` is kept as the given (base64) string. `Time` is the event time
//! (absent: the receive time, flagged). `Severity` is required and used as is
//! (clamped to 1–1000). An event with a `ConditionName` is a
//! [`AlertKind::ProcessAlarm`] carrying a [`Condition`] and its ISA-18.2
//! state ([`AlarmBits::isa182`]); one without is a plain system event.
//! `Retain` defaults to true when absent: a condition is only closed when the
//! server says so. Fields without a mapping (`EventType`, `SourceNode`,
//! `ReceiveTime`, `BranchId`, `EnabledState`, `LastSeverity`, …) go to
//! `structured` as `opcua.<Name>`.

use serde_json::Value;

use super::json::{Object, drain_into, parse_object, take, take_str};
use super::{AlertContext, AlertError, blank_alert, opcua_severity, rfc3339_ns};
use crate::record::{Alert, AlertKind, AlertSource, Condition};

/// Parse one A&C event line.
pub fn parse_opcua_ac(line: &[u8], ctx: &AlertContext) -> Result<Alert, AlertError> {
    let (mut obj, raw) = parse_object(line, ctx)?;
    let severity_value = take(&mut obj, "Severity").ok_or(AlertError::MissingField("Severity"))?;
    let severity = severity_value
        .as_i64()
        .or_else(|| severity_value.as_u64().map(|_| i64::MAX))
        .ok_or(AlertError::Malformed("Severity"))?;
    let condition_name = take_str(&mut obj, "ConditionName")?;
    let kind = if condition_name.is_some() {
        AlertKind::ProcessAlarm
    } else {
        AlertKind::SystemEvent
    };

    let mut alert = blank_alert(AlertSource::OpcUaAc, kind, ctx, raw);
    alert.severity = opcua_severity(severity);
    alert.severity_native = severity_value.to_string();
    match take_str(&mut obj, "Time")? {
        Some(time) => alert.event_time_ns = rfc3339_ns(&time)?,
        None => alert.flags.no_source_timestamp = true,
    }
    alert.event_id = take_str(&mut obj, "EventId")?;
    alert.source_name = take_str(&mut obj, "SourceName")?;
    if let Some(message) = take(&mut obj, "Message") {
        let (text, locale) = localized_text(message, "Message")?;
        alert.message = text;
        if let Some(locale) = locale {
            alert
                .structured
                .push(("opcua.Message.Locale".into(), locale));
        }
    }
    if let Some(name) = condition_name {
        alert.condition = Some(condition(&mut obj, name)?);
    }
    drain_into(obj, "opcua.", &mut alert.structured);
    Ok(alert)
}

/// The condition fields of an alarm event, removed from `obj`.
fn condition(obj: &mut Object, name: String) -> Result<Condition, AlertError> {
    let shelving = state_text(obj, "ShelvingState")?;
    let shelved = shelving
        .as_deref()
        .is_some_and(|s| !s.eq_ignore_ascii_case("Unshelved"));
    let suppressed_or_shelved = two_state(obj, "SuppressedOrShelved")?;
    let explicit_suppressed = take(obj, "SuppressedState")
        .map(|v| two_state_value(v, "SuppressedState"))
        .transpose()?;
    let bits = AlarmBits {
        out_of_service: two_state(obj, "OutOfServiceState")?.unwrap_or(false),
        // Without SuppressedState, SuppressedOrShelved on an unshelved alarm
        // can only mean suppressed.
        suppressed: explicit_suppressed
            .unwrap_or(suppressed_or_shelved.unwrap_or(false) && !shelved),
        shelved,
        latched: two_state(obj, "LatchedState")?.unwrap_or(false),
        active: two_state(obj, "ActiveState")?.unwrap_or(false),
        acked: two_state(obj, "AckedState")?.unwrap_or(false),
    };
    let comment = match take(obj, "Comment") {
        Some(v) => Some(localized_text(v, "Comment")?.0).filter(|c| !c.is_empty()),
        None => None,
    };
    Ok(Condition {
        name,
        isa182: Some(bits.isa182()),
        active: bits.active,
        acked: bits.acked,
        confirmed: two_state(obj, "ConfirmedState")?.unwrap_or(false),
        retain: two_state(obj, "Retain")?.unwrap_or(true),
        shelving,
        suppressed_or_shelved: suppressed_or_shelved.unwrap_or(bits.suppressed || shelved),
        out_of_service: bits.out_of_service,
        latched: bits.latched,
        quality: quality(obj)?,
        comment,
        user: take_str(obj, "ClientUserId")?,
        limit_state: state_text(obj, "LimitState")?,
    })
}

/// The alarm states that decide the ISA-18.2 (IEC 62682) state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct AlarmBits {
    /// OutOfServiceState.
    pub out_of_service: bool,
    /// SuppressedState (suppressed by design).
    pub suppressed: bool,
    /// ShelvingState other than Unshelved.
    pub shelved: bool,
    /// LatchedState.
    pub latched: bool,
    /// ActiveState.
    pub active: bool,
    /// AckedState.
    pub acked: bool,
}

impl AlarmBits {
    /// ISA-18.2 state letter: out of service I; suppressed by design H;
    /// shelved G; latched and inactive E (unacked) or F (acked); then
    /// active+unacked B, active+acked C, inactive+unacked D (return to
    /// normal, unacknowledged), otherwise A (normal).
    pub fn isa182(self) -> char {
        if self.out_of_service {
            'I'
        } else if self.suppressed {
            'H'
        } else if self.shelved {
            'G'
        } else if self.latched && !self.active {
            if self.acked { 'F' } else { 'E' }
        } else {
            match (self.active, self.acked) {
                (true, false) => 'B',
                (true, true) => 'C',
                (false, false) => 'D',
                (false, true) => 'A',
            }
        }
    }
}

/// A two-state variable: `{"Id": bool, …}` or a bare bool.
fn two_state(obj: &mut Object, key: &'static str) -> Result<Option<bool>, AlertError> {
    take(obj, key).map(|v| two_state_value(v, key)).transpose()
}

fn two_state_value(value: Value, key: &'static str) -> Result<bool, AlertError> {
    match value {
        Value::Bool(b) => Ok(b),
        Value::Object(mut o) => match take(&mut o, "Id") {
            Some(Value::Bool(b)) => Ok(b),
            _ => Err(AlertError::Malformed(key)),
        },
        _ => Err(AlertError::Malformed(key)),
    }
}

/// A state machine's current state as text: a string, `{"Text": …}`, or
/// `{"CurrentState": string | {"Text": …}}`.
fn state_text(obj: &mut Object, key: &'static str) -> Result<Option<String>, AlertError> {
    let Some(value) = take(obj, key) else {
        return Ok(None);
    };
    let value = match value {
        Value::Object(mut o) => match take(&mut o, "CurrentState") {
            Some(current) => current,
            None => Value::Object(o),
        },
        other => other,
    };
    localized_text(value, key).map(|(text, _)| Some(text))
}

/// A LocalizedText, `{"Locale": …, "Text": …}` or a bare string: text and
/// locale.
fn localized_text(value: Value, key: &'static str) -> Result<(String, Option<String>), AlertError> {
    match value {
        Value::String(s) => Ok((s, None)),
        Value::Object(mut o) => {
            let text = match take(&mut o, "Text") {
                None => String::new(),
                Some(Value::String(s)) => s,
                Some(_) => return Err(AlertError::Malformed(key)),
            };
            let locale = match take(&mut o, "Locale") {
                None => None,
                Some(Value::String(s)) => Some(s).filter(|l| !l.is_empty()),
                Some(_) => return Err(AlertError::Malformed(key)),
            };
            Ok((text, locale))
        }
        _ => Err(AlertError::Malformed(key)),
    }
}

/// `Quality`: a StatusCode as a number or `{"Code": n}`; absent is Good.
fn quality(obj: &mut Object) -> Result<u32, AlertError> {
    const BAD: AlertError = AlertError::Malformed("Quality");
    let code = match take(obj, "Quality") {
        None => return Ok(0),
        Some(Value::Object(mut o)) => take(&mut o, "Code").ok_or(BAD)?,
        Some(v) => v,
    };
    code.as_u64().and_then(|c| u32::try_from(c).ok()).ok_or(BAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::status;
    use crate::testutil::ns;

    const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/opcua_alarms.jsonl");

    fn line(n: usize) -> &'static [u8] {
        FIXTURE
            .split(|&b| b == b'\n')
            .nth(n - 1)
            .expect("fixture line")
    }

    fn ctx() -> AlertContext {
        AlertContext {
            receive_time_ns: ns("2024-03-10T08:10:00Z"),
            tz: chrono_tz::UTC,
            max_message_bytes: 8192,
        }
    }

    fn parse(n: usize) -> (Alert, Condition) {
        let a = parse_opcua_ac(line(n), &ctx()).expect("parses");
        let c = a.condition.clone().expect("condition");
        (a, c)
    }

    fn get<'a>(alert: &'a Alert, key: &str) -> Option<&'a str> {
        alert
            .structured
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn line1_active_unacked_is_b() {
        let (a, c) = parse(1);
        assert_eq!(a.seq, 0);
        assert_eq!(a.source, AlertSource::OpcUaAc);
        assert_eq!(a.kind, AlertKind::ProcessAlarm);
        assert_eq!((a.severity, a.severity_native.as_str()), (700, "700"));
        assert_eq!(a.event_id.as_deref(), Some("AAECAwQFBgcICQoLDA0ODw=="));
        assert_eq!(a.source_name.as_deref(), Some("Line2/TT101"));
        assert_eq!(a.event_time_ns, ns("2024-03-10T08:00:20Z"));
        assert!(!a.flags.no_source_timestamp);
        assert_eq!(a.message, "TT101 temperature high");
        assert_eq!(
            c,
            Condition {
                name: "HighLimit".into(),
                isa182: Some('B'),
                active: true,
                acked: false,
                confirmed: false,
                retain: true,
                shelving: Some("Unshelved".into()),
                suppressed_or_shelved: false,
                out_of_service: false,
                latched: false,
                quality: status::GOOD,
                comment: None,
                user: None,
                limit_state: Some("High".into()),
            }
        );
        assert_eq!(get(&a, "opcua.EventType"), Some("ExclusiveLevelAlarmType"));
        assert_eq!(
            get(&a, "opcua.SourceNode"),
            Some("nsu=urn:plant1:line2;s=TT101")
        );
        assert_eq!(
            get(&a, "opcua.ReceiveTime"),
            Some("2024-03-10T08:00:20.014Z")
        );
        assert_eq!(get(&a, "opcua.EnabledState"), Some(r#"{"Id":true}"#));
        assert_eq!(get(&a, "opcua.Message.Locale"), Some("en-US"));
        assert_eq!(get(&a, "opcua.BranchId"), None);
    }

    #[test]
    fn line2_active_acked_with_comment_is_c() {
        let (a, c) = parse(2);
        assert_eq!(c.isa182, Some('C'));
        assert!(c.active && c.acked && !c.confirmed && c.retain);
        assert_eq!(c.comment.as_deref(), Some("Checking cooling water valve"));
        assert_eq!(c.user.as_deref(), Some("operator2"));
        assert_eq!(a.severity, 700);
    }

    #[test]
    fn line3_inactive_acked_not_retained_is_a() {
        let (a, c) = parse(3);
        assert_eq!(c.isa182, Some('A'));
        assert!(!c.active && c.acked && c.confirmed);
        assert!(!c.retain);
        assert_eq!(c.limit_state, None);
        assert_eq!(a.message, "TT101 returned to normal");
    }

    #[test]
    fn line4_shelved_is_g_with_uncertain_quality() {
        let (a, c) = parse(4);
        assert_eq!(c.isa182, Some('G'));
        assert_eq!(c.shelving.as_deref(), Some("TimedShelved"));
        assert!(c.suppressed_or_shelved && c.active && !c.acked);
        assert_eq!(c.quality, status::UNCERTAIN_LAST_USABLE_VALUE);
        assert_eq!((a.severity, c.name.as_str()), (900, "Trip"));
        assert_eq!(a.source_name.as_deref(), Some("Line2/PUMP7"));
    }

    #[test]
    fn isa182_precedence() {
        let bits = |f: fn(&mut AlarmBits)| {
            let mut b = AlarmBits::default();
            f(&mut b);
            b.isa182()
        };
        assert_eq!(bits(|b| b.acked = true), 'A');
        assert_eq!(bits(|b| b.active = true), 'B');
        assert_eq!(bits(|b| (b.active, b.acked) = (true, true)), 'C');
        assert_eq!(bits(|_| {}), 'D');
        assert_eq!(bits(|b| b.latched = true), 'E');
        assert_eq!(bits(|b| (b.latched, b.acked) = (true, true)), 'F');
        // Latched but still active: B/C as usual.
        assert_eq!(bits(|b| (b.latched, b.active) = (true, true)), 'B');
        assert_eq!(bits(|b| (b.shelved, b.active) = (true, true)), 'G');
        assert_eq!(bits(|b| (b.suppressed, b.shelved) = (true, true)), 'H');
        assert_eq!(
            bits(|b| (b.out_of_service, b.suppressed, b.shelved) = (true, true, true)),
            'I'
        );
    }

    #[test]
    fn alternative_encodings() {
        let line = br#"{"Severity":1500,"ConditionName":"X","ActiveState":true,"AckedState":{"Id":true},
            "ShelvingState":{"CurrentState":{"Text":"Unshelved"}},"SuppressedOrShelved":true,
            "LimitState":{"Text":"HighHigh"},"Quality":{"Code":2147483648},"Message":"plain","Comment":{"Text":""},
            "OutOfServiceState":{"Id":false},"LatchedState":false}"#;
        let a = parse_opcua_ac(line, &ctx()).expect("parses");
        let c = a.condition.expect("condition");
        // Suppressed (not shelved) wins over active+acked.
        assert_eq!(c.isa182, Some('H'));
        assert_eq!(c.limit_state.as_deref(), Some("HighHigh"));
        assert_eq!(c.shelving.as_deref(), Some("Unshelved"));
        assert_eq!(c.quality, status::BAD);
        assert_eq!(c.comment, None);
        assert!(c.retain);
        assert_eq!(a.message, "plain");
        assert_eq!((a.severity, a.severity_native.as_str()), (1000, "1500"));
        // No Time: receive time, flagged.
        assert_eq!(a.event_time_ns, ctx().receive_time_ns);
        assert!(a.flags.no_source_timestamp);
    }

    #[test]
    fn event_without_condition_is_a_system_event() {
        let a = parse_opcua_ac(br#"{"Severity":100,"Message":{"Text":"audit"}}"#, &ctx())
            .expect("parses");
        assert_eq!((a.kind, a.condition), (AlertKind::SystemEvent, None));
    }

    #[test]
    fn bad_lines() {
        let c = ctx();
        let cases: [(&[u8], AlertError); 6] = [
            (
                br#"{"ConditionName":"X"}"#,
                AlertError::MissingField("Severity"),
            ),
            (br#"{"Severity":"high"}"#, AlertError::Malformed("Severity")),
            (
                br#"{"Severity":1,"Time":"never"}"#,
                AlertError::BadTimestamp,
            ),
            (
                br#"{"Severity":1,"ConditionName":"X","ActiveState":{"Id":"yes"}}"#,
                AlertError::Malformed("ActiveState"),
            ),
            (
                br#"{"Severity":1,"ConditionName":"X","Quality":-1}"#,
                AlertError::Malformed("Quality"),
            ),
            (
                br#"{"Severity":1,"EventId":7}"#,
                AlertError::Malformed("EventId"),
            ),
        ];
        for (input, err) in cases {
            assert_eq!(
                parse_opcua_ac(input, &c),
                Err(err),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_opcua_ac(&b, &ctx());
        }

        #[test]
        fn parse_never_panics_on_json_like_text(
            s in r#"\{"Severity":-?[0-9]{1,22},"ConditionName":"x"(,"[A-Za-z]{1,20}":(true|false|null|[0-9]{1,12}|"[ -~]{0,10}"|\{"Id":(true|1)\}))*\}"#
        ) {
            let _ = parse_opcua_ac(s.as_bytes(), &ctx());
        }
    }
}
