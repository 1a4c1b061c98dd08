//! ArcSight CEF, the message part of a syslog line from many security
//! products.
//!
//! ```text
//! CEF:0|Acme|OTSensor|3.2.1|2002|New device seen \| unknown vendor|High|rt=Mar 10 2024 08:00:11 src=10.20.1.77 msg=first seen
//! ```
//!
//! Seven `|`-separated header fields (escapes `\|` and `\\`), then the
//! extension: `key=value` pairs separated by spaces, where a value may itself
//! contain spaces. So a value does not end at a space; it ends where the next
//! *key* begins, i.e. at a space followed by `key=` with an unescaped `=`.
//! Values escape `\=`, `\\`, `\n` and `\r`; a backslash before anything else
//! is kept. Text before the first key (not valid CEF) is kept under the
//! extension key `_unparsed` rather than dropped.
//!
//! Mapping: Signature ID and Name become the [`Signature`], `act` its action
//! and `cat` its category; `src`/`spt`/`dst`/`dpt`/`proto`/`app` the
//! [`NetInfo`]; `rt` the event time (epoch milliseconds, or
//! `MMM dd [yyyy] HH:mm:ss[.SSS] [zone]` read in `dtz` when that names an
//! IANA zone, else in the source's configured zone, flagged `tz_assumed`).
//! An `rt` that cannot be read leaves the syslog header's time in place and
//! stays in `structured` as `cef.rt`. Every header field and extension pair
//! is kept in `structured` with a `cef.` prefix.

use chrono_tz::Tz;

use super::{AlertContext, AlertError, WallClock, cef_severity, zone_ns};
use crate::record::{Alert, AlertFlags, AlertKind, AlertSource, NetInfo, Signature};

/// Number of `|`-separated header fields after `CEF:`.
const HEADER_FIELDS: usize = 7;

/// One parsed CEF message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CefEvent {
    /// CEF format version (`0`, `1`).
    pub version: String,
    /// Device Vendor.
    pub device_vendor: String,
    /// Device Product.
    pub device_product: String,
    /// Device Version.
    pub device_version: String,
    /// Signature ID (Device Event Class ID).
    pub signature_id: String,
    /// Name.
    pub name: String,
    /// Severity as written.
    pub severity_native: String,
    /// Severity normalised to 1–1000 ([`cef_severity`]).
    pub severity: u16,
    /// Extension pairs, unescaped, in message order.
    pub extension: Vec<(String, String)>,
}

/// Parse a CEF message (`text` starts with `CEF:`).
pub fn parse_cef(text: &str) -> Result<CefEvent, AlertError> {
    let body = text
        .strip_prefix("CEF:")
        .ok_or(AlertError::Malformed("CEF header"))?;
    let (header, extension) = split_header(body)?;
    let [
        version,
        device_vendor,
        device_product,
        device_version,
        signature_id,
        name,
        severity_native,
    ] = header;
    let severity = cef_severity(&severity_native).ok_or(AlertError::BadSeverity)?;
    Ok(CefEvent {
        version,
        device_vendor,
        device_product,
        device_version,
        signature_id,
        name,
        severity_native,
        severity,
        extension: parse_extension(extension),
    })
}

impl CefEvent {
    /// The value of extension key `key` (the first, if repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extension
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Turn the syslog alert this CEF message arrived in into a CEF security
    /// alert. The syslog header facts (facility, host, app, structured data)
    /// stay; time, severity and message come from CEF.
    pub(crate) fn apply(self, alert: &mut Alert, ctx: &AlertContext) {
        alert.source = AlertSource::Cef;
        alert.kind = AlertKind::SecurityAlert;
        alert.severity = self.severity;
        alert.message.clone_from(&self.name);
        if let Some((ns, flags)) = self.get("rt").and_then(|rt| self.rt_time(rt, ctx)) {
            alert.event_time_ns = ns;
            alert.flags = flags;
        }
        if let Some(id) = self.get("externalId") {
            alert.event_id = Some(id.to_owned());
        }
        if alert.host.is_none() {
            alert.host = self.get("dvchost").map(str::to_owned);
        }
        let owned = |key| self.get(key).map(str::to_owned);
        alert.signature = Some(Signature {
            gid: None,
            id: Some(self.signature_id.clone()),
            rev: None,
            name: Some(self.name.clone()),
            category: owned("cat"),
            action: owned("act"),
        });
        let port = |key| self.get(key).and_then(|p| p.trim().parse::<u16>().ok());
        let net = NetInfo {
            src_ip: owned("src"),
            src_port: port("spt"),
            dst_ip: owned("dst"),
            dst_port: port("dpt"),
            proto: owned("proto"),
            app_proto: owned("app"),
            flow_id: None,
        };
        alert.net = (net != NetInfo::default()).then_some(net);

        let out = &mut alert.structured;
        out.reserve(4 + self.extension.len());
        out.push(("cef.version".into(), self.version));
        out.push(("cef.deviceVendor".into(), self.device_vendor));
        out.push(("cef.deviceProduct".into(), self.device_product));
        out.push(("cef.deviceVersion".into(), self.device_version));
        out.extend(
            self.extension
                .into_iter()
                .map(|(k, v)| (format!("cef.{k}"), v)),
        );
        alert.severity_native = self.severity_native;
    }

