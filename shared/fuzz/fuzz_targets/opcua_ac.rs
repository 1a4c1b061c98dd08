//! `alerts::parse_opcua_ac` (OPC UA Alarms & Conditions JSON lines) on
//! arbitrary bytes, whole and line by line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_fuzz::{alert_context, check_alert, selector};
use weir_shared::alerts::parse_opcua_ac;

fuzz_target!(|data: &[u8]| {
    let (sel, bytes) = selector(data);
    let ctx = alert_context(sel);
    for line in std::iter::once(bytes).chain(bytes.split(|&b| b == b'\n')) {
        check_alert(parse_opcua_ac(line, &ctx));
    }
});
