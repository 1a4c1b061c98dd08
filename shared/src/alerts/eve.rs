//! Suricata EVE JSON: one line per event, only `event_type: "alert"` becomes
//! an [`Alert`].
//!
//! ```json
//! {"timestamp":"2024-03-10T02:00:12.251547-0600","flow_id":586497171462735,"event_type":"alert",
//!  "src_ip":"10.20.9.15","src_port":49822,"dest_ip":"10.20.1.10","dest_port":502,"proto":"TCP",
//!  "app_proto":"modbus","alert":{"action":"allowed","gid":1,"signature_id":9000001,"rev":2,
//!  "signature":"LOCAL Modbus Write …","category":"Potentially Bad Traffic","severity":2}}
//! ```
//!
//! Suricata writes its local offset without a colon (`-0600`) and
//! microseconds; both are read exactly. Other event types (`flow`, `stats`,
//! `dns`, …) share the file, so they are [`AlertError::NotAnAlert`], which
//! the shell counts or routes rather than treating as a parse failure. Ports
//! are optional (ICMP, some broadcast traffic). Top-level and `alert` fields
//! without a mapping (`in_iface`, `alert.metadata`, protocol objects) go to
//! `structured` as `eve.<key>` / `eve.alert.<key>`.
//!
//! Suricata may log the same alert twice (several outputs into one file, a
//! restarted tailer re-reading lines); [`EveDeduper`] drops repeats of the
//! same flow, rule and timestamp within a bounded memory.

use std::collections::{HashSet, VecDeque};

use chrono::DateTime;

use super::json::{Object, drain_into, parse_object, take, take_port, take_str, take_u64};
use super::{AlertContext, AlertError, blank_alert, suricata_severity};
use crate::record::{Alert, AlertKind, AlertSource, NetInfo, Signature};

/// Parse one EVE line. Non-alert events are [`AlertError::NotAnAlert`].
pub fn parse_eve(line: &[u8], ctx: &AlertContext) -> Result<Alert, AlertError> {
    let (mut obj, raw) = parse_object(line, ctx)?;
    let event_type =
        take_str(&mut obj, "event_type")?.ok_or(AlertError::MissingField("event_type"))?;
    if event_type != "alert" {
        return Err(AlertError::NotAnAlert);
    }
    let timestamp =
        take_str(&mut obj, "timestamp")?.ok_or(AlertError::MissingField("timestamp"))?;
    let mut details = match take(&mut obj, "alert") {
        Some(serde_json::Value::Object(details)) => details,
        Some(_) => return Err(AlertError::Malformed("alert")),
        None => return Err(AlertError::MissingField("alert")),
    };

    let mut alert = blank_alert(AlertSource::SuricataEve, AlertKind::SecurityAlert, ctx, raw);
    alert.event_time_ns = eve_time_ns(&timestamp)?;
    let severity =
        take_u64(&mut details, "severity")?.ok_or(AlertError::MissingField("alert.severity"))?;
    alert.severity = suricata_severity(severity).ok_or(AlertError::BadSeverity)?;
    alert.severity_native = severity.to_string();

    let flow_id = take_u64(&mut obj, "flow_id")?;
    alert.event_id = flow_id.map(|id| id.to_string());
    alert.host = take_str(&mut obj, "host")?;
    alert.net = Some(NetInfo {
        src_ip: take_str(&mut obj, "src_ip")?,
        src_port: take_port(&mut obj, "src_port")?,
        dst_ip: take_str(&mut obj, "dest_ip")?,
        dst_port: take_port(&mut obj, "dest_port")?,
        proto: take_str(&mut obj, "proto")?,
        app_proto: take_str(&mut obj, "app_proto")?,
        flow_id,
    });
    let signature = signature(&mut details)?;
    alert.message = signature.name.clone().unwrap_or_default();
    alert.signature = Some(signature);

    drain_into(obj, "eve.", &mut alert.structured);
    drain_into(details, "eve.alert.", &mut alert.structured);
    Ok(alert)
}

fn signature(details: &mut Object) -> Result<Signature, AlertError> {
    Ok(Signature {
        gid: take_u64(details, "gid")?,
        id: take_u64(details, "signature_id")?.map(|id| id.to_string()),
        rev: take_u64(details, "rev")?,
        name: take_str(details, "signature")?,
        category: take_str(details, "category")?,
        action: take_str(details, "action")?,
    })
}