    /// Event time from `rt`, or `None` if it cannot be read.
    fn rt_time(&self, rt: &str, ctx: &AlertContext) -> Option<(i64, AlertFlags)> {
        let rt = rt.trim();
        if !rt.is_empty() && rt.bytes().all(|b| b.is_ascii_digit()) {
            let ns = rt.parse::<i64>().ok()?.checked_mul(1_000_000)?;
            return Some((ns, AlertFlags::default()));
        }
        let (wall, n) = WallClock::parse(rt.as_bytes())?;
        let zone_text = rt.get(n..)?.trim();
        let year_inferred = wall.year.is_none();
        if !zone_text.is_empty() {
            let ns = zone_ns(wall, zone_text, ctx.receive_time_ns)?;
            let flags = AlertFlags {
                year_inferred,
                ..AlertFlags::default()
            };
            return Some((ns, flags));
        }
        let device_tz = self.get("dtz").and_then(|z| z.trim().parse::<Tz>().ok());
        let (ns, _) = wall
            .resolve(device_tz.unwrap_or(ctx.tz), ctx.receive_time_ns)
            .ok()?;
        let flags = AlertFlags {
            no_source_timestamp: false,
            year_inferred,
            tz_assumed: device_tz.is_none(),
        };
        Some((ns, flags))
    }
}

/// The seven header fields, unescaped, and the extension text after them.
/// A message that ends right after Severity (no final `|`) has an empty
/// extension.
fn split_header(body: &str) -> Result<([String; HEADER_FIELDS], &str), AlertError> {
    let mut fields: [String; HEADER_FIELDS] = Default::default();
    let mut index = 0;
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        let field = fields
            .get_mut(index)
            .ok_or(AlertError::Malformed("CEF header"))?;
        match c {
            '\\' => match chars.next() {
                Some((_, e @ ('|' | '\\'))) => field.push(e),
                Some((_, other)) => {
                    field.push('\\');
                    field.push(other);
                }
                None => field.push('\\'),
            },
            '|' => {
                index += 1;
                if index == HEADER_FIELDS {
                    return Ok((fields, body.get(at + 1..).unwrap_or_default()));
                }
            }
            other => field.push(other),
        }
    }
    if index == HEADER_FIELDS - 1 {
        return Ok((fields, ""));
    }
    Err(AlertError::Malformed("CEF header"))
}

/// Extension `key=value` pairs; see the module docs for where values end.
fn parse_extension(ext: &str) -> Vec<(String, String)> {
    let bytes = ext.as_bytes();
    // (key start, '=' position) of every key, in order.
    let mut keys: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 2,
            b'=' => {
                let key_len = bytes
                    .get(..i)
                    .unwrap_or_default()
                    .iter()
                    .rev()
                    .take_while(|b| is_key_byte(**b))
                    .count();
                let start = i - key_len;
                let at_boundary = start == 0 || bytes.get(start - 1) == Some(&b' ');
                if key_len > 0 && at_boundary {
                    keys.push((start, i));
                }
                i += 1;
            }
            _ => i += 1,
        }
    }

    let mut out = Vec::with_capacity(keys.len() + 1);
    let prefix = keys
        .first()
        .map_or(ext, |&(start, _)| ext.get(..start).unwrap_or_default())
        .trim();
    if !prefix.is_empty() {
        out.push(("_unparsed".to_owned(), prefix.to_owned()));
    }
    for (n, &(start, eq)) in keys.iter().enumerate() {
        let end = keys
            .get(n + 1)
            .map_or(ext.len(), |&(next_start, _)| next_start - 1);
        let key = ext.get(start..eq).unwrap_or_default();
        let mut value = ext.get(eq + 1..end).unwrap_or_default();
        if n + 1 == keys.len() {
            value = value.trim_end();
        }
        out.push((key.to_owned(), unescape_value(value)));
    }
    out
}

/// Extension keys: ASCII letters, digits, `_` and `.` (`ad.` keys).
fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

