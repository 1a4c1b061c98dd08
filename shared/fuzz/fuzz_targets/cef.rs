//! `alerts::cef::parse_cef` on arbitrary text, and the same text as the
//! body of a syslog message (how CEF arrives), which maps the event onto
//! an alert (`rt` times, network fields, severity).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_fuzz::{alert_context, check_alert, selector};
use weir_shared::alerts::{cef, parse_syslog};

fuzz_target!(|data: &[u8]| {
    let (sel, bytes) = selector(data);
    let text = String::from_utf8_lossy(bytes);
    let text = if text.starts_with("CEF:") {
        text.into_owned()
    } else {
        format!("CEF:{text}")
    };
    if let Ok(ev) = cef::parse_cef(&text) {
        let _ = ev.get("rt");
    }
    let ctx = alert_context(sel);
    // Without and with a PRI and an RFC 3164 header.
    let header: &[u8] = if sel & 0x80 == 0 {
        b"Mar 10 08:00:09 ids01 "
    } else {
        b"<132>Mar 10 08:00:09 ids01 "
    };
    let mut line = Vec::with_capacity(header.len() + text.len());
    line.extend_from_slice(header);
    line.extend_from_slice(text.as_bytes());
    check_alert(parse_syslog(&line, &ctx));
});