/// EVE timestamps: RFC 3339, or Suricata's `±hhmm` offset without a colon.
fn eve_time_ns(text: &str) -> Result<i64, AlertError> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .and_then(|dt| dt.timestamp_nanos_opt())
        .ok_or(AlertError::BadTimestamp)
}

/// What makes two EVE alerts the same: flow, rule and timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EveKey {
    flow_id: Option<u64>,
    gid: Option<u64>,
    signature_id: Option<String>,
    event_time_ns: i64,
}

/// Remembers the last `capacity` EVE alerts and refuses repeats.
///
/// Memory is bounded by `capacity` keys; an alert repeated after more than
/// `capacity` others is not caught. Two alerts are the same when flow id,
/// rule (gid, signature id) and timestamp all match: Suricata fires a rule
/// at most once per packet, so a repeat of all three is the same event.
#[derive(Debug, Clone, Default)]
pub struct EveDeduper {
    capacity: usize,
    order: VecDeque<EveKey>,
    seen: HashSet<EveKey>,
}

impl EveDeduper {
    /// A deduper remembering the last `capacity` alerts (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// `Err(Duplicate)` if `alert` repeats one of the last `capacity`
    /// alerts; otherwise remember it.
    pub fn handle_alert(&mut self, alert: &Alert) -> Result<(), AlertError> {
        if self.capacity == 0 {
            return Ok(());
        }
        let signature = alert.signature.as_ref();
        let key = EveKey {
            flow_id: alert.net.as_ref().and_then(|n| n.flow_id),
            gid: signature.and_then(|s| s.gid),
            signature_id: signature.and_then(|s| s.id.clone()),
            event_time_ns: alert.event_time_ns,
        };
        if self.seen.contains(&key) {
            return Err(AlertError::Duplicate);
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        Ok(())
    }

    /// Alerts currently remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rfc3339_ns;

    const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/suricata_eve.jsonl");

    fn line(n: usize) -> &'static [u8] {
        FIXTURE
            .split(|&b| b == b'\n')
            .nth(n - 1)
            .expect("fixture line")
    }

    fn ns(text: &str) -> i64 {
        rfc3339_ns(text).expect("test timestamp")
    }

    fn ctx() -> AlertContext {
        AlertContext {
            receive_time_ns: ns("2024-03-10T08:00:30Z"),
            tz: chrono_tz::UTC,
            max_message_bytes: 8192,
        }
    }

