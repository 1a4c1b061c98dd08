//! `alerts::parse_eve` (Suricata EVE JSON) on arbitrary bytes, and the
//! de-duplicator it feeds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_fuzz::{alert_context, check_alert, selector};
use weir_shared::alerts::{EveDeduper, parse_eve};

fuzz_target!(|data: &[u8]| {
    let (sel, bytes) = selector(data);
    let ctx = alert_context(sel);
    let mut dedup = EveDeduper::new(4);
    // The whole input as one line, then line by line.
    for line in std::iter::once(bytes).chain(bytes.split(|&b| b == b'\n')) {
        let parsed = parse_eve(line, &ctx);
        if let Ok(alert) = &parsed {
            let _ = dedup.handle_alert(alert);
            assert!(dedup.len() <= 4);
        }
        check_alert(parsed);
    }
});