fn unescape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('=') => out.push('='),
            Some('\\') | None => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(text: &str) -> Vec<(String, String)> {
        parse_extension(text)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn header_fields_and_escapes() {
        let e = parse_cef(r"CEF:0|Ac\\me|P\|Q|1.0|42|a \| b \x|Very-High|k=v").expect("parses");
        assert_eq!(e.version, "0");
        assert_eq!(e.device_vendor, r"Ac\me");
        assert_eq!(e.device_product, "P|Q");
        assert_eq!(e.signature_id, "42");
        assert_eq!(e.name, r"a | b \x");
        assert_eq!(
            (e.severity_native.as_str(), e.severity),
            ("Very-High", 1000)
        );
        assert_eq!(e.extension, pairs(&[("k", "v")]));
        // The extension may contain unescaped pipes.
        let e = parse_cef("CEF:0|V|P|1|2|N|3|msg=a|b").expect("parses");
        assert_eq!(e.get("msg"), Some("a|b"));
        // No final pipe, no extension.
        let e = parse_cef("CEF:1|V|P|1|2|N|0").expect("parses");
        assert_eq!((e.severity, e.extension.len()), (1, 0));
    }

    #[test]
    fn bad_headers() {
        assert_eq!(
            parse_cef("CEF:0|V|P|1|2|N"),
            Err(AlertError::Malformed("CEF header"))
        );
        assert_eq!(
            parse_cef("CEF:0|V|P|1|2|N|Unknown|"),
            Err(AlertError::BadSeverity)
        );
        assert_eq!(
            parse_cef("LEEF:1.0|V|P|1|2|"),
            Err(AlertError::Malformed("CEF header"))
        );
    }

    #[test]
    fn values_with_spaces_and_escapes() {
        assert_eq!(
            ext(r"rt=1 msg=Write Single Coil fc\=5 addr 0x0010"),
            pairs(&[("rt", "1"), ("msg", "Write Single Coil fc=5 addr 0x0010")])
        );
        assert_eq!(
            ext(r"a=x\\ b=line\nnext c= d=C:\dir "),
            pairs(&[
                ("a", r"x\"),
                ("b", "line\nnext"),
                ("c", ""),
                ("d", r"C:\dir"),
            ])
        );
        // `=` inside a value without a key boundary stays in the value.
        assert_eq!(
            ext("url=http://x/?q=1&r=2 n=1"),
            pairs(&[("url", "http://x/?q=1&r=2"), ("n", "1")])
        );
        assert_eq!(
            ext("junk here k=v"),
            pairs(&[("_unparsed", "junk here"), ("k", "v")])
        );
        assert!(ext("").is_empty());
        assert!(ext("  ").is_empty());
    }

    fn ctx(tz: Tz) -> AlertContext {
        AlertContext {
            receive_time_ns: 1_710_057_630_000_000_000, // 2024-03-10T08:00:30Z
            tz,
            max_message_bytes: 4096,
        }
    }

    fn rt(text: &str, extra: &str, tz: Tz) -> Option<(i64, AlertFlags)> {
        let e = parse_cef(&format!("CEF:0|V|P|1|2|N|5|rt={text}{extra}")).expect("parses");
        e.rt_time(e.get("rt")?, &ctx(tz))
    }

    #[test]
    fn rt_layouts() {
        let t = 1_710_057_611_000_000_000; // 2024-03-10T08:00:11Z
        assert_eq!(
            rt("1710057611000", "", chrono_tz::UTC),
            Some((t, AlertFlags::default()))
        );
        let assumed = AlertFlags {
            tz_assumed: true,
            ..AlertFlags::default()
        };
        assert_eq!(
            rt("Mar 10 2024 08:00:11", "", chrono_tz::UTC),
            Some((t, assumed))
        );
        assert_eq!(
            rt("Mar 10 2024 08:00:11.250", "", chrono_tz::UTC),
            Some((t + 250_000_000, assumed))
        );
        let inferred = AlertFlags {
            year_inferred: true,
            tz_assumed: true,
            ..AlertFlags::default()
        };
        assert_eq!(
            rt("Mar 10 08:00:11", "", chrono_tz::UTC),
            Some((t, inferred))
        );
        assert_eq!(
            rt(
                "Mar 10 2024 09:00:11 +01:00",
                "",
                chrono_tz::America::Chicago
            ),
            Some((t, AlertFlags::default()))
        );
        // dtz names the device's zone: not assumed.
        assert_eq!(
            rt(
                "Mar 10 2024 03:00:11",
                " dtz=America/Chicago",
                chrono_tz::UTC
            ),
            Some((t, AlertFlags::default()))
        );
        assert_eq!(rt("yesterday", "", chrono_tz::UTC), None);
        assert_eq!(rt("99999999999999999999", "", chrono_tz::UTC), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "CEF:[ -~]{0,200}") {
            let _ = parse_cef(&s);
        }

        #[test]
        fn extension_never_panics(s in "\\PC{0,200}") {
            let _ = parse_extension(&s);
        }
    }
}