    fn get<'a>(alert: &'a Alert, key: &str) -> Option<&'a str> {
        alert
            .structured
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn line1_offset_timestamp_and_severity_2() {
        let a = parse_eve(line(1), &ctx()).expect("parses");
        assert_eq!(a.seq, 0);
        assert_eq!(a.source, AlertSource::SuricataEve);
        assert_eq!(a.kind, AlertKind::SecurityAlert);
        assert_eq!(a.event_time_ns, ns("2024-03-10T08:00:12.251547Z"));
        assert_eq!((a.severity, a.severity_native.as_str()), (600, "2"));
        assert_eq!(a.event_id.as_deref(), Some("586497171462735"));
        assert_eq!(
            a.net,
            Some(NetInfo {
                src_ip: Some("10.20.9.15".into()),
                src_port: Some(49822),
                dst_ip: Some("10.20.1.10".into()),
                dst_port: Some(502),
                proto: Some("TCP".into()),
                app_proto: Some("modbus".into()),
                flow_id: Some(586_497_171_462_735),
            })
        );
        assert_eq!(
            a.signature,
            Some(Signature {
                gid: Some(1),
                id: Some("9000001".into()),
                rev: Some(2),
                name: Some("LOCAL Modbus Write Single Coil from non-engineering host".into()),
                category: Some("Potentially Bad Traffic".into()),
                action: Some("allowed".into()),
            })
        );
        assert_eq!(
            a.message,
            "LOCAL Modbus Write Single Coil from non-engineering host"
        );
        assert_eq!(get(&a, "eve.in_iface"), Some("ens1f0"));
        assert_eq!(a.raw, line(1));
    }

    #[test]
    fn line2_severity_1() {
        let a = parse_eve(line(2), &ctx()).expect("parses");
        assert_eq!((a.severity, a.severity_native.as_str()), (900, "1"));
        assert_eq!(a.event_time_ns, ns("2024-03-10T08:00:13.004101Z"));
        assert_eq!(a.event_id.as_deref(), Some("1031464864740687"));
    }

    #[test]
    fn line3_flow_event_is_not_an_alert() {
        assert_eq!(parse_eve(line(3), &ctx()), Err(AlertError::NotAnAlert));
    }

    #[test]
    fn line4_repeat_of_line2_is_a_duplicate() {
        let mut dedup = EveDeduper::new(16);
        let mut verdicts = Vec::new();
        for n in 1..=5 {
            let verdict = parse_eve(line(n), &ctx()).and_then(|a| dedup.handle_alert(&a));
            verdicts.push(verdict);
        }
        assert_eq!(
            verdicts,
            [
                Ok(()),
                Ok(()),
                Err(AlertError::NotAnAlert),
                Err(AlertError::Duplicate),
                Ok(()),
            ]
        );
        assert_eq!(dedup.len(), 3);
    }

    #[test]
    fn line5_no_ports_action_blocked() {
        let a = parse_eve(line(5), &ctx()).expect("parses");
        let net = a.net.as_ref().expect("net");
        assert_eq!(
            (net.src_port, net.dst_port, net.flow_id),
            (None, None, None)
        );
        assert_eq!(net.proto.as_deref(), Some("UDP"));
        assert_eq!(net.dst_ip.as_deref(), Some("10.20.1.255"));
        assert_eq!(a.event_id, None);
        let sig = a.signature.as_ref().expect("signature");
        assert_eq!(sig.action.as_deref(), Some("blocked"));
        assert_eq!((a.severity, a.severity_native.as_str()), (300, "3"));
        assert_eq!(a.event_time_ns, ns("2024-03-10T08:00:15.9Z"));
    }

    #[test]
    fn deduper_is_bounded() {
        let base = parse_eve(line(1), &ctx()).expect("parses");
        let mut dedup = EveDeduper::new(2);
        let at = |t: i64| {
            let mut a = base.clone();
            a.event_time_ns = t;
            a
        };
        assert_eq!(dedup.handle_alert(&at(1)), Ok(()));
        assert_eq!(dedup.handle_alert(&at(2)), Ok(()));
        assert_eq!(dedup.handle_alert(&at(1)), Err(AlertError::Duplicate));
        assert_eq!(dedup.handle_alert(&at(3)), Ok(()));
        // 1 was pushed out by 3.
        assert_eq!(dedup.handle_alert(&at(1)), Ok(()));
        assert_eq!(dedup.len(), 2);
        let mut off = EveDeduper::new(0);
        assert_eq!(off.handle_alert(&at(1)), Ok(()));
        assert_eq!(off.handle_alert(&at(1)), Ok(()));
        assert!(off.is_empty());
    }

    #[test]
    fn bad_lines() {
        let c = ctx();
        let cases: [(&[u8], AlertError); 9] = [
            (b"not json", AlertError::Malformed("JSON line")),
            (b"[1]", AlertError::Malformed("JSON line: not an object")),
            (b"{\"timestamp\":\"x\"}", AlertError::MissingField("event_type")),
            (b"{\"event_type\":\"alert\"}", AlertError::MissingField("timestamp")),
            (
                b"{\"event_type\":\"alert\",\"timestamp\":\"2024-03-10T08:00:00Z\"}",
                AlertError::MissingField("alert"),
            ),
            (
                b"{\"event_type\":\"alert\",\"timestamp\":\"yesterday\",\"alert\":{\"severity\":1}}",
                AlertError::BadTimestamp,
            ),
            (
                b"{\"event_type\":\"alert\",\"timestamp\":\"2024-03-10T08:00:00Z\",\"alert\":{\"severity\":0}}",
                AlertError::BadSeverity,
            ),
            (
                b"{\"event_type\":\"alert\",\"timestamp\":\"2024-03-10T08:00:00Z\",\"src_port\":70000,\"alert\":{\"severity\":1}}",
                AlertError::Malformed("src_port"),
            ),
            (b"{\"event_type\":\"alert\xff\"}", AlertError::NotUtf8),
        ];
        for (input, err) in cases {
            assert_eq!(
                parse_eve(input, &c),
                Err(err),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let mut small = c;
        small.max_message_bytes = 8;
        assert_eq!(
            parse_eve(line(1), &small),
            Err(AlertError::TooLong { limit: 8 })
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_eve(&b, &ctx());
        }

        #[test]
        fn parse_never_panics_on_json_like_text(
            s in r#"\{"event_type":"alert","timestamp":"[0-9T:.+Z-]{0,40}","alert":\{[ -~]{0,80}\}[ -~]{0,40}"#
        ) {
            let _ = parse_eve(s.as_bytes(), &ctx());
        }
    }
}
